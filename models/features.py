"""Fraud features: pure functions over a per-account O(1) state, one implementation for
training and serving.

Serving calls :func:`observe` once per new request of an account, in the partition's
order, with the account's :class:`FeatureState` (kept inside the account's RocksDB
value via :func:`encode_state` / :func:`decode_state`). Training replays history in
event-time order through the very same :func:`observe`, so the vectors the model is
trained on are the vectors it is served; the tests check that a replay which
round-trips the state through JSON between every step gives bit-identical vectors.

What the state holds (bounded, whatever the account's history):

- exponentially decayed counts and amount sums of previous scored requests with time
  constants of 1 min, 1 h and 24 h (one ``math.exp`` per window per event), a decayed
  1 h count of requests that went to a payee never seen before, and a decayed 1 h sum
  of top-ups;
- a running mean and variance of ``log1p(amount)``: exact Welford (population
  variance) for the first ``Z_HORIZON`` scored requests, then exponentially weighted
  with ``alpha = 1 / Z_HORIZON`` (the same update with alpha capped), so a long-lived
  account's baseline follows it. In log space because payment amounts are heavy
  tailed: on raw amounts one large purchase would dominate the variance for months.
  With fewer than 2 prior payments the z-score is 0 (``first_payment`` and
  ``n_prior_log`` tell the model how much to trust it); the standard deviation has a
  floor (``Z_STD_FLOOR``) so an account that always pays the same amount gets a
  large but finite z for a change, and z is clipped to +-``Z_CAP``;
- the times of the first event, the last scored request and the last top-up;
- most-recent-first (LRU) sets of the last 8 payees, 4 devices (with the time each
  was first seen) and 4 countries, stored as CRC-32 hashes of the ids: bounded size
  whatever the ids look like, and no raw device ids in the changelog. A hash
  collision only ever hides a "new" flag.

Why these features (the patterns the simulator plants and production meets):

- account takeover: new device / new country / device changed, a young device on the
  next payments (``device_age_log``), a new payee, a large share of the balance
  (``amount_to_balance``) paid out quickly (short ``secs_since_last_log``);
- card testing: bursts of tiny payments (high ``count_1m`` with small ``sum_1m_log``
  and ``amount_log``, negative ``amount_z``), many new payees (``new_payees_1h``);
- mule cash-out: a young account (``account_age_log``, few prior payments), a payout
  (``is_payout``) soon after a top-up (``secs_since_topup_log``) spending most of it
  (``amount_to_topup_1h``);
- compromised merchant: a per-account state cannot see across accounts; it
  contributes the payee-novelty and velocity context only.

Conventions:

- Amounts are floats in major units (``amount_minor / 10**exponent``): fine for
  features, never for money. An unknown currency is scaled as 2 decimals (the rules
  decline it anyway); a negative amount counts as 0. Sums add amounts of different
  currencies as they come (most accounts pay in one currency).
- Durations are clamped to ``[0, GAP_CAP_S]`` before ``log1p``; "never" (no previous
  payment / top-up) is the cap itself, i.e. "as long ago as we care about". An event
  earlier than the state's time (out of order) decays nothing (dt = 0) and does not
  move the state's clock back, so no negative dt, NaN or inf can arise.
- Only event time (``created_at_ms``) is used, never the wall clock, so re-processing
  a batch after a crash, or replaying history for training, gives the same vectors.
- Velocity covers scored requests whatever their decision: :func:`observe` runs before
  the decision (its vector is the model's input), so declined attempts count too,
  which is what card testing looks like.
- Kinds: the kinds in ``SCORED_KINDS`` get a vector and update the state; ``TOPUP``
  gets no vector but updates the top-up fields (and the clock); every other kind
  (CAPTURE, VOID, REFUND) returns the state unchanged (a fresh empty state when none
  was given) and no vector.

Performance (``python -m models.features``; 2-core dev machine, CPython 3.11, best of
repeated runs, shared with other work so expect up to 2x under load): ``observe()``
about 4.6-5.2 µs per scored request (3 ``math.exp``, 3 CRC-32, one new state object,
one 30-tuple), 1.2 µs per top-up; ``encode_state`` 1.9 µs + ``decode_state`` 3.2 µs
= about 5 µs per round trip, plus ~8 µs for a standalone ``json.dumps``/``json.loads``
of the result (mostly call overhead, shared when the state rides inside the account's
JSON value). The same state as a plain JSON list of numbers costs ~27 µs through
``json`` (float repr is ~1 µs per float here), hence the packed encoding. The encoded
state is at most 274 bytes of JSON whatever the history.
"""

