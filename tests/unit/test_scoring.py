import dataclasses
from collections import Counter
import itertools
import math
import random
import re
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from processors.accounts import fold_events, settle
from processors.dedup import DedupPolicy, RecentIds
from processors.identity import AccountDirectory, account_partition
from processors.routing import EVENTS_PER_MESSAGE, forwarded_events, forwarded_messages, route_batch
from processors.rules import merged, parse_rules
from processors.scoring import (
    DAY_MS, RETENTION_DAYS, SEGMENT_MAX_BYTES, AccountState, apply_event, as_held, engaged_contacts, held_events_of, rolling_counts, score_at,
    seniority_of, zstd,
)
from processors.stages import STAGE_RANK, fall_back_until
from processors.validation import parse_timestamp_ms
from processors.watermarks import FallbackSchedule, fold_messages
from schemas.events import EVENT_TYPES
from streams.rows import account_rows
from streams.rules import DEFAULT_RULES, load_rules
from streams.settings import Settings
from streams.simulator import iter_events
from streams.topics import STATE_MAX_BYTES

CONFIG, RULES = load_rules(None, 30 * DAY_MS, 2 * DAY_MS)
DEDUP = DedupPolicy()
MAX_HELD = Settings.model_fields["max_held_events_per_account"].default
T0 = 1_763_942_400_000  # 2025-11-24T00:00Z, the start of a UTC day
HOUR_MS = 3_600_000
RAW_OFFSETS = itertools.count()  # every event its own raw message
README = Path(__file__).resolve().parents[2] / "README.md"


def ev(kind, at, contact="c1", **extra):
    base = {"event_id": f"{kind}-{at}-{contact}-{next(RAW_OFFSETS)}", "source": "test", "_origin": ("raw", 0, next(RAW_OFFSETS)), "type": kind, "occurred_at_ms": at, "account_id": "a1", "contact_id": contact}
    base.update(extra)
    return base


def opportunity(at, opportunity_id="o1", closed=False, won=False):
    properties = {"opportunity_id": opportunity_id, "stage": "x", "is_closed": closed, "is_won": won}
    return ev("opportunity_stage_changed", at, contact=None, properties=properties)


def fold(events, state, config=CONFIG, rules=RULES):
    positioned = [((next(RAW_OFFSETS), 0), e) for e in events]
    return fold_events(positioned, lambda _: state, config, rules, DEDUP)


def test_score_decays_by_half_each_half_life():
    state = AccountState("a1")
    apply_event(state, ev("email_click", T0), CONFIG)
    assert state.score == 3.0
    assert math.isclose(score_at(state, T0 + 30 * DAY_MS, CONFIG), 1.5)
    apply_event(state, ev("page_view", T0 + 30 * DAY_MS), CONFIG)
    assert math.isclose(state.score, 3.5)


def test_machine_opens_weigh_nothing_and_do_not_make_contacts_engaged():
    state = AccountState("a1")
    apply_event(state, ev("email_open", T0, properties={"machine_open": True}), CONFIG)
    assert state.score == 0.0 and state.contacts == {} and state.counts == {"email_open": 1} and state.last_engaged_ms == 0


def test_every_event_type_has_a_weight_and_the_readme_documents_them():
    assert set(CONFIG.weights) == set(EVENT_TYPES)
    documented = dict(re.findall(r"^\| `([a-z_]+)` \| ([0-9.]+) \|", README.read_text(), flags=re.MULTILINE))
    assert {kind: float(w) for kind, w in documented.items() if kind in EVENT_TYPES} == CONFIG.weights


def test_a_contact_counts_three_opens_a_day_and_a_late_earlier_one_takes_the_latest_place():
    state = AccountState("a1")
    for hour in (1, 2, 3, 4):
        apply_event(state, ev("email_open", T0 + hour * HOUR_MS), CONFIG)
    apply_event(state, ev("email_open", T0 + 5 * HOUR_MS, contact="c2"), CONFIG)  # another contact: its own cap
    apply_event(state, ev("email_open", T0 + DAY_MS, contact="c1"), CONFIG)  # the next day: counts again
    h = CONFIG.half_life_ms
    at = T0 + DAY_MS
    expected = sum(2 ** (-(at - t) / h) for t in (T0 + HOUR_MS, T0 + 2 * HOUR_MS, T0 + 3 * HOUR_MS, T0 + 5 * HOUR_MS, at))
    assert math.isclose(state.score, expected, rel_tol=1e-12)
    assert state.counts["email_open"] == 6  # every open is counted; only the score is capped
    apply_event(state, ev("email_open", T0), CONFIG)  # late: in order it would have counted, the 03:00 one not
    expected += 2 ** (-(at - T0) / h) - 2 ** (-(at - T0 - 3 * HOUR_MS) / h)
    assert math.isclose(state.score, expected, rel_tol=1e-12)


def test_seniority_of_titles_and_its_multiplier():
    titles = {"Chief Revenue Officer": "c_level", "CTO": "c_level", "Vice President, Sales": "vp", "SVP Marketing": "vp",
              "Head of Growth": "director", "Director of IT": "director", "Engineering Manager": "manager",
              "Team Lead": "manager", "Software Engineer": "other"}
    assert {title: seniority_of(title) for title in titles} == titles
    state = AccountState("a1")
    apply_event(state, ev("email_click", T0, _seniority="vp"), CONFIG)
    assert math.isclose(state.score, 3.0 * 1.6)


def test_routing_gives_events_the_seniority_of_their_contacts_title():
    directory = AccountDirectory()
    directory.learn_contact("c9", "ceo@acme.com", "a1", "CEO")
    directory.learn_contact("c9", None, "a1")  # a learned contact without a title keeps it
    raw = orjson.dumps({"event_id": "1", "type": "page_view", "occurred_at": T0, "source": "web", "url": "u", "contact_id": "c9"})
    routed = route_batch([raw], [("raw", 0, 0)], T0, 8, directory)
    [event] = forwarded(routed.by_partition)
    assert (event["account_id"], event["_seniority"]) == ("a1", "c_level")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3_000), max_size=1_200), st.integers(min_value=2, max_value=40))
