"""Which account an event belongs to, and where that account's state lives.

Resolution, best evidence first: an explicit ``account_id``; a contact id or an email
the directory has seen resolved before (a contact, once resolved, stays resolved); the
registrable domain of the email; the registrable domain of ``account_domain`` (a page
view's reverse-IP company lookup). Personal email domains never match nor create an
account. An event none of these resolve waits on its registrable domain, or failing
one, on its contact (``contact:id:...`` or ``contact:email:...``): a later account or
contact record, or another event of the contact, resolves it.

Where native code is built, the directory is ``NativeAccountDirectory``: the same maps
and rules in ``abm_native.Directory``, which also routes the events the fast path accepts
without a Python object per event (processors.routing). ``AccountDirectory`` is the
definition it is held to (tests/unit/test_identity.py), and the directory without it.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections import OrderedDict
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final

from publicsuffixlist import PublicSuffixList

from processors.fast_routing import native
from processors.scoring import seniority_of

# Free-mail and ISP domains: a person's address there says nothing about their employer.
PERSONAL_DOMAINS: Final = frozenset(
    {
        "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "hotmail.co.uk", "hotmail.fr",
        "live.com", "live.co.uk", "msn.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de",
        "yahoo.co.jp", "yahoo.com.br", "ymail.com", "rocketmail.com", "icloud.com", "me.com", "mac.com",
        "aol.com", "proton.me", "protonmail.com", "pm.me", "gmx.de", "gmx.net", "gmx.com", "web.de",
        "t-online.de", "mail.com", "email.com", "yandex.ru", "yandex.com", "mail.ru", "qq.com",
        "163.com", "126.com", "sina.com", "zoho.com", "fastmail.com", "hey.com", "tutanota.com",
        "orange.fr", "free.fr", "laposte.net", "libero.it", "comcast.net", "verizon.net",
        "att.net", "naver.com", "daum.net", "rediffmail.com",
    }
)

_PSL: Final = PublicSuffixList()


class Method(StrEnum):
    EXPLICIT = "explicit"
    CONTACT_ID = "contact_id"
    EMAIL = "email"
    EMAIL_DOMAIN = "email_domain"
    ACCOUNT_DOMAIN = "account_domain"
    UNRESOLVED = "unresolved"


class Resolution:
    """Made once per event: a plain class, which mypyc constructs natively (a dataclass's
    generated ``__init__`` stays interpreted: 3 % of the event loop's time as a frozen one)."""

    def __init__(self, account_id: str | None, method: Method, waiting_on: str | None = None) -> None:
        self.account_id = account_id
        self.method = method
        self.waiting_on = waiting_on  # the registrable domain that would resolve it later


@lru_cache(maxsize=65_536)
def registrable_domain(host: str) -> str | None:
    """eTLD+1 of a host name (``mail.eu.acme.co.uk`` -> ``acme.co.uk``); None for garbage,
    IP addresses and bare public suffixes."""
    if not isinstance(host, str):
        return None
    name = host.strip().rstrip(".").lower()
    if not name or "@" in name or "/" in name or " " in name:
        return None
    try:
        ipaddress.ip_address(name.strip("[]"))
        return None
    except ValueError:
        pass
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return _PSL.privatesuffix(name)


def is_personal_domain(domain: str) -> bool:
    return domain in PERSONAL_DOMAINS


def normalize_email(email: object) -> str | None:
    """``Jane.Doe+news@Mail.Acme.COM`` -> ``jane.doe@mail.acme.com``; None when not an email."""
    if not isinstance(email, str):
        return None
    local, at, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    domain = domain.rstrip(".")
    if not at or not local or not domain or "@" in local:
        return None
    return f"{local}@{domain}"


def email_domain(email: object) -> str | None:
    """The registrable domain of an email address."""
    normalized = normalize_email(email)
    return registrable_domain(normalized.rpartition("@")[2]) if normalized else None


class AccountDirectory:
    """Accounts by registrable domain, and contacts (ids and emails) by account.

    A domain belongs to one account: a later account record listing it takes it over.
    Contacts are bounded: past ``max_contacts`` ids and emails, the least recently used
    are forgotten (their next event resolves by domain again, or waits).
    """

    def __init__(self, max_contacts: int = 2_000_000) -> None:
        self._max_contacts = max_contacts
        self._account_by_domain: dict[str, str] = {}
        self._domains_of: dict[str, set[str]] = {}
        self._account_by_contact: OrderedDict[str, str] = OrderedDict()  # "id:..." / "email:..." keys
        self._seniority_by_contact: dict[str, str] = {}  # same keys, for contacts with a known title

    def learn_account(self, account_id: str, domains: list[str] | tuple[str, ...]) -> list[str]:
        """Maps the account's registrable domains (personal ones ignored); returns those
        that resolve to it now and did not before."""
        wanted = {d for d in (registrable_domain(x) for x in domains) if d and not is_personal_domain(d)}
        for dropped in self._domains_of.get(account_id, set()) - wanted:
            if self._account_by_domain.get(dropped) == account_id:
                del self._account_by_domain[dropped]
        newly = sorted(d for d in wanted if self._account_by_domain.get(d) != account_id)
        for domain in newly:
            previous = self._account_by_domain.get(domain)
            if previous is not None:
                self._domains_of[previous].discard(domain)
            self._account_by_domain[domain] = account_id
        self._domains_of[account_id] = wanted
        return newly

    def forget_account(self, account_id: str) -> None:
        for domain in self._domains_of.pop(account_id, set()):
            if self._account_by_domain.get(domain) == account_id:
                del self._account_by_domain[domain]

    @property
    def domains(self) -> int:
        return len(self._account_by_domain)

    @property
    def contacts(self) -> int:
        return len(self._account_by_contact)

    def account_for_domain(self, domain: str) -> str | None:
        return self._account_by_domain.get(domain)

    def learn_contact(self, contact_id: object, email: object, account_id: str, title: object = None) -> bool:
        """Remembers the contact's account (and the seniority of its title, when given);
        True when the account is news."""
        seniority = seniority_of(title) if isinstance(title, str) else None
        return self._remember(_contact_keys(contact_id, email), account_id, seniority)

    def seniority(self, contact_id: object, email: object) -> str | None:
        """The seniority of the contact's title, when a contact record gave one."""
        return self._seniority_of(_contact_keys(contact_id, email))

    def attribute_contact(self, contact_id: object, email: object, account_id: str) -> tuple[bool, str | None]:
        """``learn_contact`` without a title, and the contact's known seniority: once per
        event, so the contact's keys are worked out once for both."""
        keys = _contact_keys(contact_id, email)
        return self._remember(keys, account_id, None), self._seniority_of(keys)

    def _remember(self, keys: list[tuple[str, Method]], account_id: str, seniority: str | None) -> bool:
        learned = False
        for key, _ in keys:
            if self._account_by_contact.get(key) != account_id:
                learned = True
            self._account_by_contact[key] = account_id
            self._account_by_contact.move_to_end(key)
            if seniority is not None:
                self._seniority_by_contact[key] = seniority
        while len(self._account_by_contact) > self._max_contacts:
            forgotten, _ = self._account_by_contact.popitem(last=False)
            self._seniority_by_contact.pop(forgotten, None)
        return learned

    def _seniority_of(self, keys: list[tuple[str, Method]]) -> str | None:
        for key, _ in keys:
            seniority = self._seniority_by_contact.get(key)
            if seniority is not None:
                return seniority
        return None

    def resolve(self, event: dict[str, Any]) -> Resolution:
        explicit, contact_id, email, account_domain = event.get("account_id"), event.get("contact_id"), event.get("email"), event.get("account_domain")
        if isinstance(explicit, str) and explicit:
            return Resolution(explicit, Method.EXPLICIT)
        for key, method in _contact_keys(contact_id, email):
            account_id = self._account_by_contact.get(key)
            if account_id is not None:
                return Resolution(account_id, method)
        waiting_on = None
        domain_field = registrable_domain(account_domain) if isinstance(account_domain, str) else None
        for domain, method in ((email_domain(email), Method.EMAIL_DOMAIN), (domain_field, Method.ACCOUNT_DOMAIN)):
            if domain is None or is_personal_domain(domain):
                continue
            account_id = self._account_by_domain.get(domain)
            if account_id is not None:
                return Resolution(account_id, method)
            waiting_on = waiting_on or domain
        if waiting_on is None:  # no business domain: the contact itself may become known
            waiting_on = next(iter(waiting_keys(contact_id, email)), None)
        return Resolution(None, Method.UNRESOLVED, waiting_on)


class NativeAccountDirectory:
    """``AccountDirectory`` in native code (``native``); the public-suffix list, IDNA
    and emails that are not ASCII are Python's, called back."""

    def __init__(self, max_contacts: int = 2_000_000) -> None:
        self.native: Any = native.Directory(max_contacts, set(PERSONAL_DOMAINS), registrable_domain, normalize_email)

    def learn_account(self, account_id: str, domains: list[str] | tuple[str, ...]) -> list[str]:
        newly: list[str] = self.native.learn_account(account_id, list(domains))
        return newly

    def forget_account(self, account_id: str) -> None:
        self.native.forget_account(account_id)

    @property
    def domains(self) -> int:
        count: int = self.native.domains
        return count

    @property
    def contacts(self) -> int:
        count: int = self.native.contacts
        return count

    def account_for_domain(self, domain: str) -> str | None:
        account_id: str | None = self.native.account_for_domain(domain)
        return account_id

    def learn_contact(self, contact_id: object, email: object, account_id: str, title: object = None) -> bool:
        news: bool = self.native.remember_contact(contact_id, email, account_id, seniority_of(title) if isinstance(title, str) else None)
        return news

    def seniority(self, contact_id: object, email: object) -> str | None:
        seniority: str | None = self.native.seniority(contact_id, email)
        return seniority

    def attribute_contact(self, contact_id: object, email: object, account_id: str) -> tuple[bool, str | None]:
        attributed: tuple[bool, str | None] = self.native.attribute_contact(contact_id, email, account_id)
        return attributed

    def resolve(self, event: dict[str, Any]) -> Resolution:
        account_id, method, waiting_on = self.native.resolve_fields(event.get("account_id"), event.get("contact_id"), event.get("email"), event.get("account_domain"))
        return Resolution(account_id, Method(method), waiting_on)


Directory = AccountDirectory | NativeAccountDirectory


def account_directory(max_contacts: int) -> Directory:
    """The native directory where it is built, else the interpreted one."""
    return AccountDirectory(max_contacts) if native is None else NativeAccountDirectory(max_contacts)


def _contact_keys(contact_id: object, email: object) -> list[tuple[str, Method]]:
    """Directory keys of a contact, id first, each with the method it resolves by."""
    keys = []
    if isinstance(contact_id, str) and contact_id:
        keys.append((f"id:{contact_id}", Method.CONTACT_ID))
    normalized = normalize_email(email)
    if normalized:
        keys.append((f"email:{normalized}", Method.EMAIL))
    return keys


def waiting_keys(contact_id: object, email: object) -> list[str]:
    """What an event of this contact can wait on besides a domain (which never has a ':')."""
    return [f"contact:{key}" for key, _ in _contact_keys(contact_id, email)]


def account_partition(account_id: str, partitions: int) -> int:
    """The partition that owns an account's state: stable across processes and runs."""
    return zlib.crc32(account_id.encode()) % partitions
