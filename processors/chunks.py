"""Items as JSON arrays within a record's size: forwarded events (processors.routing)
and an account's held events (processors.scoring) go to Kafka in such records."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson


def json_arrays(items: Sequence[Any], max_items: int, max_bytes: int) -> Iterator[tuple[Sequence[Any], bytes]]:
    """The items in order as JSON arrays (with the items each holds) of at most
    ``max_items`` items and ``max_bytes`` bytes; a larger item goes alone. Typical items
    are encoded once: only a chunk over ``max_bytes`` is split, in halves."""
    for start in range(0, len(items), max_items):
        yield from _within(items[start : start + max_items], max_bytes)


def _within(items: Sequence[Any], max_bytes: int) -> Iterator[tuple[Sequence[Any], bytes]]:
    encoded = orjson.dumps(items)
    if len(encoded) <= max_bytes or len(items) == 1:
        yield items, encoded
        return
    half = len(items) // 2
    yield from _within(items[:half], max_bytes)
    yield from _within(items[half:], max_bytes)
