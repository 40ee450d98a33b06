"""Identity resolution end to end: the account directory from the compacted accounts
topic, domains and sticky contacts, and unresolved events resolved once their domain
becomes known, across a restart."""

from __future__ import annotations

import asyncio
import math
import time

import orjson
import pytest

from schemas.events import EVENT_TYPES, TOPIC_ACCOUNTS, TOPIC_CONTACTS, TOPIC_DEAD_LETTERS
from streams.keyed import default_partition
from streams.topics import prepare_topics
from tests.integration.support import NO_LATENESS, consume_all, isolated_settings, produce, query, start_worker

pytestmark = pytest.mark.integration


def at(minutes_ago: int) -> int:
    return int(time.time() * 1000) - minutes_ago * 60_000


def event(event_id: str, kind: str = "page_view", **fields) -> dict:
    base = {"event_id": event_id, "type": kind, "source": "test", "occurred_at": at(60 - int(event_id[1:]))}
    base.update({"url": "https://www.pulse.example/pricing"} if kind == "page_view" else {"campaign_id": "camp-1"})
    base.update(fields)
    return base


def wait_for(worker, predicate, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = (worker.status() or {}).get("stats", {})
        if predicate(stats):
            return stats
        time.sleep(0.2)
    raise AssertionError(f"timed out; last stats {stats}\n{worker.log_tail()}")


def test_directory_domains_sticky_contacts_and_late_resolution(kafka_bootstrap, tmp_path):
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
    accounts = settings.topic(TOPIC_ACCOUNTS)

    def send_events(*events: dict) -> None:
        asyncio.run(produce(kafka_bootstrap, [(settings.topic(EVENT_TYPES[e["type"]].topic), None, orjson.dumps(e)) for e in events]))

    def send_account(account_id: str, *domains: str) -> None:
        record = {"account_id": account_id, "name": account_id.title(), "domains": list(domains), "target": True, "tier": "1"}
        asyncio.run(produce(kafka_bootstrap, [(accounts, account_id.encode(), orjson.dumps(record))]))

    # bad directory records: dead-lettered once, though every start reads them again
    bad_records = [(accounts, b"acct-bad", b'{"account_id": 7}'), (settings.topic(TOPIC_CONTACTS), b"c-bad", b'{"contact_id": "c-bad"}')]
    asyncio.run(prepare_topics(settings))
    asyncio.run(produce(kafka_bootstrap, bad_records))

    worker = start_worker(settings, "first")
    try:
        send_account("acct-known", "known.io")
        send_events(
            event("e1", email="Jane+news@Mail.Known.io", contact_id="c-1"),  # email domain, subdomain, case, plus tag
            event("e2", "email_open", contact_id="c-1"),  # the contact, learned from e1
            event("e3", "email_open", email="jane@known.io"),  # the email, learned from e1
            event("e4", email="bob@gmail.com"),  # a personal domain: never an account
            event("e5", account_domain="www.later.co.uk"),  # a domain nobody knows yet
        )
        # topics are consumed side by side: e2 or e3 may come before e1 and wait on the
        # contact until e1 teaches it; either way two events end up waiting
        waiting = lambda s: s.get("unresolved", 0) - s.get("resolved_later", 0)  # noqa: E731
        wait_for(worker, lambda s: s.get("applied") == 3 and waiting(s) == 2)
        send_account("acct-later", "later.co.uk")  # the directory learns the domain
        wait_for(worker, lambda s: s.get("applied") == 4 and waiting(s) == 1)
    finally:
        assert worker.stop() == 0, worker.log_tail()

    # A restarted worker rebuilds the directory, learned contacts included.
    second = start_worker(settings, "second")
    try:
        send_events(event("e6", "email_open", contact_id="c-1"), event("e7", email="ann@later.co.uk"))
        wait_for(second, lambda s: s.get("applied") == 2)
        # the CRM knows Bob's personal address: his waiting event resolves through it
        bob = {"contact_id": "c-9", "email": "Bob@gmail.com", "account_id": "acct-known", "title": "CTO"}
        asyncio.run(produce(kafka_bootstrap, [(settings.topic(TOPIC_CONTACTS), b"c-9", orjson.dumps(bob))]))
        wait_for(second, lambda s: s.get("applied") == 3 and s.get("resolved_later") == 1)
        second.wait_drained(timeout_s=60)
    finally:
        assert second.stop() == 0, second.log_tail()

    rows = query(settings, "SELECT event_id, account_id FROM events ORDER BY event_id")
    assert [(r["event_id"], r["account_id"]) for r in rows] == [
        ("e1", "acct-known"), ("e2", "acct-known"), ("e3", "acct-known"), ("e4", "acct-known"),
        ("e5", "acct-later"), ("e6", "acct-known"), ("e7", "acct-later"),
    ]
    assert query(settings, "SELECT event_id FROM unresolved_pending") == []
    resolved = query(settings, "SELECT event_id, waiting_on, account_id FROM unresolved_resolutions FINAL")
    assert {("e4", "contact:email:bob@gmail.com", "acct-known"), ("e5", "later.co.uk", "acct-later")} <= {
        (r["event_id"], r["waiting_on"], r["account_id"]) for r in resolved
    }
    scores = {r["account_id"]: r["events_total"] for r in query(settings, "SELECT account_id, events_total FROM account_scores FINAL")}
    assert scores == {"acct-known": 5, "acct-later": 2}
    dead = asyncio.run(consume_all(kafka_bootstrap, settings.topic(TOPIC_DEAD_LETTERS), 2, timeout_s=10))
    assert sorted((dict(m.headers)["abm.topic"].decode(), m.value) for m in dead) == sorted((t, v) for t, _, v in bad_records)
    stored = query(settings, "SELECT topic, reason, payload FROM dead_letters FINAL ORDER BY topic")
    assert [(r["topic"], r["reason"], r["payload"].encode()) for r in stored] == [
        (accounts, "bad_field", b'{"account_id": 7}'), (settings.topic(TOPIC_CONTACTS), "missing_field", b'{"contact_id": "c-bad"}')
    ]
    learned = asyncio.run(consume_all(kafka_bootstrap, settings.topic(TOPIC_CONTACTS), 1, timeout_s=10))
    assert {orjson.loads(m.value)["account_id"] for m in learned if m.key != b"c-bad"} == {"acct-known", "acct-later"}
    assert {b"c-1", b"email:ann@later.co.uk"} <= {m.key for m in learned}
    # sent in batches: each in its key's partition, as any other producer of the topic puts it
    assert [m.partition for m in learned] == [default_partition(m.key, settings.topic_partitions) for m in learned]


def test_contact_titles_and_an_override_rules_file_weigh_events(kafka_bootstrap, tmp_path):
    """The CRM's contact titles reach the score through the directory; ABM_ENGAGEMENT_RULES
    overrides the shipped weights and multipliers."""
    settings = isolated_settings(kafka_bootstrap, tmp_path / "abm")
    rules = tmp_path / "rules.toml"
    rules.write_text("[weights]\nemail_click = 5.0\n\n[seniority]\nc_level = 3.0\n")
    asyncio.run(prepare_topics(settings))
    contacts = [
        {"contact_id": "c-ceo", "account_id": "acct-t", "title": "Chief Executive Officer"},
        {"contact_id": "c-eng", "account_id": "acct-t", "title": "Software Engineer"},
    ]
    records = [(settings.topic(TOPIC_CONTACTS), c["contact_id"].encode(), orjson.dumps(c)) for c in contacts]
    asyncio.run(produce(kafka_bootstrap, records))  # read in full before the first event is routed
    t = at(60)
    clicks = [event("e1", "email_click", contact_id="c-ceo", url="u", occurred_at=t), event("e2", "email_click", contact_id="c-eng", url="u", occurred_at=t + 1000)]
    worker = start_worker(settings, extra_env={**NO_LATENESS, "ABM_ENGAGEMENT_RULES": str(rules)})
    try:
        asyncio.run(produce(kafka_bootstrap, [(settings.topic(EVENT_TYPES["email_click"].topic), None, orjson.dumps(e)) for e in clicks]))
        worker.wait_drained(timeout_s=60)
    finally:
        assert worker.stop() == 0, worker.log_tail()

    [row] = query(settings, "SELECT account_id, engagement_score, engaged_contacts_30d FROM account_scores FINAL")
    expected = 5.0 * 3.0 * 2 ** (-1000 / (30 * 86_400_000)) + 5.0
    assert (row["account_id"], row["engaged_contacts_30d"]) == ("acct-t", 2)
    assert math.isclose(row["engagement_score"], expected, rel_tol=1e-12)
