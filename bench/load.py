"""The pre-generated load of ``paystream bench pipeline``: simulated requests as bytes.

The load is made once per invocation (or read back from a cache of earlier ones) and
every peer gets exactly these bytes, in this order, on its own fresh topic.

- Requests come from the fraud simulator (:mod:`models.simulate`): ``accounts``
  customers (and one merchant per ten customers) with lognormal payment rates and
  Zipf-popular merchants, so keys are skewed as real traffic is. The simulation
  starts with every customer's opening balance (a TOPUP in the first simulated
  minute), then payments, authorizations and their captures and voids, payouts and
  later refunds. A load of ``requests`` messages is the first ``requests`` the
  simulation makes; ask for several times ``accounts`` to get past the openings.
- The simulator's ``created_at_ms`` is simulated time and stays as it is: the rules
  use it. Latency is measured with Kafka timestamps instead.
- One message in ``MALFORMED_EVERY`` is malformed: undecodable bytes (random bytes,
  a wrong magic byte, a truncated record) or a schema-valid request the rules must
  refuse (a negative amount, an unknown currency, a payment to oneself, a refund of
  a payment that does not exist). Malformed messages are not waited for: a peer may
  dead-letter them or decide them, and the harness counts which.

File format (little-endian): per message a header ``flags:u8 key_len:u16 id_len:u16
value_len:u32`` then key, request id (UTF-8; empty for undecodable bytes), value.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import struct
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from streams import topics as names

LOAD_FORMAT_VERSION = 1
MALFORMED_EVERY = 1000  # one malformed message per thousand (~0.1%)
CUSTOMERS_PER_MERCHANT = 10  # the simulator's default population has this ratio
DAYS_MAX = 365
CACHED_LOADS_MAX = 3  # older cached loads are deleted (a large one is gigabytes)
REQUEST_BYTES_MAX = names.MESSAGE_BYTES_MAX

VALID = 0
UNDECODABLE = 1
INVALID = 2  # schema-valid, but the rules must refuse it

_HEADER = struct.Struct("<BHHI")
UNDECODABLE_KINDS = ("random_bytes", "wrong_magic_byte", "truncated_record")
INVALID_KINDS = ("negative_amount", "unknown_currency", "payment_to_oneself", "unknown_original")
# Interleaved, so that even a small load has both sorts.
MALFORMED_KINDS = (
    "random_bytes", "negative_amount", "wrong_magic_byte", "unknown_currency",
    "truncated_record", "payment_to_oneself", "unknown_original",
)  # fmt: skip


class LoadMessage(NamedTuple):
    flags: int  # VALID, UNDECODABLE or INVALID
    key: bytes
    request_id: bytes  # empty for undecodable bytes
    value: bytes


@dataclass(frozen=True)
class LoadSpec:
    """What a load is made from; the same spec always gives the same bytes."""

    accounts: int
    requests: int  # valid requests (malformed messages come on top)
    seed: int = 7
    malformed_every: int = MALFORMED_EVERY

    def __post_init__(self) -> None:
        from models.simulate import CUSTOMERS_MIN

        if self.accounts < CUSTOMERS_MIN:
            raise ValueError(f"accounts={self.accounts}: the simulator needs >= {CUSTOMERS_MIN}")
        if self.requests < 1:
            raise ValueError(f"requests={self.requests}: need at least one")
        if self.malformed_every < 2:
            raise ValueError(f"malformed_every={self.malformed_every}: need at least 2")


@dataclass
class LoadInfo:
    """What a load holds; written beside the load file as JSON."""

    accounts: int
    seed: int
    messages: int = 0
    valid: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)
    accounts_held: int = 0  # payers and payees with state after the load
    simulated_days: int = 0
    value_bytes: int = 0
    generated_s: float = 0.0
    fingerprint: str = ""

    @property
    def undecodable(self) -> int:
        return sum(self.malformed.get(kind, 0) for kind in UNDECODABLE_KINDS)

    @property
    def invalid(self) -> int:
        return sum(self.malformed.get(kind, 0) for kind in INVALID_KINDS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(spec: LoadSpec) -> str:
    """Names a load: its spec, this module's and the simulator's code, and the schema id."""
    import models.simulate
    from schemas.codec import load_codec

    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr((LOAD_FORMAT_VERSION, spec)).encode())
    digest.update(Path(models.simulate.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    digest.update(str(load_codec().for_topic(names.REQUESTS).schema_id).encode())
    return digest.hexdigest()


def simulated_days(spec: LoadSpec) -> int:
    """Days of simulation that surely make ``spec.requests`` requests.

    Each customer opens with one top-up and then makes about 1.5-2.6 requests a day;
    one per day is the conservative guess (``generate`` doubles it if it falls short).
    """
    beyond_openings = max(0, spec.requests - spec.accounts)
    return max(1, min(DAYS_MAX, math.ceil(beyond_openings / spec.accounts) + 1))


def _simulation(spec: LoadSpec, days: int) -> Iterator[Any]:
    from models.simulate import MERCHANTS_MIN, SimulationSpec, iter_requests

    merchants = max(MERCHANTS_MIN, spec.accounts // CUSTOMERS_PER_MERCHANT)
    return iter_requests(
        SimulationSpec(customers=spec.accounts, merchants=merchants, days=days, seed=spec.seed)
    )


def _malformed(
    kind: str, neighbour: Any, number: int, spec: LoadSpec, rng: random.Random, codec: Any
) -> LoadMessage:
    """A malformed message next to ``neighbour`` (same key, same simulated clock)."""
    from streams.client import new_request

    account = neighbour["account_id"]
    key = account.encode()
    request_id = f"bench-malformed-{spec.seed}-{number}"

    def request(kind_: Any, amount: int, currency: str = "EUR", **extra: Any) -> Any:
        return dict(
            new_request(
                kind_,
                account,
                amount,
                currency,
                request_id=request_id,
                created_at_ms=neighbour["created_at_ms"],
                **extra,
            )
        )

    if kind == "random_bytes":
        return LoadMessage(UNDECODABLE, key, b"", rng.randbytes(48))
    if kind == "wrong_magic_byte":
        return LoadMessage(UNDECODABLE, key, b"", b"\x07" + rng.randbytes(40))
    if kind == "truncated_record":
        encoded = codec.encode(names.REQUESTS, request("TOPUP", 100, counterparty_id="bank:x"))
        return LoadMessage(UNDECODABLE, key, b"", encoded[: len(encoded) // 2])
    if kind == "negative_amount":
        record = request("PAYMENT", -rng.randint(1, 50_000), counterparty_id="m-00000")
    elif kind == "unknown_currency":
        record = request("PAYMENT", 100, "XXX", counterparty_id="m-00000")
    elif kind == "payment_to_oneself":
        record = request("PAYMENT", 100, counterparty_id=account)
    elif kind == "unknown_original":
        record = request("REFUND", 100, payment_id=f"bench-no-such-payment-{number}")
    else:
        raise AssertionError(f"unknown malformed kind {kind!r}")
    return LoadMessage(INVALID, key, request_id.encode(), codec.encode(names.REQUESTS, record))


class _ShortSimulation(Exception):
    """The simulation ended before making the requests asked for."""


def generate(spec: LoadSpec, handle: IO[bytes]) -> LoadInfo:
    """Write the load's messages to ``handle`` in production order; return what they hold.

    Streams: memory holds one request at a time (plus the set of accounts). If the
    simulated days turn out too few, the simulation runs again with twice as many.
    """
    days = simulated_days(spec)
    while True:
        start = handle.tell()
        try:
            return _generate(spec, days, handle)
        except _ShortSimulation as short:
            if days >= DAYS_MAX:
                raise ValueError(
                    f"{spec.accounts} accounts make only {short.args[0]} requests in "
                    f"{DAYS_MAX} days; ask for fewer requests or more accounts"
                ) from None
            days = min(DAYS_MAX, days * 2)
            handle.seek(start)
            handle.truncate()


def _generate(spec: LoadSpec, days: int, handle: IO[bytes]) -> LoadInfo:
    from schemas.codec import load_codec

    started = time.monotonic()
    codec = load_codec()
    rng = random.Random(f"{spec.seed}:malformed")
    info = LoadInfo(accounts=spec.accounts, seed=spec.seed, simulated_days=days)
    held: set[str] = set()
    kinds: Counter[str] = Counter()
    malformed: Counter[str] = Counter()
    messages = 0
    value_bytes = 0
    made = 0
    for request in itertools.islice(_simulation(spec, days), spec.requests):
        made += 1
        message = LoadMessage(
            VALID,
            request["account_id"].encode(),
            request["request_id"].encode(),
            codec.encode(names.REQUESTS, request),
        )
        write_message(handle, message)
        messages += 1
        value_bytes += len(message.value)
        kinds[request["kind"]] += 1
        held.add(request["account_id"])
        payee = request["counterparty_id"]
        if request["kind"] in ("PAYMENT", "AUTHORIZE") and payee and ":" not in payee:
            held.add(payee)
        if made % spec.malformed_every == 0:
            number = made // spec.malformed_every
            kind = MALFORMED_KINDS[(number - 1) % len(MALFORMED_KINDS)]
            bad = _malformed(kind, request, number, spec, rng, codec)
            write_message(handle, bad)
            messages += 1
            value_bytes += len(bad.value)
            malformed[kind] += 1
    if made < spec.requests:
        raise _ShortSimulation(made)
    info.messages = messages
    info.valid = made
    info.malformed = dict(malformed)
    info.by_kind = dict(kinds.most_common())
    info.accounts_held = len(held)
    info.value_bytes = value_bytes
    info.generated_s = round(time.monotonic() - started, 2)
    return info


# --------------------------------------------------------------------------------------
# The file and its cache
# --------------------------------------------------------------------------------------


def write_message(handle: IO[bytes], message: LoadMessage) -> None:
    if not message.key or len(message.value) > REQUEST_BYTES_MAX:
        raise ValueError(f"load message without key or too large: {message.key!r}")
    handle.write(
        _HEADER.pack(message.flags, len(message.key), len(message.request_id), len(message.value))
    )
    handle.write(message.key)
    handle.write(message.request_id)
    handle.write(message.value)


def read_messages(handle: IO[bytes]) -> Iterator[LoadMessage]:
    """The messages of a load file, checked as they are read back."""
    while True:
        header = handle.read(_HEADER.size)
        if not header:
            return
        if len(header) != _HEADER.size:
            raise ValueError("load file ends inside a message header: regenerate it")
        flags, key_len, id_len, value_len = _HEADER.unpack(header)
        body = handle.read(key_len + id_len + value_len)
        if len(body) != key_len + id_len + value_len or flags not in (VALID, UNDECODABLE, INVALID):
            raise ValueError("load file is truncated or corrupt: regenerate it")
        yield LoadMessage(
            flags, body[:key_len], body[key_len : key_len + id_len], body[key_len + id_len :]
        )


@dataclass
class Load:
    """A load on disk and the index the harness matches outputs with."""

    path: Path
    info: LoadInfo
    index_of: dict[bytes, int]  # request id -> position, for every message that has one
    flags: bytes  # per position

    def __len__(self) -> int:
        return len(self.flags)

    def messages(self) -> Iterator[LoadMessage]:
        with self.path.open("rb") as handle:
            yield from read_messages(handle)

    def positions(self, flag: int) -> array[int]:
        return array("q", (i for i, f in enumerate(self.flags) if f == flag))


def _read_index(path: Path) -> tuple[dict[bytes, int], bytes]:
    index_of: dict[bytes, int] = {}
    flags = bytearray()
    with path.open("rb") as handle:
        for position, message in enumerate(read_messages(handle)):
            flags.append(message.flags)
            if message.request_id:
                if message.request_id in index_of:
                    raise ValueError(f"request id {message.request_id!r} twice in {path}")
                index_of[message.request_id] = position
    return index_of, bytes(flags)


def prepare(spec: LoadSpec, cache_dir: Path, emit: Any = print) -> Load:
    """The load of ``spec``: from the cache if it was made before, else generated now."""
    name = f"load-{fingerprint(spec)}"
    path = cache_dir / f"{name}.bin"
    info_path = cache_dir / f"{name}.json"
    if path.is_file() and info_path.is_file():
        info = LoadInfo(**json.loads(info_path.read_text(encoding="utf-8")))
        emit(f"load: {info.messages:,} messages from the cache ({path})")
    else:
        emit(
            f"load: simulating {spec.requests:,} requests over {spec.accounts:,} accounts "
            f"(seed {spec.seed}) ..."
        )
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("w+b") as handle:
            info = generate(spec, handle)
        info.fingerprint = name
        partial.replace(path)
        info_path.write_text(json.dumps(info.to_dict(), indent=2) + "\n", encoding="utf-8")
        emit(f"load: generated in {info.generated_s:.1f} s, cached in {path}")
        _prune(cache_dir, keep=path)
    index_of, flags = _read_index(path)
    if len(flags) != info.messages:
        raise ValueError(f"{path} holds {len(flags)} messages, its info says {info.messages}")
    return Load(path, info, index_of, flags)


def _prune(cache_dir: Path, keep: Path) -> None:
    loads = sorted(cache_dir.glob("load-*.bin"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in loads if p != keep][CACHED_LOADS_MAX - 1 :]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
