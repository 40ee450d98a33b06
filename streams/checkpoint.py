"""The checkpoint: the one place that owns the commit protocol.

Agents process batches into memory (sink buffers, account states, produced messages)
and hand the consumed Kafka events to the checkpoint. Only a checkpoint makes that work
durable, in this order:

  1. flush the ClickHouse sink (account rows of the changed states included);
  2. write the changed account states to the table store and its changelog topic;
  3. flush the producer (forwarded events, dead letters, changelog messages);
  4. acknowledge the consumed events and commit their offsets.

An offset is therefore committed only once everything derived from it is stored.
Faust's own commits (on rebalance or stop) commit only acknowledged offsets, so they
never run ahead of step 4; its periodic commit timer is switched off in streams.app.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from streams.offsets import OffsetGuard
from streams.sink import ClickHouseSink
from streams.state import AccountStates

log = logging.getLogger(__name__)


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
        self._pending: list[Any] = []  # consumed Faust events not yet acknowledged
        self._started_at = time.monotonic()
        self.lock = asyncio.Lock()  # agents hold it while they change pending work
        self.commits = 0
        self.last_commit_at: float | None = None

    def track(self, events: Iterable[Any]) -> None:
        self._pending.extend(events)

    @property
    def pending_events(self) -> int:
        return len(self._pending)

    def due(self) -> bool:
        return bool(self._pending) and (
            self._sink.pending_rows >= self._max_rows
            or time.monotonic() - self._started_at >= self._interval_s
        )

    async def commit(self) -> None:
        """Run the protocol; the caller holds ``lock``."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        # 1. flush the ClickHouse sink
        self._sink.add("account_scores", self._account_rows(self._states))
        await self._sink.flush(_dedup_token(pending))
        # 2. write state changelogs
        self._states.write_changelogs()
        # 3. flush the producer
        await self._app.producer.flush()
        # 4. acknowledge the events, then commit their offsets
        for event in pending:
            event.ack()
        await self._app.consumer.commit()
        self.guard.mark_committed()
        self.commits += 1
        self.last_commit_at = time.time()
        self._started_at = time.monotonic()

    async def commit_if_due(self) -> None:
        if self.due():
            await self.commit()

    def abandon(self) -> None:
        """After a revocation: forget uncommitted work; its events will be redelivered."""
        self._pending = []
        self._sink.discard()
        self._states.forget()
        self.guard.reset_to_committed()


def _dedup_token(events: list[Any]) -> str:
    """Names a batch by the source offsets it covers, so a retried insert is dropped."""
    ranges: dict[tuple[str, int], list[int]] = {}
    for event in events:
        message = event.message
        span = ranges.setdefault((message.topic, message.partition), [message.offset, message.offset])
        span[0] = min(span[0], message.offset)
        span[1] = max(span[1], message.offset)
    text = ";".join(f"{t}/{p}:{a}-{b}" for (t, p), (a, b) in sorted(ranges.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
