"""A record the broker refuses stops the worker: the batch it belonged to is gone from
memory, and committing later offsets would lose it. Real broker (a topic's
max.message.bytes changed with Kafka's own ConfigCommand), real worker process, real
embedded ClickHouse; after the topic is fixed, a restart makes every total exact.

So what the worker sends must fit its topics whatever the input: large valid events are
forwarded in smaller messages, and an oversized message's dead letter is cut."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from processors.scoring import SEGMENT_MAX_BYTES, AccountState, held_events_of, held_segment_key, zstd
from schemas.events import EVENT_TYPES, MAX_EVENT_BYTES, TOPIC_BY_ACCOUNT, TOPIC_CONTACTS, TOPIC_DEAD_LETTERS, TOPIC_STAGE_TRANSITIONS, TOPIC_UNRESOLVED
from streams.kafka_admin import TOPIC_OVERRIDE, ensure_topics
from streams.simulator import encode, iter_events, produce_events
from streams.topics import DEAD_LETTER_PART_BYTES, OUTPUT_MESSAGE_MAX_BYTES, consumed_topics, prepare_topics, state_changelog_topic
from tests.integration.support import (
    assert_store_exact, committed_offsets, consume_all, drain_with_new_worker, isolated_settings, persisted_changelog_offsets, produce, query,
    start_worker,
)

pytestmark = pytest.mark.integration

CONFIG_COMMAND = "kafka.admin.ConfigCommand"
KAFKA_DEFAULT_MESSAGE_MAX_BYTES = 1_048_588


def configure(local_kafka, topic: str, change: str, setting: str) -> None:
    local_kafka.run_tool(
        CONFIG_COMMAND, "--bootstrap-server", local_kafka.bootstrap, "--alter",
        "--entity-type", "topics", "--entity-name", topic, change, setting,
    )


def assert_stopped_by_a_refusal(worker) -> None:
    """The worker stops on its own, with a non-zero status, naming the refusal."""
    status = worker.wait_exit(timeout_s=90)
    log = worker.log_path.read_text(errors="replace")
    assert status != 0, worker.log_tail()
    assert "stopping the worker" in log and "MessageSizeTooLarge" in log, worker.log_tail(80)


@pytest.mark.parametrize("refusing", ["forwarded events", "learned contacts", "account states"])
def test_a_refused_record_stops_the_worker_and_a_restart_loses_nothing(local_kafka, tmp_path, refusing):
    settings = isolated_settings(local_kafka.bootstrap, tmp_path / "abm")
    by_account = settings.topic(TOPIC_BY_ACCOUNT)
    # forwarded events and learned contacts (in batches of their own) are sent by the
    # ingest agent; account states by the checkpoint. The second run's contacts have new
    # emails: learned again.
    topic = {"forwarded events": by_account, "learned contacts": settings.topic(TOPIC_CONTACTS)}.get(refusing, state_changelog_topic(settings))
    worker = start_worker(settings, "first")
    try:
        counts = Counter(asyncio.run(produce_events(settings, accounts=60, contacts_per_account=3, rate=None, duration_s=None, count=3_000, seed=61)))
        worker.wait_drained(timeout_s=120)
        # refused forwards hold back the raw events' offsets; refused states, the forwarded events'
        held_back = [by_account] if refusing == "account states" else consumed_topics(settings)
        before = committed_offsets(settings, held_back)

        configure(local_kafka, topic, "--add-config", "max.message.bytes=64")  # every batch is larger
        counts.update(asyncio.run(produce_events(settings, accounts=60, contacts_per_account=3, rate=None, duration_s=None, count=3_000, seed=62)))
        assert_stopped_by_a_refusal(worker)
    finally:
        worker.kill()
    assert committed_offsets(settings, held_back) == before
    assert sum(counts.values()) == 6_000

    configure(local_kafka, topic, "--delete-config", "max.message.bytes")
    drain_with_new_worker(settings, "second")
    assert_store_exact(settings, counts)


@contextmanager
def broker_default(local_kafka, name: str, value: int) -> Iterator[None]:
    """A cluster-wide broker config for the duration: topics without their own follow it."""
    alter = (CONFIG_COMMAND, "--bootstrap-server", local_kafka.bootstrap, "--alter", "--entity-type", "brokers", "--entity-default")
    local_kafka.run_tool(*alter, "--add-config", f"{name}={value}")
    try:
        yield
    finally:
        local_kafka.run_tool(*alter, "--delete-config", name)


def padded(event: dict, size: int) -> bytes:
    """The event with an incompressible property that makes its JSON exactly ``size`` bytes."""
    event = {**event, "properties": {**event.get("properties", {}), "blob": ""}}
    blob_chars = size - len(encode(event))
    event["properties"]["blob"] = base64.b64encode(os.urandom(blob_chars))[:blob_chars].decode()
    raw = encode(event)
    assert len(raw) == size
    return raw


def test_large_events_and_oversized_messages_fit_the_topics_the_worker_writes(local_kafka, tmp_path):
    settings = isolated_settings(local_kafka.bootstrap, tmp_path / "abm")
    goods = list(iter_events(seed=71, accounts=3, contacts_per_account=2, count=201, expected_events=201, history_days=1))
    # 200 valid events of 64 KiB for 3 accounts: a message of 500 of them would be refused
    records = [(settings.topic(EVENT_TYPES[e["type"]].topic), None, padded(e, 64 * 1024)) for e in goods[:200]]
    counts = Counter(e["type"] for e in goods)
    # on a raw topic whose operator accepts messages of up to 16 MiB:
    big_topic = settings.topic(EVENT_TYPES[goods[200]["type"]].topic)
    largest_valid = padded(goods[200], MAX_EVENT_BYTES)  # forwarded with what routing adds
    waiting = {k: v for k, v in goods[200].items() if k != "account_id"}
    waiting |= {"event_id": "waits", "email": "someone@unknown-domain.example", "contact_id": "new-contact"}
    largest_unresolved = padded(waiting, MAX_EVENT_BYTES)  # to the unresolved topic
    too_large = padded({**goods[200], "event_id": "too-large"}, 3 * 1024 * 1024)
    unknown_type = orjson.dumps({**goods[0], "event_id": "unknown", "type": "t" * 100_000})
    records += [(big_topic, None, value) for value in (largest_valid, largest_unresolved, too_large, unknown_type)]

    # Kafka's default limit (the test broker's is 4 MiB) on every topic without its own
    with broker_default(local_kafka, "message.max.bytes", KAFKA_DEFAULT_MESSAGE_MAX_BYTES):
        worker = start_worker(settings)
        try:
            configure(local_kafka, big_topic, "--add-config", f"max.message.bytes={16 * 1024 * 1024}")
            asyncio.run(produce(local_kafka.bootstrap, records, max_request_size=16 * 1024 * 1024))
            worker.wait_drained(timeout_s=120)
            stats = worker.status()["stats"]
            assert (stats["raw_in"], stats["applied"], stats["unresolved"]) == (204, 201, 1)
            assert stats["invalid_by_reason"] == {"too_large": 1, "unknown_type": 1}
            dead = asyncio.run(consume_all(local_kafka.bootstrap, settings.topic(TOPIC_DEAD_LETTERS), 2, timeout_s=60))
        finally:
            assert worker.stop() == 0, worker.log_tail()  # it never stopped on its own

    by_reason = {dict(m.headers)["abm.reason"].decode(): m for m in dead}
    assert sorted(by_reason) == ["too_large", "unknown_type"]
    cut = by_reason["too_large"]
    assert cut.value == too_large[:DEAD_LETTER_PART_BYTES]
    assert dict(cut.headers)["abm.truncated_from"] == str(len(too_large)).encode()
    named = by_reason["unknown_type"]
    assert named.value == unknown_type and "abm.truncated_from" not in dict(named.headers)
    assert dict(named.headers)["abm.message"].startswith(b"unknown event type 'ttt") and len(dict(named.headers)["abm.message"]) == 4096
    stored = query(settings, "SELECT reason, length(payload) AS size, length(message) AS text FROM dead_letters FINAL ORDER BY reason")
    assert stored == [{"reason": "too_large", "size": DEAD_LETTER_PART_BYTES, "text": len(dict(cut.headers)["abm.message"])},
                      {"reason": "unknown_type", "size": len(unknown_type), "text": 4096}]
    [waits] = query(settings, "SELECT count() AS n FROM unresolved_events")
    assert waits["n"] == 1
    assert_store_exact(settings, counts)


async def topic_overrides(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    """The configs set on each topic itself."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in topics])
    finally:
        await admin.close()
    return {
        resource["resource_name"]: {e["config_names"]: e["config_value"] for e in resource["config_entries"] if e["config_source"] == TOPIC_OVERRIDE}
        for response in described
        for resource in response.to_object()["resources"]
    }


