"""The checkpoint's protocol: what one checkpoint takes, the order it makes it durable in,
and that the agents go on meanwhile. The ClickHouse side is the real embedded engine;
Kafka's side is a recorder of the calls the checkpoint makes (the kill -9, outage and
rebalance tests in tests/integration run the same protocol against the real broker)."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from processors.accounts import settle
from processors.dedup import RecentIds
from processors.scoring import AccountState, as_held, held_events_of
from streams.rules import DEFAULT_RULES, load_rules
from streams.checkpoint import Checkpoint, CheckpointFailed
from streams.offsets import OffsetGuard
from streams.sink import ClickHouseSink
from streams.state import AccountStates, StateTooLarge
from streams.topics import STATE_MAX_BYTES

TP = ("events.by-account", 0)
RAW = ("email.opens", 3)


class KafkaSide:
    """The producer, consumer and table changelog as the checkpoint sees them, recording
    each call in one journal; the producer's flush waits until ``flushes`` is set, and
    the broker acknowledges records (sent ones and changelog ones) at once unless
    ``acks`` is cleared, and refuses them while ``refusal`` is set."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.flushes = asyncio.Event()
        self.acks = asyncio.Event()
        self.acks.set()
        self.acknowledged: list[bytes] = []
        self.refusal: Exception | None = None
        self.refused_keys = b""  # the prefix of the keys refused while ``refusal`` is set
        self.commits: list[dict[Any, int]] = []
        self.metadata: list[dict[Any, str]] = []
        self.data: dict[bytes, bytes] = {}  # the table's store
        self.changelog: list[tuple[bytes, bytes | None]] = []
        self.persisted_records = 0  # changelog records the store holds, as the table's offset says

    async def flush(self) -> None:
        await self.flushes.wait()
        self.journal.append("producer flushed")

    async def _commit(self, positions: dict[Any, Any]) -> bool:
        offsets = {tp: position.offset for tp, position in positions.items()}
        self.journal.append(" ".join(["committed", *(f"{tp[0]}/{tp[1]}:{offset}" if tp != TP else str(offset) for tp, offset in sorted(offsets.items()))]))
        self.commits.append(offsets)
        self.metadata.append({tp: position.metadata for tp, position in positions.items()})
        return True

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: Any, timestamp: Any, headers: Any) -> asyncio.Task[None]:
        self.journal.append(f"sent {topic} {value.decode()}")
        return asyncio.create_task(self._acknowledge(value))

    async def write(self, partition: int, records: list[tuple[bytes, bytes | None]]) -> list[tuple[asyncio.Task[None], int]]:
        """The table's changelog (streams.state.TableChangelog): a batch per record."""
        batches = []
        for key, value in records:
            self.journal.append(f"changelog {key.decode(errors='backslashreplace')}{' deleted' if value is None else ''}")
            self.changelog.append((key, value))
            batches.append((asyncio.create_task(self._acknowledge(key)), 1))
        return batches

    def persisted(self, partition: int, batches: list[tuple[asyncio.Task[None], int]]) -> None:
        self.persisted_records += sum(count for _, count in batches)

    async def _acknowledge(self, key: bytes) -> None:
        await self.acks.wait()
        if self.refusal is not None and key.startswith(self.refused_keys):
            raise self.refusal
        self.acknowledged.append(key)


@pytest.fixture
def store(tmp_path) -> Iterator[Client]:
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path}")
    dedup = "SETTINGS non_replicated_deduplication_window = 100"  # as the migrations set it
    client.command(f"CREATE TABLE handled (offset UInt64) ENGINE = MergeTree ORDER BY offset {dedup}")
    client.command(f"CREATE TABLE account_scores (account_id String, events UInt64) ENGINE = MergeTree ORDER BY account_id {dedup}")
    yield client
    client.close()


