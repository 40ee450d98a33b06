"""`abm demo`: the whole pipeline on this machine in one command.

Starts a local broker and a worker with the embedded ClickHouse, simulates a stream of
events, waits until every event is committed, stops everything it started and prints
the funnel read back from ClickHouse.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

from deploy.local.kafka import LocalKafka, free_ports
from deploy.local.worker_process import WorkerProcess
from streams.settings import Settings
from streams.simulator import produce_events
from streams.store import open_store

STAGE_ORDER = "['target','awareness','consideration','decision','customer']"


def say(text: str) -> None:
    print(text, flush=True)


def run_demo(base: Settings, duration_s: float, rate: float, accounts: int, seed: int) -> None:
    data_dir = base.data_dir.resolve() / "demo"
    if data_dir.exists():
        shutil.rmtree(data_dir)  # each demo starts from an empty broker and store
    kafka_port, controller_port, web_port = free_ports(3)
    settings = base.model_copy(
        update={"data_dir": data_dir, "kafka_bootstrap": f"127.0.0.1:{kafka_port}", "web_port": web_port}
    )
    kafka = LocalKafka(settings.kafka_dir, kafka_port, controller_port, settings.kafka_cache_dir, settings.kafka_version)
    worker = WorkerProcess(settings, data_dir / "logs" / "worker.log")
    try:
        say(f"[1/5] starting Kafka {settings.kafka_version} on {kafka.bootstrap} (first run fetches it with Maven)")
        kafka.start()
        say(f"[2/5] starting the worker (web on 127.0.0.1:{web_port}, log {worker.log_path})")
        worker.start()
        say(f"[3/5] simulating {accounts} accounts at {rate:.0f} events/s for {duration_s:.0f}s")
        counts = asyncio.run(
            produce_events(
                settings,
                accounts=accounts,
                contacts_per_account=5,
                rate=rate,
                duration_s=duration_s,
                count=None,
                seed=seed,
                on_progress=lambda produced: _progress(worker, produced),
            )
        )
        produced = sum(counts.values())
        say(f"[4/5] produced {produced} events; waiting until the worker has committed all of them")
        started = time.monotonic()
        worker.wait_drained(timeout_s=120)
        say(f"      drained in {time.monotonic() - started:.1f}s; stopping the worker")
        worker.stop()
    finally:
        worker.stop()
        kafka.stop()
    say("[5/5] results, read back from the embedded ClickHouse")
    _report(settings)


def _progress(worker: WorkerProcess, produced: int) -> None:
    status = worker.status() or {}
    stats = status.get("stats", {})
    sink = status.get("sink", {})
    say(f"      produced {produced:>8}  scored {stats.get('applied', 0):>8}  rows in ClickHouse {sink.get('rows_written', 0):>8}")


def _report(settings: Settings) -> None:
    client = open_store(settings)
    events = client.query("SELECT count(), uniqExact(account_id) FROM events").result_rows[0]
    say(f"\n{events[0]} events from {events[1]} accounts\n\nAccounts per stage:")
    for stage, n in client.query(
        f"SELECT stage, count() FROM account_scores FINAL GROUP BY stage ORDER BY indexOf({STAGE_ORDER}, stage)"
    ).result_rows:
        say(f"  {stage:<14}{n:>6}")
    say("\nTop accounts by engagement score (decayed to now):")
    say(f"  {'account':<12}{'score':>9}  {'stage':<14}{'events':>7}{'contacts':>9}")
    half_life_ms = settings.score_half_life_days * 86_400_000
    for account, score, stage, total, contacts in client.query(
        "SELECT account_id, engagement_score * pow(2, -dateDiff('millisecond', score_at, now64(3)) / %(h)s) AS s,"
        " stage, events_total, engaged_contacts_90d FROM account_scores FINAL ORDER BY s DESC LIMIT 10",
        parameters={"h": half_life_ms},
    ).result_rows:
        say(f"  {account:<12}{score:>9.1f}  {stage:<14}{total:>7}{contacts:>9}")
    say(
        f"\nThe data lives in the embedded ClickHouse at {settings.chdb_path}.\n"
        f"Query it with:  ABM_DATA_DIR={settings.data_dir} {Path(sys.executable).parent / 'abm'} sql \"SELECT stage, count() FROM account_scores FINAL GROUP BY stage\"\n"
        "Tables: events, account_scores (FINAL for the latest row per account), stage_transitions, unresolved_pending."
    )

