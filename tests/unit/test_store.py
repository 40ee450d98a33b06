"""The ClickHouse client factory and the migration runner, against the real embedded engine (chDB).

One OS process can open only one chDB data directory in its lifetime, and pytest runs every
unit test in one process: this module opens exactly one directory (module-scoped) and
isolates its scenarios in separate databases of that directory. The real schema goes to
the ``default`` database through ``open_client``; hand-made migrations each get their own
database, so they never touch the real tables nor each other's ``schema_migrations``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from datetime import datetime, timedelta, timezone
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import clickhouse_connect
import orjson
import pytest
from clickhouse_connect.driver.client import Client

from processors.fast_routing import native
from processors.identity import account_directory
from processors.routing import forwarded_messages, route_batch
from streams import store
from streams.rows import event_row
from streams.settings import Settings
from streams.simulator import AccountUniverse, encode, iter_events
from streams.sink import CLAIMED_EVENT_COLUMNS, CLAIMED_EVENTS, ClickHouseSink
from streams.store import MIGRATIONS_TABLE, Migration, apply_migrations, data_location, load_migrations, open_client

CORE_TABLES = ("events", "account_scores", "stage_transitions")


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def chdb_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # clickhouse_url=None explicitly: a CLICKHOUSE_URL in the environment must not send
    # these tests to a server
    return Settings(data_dir=tmp_path_factory.mktemp("abm-store"), clickhouse_url=None)


@pytest.fixture(scope="module")
def client(chdb_settings: Settings) -> Iterator[Client]:
    """The one embedded store of this module, opened the way the application opens it."""
    opened = open_client(chdb_settings)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def migrated(client: Client) -> list[Migration]:
    """The real migrations applied once to the default database; what that first call applied."""
    return apply_migrations(client)


@pytest.fixture(scope="module")
def database_client(client: Client, chdb_settings: Settings) -> Iterator[Callable[[], Client]]:
    """Factory of clients on the same chDB directory, each on a fresh database of its own."""
    opened: list[Client] = []

    def make() -> Client:
        name = f"t_{uuid.uuid4().hex[:12]}"
        client.command(f"CREATE DATABASE {name}")
        other = clickhouse_connect.get_client(dsn=f"chdb://{chdb_settings.chdb_path}", database=name)
        opened.append(other)
        assert other.query("SELECT currentDatabase()").result_rows == [(name,)]
        return other

    try:
        yield make
    finally:
        for other in opened:
            other.close()


def tables(client: Client) -> set[str]:
    return {row[0] for row in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows}


def recorded(client: Client) -> list[tuple[int, str, str]]:
    """Every row of the migrations table (no FINAL: duplicates would show)."""
    return [
        (int(v), n, c)
        for v, n, c in client.query(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} ORDER BY version, name").result_rows
    ]


def toy_migrations() -> list[Migration]:
    """Three harmless migrations on their own tables; each depends on the one before it."""
    return [
        Migration(1, "alpha", "-- first\nCREATE TABLE IF NOT EXISTS toy_alpha (id UInt32) ENGINE = MergeTree ORDER BY id;\n"),
        Migration(
            2,
            "beta",
            "CREATE TABLE IF NOT EXISTS toy_beta AS toy_alpha;\n"  # fails unless toy_alpha exists
            "INSERT INTO toy_alpha VALUES (1), (2);\n",
        ),
        Migration(10, "gamma", "CREATE VIEW IF NOT EXISTS toy_gamma AS SELECT count() AS n FROM toy_beta"),
    ]


# ------------------------------------------------------------------ real migrations


def test_load_migrations_finds_the_core_migration():
    found = load_migrations()
    assert found, "no migration in schemas/clickhouse"
    assert found[0].version == 1 and found[0].name == "core"
    assert [m.version for m in found] == sorted({m.version for m in found})
    assert "CREATE TABLE IF NOT EXISTS events" in found[0].sql
    assert found[0].checksum == hashlib.sha256(found[0].sql.encode()).hexdigest()


def test_core_statements_are_split_one_per_object():
    core = next(m for m in load_migrations() if m.version == 1)
    statements = core.statements()
    heads = [re.match(r"CREATE (TABLE|VIEW) IF NOT EXISTS (\w+)", s) for s in statements]
    assert all(heads), statements
    assert [h.group(2) for h in heads] == ["events", "account_scores", "stage_transitions", "account_scores_latest"]
    assert not any(s.endswith(";") or "--" in s for s in statements)


def test_first_run_applies_every_migration_in_order_and_records_it(client, migrated):
    expected = load_migrations()
    assert migrated == expected
    assert [m.version for m in migrated] == sorted(m.version for m in migrated)
    assert recorded(client) == [(m.version, m.name, m.checksum) for m in expected]
    (applied_at,) = client.query(f"SELECT min(applied_at) FROM {MIGRATIONS_TABLE}").result_rows[0]
    assert applied_at.year >= 2024  # the DEFAULT now64(3) filled it in


def test_core_tables_exist_after_migration(client, migrated):
    rows = client.query(
        "SELECT name, engine FROM system.tables WHERE database = 'default' AND name IN {names:Array(String)}",
        parameters={"names": [*CORE_TABLES, "account_scores_latest", MIGRATIONS_TABLE]},
    ).result_rows
    engines = dict(rows)
    assert engines == {
        "events": "MergeTree",
        "account_scores": "ReplacingMergeTree",
        "stage_transitions": "ReplacingMergeTree",
        "account_scores_latest": "View",
        MIGRATIONS_TABLE: "ReplacingMergeTree",
    }
    columns = {
        row[0]
        for row in client.query("SELECT name FROM system.columns WHERE database = 'default' AND table = 'events'").result_rows
    }
    assert {"event_id", "type", "account_id", "occurred_at", "received_at", "src_partition", "src_offset"} <= columns
    # the tables are usable, not just declared
    assert client.query("SELECT count() FROM account_scores_latest").result_rows == [(0,)]


def test_second_run_applies_nothing_and_changes_nothing(client, migrated):
    before_tables = tables(client)
    before_rows = client.query(f"SELECT version, name, checksum, applied_at FROM {MIGRATIONS_TABLE} ORDER BY version").result_rows
    assert apply_migrations(client) == []
    assert apply_migrations(client) == []
    assert tables(client) == before_tables
    after_rows = client.query(f"SELECT version, name, checksum, applied_at FROM {MIGRATIONS_TABLE} ORDER BY version").result_rows
    assert after_rows == before_rows  # no new row, applied_at untouched


def test_open_store_is_idempotent_on_a_migrated_store(chdb_settings, migrated, client):
    # same directory, a second client: what the worker or CLI does on every start
    again = store.open_store(chdb_settings)
    try:
        assert len(recorded(again)) == len(migrated)
        assert set(CORE_TABLES) <= tables(again)
    finally:
        again.close()


# ------------------------------------------------------------------ toy migrations


def test_toy_migrations_apply_in_version_order(database_client):
    db = database_client()
    migrations = toy_migrations()
    assert apply_migrations(db, migrations[::-1]) == migrations  # given out of order, applied in order
    assert tables(db) == {"toy_alpha", "toy_beta", "toy_gamma", MIGRATIONS_TABLE}
    assert db.query("SELECT count() FROM toy_alpha").result_rows == [(2,)]
    assert recorded(db) == [(1, "alpha", migrations[0].checksum), (2, "beta", migrations[1].checksum), (10, "gamma", migrations[2].checksum)]
    # nothing leaked into the real schema's database
    assert "toy_alpha" not in {r[0] for r in db.query("SELECT name FROM system.tables WHERE database = 'default'").result_rows}


def test_toy_migrations_second_run_is_a_no_op(database_client):
    db = database_client()
    apply_migrations(db, toy_migrations())
    assert apply_migrations(db, toy_migrations()) == []
    # migration 2's INSERT did not run again
    assert db.query("SELECT count() FROM toy_alpha").result_rows == [(2,)]
    assert len(recorded(db)) == 3


def test_only_new_migrations_are_applied(database_client):
    db = database_client()
    first, second, third = toy_migrations()
    assert apply_migrations(db, [first]) == [first]
    assert tables(db) == {"toy_alpha", MIGRATIONS_TABLE}
    assert apply_migrations(db, [first, second, third]) == [second, third]
    assert [v for v, _, _ in recorded(db)] == [1, 2, 10]


def test_a_changed_applied_migration_is_an_error(database_client):
    db = database_client()
    first, second, third = toy_migrations()
    apply_migrations(db, [first])
    edited = Migration(1, "alpha", first.sql + "CREATE TABLE IF NOT EXISTS toy_sneaky (id UInt32) ENGINE = Memory;\n")
    assert edited.checksum != first.checksum
    with pytest.raises(RuntimeError, match=r"migration 001_alpha changed after it was applied"):
        apply_migrations(db, [edited, second, third])
    # nothing of the edited version ran, nothing after it either, the record is untouched
    assert tables(db) == {"toy_alpha", MIGRATIONS_TABLE}
    assert recorded(db) == [(1, "alpha", first.checksum)]
    # a whitespace-only edit counts as a change too (the checksum is over the exact text)
    with pytest.raises(RuntimeError, match="001_alpha"):
        apply_migrations(db, [Migration(1, "alpha", first.sql + "\n")])
    # and the original text is still accepted
    assert apply_migrations(db, [first]) == []


def test_a_failing_migration_is_not_recorded_and_can_be_retried(database_client):
    db = database_client()
    first = toy_migrations()[0]
    broken = Migration(2, "broken", "CREATE TABLE IF NOT EXISTS toy_ok (id UInt32) ENGINE = Memory;\nSELECT * FROM no_such_table;\n")
    with pytest.raises(Exception, match="no_such_table"):
        apply_migrations(db, [first, broken])
    assert [v for v, _, _ in recorded(db)] == [1]  # the first one is kept, the broken one not recorded
    assert "toy_ok" in tables(db)  # its first statement ran: statements are idempotent, so
    fixed = Migration(2, "broken", "CREATE TABLE IF NOT EXISTS toy_ok (id UInt32) ENGINE = Memory;\n")
    assert apply_migrations(db, [first, fixed]) == [fixed]  # re-running it is harmless
    assert [v for v, _, _ in recorded(db)] == [1, 2]


# ----------------------------------------------------------------- statements()


def test_statements_split_on_semicolons_at_line_ends_and_drop_comments():
    sql = (
        "-- header comment\n"
        "CREATE TABLE a (x String DEFAULT 'p;q') ENGINE = Memory;\n"
        "\n"
        "   -- indented comment; with a semicolon;\n"
        "CREATE TABLE b\n"
        "(\n"
        "    -- column comment\n"
        "    y UInt8\n"
        ")\n"
        "ENGINE = Memory;   \n"
        "INSERT INTO a VALUES ('x;y'); -- a trailing comment\n"
        "SELECT 1"  # last statement without a semicolon
    )
    assert Migration(1, "m", sql).statements() == [
        "CREATE TABLE a (x String DEFAULT 'p;q') ENGINE = Memory",
        "CREATE TABLE b\n(\n    y UInt8\n)\nENGINE = Memory",
        "INSERT INTO a VALUES ('x;y')",
        "SELECT 1",
    ]


@pytest.mark.parametrize("sql", ["", "\n\n", "-- only a comment\n-- and another;\n", ";\n;\n"])
def test_statements_of_an_empty_migration(sql):
    assert Migration(1, "m", sql).statements() == []


def test_checksum_is_the_sha256_of_the_text():
    assert Migration(1, "m", "SELECT 1").checksum == hashlib.sha256(b"SELECT 1").hexdigest()
    assert Migration(1, "m", "SELECT 1").checksum != Migration(1, "m", "SELECT 1 ").checksum


# ------------------------------------------------------------------ load_migrations


def _fake_schemas(monkeypatch: pytest.MonkeyPatch, root: Path, files: dict[str, str]) -> None:
    folder = root / "clickhouse"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    monkeypatch.setattr(store, "resources", SimpleNamespace(files=lambda package: root))


def test_load_migrations_sorts_by_version_and_ignores_other_files(monkeypatch, tmp_path):
    _fake_schemas(
        monkeypatch,
        tmp_path,
        {
            "010_late.sql": "SELECT 10",
            "002_second.sql": "SELECT 2",
            "001_first.sql": "SELECT 1",
            "README.md": "not a migration",
            "3_short.sql": "SELECT 3",
            "004_Upper.sql": "SELECT 4",
            "005_draft.sql.bak": "SELECT 5",
        },
    )
    assert load_migrations() == [
        Migration(1, "first", "SELECT 1"),
        Migration(2, "second", "SELECT 2"),
        Migration(10, "late", "SELECT 10"),
    ]


def test_load_migrations_rejects_duplicate_versions(monkeypatch, tmp_path):
    _fake_schemas(monkeypatch, tmp_path, {"001_a.sql": "SELECT 1", "001_b.sql": "SELECT 2", "002_c.sql": "SELECT 3"})
    with pytest.raises(RuntimeError, match="duplicate migration versions"):
        load_migrations()


# ---------------------------------------------------------------- open_client URL


@pytest.mark.parametrize("url", ["ftp://x", "ftp://user:pw@host:21/db", "http://", "https:///db", "localhost:8123", "chdb:///tmp/x"])
def test_open_client_rejects_a_malformed_clickhouse_url(url, tmp_path):
    settings = Settings(data_dir=tmp_path, CLICKHOUSE_URL=url)
    assert settings.clickhouse_url == url
    with pytest.raises(ValueError, match="CLICKHOUSE_URL must be http"):
        open_client(settings)
    assert not settings.chdb_path.exists()  # it did not fall back to the embedded store


def test_data_location_hides_credentials(tmp_path):
    with_url = Settings(data_dir=tmp_path, CLICKHOUSE_URL="https://alice:s3cret@ch.example:8443/abm")
    assert data_location(with_url) == "https://ch.example:8443/abm"
    assert "s3cret" not in data_location(with_url) and "alice" not in data_location(with_url)
    embedded = Settings(data_dir=tmp_path, clickhouse_url=None)
    assert data_location(embedded) == str((tmp_path / "clickhouse").resolve())


def test_scoring_stages_migration_adds_its_columns_and_runs_again_harmlessly(client, migrated):
    migration = next(m for m in load_migrations() if m.name == "scoring_stages")
    for statement in migration.statements():  # applied already: every statement is idempotent
        client.command(statement)
    columns = {
        (table, name): kind
        for table, name, kind in client.query(
            "SELECT table, name, type FROM system.columns WHERE database = 'default' AND table IN ('account_scores', 'stage_transitions')"
        ).result_rows
    }
    assert columns[("stage_transitions", "reason")] == "String"
    assert columns[("account_scores", "events_30d")] == "Map(String, UInt32)"
    assert columns[("account_scores", "engaged_contacts_30d")] == "UInt32"


# ------------------------------------------------------------------------ retention


def test_retention_is_altered_only_when_it_changes(client, migrated):
    def ttl() -> str:
        [(engine,)] = client.query("SELECT engine_full FROM system.tables WHERE database = 'default' AND name = 'events'").result_rows
        return engine

    def mutations() -> int:
        return client.query("SELECT count() FROM system.mutations WHERE database = 'default' AND table = 'events'").result_rows[0][0]

    assert " TTL " not in ttl()
    assert store.apply_retention(client, 0) is False
    assert store.apply_retention(client, 30) is True
    assert "TTL toDateTime(occurred_at) + toIntervalDay(30)" in ttl()
    before = mutations()
    assert store.apply_retention(client, 30) is False  # every start: no new ALTER
    assert mutations() == before
    assert store.apply_retention(client, 7) is True
    assert "toIntervalDay(7)" in ttl()
    assert store.apply_retention(client, 0) is True
    assert " TTL " not in ttl()


def test_retention_expires_raw_events_and_keeps_their_aggregates(database_client):
    db = database_client()
    apply_migrations(db)
    now = datetime.now(timezone.utc)
    old, recent = now - timedelta(days=40), now - timedelta(days=2)
    columns = ["event_id", "type", "source", "account_id", "contact_id", "occurred_at", "received_at", "properties"]
    db.insert("events", [["old", "page_view", "t", "acc", "c1", old, old, "{}"], ["new", "page_view", "t", "acc", "c2", recent, recent, "{}"]], column_names=columns)
    assert store.apply_retention(db, 30) is True
    db.command("OPTIMIZE TABLE events FINAL")
    assert db.query("SELECT event_id FROM events").result_rows == [("new",)]
    assert db.query("SELECT sum(events), uniqExactMerge(contacts) FROM account_daily_engagement").result_rows == [(2, 2)]


# ------------------------------------------------------------------------ restart guard


def test_stored_event_positions_are_exactly_the_rows_past_the_committed_offsets(database_client):
    db = database_client()
    apply_migrations(db)
    columns = ["event_id", "type", "account_id", "occurred_at", "src_partition", "src_offset", "src_index"]
    jan, mar = datetime(2026, 1, 5, tzinfo=timezone.utc), datetime(2026, 3, 5, tzinfo=timezone.utc)
    # partition 1: committed up to offset 10; of the uncommitted message 11 only the March
    # part of a January+March insert is stored (cut off half-way), and message 12 whole
    db.insert("events", [
        ["a", "page_view", "acc", jan, 1, 9, 0],
        ["b", "page_view", "acc", mar, 1, 11, 1],
        ["c", "page_view", "acc", mar, 1, 12, 0],
        ["d", "page_view", "acc", jan, 2, 4, 0],
        ["e", "page_view", "acc", jan, 3, 0, 0],
    ], column_names=columns)
    assert store.stored_event_positions(db, {1: 10, 2: 5}) == {(1, 11, 1), (1, 12, 0)}
    assert store.stored_event_positions(db, {3: -1}) == {(3, 0, 0)}  # nothing committed yet: all of it
    assert store.stored_event_positions(db, {}) == set()


# ------------------------------------------------------------------------ derived tables after a crash

EVENT_COLUMNS = ["event_id", "type", "source", "account_id", "contact_id", "campaign_id", "url", "occurred_at", "received_at", "properties", "src_partition", "src_offset"]
DERIVED_CONTENTS = {
    "campaign_facts": "SELECT * FROM campaign_facts ORDER BY ALL",
    "opportunity_updates": "SELECT * FROM opportunity_updates ORDER BY ALL",
    "nps_responses": "SELECT * FROM nps_responses ORDER BY ALL",
    "account_daily_engagement": (
        "SELECT account_id, day, type, sum(events), uniqExactMerge(contacts), toString(minMapMerge(contacts_first)) "
        "FROM account_daily_engagement GROUP BY ALL ORDER BY ALL"
    ),
}


def _event(event_id: str, kind: str, account: str, contact: str, at: datetime, offset: int, properties: str = "{}") -> list:
    return [event_id, kind, "src", account, contact, "camp-1", "https://x.example/p", at, at, properties, 1, offset]


def _derived(db: Client) -> dict[str, list]:
    return {table: db.query(sql).result_rows for table, sql in DERIVED_CONTENTS.items()}


def _insert_without_views(db: Client, rows: list[list], views: list[str]) -> None:
    """As a worker killed between the insert into events and the one into these views."""
    for view in views:
        db.command(f"DETACH TABLE {view}")
    db.insert("events", rows, column_names=EVENT_COLUMNS)
    for view in views:
        db.command(f"ATTACH TABLE {view}")


def test_rebuilding_after_a_crash_gives_the_derived_tables_of_an_uninterrupted_insert(database_client):
    crashed, reference = database_client(), database_client()
    for db in (crashed, reference):
        apply_migrations(db)
    day1, day2 = datetime(2026, 11, 2, 9, tzinfo=timezone.utc), datetime(2026, 11, 3, 9, tzinfo=timezone.utc)
    committed = [  # by-account partition 1, offsets below the committed 10
        _event("e1", "email_open", "acc-a", "c1", day1, 3, '{"machine_open":false}'),
        _event("e2", "page_view", "acc-a", "c2", day2, 4),
        _event("e3", "email_click", "acc-c", "c9", day2, 5),  # acc-c has no events past the offset
        _event("e4", "nps_response", "acc-b", "c5", day1, 6, '{"score":9}'),
    ]
    past = [  # stored past the committed offset by the killed worker
        _event("e5", "email_open", "acc-a", "c2", day2, 10, '{"machine_open":false}'),
        _event("e6", "page_view", "acc-a", "c3", day2, 10),
        _event("e7", "opportunity_stage_changed", "acc-b", "", day2, 11, '{"opportunity_id":"o1","stage":"won","is_closed":true,"is_won":true}'),
        _event("e8", "nps_response", "acc-b", "c6", day2, 11, '{"score":3}'),
    ]
    # a user's own view, with no account: left as it is
    crashed.command("CREATE TABLE events_by_type (type String, n UInt64) ENGINE = SummingMergeTree ORDER BY type")
    crashed.command("CREATE MATERIALIZED VIEW events_by_type_mv TO events_by_type AS SELECT type, count() AS n FROM events GROUP BY type")
    reference.insert("events", committed + past, column_names=EVENT_COLUMNS)
    crashed.insert("events", committed, column_names=EVENT_COLUMNS)
    # campaign_facts got its rows, the other views did not
    _insert_without_views(crashed, past, ["account_daily_engagement_mv", "opportunity_updates_mv", "nps_responses_mv"])
    expected = _derived(reference)
    assert _derived(crashed) != expected

    rebuilt = store.rebuild_derived(crashed, {1: 10}, retention_days=0)
    assert sorted(rebuilt) == sorted(DERIVED_CONTENTS)
    assert _derived(crashed) == expected
    store.rebuild_derived(crashed, {1: 10}, retention_days=0)  # a crash of its own: again
    assert _derived(crashed) == expected
    assert store.rebuild_derived(crashed, {1: 12}, retention_days=0) == []  # nothing stored past the offsets
    assert store.rebuild_derived(crashed, {}, retention_days=0) == []


def test_rebuilding_keeps_the_derived_rows_older_than_the_retention(database_client):
    db = database_client()
    apply_migrations(db)
    now = datetime.now(timezone.utc)
    old, recent = now - timedelta(days=40), now - timedelta(days=2)
    db.insert("events", [_event(f"old{i}", "page_view", "acc-a", "c1", old, 2) for i in range(2)], column_names=EVENT_COLUMNS)
    db.command("DELETE FROM events WHERE event_id LIKE 'old%'")  # expired: their aggregates stay
    _insert_without_views(db, [_event("late", "page_view", "acc-a", "c2", old, 10), _event("new", "page_view", "acc-a", "c3", recent, 10)], ["account_daily_engagement_mv"])

    store.rebuild_derived(db, {1: 10}, retention_days=30)
    engaged = db.query("SELECT day, sum(events) FROM account_daily_engagement GROUP BY day ORDER BY day").result_rows
    assert engaged == [(old.date(), 2), (recent.date(), 1)]  # the old day as it was; the late event there is not repaired


# ------------------------------------------------------------------------ claimed partitions


def test_an_earlier_owners_late_insert_lands_nothing_once_the_partition_is_claimed_again(database_client):
    """The insert of a checkpoint a revocation abandoned can reach a server after the
    partition's next owner read what lies past the committed offsets: it must not land
    there, nor in the views over events. The owner of the other partition is unaffected,
    and a retried insert still lands once."""
    db = database_client()
    apply_migrations(db)
    at = int(datetime(2026, 11, 2, 9, tzinfo=timezone.utc).timestamp() * 1000)

    def rows(claims: dict[int, int], prefix: str) -> list[tuple]:
        event = {"type": "email_open", "source": "src", "account_id": "acc-a", "campaign_id": "camp-1", "occurred_at_ms": at, "received_at_ms": at}
        return [event_row({**event, "event_id": f"{prefix}{p}"}, p, 7, 0, claim) for p, claim in claims.items()]

    def write(claims: dict[int, int], prefix: str, token: str) -> None:
        sink = ClickHouseSink(db, {CLAIMED_EVENTS: CLAIMED_EVENT_COLUMNS})
        sink.add(CLAIMED_EVENTS, rows(claims, prefix))
        asyncio.run(sink.write(sink.take(), token))

    def landed() -> tuple[list, list]:
        return (
            db.query("SELECT event_id FROM events ORDER BY event_id").result_rows,
            db.query("SELECT event_id FROM campaign_facts ORDER BY event_id").result_rows,
        )

    first = store.claim_partitions(db, [1, 0, 1])
    assert first == {0: 1, 1: 1}
    write(first, "first-", "t1")
    write(first, "first-", "t1")  # retried: the same token
    assert landed() == ([("first-0",), ("first-1",)],) * 2

    assert store.claim_partitions(db, [0]) == {0: 2}  # partition 0 moved to a next owner
    write(first, "late-", "t2")  # the earlier owner's insert, arriving now
    assert landed() == ([("first-0",), ("first-1",), ("late-1",)],) * 2
    write({0: 2}, "next-", "t3")
    assert landed() == ([("first-0",), ("first-1",), ("late-1",), ("next-0",)],) * 2
    assert store.claim_partitions(db, []) == {}


@pytest.mark.parametrize("rows_made", [pytest.param("natively", marks=pytest.mark.skipif(native is None, reason="installed without native code")), "by Python"])
def test_forwarded_events_land_as_the_rows_event_row_gives_and_a_retry_lands_once(database_client, monkeypatch, rows_made):
    """The score agent buffers its events as the forwarded messages they came in
    (ClickHouseSink.add_forwarded): routed natively (raw bytes spliced) and by Python, with
    every property form the simulator sends. In ClickHouse they are the rows event_row
    makes of the decoded events, exactly, whether the sink makes them natively (RowBinary)
    or without native code (tuples); a retried insert lands once."""
    if rows_made == "by Python":
        monkeypatch.setattr("streams.rows.native", None)
    raws = [encode(event) for event in iter_events(seed=11, accounts=30, count=3_000)]
    raws[5] = raws[5].replace(b'"occurred_at":"', b'"occurred_at": "', 1)  # spaced: still the fast path
    raws[6] = re.sub(rb'("occurred_at":"[^"]*)\.', rb"\1,", raws[6])  # a comma: the interpreted path
    directory = account_directory(10_000)
    for account in AccountUniverse.build(11, 30).accounts:
        directory.learn_account(account.account_id, [account.domain])
    routed = route_batch(raws, [("raw", 0, i) for i in range(len(raws))], 1_800_000_000_000, 4, directory)
    messages = [(p, offset, message) for p, events in routed.by_partition.items() for offset, message in enumerate(forwarded_messages(events, max_events=400))]
    positions = [(p, offset, index) for p, offset, message in messages for index in range(len(orjson.loads(message))) if index % 7 != 3]  # some not applied
    assert len(positions) > 2_000
    routed_natively = {bytes} if native is not None else set()  # spliced raw bytes; the rest decoded
    assert {type(event) for events in routed.by_partition.values() for event in events} == {dict} | routed_natively

    by_rows, forwarded = database_client(), database_client()
    for db in (by_rows, forwarded):
        apply_migrations(db)
        claims = {**store.claim_partitions(db, [0, 1, 2, 3]), **store.claim_partitions(db, [0, 3])}
    assert claims == {0: 2, 1: 1, 2: 1, 3: 2}
    sink = ClickHouseSink(by_rows, {CLAIMED_EVENTS: CLAIMED_EVENT_COLUMNS})
    decoded = {(p, offset): orjson.loads(message) for p, offset, message in messages}
    sink.add(CLAIMED_EVENTS, [event_row(decoded[(p, o)][i], p, o, i, claims[p]) for p, o, i in positions])
    asyncio.run(sink.write(sink.take(), "t1"))
    sink = ClickHouseSink(forwarded, {CLAIMED_EVENTS: CLAIMED_EVENT_COLUMNS})
    sink.add_forwarded(CLAIMED_EVENTS, [(p, offset, message, claims[p]) for p, offset, message in messages], positions)
    taken = sink.take()
    asyncio.run(sink.write(taken, "t1"))
    asyncio.run(sink.write(taken, "t1"))  # retried
    assert isinstance(taken[CLAIMED_EVENTS].encoded, list) == (rows_made == "by Python")

    query = "SELECT * FROM events ORDER BY src_partition, src_offset, src_index"
    landed = forwarded.query(query).result_rows
    assert len(landed) == len(positions)
    assert landed == by_rows.query(query).result_rows
