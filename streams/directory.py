"""The account directory feed: every worker reads the compacted `accounts` and `contacts`
topics in full (no consumer group, no commits: the compacted topic is the truth) and
keeps its in-memory directory (processors.identity) in step with them.

Ingest waits for ``ready`` (caught up with the topics' ends at start) before its first
batch, so a restart resolves exactly as before. Domains an account record maps for the
first time, and contacts it learns, are handed to ``on_keys_learned`` as waiting keys
(processors.identity) to re-resolve the events waiting on them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from processors.identity import Directory, waiting_keys
from processors.validation import Rejection, validate_account, validate_contact
from streams.kafka_admin import topic_partitions

log = logging.getLogger(__name__)


class DirectoryFeed:
    def __init__(
        self,
        bootstrap: str,
        accounts_topic: str,
        contacts_topic: str,
        directory: Directory,
        on_keys_learned: Callable[[set[str]], Awaitable[None]],
        on_invalid: Callable[[ConsumerRecord, Rejection], Awaitable[None]],
    ) -> None:
        self._bootstrap = bootstrap
        self._accounts_topic = accounts_topic
        self._contacts_topic = contacts_topic
        self.directory = directory
        self._on_keys_learned = on_keys_learned
        self._on_invalid = on_invalid
        self.ready = asyncio.Event()
        self.records_read = 0

    async def run(self) -> None:
        """Reads both topics from the beginning, forever; sets ``ready`` once caught up."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        await admin.start()
        try:
            partitions = await topic_partitions(admin, [self._accounts_topic, self._contacts_topic])
        finally:
            await admin.close()
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            caught_up = {tp for tp, end in ends.items() if end == 0}
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for tp, records in batches.items():
                    await self._apply(records)
                for tp in partitions:
                    if tp not in caught_up and await consumer.position(tp) >= ends[tp]:
                        caught_up.add(tp)
                if not self.ready.is_set() and len(caught_up) == len(partitions):
                    log.info("account directory ready: %d records read", self.records_read)
                    self.ready.set()
        finally:
            await consumer.stop()

    async def _apply(self, records: list[ConsumerRecord]) -> None:
        learned: set[str] = set()
        for record in records:
            self.records_read += 1
            if record.topic == self._accounts_topic:
                learned |= await self._apply_account(record)
            else:
                learned |= await self._apply_contact(record)
        if learned:
            await self._on_keys_learned(learned)

    async def _apply_account(self, record: ConsumerRecord) -> set[str]:
        if record.value is None:  # tombstone: the account is gone
            if record.key is not None:
                self.directory.forget_account(record.key.decode(errors="replace"))
            return set()
        account = validate_account(record.value)
        if isinstance(account, Rejection):
            await self._on_invalid(record, account)
            return set()
        return set(self.directory.learn_account(account["account_id"], account["domains"]))

    async def _apply_contact(self, record: ConsumerRecord) -> set[str]:
        if record.value is None:
            return set()
        contact = validate_contact(record.value)
        if isinstance(contact, Rejection):
            await self._on_invalid(record, contact)
            return set()
        contact_id, email = contact.get("contact_id"), contact.get("email")
        if not self.directory.learn_contact(contact_id, email, contact["account_id"], contact.get("title")):
            return set()
        return set(waiting_keys(contact_id, email))


def contact_record(contact_id: str | None, email: str | None, account_id: str) -> tuple[bytes, bytes]:
    """Key and value of a learned contact, as published to the contacts topic."""
    key = contact_id or f"email:{email}"
    value: dict[str, Any] = {"contact_id": contact_id, "email": email, "account_id": account_id, "learned": True}
    return key.encode(), orjson.dumps({k: v for k, v in value.items() if v is not None})