from __future__ import annotations

import binascii
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from agents.rules.money import CURRENCY_EXPONENTS, exponent
from agents.rules.records import Request, RequestKind

SCORED_KINDS: frozenset[str] = frozenset({"PAYMENT", "AUTHORIZE", "PAYOUT"})

# Bump when the meaning of any feature changes, even if the names stay the same
# (caps, time constants, hashing): a model must never be served vectors it was not
# trained on.
FEATURE_VERSION = 1

FEATURE_NAMES: tuple[str, ...] = (
    "amount_log",  # log1p(amount in major units)
    "is_payout",
    "is_authorize",
    "count_1m",  # decayed count of previous scored requests, tau = 60 s
    "sum_1m_log",  # log1p(decayed sum of their amounts), tau = 60 s
    "count_1h",
    "sum_1h_log",
    "count_24h",
    "sum_24h_log",
    "amount_z",  # z-score of log1p(amount) vs the account's running mean/variance
    "n_prior_log",  # log1p(number of previous scored requests)
    "first_payment",  # 1.0 when there is no previous scored request
    "secs_since_last_log",  # log1p(seconds since the previous scored request), capped
    "account_age_log",  # log1p(seconds since the first event of any kind), capped
    "new_payee",  # counterparty not among the last 8 payees
    "new_payees_1h",  # decayed 1 h count of previous requests to a new payee
    "new_device",  # device not among the last 4 devices
    "device_missing",  # the request carries no device id
    "device_changed",  # device differs from the most recent one
    "device_age_log",  # log1p(seconds since this device was first seen); 0 if new
    "n_recent_devices",  # size of the recent-device set (0..4)
    "new_country",  # country not among the last 4 countries
    "country_changed",  # country differs from the most recent one
    "n_recent_countries",  # size of the recent-country set (0..4)
    "hour_of_day",  # UTC, 0..23
    "day_of_week",  # UTC, Monday = 0
    "amount_to_balance",  # amount / max(available balance, 1 unit), capped at 10
    "secs_since_topup_log",  # log1p(seconds since the last top-up), capped
    "topup_sum_1h_log",  # log1p(decayed 1 h sum of top-ups)
    "amount_to_topup_1h",  # amount / decayed 1 h top-ups (0 if < 1 unit), capped at 10
)

FEATURE_SET_HASH: str = hashlib.sha256(
    f"{FEATURE_VERSION}:{','.join(FEATURE_NAMES)}".encode()
).hexdigest()

# Layout version of encode_state's list (independent of FEATURE_VERSION).
STATE_VERSION = 1

WINDOWS_S: tuple[int, int, int] = (60, 3600, 86400)
GAP_CAP_S = 365 * 86400  # durations are clamped here; "never" means this
Z_HORIZON = 64  # Welford up to this many payments, then EWMA with alpha = 1/Z_HORIZON
Z_STD_FLOOR = 0.1  # in log1p space: a 10% change is one "sigma" at least
Z_CAP = 10.0
RATIO_CAP = 10.0
MAX_PAYEES = 8
MAX_DEVICES = 4
MAX_COUNTRIES = 4

# exp(dt_ms * _K) is the decay factor over dt_ms for each window.
_K1 = -1.0 / (WINDOWS_S[0] * 1000.0)
_K2 = -1.0 / (WINDOWS_S[1] * 1000.0)
_K3 = -1.0 / (WINDOWS_S[2] * 1000.0)
_GAP_CAP_MS = GAP_CAP_S * 1000
_LOG_GAP_CAP = math.log1p(GAP_CAP_S)
_Z_VAR_FLOOR = Z_STD_FLOOR * Z_STD_FLOOR
_ALPHA_MIN = 1.0 / Z_HORIZON
_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000


# Minor units per major unit, per currency, as floats (looked up once per request).
_UNITS: dict[str, float] = {c: float(10 ** exponent(c)) for c in CURRENCY_EXPONENTS}
_DEFAULT_UNIT = 100.0


