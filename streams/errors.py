"""The root of paystream's exceptions; each package subclasses it for its own errors."""

from __future__ import annotations


class PaystreamError(Exception):
    """Base class: an operating error with a message that tells the operator what to do."""


class CommandError(PaystreamError):
    """A CLI command failed in a way it reports in one line and exits non-zero for."""


class InfraError(PaystreamError):
    """Local infrastructure (Kafka broker, PostgreSQL) could not be started, reached or stopped."""
