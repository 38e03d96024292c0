"""PostgreSQL's binary COPY format, written by hand for the ledger's few column types: pure.

The sink builds each transaction's COPY rows once, on the thread that decodes the
batch, so the thread holding the database connection only joins bytes and waits
for PostgreSQL: the two stages then run on separate cores. (psycopg's ``write_row``
must run while the COPY is open, on the connection's thread.)

Format (PostgreSQL docs, "COPY", "Binary Format"): a signature and two 32-bit
header words; per row a 16-bit field count, then per field a 32-bit length (-1 for
NULL) and the value in the type's binary send format; a 16-bit -1 ends the data.
Every encoder refuses, with :class:`ValueError`, a value the column would refuse.
"""

from __future__ import annotations

import struct
from decimal import Decimal, InvalidOperation

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
NULL = struct.pack(">i", -1)

# Packers for callers that inline fields on a hot path (no range checks: struct.error).
INT4_FIELD = struct.Struct(">ii").pack  # (4, value)
INT8_FIELD = struct.Struct(">iq").pack  # (8, value)
LENGTH = struct.Struct(">i").pack  # the length word before a variable-size value
_FIELDS = struct.Struct(">h").pack
_NUMERIC_HEADER = struct.Struct(">ihhhh").pack  # length, ndigits, weight, sign, dscale

_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, the zero of timestamptz
# timestamptz accepts 4713 BC to 294276 AD; keep well inside it (year 1 to 9999).
_MS_MIN = -62_135_596_800_000
_MS_MAX = 253_402_300_799_999
_INT8_MIN, _INT8_MAX = -(2**63), 2**63 - 1
_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1
_NUMERIC_DIGITS_MAX = 1000  # far above any exchange rate; bounds the work per value
_NUMERIC_NEG = 0x4000


def fields(count: int) -> bytes:
    """The start of a row of ``count`` fields."""
    return _FIELDS(count)


def text(value: str) -> bytes:
    data = value.encode()
    if b"\x00" in data:
        raise ValueError(f"text {value[:40]!r} contains a NUL character")
    return LENGTH(len(data)) + data


def bytea(value: bytes) -> bytes:
    return LENGTH(len(value)) + value


def int4(value: int) -> bytes:
    if not _INT4_MIN <= value <= _INT4_MAX:
        raise ValueError(f"{value} does not fit a 32-bit integer")
    return INT4_FIELD(4, value)


def int8(value: int) -> bytes:
    if not _INT8_MIN <= value <= _INT8_MAX:
        raise ValueError(f"{value} does not fit a 64-bit integer")
    return INT8_FIELD(8, value)


def timestamptz_ms(epoch_ms: int) -> bytes:
    """Milliseconds since the Unix epoch as timestamptz (microseconds since 2000, UTC)."""
    if not _MS_MIN <= epoch_ms <= _MS_MAX:
        raise ValueError(f"timestamp {epoch_ms} ms is outside years 1-9999")
    return INT8_FIELD(8, (epoch_ms - _PG_EPOCH_MS) * 1000)


_NUMERIC_CACHE: dict[str, bytes] = {}
_NUMERIC_CACHE_MAX = 4096  # exchange rates repeat: most values are met again


def numeric(value: str) -> bytes:
    """A finite decimal written as text (``"1.08"``) in numeric's base-10000 send format."""
    cached = _NUMERIC_CACHE.get(value)
    if cached is not None:
        return cached
    encoded = _numeric(value)
    if len(_NUMERIC_CACHE) >= _NUMERIC_CACHE_MAX:
        _NUMERIC_CACHE.clear()
    _NUMERIC_CACHE[value] = encoded
    return encoded


def _numeric(value: str) -> bytes:
    try:
        number = Decimal(value)
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise ValueError(f"{value!r} is not a decimal number") from exc
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite decimal")
    sign, digit_tuple, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite
    if len(digit_tuple) + abs(exponent) > _NUMERIC_DIGITS_MAX:
        raise ValueError(f"{value!r} has more than {_NUMERIC_DIGITS_MAX} digits")
    dscale = max(0, -exponent)
    digits = "".join(map(str, digit_tuple))
    if exponent >= 0:
        whole, fraction = digits + "0" * exponent, ""
    else:
        digits = digits.rjust(-exponent, "0")
        whole, fraction = digits[:exponent], digits[exponent:]
    whole = whole.lstrip("0")
    whole = whole.rjust(-(-len(whole) // 4) * 4, "0")
    fraction = fraction.ljust(-(-len(fraction) // 4) * 4, "0")
    groups = [int(whole[i : i + 4]) for i in range(0, len(whole), 4)]
    weight = len(groups) - 1
    groups += [int(fraction[i : i + 4]) for i in range(0, len(fraction), 4)]
    while groups and groups[0] == 0:  # only when there is no whole part
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    header = _NUMERIC_HEADER(
        8 + 2 * len(groups), len(groups), weight, _NUMERIC_NEG if sign else 0, dscale
    )
    return header + struct.pack(f">{len(groups)}h", *groups)
