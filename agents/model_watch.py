"""Hot reload: follow fraud.models and swap verified models into the fraud stage.

A thread with its own consumer (no consumer group: every worker reads the whole
compacted topic from the start, so a worker that starts later still learns the
current champion). For each announcement the artifact is loaded and verified
(sha256 against the announcement and the metadata, feature-set hash against this
worker's features) *before* it is swapped in; a refused artifact is logged as an
error and the current model keeps serving.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from agents.fraud import FraudStage
from streams import topics as names
from streams.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 0.5


class ModelWatcher:
    def __init__(self, settings: Settings, stage: FraudStage) -> None:
        self.settings = settings
        self.stage = stage
        self.stop = threading.Event()
        self.loaded: dict[str, str] = {}  # role -> version now serving
        self.refused: list[str] = []
        self._thread = threading.Thread(target=self._run, name="model-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from schemas.codec import SchemaError, load_codec

        codec = load_codec(self.settings.schema_registry_url)
        topic = self.settings.topic(names.FRAUD_MODELS)
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.brokers,
                "group.id": f"{self.settings.app_id}-model-watch",  # never joins or commits
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition(topic, 0, 0)])  # OFFSET_BEGINNING of a 1-partition topic
        try:
            while not self.stop.is_set():
                msg = consumer.poll(POLL_S)
                if msg is None or msg.error() is not None or msg.value() is None:
                    continue
                try:
                    record: Any = codec.decode(
                        names.FRAUD_MODELS, msg.value() or b"", msg.partition(), msg.offset()
                    )
                except SchemaError as exc:
                    log.error("fraud: unreadable model announcement: %s", exc)
                    continue
                self.apply(record)
        finally:
            consumer.close()

    def apply(self, announcement: dict[str, Any]) -> bool:
        """Load, verify and swap in one announced model; False (and logged) if refused."""
        from models.errors import ModelError
        from models.registry import load_announced

        role, version = announcement["role"], announcement["version"]
        if self.loaded.get(role) == version:
            return True
        try:
            scorer = load_announced(announcement)
        except (ModelError, OSError, ValueError) as exc:
            self.refused.append(version)
            log.error("fraud: refused %s model %s: %s; still serving %s",
                      role.lower(), version, exc, self.stage.champion.describe())  # fmt: skip
            return False
        scorer = _with_configured_thresholds(scorer, self.settings)
        if role == "CHAMPION":
            self.stage.set_champion(scorer)
        else:
            self.stage.set_shadow(scorer)
        self.loaded[role] = version
        return True


def _with_configured_thresholds(scorer: Any, settings: Settings) -> Any:
    """PAYSTREAM_FRAUD_*_THRESHOLD override the thresholds the evaluation chose."""
    review, decline = settings.fraud_review_threshold, settings.fraud_decline_threshold
    if review is None and decline is None:
        return scorer
    from models.scorer import Thresholds

    current = scorer.thresholds
    return scorer.with_thresholds(
        Thresholds(
            review=float(review) if review is not None else current.review,
            decline=float(decline) if decline is not None else current.decline,
        )
    )
