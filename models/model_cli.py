"""``paystream model train | list | promote | shadow``: the fraud model's life cycle.

- ``train`` builds the dataset from history (a simulation, a saved directory of
  ``requests.jsonl``/``labels.jsonl``, or the Kafka topics), trains, evaluates on a
  later window and writes a version into the registry (models/train.py);
- ``list`` shows the versions with their key metrics and which one is promoted;
- ``promote VERSION`` verifies the version and announces it as the champion on
  fraud.models: every worker loads it (verifying its sha256 first) and scores with it;
- ``shadow VERSION`` announces it as the shadow: scored next to the champion,
  recorded, never deciding.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Any

from streams.errors import CommandError
from streams.settings import Settings

_TIME_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S")


def parse_time_ms(text: str) -> int:
    """``2026-02-01``, ``2026-02-01T12:00[:00][Z]`` (UTC) or epoch milliseconds."""
    value = text.strip()
    if re.fullmatch(r"\d{10,}", value):
        return int(value)
    stripped = value.removesuffix("Z").removesuffix("+00:00")
    for fmt in _TIME_FORMATS:
        try:
            moment = dt.datetime.strptime(stripped, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
        return int(moment.timestamp() * 1000)
    raise CommandError(
        f"cannot read the time {text!r}: use 2026-02-01, 2026-02-01T12:00:00Z or epoch ms"
    )


def _registry(args: argparse.Namespace, settings: Settings) -> Any:
    from models.registry import Registry, default_registry_dir

    return Registry(Path(args.registry) if args.registry else default_registry_dir(settings))


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from models.dataset import build_dataset, read_history_dir, read_history_kafka
    from models.errors import ModelError
    from models.train import DAY_MS, TrainConfig, format_report, train_and_register

    truth = None
    requests: list[Any]
    labels: list[Any]
    try:
        if args.simulate:
            from models.simulate import SimulationSpec, simulate

            overrides = {
                name: value
                for name, value in (
                    ("seed", args.seed),
                    ("customers", args.customers),
                    ("days", args.days),
                    ("fraud_rate", args.fraud_rate),
                )
                if value is not None
            }
            spec = SimulationSpec(**overrides)
            print(f"simulating {spec.customers} customers over {spec.days} days ...", flush=True)
            sim = simulate(spec)
            requests, labels, truth = sim.requests, sim.labels, sim.is_fraud
            source = f"simulation {spec.fingerprint()} ({spec!r})"
        elif args.data:
            requests, labels = read_history_dir(args.data)
            source = f"directory {Path(args.data).resolve()}"
        else:
            since = parse_time_ms(args.history_from) if args.history_from else None
            print(f"reading payments.requests and fraud.labels from {settings.brokers} ...")
            requests, labels = read_history_kafka(settings, since_ms=since)
            source = f"kafka {settings.brokers} (prefix {settings.topic_prefix!r})"
        print(f"replaying {len(requests)} requests, {len(labels)} labels ...", flush=True)
        dataset = build_dataset(requests, labels, exact=args.exact_replay)
        config = TrainConfig(
            train_from_ms=parse_time_ms(args.train_from) if args.train_from else None,
            train_to_ms=parse_time_ms(args.train_to) if args.train_to else None,
            eval_to_ms=parse_time_ms(args.eval_to) if args.eval_to else None,
            as_of_ms=parse_time_ms(args.as_of) if args.as_of else None,
            maturity_ms=int(args.maturity_days * DAY_MS),
            eval_ms=int(args.eval_days * DAY_MS),
        )
        registry = _registry(args, settings)
        info, report = train_and_register(dataset, config, registry, truth=truth, source=source)
    except (ModelError, ValueError) as exc:
        raise CommandError(f"model train: {exc}") from exc
    print(format_report(report, info))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"version": info.version, **report.to_json()}, indent=2) + "\n",
            encoding="utf-8",
        )
    return 0


def _cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    registry = _registry(args, settings)
    roles = registry.roles()
    role_of: dict[str, list[str]] = {}
    for role, record in roles.items():
        role_of.setdefault(str(record.get("version")), []).append(role.lower())
    entries = registry.list()
    if args.json:
        rows = []
        for entry in entries:
            if isinstance(entry, tuple):
                rows.append({"version": entry[0], "error": str(entry[1])})
            else:
                rows.append({**entry.metadata, "roles": role_of.get(entry.version, [])})
        print(json.dumps(rows, indent=2))
        return 0
    if not entries:
        print(f"no models in {registry.root}; train one with `paystream model train`")
        return 0
    print(f"models in {registry.root}:")
    print(f"  {'version':26} {'role':15} {'AUPRC':>6} {'rec@1%':>7} {'review':>7} {'decline':>7}")
    for entry in entries:
        if isinstance(entry, tuple):
            print(f"  {entry[0]:26} unreadable: {entry[1]}")
            continue
        metrics = entry.metadata.get("evaluation", {}).get("metrics", {}).get("model", {})
        thresholds = entry.metadata.get("thresholds", {})
        print(
            f"  {entry.version:26} {','.join(role_of.get(entry.version, [])):15} "
            f"{_num(metrics.get('auprc')):>6} {_num(metrics.get('recall_at_1pct_fpr')):>7} "
            f"{_num(thresholds.get('review')):>7} {_num(thresholds.get('decline')):>7}"
        )
    return 0


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _announce(args: argparse.Namespace, settings: Settings, role: Any) -> int:
    from models.errors import ModelError
    from models.registry import announce, announcement_record

    registry = _registry(args, settings)
    try:
        registry.verify(args.version)  # a tampered or foreign model is never announced
        info = registry.info(args.version)
        if args.no_announce:
            record = announcement_record(info, role)
        else:
            record = announce(settings, info, role)
        registry.set_role(role, record)
    except ModelError as exc:
        raise CommandError(f"model {role.lower()}: {exc}") from exc
    where = "recorded locally only" if args.no_announce else f"announced on {settings.brokers}"
    print(f"{args.version} is the {role.lower()} model ({where}; sha256 {info.sha256})")
    return 0


def _cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    return _announce(args, settings, "CHAMPION")


def _cmd_shadow(args: argparse.Namespace, settings: Settings) -> int:
    return _announce(args, settings, "SHADOW")


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="train, list, promote and shadow fraud models")
    commands = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    commands.required = True

    def add_registry(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--registry",
            metavar="DIR",
            help="model registry directory (default <state_dir>/models)",
        )

    train = commands.add_parser(
        "train", help="train on history, evaluate on a later window, register the model"
    )
    source = train.add_mutually_exclusive_group()
    source.add_argument(
        "--simulate", action="store_true", help="generate the history with models/simulate.py"
    )
    source.add_argument(
        "--data", metavar="DIR", help="read DIR/requests.jsonl and DIR/labels.jsonl"
    )
    train.add_argument("--from", dest="train_from", metavar="T", help="training window start")
    train.add_argument(
        "--to", dest="train_to", metavar="T", help="training window end = evaluation start"
    )
    train.add_argument(
        "--eval-to", metavar="T", help="evaluation window end (default: history end)"
    )
    train.add_argument("--as-of", metavar="T", help="labels known at T (default: --to + maturity)")
    train.add_argument("--maturity-days", type=float, default=30.0, help="label maturity window")
    train.add_argument(
        "--eval-days", type=float, default=30.0, help="evaluation window length without --to"
    )
    train.add_argument("--history-from", metavar="T", help="Kafka: read history from T")
    train.add_argument("--seed", type=int, help="--simulate: seed")
    train.add_argument("--customers", type=int, help="--simulate: customers")
    train.add_argument("--days", type=int, help="--simulate: days of history")
    train.add_argument("--fraud-rate", type=float, help="--simulate: share of fraud")
    train.add_argument(
        "--exact-replay",
        action="store_true",
        help="replay balances through the full payment rules (slower)",
    )
    train.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    add_registry(train)
    train.set_defaults(func=_cmd_train)

    listing = commands.add_parser("list", help="registered model versions and their roles")
    listing.add_argument("--json", action="store_true", help="print the metadata as JSON")
    add_registry(listing)
    listing.set_defaults(func=_cmd_list)

    for name, handler, text in (
        ("promote", _cmd_promote, "make VERSION the champion: every worker loads it"),
        ("shadow", _cmd_shadow, "score VERSION next to the champion without deciding"),
    ):
        parser = commands.add_parser(name, help=text)
        parser.add_argument("version", metavar="VERSION")
        parser.add_argument(
            "--no-announce",
            action="store_true",
            help="only record the role in the registry (no Kafka)",
        )
        add_registry(parser)
        parser.set_defaults(func=handler)


def main(argv: list[str] | None = None) -> int:
    """``python -m models.model_cli train ...``: the same as ``paystream model train ...``."""
    import logging

    from streams.errors import PaystreamError
    from streams.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m models.model_cli")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["model", *(sys.argv[1:] if argv is None else argv)])
    settings = load_settings()
    logging.basicConfig(level=settings.log_level)
    try:
        code: int = args.func(args, settings)
    except PaystreamError as exc:
        print(f"paystream: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
