"""Validation of raw event bytes against the event contract (schemas/events.py).

A raw message becomes either a canonical event (a dict: the original fields plus
``occurred_at_ms`` and ``received_at_ms``) or a Rejection with a reason code. Plain
dicts, not model objects: this runs once per event on the hot path.

``FAST_PATH`` is the check routing takes first: native code (``abm_native``,
processors/native/) checks a whole batch against the same contract outside the GIL and accepts
only events it is sure of; ``validate_event`` decides the rest (and is what defines a
valid event: tests/unit/test_fast_path.py holds the two to each other).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import orjson

from processors.fast_routing import native
from schemas.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_STRING_LENGTH,
    OPTIONAL_STRING_FIELDS,
    RECORD_TYPES,
    REQUIRED_FIELDS,
    Field,
)

MIN_OCCURRED_AT_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_MS = 86_400_000  # an event may be at most one day ahead of its receipt


class Reason(StrEnum):
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    BAD_TIMESTAMP = "bad_timestamp"
    OUT_OF_RANGE = "out_of_range"


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    message: str


Event = dict[str, Any]


def parse_timestamp_ms(value: object) -> int | None:
    """Epoch milliseconds from an ISO-8601 string with a zone, or from integer ms."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        return int(parsed.timestamp() * 1000)
    return None


def _decode(raw: bytes) -> Any | Rejection:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as utf8_error:
            return Rejection(Reason.NOT_UTF8, f"payload is not UTF-8: {utf8_error}")
        return Rejection(Reason.NOT_JSON, f"payload is not JSON: {exc}")


_STRING_FIELDS: Final = ("event_id", "source", *OPTIONAL_STRING_FIELDS)


def _check_fields(data: dict[str, Any], received_at_ms: int) -> Rejection | int:
    """Returns the event time in ms, or why the fields are wrong."""
    for name in REQUIRED_FIELDS:
        value = data.get(name)
        if value is None or value == "":
            return Rejection(Reason.MISSING_FIELD, f"missing required field {name!r}")
    event_type = data["type"]
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        return Rejection(Reason.UNKNOWN_TYPE, f"unknown event type {event_type!r}")
    for name in EVENT_TYPES[event_type].required:
        value = data.get(name)
        if value is None or value == "":
            return Rejection(Reason.MISSING_FIELD, f"{event_type} requires field {name!r}")
    for name in _STRING_FIELDS:
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_STRING_LENGTH):
            return Rejection(Reason.BAD_FIELD, f"field {name!r} must be a string of at most {MAX_STRING_LENGTH} characters")
    properties = data.get("properties")
    if properties is not None and not isinstance(properties, dict):
        return Rejection(Reason.BAD_FIELD, "field 'properties' must be an object")
    property_fields = _PROPERTY_FIELDS[event_type]
    if property_fields:
        wrong = check_fields(properties or {}, property_fields, f"{event_type} property")
        if wrong is not None:
            return wrong
    if data.get("received_at") is not None and parse_timestamp_ms(data["received_at"]) is None:
        return Rejection(Reason.BAD_TIMESTAMP, "received_at must be ISO-8601 with a time zone, or epoch milliseconds")
    occurred_at_ms = parse_timestamp_ms(data["occurred_at"])
    if occurred_at_ms is None:
        return Rejection(Reason.BAD_TIMESTAMP, "occurred_at must be ISO-8601 with a time zone, or epoch milliseconds")
    if occurred_at_ms < MIN_OCCURRED_AT_MS:
        return Rejection(Reason.BAD_TIMESTAMP, "occurred_at is before 2000-01-01")
    if occurred_at_ms > received_at_ms + MAX_FUTURE_MS:
        return Rejection(Reason.BAD_TIMESTAMP, "occurred_at is more than one day in the future")
    return occurred_at_ms


def _is_string(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_STRING_LENGTH


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": _is_string,
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": _is_number,
    "boolean": lambda value: isinstance(value, bool),
    "string_list": lambda value: isinstance(value, list) and all(_is_string(item) and item for item in value),
}
_PATTERNS = {f.pattern: re.compile(f.pattern) for t in EVENT_TYPES.values() for f in t.properties if f.pattern}
_PROPERTY_FIELDS = {name: t.properties for name, t in EVENT_TYPES.items()}


