"""Event contracts: the one source of truth for what an event and a reference record are.

Events travel as JSON objects (the canonical envelope, version 1). Every event has the
envelope fields; each type requires some of the optional ones and describes its typed
``properties``. Timestamps are ISO-8601 strings with a zone (``2026-11-24T06:00:00.123Z``)
or integer epoch milliseconds; the pipeline normalizes them to epoch milliseconds.
processors/validation.py enforces these definitions; schemas/jsonschema.py renders them
as the JSON Schema files in schemas/json/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

ENVELOPE_VERSION: Final = 1

Kind = Literal["string", "integer", "number", "boolean", "string_list"]


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: Kind
    description: str
    required: bool = False
    minimum: float | None = None  # inclusive; outside it the value is out of range
    maximum: float | None = None
    choices: tuple[str, ...] = ()  # allowed values of a string
    pattern: str | None = None  # regular expression a string must match in full
    requires: str | None = None  # another field that must be present with this one


@dataclass(frozen=True, slots=True)
class EventType:
    name: str
    topic: str  # topic suffix; the full name is "<prefix>.<topic>"
    required: tuple[str, ...]  # optional envelope fields this type requires
    description: str
    properties: tuple[Field, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordType:
    name: str
    topic: str
    key: str  # the field the compacted topic is keyed by
    description: str
    fields: tuple[Field, ...]


# Base envelope: required string fields, optional string fields, other fields.
REQUIRED_FIELDS: Final = ("event_id", "type", "occurred_at", "source")
OPTIONAL_STRING_FIELDS: Final = (
    "account_id",
    "account_domain",
    "contact_id",
    "email",
    "campaign_id",
    "url",
    "content_id",
)
ENVELOPE_DESCRIPTIONS: Final = {
    "event_id": "the source's id of the event; (source, event_id) identifies it",
    "type": "one of the event types",
    "occurred_at": "when it happened: ISO-8601 with a zone, or epoch milliseconds",
    "received_at": "when the source received it (optional; same formats)",
    "source": "the system that emitted it (sendgrid, hubspot, web, ...)",
    "account_id": "the account, when the source knows it",
    "account_domain": "a company domain (e.g. from a reverse-IP lookup of a page view)",
    "contact_id": "the contact in the source's CRM",
    "email": "the contact's email address",
    "campaign_id": "the campaign it belongs to",
    "url": "the page or link",
    "content_id": "the webinar, asset or document",
    "properties": "type-specific fields",
}
MAX_STRING_LENGTH: Final = 2048
MAX_EVENT_BYTES: Final = 1 << 20
MAX_AMOUNT: Final = 1e12

_MINUTES = Field("minutes", "number", "minutes attended", minimum=0, maximum=24 * 60)

EVENT_TYPES: Final[dict[str, EventType]] = {
    t.name: t
    for t in (
        EventType(
            "email_open", "email.opens", ("campaign_id",), "an email was opened",
            (Field("machine_open", "boolean", "opened by a privacy proxy or scanner, not a person (weighs nothing)"),),
        ),
        EventType("email_click", "email.clicks", ("campaign_id", "url"), "a link in an email was clicked"),
        EventType("email_sent", "email.deliveries", ("campaign_id",), "an email was sent to a contact"),
        EventType("email_delivered", "email.deliveries", ("campaign_id",), "an email reached the contact's mail server"),
        EventType(
            "email_bounced", "email.deliveries", ("campaign_id",), "an email bounced",
            (Field("bounce_type", "string", "hard (permanent) or soft (temporary)", choices=("hard", "soft")),),
        ),
        EventType(
            "page_view", "web.page-views", ("url",), "a page of the website was viewed",
            (Field("path", "string", "the URL's path"), Field("referrer", "string", "the referring URL")),
        ),
        EventType("webinar_signup", "webinar.signups", ("content_id",), "a contact registered for a webinar (content_id = webinar)"),
        EventType("webinar_attended", "webinar.attendance", ("content_id",), "a contact attended a webinar", (_MINUTES,)),
        EventType(
            "form_submitted", "web.forms", (), "a form was submitted",
            (
                Field("form_id", "string", "the form", required=True),
                Field("cta_id", "string", "the call to action that led to the form"),
            ),
        ),
        EventType("content_downloaded", "content.downloads", ("content_id",), "an asset (whitepaper, report) was downloaded"),
        EventType(
            "meeting_booked", "sales.meetings", (), "a meeting with sales was booked",
            (Field("meeting_type", "string", "a call or a product demo", required=True, choices=("call", "demo")),),
        ),
        EventType("ad_impression", "ads.events", ("campaign_id",), "an ad was shown"),
        EventType("ad_click", "ads.events", ("campaign_id",), "an ad was clicked (url: its landing page)"),
        EventType(
            "opportunity_stage_changed", "crm.opportunities", ("account_id",), "a CRM opportunity moved to another stage",
            (
                Field("opportunity_id", "string", "the opportunity in the CRM", required=True),
                Field("stage", "string", "the CRM's stage name or id", required=True),
                Field("amount", "number", "the opportunity's value", minimum=0, maximum=MAX_AMOUNT, requires="currency"),
                Field("currency", "string", "ISO 4217 code of the amount", pattern="[A-Z]{3}"),
                Field("is_closed", "boolean", "the opportunity is closed"),
                Field("is_won", "boolean", "closed won (with is_closed)"),
            ),
        ),
        EventType(
            "nps_response", "feedback.nps", (), "a contact answered the net-promoter question",
            (
                Field("score", "integer", "0 (not at all likely) to 10 (extremely likely)", required=True, minimum=0, maximum=10),
                Field("comment", "string", "the free-text answer"),
            ),
        ),
    )
}

RECORD_TYPES: Final[dict[str, RecordType]] = {
    r.name: r
    for r in (
        RecordType(
            "account", "accounts", "account_id", "an account of the directory: its domains resolve events to it",
            (
                Field("account_id", "string", "the account", required=True),
                Field("name", "string", "the company's name"),
                Field("domains", "string_list", "its domains; subdomains map to their registrable domain"),
                Field("target", "boolean", "a target account of the ABM programme"),
                Field("tier", "string", "the account's tier"),
            ),
        ),
        RecordType(
            "contact", "contacts", "contact_id", "a contact and its account (keyed by email:<address> when it has no id)",
            (
                Field("contact_id", "string", "the contact in the CRM (this or email is required)"),
                Field("email", "string", "the contact's email address (this or contact_id is required)"),
                Field("account_id", "string", "the contact's account", required=True),
                Field("title", "string", "job title"),
                Field("learned", "boolean", "published by the worker from a resolved event"),
            ),
        ),
    )
}

# Internal topics owned by the pipeline.
TOPIC_BY_ACCOUNT: Final = "events.by-account"  # validated events, partitioned by account
TOPIC_DEAD_LETTERS: Final = "dead-letters"
TOPIC_UNRESOLVED: Final = "events.unresolved"
TOPIC_STAGE_TRANSITIONS: Final = "stage-transitions"  # every funnel-stage change, keyed by account
TOPIC_ACCOUNTS: Final = RECORD_TYPES["account"].topic  # account records, compacted by account id
TOPIC_CONTACTS: Final = RECORD_TYPES["contact"].topic  # contact records, compacted by contact id


def source_topics() -> list[str]:
    """Topic suffixes of every raw event kind, each once, in a stable order."""
    return list(dict.fromkeys(t.topic for t in EVENT_TYPES.values()))
