"""Exceptions of the ``schemas`` package, all under one root: :class:`SchemaError`.

Callers that turn bad messages into dead letters catch :class:`SchemaError` (or
:class:`DecodeError` when they want the topic/partition/offset as attributes);
fastavro and Schema Registry exceptions never escape this package untranslated.
"""

from __future__ import annotations

from streams.errors import PaystreamError


class SchemaError(PaystreamError):
    """Root of every schema, catalog, encode and decode error."""


class CatalogError(SchemaError):
    """``schemas/catalog.json`` and the ``.avsc`` files disagree, or a schema change is unsafe."""


class RegistryError(SchemaError):
    """The Confluent Schema Registry refused or could not answer a control-plane call."""


class EncodeError(SchemaError):
    """A record does not match its topic's schema; ``field`` is the offending path if known."""

    def __init__(self, message: str, *, topic: str, field: str | None) -> None:
        super().__init__(message)
        self.topic = topic
        self.field = field


class DecodeError(SchemaError):
    """Bytes on a topic are not a record of its schema in the Confluent wire format.

    The attributes let a consumer build a dead letter without parsing the message.
    """

    def __init__(
        self,
        message: str,
        *,
        topic: str,
        partition: int | None,
        offset: int | None,
        reason: str,
        schema_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason
        self.schema_id = schema_id
