"""Unit tests of ``paystream dev``: argument handling, and commands when nothing runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from streams.cli import build_parser
from streams.dev.cli import dev_settings
from streams.settings import Settings


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["dev", *argv])


def test_options_override_settings(tmp_path: Path) -> None:
    args = _parse(
        "up", "--state-dir", str(tmp_path), "--kafka-port", "29092", "--postgres-port", "25433"
    )

    settings = dev_settings(args, Settings())

    assert settings.state_dir == tmp_path
    assert settings.kafka_port == 29092
    assert settings.kafka_controller_port == 29093  # Follows the broker port.
    assert settings.postgres_port == 25433


def test_explicit_controller_port_wins() -> None:
    args = _parse("status", "--kafka-port", "29092", "--kafka-controller-port", "29999")

    settings = dev_settings(args, Settings())

    assert (settings.kafka_port, settings.kafka_controller_port) == (29092, 29999)


def test_without_options_settings_are_unchanged() -> None:
    settings = Settings()

    assert dev_settings(_parse("down"), settings) is settings


@pytest.mark.parametrize("port", ["0", "65536", "kafka"])
def test_bad_port_option_is_rejected(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("up", "--kafka-port", port)

    assert port in capsys.readouterr().err


def test_dev_needs_an_action() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dev"])


def test_status_when_nothing_runs_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse("status", "--state-dir", str(tmp_path))

    assert args.func(args, Settings()) == 1

    out = capsys.readouterr().out
    assert out.count("stopped") == 2


def test_down_when_nothing_runs_is_fine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("down", "--state-dir", str(tmp_path))

    assert args.func(args, Settings()) == 0

    out = capsys.readouterr().out
    assert "kafka was not running" in out
    assert "postgres was not running" in out
