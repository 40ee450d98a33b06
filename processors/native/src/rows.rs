//! Event rows for ClickHouse (streams.rows.event_row) encoded as RowBinary straight from
//! the forwarded messages the events came in, without the GIL: the sink does it in its
//! own thread at the insert, instead of the event loop building a tuple per event and
//! clickhouse-connect encoding them again. ``properties`` is written as orjson writes the
//! decoded dict (its float format included), so the rows are those event_row gives.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Position of an event: (by-account partition, offset of its message, index in it).
type Position = (u16, u64, u32);

#[pyclass(frozen, module = "abm_native")]
pub struct EncodedRows {
    data: Vec<u8>,
    occurred_at_ms: Vec<i64>,
    received_at_ms: Vec<i64>,
}

fn invalid(what: String) -> PyErr {
    PyValueError::new_err(what)
}

/// orjson's float: the shortest digits that read back, in decimal notation for decimal
/// exponents from -5 to 15, else as d.ddde±x.
fn write_float(value: f64, out: &mut Vec<u8>) {
    let scientific = format!("{value:e}"); // shortest round-trip digits: "-1.25e-7", "1e16"
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    out.extend_from_slice(sign.as_bytes());
    if (-5..16).contains(&exponent) {
        if exponent >= 0 {
            let whole = exponent as usize + 1;
            if digits.len() <= whole {
                out.extend_from_slice(digits.as_bytes());
                out.extend(std::iter::repeat_n(b'0', whole - digits.len()));
                out.extend_from_slice(b".0");
            } else {
                out.extend_from_slice(&digits.as_bytes()[..whole]);
                out.push(b'.');
                out.extend_from_slice(&digits.as_bytes()[whole..]);
            }
        } else {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exponent - 1) as usize));
            out.extend_from_slice(digits.as_bytes());
        }
    } else {
        out.extend_from_slice(mantissa.as_bytes());
        out.push(b'e');
        if exponent > 0 {
            out.push(b'+');
        }
        out.extend_from_slice(exponent.to_string().as_bytes());
    }
}

fn write_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &byte in text.as_bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x00..=0x1f => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

/// A decoded JSON value as orjson encodes it (compact, members in order).
fn write_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => out.extend_from_slice(i.to_string().as_bytes()),
            (None, Some(u)) => out.extend_from_slice(u.to_string().as_bytes()),
            _ => write_float(n.as_f64().unwrap_or(0.0), out),
        },
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(members) => write_object(members, out),
    }
}

fn write_object(members: &Map<String, Value>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (name, item)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(name, out);
        out.push(b':');
        write_json(item, out);
    }
    out.push(b'}');
}

fn write_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    let mut length = bytes.len();
    loop {
        let low = (length & 0x7f) as u8;
        length >>= 7;
        if length == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    out.extend_from_slice(bytes);
}

/// A string column: the member as it is, "" for a missing, null or empty one.
fn write_text(event: &Map<String, Value>, name: &str, out: &mut Vec<u8>) -> Result<(), String> {
    match event.get(name) {
        None | Some(Value::Null) => write_bytes(b"", out),
        Some(Value::String(s)) => write_bytes(s.as_bytes(), out),
        Some(other) => return Err(format!("member {name:?} of a forwarded event is not a string: {other}")),
    }
    Ok(())
}

fn time_ms(event: &Map<String, Value>, name: &str) -> Result<i64, String> {
    event.get(name).and_then(Value::as_i64).ok_or_else(|| format!("a forwarded event has no integer {name:?}"))
}

