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
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

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

/// A JSON value as Python decodes it, its strings borrowed where they have no escapes:
/// an object keeps each member at its first position with its last value (a dict's
/// assignment).
enum Json<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(Cow<'a, str>),
    List(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// A string, borrowed where it can be (serde's Cow<str> always copies).
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct JsonVisitor;
        impl<'de> Visitor<'de> for JsonVisitor {
            type Value = Json<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Json::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Json::UInt(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Json::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Json::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Json::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
                while let Some(Text(name)) = map.next_key()? {
                    let value = map.next_value()?;
                    match members.iter_mut().find(|(known, _)| *known == name) {
                        Some(member) => member.1 = value,
                        None => members.push((name, value)),
                    }
                }
                Ok(Json::Object(members))
            }
        }
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// A decoded JSON value as orjson encodes it (compact, members in order).
fn write_json(value: &Json<'_>, out: &mut Vec<u8>) {
    match value {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Json::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Json::UInt(u) => out.extend_from_slice(u.to_string().as_bytes()),
        Json::Float(x) => write_float(*x, out),
        Json::Text(s) => write_string(s, out),
        Json::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(item, out);
            }
            out.push(b']');
        }
        Json::Object(members) => {
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
    }
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

/// The string columns of events_claimed, in order.
const TEXT_COLUMNS: [&str; 9] = ["event_id", "type", "source", "account_id", "contact_id", "email", "campaign_id", "url", "content_id"];

/// What a row reads of a forwarded event (a later member of the same name wins, as in
/// the dict Python decodes); its other members are skipped.
#[derive(Default)]
struct ForwardedEvent<'a> {
    texts: [Option<Cow<'a, str>>; 9], // None: missing or null
    occurred_at_ms: Option<i64>,
    received_at_ms: Option<i64>,
    properties: Option<Json<'a>>,
}

impl<'de> Deserialize<'de> for ForwardedEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl<'de> Visitor<'de> for EventVisitor {
            type Value = ForwardedEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut event = ForwardedEvent::default();
                while let Some(Text(name)) = map.next_key()? {
                    if let Some(column) = TEXT_COLUMNS.iter().position(|c| *c == name) {
                        event.texts[column] = map.next_value::<Option<Text<'de>>>()?.map(|Text(t)| t);
                        continue;
                    }
                    match name.as_ref() {
                        "occurred_at_ms" => event.occurred_at_ms = Some(map.next_value()?),
                        "received_at_ms" => event.received_at_ms = Some(map.next_value()?),
                        "properties" => event.properties = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(event)
            }
        }
        deserializer.deserialize_map(EventVisitor)
    }
}

/// One event's row of `events_claimed` (streams.sink.CLAIMED_EVENT_COLUMNS).
fn write_row(event: &ForwardedEvent<'_>, (partition, offset, index): Position, claim: u64, rows: &mut EncodedRows) -> Result<(), String> {
    let out = &mut rows.data;
    for text in &event.texts {
        write_bytes(text.as_deref().unwrap_or("").as_bytes(), out);
    }
    let occurred_at_ms = event.occurred_at_ms.ok_or("a forwarded event has no occurred_at_ms")?;
    let received_at_ms = event.received_at_ms.ok_or("a forwarded event has no received_at_ms")?;
    out.extend_from_slice(&occurred_at_ms.to_le_bytes());
    out.extend_from_slice(&received_at_ms.to_le_bytes());
    match &event.properties {
        Some(properties @ Json::Object(members)) if !members.is_empty() => {
            let mut text = Vec::new();
            write_json(properties, &mut text);
            write_bytes(&text, out);
        }
        None | Some(Json::Null) | Some(Json::Object(_)) => write_bytes(b"{}", out),
        Some(_) => return Err("the properties of a forwarded event are not an object".to_owned()),
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
fn events_of(message: &[u8]) -> Result<Vec<ForwardedEvent<'_>>, String> {
    let mut reader = serde_json::Deserializer::from_slice(message);
    reader.disable_recursion_limit();
    Vec::<ForwardedEvent>::deserialize(&mut reader).map_err(|e| format!("a forwarded message is not a JSON array of events: {e}"))
}

fn encode(messages: &HashMap<(u16, u64), (&[u8], u64)>, positions: &[Position]) -> Result<EncodedRows, String> {
    let mut rows = EncodedRows { data: Vec::with_capacity(positions.len() * 400), occurred_at_ms: Vec::new(), received_at_ms: Vec::new() };
    let mut decoded: HashMap<(u16, u64), Vec<ForwardedEvent>> = HashMap::new();
    for &(partition, offset, index) in positions {
        let key = (partition, offset);
        let (message, claim) = messages.get(&key).ok_or_else(|| format!("no forwarded message at partition {partition}, offset {offset}"))?;
        let events = match decoded.entry(key) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => new.insert(events_of(message)?),
        };
        let event = events.get(index as usize).ok_or_else(|| format!("no event {index} in the message at partition {partition}, offset {offset}"))?;
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
