"""Errors of the fraud models: every one says what is wrong and what to do about it."""

from __future__ import annotations

from streams.errors import PaystreamError


class ModelError(PaystreamError):
    """Root of the fraud-model errors (training data, registry, scoring)."""


class ModelIntegrityError(ModelError):
    """An artifact failed verification: tampered, truncated, or not made for this code.

    The worker refuses such a model and keeps serving the one it has.
    """


class ModelNotFoundError(ModelError):
    """No such model version in the registry."""


class TrainingDataError(ModelError):
    """The training or evaluation window cannot be built (empty, no fraud, bad range)."""
