"""Peer implementations ``paystream bench pipeline`` compares paystream with.

Each is a module run as ``python -m bench.peers.<name>``, configured only by the
``PAYSTREAM_*`` variables (:func:`streams.settings.load_settings`): it consumes
``settings.topic("payments.requests")`` and produces to
``settings.topic("payments.decisions")`` (and, if it has them, the other outputs).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Peer:
    """An implementation under test: ``python -m module *arguments``."""

    name: str
    module: str
    arguments: tuple[str, ...] = ()
    outputs_are_requests: bool = False  # the ceiling forwards requests unchanged
    fleet: bool = False  # honours --workers (several processes, one consumer group)
    doc: str = ""
    # A virtualenv of its own (relative to the repository), or None for this interpreter.
    venv: str | None = None

    def python(self) -> Path:
        return Path(sys.executable) if self.venv is None else REPO / self.venv / "bin" / "python"

    def command(self) -> list[str]:
        return [str(self.python()), "-m", self.module, *self.arguments]


PEERS: tuple[Peer, ...] = (
    Peer("paystream", "streams.cli", ("worker",), fleet=True, doc="the faust worker"),
    Peer("textbook", "bench.peers.textbook", doc="a textbook implementation"),
    # quixstreams pins an older confluent-kafka than paystream's: `make bench-quix`.
    Peer("quix", "bench.peers.quix", doc="on Quix Streams", venv=".venv-quix"),
    Peer(
        "ceiling",
        "bench.peers.ceiling",
        outputs_are_requests=True,
        doc="consume -> produce unchanged: the transport ceiling",
    ),
)
