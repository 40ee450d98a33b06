"""Routing a batch of raw messages: valid events attributed to an account and grouped by
the partition that owns it; the rest set aside with a reason or with what they wait on.

Each routed event carries its origin, ``_origin = [raw topic, partition, offset]``:
a worker killed after forwarding but before committing forwards the same raw messages
again, and their origin lets the account recognise them (processors.accounts).

With the native directory (processors.identity.NativeAccountDirectory), an event the
native fast path accepts (processors.validation.FAST_PATH) and the directory resolves
never becomes a dict here: it is forwarded as its raw bytes with routing's fields spliced
on, which decode to the dict the interpreted path would have forwarded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from processors.accounts import Position
from processors.chunks import json_arrays
from processors.fast_routing import native
from processors.identity import Directory, NativeAccountDirectory, account_partition, waiting_keys
from processors.validation import FAST_PATH, Rejection, validate_event

Origin = tuple[str, int, int]  # (topic, partition, offset) of the raw message
LearnedContact = tuple[str | None, str | None, str]  # (contact id, email, account id)
Forwarded = dict[str, Any] | bytes  # an event as routed: a dict where Python decoded it, else its JSON

# A forwarded message carries up to this many events, and up to this many bytes of JSON
# unless it holds a single event: the internal topic's limit must then take one event
# (schemas.events.MAX_EVENT_BYTES plus what routing adds), see streams.topics.
EVENTS_PER_MESSAGE: Final = 500
FORWARDED_MESSAGE_BYTES: Final = 512 * 1024


@dataclass(slots=True)
class RoutedBatch:
    by_partition: dict[int, list[Forwarded]] = field(default_factory=dict)
    rejected: list[tuple[int, Rejection]] = field(default_factory=list)  # (index in batch, why)
    unresolved: list[tuple[int, dict[str, Any], str | None]] = field(default_factory=list)  # (index, event, waiting on)
    learned_contacts: list[LearnedContact] = field(default_factory=list)  # new to the directory
    valid_by_type: dict[str, int] = field(default_factory=dict)


def route_batch(
    raw_values: Sequence[bytes | None],
    origins: Sequence[Origin],
    received_at_ms: int,
    partitions: int,
    directory: Directory,
) -> RoutedBatch:
    routed = RoutedBatch()

    def decoded(index: int) -> None:
        raw = raw_values[index]
        route_decoded(routed, index, raw if raw is not None else b"", origins[index], received_at_ms, partitions, directory)

    if isinstance(directory, NativeAccountDirectory):
        directory.native.route(
            FAST_PATH, list(raw_values), list(origins), received_at_ms, partitions, routed.by_partition, routed.learned_contacts, routed.valid_by_type, decoded
        )
    else:
        for index in range(len(raw_values)):
            decoded(index)
    return routed


def route_decoded(routed: RoutedBatch, index: int, raw: bytes, origin: Origin, received_at_ms: int, partitions: int, directory: Directory) -> None:
    """The interpreted path of one raw event: decoded, checked, resolved as a dict."""
    result = validate_event(raw, received_at_ms)
    if isinstance(result, Rejection):
        routed.rejected.append((index, result))
        return
    result["_origin"] = origin
    routed.valid_by_type[result["type"]] = routed.valid_by_type.get(result["type"], 0) + 1
    resolution = directory.resolve(result)
    if resolution.account_id is None:
        routed.unresolved.append((index, result, resolution.waiting_on))
        return
    attribute(result, resolution.account_id, directory, routed.learned_contacts)
    add_to_partition(routed.by_partition, result, resolution.account_id, partitions)


@dataclass(slots=True)
class ReroutedBatch:
    by_partition: dict[int, list[Forwarded]] = field(default_factory=dict)
    resolved: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (waited on, event now attributed)
    still_waiting: set[str] = field(default_factory=set)  # keys some of the events still wait on
    learned_contacts: list[LearnedContact] = field(default_factory=list)


def reroute_pending(pending: Sequence[tuple[str, dict[str, Any]]], partitions: int, directory: Directory) -> ReroutedBatch:
    """Events that waited, resolved as the directory stands now. One whose key was learned
    and then lost again (a domain reassigned meanwhile) waits on, and so does its key."""
    rerouted = ReroutedBatch()
    for waiting_on, event in pending:
        account_id = directory.resolve(event).account_id
        if account_id is None:
            rerouted.still_waiting.add(waiting_on)
            continue
        attribute(event, account_id, directory, rerouted.learned_contacts)
        add_to_partition(rerouted.by_partition, event, account_id, partitions)
        rerouted.resolved.append((waiting_on, event))
    return rerouted


def attribute(event: dict[str, Any], account_id: str, directory: Directory, learned: list[LearnedContact]) -> None:
    """Gives the event its account (and its contact's seniority, when known); a contact
    the event names now stays with its account."""
    event["account_id"] = account_id
    contact_id, email = event.get("contact_id"), event.get("email")
    if not (contact_id or email):
        return
    news, seniority = directory.attribute_contact(contact_id, email, account_id)
    if news:
        learned.append((contact_id, email, account_id))
    if seniority is not None:
        event["_seniority"] = seniority


def add_to_partition(by_partition: dict[int, list[Forwarded]], event: Forwarded, account_id: str, partitions: int) -> None:
    partition = account_partition(account_id, partitions)
    bucket = by_partition.get(partition)
    if bucket is None:
        bucket = by_partition[partition] = []
    bucket.append(event)


def keys_resolved_by(learned: list[LearnedContact]) -> set[str]:
    """The waiting keys newly learned contacts resolve."""
    return {key for contact_id, email, _ in learned for key in waiting_keys(contact_id, email)}


def forwarded_messages(events: Sequence[Forwarded], max_events: int = EVENTS_PER_MESSAGE, max_bytes: int = FORWARDED_MESSAGE_BYTES) -> list[bytes]:
    """The events as JSON arrays of at most ``max_events`` events and ``max_bytes`` bytes
    (a larger event goes alone), in order."""
    if native is None:  # no fast path: every event is a dict
        return [encoded for _, encoded in json_arrays(events, max_events, max_bytes)]
    arrays: list[bytes] = native.forwarded_arrays(list(events), max_events, max_bytes, orjson.dumps)
    return arrays


def forwarded_events(partition: int, offset: int, message: bytes) -> list[tuple[Position, dict[str, Any]]]:
    """A forwarded message's events, each with its position (offset, index in the message)
    for the account's replay check and, as ``_src``, for its row in ClickHouse."""
    positioned: list[tuple[Position, dict[str, Any]]] = []
    for index, event in enumerate(orjson.loads(message)):
        event["_src"] = (partition, offset, index)
        positioned.append(((offset, index), event))
    return positioned
