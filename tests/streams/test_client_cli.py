"""`paystream submit` and `paystream account show` against a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.pipeline import isolated_settings, running_worker, settings_env

pytestmark = pytest.mark.integration


def _paystream(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_submit_prints_the_decision_and_account_show_the_balance(
    kafka_broker: Any, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    env = settings_env(settings)
    with running_worker(settings) as worker:
        topup = _paystream(env, "submit", "--kind", "TOPUP", "--payer", "carol",
                           "--payee", "bank-1", "--amount", "25.000", "--currency", "KWD",
                           "--timeout", "90")  # fmt: skip
        assert topup.returncode == 0, topup.stderr + worker.log_tail()
        assert json.loads(topup.stdout)["amount_minor"] == 25_000  # KWD has 3 decimals
        declined = _paystream(env, "submit", "--kind", "PAYMENT", "--payer", "carol",
                              "--payee", "dave", "--amount", "25.001",
                              "--currency", "KWD")  # fmt: skip
        assert declined.returncode == 3
        assert json.loads(declined.stdout)["decline_code"] == "insufficient_funds"
        too_precise = _paystream(env, "submit", "--kind", "TOPUP", "--payer", "carol",
                                 "--amount", "1.0001", "--currency", "KWD")  # fmt: skip
        assert too_precise.returncode == 1
        assert "more than 3 decimal places" in too_precise.stderr
        shown = _paystream(env, "account", "show", "carol")
        assert shown.returncode == 0, shown.stderr
        assert "available 25.000 KWD" in shown.stdout
        missing = _paystream(env, "account", "show", "nobody")
        assert missing.returncode == 1 and "not found" in missing.stderr
