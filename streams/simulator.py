"""A deterministic simulator of account-based-marketing activity, and a fast Kafka producer.

The generator part is pure (no I/O): an ``AccountUniverse`` of accounts, contacts,
campaigns and webinars is built from a seed, and ``iter_events`` turns it into a stream of
events in the canonical envelope (schemas/events.py). Same seed + same parameters =>
the same event sequence, byte for byte.

Activity model. Every account belongs to an engagement tier:

* ``hot``  (~8%):  very engaged, several contacts, pricing page views, webinar signups
  -> these accounts reach the *decision* stage;
* ``warm`` (~22%): two or three engaged contacts, clicks and product pages, rarely
  buying intent -> mostly *consideration*;
* ``lukewarm`` (~45%): one contact opening emails and reading the blog -> *awareness*;
* ``cold`` (~25%): hardly any activity, some none at all -> stay *target*.

Each active account emits events as a Poisson process over a simulated history (default
60 days ending "now"); the rates are scaled so that ``expected_events`` events span the
whole history, which compresses 60 days into a run of a few seconds or minutes. Events come
out in event-time order; each account's events are monotonic in time. Should more events
than expected be drawn, the clock stays at the end of the history (never in the future).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import click
import orjson

from schemas.events import EVENT_TYPES

DAY_MS: Final = 86_400_000
SITE: Final = "https://www.abmpulse.example"
DEFAULT_HISTORY_DAYS: Final = 60.0
DEFAULT_MACHINE_OPEN_SHARE: Final = 0.15

SOURCES: Final[dict[str, str]] = {
    "email_open": "sendgrid",
    "email_click": "sendgrid",
    "page_view": "web",
    "webinar_signup": "on24",
}
EVENT_KINDS: Final = ("email_open", "email_click", "page_view", "webinar_signup")

_COMPANY_WORDS: Final = (
    "northwind", "contoso", "fabrikam", "tailspin", "wingtip", "adventure", "litware",
    "proseware", "lucerne", "margie", "woodgrove", "fourth-coffee", "alpine", "coho",
    "humongous", "wide-world", "blue-yonder", "trey", "datum", "graphic",
)  # fmt: skip
_COMPANY_SUFFIXES: Final = ("Systems", "Labs", "Group", "Industries", "Logistics", "Health", "Bank", "Software")
_FIRST_NAMES: Final = (
    "ada", "alan", "grace", "linus", "margaret", "ken", "barbara", "dennis", "frances",
    "john", "radia", "tim", "hedy", "edsger", "katherine", "donald", "shafi", "leslie",
    "anita", "guido", "sophie", "niklaus", "marissa", "vint",
)  # fmt: skip
_LAST_NAMES: Final = (
    "lovelace", "turing", "hopper", "torvalds", "hamilton", "thompson", "liskov", "ritchie",
    "allen", "backus", "perlman", "berners-lee", "lamarr", "dijkstra", "johnson", "knuth",
    "goldwasser", "lamport", "borg", "van-rossum", "wilson", "wirth", "mayer", "cerf",
)  # fmt: skip
_BLOG_SLUGS: Final = (
    "what-is-abm", "intent-data-101", "buying-committees", "lead-vs-account-scoring",
    "funnel-stages-explained", "privacy-proxy-opens", "webinar-playbook", "sales-handoff",
    "b2b-attribution", "reverse-ip-lookup",
)  # fmt: skip
_PRODUCT_SLUGS: Final = ("scoring", "journeys", "integrations", "analytics", "security")
_CASE_STUDIES: Final = ("acme-robotics", "globex", "initech", "umbrella-health", "stark-logistics", "wayne-fintech")
_REFERRERS: Final = (
    "https://www.google.com/", "https://www.linkedin.com/", "https://www.bing.com/",
    "https://news.ycombinator.com/", "",
)  # fmt: skip
_MAILBOX_PROVIDERS: Final = ("gmail", "outlook", "exchange", "yahoo", "other")


# ------------------------------------------------------------------------------ tiers


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    share: float  # share of accounts in this tier
    weight: float  # relative activity of an account of this tier
    inactive_share: float  # share of the tier's accounts that never do anything
    engaged_contacts: tuple[int, int]  # how many of the account's contacts are active (min, max)
    mix: tuple[float, float, float, float]  # open, click, page view, webinar signup
    pages: tuple[float, float, float, float]  # pricing, product, case study, blog
    intent_share: float  # share of accounts that show buying intent (pricing, webinars)
    active_from_max: float  # latest start of activity, as a fraction of the history


TIERS: Final = (
    Tier("hot", 0.08, 40.0, 0.0, (3, 8), (0.30, 0.12, 0.50, 0.08), (0.25, 0.30, 0.20, 0.25), 1.0, 0.4),
    Tier("warm", 0.22, 8.0, 0.0, (2, 3), (0.45, 0.13, 0.40, 0.02), (0.10, 0.35, 0.20, 0.35), 0.3, 0.6),
    Tier("lukewarm", 0.45, 1.5, 0.0, (1, 1), (0.65, 0.07, 0.28, 0.0), (0.0, 0.30, 0.0, 0.70), 0.0, 0.7),
    Tier("cold", 0.25, 0.1, 0.4, (1, 1), (0.85, 0.03, 0.12, 0.0), (0.0, 0.0, 0.0, 1.0), 0.0, 0.9),
)
TIER_BY_NAME: Final = {tier.name: tier for tier in TIERS}


# --------------------------------------------------------------------------- universe


@dataclass(frozen=True, slots=True)
class Contact:
    contact_id: str
    email: str
    name: str


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    name: str
    domain: str
    tier: str
    weight: float  # relative activity; 0 = never active
    contacts: tuple[Contact, ...]
    engaged: int  # the first `engaged` contacts are the active ones
    intent: bool  # shows buying intent (pricing page views, webinar signups)
    active_from: float  # start of activity, as a fraction of the history


@dataclass(frozen=True, slots=True)
class Campaign:
    campaign_id: str
    name: str
    landing_url: str


@dataclass(frozen=True, slots=True)
class Webinar:
    content_id: str
    title: str


@dataclass(frozen=True, slots=True)
class AccountUniverse:
    """The simulated market: accounts with their contacts, campaigns and webinars."""

    seed: int
    accounts: tuple[Account, ...]
    campaigns: tuple[Campaign, ...]
    webinars: tuple[Webinar, ...]

    @classmethod
    def build(
        cls,
        seed: int = 42,
        accounts: int = 200,
        contacts_per_account: float = 5,
        campaigns: int = 12,
        webinars: int = 12,
    ) -> AccountUniverse:
        if accounts < 1:
            raise ValueError("accounts must be >= 1")
        if contacts_per_account < 1:
            raise ValueError("contacts_per_account must be >= 1")
        if campaigns < 1 or webinars < 1:
            raise ValueError("campaigns and webinars must be >= 1")
        rng = random.Random(f"abm-universe-{seed}")
        width = max(4, len(str(accounts)))
        tier_names = [tier.name for tier in TIERS]
        tier_shares = [tier.share for tier in TIERS]
        built: list[Account] = []
        for index in range(1, accounts + 1):
            number = f"{index:0{width}d}"
            word = rng.choice(_COMPANY_WORDS)
            domain = f"{word}-{number}.example"
            name = f"{word.replace('-', ' ').title()} {rng.choice(_COMPANY_SUFFIXES)} {number}"
            tier = TIER_BY_NAME[rng.choices(tier_names, tier_shares)[0]]
            spread = rng.uniform(0.4, 1.8) * (1.5 if tier.name == "hot" else 1.0)
            n_contacts = max(1, round(contacts_per_account * spread))
            contacts = _make_contacts(rng, number, domain, n_contacts)
            low, high = tier.engaged_contacts
            engaged = min(n_contacts, rng.randint(low, high))
            inactive = rng.random() < tier.inactive_share
            weight = 0.0 if inactive else tier.weight * rng.lognormvariate(0.0, 0.5)
            built.append(
                Account(
                    account_id=f"acct-{number}",
                    name=name,
                    domain=domain,
                    tier=tier.name,
                    weight=weight,
                    contacts=contacts,
                    engaged=engaged,
                    intent=rng.random() < tier.intent_share,
                    active_from=rng.uniform(0.0, tier.active_from_max) if rng.random() < 0.5 else 0.0,
                )
            )
        camps = tuple(
            Campaign(f"camp-{i:02d}", f"Campaign {i:02d}", f"{SITE}/lp/camp-{i:02d}") for i in range(1, campaigns + 1)
        )
        webs = tuple(Webinar(f"webinar-{i:02d}", f"ABM Pulse Live #{i:02d}") for i in range(1, webinars + 1))
        return cls(seed=seed, accounts=tuple(built), campaigns=camps, webinars=webs)

    def account(self, account_id: str) -> Account:
        for account in self.accounts:
            if account.account_id == account_id:
                return account
        raise KeyError(account_id)


def _make_contacts(rng: random.Random, number: str, domain: str, count: int) -> tuple[Contact, ...]:
    contacts: list[Contact] = []
    used: set[str] = set()
    for index in range(1, count + 1):
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        local = f"{first}.{last}"
        if local in used:
            local = f"{local}{index}"
        used.add(local)
        contacts.append(Contact(f"ct-{number}-{index:02d}", f"{local}@{domain}", f"{first.title()} {last.title()}"))
    return tuple(contacts)


# --------------------------------------------------------------------------- events


def format_timestamp(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and a Z: ``2026-11-24T06:00:00.123Z``."""
    seconds, millis = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


