"""The vertical slice end to end: real broker, real worker process, real ClickHouse engine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import random
import shutil
import time
from collections import Counter

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from processors.identity import account_partition
from processors.scoring import DAY_MS
from streams.rules import load_rules
from streams.simulator import encode, iter_events, produce_events
from schemas.events import EVENT_TYPES, TOPIC_BY_ACCOUNT, TOPIC_DEAD_LETTERS, TOPIC_STAGE_TRANSITIONS, TOPIC_UNRESOLVED
from deploy.local.kafka import free_port
from streams.lag import group_lag
from streams.staging import WATERMARK_METADATA
from tests.integration.support import (
    HeldStream,
    assert_store_exact, changelog_end_offsets, consume_all, drain_with_new_worker, isolated_settings, persisted_changelog_offsets, produce,
    query, start_worker, store_commands,
)

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
HALF_LIFE_MS = 30 * 24 * HOUR_MS
CONFIG, _ = load_rules(None, HALF_LIFE_MS, 2 * DAY_MS)


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def make(n: int, kind: str, account: str | None, contact: str, at: int, **extra) -> dict:
    event = {"event_id": f"e{n}", "type": kind, "occurred_at": iso(at), "source": "test", "contact_id": contact}
    if account:
        event["account_id"] = account
    event.update({"campaign_id": "camp-1"} if kind.startswith("email") else {})
    event.update({"url": "https://x.example/blog/1"} if kind in ("email_click", "page_view") else {})
    event.update({"content_id": "webinar-1"} if kind == "webinar_signup" else {})
    event.update(extra)
    return event


def expected_score(events: list[dict]) -> float:
    """score(t_last) = sum w_i * 2^(-(t_last - t_i)/H), computed independently of processors/."""
    times = [e["_ms"] for e in events]
    t_last = max(times)
    total = 0.0
    for e in events:
        weight = 0.0 if e.get("properties", {}).get("machine_open") else CONFIG.weights[e["type"]]
        total += weight * 2 ** (-(t_last - e["_ms"]) / HALF_LIFE_MS)
    return total


def test_known_events_give_exact_counts_scores_stages_and_dead_letters(kafka_bootstrap, tmp_path):
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
    t0 = int(time.time() * 1000) - 3 * 24 * HOUR_MS
    journeys = {
        "acct-a": [
            ("email_open", "a1", 0, {}),
            ("email_click", "a1", 1, {}),
            ("page_view", "a2", 2, {"url": "https://x.example/pricing"}),
            ("webinar_signup", "a2", 3, {}),
            ("email_click", "a2", 4, {}),
            ("email_open", "a1", 5, {"properties": {"machine_open": True}}),
        ],
        "acct-b": [("page_view", "b1", h, {}) for h in (1, 2, 3)],
        "acct-c": [("email_open", "c1", 7, {})],
    }
    # Raw topics are consumed side by side, so their relative order is not fixed: acct-a's
    # journey is produced in phases, each drained before the next, to pin its transitions.
    # Phase 2 stays below the consideration score; e5 in phase 3 crosses it (with intent).
    phases: list[list] = [[], [], []]
    by_account: dict[str, list[dict]] = {}
    n = 0
    for account, steps in journeys.items():
        for kind, contact, hour, extra in steps:
            n += 1
            event = make(n, kind, account, contact, t0 + hour * HOUR_MS, **extra)
            phase = (0 if n == 1 else 1 if n <= 4 else 2) if account == "acct-a" else 0
            phases[phase].append((settings.topic(EVENT_TYPES[kind].topic), account.encode(), orjson.dumps(event)))
            by_account.setdefault(account, []).append({**event, "_ms": t0 + hour * HOUR_MS})
    page_views = settings.topic(EVENT_TYPES["page_view"].topic)
    phases[0] += [
        (page_views, None, b"not json"),
        (page_views, None, orjson.dumps({"type": "page_view", "occurred_at": iso(t0), "source": "web", "url": "u"})),
        (page_views, None, orjson.dumps(make(99, "page_view", None, "anonymous", t0))),
    ]

    worker = start_worker(settings)
    try:
        for records in phases:
            asyncio.run(produce(kafka_bootstrap, records))
            worker.wait_drained(timeout_s=90)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    # the table store says it holds every changelog record written: a restart reads none again
    changelog_ends = changelog_end_offsets(settings)
    assert changelog_ends and persisted_changelog_offsets(settings) == {p: end - 1 for p, end in changelog_ends.items()}

    counts = {r["account_id"]: r["n"] for r in query(settings, "SELECT account_id, count() AS n FROM events GROUP BY account_id")}
    assert counts == {"acct-a": 6, "acct-b": 3, "acct-c": 1}
    scores = {r["account_id"]: r for r in query(settings, "SELECT * FROM account_scores FINAL")}
    assert set(scores) == set(journeys)
    for account, events in by_account.items():
        row = scores[account]
        assert row["events_total"] == len(events)
        assert math.isclose(row["engagement_score"], expected_score(events), rel_tol=1e-9), account
    assert (scores["acct-a"]["email_opens"], scores["acct-a"]["email_clicks"]) == (2, 2)
    assert scores["acct-a"]["engaged_contacts_90d"] == 2
    assert {a: r["stage"] for a, r in scores.items()} == {"acct-a": "decision", "acct-b": "awareness", "acct-c": "awareness"}
    a_counts = {"email_open": 2, "email_click": 2, "page_view": 1, "webinar_signup": 1}
    assert (scores["acct-a"]["events_7d"], scores["acct-a"]["events_90d"], scores["acct-a"]["engaged_contacts_30d"]) == (a_counts, a_counts, 2)
    assert scores["acct-a"]["stage_reason"] == "high-intent signal within 30 days"
    transitions = query(settings, "SELECT from_stage, to_stage, event_id, reason FROM stage_transitions WHERE account_id = 'acct-a' ORDER BY at")
    assert [(t["from_stage"], t["to_stage"], t["event_id"], t["reason"]) for t in transitions] == [
        ("target", "awareness", "e1", "engaged within 90 days"),
        ("awareness", "decision", "e5", "high-intent signal within 30 days"),
    ]
    published = asyncio.run(consume_all(kafka_bootstrap, settings.topic(TOPIC_STAGE_TRANSITIONS), 4))
    assert sorted((m.key.decode(), orjson.loads(m.value)["to_stage"]) for m in published) == [
        ("acct-a", "awareness"), ("acct-a", "decision"), ("acct-b", "awareness"), ("acct-c", "awareness"),
    ]

    dead = asyncio.run(consume_all(kafka_bootstrap, settings.topic(TOPIC_DEAD_LETTERS), 2))
    reasons = sorted(dict(m.headers)["abm.reason"].decode() for m in dead)
    assert reasons == ["missing_field", "not_json"]
    assert {m.value for m in dead} >= {b"not json"}
    assert all(dict(m.headers)["abm.topic"].decode() == page_views for m in dead)
    unresolved = asyncio.run(consume_all(kafka_bootstrap, settings.topic(TOPIC_UNRESOLVED), 1))
    assert [orjson.loads(m.value)["event_id"] for m in unresolved] == ["e99"]


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "kill-9"])
def test_restart_mid_stream_keeps_every_event_once(kafka_bootstrap, tmp_path, crash):
    """A worker stopped mid-stream (gracefully, or killed with no final checkpoint) and
    started again: its state and offsets carry over, and what the killed worker did
    after its last checkpoint is neither lost nor counted twice."""
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
    total = 30_000
    worker = start_worker(settings, "first")
    try:
        counts = asyncio.run(
            produce_events(settings, accounts=150, contacts_per_account=4, rate=None, duration_s=None, count=total, seed=3)
        )
        deadline = time.monotonic() + 60
        while (worker.status() or {}).get("stats", {}).get("raw_in", 0) < 2_000:  # ingest in flight
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.05)
    finally:
        if crash:
            worker.kill()
        else:
            assert worker.stop() == 0, worker.log_tail()
    assert worker.lag() > 0, "the first worker finished everything; the test proves nothing"

    drain_with_new_worker(settings, "second", timeout_s=120)
    assert sum(counts.values()) == total
    assert_store_exact(settings, counts)


def test_a_worker_without_its_table_store_restores_every_account_from_the_changelog(kafka_bootstrap, tmp_path):
    """As a worker that takes partitions over: killed mid-stream, its table store removed,
    started again. Each account's state was written several times (older versions still
    in the changelog): the newest of each is restored, and every total is exact."""
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
    counts: Counter[str] = Counter()
    worker = start_worker(settings, "first")
    try:
        for seed in (31, 32):  # each drained: every account's state written after each
            counts.update(asyncio.run(produce_events(settings, accounts=150, contacts_per_account=4, rate=None, duration_s=None, count=10_000, seed=seed)))
            worker.wait_drained(timeout_s=120)
        counts.update(asyncio.run(produce_events(settings, accounts=150, contacts_per_account=4, rate=None, duration_s=None, count=20_000, seed=33)))
        deadline = time.monotonic() + 60
        while (worker.status() or {}).get("stats", {}).get("applied", 0) < 22_000:  # the third batch in flight
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.05)
    finally:
        worker.kill()
    assert worker.lag() > 0, "the first worker finished everything; the test proves nothing"
    shutil.rmtree(settings.faust_dir)

    drain_with_new_worker(settings, "second", timeout_s=120)
    assert sum(counts.values()) == 40_000
    assert_store_exact(settings, counts)


def test_views_without_the_rows_of_a_killed_insert_are_rebuilt_at_the_next_start(kafka_bootstrap, tmp_path):
    """An insert feeds events, then its materialized views: a worker killed in between
    leaves events stored past the committed offsets and the views without them (a whole
    checkpoint's events were missing from campaign_facts after a kill -9 in a CI run).
    That state is made here by hand, for half the partitions: their offsets moved back,
    their accounts' derived rows deleted. The next worker does not insert those events
    again and rebuilds the derived rows: every table is exact."""
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
    worker = start_worker(settings, "first")
    try:
        counts = Counter(asyncio.run(produce_events(settings, accounts=40, contacts_per_account=3, rate=None, duration_s=None, count=3_000, seed=71)))
        worker.wait_drained(timeout_s=120)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    by_account = settings.topic(TOPIC_BY_ACCOUNT)
    committed = sorted((lag for lag in asyncio.run(group_lag(kafka_bootstrap, settings.app_id, [by_account])) if lag.committed > 0), key=lambda lag: lag.partition)
    rewound = committed[: len(committed) // 2]
    assert rewound
    for lag in rewound:
        asyncio.run(commit_by_hand(settings, lag.partition, OffsetAndMetadata(0, lag.metadata)))
    partitions = ", ".join(str(lag.partition) for lag in rewound)
    accounts = f"account_id IN (SELECT account_id FROM events WHERE src_partition IN ({partitions}))"
    store_commands(settings, *(f"DELETE FROM {table} WHERE {accounts}" for table in ("campaign_facts", "account_daily_engagement")))
    [missing] = query(settings, f"SELECT count() AS n FROM events WHERE {accounts} AND type IN ('email_open', 'email_click')")
    assert missing["n"] > 0 and query(settings, f"SELECT count() AS n FROM campaign_facts WHERE {accounts}") == [{"n": 0}]

    drain_with_new_worker(settings, "second")
    assert sum(counts.values()) == 3_000
    assert_store_exact(settings, counts)
    assert "rebuilt their accounts' rows of account_daily_engagement, campaign_facts" in (settings.data_dir / "logs" / "second.log").read_text(errors="replace")


def test_rebalance_hands_partitions_over_exactly(kafka_bootstrap, tmp_path):
    """A second worker joins mid-stream: the first commits what it did before its
    partitions move, so across both workers' stores every event lands exactly once."""
    first_settings = isolated_settings(kafka_bootstrap, tmp_path / "first")
    # Same topics and group, its own embedded store (one chDB directory per process).
    second_settings = first_settings.model_copy(update={"data_dir": tmp_path / "second", "web_port": free_port()})
    total = 30_000
    held = HeldStream(after=total // 3)  # the rest flows once the second worker has partitions
    first = start_worker(first_settings, "first")
    second = None
    try:
        # Paced at 2,500 events/s, so events are flowing when the group rebalances.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            produced = pool.submit(
                asyncio.run,
                produce_events(
                    first_settings, accounts=150, contacts_per_account=4, rate=2_500, duration_s=None, count=total, seed=5, on_progress=held
                ),
            )
            deadline = time.monotonic() + 60
            while (first.status() or {}).get("stats", {}).get("raw_in", 0) < 2_000:  # ingest in flight
                assert time.monotonic() < deadline, first.log_tail()
                time.sleep(0.05)
            second = start_worker(second_settings, "second")
            held.release_when_ready([second])
            counts = produced.result(timeout=120)
        second.wait_drained(timeout_s=180)
        handed_over = second.status()["stats"]
        assert handed_over["raw_in"] > 0 and handed_over["applied"] > 0, "no partitions moved; the test proves nothing"
    finally:
        if second is not None:
            assert second.stop() == 0, second.log_tail()
        assert first.stop() == 0, first.log_tail()

    stores = [first_settings, second_settings]
    rows = [r for s in stores for r in query(s, "SELECT event_id, type FROM events")]
    assert len(rows) == total and len({r["event_id"] for r in rows}) == total
    by_type: dict[str, int] = {}
    for row in rows:
        by_type[row["type"]] = by_type.get(row["type"], 0) + 1
    assert by_type == {kind: n for kind, n in counts.items() if n}
    # An account's newest row (highest version) may sit in either store.
    latest: dict[str, dict] = {}
    for s in stores:
        for row in query(s, "SELECT account_id, version, events_total, email_opens FROM account_scores FINAL"):
            if row["account_id"] not in latest or row["version"] > latest[row["account_id"]]["version"]:
                latest[row["account_id"]] = row
    assert sum(r["events_total"] for r in latest.values()) == total
    assert sum(r["email_opens"] for r in latest.values()) == counts["email_open"]


async def commit_by_hand(settings, partition: int, position: OffsetAndMetadata) -> None:
    """Commits a by-account partition's position for the (empty) group, as its workers would."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic(TOPIC_BY_ACCOUNT), partition)
        consumer.assign([tp])
        await consumer.commit({tp: position})
    finally:
        await consumer.stop()


def watermarks(worker) -> dict[int, int]:
    """The worker's score partitions' watermarks (ms), from its /metrics."""
    families = text_string_to_metric_families(worker.metrics())
    return {int(s.labels["partition"]): round(s.value * 1000) for f in families if f.name == "abm_watermark_timestamp_seconds" for s in f.samples}


def test_a_restarted_worker_resumes_from_the_watermark_committed_with_its_offsets(kafka_bootstrap, tmp_path):
    """Each by-account partition's watermark is committed with its offset, and a worker
    that starts takes it from there, not from its stored states (which a crash can leave
    ahead of the offsets). An event held back by the allowed lateness shows which one
    the worker used: the committed watermark is moved past it by hand, the states are not."""
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
    lateness = {"ABM_WATERMARK_LATENESS_MINUTES": str(24 * 60)}
    now_ms = int(time.time() * 1000)
    at = now_ms - 10 * 24 * HOUR_MS
    partition = account_partition("acct-held", settings.topic_partitions)
    by_account = settings.topic(TOPIC_BY_ACCOUNT)

    worker = start_worker(settings, "first", lateness)
    try:
        asyncio.run(produce(kafka_bootstrap, [(settings.topic(EVENT_TYPES["page_view"].topic), b"acct-held", orjson.dumps(make(1, "page_view", "acct-held", "c1", at)))]))
        worker.wait_drained(timeout_s=60)
        assert worker.status()["stats"]["transitions"] == 0  # held: the watermark is a day behind it
        assert watermarks(worker) == {partition: at - DAY_MS}
    finally:
        assert worker.stop() == 0, worker.log_tail()
    [committed] = [lag for lag in asyncio.run(group_lag(kafka_bootstrap, settings.app_id, [by_account])) if lag.committed >= 0]
    assert (committed.partition, committed.committed, committed.metadata) == (partition, 1, f"{WATERMARK_METADATA}{at}")

    asyncio.run(commit_by_hand(settings, partition, OffsetAndMetadata(1, f"{WATERMARK_METADATA}{now_ms}")))
    worker = start_worker(settings, "second", lateness)
    try:
        deadline = time.monotonic() + 60
        while (worker.status() or {}).get("stats", {}).get("transitions", 0) < 1:  # settled at start, with no new event
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.1)
        assert watermarks(worker) == {partition: now_ms - DAY_MS}
    finally:
        assert worker.stop() == 0, worker.log_tail()
    transitions = query(settings, "SELECT account_id, from_stage, to_stage, toUnixTimestamp64Milli(at) AS at_ms FROM stage_transitions FINAL")
    assert transitions == [{"account_id": "acct-held", "from_stage": "target", "to_stage": "awareness", "at_ms": at}]
    [row] = query(settings, "SELECT account_id, events_total, stage FROM account_scores FINAL")
    assert row == {"account_id": "acct-held", "events_total": 1, "stage": "awareness"}


def test_every_event_delivered_three_times_counts_once(kafka_bootstrap, tmp_path):
    """Sources retry: the same (source, event id) arriving three times, in different
    orders and batches, is stored, counted and scored once."""
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
    # a day of history: retries come within the de-duplication horizon
    events = list(iter_events(seed=11, accounts=40, contacts_per_account=3, count=3_000, expected_events=3_000, history_days=1))
    records = [(settings.topic(EVENT_TYPES[e["type"]].topic), e["account_id"].encode(), encode(e)) for e in events]
    rng = random.Random(11)
    deliveries = [records, rng.sample(records, len(records)), rng.sample(records, len(records))]
    worker = start_worker(settings)
    try:
        for delivery in deliveries:
            asyncio.run(produce(kafka_bootstrap, delivery))
        worker.wait_drained(timeout_s=120)
        stats = worker.status()["stats"]
    finally:
        assert worker.stop() == 0, worker.log_tail()

    assert (stats["applied"], stats["duplicates"]) == (3_000, 6_000)
    [stored] = query(settings, "SELECT count() AS n, uniqExact(event_id) AS u FROM events")
    assert (stored["n"], stored["u"]) == (3_000, 3_000)
    by_account: dict[str, int] = {}
    for e in events:
        by_account[e["account_id"]] = by_account.get(e["account_id"], 0) + 1
    scored = query(settings, "SELECT account_id, events_total FROM account_scores FINAL")
    assert {r["account_id"]: r["events_total"] for r in scored} == by_account


# Event time of the journeys: 200 days, ending long ago, so that ticks "now" move every
# partition's watermark past every fall-back.
JOURNEY_DAYS = 200
LATENESS_DAYS = 300  # more than the journeys' span: nothing is settled before the ticks
JOURNEY_EXTRAS = {  # event types of the journeys, with the fields each needs
    "page_view": {},
    "email_open": {},
    "email_click": {},
    "webinar_signup": {},
    "content_downloaded": {"content_id": "report-1"},
    "form_submitted": {"properties": {"form_id": "newsletter"}},
    "meeting_booked": {"properties": {"meeting_type": "demo"}},
}


def journeys(settings, start_ms: int, accounts: int, seed: int) -> list[tuple[str, bytes, bytes]]:
    """Accounts whose events spread over several raw topics (so they reach the account in
    a different order in every run): a few contacts' page views (some of the pricing
    page), email opens and clicks, webinar signups, downloads, forms and demos; or
    opportunities opened, won or lost."""
    rng = random.Random(seed)
    timed = []
    n = 0
    for a in range(accounts):
        account = f"acct-{a:03d}"
        if a % 10 == 9:
            opened = rng.randrange(JOURNEY_DAYS // 2) * 24 * HOUR_MS
            outcome = rng.choice([(True, True), (True, False), (False, False)])
            steps = [(opened, "open", (False, False)), (opened + rng.randrange(60) * 24 * HOUR_MS, "close", outcome)]
            for at, stage, (closed, won) in steps:
                n += 1
                properties = {"opportunity_id": f"opp-{a}", "stage": stage, "is_closed": closed, "is_won": won}
                timed.append((start_ms + at, account, make(n, "opportunity_stage_changed", account, "", start_ms + at, properties=properties)))
            continue
        for _ in range(rng.randrange(40, 120)):
            n += 1
            at = start_ms + rng.randrange(JOURNEY_DAYS * 24 * HOUR_MS)
            contact = f"{account}-c{rng.randrange(4)}"
            kind = rng.choices(list(JOURNEY_EXTRAS), weights=[40, 20, 20, 5, 5, 5, 2])[0]
            extra = dict(JOURNEY_EXTRAS[kind])
            if kind == "page_view" and rng.random() < 0.05:
                extra["url"] = "https://x.example/pricing"
            timed.append((at, account, make(n, kind, account, contact, at, **extra)))
    timed.sort(key=lambda item: item[0])
    return [(settings.topic(EVENT_TYPES[e["type"]].topic), account.encode(), orjson.dumps(e)) for _, account, e in timed]


def ticks(settings, at_ms: int) -> list[tuple[str, bytes, bytes]]:
    """One page view now for an account of every by-account partition: moves every watermark."""
    owners: dict[int, str] = {}
    for i in itertools.count():
        owners.setdefault(account_partition(f"tick-{i}", settings.topic_partitions), f"tick-{i}")
        if len(owners) == settings.topic_partitions:
            break
    return [(settings.topic(EVENT_TYPES["page_view"].topic), a.encode(), orjson.dumps(make(10**6 + p, "page_view", a, "t", at_ms))) for p, a in owners.items()]


def outcome(settings) -> tuple[dict, set, set]:
    scores = {
        r["account_id"]: r
        for r in query(
            settings,
            "SELECT account_id, engagement_score, score_at, stage, stage_since, stage_reason, events_total, "
            "engaged_contacts_30d, engaged_contacts_90d, events_90d FROM account_scores FINAL",
        )
    }
    stored = query(settings, "SELECT account_id, from_stage, to_stage, toUnixTimestamp64Milli(at) AS at_ms, event_id, reason FROM stage_transitions FINAL")
    published = asyncio.run(consume_all(settings.kafka_bootstrap, settings.topic(TOPIC_STAGE_TRANSITIONS), len(stored)))
    keys = ("account_id", "from_stage", "to_stage", "at_ms", "event_id", "reason")
    return scores, {tuple(r.values()) for r in stored}, {tuple(orjson.loads(m.value)[k] for k in keys) for m in published}


def test_kill_9_mid_stream_gives_the_scores_stages_and_transitions_of_an_uninterrupted_run(kafka_bootstrap, tmp_path):
    env = {"ABM_WATERMARK_LATENESS_MINUTES": str(LATENESS_DAYS * 24 * 60)}
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - (JOURNEY_DAYS + LATENESS_DAYS + 100) * 24 * HOUR_MS
    outcomes = []
    for crash in (False, True):
        settings = isolated_settings(kafka_bootstrap, tmp_path / ("crashed" if crash else "uninterrupted"))
        records = journeys(settings, start_ms, accounts=250, seed=4)
        worker = start_worker(settings, "first", env)
        try:
            asyncio.run(produce(kafka_bootstrap, records))
            if crash:
                deadline = time.monotonic() + 60
                while (worker.status() or {}).get("stats", {}).get("applied", 0) < 2_000:  # scoring in flight
                    assert time.monotonic() < deadline, worker.log_tail()
                    time.sleep(0.05)
                worker.kill()
                assert worker.lag() > 0, "the first worker finished everything; the test proves nothing"
                worker = start_worker(settings, "second", env)
            worker.wait_drained(timeout_s=120)
            asyncio.run(produce(kafka_bootstrap, ticks(settings, now_ms)))
            worker.wait_drained(timeout_s=60)
        finally:
            assert worker.stop() == 0, worker.log_tail()
        outcomes.append(outcome(settings))

    (scores, stored, published), (crashed_scores, crashed_stored, crashed_published) = outcomes
    assert len(scores) == 250  # the ticks themselves are held: the watermark has not passed them
    assert {a: r["stage"] for a, r in scores.items()} == {a: r["stage"] for a, r in crashed_scores.items()}
    for account, row in scores.items():
        other = crashed_scores[account]
        assert math.isclose(row.pop("engagement_score"), other.pop("engagement_score"), rel_tol=1e-9), account
        assert row == other, account
    assert stored == crashed_stored
    assert published == stored and crashed_published == stored
    moves = {(t[1], t[2]) for t in stored}
    # the journeys exercise every kind of move, fall-backs at their own times included
    assert {("target", "awareness"), ("awareness", "consideration"), ("consideration", "decision"),
            ("decision", "customer"), ("decision", "awareness"), ("awareness", "target")} <= moves
    assert any(t[4] == "" and t[1] == "decision" for t in stored)
