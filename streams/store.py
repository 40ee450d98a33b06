"""ClickHouse access: one client factory and the migration runner.

The client is clickhouse-connect either way: on CLICKHOUSE_URL (a server) or, by
default, on the embedded chDB store (``chdb:///abs/path``). A chDB directory belongs to
one OS process; the process that writes owns it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from streams.settings import Settings

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


def stored_event_positions(client: Client, from_offsets: dict[int, int]) -> set[tuple[int, int, int]]:
    """The (by-account partition, offset, index) of the event rows stored at or past the
    given offset of each partition (-1: the group committed nothing there yet).

    Rows are inserted before offsets are committed, and an insert spanning several
    monthly partitions can be cut off half-way: past the committed offset, exactly these
    rows are stored, whatever their order.
    """
    if not from_offsets:
        return set()
    where = " OR ".join(f"(src_partition = {int(p)} AND src_offset >= {max(int(o), 0)})" for p, o in sorted(from_offsets.items()))
    rows = client.query(f"SELECT src_partition, src_offset, src_index FROM events WHERE {where}").result_rows
    return {(int(p), int(o), int(i)) for p, o, i in rows}


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
