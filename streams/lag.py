"""Consumer lag from the broker itself: committed offset vs. log-end offset."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.kafka_admin import topic_partitions


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int  # -1 when the group has committed nothing yet
    log_end: int
    metadata: str = ""  # committed with the offset (streams.staging: a watermark)

    @property
    def lag(self) -> int:
        return self.log_end - max(self.committed, 0)


async def group_lag(bootstrap: str, group: str, topics: list[str]) -> list[PartitionLag]:
    """Lag of ``group`` on every partition of ``topics`` (partitions it never committed count in full)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:  # closed also when they cannot start: the worker asks every few seconds, broker down or not
        await consumer.start()
        await admin.start()
        committed = await admin.list_consumer_group_offsets(group)
        partitions = await topic_partitions(admin, topics)
        log_end = await consumer.end_offsets(partitions)
    finally:
        await admin.close()
        await consumer.stop()
    return [
        PartitionLag(tp.topic, tp.partition, committed[tp].offset, log_end[tp], committed[tp].metadata)
        if tp in committed
        else PartitionLag(tp.topic, tp.partition, -1, log_end[tp])
        for tp in partitions
    ]


def total_lag(lags: list[PartitionLag]) -> int:
    return sum(item.lag for item in lags)


def lag_rows(group: str, lags: list[PartitionLag]) -> list[dict[str, object]]:
    """One row per partition, named like Kafka's consumer-group command; current_offset
    is None where the group has committed nothing (its lag is then the whole log)."""
    return [
        {
            "group": group,
            "topic": item.topic,
            "partition": item.partition,
            "current_offset": item.committed if item.committed >= 0 else None,
            "log_end_offset": item.log_end,
            "lag": item.lag,
        }
        for item in lags
    ]


def lag_table(rows: list[dict[str, object]]) -> str:
    headers = ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG")
    keys = ("group", "topic", "partition", "current_offset", "log_end_offset", "lag")
    cells = [headers] + [tuple("-" if row[key] is None else str(row[key]) for key in keys) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


async def oldest_waiting_ms(bootstrap: str, lags: list[PartitionLag]) -> dict[str, int]:
    """Per topic, the Kafka timestamp (ms) of the oldest message not yet committed: the
    first message after the committed offset of each lagging partition (a partition whose
    head does not arrive within 3 s is left out of this measurement)."""
    lagging = {TopicPartition(item.topic, item.partition): max(item.committed, 0) for item in lags if item.lag > 0}
    if not lagging:
        return {}
    # Only each head is read: the broker still returns a partition's first record batch
    # whole. With the default 1 MiB per partition, a backlog's heads were fetched,
    # decompressed and decoded on the event loop every lag_refresh_s (up to ~8 % of its
    # samples in a py-spy profile, which slows the worker; not measurable end to end).
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=1)
    try:
        await consumer.start()
        consumer.assign(list(lagging))
        for tp, offset in lagging.items():
            consumer.seek(tp, offset)
        oldest: dict[str, int] = {}
        pending = set(lagging)
        deadline = asyncio.get_running_loop().time() + 3.0
        while pending and asyncio.get_running_loop().time() < deadline:  # each fetch brings some heads
            batches = await consumer.getmany(*pending, timeout_ms=200, max_records=len(pending) * 10)
            for tp, records in batches.items():
                if records and tp in pending:
                    pending.discard(tp)
                    oldest[tp.topic] = min(oldest.get(tp.topic, records[0].timestamp), records[0].timestamp)
        return oldest
    finally:
        await consumer.stop()
