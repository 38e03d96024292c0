"""The peers' per-event work against the paystream worker's batch Processor (no broker)."""

from __future__ import annotations

from collections import deque

from agents.pipeline import HeldOutput, Message
from bench.peers._work import INTERNAL_ERROR, EventWork
from streams import topics as names
from streams.settings import load_settings
from tests.bench.peers.scenario import Reference, decoded, phase_one

SETTINGS = load_settings({"PAYSTREAM_TOPIC_PREFIX": "unit."})


def test_one_event_at_a_time_gives_the_outputs_of_the_batch_processor() -> None:
    reference = Reference(SETTINGS)
    scenario = phase_one()
    reference.run(scenario)
    work = EventWork(SETTINGS, "unit", lambda pair: None, "unit")
    values: dict[bytes | None, bytes] = {}
    requests, legs = SETTINGS.topic(names.REQUESTS), SETTINGS.topic(names.LEGS)
    queue = deque(
        Message(requests, 0, offset, key, value)
        for offset, (key, value) in enumerate(scenario.messages)
    )
    outputs: list[HeldOutput] = []
    leg_offset = 0
    while queue:
        message = queue.popleft()
        handle = work.on_request if message.topic == requests else work.on_leg
        step = handle(message, lambda key=message.key: values.get(key))
        if step.state is not None:
            values[message.key] = step.state
        outputs.extend(step.outputs)
        for topic, key, value in step.outputs:
            if topic == legs:
                queue.append(Message(legs, 0, leg_offset, key, value))
                leg_offset += 1
    assert decoded(SETTINGS, outputs) == reference.expected()
    assert work.fraud.model_calls > 200  # one call per scored request, not per batch


def test_an_event_that_raises_becomes_an_internal_error_dead_letter() -> None:
    work = EventWork(SETTINGS, "unit", lambda pair: None, "unit")
    key, value = phase_one().messages[0]
    message = Message(SETTINGS.topic(names.REQUESTS), 3, 17, key, value)

    def unreadable_store() -> bytes | None:
        raise OSError("disk on fire")

    step = work.on_request(message, unreadable_store)
    assert step.state is None
    [(topic, letter_key, letter)] = step.outputs
    record = decoded(SETTINGS, step.outputs)[names.DLQ]
    assert topic == SETTINGS.topic(names.DLQ) and letter_key == key and letter
    assert list(record) == [f"{INTERNAL_ERROR}:{key!r}"]
    assert record[f"{INTERNAL_ERROR}:{key!r}"]["original_value"] == value
