"""Keyed records batched by partition (streams.keyed): the partition of a key is the one
Kafka's default partitioner gives it, and batches hold every record once, in order."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from hypothesis import given, strategies as st

from streams.keyed import by_partition, default_partition, filled_batches

# org.apache.kafka.common.utils.UtilsTest.testMurmur2: the Java client's hash of each key
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_the_partition_of_a_key_is_the_java_clients():
    for key, java_hash in JAVA_MURMUR2.items():
        for partitions in (1, 3, 8, 50):
            assert default_partition(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions, (key, partitions)


@given(st.binary(max_size=64), st.integers(1, 64))
def test_the_partition_of_a_key_is_aiokafkas_default_partitioners(key, partitions):
    everyone = list(range(partitions))
    assert default_partition(key, partitions) == DefaultPartitioner()(key, everyone, everyone)


def read_back(batches) -> list[tuple[bytes, bytes]]:
    records = []
    for batch in batches:
        memory = MemoryRecords(bytes(batch._build()))
        while memory.has_next():
            records += [(r.key, r.value) for r in memory.next_batch()]
    return records


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=300)), max_size=60), st.integers(1, 8))
def test_every_record_once_in_its_partition_in_order(records, partitions):
    grouped = by_partition(records, partitions)
    assert sorted(r for rs in grouped.values() for r in rs) == sorted(records)
    for partition, keyed in grouped.items():
        assert keyed == [r for r in records if default_partition(r[0], partitions) == partition]
        batches = list(filled_batches(lambda: BatchBuilder(1024, 0), keyed))
        assert read_back(batches) == keyed
        assert all(batch.record_count() for batch in batches)


def test_records_over_a_batch_take_more_batches_and_a_large_one_its_own():
    records = [(b"k%d" % i, b"v" * 100) for i in range(40)] + [(b"big", b"x" * 5000), (b"after", b"y")]
    batches = list(filled_batches(lambda: BatchBuilder(1024, 0), records))
    assert read_back(batches) == records
    assert len(batches) >= 5
    assert [b.record_count() for b in batches][-2:] == [1, 1]  # the large record alone, then the last
