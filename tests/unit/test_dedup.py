"""De-duplication by (source, event id): unit and property tests of processors.dedup
and of its use in fold_events."""

from __future__ import annotations

import itertools
import math
from array import array

from hypothesis import given, strategies as st

from processors.accounts import fold_events
from processors.dedup import MIN_MERGE_SIZE, MIN_PRUNE_SIZE, DedupPolicy, RecentIds, event_key, forget_old, seen_before
from processors.scoring import DAY_MS, AccountState
from streams.rules import load_rules

HOUR_MS = 3_600_000
T0 = 1_763_964_000_000
RAW_OFFSETS = itertools.count()  # every event its own raw message
CONFIG, RULES = load_rules(None, 30 * DAY_MS, 2 * DAY_MS)


def ev(event_id: str, at: int, source: str = "sendgrid", kind: str = "email_click") -> dict:
    return {"event_id": event_id, "source": source, "_origin": ("raw", 0, next(RAW_OFFSETS)), "type": kind, "occurred_at_ms": at, "account_id": "a1", "contact_id": "c1"}


def fold(events, state: AccountState, policy: DedupPolicy = DedupPolicy(), first_offset: int = 0):
    positioned = [((first_offset + i, 0), e) for i, e in enumerate(events)]
    return fold_events(positioned, lambda _: state, CONFIG, RULES, policy)


def test_key_depends_on_source_and_event_id_only():
    assert event_key(ev("e1", T0)) == event_key(ev("e1", T0 + 5, kind="page_view"))
    assert event_key(ev("e1", T0)) != event_key(ev("e1", T0, source="hubspot"))
    assert event_key(ev("e1", T0)) != event_key(ev("e2", T0))
    # no ambiguity from concatenation
    assert event_key({"source": "a", "event_id": "bc"}) != event_key({"source": "ab", "event_id": "c"})


def test_seen_before_records_on_first_sight():
    recent = RecentIds()
    assert seen_before(recent, 7, T0) is False
    assert seen_before(recent, 7, T0) is True
    assert recent == {7: T0}


