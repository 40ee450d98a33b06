"""Per-account engagement: a time-decayed score, counts, breadth and funnel stage.

score(t) = sum of w_i * 2^(-(t - t_i) / H) over the account's events with t_i <= t.
The state keeps the score as of ``score_at_ms`` (the latest event time seen), so an
event is folded in with one multiplication whether it is in order or late.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

DAY_MS: Final = 86_400_000

# Default weight per event type; machine (privacy-proxy) opens weigh nothing.
DEFAULT_WEIGHTS: Final[dict[str, float]] = {
    "email_open": 1.0,
    "email_click": 3.0,
    "page_view": 2.0,
    "webinar_signup": 8.0,
}


@dataclass(slots=True)
class AccountState:
    account_id: str
    score: float = 0.0
    score_at_ms: int = 0
    events_total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    contacts: dict[str, int] = field(default_factory=dict)  # contact -> last engaged (ms)
    first_event_ms: int = 0
    last_event_ms: int = 0
    last_high_intent_ms: int = 0
    stage: str = "target"
    stage_since_ms: int = 0
    applied_upto: tuple[int, int] = (-1, -1)  # position of the last event absorbed
    origin_upto: dict[str, int] = field(default_factory=dict)  # "raw topic/partition" -> last raw offset absorbed
    recent_ids: dict[int, int] = field(default_factory=dict)  # processors.dedup keys -> event time
    prune_ids_at: int = 0  # size of recent_ids that triggers the next prune

    def to_bytes(self) -> bytes:
        return orjson.dumps(self, option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_bytes(cls, raw: bytes) -> AccountState:
        fields = orjson.loads(raw)
        fields["applied_upto"] = tuple(fields["applied_upto"])
        fields["recent_ids"] = {int(key): at for key, at in fields.get("recent_ids", {}).items()}
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    half_life_ms: float = 30 * DAY_MS
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))


def decay(half_life_ms: float, elapsed_ms: float) -> float:
    return 2.0 ** (-elapsed_ms / half_life_ms)


def event_weight(event: dict[str, Any], config: ScoringConfig) -> float:
    properties = event.get("properties") or {}
    if properties.get("machine_open") is True:
        return 0.0
    return config.weights.get(event["type"], 0.0)


def is_high_intent(event: dict[str, Any]) -> bool:
    """Signals of buying intent: a webinar signup or a pricing page view."""
    if event["type"] == "webinar_signup":
        return True
    return event["type"] == "page_view" and "/pricing" in (event.get("url") or "")


def score_at(state: AccountState, at_ms: int, config: ScoringConfig) -> float:
    """The account's score at ``at_ms`` (no later than its latest event)."""
    return state.score * decay(config.half_life_ms, at_ms - state.score_at_ms)


def apply_event(state: AccountState, event: dict[str, Any], config: ScoringConfig) -> None:
    """Fold one canonical event into the account's state."""
    at = event["occurred_at_ms"]
    weight = event_weight(event, config)
    if at >= state.score_at_ms:
        state.score = state.score * decay(config.half_life_ms, at - state.score_at_ms) + weight
        state.score_at_ms = at
    else:
        state.score += weight * decay(config.half_life_ms, state.score_at_ms - at)
    state.events_total += 1
    kind = event["type"]
    state.counts[kind] = state.counts.get(kind, 0) + 1
    if state.first_event_ms == 0 or at < state.first_event_ms:
        state.first_event_ms = at
    state.last_event_ms = max(state.last_event_ms, at)
    contact = event.get("contact_id") or event.get("email")
    if contact and weight > 0 and at > state.contacts.get(contact, 0):
        state.contacts[contact] = at
    if is_high_intent(event):
        state.last_high_intent_ms = max(state.last_high_intent_ms, at)