class _Clock:
    """Formats event times, reusing the second's prefix (events come in time order)."""

    __slots__ = ("_second", "_prefix")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ms: int) -> str:
        seconds, millis = divmod(ms, 1000)
        if seconds != self._second:
            self._second = seconds
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{self._prefix}.{millis:03d}Z"


def _cumulative(weights: tuple[float, ...] | list[float]) -> list[float]:
    total = sum(weights)
    running, out = 0.0, []
    for weight in weights:
        running += weight / total
        out.append(running)
    out[-1] = 1.0
    return out


@dataclass(slots=True)
class _Plan:
    """Per-account precomputed sampling tables."""

    account: Account
    rate_per_ms: float
    kinds: list[float]  # cumulative over EVENT_KINDS
    pages: list[float]  # cumulative over (pricing, product, case study, blog)
    email_suffix: str  # "@domain"


def _plan(account: Account) -> _Plan:
    tier = TIER_BY_NAME[account.tier]
    mix = list(tier.mix)
    pages = list(tier.pages)
    if not account.intent:
        mix[3] = 0.0  # no webinar signups
        pages[0] = 0.0  # no pricing page views
        if sum(pages) == 0:
            pages[3] = 1.0
    return _Plan(account, 0.0, _cumulative(mix), _cumulative(pages), "@" + account.domain)


