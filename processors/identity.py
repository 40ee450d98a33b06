"""Which account an event belongs to, and where that account's state lives."""

from __future__ import annotations

import zlib
from typing import Any


def resolve_account(event: dict[str, Any]) -> str | None:
    """The account an event belongs to, or None when it cannot be attributed yet."""
    account_id = event.get("account_id")
    return account_id if isinstance(account_id, str) and account_id else None


def account_partition(account_id: str, partitions: int) -> int:
    """The partition that owns an account's state: stable across processes and runs."""
    return zlib.crc32(account_id.encode()) % partitions