def test_forwarded_messages_keep_every_event_in_order_within_their_limits(blob_sizes, max_events):
    events = [{"event_id": str(n), "blob": "x" * size} for n, size in enumerate(blob_sizes)]
    max_bytes = 4_096
    messages = list(forwarded_messages(events, max_events, max_bytes))
    chunks = [orjson.loads(message) for message in messages]
    assert [e for chunk in chunks for e in chunk] == events
    for message, chunk in zip(messages, chunks):
        assert 1 <= len(chunk) <= max_events
        assert len(message) <= max_bytes or len(chunk) == 1  # a larger event goes alone
    # small events are not split below the count limit
    if all(size < 20 for size in blob_sizes):
        assert len(messages) == -(-len(events) // max_events)
    # the score agent's side: each event back with its position in its message
    positioned = [item for offset, message in enumerate(messages, start=100) for item in forwarded_events(3, offset, message)]
    expected = [(offset, index) for offset, chunk in enumerate(chunks, start=100) for index in range(len(chunk))]
    assert [position for position, _ in positioned] == expected
    assert [event.pop("_src") for _, event in positioned] == [(3, *position) for position in expected]
    assert [event for _, event in positioned] == events


def test_forwarded_messages_default_to_500_events_and_cut_a_large_chunk_in_halves():
    small = [{"event_id": str(n)} for n in range(1_234)]
    assert [len(orjson.loads(m)) for m in forwarded_messages(small)] == [EVENTS_PER_MESSAGE, EVENTS_PER_MESSAGE, 234]
    large = [{"event_id": str(n), "blob": "x" * 100_000} for n in range(20)]
    # 20 events of ~100 kB: halved twice to chunks of 5 (~500 kB each) under 512 KiB
    assert [len(orjson.loads(m)) for m in forwarded_messages(large)] == [5, 5, 5, 5]



def test_rolling_counts_and_breadth_over_event_time_with_bounded_memory():
    state = AccountState("a1")
    for day in range(200):
        apply_event(state, ev("page_view", T0 + day * DAY_MS, contact=f"c{day}"), CONFIG)
    apply_event(state, ev("email_open", T0 + 195 * DAY_MS, contact="c1"), CONFIG)
    at = T0 + 199 * DAY_MS
    week, month, quarter = ({"page_view": n, "email_open": 1} for n in (7, 30, 90))
    assert rolling_counts(state, at, (7, 30, 90)) == [week, month, quarter]
    assert rolling_counts(state, at, (90, 7)) == [quarter, week]
    for days_back in (0, 3, 50, 80, 120):  # one pass gives what a pass per window gives
        then = at - days_back * DAY_MS
        assert rolling_counts(state, then, (7, 30, 90)) == [_counts_within(state, then, width) for width in (7, 30, 90)]
    assert engaged_contacts(state, at, 30 * DAY_MS) == 32  # days 169..199 inclusive, and c1 (day 195)
    assert engaged_contacts(state, at, 90 * DAY_MS) == 92
    assert len(state.daily) <= RETENTION_DAYS and len(state.contacts) <= RETENTION_DAYS + 2


def _counts_within(state: AccountState, at_ms: int, days: int) -> dict[str, int]:
    today, totals = at_ms // DAY_MS, Counter()
    for day, counts in state.daily.items():
        if today - days < day <= today:
            totals.update(counts)
    return dict(totals)


EVENT_KINDS = ["email_open", "email_click", "page_view", "webinar_signup", "form_submitted", "meeting_booked", "email_sent"]


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.sampled_from(EVENT_KINDS), st.integers(0, 20 * DAY_MS), st.sampled_from(["c1", "c2", "c3"]),
                       st.sampled_from([None, "vp", "other"])), min_size=1, max_size=60),
    st.randoms(),
)
def test_score_is_order_independent_with_caps_and_seniority(events, rnd):
    config = dataclasses.replace(CONFIG, cap_memory_ms=30 * DAY_MS)  # remembers every capped day here

    def total(seq):
        state = AccountState("a1")
        for kind, at, contact, seniority in seq:
            apply_event(state, ev(kind, T0 + at, contact, _seniority=seniority), config)
        return score_at(state, T0 + 20 * DAY_MS, config)

    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert math.isclose(total(events), total(shuffled), rel_tol=1e-9, abs_tol=1e-9)


@given(st.lists(st.tuples(st.sampled_from(EVENT_KINDS), st.integers(0, 20 * DAY_MS)), min_size=1, max_size=20),
       st.integers(0, 400 * DAY_MS), st.integers(0, 400 * DAY_MS))
def test_score_only_decays_without_new_events(events, later, much_later):
    state = AccountState("a1")
    for kind, at in events:
        apply_event(state, ev(kind, T0 + at), CONFIG)
    start = state.score_at_ms
    a, b = sorted((later, much_later))
    assert score_at(state, start + b, CONFIG) <= score_at(state, start + a, CONFIG) <= state.score


JOURNEY_KINDS = ["email_click", "page_view", "webinar_signup", "meeting_booked", "email_open"]
journey_events = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(JOURNEY_KINDS), st.integers(0, 200 * DAY_MS), st.sampled_from(["c1", "c2", "c3"])),
        st.tuples(st.just("opportunity"), st.integers(0, 200 * DAY_MS), st.sampled_from(["open", "lost", "won"])),
    ),
    max_size=40,
)


def journey_event(item):
    kind, at, detail = item
    if kind == "opportunity":
        return opportunity(T0 + at, closed=detail != "open", won=detail == "won")
    return ev(kind, T0 + at, detail, url="https://x/pricing" if at % 3 == 0 else "https://x/blog")


@settings(max_examples=300)
@given(journey_events)
def test_stage_invariants_and_no_fall_back_within_the_dwell_time(items):
    events = [journey_event(item) for item in items]
    state = AccountState("a1")
    transitions = fold(events, state).transitions + fall_back_until(state, T0 + 400 * DAY_MS, RULES, CONFIG)
    entered = {"target": 0}
    for t in transitions:
        assert entered[t.from_stage] <= t.at_ms
        if STAGE_RANK[t.to_stage] < STAGE_RANK[t.from_stage]:
            assert t.at_ms - entered[t.from_stage] >= RULES.dwell_ms  # no flapping
            assert t.from_stage != "customer"  # a customer stays one
        entered[t.to_stage] = t.at_ms
        before = [e for e in events if e["occurred_at_ms"] <= t.at_ms]
        if t.to_stage == "customer":
            assert any(e["type"] == "opportunity_stage_changed" and e["properties"]["is_won"] for e in before)
        if t.to_stage == "decision":
            assert any(
                e["type"] == "opportunity_stage_changed"
                or (e["type"] == "meeting_booked" or "/pricing" in e.get("url", "")) and t.at_ms - e["occurred_at_ms"] <= RULES.decision_intent_window_ms
                for e in before
            )
    assert [t.from_stage for t in transitions[1:]] == [t.to_stage for t in transitions[:-1]]


