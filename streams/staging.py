"""Event time for the score agent: after each batch, the accounts it touched are
(re)scheduled and the fall-backs the partitions' watermarks passed are applied, also to
accounts without new events (processors.watermarks). Transitions go to the
stage-transitions topic through the app's producer, flushed by the checkpoint (step 3)
before the offsets that caused them are committed.

The schedule lives in memory and is rebuilt from the table's stored states of the
partitions this worker owns whenever an assignment changes (and at start).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from processors.identity import account_partition
from processors.scoring import AccountState, ScoringConfig
from processors.stages import StageRules, StageTransition
from processors.watermarks import FallbackSchedule
from streams.rows import transition_message
from streams.state import AccountStates


class StageClock:
    def __init__(
        self,
        app: Any,
        table: Any,
        states: AccountStates,
        source_topic: str,
        transitions_topic: str,
        partitions: int,
        lateness_ms: int,
        config: ScoringConfig,
        rules: StageRules,
    ) -> None:
        self._app = app
        self._table = table
        self._states = states
        self._source_topic = source_topic
        self._transitions_topic = transitions_topic
        self._partitions = partitions
        self._config = config
        self._rules = rules
        self.schedule = FallbackSchedule(partitions, lateness_ms)
        self._stale = True
        app.on_partitions_assigned.connect(self._on_assigned)

    async def _on_assigned(self, _app: Any, _assigned: Any, **_: Any) -> None:
        self._stale = True

    def advance(self, applied: Iterable[dict[str, Any]]) -> list[StageTransition]:
        """Fall-backs due once the batch's events moved the watermarks; the caller holds
        the checkpoint lock."""
        if self._stale:
            self._rebuild()
        for account_id in {event["account_id"] for event in applied}:
            self.schedule.note(self._states.state_for(account_id))
        return self.schedule.fall_back_due(self._states.state_for, self._rules, self._config)

    async def publish(self, transitions: list[StageTransition]) -> None:
        producer = self._app.producer
        for transition in transitions:
            key, value = transition_message(transition)
            await producer.send(self._transitions_topic, key, value, None, None, None)

    def _rebuild(self) -> None:
        # Called from the agent, so the tables have recovered; in-memory states were
        # dropped on revocation, so the store is current.
        owned = {tp.partition for tp in self._app.assignor.assigned_actives() if tp.topic == self._source_topic}
        self.schedule.clear()
        for key, raw in self._table.data.items():
            if account_partition(key.decode(), self._partitions) in owned:
                self.schedule.note(AccountState.from_bytes(raw))
        self._stale = False
