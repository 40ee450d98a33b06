"""Scale-out benchmark: end-to-end throughput with 1, then 2 worker processes.

    python -m tests.bench.bench_scale_out [--events 100000] [--accounts 2000] [--workers 1 2]

For each worker count, on its own broker: one `abm store serve` owns the embedded
ClickHouse and every worker writes through it (the same path for every count, so the
numbers compare); the workers start and settle into one consumer group, then N events
are produced as fast as the producer goes and the clock runs until the group has
committed everything. ClickHouse must then hold exactly N events. Prints one JSON line.
Not part of the test suite: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import clickhouse_connect
import orjson

from deploy.local.kafka import LocalKafka, free_ports
from deploy.local.worker_process import StoreServerProcess, WorkerProcess
from streams.settings import Settings
from streams.simulator import produce_events
from streams.topics import prepare_topics


def wait_settled(workers: list[WorkerProcess], settle_s: float = 5.0, timeout_s: float = 180.0) -> None:
    """Until every worker has been ready (no rebalance, tables recovered) for ``settle_s``."""
    deadline = time.monotonic() + timeout_s
    since = None
    while time.monotonic() < deadline:
        if all(w.ready() for w in workers):
            since = since or time.monotonic()
            if time.monotonic() - since >= settle_s:
                return
        else:
            since = None
        time.sleep(0.25)
    raise TimeoutError("the consumer group did not settle")


def measure(worker_count: int, events: int, accounts: int, workdir: Path) -> dict:
    kafka_port, controller_port, store_port, *web_ports = free_ports(3 + worker_count)
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        data_dir=workdir / "store",
        app_id="abm-bench",
        topic_prefix="bench",
        clickhouse_http_port=store_port,
        clickhouse_http_password=secrets.token_hex(8),
    )
    kafka = LocalKafka(workdir / "kafka", kafka_port, controller_port, settings.kafka_cache_dir, settings.kafka_version)
    store = StoreServerProcess(settings, workdir / "logs" / "store.log")
    workers: list[WorkerProcess] = []
    kafka.start()
    try:
        asyncio.run(prepare_topics(settings))
        store.start()
        shared = settings.model_copy(update={"clickhouse_url": store.url})
        for index, port in enumerate(web_ports):
            worker_settings = shared.model_copy(update={"data_dir": workdir / f"worker{index}", "web_port": port})
            worker = WorkerProcess(worker_settings, workdir / "logs" / f"worker{index}.log")
            worker.start()
            workers.append(worker)
        wait_settled(workers)
        began = time.perf_counter()
        counts = asyncio.run(
            produce_events(shared, accounts=accounts, contacts_per_account=5, rate=None, duration_s=None, count=events, seed=7)
        )
        assert sum(counts.values()) == events, counts
        drained = workers[0].wait_drained(timeout_s=1800, poll_s=0.2)
        seconds = drained - began
        applied = [(w.status() or {}).get("stats", {}).get("applied", 0) for w in workers]
        for worker in workers:
            assert worker.stop() == 0, worker.log_tail()
        client = clickhouse_connect.get_client(
            host="127.0.0.1", port=store_port, username=settings.clickhouse_http_user, password=settings.clickhouse_http_password
        )
        [(rows, distinct)] = client.query("SELECT count(), uniqExact(event_id) FROM events").result_rows
    finally:
        for worker in workers:
            worker.stop()
        store.stop()
        kafka.stop()
    if (rows, distinct) != (events, events):
        raise SystemExit(f"{worker_count} worker(s): ClickHouse holds {rows} rows / {distinct} distinct events, expected {events}")
    return {"workers": worker_count, "events_per_s": round(events / seconds), "seconds": round(seconds, 2), "applied_per_worker": applied}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    runs = []
    for count in args.workers:
        workdir = Path(tempfile.mkdtemp(prefix=f"abm-scale-{count}-"))
        try:
            runs.append(measure(count, args.events, args.accounts, workdir))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    base = runs[0]["events_per_s"]
    result = {
        "events": args.events,
        "accounts": args.accounts,
        "runs": runs,
        "speedup": {str(r["workers"]): round(r["events_per_s"] / base, 2) for r in runs},
        "cpus": os.cpu_count(),
    }
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
