"""Routing a batch of raw messages: valid and attributed events grouped by the
partition that owns their account, the rest set aside with a reason.

Each routed event carries its origin, ``_origin = [raw topic, partition, offset]``:
a worker killed after forwarding but before committing forwards the same raw messages
again, and their origin lets the account recognise them (processors.accounts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from processors.identity import account_partition, resolve_account
from processors.validation import Rejection, validate_event


@dataclass(slots=True)
class RoutedBatch:
    by_partition: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    rejected: list[tuple[int, Rejection]] = field(default_factory=list)  # (index in batch, why)
    unresolved: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    valid_by_type: dict[str, int] = field(default_factory=dict)


Origin = tuple[str, int, int]  # (topic, partition, offset) of the raw message


def route_batch(
    raw_values: Sequence[bytes | None], origins: Sequence[Origin], received_at_ms: int, partitions: int
) -> RoutedBatch:
    routed = RoutedBatch()
    for index, raw in enumerate(raw_values):
        result = validate_event(raw if raw is not None else b"", received_at_ms)
        if isinstance(result, Rejection):
            routed.rejected.append((index, result))
            continue
        result["_origin"] = origins[index]
        routed.valid_by_type[result["type"]] = routed.valid_by_type.get(result["type"], 0) + 1
        account_id = resolve_account(result)
        if account_id is None:
            routed.unresolved.append((index, result))
            continue
        partition = account_partition(account_id, partitions)
        bucket = routed.by_partition.get(partition)
        if bucket is None:
            bucket = routed.by_partition[partition] = []
        bucket.append(result)
    return routed
