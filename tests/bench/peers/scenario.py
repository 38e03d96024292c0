"""A small payment scenario, its expected outputs from paystream's own Processor, and a
peer process to run it through (shared by the peer integration tests).

The expected outputs come from :class:`agents.pipeline.Processor` in process (an
in-memory store, no producer): the paystream worker's batch logic on the very same
bytes, its legs fed back until none are left. The scenario is built so that no result
depends on when a leg arrives relative to the requests around it (payees whose balance
matters do nothing in phase one; the refunding payer sends nothing after its refund),
so any correct per-event pipeline must produce exactly these outputs.

Phase two runs once every leg of phase one is applied: each payee pays out exactly the
balance the reference holds for it, then one minor unit more. Approved then declined
``insufficient_funds`` proves the credits reached the payee's own state.
"""

from __future__ import annotations

import datetime as dt
import itertools
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from confluent_kafka import Producer

from agents.fraud import FraudStage
from agents.pipeline import AccountStates, HeldOutput, Message, Processor, producer_config
from agents.rules.records import Request
from bench.peers._work import rules_baseline
from schemas.codec import load_codec
from streams import topics as names
from streams.client import new_request
from streams.settings import Settings
from tests.support.pipeline import read_topic, settings_env

BASE_MS = int(dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC).timestamp() * 1000)
STEP_MS = 5_000
CUSTOMERS = 28
PAYMENTS_PER_CUSTOMER = 8
SAVERS = ("s0", "s1", "s2", "s3", "s4")  # paid by customers; request only in phase two
MERCHANTS = ("m0", "m1", "m2", "m3")
GARBAGE = b"\x00\x00\x00\x00\x07not avro"
PEER_STOP_TIMEOUT_S = 30.0
PAYEES = (*SAVERS, "m0", "m1")  # phase two: each spends its balance exactly
CODEC = load_codec(None)
# What phase one must exercise (checked on the reference, so the scenario cannot rot).
SCENARIO_OUTCOMES = {
    "APPROVED", "insufficient_funds", "fraudulent", "idempotency_conflict",
    "fx_rate_unavailable", "currency_not_supported",
}  # fmt: skip
OUTPUT_TOPICS = (names.DECISIONS, names.LEDGER, names.LEGS, names.NOTIFICATIONS, names.DLQ)


@dataclass
class Scenario:
    """Request messages (key, value bytes) in the order they are sent."""

    messages: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    request_ids: set[str] = field(default_factory=set)  # those expecting a decision

    def add(self, request: Request, key: bytes | None = None) -> str:
        """A request under its account's key (or under ``key``: a wrong one)."""
        value = CODEC.encode(names.REQUESTS, request)
        self.messages.append((key or request["account_id"].encode(), value))
        if key is None:
            self.request_ids.add(request["request_id"])
        return request["request_id"]


def phase_one() -> Scenario:
    """~290 messages: top-ups, payments (some unaffordable), customer-to-customer
    payments, an authorize + capture, a payment with its partial refund, an idempotent
    retry and a conflicting reuse, declines the rules must find, two malformed."""
    at = itertools.count(BASE_MS, STEP_MS)
    s = Scenario()

    def request(
        kind: Any, account: str, amount: int, currency: str = "EUR", **extra: Any
    ) -> Request:
        return new_request(kind, account, amount, currency, created_at_ms=next(at),
                           device_id=f"dev-{account}", country="DE", **extra)  # fmt: skip

    customers = [f"c{i:02d}" for i in range(CUSTOMERS)]
    for account in [*customers, "a0", "r0", "i0"]:
        s.add(request("TOPUP", account, 100_00, counterparty_id="bank:1"))
    for account in SAVERS:
        s.add(request("TOPUP", account, 10_00, counterparty_id="bank:1"))
    for round_ in range(PAYMENTS_PER_CUSTOMER):
        for i, account in enumerate(customers):
            payee = SAVERS[i % len(SAVERS)] if round_ % 4 == 3 else MERCHANTS[(i + round_) % 4]
            amount = 3_00 + ((i * 7 + round_ * 13) % 20) * 1_00  # 3.00 .. 22.00
            s.add(request("PAYMENT", account, amount, counterparty_id=payee))
    # Authorize, then capture less (the rest is released); the payee gets the capture.
    hold = s.add(request("AUTHORIZE", "a0", 20_00, counterparty_id="m1"))
    s.add(request("CAPTURE", "a0", 15_00, payment_id=hold))
    # A payment and its partial refund; the refunding payer sends nothing afterwards.
    paid = s.add(request("PAYMENT", "r0", 40_00, counterparty_id="m0"))
    s.add(request("REFUND", "r0", 10_00, payment_id=paid))
    # Idempotency: the same key and payload again (a copy), then another payload.
    original = request("PAYMENT", "i0", 5_00, counterparty_id="m2", idempotency_key="order-1")
    retry = dict(original, request_id=str(uuid.uuid4()), created_at_ms=next(at))
    s.add(original)
    s.add(cast(Request, retry))
    s.add(request("PAYMENT", "i0", 6_00, counterparty_id="m2", idempotency_key="order-1"))
    # Declines the rules must find: no USD rate (none is published), an unknown currency.
    s.add(request("PAYMENT", "c00", 12_00, "USD", counterparty_id="m3"))
    s.add(request("PAYMENT", "c01", 1_00, "XXX", counterparty_id="m3"))
    # Malformed: bytes that are no Avro request, and a request under another account's key.
    s.messages.append((b"c02", GARBAGE))
    s.add(request("PAYMENT", "c03", 1_00, counterparty_id="m3"), key=b"c04")
    return s


