"""The BI layer of migration 004 on real data in the embedded engine (chDB), with values
computed by hand from the events below.

The events reach ClickHouse through the real sink, twice with the same deduplication
token (an insert retried after its acknowledgement was lost): the tables, every
materialized view fed from them and every view on top must count them once. The client
starts with deduplicate_blocks_in_dependent_materialized_views=0, the default of
ClickHouse 24 servers, so the sink has to ask for it.

One chDB directory per module (see test_store.py). With CLICKHOUSE_URL set, every test
also runs on a fresh database of that server; otherwise that variant is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from streams.rows import event_row
from streams.sink import ACCOUNT_COLUMNS, CLAIMED_EVENT_COLUMNS, CLAIMED_EVENTS, TRANSITION_COLUMNS, ClickHouseSink
from streams.store import MIGRATIONS_TABLE, apply_migrations, claim_partitions, load_migrations
from tests.conftest import server_database

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 2, 10, tzinfo=UTC)  # a Monday, 10:00 UTC
NOW = dt.datetime.now(UTC)


def at(day: float) -> int:
    return int((T0 + dt.timedelta(days=day)).timestamp() * 1000)


def ago(days: float) -> int:
    return int((NOW - dt.timedelta(days=days)).timestamp() * 1000)


class Events:
    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def add(self, ms: int, kind: str, account: str, contact: str = "", **fields: Any) -> None:
        n = len(self.rows)
        event = {
            "event_id": f"e{n}", "type": kind, "source": "test", "account_id": account, "contact_id": contact,
            "occurred_at_ms": ms, "received_at_ms": ms, "properties": fields.pop("properties", None), **fields,
        }
        self.rows.append(event_row(event, 0, n, 0, claim=1))  # partition 0's first claim (load)


def dataset() -> Events:
    ev = Events()
    # campaign c1: sent to k1..k5, delivered to all but k4 (bounced); k2's open is a machine's
    for contact, account in (("k1", "acc-a"), ("k2", "acc-a"), ("k3", "acc-a"), ("k4", "acc-b"), ("k5", "acc-b")):
        ev.add(at(0), "email_sent", account, contact, campaign_id="c1")
        if contact == "k4":
            ev.add(at(0), "email_bounced", account, contact, campaign_id="c1", properties={"bounce_type": "hard"})
        else:
            ev.add(at(0), "email_delivered", account, contact, campaign_id="c1")
    ev.add(at(0), "email_open", "acc-a", "k1", campaign_id="c1")
    ev.add(at(0), "email_open", "acc-a", "k2", campaign_id="c1", properties={"machine_open": True})
    ev.add(at(0), "email_open", "acc-a", "k3", campaign_id="c1")
    ev.add(at(0), "email_open", "acc-b", "k5", campaign_id="c1")
    ev.add(at(1), "email_open", "acc-a", "k1", campaign_id="c1")
    ev.add(at(1), "email_click", "acc-a", "k1", campaign_id="c1", url="https://x.example/a")
    ev.add(at(2), "email_click", "acc-a", "k1", campaign_id="c1", url="https://x.example/b")
    ev.add(at(8), "email_click", "acc-a", "k2", campaign_id="c1", url="https://x.example/a")
    # campaign c2: delivered twice, never opened
    ev.add(at(30), "email_delivered", "acc-a", "k1", campaign_id="c2")
    ev.add(at(30), "email_delivered", "acc-a", "k2", campaign_id="c2")
    # content
    ev.add(at(1), "content_downloaded", "acc-a", "k1", content_id="wp-1")
    ev.add(at(2), "content_downloaded", "acc-a", "k1", content_id="wp-1")
    ev.add(at(1), "content_downloaded", "acc-b", "k4", content_id="wp-1")
    ev.add(at(8), "webinar_signup", "acc-a", "k2", content_id="web-1")
    ev.add(at(8), "webinar_attended", "acc-a", "k2", content_id="web-1", properties={"minutes": 40})
    # forms and meetings
    ev.add(at(1), "form_submitted", "acc-a", "k1", properties={"form_id": "f", "cta_id": "cta-x"})
    ev.add(at(2), "form_submitted", "acc-a", "k1", properties={"form_id": "f", "cta_id": "cta-x"})
    ev.add(at(3), "form_submitted", "acc-a", "", properties={"form_id": "f", "cta_id": "cta-x"})  # anonymous
    ev.add(at(8), "form_submitted", "acc-a", "k2", properties={"form_id": "f", "cta_id": "cta-x"})
    ev.add(at(5), "form_submitted", "acc-a", "k3", properties={"form_id": "f", "cta_id": "cta-y"})
    ev.add(at(4), "meeting_booked", "acc-a", "k1", properties={"meeting_type": "demo"})
    ev.add(at(4), "meeting_booked", "acc-a", "k3", properties={"meeting_type": "call"})
    ev.add(at(8), "meeting_booked", "acc-b", "k5", properties={"meeting_type": "demo"})
    # opportunities
    def opp(day: float, account: str, opportunity: str, stage: str, **props: Any) -> None:
        ev.add(at(day), "opportunity_stage_changed", account, properties={"opportunity_id": opportunity, "stage": stage, **props})

    opp(5, "acc-a", "opp-1", "qualified", amount=1000.0, currency="USD")
    opp(10, "acc-a", "opp-1", "closed_won", amount=1200.0, currency="USD", is_closed=True, is_won=True)
    opp(6, "acc-b", "opp-2", "qualified", amount=500.0, currency="USD")
    opp(9, "acc-b", "opp-2", "closed_lost", is_closed=True, is_won=False)
    opp(1, "acc-c", "opp-3", "qualified", amount=800.0, currency="EUR")
    opp(12, "acc-c", "opp-3", "closed_won", amount=800.0, currency="EUR", is_closed=True, is_won=True)
    opp(-5, "acc-b", "opp-4", "qualified", amount=300.0, currency="USD")
    # NPS
    for day, contact, score in ((20, "k1", 10), (20, "k2", 9), (20, "k3", 6), (21, "k1", 7)):
        ev.add(at(day), "nps_response", "acc-a", contact, properties={"score": score})
    ev.add(at(15), "nps_response", "acc-b", "k4", properties={"score": 3})
    # later engagement
    ev.add(at(70), "page_view", "acc-a", "k3", url="https://x.example/pricing")
    ev.add(at(15), "page_view", "acc-b", "k6", url="https://x.example/")
    # recent engagement of acc-d (the leaderboard's trend): 3 in the last week, 1 the week before
    for days in (2, 2, 2, 9):
        ev.add(ago(days), "page_view", "acc-d", "k7", url="https://x.example/")
    return ev


TRANSITIONS = [  # account, from, to, day
    ("acc-a", "target", "awareness", 0),
    ("acc-a", "awareness", "consideration", 2),
    ("acc-a", "consideration", "decision", 5),
    ("acc-a", "decision", "customer", 10),
    ("acc-b", "target", "awareness", 0),
    ("acc-b", "awareness", "decision", 8),
    ("acc-c", "target", "awareness", 1),
    ("acc-d", "target", "awareness", 3),
    ("acc-d", "awareness", "consideration", 7),
]


def score_row(account: str, score: float, stage: str, breadth: int, version: int) -> tuple[Any, ...]:
    row = dict.fromkeys(ACCOUNT_COLUMNS, 0)
    row.update(account_id=account, engagement_score=score, stage=stage, engaged_contacts_90d=breadth, version=version)
    row.update(events_7d={}, events_30d={}, events_90d={}, stage_reason="")
    for column in ("score_at", "stage_since", "first_event_at", "last_event_at", "updated_at"):
        row[column] = at(version)
    return tuple(row[c] for c in ACCOUNT_COLUMNS)


@pytest.fixture(scope="module", params=["embedded", "server"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """The migrated store with the data set: the embedded engine, or CLICKHOUSE_URL's server."""
    with contextlib.ExitStack() as stack:
        if request.param == "server":
            dsn = stack.enter_context(server_database())
        else:
            dsn = f"chdb://{tmp_path_factory.mktemp('analytics')}"
        client = clickhouse_connect.get_client(dsn=dsn, settings={"deduplicate_blocks_in_dependent_materialized_views": 0})
        stack.callback(client.close)
        apply_migrations(client)
        assert client.query("SELECT getSetting('deduplicate_blocks_in_dependent_materialized_views')").result_rows == [(0,)]
        load(client)
        yield client


