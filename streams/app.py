r"""The Faust app: topics, the account-state table, the two agents and the checkpoint.

    raw topics --ingest--> events.by-account --score--> ClickHouse
                 |  \--> dead-letters             \--> account-state table (changelog)
                 \--> events.unresolved

``ingest`` validates and routes raw messages; ``score`` folds events into per-account
state. Both hand their consumed events to the one Checkpoint, which owns commits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.types import TP
from prometheus_client import CollectorRegistry
from aiohttp.web import Response
from clickhouse_connect.driver.client import Client

from processors.dedup import DedupPolicy
from processors.identity import account_directory
from processors.routing import EVENTS_PER_MESSAGE, Forwarded, LearnedContact, forwarded_messages, keys_resolved_by, reroute_pending, route_batch
from processors.validation import Rejection
from processors.waiting import WaitingKeys
from schemas.events import TOPIC_ACCOUNTS, TOPIC_BY_ACCOUNT, TOPIC_CONTACTS, TOPIC_DEAD_LETTERS, TOPIC_UNRESOLVED, source_topics
from streams.checkpoint import Checkpoint
from streams.directory import DirectoryFeed, contact_record
from streams.fast_path import Fetched, PulseApp
from streams.folding import FoldRules, folding
from streams.lag import group_lag, oldest_waiting_ms
from streams.metrics import EventLatencies, LagSnapshot, PipelineCollector, PipelineStats
from streams.offsets import OffsetGuard
from streams.rows import dead_letter_row
from streams.rules import load_rules
from streams.settings import Settings
from streams.sink import ACCOUNT_COLUMNS, CLAIMED_EVENT_COLUMNS, CLAIMED_EVENTS, DEAD_LETTER_COLUMNS, TRANSITION_COLUMNS, ClickHouseSink
from streams.staging import StageClock
from streams.state import TableChangelog
from streams.store import claim_partitions, dead_lettered_positions, rebuild_derived, stored_event_positions
from streams.topics import DEAD_LETTER_PART_BYTES, OUTPUT_MESSAGE_MAX_BYTES, OUTPUT_TOPIC_CONFIGS, STATE_MAX_BYTES, STATE_TABLE, consumed_topics
from streams.unresolved import RESOLUTION_COLUMNS, UNRESOLVED_COLUMNS, pending_events, resolution_row, unresolved_row, waiting_digests

log = logging.getLogger(__name__)

FAILED_SHUTDOWN_DEADLINE_S = 30.0
DEAD_LETTER_TEXT_CHARS = 4096  # a rejection's text can quote a field of up to 1 MiB
NEVER_S = 365 * 86400.0


@dataclass
class Pipeline:
    app: faust.App
    checkpoint: Checkpoint
    sink: ClickHouseSink
    stats: PipelineStats


def create_app(settings: Settings) -> PulseApp:
    return PulseApp(
        settings.app_id,
        batch_max_events=settings.batch_max_events,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        store=settings.state_store,
        datadir=str(settings.faust_dir),
        web_host=settings.web_host,
        web_port=settings.web_port,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        # The checkpoint commits; Faust's timer- and count-driven commits stay off.
        broker_commit_interval=NEVER_S,
        broker_commit_every=2**62,
        stream_wait_empty=False,
        # Fewer, larger fetches, each handed to its agent whole (streams.fast_path).
        broker_max_poll_records=10_000,
        consumer_max_fetch_size=4 * 1024 * 1024,  # per partition
        # A worker killed with SIGKILL leaves the group after this long; until then its
        # partitions stay assigned to it (Faust's default is 60 s). A revocation's
        # checkpoint gets half of it.
        broker_session_timeout=settings.session_timeout_s,
        # Changelogs and forwarded events go out in few large batches: with Faust's
        # 16 KiB a checkpoint's flush waited on hundreds of sequential small requests.
        producer_max_batch_size=512 * 1024,
        # Forwarded events and account states are JSON: compressed, a fraction of the
        # bytes goes out, and on loopback the sender's kernel pays for the receiver's side
        # too. Snappy, not lz4: aiokafka's lz4 is fixed at level 9, 7-12x slower per byte
        # (14 % of the event loop with live traffic), for a similar ratio.
        producer_compression_type="snappy",
        producer_linger=0.01,
        # An oversized event (rejected: over 1 MiB) must still fit in its dead letter.
        producer_max_request_size=OUTPUT_MESSAGE_MAX_BYTES,
        # Faust's /table/ views would serve every account's state to anyone on the port.
        web_tables_enabled=False,
        # No standby copies: Faust clears its changelog queue when it resumes the flow at
        # the end of a recovery, while standby partitions are already being fetched; a
        # standby record dropped there is never read again (later ones move the standby's
        # offset past it), and the worker that takes the partition over starts its
        # accounts from nothing (the scale-out kill test lost one account's history in 1
        # of 3 runs). Taking a partition over now replays its changelog, the path every
        # restart takes.
        table_standby_replicas=0,
    )


async def stop_the_worker(app: PulseApp, reason: BaseException) -> None:
    """After a failed checkpoint or agent: the process exits with status 1 and its
    supervisor starts it again. Nothing is left to make durable, so a shutdown that hangs in Faust (it has
    left the group, and would never exit) is cut short."""
    asyncio.get_running_loop().call_later(FAILED_SHUTDOWN_DEADLINE_S, _shutdown_overdue)
    await app.crash(reason)


def _shutdown_overdue() -> None:
    log.critical("the shutdown after a failed checkpoint did not finish within %.0fs; exiting", FAILED_SHUTDOWN_DEADLINE_S)
    exit_after_failure()


def exit_after_failure() -> None:
    """Status 1 now, without joining threads: one may still wait on the store (an
    abandoned insert), and the interpreter would wait with it for as long as it takes."""
    logging.shutdown()
    os._exit(1)


def build_pipeline(settings: Settings, client: Client, app: PulseApp | None = None) -> Pipeline:
    app = app or create_app(settings)
    partitions = settings.topic_partitions
    dedup = DedupPolicy(horizon_ms=int(settings.dedup_horizon_hours * 3_600_000), max_ids=settings.dedup_max_ids_per_account)
    # a capped day is remembered as long as duplicates are: late within it scores exactly
    config, rules = load_rules(
        settings.engagement_rules, settings.score_half_life_days * 86_400_000, dedup.horizon_ms, settings.max_contacts_per_account
    )
    stats = PipelineStats()

    raw_topic = app.topic(*[settings.topic(name) for name in source_topics()], value_type=bytes)
    by_account_topic = app.topic(settings.topic(TOPIC_BY_ACCOUNT), value_type=bytes, partitions=partitions)
    dead_letters = settings.topic(TOPIC_DEAD_LETTERS)
    unresolved = settings.topic(TOPIC_UNRESOLVED)
    contacts_topic = settings.topic(TOPIC_CONTACTS)
    directory = account_directory(settings.directory_max_contacts)
    waiting = WaitingKeys(waiting_digests(client))  # what some unresolved event waits on
    # bytes types make the changelog raw: the store and topic hold AccountState.to_bytes() as is
    table = app.Table(
        STATE_TABLE,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        options=rocksdb_options(),
        # a busy account's state (its engaged contacts, events held for the watermark) can outgrow Kafka's 1 MiB default
        extra_topic_configs=OUTPUT_TOPIC_CONFIGS,
    )

    fold_rules = FoldRules(
        config,
        rules,
        dedup,
        settings.max_held_events_per_account,
        int(settings.watermark_lateness_minutes * 60_000),
        settings.schedule_accounts_per_partition,
    )
    folds = folding(table, TableChangelog(table), partitions, settings.state_cache_accounts, STATE_MAX_BYTES, fold_rules)
    states = folds.states
    latencies = EventLatencies()
    sink = ClickHouseSink(
        client,
        {
            CLAIMED_EVENTS: CLAIMED_EVENT_COLUMNS,
            "account_scores": ACCOUNT_COLUMNS,
            "stage_transitions": TRANSITION_COLUMNS,
            "unresolved_events": UNRESOLVED_COLUMNS,
            "unresolved_resolutions": RESOLUTION_COLUMNS,
            "dead_letters": DEAD_LETTER_COLUMNS,
        },
        on_written=latencies.on_written,
    )
    checkpoint = Checkpoint(
        app,
        sink,
        states,
        OffsetGuard(app),
        lambda: folds.take_changed_rows(int(time.time() * 1000)),
        lambda tp: stage_clock.offset_metadata(tp),  # the stage clock is built on the checkpoint
        max_rows=settings.checkpoint_max_rows,
        interval_s=settings.checkpoint_interval_s,
        state_interval_s=settings.state_interval_s,
        on_failure=functools.partial(stop_the_worker, app),
    )
    guard = checkpoint.guard
    stage_clock = StageClock(app, settings, folds, checkpoint, sink, stats)
    # Rows of this worker's by-account partitions already in ClickHouse past the committed
    # offsets (inserted by a checkpoint that died before its commit, possibly only in part):
    # their events come again and are not inserted twice. Set on every assignment.
    stored_ahead: set[tuple[int, int, int]] = set()
    claims: dict[int, int] = {}  # by-account partition -> this owner's claim (streams.store.claim_partitions)
    # Faust resumes the flow once tables recover, possibly before on_assigned has read
    # them: the score agent waits for it.
    stored_ahead_known = asyncio.Event()

    def admit(messages: list[Any]) -> list[Any]:
        """The messages of a batch to process now; the caller holds the checkpoint lock."""
        if checkpoint.closed:  # shutting down: left for the next start
            return []
        admitted = guard.admit(messages)
        stats.redelivered_skipped += admitted.repeated
        stats.stale_dropped += admitted.stale
        return admitted.fresh

    async def forward(by_partition: dict[int, list[Forwarded]], learned: list[LearnedContact]) -> None:
        """Attributed events to their account's partition; newly learned contacts to the directory."""
        for partition, bucket in by_partition.items():
            for chunk in forwarded_messages(bucket):
                await checkpoint.send(by_account_topic.get_topic_name(), None, chunk, partition)
            stats.forwarded += len(bucket)
        await checkpoint.send_keyed(contacts_topic, [contact_record(*contact) for contact in learned])
        stats.contacts_learned += len(learned)

    async def dead_letter(message: Any, rejection: Rejection) -> None:
        """To the dead-letter topic and the dead_letters table; the caller holds the checkpoint lock."""
        key, value, text = _capped(message.key), _capped(message.value), rejection.message[:DEAD_LETTER_TEXT_CHARS]
        headers = _reason_headers(message, rejection.reason.value, text)
        if value is not message.value:
            headers.append(("abm.truncated_from", str(len(message.value)).encode()))
        await checkpoint.send(dead_letters, key, value, headers=headers)
        reason = rejection.reason.value
        sink.add("dead_letters", [dead_letter_row(message, reason, text, key, value)])
        stats.invalid_by_reason[reason] = stats.invalid_by_reason.get(reason, 0) + 1

    async def reroute_waiting(learned_keys: set[str]) -> None:
        """Re-routes the events that waited on what the directory just learned (domains,
        contacts); the caller holds the checkpoint lock."""
        keys = waiting.among(learned_keys)
        if not keys or checkpoint.closed:
            return
        await checkpoint.commit()  # unresolved rows still buffered reach ClickHouse first
        rerouted = reroute_pending(await sink.call(pending_events, keys), partitions, directory)
        await forward(rerouted.by_partition, rerouted.learned_contacts)
        await checkpoint.wait_sent()  # forwarded before they are marked resolved
        now_ms = int(time.time() * 1000)
        sink.add("unresolved_resolutions", [resolution_row(event, waiting_on, now_ms) for waiting_on, event in rerouted.resolved])
        waiting.discard(keys - rerouted.still_waiting)
        stats.resolved_later += len(rerouted.resolved)
        await reroute_waiting(keys_resolved_by(rerouted.learned_contacts))  # contacts those events taught

    async def directory_learned(keys: set[str]) -> None:
        if waiting.among(keys):
            async with checkpoint.lock:
                await reroute_waiting(keys)

    # The directory topics are read in full at every start: a bad record is dead-lettered
    # once, the first time (the dead_letters table remembers which were).
    directory_topics = [settings.topic(TOPIC_ACCOUNTS), contacts_topic]
    dead_lettered = dead_lettered_positions(client, directory_topics)

    async def invalid_directory_record(record: Any, rejection: Rejection) -> None:
        if (record.topic, record.partition, record.offset) in dead_lettered:
            return
        message = Fetched(TP(record.topic, record.partition), record, generation_id=0)
        async with checkpoint.lock:
            await dead_letter(message, rejection)
        dead_lettered.add((record.topic, record.partition, record.offset))

    feed = DirectoryFeed(
        settings.kafka_bootstrap,
        *directory_topics,
        directory,
        on_keys_learned=directory_learned,
        on_invalid=invalid_directory_record,
    )

    @app.task
    async def follow_directory() -> None:
        while True:  # a broken connection must not leave the directory stale for good
            try:
                await feed.run()
            except Exception:
                log.exception("account directory feed failed; restarting it")
                await asyncio.sleep(1.0)

    @app.agent(raw_topic, name="ingest")
    @checkpoint.stopping_on_error
    async def ingest(stream: faust.StreamT) -> None:
        async for messages in app.fetched(stream):
            await feed.ready.wait()  # resolve as the directory stands, never against a half-read one
            async with checkpoint.lock:
                fresh = admit(messages)
                routed = route_batch(
                    [m.value for m in fresh],
                    [(m.topic, m.partition, m.offset) for m in fresh],
                    int(time.time() * 1000),
                    partitions,
                    directory,
                )
                for index, rejection in routed.rejected:
                    await dead_letter(fresh[index], rejection)
                await checkpoint.send_keyed(unresolved, [((waiting_on or "").encode(), orjson.dumps(event)) for _, event, waiting_on in routed.unresolved])
                waiting.add(waiting_on for _, _, waiting_on in routed.unresolved if waiting_on)
                sink.add("unresolved_events", [unresolved_row(event, waiting_on) for _, event, waiting_on in routed.unresolved])
                await forward(routed.by_partition, routed.learned_contacts)
                stats.raw_in += len(fresh)
                stats.unresolved += len(routed.unresolved)
                stats.add_counts(stats.valid_by_type, routed.valid_by_type)
                checkpoint.track(fresh)
                await reroute_waiting(keys_resolved_by(routed.learned_contacts))
                await checkpoint.commit_if_due()

    @app.agent(by_account_topic, name="score")
    @checkpoint.stopping_on_error
    async def score(stream: faust.StreamT) -> None:
        async for messages in app.fetched(stream, events_per_message=EVENTS_PER_MESSAGE):
            await stored_ahead_known.wait()
            async with checkpoint.lock:
                fresh = admit(messages)
                folded = stage_clock.fold([(m.partition, m.offset, m.value) for m in fresh])
                sink.add_forwarded(
                    CLAIMED_EVENTS,
                    [(m.partition, m.offset, m.value, claims[m.partition]) for m in fresh],
                    [src for src in folded.applied if src not in stored_ahead],
                )
                await stage_clock.emit(folded.transitions)
                stats.applied += len(folded.applied)
                stats.duplicates += folded.duplicates
                checkpoint.track(fresh, in_state=True)
                await checkpoint.commit_if_due()

    @app.timer(settings.checkpoint_interval_s)
    async def checkpoint_when_idle() -> None:
        async with checkpoint.lock:
            await checkpoint.commit_if_due()

    @app.on_partitions_revoked.connect
    async def on_revoked(_app: Any, _revoked: set[Any], **_: Any) -> None:
        stored_ahead_known.clear()
        await checkpoint.hand_over(timeout_s=app.conf.broker_session_timeout / 2)  # takes the lock

    @app.on_partitions_assigned.connect
    async def on_assigned(_app: Any, assigned: set[Any], **_: Any) -> None:
        owned = {tp.partition for tp in assigned if tp.topic == by_account_topic.get_topic_name()}
        try:
            lags = [item for item in await group_lag(settings.kafka_bootstrap, settings.app_id, [by_account_topic.get_topic_name()]) if item.partition in owned]
            async with checkpoint.lock:
                committed = {item.partition: item.committed for item in lags}
                claims.clear()
                claims.update(await sink.call(claim_partitions, owned))  # first: no earlier owner's insert lands after it
                stored_ahead.clear()
                stored_ahead.update(await sink.call(stored_event_positions, committed))
                if stored_ahead:  # a worker was killed after an insert: its views may lack the rows
                    rebuilt = await sink.call(rebuild_derived, committed, settings.events_ttl_days)
                    log.warning("%d events stored past the committed offsets; rebuilt their accounts' rows of %s", len(stored_ahead), ", ".join(rebuilt))
                stage_clock.assigned({item.partition: (item.committed, item.metadata) for item in lags})
        except Exception as exc:
            # the store or the broker unreachable: the partitions cannot start here; the
            # worker stops, and its restart or another worker takes them
            await checkpoint.fail(exc)
            return
        stored_ahead_known.set()

    registry = CollectorRegistry()
    setup_prometheus_sensors(app, registry=registry, name_prefix="faust")  # Faust's own, plus /metrics
    lag = LagSnapshot()
    def state_sizes() -> dict[str, int]:
        recovery = app.tables.recovery
        held_in_memory, held_in_segments = states.held
        return {
            "account_states_in_memory": states.cached,
            "held_events_in_memory": held_in_memory,
            "held_events_in_segments": held_in_segments,
            "directory_domains": directory.domains,
            "directory_contacts": directory.contacts,
            "waiting_keys": len(waiting),
            "changelog_records_to_recover": recovery.active_remaining_total(),
        }

    registry.register(PipelineCollector(stats, sink, checkpoint, lag, latencies, state_sizes, folds.watermarks))

    @app.timer(settings.lag_refresh_s)
    async def measure_lag() -> None:
        """From the broker, so it stays true while the consumer is idle, paused or stuck."""
        try:
            lag.by_partition = await group_lag(settings.kafka_bootstrap, settings.app_id, consumed_topics(settings))
            lag.oldest_waiting_ms = await oldest_waiting_ms(settings.kafka_bootstrap, lag.by_partition)
            lag.measured_at = time.time()
        except Exception as exc:  # the metric goes stale (see its timestamp); the worker goes on
            log.warning("measuring consumer lag failed: %s", exc)

    @app.page("/healthz")
    async def healthz(_web: Any, _request: Any) -> Response:
        """Liveness: the event loop answers."""
        return Response(body=b'{"alive":true}', content_type="application/json")

    @app.page("/readyz")
    async def readyz(_web: Any, _request: Any) -> Response:
        """Readiness: not while the directory is loading, tables recover or the sink fails."""
        waiting_for = [
            reason
            for reason, blocked in (
                ("account directory loading", not feed.ready.is_set()),
                ("tables recovering", app.rebalancing or not app.tables.actives_ready),
                ("ClickHouse sink failing", sink.failing),
            )
            if blocked
        ]
        body = orjson.dumps({"ready": not waiting_for, "waiting_for": waiting_for})
        return Response(body=body, status=503 if waiting_for else 200, content_type="application/json")

    @app.page("/abm/status")
    async def status(_web: Any, _request: Any) -> Response:
        body = {
            "stats": stats.as_dict(),
            "sink": {"rows_written": sink.stats.rows_written, "inserts": sink.stats.inserts, "failures": sink.stats.failures, "failing": sink.failing},
            "checkpoint": {"commits": checkpoint.commits, "last_commit_at": checkpoint.last_commit_at, "pending_events": checkpoint.pending_events},
        }
        return Response(body=orjson.dumps(body), content_type="application/json")

    return Pipeline(app, checkpoint, sink, stats)


def rocksdb_options() -> dict[str, int]:
    """Memory caps of the state store, per partition's RocksDB (Faust's defaults allow
    3 x 64 MiB of memtables and a 2 GiB block cache each); the account states in use
    are in memory already (streams.state). Loading a million accounts filled 16 MiB
    caches to 8 x 15 MiB; 16 MiB memtables cost ~70 MiB more than 4 MiB ones."""
    return {"write_buffer_size": 4 * 2**20, "max_write_buffer_number": 2, "block_cache_size": 4 * 2**20}


def _capped(part: bytes | None) -> bytes | None:
    """A dead letter's key or value, cut to what its topic takes (see streams.topics)."""
    return part[:DEAD_LETTER_PART_BYTES] if part is not None and len(part) > DEAD_LETTER_PART_BYTES else part


def _reason_headers(message: Any, reason: str, text: str) -> list[tuple[str, bytes]]:
    return [
        ("abm.reason", reason.encode()),
        ("abm.message", text.encode()),
        ("abm.topic", message.topic.encode()),
        ("abm.partition", str(message.partition).encode()),
        ("abm.offset", str(message.offset).encode()),
    ]