def phase_two(reference: Reference) -> Scenario:
    """Each payee pays out exactly the balance the reference holds for it, then 0.01 more."""
    at = itertools.count(BASE_MS + 3_600_000, STEP_MS)
    s = Scenario()
    for account in PAYEES:
        balance = reference.available_minor(account, "EUR")
        assert balance > 0, f"{account} received nothing in phase one"
        for amount in (balance, 1):
            s.add(new_request("PAYMENT", account, amount, "EUR", counterparty_id="m3",
                              created_at_ms=next(at)))  # fmt: skip
    return s


class _MemoryStore:
    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.values.get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.values[key] = value


class _NoProducer:
    def produce(self, topic: str, key: bytes | None, value: bytes, partition: int = -1) -> None:
        pass

    def poll(self) -> None:
        pass


class Reference:
    """The paystream worker's Processor in process: requests in one batch, then their legs
    (batch after batch, as emitted) until no leg is left."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        codec = load_codec(settings.schema_registry_url)
        producer: Any = _NoProducer()
        self.states = AccountStates(_MemoryStore(), producer, "reference-changelog")
        self.processor = Processor(
            settings, codec, self.states, producer, {}, FraudStage(rules_baseline()), "reference"
        )
        self.outputs: list[HeldOutput] = []
        self._request_offsets = itertools.count()
        self._leg_offsets = itertools.count()

    def run(self, scenario: Scenario) -> None:
        topic = self.settings.topic(names.REQUESTS)
        batch = [Message(topic, 0, next(self._request_offsets), k, v) for k, v in scenario.messages]
        held = self.processor.process_requests(batch)
        legs_topic = self.settings.topic(names.LEGS)
        while held:
            self.outputs.extend(held)
            legs = [
                Message(legs_topic, 0, next(self._leg_offsets), key, value)
                for topic_name, key, value in held
                if topic_name == legs_topic
            ]
            held = self.processor.process_legs(legs) if legs else []

    def available_minor(self, account: str, currency: str) -> int:
        state = self.states.load(0, account)
        assert state is not None, f"the reference has no state for {account}"
        return state.balances[currency].available_minor

    def expected(self) -> dict[str, dict[str, Any]]:
        return decoded(self.settings, self.outputs)


def decoded(settings: Settings, outputs: list[HeldOutput]) -> dict[str, dict[str, Any]]:
    """Encoded outputs (full topic names) as :func:`comparable` records."""
    full = {settings.topic(name): name for name in OUTPUT_TOPICS}
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in OUTPUT_TOPICS}
    for topic_name, _key, value in outputs:
        logical = full[topic_name]
        records[logical].append(CODEC.decode(logical, value))
    return comparable(records)


def comparable(records: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Outputs by topic and id, without what legitimately differs between pipelines: the
    wall clock (decided_at_ms, first_seen_ms), where a message was read (a leg's source
    position, a dead letter's partition and offset) and who processed it."""
    by_id: dict[str, Callable[[dict[str, Any]], str]] = {
        names.DECISIONS: lambda r: r["request_id"],
        names.LEDGER: lambda r: r["transaction_id"],
        names.LEGS: lambda r: r["leg_id"],
        names.NOTIFICATIONS: lambda r: r["notification_id"],
        names.DLQ: lambda r: f"{r['error_class']}:{r['original_key']!r}",
    }
    dropped = {
        "decided_at_ms", "source_partition", "source_offset",
        "original_partition", "original_offset", "first_seen_ms", "worker", "error",
    }  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    for logical, items in records.items():
        out[logical] = {
            by_id[logical](r): {k: v for k, v in r.items() if k not in dropped} for r in items
        }
    return out