def load(client: Client) -> None:
    assert claim_partitions(client, [0]) == {0: 1}
    sink = ClickHouseSink(client, {CLAIMED_EVENTS: CLAIMED_EVENT_COLUMNS, "account_scores": ACCOUNT_COLUMNS, "stage_transitions": TRANSITION_COLUMNS})
    transitions = [(a, f, t, at(d), 0.0, f"{a}-{t}", f"{t} rule met") for a, f, t, d in TRANSITIONS]
    scores = [
        score_row("acc-a", 40.0, "decision", 3, 5),  # an older version of acc-a
        score_row("acc-b", 30.0, "decision", 2, 8),
        score_row("acc-c", 5.0, "awareness", 0, 1),
        score_row("acc-d", 20.0, "consideration", 1, 7),
    ]
    for _ in range(2):  # the same batch, retried with the same token
        sink.add(CLAIMED_EVENTS, dataset().rows)
        sink.add("stage_transitions", transitions)
        sink.add("account_scores", scores)
        asyncio.run(sink.write(sink.take(), "batch-1"))
    sink.add("account_scores", [score_row("acc-a", 50.0, "customer", 3, 10)])
    sink.add("stage_transitions", transitions[:1])  # re-derived after a crash: collapses under FINAL
    asyncio.run(sink.write(sink.take(), "batch-2"))


