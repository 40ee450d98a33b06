"""The native fold (abm_native.Fold, through streams.folding.NativeFolding and
streams.state.NativeAccountStates) derives what the interpreted one derives: the events
applied, the duplicates, the transitions, the accounts' rows, and the bytes of every state
and held segment it writes, checkpoint after checkpoint, also after its states left memory
and were read back from the store (processors/ stays the definition)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.dedup import DedupPolicy
from processors.fast_routing import native
from processors.identity import account_partition
from processors.scoring import DAY_MS, AccountState, json_of
from streams.folding import FoldRules, InterpretedFolding, NativeFolding, interpreted_folding, native_folding
from streams.rules import load_rules

pytestmark = pytest.mark.skipif(native is None, reason="native code is not built (ABM_PURE_PYTHON=1)")

PARTITIONS = 3
T0 = 1_763_942_400_000  # 2025-11-24T00:00Z, the start of a UTC day
ACCOUNTS = ("acme", "globex", "initech", "umbrella", "hooli")
KINDS = (
    "email_open",
    "email_click",
    "page_view",
    "form_submitted",
    "webinar_signup",
    "meeting_booked",
    "opportunity_stage_changed",
    "email_sent",
    "nps_response",
)
CONTACTS = ("c1", "c2", "Ça-3", "x" * 80, "", None)  # the long one is kept by its digest


@st.composite
def forwarded_event(draw: Any) -> dict[str, Any]:
    kind = draw(st.one_of(st.sampled_from(KINDS), st.just("email_open")))  # opens: past their daily cap
    event: dict[str, Any] = {
        "event_id": draw(st.sampled_from([f"e{i}" for i in range(40)])),  # repeats: duplicates
        "source": draw(st.sampled_from(["sendgrid", "hubspot"])),
        "type": kind,
        "account_id": draw(st.sampled_from(ACCOUNTS)),
        # quarter days apart or together: equal times and day boundaries come often
        "occurred_at_ms": T0 + draw(st.integers(-12, 400)) * DAY_MS // 4 + draw(st.sampled_from([0, 0, 1, 999])),
        "received_at_ms": T0,
    }
    contact = draw(st.sampled_from(CONTACTS))
    if draw(st.booleans()):
        event["contact_id"] = contact
    if draw(st.booleans()):
        event["email"] = draw(st.sampled_from(["a@acme.com", None, ""]))
    if kind == "page_view":
        event["url"] = draw(st.sampled_from(["https://acme.com/pricing", "https://acme.com/blog", None]))
    properties: dict[str, Any] = {}
    if kind == "opportunity_stage_changed":
        properties = {"opportunity_id": draw(st.sampled_from(["o1", "o2"])), "is_closed": draw(st.booleans()), "is_won": draw(st.booleans()), "amount": 1e16}
    elif kind == "form_submitted":
        properties = {"form_id": draw(st.sampled_from(["Demo-Request", "newsletter", "ÉTÉ"])), "cta_id": draw(st.sampled_from(["pricing", None, "x"]))}
    elif kind == "email_open":
        properties = {"machine_open": draw(st.sampled_from([True, False, 1]))}
    if properties or draw(st.booleans()):
        event["properties"] = properties or draw(st.sampled_from([None, {}, {"ratio": 0.1, "nested": [1.5, "ü"]}]))
    if draw(st.booleans()):
        event["_seniority"] = draw(st.sampled_from(["vp", "c_level", "other", None]))
    if draw(st.integers(0, 3)):
        event["_origin"] = ["raw", draw(st.integers(0, 1)), draw(st.integers(0, 30))]  # repeats: re-forwarded
    return event


class StoreTable:
    """Faust's memory store as AccountStates reads and writes it (one mapping)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


def write(states: Any, store: StoreTable, changes: list[tuple[int, bytes, bytes | None]]) -> None:
    """What AccountStates.write leaves in the store (without the changelog)."""
    for _, key, value in changes:
        if value is None:
            store.data.pop(key, None)
        else:
            store.data[key] = value
        states._unstored.pop(key, None)


def fold_rules(max_held: int, lateness_ms: int, capacity: int, max_contacts: int, max_ids: int, min_score: float) -> FoldRules:
    dedup = DedupPolicy(horizon_ms=2 * DAY_MS, max_ids=max_ids)
    config, rules = load_rules(None, 14 * DAY_MS, 2 * DAY_MS, max_contacts)
    return FoldRules(config, replace(rules, consideration_min_score=min_score), dedup, max_held, lateness_ms, capacity)


def twin_foldings(stores: tuple[StoreTable, StoreTable], rules: FoldRules, max_cached: int) -> tuple[InterpretedFolding, NativeFolding]:
    """The interpreted and the native folding, each over its own store."""
    return (
        interpreted_folding(stores[0], None, PARTITIONS, max_cached, 1 << 30, rules),
        native_folding(stores[1], None, PARTITIONS, max_cached, 1 << 30, rules),
    )