def protocol(
    store: Client, state_interval_s: float = 0.0, max_cached: int = 10, max_state_bytes: int = STATE_MAX_BYTES, interval_s: float = 0.0
) -> tuple[Checkpoint, AccountStates, ClickHouseSink, KafkaSide, list[str]]:
    journal: list[str] = []

    async def stop_the_worker(reason: BaseException) -> None:
        journal.append(f"worker stopped: {reason}")

    kafka = KafkaSide(journal)
    app = SimpleNamespace(
        producer=kafka,
        consumer=SimpleNamespace(_commit=kafka._commit, assignment=lambda: {TP, RAW}),
        consumer_generation_id=1,
        flow_control=SimpleNamespace(is_active=lambda: True),
    )
    sink = ClickHouseSink(store, {"handled": ("offset",), "account_scores": ("account_id", "events")})
    original_write = sink.write

    async def journaled_write(taken: Any, token: str) -> int:
        written = await original_write(taken, token)
        journal.append("inserted " + ",".join(sorted(taken)))
        return written

    sink.write = journaled_write  # type: ignore[method-assign]
    states = AccountStates(SimpleNamespace(data=kafka.data), kafka, partitions=1, max_cached=max_cached, max_bytes=max_state_bytes)
    checkpoint = Checkpoint(
        app,
        sink,
        states,
        OffsetGuard(app),
        lambda: [(state.account_id, state.events_total) for state in states.take_changed()],
        lambda tp: f"{tp[0]} at journal entry {len(journal)}",  # tells when it was asked for
        max_rows=1_000,
        interval_s=interval_s,  # 0: always due, and a due one always waits for the one in flight
        state_interval_s=state_interval_s,  # 0: states written at every checkpoint
        on_failure=stop_the_worker,
    )
    return checkpoint, states, sink, kafka, journal


def consume(checkpoint: Checkpoint, states: AccountStates, sink: ClickHouseSink, offsets: range, account: str = "acme") -> None:
    """What the score agent does with a batch: admit, change state, buffer rows, hand over."""
    fresh = checkpoint.guard.admit([SimpleNamespace(tp=TP, offset=o, generation_id=1, topic=TP[0], partition=0) for o in offsets]).fresh
    states.state_for(account).events_total += len(fresh)
    sink.add("handled", [(message.offset,) for message in fresh])
    checkpoint.track(fresh, in_state=True)


def ingest(checkpoint: Checkpoint, offsets: range) -> None:
    """What the ingest agent does: its messages' effects are not in account states."""
    fresh = checkpoint.guard.admit([SimpleNamespace(tp=RAW, offset=o, generation_id=1, topic=RAW[0], partition=RAW[1]) for o in offsets]).fresh
    checkpoint.track(fresh)


async def until(condition: Any, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def handled(store: Client) -> list[int]:
    return [row[0] for row in store.query("SELECT offset FROM handled ORDER BY offset").result_rows]


def test_agents_go_on_while_a_checkpoint_is_made_durable_and_it_commits_only_what_it_took(store):
    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 3))
            await checkpoint.commit_if_due()  # takes offsets 0-2; their flush waits
        await until(lambda: len(journal) == 2)
        assert journal == ["inserted account_scores,handled", "changelog acme"]
        async with checkpoint.lock:  # not held by the checkpoint in flight
            consume(checkpoint, states, sink, range(3, 5))
        kafka.flushes.set()
        async with checkpoint.lock:
            await checkpoint.commit()  # waits for the first, then makes offsets 3-4 durable
        assert journal == [
            "inserted account_scores,handled", "changelog acme", "producer flushed", "committed 3",
            "inserted account_scores,handled", "changelog acme", "producer flushed", "committed 5",
        ]
        # each changelog write holds the state as it was taken, not as it became later
        assert [AccountState.from_bytes(value).events_total for _, value in kafka.changelog] == [3, 5]
        assert AccountState.from_bytes(kafka.data[b"acme"]).events_total == 5
        # so does each commit's metadata (a watermark, in the pipeline)
        assert kafka.metadata == [{TP: "events.by-account at journal entry 0"}, {TP: "events.by-account at journal entry 4"}]
        assert checkpoint.commits == 2

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert handled(store) == [0, 1, 2, 3, 4]
    assert store.query("SELECT account_id, events FROM account_scores ORDER BY events").result_rows == [("acme", 3), ("acme", 5)]


