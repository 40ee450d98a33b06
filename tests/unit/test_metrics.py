"""The latency histogram the worker exports: bucketing and cumulative export."""

from __future__ import annotations

import orjson
import pytest

from processors.fast_routing import native
from streams.metrics import LATENCY_BUCKETS_S, EventLatencies, LatencyHistogram
from streams.rows import forwarded_rows
from streams.sink import CLAIMED_EVENT_COLUMNS, CLAIMED_EVENTS, TableBuffer


def test_latencies_fall_in_their_buckets_and_export_cumulatively():
    histogram = LatencyHistogram()
    now = 1_000_000_000
    histogram.observe_ms(now, [now - 50, now - 100, now - 2_000, now - 40 * 86_400_000])
    family = histogram.family("x", "help")
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "x_bucket"}
    assert buckets["0.1"] == 2  # 0.05 s and exactly 0.1 s (le is inclusive)
    assert buckets["2"] == 3  # the latency target's bound is a bucket bound
    assert buckets["2.5"] == 3
    assert buckets[str(LATENCY_BUCKETS_S[-1])] == 3
    assert buckets["+Inf"] == 4
    assert abs(histogram.total_s - (0.05 + 0.1 + 2 + 40 * 86_400)) < 1e-6


def test_only_event_rows_are_observed():
    latencies = EventLatencies()
    row = [0] * len(CLAIMED_EVENT_COLUMNS)
    latencies.on_written("account_scores", TableBuffer(CLAIMED_EVENT_COLUMNS, [row]))
    assert sum(latencies.since_occurred.counts) == 0
    latencies.on_written(CLAIMED_EVENTS, TableBuffer(CLAIMED_EVENT_COLUMNS, [row, row]))
    assert sum(latencies.since_occurred.counts) == sum(latencies.since_received.counts) == 2
    made_from_forwarded = TableBuffer(CLAIMED_EVENT_COLUMNS, [row], encoded=[row, row])  # without native code: tuples
    latencies.on_written(CLAIMED_EVENTS, made_from_forwarded)
    assert sum(latencies.since_occurred.counts) == sum(latencies.since_received.counts) == 5


@pytest.mark.skipif(native is None, reason="installed without native code (ABM_PURE_PYTHON=1)")
def test_native_rows_count_their_latencies_as_the_histogram_does():
    now = 1_000_000_000
    ages_ms = [0, 50, 100, 101, 2_000, 2_001, 40 * 86_400_000, -5]  # on bounds, past the last, ahead of now
    events = [
        {"event_id": f"e{i}", "type": "page_view", "source": "s", "account_id": "a", "occurred_at_ms": now - age, "received_at_ms": now - age // 2}
        for i, age in enumerate(ages_ms)
    ]
    encoded = forwarded_rows({(0, 0): (orjson.dumps(events), 1)}, [(0, 0, i) for i in range(len(events))])
    for received, key in ((False, "occurred_at_ms"), (True, "received_at_ms")):
        expected = LatencyHistogram()
        expected.observe_ms(now, [event[key] for event in events])
        counts, total_s = encoded.latencies(now, LATENCY_BUCKETS_S, received)
        assert counts == expected.counts
        assert abs(total_s - expected.total_s) < 1e-9
