"""The Quix Streams peer, against the session's broker: the same outputs as paystream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.peers import PEERS
from tests.bench.peers.scenario import check_peer
from tests.support.pipeline import isolated_settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
]
QUIX = next(peer for peer in PEERS if peer.name == "quix")

OUTPUTS_TIMEOUT_S = 30.0


def test_quix_peer_gives_paystreams_outputs(kafka_broker: Any, tmp_path: Path) -> None:
    # `make test` builds it (make bench-quix); a missing one is a broken setup, not a skip.
    assert QUIX.python().exists(), f"{QUIX.python()} is missing: run `make bench-quix`"
    settings = isolated_settings(kafka_broker.bootstrap, tmp_path)
    check_peer("bench.peers.quix", f"{settings.app_id}-quix", settings, OUTPUTS_TIMEOUT_S)
