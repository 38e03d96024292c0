"""``paystream replay``: re-send a range of a topic into a topic, or straight into the ledger.

Backfills rely on every effect being idempotent: a request replayed into
payments.requests is answered from its idempotency record (same decision, no
money moved) and a ledger transaction replayed into the sink is skipped by its
transaction id. The one unsafe case is replaying requests older than the
idempotency window, whose records have expired: the replay refuses it unless told
``--force``.

Ranges are half-open per partition: ``[--from, --to)``. Each bound is an offset
(an integer), an ISO 8601 time (``2026-11-22T10:00:00Z``, compared with the
message timestamps), ``earliest`` or ``latest``. ``latest`` is fixed when the
replay starts, so replaying a topic into itself terminates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from streams import topics as names
from streams.errors import CommandError
from streams.reporting import Progress
from streams.settings import Settings

METADATA_TIMEOUT_S = 10.0
CONSUME_MESSAGES_MAX = 5_000
REPLAY_HEADER = "paystream-replay-of"
SINKS = ("ledger",)


@dataclass(frozen=True)
class Bound:
    """One end of a range: an offset, a time in ms, or earliest/latest."""

    offset: int | None = None
    time_ms: int | None = None
    edge: str | None = None  # "earliest" | "latest"


def parse_bound(text: str) -> Bound:
    value = text.strip()
    if value in ("earliest", "latest"):
        return Bound(edge=value)
    if value.lstrip("-").isdigit():
        offset = int(value)
        if offset < 0:
            raise CommandError(f"offset {value}: offsets are 0 or more")
        return Bound(offset=offset)
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(
            f"{text!r} is not an offset, an ISO 8601 time (2026-11-22T10:00:00Z), "
            "'earliest' or 'latest'"
        ) from None
    if moment.tzinfo is None:
        raise CommandError(f"{text!r}: give a time zone (e.g. a trailing Z for UTC)")
    return Bound(time_ms=int(moment.timestamp() * 1000))


def parse_partitions(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        partitions = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise CommandError(f"--partitions {text!r}: give comma-separated numbers") from None
    if not partitions or partitions[0] < 0:
        raise CommandError(f"--partitions {text!r}: give partition numbers 0 or more")
    return partitions


@dataclass
class ReplayReport:
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> [start, end)
    messages: int = 0
    produced: int = 0
    written: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    elapsed_s: float = 0.0


@dataclass
class ReplaySpec:
    topic: str  # logical name
    start: Bound
    end: Bound
    partitions: list[int] | None = None
    into: str | None = None  # logical topic
    sink: str | None = None
    dry_run: bool = False
    rate_per_s: float | None = None
    force: bool = False


def resolve_ranges(consumer: Any, topic: str, spec: ReplaySpec) -> dict[int, tuple[int, int]]:
    """[start, end) offsets per partition for the spec's bounds."""
    from confluent_kafka import TopicPartition

    meta = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None:
        raise CommandError(f"topic {topic} does not exist")
    available = sorted(meta.partitions)
    wanted = spec.partitions if spec.partitions is not None else available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise CommandError(f"{topic} has partitions {available}, not {unknown}")
    ranges = {}
    for p in wanted:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=METADATA_TIMEOUT_S
        )

        def locate(bound: Bound, partition: int = p, low: int = low, high: int = high) -> int:
            if bound.edge == "earliest":
                return low
            if bound.edge == "latest":
                return high
            if bound.offset is not None:
                return min(max(bound.offset, low), high)
            assert bound.time_ms is not None
            [found] = consumer.offsets_for_times(
                [TopicPartition(topic, partition, bound.time_ms)], timeout=METADATA_TIMEOUT_S
            )
            return high if found.offset < 0 else max(found.offset, low)

        start, end = locate(spec.start), locate(spec.end)
        ranges[p] = (start, max(start, end))
    return ranges


def _refuse_expired_requests(
    consumer: Any, topic: str, ranges: dict[int, tuple[int, int]], settings: Settings
) -> None:
    """Requests older than the idempotency window would be applied again: refuse."""
    from confluent_kafka import TopicPartition

    cutoff_ms = int(time.time() * 1000) - settings.idempotency_window_s * 1000
    for p, (start, end) in ranges.items():
        if start >= end:
            continue
        [first_fresh] = consumer.offsets_for_times(
            [TopicPartition(topic, p, cutoff_ms)], timeout=METADATA_TIMEOUT_S
        )
        fresh_from = end if first_fresh.offset < 0 else first_fresh.offset
        if start < fresh_from:
            raise CommandError(
                f"{topic}[{p}] offsets {start}..{min(end, fresh_from) - 1} are older than the "
                f"idempotency window ({settings.idempotency_window_s} s): their idempotency "
                "records have expired, so replaying them would move money again. Narrow the "
                "range, or pass --force if you know they were never applied."
            )


