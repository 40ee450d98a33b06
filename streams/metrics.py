"""Counters the worker keeps about itself, served as JSON at /abm/status."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class PipelineStats:
    raw_in: int = 0
    valid_by_type: dict[str, int] = field(default_factory=dict)
    invalid_by_reason: dict[str, int] = field(default_factory=dict)
    unresolved: int = 0  # valid events no account could be found for (kept, see unresolved_pending)
    resolved_later: int = 0  # unresolved events re-routed once their domain became known
    contacts_learned: int = 0  # contact -> account links learned from events and published
    forwarded: int = 0
    redelivered_skipped: int = 0  # offsets delivered again after a seek (not reprocessed)
    stale_dropped: int = 0  # fetched before a rebalance: left to the partition's owner
    applied: int = 0
    duplicates: int = 0  # same (source, event id) seen before: counted nowhere else
    transitions: int = 0

    def add_counts(self, target: dict[str, int], counts: dict[str, int]) -> None:
        for key, n in counts.items():
            target[key] = target.get(key, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
