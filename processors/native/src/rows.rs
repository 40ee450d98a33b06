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
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

use crate::json::{write_json, Json, Text};

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
