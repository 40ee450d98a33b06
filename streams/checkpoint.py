"""The checkpoint: the one place that owns the commit protocol.

Agents process batches into memory (sink buffers, account states, produced messages)
and hand the consumed Kafka messages to the checkpoint. A checkpoint first takes, in one
instant under the agents' lock, everything they did since the previous one (a
``CheckpointBatch``), then makes it durable in this order:

  1. flush the ClickHouse sink (account rows of the changed states included);
  2. write the changed account states to the table store and its changelog topic;
  3. flush the producer, and wait for the broker's acknowledgement of every record sent
     for the batch: forwarded events, dead letters, transitions (all through ``send``)
     and changelog messages;
  4. commit the offsets of the consumed events, each with its partition's metadata as
     of the take (``offset_metadata``: the score partitions' watermarks).

An offset is therefore committed only once everything derived from it is stored. The
four steps run while the agents go on with the next batches (they wait for ClickHouse,
the broker and a thread, not for Python), but at most one checkpoint is in flight: the
next one takes only once it has ended, so the steps of consecutive checkpoints never
interleave. In a backlog (a checkpoint due by its rows) the agents go on past a due
checkpoint while the one in flight runs, until a second one's worth is pending (twice
the rows or the interval): they waited ~6 % of the time on inserts, which run outside
the GIL. Otherwise they wait for it, and a stalled store stops them within an interval
(two in a backlog).

Rows go to ClickHouse at every checkpoint (``interval_s``: the latency of the data);
states are written less often (``state_interval_s``), because with every account
touched each second, serialising and storing all of them was most of a live worker's
fixed cost. Step 2 is then skipped, and so are the commits of the events whose effects
live in states (``track(..., in_state=True)``): they wait for the checkpoint that writes
the states, as they would after a crash. States are also written when more of them wait
than the state cache holds, when a checkpoint finds nothing newly consumed, as soon as
a checkpoint of rows only ends with nothing consumed since its take (a drained backlog
is committed at once, not an interval later), and on revocation and shutdown
(``commit``). At low rates that can be most checkpoints, and then few states
change. After a crash the events since the last state write come again: their event
rows are skipped by the restart guard (by position), account rows and stage transitions
are derived again exactly as they were (ReplacingMergeTree tables: one row each under
FINAL). Exactly, because transitions depend only on each partition's forwarded
messages, not on how they were fetched (streams.staging); before that, a replay could
derive other transitions for events later than the allowed lateness than those already
stored.

A checkpoint that fails (a record the broker refused, a store that raised) stops the
worker (``fail``): its batch's events were taken from memory, and a later checkpoint
would commit past them. Nothing more is committed; the next start redelivers everything
after the last commit. An agent that raises stops it the same way.

Nothing is acknowledged to Faust, so its own commits (on rebalance or stop) have nothing
to commit; its periodic commit timer is switched off in streams.app.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka.structs import OffsetAndMetadata

from streams.keyed import KeyedRecord, by_partition, send_batches
from streams.offsets import OffsetGuard
from streams.sink import ClickHouseSink, TableBuffer
from streams.state import StateChange, StoredStates

log = logging.getLogger(__name__)


class Consumed(NamedTuple):
    """Where a consumed message was: all a checkpoint needs of it."""

    tp: Any
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class CheckpointBatch:
    """What one checkpoint makes durable, taken at one instant."""

    consumed: list[Any]  # Kafka messages consumed since the previous checkpoint: name its inserts
    positions: dict[Any, OffsetAndMetadata]  # what it commits, per partition
    rows: dict[str, TableBuffer]  # ClickHouse rows by table
    states: list[StateChange]  # changed account states as bytes; none when not their turn
    sent: list[Awaitable[Any]]  # the broker's acknowledgements of the records sent for it
    processed: dict[Any, int]  # the OffsetGuard's extent of the partitions it commits


class CheckpointFailed(RuntimeError):
    """A checkpoint could not make its batch durable: this worker commits nothing more."""


class Checkpoint:
    def __init__(
        self,
        app: Any,
        sink: ClickHouseSink,
        states: StoredStates,
        guard: OffsetGuard,
        account_rows: Callable[[], list[Sequence[Any]]],
        offset_metadata: Callable[[Any], str],
        max_rows: int,
        interval_s: float,
        state_interval_s: float,
        on_failure: Callable[[BaseException], Awaitable[None]],
    ) -> None:
        self._app = app
        self._sink = sink
        self._states = states
        self.guard = guard
        self._account_rows = account_rows
        self._offset_metadata = offset_metadata
        self._max_rows = max_rows
        self._interval_s = interval_s
        self._state_interval_s = state_interval_s
        self._pending: list[Any] = []  # consumed messages not yet taken by a checkpoint
        self._pending_in_state: list[Any] = []  # the same, their effects in account states
        self._awaiting_states: list[Any] = []  # taken, committed with the next states written
        self._sent: list[Awaitable[Any]] = []  # acknowledgements of records sent since the take
        self._on_failure = on_failure  # stops the worker
        self.failure: BaseException | None = None  # set once; nothing is committed after it
        self._run_id = uuid.uuid4().hex  # this process's checkpoints: see _dedup_token
        self._in_flight: asyncio.Task[None] | None = None  # the checkpoint being made durable
        self._drained: asyncio.Task[None] | None = None  # writes a drained backlog's states (held: the loop keeps tasks weakly)
        self._started_at = self._states_taken_at = time.monotonic()
        self.lock = asyncio.Lock()  # agents hold it while they change pending work
        self._handing_over = asyncio.Event()  # a revocation waits for the lock: agents stop waiting
        self.closed = False  # set by the final checkpoint: no more work may start
        self.commits = 0
        self.last_commit_at: float | None = None

    def track(self, messages: Iterable[Any], in_state: bool = False) -> None:
        """Consumed messages, processed; ``in_state``: their effects live in account states
        (kept without their payloads, which may wait for several checkpoints)."""
        if in_state:
            self._pending_in_state.extend(Consumed(m.tp, m.topic, m.partition, m.offset) for m in messages)
        else:
            self._pending.extend(messages)

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None, headers: Any = None) -> None:
        """Sends a record derived from the events being processed; the offsets of those
        events are committed only once the broker has acknowledged it."""
        self._sent.append(await self._app.producer.send(topic, key, value, partition, None, headers))

    async def send_keyed(self, topic: str, records: Sequence[KeyedRecord]) -> None:
        """``send`` for many keyed records at once, in one batch per partition (a third of
        the cost a record, streams.keyed), each partitioned by its key as Kafka's default
        partitioner does (as ``send`` without a partition)."""
        if not records:
            return
        partitions = len(await self._app.producer._ensure_producer().partitions_for(topic))
        for partition, keyed in by_partition(records, partitions).items():
            self._sent += [ack for ack, _ in await send_batches(self._app.producer, topic, partition, keyed)]

    async def wait_sent(self) -> None:
        """Waits for the broker's acknowledgement of every record sent so far."""
        await _acknowledged(self._sent)

    @property
    def pending_events(self) -> int:
        return len(self._pending) + len(self._pending_in_state) + len(self._awaiting_states)

    def _has_work(self) -> bool:
        # changed states alone too: fall-backs and held events the watermark settled
        return self._consumed_since_take() or bool(self._sink.pending_rows or self._states.changed)

    def _owes_states(self) -> bool:
        return bool(self._awaiting_states or self._states.unwritten)

    def _consumed_since_take(self) -> bool:
        return bool(self._pending or self._pending_in_state)

    def _states_due(self) -> bool:
        return (
            self._states.over_cache
            or time.monotonic() - self._states_taken_at >= self._state_interval_s
            or not self._consumed_since_take()  # nothing new: the backlog is drained
        )

    def due(self) -> bool:
        if self._states.over_cache:  # memory holds no more unwritten states
            return True
        if self._has_work():
            return self._sink.pending_rows >= self._max_rows or time.monotonic() - self._started_at >= self._interval_s
        return self._owes_states() and time.monotonic() - self._started_at >= self._interval_s

    async def commit(self) -> None:
        """Make everything done so far durable, states included, and wait for it; the
        caller holds ``lock``."""
        await self._start(with_states=True)
        await self._finish_in_flight()

    async def commit_if_due(self) -> None:
        """Start a checkpoint if one is due; the caller holds ``lock``. While one is in
        flight, a due one waits for it (unless a backlog may go on), and not when a
        revocation is waiting for the lock: while the store is down the one in flight
        retries its insert for as long, and the revocation would wait with it."""
        if self.due():
            if self._in_flight is not None and not self._in_flight.done() and self._backlog_may_go_on():
                return  # the agents go on; a later batch starts it
            if await self._in_flight_ended_unless_handing_over():
                await self._start(with_states=False)
        elif self._in_flight is not None and self._in_flight.done():
            await self._finish_in_flight()  # its failure surfaces here, in an agent

    def _backlog_may_go_on(self) -> bool:
        """Due by its rows (events come faster than checkpoints take them: a backlog), with
        less than a second checkpoint's worth pending, and no more unwritten states than
        the cache holds: going on, a backlog of new accounts (one event each) filled
        memory with ~50k unwritten states past it (~2.4 KiB each), over 1 GiB at the
        peak of a million accounts. Live traffic, due by the time, still
        waits: bigger checkpoints delayed its rows (p99 1.97 s from receipt to ClickHouse
        at 12.9k events/s, against ~1.5 s)."""
        return (
            self._max_rows <= self._sink.pending_rows < 2 * self._max_rows
            and time.monotonic() - self._started_at < 2 * self._interval_s
            and not self._states.over_cache
        )

    async def _in_flight_ended_unless_handing_over(self) -> bool:
        task = self._in_flight
        if task is None or task.done():
            return True
        handing_over = asyncio.ensure_future(self._handing_over.wait())
        try:
            await asyncio.wait((task, handing_over), return_when=asyncio.FIRST_COMPLETED)
        finally:
            handing_over.cancel()
        return task.done()

    async def _start(self, with_states: bool) -> None:
        await self._finish_in_flight()
        if self.failure is not None:
            raise CheckpointFailed("an earlier checkpoint failed; this worker commits nothing more") from self.failure
        states_now = with_states or self._states_due()
        batch = self._take(states_now)
        if batch is not None:
            self._in_flight = asyncio.create_task(self._stopping_on_error(self._make_durable(batch)), name="checkpoint")
            if not states_now:
                self._in_flight.add_done_callback(self._write_states_if_drained)

    def _write_states_if_drained(self, checkpoint: asyncio.Task[None]) -> None:
        """A checkpoint of rows only has ended: with nothing consumed since its take, the
        backlog is drained, and its states (and the commit of the events behind them) need
        not wait for the next interval (~0.75-1.5 s, a tenth of a 300k backlog)."""
        if checkpoint.cancelled() or checkpoint.exception() is not None or self.closed or self.failure is not None:
            return
        if not self._consumed_since_take() and self._owes_states():
            self._drained = asyncio.create_task(self._stopping_on_error(self._commit_drained()), name="drained checkpoint")

    async def _commit_drained(self) -> None:
        async with self.lock:
            if not (self.closed or self._consumed_since_take()) and self._owes_states():
                await self._start(with_states=True)

    async def fail(self, reason: BaseException) -> None:
        """Stops the worker: work taken from memory that is not durable could otherwise be
        committed past by a later checkpoint. Its events come again on the next start."""
        if self.failure is not None:
            return
        self.failure = reason
        log.critical("stopping the worker: %r; nothing after the last commit is committed", reason)
        await self._on_failure(reason)

    def stopping_on_error(self, agent: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """Wraps an agent: one that raises has taken messages it never handed to the
        checkpoint, and a later checkpoint would commit past them. It stops the worker and
        ends: Faust would restart an agent that raised, and a restart racing the worker's
        shutdown left the shutdown waiting for good."""

        @functools.wraps(agent)
        async def stopping(stream: Any) -> None:
            with contextlib.suppress(Exception):  # failed: logged and stopping
                await self._stopping_on_error(agent(stream))

        return stopping

    async def _stopping_on_error(self, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as exc:
            await self.fail(exc)
            raise

    async def _finish_in_flight(self) -> None:
        task, self._in_flight = self._in_flight, None
        if task is not None:
            await task

    def _take(self, with_states: bool) -> CheckpointBatch | None:
        self._started_at = time.monotonic()
        if not (self._has_work() or (with_states and self._owes_states())):
            return None
        self._sink.add("account_scores", self._account_rows())
        free, in_state = self._pending, self._pending_in_state
        self._pending, self._pending_in_state = [], []
        self._awaiting_states += in_state
        processed = self.guard.processed()
        if with_states:
            to_commit, self._awaiting_states = free + self._awaiting_states, []
            states = self._states.take_changes()
            self._states_taken_at = self._started_at
        else:  # the partitions of events waiting for their states keep their committed extent
            to_commit, states = free, []
            waiting = {message.tp for message in self._awaiting_states}
            processed = {tp: offset for tp, offset in processed.items() if tp not in waiting}
        consumed = free + in_state
        positions = {tp: OffsetAndMetadata(offset, self._offset_metadata(tp)) for tp, offset in next_offsets(to_commit).items()}
        sent, self._sent = self._sent, []
        return CheckpointBatch(consumed, positions, self._sink.take(), states, sent, processed)

    async def _make_durable(self, batch: CheckpointBatch) -> None:
        # 1. flush the ClickHouse sink
        # a batch of no consumed event (settled states, re-resolutions) has nothing to name it by
        token = _dedup_token(self._run_id, batch.consumed) if batch.consumed else uuid.uuid4().hex
        await self._sink.write(batch.rows, token)
        # 2. write state changelogs (and the table's store once the broker has them)
        await self._states.write(batch.states)
        # 3. flush the producer, and wait for every record: a refused one fails its future
        # only, and a flush returns with batches still unacknowledged
        await self._app.producer.flush()
        await _acknowledged(batch.sent)
        # 4. commit the offsets of the consumed messages
        if batch.positions:
            await self._app.consumer._commit(batch.positions)
        self.guard.mark_committed(batch.processed)
        self.commits += 1
        self.last_commit_at = time.time()

    async def close(self) -> None:
        """The final checkpoint on shutdown; the caller holds ``lock``.

        Agents keep draining their buffers until Faust stops them, and whatever they
        forwarded would be flushed by the producer's own shutdown while its source
        offsets stay uncommitted (so it would be forwarded again on restart). After
        this, agents must check ``closed`` and leave their batches unprocessed.
        """
        self.closed = True
        await self.commit()

    async def hand_over(self, timeout_s: float) -> None:
        """On revocation, before the partitions move: commit, so their next owner starts
        exactly after this worker's work (forwarded events included). If that cannot
        finish in time (the store down), the work is abandoned and redelivered, and its
        insert is retried no more (the next owner inserts it). An insert already at the
        store is waited for, another ``timeout_s`` at most: landing before the next owner
        reads what lies past the committed offsets, it is not inserted twice (the worker
        gives half the session timeout: both waits end well within the group's rebalance
        timeout). If it does not end, or the agents do not even let go of ``lock`` in
        time, the worker stops: abandoning work an agent is still doing could let part of
        it through."""
        self._handing_over.set()
        locked = False
        try:
            async with asyncio.timeout(timeout_s):
                await self.lock.acquire()
                locked = True
                await self.commit()
        except TimeoutError:
            if not locked:
                await self.fail(TimeoutError(f"the agents did not let a revocation have the checkpoint lock within {timeout_s:g} s"))
                return
            log.warning("checkpoint did not finish within %.0fs of a revocation; abandoning it", timeout_s)
            self.abandon()
            if not await self._sink.abandon_writes(timeout_s):
                await self.fail(TimeoutError(f"an abandoned insert was still at the store {timeout_s:g} s later; it could land after the next owner's"))
        else:
            self._states.forget()  # a revoked partition's states now belong to its next owner
        finally:
            self._handing_over.clear()
            if locked:
                self.lock.release()

    def abandon(self) -> None:
        """Forget uncommitted work; its events will be redelivered."""
        if self._in_flight is not None:
            self._in_flight.cancel()
            self._in_flight = None
        self._pending, self._pending_in_state, self._awaiting_states, self._sent = [], [], [], []
        self._sink.discard()
        self._states.forget()
        self.guard.reset_to_committed()


async def _acknowledged(acks: list[Awaitable[Any]]) -> None:
    """Raises the first failure among the acknowledgements; most are already done."""
    for ack in acks:
        await ack


def next_offsets(messages: list[Any]) -> dict[Any, int]:
    """Per partition, the offset after the last consumed message.

    The guard lets each partition's offsets through in increasing order, so every offset
    below it has been processed. Committed directly: Faust's acknowledgement bookkeeping
    stalls on offsets delivered twice around a rebalance.
    """
    offsets: dict[Any, int] = {}
    for message in messages:
        if message.offset >= offsets.get(message.tp, 0):
            offsets[message.tp] = message.offset + 1
    return offsets


def _dedup_token(run_id: str, messages: list[Any]) -> str:
    """Names a batch by this process and the source offsets it covers, so a retried insert
    is dropped. The process is part of it: after a crash the same offsets can come in a
    batch with other rows (an account's row, a transition), which must not be taken for a
    retry; its event rows already stored are skipped by their positions instead."""
    ranges: dict[tuple[str, int], list[int]] = {}
    for message in messages:
        span = ranges.setdefault((message.topic, message.partition), [message.offset, message.offset])
        span[0] = min(span[0], message.offset)
        span[1] = max(span[1], message.offset)
    text = ";".join(f"{t}/{p}:{a}-{b}" for (t, p), (a, b) in sorted(ranges.items()))
    return hashlib.sha256(f"{run_id}|{text}".encode()).hexdigest()[:32]
