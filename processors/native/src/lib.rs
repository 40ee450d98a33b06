//! The routing stage's fast path (processors.validation, processors.routing): a fetched
//! batch of raw events parsed and checked against the event contract outside the GIL,
//! and forwarded events written as JSON arrays by splicing what routing adds onto their
//! raw bytes, instead of a Python dict per event decoded, changed and encoded again.
//!
//! It only ever accepts: an event it has any doubt about (a rejection, a timestamp not
//! in the canonical form, a pattern to match, JSON nested deeper than serde's limit) is
//! left to processors.validation.validate_event, which stays the definition of a valid
//! event. The contract itself (fields, kinds, bounds) comes from schemas.events.
//!
//! Beside it: the account directory that routes a fetched batch in one call
//! (directory.rs), event rows made from forwarded messages (rows.rs), and the JSON both
//! read and write as Python does (json.rs).

mod dedup;
mod directory;
mod fold;
mod forwarded;
mod json;
mod rows;
mod schedule;
mod scoring;
mod stages;
mod state;
mod text;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use json::{Json, Text};

struct Property {
    name: String,
    kind: String,
    required: bool,
    minimum: Option<f64>,
    maximum: Option<f64>,
    choices: Vec<String>,
    has_pattern: bool,
    requires: Option<String>,
}

struct EventType {
    required: Vec<usize>, // slots (FastPath::slots)
    properties: Vec<Property>,
}

/// (name, kind, required, minimum, maximum, choices, has a pattern, requires)
type PropertySpec = (String, String, bool, Option<f64>, Option<f64>, Vec<String>, bool, Option<String>);

/// What routing reads of an event the fast path accepted: (type, occurred_at in epoch
/// ms, account_id, contact_id, email, account_domain).
pub(crate) type Scanned = (String, i64, Option<String>, Option<String>, Option<String>, Option<String>);

/// The contract's bounds, from a dict of these names.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Limits {
    max_string_chars: usize,
    max_event_bytes: usize,
    min_occurred_at_ms: i64,
    max_future_ms: i64,
}

/// The members of an event the contract names, each read into a slot; others are read
/// and dropped.
#[pyclass(frozen)]
pub(crate) struct FastPath {
    slots: Vec<String>,
    types: HashMap<String, EventType>,
    required: Vec<usize>,
    string_fields: Vec<usize>,
    named: NamedSlots,
    limits: Limits,
}

/// The slots of the members the scan reads by name.
struct NamedSlots {
    event_type: usize,
    properties: usize,
    received_at: usize,
    occurred_at: usize,
    account_id: usize,
    contact_id: usize,
    email: usize,
    account_domain: usize,
}

/// An event's members in their slots (a later member of the same name wins, as in the
/// dict Python decodes).
struct SlotsSeed<'s>(&'s [String]);

impl<'de> DeserializeSeed<'de> for SlotsSeed<'_> {
    type Value = Vec<Option<Json<'de>>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SlotsSeed<'_> {
    type Value = Vec<Option<Json<'de>>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event (a JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values: Vec<Option<Json<'de>>> = self.0.iter().map(|_| None).collect();
        while let Some(Text(name)) = map.next_key()? {
            match self.0.iter().position(|slot| *slot == name) {
                Some(slot) => values[slot] = Some(map.next_value()?),
                // read all the same: skipped, serde checks neither UTF-8 nor surrogates,
                // and orjson refuses an event with a bad one anywhere
                None => drop(map.next_value::<Json<'de>>()?),
            }
        }
        Ok(values)
    }
}

fn member<'a, 'b>(members: &'b [(Cow<'a, str>, Json<'a>)], name: &str) -> Option<&'b Json<'a>> {
    members.iter().find(|(known, _)| known == name).map(|(_, value)| value)
}

fn as_str<'b>(value: &'b Json<'_>) -> Option<&'b str> {
    match value {
        Json::Text(s) => Some(s),
        _ => None,
    }
}

/// serde_json's ``Value::as_f64``: any number.
fn as_f64(value: &Json<'_>) -> Option<f64> {
    match value {
        Json::Int(i) => Some(*i as f64),
        Json::UInt(u) => Some(*u as f64),
        Json::Float(x) => Some(*x),
        _ => None,
    }
}

fn missing(value: Option<&Json<'_>>) -> bool {
    matches!(value, None | Some(Json::Null)) || matches!(value, Some(Json::Text(s)) if s.is_empty())
}

