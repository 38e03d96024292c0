"""The Avro codec as faust serializers: ``value_serializer="avro:payments.requests"``.

:func:`register_faust_codecs` registers one :class:`AvroCodec` per topic under
``avro:<logical topic>`` and a ``utf8`` codec for the plain-string keys, so
topics are declared with names rather than codec objects::

    register_faust_codecs(build_codecs(settings.schema_registry_url,
                                       topic_prefix=settings.topic_prefix))
    app.topic(settings.topic("payments.requests"), key_serializer="utf8",
              value_serializer="avro:payments.requests")

faust calls a codec with the bytes only, so a :class:`~schemas.errors.DecodeError`
raised here says "partition ? offset ?" (faust wraps it in its own
``ValueDecodeError``). Agents that turn bad messages into dead letters with
their position should subscribe with ``value_serializer="raw"`` and call
:meth:`schemas.codec.TopicCodec.decode` with the event's partition and offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from faust.serializers import codecs as faust_codecs

from schemas.codec import Codecs, TopicCodec, build_codecs, decode_key, encode_key

CODEC_NAME_PREFIX: Final[str] = "avro:"
KEY_CODEC_NAME: Final[str] = "utf8"


def codec_name(topic: str) -> str:
    """The faust serializer name of a logical topic's values."""
    return f"{CODEC_NAME_PREFIX}{topic}"


class AvroCodec(faust_codecs.Codec):
    """faust codec for one topic's values: Confluent-framed Avro <-> ``dict``.

    The topic codec travels in ``kwargs`` so faust's :meth:`clone` (used when
    codecs are chained with ``|``) rebuilds an equivalent codec.
    """

    def __init__(
        self, children: tuple[Any, ...] | None = None, *, topic_codec: TopicCodec, **kwargs: Any
    ) -> None:
        super().__init__(children, topic_codec=topic_codec, **kwargs)
        self.topic_codec = topic_codec

    def _dumps(self, obj: Any) -> bytes:
        record = obj.to_representation() if hasattr(obj, "to_representation") else obj
        return self.topic_codec.encode(record)

    def _loads(self, s: bytes) -> Any:
        return self.topic_codec.decode(s)


class Utf8KeyCodec(faust_codecs.Codec):
    """faust codec for message keys: ``str`` <-> UTF-8 bytes."""

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        return encode_key(str(obj))

    def _loads(self, s: bytes) -> Any:
        return decode_key(s, topic="<faust key>")


def register_faust_codecs(codecs: Codecs | None = None) -> Mapping[str, faust_codecs.Codec]:
    """Register ``avro:<topic>`` for every topic and ``utf8`` for keys; return them by name.

    Without ``codecs`` the catalog codecs are built (no Schema Registry).
    Registering again replaces the earlier codecs (faust's registry is global).
    """
    built = codecs if codecs is not None else build_codecs()
    registered: dict[str, faust_codecs.Codec] = {
        codec_name(topic): AvroCodec(topic_codec=built.for_topic(topic)) for topic in built.topics
    }
    registered[KEY_CODEC_NAME] = Utf8KeyCodec()
    for name, codec in registered.items():
        faust_codecs.register(name, codec)
    return registered
