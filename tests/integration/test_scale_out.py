"""Scale-out: two worker processes share the partitions and one ClickHouse engine (the
embedded store served by `abm store serve`); one is killed with -9 mid-stream and the
other takes its partitions over. ClickHouse totals stay exact."""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
import time

import pytest

from deploy.local.kafka import free_port
from deploy.local.worker_process import StoreServerProcess, WorkerProcess
from streams.settings import Settings
from streams.simulator import produce_events
from tests.integration.support import assert_store_exact, isolated_settings, query, start_worker

pytestmark = pytest.mark.integration


def started_store(settings: Settings) -> StoreServerProcess:
    store = StoreServerProcess(settings, settings.data_dir / "logs" / "store.log")
    store.start()
    return store


def wait_until_processing(workers: list[WorkerProcess], timeout_s: float = 90) -> None:
    """Until every worker has ingested and scored events: each owns partitions of both."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = [(w.status() or {}).get("stats", {}) for w in workers]
        if all(s.get("raw_in", 0) > 0 and s.get("applied", 0) > 0 for s in stats):
            return
        assert time.monotonic() < deadline, f"the partitions were not shared: {stats}\n" + workers[-1].log_tail()
        time.sleep(0.1)


def test_two_workers_split_the_partitions_and_one_survives_the_others_kill(kafka_bootstrap, tmp_path):
    store_settings = isolated_settings(kafka_bootstrap, tmp_path / "store", clickhouse_http_password=secrets.token_hex(8))
    store = started_store(store_settings)
    shared = store_settings.model_copy(update={"clickhouse_url": store.url, "session_timeout_s": 10.0})
    total = 40_000
    workers: list[WorkerProcess] = []
    try:
        for name in ("first", "second"):
            settings = shared.model_copy(update={"data_dir": tmp_path / name, "web_port": free_port()})
            workers.append(start_worker(settings, name))
        first, second = workers
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            produced = pool.submit(
                asyncio.run,
                produce_events(shared, accounts=200, contacts_per_account=4, rate=2_500, duration_s=None, count=total, seed=11),
            )
            wait_until_processing(workers)
            first.kill()
            assert not produced.done(), "production ended before the kill; nothing was left to take over"
            counts = produced.result(timeout=120)
        taken_over_at = (second.status() or {})["stats"]["raw_in"]
        second.wait_drained(timeout_s=180)
        assert second.status()["stats"]["raw_in"] > taken_over_at
        assert [worker.stop() for worker in workers] == [-9, 0], second.log_tail()

        assert sum(counts.values()) == total
        assert_store_exact(shared, counts)
        [moves] = query(shared, "SELECT count() AS n, uniqExact(account_id, to_stage) AS u FROM stage_transitions FINAL")
        assert moves["n"] == moves["u"] > 0  # each account reaches each stage once, whoever scored it
    finally:
        for worker in workers:
            worker.stop()
        assert store.stop() == 0, store.log_tail()
