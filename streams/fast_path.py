"""Whole fetched batches from the consumer to the agents, past Faust's per-message path.

Faust hands every fetched message on by itself: two tasks in ``wait_first`` per message,
a decode, an Event, a queue put, a stream iteration with its sensors, a processor call
per message in ``noack_take``. That machinery, not our work, capped a worker at a few
thousand events/s. Our agents process batches and never acknowledge through Faust (the
Checkpoint commits), so none of it is needed for their topics.

``BatchConsumer`` keeps Faust's consumer (group membership, rebalances, flow control,
seeks, table recovery) and changes only what happens to a fetch: the messages of topics
an agent reads through ``FetchedBatches`` go to that agent's feed as lists, and an agent
with enough waiting has its topics left out of the next fetches. The agent's messages carry their consumer generation, and the
OffsetGuard drops those fetched before a rebalance exactly as before.

Changelog records of a table partition being recovered are written to its store one
fetch at a time (``restore``), where Faust's route costs ~100 µs a record (a Faust
message and event, two tasks, a queue, a timeout and a scan of every partition's
progress per record): a worker that took a million accounts over spent ~100 s there.
The record that completes the recovery still takes Faust's route, so that Faust's own
loop ends the recovery. Other records (none expected) take Faust's route too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from itertools import repeat
from time import monotonic
from typing import Any

import faust
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import ensure_aiokafka_TP
from faust.types import TP

QUEUED_BATCHES = 2  # per agent waiting, beside the one it processes: then its topics are not fetched
# A fetch answers once this much is there, or after this long (Faust: 1 byte, 1.5 s).
# Live traffic then arrives in fewer, larger batches: in the latency bench at 9.6k
# events/s its p99 went from the 5-10 s bucket to the 2.5-5 s one.
FETCH_MIN_BYTES = 256 * 1024
FETCH_MAX_WAIT_MS = 50
HELD_BACK_FETCH_S = FETCH_MAX_WAIT_MS / 1000  # the longest wait for a fetch while some topics are held back


class Fetched:
    """A consumed record as the agents, the OffsetGuard and the Checkpoint use it: a
    quarter of the cost of Faust's ConsumerMessage, which carries ack bookkeeping."""

    __slots__ = ("topic", "partition", "offset", "timestamp_ms", "key", "value", "headers", "tp", "generation_id")

    def __init__(self, tp: TP, record: Any, generation_id: int) -> None:
        self.topic = record.topic
        self.partition = record.partition
        self.offset = record.offset
        self.timestamp_ms = record.timestamp
        self.key = record.key
        self.value = record.value
        self.headers = record.headers
        self.tp = tp
        self.generation_id = generation_id


class AgentFeed:
    """An agent's fetched batches in order: the consumer appends, the agent takes."""

    __slots__ = ("topics", "batch_size", "batches", "arrived")

    def __init__(self, topics: frozenset[str], batch_size: int) -> None:
        self.topics = topics
        self.batch_size = batch_size  # the most messages in one batch
        self.batches: deque[list[Fetched]] = deque()
        self.arrived = asyncio.Event()


