"""A record the broker refuses stops the worker: the batch it belonged to is gone from
memory, and committing later offsets would lose it. Real broker (a topic's
max.message.bytes lowered with Kafka's own ConfigCommand), real worker process, real
embedded ClickHouse; after the topic is fixed, a restart makes every total exact."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from schemas.events import TOPIC_BY_ACCOUNT
from streams.simulator import produce_events
from streams.topics import consumed_topics
from tests.integration.support import assert_store_exact, committed_offsets, drain_with_new_worker, isolated_settings, start_worker

pytestmark = pytest.mark.integration

CONFIG_COMMAND = "kafka.admin.ConfigCommand"


def configure(local_kafka, topic: str, change: str, setting: str) -> None:
    local_kafka.run_tool(
        CONFIG_COMMAND, "--bootstrap-server", local_kafka.bootstrap, "--alter",
        "--entity-type", "topics", "--entity-name", topic, change, setting,
    )


@pytest.mark.parametrize("refusing", ["forwarded events", "account states"])
def test_a_refused_record_stops_the_worker_and_a_restart_loses_nothing(local_kafka, tmp_path, refusing):
    settings = isolated_settings(local_kafka.bootstrap, tmp_path / "abm")
    by_account = settings.topic(TOPIC_BY_ACCOUNT)
    # forwarded events are sent by the ingest agent; account states by the checkpoint
    topic = by_account if refusing == "forwarded events" else f"{settings.app_id}-account-state-changelog"
    worker = start_worker(settings, "first")
    try:
        counts = Counter(asyncio.run(produce_events(settings, accounts=60, contacts_per_account=3, rate=None, duration_s=None, count=3_000, seed=61)))
        worker.wait_drained(timeout_s=120)
        # refused forwards hold back the raw events' offsets; refused states, the forwarded events'
        held_back = consumed_topics(settings) if refusing == "forwarded events" else [by_account]
        before = committed_offsets(settings, held_back)

        configure(local_kafka, topic, "--add-config", "max.message.bytes=64")  # every batch is larger
        counts.update(asyncio.run(produce_events(settings, accounts=60, contacts_per_account=3, rate=None, duration_s=None, count=3_000, seed=62)))
        status = worker.wait_exit(timeout_s=90)
    finally:
        worker.kill()
    log = worker.log_path.read_text(errors="replace")
    assert status != 0, worker.log_tail()
    assert "stopping the worker" in log and "MessageSizeTooLarge" in log, worker.log_tail(80)
    assert committed_offsets(settings, held_back) == before
    assert sum(counts.values()) == 6_000

    configure(local_kafka, topic, "--delete-config", "max.message.bytes")
    drain_with_new_worker(settings, "second")
    assert_store_exact(settings, counts)
