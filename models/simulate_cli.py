"""``paystream simulate``: simulated payments with fraud, to files and/or to Kafka.

    paystream simulate --customers 2000 --days 60 --out data/sim     # files
    paystream simulate --produce                                     # the configured broker

``--out DIR`` writes ``requests.jsonl`` and ``labels.jsonl`` (one JSON object a line,
in event order: requests by ``created_at_ms``, labels by ``labeled_at_ms``),
``truth.jsonl`` (``request_id``, ``is_fraud``, ``scenario`` of every scored
request, for evaluating models; it never goes to Kafka) and ``summary.json``.
``--produce`` sends the requests to payments.requests and then the labels to
fraud.labels, keyed by account like every producer, creating missing topics first.
Requests are streamed: memory stays flat however large the load.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from models.simulate import SCORED_KINDS, SimulationSpec, Simulator
from streams.errors import CommandError
from streams.settings import Settings

PRODUCE_FLUSH_TIMEOUT_S = 60.0
PRODUCE_POLL_S = 0.1
DELIVERY_ERRORS_SHOWN_MAX = 3


class _KafkaSink:
    """Encodes and produces records; remembers the first delivery errors."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        from agents.pipeline import producer_config
        from schemas.codec import load_codec
        from streams.topics import create_topics

        create_topics(settings)
        self._settings = settings
        self._codec = load_codec(settings.schema_registry_url)
        self._producer = Producer(producer_config(settings))
        self._errors: list[str] = []
        self.produced = 0

    def send(self, topic: str, key: str, record: Any) -> None:
        from schemas.codec import encode_key

        value = self._codec.encode(topic, record)
        name = self._settings.topic(topic)
        while True:
            try:
                self._producer.produce(name, value, encode_key(key), on_delivery=self._delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(PRODUCE_POLL_S)
        self._producer.poll(0)
        self.produced += 1

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None and len(self._errors) < DELIVERY_ERRORS_SHOWN_MAX:
            self._errors.append(str(err))

    def flush(self) -> None:
        remaining = self._producer.flush(PRODUCE_FLUSH_TIMEOUT_S)
        if remaining:
            raise CommandError(
                f"{remaining} records not acknowledged by {self._settings.brokers} after "
                f"{PRODUCE_FLUSH_TIMEOUT_S:.0f} s; is Kafka running (`paystream dev up`)?"
            )
        if self._errors:
            raise CommandError(f"delivery to {self._settings.brokers} failed: {self._errors[0]}")


def _spec(args: argparse.Namespace) -> SimulationSpec:
    fields: dict[str, Any] = {
        "customers": args.customers,
        "merchants": args.merchants,
        "days": args.days,
        "seed": args.seed,
        "fraud_rate": args.fraud_rate,
    }
    if args.start_ms is not None:
        fields["start_ms"] = args.start_ms
    try:
        return SimulationSpec(**fields)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


def _line(record: Any) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


def run_simulation(
    spec: SimulationSpec, out: Path | None, sink: _KafkaSink | None
) -> dict[str, Any]:
    """Stream one simulation to the files under ``out`` and/or the Kafka ``sink``."""
    from streams import topics as names

    simulator = Simulator(spec, record_truth=out is not None)
    started = time.monotonic()
    with ExitStack() as stack:
        requests_file: IO[str] | None = None
        truth_file: IO[str] | None = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            requests_file = stack.enter_context((out / "requests.jsonl").open("w"))
            truth_file = stack.enter_context((out / "truth.jsonl").open("w"))
        for request in simulator.requests():
            if requests_file is not None and truth_file is not None:
                requests_file.write(_line(request))
                if request["kind"] in SCORED_KINDS:
                    # Popped as written: the truth of a long run never piles up in memory.
                    request_id = request["request_id"]
                    truth = {
                        "request_id": request_id,
                        "is_fraud": simulator.is_fraud.pop(request_id),
                        "scenario": simulator.scenario.pop(request_id),
                    }
                    truth_file.write(_line(truth))
            if sink is not None:
                sink.send(names.REQUESTS, request["account_id"], request)
    elapsed_s = time.monotonic() - started
    labels = simulator.labels()
    summary = simulator.summary()
    summary["elapsed_s"] = round(elapsed_s, 3)
    if out is not None:
        with (out / "labels.jsonl").open("w") as labels_file:
            labels_file.writelines(_line(label) for label in labels)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if sink is not None:
        for label in labels:
            sink.send(names.FRAUD_LABELS, label["account_id"], label)
        sink.flush()
    return summary


def format_summary(summary: dict[str, Any]) -> list[str]:
    """A few lines for people: volume, mix, fraud and labels."""
    spec = summary["spec"]
    labels = summary["labels"]
    elapsed = max(summary.get("elapsed_s", 0.0), 1e-9)
    lines = [
        f"simulated {summary['requests']:,} requests: {spec['customers']} customers, "
        f"{spec['merchants']} merchants, {spec['days']} days, seed {spec['seed']} "
        f"({summary['requests'] / elapsed:,.0f} requests/s)",
        "  by kind   " + "  ".join(f"{k} {n:,}" for k, n in summary["by_kind"].items()),
        f"  scored    {summary['scored']:,}, fraud {summary['fraud']:,} "
        f"({summary['fraud_rate']:.3%}; {summary['fraud_declined_by_balance']} would bounce "
        "on the balance)",
        "  scenarios " + "  ".join(f"{k} {n:,}" for k, n in summary["by_scenario"].items()),
        f"  labels    {labels['total']:,}: {labels['fraud']:,} fraud "
        f"({labels['friendly_fraud']} friendly fraud), {labels['not_fraud']} cleared; "
        + "  ".join(f"{k} {n}" for k, n in labels["by_source"].items())
        + f"; {labels['fraud_labelled_share']:.0%} of fraud labelled",
    ]
    return lines


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    spec = _spec(args)
    out = Path(args.out) if args.out else None
    sink = _KafkaSink(settings) if args.produce else None
    try:
        summary = run_simulation(spec, out, sink)
    except OSError as exc:
        raise CommandError(f"cannot write the simulation to {out}: {exc}") from exc
    for line in format_summary(summary):
        print(line)
    if out is not None:
        print(f"  wrote     {out}/requests.jsonl, labels.jsonl, truth.jsonl, summary.json")
    if sink is not None:
        print(
            f"  produced  {sink.produced:,} records to {settings.topic('payments.requests')} "
            f"and {settings.topic('fraud.labels')} on {settings.brokers}"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    default = SimulationSpec()
    simulate = subparsers.add_parser(
        "simulate",
        help="simulated payment traffic with fraud and late labels (files and/or Kafka)",
        description=(
            "Customers, merchants and fraud scenarios (account takeover, card testing, "
            "compromised merchants, mule cash-outs) with chargeback labels days later. "
            "Seeded: the same options give the same records."
        ),
    )
    simulate.add_argument("--customers", type=int, default=default.customers)
    simulate.add_argument("--merchants", type=int, default=default.merchants)
    simulate.add_argument("--days", type=int, default=default.days)
    simulate.add_argument("--seed", type=int, default=default.seed)
    simulate.add_argument(
        "--fraud-rate",
        type=float,
        default=default.fraud_rate,
        help="share of scored requests that are fraud (default %(default)s; 0.001-0.01)",
    )
    simulate.add_argument(
        "--start-ms", type=int, help="simulated start, epoch ms (default 2026-01-01T00:00Z)"
    )
    simulate.add_argument(
        "--out", metavar="DIR", help="write requests/labels/truth .jsonl and summary.json"
    )
    simulate.add_argument(
        "--produce",
        action="store_true",
        help="send requests to payments.requests and labels to fraud.labels",
    )
    simulate.set_defaults(func=_cmd_simulate)