_exp = math.exp
_log1p = math.log1p
_crc32 = zlib.crc32
_b2a = binascii.b2a_base64
_a2b = binascii.a2b_base64


def _hash_id(value: str) -> int:
    """Stable 32-bit hash of an id (Python's hash() is salted per process).

    ``surrogatepass`` so that no string can make it raise; Avro-decoded ids never
    hold lone surrogates, so the hot path tries the plain (faster) encode first.
    """
    return _crc32(value.encode("utf-8", "surrogatepass"))


def _log_gap(dt_ms: int) -> float:
    """log1p(seconds) of a duration clamped to [0, GAP_CAP_S]."""
    if dt_ms <= 0:
        return 0.0
    if dt_ms >= _GAP_CAP_MS:
        return _LOG_GAP_CAP
    return _log1p(dt_ms / 1000.0)


@dataclass(slots=True)
class FeatureState:
    """One account's feature state: a fixed number of fields and bounded tuples.

    Treat it as immutable: :func:`observe` builds a new one and never changes its
    input, so a caller may keep the old state (e.g. to retry a batch). The decayed
    accumulators are valid as of ``clock_ms`` (the latest event time seen).
    """

    clock_ms: int
    first_ms: int  # earliest event time seen (any kind)
    last_ms: int  # latest scored request time (meaningful when n > 0)
    n: int  # scored requests observed
    count_1m: float
    sum_1m: float
    count_1h: float
    sum_1h: float
    count_24h: float
    sum_24h: float
    new_payees_1h: float
    topup_1h: float
    mean: float  # of log1p(amount)
    var: float
    topup_ms: int | None  # latest top-up time, None if none yet
    payees: tuple[int, ...]  # hashes, most recent first
    devices: tuple[int, ...]  # hashes, most recent first
    device_first_ms: tuple[int, ...]  # first-seen time of each entry of devices
    countries: tuple[int, ...]  # hashes, most recent first


def _fresh(t_ms: int) -> FeatureState:
    """The state of an account never seen before, its clock at ``t_ms``."""
    return FeatureState(
        t_ms, t_ms, t_ms, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, (), (), (), ()
    )


