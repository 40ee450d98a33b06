"""BI tools reach a running worker's embedded store through its read-only ClickHouse
HTTP interface: clickhouse-connect's HTTP client and `abm sql` in another process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import clickhouse_connect
import orjson
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from streams.simulator import produce_events
from tests.integration.support import TcpProxy, isolated_settings, query, start_worker

pytestmark = pytest.mark.integration

PASSWORD = "s3cret pass"


def raw_http(port: int, sql: str, params: dict[str, str], auth: bool) -> tuple[int, str | None, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/?{urllib.parse.urlencode(params)}", data=sql.encode(), method="POST",
        headers={"X-ClickHouse-User": "abm", "X-ClickHouse-Key": PASSWORD} if auth else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("X-ClickHouse-Exception-Code"), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("X-ClickHouse-Exception-Code"), error.read()


def test_bi_tools_query_a_running_workers_store_read_only(kafka_bootstrap, tmp_path):
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm", clickhouse_http_password=PASSWORD)
    worker = start_worker(settings)
    try:
        counts = asyncio.run(produce_events(settings, accounts=30, contacts_per_account=3, rate=None, duration_s=None, count=2_000, seed=61))
        worker.wait_drained(timeout_s=120)
        client = clickhouse_connect.get_client(host="127.0.0.1", port=settings.clickhouse_http_port, username="abm", password=PASSWORD)
        assert client.query("SELECT count() FROM events").result_rows == [(2_000,)]
        opens = client.query("SELECT count() FROM events WHERE type = {kind:String}", parameters={"kind": "email_open"})
        assert opens.result_rows == [(counts["email_open"],)]
        frame = client.query_df("SELECT type, count() AS n FROM events GROUP BY type ORDER BY type")
        assert dict(zip(frame["type"], frame["n"])) == {kind: n for kind, n in counts.items() if n}
        [(in_funnel,)] = client.query("SELECT sum(accounts) FROM funnel_now").result_rows
        [(accounts,)] = client.query("SELECT uniqExact(account_id) FROM events").result_rows
        assert in_funnel == accounts > 0

        # read-only, by the engine: writes, DDL and settings changes are refused (READONLY = 164)
        for statement in ("INSERT INTO events (event_id) VALUES ('x')", "DROP TABLE events", "SET readonly = 0", "TRUNCATE TABLE dead_letters"):
            with pytest.raises(DatabaseError, match="Code: 164"):
                client.command(statement)
        with pytest.raises(DatabaseError, match="Code: 164"):
            client.insert("dead_letters", [["t", 0, 0, 0, "r", "m", "k", "p"]], column_names=["topic", "partition", "offset", "at", "reason", "message", "key", "payload"])
        with pytest.raises(DatabaseError, match="readonly"):  # the client already knows from the engine's settings
            client.query("SELECT 1", settings={"max_threads": 1})
        # plain HTTP, as curl or a BI tool sends it: a setting in the URL is refused by the engine
        assert raw_http(settings.clickhouse_http_port, "SELECT 1", {"max_threads": "1"}, auth=True)[:2] == (500, "164")
        assert raw_http(settings.clickhouse_http_port, "SELECT 1", {}, auth=False)[:2] == (403, "516")
        assert raw_http(settings.clickhouse_http_port, "SELECT {n:UInt8} * 2 AS v FORMAT JSONEachRow", {"param_n": "21"}, auth=True) == (200, None, b'{"v":42}\n')
        with pytest.raises(DatabaseError, match="516|Authentication failed"):
            clickhouse_connect.get_client(host="127.0.0.1", port=settings.clickhouse_http_port, username="abm", password="wrong")

        # small queries answer promptly (TCP_NODELAY): 20 in well under a second
        started = time.perf_counter()
        for _ in range(20):
            client.query("SELECT 1")
        per_query = (time.perf_counter() - started) / 20
        print(f"round trip of a small query through the front: {per_query * 1000:.1f} ms")
        assert per_query < 0.04

        # `abm sql` from another process, while the worker owns the store
        env = dict(os.environ, ABM_DATA_DIR=str(settings.data_dir), ABM_CLICKHOUSE_HTTP_PORT=str(settings.clickhouse_http_port), ABM_CLICKHOUSE_HTTP_PASSWORD=PASSWORD)
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", "sql", "--json", "SELECT count() AS n, uniqExact(account_id) AS a FROM events"],
            env=env, capture_output=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert orjson.loads(done.stdout) == [{"n": 2_000, "a": accounts}]
        # or with CLICKHOUSE_URL naming the worker's interface, as for any ClickHouse server
        url = f"http://abm:{urllib.parse.quote(PASSWORD)}@127.0.0.1:{settings.clickhouse_http_port}/default"
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", "sql", "--json", "SELECT stage, reached FROM stage_conversion WHERE stage = 'target'"],
            env=dict(os.environ, ABM_DATA_DIR=str(tmp_path / "elsewhere"), CLICKHOUSE_URL=url), capture_output=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert orjson.loads(done.stdout) == [{"stage": "target", "reached": accounts}]
        assert worker.status()["stats"]["applied"] == 2_000  # still the one worker, still running

        # the tests' TCP proxy (which cuts a server away in test_sink_exactness), on this front
        proxy = TcpProxy("127.0.0.1", settings.clickhouse_http_port)
        try:
            through = clickhouse_connect.get_client(host="127.0.0.1", port=proxy.port, username="abm", password=PASSWORD)
            assert through.query("SELECT count() FROM events").result_rows == [(2_000,)]
            proxy.cut()
            with pytest.raises(OperationalError):
                through.query("SELECT count() FROM events")
            proxy.restore()
            assert through.query("SELECT count() FROM events").result_rows == [(2_000,)]
        finally:
            proxy.close()
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert query(settings, "SELECT count() AS n FROM dead_letters") == [{"n": 0}]
    assert query(settings, "SELECT count() AS n FROM events") == [{"n": 2_000}]
