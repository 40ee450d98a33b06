"""`abm worker`: prepares topics and the store, then runs the Faust worker."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import signal
from typing import Any

import faust

from streams.app import Pipeline, build_pipeline, exit_after_failure
from streams.logs import logging_config
from streams.settings import Settings
from streams.clickhouse_http import serves_front, start_front
from streams.dependencies import kafka_named, store_named, when_reachable
from streams.store import open_store
from streams.topics import prepare_topics

log = logging.getLogger(__name__)

FINAL_CHECKPOINT_TIMEOUT_S = 60.0
GC_YOUNG_THRESHOLD = 200_000  # net new container objects between young collections (Python's default: 700)
HEAP_TRIM_INTERVAL_S = 2.0


class PulseWorker(faust.Worker):
    """Commits the work in flight before Faust starts stopping the consumer."""

    def __init__(self, pipeline: Pipeline, **kwargs: Any) -> None:
        super().__init__(pipeline.app, **kwargs)
        self._pipeline = pipeline

    async def _stop_on_signal(self, sig: signal.Signals) -> None:
        checkpoint = self._pipeline.checkpoint
        try:
            async with asyncio.timeout(FINAL_CHECKPOINT_TIMEOUT_S):
                async with checkpoint.lock:
                    await checkpoint.close()
        except Exception:  # the uncommitted work is redelivered on the next start
            log.exception("final checkpoint failed")
        await super()._stop_on_signal(sig)


def trim_heap_periodically(app: faust.App) -> None:
    """glibc keeps the pages of freed batches (events, rows, states) mapped; handing them
    back to the OS every few seconds kept the RSS ~20 % lower holding 300k accounts.
    Nothing to do without glibc."""
    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return

    @app.timer(HEAP_TRIM_INTERVAL_S)
    async def trim_heap() -> None:
        await asyncio.to_thread(malloc_trim, 0)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level of its table dir
    wait_s = settings.startup_wait_s
    when_reachable(kafka_named(settings), lambda: asyncio.run(prepare_topics(settings)), wait_s)
    client = when_reachable(store_named(settings), lambda: open_store(settings), wait_s)
    pipeline = build_pipeline(settings, client)
    if serves_front(settings):

        @pipeline.app.task
        async def serve_sql() -> None:  # the runner keeps serving after this returns
            try:
                await start_front(settings)
            except OSError:
                log.exception("the read-only SQL interface could not start; the worker goes on without it")

    trim_heap_periodically(pipeline.app)
    # The agents allocate and drop millions of small objects per second; with Python's
    # default thresholds the collector, not the work, took most of the time (repeated
    # passes over the events buffered until a checkpoint). Start-up objects are frozen.
    # A young collection walks every young object still alive, and here most are (batches
    # in flight, rows until their insert, states until written): at 200,000 rather than
    # 50,000 the collector took 8.0 instead of 17.5 s of a bench run that streams a
    # million accounts in, at the same memory (the cycles that held rows are gone).
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
    try:
        PulseWorker(
            pipeline, loglevel=loglevel, quiet=True, logging_config=logging_config(settings.log_format, loglevel)
        ).execute_from_commandline()
    finally:
        if pipeline.checkpoint.failure is not None:
            exit_after_failure()
