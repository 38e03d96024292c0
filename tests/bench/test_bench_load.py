"""The pre-generated load and the watcher's reading of request ids, without Kafka."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench import load as bench_load
from bench.load import INVALID, UNDECODABLE, VALID, LoadSpec, generate, prepare, read_messages
from bench.watch import check_leading_request_id, leading_string
from schemas.codec import DecodeError, load_codec
from streams import topics as names
from streams.client import new_request

SMALL = LoadSpec(accounts=50, requests=700, seed=3, malformed_every=50)


def _generated(spec: LoadSpec) -> tuple[bytes, bench_load.LoadInfo]:
    handle = io.BytesIO()
    info = generate(spec, handle)
    return handle.getvalue(), info


def test_a_load_is_the_simulation_with_malformed_messages_mixed_in() -> None:
    data, info = _generated(SMALL)
    messages = list(read_messages(io.BytesIO(data)))
    codec = load_codec()
    assert len(messages) == info.messages == 700 + 14
    assert info.valid == 700 and sum(info.by_kind.values()) == 700
    assert sum(info.malformed.values()) == 14
    assert set(info.malformed) == set(bench_load.MALFORMED_KINDS)  # every sort, twice
    assert info.undecodable == 6 and info.invalid == 8
    assert Counter(m.flags for m in messages) == {VALID: 700, UNDECODABLE: 6, INVALID: 8}
    assert info.by_kind["TOPUP"] >= 50  # every account opens with a top-up
    assert info.by_kind["PAYMENT"] > 0 and info.accounts_held > 50  # payees hold state too
    for message in messages:
        assert message.key
        if message.flags == UNDECODABLE:
            with pytest.raises(DecodeError):
                codec.decode(names.REQUESTS, message.value)
            continue
        request = codec.decode(names.REQUESTS, message.value)
        assert request["request_id"].encode() == message.request_id
        assert request["account_id"].encode() == message.key
    ids = [m.request_id for m in messages if m.request_id]
    assert len(ids) == len(set(ids))


def test_the_same_spec_gives_the_same_bytes_and_another_seed_others() -> None:
    first, _ = _generated(SMALL)
    again, _ = _generated(SMALL)
    other, _ = _generated(LoadSpec(accounts=50, requests=700, seed=4, malformed_every=50))
    assert first == again
    assert first != other


def test_too_few_days_are_doubled_until_the_load_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_load, "simulated_days", lambda spec: 1)
    _, info = _generated(LoadSpec(accounts=30, requests=400, seed=3))
    assert info.valid == 400
    assert info.simulated_days > 1


def test_impossible_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="accounts"):
        LoadSpec(accounts=3, requests=10)
    with pytest.raises(ValueError, match="requests"):
        LoadSpec(accounts=100, requests=0)


def test_prepare_caches_the_load_and_indexes_its_ids(tmp_path: Path) -> None:
    said: list[str] = []
    made = prepare(SMALL, tmp_path, said.append)
    cached = prepare(SMALL, tmp_path, said.append)
    assert "simulating" in said[0] and "from the cache" in said[-1]
    assert cached.path == made.path and cached.info == made.info
    assert len(cached) == made.info.messages
    assert len(cached.index_of) == 700 + 8  # valid and invalid requests have ids
    positions = cached.positions(INVALID)
    assert len(positions) == 8
    assert all(cached.flags[p] == INVALID for p in positions)
    message = list(cached.messages())[positions[0]]
    assert cached.index_of[message.request_id] == positions[0]


def test_a_truncated_load_file_is_refused(tmp_path: Path) -> None:
    data, _ = _generated(SMALL)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        list(read_messages(io.BytesIO(data[:-3])))


def test_request_ids_are_read_from_requests_and_decisions_without_decoding() -> None:
    codec = load_codec()
    request: dict[str, Any] = dict(
        new_request("TOPUP", "acct-1", 100, "EUR", counterparty_id="bank:x")
    )
    request_ids = check_leading_request_id(codec, names.REQUESTS, request)
    encoded = codec.encode(names.REQUESTS, request)
    assert leading_string(encoded, request_ids) == request["request_id"].encode()
    decision_ids = frozenset(codec.for_topic(names.DECISIONS).known_schema_ids)
    assert leading_string(encoded, decision_ids) is None  # another subject's schema id
    assert leading_string(b"\x07" + encoded[1:], request_ids) is None  # wrong magic byte
    assert leading_string(encoded[:8], request_ids) is None  # the id is cut off
    assert leading_string(b"", request_ids) is None
    long_id = "r-" + "9" * 300  # a length that takes two varint bytes
    encoded = codec.encode(names.REQUESTS, dict(request, request_id=long_id))
    assert leading_string(encoded, request_ids) == long_id.encode()
