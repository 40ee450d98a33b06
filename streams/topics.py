"""The pipeline's topics: which the worker consumes, which it creates, and how."""

from __future__ import annotations

import logging

from aiokafka.errors import KafkaError

from schemas.events import (
    MAX_EVENT_BYTES, TOPIC_ACCOUNTS, TOPIC_BY_ACCOUNT, TOPIC_CONTACTS, TOPIC_DEAD_LETTERS, TOPIC_STAGE_TRANSITIONS, TOPIC_UNRESOLVED, source_topics,
)
from streams.kafka_admin import MAX_MESSAGE_BYTES, ensure_topics, raise_message_limits
from streams.settings import Settings

REFERENCE_TOPICS = (TOPIC_ACCOUNTS, TOPIC_CONTACTS)
OUTPUT_TOPICS = (TOPIC_BY_ACCOUNT, TOPIC_DEAD_LETTERS, TOPIC_UNRESOLVED, TOPIC_STAGE_TRANSITIONS)
# A record the broker refuses stops the worker (nothing may be committed past it), so the
# topics it writes take whatever it can send: one event of up to MAX_EVENT_BYTES with what
# routing adds, or a dead letter's capped parts (DEAD_LETTER_PART_BYTES each). Kafka's
# default is 1 MiB; the worker's producer sends requests of up to this size.
OUTPUT_MESSAGE_MAX_BYTES = 8 * 1024 * 1024
OUTPUT_TOPIC_CONFIGS = {MAX_MESSAGE_BYTES: str(OUTPUT_MESSAGE_MAX_BYTES)}  # of the topics it writes, the changelog too
# the largest account state (its bytes) a changelog record takes, with room for its key and framing
STATE_MAX_BYTES = OUTPUT_MESSAGE_MAX_BYTES - 64 * 1024
DEAD_LETTER_PART_BYTES = 2 * MAX_EVENT_BYTES  # of a dead letter's key, and of its value
STATE_TABLE = "account-state"

log = logging.getLogger(__name__)


def state_changelog_topic(settings: Settings) -> str:
    """Where Faust writes the account-state table's changelog."""
    return f"{settings.app_id}-{STATE_TABLE}-changelog"


def consumed_topics(settings: Settings) -> list[str]:
    """The topics the worker's consumer group reads (and commits): what lag is measured on."""
    return [settings.topic(name) for name in (*source_topics(), TOPIC_BY_ACCOUNT)]


def pipeline_topics(settings: Settings) -> list[str]:
    names = [TOPIC_DEAD_LETTERS, TOPIC_UNRESOLVED, TOPIC_STAGE_TRANSITIONS, *REFERENCE_TOPICS]
    return [*consumed_topics(settings), *(settings.topic(name) for name in names)]


async def prepare_topics(settings: Settings) -> None:
    """Creates the pipeline's topics that are missing: reference topics compacted, output
    topics taking any record the worker sends. Topics that exist keep their configs,
    except a message limit too small for what the worker writes (topics created by an
    earlier version, or by hand), which is raised."""
    configs = {settings.topic(name): {"cleanup.policy": "compact"} for name in REFERENCE_TOPICS}
    configs |= {settings.topic(name): OUTPUT_TOPIC_CONFIGS for name in OUTPUT_TOPICS}
    await ensure_topics(
        settings.kafka_bootstrap,
        pipeline_topics(settings),
        settings.topic_partitions,
        settings.topic_replication,
        configs=configs,
    )
    written = [*(settings.topic(name) for name in OUTPUT_TOPICS), state_changelog_topic(settings)]
    try:
        raised = await raise_message_limits(settings.kafka_bootstrap, written, OUTPUT_MESSAGE_MAX_BYTES)
    except KafkaError as exc:  # e.g. no right to alter topic configs: start as before
        log.error("could not raise %s of the topics the worker writes to %d (%s): a larger record will stop it", MAX_MESSAGE_BYTES, OUTPUT_MESSAGE_MAX_BYTES, exc)
        return
    for topic in raised:
        log.warning("raised %s of topic %s to %d: the worker writes records up to that size", MAX_MESSAGE_BYTES, topic, OUTPUT_MESSAGE_MAX_BYTES)
