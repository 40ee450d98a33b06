"""Small Kafka administration helpers shared by the simulator, the worker and tests."""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code


async def ensure_topics(
    bootstrap: str,
    names: list[str],
    partitions: int,
    replication: int,
    *,
    configs: dict[str, dict[str, str]] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create the topics in ``names`` that do not exist yet; existing ones are left as they are.

    ``configs`` gives topic configs by name (e.g. ``cleanup.policy=compact``) for creation.

    Safe to call concurrently from several processes: a topic created by someone else in
    between (TopicAlreadyExists) counts as success. Returns once every topic is visible in
    the cluster metadata with a leader for each of its partitions, or raises KafkaError
    after ``timeout_s``.
    """
    wanted = list(dict.fromkeys(names))  # de-duplicated, order kept
    if not wanted:
        return
    deadline = time.monotonic() + timeout_s
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(name, partitions, replication, topic_configs=(configs or {}).get(name, {})) for name in missing],
                timeout_ms=int(timeout_s * 1000),
            )
            for topic_error in response.topic_errors:
                name, code = topic_error[0], topic_error[1]
                if code == 0:
                    continue
                error = for_code(code)
                if error is TopicAlreadyExistsError:
                    continue
                message = topic_error[2] if len(topic_error) > 2 and topic_error[2] else error.__name__
                raise KafkaError(f"could not create topic {name!r}: {message}")
        await _wait_for_leaders(admin, wanted, deadline)
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], deadline: float) -> None:
    """Waits until every topic is in the metadata and each partition has a leader."""
    while True:
        pending = set(names)
        for topic in await admin.describe_topics(names):
            partitions = topic.get("partitions") or []
            if topic.get("error_code", 0) == 0 and partitions and all(p.get("leader", -1) >= 0 for p in partitions):
                pending.discard(topic["topic"])
        if not pending:
            return
        if time.monotonic() > deadline:
            raise KafkaError(f"topics not ready in time: {sorted(pending)}")
        await asyncio.sleep(0.1)


async def topic_partitions(admin: AIOKafkaAdminClient, topics: list[str]) -> list[TopicPartition]:
    """Every partition of ``topics``, in topic then partition order; LookupError for unknown topics."""
    partitions = [
        TopicPartition(described["topic"], p["partition"])
        for described in await admin.describe_topics(topics)
        if described.get("error_code", 0) == 0
        for p in sorted(described["partitions"], key=lambda p: p["partition"])
    ]
    missing = set(topics) - {tp.topic for tp in partitions}
    if missing:
        raise LookupError(f"unknown topics: {sorted(missing)}")
    return partitions
