"""Per-account engagement: a time-decayed score, counts, breadth and rolling counts.

score(t) = sum of w_i * 2^(-(t - t_i) / H) over the account's events with t_i <= t.
The state keeps the score as of ``score_at_ms`` (the latest event time seen), so an
event is folded in with one multiplication whether it is in order or late.

w_i = the type's weight x the contact's seniority multiplier; a privacy-proxy open
weighs 0. Per contact, UTC day and capped type only the day's earliest ``cap`` events
count (at equal times the heavier first, so that which ones count never depends on the
arrival order): a late event earlier than a counted one takes its place (the replaced one's
contribution is subtracted), so the score is the same in any arrival order as long as
the day's counted times are remembered (``cap_memory_ms`` behind the newest event).

Memory is bounded by event time: per-day counts and engaged contacts are kept for
``RETENTION_DAYS``, capped-day memories for ``cap_memory_ms``; pruned once per account
and event day.
"""

from __future__ import annotations

import hashlib
import re
import sys
from array import array
from bisect import bisect_right
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from operator import itemgetter
from typing import Any, Final

import orjson

from processors.chunks import json_arrays
from processors.dedup import RecentIds

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

DAY_MS: Final = 86_400_000
ROLLING_WINDOWS_DAYS: Final = (7, 30, 90)  # rolling counts per type, engaged contacts (30, 90)
RETENTION_DAYS: Final = max(ROLLING_WINDOWS_DAYS)
DEFAULT_MAX_CONTACTS: Final = 20_000  # per account (ScoringConfig.max_contacts)
# A contact id may take 2,048 characters: a state keys a longer one than this by its digest,
# so that its remembered contacts stay within a changelog record whatever their ids.
MAX_CONTACT_KEY_CHARS: Final = 64
SENIORITIES: Final = ("c_level", "vp", "director", "manager", "other")

# First match wins: "Vice President" is a VP before it is a president.
_SENIORITY_PATTERNS: Final = (
    ("vp", re.compile(r"\b(vp|svp|evp|vice[ -]president)\b")),
    ("c_level", re.compile(r"\b(c[a-z]o|chief|president|founder|co-founder|owner)\b")),
    ("director", re.compile(r"\b(director|head of)\b")),
    ("manager", re.compile(r"\b(manager|lead)\b")),
)


