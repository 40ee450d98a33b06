"""Which consumed messages are new to this process.

After a rebalance Faust seeks every assigned partition back to its committed offset,
while messages fetched before it may still sit in a stream's buffer: the same offset
can arrive twice. The guard lets each offset through once per commit boundary and
drops messages of partitions this worker no longer owns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class OffsetGuard:
    def __init__(self, consumer_of: Any) -> None:
        self._app = consumer_of
        self._processed: dict[Any, int] = {}  # tp -> last offset processed
        self._committed: dict[Any, int] = {}  # tp -> last offset covered by a commit

    def fresh(self, events: Sequence[Any]) -> list[Any]:
        assignment = self._app.consumer.assignment()
        processed = self._processed
        fresh = []
        for event in events:
            message = event.message
            tp = message.tp
            if tp not in assignment or message.offset <= processed.get(tp, -1):
                continue
            processed[tp] = message.offset
            fresh.append(event)
        return fresh

    def mark_committed(self) -> None:
        self._committed = dict(self._processed)

    def reset_to_committed(self) -> None:
        self._processed = dict(self._committed)
