"""Performance benchmark: the worker end to end against a bare aiokafka consumer.

    python -m tests.bench.bench_throughput [--events 200000] [--accounts 2000]
        [--latency-s 20] [--latency-rate R] [--state-accounts 0]

Starts its own broker, produces N simulated events, then measures on the same topics:

  floor       a bare aiokafka consumer that fetches every raw event and decodes it with
              orjson (what any Python consumer pays before doing any work);
  end_to_end  a real `abm worker` process (embedded ClickHouse) from /readyz answering
              200 to the commit after which its consumer group lags by nothing, i.e.
              every event is in ClickHouse;
  latency     live events (occurred_at = when sent) at half the end-to-end rate (or R) for
              --latency-s seconds: p50 and p99 of occurred_at to the row acknowledged by
              ClickHouse, from the worker's abm_event_latency_seconds histogram
              (interpolated within its buckets), and from receipt by the worker
              (abm_event_pipeline_latency_seconds);
  cpu         the worker's CPU time (all threads) per event, in the backlog and the live
              phase: comparable between runs on a shared machine, unlike the rates;
  memory      the worker's RSS after the run, and with --state-accounts A, after one
              event for each of A more accounts (RocksDB store), now and at its peak;
  recovery    with --state-accounts, the worker killed with SIGKILL, one event sent to a
              new account meanwhile, and the worker started again: seconds until
              /readyz answers 200 (state restored, group joined), and until that event
              is processed and committed (consuming again); then once more with the
              worker's table store removed (takeover_*: as a worker that takes every
              partition over, replaying the whole changelog), after which a second
              event for 10,000 of the accounts must add to their restored totals.

Then checks that ClickHouse holds every event exactly once and that the accounts' event
totals add up to it, and prints one JSON line. Not part of the test suite: numbers
depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.kafka import LocalKafka, free_ports
from deploy.local.worker_process import WorkerProcess
from schemas.events import EVENT_TYPES
from streams.settings import Settings
from streams.simulator import produce_events
from streams.topics import prepare_topics

TAKEN_OVER_CHECKED = 10_000  # accounts given a second event after the takeover

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


def query_one(settings: Settings, sql: str) -> dict:
    """The one row of ``sql`` in the stopped worker's store, read by `abm sql`."""
    import subprocess

    env = dict(os.environ, ABM_DATA_DIR=str(settings.data_dir))
    done = subprocess.run([sys.executable, "-m", "streams.cli", "sql", "--json", sql], env=env, capture_output=True, check=True)
    return orjson.loads(done.stdout)[0]