def test_a_checkpoint_due_while_one_is_in_flight_waits_for_it_holding_the_agents_back(store):
    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 2))
            await checkpoint.commit_if_due()
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(2, 4))
            second = asyncio.create_task(checkpoint.commit_if_due())
            await asyncio.sleep(0.05)
            assert not second.done() and "committed 2" not in journal  # backpressure: the store is slow
            kafka.flushes.set()
            await second
            await checkpoint.commit()
        assert journal[:4] == ["inserted account_scores,handled", "changelog acme", "producer flushed", "committed 2"]
        assert journal[4] == "inserted account_scores,handled"  # the second starts after the first committed

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_agents_go_past_a_due_checkpoint_while_one_is_in_flight_until_a_second_ones_worth_is_pending(store):
    """Due by its rows (1,000: a backlog), a checkpoint does not hold the agents back
    while the one in flight runs; at twice the rows it does, and it starts once that one
    has ended. (Due by the time, with fewer rows, it waits: the test below.)"""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store, interval_s=3600)
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 1_000))
            await checkpoint.commit_if_due()  # in flight: its flush waits
        await until(lambda: "changelog acme" in journal)
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(1_000, 2_500))
            assert checkpoint.due()
            async with asyncio.timeout(1):
                await checkpoint.commit_if_due()  # due, not overdue: returns at once
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(2_500, 3_000))  # 2,000 rows pending: overdue
            second = asyncio.create_task(checkpoint.commit_if_due())
            await asyncio.sleep(0.05)
            assert not second.done() and "committed 1000" not in journal
            kafka.flushes.set()
            await second
            await checkpoint.commit()
        assert journal[:5] == ["inserted account_scores,handled", "changelog acme", "producer flushed", "committed 1000", "inserted account_scores,handled"]
        assert kafka.commits[-1] == {TP: 3_000}

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert handled(store) == list(range(3_000))


def test_live_traffic_due_by_the_time_waits_for_the_checkpoint_in_flight(store):
    """Due by the time with fewer rows than a checkpoint takes, a checkpoint waits for the
    one in flight (bigger checkpoints would delay live rows), though not yet overdue."""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store, interval_s=2.0)
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 1_000))
            await checkpoint.commit_if_due()  # due by its rows; in flight: its flush waits
        await asyncio.sleep(2.1)  # the next one is due by the time, overdue at 4 s
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(1_000, 1_010))
            second = asyncio.create_task(checkpoint.commit_if_due())
            await asyncio.sleep(0.05)
            assert not second.done()
            kafka.flushes.set()
            await second
        await until(lambda: journal.count("inserted account_scores,handled") == 2)  # it started after the first
        assert journal[:4] == ["inserted account_scores,handled", "changelog acme", "producer flushed", "committed 1000"]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_revocation_while_the_checkpoint_in_flight_cannot_finish_abandons_it_though_an_agent_waits_for_it(store):
    """The store down: the checkpoint in flight never finishes (its flush here), and an
    agent whose next checkpoint is due waits for it holding the lock. A revocation must
    still have the lock and give up within its timeout: nothing committed, the work
    forgotten, and no insert of it later. (Waiting for the lock first, it waited with the
    agent for the store: a worker whose store was cut off kept its partitions' events
    and inserted them once the store was back, after their next owner had.)"""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 2))
            await checkpoint.commit_if_due()  # in flight: its flush does not end
        await until(lambda: "inserted account_scores,handled" in journal)  # a fresh store's first insert can take 0.3 s

        async def agent() -> None:
            async with checkpoint.lock:
                consume(checkpoint, states, sink, range(2, 4))
                await checkpoint.commit_if_due()  # due: waits for the one in flight

        waiting = asyncio.create_task(agent())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        async with asyncio.timeout(2):
            await checkpoint.hand_over(timeout_s=0.3)
            await waiting  # it let go of the lock, and raised nothing
        kafka.flushes.set()
        await asyncio.sleep(0.05)
        assert (kafka.commits, states.cached, checkpoint.failure) == ([], 0, None)
        assert journal.count("inserted account_scores,handled") == 1  # the agent started no other
        again = checkpoint.guard.admit([SimpleNamespace(tp=TP, offset=o, generation_id=1) for o in range(4)])
        assert [message.offset for message in again.fresh] == [0, 1, 2, 3]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def slow_store(store: Client, seconds_per_row: float) -> None:
    """Inserts into ``handled`` take this long a row at the store (a view that sleeps)."""
    store.command("CREATE TABLE nothing (x UInt8) ENGINE = Null")
    store.command(f"CREATE MATERIALIZED VIEW slow_handled TO nothing AS SELECT sleepEachRow({seconds_per_row}) AS x FROM handled")


