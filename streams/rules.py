"""Loads the engagement rules: the shipped defaults, overridden by the file
ABM_ENGAGEMENT_RULES names."""

from __future__ import annotations

import tomllib
from pathlib import Path

from processors.rules import merged, parse_rules
from processors.scoring import DEFAULT_MAX_CONTACTS, ScoringConfig
from processors.stages import StageRules

DEFAULT_RULES = Path(__file__).with_name("engagement.toml")


def load_rules(
    overrides: Path | None, half_life_ms: float, cap_memory_ms: int, max_contacts: int = DEFAULT_MAX_CONTACTS
) -> tuple[ScoringConfig, StageRules]:
    document = tomllib.loads(DEFAULT_RULES.read_text())
    if overrides is not None:
        document = merged(document, tomllib.loads(overrides.read_text()))
    return parse_rules(document, half_life_ms, cap_memory_ms, max_contacts)
