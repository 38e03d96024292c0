"""Run real `paystream worker` processes against the session's broker and read topics back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from agents.pipeline import producer_config
from agents.rules.records import Request
from schemas.codec import load_codec
from streams import topics as names
from streams.dev import free_loopback_ports
from streams.ledger.reconcile import worker_balances as changelog_balances
from streams.settings import Settings, load_settings
from streams.topics import create_topics

WORKER_READY_TIMEOUT_S = 90.0
WORKER_STOP_TIMEOUT_S = 30.0


def isolated_settings(
    bootstrap: str, state_dir: Path, partitions: int = 4, **extra: str
) -> Settings:
    """Settings for one test: its own topics (prefix), consumer group and state dir."""
    run = uuid.uuid4().hex[:8]
    env = {
        "PAYSTREAM_BROKERS": bootstrap,
        "PAYSTREAM_TOPIC_PREFIX": f"t{run}.",
        "PAYSTREAM_APP_ID": f"paystream-t{run}",
        "PAYSTREAM_PARTITIONS": str(partitions),
        "PAYSTREAM_STATE_DIR": str(state_dir),
        "PAYSTREAM_WEB_PORT": str(free_loopback_ports(1)[0]),
        "PAYSTREAM_LOG_LEVEL": "INFO",
        **extra,
    }
    settings = load_settings(env)
    create_topics(settings)
    return settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment of a child process with exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_")}
    env.update(settings.to_env())
    return env


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path
    web_port: int

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def log_digest(self, lines: int = 40) -> str:
        """For a failure message: the log's warnings and errors, where each partition
        began, how recovery went, then its tail (CI keeps only what a test prints)."""
        text = self.log_path.read_text(errors="replace").splitlines()
        marks = ("[WARNING]", "[ERROR]", "[CRITICAL]", "processing from", "Recovery]", "Ready")
        notable = [line for line in text if any(mark in line for mark in marks)]
        return "\n".join(
            [
                f"--- {self.log_path.name}: {len(notable)} notable lines (last 120)",
                *notable[-120:],
                f"--- last {lines} lines",
                *text[-lines:],
            ]
        )


@contextmanager
def running_worker(settings: Settings, web_port: int | None = None) -> Iterator[Worker]:
    """A real faust worker subprocess; stopped (SIGTERM, then SIGKILL) on exit."""
    port = web_port or settings.web_port
    env = settings_env(settings)
    env["PAYSTREAM_WEB_PORT"] = str(port)
    log_path = settings.state_dir / f"worker-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    worker = Worker(process, log_path, port)
    try:
        yield worker
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def produce(settings: Settings, topic: str, records: Iterable[tuple[str, dict[str, Any]]]) -> int:
    """Avro-encode and send (key, record) pairs to a logical topic; returns the count."""
    codec = load_codec(settings.schema_registry_url)
    producer = Producer(producer_config(settings))
    count = 0
    for key, record in records:
        value = codec.encode(topic, record)
        while True:
            try:
                producer.produce(settings.topic(topic), value, key.encode())
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
    assert producer.flush(30) == 0
    return count


def produce_raw(settings: Settings, topic: str, key: bytes | None, value: bytes) -> None:
    producer = Producer(producer_config(settings))
    producer.produce(settings.topic(topic), value, key)
    assert producer.flush(30) == 0


def send_requests(settings: Settings, requests: Iterable[Request]) -> int:
    return produce(settings, names.REQUESTS, ((r["account_id"], dict(r)) for r in requests))


def publish_fx_rates(settings: Settings, rates: Iterable[dict[str, Any]]) -> int:
    return produce(
        settings,
        names.FX_RATES,
        ((r["key"], {k: v for k, v in r.items() if k != "key"}) for r in rates),
    )


def read_topic(
    settings: Settings,
    topic: str,
    *,
    until: Any = None,
    timeout_s: float = 60.0,
    decode: bool = True,
    worker: Worker | None = None,
) -> list[Any]:
    """Read a logical topic from the beginning until ``until(records)`` is true or time runs out."""
    codec = load_codec(settings.schema_registry_url)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.brokers,
            "group.id": f"test-reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    name = settings.topic(topic)
    meta = consumer.list_topics(name, timeout=10).topics[name]
    consumer.assign([TopicPartition(name, p, 0) for p in meta.partitions])
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(5000, 0.2):
                if msg.error() is not None:
                    continue
                if decode:
                    records.append(codec.decode(topic, msg.value(), msg.partition(), msg.offset()))
                else:
                    records.append(msg)
            if until is not None and until(records):
                break
            if worker is not None and worker.process.poll() is not None:
                raise AssertionError(
                    f"worker exited ({worker.process.returncode}):\n{worker.log_digest()}"
                )
            if until is None and time.monotonic() > deadline - timeout_s + 5:
                break
    finally:
        consumer.close()
    return records


def ledger_balances(transactions: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """credits - debits per (account, currency), each transaction counted once."""
    seen: set[str] = set()
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for tx in transactions:
        if tx["transaction_id"] in seen:
            continue
        seen.add(tx["transaction_id"])
        for entry in tx["entries"]:
            sign = 1 if entry["direction"] == "CREDIT" else -1
            totals[(entry["account_id"], entry["currency"])] += sign * entry["amount_minor"]
    return totals


def worker_balances(settings: Settings) -> dict[tuple[str, str], int]:
    """Non-zero balances the workers hold (latest values in the accounts changelog)."""
    return {key: value for key, value in changelog_balances(settings).items() if value}
