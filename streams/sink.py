"""The ClickHouse sink: rows buffered per table, inserted in one call per table.

Only the checkpoint takes rows out and writes them. A failing insert is retried with
backoff until it succeeds: while it retries nothing is acknowledged, and once the next
checkpoint is due the agents stop taking events (it waits for this one), so memory stays
bounded and nothing is lost or committed early.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client

from streams.rows import forwarded_rows

log = logging.getLogger(__name__)
Result = TypeVar("Result")

EVENT_COLUMNS = (
    "event_id", "type", "source", "account_id", "contact_id", "email", "campaign_id", "url",
    "content_id", "occurred_at", "received_at", "properties", "src_partition", "src_offset", "src_index",
)
# The sink's way into `events` (schemas/clickhouse/005_claimed_events.sql): each row
# carries its partition's claim, and lands only while that claim is the partition's latest.
CLAIMED_EVENTS = "events_claimed"
CLAIMED_EVENT_COLUMNS = (*EVENT_COLUMNS, "claim")
ACCOUNT_COLUMNS = (
    "account_id", "engagement_score", "score_at", "stage", "stage_since", "events_total", "email_opens",
    "email_clicks", "page_views", "webinar_signups", "engaged_contacts_90d", "first_event_at",
    "last_event_at", "updated_at", "version", "engaged_contacts_30d", "events_7d", "events_30d",
    "events_90d", "stage_reason",
)
TRANSITION_COLUMNS = ("account_id", "from_stage", "to_stage", "at", "score", "event_id", "reason")
DEAD_LETTER_COLUMNS = ("topic", "partition", "offset", "at", "reason", "message", "key", "payload")


def insert_settings(token: str) -> dict[str, Any]:
    """A retried insert (same token) is dropped by its table and by every materialized
    view it feeds (the views' own default differs between ClickHouse versions)."""
    return {"insert_deduplication_token": token, "deduplicate_blocks_in_dependent_materialized_views": 1}


Position = tuple[int, int, int]  # (by-account partition, offset of the forwarded message, index in it)


@dataclass(slots=True)
class ForwardedEvents:
    """Events to write as rows, kept as the forwarded messages they came in and their
    positions there: the rows are made in the sink's thread at the insert
    (streams.rows.forwarded_rows), not on the event loop."""

    messages: dict[tuple[int, int], tuple[bytes, int]] = field(default_factory=dict)  # (partition, offset) -> (message, claim)
    positions: list[Position] = field(default_factory=list)


@dataclass(slots=True)
class TableBuffer:
    columns: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)
    forwarded: ForwardedEvents = field(default_factory=ForwardedEvents)
    encoded: Any = None  # the rows of ``forwarded`` once made: retried, the same are inserted

    def __len__(self) -> int:
        return len(self.rows) + len(self.forwarded.positions)


@dataclass(slots=True)
class SinkStats:
    rows_written: int = 0
    inserts: int = 0
    failures: int = 0


class WriteAbandoned(RuntimeError):
    """An insert that had not reached the store when its checkpoint was abandoned."""


