"""Scale-out: two worker processes share the partitions and one ClickHouse engine (the
embedded store served by `abm store serve`); one is killed with -9 mid-stream and the
other takes its partitions over. ClickHouse totals stay exact."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest

from deploy.local.kafka import free_port
from deploy.local.worker_process import StoreServerProcess, WorkerProcess
from streams.settings import Settings
from streams.simulator import produce_events
from tests.integration.support import HeldStream, TcpProxy, assert_store_exact, isolated_settings, query, start_worker

pytestmark = pytest.mark.integration


def started_store(settings: Settings) -> StoreServerProcess:
    store = StoreServerProcess(settings, settings.data_dir / "logs" / "store.log")
    store.start()
    return store


@contextlib.contextmanager
def proxied_store(kafka_bootstrap: str, tmp_path: Path, workers: list[WorkerProcess]) -> Iterator[tuple[Settings, TcpProxy, str]]:
    """A store served by `abm store serve`, the settings its workers share, and a real TCP
    proxy to it with its URL (for the worker whose way to the store a test disturbs).
    Stops ``workers``, then the proxy and the store."""
    store_settings = isolated_settings(kafka_bootstrap, tmp_path / "store", clickhouse_http_password=secrets.token_hex(8))
    store = started_store(store_settings)
    proxy = TcpProxy("127.0.0.1", store_settings.clickhouse_http_port)
    direct = urlparse(store.url)
    through_proxy = direct._replace(netloc=f"{direct.netloc.rpartition('@')[0]}@127.0.0.1:{proxy.port}").geturl()
    try:
        yield store_settings.model_copy(update={"clickhouse_url": store.url, "session_timeout_s": 10.0}), proxy, through_proxy
    finally:
        for worker in workers:
            worker.stop()
        proxy.close()
        assert store.stop() == 0, store.log_tail()


def started_through_proxy(shared: Settings, through_proxy: str, data_dir: Path, workers: list[WorkerProcess], seed: int) -> tuple[WorkerProcess, Counter]:
    """A worker reaching the store through the proxy, added to ``workers``, once it has
    processed 5,000 events (their counts by type)."""
    worker = start_worker(shared.model_copy(update={"data_dir": data_dir, "web_port": free_port(), "clickhouse_url": through_proxy}), data_dir.name)
    workers.append(worker)
    counts = Counter(asyncio.run(produce_events(shared, accounts=200, contacts_per_account=3, rate=None, duration_s=None, count=5_000, seed=seed)))
    worker.wait_drained(timeout_s=120)
    return worker, counts


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
        held = HeldStream(after=total // 4)  # the rest flows once both have partitions
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            produced = pool.submit(
                asyncio.run,
                produce_events(shared, accounts=200, contacts_per_account=4, rate=2_500, duration_s=None, count=total, seed=11, on_progress=held),
            )
            held.release_when_ready(workers)
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


def test_a_rebalance_while_one_worker_cannot_reach_clickhouse_loses_and_doubles_nothing(kafka_bootstrap, tmp_path):
    """The first worker's way to the store (a real TCP proxy) is cut while 20,000 events
    arrive: its checkpoint retries the insert and commits nothing. A second worker, which
    reaches the store, joins. The first one's revocation cannot commit: within half the
    session timeout it abandons the checkpoint (its insert is retried no more), and at
    its next assignment it stops (it cannot read which rows the store holds past the
    committed offsets; its supervisor would restart it). The second worker takes every
    partition and inserts the events once; the way is restored. Before, the revocation
    waited for the checkpoint lock, which an agent held waiting for the stuck checkpoint:
    it kept its events until the store was back and inserted them after the second
    worker had (20,000 events twice)."""
    workers: list[WorkerProcess] = []
    with proxied_store(kafka_bootstrap, tmp_path, workers) as (shared, proxy, through_proxy):
        cut_off, counts = started_through_proxy(shared, through_proxy, tmp_path / "cut-off", workers, seed=91)

        proxy.cut()  # while it is idle: no insert of its is under way
        counts.update(asyncio.run(produce_events(shared, accounts=200, contacts_per_account=3, rate=None, duration_s=None, count=20_000, seed=92)))
        deadline = time.monotonic() + 60
        while cut_off.readiness()[0] != 503:
            assert time.monotonic() < deadline, cut_off.log_tail()
            time.sleep(0.2)
        joining = start_worker(shared.model_copy(update={"data_dir": tmp_path / "joining", "web_port": free_port()}), "joining")
        workers.append(joining)
        wait_until_processing([joining])
        assert cut_off.wait_exit(timeout_s=60) != 0
        proxy.restore()
        joining.wait_drained(timeout_s=180)
        assert joining.stop() == 0, joining.log_tail()
        log = cut_off.log_path.read_text(errors="replace")
        assert "did not finish within 5s of a revocation; abandoning it" in log, cut_off.log_tail(80)
        assert "stopping the worker: OperationalError" in log, cut_off.log_tail(80)  # at its next assignment
        assert sum(counts.values()) == 25_000
        assert_store_exact(shared, counts)


def test_an_abandoned_insert_reaching_the_store_after_the_next_owner_started_lands_nothing(kafka_bootstrap, tmp_path):
    """The first worker's way to the store (a real TCP proxy) holds what follows its first
    event insert for 30 s while 20,000 events come in; a second worker joins. The first
    one's revocation abandons its checkpoint and, its insert still on its way 5 s later,
    stops, and exits at once (a thread waiting on the store held it ~45 s before). Its
    held bytes reach the store after the second worker claimed the partitions and read
    which rows lay past the committed offsets. Whether they make a whole insert depends on
    where the hold began: when they do, the store executes it, and the claims keep its
    rows out (without the claims' filter, one of two runs counted events twice; the
    unit test in tests/unit/test_store.py checks the filter itself)."""
    workers: list[WorkerProcess] = []
    with proxied_store(kafka_bootstrap, tmp_path, workers) as (shared, proxy, through_proxy):
        slowed, counts = started_through_proxy(shared, through_proxy, tmp_path / "slowed", workers, seed=93)

        proxy.delay_requests(30.0, marker=b"%3Aevents_claimed")  # its deduplication token, in the URL
        counts.update(asyncio.run(produce_events(shared, accounts=200, contacts_per_account=3, rate=None, duration_s=None, count=20_000, seed=94)))
        deadline = time.monotonic() + 60
        while proxy.in_transit == 0:  # a checkpoint's insert is on its way
            assert time.monotonic() < deadline, slowed.log_tail()
            time.sleep(0.1)
        joining = start_worker(shared.model_copy(update={"data_dir": tmp_path / "joining", "web_port": free_port()}), "joining")
        workers.append(joining)
        assert slowed.wait_exit(timeout_s=120) != 0
        exited_at = time.time()
        log = slowed.log_path.read_text(errors="replace")
        stopping = next(line for line in log.splitlines() if "an abandoned insert was still at the store" in line)
        stopped_at = datetime.strptime(stopping[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # logged in local time
        assert exited_at - stopped_at < 10, f"exited {exited_at - stopped_at:.1f} s after it began stopping"
        wait_until_processing([joining])
        claimed_at = time.monotonic()  # it processes events only once it has claimed its partitions
        deadline = time.monotonic() + 60
        while proxy.in_transit:
            assert time.monotonic() < deadline, "the held requests were never delivered"
            time.sleep(0.2)
        assert max(proxy.held_delivered_at) > claimed_at  # the store got the insert from a worker long gone
        joining.wait_drained(timeout_s=180)
        assert joining.stop() == 0, joining.log_tail()
        assert sum(counts.values()) == 25_000
        assert_store_exact(shared, counts)