@settings(max_examples=100)
@given(journey_events, st.randoms())
def test_fall_backs_are_the_same_whenever_the_watermark_applies_them(items, rnd):
    """Applying fall-backs at every event or only at the end changes nothing."""
    events = sorted((journey_event(item) for item in items), key=lambda e: e["occurred_at_ms"])
    end = T0 + 400 * DAY_MS
    eager, lazy = AccountState("a1"), AccountState("a1")
    eager_transitions = []
    for event in events:
        eager_transitions += fall_back_until(eager, event["occurred_at_ms"] - rnd.randint(0, DAY_MS), RULES, CONFIG)
        eager_transitions += fold([event], eager).transitions
    eager_transitions += fall_back_until(eager, end, RULES, CONFIG)
    lazy_transitions = fold(events, lazy).transitions + fall_back_until(lazy, end, RULES, CONFIG)
    assert eager_transitions == lazy_transitions


def test_journey_with_hand_computed_scores_and_stages():
    """Two contacts engage, one books a demo, interest fades, then the deal is won."""
    state = AccountState("a1")
    d = DAY_MS
    first = fold(
        [
            ev("email_click", T0, "c1"),  # 3
            ev("page_view", T0 + d, "c2", url="https://x/blog"),  # 2
            ev("webinar_signup", T0 + 2 * d, "c2"),  # 8
            ev("content_downloaded", T0 + 3 * d, "c1"),  # 6
        ],
        state,
    )
    h = 30.0
    score_day3 = 3 * 2 ** (-3 / h) + 2 * 2 ** (-2 / h) + 8 * 2 ** (-1 / h) + 6
    assert math.isclose(state.score, score_day3, rel_tol=1e-12)  # 18.70...: considered
    assert [(t.from_stage, t.to_stage, t.at_ms) for t in first.transitions] == [
        ("target", "awareness", T0),
        ("awareness", "consideration", T0 + 3 * d),
    ]
    second = fold([ev("meeting_booked", T0 + 4 * d, "c1", properties={"meeting_type": "demo"})], state)
    [decision] = second.transitions
    assert (decision.to_stage, decision.reason) == ("decision", "high-intent signal within 30 days")
    assert math.isclose(decision.score, score_day3 * 2 ** (-1 / h) + 25, rel_tol=1e-12)
    # Without events: the intent lapses after 30 days; the score (~42.6 at day 4) stays
    # over 15 until day 4 + 30 * log2(42.6 / 15) ~ day 49; the contacts after day 91
    # (c1's last engagement, day 4 + 90); awareness after day 94.
    lapses = fall_back_until(state, T0 + 200 * d, RULES, CONFIG)
    assert [(t.from_stage, t.to_stage) for t in lapses] == [("decision", "consideration"), ("consideration", "awareness"), ("awareness", "target")]
    assert lapses[0].at_ms == T0 + 34 * d + 1 and lapses[2].at_ms == T0 + 94 * d + 1
    score_day4 = score_day3 * 2 ** (-1 / h) + 25
    assert lapses[1].at_ms == math.floor(T0 + 4 * d + h * d * math.log2(score_day4 / 15)) + 1
    assert lapses[2].reason == "awareness lapsed; no engagement within 90 days"
    won = fold([opportunity(T0 + 201 * d, closed=True, won=True)], state)
    assert [(t.from_stage, t.to_stage, t.reason) for t in won.transitions] == [("target", "customer", "closed-won opportunity")]
    assert state.fallback_at_ms == 0


def test_an_open_opportunity_decides_until_it_closes_lost():
    state = AccountState("a1")
    opened = fold([ev("page_view", T0, "c1"), opportunity(T0 + DAY_MS)], state)
    assert [t.to_stage for t in opened.transitions] == ["awareness", "decision"]
    assert state.fallback_at_ms == 0  # an open opportunity does not age out
    lost = fold([opportunity(T0 + 10 * DAY_MS, closed=True)], state)
    assert [(t.from_stage, t.to_stage) for t in lost.transitions] == [("decision", "awareness")]


def test_no_fall_back_within_the_dwell_time():
    rules = dataclasses.replace(RULES, awareness_window_ms=DAY_MS, dwell_ms=7 * DAY_MS)
    state = AccountState("a1")
    fold([ev("page_view", T0)], state, rules=rules)
    assert state.fallback_at_ms == T0 + 7 * DAY_MS  # lapsed after a day, held for the dwell time
    assert fall_back_until(state, T0 + 7 * DAY_MS - 1, rules, CONFIG) == []
    again = fold([ev("page_view", T0 + 6 * DAY_MS)], state, rules=rules)  # engaged again within the dwell
    assert again.transitions == []
    assert fall_back_until(state, T0 + 7 * DAY_MS, rules, CONFIG) == [] and state.fallback_at_ms == T0 + 7 * DAY_MS + 1
    [fell] = fall_back_until(state, T0 + 30 * DAY_MS, rules, CONFIG)
    assert (fell.to_stage, fell.at_ms, fell.event_id) == ("target", T0 + 7 * DAY_MS + 1, "")


def test_the_watermark_applies_fall_backs_to_accounts_without_new_events():
    states = {name: AccountState(name) for name in ("quiet", "busy")}
    schedule = FallbackSchedule(partitions=1, lateness_ms=HOUR_MS, capacity=10)
    fold([dict(ev("page_view", T0), account_id="quiet")], states["quiet"])
    schedule.note(states["quiet"])
    schedule.advance(0, T0)
    assert len(schedule) == 1 and schedule.watermark(0) == T0 - HOUR_MS
    for day in (10, 90):
        fold([dict(ev("page_view", T0 + day * DAY_MS), account_id="busy")], states["busy"])
        schedule.note(states["busy"])
        schedule.advance(0, T0 + day * DAY_MS)
        assert schedule.settle_due(states.__getitem__, no_scan, RULES, CONFIG) == []
    fold([dict(ev("page_view", T0 + 91 * DAY_MS), account_id="busy")], states["busy"])
    schedule.note(states["busy"])
    schedule.advance(0, T0 + 91 * DAY_MS)
    [fell] = schedule.settle_due(states.__getitem__, no_scan, RULES, CONFIG)  # watermark: day 91 - 1 h
    assert (fell.account_id, fell.to_stage, fell.at_ms) == ("quiet", "target", T0 + 90 * DAY_MS + 1)
    assert len(schedule) == 1  # only busy is still scheduled


