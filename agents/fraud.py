"""The fraud stage of the authorize agent: features, one model call per round, hot swap.

Per batch, requests are split into *rounds* in which every account appears at most
once (an account's requests keep their order across rounds). For each round, every
new request's feature vector is computed from its payer's feature state and
available balance *before* the request -- exactly what ``models/dataset.py``
replays for training -- then the whole round is scored in one call and each
request is decided with its assessment. A batch without repeated accounts is one
round.

The champion (and an optional shadow) are swapped by assigning an attribute: a
round reads ``self.champion`` once, so every payment is scored by one fully loaded
model, the old one or the new one, never a half-loaded one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents.rules.decide import NO_FRAUD, FraudAssessment
from agents.rules.records import Request
from agents.rules.state import AccountState

log = logging.getLogger(__name__)

SHADOW_REPORT_EVERY_S = 30.0


class RoundScorer(Protocol):
    """What a model (or the rules baseline) offers the stage."""

    def score_matrix(self, rows: Any) -> list[float]: ...

    def assess(self, rows: Any, scores: Sequence[float]) -> list[FraudAssessment]: ...

    def describe(self) -> str: ...


@dataclass
class ShadowStats:
    version: str = ""
    scored: int = 0
    agreed: int = 0  # same action as the champion
    flagged_by_shadow: int = 0
    flagged_by_champion: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def to_dict(self) -> dict[str, Any]:
        rate = self.agreed / self.scored if self.scored else None
        return {"version": self.version, "scored": self.scored, "agreement": rate,
                "flagged_by_shadow": self.flagged_by_shadow,
                "flagged_by_champion": self.flagged_by_champion}  # fmt: skip


class FraudStage:
    """Feature extraction and batch scoring between decoding and deciding."""

    def __init__(self, champion: RoundScorer, shadow: RoundScorer | None = None) -> None:
        from models.dataset import feature_balance, is_new_request
        from models.features import decode_state, encode_state, observe

        # The two rules training replays with (models/dataset.py): shared, not re-derived.
        self._is_new = is_new_request
        self._balance = feature_balance
        self._observe = observe
        self._encode = encode_state
        self._decode = decode_state
        self.champion = champion
        self.shadow = shadow
        self.shadow_stats = ShadowStats(_version(shadow)) if shadow else None
        self.scored = 0
        self.model_calls = 0
        self._lock = threading.Lock()
        self._shadow_reported = time.monotonic()

    # -- hot swap (called from the model watcher thread) -----------------------------
    def set_champion(self, scorer: RoundScorer) -> None:
        with self._lock:
            self.champion = scorer
        log.info("fraud: now serving %s", scorer.describe())

    def set_shadow(self, scorer: RoundScorer | None) -> None:
        with self._lock:
            self.shadow = scorer
            self.shadow_stats = ShadowStats(_version(scorer)) if scorer else None
        if scorer is not None:
            log.info("fraud: shadow scoring with %s (does not affect decisions)", scorer.describe())

    # -- per round ----------------------------------------------------------------------
    def features_for(
        self, state: AccountState | None, request: Request
    ) -> tuple[Any, tuple[float, ...] | None] | None:
        """(new encoded feature state, vector or None) for a new request; None for a repeat."""
        if not self._is_new(state, request):
            return None
        current = None
        if state is not None and state.features is not None:
            try:
                current = self._decode(state.features)
            except ValueError as exc:
                log.warning("fraud: %s: feature state unreadable (%s); starting afresh",
                            request["account_id"], exc)  # fmt: skip
        fstate, vector = self._observe(current, request, self._balance(state, request))
        return self._encode(fstate), vector

    def assess(self, rows: list[tuple[float, ...]]) -> list[FraudAssessment]:
        """One model call for the round's vectors (and one for the shadow, if any)."""
        if not rows:
            return []
        champion, shadow, stats = self.champion, self.shadow, self.shadow_stats
        scores = champion.score_matrix(rows)
        assessments = champion.assess(rows, scores)
        self.scored += len(rows)
        self.model_calls += 1
        if shadow is not None and stats is not None:
            shadow_assessments = shadow.assess(rows, shadow.score_matrix(rows))
            for mine, theirs in zip(assessments, shadow_assessments, strict=True):
                stats.scored += 1
                stats.agreed += mine.action == theirs.action
                stats.flagged_by_shadow += theirs.action != "APPROVE"
                stats.flagged_by_champion += mine.action != "APPROVE"
            if time.monotonic() - self._shadow_reported > SHADOW_REPORT_EVERY_S:
                self._shadow_reported = time.monotonic()
                log.info("fraud: shadow %s", stats.to_dict())
        return assessments


def split_rounds(items: list[Any], account_of: Any) -> list[list[Any]]:
    """Rounds in which each account appears once, keeping each account's order."""
    rounds: list[list[Any]] = []
    seen: dict[str, int] = {}
    for item in items:
        account = account_of(item)
        n = seen.get(account, 0)
        seen[account] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(item)
    return rounds


def _version(scorer: Any) -> str:
    return str(getattr(scorer, "version", None) or scorer.describe())


__all__ = ["NO_FRAUD", "FraudStage", "RoundScorer", "split_rounds"]