def replay(settings: Settings, spec: ReplaySpec) -> ReplayReport:
    from confluent_kafka import Consumer, Producer, TopicPartition

    from agents.pipeline import producer_config

    if (spec.into is None) == (spec.sink is None):
        raise CommandError("give exactly one of --into TOPIC or --sink ledger")
    if spec.sink is not None and (spec.sink not in SINKS or spec.topic != names.LEDGER):
        raise CommandError(f"--sink ledger replays {names.LEDGER} only")
    source = settings.topic(spec.topic)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.brokers,
            "group.id": f"{settings.app_id}-replay",  # never commits: offsets are explicit
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    report = ReplayReport()
    started = time.monotonic()
    try:
        report.ranges = resolve_ranges(consumer, source, spec)
        if spec.into == names.REQUESTS and not spec.force and not spec.dry_run:
            _refuse_expired_requests(consumer, source, report.ranges, settings)
        total = sum(end - start for start, end in report.ranges.values())
        pending = {p: r for p, r in report.ranges.items() if r[0] < r[1]}
        consumer.assign([TopicPartition(source, p, r[0]) for p, r in pending.items()])
        producer = Producer(producer_config(settings)) if spec.into and not spec.dry_run else None
        batches = None
        if spec.sink is not None and not spec.dry_run:
            from streams.ledger.sink import BatchWriter

            batches = BatchWriter(settings)
            batches.check_schema(_sleep)
        target = settings.topic(spec.into) if spec.into else None
        bar = Progress("replaying", total)
        while pending:
            messages = []
            for msg in consumer.consume(CONSUME_MESSAGES_MAX, 1.0):
                if msg.error() is not None:
                    continue  # partition EOF and transient errors; bounds decide when we stop
                p, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                if p not in pending or offset >= pending[p][1]:
                    continue
                messages.append(msg)
                if offset + 1 >= pending[p][1]:
                    del pending[p]
            if not messages:
                _stop_at_ends(consumer, source, pending)
                continue
            report.messages += len(messages)
            if producer is not None and target is not None:
                report.produced += _forward(producer, messages, target, spec.topic)
            if batches is not None:
                batches.handle(messages, _sleep)
            _throttle(spec.rate_per_s, report.messages, started)
            bar.update(report.messages)
        if producer is not None and producer.flush(60):
            raise CommandError(f"replay: messages to {target} not delivered within 60 s")
        if batches is not None:
            report.written = batches.stats.transactions
            report.duplicates = batches.stats.duplicates
            report.dead_letters = batches.stats.dead_letters
            batches.close()
        bar.finish(report.messages)
    finally:
        consumer.close()
    report.elapsed_s = time.monotonic() - started
    return report


def _forward(producer: Any, messages: list[Any], target: str, source_topic: str) -> int:
    """Produce the messages' original bytes; dead letters are unwrapped to their original."""
    codec = None
    if source_topic == names.DLQ:
        from schemas.codec import load_codec

        codec = load_codec(None)
    for msg in messages:
        key, value = msg.key(), msg.value()
        if codec is not None:
            letter: Any = codec.decode(names.DLQ, value, msg.partition(), msg.offset())
            key, value = letter["original_key"], letter["original_value"]
        origin = f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode()
        while True:
            try:
                producer.produce(target, value, key, headers=[(REPLAY_HEADER, origin)])
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    return len(messages)


def _stop_at_ends(consumer: Any, topic: str, pending: dict[int, tuple[int, int]]) -> None:
    """Drop partitions whose messages up to the end bound were deleted or compacted away."""
    from confluent_kafka import TopicPartition

    for p in list(pending):
        position = consumer.position([TopicPartition(topic, p)])[0].offset
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=False)
        if position >= pending[p][1] or (position >= high >= 0):
            del pending[p]


def _throttle(rate_per_s: float | None, done: int, started: float) -> None:
    if rate_per_s:
        ahead_s = done / rate_per_s - (time.monotonic() - started)
        if ahead_s > 0:
            time.sleep(ahead_s)


def _sleep(delay_s: float) -> bool:
    time.sleep(delay_s)
    return True


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay", help="replay a range of a topic into a topic or the ledger sink (backfills)"
    )
    parser.add_argument("--topic", required=True, help="logical topic, e.g. ledger.entries")
    parser.add_argument("--from", dest="start", default="earliest", help="offset|time|earliest")
    parser.add_argument("--to", dest="end", default="latest", help="offset|time|latest (excl.)")
    parser.add_argument("--partitions", help="comma-separated partitions (default: all)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--into", help="logical topic to produce into")
    target.add_argument("--sink", choices=SINKS, help="write straight into the ledger sink")
    parser.add_argument("--dry-run", action="store_true", help="count, change nothing")
    parser.add_argument("--rate", type=float, default=None, help="messages per second, at most")
    parser.add_argument(
        "--force", action="store_true",
        help="allow replaying requests older than the idempotency window",
    )  # fmt: skip
    parser.set_defaults(func=_cmd_replay)


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    if args.rate is not None and args.rate <= 0:
        raise CommandError(f"--rate {args.rate}: give a positive number of messages per second")
    spec = ReplaySpec(
        topic=args.topic,
        start=parse_bound(args.start),
        end=parse_bound(args.end),
        partitions=parse_partitions(args.partitions),
        into=args.into,
        sink=args.sink,
        dry_run=args.dry_run,
        rate_per_s=args.rate,
        force=args.force,
    )
    report = replay(settings, spec)
    ranges = ", ".join(f"p{p} {a}..{b}" for p, (a, b) in sorted(report.ranges.items()))
    where = f"into {spec.into}" if spec.into else f"into the {spec.sink} sink"
    verb = "would replay" if spec.dry_run else "replayed"
    print(f"{verb} {report.messages} messages of {spec.topic} [{ranges}] {where} "
          f"in {report.elapsed_s:.1f} s")  # fmt: skip
    if spec.sink and not spec.dry_run:
        print(
            f"ledger: {report.written} transactions written, {report.duplicates} already there, "
            f"{report.dead_letters} dead letters"
        )
    return 0