def test_redelivered_events_change_nothing():
    state = AccountState("a1")
    batch = [((5, 0), ev("email_click", T0)), ((5, 1), ev("page_view", T0 + 1))]
    fold_events(batch, lambda _: state, CONFIG, RULES, DEDUP)
    before = state.to_bytes()
    folded = fold_events(batch, lambda _: state, CONFIG, RULES, DEDUP)
    assert (folded.applied, folded.transitions, folded.replayed, folded.duplicates) == ([], [], 2, 0)
    assert state.to_bytes() == before
    assert AccountState.from_bytes(before) == state


def test_states_written_before_stages_had_rules_still_load():
    old = b'{"account_id":"a1","score":3.0,"score_at_ms":5,"events_total":1,"counts":{"email_click":1},"contacts":{"c1":5},"first_event_ms":5,"last_event_ms":5,"last_high_intent_ms":0,"stage":"awareness","stage_since_ms":5,"applied_upto":[1,0],"origin_upto":{},"recent_ids":{"7":5},"prune_ids_at":1024}'
    state = AccountState.from_bytes(old)
    assert (state.last_engaged_ms, state.as_of_ms, state.recent_ids, state.daily) == (5, 5, {7: 5}, {})
    assert AccountState.from_bytes(state.to_bytes()) == state
    assert AccountState.timing_of(old) == state.timing() == ("a1", 0, 0, 5)



def test_a_busy_accounts_state_is_stored_compressed_and_a_quiet_ones_as_json():
    """The bytes of 200,000 event ids (the cap) and 150,000 contacts: ~11 MiB of JSON,
    more than a changelog record takes (8 MiB); compressed they are a fraction of it."""
    scattered = (key * 0x9E3779B97F4A7C15 % 2**64 for key in range(200_000))  # as digests are
    busy = AccountState("busy", applied_upto=(9, 0), recent_ids=RecentIds((key, T0 + n) for n, key in enumerate(scattered)))
    busy.contacts = {f"contact-{i:06d}@busy.example": T0 + i for i in range(150_000)}
    raw = busy.to_bytes()
    assert raw[:4] == b"\x28\xb5\x2f\xfd" and len(raw) < STATE_MAX_BYTES // 2 and len(zstd.decompress(raw)) > STATE_MAX_BYTES
    assert AccountState.from_bytes(raw) == busy
    assert AccountState.timing_of(raw) == busy.timing() == ("busy", 0, 0, 0)
    assert AccountState.from_bytes(raw).to_bytes() == raw  # a replay writes the same bytes
    quiet = AccountState("quiet", recent_ids=RecentIds({1: T0}))
    assert quiet.to_bytes()[:1] == b"{" and AccountState.from_bytes(quiet.to_bytes()) == quiet


