//! The account directory in native code: processors.identity.AccountDirectory's maps and
//! rules, so that routing a fetched batch (`route`) resolves, attributes and forwards the
//! events the fast path accepted without a Python object per event. The registrable
//! domain (the public-suffix list, IDNA) and emails that are not ASCII stay Python's:
//! called back, domains cached here.

use std::collections::{HashMap, HashSet};

use lru::LruCache;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::text::joined;
use crate::{splice, FastPath, Scanned};

/// Hosts whose registrable domain is cached; past it the cache starts afresh.
const CACHED_DOMAINS: usize = 262_144;

/// How an event was resolved (processors.identity.Method).
const EXPLICIT: &str = "explicit";
const CONTACT_ID: &str = "contact_id";
const EMAIL: &str = "email";
const EMAIL_DOMAIN: &str = "email_domain";
const ACCOUNT_DOMAIN: &str = "account_domain";
const UNRESOLVED: &str = "unresolved";

/// (account id or None, method, what it waits on)
type Resolution = (Option<String>, &'static str, Option<String>);

#[pyclass(module = "abm_native")]
pub struct Directory {
    max_contacts: usize,
    account_by_domain: HashMap<String, String>,
    domains_of: HashMap<String, HashSet<String>>,
    // "id:..." / "email:..." keys, least recently attributed first
    account_by_contact: LruCache<String, String>,
    seniority_by_contact: HashMap<String, String>,
    personal_domains: HashSet<String>,
    registrable_domain: Py<PyAny>,
    normalize_email: Py<PyAny>,
    domain_cache: HashMap<String, Option<String>>,
}

/// Python's `str.strip()` of an ASCII string.
fn is_python_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\x1c'..='\x1f' | ' ')
}

/// processors.identity.normalize_email of an ASCII string.
fn normalize_ascii_email(email: &str) -> Option<String> {
    let lowered = email.trim_matches(is_python_space).to_ascii_lowercase();
    let at = lowered.rfind('@')?;
    let (local, domain) = (&lowered[..at], lowered[at + 1..].trim_end_matches('.'));
    let local = local.split('+').next().unwrap_or("");
    if local.is_empty() || domain.is_empty() || local.contains('@') {
        return None;
    }
    Some(joined(&[local, "@", domain]))
}


/// zlib.crc32 of the account id modulo the partitions (processors.identity.account_partition).
pub(crate) fn account_partition(account_id: &str, partitions: u32) -> u32 {
    crc32fast::hash(account_id.as_bytes()) % partitions
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|s| !s.is_empty())
}

impl Directory {
    fn registrable(&mut self, py: Python<'_>, host: &str) -> PyResult<Option<String>> {
        if let Some(known) = self.domain_cache.get(host) {
            return Ok(known.clone());
        }
        let domain: Option<String> = self.registrable_domain.call1(py, (host,))?.extract(py)?;
        if self.domain_cache.len() >= CACHED_DOMAINS {
            self.domain_cache.clear();
        }
        self.domain_cache.insert(host.to_owned(), domain.clone());
        Ok(domain)
    }

    fn normalized_email(&self, py: Python<'_>, email: Option<&str>) -> PyResult<Option<String>> {
        match email {
            None => Ok(None),
            Some(email) if email.is_ascii() => Ok(normalize_ascii_email(email)),
            Some(email) => self.normalize_email.call1(py, (email,))?.extract(py),
        }
    }

    /// Directory keys of a contact, id first, each with the method it resolves by.
    fn contact_keys(&self, py: Python<'_>, contact_id: Option<&str>, email: Option<&str>) -> PyResult<Vec<(String, &'static str)>> {
        let mut keys = Vec::with_capacity(2);
        if let Some(id) = non_empty(contact_id) {
            keys.push((joined(&["id:", id]), CONTACT_ID));
        }
        if let Some(normalized) = self.normalized_email(py, email)? {
            keys.push((joined(&["email:", &normalized]), EMAIL));
        }
        Ok(keys)
    }

