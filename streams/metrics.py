"""Counters the worker keeps about itself, served as JSON at /abm/status and as
Prometheus metrics at /metrics."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from streams.sink import CLAIMED_EVENT_COLUMNS, CLAIMED_EVENTS, TableBuffer

EVENT_OCCURRED_AT = CLAIMED_EVENT_COLUMNS.index("occurred_at")
EVENT_RECEIVED_AT = CLAIMED_EVENT_COLUMNS.index("received_at")


@dataclass(slots=True)
class PipelineStats:
    raw_in: int = 0
    valid_by_type: dict[str, int] = field(default_factory=dict)
    invalid_by_reason: dict[str, int] = field(default_factory=dict)
    unresolved: int = 0  # valid events no account could be found for (kept, see unresolved_pending)
    resolved_later: int = 0  # unresolved events re-routed once their domain became known
    contacts_learned: int = 0  # contact -> account links learned from events and published
    forwarded: int = 0
    redelivered_skipped: int = 0  # offsets delivered again after a seek (not reprocessed)
    stale_dropped: int = 0  # fetched before a rebalance: left to the partition's owner
    applied: int = 0
    duplicates: int = 0  # same (source, event id) seen before: counted nowhere else
    transitions: int = 0
    transitions_by_stages: dict[str, int] = field(default_factory=dict)  # "from->to" -> count

    def add_counts(self, target: dict[str, int], counts: dict[str, int]) -> None:
        for key, n in counts.items():
            target[key] = target.get(key, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class LagSnapshot:
    """Consumer lag as last measured from the broker (refreshed by a timer, not by consumption)."""

    by_partition: list[Any] = field(default_factory=list)  # streams.lag.PartitionLag
    measured_at: float = 0.0  # unix seconds; 0 = never
    oldest_waiting_ms: dict[str, int] = field(default_factory=dict)  # topic -> Kafka timestamp of its oldest uncommitted message


# Seconds from an event's time to its row being in ClickHouse: sub-second when live, days
# for replayed history.
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)


@dataclass(slots=True)
class LatencyHistogram:
    """Cumulative-on-export bucket counts of latencies in seconds (cheap to feed in bulk)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total_s: float = 0.0

    def observe_ms(self, now_ms: int, times_ms: Iterable[int]) -> None:
        counts = self.counts
        for at in times_ms:
            latency = (now_ms - at) / 1000
            counts[bisect.bisect_left(LATENCY_BUCKETS_S, latency)] += 1
            self.total_s += latency

    def add(self, counts: list[int], total_s: float) -> None:
        """Latencies counted elsewhere, per bucket (``bisect_left`` as ``observe_ms``)."""
        self.counts = [mine + theirs for mine, theirs in zip(self.counts, counts)]
        self.total_s += total_s

    def family(self, name: str, help_text: str) -> HistogramMetricFamily:
        running, buckets = 0, []
        for bound, count in zip((*map(str, LATENCY_BUCKETS_S), "+Inf"), self.counts):
            running += count
            buckets.append((bound, running))
        return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=self.total_s)


@dataclass(slots=True)
class EventLatencies:
    """End-to-end latency of the event rows ClickHouse acknowledged."""

    since_occurred: LatencyHistogram = field(default_factory=LatencyHistogram)
    since_received: LatencyHistogram = field(default_factory=LatencyHistogram)

    def on_written(self, table: str, buffer: TableBuffer) -> None:
        if table != CLAIMED_EVENTS:
            return
        now_ms = int(time.time() * 1000)
        rows = buffer.rows + (buffer.encoded if isinstance(buffer.encoded, list) else [])
        self.since_occurred.observe_ms(now_ms, (row[EVENT_OCCURRED_AT] for row in rows))
        self.since_received.observe_ms(now_ms, (row[EVENT_RECEIVED_AT] for row in rows))
        if buffer.encoded is not None and not isinstance(buffer.encoded, list):  # native rows: counted there
            self.since_occurred.add(*buffer.encoded.latencies(now_ms, LATENCY_BUCKETS_S, False))
            self.since_received.add(*buffer.encoded.latencies(now_ms, LATENCY_BUCKETS_S, True))