class FetchedBatches:
    """The agents' feeds of fetched messages, by the topic names they read.

    Delivering a fetch never waits for an agent: an agent with ``QUEUED_BATCHES`` waiting
    has its topics held back from the next fetches instead, until it takes one. Waiting
    for the slowest agent's queue (the ingest agent behind a raw backlog) starved the
    others: the score agent got no forwarded message for the first ~3 s of a 300k backlog,
    and the two stages ran one after the other instead of side by side."""

    def __init__(self, max_events: int) -> None:
        self._max_events = max_events
        self._feeds: dict[str, AgentFeed] = {}
        self.held_back: set[str] = set()  # topics not to fetch now
        self.released = asyncio.Event()  # an agent's topics are fetched again

    def __contains__(self, topic: str) -> bool:
        return topic in self._feeds

    def feed_for(self, topic: str) -> AgentFeed:
        return self._feeds[topic]

    def add(self, feed: AgentFeed, messages: list[Fetched]) -> None:
        """Appends the messages as batches; holds the agent's topics back when enough wait."""
        for start in range(0, len(messages), feed.batch_size):
            feed.batches.append(messages[start : start + feed.batch_size])
        feed.arrived.set()
        if len(feed.batches) >= QUEUED_BATCHES:
            self.held_back |= feed.topics

    async def __call__(self, stream: faust.StreamT, events_per_message: int = 1) -> AsyncIterator[list[Fetched]]:
        """Batches of the agent's messages, each in offset order per partition, of at most
        ``batch_max_events`` events (messages carrying up to ``events_per_message``).

        Iterating the agent's channel is what subscribes its topics through Faust's
        conductor; its messages then come here instead of through the stream.
        """
        channel = aiter(stream.channel)  # type: ignore[arg-type]
        feed = AgentFeed(frozenset(channel.topics), max(1, self._max_events // events_per_message))  # type: ignore[attr-defined]
        self._feeds.update(dict.fromkeys(feed.topics, feed))
        while True:
            while not feed.batches:
                feed.arrived.clear()
                await feed.arrived.wait()
            batch = feed.batches.popleft()
            if len(feed.batches) < QUEUED_BATCHES and not self.held_back.isdisjoint(feed.topics):
                self.held_back -= feed.topics
                self.released.set()
            yield batch


class BatchConsumerThread(AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes neither; aiokafka reads them when it starts the consumer's fetcher.
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def _commit(self, offsets: Mapping[TP, int | OffsetAndMetadata]) -> bool:
        """Faust's commit, keeping the metadata the checkpoint commits with an offset
        (Faust commits every offset with empty metadata)."""
        assignment = self.assignment()
        positions = {tp: p if isinstance(p, OffsetAndMetadata) else OffsetAndMetadata(p, "") for tp, p in offsets.items() if tp in assignment}
        self.tp_last_committed_at.update(dict.fromkeys(positions, monotonic()))
        try:
            await self._ensure_consumer().commit({ensure_aiokafka_TP(tp): p for tp, p in positions.items()})
        except CommitFailedError as exc:
            if "already rebalanced" in str(exc):
                return False
            self.log.exception("Committing raised exception: %r", exc)
            await self.crash(exc)
            return False
        except Exception as exc:  # as Faust's own commit: the worker cannot go on
            self.log.exception("Committing raised exception: %r (assignment: %r)", exc, assignment)
            await self.crash(exc)
            return False
        return True


class BatchConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer, delivering batched topics one fetch at a time."""

    batches: FetchedBatches

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # the Fetcher service's loop
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._next_records(timeout=1.0)
                await self.sleep(0)
                if records and not self.should_stop:
                    if self.flow_active:
                        await self._deliver(records, active)
                    else:  # a rebalance began: the fetch is stale, resume from the commits
                        await self._seek_back_to_committed()
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _next_records(self, timeout: float) -> tuple[dict[TP, list[Any]], set[TP]]:
        """Faust's ``_wait_next_records``, past the partitions of the topics held back."""
        if not self.flow_active:
            await self.wait(self.can_resume_flow)  # type: ignore[arg-type]
        released = self.batches.released
        released.clear()  # before the topics are read: a release from now on wakes the wait
        held_back = self.batches.held_back
        active = self._get_active_partitions()
        if held_back:
            active = {tp for tp in active if tp.topic not in held_back}
            # a fetch in flight does not see a release: it must not wait long for the rest
            timeout = min(timeout, HELD_BACK_FETCH_S)
        if not active:  # every agent has enough waiting (or nothing is assigned)
            await self.wait(released.wait(), timeout=timeout)
            return {}, active
        records: dict[TP, list[Any]] = await self._getmany(active_partitions=active, timeout=timeout)
        return records, active

    async def _seek_back_to_committed(self) -> None:
        # The assignment can change under the seek (a partition revoked meanwhile). That
        # is harmless: table recovery seeks every newly assigned partition to its
        # committed offset before the flow resumes, so only a crash here would hurt.
        try:
            await self.perform_seek()
        except KafkaError as exc:  # IllegalStateError: no current assignment for a partition
            self.log.warning("Seek back to committed offsets deferred to recovery: %r", exc)

    async def _deliver(self, records: dict[TP, list[Any]], active: set[TP] | None) -> None:
        generation = self.app.consumer_generation_id
        read_offset = self._read_offset
        batches = self.batches
        to_message = self._to_message
        track_end_offset = self.app.monitor.track_tp_end_offset
        by_feed: dict[int, tuple[AgentFeed, list[Fetched]]] = {}
        for tp, tp_records in records.items():
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            last = read_offset[tp]
            if last is not None:
                tp_records = [record for record in tp_records if record.offset >= last]
            if not tp_records:
                continue
            track_end_offset(tp, self.highwater(tp))
            if tp.topic in batches:
                feed = batches.feed_for(tp.topic)
                by_feed.setdefault(id(feed), (feed, []))[1].extend(Fetched(tp, r, generation) for r in tp_records)
                read_offset[tp] = tp_records[-1].offset
                continue
            recovery = self.app.tables.recovery
            if recovery.in_recovery and tp in recovery.active_tps:
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    return  # a rebalance restarts the recovery from the stored offsets
                read_offset[tp] = tp_records[-1].offset
                tp_records = restore(recovery, tp, tp_records)  # what is left for Faust's route
            for message in map(to_message, repeat(tp), tp_records):  # Faust's own route
                    if not self.flow_active or self.app.consumer_generation_id != generation:
                        return
                    await self.wait_first(self.callback(message), self.suspend_flow.wait())
                    read_offset[tp] = message.offset
        for feed, messages in by_feed.values():
            batches.add(feed, messages)


class RestoredRecord:
    """A changelog record as a table's ``apply_changelog_batch`` reads it (an event's message)."""

    __slots__ = ("message",)

    def __init__(self, tp: TP, record: Any) -> None:
        self.message = Fetched(tp, record, generation_id=0)


def restore(recovery: Any, tp: TP, records: list[Any]) -> list[Any]:
    """Writes a recovering partition's fetched changelog records to its table's store in
    one batch (which also stores the partition's changelog offset), and moves Faust's
    recovery progress past them; returns the records Faust's own route must take: the
    last one, when it completes the recovery (Faust's loop then ends it)."""
    seen = recovery.active_offsets.get(tp, -1)
    fresh = [record for record in records if record.offset > seen]
    if not fresh:
        return []
    recovery.active_offsets[tp] = fresh[-1].offset  # for the question: does this fetch complete it?
    routed = [] if recovery.need_recovery() else fresh[-1:]
    direct = fresh[: len(fresh) - len(routed)]
    recovery.active_offsets[tp] = direct[-1].offset if direct else seen
    if direct:
        recovery.tp_to_table[tp].apply_changelog_batch([RestoredRecord(tp, record) for record in direct])
    return routed


class PulseApp(faust.App):
    """A Faust app whose consumer hands the agents' topics over in fetched batches."""

    def __init__(self, *args: Any, batch_max_events: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetched = FetchedBatches(batch_max_events)

    def _new_consumer(self) -> BatchConsumer:
        consumer = BatchConsumer(
            self.transport,
            callback=self.topics.on_message,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
            loop=self.transport.loop,
        )
        consumer.batches = self.fetched
        return consumer
