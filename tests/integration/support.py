"""Helpers shared by the integration tests: real broker, real worker process, real chDB."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.local.kafka import free_port
from deploy.local.worker_process import WorkerProcess
from streams.settings import Settings
from streams.topics import prepare_topics


def isolated_settings(bootstrap: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings with their own topics, consumer group, store and web port on a shared broker."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=bootstrap,
        data_dir=data_dir,
        topic_prefix=f"t{tag}",
        app_id=f"abm-test-{tag}",
        web_port=free_port(),
        **overrides,
    )


# Tests read account states as soon as the events are processed: no allowed lateness,
# unless a test sets one (the watermark then holds events back by that much event time).
NO_LATENESS = {"ABM_WATERMARK_LATENESS_MINUTES": "0"}


def start_worker(settings: Settings, name: str = "worker", extra_env: dict[str, str] = NO_LATENESS) -> WorkerProcess:
    asyncio.run(prepare_topics(settings))
    worker = WorkerProcess(settings, settings.data_dir / "logs" / f"{name}.log", dict(extra_env))
    worker.start()
    return worker


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
    env = dict(os.environ, ABM_DATA_DIR=str(settings.data_dir))
    if settings.clickhouse_url:
        env["CLICKHOUSE_URL"] = settings.clickhouse_url
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "sql", "--json", sql], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    return orjson.loads(done.stdout)
