"""Scale-out: two worker processes share the partitions and one ClickHouse engine (the
embedded store served by `abm store serve`); one is killed with -9 mid-stream and the
other takes its partitions over. ClickHouse totals stay exact."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
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


def path_end(moves: list[dict]) -> str | None:
    """Where the account's transitions lead from target, each used once in event-time
    order; None when they do not chain (one lost or doubled). Moves at the same time may
    chain in any order: a fall-back and late events evaluated at its time share it."""
    stage: str | None = "target"
    for _, same_time in itertools.groupby(sorted(moves, key=lambda m: m["at"]), key=lambda m: m["at"]):
        stage = chain_end(stage, list(same_time))
        if stage is None:
            return None
    return stage


def chain_end(stage: str, moves: list[dict]) -> str | None:
    """The stage reached from ``stage`` using every move once, if some order chains them."""
    if not moves:
        return stage
    for index, move in enumerate(moves):
        if move["from_stage"] == stage:
            end = chain_end(move["to_stage"], moves[:index] + moves[index + 1 :])
            if end is not None:
                return end
    return None


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
        # whoever scored it, each account's transitions chain from target to its stage now
        moves: dict[str, list[dict]] = {}
        for move in query(shared, "SELECT account_id, from_stage, to_stage, at FROM stage_transitions FINAL"):
            moves.setdefault(move["account_id"], []).append(move)
        stages = {r["account_id"]: r["stage"] for r in query(shared, "SELECT account_id, stage FROM account_scores FINAL")}
        assert moves and all(path_end(moves.get(account, [])) == stage for account, stage in stages.items())
    finally:
        for worker in workers:
            worker.stop()
        assert store.stop() == 0, store.log_tail()
