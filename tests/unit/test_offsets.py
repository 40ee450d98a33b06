"""The offset guard and the checkpoint's commit offsets: which messages count, and once."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from streams.checkpoint import next_offsets
from streams.offsets import OffsetGuard


@dataclass
class AppView:
    """The three things the guard reads from the Faust app."""

    generation: int = 1
    active: bool = True
    assigned: set = field(default_factory=lambda: {("raw", 0), ("raw", 1)})

    @property
    def consumer_generation_id(self) -> int:
        return self.generation

    @property
    def flow_control(self):
        return SimpleNamespace(is_active=lambda: self.active)

    @property
    def consumer(self):
        return SimpleNamespace(assignment=lambda: self.assigned)


def event(partition: int, offset: int, generation: int = 1):
    return SimpleNamespace(tp=("raw", partition), offset=offset, generation_id=generation)


def offsets(messages) -> list[tuple[int, int]]:
    return [(m.tp[1], m.offset) for m in messages]


def test_each_offset_is_admitted_once_per_partition():
    guard = OffsetGuard(AppView())
    first = guard.admit([event(0, 0), event(0, 1), event(1, 0)])
    assert offsets(first.fresh) == [(0, 0), (0, 1), (1, 0)]
    again = guard.admit([event(0, 1), event(0, 2), event(1, 0)])
    assert offsets(again.fresh) == [(0, 2)]
    assert (again.repeated, again.stale) == (2, 0)


def test_messages_of_an_old_generation_or_an_unassigned_partition_are_stale():
    app = AppView(generation=2)
    guard = OffsetGuard(app)
    admitted = guard.admit([event(0, 5, generation=1), event(2, 0, generation=2), event(1, 3, generation=2)])
    assert offsets(admitted.fresh) == [(1, 3)]
    assert admitted.stale == 2
    # a stale message does not count as processed: its refetched copy is fresh
    assert offsets(guard.admit([event(0, 5, generation=2)]).fresh) == [(0, 5)]


def test_nothing_is_admitted_while_the_flow_is_suspended_for_a_rebalance():
    app = AppView(active=False)
    guard = OffsetGuard(app)
    admitted = guard.admit([event(0, 0), event(1, 0)])
    assert (admitted.fresh, admitted.stale) == ([], 2)
    app.active = True
    assert offsets(guard.admit([event(0, 0)]).fresh) == [(0, 0)]


def test_an_abandoned_batch_is_admitted_again_from_the_last_commit():
    guard = OffsetGuard(AppView())
    guard.admit([event(0, 0), event(0, 1)])
    taken = guard.processed()
    guard.admit([event(0, 2)])  # while that checkpoint is being written
    guard.mark_committed(taken)
    guard.admit([event(0, 3)])
    guard.reset_to_committed()
    assert offsets(guard.admit([event(0, 1), event(0, 2), event(0, 3)]).fresh) == [(0, 2), (0, 3)]


def test_commit_offsets_point_after_the_last_event_of_each_partition():
    events = [event(0, 7), event(1, 0), event(0, 9), event(0, 8)]
    assert next_offsets(events) == {("raw", 0): 10, ("raw", 1): 1}
    assert next_offsets([]) == {}
