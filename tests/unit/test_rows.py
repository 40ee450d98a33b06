"""Event rows made natively from forwarded messages (abm_native.claimed_event_rows, through
streams.rows.forwarded_rows) held to ``event_row`` of the decoded events: the same
values, ``properties`` as orjson writes the decoded dict (floats, escapes, repeated
members, nesting), whatever form the message's JSON took."""

from __future__ import annotations

import json
import struct
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from processors.fast_routing import native
from streams.rows import event_row, forwarded_rows

pytestmark = pytest.mark.skipif(native is None, reason="installed without native code (ABM_PURE_PYTHON=1)")

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False), TEXT,
    st.sampled_from([1e16, 1e-5, 1e-6, 1.5e15, 123456.789e10, -0.0, 5e-324, 0.1 + 0.2, "a\x1f\"\\/\u2028\x7f", "\b\f\n\r\t\x00"]),
)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
OPTIONAL = st.one_of(st.none(), st.just(""), TEXT)


@st.composite
def forwarded_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": draw(TEXT), "type": "page_view", "source": draw(TEXT), "account_id": draw(TEXT),
        "occurred_at_ms": draw(st.integers(0, 2**50)), "received_at_ms": draw(st.integers(0, 2**50)),
        "_origin": ["raw", 1, 2],
    }
    for name in ("contact_id", "email", "campaign_id", "url", "content_id"):
        if draw(st.booleans()):
            event[name] = draw(OPTIONAL)
    if draw(st.booleans()):
        event["properties"] = draw(st.one_of(st.none(), st.dictionaries(TEXT, JSON, max_size=4)))
    return event


def message_text(events: list[dict[str, Any]], form: str) -> bytes:
    """The events as a forwarded message: as orjson writes them (routed by Python), or in
    another form their raw bytes may take (routed by the fast path, spliced)."""
    if form == "orjson":
        return orjson.dumps(events)
    if form == "repeated member":  # a source's repeated property: the last one counts, in the first one's place
        text = orjson.dumps(events).decode()
        return text.replace('"properties":{"', '"properties":{"z":1,"y":2,"z":[3.0,1E2],"', 1).encode()
    return json.dumps(events, ensure_ascii=form == "ascii", indent=2 if form == "indented" else None).encode()


def read_rows(data: bytes, count: int) -> list[tuple[Any, ...]]:
    """RowBinary of events_claimed's columns, read back."""
    rows, at = [], 0

    def text() -> str:
        nonlocal at
        length, shift = 0, 0
        while True:
            byte = data[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        at += length
        return data[at - length : at].decode()

    def number(form: str) -> int:
        nonlocal at
        (value,) = struct.unpack_from(form, data, at)
        at += struct.calcsize(form)
        return int(value)

    for _ in range(count):
        strings = [text() for _ in range(9)]
        times = [number("<q"), number("<q")]
        rows.append((*strings, *times, text(), number("<H"), number("<Q"), number("<I"), number("<Q")))
    assert at == len(data)
    return rows


@settings(max_examples=1_500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(forwarded_events(), min_size=1, max_size=4), st.sampled_from(["orjson", "ascii", "utf-8", "indented", "repeated member"]), st.data())
@example([{"event_id": "e", "type": "t", "source": "s", "account_id": "a", "occurred_at_ms": 1, "received_at_ms": 2, "properties": {"n": 1e16}}], "utf-8", None)
def test_native_rows_are_the_rows_event_row_gives(events: list[dict[str, Any]], form: str, data: Any) -> None:
    message = message_text(events, form)
    decoded = orjson.loads(message)
    indices = list(range(len(events))) if data is None else data.draw(st.lists(st.sampled_from(range(len(events))), unique=True))
    positions = [(3, 41, index) for index in indices] + [(5, 7, 0)]
    messages = {(3, 41): (message, 9), (5, 7): (orjson.dumps(events[:1]), 2)}
    encoded = forwarded_rows(messages, positions)
    expected = [event_row(decoded[index], 3, 41, index, 9) for index in indices] + [event_row(events[0], 5, 7, 0, 2)]
    assert len(encoded) == len(expected)
    assert read_rows(encoded.data, len(encoded)) == expected


def test_a_message_that_is_not_forwarded_events_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a JSON array of events"):
        forwarded_rows({(0, 0): (b'{"a": 1}', 1)}, [(0, 0, 0)])
    with pytest.raises(ValueError, match="no event 1"):
        forwarded_rows({(0, 0): (b"[{}]", 1)}, [(0, 0, 1)])
    with pytest.raises(ValueError, match="expected a string"):
        forwarded_rows({(0, 0): (b'[{"event_id": 7}]', 1)}, [(0, 0, 0)])
