"""Helpers shared by the integration tests: real broker, real worker process, real chDB."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import rocksdict
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.stores.rocksdb import Store as RocksDBStore

from deploy.local.kafka import free_port
from deploy.local.worker_process import WorkerProcess
from streams.kafka_admin import topic_partitions
from streams.lag import group_lag
from streams.settings import Settings
from streams.topics import STATE_TABLE, consumed_topics, prepare_topics, state_changelog_topic


def isolated_settings(bootstrap: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings with their own topics, consumer group, store and web port on a shared broker."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=bootstrap,
        data_dir=data_dir,
        topic_prefix=f"t{tag}",
        app_id=f"abm-test-{tag}",
        web_port=free_port(),
        **{"clickhouse_url": None, "clickhouse_http_port": free_port(), **overrides},  # embedded unless a test passes a server's URL
    )


def store_env(settings: Settings) -> dict[str, str]:
    """The environment of a process on these settings' store (a server's, or the embedded one)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CLICKHOUSE_URL", "ABM_CLICKHOUSE_URL")}
    env["ABM_DATA_DIR"] = str(settings.data_dir)
    if settings.clickhouse_url:
        env["CLICKHOUSE_URL"] = settings.clickhouse_url
    return env


# Tests read account states as soon as the events are processed: no allowed lateness,
# unless a test sets one (the watermark then holds events back by that much event time).
NO_LATENESS = {"ABM_WATERMARK_LATENESS_MINUTES": "0"}


def start_worker(settings: Settings, name: str = "worker", extra_env: dict[str, str] = NO_LATENESS) -> WorkerProcess:
    asyncio.run(prepare_topics(settings))
    worker = WorkerProcess(settings, settings.data_dir / "logs" / f"{name}.log", dict(extra_env))
    worker.start()
    return worker


class HeldStream:
    """``produce_events``' progress callback that holds a paced stream after ``after``
    events until ``release_when_ready``: the rest then flows only once the workers that
    must share it have their partitions. On a busy machine (the tests run in two
    processes) a worker's start could outlast the whole stream, and a test meant to hand
    partitions over mid-stream saw none move."""

    def __init__(self, after: int, timeout_s: float = 120) -> None:
        self.after = after
        self.timeout_s = timeout_s
        self._released = threading.Event()

    def __call__(self, produced: int) -> None:
        if produced >= self.after:
            assert self._released.wait(self.timeout_s), f"the stream was held after {produced:,} events and never released"

    def release_when_ready(self, workers: list[WorkerProcess]) -> None:
        """Releases the stream once every worker answers /readyz (its partitions recovered);
        also when one does not, so that the producer ends and the test fails on that."""
        try:
            for worker in workers:
                worker.wait_ready(timeout_s=self.timeout_s)
        finally:
            self._released.set()


def committed_offsets(settings: Settings, topics: list[str] | None = None) -> dict[tuple[str, int], int]:
    """The group's committed offset of every partition of ``topics`` (all it consumes by default)."""
    lags = asyncio.run(group_lag(settings.kafka_bootstrap, settings.app_id, topics or consumed_topics(settings)))
    return {(item.topic, item.partition): item.committed for item in lags}


def persisted_changelog_offsets(settings: Settings) -> dict[int, int]:
    """Per partition of the stopped worker's table store: the last changelog offset it says
    it holds (Faust's offset key in each partition's RocksDB), where a restart resumes."""
    offsets = {}
    for path in settings.faust_dir.rglob(f"{STATE_TABLE}-*.db"):
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True), access_type=rocksdict.AccessType.read_only())
        try:
            raw = db.get(RocksDBStore.offset_key)
        finally:
            db.close()
        if raw is not None:
            offsets[int(path.stem.rpartition("-")[2])] = int(raw)
    return offsets


def changelog_end_offsets(settings: Settings) -> dict[int, int]:
    """Per partition of the account-state changelog that holds records: its end offset."""

    async def ends() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            partitions = await topic_partitions(admin, [state_changelog_topic(settings)])
        finally:
            await admin.close()
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            return {tp.partition: end for tp, end in (await consumer.end_offsets(partitions)).items() if end > 0}
        finally:
            await consumer.stop()

    return asyncio.run(ends())


def drain_with_new_worker(settings: Settings, name: str, timeout_s: float = 180) -> None:
    """Starts a worker that processes everything the group has not committed, then stops
    it gracefully (exit status 0)."""
    worker = start_worker(settings, name)
    try:
        worker.wait_drained(timeout_s=timeout_s)
    finally:
        assert worker.stop() == 0, worker.log_tail()


async def produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes]], max_request_size: int = 1 << 20) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", max_request_size=max_request_size)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for topic, key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    messages: list = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(messages) < expected and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                messages.extend(batch)
        # a short extra wait proves nothing more than expected arrives
        for batch in (await consumer.getmany(timeout_ms=1000)).values():
            messages.extend(batch)
    finally:
        await consumer.stop()
    return messages


def query(settings: Settings, sql: str) -> list[dict]:
    """Rows from the stopped worker's store, read by a separate `abm sql` process
    (a process can open only one chDB directory in its lifetime)."""
    env = store_env(settings)
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "sql", "--json", sql], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    return orjson.loads(done.stdout)