def test_a_revocation_abandoning_an_insert_already_at_the_store_waits_for_it_to_land(store):
    """An insert cannot be called back once its statement runs. Had the revocation let
    the partitions go meanwhile, the rows would land after their next owner had read
    what lies past the committed offsets, and it would insert them again."""
    slow_store(store, 0.5)

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 4))
            await checkpoint.commit_if_due()  # its insert takes 2 s; its flush never ends
        await until(lambda: sink._client_lock.locked())
        await checkpoint.hand_over(timeout_s=1.5)  # abandons it after 1.5 s
        assert not sink._client_lock.locked()  # the insert had ended (a query now would wait for it)
        assert handled(store) == [0, 1, 2, 3]
        assert (kafka.commits, checkpoint.failure) == ([], None)

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert store.query("SELECT count() FROM account_scores").result_rows == [(0,)]  # the next insert was refused


def test_a_revocation_abandoning_an_insert_that_stays_at_the_store_stops_the_worker(store):
    slow_store(store, 0.4)

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 6))
            await checkpoint.commit_if_due()  # its insert takes 2.4 s
        await until(lambda: sink._client_lock.locked())
        await checkpoint.hand_over(timeout_s=0.3)
        assert journal[-1] == "worker stopped: an abandoned insert was still at the store 0.3 s later; it could land after the next owner's"
        await sink.call(lambda client: None)  # the insert ended (the worker's exit would end it)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_insert_still_waiting_for_the_store_when_its_checkpoint_is_abandoned_never_reaches_it(store):
    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        busy = asyncio.create_task(sink.call(lambda client: client.command("SELECT sleep(0.8)")))  # another statement, slow
        await until(lambda: sink._client_lock.locked())
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 2))
            await checkpoint.commit_if_due()  # its insert waits for the statement
        await checkpoint.hand_over(timeout_s=0.6)
        await busy
        await sink.call(lambda client: None)  # every thread that wanted the client had it
        assert handled(store) == []
        assert (kafka.commits, checkpoint.failure) == ([], None)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_revocation_that_an_agent_keeps_from_the_lock_stops_the_worker(store):
    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        stuck = asyncio.Event()

        async def agent() -> None:
            async with checkpoint.lock:
                consume(checkpoint, states, sink, range(0, 2))
                await stuck.wait()  # on something other than the checkpoint

        holding = asyncio.create_task(agent())
        await asyncio.sleep(0.05)
        await checkpoint.hand_over(timeout_s=0.2)
        assert journal == ["worker stopped: the agents did not let a revocation have the checkpoint lock within 0.2 s"]
        stuck.set()
        await holding
        async with checkpoint.lock:
            with pytest.raises(CheckpointFailed):
                await checkpoint.commit()
        assert kafka.commits == []

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_abandoned_checkpoint_in_flight_commits_nothing_and_its_events_are_admitted_again(store):
    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 2))
            kafka.flushes.set()
            await checkpoint.commit()  # offsets 0-1 committed
            kafka.flushes.clear()
            consume(checkpoint, states, sink, range(2, 4))
            await checkpoint.commit_if_due()  # its flush never ends
            consume(checkpoint, states, sink, range(4, 6))
            await until(lambda: "changelog acme" in journal[4:])
            checkpoint.abandon()
            await asyncio.sleep(0.05)
        assert kafka.commits == [{TP: 2}]
        assert states.cached == 0  # the table is the truth again
        again = checkpoint.guard.admit([SimpleNamespace(tp=TP, offset=o, generation_id=1) for o in range(1, 6)])
        assert [message.offset for message in again.fresh] == [2, 3, 4, 5]

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert handled(store) == [0, 1, 2, 3]  # the abandoned insert landed: the restart guard's case


