"""The routing stage's native fast path (native/: processors.validation.FAST_PATH, routing
with processors.identity.NativeAccountDirectory, processors.routing.forwarded_messages)
held to the interpreted path it stands in for: it accepts only events ``validate_event``
accepts, reads them alike, and routes them as the interpreted path does, what it forwards
decoding to the dict the interpreted path forwards, member for member and in order."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from processors.fast_routing import native
from processors.identity import AccountDirectory, Directory, NativeAccountDirectory
from processors.routing import RoutedBatch, forwarded_messages, route_batch
from processors.validation import FAST_PATH, Rejection, validate_event
from schemas.events import EVENT_TYPES, MAX_STRING_LENGTH
from streams.simulator import encode, iter_events
from tests.hot_path_digest import digest_of_a_run

pytestmark = pytest.mark.skipif(native is None, reason="installed without the native fast path (ABM_PURE_PYTHON=1)")

RECEIVED_AT_MS = 1_800_000_000_000  # 2027-01-15
ORIGIN = ("raw.topic", 3, 41)

TIMES = st.one_of(
    st.sampled_from(
        [
            "2026-10-09T14:22:18.353Z", "2026-10-09T14:22:18Z", "2026-10-09T14:22:18.3Z", "2026-10-09T14:22:18.123456Z",
            "2026-10-09T14:22:18.1234567Z", "2026-10-09T14:22:18,353Z", "2026-10-09t14:22:18z", "2026-10-09T14:22:18.353+05:30",
            "2026-10-09T14:22:18-00:00", "2026-10-09T14:22:18+23:59", "2026-10-09T14:22:18+24:00", "2026-10-09T14:22:18+05:60",
            "2026-10-09T14:22:18+05:30:15", "2026-10-09T24:00:00Z", "2026-10-09T14:22:60Z", "2026-10-09", "2026-10-09T14:22:18",
            "20261009T142218Z", "2024-02-29T00:00:00Z", "2026-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-12-31T23:59:59.999999Z",
            "1999-12-31T23:59:59.999Z", "2000-01-01T00:00:00Z", "2027-01-16T00:00:00Z", "2027-01-16T00:00:00.001Z", "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z", " 2026-10-09T14:22:18Z", "2026-10-09T14:22:18Z ", "２０２６-10-09T14:22:18Z", "",
        ]
    ),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=946_684_800_000 - 10, max_value=RECEIVED_AT_MS + 86_400_010),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.builds(lambda ms, h, m: f"{ms}+{h:02d}:{m:02d}", st.sampled_from(["2026-10-09T14:22:18", "2026-03-01T00:00:00.5"]), st.integers(0, 25), st.integers(0, 61)),
)
VALUES = st.one_of(
    st.none(), st.just(""), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.sampled_from(["x" * MAX_STRING_LENGTH, "x" * (MAX_STRING_LENGTH + 1), "é" * MAX_STRING_LENGTH, "é" * (MAX_STRING_LENGTH + 1), "a\u0000b"]),
    st.sampled_from(["call", "demo", "hard", "soft", "USD", "usd", "US"]),
    st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def base_event(event_type: str) -> dict[str, Any]:
    """A valid event of the type, with every field it may name."""
    event: dict[str, Any] = {
        "event_id": "e-1", "type": event_type, "occurred_at": "2026-10-09T14:22:18.353Z", "source": "crm", "account_id": "acct-1",
        "account_domain": "acme.example", "contact_id": "ct-1", "email": "Ann+x@Acme.example", "campaign_id": "camp-1", "url": "https://acme.example/",
        "content_id": "webinar-1",
    }
    properties = {"form_id": "f1", "meeting_type": "demo", "opportunity_id": "o1", "stage": "won", "amount": 10.5, "currency": "USD", "score": 9}
    event["properties"] = {f.name: properties[f.name] for f in EVENT_TYPES[event_type].properties if f.name in properties}
    return event


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """Valid events of every type, most of them then broken or bent in one or a few ways."""
    event = base_event(draw(st.sampled_from(sorted(EVENT_TYPES))))
    for _ in range(draw(st.integers(0, 3))):
        change = draw(st.sampled_from(["field", "drop", "time", "received", "property", "properties", "type", "extra"]))
        if change == "field":
            event[draw(st.sampled_from(sorted(event)))] = draw(VALUES)
        elif change == "drop":
            event.pop(draw(st.sampled_from(sorted(event))), None)
        elif change == "time":
            event["occurred_at"] = draw(TIMES)
        elif change == "received":
            event["received_at"] = draw(TIMES)
        elif change == "property":
            names = [f.name for t in EVENT_TYPES.values() for f in t.properties] + ["other"]
            event.setdefault("properties", {})
            if isinstance(event["properties"], dict):
                event["properties"][draw(st.sampled_from(names))] = draw(VALUES)
        elif change == "properties":
            event["properties"] = draw(VALUES)
        elif change == "type":
            event["type"] = draw(st.one_of(st.sampled_from(["nope", "Page_view", ""]), VALUES))
        else:
            event[draw(st.sampled_from(["_origin", "_seniority", "occurred_at_ms", "received_at_ms", "nested", "n"]))] = draw(
                st.one_of(VALUES, st.just([[[1, {"a": [2.5, None]}]]]), st.just(-(2**80)), st.just(2**64 - 1))
            )
    return event


@st.composite
def raw_events(draw: st.DrawFn) -> bytes:
    """An event as some source may send it: compact or spaced, members repeated, or
    bytes that are not an event at all."""
    event = draw(events())
    # the standard library's encoder: integers beyond 64 bits too
    raw = json.dumps(event, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2])), separators=(",", ":")).encode()
    form = draw(st.sampled_from(["as is", "spaced", "repeated member", "escaped", "not an object", "cut", "bad utf-8", "odd member"]))
    if form == "spaced":
        raw = b" \n" + raw + b" \t\n"
    elif form == "repeated member" and raw.startswith(b"{") and len(raw) > 2:
        name = draw(st.sampled_from(["type", "occurred_at", "account_id", "_origin", "event_id", "properties"]))
        first = json.dumps({name: draw(VALUES)}).encode()[1:-1]
        raw = b"{" + first + b"," + raw[1:] if draw(st.booleans()) else raw[:-1] + b"," + first + b"}"
    elif form == "escaped":
        raw = raw.replace(b"e-1", b"\\u0065-1").replace(b"Ann", b"\\u00c5nn")
    elif form == "not an object":
        raw = draw(st.sampled_from([b"[]", b"1", b'"x"', b"null", b"", b"{}"]))
    elif form == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif form == "bad utf-8":
        raw = raw.replace(b"crm", b"cr\xff")
    elif form == "odd member" and raw.startswith(b"{") and len(raw) > 2:  # one no contract names: still read
        odd = draw(st.sampled_from([b'"\\ud800"', b'"\xff"', b'"\\udc00x"', b'[1,{"a":"\\ud83d\\ude00"}]', b"1e400", b"-0"]))
        raw = b'{"zz":' + odd + b"," + raw[1:]
    return raw


def scan(raws: list[Any]) -> list[Any]:
    assert FAST_PATH is not None
    scanned: list[Any] = FAST_PATH.scan(raws, RECEIVED_AT_MS)
    return scanned


def scanned_by_python(event: dict[str, Any]) -> tuple[Any, ...]:
    return (event["type"], event["occurred_at_ms"], event.get("account_id"), event.get("contact_id"), event.get("email"), event.get("account_domain"))


def routed_by_each(raws: list[bytes | None], title: str | None = None) -> list[dict[str, Any]]:
    """The batch routed by the native directory and by the interpreted one (each knowing
    one account and one contact, with its title): everything routing derives, forwarded
    events decoded (their members in order)."""
    outcomes = []
    for directory in (NativeAccountDirectory(), AccountDirectory()):
        directory.learn_account('acct-9"é', ["acme.example"])
        directory.learn_contact("ct-1", None, 'acct-9"é', title)
        routed = route_batch(raws, [(ORIGIN[0], ORIGIN[1], ORIGIN[2] + i) for i in range(len(raws))], RECEIVED_AT_MS, 8, directory)
        outcomes.append(outcome(routed, directory))
    return outcomes


def outcome(routed: RoutedBatch, directory: Directory) -> dict[str, Any]:
    return {
        "forwarded": {p: [list(e.items()) for m in forwarded_messages(events) for e in orjson.loads(m)] for p, events in routed.by_partition.items()},
        "partitions": list(routed.by_partition),
        "rejected": [(i, r.reason, r.message) for i, r in routed.rejected],
        "unresolved": [(i, list(event.items()), waiting_on) for i, event, waiting_on in routed.unresolved],
        "learned": routed.learned_contacts,
        "valid_by_type": list(routed.valid_by_type.items()),
        "contacts": directory.contacts,
    }


@settings(max_examples=3_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_events(), st.sampled_from([None, "VP Sales", "Chief of Staff"]))
@example(orjson.dumps(base_event("page_view")), None)
def test_the_fast_path_accepts_only_valid_events_and_routes_them_as_python_would(raw: bytes, title: str | None) -> None:
    [scanned] = scan([raw])
    expected = validate_event(raw, RECEIVED_AT_MS)
    if scanned is not None:
        assert not isinstance(expected, Rejection), (raw, expected)
        assert scanned == scanned_by_python(expected)
    with_it, without = routed_by_each([raw], title)
    assert with_it == without


def test_the_fast_path_takes_the_simulators_events_and_leaves_what_it_is_unsure_of() -> None:
    """The case that gives it its speed: every simulated event. And what it leaves."""
    raws = [encode(event) for event in iter_events(seed=3, accounts=50, count=2_000)]
    assert all(scanned is not None for scanned in scan(raws))
    unsure = {
        "comma": orjson.dumps({**base_event("page_view"), "occurred_at": "2026-10-09T14:22:18,353Z"}),
        "pattern": orjson.dumps(base_event("opportunity_stage_changed")),  # its currency must match [A-Z]{3}
        "deep": orjson.dumps({**base_event("page_view"), "x": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}).replace(b"[1]", b"[" * 130 + b"1" + b"]" * 130),
        "rejected": orjson.dumps({**base_event("page_view"), "url": None}),
    }
    assert [name for name, raw in unsure.items() if scan([raw])[0] is not None] == []
    assert [name for name, raw in unsure.items() if isinstance(validate_event(raw, RECEIVED_AT_MS), Rejection)] == ["rejected"]
    assert scan([None, b"", bytearray(raws[0])]) == [None, None, None]


def test_events_left_to_the_interpreted_path_are_routed_in_their_place() -> None:
    """One the fast path leaves (a time only Python parses) teaches the directory its
    contact; the fast events of that contact after it resolve by it, those before wait."""
    contact = {**base_event("page_view"), "contact_id": "ct-new", "email": None, "account_domain": None}
    raws: list[bytes | None] = [
        orjson.dumps({**contact, "account_id": None, "event_id": "before"}),
        orjson.dumps({**contact, "account_id": "acct-7", "occurred_at": "2026-10-09T14:22:18,353Z", "event_id": "teaches"}),
        orjson.dumps({**contact, "account_id": None, "event_id": "after"}),
        None,
        orjson.dumps({**base_event("email_open"), "event_id": "explicit"}),
    ]
    assert [s is not None for s in scan(raws)] == [True, False, True, False, True]
    with_it, without = routed_by_each(raws)
    assert with_it == without
    assert [i for i, _, waiting_on in with_it["unresolved"]] == [0]
    forwarded_ids = sorted(dict(e)["event_id"] for events in with_it["forwarded"].values() for e in events)
    assert forwarded_ids == ["after", "explicit", "teaches"]
    assert with_it["valid_by_type"] == [("page_view", 3), ("email_open", 1)]


def test_forwarded_messages_hold_at_most_the_events_and_bytes_given_and_keep_the_order() -> None:
    raws = [encode(event) for event in iter_events(seed=5, accounts=20, count=1_203)]
    events: list[Any] = list(raws)
    events.insert(7, {"decoded": "by Python"})  # an event the interpreted path routed
    large = orjson.dumps({"big": "x" * 70_000})
    events.insert(100, large)
    messages = forwarded_messages(events, 500, 64 * 1024)
    decoded = [orjson.loads(message) for message in messages]
    assert all(len(events) <= 500 for events in decoded)
    assert all(len(message) <= 64 * 1024 for message, events in zip(messages, decoded) if len(events) > 1)
    assert [events for events in decoded if len(events) == 1 and "big" in events[0]] == [[orjson.loads(large)]]  # larger: alone
    flat = [event for events in decoded for event in events]
    assert flat == [orjson.loads(e) if isinstance(e, bytes) else e for e in events]
    assert forwarded_messages([], 500, 1024) == []


def test_routing_and_folding_derive_the_same_with_and_without_the_fast_path() -> None:
    """Everything processors/ derives from one stream (tests/hot_path_digest.py: late,
    repeated, unresolved and bad events, times in forms only Python parses)."""
    with_it, without = digest_of_a_run(), digest_of_a_run("--no-native")
    assert (with_it.pop("native"), without.pop("native")) == (True, False)
    assert with_it == without
