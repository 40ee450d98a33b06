"""Funnel stages: target -> awareness -> consideration -> decision -> customer.

Each stage has a condition on the account's state at an event time (``StageRules``,
from the engagement rules file); the account qualifies for the highest stage whose
condition holds. CRM facts override activity: a closed-won opportunity makes a
customer for good, an open one qualifies for decision.

Without new events every condition only ages out, so each one holds until a known
time. The account moves up as soon as it qualifies; it falls back once what holds
its stage has aged out and it has stayed in the stage for the dwell time (no flapping).
The time of that fall-back is kept in the state (``fallback_at_ms``): it is a function
of the account's events, so it does not depend on when the watermark reaches it.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any, Final

from processors.scoring import AccountState, ScoringConfig, engaged_contacts, score_at

STAGES: Final = ("target", "awareness", "consideration", "decision", "customer")
STAGE_RANK: Final = {stage: rank for rank, stage in enumerate(STAGES)}
TARGET, AWARENESS, CONSIDERATION, DECISION, CUSTOMER = range(len(STAGES))
FOREVER: Final = math.inf
NEVER: Final = -math.inf


@dataclass(frozen=True, slots=True)
class StageRules:
    awareness_window_ms: int
    consideration_min_score: float
    consideration_min_contacts: int
    contacts_window_ms: int
    decision_intent_window_ms: int
    intent_event_types: frozenset[str]  # every event of these types is a high-intent signal
    intent_url_patterns: tuple[str, ...]  # page views of URLs containing one of these
    intent_form_keywords: tuple[str, ...]  # forms whose form_id or cta_id contains one of these
    open_opportunity_decides: bool
    dwell_ms: int


@dataclass(frozen=True, slots=True)
class StageTransition:
    account_id: str
    from_stage: str
    to_stage: str
    at_ms: int
    score: float
    event_id: str  # the event that caused it; "" for a fall-back as time passed
    reason: str


def is_high_intent(event: dict[str, Any], rules: StageRules) -> bool:
    kind = event["type"]
    if kind in rules.intent_event_types:
        return True
    if kind == "page_view":
        url = event.get("url") or ""
        return any(pattern in url for pattern in rules.intent_url_patterns)
    if kind == "form_submitted":
        properties = event.get("properties") or {}
        ids = f"{properties.get('form_id', '')} {properties.get('cta_id', '')}".lower()
        return any(keyword in ids for keyword in rules.intent_form_keywords)
    return False


def note_signals(state: AccountState, event: dict[str, Any], rules: StageRules) -> bool:
    """Records what stages look at beyond engagement; True when the event was one."""
    at = event["occurred_at_ms"]
    if event["type"] == "opportunity_stage_changed":
        properties = event["properties"]
        closed = properties.get("is_closed") is True
        won = closed and properties.get("is_won") is True
        change = [at, int(closed), int(won)]  # on equal times a close wins, in any order
        known = state.opportunities.get(properties["opportunity_id"])
        if known is None or change > known:
            state.opportunities[properties["opportunity_id"]] = change
        if won and (state.won_at_ms == 0 or at < state.won_at_ms):
            state.won_at_ms = at
        return True
    if is_high_intent(event, rules):
        state.last_high_intent_ms = max(state.last_high_intent_ms, at)
        return True
    return False


def may_move_up(state: AccountState, weight: float, signal: bool, rules: StageRules) -> bool:
    """Whether an event can qualify the account for a higher stage (a cheap test that
    spares most events the full evaluation). Engagement alone (no intent, no opportunity)
    leads no further than consideration, which needs the score (it only decays from
    ``state.score``) and the contacts. An event that cannot move the account up leaves
    ``fallback_at_ms`` early, never late (engagement only pushes it back): the fall-back
    is then evaluated at that time, finds the stage still held and reschedules."""
    if signal:
        return True
    if weight <= 0:
        return False
    rank = STAGE_RANK[state.stage]
    if rank == AWARENESS:
        return len(state.contacts) >= rules.consideration_min_contacts and state.score >= rules.consideration_min_score
    return rank == TARGET


def has_open_opportunity(state: AccountState) -> bool:
    return any(not closed for _, closed, _ in state.opportunities.values())


def holds_until(state: AccountState, at_ms: int, rules: StageRules, config: ScoringConfig) -> list[float]:
    """Per stage, until when its own condition holds without new events (NEVER: not now)."""
    awareness = state.last_engaged_ms + rules.awareness_window_ms if state.last_engaged_ms else NEVER
    score = score_at(state, at_ms, config)
    if rules.consideration_min_score <= 0:
        score_until = FOREVER
    elif score >= rules.consideration_min_score:  # when it decays to the threshold
        score_until = at_ms + config.half_life_ms * math.log2(score / rules.consideration_min_score)
    else:
        score_until = NEVER
    needed = rules.consideration_min_contacts
    if needed <= 0:
        contacts_until = FOREVER
    elif len(state.contacts) >= needed:  # the needed-th most recent contact ages out last
        contacts_until = float(heapq.nlargest(needed, state.contacts.values())[-1] + rules.contacts_window_ms)  # float as its alternatives (mypyc)
    else:
        contacts_until = NEVER
    consideration = min(score_until, contacts_until)
    intent = state.last_high_intent_ms + rules.decision_intent_window_ms if state.last_high_intent_ms else NEVER
    decision = min(consideration, intent)
    if rules.open_opportunity_decides and has_open_opportunity(state):
        decision = FOREVER
    customer = FOREVER if state.won_at_ms else NEVER
    return [FOREVER, awareness, consideration, decision, customer]


def restage(
    state: AccountState, at_ms: int, event_id: str, rules: StageRules, config: ScoringConfig
) -> StageTransition | None:
    """Evaluates the account at ``at_ms`` (no earlier than its latest evaluation), moves
    it when it should, and schedules its next fall-back."""
    until = holds_until(state, at_ms, rules, config)
    qualified = CUSTOMER
    while until[qualified] < at_ms:  # target always holds
        qualified -= 1
    current = STAGE_RANK[state.stage]
    transition = None
    if qualified > current or (qualified < current and at_ms >= state.stage_since_ms + rules.dwell_ms):
        score = score_at(state, at_ms, config)
        reason = stage_reason(state, qualified, at_ms, rules)
        if qualified < current:
            reason = f"{state.stage} lapsed; {reason}"
        transition = StageTransition(state.account_id, state.stage, STAGES[qualified], at_ms, score, event_id, reason)
        state.stage, state.stage_since_ms, state.stage_reason = STAGES[qualified], at_ms, reason
        current = qualified
    lasts = max(until[current:])  # the current stage holds while it or any stage above does
    if lasts == FOREVER:
        state.fallback_at_ms = 0
    else:  # NEVER: it lapsed already and waits out the dwell time
        lapses = at_ms if lasts == NEVER else math.floor(lasts) + 1
        state.fallback_at_ms = max(lapses, state.stage_since_ms + rules.dwell_ms)
    state.as_of_ms = at_ms
    return transition


def fall_back_until(state: AccountState, at_ms: int, rules: StageRules, config: ScoringConfig) -> list[StageTransition]:
    """Applies every fall-back due at or before ``at_ms``, each at its own time."""
    transitions = []
    while 0 < state.fallback_at_ms <= at_ms:
        transition = restage(state, state.fallback_at_ms, "", rules, config)
        if transition is not None:
            transitions.append(transition)
    return transitions


def stage_reason(state: AccountState, rank: int, at_ms: int, rules: StageRules) -> str:
    if rank == CUSTOMER:
        return "closed-won opportunity"
    if rank == DECISION:
        if rules.open_opportunity_decides and has_open_opportunity(state):
            return "open opportunity"
        return f"high-intent signal within {_days(rules.decision_intent_window_ms)} days"
    if rank == CONSIDERATION:
        contacts = engaged_contacts(state, at_ms, rules.contacts_window_ms)
        return (
            f"score at least {rules.consideration_min_score:g} and {contacts} engaged contacts "
            f"within {_days(rules.contacts_window_ms)} days"
        )
    if rank == AWARENESS:
        return f"engaged within {_days(rules.awareness_window_ms)} days"
    return f"no engagement within {_days(rules.awareness_window_ms)} days"


def _days(ms: float) -> str:
    return f"{ms / 86_400_000:g}"