def test_a_state_changed_without_consumed_events_is_checkpointed(store):
    """A fall-back the watermark settled on a timer, with no new event: its account row and
    changelog entry must not wait for the next event."""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        kafka.flushes.set()
        async with checkpoint.lock:
            states.state_for("acme").stage = "awareness"
            assert checkpoint.due()
            await checkpoint.commit()
        assert journal == ["inserted account_scores", "changelog acme", "producer flushed"]
        assert AccountState.from_bytes(kafka.data[b"acme"]).stage == "awareness"
        assert not checkpoint.due()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_after_a_restart_a_batch_of_the_same_offsets_is_not_taken_for_a_retry(store):
    """The crashed process inserted offsets 0-2 and died before committing; its successor
    takes the same offsets in a batch with other rows (here: another account's state),
    which must land (event rows are kept from doubling by the restart guard instead)."""

    async def one_process(account: str) -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        kafka.flushes.set()
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 3))
            states.state_for(account)
            await checkpoint.commit()

    asyncio.run(asyncio.wait_for(one_process("acme"), 60))
    asyncio.run(asyncio.wait_for(one_process("globex"), 60))
    rows = store.query("SELECT account_id, events FROM account_scores ORDER BY account_id, events").result_rows
    assert rows == [("acme", 3), ("acme", 3), ("globex", 0)]


def test_between_state_writes_rows_land_and_only_events_without_state_effects_are_committed(store):
    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store, state_interval_s=3600)
        kafka.flushes.set()
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 3))
            ingest(checkpoint, range(10, 12))
            await checkpoint.commit_if_due()
            consume(checkpoint, states, sink, range(3, 5))
            await checkpoint.commit_if_due()
            await checkpoint._finish_in_flight()
        assert journal == [
            "inserted account_scores,handled", "producer flushed", "committed email.opens/3:12",
            "inserted account_scores,handled", "producer flushed",
        ]
        assert kafka.changelog == [] and checkpoint.pending_events == 5
        async with checkpoint.lock:  # nothing newly consumed: the states are written, their events committed
            await checkpoint.commit_if_due()
            await checkpoint._finish_in_flight()
        assert journal[5:] == ["inserted ", "changelog acme", "producer flushed", "committed 5"]  # no rows left
        assert AccountState.from_bytes(kafka.data[b"acme"]).events_total == 5
        assert checkpoint.pending_events == 0 and not checkpoint.due()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert handled(store) == [0, 1, 2, 3, 4]
    assert store.query("SELECT account_id, events FROM account_scores ORDER BY events").result_rows == [("acme", 3), ("acme", 5)]


