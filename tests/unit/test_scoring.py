import itertools
import math

from hypothesis import given, settings, strategies as st

from processors.accounts import fold_events
from processors.dedup import DedupPolicy
from processors.identity import AccountDirectory
from processors.routing import route_batch
from processors.scoring import DAY_MS, AccountState, ScoringConfig, apply_event, score_at
from processors.stages import StageRules, stage_for

CONFIG = ScoringConfig()
RULES = StageRules()
DEDUP = DedupPolicy()
T0 = 1_763_964_000_000
RAW_OFFSETS = itertools.count()  # every event its own raw message


def ev(kind, at, contact="c1", **extra):
    base = {"event_id": f"{kind}-{at}-{contact}", "source": "test", "_origin": ("raw", 0, next(RAW_OFFSETS)), "type": kind, "occurred_at_ms": at, "account_id": "a1", "contact_id": contact}
    base.update(extra)
    return base


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
    assert state.score == 0.0 and state.contacts == {} and state.counts == {"email_open": 1}


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["email_open", "email_click", "page_view", "webinar_signup"]),
                          st.integers(0, 200 * DAY_MS)), min_size=1, max_size=40), st.randoms())
def test_score_is_order_independent(events, rnd):
    def total(seq):
        state = AccountState("a1")
        for kind, at in seq:
            apply_event(state, ev(kind, T0 + at), CONFIG)
        return score_at(state, T0 + 200 * DAY_MS, CONFIG)

    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert math.isclose(total(events), total(shuffled), rel_tol=1e-9, abs_tol=1e-12)


def test_journey_through_the_stages():
    state = AccountState("a1")
    folded = fold_events(
        [
            ((0, 0), ev("email_open", T0, "c1")),
            ((0, 1), ev("email_click", T0 + 1000, "c1")),
            ((1, 0), ev("page_view", T0 + 2000, "c2", url="https://x/blog")),
            ((1, 1), ev("email_click", T0 + 3000, "c2")),
            ((1, 2), ev("email_click", T0 + 4000, "c1")),
            ((1, 3), ev("email_click", T0 + 5000, "c2")),
            ((1, 4), ev("email_open", T0 + 5500, "c1")),
            ((2, 0), ev("webinar_signup", T0 + 6000, "c2")),
        ],
        lambda _: state,
        CONFIG,
        RULES,
        DEDUP,
    )
    transitions = folded.transitions
    assert len(folded.applied) == 8
    assert [(t.from_stage, t.to_stage) for t in transitions] == [
        ("target", "awareness"),
        ("awareness", "consideration"),
        ("consideration", "decision"),
    ]
    # 1+3+2+3+3+3 = 15 at +5000 is a hair under the threshold after seconds of decay;
    # the open at +5500 crosses it with two engaged contacts
    assert transitions[1].at_ms == T0 + 5500 and math.isclose(transitions[1].score, 16.0, rel_tol=1e-6)
    assert stage_for(state, T0 + 91 * DAY_MS, RULES, CONFIG) == "target"


def test_redelivered_events_change_nothing():
    state = AccountState("a1")
    batch = [((5, 0), ev("email_click", T0)), ((5, 1), ev("page_view", T0 + 1))]
    fold_events(batch, lambda _: state, CONFIG, RULES, DEDUP)
    before = state.to_bytes()
    folded = fold_events(batch, lambda _: state, CONFIG, RULES, DEDUP)
    assert (folded.applied, folded.transitions, folded.replayed, folded.duplicates) == ([], [], 2, 0)
    assert state.to_bytes() == before
    assert AccountState.from_bytes(before) == state


def test_route_batch_groups_by_account_partition_and_sets_aside_the_rest():
    good = b'{"event_id":"1","type":"page_view","occurred_at":1763960000000,"source":"web","url":"u","account_id":"a1"}'
    no_account = b'{"event_id":"2","type":"page_view","occurred_at":1763960000000,"source":"web","url":"u"}'
    origins = [("raw", 0, offset) for offset in range(5)]
    routed = route_batch([good, b"nope", no_account, None, good], origins, T0, 8, AccountDirectory())
    assert sum(len(v) for v in routed.by_partition.values()) == 2
    assert [i for i, _ in routed.rejected] == [1, 3]
    assert [(i, waiting_on) for i, _, waiting_on in routed.unresolved] == [(2, None)]
    assert routed.valid_by_type == {"page_view": 3}
    assert [e["_origin"] for bucket in routed.by_partition.values() for e in bucket] == [("raw", 0, 0), ("raw", 0, 4)]
