"""`abm worker`: prepares topics and the store, then runs the Faust worker."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import faust

from schemas.events import TOPIC_ACCOUNTS, TOPIC_BY_ACCOUNT, TOPIC_CONTACTS, TOPIC_DEAD_LETTERS, TOPIC_UNRESOLVED, source_topics
from streams.app import Pipeline, build_pipeline
from streams.kafka_admin import ensure_topics
from streams.settings import Settings
from streams.store import open_store

log = logging.getLogger(__name__)

FINAL_CHECKPOINT_TIMEOUT_S = 60.0
REFERENCE_TOPICS = (TOPIC_ACCOUNTS, TOPIC_CONTACTS)


def consumed_topics(settings: Settings) -> list[str]:
    """The topics the worker's consumer group reads (and commits): what lag is measured on."""
    return [settings.topic(name) for name in (*source_topics(), TOPIC_BY_ACCOUNT)]


def pipeline_topics(settings: Settings) -> list[str]:
    names = [TOPIC_DEAD_LETTERS, TOPIC_UNRESOLVED, *REFERENCE_TOPICS]
    return [*consumed_topics(settings), *(settings.topic(name) for name in names)]


async def prepare_topics(settings: Settings) -> None:
    """Creates the pipeline's topics that are missing; reference topics are compacted."""
    compacted = {settings.topic(name): {"cleanup.policy": "compact"} for name in REFERENCE_TOPICS}
    await ensure_topics(
        settings.kafka_bootstrap,
        pipeline_topics(settings),
        settings.topic_partitions,
        settings.topic_replication,
        configs=compacted,
    )


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


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    asyncio.run(prepare_topics(settings))
    client = open_store(settings)
    pipeline = build_pipeline(settings, client)
    PulseWorker(pipeline, loglevel=loglevel, quiet=True).execute_from_commandline()