def default_start(history_days: float = DEFAULT_HISTORY_DAYS, now: datetime | None = None) -> datetime:
    """Start of the simulated history: ``history_days`` before now."""
    return (now or datetime.now(UTC)) - timedelta(days=history_days)


def iter_events(
    *,
    seed: int = 42,
    accounts: int = 200,
    contacts_per_account: float = 5,
    campaigns: int = 12,
    universe: AccountUniverse | None = None,
    start: datetime | None = None,
    history_days: float = DEFAULT_HISTORY_DAYS,
    expected_events: int = 100_000,
    machine_open_share: float = DEFAULT_MACHINE_OPEN_SHARE,
    count: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yields simulated events (canonical envelope dicts) in event-time order.

    ``universe`` defaults to ``AccountUniverse.build(seed, accounts, contacts_per_account,
    campaigns)``. Event times run from ``start`` (default: now minus ``history_days``) to
    ``start + history_days``, paced so that ``expected_events`` events cover the whole
    history. Infinite unless ``count`` is given. Deterministic for fixed arguments
    (including ``start``).
    """
    if universe is None:
        universe = AccountUniverse.build(seed, accounts, contacts_per_account, campaigns)
    if start is None:
        start = default_start(history_days)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if expected_events < 1:
        raise ValueError("expected_events must be >= 1")
    start_ms = int(start.timestamp() * 1000)
    span_ms = history_days * DAY_MS
    end_ms = start_ms + int(span_ms)
    return _generate(universe, seed, start_ms, span_ms, end_ms, expected_events, machine_open_share, count)


def _generate(
    universe: AccountUniverse,
    seed: int,
    start_ms: int,
    span_ms: float,
    end_ms: int,
    expected_events: int,
    machine_open_share: float,
    count: int | None,
) -> Iterator[dict[str, Any]]:
    rng = random.Random(f"abm-events-{seed}")
    rand = rng.random
    expo = rng.expovariate
    plans = [_plan(a) for a in universe.accounts if a.weight > 0]
    if not plans:
        return
    # Rates (events per simulated ms) such that all accounts together emit
    # `expected_events` over their active part of the history.
    exposure = sum(p.account.weight * (1.0 - p.account.active_from) for p in plans)
    scale = expected_events / (exposure * span_ms)
    heap: list[tuple[float, int]] = []
    for index, p in enumerate(plans):
        p.rate_per_ms = p.account.weight * scale
        first = start_ms + p.account.active_from * span_ms + expo(p.rate_per_ms)
        heap.append((first, index))
    heapq.heapify(heap)

    campaigns = universe.campaigns
    n_campaigns = len(campaigns)
    webinars = universe.webinars
    n_webinars = len(webinars)
    clock = _Clock()
    prefix = f"sim-{seed}-"
    n = 0
    limit = math.inf if count is None else count
    while n < limit:
        at, index = heap[0]
        p = plans[index]
        heapq.heapreplace(heap, (at + expo(p.rate_per_ms), index))
        ms = min(int(at), end_ms)
        account = p.account
        progress = (ms - start_ms) / span_ms
        n += 1

        # Who: an engaged contact, mostly the first ones (champions) for broad accounts.
        engaged = account.engaged
        contact = account.contacts[int(engaged * rand() ** 1.3) if engaged > 1 else 0]
        email = contact.email
        variant = rand()
        if variant < 0.04:
            email = email.upper()
        elif variant < 0.07:
            local, _, domain = email.partition("@")
            email = f"{local}+news@{domain}"

        kind = EVENT_KINDS[bisect.bisect_right(p.kinds, rand())]
        event: dict[str, Any] = {
            "event_id": f"{prefix}{n}",
            "type": kind,
            "occurred_at": clock(ms),
            "source": SOURCES[kind],
            "account_id": account.account_id,
            "account_domain": account.domain,
            "contact_id": contact.contact_id,
            "email": email,
        }
        if kind == "email_open" or kind == "email_click":
            # Campaigns run one after another; opens and clicks mostly concern the current one.
            current = min(n_campaigns - 1, max(0, int(progress * n_campaigns)))
            if rand() < 0.3:
                current = int(rand() * (current + 1))
            campaign = campaigns[current]
            event["campaign_id"] = campaign.campaign_id
            if kind == "email_open":
                event["properties"] = {
                    "machine_open": rand() < machine_open_share,
                    "mailbox_provider": _MAILBOX_PROVIDERS[int(rand() * len(_MAILBOX_PROVIDERS))],
                }
            else:
                event["url"] = f"{campaign.landing_url}?utm_source=email&utm_campaign={campaign.campaign_id}"
                event["properties"] = {"link": "cta" if rand() < 0.7 else "header"}
        elif kind == "page_view":
            page = bisect.bisect_right(p.pages, rand())
            if page == 0:
                path = "/pricing"
            elif page == 1:
                path = f"/product/{_PRODUCT_SLUGS[int(rand() * len(_PRODUCT_SLUGS))]}"
            elif page == 2:
                path = f"/case-studies/{_CASE_STUDIES[int(rand() * len(_CASE_STUDIES))]}"
            else:
                path = f"/blog/{_BLOG_SLUGS[int(rand() * len(_BLOG_SLUGS))]}"
            r = rand()
            if r < 0.25:
                referrer = campaigns[int(rand() * n_campaigns)].landing_url
            elif r < 0.55:
                referrer = f"{SITE}/blog/{_BLOG_SLUGS[int(rand() * len(_BLOG_SLUGS))]}"
            else:
                referrer = _REFERRERS[int(rand() * len(_REFERRERS))]
            event["url"] = SITE + path
            event["properties"] = {"path": path, "referrer": referrer}
        else:  # webinar_signup
            webinar = webinars[min(n_webinars - 1, int(progress * n_webinars + rand() * 2))]
            event["content_id"] = webinar.content_id
            event["properties"] = {
                "title": webinar.title,
                "registration_source": "email" if rand() < 0.6 else "web",
            }
        yield event


def encode(event: dict[str, Any]) -> bytes:
    """The event as compact JSON bytes."""
    return orjson.dumps(event)


# --------------------------------------------------------------------------- producer

CHUNK_EVENTS: Final = 8192  # events generated and submitted before awaiting delivery
MAX_BATCH_BYTES: Final = 512 * 1024  # per partition batch; below the broker's 1 MiB limit
PROGRESS_INTERVAL_S: Final = 1.0
FULL_SPEED_EVENTS_PER_S: Final = 60_000  # assumed rate for pacing simulated time when unpaced


def expected_total(rate: float | None, duration_s: float | None, count: int | None) -> int:
    """How many events a run will produce, at most, to spread the simulated history over."""
    candidates: list[float] = []
    if count is not None:
        candidates.append(count)
    if duration_s is not None:
        candidates.append(duration_s * (rate if rate else FULL_SPEED_EVENTS_PER_S))
    return max(1, int(min(candidates))) if candidates else 1_000_000


async def _start_producer(bootstrap: str) -> Any:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError, UnsupportedVersionError

    common: dict[str, Any] = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=4 * 1024 * 1024,
        request_timeout_ms=30_000,
        client_id="abm-simulator",
    )
    producer = AIOKafkaProducer(enable_idempotence=True, **common)
    try:
        await producer.start()
        return producer
    except (UnsupportedVersionError, KafkaError) as exc:
        await producer.stop()
        if isinstance(exc, UnsupportedVersionError) or "idempot" in str(exc).lower():
            producer = AIOKafkaProducer(enable_idempotence=False, **common)
            await producer.start()
            return producer
        raise


async def produce_events(
    settings: Any,
    *,
    accounts: int,
    contacts_per_account: float,
    rate: float | None,
    duration_s: float | None,
    count: int | None,
    seed: int,
    on_progress: Callable[[int], None] | None = None,
    campaigns: int = 12,
    history_days: float = DEFAULT_HISTORY_DAYS,
    start: datetime | None = None,
    machine_open_share: float = DEFAULT_MACHINE_OPEN_SHARE,
    stamp_sent: bool = False,
) -> dict[str, int]:
    """Produces simulated events to Kafka; returns how many of each type were delivered.

    Events are keyed by account id and go to ``settings.topic(<type's topic>)``. Topics are
    created first when missing. ``rate`` (events/s) paces the run; None = as fast as
    possible. Stops after ``count`` events or ``duration_s`` seconds, whichever is first.
    Records are appended straight into per-partition batches (murmur2 on the key, like the
    Java client's default partitioner) and delivery is awaited once per chunk.
    ``stamp_sent`` gives every event the time its chunk is handed to the producer as
    ``occurred_at`` (epoch ms), so the latency to ClickHouse can be read off the rows.
    """
    from aiokafka.partitioner import murmur2

    from streams.kafka_admin import ensure_topics

    if count is None and duration_s is None:
        raise ValueError("set count or duration_s (or both)")
    if rate is not None and rate <= 0:
        rate = None
    topics = {kind: settings.topic(EVENT_TYPES[kind].topic) for kind in EVENT_KINDS}
    await ensure_topics(
        settings.kafka_bootstrap,
        list(topics.values()),
        settings.topic_partitions,
        getattr(settings, "topic_replication", 1),
    )
    events = iter_events(
        seed=seed,
        accounts=accounts,
        contacts_per_account=contacts_per_account,
        campaigns=campaigns,
        start=start,
        history_days=history_days,
        expected_events=expected_total(rate, duration_s, count),
        machine_open_share=machine_open_share,
        count=count,
    )
    producer = await _start_producer(settings.kafka_bootstrap)
    counts = dict.fromkeys(EVENT_KINDS, 0)
    try:
        partitions: dict[str, int] = {}
        for kind, topic in topics.items():
            partitions[kind] = len(await producer.partitions_for(topic))
        key_cache: dict[str, tuple[bytes, int]] = {}  # account id -> (key, murmur2 hash)

        chunk = CHUNK_EVENTS if rate is None else max(1, min(CHUNK_EVENTS, int(rate / 20)))
        produced = 0
        began = time.monotonic()
        deadline = math.inf if duration_s is None else began + duration_s
        next_progress = began + PROGRESS_INTERVAL_S
        exhausted = False
        while not exhausted:
            now = time.monotonic()
            if now >= deadline:
                break
            if rate is not None:
                due = began + produced / rate
                if due > now:
                    await asyncio.sleep(min(due, deadline) - now)
                    if time.monotonic() >= deadline:
                        break
            builders: dict[tuple[str, int], Any] = {}
            futures: list[asyncio.Future[Any]] = []
            pending_counts = dict.fromkeys(EVENT_KINDS, 0)
            taken = 0
            sent_ms = int(time.time() * 1000)
            for event in events:
                if stamp_sent:
                    event["occurred_at"] = sent_ms
                kind = event["type"]
                account_id = event["account_id"]
                cached = key_cache.get(account_id)
                if cached is None:
                    key = account_id.encode()
                    cached = key_cache[account_id] = (key, murmur2(key) & 0x7FFFFFFF)
                key, hashed = cached
                tp = (kind, hashed % partitions[kind])
                value = orjson.dumps(event)
                builder = builders.get(tp)
                if builder is None:
                    builder = builders[tp] = producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(builder, topics[kind], partition=tp[1]))
                    builder = builders[tp] = producer.create_batch()
                    builder.append(key=key, value=value, timestamp=None)
                pending_counts[kind] += 1
                taken += 1
                if taken >= chunk:
                    break
            else:
                exhausted = True
            for (kind, partition), builder in builders.items():
                if builder.record_count():
                    futures.append(await producer.send_batch(builder, topics[kind], partition=partition))
            if futures:
                await asyncio.gather(*futures)
            for kind, n in pending_counts.items():
                counts[kind] += n
            produced += taken
            if on_progress is not None and time.monotonic() >= next_progress:
                on_progress(produced)
                next_progress = time.monotonic() + PROGRESS_INTERVAL_S
        if on_progress is not None:
            on_progress(produced)
    finally:
        await producer.stop()
    return counts


# --------------------------------------------------------------------------- command


@click.command("simulate")
@click.option("--accounts", default=200, show_default=True, type=click.IntRange(min=1), help="Number of target accounts.")
@click.option(
    "--contacts-per-account",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Average contacts per account (each account varies around it).",
)
@click.option(
    "--rate",
    default=2000.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Events per second; 0 = as fast as possible.",
)
@click.option(
    "--duration",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Stop after this many seconds; 0 = no time limit (then --count is required).",
)
@click.option("--count", default=None, type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--seed", default=42, show_default=True, type=int, help="Same seed and options = same events.")
@click.option(
    "--history-days",
    default=DEFAULT_HISTORY_DAYS,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Days of simulated history (ending now) compressed into the run.",
)
def simulate_command(
    accounts: int,
    contacts_per_account: float,
    rate: float,
    duration: float,
    count: int | None,
    seed: int,
    history_days: float,
) -> None:
    """Produce simulated marketing activity to Kafka.

    Builds a deterministic market from --seed: accounts (acct-0001, ...) with contacts
    at their corporate domains, campaigns and webinars. A few accounts are very engaged,
    many lukewarm, some cold, so they end up in different funnel stages. Emits email
    opens (about 15% privacy-proxy machine opens), email clicks, page views and webinar
    signups in the canonical event envelope, keyed by account id, to the topics
    <ABM_TOPIC_PREFIX>.email.opens, .email.clicks, .web.page-views and .webinar.signups
    on ABM_KAFKA_BOOTSTRAP (topics are created if missing). Event times span the last
    --history-days days, compressed into the run.

    Stops at --count events or after --duration seconds, whichever comes first, and
    prints the number of events per type.
    """
    from streams.settings import Settings

    settings = Settings()
    duration_s = duration if duration > 0 else None
    if duration_s is None and count is None:
        raise click.UsageError("--duration 0 needs --count")
    began = time.monotonic()

    def progress(produced: int) -> None:
        elapsed = max(time.monotonic() - began, 1e-9)
        click.echo(f"\rproduced {produced:,} events ({produced / elapsed:,.0f}/s)", nl=False, err=True)

    counts = asyncio.run(
        produce_events(
            settings,
            accounts=accounts,
            contacts_per_account=contacts_per_account,
            rate=rate or None,
            duration_s=duration_s,
            count=count,
            seed=seed,
            on_progress=progress if sys.stderr.isatty() else None,
            history_days=history_days,
        )
    )
    elapsed = time.monotonic() - began
    total = sum(counts.values())
    click.echo(f"\nproduced {total:,} events in {elapsed:.1f}s ({total / max(elapsed, 1e-9):,.0f}/s) to {settings.kafka_bootstrap}")
    for kind, n in counts.items():
        click.echo(f"  {kind:<16} {n:>10,}  -> {settings.topic(EVENT_TYPES[kind].topic)}")
