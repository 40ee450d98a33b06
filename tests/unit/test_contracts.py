"""The contracts: generated JSON Schemas match the Python definitions, and the validator
and the JSON Schemas agree on good and bad events and records."""

from __future__ import annotations

import jsonschema
import orjson
import pytest

from processors.validation import Reason, Rejection, validate_event, validate_record
from schemas.events import EVENT_TYPES, RECORD_TYPES, source_topics
from schemas.jsonschema import FOLDER, rendered

NOW = 1_763_964_000_000
SCHEMAS = {name: orjson.loads(text) for name, text in rendered().items()}

# One good event per type: the envelope, the fields it requires, its required properties.
GOOD_PROPERTIES = {
    "email_open": {"machine_open": False},
    "email_bounced": {"bounce_type": "hard"},
    "page_view": {"path": "/pricing", "referrer": "https://www.google.com/"},
    "webinar_attended": {"minutes": 42.5},
    "form_submitted": {"form_id": "f-contact", "cta_id": "cta-demo"},
    "meeting_booked": {"meeting_type": "demo"},
    "opportunity_stage_changed": {"opportunity_id": "o-1", "stage": "proposal", "amount": 25000, "currency": "EUR", "is_closed": False},
    "nps_response": {"score": 9, "comment": "great"},
}
ENVELOPE_VALUES = {"campaign_id": "camp-1", "url": "https://x.example/a", "content_id": "webinar-1", "account_id": "acct-1"}

# (type, properties) that break one rule, and the reason the validator must give.
BAD_PROPERTIES = [
    ("nps_response", {"score": 11}, Reason.OUT_OF_RANGE),
    ("nps_response", {"score": -1}, Reason.OUT_OF_RANGE),
    ("nps_response", {"score": 7.5}, Reason.BAD_FIELD),
    ("nps_response", {}, Reason.MISSING_FIELD),
    ("opportunity_stage_changed", {"opportunity_id": "o-1", "stage": "won", "amount": -5, "currency": "EUR"}, Reason.OUT_OF_RANGE),
    ("opportunity_stage_changed", {"opportunity_id": "o-1", "stage": "won", "amount": 2e12, "currency": "EUR"}, Reason.OUT_OF_RANGE),
    ("opportunity_stage_changed", {"opportunity_id": "o-1", "stage": "won", "amount": 10}, Reason.MISSING_FIELD),
    ("opportunity_stage_changed", {"opportunity_id": "o-1", "stage": "won", "amount": 10, "currency": "eur"}, Reason.BAD_FIELD),
    ("opportunity_stage_changed", {"stage": "won"}, Reason.MISSING_FIELD),
    ("meeting_booked", {"meeting_type": "lunch"}, Reason.BAD_FIELD),
    ("form_submitted", {"form_id": 12}, Reason.BAD_FIELD),
    ("email_open", {"machine_open": "yes"}, Reason.BAD_FIELD),
    ("webinar_attended", {"minutes": -3}, Reason.OUT_OF_RANGE),
    ("email_bounced", {"bounce_type": "medium"}, Reason.BAD_FIELD),
]


def good_event(kind: str, **changes) -> dict:
    event = {"event_id": "e-1", "type": kind, "occurred_at": "2025-11-24T05:00:00.250Z", "source": "test"}
    event.update({name: ENVELOPE_VALUES[name] for name in EVENT_TYPES[kind].required})
    if kind in GOOD_PROPERTIES:
        event["properties"] = GOOD_PROPERTIES[kind]
    event.update(changes)
    return event


def schema_accepts(name: str, document: dict) -> bool:
    return jsonschema.Draft202012Validator(SCHEMAS[name]).is_valid(document)


def test_committed_schema_files_are_the_generated_ones():
    committed = {path.name: path.read_bytes() for path in FOLDER.glob("*.json")}
    assert committed == rendered(), "run `python -m schemas.jsonschema` and commit schemas/json/"


def test_every_schema_is_a_valid_draft_2020_12_schema():
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_type_has_a_schema_and_the_four_original_topics_stand():
    assert set(SCHEMAS) == {f"event.{t}.json" for t in EVENT_TYPES} | {f"record.{r}.json" for r in RECORD_TYPES}
    assert {t: EVENT_TYPES[t].topic for t in ("email_open", "email_click", "page_view", "webinar_signup")} == {
        "email_open": "email.opens", "email_click": "email.clicks", "page_view": "web.page-views", "webinar_signup": "webinar.signups"
    }
    assert len(source_topics()) == len(set(source_topics()))


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_a_good_event_of_every_type_passes_both(kind):
    event = good_event(kind)
    assert not isinstance(validate_event(orjson.dumps(event), NOW), Rejection)
    assert schema_accepts(f"event.{kind}.json", event)


@pytest.mark.parametrize("kind, properties, reason", BAD_PROPERTIES)
def test_bad_properties_are_rejected_by_both(kind, properties, reason):
    event = good_event(kind, properties=properties)
    result = validate_event(orjson.dumps(event), NOW)
    assert isinstance(result, Rejection) and result.reason is reason, result
    assert not schema_accepts(f"event.{kind}.json", event)


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_a_missing_required_envelope_field_is_rejected_by_both(kind):
    for name in ("event_id", "source", *EVENT_TYPES[kind].required):
        event = {k: v for k, v in good_event(kind).items() if k != name}
        assert validate_event(orjson.dumps(event), NOW).reason is Reason.MISSING_FIELD
        assert not schema_accepts(f"event.{kind}.json", event)


@pytest.mark.parametrize(
    "kind, record, good",
    [
        ("account", {"account_id": "a1", "name": "Acme", "domains": ["acme.com"], "target": True, "tier": "1"}, True),
        ("account", {"account_id": "a1", "domains": ["acme.com", 3]}, False),
        ("account", {"name": "Acme"}, False),
        ("contact", {"contact_id": "c1", "account_id": "a1", "title": "CTO"}, True),
        ("contact", {"email": "x@acme.com", "account_id": "a1", "learned": True}, True),
        ("contact", {"account_id": "a1"}, False),
        ("contact", {"contact_id": "c1"}, False),
    ],
)
def test_records_agree(kind, record, good):
    assert isinstance(validate_record(kind, orjson.dumps(record)), dict) is good
    assert schema_accepts(f"record.{kind}.json", record) is good


def test_the_contract_documentation_names_every_type_record_and_reason():
    text = (FOLDER.parent / "README.md").read_text()
    for name in [*EVENT_TYPES, *RECORD_TYPES, *(reason.value for reason in Reason)]:
        assert f"`{name}`" in text, name