def test_preparing_the_topics_raises_too_small_limits_of_the_topics_the_worker_writes_and_keeps_their_other_configs(local_kafka, tmp_path):
    settings = isolated_settings(local_kafka.bootstrap, tmp_path / "abm")
    dead, transitions, unresolved = (settings.topic(name) for name in (TOPIC_DEAD_LETTERS, TOPIC_STAGE_TRANSITIONS, TOPIC_UNRESOLVED))
    changelog, raw = state_changelog_topic(settings), consumed_topics(settings)[0]
    small, large, week = str(KAFKA_DEFAULT_MESSAGE_MAX_BYTES), str(2 * OUTPUT_MESSAGE_MAX_BYTES), str(7 * 86_400_000)
    # as an earlier version, Faust or an operator left them
    existing = {
        dead: {"max.message.bytes": small, "retention.ms": week},
        transitions: {"max.message.bytes": large},
        changelog: {"cleanup.policy": "compact", "max.message.bytes": small},
        raw: {"max.message.bytes": small},  # read, never written, by the worker
    }
    asyncio.run(ensure_topics(local_kafka.bootstrap, list(existing), 2, 1, configs=existing))

    asyncio.run(prepare_topics(settings))
    asyncio.run(prepare_topics(settings))  # a second start changes nothing

    raised = str(OUTPUT_MESSAGE_MAX_BYTES)
    assert asyncio.run(topic_overrides(local_kafka.bootstrap, [*existing, unresolved])) == {
        dead: {"max.message.bytes": raised, "retention.ms": week},
        transitions: {"max.message.bytes": large},
        changelog: {"cleanup.policy": "compact", "max.message.bytes": raised},
        raw: {"max.message.bytes": small},
        unresolved: {"max.message.bytes": raised},  # created now
    }