    fn business_domain(&mut self, py: Python<'_>, host: Option<&str>) -> PyResult<Option<String>> {
        Ok(match host {
            Some(host) => self.registrable(py, host)?.filter(|d| !d.is_empty() && !self.personal_domains.contains(d)),
            None => None,
        })
    }

    /// An event's resolution from its explicit account, its contact's keys
    /// (``contact_keys``) and its account domain.
    fn resolve(&mut self, py: Python<'_>, explicit: Option<&str>, keys: &[(String, &'static str)], account_domain: Option<&str>) -> PyResult<Resolution> {
        if let Some(account_id) = non_empty(explicit) {
            return Ok((Some(account_id.to_owned()), EXPLICIT, None));
        }
        for (key, method) in keys {
            if let Some(account_id) = self.account_by_contact.peek(key) {
                return Ok((Some(account_id.clone()), method, None));
            }
        }
        let email_host = keys.iter().find(|(_, m)| *m == EMAIL).map(|(key, _)| key[key.rfind('@').unwrap_or(0) + 1..].to_owned());
        let mut waiting_on = None;
        for (host, method) in [(email_host.as_deref(), EMAIL_DOMAIN), (account_domain, ACCOUNT_DOMAIN)] {
            let Some(domain) = self.business_domain(py, host)? else { continue };
            if let Some(account_id) = self.account_by_domain.get(&domain) {
                return Ok((Some(account_id.clone()), method, None));
            }
            waiting_on.get_or_insert(domain);
        }
        // no business domain: the contact itself may become known
        let waiting_on = waiting_on.or_else(|| keys.first().map(|(key, _)| format!("contact:{key}")));
        Ok((None, UNRESOLVED, waiting_on))
    }

    /// Attributes the contact's keys to the account (most recently used now, the least
    /// recently used forgotten past the bound); true when that is news. Most events come
    /// from contacts already known so: they allocate nothing here.
    fn remember(&mut self, keys: &[(String, &'static str)], account_id: &str, seniority: Option<&str>) -> bool {
        let mut learned = false;
        for (key, _) in keys {
            if self.account_by_contact.get(key).map(String::as_str) != Some(account_id) {
                learned = true;
                self.account_by_contact.put(key.clone(), account_id.to_owned());
            }
            if let Some(seniority) = seniority {
                if self.seniority_by_contact.get(key).map(String::as_str) != Some(seniority) {
                    self.seniority_by_contact.insert(key.clone(), seniority.to_owned());
                }
            }
        }
        while self.account_by_contact.len() > self.max_contacts {
            if let Some((forgotten, _)) = self.account_by_contact.pop_lru() {
                self.seniority_by_contact.remove(&forgotten);
            }
        }
        learned
    }

    fn seniority_of(&self, keys: &[(String, &'static str)]) -> Option<String> {
        keys.iter().find_map(|(key, _)| self.seniority_by_contact.get(key).cloned())
    }
}

/// An argument Python passes as any object: the string, if it is one.
fn as_str<'a>(value: &'a Bound<'_, PyAny>) -> PyResult<Option<std::borrow::Cow<'a, str>>> {
    match value.downcast::<PyString>() {
        Ok(text) => Ok(Some(text.to_cow()?)),
        Err(_) => Ok(None),
    }
}

/// The per-type counts of a run, in the order the types came (dicts keep it).
fn add_counts(valid_by_type: &Bound<'_, PyDict>, counts: &mut Vec<(String, usize)>) -> PyResult<()> {
    for (kind, n) in counts.drain(..) {
        let before: usize = match valid_by_type.get_item(&kind)? {
            Some(v) => v.extract()?,
            None => 0,
        };
        valid_by_type.set_item(kind, before + n)?;
    }
    Ok(())
}

#[pymethods]
impl Directory {
    #[new]
    fn new(max_contacts: usize, personal_domains: HashSet<String>, registrable_domain: Py<PyAny>, normalize_email: Py<PyAny>) -> Self {
        Directory {
            max_contacts,
            account_by_domain: HashMap::new(),
            domains_of: HashMap::new(),
            account_by_contact: LruCache::unbounded(),
            seniority_by_contact: HashMap::new(),
            personal_domains,
            registrable_domain,
            normalize_email,
            domain_cache: HashMap::new(),
        }
    }

    /// processors.identity.AccountDirectory.learn_account.
    fn learn_account(&mut self, py: Python<'_>, account_id: String, domains: Vec<Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
        let mut wanted = HashSet::new();
        for host in &domains {
            let domain = match host.downcast::<PyString>() {
                Ok(host) => self.business_domain(py, Some(&host.to_cow()?))?,
                Err(_) => None,
            };
            wanted.extend(domain);
        }
        if let Some(previous) = self.domains_of.get(&account_id) {
            for dropped in previous.difference(&wanted) {
                if self.account_by_domain.get(dropped) == Some(&account_id) {
                    self.account_by_domain.remove(dropped);
                }
            }
        }
        let mut newly: Vec<String> = wanted.iter().filter(|d| self.account_by_domain.get(*d) != Some(&account_id)).cloned().collect();
        newly.sort();
        for domain in &newly {
            if let Some(previous) = self.account_by_domain.insert(domain.clone(), account_id.clone()) {
                if let Some(theirs) = self.domains_of.get_mut(&previous) {
                    theirs.remove(domain);
                }
            }
        }
        self.domains_of.insert(account_id, wanted);
        Ok(newly)
    }

    fn forget_account(&mut self, account_id: &str) {
        for domain in self.domains_of.remove(account_id).unwrap_or_default() {
            if self.account_by_domain.get(&domain).map(String::as_str) == Some(account_id) {
                self.account_by_domain.remove(&domain);
            }
        }
    }

    #[getter]
    fn domains(&self) -> usize {
        self.account_by_domain.len()
    }

    #[getter]
    fn contacts(&self) -> usize {
        self.account_by_contact.len()
    }

    fn account_for_domain(&self, domain: &str) -> Option<String> {
        self.account_by_domain.get(domain).cloned()
    }

    /// The contact's keys attributed to the account, with a seniority when given; true
    /// when the account is news.
    #[pyo3(signature = (contact_id, email, account_id, seniority))]
    fn remember_contact(&mut self, py: Python<'_>, contact_id: Bound<'_, PyAny>, email: Bound<'_, PyAny>, account_id: &str, seniority: Option<&str>) -> PyResult<bool> {
        let keys = self.contact_keys(py, as_str(&contact_id)?.as_deref(), as_str(&email)?.as_deref())?;
        Ok(self.remember(&keys, account_id, seniority))
    }

    fn seniority(&self, py: Python<'_>, contact_id: Bound<'_, PyAny>, email: Bound<'_, PyAny>) -> PyResult<Option<String>> {
        let keys = self.contact_keys(py, as_str(&contact_id)?.as_deref(), as_str(&email)?.as_deref())?;
        Ok(self.seniority_of(&keys))
    }

    fn attribute_contact(&mut self, py: Python<'_>, contact_id: Bound<'_, PyAny>, email: Bound<'_, PyAny>, account_id: &str) -> PyResult<(bool, Option<String>)> {
        let keys = self.contact_keys(py, as_str(&contact_id)?.as_deref(), as_str(&email)?.as_deref())?;
        Ok((self.remember(&keys, account_id, None), self.seniority_of(&keys)))
    }

    /// (account id or None, method, what it waits on) of an event with these fields.
    fn resolve_fields(
        &mut self,
        py: Python<'_>,
        explicit: Bound<'_, PyAny>,
        contact_id: Bound<'_, PyAny>,
        email: Bound<'_, PyAny>,
        account_domain: Bound<'_, PyAny>,
    ) -> PyResult<Resolution> {
        let (explicit, account_domain) = (as_str(&explicit)?, as_str(&account_domain)?);
        let keys = self.contact_keys(py, as_str(&contact_id)?.as_deref(), as_str(&email)?.as_deref())?;
        self.resolve(py, explicit.as_deref(), &keys, account_domain.as_deref())
    }

    /// Routes a fetched batch (processors.routing.route_batch): the events the fast path
    /// accepts and the directory resolves are attributed and appended to their
    /// partition's list in ``by_partition`` as forwarded JSON (bytes); every other event
    /// is handed to ``route_decoded(index)``, in its place in the order.
    #[allow(clippy::too_many_arguments)]
    fn route(
        slf: &Bound<'_, Self>,
        fast_path: &FastPath,
        raw_values: &Bound<'_, PyList>,
        origins: &Bound<'_, PyList>,
        received_at_ms: i64,
        partitions: u32,
        by_partition: &Bound<'_, PyDict>,
        learned_contacts: &Bound<'_, PyList>,
        valid_by_type: &Bound<'_, PyDict>,
        route_decoded: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let scanned: Vec<Option<Scanned>> = fast_path.scan(py, raw_values, received_at_ms);
        let mut buckets: Vec<Option<Bound<'_, PyList>>> = vec![None; partitions as usize];
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut forwarded = Vec::new();
        let mut directory = slf.borrow_mut();
        for (index, scanned) in scanned.into_iter().enumerate() {
            let raw = raw_values.get_item(index)?;
            let routed = match (&scanned, raw.downcast::<PyBytes>()) {
                (Some((event_type, occurred_at_ms, explicit, contact_id, email, account_domain)), Ok(raw)) => {
                    let (contact_id, email) = (contact_id.as_deref(), email.as_deref());
                    let keys = directory.contact_keys(py, contact_id, email)?; // to resolve by, then to attribute
                    match directory.resolve(py, explicit.as_deref(), &keys, account_domain.as_deref())?.0 {
                        Some(account_id) => {
                            match counts.iter_mut().find(|(kind, _)| kind == event_type) {
                                Some((_, n)) => *n += 1,
                                None => counts.push((event_type.clone(), 1)),
                            }
                            let mut seniority = None;
                            if non_empty(contact_id).is_some() || non_empty(email).is_some() {
                                if directory.remember(&keys, &account_id, None) {
                                    learned_contacts.append((contact_id, email, &account_id))?;
                                }
                                seniority = directory.seniority_of(&keys);
                            }
                            let origin: (String, i64, i64) = origins.get_item(index)?.extract()?;
                            forwarded.clear();
                            splice(raw.as_bytes(), *occurred_at_ms, received_at_ms, &origin, &account_id, seniority.as_deref(), &mut forwarded)?;
                            let partition = account_partition(&account_id, partitions) as usize;
                            if buckets[partition].is_none() {
                                buckets[partition] = Some(match by_partition.get_item(partition)? {
                                    Some(bucket) => bucket.downcast_into::<PyList>()?,
                                    None => {
                                        let bucket = PyList::empty(py);
                                        by_partition.set_item(partition, &bucket)?;
                                        bucket
                                    }
                                });
                            }
                            buckets[partition].as_ref().unwrap().append(PyBytes::new(py, &forwarded))?;
                            true
                        }
                        None => false, // it waits: the interpreted path stores it decoded
                    }
                }
                _ => false,
            };
            if !routed {
                // the interpreted path uses the directory too, and counts in order
                add_counts(valid_by_type, &mut counts)?;
                drop(directory);
                route_decoded.call1((index,))?;
                directory = slf.borrow_mut();
            }
        }
        add_counts(valid_by_type, &mut counts)
    }
}