def test_state_and_segment_bytes_take_no_more_heap_than_their_length():
    """A checkpoint keeps every changed state's bytes (and new held segments) until it is
    durable: orjson's own output held 8-16 KiB of heap for a 700-byte state."""
    state = AccountState("a1")
    apply_event(state, ev("page_view", T0), CONFIG)
    holding = [AccountState(f"h{n}", held=[as_held(busy_page_view(i)) for i in range(3)]) for n in range(1_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [state.to_bytes() for _ in range(1_000)] + [raw for s in holding for _, raw in s.take_held_segments()]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == 2_000 and len(kept[0]) > 300
    assert grown < sum(len(raw) + 64 for raw in kept) + 32_768  # + the list and the segments' listings


def busy_page_view(i):
    return {"event_id": f"e{i}", "source": "web", "type": "page_view", "occurred_at_ms": T0 + i, "received_at_ms": T0 + i,
            "account_id": "busy", "contact_id": f"c{i % 50}", "_origin": ["raw", 0, i], "properties": {"url": f"https://busy.example/p/{i % 100}"}}


def test_held_events_leave_the_state_in_segments_of_at_most_a_mebibyte_and_come_back_in_time_order():
    """30,000 held events (~5 MiB of JSON) go to numbered segments, compressed past 64
    KiB, listed in the state with their earliest event time and size; read back in any
    order, they are the held events again (with only what applying them reads)."""
    busy = AccountState("busy")
    events = [busy_page_view(i) for i in range(30_000)]
    busy.held = [as_held(e) for e in events]
    segments = busy.take_held_segments()
    assert busy.held == [] and len(segments) >= 4 and [number for number, _ in segments] == list(range(len(segments)))
    decoded = [held_events_of(raw) for _, raw in segments]
    assert all(raw[:4] == b"\x28\xb5\x2f\xfd" and len(zstd.decompress(raw)) <= SEGMENT_MAX_BYTES for _, raw in segments)
    assert busy.held_segments == [[part[0]["occurred_at_ms"], number, len(part)] for (number, _), part in zip(segments, decoded)]
    assert [e["event_id"] for part in decoded for e in part] == [e["event_id"] for e in events]
    assert (busy.held_count, busy.first_held_ms, busy.next_segment) == (30_000, T0, len(segments))
    assert AccountState.timing_of(busy.to_bytes()) == busy.timing() == ("busy", 0, T0, 0)
    stored = dict(segments)
    restored = AccountState.from_bytes(busy.to_bytes())
    restored.read_back([restored.held_segments[1], restored.held_segments[0]], lambda account, number: held_events_of(stored[number]))
    first_two = len(decoded[0]) + len(decoded[1])
    assert [held[:3] for held in restored.held] == [(e["occurred_at_ms"], "web", e["event_id"]) for e in events[:first_two]]
    assert "account_id" not in restored.held[0][3] and "contact_id" in restored.held[0][3]
    assert (restored.released_segments, restored.held_count, restored.held_segments[0][1]) == ([1, 0], 30_000, 2)
    with pytest.raises(LookupError, match="lists held segment 2, and no store was given"):
        settle(restored, T0 + 30_000, CONFIG, RULES)


@given(
    st.dictionaries(st.integers(0, 2**64 - 1), st.integers(0, 2**62), max_size=50),
    st.dictionaries(st.integers(0, 40_000), st.dictionaries(st.sampled_from(["email_open", "page_view"]), st.integers(0, 10**6)), max_size=5),
)
def test_a_state_survives_its_bytes_whatever_its_event_ids_and_days(recent_ids, daily):
    state = AccountState("a1", recent_ids=RecentIds(recent_ids), daily=daily, applied_upto=(3, 1))
    restored = AccountState.from_bytes(state.to_bytes())
    assert restored == state and restored.recent_ids == recent_ids
    assert list(restored.recent_ids) == sorted(recent_ids)  # in key order: replays write identical bytes
    assert restored.to_bytes() == state.to_bytes()


def test_override_file_replaces_only_the_keys_it_sets(tmp_path):
    overrides = tmp_path / "rules.toml"
    overrides.write_text("[weights]\nemail_open = 0.5\n[stages.consideration]\nmin_contacts = 3\n")
    config, rules = load_rules(overrides, 30 * DAY_MS, 2 * DAY_MS)
    assert config.weights == {**CONFIG.weights, "email_open": 0.5}
    assert rules == dataclasses.replace(RULES, consideration_min_contacts=3)


def test_rules_naming_an_unknown_event_type_are_refused():
    import tomllib

    document = merged(tomllib.loads(DEFAULT_RULES.read_text()), {"weights": {"email_opened": 1.0}})
    with pytest.raises(ValueError, match="email_opened"):
        parse_rules(document, 30 * DAY_MS, 2 * DAY_MS)


def test_route_batch_groups_by_account_partition_and_sets_aside_the_rest():
    good = b'{"event_id":"1","type":"page_view","occurred_at":1763960000000,"source":"web","url":"u","account_id":"a1"}'
    no_account = b'{"event_id":"2","type":"page_view","occurred_at":1763960000000,"source":"web","url":"u"}'
    origins = [("raw", 0, offset) for offset in range(5)]
    routed = route_batch([good, b"nope", no_account, None, good], origins, T0, 8, AccountDirectory())
    assert sum(len(v) for v in routed.by_partition.values()) == 2
    assert [i for i, _ in routed.rejected] == [1, 3]
    assert [(i, waiting_on) for i, _, waiting_on in routed.unresolved] == [(2, None)]
    assert routed.valid_by_type == {"page_view": 3}
    assert [e["_origin"] for e in forwarded(routed.by_partition)] == [["raw", 0, 0], ["raw", 0, 4]]


def forwarded(by_partition: dict[int, list[Any]]) -> list[dict[str, Any]]:
    """The routed events as the score agent decodes them."""
    return [event for bucket in by_partition.values() for message in forwarded_messages(bucket) for event in orjson.loads(message)]


@settings(max_examples=100)
@given(journey_events)
def test_skipping_evaluation_for_events_that_cannot_move_up_changes_nothing(items):
    """fold_events evaluates stages only after events that may move an account up
    (stages.may_move_up); evaluating after every event gives the same transitions and states."""
    import processors.accounts

    events = [journey_event(item) for item in items]
    lean, full = AccountState("a1"), AccountState("a1")
    positioned = [((i, 0), e) for i, e in enumerate(events)]
    lean_transitions = fold_events(positioned, lambda _: lean, CONFIG, RULES, DEDUP).transitions
    original = processors.accounts.may_move_up
    processors.accounts.may_move_up = lambda *_: True
    try:
        full_transitions = fold_events(positioned, lambda _: full, CONFIG, RULES, DEDUP).transitions
    finally:
        processors.accounts.may_move_up = original
    end = T0 + 400 * DAY_MS
    lean_transitions += fall_back_until(lean, end, RULES, CONFIG)
    full_transitions += fall_back_until(full, end, RULES, CONFIG)
    # The paths re-base the decayed score at different times: float rounding may move a
    # computed fall-back instant by a millisecond, nothing else.
    assert [dataclasses.replace(t, at_ms=0, score=0.0) for t in lean_transitions] == [
        dataclasses.replace(t, at_ms=0, score=0.0) for t in full_transitions
    ]
    for a, b in zip(lean_transitions, full_transitions):
        assert abs(a.at_ms - b.at_ms) <= 1 and math.isclose(a.score, b.score, rel_tol=1e-9)
    assert lean.stage == full.stage and abs(lean.stage_since_ms - full.stage_since_ms) <= 1


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.integers(0, 5), journey_events.map(lambda items: items[:5]), st.booleans()), min_size=1, max_size=12),
    st.integers(0, 3),
    st.integers(1, 4),
)
def test_the_schedule_applies_exactly_the_fall_backs_a_scan_of_every_account_would(batches, partitions_exp, capacity):
    """Batches of events for a few accounts, with the watermark advancing after each, and
    now and then a restart (the schedule forgets all and scans the states again): the
    schedule's fall-backs equal those of visiting every account every time, also when it
    keeps fewer accounts than are due and must scan for the rest."""
    partitions = 2**partitions_exp
    indexed, scanned = {}, {}
    schedule = FallbackSchedule(partitions, lateness_ms=DAY_MS, capacity=capacity)

    def timings_in(partition):  # read from the states' bytes, as from the store
        return [AccountState.timing_of(state.to_bytes()) for name, state in indexed.items() if account_partition(name, partitions) == partition]

    latest: dict[int, int] = {}
    for account_number, items, restart in batches:
        account = f"a{account_number}"
        events = [dict(journey_event(item), account_id=account) for item in items]
        for states in (indexed, scanned):
            fold(events, states.setdefault(account, AccountState(account)))
        if restart:
            schedule.reset(range(partitions), {})  # no committed watermarks: taken from the states
        schedule.note(indexed[account])
        schedule.advance(account_partition(account, partitions), indexed[account].latest_seen_ms)
        got = schedule.settle_due(indexed.__getitem__, timings_in, RULES, CONFIG)
        partition = account_partition(account, partitions)
        latest[partition] = max(latest.get(partition, 0), scanned[account].last_event_ms)
        expected = [
            t
            for name, state in sorted(scanned.items())
            for t in fall_back_until(state, latest[account_partition(name, partitions)] - DAY_MS, RULES, CONFIG)
        ]
        assert sorted(got, key=lambda t: (t.account_id, t.at_ms)) == sorted(expected, key=lambda t: (t.account_id, t.at_ms))
        assert len(schedule) <= partitions * (capacity + max(1, capacity // 4))
    assert {a: s.stage for a, s in indexed.items()} == {a: s.stage for a, s in scanned.items()}


def test_the_schedule_keeps_only_the_accounts_due_soonest():
    """A million accounts due months ahead cost no memory: beyond its capacity the
    schedule keeps the soonest, and finds the others by a scan once they are due."""
    states = {f"a{n}": AccountState(f"a{n}", latest_seen_ms=T0, fallback_at_ms=T0 + (10 - n) * DAY_MS) for n in range(10)}
    schedule = FallbackSchedule(partitions=1, lateness_ms=0, capacity=4)
    for state in states.values():
        schedule.note(state)
    schedule.advance(0, T0)
    assert len(schedule) <= 5
    scans = []

    def timings_in(partition):
        scans.append(partition)
        return [state.timing() for state in states.values()]

    assert schedule.settle_due(states.__getitem__, timings_in, RULES, CONFIG) == [] and scans == []
    schedule.advance(0, T0 + 10 * DAY_MS)  # all of them due
    schedule.settle_due(states.__getitem__, timings_in, RULES, CONFIG)
    assert all(state.fallback_at_ms == 0 or state.fallback_at_ms > T0 + 10 * DAY_MS for state in states.values())
    assert scans and len(schedule) == 0


def no_scan(partition):
    raise AssertionError(f"partition {partition} scanned though the schedule kept every account")


@settings(max_examples=200)
@given(journey_events, st.randoms(), st.integers(1, 6))
def test_held_events_give_the_same_stages_in_any_arrival_order_and_batching(items, rnd, batches):
    """Events held until the watermark passes them are applied in event-time order: the
    transitions, score and stage are those of the events in time order, however they
    arrived, in whatever batches the watermark advanced, and whenever the state was
    written (its held events to segments, read back as the watermark reaches them)."""
    # each from its own raw partition: any arrival order is possible
    events = [dict(journey_event(item), _origin=(f"raw-{i}", 0, 0)) for i, item in enumerate(items)]
    in_order = AccountState("a1")
    expected = fold(sorted(events, key=lambda e: (e["occurred_at_ms"], e["source"], e["event_id"])), in_order).transitions
    end = T0 + 400 * DAY_MS
    expected += fall_back_until(in_order, end, RULES, CONFIG)

    arrived = list(events)
    rnd.shuffle(arrived)
    held = AccountState("a1")
    cuts = sorted(rnd.randint(0, len(arrived)) for _ in range(batches))
    transitions, stored = [], {}

    def stored_held(account, number):
        return held_events_of(stored[number])

    for start, stop in zip([0, *cuts], [*cuts, len(arrived)]):
        batch = arrived[start:stop]
        fold_events([((next(RAW_OFFSETS), 0), e) for e in batch], lambda _: held, CONFIG, RULES, DEDUP, MAX_HELD, stored_held)
        if rnd.random() < 0.5:  # a state write
            stored.update(held.take_held_segments())
        # the watermark only ever passes events that every later batch is no earlier than
        later = [e["occurred_at_ms"] for e in arrived[stop:]]
        assert AccountState.timing_of(held.to_bytes()) == held.timing()  # events held: what a scan reads
        transitions += settle(held, min(later) - 1 if later else end, CONFIG, RULES, stored_held)
    assert transitions == expected
    assert (held.stage, held.events_total, held.held, held.held_segments) == (in_order.stage, in_order.events_total, [], [])
    assert sorted(held.released_segments) == sorted(stored)
    assert math.isclose(score_at(held, end, CONFIG), score_at(in_order, end, CONFIG), rel_tol=1e-9, abs_tol=1e-12)


def all_held(state, store):
    """An account's held events, in memory and in segments."""
    in_segments = [as_held(e) for _, number, _ in state.held_segments for e in store[state.account_id, number]]
    return sorted([held[:3] for held in state.held + in_segments])


def _interleaved(per_partition, rnd):
    """The partitions' messages in one fetch order: each partition's in its own order."""
    queues = {p: list(messages) for p, messages in per_partition.items() if messages}
    while queues:
        p = rnd.choice(sorted(queues))
        yield p, queues[p].pop(0)
        if not queues[p]:
            del queues[p]


def _in_batches(messages, rnd):
    cuts = sorted(rnd.randint(0, len(messages)) for _ in range(rnd.randint(0, 4)))
    return [messages[a:b] for a, b in zip([0, *cuts], [*cuts, len(messages)])]


class _Worker:
    """The score agent's folding, one fetched batch at a time, with its states and schedule."""

    def __init__(self, partitions, max_held, states=None, latest=None, segments=None):
        self.partitions = partitions
        self.max_held = max_held
        self.states = states or {}
        self.segments = segments or {}  # (account, number) -> events, as stored: never deleted here
        self.schedule = FallbackSchedule(partitions, lateness_ms=0, capacity=2)
        self.schedule.reset(range(partitions), latest if latest is not None else {p: -1 for p in range(partitions)})
        self.transitions = self.schedule.settle_due(self.state_for, self.timings_in, RULES, CONFIG, stored_held=self.stored_held)  # a start

    def state_for(self, account):
        return self.states.setdefault(account, AccountState(account))

    def stored_held(self, account, number):
        return [dict(e) for e in self.segments[account, number]]

    def timings_in(self, partition):
        return [s.timing() for a, s in self.states.items() if account_partition(a, self.partitions) == partition]

    def consume(self, batch):
        self.transitions += fold_messages(
            batch, self.state_for, self.timings_in, self.schedule, CONFIG, RULES, DEDUP, self.max_held, self.stored_held
        ).transitions

    def saved_states(self):
        """The states as written, their held events to new segments (which stay with this
        worker's states: a write leaves nothing in memory)."""
        for a, s in self.states.items():
            self.segments.update(((a, number), held_events_of(raw)) for number, raw in s.take_held_segments())
        return {a: AccountState.from_bytes(s.to_bytes()) for a, s in self.states.items()}

    def committed_latest(self):
        return {p: self.schedule.latest(p) for p in range(self.partitions)}


@pytest.mark.parametrize("max_held", [MAX_HELD, 1])
@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 3), journey_events.map(lambda items: items[:6])), min_size=1, max_size=8), st.randoms())
def test_a_replay_after_a_crash_derives_the_transitions_of_the_first_run(max_held, accounts_events, rnd):
    """With no allowed lateness (events arrive out of order, many late), the transitions
    depend only on each partition's messages: not on the fetch order across partitions,
    the fetched batches, or a crash that replays messages from the last committed offsets
    and watermarks, whose transitions were stored already (stage_transitions keeps one
    row per key). The crash may come while the next states are written: some accounts'
    stored states are then ahead of the committed offsets. So also when an account holds
    more events than it may (max_held 1: the earliest of two are applied at once)."""
    partitions = 2
    events = [
        dict(journey_event(item), account_id=f"a{account}", _origin=(f"raw-{account}-{i}", 0, 0))
        for account, items in accounts_events
        for i, item in enumerate(items)
    ]
    rnd.shuffle(events)
    per_partition = {p: [] for p in range(partitions)}
    for event in events:
        per_partition[account_partition(event["account_id"], partitions)].append(event)
    messages = {}
    for p, in_order in per_partition.items():  # (partition, [((offset, index), event)])
        chunks = _in_batches(in_order, rnd)
        messages[p] = [(p, [((offset, index), dict(e)) for index, e in enumerate(chunk)]) for offset, chunk in enumerate(chunks) if chunk]

    def copies(ms):
        return [(p, [(position, dict(e)) for position, e in positioned]) for p, positioned in ms]

    first = _Worker(partitions, max_held)
    for batch in _in_batches(list(m for _, m in _interleaved({p: copies(ms) for p, ms in messages.items()}, rnd)), rnd):
        first.consume(batch)

    crashed = _Worker(partitions, max_held)
    fetched = [m for _, m in _interleaved({p: copies(ms) for p, ms in messages.items()}, rnd)]
    saved_at = rnd.randint(0, len(fetched))
    crashed_at = rnd.randint(saved_at, len(fetched))
    crashed.consume(fetched[:saved_at])
    saved, latest = crashed.saved_states(), crashed.committed_latest()
    crashed.consume(fetched[saved_at:crashed_at])  # their transitions stored, their states lost...
    ahead = {a: s for a, s in crashed.saved_states().items() if rnd.random() < 0.5}  # ...or some written
    # the segments of both writes, stored before their states: the store's part never lost
    restarted = _Worker(partitions, max_held, saved | ahead, latest, dict(crashed.segments))
    committed = Counter(p for p, _ in fetched[:saved_at])
    rest = {p: copies(ms[committed[p]:]) for p, ms in messages.items()}
    for batch in _in_batches([m for _, m in _interleaved(rest, rnd)], rnd):
        restarted.consume(batch)

    def stored(transitions):  # the table's key
        return {(t.account_id, t.at_ms, t.to_stage, t.from_stage) for t in transitions}

    assert stored(crashed.transitions + restarted.transitions) == stored(first.transitions)
    assert len(stored(first.transitions)) == len(first.transitions)
    assert {a: (s.stage, s.events_total, all_held(s, restarted.segments)) for a, s in restarted.states.items()} == {
        a: (s.stage, s.events_total, all_held(s, first.segments)) for a, s in first.states.items()
    }


