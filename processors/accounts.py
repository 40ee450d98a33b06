"""Folding a batch of canonical events into per-account state.

Idempotent per account three times over. Each state remembers:
- the position (by-account offset, index in the message) of the last event absorbed,
  so a message redelivered after a crash changes nothing;
- per raw partition, the last raw offset absorbed: a raw message forwarded again by a
  worker killed before its commit arrives at a new position but an old origin
  (one raw partition's events reach an account in offset order);
- the (source, event id) of its recent events, so a source's retry counts once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from processors.dedup import DedupPolicy, event_key, forget_old, next_prune_size, seen_before
from processors.scoring import AccountState, ScoringConfig, apply_event
from processors.stages import StageRules, StageTransition, fall_back_until, may_move_up, note_signals, restage

Position = tuple[int, int]  # (offset of the Kafka message, index of the event in it)


@dataclass(slots=True)
class Folded:
    applied: list[dict[str, Any]] = field(default_factory=list)  # events that changed a state
    transitions: list[StageTransition] = field(default_factory=list)
    duplicates: int = 0  # events seen before under the same (source, event id)
    replayed: int = 0  # positions or raw origins an account had absorbed already


def fold_events(
    positioned_events: Iterable[tuple[Position, dict[str, Any]]],
    state_for: Callable[[str], AccountState],
    config: ScoringConfig,
    rules: StageRules,
    dedup: DedupPolicy,
) -> Folded:
    """Apply events in order: the events applied, the stage transitions, what was skipped."""
    folded = Folded()
    for position, event in positioned_events:
        state = state_for(event["account_id"])
        origin = event.get("_origin")  # None for an event re-routed after a late resolution
        if position <= state.applied_upto or (origin is not None and _origin_absorbed(state, origin)):
            folded.replayed += 1
            continue
        state.applied_upto = position
        if seen_before(state.recent_ids, event_key(event), event["occurred_at_ms"]):
            folded.duplicates += 1
            continue
        at = event["occurred_at_ms"]
        if 0 < state.fallback_at_ms <= at:  # time passed since the account's last evaluation
            folded.transitions.extend(fall_back_until(state, at, rules, config))
        weight = apply_event(state, event, config)
        if len(state.recent_ids) > state.prune_ids_at:
            forget_old(state.recent_ids, state.last_event_ms, dedup)
            state.prune_ids_at = next_prune_size(len(state.recent_ids))
        folded.applied.append(event)
        if may_move_up(state, weight, note_signals(state, event, rules), rules):
            # at the account's latest event time, or later fall-back: its event-time frontier
            transition = restage(state, max(state.as_of_ms, state.last_event_ms), event["event_id"], rules, config)
            if transition is not None:
                folded.transitions.append(transition)
    return folded


def _origin_absorbed(state: AccountState, origin: list[Any] | tuple[str, int, int]) -> bool:
    """True when this raw message reached the account before; otherwise records it."""
    topic, partition, offset = origin
    key = f"{topic}/{partition}"
    if offset <= state.origin_upto.get(key, -1):
        return True
    state.origin_upto[key] = offset
    return False
