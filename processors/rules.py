"""Engagement rules (weights, daily caps, seniority, stage conditions) from a parsed TOML
document of the shape of streams/engagement.toml; errors name the offending key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors.scoring import DAY_MS, DEFAULT_MAX_CONTACTS, RETENTION_DAYS, SENIORITIES, ScoringConfig
from processors.stages import StageRules
from schemas.events import EVENT_TYPES


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, table by table."""
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def parse_rules(
    document: Mapping[str, Any], half_life_ms: float, cap_memory_ms: int, max_contacts: int = DEFAULT_MAX_CONTACTS
) -> tuple[ScoringConfig, StageRules]:
    weights = {kind: float(w) for kind, w in document["weights"].items()}
    caps = {kind: int(n) for kind, n in document["daily_caps"].items()}
    for table, keys in (("weights", weights), ("daily_caps", caps)):
        unknown = set(keys) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"[{table}] names unknown event types: {sorted(unknown)}")
    if missing := set(EVENT_TYPES) - set(weights):
        raise ValueError(f"[weights] lacks event types: {sorted(missing)}")
    if any(w < 0 for w in weights.values()) or any(n < 1 for n in caps.values()):
        raise ValueError("weights must be >= 0 and daily caps >= 1")
    seniority = {name: float(m) for name, m in document["seniority"].items()}
    if set(seniority) != set(SENIORITIES):
        raise ValueError(f"[seniority] must name exactly {list(SENIORITIES)}")
    stages = document["stages"]
    awareness, consideration, decision = stages["awareness"], stages["consideration"], stages["decision"]
    rules = StageRules(
        awareness_window_ms=_days(awareness["window_days"]),
        consideration_min_score=float(consideration["min_score"]),
        consideration_min_contacts=int(consideration["min_contacts"]),
        contacts_window_ms=_days(consideration["contacts_window_days"]),
        decision_intent_window_ms=_days(decision["intent_window_days"]),
        intent_event_types=frozenset(decision["intent_event_types"]),
        intent_url_patterns=tuple(decision["intent_url_patterns"]),
        intent_form_keywords=tuple(k.lower() for k in decision["intent_form_keywords"]),
        open_opportunity_decides=bool(decision["open_opportunity"]),
        dwell_ms=_days(stages["dwell_days"]),
    )
    if rules.contacts_window_ms > RETENTION_DAYS * DAY_MS:
        raise ValueError(f"[stages.consideration] contacts_window_days is at most {RETENTION_DAYS}")
    config = ScoringConfig(weights, caps, seniority, half_life_ms=half_life_ms, cap_memory_ms=cap_memory_ms, max_contacts=max_contacts)
    return config, rules


def _days(value: float) -> int:
    return int(float(value) * DAY_MS)
