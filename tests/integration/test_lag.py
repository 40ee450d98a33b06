"""`abm lag` against the real broker: its numbers agree with Kafka's own consumer-group
command, and --max-lag turns lag into an exit status."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import orjson
import pytest

from prometheus_client.parser import text_string_to_metric_families

from streams.lag import group_lag, oldest_waiting_ms
from streams.simulator import produce_events
from streams.topics import consumed_topics
from tests.integration.support import isolated_settings, start_worker

pytestmark = pytest.mark.integration

CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


def abm_lag(settings, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ABM_KAFKA_BOOTSTRAP=settings.kafka_bootstrap, ABM_TOPIC_PREFIX=settings.topic_prefix, ABM_APP_ID=settings.app_id)
    return subprocess.run([sys.executable, "-m", "streams.cli", "lag", *args], env=env, capture_output=True, text=True, timeout=120)


def kafka_describe(local_kafka, group: str) -> dict[tuple[str, int], tuple[int, int, int]]:
    """(topic, partition) -> (current offset, log end, lag), parsed from Kafka's table."""
    out = local_kafka.run_tool(CONSUMER_GROUP_COMMAND, "--bootstrap-server", local_kafka.bootstrap, "--describe", "--group", group)
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 6 and cells[0] == group and cells[2].isdigit():
            rows[(cells[1], int(cells[2]))] = (int(cells[3]), int(cells[4]), int(cells[5]))
    return rows


def test_lag_agrees_with_kafkas_consumer_group_command(local_kafka, tmp_path):
    settings = isolated_settings(local_kafka.bootstrap, tmp_path / "abm")
    worker = start_worker(settings)
    try:
        asyncio.run(produce_events(settings, accounts=30, contacts_per_account=3, rate=None, duration_s=None, count=2_000, seed=8))
        worker.wait_drained(timeout_s=120)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    # produced while nobody consumes: exactly this much lag
    before_ms = int(time.time() * 1000)
    asyncio.run(produce_events(settings, accounts=30, contacts_per_account=3, rate=None, duration_s=None, count=500, seed=9))
    after_ms = int(time.time() * 1000)
    lags = asyncio.run(group_lag(settings.kafka_bootstrap, settings.app_id, consumed_topics(settings)))
    oldest = asyncio.run(oldest_waiting_ms(settings.kafka_bootstrap, lags))
    assert set(oldest) == {item.topic for item in lags if item.lag > 0}  # the raw topics, not by-account
    assert all(before_ms - 1000 <= at <= after_ms for at in oldest.values())  # the waiting messages' own times

    done = abm_lag(settings, "--json")
    assert done.returncode == 0, done.stderr
    ours = {(r["topic"], r["partition"]): r for r in orjson.loads(done.stdout)}
    assert sum(r["lag"] for r in ours.values()) == 500

    theirs = kafka_describe(local_kafka, settings.app_id)
    assert theirs, "Kafka's command reported no partitions"
    for tp, (current, log_end, lag) in theirs.items():
        assert (ours[tp]["current_offset"], ours[tp]["log_end_offset"], ours[tp]["lag"]) == (current, log_end, lag), tp
    # every partition the group committed on is in Kafka's report
    assert {tp for tp, r in ours.items() if r["current_offset"] is not None} == set(theirs)

    table = abm_lag(settings)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split() == [
        "GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"
    ]
    assert abm_lag(settings, "--max-lag", "500").returncode == 0
    exceeded = abm_lag(settings, "--max-lag", "499")
    assert exceeded.returncode == 1 and "exceeds 499" in exceeded.stderr


def test_health_and_readiness_endpoints_and_no_table_views(kafka_bootstrap, tmp_path):
    import urllib.error
    import urllib.request

    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
    worker = start_worker(settings)
    base = f"http://127.0.0.1:{settings.web_port}"

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    try:
        assert get("/healthz") == (200, b'{"alive":true}')
        deadline = time.monotonic() + 60
        while (answer := get("/readyz"))[0] != 200 and time.monotonic() < deadline:
            assert answer[0] == 503 and orjson.loads(answer[1])["waiting_for"], answer  # says why
            time.sleep(0.2)
        assert (answer[0], orjson.loads(answer[1])) == (200, {"ready": True, "waiting_for": []})
        assert get("/table/account-state/")[0] == 404

        asyncio.run(produce_events(settings, accounts=10, contacts_per_account=2, rate=None, duration_s=None, count=300, seed=4))
        worker.wait_drained(timeout_s=60)
        time.sleep(settings.lag_refresh_s + 1)  # one more lag measurement after the drain
        status, body = get("/metrics")
        assert status == 200
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }
        assert samples[("abm_events_in_total", ())] == 300
        assert samples[("abm_events_applied_total", ())] == 300
        # every stored event in the latency histograms; fresh ones within a minute of receipt
        assert samples[("abm_event_pipeline_latency_seconds_count", ())] == 300
        assert samples[("abm_event_pipeline_latency_seconds_bucket", (("le", "60"),))] == 300
        assert samples[("abm_event_latency_seconds_count", ())] == 300
        state = {dict(labels)["what"]: v for (name, labels), v in samples.items() if name == "abm_state"}
        assert 0 < state["account_states_in_memory"] <= 10 and state["changelog_records_to_recover"] == 0
        assert state["directory_contacts"] > 0  # contacts learned from the events
        assert sum(v for (name, _), v in samples.items() if name == "abm_events_valid_total") == 300
        assert {v for (name, _), v in samples.items() if name == "abm_consumer_lag_seconds"} == {0.0}  # nothing waits
        lag = {labels: v for (name, labels), v in samples.items() if name == "abm_consumer_lag"}
        assert len(lag) == len(consumed_topics(settings)) * settings.topic_partitions and sum(lag.values()) == 0
        assert any(name.startswith("faust_") for name, _ in samples)  # Faust's own sensor metrics too
        moves = {labels: v for (name, labels), v in samples.items() if name == "abm_stage_transitions_by_stages_total"}
        assert sum(moves.values()) == samples[("abm_stage_transitions_total", ())] > 0
        assert (("from_stage", "target"), ("to_stage", "awareness")) in moves
    finally:
        assert worker.stop() == 0, worker.log_tail()
