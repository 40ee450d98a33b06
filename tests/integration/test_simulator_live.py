"""The simulator's live mode on the real broker: paced events stamped when sent (the
latency benchmark reads event-to-ClickHouse latency off these stamps)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from schemas.events import EVENT_TYPES
from streams.simulator import EVENT_KINDS, produce_events
from tests.integration.support import consume_all, isolated_settings

pytestmark = pytest.mark.integration


def test_stamp_sent_gives_each_event_its_send_time_at_the_pace_asked(local_kafka, tmp_path):
    settings = isolated_settings(local_kafka.bootstrap, tmp_path / "abm")
    began_ms = int(time.time() * 1000)
    counts = asyncio.run(
        produce_events(settings, accounts=20, contacts_per_account=2, rate=400, duration_s=None, count=600, seed=3, stamp_sent=True)
    )
    ended_ms = int(time.time() * 1000)
    assert sum(counts.values()) == 600
    stamps = []
    for kind in EVENT_KINDS:
        messages = asyncio.run(consume_all(local_kafka.bootstrap, settings.topic(EVENT_TYPES[kind].topic), counts[kind], timeout_s=20))
        assert len(messages) == counts[kind]
        stamps += [orjson.loads(m.value)["occurred_at"] for m in messages]
    assert all(isinstance(at, int) and began_ms <= at <= ended_ms for at in stamps)
    # 600 events at 400/s: the stamps span about 1.5 s, not the simulated history
    assert 1_000 <= max(stamps) - min(stamps) <= 2_500