fn digits(bytes: &[u8]) -> Option<i64> {
    bytes.iter().try_fold(0i64, |n, &c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    era * 146_097 + year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year - 719_468
}

/// Epoch ms of `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|±HH:MM)` as Python computes it
/// (`int(datetime.fromisoformat(s).timestamp() * 1000)`); None for any other form.
fn iso_timestamp_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > month_days[(month - 1) as usize] || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut micros = 0;
    if b[at] == b'.' {
        let start = at + 1;
        at = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        let fraction = &b[start..at];
        if fraction.is_empty() || fraction.len() > 6 {
            return None;
        }
        micros = digits(fraction)? * 10i64.pow(6 - fraction.len() as u32);
    }
    let offset_s = match &b[at..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (hours, minutes) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            if *sign == b'-' { -(hours * 3600 + minutes * 60) } else { hours * 3600 + minutes * 60 }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let total_micros = seconds * 1_000_000 + micros;
    // Python divides the exact integer; a double holds it exactly only below 2^53
    if total_micros.unsigned_abs() >= 1 << 53 {
        return None;
    }
    Some((total_micros as f64 / 1e6 * 1000.0) as i64)
}

/// processors.validation.parse_timestamp_ms, where it is sure.
fn timestamp_ms(value: &Json<'_>) -> Option<i64> {
    match value {
        Json::Int(i) => Some(*i),
        Json::UInt(u) => i64::try_from(*u).ok(),
        Json::Text(s) => iso_timestamp_ms(s),
        _ => None,
    }
}

impl FastPath {
    fn short_string(&self, value: &Json<'_>) -> bool {
        as_str(value).is_some_and(|s| s.len() <= self.limits.max_string_chars || s.chars().count() <= self.limits.max_string_chars)
    }

    fn property_valid(&self, properties: Option<&[(Cow<'_, str>, Json<'_>)]>, property: &Property) -> bool {
        let value = properties.and_then(|p| member(p, &property.name));
        if missing(value) {
            return !property.required;
        }
        let value = value.unwrap();
        let kind_valid = match property.kind.as_str() {
            "string" => self.short_string(value),
            "integer" => matches!(value, Json::Int(_) | Json::UInt(_)),
            "number" => matches!(value, Json::Int(_) | Json::UInt(_) | Json::Float(_)),
            "boolean" => matches!(value, Json::Bool(_)),
            _ => false, // string lists: Python's
        };
        let chosen = property.choices.is_empty() || property.choices.iter().any(|c| as_str(value) == Some(c.as_str()));
        let in_range = as_f64(value).is_none_or(|x| property.minimum.is_none_or(|m| x >= m) && property.maximum.is_none_or(|m| x <= m));
        let accompanied = property.requires.as_ref().is_none_or(|r| !missing(properties.and_then(|p| member(p, r))));
        kind_valid && chosen && in_range && accompanied && !property.has_pattern
    }

    fn scan_one(&self, raw: &[u8], received_at_ms: i64) -> Option<Scanned> {
        if raw.len() > self.limits.max_event_bytes {
            return None;
        }
        let mut reader = serde_json::Deserializer::from_slice(raw);
        let Ok(event) = SlotsSeed(&self.slots).deserialize(&mut reader) else { return None };
        reader.end().ok()?;
        let get = |slot: usize| event[slot].as_ref();
        let named = &self.named;
        if self.required.iter().any(|&slot| missing(get(slot))) {
            return None;
        }
        let event_type = as_str(get(named.event_type)?)?;
        let definition = self.types.get(event_type)?;
        if definition.required.iter().any(|&slot| missing(get(slot))) {
            return None;
        }
        if !self.string_fields.iter().all(|&slot| get(slot).is_none_or(|v| matches!(v, Json::Null) || self.short_string(v))) {
            return None;
        }
        let properties = match get(named.properties) {
            None | Some(Json::Null) => None,
            Some(Json::Object(p)) => Some(p.as_slice()),
            Some(_) => return None,
        };
        if !definition.properties.iter().all(|property| self.property_valid(properties, property)) {
            return None;
        }
        if get(named.received_at).is_some_and(|v| !matches!(v, Json::Null) && timestamp_ms(v).is_none()) {
            return None;
        }
        let occurred_at_ms = timestamp_ms(get(named.occurred_at)?)?;
        if occurred_at_ms < self.limits.min_occurred_at_ms || occurred_at_ms > received_at_ms.saturating_add(self.limits.max_future_ms) {
            return None;
        }
        let text = |slot: usize| get(slot).and_then(as_str).map(str::to_owned);
        Some((event_type.to_owned(), occurred_at_ms, text(named.account_id), text(named.contact_id), text(named.email), text(named.account_domain)))
    }
}

#[pymethods]
impl FastPath {
    #[new]
    fn new(event_types: Vec<(String, Vec<String>, Vec<PropertySpec>)>, required: Vec<String>, string_fields: Vec<String>, limits: Limits) -> Self {
        let mut slots: Vec<String> = Vec::new();
        let mut slot = |name: &str| match slots.iter().position(|s| s == name) {
            Some(known) => known,
            None => {
                slots.push(name.to_owned());
                slots.len() - 1
            }
        };
        let named = NamedSlots {
            event_type: slot("type"),
            properties: slot("properties"),
            received_at: slot("received_at"),
            occurred_at: slot("occurred_at"),
            account_id: slot("account_id"),
            contact_id: slot("contact_id"),
            email: slot("email"),
            account_domain: slot("account_domain"),
        };
        let required = required.iter().map(|name| slot(name)).collect();
        let string_fields = string_fields.iter().map(|name| slot(name)).collect();
        let types = event_types
            .into_iter()
            .map(|(name, required, properties)| {
                let properties = properties
                    .into_iter()
                    .map(|(name, kind, required, minimum, maximum, choices, has_pattern, requires)| Property {
                        name,
                        kind,
                        required,
                        minimum,
                        maximum,
                        choices,
                        has_pattern,
                        requires,
                    })
                    .collect();
                (name, EventType { required: required.iter().map(|name| slot(name)).collect(), properties })
            })
            .collect();
        FastPath { slots, types, required, string_fields, named, limits }
    }

    /// For each raw value, what routing reads of it if the fast path accepts it, else None.
    pub(crate) fn scan(&self, py: Python<'_>, raw_values: &Bound<'_, PyList>, received_at_ms: i64) -> Vec<Option<Scanned>> {
        let held: Vec<Option<Bound<'_, PyBytes>>> = raw_values.iter().map(|v| v.downcast_into::<PyBytes>().ok()).collect();
        let raws: Vec<Option<&[u8]>> = held.iter().map(|v| v.as_ref().map(|b| b.as_bytes())).collect();
        py.allow_threads(|| raws.iter().map(|raw| raw.and_then(|raw| self.scan_one(raw, received_at_ms))).collect())
    }
}

/// A raw event the fast path accepted, forwarded: its JSON object with routing's members
/// spliced on, in the order Python adds them (a later member of the same name wins when
/// decoded, as Python's assignment does).
pub(crate) fn splice(raw: &[u8], occurred_at_ms: i64, received_at_ms: i64, origin: &(String, i64, i64), account_id: &str, seniority: Option<&str>, out: &mut Vec<u8>) -> PyResult<()> {
    let end = raw.iter().rposition(|&c| c == b'}').ok_or_else(|| PyValueError::new_err("a raw event is not a JSON object"))?;
    let (topic, partition, offset) = origin;
    out.extend_from_slice(&raw[..end]);
    out.extend_from_slice(format!(",\"occurred_at_ms\":{occurred_at_ms},\"received_at_ms\":{received_at_ms},\"_origin\":[").as_bytes());
    serde_json::to_writer(&mut *out, topic).map_err(|e| PyValueError::new_err(e.to_string()))?;
    out.extend_from_slice(format!(",{partition},{offset}],\"account_id\":").as_bytes());
    serde_json::to_writer(&mut *out, account_id).map_err(|e| PyValueError::new_err(e.to_string()))?;
    if let Some(seniority) = seniority {
        out.extend_from_slice(b",\"_seniority\":");
        serde_json::to_writer(&mut *out, seniority).map_err(|e| PyValueError::new_err(e.to_string()))?;
    }
    out.push(b'}');
    Ok(())
}

/// The events in order (each a JSON object as bytes, or a dict that `encode` makes
/// bytes of) as JSON arrays of at most `max_events` events and `max_bytes` bytes (an
/// event larger than that goes alone).
#[pyfunction]
fn forwarded_arrays<'py>(py: Python<'py>, events: &Bound<'py, PyList>, max_events: usize, max_bytes: usize, encode: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let mut arrays: Vec<Vec<u8>> = Vec::new();
    let mut array: Vec<u8> = Vec::new();
    let mut count = 0;
    for item in events.iter() {
        let encoded = match item.downcast_into::<PyBytes>() {
            Ok(encoded) => encoded,
            Err(item) => encode.call1((item.into_inner(),))?.downcast_into::<PyBytes>()?,
        };
        let event = encoded.as_bytes();
        if count > 0 && (count >= max_events || array.len() + 1 + event.len() + 1 > max_bytes) {
            array.push(b']');
            arrays.push(std::mem::take(&mut array));
            count = 0;
        }
        array.push(if count == 0 { b'[' } else { b',' });
        array.extend_from_slice(event);
        count += 1;
    }
    if count > 0 {
        array.push(b']');
        arrays.push(array);
    }
    PyList::new(py, arrays.iter().map(|a| PyBytes::new(py, a)))
}

#[pymodule]
fn abm_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<FastPath>()?;
    module.add_class::<directory::Directory>()?;
    module.add_class::<rows::EncodedRows>()?;
    module.add_class::<fold::Fold>()?;
    module.add_function(wrap_pyfunction!(rows::claimed_event_rows, module)?)?;
    module.add_function(wrap_pyfunction!(forwarded_arrays, module)?)?;
    Ok(())
}
