"""PaymentClient: how producers submit payment requests and wait for their decisions.

    from streams.client import PaymentClient
    with PaymentClient.from_env() as client:
        request_id = client.submit("TOPUP", "acct-1", 10_000, "EUR")
        decision = client.await_decision(request_id, timeout_s=10)

Requests go out idempotently (acks=all, enable.idempotence) keyed by the payer with
the murmur2 partitioner, the one faust and the Java clients use, so a request
lands on the partition that owns the payer's state.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from agents.rules.records import Decision, Request, RequestKind
from streams import topics as names
from streams.errors import PaystreamError
from streams.settings import Settings, load_settings

DECISIONS_CACHED_MAX = 100_000
POLL_S = 0.1
WATERMARK_TIMEOUT_S = 15.0


def _end_offset(consumer: Any, partition: Any) -> int:
    """High watermark of a partition, retried while a new topic's leader settles."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + WATERMARK_TIMEOUT_S
    while True:
        try:
            _, high = consumer.get_watermark_offsets(partition, timeout=WATERMARK_TIMEOUT_S)
            return int(high)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL_S)


class DecisionTimeout(PaystreamError):
    """No decision arrived in time; the request may still be decided later."""


def new_request(
    kind: RequestKind,
    account_id: str,
    amount_minor: int,
    currency: str,
    *,
    counterparty_id: str | None = None,
    payment_id: str | None = None,
    idempotency_key: str | None = None,
    request_id: str | None = None,
    created_at_ms: int | None = None,
    expires_at_ms: int | None = None,
    device_id: str | None = None,
    country: str | None = None,
    merchant_category: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Request:
    """A complete request record with fresh ids; amounts are integer minor units."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise TypeError(f"amount_minor must be an int of minor units, got {amount_minor!r}")
    request_id = request_id or str(uuid.uuid4())
    return {
        "request_id": request_id,
        "idempotency_key": idempotency_key or request_id,
        "kind": kind,
        "account_id": account_id,
        "counterparty_id": counterparty_id,
        "payment_id": payment_id,
        "amount_minor": amount_minor,
        "currency": currency,
        "created_at_ms": created_at_ms if created_at_ms is not None else int(time.time() * 1000),
        "expires_at_ms": expires_at_ms,
        "device_id": device_id,
        "country": country,
        "merchant_category": merchant_category,
        "metadata": metadata or {},
    }


class PaymentClient:
    """Submit requests to payments.requests and read their decisions back."""

    def __init__(self, settings: Settings, *, watch_decisions: bool = True) -> None:
        from confluent_kafka import Producer

        from agents.pipeline import producer_config
        from schemas.codec import load_codec

        self.settings = settings
        self._codec = load_codec(settings.schema_registry_url)
        self._producer = Producer(producer_config(settings))
        self._requests_topic = settings.topic(names.REQUESTS)
        self._decisions: OrderedDict[str, Decision] = OrderedDict()
        self._arrived = threading.Condition()
        self._stop = threading.Event()
        self._errors: list[str] = []
        self._watcher: threading.Thread | None = None
        if watch_decisions:
            self._watcher = self._start_watcher()

    @classmethod
    def from_env(cls) -> PaymentClient:
        return cls(load_settings())

    # -- submitting -------------------------------------------------------------------
    def submit_request(self, request: Request) -> str:
        """Send a prepared request; returns its request_id. Delivery is asynchronous."""
        value = self._codec.encode(names.REQUESTS, request)
        self._produce(request["account_id"].encode(), value)
        return request["request_id"]

    def submit(
        self, kind: RequestKind, account_id: str, amount_minor: int, currency: str, **fields: Any
    ) -> str:
        """Build and send a request (see ``new_request`` for the fields); returns request_id."""
        return self.submit_request(new_request(kind, account_id, amount_minor, currency, **fields))

    def _produce(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(
                    self._requests_topic, value, key, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                self._producer.poll(POLL_S)
        self._producer.poll(0)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every submitted request is acknowledged by the brokers."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise PaystreamError(f"{remaining} requests not acknowledged after {timeout_s} s")
        if self._errors:
            raise PaystreamError(f"request delivery failed: {self._errors[0]}")

    # -- decisions --------------------------------------------------------------------
    def _start_watcher(self) -> threading.Thread:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.brokers,
                "group.id": f"paystream-client-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "latest",
            }
        )
        topic = self.settings.topic(names.DECISIONS)
        metadata = consumer.list_topics(topic, timeout=10)
        if metadata.topics[topic].error is not None:
            raise PaystreamError(f"cannot read {topic}: {metadata.topics[topic].error}")
        assignment = []
        for partition in metadata.topics[topic].partitions:
            high = _end_offset(consumer, TopicPartition(topic, partition))
            assignment.append(TopicPartition(topic, partition, high))
        consumer.assign(assignment)
        thread = threading.Thread(target=self._watch, args=(consumer,), daemon=True)
        thread.start()
        return thread

    def _watch(self, consumer: Any) -> None:
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(1000, POLL_S):
                    if msg.error() is not None or msg.value() is None:
                        continue
                    decision = self._codec.decode(names.DECISIONS, msg.value())
                    with self._arrived:
                        self._decisions[decision["request_id"]] = decision  # type: ignore[assignment]
                        while len(self._decisions) > DECISIONS_CACHED_MAX:
                            self._decisions.popitem(last=False)
                        self._arrived.notify_all()
        finally:
            consumer.close()

    def await_decision(self, request_id: str, timeout_s: float = 10.0) -> Decision:
        """Block until the decision for ``request_id`` arrives; DecisionTimeout otherwise."""
        if self._watcher is None:
            raise PaystreamError("this client was created with watch_decisions=False")
        self._producer.poll(0)
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while request_id not in self._decisions:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DecisionTimeout(
                        f"no decision for request {request_id} within {timeout_s} s; "
                        "is a worker running (`paystream worker`)?"
                    )
                self._arrived.wait(min(left, POLL_S))
            return self._decisions[request_id]

    def decided(self, request_ids: set[str], wait_s: float = 0.0) -> dict[str, Decision]:
        """Decisions seen so far for any of ``request_ids``, after waiting up to ``wait_s``."""
        with self._arrived:
            if wait_s > 0:
                self._arrived.wait(wait_s)
            return {rid: self._decisions[rid] for rid in request_ids if rid in self._decisions}

    def publish_fx_rate(
        self, base: str, quote: str, rate: str, spread_bps: int, as_of_ms: int
    ) -> None:
        """Publish a rate on fx.rates (compacted, keyed "BASE/QUOTE"); rate is a decimal string."""
        record = {
            "base": base,
            "quote": quote,
            "rate": rate,
            "spread_bps": spread_bps,
            "as_of_ms": as_of_ms,
        }
        value = self._codec.encode(names.FX_RATES, record)
        self._producer.produce(
            self.settings.topic(names.FX_RATES), value, f"{base}/{quote}".encode()
        )

    def close(self) -> None:
        self._producer.flush(30)
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)

    def __enter__(self) -> PaymentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
