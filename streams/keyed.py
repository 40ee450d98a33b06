"""Keyed records in one producer batch per partition.

``producer.send`` costs ~25 µs a record in Python (the partitioner's metadata look-ups,
murmur2, a future per record resolved at the acknowledgement); appended to a batch, a
record costs ~9. That mattered for the records the agents send one per event or
contact: traffic spread over many accounts learned a new contact every ~4 events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aiokafka.partitioner import murmur2

KeyedRecord = tuple[bytes, bytes | None]  # key, value (None: a tombstone)
SentBatch = tuple[asyncio.Future[Any], int]  # the broker's acknowledgement (its result the first record's offset), records in the batch


def default_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's, aiokafka's) gives the key: a
    compacted topic keeps only a key's last record if every producer of the topic puts
    the key in the same partition."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def by_partition(records: Sequence[KeyedRecord], partitions: int) -> dict[int, list[KeyedRecord]]:
    """The records by their key's partition, each partition's in the order given."""
    grouped: dict[int, list[KeyedRecord]] = {}
    for record in records:
        partition = default_partition(record[0], partitions)
        bucket = grouped.get(partition)
        if bucket is None:
            bucket = grouped[partition] = []
        bucket.append(record)
    return grouped


def filled_batches(create_batch: Callable[[], Any], records: Sequence[KeyedRecord]) -> Iterator[Any]:
    """The records appended in order to as few batches (aiokafka's BatchBuilder) as they fit."""
    batch = create_batch()
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:  # full (an empty one takes any record)
            yield batch
            batch = create_batch()
            batch.append(key=key, value=value, timestamp=None)
    if batch.record_count():
        yield batch


async def send_batches(producer: Any, topic: str, partition: int, records: Sequence[KeyedRecord]) -> list[SentBatch]:
    """Sends the records to one partition through Faust's producer (its aiokafka one), in
    order, in as few batches as they fit; each batch's acknowledgement by the broker (its
    result the first record's offset) and how many records it holds."""
    aiokafka_producer = producer._ensure_producer()
    return [
        (await aiokafka_producer.send_batch(batch, topic, partition=partition), batch.record_count())
        for batch in filled_batches(aiokafka_producer.create_batch, records)
    ]
