"""Folding a batch of canonical events into per-account state.

Idempotent per account three times over. Each state remembers:
- the position (by-account offset, index in the message) of the last event absorbed,
  so a message redelivered after a crash changes nothing;
- per raw partition, the last raw offset absorbed: a raw message forwarded again by a
  worker killed before its commit arrives at a new position but an old origin
  (one raw partition's events reach an account in offset order);
- the (source, event id) of its recent events, so a source's retry counts once.

An admitted event is either applied at once, or (``max_held``) held by its account (in
memory, then in a segment once the state is written: processors.scoring) until the
partition's watermark passes it (processors.watermarks) and then applied
in event-time order: as long as events come within the allowed lateness, an account's
stages then depend only on its events, not on the order they arrived in. An account holds
at most ``max_held`` events: a burst beyond it (a bot's page views within the allowed
lateness) would fill the worker's memory when the watermark reads it back, so the
earliest are then applied at once, as if the watermark had passed them; events that
arrive later and are earlier than those count as late ones.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from processors.dedup import DedupPolicy, event_key, forget_old, must_prune, next_prune_size, seen_before
from processors.scoring import HELD_ORDER, AccountState, ScoringConfig, StoredHeld, apply_event, as_held, no_stored_held
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
    max_held: int = 0,
    stored_held: StoredHeld = no_stored_held,
) -> Folded:
    """Admit events in order: the events admitted, the stage transitions (of the events
    applied at once), what was skipped. ``max_held`` > 0: events are held, at most that
    many per account (``stored_held`` reads back those of their states' segments)."""
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
        if event["occurred_at_ms"] > state.latest_seen_ms:
            state.latest_seen_ms = event["occurred_at_ms"]
        if must_prune(state.recent_ids, state.prune_ids_at, dedup):
            forget_old(state.recent_ids, state.latest_seen_ms, dedup)
            state.prune_ids_at = next_prune_size(len(state.recent_ids))
        folded.applied.append(event)
        if max_held:
            insort(state.held, as_held(event), key=HELD_ORDER)
            if len(state.held) > max_held or (state.held_segments and state.held_count > max_held):
                state.read_back(list(state.held_segments), stored_held)
                folded.transitions += settle(state, state.held[-max_held - 1][0], config, rules, stored_held)
        else:
            apply_in_time(state, event, config, rules, folded.transitions)
    return folded


def apply_in_time(
    state: AccountState, event: dict[str, Any], config: ScoringConfig, rules: StageRules, transitions: list[StageTransition]
) -> None:
    """Applies the event after the fall-backs due before it; appends the transitions."""
    at = event["occurred_at_ms"]
    if 0 < state.fallback_at_ms <= at:  # time passed since the account's last evaluation
        transitions.extend(fall_back_until(state, at, rules, config))
    weight = apply_event(state, event, config)
    if may_move_up(state, weight, note_signals(state, event, rules), rules):
        # at the account's latest event time, or later fall-back: its event-time frontier
        transition = restage(state, max(state.as_of_ms, state.last_event_ms), event["event_id"], rules, config)
        if transition is not None:
            transitions.append(transition)


def settle(state: AccountState, upto_ms: int, config: ScoringConfig, rules: StageRules, stored_held: StoredHeld = no_stored_held) -> list[StageTransition]:
    """Applies the held events up to ``upto_ms`` in event-time order (those of segments
    it reaches read back by ``stored_held``), then the fall-backs due by then; returns
    the transitions."""
    transitions: list[StageTransition] = []
    reached = [segment for segment in state.held_segments if segment[0] <= upto_ms]
    if reached:
        state.read_back(reached, stored_held)
    held = state.held
    due = 0
    while due < len(held) and held[due][0] <= upto_ms:
        due += 1
    if due:
        state.held = held[due:]
        for _, _, _, event in held[:due]:
            apply_in_time(state, event, config, rules, transitions)
    transitions.extend(fall_back_until(state, upto_ms, rules, config))
    return transitions


def _origin_absorbed(state: AccountState, origin: list[Any] | tuple[str, int, int]) -> bool:
    """True when this raw message reached the account before; otherwise records it."""
    topic, partition, offset = origin
    key = f"{topic}/{partition}"
    if offset <= state.origin_upto.get(key, -1):
        return True
    state.origin_upto[key] = offset
    return False
