"""docker-compose.yml cannot run here (no Docker engine): check it agrees with the code."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from streams.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_services_the_readme_promises() -> None:
    services = _compose()["services"]
    assert {"kafka", "postgres", "worker", "demo", "topics"} <= set(services)
    assert "build" in services["worker"], "workers are built from the Dockerfile (scalable)"
    assert "container_name" not in services["worker"], "container_name would prevent --scale"


def test_compose_uses_the_same_kafka_version_as_dev_up() -> None:
    image = _compose()["services"]["kafka"]["image"]
    assert image == f"apache/kafka:{Settings().kafka_version}"


def test_every_paystream_variable_in_compose_is_a_real_setting() -> None:
    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    used: set[str] = set()
    for service in _compose()["services"].values():
        used |= {name for name in (service.get("environment") or {}) if name.startswith(ENV_PREFIX)}
    assert used, "compose passes no PAYSTREAM_* settings"
    assert used <= known, f"unknown settings in compose: {sorted(used - known)}"


def test_compose_commands_are_real_cli_commands() -> None:
    from streams.cli import build_parser

    parser = build_parser()
    for name, service in _compose()["services"].items():
        command = service.get("command")
        if command and name not in ("kafka", "postgres"):
            parser.parse_args(command)  # raises SystemExit on an unknown command
