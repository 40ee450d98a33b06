"""Per-account state: kept in memory while it changes, written to the Faust table (its
store and changelog) at a checkpoint, never once per event. A state's ClickHouse row is
taken at every checkpoint it changed before; its bytes may wait for a later one (see
streams.checkpoint), which is why the two are tracked apart."""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from itertools import islice
from typing import Any

from processors.identity import account_partition
from processors.scoring import AccountState, Timing

StateChange = tuple[int, bytes, bytes]  # partition, key, the state's bytes


class StateTooLarge(RuntimeError):
    """An account's state is larger than one changelog record takes, even compressed."""


class AccountStates:
    def __init__(self, table: Any, partitions: int, max_cached: int, max_bytes: int) -> None:
        self._table = table
        self._partitions = partitions
        self._max_cached = max_cached
        self._max_bytes = max_bytes
        self._cache: dict[str, AccountState] = {}
        self._changed: set[str] = set()  # since their rows were last taken
        self._unwritten: set[str] = set()  # rows taken since, bytes not yet

    @property
    def cached(self) -> int:
        return len(self._cache)

    @property
    def held_in_memory(self) -> int:
        """Events the states in memory hold for the watermark (their memory grows with
        rate x allowed lateness; states out of memory are not counted)."""
        return sum(len(state.held) for state in self._cache.values())

    def state_for(self, account_id: str) -> AccountState:
        """The account's state, marked as changed (it is about to be)."""
        state = self._cache.get(account_id)
        if state is None:
            raw = self._table.data.get(account_id.encode())
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
        return len(self._unwritten | self._changed)

    @property
    def over_cache(self) -> bool:
        """More states wait to be written than memory should hold (only written ones may
        leave it): they must be written now."""
        return self.unwritten >= self._max_cached

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
        """
        self._evict_written()
        unwritten = self._unwritten | self._changed
        changes = [
            (account_partition(account_id, self._partitions), account_id.encode(), self._cache[account_id].to_bytes())
            for account_id in unwritten
        ]
        self._unwritten = set()
        return changes

    def write(self, changes: list[StateChange]) -> list[Awaitable[Any]]:
        """To the table's store and changelog topic; returns each changelog record's
        acknowledgement by the broker (Faust's producer buffer sends them on its own)."""
        for _, key, value in changes:
            if len(value) > self._max_bytes:
                raise StateTooLarge(_too_large(key, value, self._max_bytes))
        sent = []
        for partition, key, value in changes:
            _put_in_store(self._table, partition, key, value)
            sent.append(self._table.send_changelog(partition, key, value))
        return sent

    def forget(self) -> None:
        """Drop the in-memory copies: after a revocation the table is the truth again."""
        self._cache.clear()
        self._changed.clear()
        self._unwritten.clear()

    def _evict_written(self) -> None:
        # Oldest-inserted first.
        excess = len(self._cache) - self._max_cached
        if excess > 0:
            written = (a for a in self._cache if a not in self._changed and a not in self._unwritten)
            for account_id in list(islice(written, excess)):
                del self._cache[account_id]


def _too_large(key: bytes, value: bytes, max_bytes: int) -> str:
    # Kafka would only say MessageSizeTooLarge: say whose state, and what fills it.
    state = AccountState.from_bytes(value)
    return (
        f"the state of account {key.decode()!r} is {len(value):,} bytes, over the {max_bytes:,} a changelog record "
        f"takes: {len(state.recent_ids):,} event ids, {len(state.contacts):,} contacts, "
        f"{len(state.capped):,} capped-day entries, {len(state.held):,} held events"
    )


def _stored_in(table: Any, partition: int, partitions: int) -> Iterator[tuple[bytes, bytes]]:
    store = table.data
    db_for_partition = getattr(store, "_db_for_partition", None)
    if db_for_partition is None:  # one mapping for all partitions (memory store)
        return ((key, raw) for key, raw in store.items() if account_partition(key.decode(), partitions) == partition)
    return store._visible_items(db_for_partition(partition))  # skips Faust's offset key


def _put_in_store(table: Any, partition: int, key: bytes, value: bytes) -> None:
    # Faust's RocksDB store picks the partition's database from the current stream
    # event; a checkpoint writes for many partitions at once, so it names the partition.
    store = table.data
    db_for_partition = getattr(store, "_db_for_partition", None)
    if db_for_partition is None:
        store[key] = value
    else:
        db_for_partition(partition).put(key, value)
        store._key_index[key] = partition
