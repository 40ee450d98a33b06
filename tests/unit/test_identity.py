"""Identity resolution edge cases (processors.identity), unit and property tests; each
directory test holds both directories, the interpreted one and the native one, and a
property test holds the native one to the interpreted one over sequences of operations."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from processors.fast_routing import native
from processors.identity import (
    AccountDirectory,
    Directory,
    Method,
    NativeAccountDirectory,
    account_partition,
    is_personal_domain,
    normalize_email,
    registrable_domain,
    waiting_keys,
)
from processors.routing import reroute_pending


IMPLEMENTATIONS: list[type[AccountDirectory] | type[NativeAccountDirectory]] = [AccountDirectory]
if native is not None:
    IMPLEMENTATIONS.append(NativeAccountDirectory)


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda kind: kind.__name__)
def kind(request: pytest.FixtureRequest) -> Any:
    return request.param


def with_accounts(kind: Any, **accounts: list[str]) -> Directory:
    d: Directory = kind()
    for account_id, domains in accounts.items():
        d.learn_account(account_id, domains)
    return d


def test_registrable_domain_of_subdomains_and_multi_part_suffixes():
    assert registrable_domain("news.acme.com") == "acme.com"
    assert registrable_domain("mail.eu.acme.co.uk") == "acme.co.uk"
    assert registrable_domain("shop.acme.com.au") == "acme.com.au"
    assert registrable_domain("WWW.Acme.COM.") == "acme.com"
    for garbage in ["", "com", "co.uk", "127.0.0.1", "[::1]", "a b.com", "x@y.com", "localhost"]:
        assert registrable_domain(garbage) is None, garbage


def test_normalize_email():
    assert normalize_email("  Jane.Doe+News@Mail.ACME.com ") == "jane.doe@mail.acme.com"
    for garbage in [None, 7, "", "@", "a@", "@acme.com", "no-at-sign", "+tag@acme.com"]:
        assert normalize_email(garbage) is None, garbage


def test_explicit_account_wins_over_everything(kind):
    d = with_accounts(kind, a1=["acme.com"])
    d.learn_contact("c1", None, "a2")
    resolution = d.resolve({"account_id": "a9", "contact_id": "c1", "email": "x@acme.com"})
    assert (resolution.account_id, resolution.method) == ("a9", Method.EXPLICIT)


def test_precedence_contact_then_email_then_email_domain_then_account_domain(kind):
    d = with_accounts(kind, by_email_domain=["acme.com"], by_account_domain=["other.io"])
    d.learn_contact("c1", None, "by_contact")
    d.learn_contact(None, "known@acme.com", "by_email")
    both = {"contact_id": "c1", "email": "known@acme.com", "account_domain": "other.io"}
    assert d.resolve(both).method == Method.CONTACT_ID
    assert d.resolve({**both, "contact_id": "c2"}).account_id == "by_email"
    assert d.resolve({**both, "contact_id": "c2", "email": "new@acme.com"}).account_id == "by_email_domain"
    assert d.resolve({"email": "new@gmail.com", "account_domain": "www.other.io"}).account_id == "by_account_domain"


def test_subdomain_uppercase_and_plus_addressing_resolve_by_domain(kind):
    d = with_accounts(kind, a1=["acme.co.uk"])
    resolution = d.resolve({"email": "Jane+Webinar@EU.Mail.ACME.co.uk"})
    assert (resolution.account_id, resolution.method) == ("a1", Method.EMAIL_DOMAIN)


def test_personal_domains_never_match_nor_create_accounts(kind):
    d = with_accounts(kind, a1=["gmail.com", "acme.com"])  # a record listing gmail.com: ignored
    assert is_personal_domain("gmail.com")
    assert d.account_for_domain("gmail.com") is None
    resolution = d.resolve({"email": "bob@gmail.com"})
    assert resolution.account_id is None
    assert resolution.waiting_on == "contact:email:bob@gmail.com"  # only the contact can resolve it


def test_unknown_domain_waits_and_is_learned_later(kind):
    d = with_accounts(kind)
    event = {"email": "ann@later.io", "contact_id": "c7"}
    assert d.resolve(event).waiting_on == "later.io"
    assert d.learn_account("a-later", ["www.later.io", "later.io"]) == ["later.io"]
    assert d.learn_account("a-later", ["later.io"]) == []  # nothing new the second time
    assert d.resolve(event).account_id == "a-later"


def test_a_resolved_contact_stays_resolved(kind):
    d = with_accounts(kind, a1=["acme.com"])
    assert d.learn_contact("c1", "Jane+x@Acme.com", "a1") is True
    assert d.learn_contact("c1", "jane@acme.com", "a1") is False  # same contact, same account
    assert d.resolve({"contact_id": "c1"}).account_id == "a1"
    assert d.resolve({"email": "JANE+other@acme.com"}).method == Method.EMAIL


def test_a_domain_belongs_to_its_latest_account_and_dropped_domains_unmap(kind):
    d = with_accounts(kind, a1=["acme.com", "acme.io"])
    assert d.learn_account("a2", ["acme.com"]) == ["acme.com"]
    assert (d.account_for_domain("acme.com"), d.account_for_domain("acme.io")) == ("a2", "a1")
    d.learn_account("a1", [])
    assert d.account_for_domain("acme.io") is None
    d.forget_account("a2")
    assert d.account_for_domain("acme.com") is None


def test_contacts_are_bounded_least_recent_first(kind):
    d = kind(max_contacts=2)
    d.learn_contact("c1", None, "a1")
    d.learn_contact("c2", None, "a1")
    d.resolve({"contact_id": "c1"})
    d.learn_contact("c3", None, "a1")
    assert d.resolve({"contact_id": "c1"}).account_id is None  # learned first, dropped first
    assert d.resolve({"contact_id": "c3"}).account_id == "a1"


def test_a_contact_learned_again_is_the_most_recent(kind):
    d = kind(max_contacts=2)
    d.learn_contact("c1", None, "a1")
    d.learn_contact("c2", None, "a1")
    assert d.learn_contact("c1", None, "a1") is False  # no news, yet used now
    d.learn_contact("c3", None, "a1")
    assert d.resolve({"contact_id": "c2"}).account_id is None
    assert d.resolve({"contact_id": "c1"}).account_id == "a1"


def test_a_contacts_seniority_is_its_latest_titles(kind):
    d = kind(max_contacts=10)
    d.learn_contact("c1", None, "a1", "CEO")
    d.learn_contact("c1", None, "a1", "VP Sales")
    assert d.seniority("c1", None) == "vp"
    d.learn_contact("c1", None, "a1")  # no title: the last one known stays
    assert d.seniority("c1", None) == "vp"


def test_waiting_keys_name_the_contact():
    assert waiting_keys("c1", "Bob+x@Gmail.com") == ["contact:id:c1", "contact:email:bob@gmail.com"]
    assert waiting_keys(None, "not-an-email") == []


texts = st.one_of(st.none(), st.integers(), st.text(max_size=40), st.from_regex(r"[A-Za-z0-9.+_-]{1,10}@[A-Za-z0-9.-]{1,20}", fullmatch=True))


@given(st.fixed_dictionaries({}, optional={"account_id": texts, "contact_id": texts, "email": texts, "account_domain": texts}))
def test_resolve_never_raises(event):
    for kind in IMPLEMENTATIONS:
        resolution = with_accounts(kind, a1=["acme.com"]).resolve(event)
        assert resolution.account_id is None or isinstance(resolution.account_id, str)


@given(texts)
def test_normalize_email_is_idempotent(text):
    once = normalize_email(text)
    assert once is None or normalize_email(once) == once


@given(st.from_regex(r"([a-z0-9-]{1,12}\.){0,3}[a-z0-9-]{1,12}\.(com|co\.uk|io|com\.au|de)", fullmatch=True))
def test_registrable_domain_is_idempotent(host):
    domain = registrable_domain(host)
    assert domain is None or registrable_domain(domain) == domain


def test_rerouted_events_resolve_as_the_directory_stands_and_the_rest_wait_on(kind):
    d = with_accounts(kind, a1=["acme.com"], a2=["later.io"])
    d.forget_account("a2")  # later.io was learned, then its account record lost it again
    pending = [
        ("acme.com", {"event_id": "e1", "email": "jane@acme.com", "contact_id": "c1"}),
        ("later.io", {"event_id": "e2", "account_domain": "later.io"}),
        ("acme.com", {"event_id": "e3", "account_domain": "www.acme.com"}),
    ]
    rerouted = reroute_pending(pending, 4, d)
    assert [(key, event["event_id"], event["account_id"]) for key, event in rerouted.resolved] == [("acme.com", "e1", "a1"), ("acme.com", "e3", "a1")]
    assert rerouted.still_waiting == {"later.io"}
    assert rerouted.by_partition == {account_partition("a1", 4): [event for _, event in rerouted.resolved]}
    assert rerouted.learned_contacts == [("c1", "jane@acme.com", "a1")]


HOSTS = st.one_of(
    st.sampled_from(
        ["acme.com", "www.ACME.com.", "acme.co.uk", "eu.acme.co.uk", "gmail.com", "later.io", "bücher.de", "xn--bcher-kva.de", "127.0.0.1", "", "co.uk", "a b.com"]
    ),
    st.text(max_size=8),
)
EMAILS = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=10),
    st.builds(lambda local, host: f"{local}@{host}", st.sampled_from(["jane", "Jane+x", " Bob ", "a@b", "", "Åsa", "x\x1f", "\x1fann", "\u2003ann"]), HOSTS),
)
CONTACT_IDS = st.one_of(st.none(), st.just(""), st.sampled_from(["c1", "c2", "c3", "c4"]), st.integers())
ACCOUNTS = st.sampled_from(["a1", "a2", "a3", 'q"é'])
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("learn_account"), ACCOUNTS, st.lists(HOSTS, max_size=3)),
        st.tuples(st.just("forget_account"), ACCOUNTS),
        st.tuples(st.just("learn_contact"), CONTACT_IDS, EMAILS, ACCOUNTS, st.one_of(st.none(), st.integers(), st.sampled_from(["VP Sales", "CEO", "Head of IT", "Engineer"]))),
        st.tuples(st.just("attribute_contact"), CONTACT_IDS, EMAILS, ACCOUNTS),
        st.tuples(st.just("seniority"), CONTACT_IDS, EMAILS),
        st.tuples(st.just("account_for_domain"), HOSTS),
        st.tuples(
            st.just("resolve"),
            st.fixed_dictionaries(
                {}, optional={"account_id": st.one_of(ACCOUNTS, st.none(), st.just(""), st.integers()), "contact_id": CONTACT_IDS, "email": EMAILS, "account_domain": st.one_of(HOSTS, st.none(), st.integers())}
            ),
        ),
    ),
    max_size=40,
)


@pytest.mark.skipif(native is None, reason="installed without native code (ABM_PURE_PYTHON=1)")
@settings(max_examples=1_000, deadline=None)
@given(OPERATIONS, st.integers(1, 4))
def test_the_native_directory_answers_as_the_interpreted_one(operations: list[tuple[Any, ...]], max_contacts: int) -> None:
    """Every answer and every size, after every operation; a few contacts, so that
    forgetting the least recently used is compared too."""
    directories = (AccountDirectory(max_contacts), NativeAccountDirectory(max_contacts))
    for name, *args in operations:
        answers = [getattr(d, name)(*args) for d in directories]
        if name == "resolve":
            answers = [(r.account_id, r.method, r.waiting_on) for r in answers]
        assert answers[0] == answers[1], (name, args)
        assert [(d.domains, d.contacts) for d in directories] == [(d.domains, d.contacts) for d in directories[:1]] * 2


@pytest.mark.skipif(native is None, reason="installed without native code (ABM_PURE_PYTHON=1)")
@settings(max_examples=2_000, deadline=None)
@given(EMAILS, CONTACT_IDS, st.one_of(HOSTS, st.none()))
def test_the_native_directory_reads_contacts_and_domains_as_the_interpreted_one(email: Any, contact_id: Any, account_domain: Any) -> None:
    """Normalized emails, registrable domains, waiting keys: one event, every way it resolves."""
    directories = [with_accounts(kind, a1=["acme.com", "bücher.de"], a2=["later.io"]) for kind in (AccountDirectory, NativeAccountDirectory)]
    event = {"email": email, "contact_id": contact_id, "account_domain": account_domain}
    resolutions = [d.resolve(event) for d in directories]
    assert len({(r.account_id, r.method, r.waiting_on) for r in resolutions}) == 1
    assert len({(d.attribute_contact(contact_id, email, "a3"), d.contacts) for d in directories}) == 1
