"""`abm store serve`: the embedded store over ClickHouse's HTTP interface, exercised with
clickhouse-connect's own HTTP client and `abm sql` against the real server process."""

from __future__ import annotations

import datetime
import secrets
import subprocess
import sys
import urllib.error
import urllib.request

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from deploy.local.kafka import free_port
from deploy.local.worker_process import StoreServerProcess
from streams.settings import Settings
from tests.integration.support import query

pytestmark = pytest.mark.integration

ROWS = [
    ["e1", "email_open", "acct-1", datetime.datetime(2026, 3, 1, 12, 0)],
    ["e2", "email_click", "acct-1", datetime.datetime(2026, 3, 2, 12, 0)],
    ["e3", "page_view", "it's-acct", datetime.datetime(2026, 3, 3, 12, 0)],
]


@pytest.fixture
def store_settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "abm", clickhouse_http_port=free_port(), clickhouse_http_password=secrets.token_hex(8))


def serve(settings: Settings, read_only: bool = False) -> StoreServerProcess:
    store = StoreServerProcess(settings, settings.data_dir / "logs" / "store.log", read_only=read_only)
    store.start()
    return store


def http_client(settings: Settings, compress: bool | str = True, password: str | None = None):
    return clickhouse_connect.get_client(
        host="127.0.0.1",
        port=settings.clickhouse_http_port,
        username=settings.clickhouse_http_user,
        password=settings.clickhouse_http_password if password is None else password,
        compress=compress,
    )


def test_clickhouse_connect_inserts_and_queries_through_the_server(store_settings):
    store = serve(store_settings)
    try:
        for compress in (True, "lz4", "zstd", "gzip", False):
            client = http_client(store_settings, compress)
            assert client.server_version.startswith("26.")
            token = f"batch-{compress}"
            for _ in range(2):  # a retried batch with the same token is stored once
                client.insert("events", ROWS, column_names=["event_id", "type", "account_id", "occurred_at"],
                              settings={"insert_deduplication_token": token})
        client = http_client(store_settings)
        assert client.query("SELECT count() FROM events").result_rows == [(3 * 5,)]
        # server-side parameters, quotes included
        assert client.query(
            "SELECT count() FROM events WHERE account_id = {a:String} AND occurred_at >= {t:DateTime64(3)}",
            parameters={"a": "it's-acct", "t": datetime.datetime(2026, 3, 3)},
        ).result_rows == [(5,)]
        # arrays (and their quotes) as a server parses them
        assert client.query(
            "SELECT count() FROM events WHERE account_id IN {accounts:Array(String)}",
            parameters={"accounts": ["it's-acct", "no\\such\taccount"]},
        ).result_rows == [(5,)]
        # client-side parameters
        assert client.query("SELECT count() FROM events WHERE type = %(t)s", parameters={"t": "email_click"}).result_rows == [(5,)]
        frame = client.query_df("SELECT type, count() AS n FROM events GROUP BY type ORDER BY type")
        assert frame.to_dict("records") == [
            {"type": "email_click", "n": 5}, {"type": "email_open", "n": 5}, {"type": "page_view", "n": 5},
        ]
        with pytest.raises(DatabaseError, match="Code: 60"):
            client.query("SELECT * FROM no_such_table")
        with pytest.raises(DatabaseError, match="516"):
            http_client(store_settings, password="wrong")
        # `abm sql` is a client of the server like any other
        served = store_settings.model_copy(update={"clickhouse_url": store.url})
        assert query(served, "SELECT count() AS n FROM events WHERE type = 'page_view'") == [{"n": 5}]
    finally:
        assert store.stop() == 0, store.log_tail()


def test_read_only_serving_refuses_writes_in_the_engine(store_settings):
    store = serve(store_settings)
    try:
        http_client(store_settings).insert("events", ROWS[:1], column_names=["event_id", "type", "account_id", "occurred_at"])
    finally:
        assert store.stop() == 0, store.log_tail()

    read_only = serve(store_settings, read_only=True)
    try:
        client = http_client(store_settings)
        assert client.query("SELECT event_id FROM events").result_rows == [("e1",)]
        with pytest.raises(DatabaseError, match="Code: 164"):  # READONLY, from the engine
            client.insert("events", ROWS[1:], column_names=["event_id", "type", "account_id", "occurred_at"])
        for statement in ("DROP TABLE events", "SET insert_deduplicate = 0", "SELECT 1 SETTINGS readonly = 0"):
            with pytest.raises(DatabaseError, match="Code: 164"):  # no write, and no setting to lift it
                client.command(statement)
        with pytest.raises(DatabaseError, match="Code: 164"):  # even hidden in a plain POST body
            body = b"INSERT INTO events (event_id) VALUES ('sneaky')"
            url = f"http://127.0.0.1:{store_settings.clickhouse_http_port}/?user=abm&password={store_settings.clickhouse_http_password}"
            try:
                urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10)
            except urllib.error.HTTPError as exc:
                raise DatabaseError(exc.read().decode()) from exc
        assert client.query("SELECT count() FROM events").result_rows == [(1,)]
    finally:
        assert read_only.stop() == 0, read_only.log_tail()


def test_serving_without_a_password_is_refused(tmp_path):
    env = {"ABM_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "streams.cli", "store", "serve"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 2 and b"ABM_CLICKHOUSE_HTTP_PASSWORD" in done.stderr
