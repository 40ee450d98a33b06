"""Per-account state: kept in memory while it changes, written to the Faust table (its
store and changelog) at a checkpoint, never once per event. A state's ClickHouse row is
taken at every checkpoint it changed before; its bytes may wait for a later one (see
streams.checkpoint), which is why the two are tracked apart.

Events held for the watermark leave memory when their state is written: they go to
segments, records of their own in the same table and partition, written before the state
that lists them (processors.scoring). A segment read back (the watermark reached it) is
deleted, by a tombstone, only at the state write after the one that stopped listing it,
and before the state's next record in its partition: the stored state never lists a
deleted segment, whichever records of a checkpoint a crash let through. Until then the
state lists it as released, so that the tombstone of a state restored after a crash is
still written. A write sends new segments first and the states only once the broker
has the segments, and the store takes the records only once the changelog has them: a
segment is written once, and one missing from the changelog would be missing for a
worker that restores the partition from it."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from itertools import islice, takewhile
from typing import Any

from faust.types import TP

from processors.identity import account_partition
from processors.scoring import AccountState, Timing, held_events_of, held_segment_key, is_held_segment_key, json_of, stored_json
from streams.keyed import KeyedRecord, SentBatch, send_batches

StateChange = tuple[int, bytes, bytes | None]  # partition, key, the state's or segment's bytes (None: delete)


class StateTooLarge(RuntimeError):
    """An account's state is larger than one changelog record takes, even compressed."""


class TableChangelog:
    """Writes records to a Faust table's changelog topic in one producer batch per
    partition, and keeps the table store's persisted offset (where a restart resumes
    reading the changelog) once the store holds them, as Faust's ``send_changelog`` does
    for each record.

    Faust's route cost ~50 µs a record on the event loop (a FutureMessage, its buffer,
    sensors, the store's offset written per record); with traffic spread over many
    accounts, a worker wrote about one state for every two events."""

    def __init__(self, table: Any) -> None:
        self._table = table

    async def write(self, partition: int, records: list[KeyedRecord]) -> list[SentBatch]:
        """The partition's records in order; each batch's acknowledgement by the broker
        and how many records it holds."""
        return await send_batches(self._table.app.producer, self._table.changelog_topic.get_topic_name(), partition, records)

    def persisted(self, partition: int, batches: list[SentBatch]) -> None:
        """The store holds the partition's records up to the end of these acknowledged batches."""
        ack, count = batches[-1]
        tp = TP(self._table.changelog_topic.get_topic_name(), partition)
        self._table.data.set_persisted_offset(tp, ack.result().offset + count - 1)


class StoredStates(ABC):
    """What both holders of account states share (AccountStates here, NativeAccountStates
    in native code): the table they are stored in, its store and changelog, written to
    in order; the segments written and not yet in the store; the bounds."""

    def __init__(self, table: Any, changelog: Any, partitions: int, max_cached: int, max_bytes: int) -> None:
        self._table = table
        self._changelog = changelog  # TableChangelog, or what records its calls in tests
        self._partitions = partitions
        self._max_cached = max_cached
        self._max_bytes = max_bytes
        self._unstored: dict[bytes, bytes] = {}  # segments taken to be written, not yet in the store

    @property
    @abstractmethod
    def cached(self) -> int:
        """States in memory."""

    @property
    @abstractmethod
    def changed(self) -> int:
        """Accounts changed since their rows were last taken."""

    @property
    @abstractmethod
    def unwritten(self) -> int:
        """Accounts changed since the last ``take_changes``."""

    @property
    @abstractmethod
    def held(self) -> tuple[int, int]:
        """Events the states in memory hold for the watermark: (in memory, in written
        segments). Those in memory are the ones since the last state write, and those of
        segments read back and not yet due."""

    @abstractmethod
    def take_changes(self) -> list[StateChange]:
        """The unwritten states as they are now, to be written by ``write``."""

    @property
    def over_cache(self) -> bool:
        """More states wait to be written than memory should hold (only written ones may
        leave it): they must be written now."""
        return self.unwritten >= self._max_cached

    def stored_segment(self, account_id: str, number: int) -> bytes:
        """The bytes of one of the account's held segments, as stored."""
        key = held_segment_key(account_id, number)
        raw = self._unstored.get(key)
        if raw is None:
            raw = _get_from_store(self._table, account_partition(account_id, self._partitions), key)
        if raw is None:  # the state lists it: deleted or never stored, its events would be lost
            raise LookupError(f"held segment {number} of account {account_id!r} is not in the store")
        return raw

    async def write(self, changes: list[StateChange]) -> None:
        """To the table's changelog topic and, once the broker acknowledged them, to its
        store; new held segments first, and the states that list them only once the
        segments are acknowledged. A segment is written once: one that only the store got
        (put first, then a kill or a refusal), or a state that reached the changelog
        without its refused segment, left a worker restoring the partition from the
        changelog with a state listing a segment it lacked."""
        for _, key, value in changes:
            if value is not None and len(value) > self._max_bytes:
                raise StateTooLarge(_too_large(key, value, self._max_bytes))
        is_new_segment = [value is not None and is_held_segment_key(key) for _, key, value in changes]
        sent: dict[int, list[SentBatch]] = {}
        for segments_now in (True, False):
            await self._send_acknowledged([c for c, segment in zip(changes, is_new_segment) if segment is segments_now], sent)
        for partition, key, value in changes:
            _put_in_store(self._table, partition, key, value)
            self._unstored.pop(key, None)
        for partition, batches in sent.items():
            self._changelog.persisted(partition, batches)

    async def _send_acknowledged(self, changes: list[StateChange], sent: dict[int, list[SentBatch]]) -> None:
        """Sends the records to the changelog and waits for the broker: a refusal raises."""
        by_partition: dict[int, list[KeyedRecord]] = {}
        for partition, key, value in changes:
            by_partition.setdefault(partition, []).append((key, value))
        batches = {partition: await self._changelog.write(partition, records) for partition, records in by_partition.items()}
        await asyncio.gather(*(ack for partition_batches in batches.values() for ack, _ in partition_batches))
        for partition, partition_batches in batches.items():
            sent.setdefault(partition, []).extend(partition_batches)

    def forget(self) -> None:
        """Drop the in-memory copies: after a revocation the table is the truth again."""
        self._unstored.clear()