def check_fields(data: dict[str, Any], fields: tuple[Field, ...], what: str) -> Rejection | None:
    """Why ``data`` breaks the field definitions (presence, type, choices, pattern, range), if it does."""
    for f in fields:
        value = data.get(f.name)
        if value is None or value == "":
            if f.required:
                return Rejection(Reason.MISSING_FIELD, f"{what} {f.name!r} is required")
            continue
        if not _TYPE_CHECKS[f.kind](value):
            return Rejection(Reason.BAD_FIELD, f"{what} {f.name!r} must be a {f.kind.replace('_', ' of ')}")
        if f.choices and value not in f.choices:
            return Rejection(Reason.BAD_FIELD, f"{what} {f.name!r} must be one of {', '.join(f.choices)}")
        if f.pattern and not _PATTERNS[f.pattern].fullmatch(value):
            return Rejection(Reason.BAD_FIELD, f"{what} {f.name!r} must match {f.pattern}")
        if (f.minimum is not None and value < f.minimum) or (f.maximum is not None and value > f.maximum):
            bounds = f"[{'-inf' if f.minimum is None else f'{f.minimum:g}'}, {'inf' if f.maximum is None else f'{f.maximum:g}'}]"
            return Rejection(Reason.OUT_OF_RANGE, f"{what} {f.name!r} = {value} is outside {bounds}")
        if f.requires and data.get(f.requires) in (None, ""):
            return Rejection(Reason.MISSING_FIELD, f"{what} {f.name!r} needs {f.requires!r} with it")
    return None


def _decode_object(raw: bytes) -> dict[str, Any] | Rejection:
    """A JSON object of at most MAX_EVENT_BYTES, or why the bytes are not one."""
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection(Reason.TOO_LARGE, f"payload of {len(raw)} bytes exceeds {MAX_EVENT_BYTES}")
    data = _decode(raw)
    if isinstance(data, Rejection):
        return data
    if not isinstance(data, dict):
        return Rejection(Reason.NOT_OBJECT, f"payload is a JSON {type(data).__name__}, not an object")
    return data


def validate_event(raw: bytes, received_at_ms: int) -> Event | Rejection:
    """A canonical event from raw message bytes, or the reason it is not one."""
    data = _decode_object(raw)
    if isinstance(data, Rejection):
        return data
    checked = _check_fields(data, received_at_ms)
    if isinstance(checked, Rejection):
        return checked
    data["occurred_at_ms"] = checked
    data["received_at_ms"] = received_at_ms
    return data


# The contract for native code (processors.identity.NativeAccountDirectory routes with it);
# None without it. Its scan of a batch gives, per event it accepts, (type, occurred_at_ms,
# account_id, contact_id, email, account_domain).
FAST_PATH: Final = (
    None
    if native is None
    else native.FastPath(
        [
            (name, list(t.required), [(f.name, f.kind, f.required, f.minimum, f.maximum, list(f.choices), f.pattern is not None, f.requires) for f in t.properties])
            for name, t in EVENT_TYPES.items()
        ],
        list(REQUIRED_FIELDS),
        list(_STRING_FIELDS),
        {"max_string_chars": MAX_STRING_LENGTH, "max_event_bytes": MAX_EVENT_BYTES, "min_occurred_at_ms": MIN_OCCURRED_AT_MS, "max_future_ms": MAX_FUTURE_MS},
    )
)


def validate_record(kind: str, raw: bytes) -> dict[str, Any] | Rejection:
    """A reference record (``account`` or ``contact``) from raw bytes, or why it is not one."""
    data = _decode_object(raw)
    if isinstance(data, Rejection):
        return data
    wrong = check_fields(data, RECORD_TYPES[kind].fields, kind)
    if wrong is not None:
        return wrong
    if kind == "contact" and not data.get("contact_id") and not data.get("email"):
        return Rejection(Reason.MISSING_FIELD, "contact record requires 'contact_id' or 'email'")
    if kind == "account":
        data.setdefault("domains", [])
    return data


def validate_account(raw: bytes) -> dict[str, Any] | Rejection:
    return validate_record("account", raw)


def validate_contact(raw: bytes) -> dict[str, Any] | Rejection:
    return validate_record("contact", raw)
