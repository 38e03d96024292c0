"""The README's promises: its configuration table and its Python example are real."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streams.settings import SETTINGS_DOC, Settings
from tests.support.pipeline import isolated_settings, running_worker, settings_env

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_shows_the_two_commands() -> None:
    assert "make demo" in README and "make test" in README


def test_readme_configuration_table_matches_the_settings() -> None:
    rows = dict(re.findall(r"^\| `(PAYSTREAM_[A-Z_]+)` \| ([^|]+) \|", README, re.MULTILINE))
    assert set(rows) == {name for name, _, _ in SETTINGS_DOC}
    for name, default, _ in SETTINGS_DOC:
        shown = rows[name].strip()
        if default in ("(unset)", ""):
            assert shown in ("(unset)", "(empty)"), name
        else:
            assert shown == f"`{default}`", f"{name}: README says {shown}, code says {default}"
    assert len(SETTINGS_DOC) == len(dataclasses.fields(Settings))


@pytest.mark.integration
def test_readme_python_example_runs_against_a_real_worker(
    kafka_broker: Any, tmp_path: Path
) -> None:
    example = re.search(r"```python\n(.*?)```", README, re.DOTALL)
    assert example is not None
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    with running_worker(settings) as worker:
        env = settings_env(settings)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        result = subprocess.run(
            [sys.executable, "-c", example.group(1)],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + "\n" + worker.log_tail()
    lines = result.stdout.splitlines()
    assert lines[0].startswith("AUTHORIZE APPROVED")
    assert lines[1].startswith("CAPTURE APPROVED")
    assert lines[2].startswith("REFUND APPROVED")
    # 10.00 USD paid from EUR: 1 USD = 0.9223 EUR, plus 25 bps spread, rounded up:
    # 1000 * 0.9223 * 1.0025 = 924.60575 -> 925 euro cents.
    kind, status, settled = lines[3].split()
    assert (kind, status, int(settled)) == ("PAYMENT", "APPROVED", 925)