class AccountStates(StoredStates):
    """The states as processors.scoring.AccountState objects (the interpreted fold)."""

    def __init__(self, table: Any, changelog: Any, partitions: int, max_cached: int, max_bytes: int) -> None:
        super().__init__(table, changelog, partitions, max_cached, max_bytes)
        self._cache: dict[str, AccountState] = {}
        self._changed: set[str] = set()  # since their rows were last taken
        self._unwritten: set[str] = set()  # rows taken since, bytes not yet
        self._releasing: dict[str, list[int]] = {}  # released segments the states as last written list: to be deleted next

    @property
    def cached(self) -> int:
        return len(self._cache)

    @property
    def held(self) -> tuple[int, int]:
        in_memory = sum(len(state.held) for state in self._cache.values())
        return in_memory, sum(state.held_count for state in self._cache.values()) - in_memory

    def stored_held(self, account_id: str, number: int) -> list[dict[str, Any]]:
        """The events of one of the account's held segments (processors.scoring.StoredHeld)."""
        return held_events_of(self.stored_segment(account_id, number))

    def state_for(self, account_id: str) -> AccountState:
        """The account's state, marked as changed (it is about to be)."""
        state = self._cache.get(account_id)
        if state is None:
            # from its partition's database: Faust's store, not knowing the partition
            # outside a stream event, asked all of them for an account it had not seen
            raw = _get_from_store(self._table, account_partition(account_id, self._partitions), account_id.encode())
            state = AccountState.from_bytes(raw) if raw is not None else AccountState(account_id)
            self._cache[account_id] = state
        self._changed.add(account_id)
        return state

    @property
    def changed(self) -> int:
        """Accounts changed since the last ``take_changed``."""
        return len(self._changed)

    @property
    def unwritten(self) -> int:
        """Accounts changed since the last ``take_changes`` (one changed again since its
        row was taken is in both sets, and counts once)."""
        return len(self._unwritten | self._changed | self._releasing.keys())

    def timings_in(self, partition: int) -> Iterator[Timing]:
        """The timing (``AccountState.timing``) of every state of the partition as it
        stands now (from memory where it is there, else from the store), none of them
        kept: for the fall-back schedule's scans over all accounts."""
        in_memory = [s.timing() for a, s in self._cache.items() if account_partition(a, self._partitions) == partition]
        yield from in_memory
        for key, raw in _stored_in(self._table, partition, self._partitions):
            if key.decode() not in self._cache:
                yield AccountState.timing_of(raw)

    def take_changed(self) -> list[AccountState]:
        """The states changed since the last call (for their rows); they stay unwritten
        until ``take_changes``."""
        changed = [self._cache[account_id] for account_id in self._changed]
        self._unwritten |= self._changed
        self._changed = set()
        return changed

    def take_changes(self) -> list[StateChange]:
        """The unwritten states as they are now, to be written by ``write``.

        Called when the previous changes are written, so every other state is in the
        store and may leave memory; unwritten ones stay until their bytes are written.
        Held events in memory go to new segments, written first; the segments released by
        states written last time are deleted, before those states are written again
        without them.
        """
        unwritten = self._unwritten | self._changed | self._releasing.keys()
        self._evict_written(unwritten)
        changes: list[StateChange] = []
        for account_id in unwritten:
            state = self._cache[account_id]
            partition = account_partition(account_id, self._partitions)
            deleted = self._releasing.get(account_id, ())
            changes += [(partition, held_segment_key(account_id, number), None) for number in deleted]
            state.released_segments = [number for number in state.released_segments if number not in deleted]
            for number, segment in state.take_held_segments():
                key = held_segment_key(account_id, number)
                self._unstored[key] = segment
                changes.append((partition, key, segment))
            changes.append((partition, account_id.encode(), state.to_bytes()))
        self._releasing = {a: list(self._cache[a].released_segments) for a in unwritten if self._cache[a].released_segments}
        self._unwritten = set()
        return changes

    def forget(self) -> None:
        super().forget()
        self._cache.clear()
        self._changed.clear()
        self._unwritten.clear()
        self._releasing.clear()

    def _evict_written(self, unwritten: set[str]) -> None:
        # Oldest-inserted first.
        excess = len(self._cache) - self._max_cached
        if excess > 0:
            written = (a for a in self._cache if a not in unwritten)
            for account_id in list(islice(written, excess)):
                del self._cache[account_id]


