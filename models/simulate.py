"""A seeded simulator of payment traffic with realistic fraud, for training and demos.

No fraud data set can be downloaded for this project, so fraud scoring is trained,
demonstrated and benchmarked on traffic this module makes up. It is pure (no Kafka,
no sklearn): ``simulate(spec)`` returns requests for payments.requests, late labels
for fraud.labels and the ground truth; ``iter_requests(spec)`` streams the same
requests without keeping them, for benchmark loads of millions.

The world
---------
Customers (``c-000123``) hold a wallet in ``spec.currency`` and pay merchants
(``m-00042``) and friends from it. Each has habits: a persona's rhythm by hour of
day and weekday (commuter, night owl, daytime, weekender) in their home time zone,
a payment rate, an amount scale and spread, favourite merchants (Zipf-weighted),
an appetite for new ones, one to three devices (some pay in shops with the plastic
card: no device), a home country and trips abroad (new country, local merchants,
usual devices), subscriptions (merchant-initiated: no device, in the merchant's
night batch), rent, bill splitting with friends, micro-payment bursts (transit,
gaming), salary every 30 days (the first is the opening balance), auto top-ups when
a payment would not be covered (so legitimate payments are affordable), savings
sweeps to their own bank, windfalls paid straight out again, new phones. AUTHORIZE
is followed by CAPTURE (full, partial, fuel pre-auths of a round sum) or VOID within
days; a few payments are refunded days later; merchants pay out their takings.
TOPUP and PAYOUT name an external reference (``bank:…``, ``employer:…``,
``sender:…``); the rules add the ``external:`` ledger prefix themselves.

Fraud: ``fraud_rate`` of the scored requests (PAYMENT, AUTHORIZE, PAYOUT)
-------------------------------------------------------------------------
A controller plans incidents each midnight from the legitimate volume so far, so
the share follows ``fraud_rate`` whatever the volume; ``scenario_shares`` splits
the fraudulent requests between four scenarios. Each leaves several weak signals
and none all of them, so no single feature catches everything:

- ``account_takeover``: a fraudster's device (new, or a ring's device used on
  several victims), in a foreign country or (45%) the victim's own. Fast drains
  (75%: 2-7 requests 15 s-3 min apart, each a share of the balance, sometimes capped
  near the usual amounts, at new high-risk merchants, to mule accounts, or paid out
  to a new bank account) or low and slow (2-5 payments 5-60 min apart at 2-6x the
  usual amount, partly at shops the victim knows). Signals: a new then young
  device, new payees, 1 h velocity, amount against balance and against the mean.
- ``card_testing``: 6-25 tiny payments (0.05-1.50 EUR) seconds apart (20%: minutes
  apart) at online merchants people use (digital goods, gaming, charity,
  streaming; 30% at the victim's favourite), 60% from a bot faking a new device
  every attempt, 40% followed by a cash-in payment. Signals: 1 min / 1 h counts with
  low amounts, new devices or payees. Legitimate micro-bursts (transit taps, game
  tokens) look alike from known devices.
- ``compromised_merchant``: customers who recently paid a merchant get 1-3 extra
  charges from it (a known payee!) within minutes, 75% in the attacker's night
  batch, 75% without a device (else a bot device), from home, the merchant's or a
  foreign country, at 0.8-3x the usual amount. Signals: hour, missing or new
  device, repeats, amount. Subscriptions and card payments look alike. Per
  account it is the hardest; across accounts the merchant's burst gives it away.
- ``mule_cashout``: a sleeper mule (``mule_share`` of customers, little own
  activity, a few cash-outs each) is funded by unknown senders (and takeover
  drains), then within 10 min-12 h pays it out: 1-4 payouts to a new (or its own)
  bank account or crypto / gift-card payments, most of the balance each time, often
  from its own known device. Signals: amount against balance and recent top-ups,
  a new payee, velocity after silence, amount z-score. Savings sweeps, rent and
  windfalls look alike.

Checked offline (too slow for the unit tests) on the default spec, seeds 7 and 11,
training on the first 30 days and scoring the last 30 against the truth: sklearn's
HistGradientBoosting on models/features.py's vectors reaches AUPRC 0.75-0.88 and
recall 0.88-0.95 at 1% false positives when trained on the (noisy) labels, 0.80-0.92
and 0.92-0.96 on the truth; the best single feature as a score reaches AUPRC 0.21-0.30
(new payees in the last hour), every other one 0.24 or less.

Labels
------
fraud.labels records arrive ``label_delay_min_days``-``label_delay_max_days``
after their payment: chargebacks (a median of two weeks) for most fraud, disputes
and reviews for some, reviews and disputes for mule cash-outs. About
``label_missing_rate`` of fraud is never labelled (more for card testing: victims
overlook tiny charges; declined attempts are rarely disputed); ``friendly_fraud_rate``
of legitimate payments are charged back as fraud anyway (three times that for
disputable goods); reviews clear some legitimate payments that looked odd (a new
device, a trip, a windfall) with ``is_fraud`` false.

Ids and determinism
-------------------
Everything derives from the spec: request ids are ``r-<spec fingerprint>-<sequence>``
(the same spec gives the same ids; another spec never collides), label ids
``l-…``, device and bank references opaque hex from seeded generators (separate
streams for the population, the traffic, the labels, so labels never change the
requests). Requests are sorted by ``created_at_ms``; the same spec gives the same
output, whatever the interpreter's hash seed.

Performance
-----------
Spontaneous payments are drawn for a whole day at once with numpy (counts, times
from the rhythm, the uniforms and normals each needs); a heap holds everything
else (captures, salaries, fraud steps); one pass merges the two in time order and
builds each request once. Measured on the shared 2-core development VM (Python
3.11, load from other work makes it vary): ``iter_requests`` 90,000-125,000
requests/s on the default spec (311,000 requests in 2.5-3.5 s) and ~67,000/s for
10,000 customers over 60 days (1.59M requests in ~23 s: a bigger population costs
cache misses); ``simulate`` 85,000-105,000/s (it pauses the cyclic GC, which would
otherwise rescan the growing list; ~260 MB for the default spec). Writing JSON lines
(``paystream simulate --out``) runs at about 30,000 requests/s.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import heapq
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np

from agents.rules.money import CURRENCY_EXPONENTS
from agents.rules.records import Request, RequestKind

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_HOURS = 168
MONTH_MS = 30 * DAY_MS  # salaries, rent and subscriptions recur every 30 days
# 1970-01-01 was a Thursday: shifting hours since the epoch by three days makes
# hour-of-week 0 Monday 00:00.
EPOCH_WEEKDAY_HOURS = 3 * 24

SCORED_KINDS = frozenset({"PAYMENT", "AUTHORIZE", "PAYOUT"})

LEGIT = "legit"
ACCOUNT_TAKEOVER = "account_takeover"
CARD_TESTING = "card_testing"
COMPROMISED_MERCHANT = "compromised_merchant"
MULE_CASHOUT = "mule_cashout"
FRAUD_SCENARIOS = (ACCOUNT_TAKEOVER, CARD_TESTING, COMPROMISED_MERCHANT, MULE_CASHOUT)
SCENARIOS = (LEGIT, *FRAUD_SCENARIOS)

LabelSource = Literal["CHARGEBACK", "DISPUTE", "REVIEW"]


class FraudLabel(TypedDict):
    """A record of fraud.labels (schemas/avro/fraud_label.avsc)."""

    label_id: str
    account_id: str
    request_id: str
    is_fraud: bool
    source: LabelSource
    labeled_at_ms: int


# --------------------------------------------------------------------------------------
# Specification and result
# --------------------------------------------------------------------------------------

FRAUD_RATE_MAX = 0.05
CUSTOMERS_MIN = 20
MERCHANTS_MIN = 30  # at least one merchant per category


@dataclass(frozen=True)
class SimulationSpec:
    """Everything a simulation depends on; the same spec always gives the same traffic."""

    customers: int = 2_000
    merchants: int = 200
    days: int = 60
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00Z
    fraud_rate: float = 0.004  # target share of scored requests that are fraud (0.001..0.01)
    seed: int = 7
    currency: str = "EUR"
    # Share of the fraudulent *requests* each scenario contributes.
    scenario_shares: tuple[tuple[str, float], ...] = (
        (ACCOUNT_TAKEOVER, 0.35),
        (CARD_TESTING, 0.25),
        (COMPROMISED_MERCHANT, 0.20),
        (MULE_CASHOUT, 0.20),
    )
    mule_share: float = 0.01  # of customers who are (sleeper) mule accounts
    label_delay_min_days: int = 3
    label_delay_max_days: int = 45
    label_missing_rate: float = 0.10  # of fraudulent requests never labelled
    friendly_fraud_rate: float = 0.0002  # of legitimate payments charged back as fraud
    review_rate: float = 0.0005  # of legitimate scored requests cleared by a review

    def __post_init__(self) -> None:
        problems = []
        if self.customers < CUSTOMERS_MIN:
            problems.append(f"customers={self.customers} (need >= {CUSTOMERS_MIN})")
        if self.merchants < MERCHANTS_MIN:
            problems.append(f"merchants={self.merchants} (need >= {MERCHANTS_MIN})")
        if self.days < 1:
            problems.append(f"days={self.days} (need >= 1)")
        if not 0 <= self.fraud_rate <= FRAUD_RATE_MAX:
            problems.append(f"fraud_rate={self.fraud_rate} (need 0..{FRAUD_RATE_MAX})")
        if self.currency not in CURRENCY_EXPONENTS:
            problems.append(f"currency={self.currency!r} (not an ISO 4217 code paystream knows)")
        names = [name for name, _ in self.scenario_shares]
        if (
            not self.scenario_shares
            or any(name not in FRAUD_SCENARIOS for name in names)
            or len(set(names)) != len(names)
            or any(share < 0 for _, share in self.scenario_shares)
            or sum(share for _, share in self.scenario_shares) <= 0
        ):
            problems.append(
                f"scenario_shares={self.scenario_shares} (distinct names from "
                f"{FRAUD_SCENARIOS}, non-negative shares, some positive)"
            )
        if not 0 <= self.label_delay_min_days <= self.label_delay_max_days:
            problems.append(
                f"label delays {self.label_delay_min_days}..{self.label_delay_max_days} days"
            )
        for name in ("mule_share", "label_missing_rate", "friendly_fraud_rate", "review_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                problems.append(f"{name}={value} (need 0..1)")
        if problems:
            raise ValueError("invalid simulation spec: " + "; ".join(problems))

    @property
    def end_ms(self) -> int:
        """No request is created at or after this time."""
        return self.start_ms + self.days * DAY_MS

    def fingerprint(self) -> str:
        """8 hex digits naming this spec: part of every id, so two specs never collide."""
        return hashlib.blake2b(repr(self).encode(), digest_size=4).hexdigest()


@dataclass(frozen=True)
class Simulation:
    """The requests, their late labels and the ground truth of one simulation."""

    requests: list[Request]  # sorted by created_at_ms
    labels: list[FraudLabel]  # sorted by labeled_at_ms
    is_fraud: dict[str, bool]  # request_id -> truth, for every scored request
    scenario: dict[str, str]  # request_id -> scenario name, for every scored request
    summary: dict[str, Any] = field(default_factory=dict)


def simulate(spec: SimulationSpec) -> Simulation:
    """Run the whole simulation in memory (about 1 KB per request)."""
    simulator = Simulator(spec, record_truth=True)
    # Hundreds of thousands of long-lived dicts make the cyclic GC rescan them over and
    # over (a third of the run time); nothing here makes cycles, so pause it.
    collecting = gc.isenabled()
    gc.disable()
    try:
        requests = list(simulator.requests())
    finally:
        if collecting:
            gc.enable()
    return Simulation(
        requests=requests,
        labels=simulator.labels(),
        is_fraud=simulator.is_fraud,
        scenario=simulator.scenario,
        summary=simulator.summary(),
    )


def iter_requests(spec: SimulationSpec) -> Iterator[Request]:
    """The requests of ``simulate(spec)``, in the same order, without keeping them."""
    return Simulator(spec, record_truth=False).requests()


# --------------------------------------------------------------------------------------
# Static tables: countries, categories, rhythms
# --------------------------------------------------------------------------------------

# Home countries (all in the euro area): weight, UTC offset in hours (winter time).
HOME_COUNTRIES: dict[str, tuple[float, int]] = {
    "DE": (0.22, 1), "FR": (0.18, 1), "ES": (0.12, 1), "IT": (0.12, 1), "NL": (0.08, 1),
    "BE": (0.05, 1), "AT": (0.05, 1), "PT": (0.04, 0), "IE": (0.04, 0), "FI": (0.03, 2),
    "GR": (0.03, 2),
}  # fmt: skip
# Trip destinations beyond the home countries (any home country is one too).
TRAVEL_COUNTRIES: dict[str, float] = {
    "GB": 0.08, "CH": 0.05, "HR": 0.05, "US": 0.05, "TR": 0.04, "MA": 0.02, "TH": 0.02,
    "RO": 0.01, "BR": 0.005,
}  # fmt: skip
# Countries fraud rings operate from, besides proxies in the victim's own country.
FRAUD_COUNTRIES = ("RO", "BG", "NG", "BR", "VN", "UA", "ID", "PH", "GB", "US", "NL", "ES")
ONLINE_MERCHANT_COUNTRIES = ("IE", "NL", "LU", "DE", "US", "GB")


@dataclass(frozen=True)
class Category:
    """A merchant category: how common, typical ticket, online share, AUTHORIZE share."""

    name: str
    weight: float
    price_eur: float
    online: float
    authorize: float
    refund_rate: float  # share of its payments refunded later


CATEGORIES: tuple[Category, ...] = (
    Category("grocery", 0.15, 28, 0.05, 0.0, 0.002),
    Category("restaurant", 0.09, 30, 0.0, 0.0, 0.002),
    Category("cafe", 0.07, 6, 0.0, 0.0, 0.0),
    Category("transport", 0.05, 3, 0.3, 0.0, 0.005),
    Category("fuel", 0.04, 60, 0.0, 0.9, 0.0),
    Category("pharmacy", 0.04, 18, 0.2, 0.0, 0.005),
    Category("fashion", 0.07, 55, 0.6, 0.0, 0.06),
    Category("electronics", 0.05, 130, 0.6, 0.2, 0.04),
    Category("digital_goods", 0.04, 12, 1.0, 0.0, 0.01),
    Category("gaming", 0.04, 9, 1.0, 0.0, 0.005),
    Category("streaming", 0.03, 13, 1.0, 0.0, 0.0),
    Category("telecom", 0.02, 35, 1.0, 0.0, 0.0),
    Category("utilities", 0.02, 80, 1.0, 0.0, 0.0),
    Category("travel", 0.03, 190, 1.0, 0.3, 0.05),
    Category("hotel", 0.03, 160, 0.4, 1.0, 0.02),
    Category("car_rental", 0.01, 140, 0.5, 1.0, 0.02),
    Category("marketplace", 0.05, 40, 1.0, 0.4, 0.05),
    Category("gift_cards", 0.02, 45, 0.7, 0.0, 0.0),
    Category("crypto", 0.02, 150, 1.0, 0.0, 0.0),
    Category("entertainment", 0.03, 30, 0.4, 0.0, 0.01),
    Category("health", 0.02, 50, 0.1, 0.0, 0.0),
    Category("housing", 0.02, 850, 1.0, 0.0, 0.0),
    Category("charity", 0.01, 20, 1.0, 0.0, 0.0),
)
SUBSCRIPTION_CATEGORIES = ("streaming", "telecom", "utilities", "gaming")
MICRO_CATEGORIES = ("transport", "gaming", "cafe")
CARD_TESTING_CATEGORIES = ("digital_goods", "gaming", "charity", "streaming", "marketplace")
HIGH_RISK_CATEGORIES = ("electronics", "gift_cards", "crypto", "marketplace", "digital_goods")
CASHOUT_CATEGORIES = ("crypto", "gift_cards")
# Goods customers dispute most: friendly fraud concentrates there.
DISPUTABLE_CATEGORIES = frozenset(
    {"electronics", "fashion", "marketplace", "digital_goods", "travel", "gaming", "gift_cards"}
)

# Relative activity by local hour, (weekday, weekend), per persona.
_COMMUTER_WEEKDAY = (
    0.10, 0.05, 0.03, 0.02, 0.03, 0.10, 0.40, 1.20, 1.60, 0.90, 0.70, 0.90,
    1.60, 1.30, 0.80, 0.70, 0.90, 1.40, 1.70, 1.50, 1.10, 0.80, 0.50, 0.25,
)  # fmt: skip
_COMMUTER_WEEKEND = (
    0.30, 0.20, 0.10, 0.05, 0.03, 0.03, 0.08, 0.20, 0.50, 0.90, 1.30, 1.50,
    1.60, 1.50, 1.40, 1.30, 1.30, 1.30, 1.40, 1.50, 1.30, 1.00, 0.70, 0.50,
)  # fmt: skip
_NIGHT_WEEKDAY = (
    1.00, 0.80, 0.50, 0.30, 0.10, 0.05, 0.05, 0.10, 0.20, 0.30, 0.50, 0.80,
    1.00, 1.00, 0.80, 0.70, 0.80, 1.00, 1.20, 1.40, 1.60, 1.70, 1.60, 1.30,
)  # fmt: skip
_NIGHT_WEEKEND = (
    1.50, 1.30, 1.00, 0.60, 0.30, 0.10, 0.05, 0.05, 0.10, 0.20, 0.40, 0.70,
    1.00, 1.10, 1.00, 1.00, 1.10, 1.20, 1.40, 1.60, 1.80, 1.90, 1.90, 1.70,
)  # fmt: skip
_DAYTIME_WEEKDAY = (
    0.02, 0.01, 0.01, 0.01, 0.01, 0.02, 0.10, 0.40, 0.90, 1.40, 1.60, 1.50,
    1.30, 1.20, 1.30, 1.30, 1.10, 0.90, 0.60, 0.40, 0.25, 0.15, 0.08, 0.04,
)  # fmt: skip
PERSONAS: dict[str, tuple[float, tuple[float, ...], tuple[float, ...]]] = {
    "commuter": (0.45, _COMMUTER_WEEKDAY, _COMMUTER_WEEKEND),
    "night_owl": (0.2, _NIGHT_WEEKDAY, _NIGHT_WEEKEND),
    "daytime": (0.2, _DAYTIME_WEEKDAY, tuple(0.8 * w for w in _DAYTIME_WEEKDAY)),
    "weekender": (
        0.15,
        tuple(0.4 * w for w in _COMMUTER_WEEKDAY),
        tuple(1.6 * w for w in _COMMUTER_WEEKEND),
    ),
}
# When fraudsters act, UTC: any time, with a lean to the European night.
FRAUD_HOURS_UTC = (
    1.6, 1.8, 1.8, 1.6, 1.3, 1.0, 0.8, 0.7, 0.7, 0.7, 0.8, 0.8,
    0.8, 0.8, 0.8, 0.8, 0.8, 0.9, 0.9, 1.0, 1.0, 1.1, 1.2, 1.4,
)  # fmt: skip
# Approximate units of each currency per EUR, so amounts make sense in any currency.
UNITS_PER_EUR: dict[str, float] = {
    "EUR": 1.0, "USD": 1.08, "GBP": 0.86, "CHF": 0.94, "JPY": 162.0, "KWD": 0.333,
    "SEK": 11.3, "NOK": 11.6, "DKK": 7.46, "PLN": 4.3, "CZK": 25.0, "HUF": 390.0,
}  # fmt: skip

# Bounds and rates of the simulated behaviour (named so they can be found and tuned).
NORMALS_BLOCK = 4096
RECENT_PAYERS_MAX = 64  # per merchant, for picking victims of a compromised merchant
PAYMENT_RATE_MEDIAN_PER_DAY = 1.6
PAYMENT_RATE_PER_DAY_MIN, PAYMENT_RATE_PER_DAY_MAX = 0.15, 12.0
MULE_ACTIVITY_FACTOR = 0.3
FRAUD_START_DAY = 1  # a day of history first, where the simulation is long enough
CARD_TESTING_MINOR_EUR = (5, 150)  # tiny test amounts, EUR cents
MERCHANT_PAYOUT_SHARE = 0.8  # of takings paid out; the rest covers refunds
REVIEW_CLEAR_DAYS_MAX = 7
# Friendly fraud concentrates on disputable goods; reviews on payments that looked odd
# (a new device, a trip, a windfall): relative weights of the spec's rates.
FRIENDLY_WEIGHT_DISPUTABLE, FRIENDLY_WEIGHT_OTHER = 3.0, 0.5
REVIEW_WEIGHT_SUSPICIOUS, REVIEW_WEIGHT_OTHER = 20.0, 0.5
TRAVEL_ACTIVITY_FACTOR = 1.3
MERCHANT_INITIATED_SHARE = 0.05  # of online payments: card-on-file charges, no device
CROSS_BORDER_CUTOFF = 0.985  # 1.5% of payments at home come from a neighbouring country
OPENING_MS = MINUTE_MS  # opening balances arrive in the first minute
BATCH_LEAD_MS = 3 * HOUR_MS  # > the largest UTC offset of a home country
KINDS: tuple[RequestKind, ...] = (
    "TOPUP", "PAYMENT", "AUTHORIZE", "CAPTURE", "VOID", "REFUND", "PAYOUT"
)  # fmt: skip
VICTIM_CANDIDATES = 4  # takeover victims: the richest of a few random customers


# --------------------------------------------------------------------------------------
# The population
# --------------------------------------------------------------------------------------


class _Merchant:
    __slots__ = (
        "account_id",
        "authorize",
        "balance_minor",
        "bank_ref",
        "category",
        "country",
        "index",
        "online",
        "payout_every_days",
        "popularity",
        "price_minor",
        "recent_payers",
        "refund_rate",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.account_id = f"m-{index:05d}"
        self.category = ""
        self.country = ""
        self.online = False
        self.authorize = 0.0
        self.refund_rate = 0.0
        self.price_minor = 0.0
        self.popularity = 0.0
        self.balance_minor = 0
        self.bank_ref = ""
        self.payout_every_days = 1
        self.recent_payers: deque[int] = deque(maxlen=RECENT_PAYERS_MAX)


class _Customer:
    __slots__ = (
        "accept",
        "account_id",
        "available_minor",
        "bank_ref",
        "card_share",
        "devices",
        "explore",
        "favourite_cumulative",
        "favourites",
        "friends",
        "held_minor",
        "home",
        "index",
        "is_mule",
        "micro",
        "micro_share",
        "p2p_share",
        "rate_per_day",
        "rhythm",
        "sigma",
        "spend_factor",
        "spend_month_minor",
        "suspicious_until_ms",
        "sweep",
        "travel_country",
        "travel_pool",
        "typical_minor",
        "tz_ms",
        "victim",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.account_id = f"c-{index:06d}"
        self.home = ""
        self.tz_ms = 0
        self.accept: Sequence[float] = ()
        self.rate_per_day = 0.0
        self.rhythm = 0
        self.spend_factor = 1.0
        self.sigma = 0.6
        self.typical_minor = 1
        self.spend_month_minor = 0
        self.favourites: list[int] = []
        self.favourite_cumulative: list[float] = []
        self.explore = 0.1
        self.devices: list[str] = []
        self.friends: list[int] = []
        self.p2p_share = 0.0
        self.micro = -1
        self.micro_share = 0.0
        self.sweep = False
        self.card_share = 0.0
        self.bank_ref = ""
        self.available_minor = 0
        self.held_minor = 0
        self.travel_country: str | None = None
        self.travel_pool: list[int] = []
        self.suspicious_until_ms = 0
        self.is_mule = False
        self.victim = False


# A pre-drawn spontaneous payment: time, customer index, five uniforms, a normal.
_Spontaneous = tuple[int, int, float, float, float, float, float, float]
_Pool = tuple[list[int], list[float]]  # merchant indexes and their cumulative weights
_EMPTY_POOL: _Pool = ([], [])


def _weighted_cumulative(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _pick(rng: random.Random, items: Sequence[Any], cumulative: Sequence[float]) -> Any:
    """One item by cumulative weight (bisect: O(log n), cheaper than random.choices)."""
    return items[bisect.bisect(cumulative, rng.random() * cumulative[-1])]


_bisect = bisect.bisect_right
_HOMES = tuple(HOME_COUNTRIES)
_TRAVEL_NAMES = list(TRAVEL_COUNTRIES)
_TRAVEL_CUMULATIVE = _weighted_cumulative(list(TRAVEL_COUNTRIES.values()))


# --------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------

# Action codes on the event heap (index into Simulator._handlers).
(
    _BATCH,
    _MICRO,
    _SPLIT,
    _SALARY,
    _SUBSCRIPTION,
    _RENT,
    _SWEEP,
    _CAPTURE,
    _REFUND,
    _MERCHANT_PAYOUT,
    _TRAVEL,
    _DEVICE,
    _WINDFALL,
    _WINDFALL_OUT,
    _DAY,
    _TAKEOVER,
    _CARD_TEST,
    _MERCHANT_CHARGE,
    _MULE_FUND,
    _MULE_OUT,
) = range(20)

# Mean fraudulent requests per incident, for choosing scenarios by request share.
_INCIDENT_SIZE_MEAN = {
    ACCOUNT_TAKEOVER: 4.25,
    CARD_TESTING: 15.9,
    COMPROMISED_MERCHANT: 20.0,
    MULE_CASHOUT: 2.4,
}


@dataclass(slots=True)
class _Takeover:
    victim: _Customer
    device: str
    country: str
    fast: bool
    cap_minor: int
    targets: list[tuple[str, Any]]
    step: int = 0


@dataclass(slots=True)
class _CardTest:
    victim: _Customer
    device: str
    country: str
    merchants: list[_Merchant]
    tests: int
    gap_ms: tuple[int, int]
    cash_in: bool
    rotate_devices: bool  # a bot that fakes a fresh device fingerprint every attempt
    step: int = 0


@dataclass(slots=True)
class _MerchantCharge:
    victim: _Customer
    merchant: _Merchant
    device: str | None
    country: str
    charges: int
    step: int = 0


@dataclass(slots=True)
class _Cashout:
    mule: _Customer
    device: str
    payout_ref: str
    steps: int
    funding_left: int
    step: int = 0


class Simulator:
    """One pass over the simulated time; ``requests()`` yields requests in time order.

    ``labels()``, ``is_fraud``, ``scenario`` and ``summary()`` are complete once
    ``requests()`` is exhausted (``is_fraud`` and ``scenario`` only with
    ``record_truth``: they cost memory per request).
    """

    def __init__(self, spec: SimulationSpec, *, record_truth: bool = True) -> None:
        self.spec = spec
        self.record_truth = record_truth
        self.is_fraud: dict[str, bool] = {}
        self.scenario: dict[str, str] = {}
        self.kind_counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.scenario_counts: Counter[str] = Counter()
        self.declined_fraud = 0  # fraud attempts the balance alone would decline
        self._labels: list[FraudLabel] = []
        self._label_truthful: list[bool] = []  # per label: does it tell the truth?
        self._started = False
        # Independent random streams: labels never change the requests, and the
        # population does not depend on how the traffic draws.
        self._rng = random.Random(f"{spec.seed}:traffic")
        self._label_rng = random.Random(f"{spec.seed}:labels")
        self._batch_rng = np.random.default_rng(_seed_number(spec.seed, "batches"))
        self._normals = _normal_stream(np.random.default_rng(_seed_number(spec.seed, "normals")))
        # Spontaneous payments of the coming hours, drawn a day at a time (the data plane).
        self._pending: list[_Spontaneous] = []
        self._pending_at = 0
        self._currency = spec.currency
        self._unit = 10 ** CURRENCY_EXPONENTS[spec.currency] * UNITS_PER_EUR.get(spec.currency, 1.0)
        prefix = spec.fingerprint()
        self._request_prefix = f"r-{prefix}-"
        self._label_prefix = f"l-{prefix}-"
        self._sequence = 0
        self._out: list[Request] = []
        self._heap: list[tuple[int, int, int, Any, Any]] = []
        self._order = itertools.count()
        self._end_ms = spec.end_ms
        self._legit_scored = 0
        self._legit_day_mark = 0  # legit scored requests before the current day
        self._fraud_planned = 0
        self._fraud_ratio = spec.fraud_rate / (1 - spec.fraud_rate)
        # A legit payment's label draw needs a closer look only outside these bounds.
        self._friendly_draw_max = spec.friendly_fraud_rate * FRIENDLY_WEIGHT_DISPUTABLE
        self._review_draw_min = 1 - spec.review_rate * REVIEW_WEIGHT_SUSPICIOUS
        handlers: dict[int, Callable[[int, Any, Any], None]] = {
            _BATCH: self._batch,
            _MICRO: self._micro,
            _SPLIT: self._split,
            _SALARY: self._salary,
            _SUBSCRIPTION: self._subscription,
            _RENT: self._rent,
            _SWEEP: self._sweep,
            _CAPTURE: self._capture,
            _REFUND: self._refund,
            _MERCHANT_PAYOUT: self._merchant_payout,
            _TRAVEL: self._travel,
            _DEVICE: self._device,
            _WINDFALL: self._windfall,
            _WINDFALL_OUT: self._windfall_out,
            _DAY: self._day,
            _TAKEOVER: self._takeover_step,
            _CARD_TEST: self._card_test_step,
            _MERCHANT_CHARGE: self._merchant_charge,
            _MULE_FUND: self._mule_fund,
            _MULE_OUT: self._mule_out,
        }
        self._handlers = [handlers[code] for code in range(len(handlers))]  # by action code
        population = random.Random(f"{spec.seed}:population")
        self._merchants = self._make_merchants(population)
        self._customers = self._make_customers(population)
        self._ring_devices = [self._new_device(population) for _ in range(6)]
        self._legit_estimate_per_day = float(self._rate_per_day.sum())
        self._schedule_population(population)
        self._batch(spec.start_ms, 0, None)
        # The end: a sentinel action, so the heap is never empty while payments are pending.
        heapq.heappush(self._heap, (self._end_ms, next(self._order), _BATCH, None, None))

    # -- results ------------------------------------------------------------------------
    def labels(self) -> list[FraudLabel]:
        """Labels in the order they arrive (labeled_at_ms, then label_id)."""
        return sorted(self._labels, key=lambda label: (label["labeled_at_ms"], label["label_id"]))

    def summary(self) -> dict[str, Any]:
        """Counts per kind and scenario, the fraud rate and label statistics."""
        scored = sum(self.kind_counts[kind] for kind in SCORED_KINDS)
        fraud = sum(self.scenario_counts.values())
        labels = self._labels
        by_source = Counter(label["source"] for label in labels)
        positive = sum(1 for label in labels if label["is_fraud"])
        true_positive = self._count_true_positive_labels()
        return {
            "spec": {
                "customers": self.spec.customers,
                "merchants": self.spec.merchants,
                "days": self.spec.days,
                "seed": self.spec.seed,
                "fraud_rate": self.spec.fraud_rate,
                "currency": self.spec.currency,
                "fingerprint": self.spec.fingerprint(),
            },
            "requests": sum(self.kind_counts.values()),
            "by_kind": {kind: n for kind, n in self.kind_counts.items() if n},
            "scored": scored,
            "fraud": fraud,
            "fraud_rate": fraud / scored if scored else 0.0,
            "by_scenario": {LEGIT: self._legit_scored}
            | {name: self.scenario_counts[name] for name in FRAUD_SCENARIOS},
            "fraud_declined_by_balance": self.declined_fraud,
            "labels": {
                "total": len(labels),
                "fraud": positive,
                "not_fraud": len(labels) - positive,
                "by_source": dict(sorted(by_source.items())),
                "fraud_labelled_share": true_positive / fraud if fraud else 0.0,
                "friendly_fraud": positive - true_positive,
            },
        }

    def _count_true_positive_labels(self) -> int:
        return sum(
            1
            for label, truthful in zip(self._labels, self._label_truthful, strict=True)
            if label["is_fraud"] and truthful
        )

    # -- the event loop -----------------------------------------------------------------
    def requests(self) -> Iterator[Request]:
        """Run the simulation, yielding each request as it is created (once per instance)."""
        if self._started:
            raise RuntimeError("a Simulator runs once; make a new one to run again")
        self._started = True
        heap, out, handlers, end_ms = self._heap, self._out, self._handlers, self._end_ms
        spontaneous = self._spontaneous
        pop = heapq.heappop
        while True:
            # Merge the day's pre-drawn payments with the scheduled actions, in time order
            # (an action first on a tie). A payment may schedule actions, so the heap's
            # head is looked at again after each. The end sentinel keeps the heap non-empty.
            pending, i = self._pending, self._pending_at
            n = len(pending)
            head_ms = heap[0][0]
            while i < n and pending[i][0] < head_ms:
                spontaneous(*pending[i])
                i += 1
                head_ms = heap[0][0]
            self._pending_at = i
            if out:
                yield from out
                out.clear()
            t, _, code, a, b = pop(heap)
            if t >= end_ms:
                break  # the heap is ordered: everything left is later still
            handlers[code](t, a, b)
        heap.clear()
        self._pending = []

    def _at(self, t: int, code: int, a: Any = None, b: Any = None) -> None:
        if t < self._end_ms:
            heapq.heappush(self._heap, (t, next(self._order), code, a, b))

    # -- building the world -------------------------------------------------------------
    def _new_device(self, rng: random.Random) -> str:
        return f"d-{rng.getrandbits(48):012x}"

    def _new_bank(self, rng: random.Random, kind: str = "bank") -> str:
        return f"{kind}:{rng.getrandbits(40):010x}"

    def _make_merchants(self, rng: random.Random) -> list[_Merchant]:
        spec = self.spec
        homes = list(HOME_COUNTRIES)
        home_weights = _weighted_cumulative([w for w, _ in HOME_COUNTRIES.values()])
        travel = list(TRAVEL_COUNTRIES)
        travel_weights = _weighted_cumulative(list(TRAVEL_COUNTRIES.values()))
        category_weights = _weighted_cumulative([c.weight for c in CATEGORIES])
        ranks = list(range(spec.merchants))
        rng.shuffle(ranks)
        merchants = []
        for index in range(spec.merchants):
            merchant = _Merchant(index)
            # The first merchants cover every category once; the rest follow the weights.
            if index < len(CATEGORIES):
                category = CATEGORIES[index]
            else:
                category = _pick(rng, CATEGORIES, category_weights)
            merchant.category = category.name
            merchant.online = rng.random() < category.online
            if merchant.online:
                merchant.country = rng.choice(ONLINE_MERCHANT_COUNTRIES)
            elif rng.random() < 0.85:
                merchant.country = _pick(rng, homes, home_weights)
            else:
                merchant.country = _pick(rng, travel, travel_weights)
            merchant.authorize = category.authorize
            merchant.refund_rate = category.refund_rate
            merchant.price_minor = category.price_eur * self._unit * rng.lognormvariate(0, 0.3)
            merchant.popularity = 1.0 / (ranks[index] + 1) ** 0.9
            merchant.bank_ref = self._new_bank(rng)
            merchant.payout_every_days = 1 if merchant.popularity > 0.05 else 7
            merchants.append(merchant)
        return merchants

    def _pools(self, key: Callable[[_Merchant], str | None]) -> dict[str, _Pool]:
        """Merchants grouped by ``key`` (None: left out), each group popularity-weighted."""
        groups: dict[str, list[int]] = {}
        for merchant in self._merchants:
            name = key(merchant)
            if name is not None:
                groups.setdefault(name, []).append(merchant.index)
        return {
            name: (chosen, _weighted_cumulative([self._merchants[i].popularity for i in chosen]))
            for name, chosen in groups.items()
        }

    def _make_customers(self, rng: random.Random) -> list[_Customer]:
        spec = self.spec
        homes = list(HOME_COUNTRIES)
        home_weights = _weighted_cumulative([w for w, _ in HOME_COUNTRIES.values()])
        persona_names = list(PERSONAS)
        persona_weights = _weighted_cumulative([p[0] for p in PERSONAS.values()])
        self._online_pool = self._pools(lambda m: "online" if m.online else None)["online"]
        self._local_pools = self._pools(lambda m: None if m.online else m.country)
        self._category_pools = self._pools(lambda m: m.category)
        micro_merchants = [m for m in self._merchants if m.category in MICRO_CATEGORIES]
        rhythm_cache: dict[tuple[str, int], list[float]] = {}
        rhythm_keys: dict[tuple[str, int], int] = {}
        customers = []
        for index in range(spec.customers):
            c = _Customer(index)
            c.home = _pick(rng, homes, home_weights)
            c.tz_ms = HOME_COUNTRIES[c.home][1] * HOUR_MS
            persona = _pick(rng, persona_names, persona_weights)
            shift = rng.randint(-1, 1)
            key = (persona, shift)
            if key not in rhythm_cache:
                rhythm_cache[key] = _rhythm(persona, shift)
            c.accept = rhythm_cache[key]
            rate = rng.lognormvariate(math.log(PAYMENT_RATE_MEDIAN_PER_DAY), 0.6)
            rate = min(max(rate, PAYMENT_RATE_PER_DAY_MIN), PAYMENT_RATE_PER_DAY_MAX)
            c.rate_per_day = rate
            c.rhythm = rhythm_keys.setdefault(key, len(rhythm_keys))
            c.spend_factor = rng.lognormvariate(0, 0.45)
            c.sigma = rng.uniform(0.35, 0.8)
            c.explore = rng.uniform(0.03, 0.15)
            self._choose_favourites(rng, c)
            c.devices = [self._new_device(rng) for _ in range(rng.choice((1, 1, 1, 2, 2, 3)))]
            c.bank_ref = self._new_bank(rng)
            c.p2p_share = rng.choice((0.0, 0.0, 0.02, 0.04, 0.08))
            micro = [m for m in micro_merchants if m.online or m.country == c.home]
            if rng.random() < 0.25 and micro:
                # The local transit operator, a café next to work, a game: where bursts happen.
                c.micro = _pick(
                    rng, micro, _weighted_cumulative([m.popularity for m in micro])
                ).index
                c.micro_share = rng.uniform(0.1, 0.35)
            c.sweep = rng.random() < 0.3
            # In shops some pay with the plastic card (no device), most with the phone.
            c.card_share = rng.uniform(0.1, 0.5) if rng.random() < 0.4 else 0.0
            mean_ticket = c.typical_minor * math.exp(c.sigma**2 / 2)
            c.spend_month_minor = int(rate * 30 * mean_ticket)
            customers.append(c)
        for c in customers:
            c.friends = [rng.randrange(spec.customers) for _ in range(rng.randint(1, 6))]
            c.friends = [f for f in c.friends if f != c.index]
        if spec.fraud_rate > 0:
            count = max(1, round(spec.customers * spec.mule_share))
            for index in rng.sample(range(spec.customers), count):
                mule = customers[index]
                mule.is_mule = True
                mule.rate_per_day *= MULE_ACTIVITY_FACTOR
                mule.micro_share = 0.0
        self._mules = [c for c in customers if c.is_mule]
        self._mule_uses = {mule.index: 0 for mule in self._mules}
        # The batch draws work on arrays: rate, rhythm and time zone per customer.
        self._rate_per_day = np.array([c.rate_per_day for c in customers])
        self._activity = np.ones(len(customers))  # 1.3 while travelling
        self._rhythm_of = np.array([c.rhythm for c in customers], dtype=np.int64)
        self._tz_of_ms = np.array([c.tz_ms for c in customers], dtype=np.int64)
        rhythms = sorted(rhythm_keys, key=rhythm_keys.__getitem__)
        self._day_weight, self._hour_cdf = _day_tables([rhythm_cache[k] for k in rhythms])
        return customers

    def _choose_favourites(self, rng: random.Random, c: _Customer) -> None:
        local, local_weights = self._local_pools.get(c.home, _EMPTY_POOL)
        online, online_weights = self._online_pool
        wanted = min(3 + int(rng.lognormvariate(1.8, 0.5)), 30)
        chosen: list[int] = []
        seen = set()
        for _ in range(wanted * 3):  # bounded: small pools run out of distinct merchants
            if len(chosen) == wanted:
                break
            if local and rng.random() < 0.7:
                index = _pick(rng, local, local_weights)
            else:
                index = _pick(rng, online, online_weights)
            if index not in seen:
                seen.add(index)
                chosen.append(index)
        c.favourites = chosen
        c.favourite_cumulative = _weighted_cumulative([1.0 / (r + 1) for r in range(len(chosen))])
        # Typical ticket: the geometric mean of the favourites' prices, by preference.
        weights = [1.0 / (r + 1) for r in range(len(chosen))]
        log_price = sum(
            w * math.log(self._merchants[i].price_minor)
            for w, i in zip(weights, chosen, strict=True)
        ) / sum(weights)
        c.typical_minor = max(1, int(math.exp(log_price) * c.spend_factor))

    def _schedule_population(self, rng: random.Random) -> None:
        spec = self.spec
        start, days = spec.start_ms, spec.days
        for day in range(days):
            self._at(start + day * DAY_MS, _DAY, day)
        for day in range(1, days + 1):
            # Local days start up to a few hours before UTC midnight: draw them early.
            self._at(start + day * DAY_MS - BATCH_LEAD_MS, _BATCH, day)
        for merchant in self._merchants:
            first = start + rng.randrange(merchant.payout_every_days) * DAY_MS
            self._at(first + 22 * HOUR_MS + rng.randrange(HOUR_MS), _MERCHANT_PAYOUT, merchant)
        for c in self._customers:
            # The opening balance, before the first spontaneous payment (OPENING_MS).
            opening = start + rng.randrange(OPENING_MS)
            salary = int(c.spend_month_minor * rng.uniform(1.05, 1.4))
            salary_ref = self._new_bank(rng, "employer")
            self._at(opening, _SALARY, c, (salary_ref, salary, rng.uniform(0.3, 1.0)))
            for _ in range(rng.choice((0, 1, 1, 2, 3))):
                pool, weights = self._category_pools[rng.choice(SUBSCRIPTION_CATEGORIES)]
                merchant = self._merchants[_pick(rng, pool, weights)]
                amount = max(1, int(merchant.price_minor * rng.uniform(0.6, 1.4)))
                batch_hour = merchant.index % 6  # each merchant bills in its own night hour
                first = start + rng.randrange(30) * DAY_MS + batch_hour * HOUR_MS
                self._at(first + rng.randrange(HOUR_MS), _SUBSCRIPTION, c, (merchant, amount))
            if rng.random() < 0.25:
                pool, weights = self._category_pools["housing"]
                landlord = self._merchants[_pick(rng, pool, weights)]
                rent = int(landlord.price_minor * rng.lognormvariate(0, 0.3))
                first = start + rng.randrange(30) * DAY_MS + rng.randrange(8, 20) * HOUR_MS
                self._at(first, _RENT, c, (landlord, rent))
            # Trips: half the customers travel, about once every two months.
            if rng.random() < 0.5:
                t = start + int(rng.expovariate(1 / 60) * DAY_MS)
                self._at(t, _TRAVEL, c, True)
            if rng.random() < 1 - math.exp(-days / 365 * 1.5):  # new phone every ~8 months
                self._at(start + rng.randrange(days * DAY_MS), _DEVICE, c)
            if rng.random() < 0.04:
                self._at(start + rng.randrange(days * DAY_MS), _WINDFALL, c)

    # -- timing -------------------------------------------------------------------------
    def _batch(self, t: int, day: Any, _: Any) -> None:
        """Draw the spontaneous payments of every customer's local day ``day`` at once.

        Counts are Poisson with the customer's rate times the weekday's share of its
        rhythm (and 1.3 while travelling); times follow the rhythm's hours. With them
        come the uniforms and the normal each payment's choices need, so the per-payment
        work left is choosing from them and building the request.
        """
        spec, rng = self.spec, self._batch_rng
        day_start = spec.start_ms + day * DAY_MS
        weekday = (day_start // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday
        rhythm = self._rhythm_of
        expected = self._rate_per_day * self._day_weight[rhythm, weekday] * self._activity
        counts = rng.poisson(expected)
        who = np.repeat(np.arange(len(counts)), counts)
        draws = rng.random((len(who), 7))
        hour = (self._hour_cdf[rhythm[who], weekday] < draws[:, :1]).sum(axis=1)
        times = (
            day_start
            - self._tz_of_ms[who]
            + np.minimum(hour, 23) * HOUR_MS
            + (draws[:, 1] * HOUR_MS).astype(np.int64)
        )
        normals = rng.standard_normal(len(who))
        keep = (times >= spec.start_ms + OPENING_MS) & (times < self._end_ms)
        drawn = list(
            zip(
                times[keep].tolist(),
                who[keep].tolist(),
                draws[keep, 2].tolist(),
                draws[keep, 3].tolist(),
                draws[keep, 4].tolist(),
                draws[keep, 5].tolist(),
                draws[keep, 6].tolist(),
                normals[keep].tolist(),
                strict=True,
            )
        )
        drawn.sort()
        rest = self._pending[self._pending_at :]
        if rest:
            drawn = rest + drawn
            drawn.sort()  # two sorted runs: a linear merge
        self._pending = drawn
        self._pending_at = 0

    def _between(self, low: int, high: int) -> int:
        """A uniform integer in [low, high) (cheaper than ``random.randrange``)."""
        return low + int(self._rng.random() * (high - low))

    def _hour_in_day(self, day_start: int, weights: Sequence[float]) -> int:
        hour = _pick(self._rng, range(24), _weighted_cumulative(weights))
        return day_start + hour * HOUR_MS + self._rng.randrange(HOUR_MS)

    def _customer_hour(self, c: _Customer, day_start: int) -> int:
        """A time on the day starting at ``day_start`` (UTC) when ``c`` is usually active."""
        first = (day_start + c.tz_ms) // HOUR_MS + EPOCH_WEEKDAY_HOURS
        return self._hour_in_day(
            day_start, [c.accept[(first + h) % WEEK_HOURS] + 0.01 for h in range(24)]
        )

    # -- emitting -----------------------------------------------------------------------
    def _emit(
        self,
        kind: RequestKind,
        account_id: str,
        counterparty_id: str | None,
        payment_id: str | None,
        amount_minor: int,
        t: int,
        device_id: str | None,
        country: str | None,
        category: str | None,
    ) -> Request:
        self._sequence += 1
        request_id = f"{self._request_prefix}{self._sequence:09d}"
        request: Request = {
            "request_id": request_id,
            "idempotency_key": request_id,
            "kind": kind,
            "account_id": account_id,
            "counterparty_id": counterparty_id,
            "payment_id": payment_id,
            "amount_minor": amount_minor,
            "currency": self._currency,
            "created_at_ms": t,
            "expires_at_ms": None,
            "device_id": device_id,
            "country": country,
            "merchant_category": category,
            "metadata": {},
        }
        self._out.append(request)
        self.kind_counts[kind] += 1
        return request

    def _scored(self, request: Request, scenario: str, approved: bool, c: _Customer | None) -> None:
        """Book a scored request: the truth, the fraud controller's count, its labels."""
        if scenario == LEGIT:
            self._legit(request, approved, c)
            return
        self.scenario_counts[scenario] += 1
        if self.record_truth:
            self.is_fraud[request["request_id"]] = True
            self.scenario[request["request_id"]] = scenario
        if not approved:
            self.declined_fraud += 1
        self._fraud_label(request, scenario, approved)

    def _legit(self, request: Request, approved: bool, c: _Customer | None) -> None:
        """Book a legitimate scored request (the hot path: one draw decides on a label)."""
        self._legit_scored += 1
        if self.record_truth:
            request_id = request["request_id"]
            self.is_fraud[request_id] = False
            self.scenario[request_id] = LEGIT
        draw = self._label_rng.random()
        if approved and (draw < self._friendly_draw_max or draw > self._review_draw_min):
            self._legit_label(request, c, draw)

    def _legit_label(self, request: Request, c: _Customer | None, draw: float) -> None:
        """Friendly fraud (a chargeback of a good payment) or a review clearing a payment."""
        spec = self.spec
        if request["kind"] == "PAYOUT":
            return
        weight = FRIENDLY_WEIGHT_DISPUTABLE
        if request["merchant_category"] not in DISPUTABLE_CATEGORIES:
            weight = FRIENDLY_WEIGHT_OTHER
        if draw < spec.friendly_fraud_rate * weight:
            self._label(request, True, "CHARGEBACK", self._chargeback_delay_ms(), truth=False)
            return
        suspicious = c is not None and request["created_at_ms"] < c.suspicious_until_ms
        weight = REVIEW_WEIGHT_SUSPICIOUS if suspicious else REVIEW_WEIGHT_OTHER
        if draw > 1 - spec.review_rate * weight:
            delay = spec.label_delay_min_days * DAY_MS + self._label_rng.randrange(
                REVIEW_CLEAR_DAYS_MAX * DAY_MS
            )
            self._label(request, False, "REVIEW", self._clamp_delay(delay), truth=True)

    def _fraud_label(self, request: Request, scenario: str, approved: bool) -> None:
        spec, rng = self.spec, self._label_rng
        # Victims overlook tiny test charges; the other scenarios share the rest so that
        # about label_missing_rate of all fraud goes unlabelled.
        missing = spec.label_missing_rate * (1.5 if scenario == CARD_TESTING else 0.7)
        if not approved:
            missing = max(missing, 0.4)  # nothing moved: declined attempts are rarely disputed
        if rng.random() < missing:
            return
        draw = rng.random()
        source: LabelSource
        if scenario == MULE_CASHOUT:
            source = "REVIEW" if draw < 0.7 else "DISPUTE"
        elif not approved:
            source = "REVIEW"
        else:
            source = "CHARGEBACK" if draw < 0.82 else "DISPUTE" if draw < 0.95 else "REVIEW"
        if source == "CHARGEBACK":
            delay = self._chargeback_delay_ms()
        else:
            delay = self._clamp_delay(
                spec.label_delay_min_days * DAY_MS + int(rng.expovariate(1 / 8) * DAY_MS)
            )
        self._label(request, True, source, delay, truth=True)

    def _chargeback_delay_ms(self) -> int:
        """Chargebacks: a median of about two weeks, a long tail, within the delay bounds."""
        return self._clamp_delay(int(self._label_rng.lognormvariate(math.log(14), 0.6) * DAY_MS))

    def _clamp_delay(self, delay_ms: int) -> int:
        low = self.spec.label_delay_min_days * DAY_MS
        high = self.spec.label_delay_max_days * DAY_MS
        return min(max(delay_ms, low), high)

    def _label(
        self, request: Request, is_fraud: bool, source: LabelSource, delay_ms: int, truth: bool
    ) -> None:
        label: FraudLabel = {
            "label_id": f"{self._label_prefix}{len(self._labels) + 1:07d}",
            "account_id": request["account_id"],
            "request_id": request["request_id"],
            "is_fraud": is_fraud,
            "source": source,
            "labeled_at_ms": request["created_at_ms"] + max(delay_ms, 1),
        }
        self._labels.append(label)
        self._label_truthful.append(truth)

    # -- money movements (with the balance the pipeline will hold) ----------------------
    def _top_up_for(self, t: int, c: _Customer, amount_minor: int) -> None:
        """Auto top-up from the customer's own bank when a payment would not be covered."""
        chunk = self._round_major(c.spend_month_minor * self._rng.uniform(0.1, 0.3))
        top_up = max(amount_minor - c.available_minor, chunk)
        top_up = self._round_major(top_up + self._unit * 10)
        self._emit("TOPUP", c.account_id, c.bank_ref, None, top_up, t, c.devices[0], c.home, None)
        c.available_minor += top_up

    def _round_major(self, minor: float) -> int:
        """An amount people choose (whole tens of the major unit), at least one of them."""
        step = max(1, int(self._unit * 10))
        return max(step, int(minor) // step * step)

    def _pay_merchant(
        self,
        t: int,
        c: _Customer,
        merchant: _Merchant,
        amount_minor: int,
        device: str | None,
        country: str,
        scenario: str = LEGIT,
        authorize: bool | None = None,
    ) -> bool:
        """PAYMENT or AUTHORIZE at a merchant; legit payments are topped up first if short."""
        rng = self._rng
        if authorize is None:
            authorize = merchant.authorize > 0 and rng.random() < merchant.authorize
        if authorize and merchant.category == "fuel":
            # A pre-authorization of a round sum; the capture is what was tanked.
            fill = amount_minor
            amount_minor = self._round_major(max(fill * 1.5, 100 * self._unit))
        legit = scenario == LEGIT
        if legit and c.available_minor < amount_minor:
            self._top_up_for(t, c, amount_minor)
        kind: RequestKind = "AUTHORIZE" if authorize else "PAYMENT"
        request = self._emit(
            kind,
            c.account_id,
            merchant.account_id,
            None,
            amount_minor,
            t,
            device,
            country,
            merchant.category,
        )
        approved = c.available_minor >= amount_minor
        if legit:
            self._legit(request, approved, c)
        else:
            self._scored(request, scenario, approved, c)
        if not approved:
            return False
        c.available_minor -= amount_minor
        if legit:
            merchant.recent_payers.append(c.index)
        if authorize:
            c.held_minor += amount_minor
            self._schedule_capture(t, c, merchant, request["request_id"], amount_minor)
        else:
            merchant.balance_minor += amount_minor
            if legit and rng.random() < merchant.refund_rate:
                self._schedule_refund(t, c, merchant, request["request_id"], amount_minor)
        return True

    def _schedule_capture(
        self, t: int, c: _Customer, merchant: _Merchant, payment_id: str, amount_minor: int
    ) -> None:
        rng = self._rng
        category = merchant.category
        if category == "fuel":
            later = self._between(2 * MINUTE_MS, 20 * MINUTE_MS)
            captured = int(amount_minor * rng.uniform(0.25, 0.8))
        elif category in ("hotel", "car_rental"):
            later = self._between(HOUR_MS, 5 * DAY_MS)
            captured = (
                amount_minor if rng.random() < 0.7 else int(amount_minor * rng.uniform(0.6, 1))
            )
        else:
            later = self._between(30 * MINUTE_MS, 3 * DAY_MS)
            captured = (
                amount_minor if rng.random() < 0.85 else int(amount_minor * rng.uniform(0.5, 1))
            )
        if rng.random() < 0.08:
            captured = -1  # cancelled: VOID
        self._at(t + later, _CAPTURE, c, (merchant, payment_id, amount_minor, max(captured, -1)))

    def _capture(self, t: int, c: _Customer, details: Any) -> None:
        merchant, payment_id, authorized, captured = details
        c.held_minor -= authorized
        if captured <= 0:
            c.available_minor += authorized
            self._emit("VOID", c.account_id, None, payment_id, 0, t, None, None, merchant.category)
            return
        c.available_minor += authorized - captured
        merchant.balance_minor += captured
        # "0" captures the full authorized amount; some integrations send it that way.
        amount = 0 if captured == authorized and self._rng.random() < 0.3 else captured
        self._emit(
            "CAPTURE", c.account_id, None, payment_id, amount, t, None, None, merchant.category
        )

    def _schedule_refund(
        self, t: int, c: _Customer, merchant: _Merchant, payment_id: str, amount_minor: int
    ) -> None:
        rng = self._rng
        refund = amount_minor if rng.random() < 0.6 else max(1, int(amount_minor * rng.random()))
        self._at(t + self._between(DAY_MS, 14 * DAY_MS), _REFUND, c, (merchant, payment_id, refund))

    def _refund(self, t: int, c: _Customer, details: Any) -> None:
        merchant, payment_id, refund = details
        if merchant.balance_minor < refund:
            return  # the merchant paid it all out: the shop would settle it off-platform
        merchant.balance_minor -= refund
        c.available_minor += refund
        self._emit(
            "REFUND",
            c.account_id,
            None,
            payment_id,
            refund,
            t,
            c.devices[0],
            c.home,
            merchant.category,
        )

    def _payout(
        self,
        t: int,
        c: _Customer,
        ref: str,
        amount_minor: int,
        device: str | None,
        country: str,
        scenario: str = LEGIT,
    ) -> None:
        request = self._emit(
            "PAYOUT", c.account_id, ref, None, amount_minor, t, device, country, None
        )
        approved = 0 < amount_minor <= c.available_minor
        self._scored(request, scenario, approved, c)
        if approved:
            c.available_minor -= amount_minor

    def _pay_friend(
        self,
        t: int,
        c: _Customer,
        friend: _Customer,
        amount_minor: int,
        device: str | None,
        country: str,
        scenario: str = LEGIT,
    ) -> None:
        if scenario == LEGIT and c.available_minor < amount_minor:
            self._top_up_for(t, c, amount_minor)
        request = self._emit(
            "PAYMENT", c.account_id, friend.account_id, None, amount_minor, t, device, country, None
        )
        approved = c.available_minor >= amount_minor
        self._scored(request, scenario, approved, c)
        if approved:
            c.available_minor -= amount_minor
            friend.available_minor += amount_minor

    # -- legitimate behaviour -----------------------------------------------------------
    def _device_of(self, c: _Customer) -> str:
        devices = c.devices
        if len(devices) == 1 or self._rng.random() < 0.85:
            return devices[0]
        return devices[self._rng.randrange(1, len(devices))]

    def _country_of(self, c: _Customer) -> str:
        if c.travel_country is not None:
            return c.travel_country
        if self._rng.random() > CROSS_BORDER_CUTOFF:  # shopping across the border, a day out
            return self._rng.choice(_HOMES)
        return c.home

    def _amount(self, c: _Customer, merchant: _Merchant) -> int:
        price = merchant.price_minor * c.spend_factor * math.exp(c.sigma * next(self._normals))
        return max(1, int(price))

    def _spontaneous(
        self,
        t: int,
        who: int,
        u_kind: float,
        u_pick: float,
        u_device: float,
        u_where: float,
        u_card: float,
        normal: float,
    ) -> None:
        """A customer's own payment: a micro burst, a friend, a favourite or a new merchant."""
        c = self._customers[who]
        if c.micro >= 0:
            if u_kind < c.micro_share:
                self._micro(t, c, 1 + int(u_pick * 5))
                return
            u_kind -= c.micro_share
        if u_kind < c.p2p_share and c.friends:
            self._split(t, c, 1 + int(u_pick * 4) if u_pick < 0.3 else 1)
            return
        country = c.travel_country
        if country is not None and u_where < 0.6 and c.travel_pool:
            index = c.travel_pool[int(u_pick * len(c.travel_pool))]
        elif u_kind < c.p2p_share + c.explore:
            pool, weights = self._online_pool
            if u_where < 0.6:
                pool, weights = self._local_pools.get(c.home, self._online_pool)
            index = pool[_bisect(weights, u_pick * weights[-1])]
        else:
            weights = c.favourite_cumulative
            index = c.favourites[_bisect(weights, u_pick * weights[-1])]
        if country is None:
            country = c.home if u_where < CROSS_BORDER_CUTOFF else self._rng.choice(_HOMES)
        merchant = self._merchants[index]
        devices = c.devices
        device: str | None = devices[0]
        if u_card < (MERCHANT_INITIATED_SHARE if merchant.online else c.card_share):
            device = None  # a card-on-file charge online, the plastic card in a shop
        elif u_device >= 0.85 and len(devices) > 1:
            device = devices[1 + int((u_device - 0.85) / 0.15 * (len(devices) - 1))]
        amount = int(merchant.price_minor * c.spend_factor * math.exp(c.sigma * normal)) + 1
        self._pay_merchant(t, c, merchant, amount, device, country)

    def _micro(self, t: int, c: _Customer, left: Any) -> None:
        """Micro-payments in a burst (transit taps, game tokens): small, quick, same merchant."""
        merchant = self._merchants[c.micro]
        amount = int(merchant.price_minor * math.exp(0.4 * next(self._normals) - 0.2)) + 1
        self._pay_merchant(t, c, merchant, amount, c.devices[0], self._country_of(c))
        if left > 1:
            self._at(t + self._between(10_000, 3 * MINUTE_MS), _MICRO, c, left - 1)

    def _split(self, t: int, c: _Customer, left: Any) -> None:
        """Paying friends: one transfer, or splitting a bill with several in a minute or two."""
        rng = self._rng
        friend = self._customers[rng.choice(c.friends)]
        amount = int(c.typical_minor * math.exp(0.6 * next(self._normals) + 0.3)) + 1
        self._pay_friend(t, c, friend, amount, self._device_of(c), self._country_of(c))
        if left > 1:
            self._at(t + self._between(5_000, 2 * MINUTE_MS), _SPLIT, c, left - 1)

    def _salary(self, t: int, c: _Customer, details: Any) -> None:
        """Salary every 30 days (the first one is the opening balance); maybe a sweep after."""
        ref, salary, share = details
        amount = self._round_major(salary * share)
        self._emit("TOPUP", c.account_id, ref, None, amount, t, None, c.home, None)
        c.available_minor += amount
        rng = self._rng
        amount = self._round_major(salary * rng.uniform(0.97, 1.03))
        self._at(t + MONTH_MS + rng.randrange(-HOUR_MS, HOUR_MS), _SALARY, c, (ref, amount, 1.0))
        if c.sweep and share == 1.0:
            self._at(self._customer_hour(c, t + DAY_MS - t % DAY_MS), _SWEEP, c)

    def _sweep(self, t: int, c: _Customer, _: Any) -> None:
        """Moving savings out to the customer's own bank account after payday."""
        amount = self._round_major(c.available_minor * self._rng.uniform(0.2, 0.6))
        if amount <= c.available_minor:
            self._payout(t, c, c.bank_ref, amount, c.devices[0], self._country_of(c))

    def _subscription(self, t: int, c: _Customer, details: Any) -> None:
        """A merchant-initiated monthly charge: no device, in the merchant's night batch."""
        merchant, amount = details
        self._pay_merchant(t, c, merchant, amount, None, merchant.country, authorize=False)
        self._at(t + MONTH_MS + self._rng.randrange(-HOUR_MS, HOUR_MS), _SUBSCRIPTION, c, details)

    def _rent(self, t: int, c: _Customer, details: Any) -> None:
        landlord, rent = details
        self._pay_merchant(t, c, landlord, rent, c.devices[0], c.home, authorize=False)
        self._at(t + MONTH_MS + self._rng.randrange(-DAY_MS, DAY_MS), _RENT, c, details)

    def _travel(self, t: int, c: _Customer, leaving: Any) -> None:
        """Trips abroad: a new country, local merchants, more spending, the usual devices."""
        rng = self._rng
        if leaving:
            if rng.random() < 0.7:
                options = [h for h in HOME_COUNTRIES if h != c.home]
                c.travel_country = rng.choice(options)
            else:
                c.travel_country = _pick(rng, _TRAVEL_NAMES, _TRAVEL_CUMULATIVE)
            pool = self._local_pools.get(c.travel_country, _EMPTY_POOL)[0]
            c.travel_pool = pool[:]
            c.suspicious_until_ms = t + DAY_MS
            self._activity[c.index] = TRAVEL_ACTIVITY_FACTOR
            self._at(t + rng.randrange(2 * DAY_MS, 10 * DAY_MS), _TRAVEL, c, False)
        else:
            c.travel_country = None
            c.travel_pool = []
            self._activity[c.index] = 1.0
            self._at(t + int(rng.expovariate(1 / 60) * DAY_MS) + DAY_MS, _TRAVEL, c, True)

    def _device(self, t: int, c: _Customer, _: Any) -> None:
        """A new phone replaces the old one (or a new browser joins): a legit new device."""
        device = self._new_device(self._rng)
        if self._rng.random() < 0.7:
            c.devices[0] = device
        else:
            c.devices.insert(0, device)
        c.suspicious_until_ms = t + DAY_MS

    def _windfall(self, t: int, c: _Customer, _: Any) -> None:
        """Money from an unknown sender (a sale, a gift), soon paid out or spent."""
        rng = self._rng
        amount = self._round_major(c.spend_month_minor * rng.uniform(1, 4))
        sender = self._new_bank(rng, "sender")
        self._emit("TOPUP", c.account_id, sender, None, amount, t, None, c.home, None)
        c.available_minor += amount
        c.suspicious_until_ms = t + 2 * DAY_MS
        self._at(t + rng.randrange(10 * MINUTE_MS, 2 * DAY_MS), _WINDFALL_OUT, c, amount)

    def _windfall_out(self, t: int, c: _Customer, amount: Any) -> None:
        rng = self._rng
        share = int(min(amount, c.available_minor) * rng.uniform(0.6, 0.95))
        if rng.random() < 0.5:
            self._payout(t, c, c.bank_ref, share, self._device_of(c), self._country_of(c))
        else:
            pool, weights = self._category_pools[rng.choice(("electronics", "travel"))]
            merchant = self._merchants[_pick(rng, pool, weights)]
            self._pay_merchant(t, c, merchant, share, self._device_of(c), self._country_of(c))

    def _merchant_payout(self, t: int, merchant: _Merchant, _: Any) -> None:
        """Merchants settle their takings to their bank, daily or weekly, keeping a reserve."""
        self._at(t + merchant.payout_every_days * DAY_MS, _MERCHANT_PAYOUT, merchant)
        amount = int(merchant.balance_minor * MERCHANT_PAYOUT_SHARE)
        if amount < self._unit:
            return
        request = self._emit(
            "PAYOUT",
            merchant.account_id,
            merchant.bank_ref,
            None,
            amount,
            t,
            None,
            merchant.country,
            None,
        )
        merchant.balance_minor -= amount
        self._legit(request, True, None)

    # -- fraud: the controller ----------------------------------------------------------
    def _day(self, t: int, day: Any, _: Any) -> None:
        """Plan today's fraud so the running fraud share follows ``spec.fraud_rate``."""
        yesterday = self._legit_scored - self._legit_day_mark
        self._legit_day_mark = self._legit_scored
        if self._fraud_ratio <= 0 or day < min(FRAUD_START_DAY, self.spec.days - 1):
            return
        expected_today = yesterday if day > 0 else int(self._legit_estimate_per_day)
        target = self._fraud_ratio * (self._legit_scored + expected_today)
        shares = dict(self.spec.scenario_shares)
        names = [name for name in FRAUD_SCENARIOS if shares.get(name, 0) > 0]
        weights = _weighted_cumulative([shares[n] / _INCIDENT_SIZE_MEAN[n] for n in names])
        attempts = 0
        while self._fraud_planned < target and attempts < 10_000:
            attempts += 1
            name = _pick(self._rng, names, weights)
            self._fraud_planned += self._plan(name, t)

    def _plan(self, name: str, day_start: int) -> int:
        if name == ACCOUNT_TAKEOVER:
            return self._plan_takeover(day_start)
        if name == CARD_TESTING:
            return self._plan_card_test(day_start)
        if name == COMPROMISED_MERCHANT:
            return self._plan_compromised_merchant(day_start)
        return self._plan_cashout(day_start)

    def _victim(self) -> _Customer | None:
        """A takeover target: the best-funded of a few random (non-mule, not yet hit) customers."""
        rng = self._rng
        candidates = [
            self._customers[rng.randrange(len(self._customers))] for _ in range(VICTIM_CANDIDATES)
        ]
        candidates = [c for c in candidates if not c.is_mule and not c.victim]
        if not candidates:
            return None
        victim = max(candidates, key=lambda c: c.available_minor)
        victim.victim = True
        return victim

    def _fraud_country(self, c: _Customer, home_share: float) -> str:
        rng = self._rng
        if rng.random() < home_share:
            return c.home
        return rng.choice(FRAUD_COUNTRIES)

    def _fraud_device(self) -> str:
        rng = self._rng
        if rng.random() < 0.2:
            return rng.choice(self._ring_devices)  # a ring's device, used on several victims
        return self._new_device(rng)

    def _plan_takeover(self, day_start: int) -> int:
        rng = self._rng
        victim = self._victim()
        if victim is None:
            return 0
        fast = rng.random() < 0.75
        steps = rng.randint(2, 7) if fast else rng.randint(2, 5)
        targets: list[tuple[str, Any]] = []
        payout_ref = self._new_bank(rng)
        for _ in range(steps):
            draw = rng.random()
            if fast and draw < 0.2 and self._mules:
                targets.append(("mule", rng.choice(self._mules)))
            elif fast and draw < 0.4:
                targets.append(("payout", payout_ref))
            elif fast or rng.random() < 0.6:
                pool, weights = self._category_pools[rng.choice(HIGH_RISK_CATEGORIES)]
                targets.append(("merchant", self._merchants[_pick(rng, pool, weights)]))
            else:
                # Low and slow: goods from shops the victim knows, shipped elsewhere.
                targets.append(("merchant", self._merchants[rng.choice(victim.favourites)]))
        cap = victim.typical_minor * rng.uniform(4, 30) if rng.random() < 0.5 else float("inf")
        incident = _Takeover(
            victim=victim,
            device=self._fraud_device(),
            country=self._fraud_country(victim, 0.45),
            fast=fast,
            cap_minor=int(min(cap, 2**62)),
            targets=targets,
        )
        if rng.random() < 0.5:
            start = self._customer_hour(victim, day_start)
        else:
            start = self._hour_in_day(day_start, FRAUD_HOURS_UTC)
        self._at(start, _TAKEOVER, incident)
        return steps

    def _takeover_step(self, t: int, incident: Any, _: Any) -> None:
        rng = self._rng
        c = incident.victim
        target_kind, target = incident.targets[incident.step]
        incident.step += 1
        last = incident.step == len(incident.targets)
        if incident.fast:
            share = rng.uniform(0.85, 1.0) if last else rng.uniform(0.2, 0.55)
            amount = min(int(c.available_minor * share), incident.cap_minor)
            if amount < c.typical_minor:
                amount = int(c.typical_minor * rng.uniform(1, 3))  # tries anyway
        else:
            amount = int(c.typical_minor * rng.uniform(2, 6))
        amount = max(amount, 1)
        device, country = incident.device, incident.country
        if target_kind == "mule":
            self._pay_friend(t, c, target, amount, device, country, ACCOUNT_TAKEOVER)
        elif target_kind == "payout":
            self._payout(t, c, target, amount, device, country, ACCOUNT_TAKEOVER)
        else:
            self._pay_merchant(
                t, c, target, amount, device, country, ACCOUNT_TAKEOVER, authorize=False
            )
        if not last:
            if incident.fast:
                gap = rng.randrange(15_000, 3 * MINUTE_MS)
            else:
                gap = rng.randrange(5 * MINUTE_MS, HOUR_MS)
            self._at(t + gap, _TAKEOVER, incident)

    def _plan_card_test(self, day_start: int) -> int:
        rng = self._rng
        victim = self._customers[rng.randrange(len(self._customers))]
        if victim.is_mule:
            return 0
        merchants = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            pool, weights = self._category_pools[rng.choice(CARD_TESTING_CATEGORIES)]
            merchants.append(self._merchants[_pick(rng, pool, weights)])
        online = [i for i in victim.favourites if self._merchants[i].online]
        if rng.random() < 0.3 and online:
            # Testing where the victim shops already: no new payee to give it away.
            merchants = [self._merchants[online[0]]]
        bursty = rng.random() < 0.8
        incident = _CardTest(
            victim=victim,
            device=self._fraud_device() if rng.random() < 0.75 else victim.devices[0],
            country=self._fraud_country(victim, 0.4),
            merchants=merchants,
            tests=rng.randint(6, 25),
            gap_ms=(2_000, 40_000) if bursty else (MINUTE_MS, 10 * MINUTE_MS),
            cash_in=rng.random() < 0.4,
            rotate_devices=rng.random() < 0.6,
        )
        self._at(self._hour_in_day(day_start, [1.0] * 24), _CARD_TEST, incident)
        return incident.tests + incident.cash_in

    def _card_test_step(self, t: int, incident: Any, _: Any) -> None:
        rng = self._rng
        c = incident.victim
        incident.step += 1
        device = incident.device
        if incident.rotate_devices:
            device = self._new_device(rng)
        if incident.step <= incident.tests:
            low, high = CARD_TESTING_MINOR_EUR
            amount = max(1, int(rng.randint(low, high) * self._unit / 100))
            merchant = rng.choice(incident.merchants)
        else:
            pool, weights = self._category_pools[rng.choice(HIGH_RISK_CATEGORIES)]
            merchant = self._merchants[_pick(rng, pool, weights)]
            amount = max(1, int(c.typical_minor * rng.uniform(2, 8)))
        self._pay_merchant(t, c, merchant, amount, device, incident.country, CARD_TESTING, False)
        if incident.step < incident.tests + incident.cash_in:
            self._at(t + rng.randrange(*incident.gap_ms), _CARD_TEST, incident)

    def _plan_compromised_merchant(self, day_start: int) -> int:
        rng = self._rng
        candidates = [m for m in self._merchants if len(set(m.recent_payers)) >= 3]
        if not candidates:
            return 0
        merchant = _pick(
            rng, candidates, _weighted_cumulative([len(m.recent_payers) for m in candidates])
        )
        payers = sorted(set(merchant.recent_payers))
        rng.shuffle(payers)
        victims = [self._customers[i] for i in payers[: rng.randint(4, 16)]]
        bot = self._new_device(rng)
        batch_hour = rng.choice((0, 1, 2, 3, 4))
        planned = 0
        for victim in victims:
            charges = _pick(rng, (1, 2, 3), (0.3, 0.7, 1.0))
            incident = _MerchantCharge(
                victim=victim,
                merchant=merchant,
                device=None if rng.random() < 0.75 else bot,
                country=_pick(
                    rng,
                    (victim.home, merchant.country, rng.choice(FRAUD_COUNTRIES)),
                    (0.4, 0.7, 1.0),
                ),
                charges=charges,
            )
            if rng.random() < 0.75:
                start = day_start + batch_hour * HOUR_MS + rng.randrange(HOUR_MS)
            else:
                start = day_start + rng.randrange(DAY_MS)
            start += rng.randrange(2) * DAY_MS
            self._at(start, _MERCHANT_CHARGE, incident)
            planned += charges
        return planned

    def _merchant_charge(self, t: int, incident: Any, _: Any) -> None:
        rng = self._rng
        c, merchant = incident.victim, incident.merchant
        incident.step += 1
        amount = max(1, int(self._amount(c, merchant) * rng.uniform(0.8, 3.0)))
        self._pay_merchant(
            t, c, merchant, amount, incident.device, incident.country, COMPROMISED_MERCHANT
        )
        if incident.step < incident.charges:
            self._at(t + rng.randrange(MINUTE_MS, 20 * MINUTE_MS), _MERCHANT_CHARGE, incident)

    def _plan_cashout(self, day_start: int) -> int:
        rng = self._rng
        if not self._mules:
            return 0
        # Mules are used for a few cash-outs each (then burnt): the least used one next.
        fewest = min(self._mule_uses.values())
        mule = rng.choice([m for m in self._mules if self._mule_uses[m.index] == fewest])
        self._mule_uses[mule.index] += 1
        steps = _pick(rng, (1, 2, 3, 4), (0.25, 0.6, 0.85, 1.0))
        funding = self._round_major(rng.lognormvariate(math.log(1500), 0.6) * self._unit)
        incident = _Cashout(
            mule=mule,
            device=mule.devices[0] if rng.random() < 0.6 else self._new_device(rng),
            payout_ref=self._new_bank(rng) if rng.random() < 0.7 else mule.bank_ref,
            steps=steps,
            funding_left=funding,
        )
        start = day_start + rng.randrange(6 * HOUR_MS, 20 * HOUR_MS)
        self._at(start, _MULE_FUND, incident, rng.randint(1, 4))
        return steps

    def _mule_fund(self, t: int, incident: Any, parts: Any) -> None:
        """Stolen money arrives from senders the mule has never heard of."""
        rng = self._rng
        mule = incident.mule
        amount = incident.funding_left if parts == 1 else incident.funding_left // parts
        amount = max(amount, 1)
        incident.funding_left -= amount
        sender = self._new_bank(rng, "sender")
        self._emit("TOPUP", mule.account_id, sender, None, amount, t, None, mule.home, None)
        mule.available_minor += amount
        if parts > 1:
            self._at(t + rng.randrange(5 * MINUTE_MS, 2 * HOUR_MS), _MULE_FUND, incident, parts - 1)
        else:
            self._at(t + rng.randrange(10 * MINUTE_MS, 12 * HOUR_MS), _MULE_OUT, incident)

    def _mule_out(self, t: int, incident: Any, _: Any) -> None:
        rng = self._rng
        mule = incident.mule
        incident.step += 1
        last = incident.step == incident.steps
        share = rng.uniform(0.9, 1.0) if last else rng.uniform(0.3, 0.6)
        amount = max(1, int(mule.available_minor * share))
        if rng.random() < 0.65:
            self._payout(
                t, mule, incident.payout_ref, amount, incident.device, mule.home, MULE_CASHOUT
            )
        else:
            pool, weights = self._category_pools[rng.choice(CASHOUT_CATEGORIES)]
            merchant = self._merchants[_pick(rng, pool, weights)]
            self._pay_merchant(
                t, mule, merchant, amount, incident.device, mule.home, MULE_CASHOUT, False
            )
        if not last:
            self._at(t + rng.randrange(2 * MINUTE_MS, 3 * HOUR_MS), _MULE_OUT, incident)


def _rhythm(persona: str, shift_hours: int) -> list[float]:
    """168 acceptance probabilities by local hour of week (Monday 00:00 first), peak 1."""
    _, weekday, weekend = PERSONAS[persona]
    week: list[float] = []
    for day in range(7):
        hours = weekend if day >= 5 else weekday
        week.extend(hours[(h - shift_hours) % 24] for h in range(24))
    peak = max(week)
    return [w / peak for w in week]


def _day_tables(rhythms: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per rhythm and weekday: the day's share of activity (mean 1) and its hourly CDF."""
    week = np.array(rhythms).reshape(len(rhythms), 7, 24)
    per_day = week.sum(axis=2)
    day_weight = per_day / per_day.mean(axis=1, keepdims=True)
    cdf = np.cumsum(week, axis=2) / per_day[:, :, None]
    return day_weight, cdf


def _seed_number(seed: int, stream: str) -> int:
    """A 64-bit seed for one named random stream of a simulation."""
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _normal_stream(generator: np.random.Generator) -> Iterator[float]:
    """Standard normals, drawn in blocks (``next`` is far cheaper than a Python draw)."""
    while True:
        yield from generator.standard_normal(NORMALS_BLOCK).tolist()
