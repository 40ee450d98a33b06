"""The keys (domains, contacts) unresolved events wait on, held as 64-bit digests.

A worker checks every key the account directory learns against them, so it holds them
all. As strings in a set they took 124 MiB per million keys, loaded at every start;
as sorted digests they take 8 bytes each, plus a set for those added since the last
merge. A digest shared by two keys (about n/2^64 for a lookup among n) can only cost a
commit and a query that find nothing, or leave the colliding key's events waiting until
the next start reloads the digests from the store.

``key_digest`` must agree with ``streams.unresolved.WAITING_DIGEST_SQL``: the first
eight bytes of the key's MD5, read little-endian.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from heapq import merge
from typing import Final

MIN_MERGE: Final = 65_536  # digests added or removed before the sorted array is rebuilt


def key_digest(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode()).digest()[:8], "little")


class WaitingKeys:
    def __init__(self, digests: Iterable[int] = (), min_merge: int = MIN_MERGE) -> None:
        """From digests, best given ascending and distinct: then they are held as given."""
        self._min_merge = min_merge
        self._sorted: array[int] = array("Q", digests)
        if any(later <= earlier for earlier, later in zip(self._sorted, self._sorted[1:])):
            self._sorted = array("Q", sorted(set(self._sorted)))
        self._added: set[int] = set()  # not in _sorted
        self._removed: set[int] = set()  # in _sorted, no longer waiting

    def __len__(self) -> int:
        return len(self._sorted) - len(self._removed) + len(self._added)

    def _in_sorted(self, digest: int) -> bool:
        at = bisect_left(self._sorted, digest)
        return at < len(self._sorted) and self._sorted[at] == digest

    def _holds(self, digest: int) -> bool:
        return digest in self._added or (digest not in self._removed and self._in_sorted(digest))

    def among(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` some event may wait on."""
        return {key for key in keys if self._holds(key_digest(key))}

    def add(self, keys: Iterable[str]) -> None:
        for key in keys:
            digest = key_digest(key)
            if digest in self._removed:
                self._removed.discard(digest)
            elif not self._in_sorted(digest):
                self._added.add(digest)
        self._merge_if_due()

    def discard(self, keys: Iterable[str]) -> None:
        for key in keys:
            digest = key_digest(key)
            if digest in self._added:
                self._added.discard(digest)
            elif self._in_sorted(digest):
                self._removed.add(digest)
        self._merge_if_due()

    def _merge_if_due(self) -> None:
        if len(self._added) + len(self._removed) < max(self._min_merge, len(self._sorted) // 8):
            return
        removed = self._removed
        kept = (digest for digest in self._sorted if digest not in removed)
        self._sorted = array("Q", merge(kept, sorted(self._added)))
        self._added, self._removed = set(), set()
