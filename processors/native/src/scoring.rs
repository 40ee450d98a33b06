//! Per-account engagement as processors.scoring defines it (the definition, with the
//! reasons for each rule): the time-decayed score, capped days, counts, engaged contacts,
//! pruned by event time.

use pyo3::FromPyObject;
use indexmap::IndexMap;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::forwarded::Member;
use crate::json::Json;
use crate::state::{AccountState, AppliedEvent};
use crate::text::joined;

pub(crate) const DAY_MS: i64 = 86_400_000;
const RETENTION_DAYS: i64 = 90;
const MAX_CONTACT_KEY_CHARS: usize = 64;

/// processors.scoring.ScoringConfig.
#[derive(FromPyObject)]
pub(crate) struct ScoringConfig {
    pub(crate) weights: HashMap<String, f64>,
    pub(crate) daily_caps: HashMap<String, usize>,
    pub(crate) seniority: HashMap<String, f64>,
    pub(crate) half_life_ms: f64,
    pub(crate) cap_memory_ms: i64,
    pub(crate) max_contacts: usize,
}

pub(crate) fn decay(half_life_ms: f64, elapsed_ms: f64) -> f64 {
    // pow(2, x) as Python calls it: LLVM would turn a constant base of 2 into exp2, which
    // differs from pow in the last digit now and then
    std::hint::black_box(2.0f64).powf(-elapsed_ms / half_life_ms)
}

/// The account's score at ``at_ms`` (no earlier than its latest event).
pub(crate) fn score_at(state: &AccountState, at_ms: i64, config: &ScoringConfig) -> f64 {
    state.score * decay(config.half_life_ms, (at_ms - state.score_at_ms) as f64)
}

pub(crate) fn engaged_contacts(state: &AccountState, at_ms: i64, window_ms: i64) -> usize {
    let since = at_ms - window_ms;
    state.contacts.values().filter(|last| since <= **last && **last <= at_ms).count()
}

/// Events per type over each window of UTC days ending with ``at_ms``'s day (in the
/// order given): processors.scoring.rolling_counts.
pub(crate) fn rolling_counts(state: &AccountState, at_ms: i64, windows_days: &[i64]) -> Vec<IndexMap<String, i64>> {
    let today = at_ms.div_euclid(DAY_MS);
    let mut widths: Vec<i64> = windows_days.to_vec();
    widths.sort_unstable();
    widths.dedup();
    let widest = *widths.last().expect("a window");
    let mut narrowest: Vec<IndexMap<&str, i64>> = vec![IndexMap::new(); widths.len()];
    for (day, counts) in &state.daily {
        let age = today - day;
        if age < 0 || age >= widest {
            continue;
        }
        let bucket = &mut narrowest[widths.partition_point(|width| *width <= age)];
        for (kind, n) in counts {
            *bucket.entry(kind.as_str()).or_insert(0) += n;
        }
    }
    let mut by_width: HashMap<i64, IndexMap<String, i64>> = HashMap::new();
    let mut running: IndexMap<String, i64> = IndexMap::new();
    for (width, bucket) in widths.iter().zip(narrowest) {
        for (kind, n) in bucket {
            *running.entry(kind.to_owned()).or_insert(0) += n;
        }
        by_width.insert(*width, running.clone());
    }
    windows_days.iter().map(|width| by_width[width].clone()).collect()
}

fn event_weight(event: &AppliedEvent, config: &ScoringConfig) -> Result<f64, String> {
    if matches!(event.property("machine_open"), Some(Json::Bool(true))) {
        return Ok(0.0);
    }
    let weight = config.weights.get(&event.kind).copied().unwrap_or(0.0);
    match &event.seniority {
        Member::Value(seniority) if !seniority.is_empty() && weight != 0.0 => {
            let multiplier = config.seniority.get(seniority).ok_or_else(|| format!("unknown seniority {seniority:?}"))?;
            Ok(weight * multiplier)
        }
        _ => Ok(weight),
    }
}

/// processors.scoring._contact_digest: a contact id too long to be a state's key.
fn contact_digest(contact: &str) -> String {
    let digest = blake2b_simd::Params::new().hash_length(16).hash(contact.as_bytes());
    format!("#{}", digest.to_hex())
}

