"""Funnel stages: target -> awareness -> consideration -> decision.

Evaluated from the account's state at an event time. The slice's rules only move
forward; fall-back with hysteresis comes with configurable rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from processors.scoring import DAY_MS, AccountState, ScoringConfig, score_at

STAGES: Final = ("target", "awareness", "consideration", "decision", "customer")
STAGE_RANK: Final = {stage: rank for rank, stage in enumerate(STAGES)}


@dataclass(frozen=True, slots=True)
class StageRules:
    awareness_window_ms: int = 90 * DAY_MS
    consideration_min_score: float = 15.0
    consideration_min_contacts: int = 2
    breadth_window_ms: int = 90 * DAY_MS
    decision_intent_window_ms: int = 30 * DAY_MS


@dataclass(frozen=True, slots=True)
class StageTransition:
    account_id: str
    from_stage: str
    to_stage: str
    at_ms: int
    score: float
    event_id: str


def engaged_contacts(state: AccountState, at_ms: int, window_ms: int) -> int:
    since = at_ms - window_ms
    return sum(1 for last in state.contacts.values() if last >= since)


def stage_for(state: AccountState, at_ms: int, rules: StageRules, config: ScoringConfig) -> str:
    """The stage the account's activity qualifies for at ``at_ms``, best first."""
    if state.last_event_ms == 0 or at_ms - state.last_event_ms > rules.awareness_window_ms:
        return "target"
    considered = (
        score_at(state, at_ms, config) >= rules.consideration_min_score
        and engaged_contacts(state, at_ms, rules.breadth_window_ms) >= rules.consideration_min_contacts
    )
    if not considered:
        return "awareness"
    if state.last_high_intent_ms and at_ms - state.last_high_intent_ms <= rules.decision_intent_window_ms:
        return "decision"
    return "consideration"


def advance_stage(
    state: AccountState, at_ms: int, event_id: str, rules: StageRules, config: ScoringConfig
) -> StageTransition | None:
    """Moves the account forward when it qualifies for a later stage."""
    qualified = stage_for(state, at_ms, rules, config)
    if STAGE_RANK[qualified] <= STAGE_RANK[state.stage]:
        return None
    transition = StageTransition(
        state.account_id, state.stage, qualified, at_ms, score_at(state, at_ms, config), event_id
    )
    state.stage = qualified
    state.stage_since_ms = at_ms
    return transition
