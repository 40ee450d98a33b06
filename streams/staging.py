"""Event time for the score agent: the agent's events are held in their accounts' states;
after each forwarded message, the accounts it touched are (re)scheduled, and those its
partition's watermark passed are settled: their held events applied in event-time order
and their fall-backs applied, also for accounts without new events
(processors.watermarks). Settling per message, not per fetched batch, makes the
transitions a function of the partitions' messages alone, the same in a replay.
Transitions go to ClickHouse and
to the stage-transitions topic through the checkpoint, which waits for their
acknowledgement (step 3) before it commits the offsets that caused them.

The schedule lives in memory, bounded (the accounts due soonest per partition), and
scans the states of the partitions this worker owns whenever an assignment changes (and
at start); fall-backs already due then are applied without waiting for new events.

Each partition's watermark is committed with its offset, as the offset's metadata: a
replay from that offset starts from the watermark the first run had there. Rebuilt
from the stored states instead, it would start ahead whenever some states were stored
after the commit (a crash while a checkpoint wrote them), and the replay would settle
other accounts' late events differently than the first run did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from processors.stages import StageTransition
from schemas.events import TOPIC_BY_ACCOUNT, TOPIC_STAGE_TRANSITIONS
from streams.checkpoint import Checkpoint
from streams.folding import Folding, FoldResult, Forwarded
from streams.metrics import PipelineStats
from streams.rows import transition_message, transition_rows
from streams.settings import Settings
from streams.sink import ClickHouseSink

WATERMARK_METADATA = "abm.latest-event-ms="  # + the latest event time of the partition's messages


class StageClock:
    def __init__(self, app: Any, settings: Settings, folding: Folding, checkpoint: Checkpoint, sink: ClickHouseSink, stats: PipelineStats) -> None:
        self._app = app
        self.folding = folding
        self._checkpoint = checkpoint
        self._sink = sink
        self._stats = stats
        self._source_topic = settings.topic(TOPIC_BY_ACCOUNT)
        self._transitions_topic = settings.topic(TOPIC_STAGE_TRANSITIONS)
        self._committed_latest: dict[int, int] = {}
        self._stale = False  # until the first assignment: nothing to scan

        @app.timer(settings.checkpoint_interval_s)
        async def apply_due_fall_backs() -> None:
            """After a start or a rebalance: what became due before it does not wait
            for new events."""
            if not self._stale or app.rebalancing or not app.tables.actives_ready:
                return
            async with checkpoint.lock:
                if self._stale and not checkpoint.closed:
                    self._rescan()
                    await self.emit(self.folding.settle_due())

    def assigned(self, committed: Mapping[int, tuple[int, str]]) -> None:
        """An assignment: the committed (offset, metadata) of each by-account partition
        now owned (offset -1: none). Called before their messages are folded; the
        schedule is rebuilt with their watermarks."""
        self._committed_latest = {}
        for partition, (offset, metadata) in committed.items():
            if offset < 0:  # nothing committed: its messages come from the start
                self._committed_latest[partition] = -1
            elif metadata.startswith(WATERMARK_METADATA):
                self._committed_latest[partition] = int(metadata.removeprefix(WATERMARK_METADATA))
            # else committed without one (before there was one): taken from the states
        self._stale = True

    def offset_metadata(self, tp: Any) -> str:
        """Committed with a by-account partition's offset: its watermark (the latest
        event time of its messages); the caller holds the checkpoint lock."""
        return f"{WATERMARK_METADATA}{self.folding.latest(tp.partition)}" if tp.topic == self._source_topic else ""

    def fold(self, messages: Sequence[Forwarded]) -> FoldResult:
        """Folds the messages' events into their accounts and settles what each message
        made due (streams.folding); the caller holds the checkpoint lock."""
        if self._stale:
            self._rescan()
        return self.folding.fold(messages)

    async def emit(self, transitions: list[StageTransition]) -> None:
        """To ClickHouse (buffered) and Kafka; the caller holds the checkpoint lock."""
        self._sink.add("stage_transitions", transition_rows(transitions))
        await self._checkpoint.send_keyed(self._transitions_topic, [transition_message(t) for t in transitions])
        self._stats.transitions += len(transitions)
        moves = Counter(f"{t.from_stage}->{t.to_stage}" for t in transitions)
        self._stats.add_counts(self._stats.transitions_by_stages, moves)

    def _rescan(self) -> None:
        # The tables have recovered; in-memory states were dropped on revocation (or
        # have just been changed and are noted again by the caller).
        owned = {tp.partition for tp in self._app.assignor.assigned_actives() if tp.topic == self._source_topic}
        self.folding.reset(owned, self._committed_latest)
        self._stale = False
