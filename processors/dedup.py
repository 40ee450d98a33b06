"""De-duplication of events by (source, event id) over an event-time horizon.

Sources re-deliver (SendGrid retries the same event many times) and a worker killed
between forwarding and committing forwards again: both arrive with the same source and
event id. Every account remembers the ids of its recent events, as 64-bit digests with
their event time, so its memory is bounded by its traffic within the horizon (and a
hard cap). A duplicate of an event more than the horizon older than the account's
newest event is no longer recognised: the horizon must exceed the sources' retry span.
An account never remembers more than ``max_ids``: past it, the oldest eighth is
forgotten at once, so a busy account prunes once per eighth of the cap, not per event.
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Final

MIN_PRUNE_SIZE: Final = 1024


@dataclass(frozen=True, slots=True)
class DedupPolicy:
    horizon_ms: int = 48 * 3_600_000
    max_ids: int = 200_000  # per account, whatever the traffic: 4.2 MiB of a state's JSON, ~2 MiB compressed


def event_key(event: dict[str, Any]) -> int:
    """A stable 64-bit digest of (source, event id); collisions are ~2^-64 per pair."""
    text = f"{event['source']}\x1f{event['event_id']}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def seen_before(recent: MutableMapping[int, int], key: int, occurred_at_ms: int) -> bool:
    """True for a duplicate; otherwise records the key and returns False."""
    if key in recent:
        return True
    recent[key] = occurred_at_ms
    return False


def next_prune_size(size_after_prune: int) -> int:
    """Prune again once the keys doubled: amortized O(1) per event."""
    return max(MIN_PRUNE_SIZE, 2 * size_after_prune)


def must_prune(recent: MutableMapping[int, int], prune_at: int, policy: DedupPolicy) -> bool:
    """Due at the size ``next_prune_size`` gave, and past the cap (a state stored before a
    lower cap, or by a version that let the keys double past it)."""
    return len(recent) > prune_at or len(recent) > policy.max_ids


def forget_old(recent: MutableMapping[int, int], newest_ms: int, policy: DedupPolicy) -> None:
    """Drops keys of events older than the horizon; then, over the cap, the oldest down to
    seven eighths of it."""
    cutoff = newest_ms - policy.horizon_ms
    for key in [key for key, at in recent.items() if at < cutoff]:
        del recent[key]
    if len(recent) > policy.max_ids:
        excess = len(recent) - (policy.max_ids - policy.max_ids // 8)
        for key, _ in sorted(recent.items(), key=lambda item: item[1])[:excess]:
            del recent[key]
