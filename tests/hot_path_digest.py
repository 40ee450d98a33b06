"""Runs processors/ over a fixed simulated stream and prints a digest of everything it
derives: routing (rejections, waiting keys, forwarded bytes), folding (applied events,
duplicates, stage transitions, accounts' rows), held events in stored segments, and every
changed account's stored state at each checkpoint (streams.folding: natively where
native code is built).

``--pure`` imports processors/ from its sources, past the compiled extensions
(setup.py): tests/unit/test_compiled.py compares both runs, so the interpreted code a
machine without a C compiler runs (ABM_PURE_PYTHON=1) derives exactly what CI's
compiled code does. ``--no-native`` runs without native code (abm_native: routing's fast
path, the directory, the fold): tests/unit/test_fast_path.py compares that run with the
default one. Forwarded
messages count as the events they decode to: the fast path writes other bytes for them.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import random
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

# not streams.compiled.PROCESSORS: importing it would import processors/ before --pure can choose
PROCESSORS = Path(__file__).resolve().parent.parent / "processors"
PARTITIONS = 4
BATCH = 1_000
LATENESS_MS = 5 * 60_000
MAX_HELD = 40  # low: busy accounts move their held events to segments and read them back
START = datetime(2026, 9, 1, tzinfo=UTC)
RECEIVED_AT_MS = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds processors and its modules as .py sources only."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == "processors":
            return importlib.util.spec_from_file_location(fullname, PROCESSORS / "__init__.py", submodule_search_locations=[str(PROCESSORS)])
        if fullname.startswith("processors."):
            return importlib.util.spec_from_file_location(fullname, PROCESSORS / f"{fullname.removeprefix('processors.')}.py")
        return None


def digest_of_a_run(*flags: str, events: int = 20_000) -> dict[str, Any]:
    """What a process of its own prints with these flags: each run imports processors/ afresh."""
    run = subprocess.run([sys.executable, "-m", "tests.hot_path_digest", *flags, str(events)], capture_output=True, check=True, cwd=PROCESSORS.parent)
    result: dict[str, Any] = orjson.loads(run.stdout)
    return result


def raw_stream(events: int) -> list[bytes | None]:
    """Simulated events as sent, with what real sources add: events that must wait for
    the directory or resolve by a domain, times in other forms, some arriving minutes
    late, repeats, bad input."""
    from streams.simulator import encode, iter_events

    rng = random.Random(7)
    raw: list[bytes | None] = []
    for event in iter_events(accounts=60, expected_events=events, count=events, start=START, history_days=20):
        if rng.random() < 0.3:
            event.pop("account_id", None)
        if rng.random() < 0.1:
            event["occurred_at"] = other_time_form(rng, event["occurred_at"])
        raw.append(encode(event))
    for _ in range(events // 50):  # late: moved up to ~300 positions on
        index = rng.randrange(len(raw) - 1)
        raw.insert(min(len(raw), index + rng.randrange(1, 300)), raw.pop(index))
    raw += rng.sample(raw, events // 20)  # repeats, near the end
    for bad in (None, b"", b"{", b"[]", b'{"type":"email_open"}', b'{"schema_version":1,"type":"nope"}'):
        raw.insert(rng.randrange(len(raw)), bad)
    return raw


def other_time_form(rng: random.Random, iso: str) -> str | int:
    """The same instant as epoch ms, with a UTC offset, or in forms only Python parses."""
    at = datetime.fromisoformat(iso)
    form = rng.randrange(4)
    if form == 0:
        return int(at.timestamp() * 1000)
    if form == 1:
        return at.astimezone(timezone(timedelta(hours=-5, minutes=-30))).isoformat(timespec="milliseconds")
    if form == 2:
        return iso.replace(".", ",")
    return at.strftime("%Y%m%dT%H%M%S.%fZ")  # ISO's basic format


class MemoryTable:
    """Faust's memory store, as streams.state reads and writes it."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


def digest(events: int) -> dict[str, Any]:
    from processors.dedup import DedupPolicy
    from processors.identity import account_directory
    from processors.routing import forwarded_messages, route_batch
    from processors.scoring import json_of
    from streams.folding import FoldRules, folding
    from streams.rules import load_rules
    from streams.simulator import AccountUniverse

    dedup = DedupPolicy(horizon_ms=48 * 3_600_000, max_ids=2_000)
    config, rules = load_rules(None, 14 * 86_400_000, dedup.horizon_ms, max_contacts=4)  # its accounts outgrow it: forgetting is compared too
    directory = account_directory(max_contacts=10_000)
    for account in AccountUniverse.build(42, 60).accounts[:45]:  # the rest wait
        directory.learn_account(account.account_id, [account.domain])
    table = MemoryTable()
    folds = folding(table, None, PARTITIONS, 10_000, 1 << 30, FoldRules(config, rules, dedup, MAX_HELD, LATENESS_MS, 1_000))
    folds.reset(range(PARTITIONS), {p: -1 for p in range(PARTITIONS)})
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    sha = hashlib.sha256()
    counts = {"applied": 0, "duplicates": 0, "transitions": 0, "rejected": 0, "unresolved": 0, "segments": 0}

    raw = raw_stream(events)
    for start in range(0, len(raw), BATCH):
        batch = raw[start : start + BATCH]
        routed = route_batch(batch, [("raw", 0, start + i) for i in range(len(batch))], RECEIVED_AT_MS, PARTITIONS, directory)
        for index, rejection in routed.rejected:
            sha.update(orjson.dumps([index, rejection.reason.value, rejection.message]))
        for index, _, waiting_on in routed.unresolved:
            sha.update(orjson.dumps([index, waiting_on]))
        sha.update(orjson.dumps([routed.learned_contacts, routed.valid_by_type]))
        counts["rejected"] += len(routed.rejected)
        counts["unresolved"] += len(routed.unresolved)
        messages = []
        for partition in sorted(routed.by_partition):
            for message in forwarded_messages(routed.by_partition[partition], max_events=100):
                sha.update(orjson.dumps(orjson.loads(message)))
                messages.append((partition, offsets[partition], message))
                offsets[partition] += 1
        folded = folds.fold(messages)
        sha.update(orjson.dumps(folded.applied))
        sha.update(orjson.dumps([asdict(transition) for transition in folded.transitions]))
        sha.update(orjson.dumps(sorted(folds.take_changed_rows(RECEIVED_AT_MS))))
        counts["applied"] += len(folded.applied)
        counts["duplicates"] += folded.duplicates
        counts["transitions"] += len(folded.transitions)
        # a checkpoint: segments, then every changed state as stored; then all leave memory
        for _, key, stored in sorted(folds.states.take_changes(), key=lambda change: change[1]):
            sha.update(key)
            if stored is None:
                table.data.pop(key)
                continue
            sha.update(json_of(stored))
            table.data[key] = stored
            counts["segments"] += key[:1] == b"\xff"
        folds.states.forget()
    return {"digest": sha.hexdigest(), **counts}


if __name__ == "__main__":
    if "--pure" in sys.argv:
        sys.meta_path.insert(0, SourceFinder())
    if "--no-native" in sys.argv:
        sys.modules["abm_native"] = None  # type: ignore[assignment]  # its import fails
    import processors.fast_routing
    import processors.scoring

    report = {"scoring_module": processors.scoring.__file__, "native": processors.fast_routing.native is not None}
    print(orjson.dumps({**report, **digest(int(sys.argv[-1]))}).decode())
