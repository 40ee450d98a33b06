"""The event generator of the simulator: pure, deterministic, valid, and shaped by its tier model.

No Kafka here: only ``AccountUniverse``, ``iter_events``, ``encode`` and ``expected_total``.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import orjson
import pytest

from processors.validation import Rejection, parse_timestamp_ms, validate_event
from streams.simulator import (
    DAY_MS,
    DEFAULT_MACHINE_OPEN_SHARE,
    EVENT_KINDS,
    FULL_SPEED_EVENTS_PER_S,
    SOURCES,
    TIERS,
    AccountUniverse,
    encode,
    expected_total,
    format_timestamp,
    iter_events,
)

START = datetime(2025, 1, 1, tzinfo=UTC)
START_MS = int(START.timestamp() * 1000)
HISTORY_DAYS = 60.0
END_MS = START_MS + int(HISTORY_DAYS * DAY_MS)
N_EVENTS = 50_000
N_ACCOUNTS = 200
REPO_ROOT = Path(__file__).resolve().parents[2]


def first_bytes(n: int = 5_000, **kwargs: object) -> list[bytes]:
    params: dict[str, object] = dict(seed=42, accounts=N_ACCOUNTS, start=START, expected_events=N_EVENTS)
    params.update(kwargs)
    return [encode(e) for e in islice(iter_events(**params), n)]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def universe() -> AccountUniverse:
    return AccountUniverse.build(seed=42, accounts=N_ACCOUNTS)


@pytest.fixture(scope="module")
def events(universe: AccountUniverse) -> list[dict]:
    """50,000 events over 60 days for the 200-account universe of seed 42."""
    generated = list(
        iter_events(
            seed=42,
            universe=universe,
            start=START,
            history_days=HISTORY_DAYS,
            expected_events=N_EVENTS,
            count=N_EVENTS,
        )
    )
    assert len(generated) == N_EVENTS
    return generated


# ---------------------------------------------------------------------- determinism


def test_same_seed_same_params_same_bytes():
    first = first_bytes()
    second = first_bytes()
    assert len(first) == 5_000
    assert first == second


def test_universe_is_deterministic_and_depends_on_the_seed():
    assert AccountUniverse.build(seed=7, accounts=50) == AccountUniverse.build(seed=7, accounts=50)
    other = AccountUniverse.build(seed=8, accounts=50)
    assert other != AccountUniverse.build(seed=7, accounts=50)
    # same ids (acct-0001...), different market behind them
    assert [a.account_id for a in other.accounts] == [a.account_id for a in AccountUniverse.build(seed=7, accounts=50).accounts]


def test_different_seed_different_sequence():
    base = first_bytes()
    other = first_bytes(seed=43)
    assert len(other) == len(base)
    # not just the event-id prefix: the payloads differ once ids are ignored
    strip = lambda raw: {k: v for k, v in orjson.loads(raw).items() if k != "event_id"}  # noqa: E731
    assert [strip(r) for r in base[:200]] != [strip(r) for r in other[:200]]
    differing = sum(strip(a) != strip(b) for a, b in zip(base, other, strict=True))
    assert differing > 4_500  # virtually every position differs


def test_other_params_change_the_sequence():
    base = first_bytes(1_000)
    assert first_bytes(1_000, start=START + timedelta(milliseconds=1)) != base
    assert first_bytes(1_000, expected_events=N_EVENTS * 2) != base
    assert first_bytes(1_000, accounts=N_ACCOUNTS + 1) != base


def test_naive_start_is_taken_as_utc():
    assert first_bytes(500, start=START.replace(tzinfo=None)) == first_bytes(500)


def test_sequence_does_not_depend_on_the_process_hash_seed():
    """Byte for byte across processes, whatever PYTHONHASHSEED (string hashing) is."""
    digest = hashlib.sha256(b"".join(first_bytes(2_000))).hexdigest()
    script = (
        "import hashlib; from datetime import UTC, datetime; from itertools import islice\n"
        "from streams.simulator import encode, iter_events\n"
        f"events = islice(iter_events(seed=42, accounts={N_ACCOUNTS}, start=datetime(2025, 1, 1, tzinfo=UTC), "
        f"expected_events={N_EVENTS}), 2000)\n"
        "print(hashlib.sha256(b''.join(encode(e) for e in events)).hexdigest())\n"
    )
    for hash_seed in ("1", "12345"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONHASHSEED=hash_seed),
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode().strip() == digest


# ------------------------------------------------------------------------- validity


def test_every_event_is_a_valid_canonical_event(events):
    for event in events:
        result = validate_event(encode(event), END_MS)
        assert not isinstance(result, Rejection), (result, event)
        assert result["received_at_ms"] == END_MS
        assert START_MS <= result["occurred_at_ms"] <= END_MS


def test_event_ids_are_unique(events):
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "sim-42-1" and ids[-1] == f"sim-42-{N_EVENTS}"


def test_event_times_are_non_decreasing_and_inside_the_history(events):
    times = [parse_timestamp_ms(e["occurred_at"]) for e in events]
    assert all(isinstance(t, int) for t in times)
    assert all(a <= b for a, b in zip(times, times[1:], strict=False))
    assert START_MS <= times[0] and times[-1] <= END_MS
    # the history is really covered, not squeezed into a corner of it
    assert times[0] - START_MS < DAY_MS
    assert END_MS - times[-1] < 2 * DAY_MS
    # the formatted time is exactly the millisecond it stands for
    assert all(format_timestamp(t) == e["occurred_at"] for t, e in zip(times[:1000], events[:1000], strict=True))


def test_more_events_than_expected_stay_at_the_end_of_history():
    """Drawing past `expected_events` never produces a time beyond the history."""
    extra = list(iter_events(seed=3, accounts=20, start=START, history_days=1.0, expected_events=100, count=2_000))
    end = START_MS + DAY_MS
    times = [parse_timestamp_ms(e["occurred_at"]) for e in extra]
    assert len(extra) == 2_000
    assert max(times) == end  # clamped, not beyond
    assert sum(t == end for t in times) > 1_000  # most of the surplus sits at the end
    assert all(a <= b for a, b in zip(times, times[1:], strict=False))
    assert all(not isinstance(validate_event(encode(e), end), Rejection) for e in extra)


def test_types_sources_and_type_specific_fields(events):
    counts = Counter(e["type"] for e in events)
    assert set(counts) == set(EVENT_KINDS)  # all four kinds occur, nothing else
    for event in events:
        kind = event["type"]
        assert event["source"] == SOURCES[kind]
        if kind in ("email_open", "email_click"):
            assert event["campaign_id"].startswith("camp-")
        if kind == "email_open":
            assert isinstance(event["properties"]["machine_open"], bool)
        elif kind == "webinar_signup":
            assert event["content_id"].startswith("webinar-")
        else:
            assert event["url"].startswith("https://")


def test_every_event_has_an_account_of_the_universe_and_one_of_its_contacts(universe, events):
    accounts = {a.account_id: a for a in universe.accounts}
    for event in events:
        account = accounts[event["account_id"]]
        assert event["account_domain"] == account.domain
        contacts = {c.contact_id: c for c in account.contacts[: account.engaged]}
        contact = contacts[event["contact_id"]]  # an engaged contact of this very account
        # the email is the contact's, possibly upper-cased or with a +news tag
        local, _, domain = event["email"].lower().partition("@")
        assert f"{local.removesuffix('+news')}@{domain}" == contact.email


def test_count_stops_the_stream_and_default_is_endless():
    assert len(list(iter_events(seed=1, accounts=10, start=START, count=37))) == 37
    endless = iter_events(seed=1, accounts=10, start=START, expected_events=10)
    assert len(list(islice(endless, 500))) == 500  # far more than expected, still going


def test_iter_events_rejects_a_non_positive_expected_events():
    with pytest.raises(ValueError, match="expected_events"):
        iter_events(seed=1, accounts=10, start=START, expected_events=0)


def test_a_universe_of_inactive_accounts_emits_nothing():
    universe = AccountUniverse.build(seed=1, accounts=5)
    dead = AccountUniverse(
        seed=1,
        accounts=tuple(replace(a, weight=0.0) for a in universe.accounts),
        campaigns=universe.campaigns,
        webinars=universe.webinars,
    )
    assert list(iter_events(universe=dead, start=START, count=10)) == []


# ------------------------------------------------------------------------ tier model


def test_universe_shape(universe):
    assert len(universe.accounts) == N_ACCOUNTS
    assert [a.account_id for a in universe.accounts] == [f"acct-{i:04d}" for i in range(1, N_ACCOUNTS + 1)]
    assert len(universe.campaigns) == 12 and len(universe.webinars) == 12
    tiers = Counter(a.tier for a in universe.accounts)
    assert set(tiers) == {t.name for t in TIERS}
    for tier in TIERS:  # shares near the configured ones (binomial, 200 draws: sd <= 3.6 accounts)
        assert abs(tiers[tier.name] - tier.share * N_ACCOUNTS) < 5 * math.sqrt(N_ACCOUNTS * tier.share * (1 - tier.share))
    for account in universe.accounts:
        assert 1 <= account.engaged <= len(account.contacts)
        assert len({c.contact_id for c in account.contacts}) == len(account.contacts)
        assert len({c.email for c in account.contacts}) == len(account.contacts)
        assert all(c.email.endswith("@" + account.domain) for c in account.contacts)
        if account.tier != "cold":
            assert account.weight > 0  # only cold accounts can be inactive
        if account.tier in ("lukewarm", "cold"):
            assert not account.intent
        if account.tier == "hot":
            assert account.intent
    assert universe.account("acct-0007") is universe.accounts[6]
    with pytest.raises(KeyError):
        universe.account("acct-9999")


def test_hot_accounts_are_far_more_active_than_cold_ones(universe, events):
    per_account = Counter(e["account_id"] for e in events)
    mean = {}
    for tier in TIERS:
        members = [a for a in universe.accounts if a.tier == tier.name]
        assert members, tier.name
        mean[tier.name] = sum(per_account[a.account_id] for a in members) / len(members)
    assert mean["hot"] > mean["warm"] > mean["lukewarm"] > mean["cold"]
    assert mean["hot"] > 100 * mean["cold"]
    # inactive accounts (weight 0) never emit; every active one does over 50,000 events
    for account in universe.accounts:
        if account.weight == 0:
            assert per_account[account.account_id] == 0
    assert any(a.weight == 0 for a in universe.accounts)  # the seed has some, so the check above bites
    # hot accounts involve several contacts, lukewarm ones exactly one
    contacts = {}
    for e in events:
        contacts.setdefault(e["account_id"], set()).add(e["contact_id"])
    for account in universe.accounts:
        if account.tier == "lukewarm" and account.account_id in contacts:
            assert len(contacts[account.account_id]) == 1
    hot_contacts = [len(contacts[a.account_id]) for a in universe.accounts if a.tier == "hot"]
    assert sum(hot_contacts) / len(hot_contacts) >= 3


def test_no_intent_means_no_webinars_and_no_pricing(universe, events):
    intent = {a.account_id: a.intent for a in universe.accounts}
    pricing = [e for e in events if e["type"] == "page_view" and e["properties"]["path"] == "/pricing"]
    webinars = [e for e in events if e["type"] == "webinar_signup"]
    assert pricing and webinars  # the model produces both, so the check below is not vacuous
    assert all(intent[e["account_id"]] for e in pricing)
    assert all(intent[e["account_id"]] for e in webinars)
    assert all(e["url"].endswith("/pricing") == (e["properties"]["path"] == "/pricing") for e in events if e["type"] == "page_view")
    # and accounts without intent are not silent: they do view other pages
    assert any(not intent[e["account_id"]] for e in events if e["type"] == "page_view")


def test_machine_open_share_is_near_the_configured_share(events):
    opens = [e for e in events if e["type"] == "email_open"]
    n = len(opens)
    assert n > 10_000
    share = sum(e["properties"]["machine_open"] for e in opens) / n
    p = DEFAULT_MACHINE_OPEN_SHARE
    # binomial: sd = sqrt(p(1-p)/n) ~ 0.0026 for n ~ 19,000; five sd is a ~1e-6 false alarm
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_machine_open_share_follows_the_parameter(share):
    opens = [
        e
        for e in iter_events(seed=5, accounts=50, start=START, expected_events=8_000, count=8_000, machine_open_share=share)
        if e["type"] == "email_open"
    ]
    n = len(opens)
    assert n > 1_000
    observed = sum(e["properties"]["machine_open"] for e in opens) / n
    if share in (0.0, 1.0):
        assert observed == share
    else:
        assert abs(observed - share) < 5 * math.sqrt(share * (1 - share) / n)


# ------------------------------------------------------------------ expected_total


@pytest.mark.parametrize(
    "rate, duration_s, count, expected",
    [
        (None, None, None, 1_000_000),  # unbounded run: a large default
        (None, None, 500, 500),  # count alone
        (1000.0, 30.0, None, 30_000),  # paced: rate * duration
        (1000.0, 30.0, 5_000, 5_000),  # whichever stops first: count
        (1000.0, 2.0, 5_000, 2_000),  # whichever stops first: duration
        (None, 2.0, None, int(2 * FULL_SPEED_EVENTS_PER_S)),  # unpaced: assumed full speed
        (0.0, 2.0, None, int(2 * FULL_SPEED_EVENTS_PER_S)),  # rate 0 = unpaced too
        (10.0, 0.05, None, 1),  # less than one event -> at least 1
        (10.0, 0.0, None, 1),
        (3.0, 1.5, None, 4),  # truncated, not rounded up (4.5 -> 4)
    ],
)
def test_expected_total(rate, duration_s, count, expected):
    assert expected_total(rate, duration_s, count) == expected


# ------------------------------------------------------------------ build arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"accounts": 0}, "accounts"),
        ({"accounts": -3}, "accounts"),
        ({"contacts_per_account": 0.5}, "contacts_per_account"),
        ({"contacts_per_account": 0}, "contacts_per_account"),
        ({"campaigns": 0}, "campaigns"),
        ({"webinars": 0}, "webinars"),
    ],
)
def test_build_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AccountUniverse.build(**kwargs)


def test_build_smallest_valid_universe():
    tiny = AccountUniverse.build(seed=0, accounts=1, contacts_per_account=1, campaigns=1, webinars=1)
    assert len(tiny.accounts) == 1 and len(tiny.campaigns) == 1 and len(tiny.webinars) == 1
    assert len(tiny.accounts[0].contacts) >= 1
