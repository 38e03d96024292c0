"""Fraud features: shape, decays, novelty flags, z-score, bounded state, and the
training/serving parity at feature level (a JSON round trip of the state between any
two steps changes nothing, bit for bit)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import statistics
import struct
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.rules.records import Request, RequestKind
from models.features import (
    FEATURE_NAMES,
    FEATURE_SET_HASH,
    FEATURE_VERSION,
    GAP_CAP_S,
    MAX_COUNTRIES,
    MAX_DEVICES,
    MAX_PAYEES,
    RATIO_CAP,
    SCORED_KINDS,
    STATE_VERSION,
    FeatureState,
    decode_state,
    encode_state,
    observe,
)

T0 = 1_704_115_800_000  # 2024-01-01T13:30:00Z, a Monday
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
LONG_MIN = -(2**63)
LONG_MAX = 2**63 - 1
IDX = {name: i for i, name in enumerate(FEATURE_NAMES)}
ALL_KINDS: tuple[RequestKind, ...] = (
    "TOPUP",
    "PAYMENT",
    "AUTHORIZE",
    "CAPTURE",
    "VOID",
    "REFUND",
    "PAYOUT",
)


def req(
    t: int = T0,
    amount: int = 1000,
    *,
    kind: RequestKind = "PAYMENT",
    currency: str = "EUR",
    payee: str | None = "merchant-1",
    device: str | None = "device-1",
    country: str | None = "DE",
) -> Request:
    return Request(
        request_id=f"r-{t}",
        idempotency_key=f"k-{t}",
        kind=kind,
        account_id="acct-1",
        counterparty_id=payee,
        payment_id=None,
        amount_minor=amount,
        currency=currency,
        created_at_ms=t,
        expires_at_ms=None,
        device_id=device,
        country=country,
        merchant_category="5411",
        metadata={},
    )


def f(vector: Sequence[float] | None, name: str) -> float:
    assert vector is not None
    return vector[IDX[name]]


def run(
    requests: Iterable[Request], balance: int = 10**9, state: FeatureState | None = None
) -> tuple[FeatureState | None, list[tuple[float, ...] | None]]:
    vectors: list[tuple[float, ...] | None] = []
    for request in requests:
        state, vector = observe(state, request, balance)
        vectors.append(vector)
    return state, vectors


def bits(vector: Sequence[float] | None) -> bytes | None:
    """The exact bit pattern of a vector (== would equate 0.0 and -0.0)."""
    return None if vector is None else struct.pack(f"<{len(vector)}d", *vector)


def json_round_trip(state: FeatureState) -> FeatureState:
    return decode_state(json.loads(json.dumps(encode_state(state))))


# --- shape and metadata -------------------------------------------------------------


def test_vector_has_one_float_per_feature_name() -> None:
    state, vector = observe(None, req(), 5000)
    assert vector is not None
    assert len(vector) == len(FEATURE_NAMES)
    assert all(type(x) is float for x in vector)
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    _, second = observe(state, req(T0 + SECOND), 5000)
    assert second is not None and len(second) == len(FEATURE_NAMES)


def test_feature_set_hash_covers_names_and_version() -> None:
    expected = hashlib.sha256(f"{FEATURE_VERSION}:{','.join(FEATURE_NAMES)}".encode())
    assert expected.hexdigest() == FEATURE_SET_HASH
    assert len(FEATURE_SET_HASH) == 64


def test_scored_kinds() -> None:
    assert frozenset({"PAYMENT", "AUTHORIZE", "PAYOUT"}) == SCORED_KINDS


def test_first_payment_features() -> None:
    _, vector = observe(None, req(amount=1234), 100_000)
    assert f(vector, "amount_log") == pytest.approx(math.log1p(12.34))
    assert f(vector, "first_payment") == 1.0
    assert f(vector, "n_prior_log") == 0.0
    assert f(vector, "secs_since_last_log") == pytest.approx(math.log1p(GAP_CAP_S))
    assert f(vector, "secs_since_topup_log") == pytest.approx(math.log1p(GAP_CAP_S))
    for name in ("count_1m", "count_1h", "count_24h", "sum_1m_log", "sum_24h_log", "amount_z"):
        assert f(vector, name) == 0.0
    for name in ("new_payee", "new_device", "new_country"):
        assert f(vector, name) == 1.0
    for name in ("device_changed", "country_changed", "n_recent_devices", "account_age_log"):
        assert f(vector, name) == 0.0


def test_kind_indicators() -> None:
    assert f(observe(None, req(kind="PAYOUT"), 0)[1], "is_payout") == 1.0
    assert f(observe(None, req(kind="PAYOUT"), 0)[1], "is_authorize") == 0.0
    assert f(observe(None, req(kind="AUTHORIZE"), 0)[1], "is_authorize") == 1.0
    assert f(observe(None, req(kind="PAYMENT"), 0)[1], "is_payout") == 0.0


def test_hour_of_day_and_day_of_week_in_utc() -> None:
    for t in (T0, T0 + 11 * HOUR, T0 + 5 * DAY + 17 * MINUTE, 0, -1, -DAY - 1):
        moment = datetime.fromtimestamp(t / 1000, tz=UTC)
        _, vector = observe(None, req(t), 0)
        assert f(vector, "hour_of_day") == moment.hour
        assert f(vector, "day_of_week") == moment.weekday()


def test_amounts_are_scaled_by_the_currency_exponent() -> None:
    for currency, major in (("JPY", 1000.0), ("EUR", 10.0), ("KWD", 1.0), ("XXX", 10.0)):
        _, vector = observe(None, req(amount=1000, currency=currency), 0)
        assert f(vector, "amount_log") == pytest.approx(math.log1p(major)), currency
    _, vector = observe(None, req(amount=-500), 0)
    assert f(vector, "amount_log") == 0.0


# --- velocity decays ----------------------------------------------------------------


def test_two_requests_one_second_apart_count_about_one_in_every_window() -> None:
    _, (_, vector) = run([req(T0, 2000), req(T0 + SECOND, 500)])
    assert f(vector, "count_1m") == pytest.approx(math.exp(-1 / 60))
    assert f(vector, "count_1m") == pytest.approx(1.0, abs=0.02)
    assert f(vector, "count_1h") == pytest.approx(1.0, abs=1e-3)
    assert f(vector, "count_24h") == pytest.approx(1.0, abs=1e-4)
    assert f(vector, "sum_1m_log") == pytest.approx(math.log1p(20.0 * math.exp(-1 / 60)))
    assert f(vector, "secs_since_last_log") == pytest.approx(math.log1p(1.0))
    assert f(vector, "first_payment") == 0.0
    assert f(vector, "n_prior_log") == pytest.approx(math.log1p(1))


def test_counts_decay_towards_zero_after_a_long_gap() -> None:
    state, _ = run([req(T0 + i * SECOND) for i in range(10)])
    _, vector = observe(state, req(T0 + 9 * SECOND + 30 * DAY), 0)
    assert f(vector, "count_1m") == 0.0
    assert f(vector, "count_1h") < 1e-100
    assert f(vector, "count_24h") < 1e-11
    assert f(vector, "sum_24h_log") < 1e-10
    # ... while the windows keep their own time constants in between.
    _, vector = observe(state, req(T0 + 9 * SECOND + HOUR), 0)
    assert f(vector, "count_1m") < 1e-20
    assert f(vector, "count_1h") == pytest.approx(
        sum(math.exp(-(3600 + i) / 3600) for i in range(10))
    )
    assert f(vector, "count_24h") == pytest.approx(10 * math.exp(-1 / 24), rel=1e-3)


def test_card_testing_burst_shows_in_the_one_minute_window() -> None:
    burst = [req(T0 + i * 2 * SECOND, 50, payee=f"shop-{i}") for i in range(20)]
    _, vectors = run(burst)
    last = vectors[-1]
    assert f(last, "count_1m") > 10
    assert f(last, "sum_1m_log") < math.log1p(10.0)
    assert f(last, "new_payee") == 1.0
    assert f(last, "new_payees_1h") > 15


def test_out_of_order_event_does_not_decay_backwards() -> None:
    state, _ = run([req(T0), req(T0 + MINUTE)])
    assert state is not None
    late, vector = observe(state, req(T0 + 10 * SECOND), 0)
    assert f(vector, "secs_since_last_log") == 0.0
    assert f(vector, "count_1m") == pytest.approx(state.count_1m)  # no decay at dt <= 0
    assert late.clock_ms == T0 + MINUTE  # the clock never moves back
    assert late.last_ms == T0 + MINUTE
    assert all(math.isfinite(x) for x in vector or ())
    _, vector = observe(late, req(T0 + 2 * MINUTE), 0)
    assert f(vector, "secs_since_last_log") == pytest.approx(math.log1p(60.0))


# --- amount baseline ------------------------------------------------------------------


def test_z_score_is_zero_until_two_prior_payments() -> None:
    _, vectors = run([req(T0, 1000), req(T0 + HOUR, 5000), req(T0 + 2 * HOUR, 9000)])
    assert f(vectors[0], "amount_z") == 0.0
    assert f(vectors[1], "amount_z") == 0.0
    assert f(vectors[2], "amount_z") > 0.0


def test_z_score_flags_an_unusual_amount_and_not_a_usual_one() -> None:
    history = [req(T0 + i * HOUR, 2000 + 37 * (i % 7)) for i in range(30)]
    state, _ = run(history)
    _, usual = observe(state, req(T0 + 31 * HOUR, 2100), 0)
    _, huge = observe(state, req(T0 + 31 * HOUR, 200_000), 0)
    _, tiny = observe(state, req(T0 + 31 * HOUR, 5), 0)
    assert abs(f(usual, "amount_z")) < 2
    assert f(huge, "amount_z") > 3
    assert f(tiny, "amount_z") < -3
    assert f(tiny, "amount_z") >= -10.0
    assert f(huge, "amount_z") <= 10.0


def test_running_moments_are_exact_welford_before_the_horizon() -> None:
    amounts = [100, 2500, 730, 12_000, 99, 4321, 1, 0, 65_000]
    state, _ = run(req(T0 + i * MINUTE, a) for i, a in enumerate(amounts))
    assert state is not None
    logs = [math.log1p(a / 100) for a in amounts]
    assert state.mean == pytest.approx(statistics.fmean(logs), rel=1e-12)
    assert state.var == pytest.approx(statistics.pvariance(logs), rel=1e-9)


def test_constant_amounts_give_zero_z_and_a_finite_z_for_a_change() -> None:
    state, vectors = run(req(T0 + i * MINUTE, 1500) for i in range(10))
    assert all(f(v, "amount_z") == 0.0 for v in vectors)
    _, vector = observe(state, req(T0 + HOUR, 1600), 0)
    assert 0.0 < f(vector, "amount_z") <= 10.0


# --- novelty flags and bounded sets ---------------------------------------------------


def test_new_device_flag_change_and_age() -> None:
    steps = [
        req(T0, device="A"),  # first: new
        req(T0 + MINUTE, device="A"),  # known, unchanged
        req(T0 + 2 * MINUTE, device="B"),  # new, changed
        req(T0 + 3 * MINUTE, device="A"),  # known, changed back
        req(T0 + 4 * MINUTE, device=None),  # missing
    ]
    state, v = run(steps)
    assert [f(x, "new_device") for x in v] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert [f(x, "device_changed") for x in v] == [0.0, 0.0, 1.0, 1.0, 0.0]
    assert [f(x, "device_missing") for x in v] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert [f(x, "n_recent_devices") for x in v] == [0.0, 1.0, 1.0, 2.0, 2.0]
    assert f(v[1], "device_age_log") == pytest.approx(math.log1p(60))
    assert f(v[2], "device_age_log") == 0.0
    assert f(v[3], "device_age_log") == pytest.approx(math.log1p(180))  # A's first sighting
    assert state is not None and len(state.devices) == 2


def test_recent_device_set_is_bounded_and_least_recently_used_falls_out() -> None:
    devices = ["A", "B", "C", "D", "E", "A"]
    state, v = run(req(T0 + i * MINUTE, device=d) for i, d in enumerate(devices))
    assert state is not None
    assert len(state.devices) == MAX_DEVICES == len(state.device_first_ms)
    assert f(v[-1], "new_device") == 1.0  # A was evicted by E
    assert f(v[-1], "n_recent_devices") == 4.0
    # Using B again keeps it (it moves to the front); C is now the oldest.
    state, v = run([req(T0 + HOUR, device="B"), req(T0 + HOUR + 1, device="F")], state=state)
    _, vector = observe(state, req(T0 + HOUR + 2, device="B"), 0)
    assert f(vector, "new_device") == 0.0
    _, vector = observe(state, req(T0 + HOUR + 2, device="C"), 0)
    assert f(vector, "new_device") == 1.0


def test_new_payee_and_country_flags() -> None:
    payees = [f"m{i}" for i in range(MAX_PAYEES)]
    state, v = run(req(T0 + i * MINUTE, payee=p) for i, p in enumerate(payees))
    assert all(f(x, "new_payee") == 1.0 for x in v)
    assert state is not None and len(state.payees) == MAX_PAYEES
    _, again = observe(state, req(T0 + HOUR, payee="m0"), 0)
    assert f(again, "new_payee") == 0.0
    state2, _ = observe(state, req(T0 + HOUR, payee="m-new"), 0)
    _, evicted = observe(state2, req(T0 + 2 * HOUR, payee="m0"), 0)
    assert f(evicted, "new_payee") == 1.0
    _, none = observe(state, req(T0 + HOUR, payee=None), 0)
    assert f(none, "new_payee") == 0.0

    countries = ["DE", "DE", "FR", "DE", "US", "BR", "JP", "FR"]  # FR was evicted
    state, v = run(req(T0 + i * MINUTE, country=c) for i, c in enumerate(countries))
    assert [f(x, "new_country") for x in v] == [1, 0, 1, 0, 1, 1, 1, 1]
    assert [f(x, "country_changed") for x in v] == [0, 0, 1, 1, 1, 1, 1, 1]
    assert state is not None and len(state.countries) == MAX_COUNTRIES


def test_account_takeover_pattern_is_visible() -> None:
    history = [req(T0 + i * DAY, 3000, payee=f"m{i % 3}") for i in range(20)]
    state, _ = run(history)
    balance = 100_000
    takeover = [
        req(T0 + 20 * DAY + i * MINUTE, 30_000, payee="mule", device="evil", country="RU")
        for i in range(3)
    ]
    _, vectors = run(takeover, balance=balance, state=state)
    first, third = vectors[0], vectors[2]
    assert f(first, "new_device") == f(first, "new_country") == f(first, "new_payee") == 1.0
    assert f(first, "amount_z") > 3
    assert f(first, "amount_to_balance") == pytest.approx(0.3)
    assert f(third, "new_device") == 0.0
    assert f(third, "device_age_log") == pytest.approx(math.log1p(120))  # a young device
    assert f(third, "count_1h") > 1.9


# --- top-ups, balance -----------------------------------------------------------------


def test_mule_cash_out_top_up_then_immediate_payout() -> None:
    _, vectors = run(
        [
            req(T0, 50_000, kind="TOPUP", payee=None),
            req(T0 + 30 * SECOND, 49_000, kind="PAYOUT", payee="bank-x"),
        ]
    )
    assert vectors[0] is None
    payout = vectors[1]
    assert f(payout, "is_payout") == 1.0
    assert f(payout, "secs_since_topup_log") == pytest.approx(math.log1p(30))
    assert f(payout, "topup_sum_1h_log") == pytest.approx(math.log1p(500 * math.exp(-30 / 3600)))
    assert f(payout, "amount_to_topup_1h") == pytest.approx(490 / (500 * math.exp(-30 / 3600)))
    assert f(payout, "account_age_log") == pytest.approx(math.log1p(30))
    assert f(payout, "first_payment") == 1.0


def test_amount_to_balance_ratio_is_capped_and_safe_at_zero_balance() -> None:
    assert f(observe(None, req(amount=5000), 10_000)[1], "amount_to_balance") == 0.5
    assert f(observe(None, req(amount=5000), 0)[1], "amount_to_balance") == RATIO_CAP
    assert f(observe(None, req(amount=50), 0)[1], "amount_to_balance") == 0.5  # / 1 unit
    assert f(observe(None, req(amount=5000), -(10**6))[1], "amount_to_balance") == RATIO_CAP


# --- non-scored kinds, purity -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["CAPTURE", "VOID", "REFUND"])
def test_other_kinds_leave_the_state_unchanged(kind: RequestKind) -> None:
    state, _ = run([req(T0), req(T0 + SECOND)])
    assert state is not None
    same, vector = observe(state, req(T0 + HOUR, kind=kind), 0)
    assert vector is None
    assert same is state
    fresh, vector = observe(None, req(T0, kind=kind), 0)
    assert vector is None
    assert fresh.n == 0 and fresh.clock_ms == T0


def test_top_up_updates_only_top_up_fields_and_the_clock() -> None:
    state, _ = run([req(T0), req(T0 + SECOND)])
    assert state is not None
    after, vector = observe(state, req(T0 + MINUTE, 10_000, kind="TOPUP"), 0)
    assert vector is None
    assert after.n == state.n and after.payees == state.payees and after.mean == state.mean
    assert after.topup_ms == T0 + MINUTE and after.topup_1h == 100.0
    assert after.clock_ms == T0 + MINUTE
    assert after.count_1m == pytest.approx(state.count_1m * math.exp(-59 / 60))


def test_ids_that_are_not_valid_utf8_are_hashed_too() -> None:
    state, _ = observe(None, req(device="d\ud800", payee="p\udfff", country="\ud800"), 0)
    _, vector = observe(state, req(T0 + SECOND, device="d\ud800", payee="p\udfff"), 0)
    assert f(vector, "new_device") == 0.0 and f(vector, "new_payee") == 0.0
    assert json_round_trip(state) == state


def test_observe_never_mutates_its_input() -> None:
    state, _ = run([req(T0), req(T0 + SECOND, device="B")])
    assert state is not None
    before = encode_state(state)
    for kind in ALL_KINDS:
        observe(state, req(T0 + MINUTE, kind=kind, device="C", payee="new"), 0)
    assert encode_state(state) == before


# --- encoding, bounded size -------------------------------------------------------------


def test_encode_decode_round_trip_is_exact() -> None:
    state, _ = run(
        [
            req(T0, 123_457, kind="TOPUP"),
            *(
                req(T0 + i * 7_777, 1 + i * 991, payee=f"p{i}", device=f"d{i % 5}")
                for i in range(30)
            ),
        ]
    )
    assert state is not None
    data = encode_state(state)
    assert json.loads(json.dumps(data)) == data
    assert decode_state(data) == state
    assert json_round_trip(state) == state
    fresh, _ = observe(None, req(kind="VOID"), 0)
    assert json_round_trip(fresh) == fresh and json_round_trip(fresh).topup_ms is None


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [STATE_VERSION],
        [STATE_VERSION + 1, "AAAA"],
        [STATE_VERSION, "not base64!"],
        [STATE_VERSION, "AAAA"],
        [STATE_VERSION, 12],
        "a string",
        None,
    ],
)
def test_decode_rejects_malformed_states_with_value_error(bad: object) -> None:
    with pytest.raises(ValueError):
        decode_state(bad)  # type: ignore[arg-type]


def test_decode_rejects_oversized_sets() -> None:
    state, _ = observe(None, req(), 0)
    good = encode_state(state)
    packed = bytearray(base64.b64decode(good[1]))
    packed[4 * 8 + 10 * 8 + 8 + 1] = MAX_PAYEES + 1
    with pytest.raises(ValueError):
        decode_state([STATE_VERSION, base64.b64encode(bytes(packed)).decode()])


def test_state_size_is_bounded_after_ten_thousand_observations() -> None:
    state: FeatureState | None = None
    sizes = []
    for i in range(10_000):
        kind: RequestKind = "TOPUP" if i % 10 == 0 else "PAYMENT"
        state, _ = observe(
            state,
            req(
                T0 + i * 997,
                100 + i,
                kind=kind,
                payee=f"payee-{i}-{'x' * (i % 50)}",
                device=f"device-{i}",
                country=f"C{i}",
            ),
            10**6,
        )
        if i in (50, 9_999):
            sizes.append(len(json.dumps(encode_state(state), separators=(",", ":"))))
    assert state is not None and state.n == 9_000
    assert sizes[0] == sizes[1] == 302  # all sets full: the largest a state can be
    assert len(encode_state(state)[1]) == 296


# --- properties: no NaN/inf, parity through JSON ----------------------------------------

ids = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.text(max_size=12))
steps = st.tuples(
    st.sampled_from(ALL_KINDS),
    st.one_of(
        st.integers(-DAY, 2 * DAY),
        st.sampled_from([0, 1, 999, 60_000]),
        st.integers(-(2**40), 2**40),
    ),
    st.one_of(st.integers(-(10**6), 10**9), st.integers(LONG_MIN, LONG_MAX)),
    st.sampled_from(["EUR", "JPY", "KWD", "USD", "XXX", ""]),
    ids,
    ids,
    st.one_of(st.none(), st.sampled_from(["DE", "FR", "US", "NG", "BR"])),
    st.one_of(st.integers(-(10**9), 10**12), st.integers(-(2**70), 2**70)),
)


Step = tuple[RequestKind, int, int, str, str | None, str | None, str | None, int]


def build(start: int, raw_steps: list[Step]) -> list[tuple[Request, int]]:
    out = []
    t = start
    for kind, dt, amount, currency, payee, device, country, balance in raw_steps:
        t = min(max(t + dt, LONG_MIN), LONG_MAX)
        request = req(
            t, amount, kind=kind, currency=currency, payee=payee, device=device, country=country
        )
        out.append((request, balance))
    return out


@settings(max_examples=300, deadline=None)
@given(st.integers(LONG_MIN, LONG_MAX) | st.just(T0), st.lists(steps, max_size=40))
def test_vectors_are_always_finite_and_well_formed(start: int, raw_steps: list[Step]) -> None:
    state: FeatureState | None = None
    for request, balance in build(start, raw_steps):
        state, vector = observe(state, request, balance)
        if request["kind"] in SCORED_KINDS:
            assert vector is not None and len(vector) == len(FEATURE_NAMES)
            assert all(type(x) is float and math.isfinite(x) for x in vector), vector
            assert 0.0 <= f(vector, "amount_to_balance") <= RATIO_CAP
            assert 0.0 <= f(vector, "amount_to_topup_1h") <= RATIO_CAP
            assert -10.0 <= f(vector, "amount_z") <= 10.0
            assert f(vector, "secs_since_last_log") >= 0.0
            assert 0.0 <= f(vector, "hour_of_day") <= 23 and 0 <= f(vector, "day_of_week") <= 6
        else:
            assert vector is None
        assert len(state.payees) <= MAX_PAYEES
        assert len(state.devices) <= MAX_DEVICES and len(state.countries) <= MAX_COUNTRIES
        assert len(state.devices) == len(state.device_first_ms)
        for x in (state.count_1m, state.sum_24h, state.mean, state.var, state.topup_1h):
            assert math.isfinite(x)
        assert state.var >= 0.0


@settings(max_examples=300, deadline=None)
@given(st.integers(LONG_MIN, LONG_MAX) | st.just(T0), st.lists(steps, max_size=40))
def test_json_round_trip_between_every_step_gives_bit_identical_vectors(
    start: int,
    raw_steps: list[Step],
) -> None:
    """Training/serving parity: a continuous replay (training) and a worker that stores
    and reloads the state through JSON between every request (serving) agree exactly."""
    continuous: FeatureState | None = None
    reloaded: FeatureState | None = None
    for request, balance in build(start, raw_steps):
        continuous, expected = observe(continuous, request, balance)
        if reloaded is not None:
            reloaded = json_round_trip(reloaded)
        reloaded, actual = observe(reloaded, request, balance)
        assert bits(actual) == bits(expected)
        assert reloaded == continuous
        assert encode_state(reloaded) == encode_state(continuous)