class Twins:
    """The interpreted and the native folding side by side, each with its own store."""

    def __init__(self, rules: FoldRules, max_cached: int) -> None:
        self.stores = StoreTable(), StoreTable()
        self.foldings = twin_foldings(self.stores, rules, max_cached)
        for folding in self.foldings:
            folding.reset(range(PARTITIONS), {p: -1 for p in range(PARTITIONS)})

    def same(self, do: Any) -> Any:
        results = [do(folding) for folding in self.foldings]
        assert results[0] == results[1]
        return results[0]

    def fold(self, batch: list[tuple[int, int, bytes]]) -> None:
        self.same(lambda folding: folding.fold(batch))
        self.same(lambda folding: sorted(folding.take_changed_rows(T0)))
        self.same(lambda folding: folding.watermarks())

    def checkpoint(self) -> None:
        """A checkpoint writes the states."""
        changes = self.same(lambda folding: sorted(folding.states.take_changes(), key=lambda c: c[1]))
        for folding, store in zip(self.foldings, self.stores):
            write(folding.states, store, changes)
        assert self.stores[0].data == self.stores[1].data

    def rebalance(self) -> None:
        """The store is the truth again: states leave memory, the schedule scans them."""
        for folding in self.foldings:
            folding.states.forget()
            folding.reset(range(PARTITIONS), {p: folding.latest(p) for p in range(PARTITIONS)})
        self.same(lambda folding: folding.settle_due())

    def held(self) -> tuple[int, int, int]:
        return self.same(lambda folding: (folding.states.cached, folding.states.held))


def one_account_messages(events: list[dict[str, Any]]) -> list[tuple[int, int, bytes]]:
    partition = account_partition(events[0]["account_id"], PARTITIONS)
    return [(partition, offset, orjson.dumps([event])) for offset, event in enumerate(events)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(forwarded_event(), min_size=0, max_size=6), min_size=1, max_size=30),
    st.sampled_from([0, 1, 3, 20_000]),  # events an account holds
    st.sampled_from([0, 3_600_000, 3 * DAY_MS]),  # allowed lateness
    st.sampled_from([1, 2, 100]),  # accounts the schedule keeps per partition
    st.sampled_from([1, 20_000]),  # engaged contacts remembered
    st.sampled_from([1, 2.5, 15, 0.0001234, 1234567.0]),  # a score stage reasons show
    st.randoms(use_true_random=False),
)
def test_the_native_fold_derives_what_the_interpreted_fold_derives(messages, max_held, lateness_ms, capacity, max_contacts, min_score, rnd):
    twins = Twins(fold_rules(max_held, lateness_ms, capacity, max_contacts, rnd.choice([1, 1_000]), min_score), max_cached=rnd.choice([1, 3, 100]))
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    forwarded = []
    for events in messages:  # in the partition of its first event's account
        partition = rnd.randrange(PARTITIONS) if not events else account_partition(events[0]["account_id"], PARTITIONS)
        forwarded.append((partition, offsets[partition], orjson.dumps(events)))
        offsets[partition] += 1
    if forwarded and rnd.random() < 0.5:
        forwarded += forwarded[: rnd.randint(1, len(forwarded))]  # redelivered: replayed positions
    start = 0
    while start < len(forwarded):
        batch = forwarded[start : start + rnd.randint(1, 5)]
        start += len(batch)
        twins.fold(batch)
        if rnd.random() < 0.4:
            twins.checkpoint()
            if rnd.random() < 0.3:
                twins.rebalance()
    twins.held()


def test_the_boundaries_of_pruning_and_of_daily_caps_are_those_of_the_interpreted_fold() -> None:
    """A contact engaged exactly when the 90 days a state remembers begin; a day's opens
    past the cap at one instant, the heavier counted first."""
    twins = Twins(fold_rules(20_000, 0, 100, 20_000, 1_000, 15), max_cached=100)

    def event(i: int, at: int, contact: str, seniority: str, kind: str = "email_open") -> dict[str, Any]:
        return {"event_id": f"e{i}", "source": "s", "type": kind, "account_id": "acme", "occurred_at_ms": at, "received_at_ms": T0, "contact_id": contact, "_seniority": seniority}

    opens = [event(i, T0, "c1", seniority) for i, seniority in enumerate(["other", "vp", "manager", "c_level", "director"])]
    twins.fold(one_account_messages(opens))
    twins.checkpoint()
    state = AccountState.from_bytes(twins.stores[1].data[b"acme"])
    assert sorted(weight for _, weight in state.capped[f"{T0 // DAY_MS}|email_open|c1"]) == [1.3, 1.6, 2.0]
    twins.fold([(p, offset + len(opens), message) for p, offset, message in one_account_messages([event(10, T0 + 90 * DAY_MS, "c3", "other", "page_view")])])
    twins.checkpoint()
    state = AccountState.from_bytes(twins.stores[1].data[b"acme"])
    assert sorted(state.contacts) == ["c1", "c3"]  # c1's last engagement is the first instant remembered


