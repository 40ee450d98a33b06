"""How the Faust app is configured where a setting decides correctness, not speed, and how it stops after a failure."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from streams.app import create_app
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
