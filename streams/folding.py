"""The fold of the score agent, one way or the other: forwarded messages folded into
account states, each partition's watermark advanced by its messages and the accounts it
passed settled (processors.watermarks.fold_messages, the definition).

``InterpretedFolding`` decodes the messages and folds them with processors' functions into
AccountStates' objects, with processors.watermarks.FallbackSchedule. ``NativeFolding``
hands the messages' bytes to native code (``abm_native.Fold``), which holds the states
and the schedule: no dict per event, ~4 us less per event. Both derive the same events
applied, transitions and states' bytes (tests/unit/test_native_fold.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from processors.dedup import DedupPolicy
from processors.fast_routing import native
from processors.routing import forwarded_events
from processors.scoring import ScoringConfig
from processors.stages import StageRules, StageTransition
from processors.watermarks import FallbackSchedule, fold_messages
from streams.rows import account_rows
from streams.state import AccountStates, NativeAccountStates

Forwarded = tuple[int, int, bytes]  # (partition, offset, message) of the by-account topic
Src = tuple[int, int, int]  # (partition, offset, index in the message) of an event


class FoldResult(NamedTuple):
    applied: list[Src]  # the events that changed a state
    transitions: list[StageTransition]
    duplicates: int  # events seen before under the same (source, event id)


class FoldRules(NamedTuple):
    config: ScoringConfig
    rules: StageRules
    dedup: DedupPolicy
    max_held: int  # events an account holds for the watermark
    lateness_ms: int  # allowed lateness of the watermark
    schedule_capacity: int  # accounts the schedule keeps per partition


class Folding(Protocol):
    states: AccountStates | NativeAccountStates

    def fold(self, messages: Sequence[Forwarded]) -> FoldResult: ...

    def settle_due(self) -> list[StageTransition]:
        """Settles what every partition's watermark has passed (after a start or a rebalance)."""

    def reset(self, owned: Iterable[int], latest: Mapping[int, int]) -> None:
        """FallbackSchedule.reset: the next fold or settling scans the owned partitions."""

    def latest(self, partition: int) -> int:
        """The latest event time of the partition's messages; -1: none."""

    def watermarks(self) -> dict[int, int]: ...

    def take_changed_rows(self, now_ms: int) -> list[Sequence[Any]]:
        """The rows (streams.rows.account_row) of the states changed since the last call."""


class InterpretedFolding:
    def __init__(self, states: AccountStates, partitions: int, rules: FoldRules) -> None:
        self.states = states
        self._rules = rules
        self._schedule = FallbackSchedule(partitions, rules.lateness_ms, capacity=rules.schedule_capacity)

    def fold(self, messages: Sequence[Forwarded]) -> FoldResult:
        states, rules = self.states, self._rules
        folded = fold_messages(
            [(partition, forwarded_events(partition, offset, message)) for partition, offset, message in messages],
            states.state_for,
            states.timings_in,
            self._schedule,
            rules.config,
            rules.rules,
            rules.dedup,
            rules.max_held,
            states.stored_held,
        )
        return FoldResult([event["_src"] for event in folded.applied], folded.transitions, folded.duplicates)

    def settle_due(self) -> list[StageTransition]:
        states, rules = self.states, self._rules
        return self._schedule.settle_due(states.state_for, states.timings_in, rules.rules, rules.config, stored_held=states.stored_held)

    def reset(self, owned: Iterable[int], latest: Mapping[int, int]) -> None:
        self._schedule.reset(owned, latest)

    def latest(self, partition: int) -> int:
        return self._schedule.latest(partition)

    def watermarks(self) -> dict[int, int]:
        return self._schedule.watermarks()

    def take_changed_rows(self, now_ms: int) -> list[Sequence[Any]]:
        return account_rows(self.states.take_changed(), now_ms, self._rules.config)


class NativeFolding:
    def __init__(self, states: NativeAccountStates) -> None:
        self.states = states
        self._native = states.native

    def fold(self, messages: Sequence[Forwarded]) -> FoldResult:
        applied, transitions, duplicates, _ = self._native.fold(messages)
        return FoldResult(applied, [StageTransition(*t) for t in transitions], duplicates)

    def settle_due(self) -> list[StageTransition]:
        return [StageTransition(*t) for t in self._native.settle_all()]

    def reset(self, owned: Iterable[int], latest: Mapping[int, int]) -> None:
        self._native.reset(list(owned), dict(latest))

    def latest(self, partition: int) -> int:
        return int(self._native.latest(partition))

    def watermarks(self) -> dict[int, int]:
        return dict(self._native.watermarks())

    def take_changed_rows(self, now_ms: int) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = self._native.take_changed_rows(now_ms)
        return rows


def interpreted_folding(table: Any, changelog: Any, partitions: int, max_cached: int, max_bytes: int, rules: FoldRules) -> InterpretedFolding:
    return InterpretedFolding(AccountStates(table, changelog, partitions, max_cached, max_bytes), partitions, rules)


def native_folding(table: Any, changelog: Any, partitions: int, max_cached: int, max_bytes: int, rules: FoldRules) -> NativeFolding:
    def make_fold(load: Any, stored_held: Any, stored_timings: Any) -> Any:
        return native.Fold(
            rules.config, rules.rules, rules.dedup, rules.max_held, partitions, rules.lateness_ms, rules.schedule_capacity, load, stored_held, stored_timings
        )

    return NativeFolding(NativeAccountStates(table, changelog, partitions, max_cached, max_bytes, make_fold))


def folding(table: Any, changelog: Any, partitions: int, max_cached: int, max_bytes: int, rules: FoldRules) -> Folding:
    """The native folding where native code is built, else the interpreted one."""
    make = interpreted_folding if native is None else native_folding
    return make(table, changelog, partitions, max_cached, max_bytes, rules)
