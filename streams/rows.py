"""ClickHouse rows from events, account states and stage transitions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import orjson

from processors.fast_routing import native
from processors.scoring import DAY_MS, AccountState, ScoringConfig, engaged_contacts, rolling_counts, score_at
from processors.stages import StageTransition

TRANSITION_FIELDS = tuple(field.name for field in fields(StageTransition))


def event_row(event: dict[str, Any], partition: int, offset: int, index: int, claim: int) -> tuple[Any, ...]:
    """The event's row of ``events_claimed``, with its partition's claim (streams.store.claim_partitions)."""
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
        claim,
    )


def forwarded_rows(messages: Mapping[tuple[int, int], tuple[bytes, int]], positions: Sequence[tuple[int, int, int]]) -> Any:
    """``event_row`` of each event at these positions (partition, offset, index) of the
    forwarded messages ({(partition, offset): (message, the partition's claim)}): where
    native code is built, its RowBinary (``abm_native.EncodedRows``, made without the GIL:
    the same rows, tests/unit/test_store.py), else the tuples."""
    if native is not None:
        return native.claimed_event_rows(messages, positions)
    decoded: dict[tuple[int, int], list[dict[str, Any]]] = {}
    rows = []
    for partition, offset, index in positions:
        message, claim = messages[(partition, offset)]
        events = decoded.get((partition, offset))
        if events is None:
            events = decoded[(partition, offset)] = orjson.loads(message)
        rows.append(event_row(events[index], partition, offset, index, claim))
    return rows


def dead_letter_row(message: Any, reason: str, text: str, key: bytes | None, value: bytes | None) -> tuple[Any, ...]:
    """A rejected Kafka message (streams.fast_path.Fetched) with its reason and its key and
    value as dead-lettered (cut when too large)."""
    return (message.topic, message.partition, message.offset, message.timestamp_ms, reason, text, key or b"", value or b"")


def account_row(state: AccountState, now_ms: int, config: ScoringConfig) -> tuple[Any, ...]:
    counts = state.counts
    as_of = max(state.as_of_ms, state.last_event_ms)
    return (
        state.account_id,
        score_at(state, as_of, config),
        as_of,
        state.stage,
        state.stage_since_ms,
        state.events_total,
        counts.get("email_open", 0),
        counts.get("email_click", 0),
        counts.get("page_view", 0),
        counts.get("webinar_signup", 0),
        engaged_contacts(state, as_of, 90 * DAY_MS),
        state.first_event_ms,
        state.last_event_ms,
        now_ms,
        state.events_total,
        engaged_contacts(state, as_of, 30 * DAY_MS),
        *rolling_counts(state, as_of, (7, 30, 90)),
        state.stage_reason,
    )


def account_rows(states: Iterable[AccountState], now_ms: int, config: ScoringConfig) -> list[Sequence[Any]]:
    """Rows of the accounts with an event applied (not only held for the watermark)."""
    return [account_row(state, now_ms, config) for state in states if state.last_event_ms]


def transition_rows(transitions: Iterable[StageTransition]) -> list[Sequence[Any]]:
    return [(t.account_id, t.from_stage, t.to_stage, t.at_ms, t.score, t.event_id, t.reason) for t in transitions]


def transition_message(transition: StageTransition) -> tuple[bytes, bytes]:
    """Key and value of a transition on the stage-transitions topic: its fields as JSON."""
    # by name: orjson reads a dataclass's slots directly, which a mypyc-compiled class lacks
    # (it crashed), and asdict's deep copy took 19 µs
    return transition.account_id.encode(), orjson.dumps({name: getattr(transition, name) for name in TRANSITION_FIELDS})
