"""The digests of what unresolved events wait on: a set's answers in 8 bytes a key."""

from __future__ import annotations

import tracemalloc

import clickhouse_connect
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.waiting import WaitingKeys, key_digest
from streams.unresolved import WAITING_DIGEST_SQL

KEYS = st.sampled_from([f"domain-{n}.example" for n in range(40)] + [f"contact:id:c{n}" for n in range(40)])
OPERATIONS = st.lists(st.tuples(st.sampled_from(["add", "discard"]), st.lists(KEYS, max_size=12)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(initial=st.lists(KEYS, max_size=30), operations=OPERATIONS, min_merge=st.integers(1, 20))
def test_waiting_keys_answer_as_a_set_of_the_keys_would(initial, operations, min_merge):
    expected = set(initial)
    # given unordered and repeated: the constructor sorts them
    waiting = WaitingKeys([key_digest(key) for key in initial], min_merge=min_merge)
    for operation, keys in operations:
        if operation == "add":
            waiting.add(keys)
            expected.update(keys)
        else:
            waiting.discard(keys)
            expected.difference_update(keys)
        assert len(waiting) == len(expected)
    probe = {f"domain-{n}.example" for n in range(40)} | {"contact:id:c1", "contact:id:c39", "unknown.example"}
    assert waiting.among(probe) == expected & probe


def test_the_store_digests_a_key_as_the_worker_does(tmp_path):
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path}")
    keys = ["acme.com", "contact:id:c1", "contact:email:bob@gmail.com", "ünïcode.de", "x" * 300]
    rows = client.query(
        f"SELECT waiting_on, {WAITING_DIGEST_SQL} FROM (SELECT arrayJoin({{keys:Array(String)}}) AS waiting_on)",
        parameters={"keys": keys},
    ).result_rows
    assert {key: digest for key, digest in rows} == {key: key_digest(key) for key in keys}


def test_a_million_waiting_keys_take_eight_bytes_each():
    digests = sorted({key_digest(f"contact:email:person{n}@mail{n % 997}.example") for n in range(1_000_000)})
    tracemalloc.start()
    waiting = WaitingKeys(digests)
    waiting.add(f"late{n}.example" for n in range(10_000))
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(waiting) == 1_010_000
    assert held < 9 * 1_000_000 + 1_000_000, held  # the sorted array, and the set of those added since
