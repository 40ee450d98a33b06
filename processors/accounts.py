"""Folding a batch of canonical events into per-account state.

Idempotent per account: each state remembers the position (source offset, index in
the message) of the last event it absorbed, so events redelivered after a crash or a
rebalance change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from processors.scoring import AccountState, ScoringConfig, apply_event
from processors.stages import StageRules, StageTransition, advance_stage

Position = tuple[int, int]  # (offset of the Kafka message, index of the event in it)


def fold_events(
    positioned_events: Iterable[tuple[Position, dict[str, Any]]],
    state_for: Callable[[str], AccountState],
    config: ScoringConfig,
    rules: StageRules,
) -> tuple[list[dict[str, Any]], list[StageTransition]]:
    """Apply events in order; returns the events newly applied and the stage transitions."""
    applied: list[dict[str, Any]] = []
    transitions: list[StageTransition] = []
    for position, event in positioned_events:
        state = state_for(event["account_id"])
        if position <= state.applied_upto:
            continue
        apply_event(state, event, config)
        state.applied_upto = position
        applied.append(event)
        transition = advance_stage(state, state.last_event_ms, event["event_id"], rules, config)
        if transition is not None:
            transitions.append(transition)
    return applied, transitions