@dataclass(slots=True)
class AccountState:
    account_id: str
    score: float = 0.0
    score_at_ms: int = 0
    events_total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    contacts: dict[str, int] = field(default_factory=dict)  # contact -> last engaged (ms)
    first_event_ms: int = 0
    last_event_ms: int = 0
    last_high_intent_ms: int = 0
    stage: str = "target"
    stage_since_ms: int = 0
    applied_upto: tuple[int, int] = (-1, -1)  # position of the last event absorbed
    origin_upto: dict[str, int] = field(default_factory=dict)  # "raw topic/partition" -> last raw offset absorbed
    recent_ids: RecentIds = field(default_factory=RecentIds)  # processors.dedup keys -> event time
    prune_ids_at: int = 0  # size of recent_ids that triggers the next prune
    last_engaged_ms: int = 0  # latest event that weighed something
    daily: dict[int, dict[str, int]] = field(default_factory=dict)  # UTC day -> type -> events
    capped: dict[str, list[list[float]]] = field(default_factory=dict)  # "day|type|contact" -> counted [ms, weight]
    pruned_day: int = 0  # the event day of the last prune
    opportunities: dict[str, list[int]] = field(default_factory=dict)  # id -> [ms of latest change, closed, won]
    won_at_ms: int = 0  # earliest closed-won opportunity
    as_of_ms: int = 0  # event time the stage was last evaluated at (latest event or fall-back)
    fallback_at_ms: int = 0  # when the stage falls back without new events; 0 = never
    stage_reason: str = ""
    latest_seen_ms: int = 0  # latest event time admitted, held events included
    # Admitted events waiting for the watermark: in memory (in time order) until the state
    # is written, then in segments of their own records (held_segment_key), each
    # [its earliest event time, number, events], read back when the watermark reaches it.
    held: list[HeldEvent] = field(default_factory=list)
    held_segments: list[list[int]] = field(default_factory=list)
    next_segment: int = 0
    released_segments: list[int] = field(default_factory=list)  # read back; their records to be deleted

    def to_bytes(self) -> bytes:
        """The state's bytes (its held events in memory included: ``take_held_segments``
        moves them out first)."""
        fields = {name: getattr(self, name) for name in _STATE_FIELDS}
        # int-keyed maps as arrays and pairs: fewer bytes than JSON objects with numeric keys
        fields["recent_ids"] = _pack_ids(self.recent_ids)
        fields["daily"] = list(self.daily.items())
        fields["held"] = [_applied_part(event) for *_, event in self.held]
        return stored_form(orjson.dumps(fields))

    def take_held_segments(self) -> list[tuple[int, bytes]]:
        """Moves the held events in memory to new segments: each segment's number and
        bytes, to be stored (under ``held_segment_key``) with the state, and deleted once
        the state no longer lists it. An event is held for the allowed lateness, minutes
        across many state writes: in the state, it took memory all that time and was
        written again at every write."""
        segments = []
        for events, encoded in json_arrays([_applied_part(event) for *_, event in self.held], len(self.held) or 1, SEGMENT_MAX_BYTES):
            self.held_segments.append([events[0]["occurred_at_ms"], self.next_segment, len(events)])
            segments.append((self.next_segment, stored_form(encoded)))
            self.next_segment += 1
        self.held = []
        return segments

    def read_back(self, segments: list[list[int]], stored_held: StoredHeld) -> None:
        """Returns the events of these segments (of ``held_segments``) to memory."""
        for segment in segments:
            self.held_segments.remove(segment)
            self.released_segments.append(segment[1])
            self.held += [as_held(event) for event in stored_held(self.account_id, segment[1])]
        self.held.sort(key=HELD_ORDER)

    @property
    def held_count(self) -> int:
        return len(self.held) + sum(events for _, _, events in self.held_segments)

    @classmethod
    def from_bytes(cls, raw: bytes) -> AccountState:
        fields = orjson.loads(json_of(raw))
        fields["applied_upto"] = tuple(fields["applied_upto"])
        recent_ids = fields.get("recent_ids", {})
        fields["recent_ids"] = _unpack_ids(recent_ids) if isinstance(recent_ids, str) else RecentIds((int(key), at) for key, at in recent_ids.items())
        daily = fields.get("daily", {})
        fields["daily"] = dict(daily) if isinstance(daily, list) else {int(day): counts for day, counts in daily.items()}
        fields["held"] = [_held_from_json(held) for held in fields.get("held", [])]
        fields["held_segments"] = [list(segment) for segment in fields.get("held_segments", [])]
        # states written before these fields existed
        fields.setdefault("last_engaged_ms", fields["last_event_ms"])
        fields.setdefault("as_of_ms", fields["last_event_ms"])
        fields.setdefault("latest_seen_ms", fields["last_event_ms"])
        return cls(**fields)

    @property
    def first_held_ms(self) -> int:
        """The event time of its earliest held event; 0: none held."""
        return _first_held_ms(self.held[0][0] if self.held else 0, self.held_segments)

    def timing(self) -> Timing:
        """What the fall-back schedule reads of the state (processors.watermarks)."""
        return self.account_id, self.fallback_at_ms, self.first_held_ms, self.latest_seen_ms

    @staticmethod
    def timing_of(raw: bytes) -> Timing:
        """``timing()`` of a state's bytes, without building the state: a scan of a
        million stored states after a restart took ~9 µs each to build them, ~3 µs this way."""
        fields = orjson.loads(json_of(raw))
        held = fields.get("held")
        latest_seen_ms = fields.get("latest_seen_ms", fields["last_event_ms"])
        first_in_state = _held_from_json(held[0])[0] if held else 0
        return fields["account_id"], fields.get("fallback_at_ms", 0), _first_held_ms(first_in_state, fields.get("held_segments", ())), latest_seen_ms


