"""Event contracts: the one source of truth for what an event is.

Events travel as JSON objects (the canonical envelope, version 1). Every event has the
envelope fields; each type adds the fields it requires. Timestamps are ISO-8601 UTC
strings with millisecond precision (``2026-11-24T06:00:00.123Z``) or integer epoch
milliseconds; inside the pipeline they are normalized to epoch milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

ENVELOPE_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class EventType:
    name: str
    topic: str  # topic suffix; the full name is "<prefix>.<topic>"
    required: tuple[str, ...]  # envelope fields this type requires beyond the base ones
    description: str


EVENT_TYPES: Final[dict[str, EventType]] = {
    t.name: t
    for t in (
        EventType("email_open", "email.opens", ("campaign_id",), "an email was opened; properties.machine_open marks privacy-proxy opens"),
        EventType("email_click", "email.clicks", ("campaign_id", "url"), "a link in an email was clicked"),
        EventType("page_view", "web.page-views", ("url",), "a page of the website was viewed"),
        EventType("webinar_signup", "webinar.signups", ("content_id",), "a contact registered for a webinar (content_id = webinar id)"),
    )
}

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
MAX_STRING_LENGTH: Final = 2048
MAX_EVENT_BYTES: Final = 1 << 20

# Internal topics owned by the pipeline.
TOPIC_BY_ACCOUNT: Final = "events.by-account"  # validated events, partitioned by account
TOPIC_DEAD_LETTERS: Final = "dead-letters"
TOPIC_UNRESOLVED: Final = "events.unresolved"
TOPIC_ACCOUNTS: Final = "accounts"  # account records, compacted by account id
TOPIC_CONTACTS: Final = "contacts"  # contact records, compacted by contact id


def source_topics() -> list[str]:
    """Topic suffixes of every raw event kind."""
    return [t.topic for t in EVENT_TYPES.values()]
