"""De-duplication of events by (source, event id) over an event-time horizon.

Sources re-deliver (SendGrid retries the same event many times) and a worker killed
between forwarding and committing forwards again: both arrive with the same source and
event id. Every account remembers the ids of its recent events, as 64-bit digests with
their event time, so its memory is bounded by its traffic within the horizon (and a
hard cap). A duplicate of an event more than the horizon older than the account's
newest event is no longer recognised: the horizon must exceed the sources' retry span.
An account never remembers more than ``max_ids``: past it, the oldest eighth is
forgotten at once, so a busy account prunes once per eighth of the cap, not per event.

The ids of every state in memory are kept for the horizon (48 hours): as a dict, ~137
bytes an id, a live worker's states grew by ~0.7 MiB/s at 5,000 events/s, and by
tens of GiB over the horizon. ``RecentIds`` keeps them in sorted arrays, 16 bytes an id.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

MIN_PRUNE_SIZE: Final = 1024
MIN_MERGE_SIZE: Final = 256


@dataclass(frozen=True, slots=True)
class DedupPolicy:
    horizon_ms: int = 48 * 3_600_000
    max_ids: int = 200_000  # per account, whatever the traffic: 4.2 MiB of a state's JSON, ~2 MiB compressed


def event_key(event: dict[str, Any]) -> int:
    """A stable 64-bit digest of (source, event id); collisions are ~2^-64 per pair."""
    text = f"{event['source']}\x1f{event['event_id']}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


class RecentIds(Mapping[int, int]):
    """Event-id digests and their event times: sorted arrays of those merged (16 bytes an
    id), and a dict of those added since, merged into the arrays once it holds an eighth
    as many (at most 256 between merges for small accounts): amortized O(log n) an id."""

    __slots__ = ("_keys", "_times", "_added")

    def __init__(self, pairs: Mapping[int, int] | Iterable[tuple[int, int]] = ()) -> None:
        items = sorted(dict(pairs).items())
        self._keys = array("Q", [key for key, _ in items])
        self._times = array("q", [at for _, at in items])
        self._added: dict[int, int] = {}

    @classmethod
    def from_arrays(cls, keys: array[int], times: array[int]) -> RecentIds:
        """The ids and times as ``arrays`` gives them (in ascending ids), taken as they
        are: loading a state then builds no dict (a third of the load's time). Ids out of
        order would make lookups miss them: such arrays are sorted, never trusted."""
        ids = keys.tolist()
        if ids != sorted(ids):  # in C: an index loop over the arrays cost twice as much
            return cls(zip(keys, times))
        recent = cls()
        recent._keys, recent._times = keys, times
        return recent

    def _index(self, key: int) -> int:
        """The key's index in the merged arrays; -1 when not there."""
        keys = self._keys
        index = bisect_left(keys, key)
        return index if index < len(keys) and keys[index] == key else -1

    def __getitem__(self, key: int) -> int:
        at = self._added.get(key)
        if at is not None:
            return at
        index = self._index(key)
        if index < 0:
            raise KeyError(key)
        return self._times[index]

    def __contains__(self, key: object) -> bool:
        return key in self._added or (isinstance(key, int) and self._index(key) >= 0)

    def __iter__(self) -> Iterator[int]:
        yield from self._keys
        yield from self._added

    def __len__(self) -> int:
        return len(self._keys) + len(self._added)

    def add(self, key: int, occurred_at_ms: int) -> bool:
        """Records the key; False when it was there already (its time is kept)."""
        if key in self._added or self._index(key) >= 0:
            return False
        self._added[key] = occurred_at_ms
        if len(self._added) > max(MIN_MERGE_SIZE, len(self._keys) // 8):
            self._merge()
        return True

    def forget(self, older_than_ms: int, max_ids: int) -> None:
        """Drops the ids of events older than ``older_than_ms``; then, over ``max_ids``,
        the oldest down to seven eighths of it (at equal times, the smaller ids first)."""
        self._merge()
        times = self._times
        kept = [index for index, at in enumerate(times) if at >= older_than_ms]
        if len(kept) > max_ids:
            excess = len(kept) - (max_ids - max_ids // 8)
            kept = sorted(sorted(kept, key=times.__getitem__)[excess:])  # stable: by key at equal times
        if len(kept) < len(times):
            self._keys = array("Q", map(self._keys.__getitem__, kept))
            self._times = array("q", map(times.__getitem__, kept))

    def arrays(self) -> tuple[array[int], array[int]]:
        """The ids and their times, as they are stored (processors.scoring)."""
        self._merge()
        return self._keys, self._times

    def _merge(self) -> None:
        """Inserts the added ids into the arrays: slices of the arrays between them are
        copied whole, so no more than the new arrays is built (a dict of every id was
        ~27 MiB for an account at the cap)."""
        if not self._added:
            return
        keys, times = self._keys, self._times
        merged_keys, merged_times = array("Q"), array("q")
        start = 0
        for key, at in sorted(self._added.items()):  # never in the arrays: add() checked
            index = bisect_left(keys, key, start)
            merged_keys += keys[start:index]
            merged_times += times[start:index]
            merged_keys.append(key)
            merged_times.append(at)
            start = index
        merged_keys += keys[start:]
        merged_times += times[start:]
        self._keys, self._times = merged_keys, merged_times
        self._added = {}


def seen_before(recent: RecentIds, key: int, occurred_at_ms: int) -> bool:
    """True for a duplicate; otherwise records the key and returns False."""
    return not recent.add(key, occurred_at_ms)


def next_prune_size(size_after_prune: int) -> int:
    """Prune again once the keys doubled: amortized O(1) per event."""
    return max(MIN_PRUNE_SIZE, 2 * size_after_prune)


def must_prune(recent: RecentIds, prune_at: int, policy: DedupPolicy) -> bool:
    """Due at the size ``next_prune_size`` gave, and past the cap (a state stored before a
    lower cap, or by a version that let the keys double past it)."""
    return len(recent) > prune_at or len(recent) > policy.max_ids


def forget_old(recent: RecentIds, newest_ms: int, policy: DedupPolicy) -> None:
    """Drops keys of events older than the horizon; then, over the cap, the oldest down to
    seven eighths of it."""
    recent.forget(newest_ms - policy.horizon_ms, policy.max_ids)
