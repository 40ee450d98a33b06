"""ClickHouse access: one client factory and the migration runner.

The client is clickhouse-connect either way: on CLICKHOUSE_URL (a server) or, by
default, on the embedded chDB store (``chdb:///abs/path``). A chDB directory belongs to
one OS process; the process that writes owns it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from streams.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "schema_migrations"
_MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


def open_client(settings: Settings) -> Client:
    """A clickhouse-connect client for the configured store (server or embedded)."""
    if settings.clickhouse_url:
        url = urlparse(settings.clickhouse_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"CLICKHOUSE_URL must be http(s)://user:pass@host:port/db, got {settings.clickhouse_url!r}")
        return clickhouse_connect.get_client(
            host=url.hostname,
            port=url.port or (8443 if url.scheme == "https" else 8123),
            username=unquote(url.username or "default"),
            password=unquote(url.password or ""),
            database=url.path.lstrip("/") or "default",
            secure=url.scheme == "https",
        )
    settings.chdb_path.mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(dsn=f"chdb://{settings.chdb_path}")


def open_read_only_client(settings: Settings) -> Client:
    """A handle of its own on the embedded store on which the engine refuses every write,
    DDL and setting change for good (``readonly = 1`` cannot be unset); the process's
    other handles are unaffected."""
    if settings.clickhouse_url:
        raise ValueError("a read-only handle is for the embedded store; a server has its own users and profiles")
    client = open_client(settings)  # a new handle on the same engine
    client.command("SET readonly = 1")
    return client


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """The file's statements: split on ';' at line ends (a trailing comment allowed), comments dropped."""
        body = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        return [s.strip() for s in re.split(r";[ \t]*(?:--[^\n]*)?(?:\n|$)", body) if s.strip()]


def load_migrations() -> list[Migration]:
    folder = resources.files("schemas") / "clickhouse"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in schemas/clickhouse: {versions}")
    return found