def test_forget_old_keeps_the_horizon_then_caps_by_age():
    recent = RecentIds({1: T0 - 49 * HOUR_MS, 2: T0 - 47 * HOUR_MS, 3: T0 - HOUR_MS, 4: T0})
    forget_old(recent, T0, DedupPolicy(horizon_ms=48 * HOUR_MS, max_ids=10))
    assert recent == {2: T0 - 47 * HOUR_MS, 3: T0 - HOUR_MS, 4: T0}
    forget_old(recent, T0, DedupPolicy(horizon_ms=48 * HOUR_MS, max_ids=2))
    assert recent == {3: T0 - HOUR_MS, 4: T0}


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1) | st.integers(0, 40), st.integers(0, 50)), max_size=3 * MIN_MERGE_SIZE), st.integers(0, 50), st.integers(1, 400))
def test_recent_ids_remember_what_a_dict_would_and_forget_the_oldest_first(added, older_than, max_ids):
    """Whatever merges happened between them: the same membership, times and size as a
    dict, the same after its bytes; forgetting keeps the newest (at equal times, the larger ids)."""
    recent, model = RecentIds(), {}
    for key, at in added:
        assert recent.add(key, at) is (key not in model)
        model.setdefault(key, at)
        assert key in recent and recent[key] == model[key] and len(recent) == len(model)
    assert recent == model and sorted(recent) == sorted(model) and 2**64 not in recent
    assert AccountState.from_bytes(AccountState("a1", recent_ids=recent).to_bytes()).recent_ids == model
    recent.forget(older_than, max_ids)
    kept = sorted((at, key) for key, at in model.items() if at >= older_than)
    if len(kept) > max_ids:
        kept = kept[len(kept) - (max_ids - max_ids // 8) :]
    assert recent == {key: at for at, key in kept}


@given(st.dictionaries(st.integers(0, 2**64 - 1), st.integers(0, 2**62), max_size=300), st.randoms(use_true_random=False))
def test_recent_ids_from_stored_arrays_in_any_order_find_every_id(pairs, rnd):
    """A state's ids load as their arrays (ascending); arrays in another order (not ours:
    a damaged or foreign state) are sorted rather than trusted, so no id is missed."""
    shuffled = list(pairs.items())
    rnd.shuffle(shuffled)
    keys, times = array("Q", [key for key, _ in shuffled]), array("q", [at for _, at in shuffled])
    recent = RecentIds.from_arrays(keys, times)
    assert recent == pairs and all(key in recent for key in pairs)
    assert list(recent.arrays()[0]) == sorted(pairs)
    assert recent.add(2**64 - 1, 0) is (2**64 - 1 not in pairs)


def test_an_event_delivered_three_times_counts_once():
    state = AccountState("a1")
    events = [ev("e1", T0), ev("e2", T0 + 1), ev("e1", T0), ev("e2", T0 + 1), ev("e1", T0)]
    folded = fold(events, state)
    assert [e["event_id"] for e in folded.applied] == ["e1", "e2"]
    assert (folded.duplicates, state.events_total) == (3, 2)
    assert math.isclose(state.score, 6.0, rel_tol=1e-9)


def test_a_retry_in_a_later_batch_after_a_restart_is_a_duplicate():
    state = AccountState("a1")
    fold([ev("e1", T0)], state)
    restored = AccountState.from_bytes(state.to_bytes())
    folded = fold([ev("e1", T0)], restored, first_offset=100)
    assert (folded.applied, folded.duplicates, restored.events_total) == ([], 1, 1)


def test_same_event_id_from_another_source_is_another_event():
    state = AccountState("a1")
    folded = fold([ev("42", T0, source="sendgrid"), ev("42", T0, source="hubspot")], state)
    assert (len(folded.applied), folded.duplicates) == (2, 0)


def test_memory_stays_bounded_by_the_horizon():
    state = AccountState("a1")
    policy = DedupPolicy(horizon_ms=HOUR_MS, max_ids=1_000_000)
    # 20,000 events, one per minute: about 60 fall inside any one-hour horizon
    fold([ev(f"e{i}", T0 + i * 60_000) for i in range(20_000)], state, policy)
    assert len(state.recent_ids) <= 2 * MIN_PRUNE_SIZE
    assert state.events_total == 20_000


@given(
    st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["sendgrid", "hubspot"])), max_size=80),
)
def test_applied_events_are_exactly_the_distinct_ones(deliveries):
    """Any interleaving of redeliveries within the horizon: each distinct event once."""
    state = AccountState("a1")
    events = [ev(f"e{n}", T0 + n * 1000, source=source) for n, source in deliveries]
    folded = fold(events, state)
    distinct = {(source, n) for n, source in deliveries}
    assert len(folded.applied) == state.events_total == len(distinct)
    assert folded.duplicates == len(deliveries) - len(distinct)


def test_a_raw_message_forwarded_again_is_recognised_by_its_origin_whatever_its_age():
    """A worker killed between forwarding and committing forwards the same raw messages
    again, at new positions: their origin (raw topic, partition, offset) gives them away,
    even when they are far older than the de-duplication horizon."""
    state = AccountState("a1")
    old = ev("old", T0 - 90 * 24 * HOUR_MS)
    fold([old, ev("new", T0)], state, DedupPolicy(horizon_ms=HOUR_MS))
    again = dict(old, event_id="other-id")  # even under another id: same origin, same message
    folded = fold([again], state, first_offset=50)
    assert (folded.applied, folded.replayed, state.events_total) == ([], 1, 2)
    later = ev("later", T0 + 1)  # a later raw offset of the same partition still counts
    assert len(fold([later], state, first_offset=60).applied) == 1


def test_an_account_never_remembers_more_ids_than_the_cap():
    """Even a state stored by a version that let the ids double past the cap is pruned
    at its next event; at the cap the oldest eighth goes, the newest stay recognised."""
    policy = DedupPolicy(horizon_ms=365 * 24 * HOUR_MS, max_ids=4_000)
    state = AccountState("a1", prune_ids_at=8_000)
    for start in range(0, 12_000, 500):
        fold([ev(f"e{i}", T0 + i) for i in range(start, start + 500)], state, policy, first_offset=start)
        assert len(state.recent_ids) <= 4_000
    assert len(state.recent_ids) > 3_500  # pruned down to seven eighths, then refilled
    assert fold([ev("e11999", T0 + 11_999), ev("e8500", T0 + 8_500)], state, policy, first_offset=20_000).duplicates == 2
    forgotten = fold([ev("e7000", T0 + 7_000)], state, policy, first_offset=30_000)
    assert (len(forgotten.applied), state.events_total) == (1, 12_001)