class PipelineCollector:
    """Prometheus metrics read from the worker's own counters at scrape time: nothing is
    added to the hot path."""

    def __init__(
        self,
        stats: PipelineStats,
        sink: Any,
        checkpoint: Any,
        lag: LagSnapshot,
        latencies: EventLatencies,
        state_sizes: Callable[[], dict[str, int]] = dict,
        watermarks: Callable[[], dict[int, int]] = dict,
    ) -> None:
        self._stats = stats
        self._sink = sink
        self._checkpoint = checkpoint
        self._lag = lag
        self._latencies = latencies
        self._state_sizes = state_sizes  # gauge name suffix -> value, read at scrape time
        self._watermarks = watermarks  # by-account partition -> watermark (ms), read at scrape time

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        for name, value, help_text in (
            ("abm_events_in", s.raw_in, "raw messages taken by ingest"),
            ("abm_events_unresolved", s.unresolved, "valid events no account was found for"),
            ("abm_events_resolved_later", s.resolved_later, "unresolved events re-routed once resolvable"),
            ("abm_events_applied", s.applied, "events folded into account state"),
            ("abm_events_duplicate", s.duplicates, "events dropped as repeats of (source, event id)"),
            ("abm_contacts_learned", s.contacts_learned, "contact to account links learned and published"),
            ("abm_stage_transitions", s.transitions, "funnel stage changes"),
            ("abm_sink_rows", self._sink.stats.rows_written, "rows inserted into ClickHouse"),
            ("abm_sink_inserts", self._sink.stats.inserts, "ClickHouse inserts"),
            ("abm_sink_failures", self._sink.stats.failures, "failed ClickHouse inserts (each retried)"),
            ("abm_checkpoints", self._checkpoint.commits, "completed checkpoints (offsets committed)"),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        yield _labelled(CounterMetricFamily("abm_events_valid", "valid events by type", labels=["type"]), s.valid_by_type)
        yield _labelled(CounterMetricFamily("abm_events_invalid", "dead-lettered messages by reason", labels=["reason"]), s.invalid_by_reason)
        moves = CounterMetricFamily("abm_stage_transitions_by_stages", "funnel stage changes by stages", labels=["from_stage", "to_stage"])
        for move, value in sorted(s.transitions_by_stages.items()):
            moves.add_metric(move.split("->"), value)
        yield moves
        yield self._latencies.since_occurred.family("abm_event_latency_seconds", "occurred_at to the row acknowledged by ClickHouse")
        yield self._latencies.since_received.family("abm_event_pipeline_latency_seconds", "received by the worker to the row acknowledged by ClickHouse")
        sizes = GaugeMetricFamily("abm_state", "sizes of the worker's state and recovery backlog", labels=["what"])
        for what, value in sorted(self._state_sizes().items()):
            sizes.add_metric([what], value)
        yield sizes
        marks = GaugeMetricFamily(
            "abm_watermark_timestamp_seconds",
            "event time up to which a score partition's accounts are settled: its latest event time minus the allowed lateness",
            labels=["partition"],
        )
        for partition, mark_ms in sorted(self._watermarks().items()):
            marks.add_metric([str(partition)], mark_ms / 1000)
        yield marks
        yield GaugeMetricFamily("abm_sink_failing", "1 while ClickHouse inserts fail", value=int(self._sink.failing))
        yield GaugeMetricFamily("abm_checkpoint_pending_events", "consumed, not yet committed", value=self._checkpoint.pending_events)
        yield GaugeMetricFamily("abm_checkpoint_last_timestamp_seconds", "time of the last checkpoint", value=self._checkpoint.last_commit_at or 0)
        lag = GaugeMetricFamily("abm_consumer_lag", "log-end minus committed offset", labels=["topic", "partition"])
        for item in self._lag.by_partition:
            lag.add_metric([item.topic, str(item.partition)], item.lag)
        yield lag
        seconds = GaugeMetricFamily("abm_consumer_lag_seconds", "age of the oldest uncommitted message", labels=["topic"])
        for topic in sorted({item.topic for item in self._lag.by_partition}):
            oldest = self._lag.oldest_waiting_ms.get(topic)
            seconds.add_metric([topic], 0.0 if oldest is None else max(0.0, self._lag.measured_at - oldest / 1000))
        yield seconds
        yield GaugeMetricFamily("abm_consumer_lag_measured_timestamp_seconds", "when lag was last measured", value=self._lag.measured_at)


def _labelled(family: CounterMetricFamily, counts: dict[str, int]) -> CounterMetricFamily:
    for label, value in sorted(counts.items()):
        family.add_metric([label], value)
    return family