def apply_migrations(client: Client, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply the migrations not yet recorded; returns those applied now.

    Idempotent: a recorded version is skipped, and every statement is itself
    idempotent, so a crash between a statement and its record is harmless.
    A recorded migration whose file changed afterwards is an error, not a silent skip.
    """
    client.command(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
        "(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    recorded = {
        int(version): checksum
        for version, checksum in client.query(f"SELECT version, checksum FROM {MIGRATIONS_TABLE} FINAL").result_rows
    }
    applied = []
    for migration in sorted(migrations if migrations is not None else load_migrations(), key=lambda m: m.version):
        if migration.version in recorded:
            if recorded[migration.version] != migration.checksum:
                raise RuntimeError(
                    f"migration {migration.version:03d}_{migration.name} changed after it was applied; "
                    "add a new migration instead of editing an applied one"
                )
            continue
        for statement in migration.statements():
            client.command(statement)
        client.insert(
            MIGRATIONS_TABLE,
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied.append(migration)
    return applied


def apply_retention(client: Client, days: int) -> bool:
    """Raw events keep ``days`` days of event time (0: forever); their aggregates stay.

    Altered only when the table's TTL differs (a change rewrites parts that expire);
    returns whether it did.
    """
    wanted = f"toDateTime(occurred_at) + toIntervalDay({days})" if days else None
    [(engine,)] = client.query(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = 'events'"
    ).result_rows
    found = re.search(r"\bTTL (.+?)(?: SETTINGS |$)", engine)
    if (found.group(1) if found else None) == wanted:
        return False
    client.command(f"ALTER TABLE events MODIFY TTL {wanted}" if wanted else "ALTER TABLE events REMOVE TTL")
    return True


def open_store(settings: Settings) -> Client:
    """Client with every migration and the retention applied: what the worker and the CLI start with."""
    client = open_client(settings)
    apply_migrations(client)
    apply_retention(client, settings.events_ttl_days)
    return client


def _past(from_offsets: dict[int, int]) -> str:
    """The events rows at or past the given offset of each by-account partition."""
    return " OR ".join(f"(src_partition = {int(p)} AND src_offset >= {max(int(o), 0)})" for p, o in sorted(from_offsets.items()))


def stored_event_positions(client: Client, from_offsets: dict[int, int]) -> set[tuple[int, int, int]]:
    """The (by-account partition, offset, index) of the event rows stored at or past the
    given offset of each partition (-1: the group committed nothing there yet).

    Rows are inserted before offsets are committed, and an insert spanning several
    monthly partitions can be cut off half-way: past the committed offset, exactly these
    rows are stored, whatever their order.
    """
    if not from_offsets:
        return set()
    rows = client.query(f"SELECT src_partition, src_offset, src_index FROM events WHERE {_past(from_offsets)}").result_rows
    return {(int(p), int(o), int(i)) for p, o, i in rows}


def claim_partitions(client: Client, partitions: Iterable[int]) -> dict[int, int]:
    """Claims by-account partitions for their new owner, each above every earlier claim of
    it, and returns the claims its event rows must carry (schemas/clickhouse/005). Called
    at every assignment before the rows past the committed offsets are read: an earlier
    owner's insert executed after this lands nothing."""
    wanted = sorted(set(partitions))
    if not wanted:
        return {}
    latest = client.query(
        "SELECT partition, max(claim) FROM partition_claims WHERE partition IN {partitions:Array(UInt16)} GROUP BY partition",
        parameters={"partitions": wanted},
    ).result_rows
    claimed = {int(partition): int(claim) for partition, claim in latest}
    claims = {partition: claimed.get(partition, 0) + 1 for partition in wanted}
    client.insert("partition_claims", [[partition, claim] for partition, claim in claims.items()], column_names=["partition", "claim"])
    return claims


@dataclass(frozen=True, slots=True)
class DerivedTable:
    """A table a materialized view fills from every insert into ``events``."""

    view: str
    target: str
    select: str  # the view's query
    columns: tuple[str, ...]  # what the query gives, by name

    @property
    def day(self) -> str:
        """The day of a row: every derived table keeps the event day or the event time."""
        return "day" if "day" in self.columns else "toDate(occurred_at)"


def derived_tables(client: Client) -> tuple[list[DerivedTable], list[str]]:
    """The materialized views on ``events`` whose rows can be rebuilt by account and day
    (those writing to a table of their own, with ``account_id`` and ``day`` or
    ``occurred_at``), and the names of the others (a user's own views, say)."""
    views = client.query(
        "SELECT name, as_select, create_table_query FROM system.tables WHERE database = currentDatabase() "
        "AND name IN (SELECT arrayJoin(dependencies_table) FROM system.tables WHERE database = currentDatabase() AND name = 'events')"
    ).result_rows
    found, others = [], []
    for view, select, create in sorted(views):
        target = re.search(r"\bTO (\S+)", create)
        columns = client.query("SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {view:String} ORDER BY position", parameters={"view": view})
        names = tuple(name for (name,) in columns.result_rows)
        if target is None or "account_id" not in names or not {"day", "occurred_at"} & set(names):
            others.append(view)
        else:
            found.append(DerivedTable(view, target.group(1), select, names))
    return found, others


def rebuild_derived(client: Client, from_offsets: dict[int, int], retention_days: int) -> list[str]:
    """Rebuilds, from ``events``, the derived tables' rows of the accounts whose events are
    stored past the committed offsets, from the day of the earliest of them; returns the
    tables rebuilt (none when no such events are stored).

    An insert feeds ``events`` and its materialized views one after the other: a worker
    killed in between leaves the events stored and the views without them (seen after a
    kill -9: a whole checkpoint's events missing from campaign_facts). Those events are
    not inserted again (stored_event_positions), so the views' rows are made again from
    ``events``, the source of truth. Rows older than the retention are kept: their events
    may be gone. Runs again harmlessly after a crash of its own. Views it cannot rebuild
    (``derived_tables``) are logged.
    """
    if not from_offsets:
        return []
    past = _past(from_offsets)
    [(first,)] = client.query(f"SELECT toString(min(toDate(occurred_at))) FROM events WHERE {past} HAVING count() > 0").result_rows or [(None,)]
    if first is None:
        return []
    if retention_days:
        [(kept,)] = client.query(f"SELECT toString(today() - {int(retention_days) - 1})").result_rows
        first = max(first, kept)
    tables, others = derived_tables(client)
    if others:
        log.warning("materialized views on events that cannot be rebuilt after a crash (no TO table, account_id or day): %s", ", ".join(others))
    rebuilt = []
    for table in tables:
        slice_ = f"account_id IN (SELECT account_id FROM events WHERE {past}) AND {table.day} >= toDate('{first}')"
        columns = ", ".join(f"`{name}`" for name in table.columns)
        client.command(f"DELETE FROM {table.target} WHERE {slice_}")
        # without a token, an insert whose block equals an earlier one would be dropped
        client.command(f"INSERT INTO {table.target} ({columns}) SELECT {columns} FROM ({table.select}) WHERE {slice_}", settings={"insert_deduplicate": 0})
        rebuilt.append(table.target.rpartition(".")[2])
    return rebuilt


def dead_lettered_positions(client: Client, topics: list[str]) -> set[tuple[str, int, int]]:
    """The (topic, partition, offset) of the messages of these topics already dead-lettered."""
    rows = client.query(
        "SELECT DISTINCT topic, partition, offset FROM dead_letters WHERE topic IN {topics:Array(String)}",
        parameters={"topics": topics},
    ).result_rows
    return {(str(t), int(p), int(o)) for t, p, o in rows}


def data_location(settings: Settings) -> str:
    """Where the data lives, for humans: the server without its credentials, or the chDB path."""
    if settings.clickhouse_url:
        url = urlparse(settings.clickhouse_url)
        return f"{url.scheme}://{url.hostname}:{url.port or ''}{url.path}"
    return str(settings.chdb_path)
