"""Renders the contracts of schemas/events.py as JSON Schema (draft 2020-12) files in
schemas/json/: one per event type and per reference record.

    python -m schemas.jsonschema        # rewrite schemas/json/*.json

A unit test renders them again and compares, so the files never drift from the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from schemas.events import (
    ENVELOPE_DESCRIPTIONS,
    ENVELOPE_VERSION,
    EVENT_TYPES,
    MAX_STRING_LENGTH,
    OPTIONAL_STRING_FIELDS,
    RECORD_TYPES,
    REQUIRED_FIELDS,
    EventType,
    Field,
    RecordType,
)

FOLDER = Path(__file__).parent / "json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
_STRING = {"type": "string", "maxLength": MAX_STRING_LENGTH}
_TIMESTAMP = {
    "oneOf": [
        {"type": "string", "format": "date-time", "pattern": "(Z|[+-][0-9]{2}:[0-9]{2})$"},
        {"type": "integer", "minimum": 0},
    ]
}


def field_schema(f: Field) -> dict[str, Any]:
    if f.kind == "string_list":
        schema: dict[str, Any] = {"type": "array", "items": {**_STRING, "minLength": 1}}
    elif f.kind == "string":
        schema = dict(_STRING)
    else:
        schema = {"type": f.kind}
    if f.choices:
        schema["enum"] = list(f.choices)
    if f.pattern:
        schema["pattern"] = f"^{f.pattern}$"
    if f.minimum is not None:
        schema["minimum"] = f.minimum
    if f.maximum is not None:
        schema["maximum"] = f.maximum
    return {"description": f.description, **schema}


def _object(fields: tuple[Field, ...]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": {f.name: field_schema(f) for f in fields}}
    required = [f.name for f in fields if f.required]
    if required:
        schema["required"] = required
    dependent = {f.name: [f.requires] for f in fields if f.requires}
    if dependent:
        schema["dependentRequired"] = dependent
    return schema


def event_schema(event_type: EventType) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "event_id": {**_STRING, "minLength": 1},
        "type": {"const": event_type.name},
        "occurred_at": _TIMESTAMP,
        "received_at": _TIMESTAMP,
        "source": {**_STRING, "minLength": 1},
        **{name: dict(_STRING) for name in OPTIONAL_STRING_FIELDS},
        "properties": _object(event_type.properties),
    }
    for name in event_type.required:
        envelope[name] = {**envelope[name], "minLength": 1}
    return {
        "$schema": DRAFT,
        "$id": f"https://abm-pulse.dev/schemas/v{ENVELOPE_VERSION}/events/{event_type.name}.json",
        "title": event_type.name,
        "description": f"{event_type.description} (topic <prefix>.{event_type.topic})",
        "type": "object",
        "properties": {name: {"description": ENVELOPE_DESCRIPTIONS[name], **schema} for name, schema in envelope.items()},
        "required": [*REQUIRED_FIELDS, *event_type.required, *(["properties"] if _has_required(event_type.properties) else [])],
    }


def _has_required(fields: tuple[Field, ...]) -> bool:
    return any(f.required for f in fields)


def record_schema(record: RecordType) -> dict[str, Any]:
    schema = {
        "$schema": DRAFT,
        "$id": f"https://abm-pulse.dev/schemas/v{ENVELOPE_VERSION}/records/{record.name}.json",
        "title": record.name,
        "description": f"{record.description} (compacted topic <prefix>.{record.topic})",
        **_object(record.fields),
    }
    if record.name == "contact":
        schema["anyOf"] = [{"required": ["contact_id"]}, {"required": ["email"]}]
    return schema


def rendered() -> dict[str, bytes]:
    """File name -> contents of every schema file."""
    schemas = {f"event.{t.name}.json": event_schema(t) for t in EVENT_TYPES.values()}
    schemas |= {f"record.{r.name}.json": record_schema(r) for r in RECORD_TYPES.values()}
    return {name: orjson.dumps(schema, option=orjson.OPT_INDENT_2) + b"\n" for name, schema in schemas.items()}


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    for stale in FOLDER.glob("*.json"):
        stale.unlink()
    for name, text in rendered().items():
        (FOLDER / name).write_bytes(text)
    print(f"wrote {len(rendered())} schemas to {FOLDER}")


if __name__ == "__main__":
    main()
