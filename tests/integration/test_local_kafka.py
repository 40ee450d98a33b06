"""The local broker runner against a real Kafka broker."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from deploy.local.kafka import LocalKafka, free_ports
from streams.kafka_admin import ensure_topics
from streams.settings import Settings

pytestmark = pytest.mark.integration


def _local_kafka(data_dir: Path) -> LocalKafka:
    settings = Settings()
    port, controller_port = free_ports(2)
    return LocalKafka(
        data_dir=data_dir,
        port=port,
        controller_port=controller_port,
        cache_dir=settings.kafka_cache_dir,
        version=settings.kafka_version,
    )


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _create_produce_consume(bootstrap: str, topic: str) -> tuple[int, bytes, bytes]:
    # waits until every partition has a leader: a describe right after the create could
    # find none yet on a broker that has just started
    await ensure_topics(bootstrap, [topic], partitions=8, replication=1)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = len(described[0]["partitions"])

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"account-1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert message.key is not None and message.value is not None
    return partitions, message.key, message.value


def test_topic_produce_consume(kafka_bootstrap: str) -> None:
    topic = f"test-{uuid.uuid4().hex[:8]}"
    partitions, key, value = asyncio.run(_create_produce_consume(kafka_bootstrap, topic))
    assert partitions == 8
    assert (key, value) == (b"account-1", b"hello")


def test_start_is_idempotent_and_status_reports_it(tmp_path: Path) -> None:
    kafka = _local_kafka(tmp_path / "kafka")
    assert not kafka.status().running
    kafka.start()
    try:
        state = kafka.status()
        assert state.running and state.pid is not None and _pid_exists(state.pid)
        assert state.bootstrap == kafka.bootstrap == f"127.0.0.1:{kafka.port}"
        assert state.log_path == kafka.data_dir / "logs" / "server.log"
        assert state.log_path.is_file()

        kafka.start()
        # Also a fresh object on the same data_dir (like a second `abm kafka start`).
        _twin(kafka).start()
        assert kafka.status().pid == _twin(kafka).status().pid == state.pid
    finally:
        kafka.stop()


def test_stop_ends_the_process(tmp_path: Path) -> None:
    kafka = _local_kafka(tmp_path / "kafka")
    kafka.start()
    pid = kafka.status().pid
    assert pid is not None
    try:
        # Stopped through a separate object, as `abm kafka stop` in another shell would.
        _twin(kafka).stop()
        assert not _pid_exists(pid)
        assert not kafka.pid_path.exists()
        after = kafka.status()
        assert not after.running and after.pid is None
        kafka.stop()  # stopping a stopped broker is a no-op
    finally:
        kafka.stop()


def _twin(kafka: LocalKafka) -> LocalKafka:
    return LocalKafka(
        data_dir=kafka.data_dir,
        port=kafka.port,
        controller_port=kafka.controller_port,
        cache_dir=kafka.cache_dir,
        version=kafka.version,
    )
