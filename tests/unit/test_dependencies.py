"""streams.dependencies: waiting for the broker and the store at start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from aiokafka.errors import KafkaConnectionError
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from deploy.local.kafka import free_port
from streams.dependencies import RETRY_EVERY_S, Unreachable, when_reachable


class Clock:
    """Time that passes only when slept through."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, error: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "connected"

    return calls, attempt


@pytest.mark.parametrize("error", [KafkaConnectionError("Unable to bootstrap"), OperationalError("Connection refused")])
def test_a_dependency_that_answers_within_the_wait_is_used(error: Exception) -> None:
    clock = Clock()
    calls, attempt = failing(3, error)
    assert when_reachable("Kafka", attempt, wait_s=10, sleep=clock.sleep, clock=lambda: clock.now) == "connected"
    assert len(calls) == 4 and clock.sleeps == [RETRY_EVERY_S] * 3


def test_one_that_never_answers_is_named_with_its_last_failure_once_the_wait_is_over() -> None:
    clock = Clock()
    calls, attempt = failing(1_000, OperationalError("HTTPConnectionPool: Connection refused\nmore detail"))
    with pytest.raises(Unreachable) as raised:
        when_reachable("ClickHouse at http://db:8123/abm (CLICKHOUSE_URL)", attempt, wait_s=5, sleep=clock.sleep, clock=lambda: clock.now)
    assert str(raised.value) == "ClickHouse at http://db:8123/abm (CLICKHOUSE_URL) unreachable for 5 s: HTTPConnectionPool: Connection refused"
    assert len(calls) == 6 and clock.now == 5  # tried at 0, 1, ..., 5 s: never past the wait


@pytest.mark.parametrize(
    ("error", "wait_s", "raised"),
    [
        (KafkaConnectionError("down"), 0, Unreachable),  # no wait: one try
        (DatabaseError("Code: 62. Syntax error"), 10, DatabaseError),  # not cured by waiting
    ],
)
def test_tried_once_without_a_wait_or_when_waiting_cannot_help(error: Exception, wait_s: float, raised: type[Exception]) -> None:
    clock = Clock()
    calls, attempt = failing(1, error)
    with pytest.raises(raised):
        when_reachable("ClickHouse", attempt, wait_s=wait_s, sleep=clock.sleep, clock=lambda: clock.now)
    assert len(calls) == 1 and clock.sleeps == []


def abm(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ABM_") and k != "CLICKHOUSE_URL"}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**clean, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["lag"], "Kafka at 127.0.0.1:{port} (ABM_KAFKA_BOOTSTRAP) unreachable: KafkaConnectionError"),
        (["sql", "SELECT 1"], "ClickHouse at http://127.0.0.1:{port}/default (CLICKHOUSE_URL) unreachable: "),
        (["migrate"], "ClickHouse at http://127.0.0.1:{port}/default (CLICKHOUSE_URL) unreachable: "),
        (["simulate", "--count", "10"], "Kafka at 127.0.0.1:{port} (ABM_KAFKA_BOOTSTRAP) unreachable: KafkaConnectionError"),
    ],
)
def test_a_command_that_cannot_reach_the_broker_or_the_store_says_which_in_one_line(args: list[str], named: str) -> None:
    port = free_port()  # nothing listens there
    password = "not-to-be-printed"
    done = abm(args, {"ABM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "CLICKHOUSE_URL": f"http://abm:{password}@127.0.0.1:{port}/default"})
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"Error: {named.format(port=port)}" in done.stderr, output
    assert "Traceback" not in output and password not in output