def observe(
    state: FeatureState | None, request: Request, balance_minor: int
) -> tuple[FeatureState, tuple[float, ...] | None]:
    """Vector for this request computed from the state BEFORE it, and the state after it.

    ``balance_minor`` is the payer's available balance in the request's currency just
    before the request (only used for ``amount_to_balance``). Kinds outside
    ``SCORED_KINDS`` give no vector: TOPUP still updates the top-up fields and the
    clock, other kinds return the state unchanged (a fresh one if ``state`` is None).
    Never mutates ``state``. Call it once per distinct request (not for duplicates or
    redeliveries), in the account's order, the same way in training and serving.
    """
    kind = request["kind"]
    t = request["created_at_ms"]
    if kind not in SCORED_KINDS:
        if kind == "TOPUP":
            return _observe_topup(state, request, t), None
        return (state if state is not None else _fresh(t)), None

    s = state if state is not None else _fresh(t)
    unit = _UNITS.get(request["currency"], _DEFAULT_UNIT)
    amount_minor = request["amount_minor"]
    a = amount_minor / unit if amount_minor > 0 else 0.0
    la = _log1p(a)

    # Decay the accumulators to this request's time; never backwards.
    clock = s.clock_ms
    dt = t - clock
    if dt > 0:
        f1 = _exp(dt * _K1)
        f2 = _exp(dt * _K2)
        f3 = _exp(dt * _K3)
        clock = t
    else:
        f1 = f2 = f3 = 1.0
    c1 = s.count_1m * f1
    s1 = s.sum_1m * f1
    c2 = s.count_1h * f2
    s2 = s.sum_1h * f2
    c3 = s.count_24h * f3
    s3 = s.sum_24h * f3
    np1 = s.new_payees_1h * f2
    tp = s.topup_1h * f2

    # Amount vs the account's baseline: exact Welford, then EWMA (see module doc).
    n = s.n
    mean = s.mean
    var = s.var
    d = la - mean
    if n >= 2:
        z = d / math.sqrt(var + _Z_VAR_FLOOR)
        if z > Z_CAP:
            z = Z_CAP
        elif z < -Z_CAP:
            z = -Z_CAP
    else:
        z = 0.0
    n_new = n + 1
    alpha = 1.0 / n_new if n_new < Z_HORIZON else _ALPHA_MIN
    mean_new = mean + alpha * d
    var_new = (1.0 - alpha) * (var + alpha * d * d)

    last = s.last_ms
    if n:
        gap_ms = t - last
        if gap_ms <= 0:
            gap = 0.0
        elif gap_ms >= _GAP_CAP_MS:
            gap = _LOG_GAP_CAP
            last = t
        else:
            gap = _log1p(gap_ms / 1000.0)
            last = t
        first = 0.0
    else:
        gap = _LOG_GAP_CAP
        first = 1.0
        last = t
    first_ms = s.first_ms
    if t < first_ms:
        first_ms = t

    # Payee novelty (LRU of hashes, most recent first).
    payees = s.payees
    counterparty = request["counterparty_id"]
    if counterparty is None:
        new_payee = 0.0
    else:
        try:
            h = _crc32(counterparty.encode())
        except UnicodeEncodeError:
            h = _hash_id(counterparty)
        if payees and payees[0] == h:
            new_payee = 0.0
        elif h in payees:
            new_payee = 0.0
            payees = (h, *[p for p in payees if p != h])
        else:
            new_payee = 1.0
            payees = (h, *payees[: MAX_PAYEES - 1])

    # Device novelty, change and age.
    devices = s.devices
    device_first = s.device_first_ms
    n_devices = float(len(devices))
    device = request["device_id"]
    if device is None:
        new_device = 0.0
        device_missing = 1.0
        device_changed = 0.0
        device_age = 0.0
    else:
        device_missing = 0.0
        try:
            h = _crc32(device.encode())
        except UnicodeEncodeError:
            h = _hash_id(device)
        if devices and devices[0] == h:
            new_device = 0.0
            device_changed = 0.0
            device_age = _log_gap(t - device_first[0])
        elif h in devices:
            i = devices.index(h)
            seen = device_first[i]
            new_device = 0.0
            device_changed = 1.0
            device_age = _log_gap(t - seen)
            devices = (h, *devices[:i], *devices[i + 1 :])
            device_first = (seen, *device_first[:i], *device_first[i + 1 :])
        else:
            new_device = 1.0
            device_changed = 1.0 if devices else 0.0
            device_age = 0.0
            devices = (h, *devices[: MAX_DEVICES - 1])
            device_first = (t, *device_first[: MAX_DEVICES - 1])

    # Country novelty and change.
    countries = s.countries
    n_countries = float(len(countries))
    country = request["country"]
    if country is None:
        new_country = 0.0
        country_changed = 0.0
    else:
        try:
            h = _crc32(country.encode())
        except UnicodeEncodeError:
            h = _hash_id(country)
        if countries and countries[0] == h:
            new_country = 0.0
            country_changed = 0.0
        elif h in countries:
            new_country = 0.0
            country_changed = 1.0
            countries = (h, *[c for c in countries if c != h])
        else:
            new_country = 1.0
            country_changed = 1.0 if countries else 0.0
            countries = (h, *countries[: MAX_COUNTRIES - 1])

    balance = balance_minor / unit
    ratio = a / balance if balance > 1.0 else a
    if ratio > RATIO_CAP:
        ratio = RATIO_CAP
    if tp >= 1.0:
        topup_ratio = a / tp
        if topup_ratio > RATIO_CAP:
            topup_ratio = RATIO_CAP
    else:
        topup_ratio = 0.0
    topup_ms = s.topup_ms

    vector = (
        la,
        1.0 if kind == "PAYOUT" else 0.0,
        1.0 if kind == "AUTHORIZE" else 0.0,
        c1,
        _log1p(s1),
        c2,
        _log1p(s2),
        c3,
        _log1p(s3),
        z,
        _log1p(n),
        first,
        gap,
        _log_gap(t - first_ms),
        new_payee,
        np1,
        new_device,
        device_missing,
        device_changed,
        device_age,
        n_devices,
        new_country,
        country_changed,
        n_countries,
        float(t // _MS_PER_HOUR % 24),
        float((t // _MS_PER_DAY + 3) % 7),  # 1970-01-01 was a Thursday
        ratio,
        _LOG_GAP_CAP if topup_ms is None else _log_gap(t - topup_ms),
        _log1p(tp),
        topup_ratio,
    )
    new_state = FeatureState(
        clock,
        first_ms,
        last,
        n_new,
        c1 + 1.0,
        s1 + a,
        c2 + 1.0,
        s2 + a,
        c3 + 1.0,
        s3 + a,
        np1 + new_payee,
        tp,
        mean_new,
        var_new,
        topup_ms,
        payees,
        devices,
        device_first,
        countries,
    )
    return new_state, vector


def _observe_topup(state: FeatureState | None, request: Request, t: int) -> FeatureState:
    """A top-up: decay everything to its time and add it to the 1 h top-up sum."""
    s = state if state is not None else _fresh(t)
    amount_minor = request["amount_minor"]
    a = amount_minor / _UNITS.get(request["currency"], _DEFAULT_UNIT) if amount_minor > 0 else 0.0
    clock = s.clock_ms
    dt = t - clock
    if dt > 0:
        f1 = _exp(dt * _K1)
        f2 = _exp(dt * _K2)
        f3 = _exp(dt * _K3)
        clock = t
    else:
        f1 = f2 = f3 = 1.0
    prev = s.topup_ms
    return FeatureState(
        clock,
        s.first_ms if s.first_ms <= t else t,
        s.last_ms,
        s.n,
        s.count_1m * f1,
        s.sum_1m * f1,
        s.count_1h * f2,
        s.sum_1h * f2,
        s.count_24h * f3,
        s.sum_24h * f3,
        s.new_payees_1h * f2,
        s.topup_1h * f2 + a,
        s.mean,
        s.var,
        t if prev is None or t > prev else prev,
        s.payees,
        s.devices,
        s.device_first_ms,
        s.countries,
    )


# Packed layout of encode_state's blob, little-endian, in FeatureState's field order:
# clock_ms, first_ms, last_ms, n (q), the ten floats (d), topup_ms (q, 0 if none),
# has_topup and the three set sizes (B), then payee hashes (I), device hashes (I),
# device first-seen times (q) and country hashes (I). One Struct per combination of
# set sizes, built on first use (at most 9 * 5 * 5 of them).
_FIXED = "<4q10dq4B"
_SIZES_OFFSET = 4 * 8 + 10 * 8 + 8 + 1
_STRUCTS: dict[tuple[int, int, int], struct.Struct] = {}


def _layout(n_payees: int, n_devices: int, n_countries: int) -> struct.Struct:
    key = (n_payees, n_devices, n_countries)
    layout = _STRUCTS.get(key)
    if layout is None:
        layout = struct.Struct(f"{_FIXED}{n_payees}I{n_devices}I{n_devices}q{n_countries}I")
        _STRUCTS[key] = layout
    return layout


def encode_state(state: FeatureState) -> list[Any]:
    """Compact JSON-serializable form: ``[STATE_VERSION, base64 of the packed state]``.

    Why packed and not a list of numbers: ``json.dumps`` spends about 1 µs per float
    (shortest-repr formatting) and 0.2 µs per int, so this state as a list of numbers
    costs ~27 µs through dumps + loads, more than the whole feature budget. Packing
    costs ~2 µs each way, is exact for every float (bit for bit, through any JSON codec, as it
    is a string) and bounds the size: at most 296 base64 characters (220 bytes packed),
    whatever the history.
    """
    s = state
    payees = s.payees
    devices = s.devices
    countries = s.countries
    topup_ms = s.topup_ms
    packed = _layout(len(payees), len(devices), len(countries)).pack(
        s.clock_ms,
        s.first_ms,
        s.last_ms,
        s.n,
        s.count_1m,
        s.sum_1m,
        s.count_1h,
        s.sum_1h,
        s.count_24h,
        s.sum_24h,
        s.new_payees_1h,
        s.topup_1h,
        s.mean,
        s.var,
        0 if topup_ms is None else topup_ms,
        topup_ms is not None,
        len(payees),
        len(devices),
        len(countries),
        *payees,
        *devices,
        *s.device_first_ms,
        *countries,
    )
    return [STATE_VERSION, _b2a(packed, newline=False).decode("ascii")]


def decode_state(data: list[Any]) -> FeatureState:
    """Inverse of :func:`encode_state`: ``decode_state(encode_state(s)) == s`` exactly.

    Raises ValueError for another layout version or a malformed blob, so that a caller
    can choose to start the account's features afresh rather than crash a worker.
    """
    try:
        version, blob = data
        if version != STATE_VERSION:
            raise ValueError(f"layout version {version!r}, expected {STATE_VERSION}")
        packed = _a2b(blob.encode("ascii"))
        n_payees, n_devices, n_countries = packed[_SIZES_OFFSET : _SIZES_OFFSET + 3]
        if n_payees > MAX_PAYEES or n_devices > MAX_DEVICES or n_countries > MAX_COUNTRIES:
            raise ValueError("a recent set is larger than its bound")
        fields = _layout(n_payees, n_devices, n_countries).unpack(packed)
    except (TypeError, ValueError, AttributeError, struct.error) as exc:
        raise ValueError(f"malformed feature state {data!r:.60}: {exc}") from None
    j = 19 + n_payees
    k = j + n_devices
    m = k + n_devices
    return FeatureState(
        fields[0],
        fields[1],
        fields[2],
        fields[3],
        fields[4],
        fields[5],
        fields[6],
        fields[7],
        fields[8],
        fields[9],
        fields[10],
        fields[11],
        fields[12],
        fields[13],
        fields[14] if fields[15] else None,
        fields[19:j],
        fields[j:k],
        fields[k:m],
        fields[m:],
    )


def _benchmark(n: int = 50_000, repeat: int = 7) -> None:
    """Microbenchmark: µs per observe() and per encode/decode round trip (best of runs).

    observe() runs as in serving: each request on the state the previous one returned,
    one busy account with a handful of payees, devices and countries.
    """
    import json
    import random
    import time
    from collections.abc import Callable

    rng = random.Random(7)
    kinds: list[RequestKind] = [*("PAYMENT",) * 8, "AUTHORIZE", "PAYOUT", "TOPUP"]
    requests: list[Request] = []
    t = 1_700_000_000_000
    for i in range(n):
        t += rng.randrange(0, 600_000)
        requests.append(
            Request(
                request_id=f"r{i}",
                idempotency_key=f"k{i}",
                kind=rng.choice(kinds),
                account_id="acct-1",
                counterparty_id=f"merchant-{rng.randrange(12)}",
                payment_id=None,
                amount_minor=rng.randrange(100, 50_000),
                currency="EUR",
                created_at_ms=t,
                expires_at_ms=None,
                device_id=f"device-{rng.randrange(3)}",
                country=rng.choice(["DE", "DE", "DE", "FR"]),
                merchant_category="5411",
                metadata={},
            )
        )
    scored = [r for r in requests if r["kind"] in SCORED_KINDS]
    topups = [r for r in requests if r["kind"] == "TOPUP"]

    def best(run: Callable[[], int]) -> float:
        timings = []
        for _ in range(repeat):
            start = time.perf_counter()
            count = run()
            timings.append((time.perf_counter() - start) / count * 1e6)
        return min(timings)

    def chain(items: list[Request]) -> int:
        state: FeatureState | None = None
        for r in items:
            state, _ = observe(state, r, 1_000_000)
        return len(items)

    final: FeatureState | None = None
    for r in requests:
        final, _ = observe(final, r, 1_000_000)
    assert final is not None
    warm = final

    def codec() -> int:
        for _ in range(n):
            decode_state(encode_state(warm))
        return n

    def codec_json() -> int:
        for _ in range(n):
            decode_state(json.loads(json.dumps(encode_state(warm))))
        return n

    size = len(json.dumps(encode_state(warm), separators=(",", ":")))
    print(f"observe, scored request      {best(lambda: chain(scored)):6.2f} µs")
    print(f"observe, top-up              {best(lambda: chain(topups)):6.2f} µs")
    print(f"encode_state + decode_state  {best(codec):6.2f} µs")
    print(f"  ... with json dumps/loads  {best(codec_json):6.2f} µs")
    print(f"encoded state                {size} bytes of JSON, {len(FEATURE_NAMES)} features")


if __name__ == "__main__":
    _benchmark()
