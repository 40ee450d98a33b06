"""Unresolved events in ClickHouse: kept with the domain that would resolve them, read
back when the account directory learns that domain, and marked once re-routed.

The order of a re-resolution protects the events: they are forwarded and the producer
flushed before their resolution rows are written, so a crash in between re-routes them
again (and the account's (source, event id) de-duplication drops the repeat) rather
than marking events resolved that never reached their account.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

UNRESOLVED_COLUMNS = (
    "event_id", "source", "type", "waiting_on", "contact_id", "email", "account_domain",
    "occurred_at", "received_at", "event",
)
RESOLUTION_COLUMNS = ("event_id", "source", "waiting_on", "account_id", "resolved_at")
DOMAINS_PER_QUERY = 1000


def unresolved_row(event: dict[str, Any], waiting_on: str | None) -> tuple[Any, ...]:
    stored = {key: value for key, value in event.items() if key != "_origin"}
    return (
        event["event_id"],
        event["source"],
        event["type"],
        waiting_on or "",
        event.get("contact_id") or "",
        event.get("email") or "",
        event.get("account_domain") or "",
        event["occurred_at_ms"],
        event["received_at_ms"],
        orjson.dumps(stored).decode(),
    )


def resolution_row(event: dict[str, Any], waiting_on: str, now_ms: int) -> tuple[Any, ...]:
    return (event["event_id"], event["source"], waiting_on, event["account_id"], now_ms)


def pending_events(client: Client, domains: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """(waiting_on, canonical event) of every unresolved event waiting on one of ``domains``."""
    wanted = sorted(set(domains))
    found: list[tuple[str, dict[str, Any]]] = []
    for start in range(0, len(wanted), DOMAINS_PER_QUERY):
        rows = client.query(
            "SELECT waiting_on, event FROM unresolved_pending WHERE waiting_on IN {domains:Array(String)} "
            "ORDER BY occurred_at",
            parameters={"domains": wanted[start : start + DOMAINS_PER_QUERY]},
        ).result_rows
        found.extend((waiting_on, orjson.loads(event)) for waiting_on, event in rows)
    return found


# processors.waiting.key_digest of the key ``waiting_on``, computed by the store
WAITING_DIGEST_SQL = "reinterpretAsUInt64(MD5(waiting_on))"


def waiting_digests(client: Client) -> Sequence[int]:
    """The digest of every key some unresolved event still waits on, ascending."""
    result = client.query(
        f"SELECT DISTINCT {WAITING_DIGEST_SQL} AS digest FROM unresolved_pending WHERE waiting_on != '' ORDER BY digest"
    )
    return result.result_columns[0] if result.result_columns else []
