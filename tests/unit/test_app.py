"""How the Faust app is configured where a setting decides correctness, not speed, how it
stops after a failure, and how fetched batches reach its agents."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from streams.app import create_app
from streams.fast_path import Fetched, FetchedBatches
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_table_partitions_have_no_standby_copies(tmp_path):
    # Faust drops standby changelog records fetched while it resumes the flow after a
    # recovery (its changelog queue is cleared on resume); the worker that then takes
    # the partition over restores the accounts of the dropped records from nothing.
    # Without standbys every restore replays the changelog as an active recovery.
    app = create_app(Settings(data_dir=tmp_path))
    assert app.conf.table_standby_replicas == 0


HANGING_SHUTDOWN = """
import asyncio
import streams.app as app_module

app_module.FAILED_SHUTDOWN_DEADLINE_S = 1.0


class HangingApp:
    async def crash(self, reason):  # as a Faust shutdown that has left the group and never ends
        await asyncio.Event().wait()


asyncio.run(app_module.stop_the_worker(HangingApp(), RuntimeError("a checkpoint failed")))
"""


def test_a_shutdown_that_hangs_after_a_failure_is_cut_short_with_exit_status_1():
    """The supervisor restarts a worker only once it exits: a stop after a failed
    checkpoint that hangs must not leave it running and consuming nothing."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", HANGING_SHUTDOWN], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "the shutdown after a failed checkpoint did not finish within 1s; exiting" in done.stderr
    assert time.monotonic() - began < 30  # the deadline, not the test's timeout, ended it


class StreamReading:
    """What FetchedBatches reads of an agent's Faust stream: its channel's topics."""

    def __init__(self, topics: set[str]) -> None:
        self.channel = self
        self.topics = topics

    def __aiter__(self) -> StreamReading:
        return self

    async def __anext__(self) -> None:
        raise StopAsyncIteration


def fetched(offset: int) -> Fetched:
    return Fetched(("raw", 0), SimpleNamespace(topic="raw", partition=0, offset=offset, timestamp=0, key=None, value=b"{}", headers=()), 1)


def test_a_fetch_never_waits_for_an_agent_whose_topics_are_held_back_until_it_takes_a_batch():
    """Delivering to an agent with QUEUED_BATCHES waiting holds its topics back from the
    next fetches instead of waiting: the other agents' messages still come. Taking a batch
    that leaves fewer waiting releases them, and wakes a fetch loop that had nothing left."""

    async def run() -> None:
        batches = FetchedBatches(max_events=10)
        agent = batches(StreamReading({"raw.a", "raw.b"}), events_per_message=1)  # type: ignore[arg-type]
        first = asyncio.ensure_future(anext(agent))
        await asyncio.sleep(0)  # the agent's feed exists once it iterates
        batches.add(batches.feed_for("raw.b"), [fetched(offset) for offset in range(25)])  # returns at once
        assert batches.held_back == {"raw.a", "raw.b"}
        assert [m.offset for m in await first] == list(range(10))
        assert batches.held_back == {"raw.a", "raw.b"} and not batches.released.is_set()  # two wait still
        assert [m.offset for m in await anext(agent)] == list(range(10, 20))
        assert batches.held_back == set() and batches.released.is_set()
        assert [m.offset for m in await anext(agent)] == list(range(20, 25))

    asyncio.run(run())
