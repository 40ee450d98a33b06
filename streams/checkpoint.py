"""The checkpoint: the one place that owns the commit protocol.

Agents process batches into memory (sink buffers, account states, produced messages)
and hand the consumed Kafka messages to the checkpoint. A checkpoint first takes, in one
instant under the agents' lock, everything they did since the previous one (a
``CheckpointBatch``), then makes it durable in this order:

  1. flush the ClickHouse sink (account rows of the changed states included);
  2. write the changed account states to the table store and its changelog topic;
  3. flush the producer (forwarded events, dead letters, changelog messages);
  4. commit the offsets of the consumed events.

An offset is therefore committed only once everything derived from it is stored. The
four steps run while the agents go on with the next batches (they wait for ClickHouse,
the broker and a thread, not for Python), but at most one checkpoint is in flight: the
next one waits for it before taking, so the steps of consecutive checkpoints never
interleave and a stalled store stops the agents within one interval.

Nothing is acknowledged to Faust, so its own commits (on rebalance or stop) have nothing
to commit; its periodic commit timer is switched off in streams.app.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from streams.offsets import OffsetGuard
from streams.sink import ClickHouseSink, TableBuffer
from streams.state import AccountStates, StateChange

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CheckpointBatch:
    """What one checkpoint makes durable, taken at one instant."""

    messages: list[Any]  # consumed Kafka messages, their offsets to commit
    rows: dict[str, TableBuffer]  # ClickHouse rows by table
    states: list[StateChange]  # changed account states as bytes
    processed: dict[Any, int]  # the OffsetGuard's extent, committed with the offsets


class Checkpoint:
    def __init__(
        self,
        app: Any,
        sink: ClickHouseSink,
        states: AccountStates,
        guard: OffsetGuard,
        account_rows: Callable[[AccountStates], list[Sequence[Any]]],
        max_rows: int,
        interval_s: float,
    ) -> None:
        self._app = app
        self._sink = sink
        self._states = states
        self.guard = guard
        self._account_rows = account_rows
        self._max_rows = max_rows
        self._interval_s = interval_s
        self._pending: list[Any] = []  # consumed Kafka messages not yet taken by a checkpoint
        self._run_id = uuid.uuid4().hex  # this process's checkpoints: see _dedup_token
        self._in_flight: asyncio.Task[None] | None = None  # the checkpoint being made durable
        self._started_at = time.monotonic()
        self.lock = asyncio.Lock()  # agents hold it while they change pending work
        self.closed = False  # set by the final checkpoint: no more work may start
        self.commits = 0
        self.last_commit_at: float | None = None

    def track(self, messages: Iterable[Any]) -> None:
        self._pending.extend(messages)

    @property
    def pending_events(self) -> int:
        return len(self._pending)

    def _has_work(self) -> bool:
        # changed states alone too: fall-backs and held events the watermark settled
        return bool(self._pending or self._sink.pending_rows or self._states.changed)

    def due(self) -> bool:
        return self._has_work() and (
            self._sink.pending_rows >= self._max_rows
            or time.monotonic() - self._started_at >= self._interval_s
        )

    async def commit(self) -> None:
        """Make everything done so far durable, and wait for it; the caller holds ``lock``."""
        await self._start()
        await self._finish_in_flight()

    async def commit_if_due(self) -> None:
        """Start a checkpoint if one is due; the caller holds ``lock``."""
        if self.due():
            await self._start()
        elif self._in_flight is not None and self._in_flight.done():
            await self._finish_in_flight()  # its failure surfaces here, in an agent

    async def _start(self) -> None:
        await self._finish_in_flight()
        batch = self._take()
        if batch is not None:
            self._in_flight = asyncio.create_task(self._make_durable(batch), name="checkpoint")

    async def _finish_in_flight(self) -> None:
        task, self._in_flight = self._in_flight, None
        if task is not None:
            await task

    def _take(self) -> CheckpointBatch | None:
        self._started_at = time.monotonic()
        if not self._has_work():
            return None
        self._sink.add("account_scores", self._account_rows(self._states))
        messages, self._pending = self._pending, []
        return CheckpointBatch(messages, self._sink.take(), self._states.take_changes(), self.guard.processed())

    async def _make_durable(self, batch: CheckpointBatch) -> None:
        # 1. flush the ClickHouse sink
        # a batch of no consumed event (settled states, re-resolutions) has nothing to name it by
        token = _dedup_token(self._run_id, batch.messages) if batch.messages else uuid.uuid4().hex
        await self._sink.write(batch.rows, token)
        # 2. write state changelogs
        self._states.write(batch.states)
        # 3. flush the producer
        await self._app.producer.flush()
        # 4. commit the offsets of the consumed messages
        if batch.messages:
            await self._app.consumer._commit(next_offsets(batch.messages))
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
        exactly after this worker's work (forwarded events included); the caller holds
        ``lock``. If that cannot finish in time, the work is abandoned and redelivered."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.commit()
        except TimeoutError:
            log.warning("checkpoint did not finish within %.0fs of a revocation; abandoning it", timeout_s)
            self.abandon()
        else:
            self._states.forget()  # a revoked partition's states now belong to its next owner

    def abandon(self) -> None:
        """Forget uncommitted work; its events will be redelivered."""
        if self._in_flight is not None:
            self._in_flight.cancel()
            self._in_flight = None
        self._pending = []
        self._sink.discard()
        self._states.forget()
        self.guard.reset_to_committed()


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
