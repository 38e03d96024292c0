"""A specialised Avro body decoder for the schemas the sinks and workers read on the hot path.

fastavro's ``schemaless_reader`` dispatches on every value's type through generic
functions and reads the body one ``BytesIO.read`` call at a time: ~20 µs per
ledger transaction here. This module is the counterpart of
:mod:`schemas.fastencode`: it writes, once per schema, the Python source of one
function that reads exactly that schema from a ``bytes`` object, every field read
inlined, and ``exec``-s it. What makes it fast:

* a one-byte varint (lengths, counts, small numbers) is a table lookup; longer
  ones (amounts, timestamps) are unrolled, each byte looked up in a table of its
  share of the value, so there is no loop, shift or mask (10-byte ones: a helper);
* a string or bytes value with a one-byte length is one expression: a slice of
  ``data`` to ``pos`` moved past it, then ``.decode()``; other lengths make
  ``pos`` negative and the slice empty, and a helper reads them;
* bounds: ``data[pos]`` raises past the end by itself, but a slice silently stops
  there. Each slice moves ``pos`` to where its value claims to end and ``pos`` never
  moves back, so one ``pos > len(data)`` test before returning (and one before each
  array or map block) catches every read past the end: a value cut short is never
  returned.

It returns exactly what fastavro returns for a valid body: the same values and
types (``int`` for int and long, ``float`` for float and double, ``str``/``bytes``,
the branch's value for a union, records and maps as dicts in wire order) and the
same end position. It is strict on purpose: a truncated body, a varint longer than
10 bytes or beyond 64 bits, a negative length, a union index out of range or not
written as one byte, a bad enum index, invalid UTF-8, an array or map block claiming
more items than there are bytes left: all raise (:class:`InvalidBody`,
``IndexError``, ``UnicodeDecodeError``, ``struct.error``), and the codec then reads
the message with fastavro, which raises its own error or returns its own answer (it
is lenient about some of these: it keeps the low 64 bits of an overlong varint and
takes a negative union or enum index from the end; it also reads any non-zero
boolean byte as true, which this module copies). A schema using something this
module does not know (logical types, recursive types, a schema fastavro would parse
again on every read...) compiles to None: fastavro reads every record of it. The
tests compare the results with fastavro's for generated records of every schema in
the catalogue, and for truncated and corrupted bodies.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

Decoder = Callable[[bytes, int], tuple[Any, int]]

SOURCE_CHARS_MAX = 1_000_000
"""A schema whose generated source would be longer is left to fastavro (a named type
used in many places is inlined at each of them)."""

UNION_BRANCHES_MAX = 64
"""Branch indexes the fast path reads (one byte); a larger union is left to fastavro."""

VARINT_UNROLLED = 9
"""Bytes of an int/long varint read inline: 9 bytes hold any value of magnitude below 2**62."""

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_COMPLEX = frozenset({"fixed", "enum", "array", "map", "union", "error_union", "record", "error"})
_ZIGZAG = tuple((b >> 1) ^ -(b & 1) for b in range(0x80))
"""The value of each one-byte varint."""
_HALVES = tuple(
    tuple((b & 0x7F) >> 1 if k == 0 else (b & 0x7F) << (7 * k - 1) for b in range(0x100))
    for k in range(VARINT_UNROLLED)
)
"""``_HALVES[k][byte]``: what the k-th byte of a varint adds to ``n >> 1`` (n: the varint)."""
_SIGNS = tuple(-(b & 1) for b in range(0x100))
"""The zig-zag sign of a varint by its first byte: ``(n >> 1) ^ sign`` is its value."""
_FAR = 1 << 40  # more than any message's length
_SPANS = tuple(1 + (b >> 1) if b < 0x80 and not b & 1 else -_FAR for b in range(0x100))
"""For a length's first byte: the bytes of length plus data when the length is one byte,
else ``-_FAR`` (a longer length, or a negative one), which sends ``pos`` below zero and
leaves an empty slice: then :func:`_read_bytes` reads it."""


class InvalidBody(ValueError):
    """The bytes are not a valid body of the schema (or not one the fast path reads)."""


class _Unsupported(Exception):
    """The schema uses something the generator does not handle: compile to None."""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The zig-zag varint at ``pos`` (up to 10 bytes, at most 64 bits) and the position
    after it. fastavro reads longer ones its own way (the low 64 bits): the codec lets it."""
    b = data[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        if shift > 63:
            raise InvalidBody("varint longer than 10 bytes")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise InvalidBody("varint beyond 64 bits")
    return (n >> 1) ^ -(n & 1), pos


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    """Bytes whose length is not one byte (or is negative), bounds-checked."""
    size, pos = _read_varint(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise InvalidBody(f"length {size} at {pos} in {len(data)} bytes")
    return data[pos:end], end


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    value, pos = _read_bytes(data, pos)
    return value.decode(), pos


def _read_index(data: bytes, pos: int, count: int) -> tuple[int, int]:
    """An enum index in ``range(count)`` not written as one byte (fastavro also accepts
    Python's negative indexes: the codec then lets it)."""
    n, pos = _read_varint(data, pos)
    if not 0 <= n < count:
        raise InvalidBody(f"index {n} out of range({count})")
    return n, pos


_HELPERS: dict[str, Any] = {
    "_ZZ": _ZIGZAG,
    "_SIGN": _SIGNS,
    **{f"_H{k}": table for k, table in enumerate(_HALVES)},
    "_SPAN": _SPANS,
    "_varint": _read_varint,
    "_bytes": _read_bytes,
    "_string": _read_string,
    "_index": _read_index,
    "_Invalid": InvalidBody,
    "_float": struct.Struct("<f").unpack_from,
    "_double": struct.Struct("<d").unpack_from,
}


class _Generator:
    """Writes the body of ``decode(data, pos)``: :meth:`value` emits the statements that
    read one value at ``pos`` into a local variable and move ``pos`` past it."""

    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self.counter = 0
        self.size = 0
        self.expanding: list[str] = []

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def emit(self, depth: int, line: str) -> None:
        text = "    " * depth + line
        self.size += len(text) + 1
        if self.size > SOURCE_CHARS_MAX:
            raise _Unsupported("generated source too long")
        self.lines.append(text)

    def constant(self, prefix: str, value: Any) -> str:
        name = self.fresh(prefix)
        self.constants[name] = value
        return name

    # -- dispatch, in the order fastavro's ``_read_data`` tests the type

    def value(self, schema: Any, target: str, depth: int) -> None:
        if isinstance(schema, list):
            self.union(schema, target, depth)
            return
        if isinstance(schema, dict):
            if "logicalType" in schema:
                raise _Unsupported("logical type")
            kind = schema.get("type")
        else:
            kind = schema
        if not isinstance(kind, str):
            raise _Unsupported(f"schema {schema!r}")
        if kind in _PRIMITIVES:
            self.primitive(kind, target, depth)
        elif kind not in _COMPLEX:
            self.reference(kind, target, depth)
        elif not isinstance(schema, dict):
            raise _Unsupported(f"bare {kind!r}")
        elif kind == "fixed":
            self.fixed(schema, target, depth)
        elif kind == "enum":
            self.enum(schema, target, depth)
        elif kind == "array":
            self.blocks(schema["items"], False, target, depth)
        elif kind == "map":
            self.blocks(schema["values"], True, target, depth)
        elif kind in ("record", "error"):
            self.record(schema, target, depth)
        else:  # "union", "error_union" as a type name
            raise _Unsupported(f"type {kind!r}")

    def reference(self, name: str, target: str, depth: int) -> None:
        """A named type used again: inlined again, unless it is one being defined."""
        if name not in self.named:
            raise _Unsupported(f"unknown type {name!r}")
        if name in self.expanding:
            raise _Unsupported(f"recursive type {name}")
        self.expanding.append(name)
        self.value(self.named[name], target, depth)
        self.expanding.pop()

    # -- primitives

    def primitive(self, kind: str, target: str, depth: int) -> None:
        emit = self.emit
        if kind == "null":
            emit(depth, f"{target} = None")
        elif kind in ("int", "long"):  # fastavro reads both as a 64-bit long
            self.long(target, depth)
        elif kind in ("string", "bytes"):
            self.length_prefixed(target, depth, string=kind == "string")
        elif kind == "boolean":  # fastavro reads any non-zero byte as True: so do we
            emit(depth, f"{target} = data[pos] != 0")
            emit(depth, "pos += 1")
        elif kind == "float":
            emit(depth, f"{target} = _float(data, pos)[0]")
            emit(depth, "pos += 4")
        else:  # double
            emit(depth, f"{target} = _double(data, pos)[0]")
            emit(depth, "pos += 8")

    def long(self, target: str, depth: int) -> None:
        """A zig-zag varint of up to :data:`VARINT_UNROLLED` bytes, unrolled (see the
        module doc); longer ones in :func:`_read_varint`."""
        emit = self.emit
        emit(depth, "_b = data[pos]")
        emit(depth, "if _b < 128:")
        emit(depth + 1, f"{target} = _ZZ[_b]")
        emit(depth + 1, "pos += 1")
        terms = ["_H0[_b]"]
        for k in range(1, VARINT_UNROLLED):
            terms.append(f"_H{k}[_b{k}]")
            emit(depth, f"elif (_b{k} := data[pos + {k}]) < 128:")
            emit(depth + 1, f"{target} = ({' + '.join(terms)}) ^ _SIGN[_b]")
            emit(depth + 1, f"pos += {k + 1}")
        emit(depth, "else:")
        emit(depth + 1, f"{target}, pos = _varint(data, pos)")

    def count(self, target: str, depth: int) -> None:
        """A block count or size: one byte inline, longer ones in :func:`_read_varint`."""
        emit = self.emit
        emit(depth, "_b = data[pos]")
        emit(depth, "if _b < 128:")
        emit(depth + 1, f"{target} = _ZZ[_b]")
        emit(depth + 1, "pos += 1")
        emit(depth, "else:")
        emit(depth + 1, f"{target}, pos = _varint(data, pos)")

    def length_prefixed(self, target: str, depth: int, *, string: bool) -> None:
        """A string or bytes with a one-byte length in one expression (the slice may run
        past the end: see the module doc); any other length in :func:`_read_bytes`."""
        emit = self.emit
        decode = ".decode()" if string else ""
        emit(depth, f"{target} = data[pos + 1:(pos := pos + _SPAN[data[pos]])]{decode}")
        emit(depth, f"if not {target} and pos < 0:")
        helper = "_string" if string else "_bytes"
        emit(depth + 1, f"{target}, pos = {helper}(data, pos + {_FAR})")

    def fixed(self, schema: dict[str, Any], target: str, depth: int) -> None:
        size = schema.get("size")
        if size.__class__ is not int or size < 0:
            raise _Unsupported(f"fixed size {size!r}")
        self.emit(depth, f"{target} = data[pos:pos + {size}]")
        self.emit(depth, f"pos += {size}")

    # -- enums and unions: a one-byte index

    def enum(self, schema: dict[str, Any], target: str, depth: int) -> None:
        """A table from the index byte to the symbol; other indexes in :func:`_read_index`."""
        symbols = schema.get("symbols")
        if not isinstance(symbols, list) or not all(s.__class__ is str for s in symbols):
            raise _Unsupported("enum symbols")
        by_byte = tuple(
            symbols[b >> 1] if b < 0x80 and not b & 1 and b >> 1 < len(symbols) else None
            for b in range(0x100)
        )
        table = self.constant("_enum", by_byte)
        names = self.constant("_symbols", tuple(symbols))
        emit = self.emit
        emit(depth, f"{target} = {table}[data[pos]]")
        emit(depth, f"if {target} is None:")
        emit(depth + 1, f"_i, pos = _index(data, pos, {len(symbols)})")
        emit(depth + 1, f"{target} = {names}[_i]")
        emit(depth, "else:")
        emit(depth + 1, "pos += 1")

    def union(self, branches: list[Any], target: str, depth: int) -> None:
        """The branch's value, as fastavro returns it by default (no record names: the codec
        does not ask for them). Only a one-byte index is read; anything else raises."""
        if not branches or len(branches) > UNION_BRANCHES_MAX:
            raise _Unsupported(f"union of {len(branches)} branches")
        emit = self.emit
        index = self.fresh("_u")
        emit(depth, f"{index} = data[pos]")
        emit(depth, "pos += 1")
        for number, branch in enumerate(branches):
            test = f"not {index}" if number == 0 else f"{index} == {number * 2}"
            emit(depth, f"{'if' if number == 0 else 'elif'} {test}:")
            self.value(branch, target, depth + 1)
        emit(depth, "else:")
        emit(depth + 1, f"raise _Invalid('union index byte %d' % {index})")

    # -- arrays, maps, records

    def blocks(self, item_schema: Any, is_map: bool, target: str, depth: int) -> None:
        """An array or a map: blocks of ``count`` items until a zero count; a negative count
        is followed by the block's size in bytes, which fastavro reads and ignores."""
        emit = self.emit
        count = self.fresh("_c")
        item = self.fresh("_v")
        emit(depth, f"{target} = {{}}" if is_map else f"{target} = []")
        self.count(count, depth)
        emit(depth, f"while {count}:")
        emit(depth + 1, f"if {count} < 0:")
        emit(depth + 2, f"{count} = -{count}")
        self.count("_skip", depth + 2)
        # No more items than bytes left: bounds the loop even for items of no bytes (an
        # array of nulls), and catches a slice that ran past the end (pos > size).
        emit(depth + 1, f"if {count} > size - pos:")
        emit(depth + 2, f"raise _Invalid('block of %d items' % {count})")
        emit(depth + 1, f"for _ in range({count}):")
        if is_map:
            key = self.fresh("_k")
            self.length_prefixed(key, depth + 2, string=True)
            self.value(item_schema, item, depth + 2)
            emit(depth + 2, f"{target}[{key}] = {item}")
        else:
            self.value(item_schema, item, depth + 2)
            emit(depth + 2, f"{target}.append({item})")
        self.count(count, depth + 1)

    def record(self, schema: dict[str, Any], target: str, depth: int) -> None:
        """The fields in order into locals, then one dict display (fastavro's key order)."""
        fields = schema.get("fields")
        if not isinstance(fields, list):
            raise _Unsupported("record fields")
        names = [field.get("name") if isinstance(field, dict) else None for field in fields]
        if not all(name.__class__ is str for name in names) or len(set(names)) != len(names):
            raise _Unsupported("record field names")
        values = []
        for field in fields:
            value = self.fresh("_f")
            self.value(field["type"], value, depth)
            values.append(value)
        items = ", ".join(f"{name!r}: {value}" for name, value in zip(names, values, strict=True))
        self.emit(depth, f"{target} = {{{items}}}")


def decoder_source(parsed_schema: Any) -> tuple[str, dict[str, Any]] | None:
    """The generated source (defining ``_make(**constants) -> decode``) and its constants,
    or None when :func:`compile_decoder` returns None. For debugging and the tests."""
    if not isinstance(parsed_schema, dict) or "__fastavro_parsed" not in parsed_schema:
        return None  # fastavro parses such a schema again on every read: do not guess how
    named = parsed_schema.get("__named_schemas")
    if not isinstance(named, dict):
        return None
    generator = _Generator(named)
    try:
        generator.value(parsed_schema, "_result", 2)
    except (_Unsupported, KeyError, TypeError, AttributeError, RecursionError):
        return None
    constants = ", ".join(sorted(generator.constants))
    lines = [
        f"def _make({constants}):",
        "    def decode(data, pos):",
        "        size = len(data)",
    ]
    lines += generator.lines
    lines += [
        "        if pos > size:",
        "            raise _Invalid('truncated: %d bytes past the end' % (pos - size))",
        "        return _result, pos",
        "    return decode",
        "",
    ]
    return "\n".join(lines), generator.constants


def compile_decoder(parsed_schema: Any) -> Decoder | None:
    """``decode(data, pos) -> (value, end position)`` for a fastavro-parsed schema, or None.

    ``data`` must be ``bytes`` (a ``bytearray`` would give ``bytearray`` values). ``decode``
    reads one body of the schema starting at ``pos`` and returns what fastavro's
    ``schemaless_reader`` returns with no reader schema, or raises when the bytes are not a
    body it reads exactly as fastavro does; the caller then falls back to fastavro.
    """
    generated = decoder_source(parsed_schema)
    if generated is None:
        return None
    source, constants = generated
    namespace = dict(_HELPERS)
    try:
        code = compile(source, f"<fastdecode {parsed_schema.get('name', '?')}>", "exec")
        exec(code, namespace)
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return None  # nested too deeply for Python's compiler
    decoder: Decoder = namespace["_make"](**constants)
    return decoder