def rows(client: Client, sql: str) -> list[dict[str, Any]]:
    result = client.query(sql)
    return [dict(zip(result.column_names, row)) for row in result.result_rows]


def approx(value: float | None) -> Any:
    return None if value is None else pytest.approx(value, rel=1e-12)


def test_migrations_are_recorded_once_and_idempotent(store):
    expected = [(m.version, m.name, m.checksum) for m in load_migrations()]
    assert apply_migrations(store) == []
    recorded = store.query(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} ORDER BY version").result_rows
    assert [(int(v), n, c) for v, n, c in recorded] == expected


def test_a_retried_batch_counts_once_in_tables_and_materialized_views(store):
    total = len(dataset().rows)
    assert rows(store, "SELECT count() AS n, uniqExact(event_id) AS u FROM events") == [{"n": total, "u": total}]
    assert rows(store, "SELECT count() AS n FROM campaign_facts") == [{"n": 20}]
    assert rows(store, "SELECT count() AS n FROM opportunity_updates") == [{"n": 7}]
    assert rows(store, "SELECT count() AS n FROM nps_responses") == [{"n": 5}]
    assert rows(store, "SELECT account_id, version FROM account_score_history ORDER BY account_id, version") == [
        {"account_id": a, "version": v} for a, v in (("acc-a", 5), ("acc-a", 10), ("acc-b", 8), ("acc-c", 1), ("acc-d", 7))
    ]
    engagement = rows(
        store,
        "SELECT account_id, sum(events) AS events, uniqExactMerge(contacts) AS contacts FROM account_daily_engagement "
        "GROUP BY account_id ORDER BY account_id",
    )
    # acc-a: opens 3 (the machine open is not engagement), clicks 3, downloads 2, forms 5,
    # meetings 2, webinar 2, NPS 4, page view 1; contacts k1 k2 k3 (the anonymous form has none)
    assert engagement == [
        {"account_id": "acc-a", "events": 22, "contacts": 3},
        {"account_id": "acc-b", "events": 5, "contacts": 3},
        {"account_id": "acc-d", "events": 4, "contacts": 1},
    ]
    day0 = rows(
        store,
        f"SELECT type, sum(events) AS events, uniqExactMerge(contacts) AS contacts FROM account_daily_engagement "
        f"WHERE account_id = 'acc-a' AND day = '{T0.date()}' GROUP BY type",
    )
    assert day0 == [{"type": "email_open", "events": 2, "contacts": 2}]


def test_funnel_now(store):
    assert {r["stage"]: r["accounts"] for r in rows(store, "SELECT * FROM funnel_now")} == {
        "customer": 1, "decision": 1, "consideration": 1, "awareness": 1,
    }