def test_held_events_wait_for_the_watermark_of_their_partition():
    state = AccountState("a1")
    schedule = FallbackSchedule(partitions=1, lateness_ms=HOUR_MS, capacity=10)
    fold_events([((0, 0), ev("page_view", T0 + HOUR_MS))], lambda _: state, CONFIG, RULES, DEDUP, MAX_HELD)
    schedule.note(state)
    schedule.advance(0, T0 + HOUR_MS)
    assert schedule.settle_due(lambda _: state, no_scan, RULES, CONFIG) == [] and state.events_total == 0  # watermark: T0
    fold_events([((1, 0), ev("page_view", T0 + 2 * HOUR_MS, contact="c2"))], lambda _: state, CONFIG, RULES, DEDUP, MAX_HELD)
    schedule.note(state)
    schedule.advance(0, T0 + 2 * HOUR_MS)
    [aware] = schedule.settle_due(lambda _: state, no_scan, RULES, CONFIG)  # watermark: T0 + 1 h
    assert (aware.to_stage, aware.at_ms, state.events_total, len(state.held)) == ("awareness", T0 + HOUR_MS, 1, 1)


def test_an_account_holds_at_most_max_held_events_and_applies_the_earliest_beyond_it():
    """A burst within the allowed lateness: past the cap the earliest held events are
    applied at once, in time order, with their transitions; the later ones wait."""
    state = AccountState("a1")
    schedule = FallbackSchedule(partitions=1, lateness_ms=HOUR_MS, capacity=10)
    # each from its own raw partition: any arrival order is possible
    burst = [ev("page_view", T0 + minute * 60_000, contact=f"c{minute}", _origin=(f"raw-{minute}", 0, 0)) for minute in range(10)]
    message = (0, [((0, i), e) for i, e in enumerate(reversed(burst))])
    folded = fold_messages([message], lambda _: state, no_scan, schedule, CONFIG, RULES, DEDUP, 4)
    assert [at for at, *_ in state.held] == [T0 + minute * 60_000 for minute in range(6, 10)]
    assert (state.events_total, state.last_event_ms, len(folded.applied)) == (6, T0 + 5 * 60_000, 10)
    # at the first event applied, minute 5: past the cap the arrival order shows (held, it is T0)
    assert [(t.to_stage, t.at_ms) for t in folded.transitions] == [("awareness", T0 + 5 * 60_000)]
    late = fold_events([((1, 0), ev("page_view", T0 + 30_000, contact="c99", _origin=("raw-late", 0, 0)))], lambda _: state, CONFIG, RULES, DEDUP, 4)
    assert (state.events_total, [at for at, *_ in state.held][:1], late.transitions) == (7, [T0 + 6 * 60_000], [])


