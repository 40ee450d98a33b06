"""A burst of good and bad messages through the real broker: every good one processed,
every bad one in the dead-letter topic with its reason and origin, the worker healthy."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import orjson
import pytest

from schemas.events import EVENT_TYPES, TOPIC_DEAD_LETTERS
from streams.simulator import encode, iter_events
from tests.integration.support import consume_all, isolated_settings, produce, query, start_worker

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def bad_messages(now_ms: int, good: dict) -> list[tuple[bytes, str]]:
    """One of each kind of bad message, with the reason it must be dead-lettered for."""

    def variant(**changes) -> bytes:
        event = {k: v for k, v in good.items() if k not in changes or changes[k] is not ...}
        event.update({k: v for k, v in changes.items() if v is not ...})
        return orjson.dumps(event)

    return [
        (b"\xff\xfe\x00 not utf-8", "not_utf8"),
        (b"{not json", "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (variant(type="fax_received"), "unknown_type"),
        (variant(event_id=...), "missing_field"),
        (variant(account_id=7), "bad_field"),
        (variant(occurred_at="1999-12-31T23:59:59Z"), "bad_timestamp"),
        (variant(occurred_at=now_ms + 2 * DAY_MS), "bad_timestamp"),
        (variant(type="nps_response", properties={"score": 11}), "out_of_range"),
        (orjson.dumps({**good, "properties": {"blob": "x" * (1 << 20)}}), "too_large"),
    ]


def test_burst_of_good_and_bad_messages(kafka_bootstrap, tmp_path):
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
    goods = list(iter_events(seed=21, accounts=50, contacts_per_account=3, count=7_000, expected_events=7_000, history_days=1))
    now_ms = int(time.time() * 1000)
    kinds = bad_messages(now_ms, orjson.loads(encode(goods[0])))
    records: list[tuple[str, bytes | None, bytes]] = []
    expected_reasons: Counter[str] = Counter()
    bad_values: Counter[bytes] = Counter()
    for n, event in enumerate(goods):
        topic = settings.topic(EVENT_TYPES[event["type"]].topic)
        records.append((topic, event["account_id"].encode(), encode(event)))
        if n % 7 < 3:  # 3,000 bad ones, interleaved with the good on the same topics
            value, reason = kinds[bad_values.total() % len(kinds)]
            records.append((topic, None, value))
            expected_reasons[reason] += 1
            bad_values[value] += 1
    assert len(records) == 10_000

    worker = start_worker(settings)
    try:
        asyncio.run(produce(kafka_bootstrap, records, max_request_size=4 << 20))
        worker.wait_drained(timeout_s=180)
        stats = worker.status()["stats"]
        assert stats["raw_in"] == 10_000 and stats["applied"] == 7_000
        assert stats["invalid_by_reason"] == dict(expected_reasons)
        dead = asyncio.run(consume_all(kafka_bootstrap, settings.topic(TOPIC_DEAD_LETTERS), 3_000, timeout_s=60))
        # still healthy: a good event sent after the burst is processed
        late = {**orjson.loads(encode(goods[-1])), "event_id": "after-the-burst"}
        asyncio.run(produce(kafka_bootstrap, [(records[0][0], b"k", orjson.dumps(late))]))
        worker.wait_drained(timeout_s=60)
        assert worker.status()["stats"]["applied"] == 7_001
    finally:
        assert worker.stop() == 0, worker.log_tail()

    assert len(dead) == 3_000
    assert Counter(dict(m.headers)["abm.reason"].decode() for m in dead) == expected_reasons
    assert Counter(m.value for m in dead) == bad_values  # the original bytes, untouched
    for message in dead:
        headers = dict(message.headers)
        assert headers["abm.message"]
        assert headers["abm.topic"].decode().startswith(settings.topic_prefix)
        assert int(headers["abm.partition"]) >= 0 and int(headers["abm.offset"]) >= 0
    [stored] = query(settings, "SELECT count() AS n, uniqExact(event_id) AS u FROM events")
    assert (stored["n"], stored["u"]) == (7_001, 7_001)
    # the same dead letters in ClickHouse, with their reason, origin and original bytes
    table = query(settings, "SELECT topic, partition, offset, reason, message, hex(payload) AS payload FROM dead_letters FINAL")
    assert len(table) == 3_000
    assert Counter(r["reason"] for r in table) == expected_reasons
    assert Counter(bytes.fromhex(r["payload"]) for r in table) == bad_values
    by_origin = {}
    for headers in (dict(m.headers) for m in dead):
        by_origin[(headers["abm.topic"].decode(), int(headers["abm.partition"]), int(headers["abm.offset"]))] = headers
    for row in table:
        headers = by_origin[(row["topic"], row["partition"], row["offset"])]
        assert (row["reason"], row["message"]) == (headers["abm.reason"].decode(), headers["abm.message"].decode())
