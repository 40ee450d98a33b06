"""The pipeline's topics: which the worker consumes, which it creates, and how."""

from __future__ import annotations

from schemas.events import (
    TOPIC_ACCOUNTS, TOPIC_BY_ACCOUNT, TOPIC_CONTACTS, TOPIC_DEAD_LETTERS, TOPIC_STAGE_TRANSITIONS, TOPIC_UNRESOLVED, source_topics,
)
from streams.kafka_admin import ensure_topics
from streams.settings import Settings

REFERENCE_TOPICS = (TOPIC_ACCOUNTS, TOPIC_CONTACTS)


def consumed_topics(settings: Settings) -> list[str]:
    """The topics the worker's consumer group reads (and commits): what lag is measured on."""
    return [settings.topic(name) for name in (*source_topics(), TOPIC_BY_ACCOUNT)]


def pipeline_topics(settings: Settings) -> list[str]:
    names = [TOPIC_DEAD_LETTERS, TOPIC_UNRESOLVED, TOPIC_STAGE_TRANSITIONS, *REFERENCE_TOPICS]
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