def test_states_of_earlier_forms_load_as_the_interpreted_fold_loads_them() -> None:
    """States stored before recent_ids were packed, daily was a list of pairs, held events
    were their applied part, and some members existed: read as AccountState.from_bytes
    reads them, they are written back as it writes them."""
    legacy = {
        "account_id": "acme",
        "score": 3.5,
        "score_at_ms": T0,
        "events_total": 2,
        "counts": {"email_open": 2},
        "contacts": {"c1": T0},
        "first_event_ms": T0 - 5,
        "last_event_ms": T0,
        "stage": "awareness",
        "stage_since_ms": T0,
        "applied_upto": [4, 1],
        "recent_ids": {"12345": T0, "99": T0 - 5},
        "daily": {str(T0 // DAY_MS): {"email_open": 2}},
        "held": [[T0 + 9, "sendgrid", "e9", {"event_id": "e9", "source": "sendgrid", "type": "page_view", "occurred_at_ms": T0 + 9, "account_id": "acme", "email": "a@acme.com", "contact_id": "c9"}]],
    }
    raw = orjson.dumps(legacy)
    rules = fold_rules(20_000, DAY_MS, 100, 20_000, 1_000, 15)
    store = StoreTable()
    store.data[b"acme"] = raw
    folding = native_folding(store, None, PARTITIONS, 100, 1 << 30, rules)
    replayed = {"event_id": "e1", "source": "sendgrid", "type": "email_open", "account_id": "acme", "occurred_at_ms": T0, "received_at_ms": T0}
    assert folding.fold([(0, 4, orjson.dumps([replayed]))]).applied == []  # read from the store, changed in nothing
    assert folding.states.native.state_json("acme") == AccountState.from_bytes(raw).to_bytes()


def test_a_state_over_the_compression_threshold_is_stored_as_the_interpreted_fold_stores_it() -> None:
    """A busy account's state (thousands of event ids) is compressed the same way."""
    rules = fold_rules(20_000, 0, 100, 20_000, 200_000, 15)
    events = [
        {"event_id": f"e{i}", "source": "s", "type": "page_view", "account_id": "acme", "occurred_at_ms": T0 + i, "received_at_ms": T0, "contact_id": f"c{i % 7}"}
        for i in range(6_000)
    ]
    stores = StoreTable(), StoreTable()
    foldings = twin_foldings(stores, rules, 10)
    changes = []
    for folding in foldings:
        folding.fold([(0, offset, orjson.dumps(events[offset * 500 : offset * 500 + 500])) for offset in range(12)])
        changes.append(sorted(folding.states.take_changes(), key=lambda c: c[1]))
    assert changes[0] == changes[1]
    state = [value for _, key, value in changes[1] if key == b"acme"][0]
    assert state[:1] != b"{" and len(json_of(state)) > 64 * 1024  # compressed


def test_a_forwarded_message_that_is_not_events_is_refused_with_its_reason() -> None:
    folding = native_folding(StoreTable(), None, PARTITIONS, 10, 1 << 30, fold_rules(0, 0, 100, 20_000, 1_000, 15))
    with pytest.raises(ValueError, match="not a JSON array of events"):
        folding.fold([(0, 0, b'{"event_id": 1}')])
    with pytest.raises(ValueError, match="no account_id"):
        folding.fold([(0, 1, b'[{"event_id": "e", "occurred_at_ms": 1}]')])


def test_python_general_format_of_stage_reasons() -> None:
    """Stage reasons show numbers as Python's format(x, "g") does."""
    rnd = random.Random(7)
    for value in [1, 2.5, 15, 0.0001234, 1234567.0, 999999.5, 1e-5, 123456, 0.1 + 0.2] + [rnd.uniform(0, 1e7) for _ in range(200)]:
        rules = fold_rules(0, 0, 100, 20_000, 1_000, value)
        stores = StoreTable(), StoreTable()
        foldings = twin_foldings(stores, rules, 10)
        events = [{"event_id": f"e{i}", "source": "s", "type": "meeting_booked", "account_id": "acme", "occurred_at_ms": T0 + i, "received_at_ms": T0, "contact_id": f"c{i}"} for i in range(3)]
        results = [folding.fold([(0, 0, orjson.dumps(events))]).transitions for folding in foldings]
        assert results[0] == results[1]