def test_a_drained_backlogs_states_are_written_as_soon_as_its_last_rows_are(store):
    """Nothing consumed since a checkpoint of rows only took its batch: once it ends, the
    states and the events behind them are made durable at once, not an interval later."""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store, interval_s=3600, state_interval_s=3600)
        kafka.flushes.set()
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 1_000))
            await checkpoint.commit_if_due()  # due by its rows; states are not due
        await until(lambda: bool(kafka.commits))
        assert journal == ["inserted account_scores,handled", "producer flushed", "inserted ", "changelog acme", "producer flushed", "committed 1000"]
        assert AccountState.from_bytes(kafka.data[b"acme"]).events_total == 1_000
        assert checkpoint.pending_events == 0 and not checkpoint.due()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_events_consumed_while_a_checkpoint_of_rows_is_in_flight_leave_the_states_to_their_interval(store):
    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store, interval_s=3600, state_interval_s=3600)
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 1_000))
            await checkpoint.commit_if_due()  # its flush waits
            consume(checkpoint, states, sink, range(1_000, 1_005))
        kafka.flushes.set()
        async with checkpoint.lock:
            await checkpoint._finish_in_flight()
        await asyncio.sleep(0.2)
        assert journal == ["inserted account_scores,handled", "producer flushed"] and kafka.changelog == [] and kafka.commits == []
        assert checkpoint.pending_events == 1_005

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_events_waiting_for_their_states_are_admitted_again_after_an_abandon(store):
    """A revocation that cannot finish: events whose states were never written come again
    (their rows already stored are the restart guard's case), those committed do not."""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store, state_interval_s=3600)
        kafka.flushes.set()
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 2))
            await checkpoint.commit()  # states and offsets 0-1
            consume(checkpoint, states, sink, range(2, 4))
            ingest(checkpoint, range(0, 2))
            await checkpoint.commit_if_due()  # rows of 2-3, raw offsets committed
            await checkpoint._finish_in_flight()
            checkpoint.abandon()
        assert kafka.commits == [{TP: 2}, {RAW: 2}]
        again = checkpoint.guard.admit(
            [SimpleNamespace(tp=tp, offset=o, generation_id=1) for tp in (TP, RAW) for o in range(0, 4)]
        )
        assert [(m.tp, m.offset) for m in again.fresh] == [(TP, 2), (TP, 3), (RAW, 2), (RAW, 3)]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_agents_wait_for_the_checkpoint_in_flight_once_more_states_wait_than_the_cache_holds(store):
    """A backlog may go past a checkpoint due by its rows, but not past the state cache:
    the next checkpoint, with the states, starts once the one in flight has ended."""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store, interval_s=3600, state_interval_s=3600, max_cached=3)
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 1_000), account="a")
            await checkpoint.commit_if_due()  # in flight, without the states: its flush waits
        await until(lambda: "inserted account_scores,handled" in journal)
        async with checkpoint.lock:
            for n, account in enumerate(("b", "c", "d")):
                consume(checkpoint, states, sink, range(1_000 + 100 * n, 1_100 + 100 * n), account=account)
            assert states.over_cache and sink.pending_rows < 2_000
            second = asyncio.create_task(checkpoint.commit_if_due())
            await asyncio.sleep(0.05)
            assert not second.done()  # not going on: the states wait to be written
            kafka.flushes.set()
            await second
            await checkpoint._finish_in_flight()
        assert sorted(key for key, _ in kafka.changelog) == [b"a", b"b", b"c", b"d"]
        assert kafka.commits[-1] == {TP: 1_300}

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_states_are_written_once_more_of_them_wait_than_the_cache_holds(store):
    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store, state_interval_s=3600, max_cached=3)
        kafka.flushes.set()
        async with checkpoint.lock:
            for n, account in enumerate(("a", "b", "a")):  # "a" changed again: still two waiting
                consume(checkpoint, states, sink, range(n, n + 1), account=account)
                await checkpoint.commit_if_due()
                await checkpoint._finish_in_flight()
            assert kafka.changelog == [] and states.unwritten == 2
            consume(checkpoint, states, sink, range(3, 4), account="c")  # the third unwritten state
            await checkpoint.commit_if_due()
            await checkpoint._finish_in_flight()
        assert sorted(key for key, _ in kafka.changelog) == [b"a", b"b", b"c"]
        assert kafka.commits[-1] == {TP: 4}

    asyncio.run(asyncio.wait_for(scenario(), 60))


def held_page_view(minute: int) -> dict[str, Any]:
    at = 1_700_000_000_000 + minute * 60_000
    return {"event_id": f"e{minute}", "source": "web", "type": "page_view", "occurred_at_ms": at, "contact_id": "c1", "account_id": "acme"}


def test_held_events_are_written_as_a_segment_before_their_state_and_deleted_a_write_after_it_is_read_back(store):
    """A state write moves its held events to a segment record, written before the state
    that lists it, and readable while the write is in flight; once the watermark reads it
    back, the next write lists it as released and the one after deletes it, before the
    state's record: a crash between any two records leaves no stored state listing a
    deleted segment."""
    config, rules = load_rules(None, 30 * 86_400_000, 48 * 3_600_000)
    events = [held_page_view(minute) for minute in range(3)]

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        kafka.flushes.set()
        async with checkpoint.lock:
            states.state_for("acme").held = [as_held(e) for e in events]
            await checkpoint.commit_if_due()  # in flight: the segment is not in the store yet
            assert b"\xff0:acme" not in kafka.data and states.stored_held("acme", 0) == held_events_of(held_events_raw(events))
            await checkpoint._finish_in_flight()
            assert [line for line in journal if line.startswith("changelog")] == ["changelog \\xff0:acme", "changelog acme"]
            state = states.state_for("acme")
            listed = [[events[0]["occurred_at_ms"], 0, 3]]  # earliest event time, number, events
            assert (state.held, state.held_segments, AccountState.from_bytes(kafka.data[b"acme"]).held_segments) == ([], listed, listed)
            settle(state, events[1]["occurred_at_ms"], config, rules, states.stored_held)  # two applied, one back in memory
            assert (state.events_total, len(state.held), state.held_segments, state.released_segments) == (2, 1, [], [0])
            del journal[:]
            await checkpoint.commit()
            assert [line for line in journal if line.startswith("changelog")] == ["changelog \\xff1:acme", "changelog acme"]
            assert AccountState.from_bytes(kafka.data[b"acme"]).released_segments == [0] and b"\xff0:acme" in kafka.data
            assert checkpoint.due()  # the deletion is owed
            del journal[:]
            await checkpoint.commit()
            assert [line for line in journal if line.startswith("changelog")] == ["changelog \\xff0:acme deleted", "changelog acme"]
            assert b"\xff0:acme" not in kafka.data and AccountState.from_bytes(kafka.data[b"acme"]).released_segments == []
            assert [e["event_id"] for e in states.stored_held("acme", 1)] == ["e2"]
            del journal[:]
            await checkpoint.commit()
            assert journal == []
            with pytest.raises(LookupError, match="held segment 0 of account 'acme' is not in the store"):
                states.stored_held("acme", 0)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def held_events_raw(events: list[dict[str, Any]]) -> bytes:
    state = AccountState("acme", held=[as_held(e) for e in events])
    [(_, raw)] = state.take_held_segments()
    return raw