def test_funnel_daily(store):
    day = lambda d: (T0 + dt.timedelta(days=d)).date()  # noqa: E731
    assert [tuple(r.values()) for r in rows(store, "SELECT * FROM funnel_daily ORDER BY day, stage")] == [
        (day(0), "awareness", 2, 0, 2),
        (day(1), "awareness", 1, 0, 3),
        (day(2), "awareness", 0, 1, 2),
        (day(2), "consideration", 1, 0, 1),
        (day(3), "awareness", 1, 0, 3),
        (day(5), "consideration", 0, 1, 0),
        (day(5), "decision", 1, 0, 1),
        (day(7), "awareness", 0, 1, 2),
        (day(7), "consideration", 1, 0, 1),
        (day(8), "awareness", 0, 1, 1),
        (day(8), "decision", 1, 0, 2),
        (day(10), "customer", 1, 0, 1),
        (day(10), "decision", 0, 1, 1),
    ]


def test_stage_conversion(store):
    # highest stage reached: acc-a customer, acc-b decision, acc-c awareness, acc-d consideration
    assert rows(store, "SELECT * FROM stage_conversion") == [
        {"stage": "target", "reached": 4, "advanced": 4, "conversion_rate": 1.0},
        {"stage": "awareness", "reached": 4, "advanced": 3, "conversion_rate": 0.75},
        {"stage": "consideration", "reached": 3, "advanced": 2, "conversion_rate": approx(2 / 3)},
        {"stage": "decision", "reached": 2, "advanced": 1, "conversion_rate": 0.5},
    ]


def test_stage_velocity(store):
    # awareness: acc-a 2 days, acc-b 8, acc-d 4; consideration: acc-a 3; decision: acc-a 5
    assert rows(store, "SELECT * FROM stage_velocity ORDER BY stage") == [
        {"stage": "awareness", "exits": 3, "avg_days": approx(14 / 3), "median_days": 4.0},
        {"stage": "consideration", "exits": 1, "avg_days": 3.0, "median_days": 3.0},
        {"stage": "decision", "exits": 1, "avg_days": 5.0, "median_days": 5.0},
    ]


def test_account_leaderboard(store):
    assert [
        (r["account_id"], r["engagement_score"], r["stage"], r["breadth"], r["events_7d"], r["events_prev_7d"], r["trend"])
        for r in rows(store, "SELECT * FROM account_leaderboard")
    ] == [
        ("acc-a", 50.0, "customer", 3, 0, 0, 0),
        ("acc-b", 30.0, "decision", 2, 0, 0, 0),
        ("acc-d", 20.0, "consideration", 1, 3, 1, 2),
        ("acc-c", 5.0, "awareness", 0, 0, 0, 0),
    ]


def test_campaign_email_kpis(store):
    assert rows(store, "SELECT * FROM campaign_email_kpis ORDER BY campaign_id") == [
        {
            "campaign_id": "c1", "sent": 5, "delivered": 4, "bounced": 1, "unique_opens": 3, "machine_opens": 1,
            "unique_clicks": 2, "open_rate": 0.75, "click_through_rate": 0.5, "click_to_open_rate": approx(2 / 3),
        },
        {
            "campaign_id": "c2", "sent": 0, "delivered": 2, "bounced": 0, "unique_opens": 0, "machine_opens": 0,
            "unique_clicks": 0, "open_rate": 0.0, "click_through_rate": 0.0, "click_to_open_rate": None,
        },
    ]


def test_content_engagement(store):
    assert rows(store, "SELECT * FROM content_engagement ORDER BY content_id") == [
        {"content_id": "web-1", "downloads": 0, "webinar_signups": 1, "webinar_attendances": 1, "contacts": 1, "accounts": 1},
        {"content_id": "wp-1", "downloads": 3, "webinar_signups": 0, "webinar_attendances": 0, "contacts": 2, "accounts": 2},
    ]


def test_cta_conversions(store):
    # cta-x: k1 (meeting after the fill), k2 (no meeting), one anonymous fill; cta-y: k3 met before filling
    assert rows(store, "SELECT * FROM cta_conversions ORDER BY cta_id") == [
        {"cta_id": "cta-x", "form_fills": 4, "contacts": 2, "converted": 1, "conversion_rate": 0.5},
        {"cta_id": "cta-y", "form_fills": 1, "contacts": 1, "converted": 0, "conversion_rate": 0.0},
    ]


def test_meetings_booked(store):
    assert rows(store, "SELECT * FROM meetings_booked ORDER BY week, account_id") == [
        {"week": T0.date(), "account_id": "acc-a", "meetings": 2, "demos": 1, "calls": 1},
        {"week": T0.date() + dt.timedelta(days=7), "account_id": "acc-b", "meetings": 1, "demos": 1, "calls": 0},
    ]


