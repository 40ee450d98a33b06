"""Throughput benchmark: the worker end to end against a bare aiokafka consumer.

    python -m tests.bench.bench_throughput [--events 200000] [--accounts 2000]

Starts its own broker, produces N simulated events, then measures on the same topics:

  floor       a bare aiokafka consumer that fetches every raw event and decodes it with
              orjson (what any Python consumer pays before doing any work);
  end_to_end  a real `abm worker` process (embedded ClickHouse) from ready until its
              consumer group has committed everything, i.e. every event is in ClickHouse.

Then checks that ClickHouse holds exactly N events and prints one JSON line.
Not part of the test suite: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from deploy.local.kafka import LocalKafka, free_ports
from deploy.local.worker_process import WorkerProcess
from schemas.events import EVENT_TYPES
from streams.settings import Settings
from streams.simulator import produce_events
from streams.topics import prepare_topics


async def bare_consumer_seconds(settings: Settings, topics: list[str], expected: int) -> float:
    """Seconds a bare consumer needs to fetch and orjson-decode ``expected`` messages."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.app_id}-floor",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=10_000,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        # Wait for the assignment so group joining is not timed (as for the worker).
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100, max_records=1)
            consumer.seek_to_beginning()
        loads = orjson.loads
        seen = 0
        began = time.perf_counter()
        while seen < expected:
            for messages in (await consumer.getmany(timeout_ms=1000)).values():
                for message in messages:
                    loads(message.value)
                seen += sum(1 for _ in messages)
        return time.perf_counter() - began
    finally:
        await consumer.stop()


def stored_events(settings: Settings) -> tuple[int, int]:
    """(rows, distinct event ids) in the stopped worker's store, read by `abm sql`."""
    import subprocess

    env = dict(os.environ, ABM_DATA_DIR=str(settings.data_dir))
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "sql", "--json", "SELECT count() AS n, uniqExact(event_id) AS u FROM events"],
        env=env,
        capture_output=True,
        check=True,
    )
    row = orjson.loads(done.stdout)[0]
    return int(row["n"]), int(row["u"])


def run(events: int, accounts: int, workdir: Path) -> dict:
    kafka_port, controller_port, web_port = free_ports(3)
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        data_dir=workdir,
        web_port=web_port,
        app_id="abm-bench",
        topic_prefix="bench",
    )
    kafka = LocalKafka(settings.kafka_dir, kafka_port, controller_port, settings.kafka_cache_dir, settings.kafka_version)
    worker = WorkerProcess(settings, workdir / "logs" / "worker.log")
    raw_topics = [settings.topic(t.topic) for t in EVENT_TYPES.values()]
    kafka.start()
    try:
        asyncio.run(prepare_topics(settings))
        began = time.perf_counter()
        counts = asyncio.run(
            produce_events(
                settings, accounts=accounts, contacts_per_account=5, rate=None, duration_s=None, count=events, seed=7
            )
        )
        produce_s = time.perf_counter() - began
        assert sum(counts.values()) == events, counts

        floor_s = asyncio.run(bare_consumer_seconds(settings, raw_topics, events))

        worker.start()
        ready = time.perf_counter()
        drained = worker.wait_drained(timeout_s=1800, poll_s=0.2)
        end_to_end_s = drained - ready
        status = worker.status() or {}
        assert worker.stop() == 0, worker.log_tail()
    finally:
        worker.stop()
        kafka.stop()
    rows, distinct = stored_events(settings)
    if (rows, distinct) != (events, events):
        raise SystemExit(f"ClickHouse holds {rows} rows / {distinct} distinct events, expected {events}")
    floor_eps = events / floor_s
    end_to_end_eps = events / end_to_end_s
    return {
        "events": events,
        "accounts": accounts,
        "end_to_end_events_per_s": round(end_to_end_eps),
        "floor_events_per_s": round(floor_eps),
        "ratio_end_to_end_to_floor": round(end_to_end_eps / floor_eps, 3),
        "end_to_end_s": round(end_to_end_s, 2),
        "floor_s": round(floor_s, 2),
        "produce_events_per_s": round(events / produce_s),
        "clickhouse_events": rows,
        "checkpoints": status.get("checkpoint", {}).get("commits"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="abm-bench-"))
    result = run(args.events, args.accounts, workdir)
    if args.keep:
        result["workdir"] = str(workdir)
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