# (account, fall-back time (0: none), earliest held event time (0: none), latest event time seen)
Timing = tuple[str, int, int, int]
# (event time, source, event id, the event)
HeldEvent = tuple[int, str, str, dict[str, Any]]
HELD_ORDER: Final = itemgetter(0, 1, 2)  # event time, source, event id: the order held events are applied in
StoredHeld = Callable[[str, int], list[dict[str, Any]]]  # (account, segment number) -> its events, as stored

# A segment of held events is at most this much JSON (a larger event goes alone): a busy
# account's burst (up to ABM_MAX_HELD_EVENTS_PER_ACCOUNT events) takes several records.
SEGMENT_MAX_BYTES: Final = 1024 * 1024


def no_stored_held(account_id: str, number: int) -> list[dict[str, Any]]:
    """Where no store is given (pure folding, tests): a state that lists a segment here was
    written, and its events cannot be read back."""
    raise LookupError(f"the state of account {account_id!r} lists held segment {number}, and no store was given to read it back")


def held_segment_key(account_id: str, number: int) -> bytes:
    """A segment's key in the account-state table: never an account's key, which is UTF-8
    (no byte 0xff), and unique (the number ends at the first colon)."""
    return b"\xff%d:%s" % (number, account_id.encode())


def is_held_segment_key(key: bytes) -> bool:
    return key[:1] == b"\xff"


def as_held(event: dict[str, Any]) -> HeldEvent:
    return event["occurred_at_ms"], event["source"], event["event_id"], event


def _held_from_json(held: list[Any] | dict[str, Any]) -> HeldEvent:
    if isinstance(held, dict):  # the event itself (or as states before session 11 held them: all of it)
        return as_held(_applied_part(held))
    return as_held(held[3])  # as session 11 wrote them: [event time, source, event id, event]


def _first_held_ms(first_in_memory: int, segments: Iterable[list[int]]) -> int:
    return min((at for at in (first_in_memory, *(segment[0] for segment in segments)) if at), default=0)


# What applying an event reads (apply_event, processors.stages and processors.accounts).
# The rest (its time as sent, its domain, campaign, account...) is in ClickHouse already,
# and held it would take memory and bytes for the allowed lateness: ~45 % of them.
_APPLIED_FIELDS: Final = ("event_id", "source", "type", "occurred_at_ms", "contact_id", "email", "url", "properties", "_seniority")


def _applied_part(event: dict[str, Any]) -> dict[str, Any]:
    applied: dict[str, Any] = {name: event[name] for name in _APPLIED_FIELDS if name in event}
    if applied.get("contact_id"):  # the contact is its id when it has one
        applied.pop("email", None)
    return applied


_STATE_FIELDS: Final = tuple(f.name for f in dataclass_fields(AccountState))

# A busy account's state (200k event ids, thousands of contacts, a burst of held events)
# reaches 12-16 MiB of JSON, more than one changelog record takes (streams.topics: 8 MiB);
# zstd at level 1 makes it a half to a sixth of that in ~30 ms. States below this size (nearly all:
# ~2 KiB) stay plain JSON, which costs nothing to write and is quick to scan at a restart.
COMPRESSED_FROM_BYTES: Final = 64 * 1024
COMPRESSION_LEVEL: Final = 1
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"  # never the start of JSON


def stored_json(encoded: bytes) -> bytes:
    """A state's or segment's JSON as the store keeps it: compressed from
    COMPRESSED_FROM_BYTES on."""
    if len(encoded) >= COMPRESSED_FROM_BYTES:
        return zstd.compress(encoded, COMPRESSION_LEVEL)
    return encoded


def stored_form(encoded: bytes) -> bytes:
    """stored_json of orjson's output, as kept until its checkpoint is durable. orjson
    (3.12 on) hands back its write buffer, at least 4 KiB and grown by doubling,
    unshrunk: a 700-byte state held 8-16 KiB of heap (~240 MiB for the ~16k states of one
    checkpoint, the worker's peak RSS). So plain JSON is copied to an allocation of its
    own length (~0.2 us)."""
    stored = stored_json(encoded)
    return bytes(memoryview(encoded)) if stored is encoded else stored


def json_of(raw: bytes) -> bytes:
    return zstd.decompress(raw) if raw[:4] == _ZSTD_MAGIC else raw