def test_opportunities_latest_state(store):
    ms = lambda day: dt.datetime.fromtimestamp(at(day) / 1000, UTC).replace(tzinfo=None)  # noqa: E731
    assert [tuple(r.values()) for r in rows(store, "SELECT * FROM opportunities ORDER BY opportunity_id")] == [
        ("opp-1", "acc-a", ms(5), ms(10), "closed_won", 1200.0, "USD", 1, 1),
        ("opp-2", "acc-b", ms(6), ms(9), "closed_lost", 500.0, "USD", 1, 0),  # the amount of its last change that had one
        ("opp-3", "acc-c", ms(1), ms(12), "closed_won", 800.0, "EUR", 1, 1),
        ("opp-4", "acc-b", ms(-5), ms(-5), "qualified", 300.0, "USD", 0, 0),
    ]


def test_pipeline_by_engagement(store):
    # engaged: opp-1 and opp-2 (their accounts engaged on day 0); not: opp-3 (acc-c never
    # engaged; CRM updates are not engagement) and opp-4 (created before acc-b engaged)
    assert rows(store, "SELECT * FROM pipeline_by_engagement ORDER BY engaged DESC, currency") == [
        {"engaged": 1, "currency": "USD", "opportunities": 2, "pipeline": 1700.0, "won": 1, "lost": 1, "closed_won_revenue": 1200.0, "win_rate": 0.5},
        {"engaged": 0, "currency": "EUR", "opportunities": 1, "pipeline": 800.0, "won": 1, "lost": 0, "closed_won_revenue": 800.0, "win_rate": 1.0},
        {"engaged": 0, "currency": "USD", "opportunities": 1, "pipeline": 300.0, "won": 0, "lost": 0, "closed_won_revenue": 0.0, "win_rate": None},
    ]


def test_account_nps(store):
    assert [
        (r["account_id"], r["responses"], r["promoters"], r["passives"], r["detractors"], r["nps"])
        for r in rows(store, "SELECT * FROM account_nps ORDER BY account_id")
    ] == [("acc-a", 4, 2, 1, 1, 25.0), ("acc-b", 1, 0, 0, 1, -100.0)]


def test_customer_retention(store):
    # customers acc-a and acc-c, both won in March 2026; acc-a engaged in March and May only
    months = []
    month = dt.date(2026, 3, 1)
    while month <= NOW.date().replace(day=1):
        months.append(month)
        month = (month + dt.timedelta(days=32)).replace(day=1)
    retained = {dt.date(2026, 3, 1): 1, dt.date(2026, 5, 1): 1}
    assert rows(store, "SELECT * FROM customer_retention ORDER BY month") == [
        {"month": m, "customers": 2, "retained": retained.get(m, 0), "retention_rate": retained.get(m, 0) / 2} for m in months
    ]


def test_audience_growth_weekly(store):
    week = lambda d: d - dt.timedelta(days=d.weekday())  # noqa: E731
    expected = [
        # acc-a: k1 and k3 on day 0, k2's first human action on day 8 (its day-0 open was a machine's)
        ("acc-a", T0.date(), 2),
        ("acc-a", T0.date() + dt.timedelta(days=7), 1),
        ("acc-b", T0.date(), 2),  # k5 (open, day 0), k4 (download, day 1; its bounce is not engagement)
        ("acc-b", T0.date() + dt.timedelta(days=14), 1),  # k6
        ("acc-d", week((NOW - dt.timedelta(days=9)).date()), 1),  # k7
    ]
    got = [tuple(r.values()) for r in rows(store, "SELECT * FROM audience_growth_weekly ORDER BY account_id, week")]
    assert got == expected


def test_every_readme_query_runs(store):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Querying") : readme.index("## Configuration")]
    [block] = re.findall(r"```sql\n(.*?)```", section, flags=re.DOTALL)
    statements = [s.strip() for s in re.sub(r"--[^\n]*", "", block).split(";") if s.strip()]
    assert len(statements) == 19
    for statement in statements:
        store.query(statement)  # raises on an unknown view, column or function
    assert rows(store, "SELECT stage, reached FROM stage_conversion WHERE stage = 'decision'") == [{"stage": "decision", "reached": 2}]
