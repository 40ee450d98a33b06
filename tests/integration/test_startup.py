"""A worker started before its broker or its store waits for them, and names the one it
could not reach in one line once the wait is over (streams.dependencies)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from deploy.local.kafka import free_port
from deploy.local.worker_process import StoreServerProcess, WorkerProcess
from streams.settings import Settings
from streams.simulator import produce_events
from tests.integration.support import NO_LATENESS, assert_store_exact, isolated_settings

pytestmark = pytest.mark.integration


def worker_until_exit(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = WorkerProcess(settings, settings.data_dir / "worker.log").env()
    return subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=env, capture_output=True, text=True, timeout=90)


def test_a_worker_without_a_broker_exits_naming_it_in_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    began = time.monotonic()
    done = worker_until_exit(isolated_settings(f"127.0.0.1:{port}", tmp_path, startup_wait_s=2.0))
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"Error: Kafka at 127.0.0.1:{port} (ABM_KAFKA_BOOTSTRAP) unreachable for 2 s: " in done.stderr, output
    assert "Traceback" not in output
    assert time.monotonic() - began < 30


def test_a_worker_without_its_store_exits_naming_it_without_its_password(kafka_bootstrap: str, tmp_path: Path) -> None:
    port, password = free_port(), secrets.token_hex(8)
    url = f"http://abm:{password}@127.0.0.1:{port}/default"
    done = worker_until_exit(isolated_settings(kafka_bootstrap, tmp_path, clickhouse_url=url, startup_wait_s=2.0))
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"Error: ClickHouse at http://127.0.0.1:{port}/default (CLICKHOUSE_URL) unreachable for 2 s: " in done.stderr, output
    assert "Traceback" not in output and password not in output


def test_a_worker_started_before_its_store_waits_for_it_and_stores_every_event(kafka_bootstrap: str, tmp_path: Path) -> None:
    store_settings = isolated_settings(kafka_bootstrap, tmp_path / "store", clickhouse_http_password=secrets.token_hex(8))
    store = StoreServerProcess(store_settings, tmp_path / "store" / "logs" / "store.log")
    settings = store_settings.model_copy(update={"data_dir": tmp_path / "worker", "clickhouse_url": store.url})
    worker = WorkerProcess(settings, tmp_path / "worker" / "logs" / "worker.log", dict(NO_LATENESS))
    failures: list[BaseException] = []

    def start_worker() -> None:  # returns once the worker answers: after the store does
        try:
            worker.start(ready_timeout_s=120)
        except BaseException as exc:
            failures.append(exc)

    starting = threading.Thread(target=start_worker)
    starting.start()
    try:
        deadline = time.monotonic() + 60
        while "(CLICKHOUSE_URL) unreachable" not in worker.log_tail():
            assert time.monotonic() < deadline and starting.is_alive(), f"{failures}\n{worker.log_tail()}"
            time.sleep(0.2)
        time.sleep(3)  # still waiting, not exited
        assert starting.is_alive(), f"{failures}\n{worker.log_tail()}"
        store.start()
        starting.join(timeout=120)
        assert not starting.is_alive() and not failures, f"{failures}\n{worker.log_tail()}"
        worker.wait_ready(timeout_s=60)
        counts = Counter(asyncio.run(produce_events(settings, accounts=50, contacts_per_account=3, rate=None, duration_s=None, count=2_000, seed=11)))
        worker.wait_drained(timeout_s=120)
        assert worker.stop() == 0, worker.log_tail()
        assert_store_exact(settings, counts)
    finally:
        worker.stop()
        starting.join(timeout=10)
        store.stop()
