"""Identity resolution edge cases (processors.identity), unit and property tests."""

from __future__ import annotations

from hypothesis import given, strategies as st

from processors.identity import (
    AccountDirectory,
    Method,
    account_partition,
    is_personal_domain,
    normalize_email,
    registrable_domain,
    waiting_keys,
)
from processors.routing import reroute_pending


def directory(**accounts: list[str]) -> AccountDirectory:
    d = AccountDirectory()
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


def test_explicit_account_wins_over_everything():
    d = directory(a1=["acme.com"])
    d.learn_contact("c1", None, "a2")
    resolution = d.resolve({"account_id": "a9", "contact_id": "c1", "email": "x@acme.com"})
    assert (resolution.account_id, resolution.method) == ("a9", Method.EXPLICIT)


def test_precedence_contact_then_email_then_email_domain_then_account_domain():
    d = directory(by_email_domain=["acme.com"], by_account_domain=["other.io"])
    d.learn_contact("c1", None, "by_contact")
    d.learn_contact(None, "known@acme.com", "by_email")
    both = {"contact_id": "c1", "email": "known@acme.com", "account_domain": "other.io"}
    assert d.resolve(both).method == Method.CONTACT_ID
    assert d.resolve({**both, "contact_id": "c2"}).account_id == "by_email"
    assert d.resolve({**both, "contact_id": "c2", "email": "new@acme.com"}).account_id == "by_email_domain"
    assert d.resolve({"email": "new@gmail.com", "account_domain": "www.other.io"}).account_id == "by_account_domain"


def test_subdomain_uppercase_and_plus_addressing_resolve_by_domain():
    d = directory(a1=["acme.co.uk"])
    resolution = d.resolve({"email": "Jane+Webinar@EU.Mail.ACME.co.uk"})
    assert (resolution.account_id, resolution.method) == ("a1", Method.EMAIL_DOMAIN)


def test_personal_domains_never_match_nor_create_accounts():
    d = directory(a1=["gmail.com", "acme.com"])  # a record listing gmail.com: ignored
    assert is_personal_domain("gmail.com")
    assert d.account_for_domain("gmail.com") is None
    resolution = d.resolve({"email": "bob@gmail.com"})
    assert resolution.account_id is None
    assert resolution.waiting_on == "contact:email:bob@gmail.com"  # only the contact can resolve it


def test_unknown_domain_waits_and_is_learned_later():
    d = directory()
    event = {"email": "ann@later.io", "contact_id": "c7"}
    assert d.resolve(event).waiting_on == "later.io"
    assert d.learn_account("a-later", ["www.later.io", "later.io"]) == ["later.io"]
    assert d.learn_account("a-later", ["later.io"]) == []  # nothing new the second time
    assert d.resolve(event).account_id == "a-later"


def test_a_resolved_contact_stays_resolved():
    d = directory(a1=["acme.com"])
    assert d.learn_contact("c1", "Jane+x@Acme.com", "a1") is True
    assert d.learn_contact("c1", "jane@acme.com", "a1") is False  # same contact, same account
    assert d.resolve({"contact_id": "c1"}).account_id == "a1"
    assert d.resolve({"email": "JANE+other@acme.com"}).method == Method.EMAIL


def test_a_domain_belongs_to_its_latest_account_and_dropped_domains_unmap():
    d = directory(a1=["acme.com", "acme.io"])
    assert d.learn_account("a2", ["acme.com"]) == ["acme.com"]
    assert (d.account_for_domain("acme.com"), d.account_for_domain("acme.io")) == ("a2", "a1")
    d.learn_account("a1", [])
    assert d.account_for_domain("acme.io") is None
    d.forget_account("a2")
    assert d.account_for_domain("acme.com") is None


def test_contacts_are_bounded_least_recent_first():
    d = AccountDirectory(max_contacts=2)
    d.learn_contact("c1", None, "a1")
    d.learn_contact("c2", None, "a1")
    d.resolve({"contact_id": "c1"})
    d.learn_contact("c3", None, "a1")
    assert d.resolve({"contact_id": "c1"}).account_id is None  # learned first, dropped first
    assert d.resolve({"contact_id": "c3"}).account_id == "a1"


def test_waiting_keys_name_the_contact():
    assert waiting_keys("c1", "Bob+x@Gmail.com") == ["contact:id:c1", "contact:email:bob@gmail.com"]
    assert waiting_keys(None, "not-an-email") == []


texts = st.one_of(st.none(), st.integers(), st.text(max_size=40), st.from_regex(r"[A-Za-z0-9.+_-]{1,10}@[A-Za-z0-9.-]{1,20}", fullmatch=True))


@given(st.fixed_dictionaries({}, optional={"account_id": texts, "contact_id": texts, "email": texts, "account_domain": texts}))
def test_resolve_never_raises(event):
    d = directory(a1=["acme.com"])
    resolution = d.resolve(event)
    assert resolution.account_id is None or isinstance(resolution.account_id, str)


@given(texts)
def test_normalize_email_is_idempotent(text):
    once = normalize_email(text)
    assert once is None or normalize_email(once) == once


@given(st.from_regex(r"([a-z0-9-]{1,12}\.){0,3}[a-z0-9-]{1,12}\.(com|co\.uk|io|com\.au|de)", fullmatch=True))
def test_registrable_domain_is_idempotent(host):
    domain = registrable_domain(host)
    assert domain is None or registrable_domain(domain) == domain


def test_rerouted_events_resolve_as_the_directory_stands_and_the_rest_wait_on():
    d = directory(a1=["acme.com"], a2=["later.io"])
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