@pytest.mark.parametrize("record", ["changelog record", "sent record"])
def test_offsets_are_committed_only_once_the_broker_acknowledged_every_record_behind_them(store, record):
    """A changelog record (written at step 2, which waits for it before the table's store
    takes it) or a record sent for a batch (a forwarded event, a dead letter, a
    transition: the producer's flush returns before the broker acknowledged them). The
    commit waits for each."""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        kafka.acks.clear()
        kafka.flushes.set()
        async with checkpoint.lock:
            if record == "changelog record":
                consume(checkpoint, states, sink, range(0, 3))
            else:
                ingest(checkpoint, range(0, 3))
                await checkpoint.send("events.by-account", None, b"forwarded 0-2", 5)
            await checkpoint.commit_if_due()
        await until(lambda: ("changelog acme" if record == "changelog record" else "producer flushed") in journal)
        await asyncio.sleep(0.05)
        assert kafka.commits == [] and kafka.acknowledged == []
        assert b"acme" not in kafka.data and kafka.persisted_records == 0  # the store waits for the changelog
        kafka.acks.set()
        async with checkpoint.lock:
            await checkpoint.commit()
        if record == "changelog record":
            assert kafka.acknowledged == [b"acme"] and kafka.commits == [{TP: 3}]
            assert journal == ["inserted account_scores,handled", "changelog acme", "producer flushed", "committed 3"]
        else:
            assert kafka.acknowledged == [b"forwarded 0-2"] and kafka.commits == [{RAW: 3}]
            assert journal == ["sent events.by-account forwarded 0-2", "inserted ", "producer flushed", "committed email.opens/3:3"]

    asyncio.run(scenario())


