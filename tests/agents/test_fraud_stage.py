"""The fraud stage in the Processor: rounds, and training/serving parity of the vectors."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from agents.fraud import FraudStage, split_rounds
from agents.pipeline import AccountStates, Message, Processor
from agents.rules.decide import FraudAssessment
from models.dataset import build_dataset
from models.features import FEATURE_NAMES
from schemas.codec import load_codec
from streams import topics as names
from streams.client import new_request
from streams.settings import Settings

T0_MS = 1_767_225_600_000


class DictStore:
    def __init__(self) -> None:
        self.values: dict[tuple[int, bytes], bytes] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.values.get((partition, key))

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.values[(partition, key)] = value


class NullProducer:
    def produce(self, *args: Any, **kwargs: Any) -> None:
        pass

    def poll(self) -> None:
        pass


class RecordingScorer:
    """Scores 0.0, remembers every row it was asked to score, and how many calls."""

    version = "recording"

    def __init__(self) -> None:
        self.rows: list[tuple[float, ...]] = []
        self.calls: list[int] = []

    def score_matrix(self, rows: Any) -> list[float]:
        self.rows.extend(rows)
        self.calls.append(len(rows))
        return [0.0] * len(rows)

    def assess(self, rows: Any, scores: Any) -> list[FraudAssessment]:
        return [FraudAssessment(s, self.version) for s in scores]

    def describe(self) -> str:
        return "recording"


def history(seed: int = 3, customers: int = 20, payments: int = 600) -> list[dict[str, Any]]:
    """Customers top up, then pay merchants (who never pay): balances depend only on each
    payer's own requests, so serving and the offline replay must agree exactly."""
    rng = random.Random(seed)
    out = []
    t = T0_MS
    for c in range(customers):
        t += 1000
        out.append(new_request("TOPUP", f"c{c}", rng.randrange(10_000, 200_000), "EUR",
                               counterparty_id="bank", created_at_ms=t))  # fmt: skip
    for i in range(payments):
        t += rng.choice([50, 500, 30_000, 3_600_000])
        payer = f"c{rng.randrange(customers)}"
        kind = rng.choice(["PAYMENT", "PAYMENT", "PAYMENT", "AUTHORIZE", "PAYOUT"])
        request = new_request(
            kind, payer, rng.randrange(100, 40_000), "EUR",
            counterparty_id=f"m{rng.randrange(5)}" if kind != "PAYOUT" else "bank",
            created_at_ms=t, device_id=f"d{payer}-{rng.randrange(2)}",
            country=rng.choice(["DE", "DE", "FR"]),
        )  # fmt: skip
        out.append(request)
        if i % 17 == 0:
            out.append(dict(request))  # a redelivery: same request again
    return out


class RecordingStage(FraudStage):
    """Remembers the vector served for each request id."""

    def __init__(self, scorer: RecordingScorer) -> None:
        super().__init__(scorer)
        self.served: dict[str, tuple[float, ...]] = {}

    def features_for(self, state: Any, request: Any) -> Any:
        found = super().features_for(state, request)
        if found is not None and found[1] is not None:
            self.served[request["request_id"]] = found[1]
        return found


def serve(
    requests: list[dict[str, Any]], batch: int
) -> tuple[RecordingScorer, Processor, RecordingStage]:
    codec = load_codec(None)
    scorer = RecordingScorer()
    stage = RecordingStage(scorer)
    states = AccountStates(DictStore(), NullProducer(), "changelog")  # type: ignore[arg-type]
    processor = Processor(Settings(), codec, states, NullProducer(),  # type: ignore[arg-type]
                          {}, fraud=stage)  # fmt: skip
    messages = [
        Message(
            names.REQUESTS, 0, offset, r["account_id"].encode(), codec.encode(names.REQUESTS, r)
        )
        for offset, r in enumerate(requests)
    ]
    for start in range(0, len(messages), batch):
        processor.process_requests(messages[start : start + batch])
        processor.flushed_below.clear()
        states.invalidate()  # the next batch reads the stored bytes back
    return scorer, processor, stage


def test_served_vectors_are_the_vectors_training_replays() -> None:
    requests = history()
    offline = build_dataset(requests, [], exact=True)
    fast = build_dataset(requests, [])
    assert offline.X.shape == (600, len(FEATURE_NAMES))
    for batch in (1, 7, 100):
        scorer, _, stage = serve(requests, batch)
        assert sorted(stage.served) == sorted(offline.request_ids)
        served = np.array([stage.served[rid] for rid in offline.request_ids])
        assert np.array_equal(served, offline.X), f"batch {batch}: served != replayed"
        assert len(scorer.rows) == 600
    assert np.array_equal(fast.X, offline.X), "the fast balance mirror drifted from the rules"


def test_a_batch_with_repeated_accounts_is_scored_in_rounds() -> None:
    requests = [r for r in history(customers=3, payments=60) if r["kind"] != "TOPUP"][:40]
    scorer, processor, _ = serve(requests, batch=40)
    assert len(scorer.calls) > 1  # three payers: many rounds
    assert sum(scorer.calls) == len(scorer.rows)
    assert processor.stats.requests == 40


def test_rounds_keep_each_accounts_order() -> None:
    items = [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("c", 1), ("b", 2)]
    rounds = split_rounds(items, lambda item: item[0])
    assert rounds == [[("a", 1), ("b", 1), ("c", 1)], [("a", 2), ("b", 2)], [("a", 3)]]


def test_outputs_leave_in_offset_order_whatever_the_rounds() -> None:
    """Regression: rounds reordered outputs across accounts, so a payee saw a leg with a
    lower source offset after a higher one and dropped it as already applied."""
    codec = load_codec(None)
    requests = [r for r in history(customers=4, payments=80) if r["kind"] == "PAYMENT"]
    topups = [r for r in history(customers=4, payments=0)]
    scorer = RecordingScorer()
    states = AccountStates(DictStore(), NullProducer(), "changelog")  # type: ignore[arg-type]
    processor = Processor(Settings(), codec, states, NullProducer(),  # type: ignore[arg-type]
                          {}, fraud=RecordingStage(scorer))  # fmt: skip
    batch = [*topups, *requests]
    messages = [
        Message(
            names.REQUESTS, 0, offset, r["account_id"].encode(), codec.encode(names.REQUESTS, r)
        )
        for offset, r in enumerate(batch)
    ]
    held = processor.process_requests(messages)
    assert len(scorer.calls) > 1, "the batch must need several rounds"
    legs = [codec.decode(names.LEGS, value) for topic, _, value in held if topic.endswith("legs")]
    offsets = [leg["source_offset"] for leg in legs]
    assert len(offsets) > 10 and offsets == sorted(offsets)
