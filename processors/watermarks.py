"""Event time per partition, and the accounts due as it passes.

A partition's watermark is the latest event time of its messages minus the allowed
lateness: events older than it are not expected any more. It moves with the messages
alone (every event in them counts, replayed and duplicate ones too), so a replay that
starts from a committed watermark moves it exactly as the first run did. Once it passes an
account's earliest held event (processors.accounts) or its fall-back time
(``AccountState.fallback_at_ms``), the account is settled up to the watermark, also
when it has no new events. The schedule indexes accounts by the earlier of those times,
so advancing looks only at those due.

Memory is bounded: per partition only the ``capacity`` accounts due soonest are kept,
up to a horizon (an order of (due time, account)); the accounts beyond it are found
again by scanning the partition's states once the watermark reaches the horizon. With a
million accounts, most of them due months ahead, the schedule holds a few percent.

Only the watermarks are persisted, by the caller, with the offsets they belong to
(streams.staging); after a restart or a rebalance the schedule scans the partitions'
stored states again. Without a committed watermark (offsets committed before there
was one) it is rebuilt from the stored states' latest event times: exact only when the
states are exactly those of the committed offsets.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from processors.accounts import Folded, Position, fold_events, settle
from processors.dedup import DedupPolicy
from processors.identity import account_partition
from processors.scoring import AccountState, ScoringConfig, StoredHeld, Timing, no_stored_held
from processors.stages import StageRules, StageTransition

Entry = tuple[float, str]  # (due time, account): accounts of equal due times are ordered by id
EVERYTHING: Entry = (math.inf, "")  # horizon of a partition whose due accounts are all kept
UNSCANNED: Entry = (-math.inf, "")  # horizon of a partition not scanned yet: it keeps nothing


@dataclass(slots=True)
class _Partition:
    horizon: Entry
    latest: int = -1  # latest event time of its messages; -1: none yet
    latest_from_states: bool = False  # unknown: the first scan takes it from the states
    queue: list[Entry] = field(default_factory=list)  # heap; entries whose due time changed since are stale
    due: dict[str, int] = field(default_factory=dict)  # account -> its due time in the queue


class FallbackSchedule:
    def __init__(self, partitions: int, lateness_ms: int, capacity: int) -> None:
        assert capacity >= 1
        self._partitions = partitions
        self._lateness_ms = lateness_ms
        self._capacity = capacity
        self._slack = max(1, capacity // 4)  # trimmed back to capacity when over by this much
        self._by_partition: dict[int, _Partition] = {}

    def __len__(self) -> int:
        """Accounts kept in memory."""
        return sum(len(p.due) for p in self._by_partition.values())

    def reset(self, partitions: Iterable[int], latest: Mapping[int, int]) -> None:
        """Forgets everything; the next ``settle_due`` scans these partitions' states.
        ``latest``: the latest event time of each partition's messages up to where its
        stored work begins (-1: none); a partition missing from it takes the latest of
        its stored states."""
        self._by_partition = {
            partition: _Partition(UNSCANNED, latest.get(partition, -1), latest_from_states=partition not in latest)
            for partition in partitions
        }

    def latest(self, partition: int) -> int:
        """The latest event time of the partition's messages so far; -1: none."""
        held = self._by_partition.get(partition)
        return -1 if held is None else held.latest

    def watermark(self, partition: int) -> int | None:
        held = self._by_partition.get(partition)
        return None if held is None or held.latest < 0 else held.latest - self._lateness_ms

    def watermarks(self) -> dict[int, int]:
        """The watermark of each partition that has one."""
        return {partition: held.latest - self._lateness_ms for partition, held in self._by_partition.items() if held.latest >= 0}

    def advance(self, partition: int, event_ms: int) -> None:
        """Takes in the event time of a message's event."""
        held = self._partition(partition)
        if event_ms > held.latest:
            held.latest = event_ms

    def _partition(self, partition: int) -> _Partition:
        # a partition never reset and never noted holds no states yet: nothing lies beyond
        held = self._by_partition.get(partition)
        if held is None:  # made only then: a dataclass's __init__ stays interpreted code (mypyc)
            held = self._by_partition[partition] = _Partition(EVERYTHING)
        return held

    def note(self, state: AccountState) -> None:
        """Takes in when the account is due next."""
        held = self._partition(account_partition(state.account_id, self._partitions))
        at = _due(state.fallback_at_ms, state.first_held_ms)
        if held.due.get(state.account_id, 0) == at:
            return
        if at == 0 or (at, state.account_id) > held.horizon:
            held.due.pop(state.account_id, None)  # found again by a scan when its time comes
            return
        held.due[state.account_id] = at
        heapq.heappush(held.queue, (at, state.account_id))
        if len(held.due) > self._capacity + self._slack:
            self._keep_nearest(held, ((when, account) for account, when in held.due.items()))
        elif len(held.queue) > 64 and len(held.queue) > 2 * len(held.due):  # mostly stale: rebuild
            held.queue = [(when, account) for account, when in held.due.items()]
            heapq.heapify(held.queue)

    def settle_due(
        self,
        state_for: Callable[[str], AccountState],
        timings_in: Callable[[int], Iterable[Timing]],
        rules: StageRules,
        config: ScoringConfig,
        partitions: Iterable[int] | None = None,
        stored_held: StoredHeld = no_stored_held,
    ) -> list[StageTransition]:
        """Settles the accounts the watermarks have passed, in each partition's time order
        (of the given partitions, or all). ``timings_in(partition)`` gives the timing
        (``AccountState.timing``) of every state of a partition as it stands now, for the scans;
        ``stored_held`` reads back held events of written states (``settle``)."""
        transitions = []
        chosen = self._by_partition if partitions is None else {p: self._by_partition[p] for p in partitions if p in self._by_partition}
        for partition, held in chosen.items():
            if held.horizon == UNSCANNED:
                self._scan(held, timings_in(partition))
            mark = self.watermark(partition)
            if mark is None:
                continue  # no events in it yet
            while True:
                # note() may replace the partition's heap by a compacted one
                while held.queue and held.queue[0][0] <= mark:
                    at, account_id = heapq.heappop(held.queue)
                    if held.due.get(account_id) != at:
                        continue  # re-evaluated since: a later entry stands for it
                    del held.due[account_id]
                    state = state_for(account_id)
                    transitions.extend(settle(state, mark, config, rules, stored_held))
                    self.note(state)
                if held.horizon[0] > mark:
                    break
                self._scan(held, timings_in(partition))  # accounts beyond the horizon may be due
        return transitions

    def _scan(self, held: _Partition, timings: Iterable[Timing]) -> None:
        self._keep_nearest(held, _scheduled(held, timings))
        held.latest_from_states = False

    def _keep_nearest(self, held: _Partition, entries: Iterable[Entry]) -> None:
        """Keeps the ``capacity`` nearest of the partition's entries (all of them when
        they are no more); the horizon moves to the last one kept."""
        nearest = heapq.nsmallest(self._capacity + 1, entries)  # sorted: a valid heap
        if len(nearest) > self._capacity:
            del nearest[self._capacity :]
            held.horizon = nearest[-1]
        else:
            held.horizon = EVERYTHING
        held.queue = nearest
        held.due = {account: int(at) for at, account in nearest}