def test_states_written_before_held_events_had_segments_still_load():
    """Session 11 wrote held events in the state as [time, source, id, event], sessions
    before it as the events themselves: both load (with only what applying reads), and
    their next write moves them to segments."""
    event = {k: v for k, v in ev("page_view", T0).items() if k != "_origin"}
    for held in ([event], [[T0, "test", event["event_id"], event]]):
        old = orjson.loads(AccountState("a0").to_bytes())
        for field in ("held_segments", "next_segment", "released_segments"):
            del old[field]
        old["held"] = held
        loaded = AccountState.from_bytes(orjson.dumps(old))
        assert [(at, source, event_id) for at, source, event_id, _ in loaded.held] == [(T0, "test", event["event_id"])]
        assert AccountState.timing_of(orjson.dumps(old)) == loaded.timing() == ("a0", 0, T0, 0)
        [(number, raw)] = loaded.take_held_segments()
        assert (number, held_events_of(raw), loaded.held_segments) == (0, [loaded_event(event)], [[T0, 0, 1]])


def loaded_event(event):
    return {k: v for k, v in event.items() if k not in ("account_id", "email", "received_at_ms", "occurred_at")}


@pytest.mark.parametrize("seed", range(8))
def test_a_held_event_read_back_from_a_segment_applies_as_the_whole_event(seed):
    """Segments keep only the fields applying an event reads: simulated events of every
    type (email-only contacts, titles, privacy opens, forms, opportunities, NPS...) give
    the same states and transitions applied whole or held, written and read back."""
    rnd = random.Random(seed)
    events = []
    for i, event in enumerate(iter_events(seed=seed, accounts=3, contacts_per_account=4, count=300, expected_events=300, history_days=30)):
        event = dict(event, occurred_at_ms=parse_timestamp_ms(event["occurred_at"]), received_at_ms=0, _origin=(f"raw-{i}", 0, 0))
        if rnd.random() < 0.3:
            event.pop("contact_id", None)  # known by its email only
        if rnd.random() < 0.3:
            event["_seniority"] = rnd.choice(["c_level", "vp", "director", "manager", "other"])
        events.append(event)
    whole, held, stored = {}, {}, {}
    positioned = [((i, 0), e) for i, e in enumerate(sorted(events, key=lambda e: (e["occurred_at_ms"], e["source"], e["event_id"])))]
    applied = fold_events([(p, dict(e)) for p, e in positioned], lambda a: whole.setdefault(a, AccountState(a)), CONFIG, RULES, DEDUP)
    later = fold_events([(p, dict(e)) for p, e in positioned], lambda a: held.setdefault(a, AccountState(a)), CONFIG, RULES, DEDUP, MAX_HELD)
    assert later.transitions == [] and all(state.held for state in held.values())
    for account, state in held.items():
        stored.update(((account, number), raw) for number, raw in state.take_held_segments())
        assert state.held == [] and state.held_segments
        later.transitions += settle(state, state.latest_seen_ms, CONFIG, RULES, lambda a, n: held_events_of(stored[a, n]))
        state.next_segment, state.released_segments = 0, []  # as the whole ones: no segments
    assert sorted(later.transitions, key=repr) == sorted(applied.transitions, key=repr)
    assert {a: s.to_bytes() for a, s in held.items()} == {a: s.to_bytes() for a, s in whole.items()}