def store_commands(settings: Settings, *statements: str) -> None:
    """Runs statements on the stopped worker's store, in a separate process (see ``query``)."""
    script = "import sys\nfrom streams.settings import Settings\nfrom streams.store import open_client\nclient = open_client(Settings())\nfor statement in sys.argv[1:]:\n    client.command(statement)\n"
    done = subprocess.run([sys.executable, "-c", script, *statements], env=store_env(settings), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()


class TcpProxy:
    """A real TCP proxy on a free loopback port (its own thread and event loop) to
    ``host:port``. ``cut()`` drops every connection through it and refuses new ones, as
    a network partition does; ``restore()`` accepts again. ``delay_requests(s)`` holds
    what clients send for ``s`` seconds before it reaches ``host:port`` (a congested
    link or a store slow to take requests), from the chunk after a connection's first
    chunk containing ``marker`` on: bytes on their way arrive even if their client has
    gone meanwhile, as they would over a network."""

    def __init__(self, host: str, port: int) -> None:
        self.port = free_port()
        self._target = (host, port)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._request_delay_s = 0.0
        self._held_marker = b""
        self.held_delivered_at: list[float] = []  # time.monotonic() of each held chunk's delivery
        self._in_transit = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.restore()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def restore(self) -> None:
        async def listen() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

        self._run(listen())

    def cut(self) -> None:
        async def drop() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        self._run(drop())

    def delay_requests(self, seconds: float, marker: bytes = b"") -> None:
        self._request_delay_s, self._held_marker = seconds, marker

    @property
    def in_transit(self) -> int:
        """Chunks held by ``delay_requests`` and not yet delivered."""
        return self._in_transit

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, upstream_writer}
        self._writers |= pair
        await asyncio.gather(self._send_requests(reader, upstream_writer), self._pipe(upstream_reader, writer))
        self._writers -= pair

    async def _send_requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client to upstream, each chunk held for the request delay set when it came."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bool, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            while (chunk := await chunks.get()) is not None:
                due, held, data = chunk
                await asyncio.sleep(max(0.0, due - loop.time()))
                self._in_transit -= held
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, RuntimeError):
                    continue  # cut meanwhile
                if held:
                    self.held_delivered_at.append(time.monotonic())

        delivering = asyncio.ensure_future(deliver())
        delayed = False
        try:
            while data := await reader.read(1 << 16):
                delay = self._request_delay_s if delayed else 0.0
                delayed = delayed or (self._request_delay_s > 0 and self._held_marker in data)
                self._in_transit += delay > 0
                chunks.put_nowait((loop.time() + delay, delay > 0, data))
        except ConnectionError:
            pass
        finally:
            chunks.put_nowait(None)
            await delivering
            if not delayed:  # held bytes delivered: the store answers them to nobody
                writer.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()


CAMPAIGN_TYPES = ("email_sent", "email_delivered", "email_bounced", "email_open", "email_click", "ad_impression", "ad_click")


def assert_store_exact(settings: Settings, counts: dict[str, int]) -> None:
    """Every event once in `events`, and every table fed from it consistent with it."""
    total = sum(counts.values())
    [stored] = query(settings, "SELECT count() AS n, uniqExact(event_id) AS u FROM events")
    assert (stored["n"], stored["u"]) == (total, total)
    by_type = {r["type"]: r["n"] for r in query(settings, "SELECT type, count() AS n FROM events GROUP BY type")}
    assert by_type == {kind: n for kind, n in counts.items() if n}
    [scored] = query(settings, "SELECT sum(events_total) AS n, sum(email_opens) AS opens FROM account_scores FINAL")
    assert (scored["n"], scored["opens"]) == (total, counts["email_open"])
    # materialized views: exactly one row (or count) per stored event
    [facts] = query(settings, "SELECT count() AS n FROM campaign_facts")
    assert facts["n"] == sum(counts.get(kind, 0) for kind in CAMPAIGN_TYPES)
    [opportunities] = query(settings, "SELECT count() AS n FROM opportunity_updates")
    assert opportunities["n"] == counts.get("opportunity_stage_changed", 0)
    [nps] = query(settings, "SELECT count() AS n FROM nps_responses")
    assert nps["n"] == counts.get("nps_response", 0)
    engagement = query(settings, "SELECT type, sum(events) AS n FROM account_daily_engagement GROUP BY type")
    human = query(settings, "SELECT type, countIf(NOT JSONExtractBool(properties, 'machine_open')) AS n FROM events GROUP BY type")
    expected = {r["type"]: r["n"] for r in human}
    assert engagement and {r["type"]: r["n"] for r in engagement} == {r["type"]: expected[r["type"]] for r in engagement}
    # the score history's newest version of every account is its current row
    history = query(settings, "SELECT account_id, max(version) AS v FROM account_score_history GROUP BY account_id")
    current = query(settings, "SELECT account_id, version AS v FROM account_scores FINAL")
    assert {r["account_id"]: r["v"] for r in history} == {r["account_id"]: r["v"] for r in current}