/// One event's row of `events_claimed` (streams.sink.CLAIMED_EVENT_COLUMNS).
fn write_row(event: &Map<String, Value>, (partition, offset, index): Position, claim: u64, rows: &mut EncodedRows) -> Result<(), String> {
    let out = &mut rows.data;
    for name in ["event_id", "type", "source", "account_id", "contact_id", "email", "campaign_id", "url", "content_id"] {
        write_text(event, name, out)?;
    }
    let (occurred_at_ms, received_at_ms) = (time_ms(event, "occurred_at_ms")?, time_ms(event, "received_at_ms")?);
    out.extend_from_slice(&occurred_at_ms.to_le_bytes());
    out.extend_from_slice(&received_at_ms.to_le_bytes());
    match event.get("properties") {
        Some(Value::Object(p)) if !p.is_empty() => {
            let mut text = Vec::new();
            write_object(p, &mut text);
            write_bytes(&text, out);
        }
        None | Some(Value::Null) | Some(Value::Object(_)) => write_bytes(b"{}", out),
        Some(other) => return Err(format!("the properties of a forwarded event are not an object: {other}")),
    }
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&claim.to_le_bytes());
    rows.occurred_at_ms.push(occurred_at_ms);
    rows.received_at_ms.push(received_at_ms);
    Ok(())
}

/// A forwarded message's events, nested as deep as orjson reads (1,024 levels; serde's
/// default stops at 128).
fn events_of(message: &[u8]) -> Result<Vec<Value>, String> {
    let mut reader = serde_json::Deserializer::from_slice(message);
    reader.disable_recursion_limit();
    Vec::<Value>::deserialize(&mut reader).map_err(|e| format!("a forwarded message is not a JSON array of events: {e}"))
}

fn encode(messages: &HashMap<(u16, u64), (&[u8], u64)>, positions: &[Position]) -> Result<EncodedRows, String> {
    let mut rows = EncodedRows { data: Vec::with_capacity(positions.len() * 400), occurred_at_ms: Vec::new(), received_at_ms: Vec::new() };
    let mut decoded: HashMap<(u16, u64), Vec<Value>> = HashMap::new();
    for &(partition, offset, index) in positions {
        let key = (partition, offset);
        let (message, claim) = messages.get(&key).ok_or_else(|| format!("no forwarded message at partition {partition}, offset {offset}"))?;
        let events = match decoded.entry(key) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => new.insert(events_of(message)?),
        };
        let event = events.get(index as usize).and_then(Value::as_object).ok_or_else(|| format!("no event {index} in the message at partition {partition}, offset {offset}"))?;
        write_row(event, (partition, offset, index), *claim, &mut rows)?;
    }
    Ok(rows)
}

/// The rows (RowBinary) of the events at these positions, from the forwarded messages
/// they came in: {(partition, offset): (message, the partition's claim)}.
#[pyfunction]
pub fn claimed_event_rows(py: Python<'_>, messages: &Bound<'_, PyDict>, positions: Vec<Position>) -> PyResult<EncodedRows> {
    let mut held: Vec<((u16, u64), Bound<'_, PyBytes>, u64)> = Vec::with_capacity(messages.len());
    for (key, value) in messages.iter() {
        let (message, claim): (Bound<'_, PyBytes>, u64) = value.extract()?;
        held.push((key.extract()?, message, claim));
    }
    let by_key: HashMap<(u16, u64), (&[u8], u64)> = held.iter().map(|(key, message, claim)| (*key, (message.as_bytes(), *claim))).collect();
    py.allow_threads(|| encode(&by_key, &positions)).map_err(invalid)
}

/// Bucket counts (``bisect_left`` over ``bounds_s``) and sum of latencies in seconds.
fn histogram(now_ms: i64, times_ms: &[i64], bounds_s: &[f64]) -> (Vec<u64>, f64) {
    let mut counts = vec![0u64; bounds_s.len() + 1];
    let mut total_s = 0.0;
    for &at in times_ms {
        let latency = (now_ms - at) as f64 / 1000.0;
        counts[bounds_s.partition_point(|bound| *bound < latency)] += 1;
        total_s += latency;
    }
    (counts, total_s)
}

#[pymethods]
impl EncodedRows {
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.data)
    }

    fn __len__(&self) -> usize {
        self.occurred_at_ms.len()
    }

    /// Latencies of the rows from their events' times (``received``: from their receipt)
    /// to ``now_ms``: (count per bucket of ``bounds_s`` and past the last, sum in seconds).
    fn latencies(&self, now_ms: i64, bounds_s: Vec<f64>, received: bool) -> (Vec<u64>, f64) {
        histogram(now_ms, if received { &self.received_at_ms } else { &self.occurred_at_ms }, &bounds_s)
    }
}