/// Folds one event into the account's state; returns its weight. Keys are allocated only
/// when they are new to the state.
pub(crate) fn apply_event(state: &mut AccountState, event: &AppliedEvent, config: &ScoringConfig) -> Result<f64, String> {
    let at = event.occurred_at_ms;
    let weight = event_weight(event, config)?;
    let contact: Option<Cow<str>> = event.contact().map(|c| if c.chars().count() > MAX_CONTACT_KEY_CHARS { Cow::Owned(contact_digest(c)) } else { Cow::Borrowed(c) });
    let day = at.div_euclid(DAY_MS);
    if weight > 0.0 {
        match (config.daily_caps.get(&event.kind), &contact) {
            (Some(&cap), Some(contact)) => {
                let key = joined(&[itoa::Buffer::new().format(day), "|", &event.kind, "|", contact]);
                count_capped(state, key, cap, at, weight, config)
            }
            _ => add(state, weight, at, config),
        }
        if at > state.last_engaged_ms {
            state.last_engaged_ms = at;
        }
        if let Some(contact) = contact {
            if at > state.contacts.get(contact.as_ref()).copied().unwrap_or(0) {
                match state.contacts.get_mut(contact.as_ref()) {
                    Some(seen) => *seen = at,
                    None => {
                        state.contacts.insert(contact.into_owned(), at);
                    }
                }
                bound(&mut state.contacts, config.max_contacts, |key, at| (*at, key.to_owned()));
            }
        }
    }
    state.events_total += 1;
    count(&mut state.counts, &event.kind);
    count(state.daily.entry(day).or_default(), &event.kind);
    if state.first_event_ms == 0 || at < state.first_event_ms {
        state.first_event_ms = at;
    }
    if at > state.last_event_ms {
        state.last_event_ms = at;
        if day > state.pruned_day {
            prune(state, day, config);
        }
    }
    Ok(weight)
}

fn count(counts: &mut IndexMap<String, i64>, kind: &str) {
    match counts.get_mut(kind) {
        Some(n) => *n += 1,
        None => {
            counts.insert(kind.to_owned(), 1);
        }
    }
}

fn add(state: &mut AccountState, weight: f64, at: i64, config: &ScoringConfig) {
    if at >= state.score_at_ms {
        state.score = state.score * decay(config.half_life_ms, (at - state.score_at_ms) as f64) + weight;
        state.score_at_ms = at;
    } else {
        state.score += weight * decay(config.half_life_ms, (state.score_at_ms - at) as f64);
    }
}

/// Earliest first; at equal times the heavier first.
fn cap_order(&(at, weight): &(i64, f64)) -> (i64, f64) {
    (at, -weight)
}

fn after(a: (i64, f64), b: (i64, f64)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
}

/// Keeps the day's ``cap`` first events of the contact and type counted.
fn count_capped(state: &mut AccountState, key: String, cap: usize, at: i64, weight: f64, config: &ScoringConfig) {
    match state.capped.get_mut(&key) {
        None => {
            state.capped.insert(key, vec![(at, weight)]);
            // a contact whose day is forgotten counts its later events of that day anew
            bound(&mut state.capped, 2 * config.max_contacts, |key, _| (day_of_capped(key), key.to_owned()));
        }
        Some(counted) if counted.len() < cap => counted.push((at, weight)),
        Some(counted) => {
            let mut latest = 0;
            for (i, entry) in counted.iter().enumerate() {
                if after(cap_order(entry), cap_order(&counted[latest])) {
                    latest = i;
                }
            }
            if !after(cap_order(&counted[latest]), cap_order(&(at, weight))) {
                return; // in that order it comes after the cap
            }
            let (latest_at, latest_weight) = counted.remove(latest);
            counted.push((at, weight));
            add(state, -latest_weight, latest_at, config);
        }
    }
    add(state, weight, at, config);
}

fn day_of_capped(key: &str) -> i64 {
    key.split('|').next().and_then(|day| day.parse().ok()).unwrap_or(0)
}

/// Once an eighth more than ``keep`` have come, forgets the earliest entries in ``order``
/// (ties: by key) down to ``keep``.
fn bound<V>(memories: &mut IndexMap<String, V>, keep: usize, order: impl Fn(&str, &V) -> (i64, String)) {
    if memories.len() > keep + keep / 8 {
        let mut ordered: Vec<(i64, String)> = memories.iter().map(|(key, value)| order(key, value)).collect();
        ordered.sort_unstable();
        let forgotten: HashSet<String> = ordered.into_iter().take(memories.len() - keep).map(|(_, key)| key).collect();
        memories.retain(|key, _| !forgotten.contains(key));
    }
}

fn prune(state: &mut AccountState, today: i64, config: &ScoringConfig) {
    let oldest_day = today - RETENTION_DAYS;
    state.daily.retain(|day, _| *day > oldest_day);
    let oldest_ms = oldest_day * DAY_MS;
    state.contacts.retain(|_, at| *at >= oldest_ms);
    let oldest_cap_day = (today * DAY_MS - config.cap_memory_ms).div_euclid(DAY_MS);
    state.capped.retain(|key, _| day_of_capped(key) >= oldest_cap_day);
    state.pruned_day = today;
}
