"""Which consumed messages are new to this process.

A fetched batch can hold messages fetched before a rebalance: processing those would
redo work whose partition may already belong to another worker (and they are fetched
again from the committed offset anyway). After a rebalance Faust also seeks retained
partitions back to their committed offsets, so an offset can arrive twice. The guard
drops messages of an older consumer generation, taken while the flow is suspended for a
rebalance or of partitions this worker no longer owns, and lets each offset through once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Admitted:
    fresh: list[Any] = field(default_factory=list)  # to process, in offset order per partition
    repeated: int = 0  # processed already
    stale: int = 0  # from before a rebalance: left to the partition's owner


class OffsetGuard:
    def __init__(self, app: Any) -> None:
        self._app = app
        self._processed: dict[Any, int] = {}  # tp -> last offset processed
        self._committed: dict[Any, int] = {}  # tp -> last offset covered by a commit

    def admit(self, messages: Sequence[Any]) -> Admitted:
        app = self._app
        if not app.flow_control.is_active():
            return Admitted(stale=len(messages))
        generation = app.consumer_generation_id
        assignment = app.consumer.assignment()
        processed = self._processed
        admitted = Admitted()
        for message in messages:
            tp = message.tp
            if message.generation_id != generation or tp not in assignment:
                admitted.stale += 1
            elif message.offset <= processed.get(tp, -1):
                admitted.repeated += 1
            else:
                processed[tp] = message.offset
                admitted.fresh.append(message)
        return admitted

    def processed(self) -> dict[Any, int]:
        """Per partition, the last offset let through so far (a checkpoint's extent)."""
        return dict(self._processed)

    def mark_committed(self, processed: dict[Any, int]) -> None:
        """A checkpoint taken when ``processed()`` was this (for the partitions it
        committed) has committed."""
        self._committed.update(processed)

    def reset_to_committed(self) -> None:
        self._processed = dict(self._committed)
