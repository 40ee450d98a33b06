"""Event time per partition, and the accounts due as it passes.

A partition's watermark is the latest event time its accounts have seen minus the
allowed lateness: events older than it are not expected any more. Once it passes an
account's earliest held event (processors.accounts) or its fall-back time
(``AccountState.fallback_at_ms``), the account is settled up to the watermark, also
when it has no new events. The schedule indexes accounts by the earlier of those times,
so advancing looks only at those due.

Nothing here is persisted: after a restart or a rebalance the schedule is rebuilt from
the partition's stored states (``note`` each), which also gives back the watermark.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from processors.accounts import settle
from processors.identity import account_partition
from processors.scoring import AccountState, ScoringConfig
from processors.stages import StageRules, StageTransition


class FallbackSchedule:
    def __init__(self, partitions: int, lateness_ms: int) -> None:
        self._partitions = partitions
        self._lateness_ms = lateness_ms
        self._latest: dict[int, int] = {}  # partition -> latest event time of its accounts
        self._queues: dict[int, list[tuple[int, str]]] = {}  # partition -> heap of (due time, account)
        self._scheduled: dict[str, int] = {}  # account -> its due time in the heap (others are stale)

    def __len__(self) -> int:
        return len(self._scheduled)

    def clear(self) -> None:
        self._latest.clear()
        self._queues.clear()
        self._scheduled.clear()

    def watermark(self, partition: int) -> int | None:
        latest = self._latest.get(partition)
        return None if latest is None else latest - self._lateness_ms

    def note(self, state: AccountState) -> None:
        """Takes in the account's latest event time and when it is due next."""
        partition = account_partition(state.account_id, self._partitions)
        if state.latest_seen_ms > self._latest.get(partition, -1):
            self._latest[partition] = state.latest_seen_ms
        at = state.fallback_at_ms
        if state.held and (at == 0 or state.held[0]["occurred_at_ms"] < at):
            at = state.held[0]["occurred_at_ms"]
        if self._scheduled.get(state.account_id, 0) == at:
            return
        if at == 0:
            del self._scheduled[state.account_id]
            return
        self._scheduled[state.account_id] = at
        queue = self._queues.setdefault(partition, [])
        heapq.heappush(queue, (at, state.account_id))
        if len(queue) > 64 and len(queue) > 2 * len(self._scheduled):  # mostly stale: rebuild
            self._queues[partition] = queue = [
                (when, account) for when, account in queue if self._scheduled.get(account) == when
            ]
            heapq.heapify(queue)

    def settle_due(
        self, state_for: Callable[[str], AccountState], rules: StageRules, config: ScoringConfig
    ) -> list[StageTransition]:
        """Settles the accounts the watermarks have passed, in each partition's time order."""
        transitions = []
        for partition in self._queues:
            mark = self.watermark(partition)
            assert mark is not None  # an account was noted in it
            # note() may replace the partition's heap by a compacted one
            while (queue := self._queues[partition]) and queue[0][0] <= mark:
                at, account_id = heapq.heappop(queue)
                if self._scheduled.get(account_id) != at:
                    continue  # re-evaluated since: a later entry stands for it
                del self._scheduled[account_id]
                state = state_for(account_id)
                transitions.extend(settle(state, mark, config, rules))
                self.note(state)
        return transitions
