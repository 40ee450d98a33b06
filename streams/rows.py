"""ClickHouse rows from events, account states and stage transitions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from processors.scoring import AccountState, ScoringConfig, score_at
from processors.stages import StageRules, StageTransition, engaged_contacts

EMPTY_PROPERTIES = b"{}"


def event_row(event: dict[str, Any], partition: int, offset: int, index: int) -> tuple[Any, ...]:
    properties = event.get("properties")
    return (
        event["event_id"],
        event["type"],
        event["source"],
        event["account_id"],
        event.get("contact_id") or "",
        event.get("email") or "",
        event.get("campaign_id") or "",
        event.get("url") or "",
        event.get("content_id") or "",
        event["occurred_at_ms"],
        event["received_at_ms"],
        orjson.dumps(properties).decode() if properties else "{}",
        partition,
        offset,
        index,
    )


def dead_letter_row(message: Any, reason: str, text: str) -> tuple[Any, ...]:
    """A rejected Kafka message (Faust's: timestamp in seconds) with its reason and original bytes."""
    return (
        message.topic, message.partition, message.offset, round(message.timestamp * 1000), reason, text,
        message.key or b"", message.value or b"",
    )


def account_row(state: AccountState, now_ms: int, config: ScoringConfig, rules: StageRules) -> tuple[Any, ...]:
    counts = state.counts
    return (
        state.account_id,
        score_at(state, state.score_at_ms, config),
        state.score_at_ms,
        state.stage,
        state.stage_since_ms,
        state.events_total,
        counts.get("email_open", 0),
        counts.get("email_click", 0),
        counts.get("page_view", 0),
        counts.get("webinar_signup", 0),
        engaged_contacts(state, state.last_event_ms, rules.breadth_window_ms),
        state.first_event_ms,
        state.last_event_ms,
        now_ms,
        state.events_total,
    )


def account_rows(
    states: Iterable[AccountState], now_ms: int, config: ScoringConfig, rules: StageRules
) -> list[Sequence[Any]]:
    return [account_row(state, now_ms, config, rules) for state in states]


def transition_rows(transitions: Iterable[StageTransition]) -> list[Sequence[Any]]:
    return [(t.account_id, t.from_stage, t.to_stage, t.at_ms, t.score, t.event_id) for t in transitions]