def _scheduled(held: _Partition, timings: Iterable[Timing]) -> Iterator[Entry]:
    """The schedule entries of the states' timings; the partition's latest event time
    follows them while it comes from the states. (Not nested in ``_scan``: mypyc
    miscompiles a generator nested in a method.)"""
    for account_id, fallback_at_ms, first_held_ms, latest_seen_ms in timings:
        if held.latest_from_states:
            held.latest = max(held.latest, latest_seen_ms)
        at = _due(fallback_at_ms, first_held_ms)
        if at:
            yield at, account_id


def _due(fallback_at_ms: int, first_held_ms: int) -> int:
    """When an account must next be settled: its earliest held event or its fall-back,
    whichever comes first (0: none); 0 = never."""
    if first_held_ms and (fallback_at_ms == 0 or first_held_ms < fallback_at_ms):
        return first_held_ms
    return fallback_at_ms


Message = tuple[int, list[tuple[Position, dict[str, Any]]]]  # (partition, its events by position)


def fold_messages(
    messages: Iterable[Message],
    state_for: Callable[[str], AccountState],
    timings_in: Callable[[int], Iterable[Timing]],
    schedule: FallbackSchedule,
    config: ScoringConfig,
    rules: StageRules,
    dedup: DedupPolicy,
    max_held: int,
    stored_held: StoredHeld = no_stored_held,
) -> Folded:
    """Folds forwarded messages in order, their events held (at most ``max_held`` per
    account, processors.accounts), advances each message's
    partition's watermark by its events and settles the partition after it. A
    partition's transitions then depend only on its sequence of messages, never on how
    they were fetched in batches: a replay after a crash, from the committed offset and
    watermark, derives the transitions the first run did, events later than the allowed
    lateness included, also for accounts whose stored states are ahead of that offset."""
    folded = Folded()
    for partition, positioned in messages:
        part = fold_events(positioned, state_for, config, rules, dedup, max_held, stored_held)
        folded.transitions += part.transitions  # of events applied before the watermark: over max_held
        folded.applied += part.applied
        folded.duplicates += part.duplicates
        folded.replayed += part.replayed
        for account_id in {event["account_id"] for event in part.applied}:
            schedule.note(state_for(account_id))
        if positioned:
            schedule.advance(partition, max(event["occurred_at_ms"] for _, event in positioned))
        folded.transitions += schedule.settle_due(state_for, timings_in, rules, config, (partition,), stored_held)
    return folded