def _too_large(key: bytes, value: bytes, max_bytes: int) -> str:
    # Kafka would only say MessageSizeTooLarge: say whose state, and what fills it.
    if is_held_segment_key(key):  # one event over the limit alone (events are at most 1 MiB)
        return f"held segment {key!r} is {len(value):,} bytes, over the {max_bytes:,} a changelog record takes"
    state = AccountState.from_bytes(value)
    return (
        f"the state of account {key.decode()!r} is {len(value):,} bytes, over the {max_bytes:,} a changelog record "
        f"takes: {len(state.recent_ids):,} event ids, {len(state.contacts):,} contacts and "
        f"{len(state.capped):,} capped-day entries"
    )


def _stored_in(table: Any, partition: int, partitions: int) -> Iterator[tuple[bytes, bytes]]:
    store = table.data
    db_for_partition = getattr(store, "_db_for_partition", None)
    if db_for_partition is None:  # one mapping for all partitions (memory store)
        return ((key, raw) for key, raw in store.items() if not is_held_segment_key(key) and account_partition(key.decode(), partitions) == partition)
    # _visible_items skips Faust's offset key, and goes in key order: segments come last
    return takewhile(lambda item: not is_held_segment_key(item[0]), store._visible_items(db_for_partition(partition)))


def _put_in_store(table: Any, partition: int, key: bytes, value: bytes | None) -> None:
    # Faust's RocksDB store picks the partition's database from the current stream
    # event; a checkpoint writes for many partitions at once, so it names the partition.
    # Segments stay out of its key index (an LRU of the last 1,000 keys): read by partition.
    store = table.data
    db_for_partition = getattr(store, "_db_for_partition", None)
    if db_for_partition is None:
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value
    elif value is None:
        db_for_partition(partition).delete(key)
    else:
        db_for_partition(partition).put(key, value)
        if not is_held_segment_key(key):
            store._key_index[key] = partition


def _get_from_store(table: Any, partition: int, key: bytes) -> bytes | None:
    store = table.data
    db_for_partition = getattr(store, "_db_for_partition", None)
    if db_for_partition is None:
        raw: bytes | None = store.get(key)
        return raw
    raw = db_for_partition(partition).get(key)
    return raw


class NativeAccountStates(StoredStates):
    """The states held by native code (``abm_native.Fold``, with the fall-back schedule:
    streams.folding), read from the store through this object and written by it. The
    states' bytes are AccountState.to_bytes's (tests/unit/test_native_fold.py)."""

    def __init__(self, table: Any, changelog: Any, partitions: int, max_cached: int, max_bytes: int, fold: Callable[..., Any]) -> None:
        """``fold(load, stored_held, stored_timings)`` makes the ``abm_native.Fold``."""
        super().__init__(table, changelog, partitions, max_cached, max_bytes)
        self.native = fold(self._load, self._segment_json, self._stored_timings)

    def _load(self, account_id: str) -> bytes | None:
        raw = _get_from_store(self._table, account_partition(account_id, self._partitions), account_id.encode())
        return None if raw is None else json_of(raw)

    def _segment_json(self, account_id: str, number: int) -> bytes:
        return json_of(self.stored_segment(account_id, number))

    def _stored_timings(self, partition: int) -> Iterator[Timing]:
        return (AccountState.timing_of(raw) for _, raw in _stored_in(self._table, partition, self._partitions))

    @property
    def cached(self) -> int:
        return int(self.native.cached)

    @property
    def held(self) -> tuple[int, int]:
        in_memory, in_segments = self.native.held()
        return int(in_memory), int(in_segments)

    @property
    def changed(self) -> int:
        return int(self.native.changed)

    @property
    def unwritten(self) -> int:
        return int(self.native.unwritten)

    def take_changes(self) -> list[StateChange]:
        """As AccountStates.take_changes."""
        changes: list[StateChange] = []
        for partition, key, encoded in self.native.take_changes(self._max_cached):
            value = None if encoded is None else stored_json(encoded)  # native bytes are exact-size
            if value is not None and is_held_segment_key(key):
                self._unstored[key] = value
            changes.append((partition, key, value))
        return changes

    def forget(self) -> None:
        super().forget()
        self.native.forget()
