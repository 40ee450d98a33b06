import orjson
import pytest
from hypothesis import given, settings, strategies as st

from processors.validation import (
    MAX_EVENT_BYTES,
    Reason,
    Rejection,
    parse_timestamp_ms,
    validate_account,
    validate_contact,
    validate_event,
)

NOW = 1_763_964_000_000  # 2025-11-24T06:00:00Z


def event(**overrides):
    base = {
        "event_id": "e-1",
        "type": "email_click",
        "occurred_at": "2025-11-24T05:00:00.250Z",
        "source": "sendgrid",
        "account_id": "acct-1",
        "campaign_id": "c-1",
        "url": "https://x.example/a",
    }
    base.update(overrides)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_valid_event_is_normalized():
    result = validate_event(event(), NOW)
    assert not isinstance(result, Rejection)
    assert result["occurred_at_ms"] == NOW - 3_600_000 + 250
    assert result["received_at_ms"] == NOW


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"\xff\xfe{}", Reason.NOT_UTF8),
        (b"{not json", Reason.NOT_JSON),
        (b"[1, 2]", Reason.NOT_OBJECT),
        (event(type="fax"), Reason.UNKNOWN_TYPE),
        (event(event_id=...), Reason.MISSING_FIELD),
        (event(url=...), Reason.MISSING_FIELD),
        (event(account_id=7), Reason.BAD_FIELD),
        (event(properties=[1]), Reason.BAD_FIELD),
        (event(occurred_at="yesterday"), Reason.BAD_TIMESTAMP),
        (event(occurred_at="2025-11-24T05:00:00"), Reason.BAD_TIMESTAMP),
        (event(occurred_at="1999-12-31T23:59:59Z"), Reason.BAD_TIMESTAMP),
        (event(occurred_at="2025-11-25T06:00:01Z"), Reason.BAD_TIMESTAMP),
        (b" " * (MAX_EVENT_BYTES + 1), Reason.TOO_LARGE),
    ],
)
def test_rejections_carry_their_reason(raw, reason):
    result = validate_event(raw, NOW)
    assert isinstance(result, Rejection)
    assert result.reason is reason
    assert result.message


def test_timestamps():
    assert parse_timestamp_ms(1_700_000_000_123) == 1_700_000_000_123
    assert parse_timestamp_ms("2023-11-14T22:13:20.123+00:00") == 1_700_000_000_123
    assert parse_timestamp_ms("2023-11-14T23:13:20.123+01:00") == 1_700_000_000_123
    assert parse_timestamp_ms(True) is None


@settings(max_examples=500)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash(raw):
    result = validate_event(raw, NOW)
    assert isinstance(result, Rejection) or result["occurred_at_ms"] > 0


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["event_id", "type", "occurred_at", "source", "url", "campaign_id", "properties", "account_id"]),
                       st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(max_size=30), st.booleans(), st.lists(st.integers(0, 9), max_size=2))))
def test_arbitrary_objects_never_crash(data):
    result = validate_event(orjson.dumps(data), NOW)
    assert isinstance(result, (Rejection, dict))


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"name": "Acme", "domains": ["acme.com"]}, Reason.MISSING_FIELD),
        ({"account_id": 7}, Reason.BAD_FIELD),
        ({"account_id": "a1", "domains": "acme.com"}, Reason.BAD_FIELD),
        ({"account_id": "a1", "domains": ["acme.com", 3]}, Reason.BAD_FIELD),
        ({"account_id": "a1", "target": "yes"}, Reason.BAD_FIELD),
    ],
)
def test_bad_account_records(record, reason):
    result = validate_account(orjson.dumps(record))
    assert isinstance(result, Rejection) and result.reason is reason and result.message


def test_account_and_contact_records():
    account = validate_account(b'{"account_id": "a1", "name": "Acme", "target": true, "tier": "1"}')
    assert account == {"account_id": "a1", "name": "Acme", "target": True, "tier": "1", "domains": []}
    assert validate_contact(b'{"email": "x@acme.com", "account_id": "a1"}')["email"] == "x@acme.com"
    assert validate_contact(b'{"account_id": "a1", "title": "CTO"}').reason is Reason.MISSING_FIELD
    assert validate_contact(b'{"contact_id": "c1"}').reason is Reason.MISSING_FIELD
    assert validate_contact(b"[]").reason is Reason.NOT_OBJECT


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_and_always_say_why(raw):
    result = validate_event(raw, NOW)
    assert isinstance(result, dict) or (isinstance(result, Rejection) and result.message and result.reason in Reason)
