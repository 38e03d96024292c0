"""Stored outputs are kept until their batch is flushed, then only the decisions remain."""

from __future__ import annotations

import dataclasses

from agents.rules import AccountState, decide
from tests.agents.rules.rules_builders import (
    REQUESTS_TOPIC,
    make_context,
    payment,
    position,
    topup,
)


def _funded(context_offset: int = 0) -> tuple[AccountState, object]:
    context = make_context()
    state, _ = decide(None, topup("alice", 10_000), context, position(context_offset))
    return state, context


def test_redelivery_before_the_flush_re_emits_every_output() -> None:
    state, context = _funded()
    request = payment("alice", "bob", 2_500)
    state, first = decide(state, request, context, position(1))
    # Redelivered in a batch that starts at the same offset: nothing is known durable.
    later = dataclasses.replace(context, flushed_below={f"{REQUESTS_TOPIC}:0": 1})
    state, again = decide(state, request, later, position(1))
    assert again == first
    assert again.legs and again.transactions and again.notifications


def test_after_a_later_batch_starts_only_the_decision_is_kept_and_re_emitted() -> None:
    state, context = _funded()
    request = payment("alice", "bob", 2_500)
    state, first = decide(state, request, context, position(1))
    size_before = len(state.to_bytes())
    later = dataclasses.replace(context, flushed_below={f"{REQUESTS_TOPIC}:0": 2})
    state, _ = decide(state, topup("alice", 1), later, position(2))
    assert len(state.to_bytes()) < size_before + 200, "outputs of offset 1 were not dropped"
    state, again = decide(state, request, later, position(1))
    assert again.decisions == first.decisions
    assert not again.legs and not again.transactions and not again.notifications
    # Money moved once: 10_000 - 2_500 + 1.
    assert state.balances["EUR"].available_minor == 7_501


def test_flush_marks_of_another_partition_do_not_drop_outputs() -> None:
    state, context = _funded()
    request = payment("alice", "bob", 2_500)
    state, first = decide(state, request, context, position(1))
    other = dataclasses.replace(context, flushed_below={f"{REQUESTS_TOPIC}:3": 99})
    state, again = decide(state, request, other, position(1))
    assert again == first


def test_unflushed_marks_survive_serialization_and_pruning() -> None:
    state, context = _funded()
    state, _ = decide(state, payment("alice", "bob", 100), context, position(1))
    assert state.unflushed
    restored = AccountState.from_bytes(state.to_bytes())
    assert restored.unflushed == state.unflushed
