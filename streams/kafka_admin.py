"""Small Kafka administration helpers shared by the simulator, the worker and tests."""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
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


MAX_MESSAGE_BYTES = "max.message.bytes"
TOPIC_OVERRIDE = 1  # DescribeConfigs config_source: set on the topic itself


async def raise_message_limits(bootstrap: str, names: list[str], at_least: int, *, timeout_s: float = 30.0) -> list[str]:
    """Raises ``max.message.bytes`` of the existing topics in ``names`` that take less
    than ``at_least`` bytes (a larger limit stays); returns the topics raised, once the
    broker applies their new limit. Topics that do not exist are skipped.

    AlterConfigs (the request aiokafka has) replaces a topic's whole set of overrides, so
    the topic's other overrides are sent along unchanged; a sensitive one, whose value the
    broker does not tell, makes it a KafkaError instead.
    """
    deadline = time.monotonic() + timeout_s
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        raised = await _too_small(admin, [name for name in dict.fromkeys(names) if name in existing], at_least)
        if not raised:
            return []
        for response in await admin.alter_configs(raised):
            for error_code, message, _, name in response.resources:
                if error_code != 0:
                    raise KafkaError(f"could not raise {MAX_MESSAGE_BYTES} of topic {name!r}: {message or for_code(error_code).__name__}")
        # the broker answers once the controller has the change, and applies it a moment later
        while pending := await _too_small(admin, [change.name for change in raised], at_least):
            if time.monotonic() > deadline:
                raise KafkaError(f"{MAX_MESSAGE_BYTES} not raised in time: {sorted(change.name for change in pending)}")
            await asyncio.sleep(0.1)
        return [change.name for change in raised]
    finally:
        await admin.close()


async def _too_small(admin: AIOKafkaAdminClient, names: list[str], at_least: int) -> list[ConfigResource]:
    """For each topic taking less than ``at_least`` bytes: its overrides with the limit raised."""
    if not names:
        return []
    described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    changes = (_raised(resource, at_least) for response in described for resource in response.to_object()["resources"])
    return [change for change in changes if change is not None]


def _raised(resource: dict, at_least: int) -> ConfigResource | None:
    """The topic's overrides with its message limit raised to ``at_least``; None when it takes that already."""
    name = resource["resource_name"]
    if resource["error_code"] != 0:
        raise KafkaError(f"could not describe topic {name!r}: {resource['error_message'] or for_code(resource['error_code']).__name__}")
    entries = {entry["config_names"]: entry for entry in resource["config_entries"]}
    if int(entries[MAX_MESSAGE_BYTES]["config_value"]) >= at_least:
        return None
    overrides = {}
    for key, entry in entries.items():
        if entry["config_source"] != TOPIC_OVERRIDE:
            continue
        if entry["is_sensitive"]:
            raise KafkaError(f"topic {name!r} has the sensitive override {key!r}: raise its {MAX_MESSAGE_BYTES} to {at_least} by hand")
        overrides[key] = entry["config_value"]
    return ConfigResource(ConfigResourceType.TOPIC, name, {**overrides, MAX_MESSAGE_BYTES: str(at_least)})


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
