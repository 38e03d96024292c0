"""The textbook faust peer, against the session's broker: the same outputs as paystream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.bench.peers.scenario import check_peer
from tests.support.pipeline import isolated_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTPUTS_TIMEOUT_S = 30.0


def test_textbook_peer_gives_paystreams_outputs(kafka_broker: Any, tmp_path: Path) -> None:
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    check_peer("bench.peers.textbook", f"{settings.app_id}-textbook", settings, OUTPUTS_TIMEOUT_S)