def read_outputs(settings: Settings, expected: dict[str, dict[str, Any]], timeout_s: float,
                 alive: Callable[[], None]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every output topic, read until it holds as many distinct ids as expected."""
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    for logical in OUTPUT_TOPICS:
        want = len(expected[logical])

        def enough(records: list[dict[str, Any]], logical: str = logical, want: int = want) -> bool:
            alive()
            return len(comparable({logical: records})[logical]) >= want

        left = max(1.0, deadline - time.monotonic())
        records = read_topic(settings, logical, until=enough, timeout_s=left)
        got[logical] = comparable({logical: records})[logical]
    return got


@dataclass
class PeerRun:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"the peer exited ({self.process.returncode}):\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM; the exit code (a peer that needs SIGKILL fails the test)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(PEER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"the peer ignored SIGTERM:\n{self.log_tail()}") from None


def _interpreter(module: str) -> Path:
    """The Python the harness runs ``module`` with (the Quix peer has a virtualenv of its own)."""
    from bench.peers import PEERS

    for peer in PEERS:
        if peer.module == module:
            return peer.python()
    return Path(sys.executable)


@contextmanager
def running_peer(module: str, settings: Settings) -> Iterator[PeerRun]:
    log_path = settings.state_dir / f"{module.rsplit('.', 1)[-1]}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(_interpreter(module)), "-m", module], env=settings_env(settings),
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    run = PeerRun(process, log_path)
    try:
        yield run
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def send(settings: Settings, scenario: Scenario) -> None:
    """The scenario's messages, in order, through one murmur2-partitioning producer."""
    producer = Producer(producer_config(settings))
    for key, value in scenario.messages:
        producer.produce(settings.topic(names.REQUESTS), value, key)
    assert producer.flush(30) == 0


def topics_with(settings: Settings, marker: str) -> set[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.brokers})
    return {name for name in admin.list_topics(timeout=30).topics if marker in name}


def check_peer(module: str, peer_app_id: str, settings: Settings, timeout_s: float) -> None:
    """Run the scenario through the peer (``timeout_s`` per phase): every output equals the
    reference's, the peer exits 0 on SIGTERM, and the only topics it created are its own
    (their names hold ``peer_app_id``)."""
    harness_topics = topics_with(settings, settings.app_id.removeprefix("paystream-"))
    reference = Reference(settings)
    first = phase_one()
    reference.run(first)
    outcomes = {
        d["decline_code"] or d["status"] for d in reference.expected()[names.DECISIONS].values()
    }
    assert outcomes >= SCENARIO_OUTCOMES, (
        f"the scenario lost outcomes: {SCENARIO_OUTCOMES - outcomes}"
    )
    send(settings, first)
    with running_peer(module, settings) as peer:
        try:
            expected = reference.expected()
            got = read_outputs(settings, expected, timeout_s, peer.alive)
            assert_same(expected, got)
            second = phase_two(reference)
            reference.run(second)
            send(settings, second)
            expected = reference.expected()
            got = read_outputs(settings, expected, timeout_s, peer.alive)
            assert_same(expected, got)
        except AssertionError:
            print(peer.log_tail())
            raise
        assert peer.stop() == 0, f"unclean exit on SIGTERM:\n{peer.log_tail()}"
    statuses = {
        request_id: decision["decline_code"] or decision["status"]
        for request_id, decision in expected[names.DECISIONS].items()
        if request_id in second.request_ids
    }
    # Each payee's exact balance was approved, the next minor unit declined.
    assert sorted(statuses.values()) == sorted(["APPROVED", "insufficient_funds"] * len(PAYEES))
    letters = {letter["error_class"] for letter in expected[names.DLQ].values()}
    assert letters == {"schema_error", "invalid_key"}
    created = topics_with(settings, settings.app_id.removeprefix("paystream-")) - harness_topics
    assert created and all(peer_app_id in name for name in created), created


def assert_same(expected: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> None:
    for logical in OUTPUT_TOPICS:
        want, have = expected[logical], got[logical]
        missing = sorted(set(want) - set(have))[:5]
        extra = sorted(set(have) - set(want))[:5]
        assert not missing and not extra, f"{logical}: missing {missing}, unexpected {extra}"
        differ = [(want[i], have[i]) for i in want if want[i] != have[i]][:3]
        assert not differ, f"{logical}: {len(differ)} differ, e.g. {differ}"
