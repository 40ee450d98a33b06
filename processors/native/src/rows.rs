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

use crate::forwarded::{events_of, ForwardedEvent, Member};
use crate::json::{write_json, Json};

/// The string columns of events_claimed: forwarded's first text members.
const EVENT_ROW_TEXTS: usize = 9;

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

/// One event's row of `events_claimed` (streams.sink.CLAIMED_EVENT_COLUMNS).
fn write_row(event: &ForwardedEvent<'_>, (partition, offset, index): Position, claim: u64, rows: &mut EncodedRows) -> Result<(), String> {
    let out = &mut rows.data;
    for column in 0..EVENT_ROW_TEXTS {
        write_bytes(event.text(column).unwrap_or("").as_bytes(), out);
    }
    let occurred_at_ms = event.occurred_at_ms.ok_or("a forwarded event has no occurred_at_ms")?;
    let received_at_ms = event.received_at_ms.ok_or("a forwarded event has no received_at_ms")?;
    out.extend_from_slice(&occurred_at_ms.to_le_bytes());
    out.extend_from_slice(&received_at_ms.to_le_bytes());
    match &event.properties {
        Member::Value(properties @ Json::Object(members)) if !members.is_empty() => {
            let mut text = Vec::new();
            write_json(properties, &mut text);
            write_bytes(&text, out);
        }
        Member::Missing | Member::Null | Member::Value(Json::Object(_)) => write_bytes(b"{}", out),
        Member::Value(_) => return Err("the properties of a forwarded event are not an object".to_owned()),
    }
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&claim.to_le_bytes());
    rows.occurred_at_ms.push(occurred_at_ms);
    rows.received_at_ms.push(received_at_ms);
    Ok(())
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