class ClickHouseSink:
    def __init__(
        self,
        client: Client,
        tables: dict[str, Sequence[str]],
        max_backoff_s: float = 30.0,
        on_written: Callable[[str, TableBuffer], None] | None = None,
    ) -> None:
        self._client = client
        # One statement at a time: a server's HTTP session refuses concurrent ones, and
        # the checkpoint's insert runs while the agents (and rebalance handlers) go on.
        self._client_lock = threading.Lock()
        self._buffers = {name: TableBuffer(columns) for name, columns in tables.items()}
        self._max_backoff_s = max_backoff_s
        self._on_written = on_written  # told of every batch ClickHouse acknowledged
        self._writes_generation = 0  # inserts of an earlier generation were abandoned
        self.stats = SinkStats()
        self.failing = False

    async def call(self, function: Callable[..., Result], *args: Any) -> Result:
        """``function(client, *args)`` in a thread, never at the same time as another use
        of the store's client."""
        return await self._call(None, function, *args)

    async def _call(self, generation: int | None, function: Callable[..., Result], *args: Any) -> Result:
        def one_at_a_time() -> Result:
            with self._client_lock:
                if generation is not None and generation != self._writes_generation:
                    raise WriteAbandoned("its checkpoint was abandoned")
                return function(self._client, *args)

        return await asyncio.to_thread(one_at_a_time)

    async def abandon_writes(self, timeout_s: float) -> bool:
        """After this, no insert started before it reaches the store: one still waiting
        for the client is refused, and the one at the store is waited for (a thread cannot
        be called back). False when it did not end within ``timeout_s``."""
        self._writes_generation += 1

        def store_free() -> bool:
            if not self._client_lock.acquire(timeout=timeout_s):
                return False
            self._client_lock.release()
            return True

        return await asyncio.to_thread(store_free)

    def add(self, table: str, rows: list[Sequence[Any]]) -> None:
        self._buffers[table].rows.extend(rows)

    def add_forwarded(self, table: str, messages: Iterable[tuple[int, int, bytes, int]], positions: list[Position]) -> None:
        """Rows of the events at these positions of these forwarded messages (partition,
        offset, message, the partition's claim)."""
        forwarded = self._buffers[table].forwarded
        for partition, offset, message, claim in messages:
            forwarded.messages[(partition, offset)] = (message, claim)
        forwarded.positions += positions

    @property
    def pending_rows(self) -> int:
        return sum(len(buffer) for buffer in self._buffers.values())

    def discard(self) -> None:
        """Drop buffered rows whose events will be redelivered (after a revocation)."""
        for name, buffer in self._buffers.items():
            self._buffers[name] = TableBuffer(buffer.columns)

    def take(self) -> dict[str, TableBuffer]:
        """The buffered rows, handed over whole; buffering starts afresh."""
        taken = {name: buffer for name, buffer in self._buffers.items() if len(buffer)}
        for name, buffer in taken.items():
            self._buffers[name] = TableBuffer(buffer.columns)
        return taken

    async def write(self, taken: dict[str, TableBuffer], dedup_token: str) -> int:
        """Insert rows taken from the buffers; one insert per table, retried until it succeeds."""
        written, generation = 0, self._writes_generation
        for table, buffer in taken.items():
            await self._insert_with_retry(generation, table, buffer, f"{dedup_token}:{table}")
            written += len(buffer)
            if self._on_written is not None:
                self._on_written(table, buffer)
        self.stats.rows_written += written
        return written

    async def _insert_with_retry(self, generation: int, table: str, buffer: TableBuffer, token: str) -> None:
        backoff = 0.1
        while True:
            try:
                await self._call(generation, _insert, table, buffer, token)
            except WriteAbandoned:
                raise
            except Exception as exc:  # any failure of the store: retry, never drop
                self.failing = True
                self.stats.failures += 1
                log.warning("insert into %s failed (%s); retrying in %.1fs", table, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
            else:
                self.failing = False
                self.stats.inserts += 1
                return


def _insert(client: Client, table: str, buffer: TableBuffer, token: str) -> None:
    if buffer.rows:
        _insert_rows(client, table, buffer.columns, buffer.rows, token)
    if buffer.forwarded.positions:
        if buffer.encoded is None:
            buffer.encoded = forwarded_rows(buffer.forwarded.messages, buffer.forwarded.positions)
        if isinstance(buffer.encoded, list):
            _insert_rows(client, table, buffer.columns, buffer.encoded, f"{token}:forwarded")
        else:
            client.raw_insert(table, list(buffer.columns), buffer.encoded.data, settings=insert_settings(f"{token}:forwarded"), fmt="RowBinary")


def _insert_rows(client: Client, table: str, columns: Sequence[str], rows: list[Sequence[Any]], token: str) -> None:
    context = client.create_insert_context(table, list(columns), settings=insert_settings(token), data=rows)
    try:
        client.insert(context=context)
    finally:
        # clickhouse-connect's InsertContext keeps a bound method of its own: a reference
        # cycle that held the rows and their encoded columns until the garbage collector
        # reached it, often a gen-1 pass later. Without the method it is freed at once.
        vars(context).pop("_next_block_data", None)