def latency_buckets(metrics_text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram on a /metrics page."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == name:
            return [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
    raise KeyError(name)


def quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of what the histogram observed between two scrapes, interpolated
    linearly within its bucket."""
    counts = [(bound, a - b) for (bound, a), (_, b) in zip(after, before)]
    total = counts[-1][1]
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(cumulative - below, 1)
        lower, below = bound, cumulative
    return lower


def produce(settings: Settings, seed: int, accounts: int, count: int, rate: float | None = None) -> None:
    """``count`` simulated events, as fast as possible or paced at ``rate``. Paced ones
    are live: each is stamped occurred_at = when its chunk was handed to the producer, so
    the worker's occurred_at latency is event to ClickHouse. Appended straight into
    batches: a producer call per event cost half a core at 10k events/s, taken from the
    machine under measurement."""
    counts = asyncio.run(
        produce_events(
            settings, accounts=accounts, contacts_per_account=5, rate=rate, duration_s=None, count=count, seed=seed, stamp_sent=rate is not None
        )
    )
    assert sum(counts.values()) == count, counts


async def one_event_per_account(settings: Settings, accounts: int, prefix: str = "state", event_suffix: str = "") -> None:
    """A page view for each of ``accounts`` accounts of their own (by explicit account id);
    ``event_suffix`` tells another round for the same accounts apart."""
    topic = settings.topic(EVENT_TYPES["page_view"].topic)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    now_ms = int(time.time() * 1000)
    try:
        for start in range(0, accounts, 10_000):
            futures = []
            for n in range(start, min(start + 10_000, accounts)):
                account = f"{prefix}-{n:07d}"
                event = {"event_id": account + event_suffix, "type": "page_view", "occurred_at": now_ms, "source": "bench", "account_id": account, "url": "https://x.example/"}
                futures.append(await producer.send(topic, orjson.dumps(event), key=account.encode()))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def restart_after_kill(worker: WorkerProcess, settings: Settings, prefix: str, without_local_state: bool = False) -> tuple[float, float]:
    """Kills the worker with SIGKILL, sends one event for a new account meanwhile and starts
    it again (with its table store removed: as a worker that takes the partitions over):
    seconds until /readyz answers 200, and until that event is processed and committed."""
    worker.kill()
    if without_local_state:
        shutil.rmtree(settings.faust_dir)
    asyncio.run(one_event_per_account(settings, 1, prefix=prefix))  # ready is not yet consuming
    restarted = time.monotonic()
    worker.start(ready_timeout_s=600)
    worker.wait_ready(timeout_s=600)
    ready_s = round(time.monotonic() - restarted, 1)
    return ready_s, round(worker.wait_drained(timeout_s=600, poll_s=0.2) - restarted, 1)


def run(events: int, accounts: int, latency_s: float, state_accounts: int, workdir: Path, latency_rate: float | None = None) -> dict:
    kafka_port, controller_port, web_port = free_ports(3)
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        data_dir=workdir,
        web_port=web_port,
        app_id="abm-bench",
        topic_prefix="bench",
        # The per-account totals are checked exactly, so the newest events must not wait
        # for a later watermark (held events cost ~4 µs each in the default setting).
        watermark_lateness_minutes=0,
    )
    kafka = LocalKafka(settings.kafka_dir, kafka_port, controller_port, settings.kafka_cache_dir, settings.kafka_version)
    worker = WorkerProcess(settings, workdir / "logs" / "worker.log")
    raw_topics = [settings.topic(t.topic) for t in EVENT_TYPES.values()]
    result: dict = {}
    kafka.start()
    try:
        asyncio.run(prepare_topics(settings))
        began = time.perf_counter()
        produce(settings, seed=7, accounts=accounts, count=events)
        produce_s = time.perf_counter() - began

        floor_s = asyncio.run(bare_consumer_seconds(settings, raw_topics, events))

        worker.start()
        worker.wait_ready(timeout_s=300)  # as for the floor, joining the group is not timed
        ready, cpu_at_ready = time.time(), worker.cpu_seconds()
        worker.wait_drained(timeout_s=1800, poll_s=0.2)
        result["worker_cpu_us_per_event"] = round((worker.cpu_seconds() - cpu_at_ready) / events * 1e6, 1)
        end_to_end_s = worker.status()["checkpoint"]["last_commit_at"] - ready  # the commit that drained it
        end_to_end_eps = events / end_to_end_s
        result["rss_mib"] = round(worker.rss_bytes() / 2**20)
        total = events

        if latency_s > 0:
            rate = latency_rate or end_to_end_eps / 2
            paced = int(rate * latency_s)
            before, cpu_before = worker.metrics(), worker.cpu_seconds()
            produce(settings, seed=8, accounts=accounts, count=paced, rate=rate)
            worker.wait_drained(timeout_s=600, poll_s=0.2)
            after = worker.metrics()
            result["live_worker_cpu_us_per_event"] = round((worker.cpu_seconds() - cpu_before) / paced * 1e6, 1)
            total += paced
            result["latency_rate_events_per_s"] = round(rate)
            for prefix, name in (("latency", "abm_event_latency_seconds"), ("in_worker_latency", "abm_event_pipeline_latency_seconds")):
                buckets = latency_buckets(before, name), latency_buckets(after, name)
                result[f"{prefix}_p50_s"] = round(quantile(*buckets, 0.5) or 0, 3)
                result[f"{prefix}_p99_s"] = round(quantile(*buckets, 0.99) or 0, 3)

        if state_accounts > 0:
            asyncio.run(one_event_per_account(settings, state_accounts))
            worker.wait_drained(timeout_s=3600, poll_s=1.0)
            total += state_accounts
            result["state_rss_mib"] = round(worker.rss_bytes() / 2**20)
            result["state_peak_rss_mib"] = round(worker.rss_bytes(peak=True) / 2**20)
            result["recovery_s"], result["recovery_to_consumed_s"] = restart_after_kill(worker, settings, "after-kill")
            total += 1
            # A worker taking every partition over has no local store: it replays the changelogs.
            result["takeover_recovery_s"], result["takeover_recovery_to_consumed_s"] = restart_after_kill(
                worker, settings, "after-takeover", without_local_state=True
            )
            total += 1
            # Restored, not started afresh: a second event for some of the accounts adds to
            # their first (the totals are checked below).
            asyncio.run(one_event_per_account(settings, TAKEN_OVER_CHECKED, event_suffix="-again"))
            worker.wait_drained(timeout_s=600, poll_s=0.2)
            total += TAKEN_OVER_CHECKED
        status = worker.status() or {}
        assert worker.stop() == 0, worker.log_tail()
    finally:
        worker.stop()
        kafka.stop()
    stored = query_one(settings, "SELECT count() AS n, uniqExact(event_id) AS u FROM events")
    scored = query_one(settings, "SELECT sum(events_total) AS n, count() AS accounts FROM account_scores FINAL")
    if (int(stored["n"]), int(stored["u"]), int(scored["n"])) != (total, total, total):
        raise SystemExit(f"ClickHouse holds {stored} events and accounts {scored}, expected {total}")
    floor_eps = events / floor_s
    return {
        "events": events,
        "accounts": accounts,
        "end_to_end_events_per_s": round(end_to_end_eps),
        "floor_events_per_s": round(floor_eps),
        "ratio_end_to_end_to_floor": round(end_to_end_eps / floor_eps, 3),
        "end_to_end_s": round(end_to_end_s, 2),
        "floor_s": round(floor_s, 2),
        "produce_events_per_s": round(events / produce_s),
        **result,
        "clickhouse_events": total,
        "clickhouse_accounts": int(scored["accounts"]),
        "checkpoints": status.get("checkpoint", {}).get("commits"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--latency-s", type=float, default=20.0, help="seconds of live events at half the rate (0: skip)")
    parser.add_argument("--latency-rate", type=float, default=None, help="events/s of the latency phase (default: half the end-to-end rate)")
    parser.add_argument("--state-accounts", type=int, default=0, help="then events for this many more accounts: memory, kill -9, recovery")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="abm-bench-"))
    result = run(args.events, args.accounts, args.latency_s, args.state_accounts, workdir, args.latency_rate)
    if args.keep:
        result["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