@pytest.mark.parametrize("refused", ["sent record", "changelog record"])
def test_a_refused_record_stops_the_worker_and_nothing_is_committed_after_it(store, refused):
    """The batch whose record the broker refused is gone from memory: a later checkpoint
    must not commit past it, so the first failure stops the worker for good."""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        kafka.flushes.set()
        kafka.refusal = RuntimeError("MessageSizeTooLargeError")
        async with checkpoint.lock:
            if refused == "sent record":
                ingest(checkpoint, range(0, 2))
                await checkpoint.send("events.by-account", None, b"forwarded 0-1", 5)
            else:
                consume(checkpoint, states, sink, range(0, 2))
            await checkpoint.commit_if_due()
            with pytest.raises(RuntimeError, match="MessageSizeTooLargeError"):
                await checkpoint._finish_in_flight()
        assert journal[-1] == "worker stopped: MessageSizeTooLargeError"
        kafka.refusal = None  # the broker accepts again: still nothing more is committed
        async with checkpoint.lock:
            ingest(checkpoint, range(2, 4))
            consume(checkpoint, states, sink, range(2, 4))
            with pytest.raises(CheckpointFailed):
                await checkpoint.commit_if_due()
            with pytest.raises(CheckpointFailed):
                await checkpoint.commit()
        assert kafka.commits == []

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_state_goes_to_its_changelog_only_once_its_new_segment_is_there_and_to_its_store_after_both(store):
    """A segment is written once: a state record that reached the changelog without its
    refused segment, or a store that took a segment the changelog never got, would leave
    a worker restoring the partition from the changelog with a state listing a segment
    it lacks. A refused segment stops the worker before its state is sent, and the store
    keeps what the changelog has."""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        kafka.flushes.set()
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 2))
            await checkpoint.commit()
        stored = dict(kafka.data)
        assert b"acme" in stored and kafka.persisted_records == 1
        kafka.refusal, kafka.refused_keys = RuntimeError("NotLeaderForPartitionError"), b"\xff"  # segments only
        async with checkpoint.lock:
            states.state_for("acme").held = [as_held(held_page_view(minute)) for minute in range(3)]
            await checkpoint.commit_if_due()
            with pytest.raises(RuntimeError, match="NotLeaderForPartitionError"):
                await checkpoint._finish_in_flight()
        assert [line for line in journal if line.startswith("changelog")][-2:] == ["changelog acme", "changelog \\xff0:acme"]
        assert kafka.data == stored and kafka.persisted_records == 1
        assert kafka.commits == [{TP: 2}]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_state_too_large_for_its_changelog_stops_the_worker_naming_its_account(store):
    """Kafka would refuse it as MessageSizeTooLarge; the worker says whose state it is
    and what fills it, and writes no state of the batch."""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store, max_state_bytes=4_000)
        kafka.flushes.set()
        async with checkpoint.lock:
            consume(checkpoint, states, sink, range(0, 2), account="quiet")
            consume(checkpoint, states, sink, range(2, 4), account="busy")
            states.state_for("busy").recent_ids = RecentIds((key, key) for key in range(1_000))  # 16 bytes each, in base64
            await checkpoint.commit_if_due()
            with pytest.raises(StateTooLarge, match="account 'busy' is 21,") as failure:
                await checkpoint._finish_in_flight()
        assert "1,000 event ids, 0 contacts and 0 capped-day entries" in str(failure.value)
        assert journal[-1].startswith("worker stopped: the state of account 'busy'")
        assert (kafka.changelog, kafka.data, kafka.commits) == ([], {}, [])

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_agent_that_raises_stops_the_worker_and_nothing_more_is_committed(store):
    """Faust restarts an agent that raised; the messages it had taken are neither
    processed nor committed, and later ones must not be committed past them."""

    async def scenario() -> None:
        checkpoint, states, sink, kafka, journal = protocol(store)
        kafka.flushes.set()

        @checkpoint.stopping_on_error
        async def agent(stream: Any) -> None:
            async with checkpoint.lock:
                checkpoint.guard.admit([SimpleNamespace(tp=RAW, offset=o, generation_id=1, topic=RAW[0], partition=RAW[1]) for o in range(0, 2)])
                raise ValueError("a bug in the middle of a batch")

        await agent(None)  # ends: Faust would restart an agent that raised
        assert journal == ["worker stopped: a bug in the middle of a batch"]
        async with checkpoint.lock:  # the restarted agent goes on with the next messages
            ingest(checkpoint, range(2, 4))
            with pytest.raises(CheckpointFailed):
                await checkpoint.commit()
        assert kafka.commits == []

    asyncio.run(scenario())


def test_an_insert_holds_no_reference_to_its_rows_once_it_returns(store):
    """A reference cycle of the client's would keep every checkpoint's rows (and their
    encoded columns) until the garbage collector reaches it; checked with the collector
    off, so only reference counting frees them."""
    sink = ClickHouseSink(store, {"account_scores": ("account_id", "events")})
    sink.add("account_scores", [(f"a{i}", i) for i in range(1000)])
    taken = sink.take()
    rows = taken["account_scores"].rows
    held_before = sys.getrefcount(rows)
    gc.disable()
    try:
        asyncio.run(sink.write(taken, "token"))
        assert sys.getrefcount(rows) == held_before
    finally:
        gc.enable()
    assert store.query("SELECT count(), sum(events) FROM account_scores").result_rows == [(1000, 499_500)]