async def newest_values(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """The value of the newest record of each key in the topic, read to its end (None: deleted)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    try:
        while not consumer.assignment():  # no group: every partition, once the metadata is in
            await asyncio.sleep(0.05)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        newest: dict[bytes, bytes | None] = {}
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                newest.update((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return newest


def test_a_busy_accounts_held_events_go_to_segments_restored_from_the_changelog_and_each_counts_once(local_kafka, tmp_path):
    """One account, 60,000 page views within ten minutes of event time, five minutes of
    allowed lateness: when the backlog is drained, the newest half waits for the watermark
    (the cap on held events raised for it). Held in the state, they made ~10 MiB of JSON,
    more than the 8 MiB a changelog record takes (it stopped the worker for good); they
    are in segments of at most 1 MiB of JSON now, none left in memory, and the state
    lists them. A worker without its table store restores the state and its segments
    from the changelog alone, and a later event moves the watermark past every held
    event: each counts once, and the segments read back are deleted."""
    settings = isolated_settings(local_kafka.bootstrap, tmp_path / "abm")
    topic = settings.topic(EVENT_TYPES["page_view"].topic)
    changelog = state_changelog_topic(settings)
    start = int(time.time() * 1000) - 3_600_000

    def path(n: int) -> str:
        return f"/docs/{n % 300}/account-based-marketing/getting-started"

    def page_view(n: int, at: int) -> tuple[str, None, bytes]:
        event = {
            "event_id": f"busy-{n}", "type": "page_view", "occurred_at": at, "source": "web", "account_id": "acct-busy",
            "contact_id": f"ct-{n % 500}", "url": f"https://www.example.com{path(n)}", "properties": {"path": path(n)},
        }
        return topic, None, orjson.dumps(event)

    worker = start_worker(settings, "first", extra_env={"ABM_WATERMARK_LATENESS_MINUTES": "5", "ABM_MAX_HELD_EVENTS_PER_ACCOUNT": "40000"})
    try:
        asyncio.run(produce(local_kafka.bootstrap, [page_view(n, start + n * 10) for n in range(60_000)]))
        worker.wait_drained(timeout_s=180)  # committed: the states are written
        assert 'abm_state{what="held_events_in_memory"} 0.0' in worker.metrics()
    finally:
        assert worker.stop() == 0, worker.log_tail()  # it never stopped on its own
    newest = asyncio.run(newest_values(local_kafka.bootstrap, changelog))
    state = AccountState.from_bytes(newest[b"acct-busy"])
    assert (len(state.recent_ids), state.held, state.held_count) == (60_000, [], 30_000)  # those after the newest event - 5 min
    listed = [held_segment_key("acct-busy", number) for _, number, _ in state.held_segments]
    held = [event["event_id"] for key in listed for event in held_events_of(newest[key])]
    assert sorted(held) == sorted(f"busy-{n}" for n in range(30_000, 60_000)) and len(listed) >= 5
    assert max(len(zstd.decompress(newest[key])) for key in listed) <= SEGMENT_MAX_BYTES

    shutil.rmtree(settings.faust_dir)
    asyncio.run(produce(local_kafka.bootstrap, [page_view(60_000, start + 1_200_000)]))
    drain_with_new_worker(settings, "second")
    assert query(settings, "SELECT events_total AS n, page_views AS v FROM account_scores FINAL") == [{"n": 60_001, "v": 60_001}]
    assert query(settings, "SELECT count() AS n, uniqExact(event_id) AS u FROM events") == [{"n": 60_001, "u": 60_001}]
    newest = asyncio.run(newest_values(local_kafka.bootstrap, changelog))
    state = AccountState.from_bytes(newest[b"acct-busy"])
    assert (state.held_count, [newest[key] for key in listed]) == (0, [None] * len(listed))  # read back, then deleted


def test_a_refused_held_segment_stops_the_worker_before_its_state_is_sent_and_a_takeover_counts_each_event_once(local_kafka, tmp_path):
    """A segment is written once, and the state that lists it is read back from the
    changelog by a worker that takes the partition over: the broker refuses the segment
    (its changelog topic takes 128 KiB, the segment of 200 held events of ~4 KiB is
    ~600 KiB; the state ~10 KiB), and the worker stops with neither in the changelog nor
    in its store. A worker without the store then starts from the committed offsets:
    every event counts once. Were the state sent alongside the segment (in a batch of its
    own, which the broker accepts), the takeover would restore a state listing a segment
    the changelog lacks, skip the events as absorbed, and stop at LookupError when the
    watermark reached them."""
    settings = isolated_settings(local_kafka.bootstrap, tmp_path / "abm")
    topic, changelog = settings.topic(EVENT_TYPES["page_view"].topic), state_changelog_topic(settings)
    start = int(time.time() * 1000) - 3_600_000

    def page_view(event_id: str, at: int) -> dict:
        return {
            "event_id": event_id, "type": "page_view", "occurred_at": at, "source": "web", "account_id": "acct-held",
            "contact_id": "ct-1", "url": "https://www.example.com/pricing", "properties": {"path": "/pricing"},
        }

    worker = start_worker(settings, "first", extra_env={"ABM_WATERMARK_LATENESS_MINUTES": "5"})
    try:
        worker.wait_ready(timeout_s=60)  # its table started: the changelog topic exists (Faust creates it)
        configure(local_kafka, changelog, "--add-config", f"max.message.bytes={128 * 1024}")  # after the worker raised it
        asyncio.run(produce(local_kafka.bootstrap, [(topic, None, padded(page_view(f"held-{n}", start + n * 10), 4096)) for n in range(200)]))
        assert_stopped_by_a_refusal(worker)
    finally:
        worker.kill()
    assert asyncio.run(newest_values(local_kafka.bootstrap, changelog)) == {}  # neither the segment nor its state
    assert persisted_changelog_offsets(settings) == {}

    configure(local_kafka, changelog, "--delete-config", "max.message.bytes")
    shutil.rmtree(settings.faust_dir)  # a worker that takes the partition over: the changelog is all it has
    asyncio.run(produce(local_kafka.bootstrap, [(topic, None, encode(page_view("later", start + 1_200_000)))]))  # past the watermark
    drain_with_new_worker(settings, "second")
    assert query(settings, "SELECT events_total AS n, page_views AS v FROM account_scores FINAL") == [{"n": 201, "v": 201}]
    assert query(settings, "SELECT count() AS n, uniqExact(event_id) AS u FROM events") == [{"n": 201, "u": 201}]