def test_an_account_whose_events_are_all_held_has_no_row_yet():
    held, applied = AccountState("held"), AccountState("applied")
    fold_events([((0, 0), dict(ev("page_view", T0), account_id="held"))], lambda _: held, CONFIG, RULES, DEDUP, MAX_HELD)
    fold([dict(ev("page_view", T0), account_id="applied")], applied)
    assert [row[0] for row in account_rows([held, applied], T0, CONFIG)] == ["applied"]


def test_a_scrapers_hundreds_of_thousands_of_visitor_ids_keep_its_state_within_a_changelog_record():
    """300,000 page views in two days, each from a visitor id of its own, of 2,048 random
    characters (the longest an id may be). Unbounded, the contacts and capped-day
    memories took 11.7 MiB compressed with 32-character ids, over the 8 MiB record: the
    worker stopped at every start."""
    rng = random.Random(7)
    state = AccountState("a1")
    for start in range(0, 300_000, 10_000):  # in chunks: 600 MB of ids at once otherwise
        fold([ev("page_view", T0 + n * 576, contact=rng.randbytes(1024).hex()) for n in range(start, start + 10_000)], state)
    assert state.events_total == sum(state.counts.values()) == 300_000
    assert len(state.recent_ids) <= DEDUP.max_ids
    assert len(state.contacts) <= CONFIG.max_contacts * 9 // 8
    assert len(state.capped) <= CONFIG.max_contacts * 9 // 4
    assert len(state.to_bytes()) < STATE_MAX_BYTES


engagements_of_contacts = st.integers(5, 200).flatmap(  # how many contacts engage, then when each event is and whose
    lambda population: st.lists(st.tuples(st.integers(0, 3 * DAY_MS), st.integers(0, population - 1)), min_size=50, max_size=600)
)


@given(engagements_of_contacts)
@settings(max_examples=60, deadline=None)
def test_an_account_remembers_its_most_recently_engaged_contacts_and_their_latest_capped_days(engagements):
    config = dataclasses.replace(CONFIG, max_contacts=40)
    state = AccountState("a1")
    latest: dict[str, int] = {}
    for at, contact in sorted(engagements):  # in event-time order, as the watermark applies them
        apply_event(state, ev("page_view", T0 + at, contact=f"c{contact}"), config)
        latest[f"c{contact}"] = max(latest.get(f"c{contact}", 0), T0 + at)
    assert len(state.contacts) <= 45 and len(state.capped) <= 90
    kept = set(state.contacts)
    assert all(state.contacts[c] == latest[c] for c in kept)
    forgotten = set(latest) - kept
    if forgotten:  # every remembered contact engaged no earlier than every forgotten one
        assert min((latest[c], c) for c in kept) > max((latest[c], c) for c in forgotten)
    else:
        assert len(latest) <= 45
    if len(latest) <= 40:  # within the cap: all of them, and their engaged count is exact
        assert kept == set(latest)
        assert engaged_contacts(state, T0 + 3 * DAY_MS, 90 * DAY_MS) == len(latest)
    days = sorted(int(key.partition("|")[0]) for key in state.capped)
    every_day = sorted(f"{(T0 + at) // DAY_MS}|page_view|c{contact}" for at, contact in engagements)
    forgotten_days = set(every_day) - set(state.capped)
    if forgotten_days:
        assert max(int(k.partition("|")[0]) for k in forgotten_days) <= days[0]
