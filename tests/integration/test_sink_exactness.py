"""The ClickHouse sink neither loses nor doubles: a worker killed with SIGKILL at many
points of a run, and a store that stops accepting writes for a while. Real broker, real
worker processes, real embedded ClickHouse; every total is checked against what was
produced, in the tables and in every materialized view fed from them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest
from aiokafka.errors import KafkaError

from streams.settings import Settings
from streams.simulator import produce_events
from tests.integration.support import TcpProxy, assert_store_exact, committed_offsets, drain_with_new_worker, isolated_settings, query, start_worker

pytestmark = pytest.mark.integration

def lag_of(worker) -> int:
    """The group's lag, once the broker can tell (a brand-new group's coordinator may still load)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return worker.lag()
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_kill_9_at_many_points_keeps_every_total_exact(kafka_bootstrap, tmp_path, store_url):
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm", clickhouse_url=store_url)
    total = 40_000
    # raw messages each worker takes in before its SIGKILL (0: as soon as it answers,
    # i.e. while it joins the group and recovers its tables)
    kill_after = (0, 2_500, 800, 6_000, 1_500)
    lags_at_kill = []
    worker = start_worker(settings, "run-0")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        produced = pool.submit(
            asyncio.run,
            produce_events(settings, accounts=200, contacts_per_account=4, rate=2_500, duration_s=None, count=total, seed=41),
        )
        for n, threshold in enumerate(kill_after):
            if n:
                worker = start_worker(settings, f"run-{n}")
            try:
                deadline = time.monotonic() + 90
                while (worker.status() or {}).get("stats", {}).get("raw_in", 0) < threshold:
                    assert time.monotonic() < deadline, worker.log_tail()
                    time.sleep(0.02)
            finally:
                worker.kill()
            lags_at_kill.append(lag_of(worker))
        counts = produced.result(timeout=120)
    assert all(lag > 0 for lag in lags_at_kill), f"a worker had finished everything before its kill: {lags_at_kill}"

    drain_with_new_worker(settings, "final")
    assert_store_exact(settings, counts)


def _chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", "-R", flag, str(path)], check=True, capture_output=True)


def _can_make_immutable(tmp_path: Path) -> bool:
    probe = tmp_path / "immutable-probe"
    probe.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode:
        return False
    try:
        (probe / "x").touch()
    except OSError:
        return True
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    return False


def test_store_outage_pauses_the_worker_which_recovers_without_loss(kafka_bootstrap, tmp_path, store_url):
    """The store stops taking writes while 60k events arrive: embedded, the `events`
    table's directory is made immutable (chattr +i: every insert into it fails in the
    engine, as on a read-only or failed disk); on a server, a real TCP proxy between the
    worker and the server is cut. The worker retries with backoff, reports not ready,
    commits nothing and stays within its memory bound; once the store is back it catches
    up by itself, and every total is exact."""
    with contextlib.ExitStack() as stack:
        if store_url is None:
            if not _can_make_immutable(tmp_path):
                pytest.skip("making a directory immutable needs chattr and CAP_LINUX_IMMUTABLE (root) on a filesystem that supports it")
            settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
            # migrates the store; the events table's directory is then known (UUID paths are fixed)
            [row] = query(settings, "SELECT data_paths[1] AS path FROM system.tables WHERE database = currentDatabase() AND name = 'events'")
            events_dir = Path(row["path"])
            assert events_dir.is_dir()
            fail, recover = functools.partial(_chattr, "+i", events_dir), functools.partial(_chattr, "-i", events_dir)
        else:
            server = urlparse(store_url)
            proxy = TcpProxy(server.hostname, server.port or 8123)
            stack.callback(proxy.close)
            credentials = server.netloc.rpartition("@")[0]
            through = server._replace(netloc=(f"{credentials}@" if credentials else "") + f"127.0.0.1:{proxy.port}").geturl()
            settings = isolated_settings(kafka_bootstrap, tmp_path / "abm", clickhouse_url=through)
            fail, recover = proxy.cut, proxy.restore
        _outage_run(settings, fail, recover)


def _outage_run(settings: Settings, fail: Callable[[], None], recover: Callable[[], None]) -> None:
    worker = start_worker(settings)
    try:
        counts = Counter(asyncio.run(produce_events(settings, accounts=100, contacts_per_account=3, rate=None, duration_s=None, count=5_000, seed=51)))
        worker.wait_drained(timeout_s=120)
        assert worker.readiness()[0] == 200
        baseline_rss = worker.rss_bytes()

        fail()
        try:
            counts.update(asyncio.run(produce_events(settings, accounts=100, contacts_per_account=3, rate=None, duration_s=None, count=60_000, seed=52)))
            deadline = time.monotonic() + 60
            while worker.readiness()[0] != 503:
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.2)
            status, body = worker.readiness()
            assert (status, body["waiting_for"]) == (503, ["ClickHouse sink failing"])
            committed = committed_offsets(settings)
            peak_rss = 0
            for _ in range(20):  # 10 s of outage
                peak_rss = max(peak_rss, worker.rss_bytes())
                time.sleep(0.5)
            sink = worker.status()["sink"]
            assert sink["failing"] and sink["failures"] >= 3
            assert committed_offsets(settings) == committed, "offsets were committed while ClickHouse refused the rows"
            assert worker.lag() > 0
            growth = peak_rss - baseline_rss
            print(f"RSS before the outage {baseline_rss >> 20} MiB, peak during it {peak_rss >> 20} MiB")
            assert growth < 256 << 20, f"memory grew by {growth >> 20} MiB during the outage"
        finally:
            recover()
        worker.wait_drained(timeout_s=180)
        assert worker.readiness() == (200, {"ready": True, "waiting_for": []})
        assert worker.status()["sink"]["failing"] is False
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert_store_exact(settings, dict(counts))
