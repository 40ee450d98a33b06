"""How AccountStates finds a state it does not hold in memory: in its partition's
database of the table's RocksDB store (Faust's store, outside a stream event, asked every
partition's database for an account it had not seen, as every new account is)."""

from __future__ import annotations

from types import SimpleNamespace

from processors.identity import account_partition
from processors.scoring import AccountState
from streams.state import AccountStates

PARTITIONS = 8


class PartitionDatabase(dict):
    """A partition's database that records the keys asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[bytes] = []

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        self.asked.append(key)
        return super().get(key, default)


class PartitionedStore:
    """What AccountStates reads of Faust's RocksDB store: one database per partition, and
    no store-wide look-up."""

    def __init__(self) -> None:
        self.databases = {partition: PartitionDatabase() for partition in range(PARTITIONS)}

    def _db_for_partition(self, partition: int) -> PartitionDatabase:
        return self.databases[partition]


def test_a_state_not_in_memory_is_read_from_its_partitions_database_only() -> None:
    store = PartitionedStore()
    known = AccountState("acct-known", events_total=7)
    store.databases[account_partition("acct-known", PARTITIONS)][b"acct-known"] = known.to_bytes()
    states = AccountStates(SimpleNamespace(data=store), changelog=None, partitions=PARTITIONS, max_cached=10, max_bytes=1 << 20)

    assert states.state_for("acct-known").events_total == 7
    assert states.state_for("acct-new").events_total == 0  # a new account: a fresh state
    states.state_for("acct-known")  # in memory now

    asked = {partition: database.asked for partition, database in store.databases.items() if database.asked}
    assert asked == {
        account_partition("acct-known", PARTITIONS): [b"acct-known"],
        account_partition("acct-new", PARTITIONS): [b"acct-new"],
    }
