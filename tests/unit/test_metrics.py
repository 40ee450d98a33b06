"""The latency histogram the worker exports: bucketing and cumulative export."""

from __future__ import annotations

from streams.metrics import LATENCY_BUCKETS_S, EventLatencies, LatencyHistogram
from streams.sink import CLAIMED_EVENT_COLUMNS, CLAIMED_EVENTS


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
    latencies.on_written("account_scores", [row])
    assert sum(latencies.since_occurred.counts) == 0
    latencies.on_written(CLAIMED_EVENTS, [row, row])
    assert sum(latencies.since_occurred.counts) == sum(latencies.since_received.counts) == 2