def held_events_of(raw: bytes) -> list[dict[str, Any]]:
    """A segment's events from its stored bytes."""
    events: list[dict[str, Any]] = orjson.loads(json_of(raw))
    return events


def _pack_ids(recent_ids: RecentIds) -> str:
    """De-duplication keys (unsigned 64-bit) and their event times, as base64 of two
    little-endian arrays: 40 % fewer bytes than JSON in the store and the changelog."""
    keys, times = recent_ids.arrays()
    if sys.byteorder == "big":
        keys, times = array("Q", keys), array("q", times)
        keys.byteswap()
        times.byteswap()
    return b64encode(keys.tobytes() + times.tobytes()).decode()


def _unpack_ids(packed: str) -> RecentIds:
    raw = b64decode(packed)
    keys, times = array("Q"), array("q")
    keys.frombytes(raw[: len(raw) // 2])
    times.frombytes(raw[len(raw) // 2 :])
    if sys.byteorder == "big":
        keys.byteswap()
        times.byteswap()
    return RecentIds.from_arrays(keys, times)


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    weights: dict[str, float]
    daily_caps: dict[str, int]  # per contact, day and type; types not listed are uncapped
    seniority: dict[str, float]  # multiplier per SENIORITIES entry
    half_life_ms: float = 30 * DAY_MS
    cap_memory_ms: int = 2 * DAY_MS
    # Engaged contacts an account remembers (the most recent), and twice as many capped-day
    # memories: a scraper's thousands of visitor ids a day must not grow one account's
    # state past what one changelog record takes, which would stop the worker for good.
    max_contacts: int = DEFAULT_MAX_CONTACTS


def decay(half_life_ms: float, elapsed_ms: float) -> float:
    return 2.0 ** (-elapsed_ms / half_life_ms)


def seniority_of(title: str) -> str:
    """The seniority class of a job title (``SENIORITIES``)."""
    lowered = title.lower()
    for seniority, pattern in _SENIORITY_PATTERNS:
        if pattern.search(lowered):
            return seniority
    return "other"


def event_weight(event: dict[str, Any], config: ScoringConfig) -> float:
    properties = event.get("properties")
    if properties and properties.get("machine_open") is True:
        return 0.0
    weight = config.weights.get(event["type"], 0.0)
    seniority = event.get("_seniority")  # set at routing from the contact's title
    return weight * config.seniority[seniority] if seniority and weight else weight


def score_at(state: AccountState, at_ms: int, config: ScoringConfig) -> float:
    """The account's score at ``at_ms`` (no earlier than its latest event)."""
    return state.score * decay(config.half_life_ms, at_ms - state.score_at_ms)


def engaged_contacts(state: AccountState, at_ms: int, window_ms: int) -> int:
    since = at_ms - window_ms
    return sum(1 for last in state.contacts.values() if since <= last <= at_ms)


def rolling_counts(state: AccountState, at_ms: int, windows_days: tuple[int, ...]) -> list[dict[str, int]]:
    """Events per type over each window of UTC days ending with ``at_ms``'s day (in the
    order given): one pass over the days, each day's counts added once."""
    today = at_ms // DAY_MS
    widths = sorted(set(windows_days))
    # a day counts in its narrowest window and every wider one: sum by narrowest, then accumulate
    narrowest: list[dict[str, int]] = [{} for _ in widths]
    for day, counts in state.daily.items():
        age = today - day
        if age < 0 or age >= widths[-1]:
            continue
        bucket = narrowest[bisect_right(widths, age)]
        for kind, n in counts.items():
            bucket[kind] = bucket.get(kind, 0) + n
    by_width: dict[int, dict[str, int]] = {}
    running: dict[str, int] = {}
    for width, bucket in zip(widths, narrowest):
        for kind, n in bucket.items():
            running[kind] = running.get(kind, 0) + n
        by_width[width] = dict(running)
    return [by_width[width] for width in windows_days]


def apply_event(state: AccountState, event: dict[str, Any], config: ScoringConfig) -> float:
    """Fold one canonical event into the account's state; returns its weight."""
    at = event["occurred_at_ms"]
    kind = event["type"]
    weight = event_weight(event, config)
    contact = event.get("contact_id") or event.get("email")
    if contact and len(contact) > MAX_CONTACT_KEY_CHARS:
        contact = _contact_digest(contact)
    day = at // DAY_MS
    if weight > 0:
        cap = config.daily_caps.get(kind)
        if cap is not None and contact:
            _count_capped(state, f"{day}|{kind}|{contact}", cap, at, weight, config)
        else:
            _add(state, weight, at, config)
        if at > state.last_engaged_ms:
            state.last_engaged_ms = at
        if contact and at > state.contacts.get(contact, 0):
            state.contacts[contact] = at
            _bound(state.contacts, config.max_contacts, _latest_order)
    state.events_total += 1
    state.counts[kind] = state.counts.get(kind, 0) + 1
    today = state.daily.get(day)
    if today is None:
        today = state.daily[day] = {}
    today[kind] = today.get(kind, 0) + 1
    if state.first_event_ms == 0 or at < state.first_event_ms:
        state.first_event_ms = at
    if at > state.last_event_ms:
        state.last_event_ms = at
        if day > state.pruned_day:
            _prune(state, day, config)
    return weight


def _add(state: AccountState, weight: float, at: int, config: ScoringConfig) -> None:
    if at >= state.score_at_ms:
        state.score = state.score * decay(config.half_life_ms, at - state.score_at_ms) + weight
        state.score_at_ms = at
    else:
        state.score += weight * decay(config.half_life_ms, state.score_at_ms - at)


def _count_capped(state: AccountState, key: str, cap: int, at: int, weight: float, config: ScoringConfig) -> None:
    """Keeps the day's ``cap`` first events of the contact and type (in ``_cap_order``) counted."""
    counted = state.capped.get(key)
    if counted is None:
        state.capped[key] = [[at, weight]]
        # a contact whose day is forgotten counts its later events of that day anew, up to its cap
        _bound(state.capped, 2 * config.max_contacts, _day_order)
    elif len(counted) < cap:
        counted.append([at, weight])
    else:
        latest = max(counted, key=_cap_order)
        if _cap_order([at, weight]) >= _cap_order(latest):  # in that order it comes after the cap
            return
        counted.remove(latest)
        _add(state, -latest[1], int(latest[0]), config)
        counted.append([at, weight])
    _add(state, weight, at, config)


def _contact_digest(contact: str) -> str:
    return "#" + hashlib.blake2b(contact.encode(), digest_size=16).hexdigest()


def _bound(memories: dict[str, Any], keep: int, order: Callable[[tuple[str, Any]], tuple[int, str]]) -> None:
    """Once an eighth more than ``keep`` have come, forgets the earliest entries in
    ``order`` (ties: by key) down to ``keep``, whatever the order they were noted in:
    O(log n) an entry."""
    if len(memories) > keep + keep // 8:
        for key, _ in sorted(memories.items(), key=order)[: len(memories) - keep]:
            del memories[key]


def _latest_order(contact: tuple[str, Any]) -> tuple[int, str]:
    """A contact by when it was engaged last."""
    key, at = contact
    return int(at), key


def _day_order(capped: tuple[str, Any]) -> tuple[int, str]:
    """A capped-day memory ("day|type|contact") by its day."""
    key, _ = capped
    return int(key.partition("|")[0]), key


def _cap_order(counted: list[float]) -> tuple[float, float]:
    """Earliest first; at equal times the heavier first (equal keys weigh the same)."""
    at, weight = counted
    return at, -weight


def _prune(state: AccountState, today: int, config: ScoringConfig) -> None:
    oldest_day = today - RETENTION_DAYS
    for day in [day for day in state.daily if day <= oldest_day]:
        del state.daily[day]
    oldest_ms = oldest_day * DAY_MS  # older than every window evaluated from today on
    for contact in [c for c, at in state.contacts.items() if at < oldest_ms]:
        del state.contacts[contact]
    oldest_cap_day = (today * DAY_MS - config.cap_memory_ms) // DAY_MS
    for key in [key for key in state.capped if int(key.partition("|")[0]) < oldest_cap_day]:
        del state.capped[key]
    state.pruned_day = today
