//! The routing stage's fast path (processors.validation, processors.routing): a fetched
//! batch of raw events parsed and checked against the event contract outside the GIL,
//! and forwarded events written as JSON arrays by splicing what routing adds onto their
//! raw bytes, instead of a Python dict per event decoded, changed and encoded again.
//!
//! It only ever accepts: an event it has any doubt about (a rejection, a timestamp not
//! in the canonical form, a pattern to match, JSON nested deeper than serde's limit) is
//! left to processors.validation.validate_event, which stays the definition of a valid
//! event. The contract itself (fields, kinds, bounds) comes from schemas.events.

mod directory;
mod rows;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use serde_json::{Map, Value};
use std::collections::HashMap;

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
    required: Vec<String>,
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

#[pyclass(frozen)]
pub(crate) struct FastPath {
    types: HashMap<String, EventType>,
    required: Vec<String>,
    string_fields: Vec<String>,
    limits: Limits,
}

fn missing(value: Option<&Value>) -> bool {
    matches!(value, None | Some(Value::Null)) || matches!(value, Some(Value::String(s)) if s.is_empty())
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
fn timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => iso_timestamp_ms(s),
        _ => None,
    }
}

fn string_field(object: &Map<String, Value>, name: &str) -> Option<String> {
    object.get(name).and_then(Value::as_str).map(str::to_owned)
}

impl FastPath {
    fn short_string(&self, value: &Value) -> bool {
        value.as_str().is_some_and(|s| s.len() <= self.limits.max_string_chars || s.chars().count() <= self.limits.max_string_chars)
    }

    fn property_valid(&self, properties: Option<&Map<String, Value>>, property: &Property) -> bool {
        let value = properties.and_then(|p| p.get(&property.name));
        if missing(value) {
            return !property.required;
        }
        let value = value.unwrap();
        let kind_valid = match property.kind.as_str() {
            "string" => self.short_string(value),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => false, // string lists: Python's
        };
        let chosen = property.choices.is_empty() || property.choices.iter().any(|c| value.as_str() == Some(c.as_str()));
        let in_range = value.as_f64().is_none_or(|x| property.minimum.is_none_or(|m| x >= m) && property.maximum.is_none_or(|m| x <= m));
        let accompanied = property.requires.as_ref().is_none_or(|r| !missing(properties.and_then(|p| p.get(r))));
        kind_valid && chosen && in_range && accompanied && !property.has_pattern
    }

    fn scan_one(&self, raw: &[u8], received_at_ms: i64) -> Option<Scanned> {
        if raw.len() > self.limits.max_event_bytes {
            return None;
        }
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(raw) else { return None };
        if self.required.iter().any(|name| missing(object.get(name))) {
            return None;
        }
        let event_type = object.get("type")?.as_str()?;
        let definition = self.types.get(event_type)?;
        if definition.required.iter().any(|name| missing(object.get(name))) {
            return None;
        }
        if !self.string_fields.iter().all(|name| object.get(name).is_none_or(|v| v.is_null() || self.short_string(v))) {
            return None;
        }
        let properties = match object.get("properties") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return None,
        };
        if !definition.properties.iter().all(|property| self.property_valid(properties, property)) {
            return None;
        }
        if object.get("received_at").is_some_and(|v| !v.is_null() && timestamp_ms(v).is_none()) {
            return None;
        }
        let occurred_at_ms = timestamp_ms(object.get("occurred_at")?)?;
        if occurred_at_ms < self.limits.min_occurred_at_ms || occurred_at_ms > received_at_ms.saturating_add(self.limits.max_future_ms) {
            return None;
        }
        Some((
            event_type.to_owned(),
            occurred_at_ms,
            string_field(&object, "account_id"),
            string_field(&object, "contact_id"),
            string_field(&object, "email"),
            string_field(&object, "account_domain"),
        ))
    }
}

#[pymethods]
impl FastPath {
    #[new]
    fn new(event_types: Vec<(String, Vec<String>, Vec<PropertySpec>)>, required: Vec<String>, string_fields: Vec<String>, limits: Limits) -> Self {
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
                (name, EventType { required, properties })
            })
            .collect();
        FastPath { types, required, string_fields, limits }
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
    module.add_function(wrap_pyfunction!(rows::claimed_event_rows, module)?)?;
    module.add_function(wrap_pyfunction!(forwarded_arrays, module)?)?;
    Ok(())
}
