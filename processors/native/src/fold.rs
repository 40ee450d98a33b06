//! The fold (processors.watermarks.fold_messages, processors.accounts): forwarded
//! messages read straight from their bytes into account states held here, events held
//! for the watermark and settled in event-time order, each partition's fall-back
//! schedule advanced by its messages. The Python modules stay the definition; this
//! derives what they derive, the states' bytes included.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyIterator, PyTuple};
use indexmap::{IndexMap, IndexSet};
use std::collections::{HashMap, HashSet};

use crate::dedup::{event_key, forget_old, must_prune, next_prune_size, DedupPolicy};
use crate::directory::account_partition;
use crate::forwarded::{events_of, Member, ACCOUNT_ID};
use crate::scoring::{apply_event, engaged_contacts, rolling_counts, score_at, ScoringConfig, DAY_MS};
use crate::stages::{fall_back_until, may_move_up, note_signals, restage, StageRules, StageTransition};
use crate::state::{held_events_of, write_events, AccountState, AppliedEvent, Timing, STAGES};
use crate::schedule::FallbackSchedule;

fn invalid(what: String) -> PyErr {
    PyValueError::new_err(what)
}

/// What the fold reads of the rules, as the Python definitions hold them.
struct Rules {
    config: ScoringConfig,
    stages: StageRules,
    dedup: DedupPolicy,
    max_held: usize, // 0: events applied at once, never held
}

/// The account states in memory, read from the store (through Python) on first use.
struct States {
    cached: IndexMap<String, AccountState>, // in the order first read: the oldest leave memory first
    changed: HashSet<String>,               // since their rows were last taken
    unwritten: HashSet<String>,             // rows taken since, bytes not yet
    releasing: HashMap<String, Vec<i64>>,   // released segments the states as last written list: to be deleted next
    load: PyObject,          // account id -> its stored state's JSON, or None
    stored_held: PyObject,   // (account id, segment number) -> the segment's JSON
    stored_timings: PyObject, // partition -> the timings of its stored states
}

impl States {
    /// The account's state, marked as changed (it is about to be).
    fn state_for(&mut self, py: Python<'_>, account_id: &str) -> PyResult<&mut AccountState> {
        if !self.changed.contains(account_id) {
            self.changed.insert(account_id.to_owned());
        }
        if let Some(index) = self.cached.get_index_of(account_id) {
            return Ok(&mut self.cached[index]);
        }
        let stored = self.load.call1(py, (account_id,))?;
        let state = if stored.is_none(py) {
            AccountState::new(account_id)
        } else {
            AccountState::from_json(stored.downcast_bound::<PyBytes>(py)?.as_bytes()).map_err(invalid)?
        };
        Ok(self.cached.entry(account_id.to_owned()).or_insert(state))
    }

    /// Returns the events of these segments (of ``held_segments``) to memory.
    fn read_back(&self, py: Python<'_>, state: &mut AccountState, segments: Vec<[i64; 3]>) -> PyResult<()> {
        for segment in segments {
            if let Some(index) = state.held_segments.iter().position(|known| *known == segment) {
                state.held_segments.remove(index);
            }
            state.released_segments.push(segment[1]);
            let stored = self.stored_held.call1(py, (state.account_id.as_str(), segment[1]))?;
            state.held.extend(held_events_of(stored.downcast_bound::<PyBytes>(py)?.as_bytes()).map_err(invalid)?);
        }
        state.held.sort_by(|a, b| a.held_order().cmp(&b.held_order()));
        Ok(())
    }

    /// The timing of every state of the partition as it stands now (in memory, else stored).
    fn timings_in(&self, py: Python<'_>, partition: u32, partitions: u32) -> PyResult<Vec<Timing>> {
        let mut timings: Vec<Timing> = self.cached.values().filter(|s| account_partition(&s.account_id, partitions) == partition).map(AccountState::timing).collect();
        let stored = self.stored_timings.call1(py, (partition,))?;
        for timing in PyIterator::from_object(stored.bind(py))? {
            let timing: Timing = timing?.extract()?;
            if !self.cached.contains_key(&timing.0) {
                timings.push(timing);
            }
        }
        Ok(timings)
    }
}

#[derive(Default)]
struct Folded {
    applied: Vec<(u32, u64, u32)>, // (partition, offset, index) of the events that changed a state
    transitions: Vec<StageTransition>,
    duplicates: u64,
    replayed: u64,
}

/// Applies the event after the fall-backs due before it; appends the transitions.
fn apply_in_time(state: &mut AccountState, event: &AppliedEvent, rules: &Rules, transitions: &mut Vec<StageTransition>) -> Result<(), String> {
    let at = event.occurred_at_ms;
    if 0 < state.fallback_at_ms && state.fallback_at_ms <= at {
        fall_back_until(state, at, &rules.stages, &rules.config, transitions);
    }
    let weight = apply_event(state, event, &rules.config)?;
    let signal = note_signals(state, event, &rules.stages)?;
    if may_move_up(state, weight, signal, &rules.stages) {
        let at = state.as_of_ms.max(state.last_event_ms);
        transitions.extend(restage(state, at, &event.event_id, &rules.stages, &rules.config));
    }
    Ok(())
}

/// Applies the held events up to ``upto_ms`` in event-time order (reading back the
/// segments it reaches), then the fall-backs due by then.
fn settle(py: Python<'_>, states: &States, state: &mut AccountState, upto_ms: i64, rules: &Rules, transitions: &mut Vec<StageTransition>) -> PyResult<()> {
    let reached: Vec<[i64; 3]> = state.held_segments.iter().filter(|segment| segment[0] <= upto_ms).copied().collect();
    if !reached.is_empty() {
        states.read_back(py, state, reached)?;
    }
    let due = state.held.partition_point(|event| event.occurred_at_ms <= upto_ms);
    let applied: Vec<AppliedEvent> = state.held.drain(..due).collect();
    for event in &applied {
        apply_in_time(state, event, rules, transitions).map_err(invalid)?;
    }
    fall_back_until(state, upto_ms, &rules.stages, &rules.config, transitions);
    Ok(())
}

/// True when this raw message reached the account before; otherwise records it. ``key``
/// is scratch space: the origin's key is only allocated the first time the account sees
/// its raw partition.
fn origin_absorbed(state: &mut AccountState, key: &mut String, (topic, partition, offset): (&str, i64, i64)) -> bool {
    key.clear();
    key.push_str(topic);
    key.push('/');
    key.push_str(itoa::Buffer::new().format(partition));
    match state.origin_upto.get_mut(key.as_str()) {
        Some(upto) if offset <= *upto => true,
        Some(upto) => {
            *upto = offset;
            false
        }
        None if offset <= -1 => true,
        None => {
            state.origin_upto.insert(key.clone(), offset);
            false
        }
    }
}

#[pyclass(module = "abm_native")]
pub struct Fold {
    rules: Rules,
    partitions: u32,
    states: States,
    schedule: FallbackSchedule,
}

impl Fold {
    /// Folds one forwarded message's events (processors.accounts.fold_events), then
    /// advances its partition's watermark by them and settles what it made due.
    fn fold_message(&mut self, py: Python<'_>, partition: u32, offset: u64, message: &[u8], folded: &mut Folded) -> PyResult<()> {
        let events = events_of(message).map_err(invalid)?;
        let mut latest: Option<i64> = None;
        let mut applied_accounts: IndexSet<String> = IndexSet::new(); // noted in the order first applied
        let mut origin_key = String::new();
        for (index, mut event) in events.into_iter().enumerate() {
            let at = event.occurred_at_ms.ok_or_else(|| invalid("a forwarded event has no occurred_at_ms".to_owned()))?;
            latest = Some(latest.map_or(at, |l| l.max(at)));
            let Member::Value(account_id) = std::mem::take(&mut event.texts[ACCOUNT_ID]) else {
                return Err(invalid("a forwarded event has no account_id".to_owned()));
            };
            let state = self.states.state_for(py, &account_id)?;
            let position = (offset as i64, index as i64);
            let replayed = position <= state.applied_upto
                || match &event.origin {
                    Member::Value((topic, raw_partition, raw_offset)) => origin_absorbed(state, &mut origin_key, (topic, *raw_partition, *raw_offset)),
                    _ => false, // an event re-routed after a late resolution
                };
            if replayed {
                folded.replayed += 1;
                continue;
            }
            state.applied_upto = position;
            let event = AppliedEvent::from_event(event).map_err(invalid)?;
            if !state.recent_ids.add(event_key(&event.source, &event.event_id), at) {
                folded.duplicates += 1;
                continue;
            }
            if at > state.latest_seen_ms {
                state.latest_seen_ms = at;
            }
            let dedup = &self.rules.dedup;
            if must_prune(&state.recent_ids, state.prune_ids_at, dedup) {
                forget_old(&mut state.recent_ids, state.latest_seen_ms, dedup);
                state.prune_ids_at = next_prune_size(state.recent_ids.len());
            }
            folded.applied.push((partition, offset, index as u32));
            if !applied_accounts.contains(account_id.as_ref()) {
                applied_accounts.insert(account_id.to_string());
            }
            let max_held = self.rules.max_held;
            if max_held == 0 {
                apply_in_time(state, &event, &self.rules, &mut folded.transitions).map_err(invalid)?;
                continue;
            }
            let place = state.held.partition_point(|held| held.held_order() <= event.held_order());
            state.held.insert(place, event);
            if state.held.len() > max_held || (!state.held_segments.is_empty() && state.held_count() > max_held as i64) {
                // a burst past what an account holds: its earliest events are applied now
                let mut state = std::mem::take(state);
                let segments = state.held_segments.clone();
                let result = self.states.read_back(py, &mut state, segments).and_then(|()| {
                    let upto = state.held[state.held.len() - max_held - 1].occurred_at_ms;
                    settle(py, &self.states, &mut state, upto, &self.rules, &mut folded.transitions)
                });
                self.states.cached.insert(account_id.into_owned(), state);
                result?;
            }
        }
        for account_id in &applied_accounts {
            self.note(account_id);
        }
        if let Some(latest) = latest {
            self.schedule.advance(partition, latest);
        }
        self.settle_due(py, partition, &mut folded.transitions)
    }

    fn note(&mut self, account_id: &str) {
        let state = &self.states.cached[account_id];
        self.schedule.note(account_partition(account_id, self.partitions), account_id, state.fallback_at_ms, state.first_held_ms());
    }

    /// Settles the accounts the partition's watermark has passed, in time order
    /// (processors.watermarks.FallbackSchedule.settle_due).
    fn settle_due(&mut self, py: Python<'_>, partition: u32, transitions: &mut Vec<StageTransition>) -> PyResult<()> {
        let Some(held) = self.schedule.by_partition.get(&partition) else { return Ok(()) };
        if held.unscanned() {
            let timings = self.states.timings_in(py, partition, self.partitions)?;
            self.schedule.scan(partition, timings);
        }
        let Some(mark) = self.schedule.watermark(partition) else { return Ok(()) };
        loop {
            while let Some(account_id) = self.schedule.partition(partition).pop_due(mark) {
                let mut state = std::mem::take(self.states.state_for(py, &account_id)?);
                let result = settle(py, &self.states, &mut state, mark, &self.rules, transitions);
                self.states.cached.insert(account_id.clone(), state);
                result?;
                self.note(&account_id);
            }
            if self.schedule.partition(partition).covers(mark) {
                return Ok(());
            }
            let timings = self.states.timings_in(py, partition, self.partitions)?;
            self.schedule.scan(partition, timings);
        }
    }
}

/// processors.scoring.held_segment_key.
fn held_segment_key(account_id: &str, number: i64) -> Vec<u8> {
    let mut key = format!("\u{0}{number}:{account_id}").into_bytes();
    key[0] = 0xff;
    key
}

/// A held segment is at most this much JSON (processors.scoring.SEGMENT_MAX_BYTES).
const SEGMENT_MAX_BYTES: usize = 1024 * 1024;

/// Moves the held events in memory to new segments (AccountState.take_held_segments):
/// each segment's number and JSON.
fn take_held_segments(state: &mut AccountState) -> Vec<(i64, Vec<u8>)> {
    let held = std::mem::take(&mut state.held);
    let mut segments = Vec::new();
    within(&held, SEGMENT_MAX_BYTES, &mut |events, encoded| {
        state.held_segments.push([events[0].occurred_at_ms, state.next_segment, events.len() as i64]);
        segments.push((state.next_segment, encoded));
        state.next_segment += 1;
    });
    segments
}

/// The events as JSON arrays of at most ``max_bytes`` (a larger event goes alone), split
/// in halves as processors.chunks.json_arrays splits them.
fn within(events: &[AppliedEvent], max_bytes: usize, segment: &mut impl FnMut(&[AppliedEvent], Vec<u8>)) {
    if events.is_empty() {
        return;
    }
    let mut encoded = Vec::new();
    write_events(events, &mut encoded);
    if encoded.len() <= max_bytes || events.len() == 1 {
        segment(events, encoded);
        return;
    }
    let (first, second) = events.split_at(events.len() / 2);
    within(first, max_bytes, segment);
    within(second, max_bytes, segment);
}

/// streams.rows.account_row.
fn account_row<'py>(py: Python<'py>, state: &AccountState, now_ms: i64, config: &ScoringConfig) -> PyResult<Bound<'py, PyTuple>> {
    let as_of = state.as_of_ms.max(state.last_event_ms);
    let count = |kind: &str| state.counts.get(kind).copied().unwrap_or(0);
    let rolling = rolling_counts(state, as_of, &[7, 30, 90]);
    let mut row: Vec<Bound<'py, PyAny>> = vec![
        state.account_id.as_str().into_pyobject(py)?.into_any(),
        score_at(state, as_of, config).into_pyobject(py)?.into_any(),
        as_of.into_pyobject(py)?.into_any(),
        STAGES[state.stage].into_pyobject(py)?.into_any(),
        state.stage_since_ms.into_pyobject(py)?.into_any(),
        state.events_total.into_pyobject(py)?.into_any(),
    ];
    for kind in ["email_open", "email_click", "page_view", "webinar_signup"] {
        row.push(count(kind).into_pyobject(py)?.into_any());
    }
    row.push(engaged_contacts(state, as_of, 90 * DAY_MS).into_pyobject(py)?.into_any());
    row.push(state.first_event_ms.into_pyobject(py)?.into_any());
    row.push(state.last_event_ms.into_pyobject(py)?.into_any());
    row.push(now_ms.into_pyobject(py)?.into_any());
    row.push(state.events_total.into_pyobject(py)?.into_any());
    row.push(engaged_contacts(state, as_of, 30 * DAY_MS).into_pyobject(py)?.into_any());
    for counts in rolling {
        let dict = PyDict::new(py);
        for (kind, n) in counts {
            dict.set_item(kind, n)?;
        }
        row.push(dict.into_any());
    }
    row.push(state.stage_reason.as_str().into_pyobject(py)?.into_any());
    PyTuple::new(py, row)
}

type TransitionTuple = (String, &'static str, &'static str, i64, f64, String, String);

fn as_tuple(t: StageTransition) -> TransitionTuple {
    (t.account_id, t.from_stage, t.to_stage, t.at_ms, t.score, t.event_id, t.reason)
}

#[pymethods]
impl Fold {
    /// ``config``, ``rules``, ``dedup``: processors.scoring.ScoringConfig,
    /// processors.stages.StageRules, processors.dedup.DedupPolicy. ``load(account_id)``:
    /// the JSON of its stored state, or None; ``stored_held(account_id, number)``: the
    /// JSON of a held segment; ``stored_timings(partition)``: the timing
    /// (AccountState.timing) of every stored state of a partition.
    #[new]
    #[pyo3(signature = (config, rules, dedup, max_held, partitions, lateness_ms, capacity, load, stored_held, stored_timings))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: ScoringConfig,
        rules: StageRules,
        dedup: DedupPolicy,
        max_held: usize,
        partitions: u32,
        lateness_ms: i64,
        capacity: usize,
        load: PyObject,
        stored_held: PyObject,
        stored_timings: PyObject,
    ) -> Self {
        Fold {
            rules: Rules { config, stages: rules, dedup, max_held },
            partitions,
            states: States { cached: IndexMap::new(), changed: HashSet::new(), unwritten: HashSet::new(), releasing: HashMap::new(), load, stored_held, stored_timings },
            schedule: FallbackSchedule::new(lateness_ms, capacity),
        }
    }

    /// Folds forwarded messages, [(partition, offset, message)], in order: the positions
    /// (partition, offset, index) of the events that changed a state, the transitions
    /// (StageTransition's fields), the duplicates and the replayed events.
    #[allow(clippy::type_complexity)]
    fn fold(&mut self, py: Python<'_>, messages: Vec<(u32, u64, Bound<'_, PyBytes>)>) -> PyResult<(Vec<(u32, u64, u32)>, Vec<TransitionTuple>, u64, u64)> {
        let mut folded = Folded::default();
        for (partition, offset, message) in &messages {
            self.fold_message(py, *partition, *offset, message.as_bytes(), &mut folded)?;
        }
        Ok((folded.applied, folded.transitions.into_iter().map(as_tuple).collect(), folded.duplicates, folded.replayed))
    }

    /// Settles the accounts the watermarks have passed, in every partition: what became
    /// due before a start or a rebalance (FallbackSchedule.settle_due).
    fn settle_all(&mut self, py: Python<'_>) -> PyResult<Vec<TransitionTuple>> {
        let mut transitions = Vec::new();
        let partitions: Vec<u32> = self.schedule.by_partition.keys().copied().collect();
        for partition in partitions {
            self.settle_due(py, partition, &mut transitions)?;
        }
        Ok(transitions.into_iter().map(as_tuple).collect())
    }

    /// The rows (streams.rows.account_row) of the states changed since the last call that
    /// have an event applied; they stay unwritten until ``take_changes``.
    fn take_changed_rows<'py>(&mut self, py: Python<'py>, now_ms: i64) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let mut rows = Vec::new();
        for account_id in self.states.changed.drain() {
            let state = &self.states.cached[&account_id];
            if state.last_event_ms != 0 {
                rows.push(account_row(py, state, now_ms, &self.rules.config)?);
            }
            self.states.unwritten.insert(account_id);
        }
        Ok(rows)
    }

    /// The unwritten states as they are now, as AccountStates.take_changes gives them
    /// (partition, key, JSON or None: delete), after the written states past
    /// ``max_cached`` left memory.
    #[allow(clippy::type_complexity)]
    fn take_changes<'py>(&mut self, py: Python<'py>, max_cached: usize) -> Vec<(u32, Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>)> {
        let states = &mut self.states;
        let mut unwritten: HashSet<String> = states.unwritten.drain().collect();
        unwritten.extend(states.changed.iter().cloned());
        unwritten.extend(states.releasing.keys().cloned());
        let excess = states.cached.len().saturating_sub(max_cached);
        if excess > 0 {
            let evicted: HashSet<String> = states.cached.keys().filter(|a| !unwritten.contains(*a)).take(excess).cloned().collect();
            states.cached.retain(|account_id, _| !evicted.contains(account_id));
        }
        let mut changes = Vec::new();
        for account_id in &unwritten {
            let state = states.cached.get_mut(account_id).expect("an unwritten state stays in memory");
            let partition = account_partition(account_id, self.partitions);
            let deleted = states.releasing.remove(account_id).unwrap_or_default();
            for number in &deleted {
                changes.push((partition, PyBytes::new(py, &held_segment_key(account_id, *number)), None));
            }
            state.released_segments.retain(|number| !deleted.contains(number));
            for (number, segment) in take_held_segments(state) {
                changes.push((partition, PyBytes::new(py, &held_segment_key(account_id, number)), Some(PyBytes::new(py, &segment))));
            }
            changes.push((partition, PyBytes::new(py, account_id.as_bytes()), Some(PyBytes::new(py, &state.stored_json()))));
        }
        states.releasing = unwritten.into_iter().filter_map(|a| Some((a.clone(), states.cached[&a].released_segments.clone())).filter(|(_, r)| !r.is_empty())).collect();
        changes
    }

    /// Drops the states in memory: after a revocation the table is the truth again.
    fn forget(&mut self) {
        let states = &mut self.states;
        states.cached.clear();
        states.changed.clear();
        states.unwritten.clear();
        states.releasing.clear();
    }

    /// States in memory.
    #[getter]
    fn cached(&self) -> usize {
        self.states.cached.len()
    }

    /// Accounts changed since the last ``take_changed_rows``.
    #[getter]
    fn changed(&self) -> usize {
        self.states.changed.len()
    }

    /// Accounts changed since the last ``take_changes``.
    #[getter]
    fn unwritten(&self) -> usize {
        let states = &self.states;
        let mut all: HashSet<&String> = states.unwritten.iter().collect();
        all.extend(states.changed.iter());
        all.extend(states.releasing.keys());
        all.len()
    }

    /// Events held for the watermark in memory, and in written segments.
    fn held(&self) -> (i64, i64) {
        let in_memory: i64 = self.states.cached.values().map(|s| s.held.len() as i64).sum();
        let all: i64 = self.states.cached.values().map(AccountState::held_count).sum();
        (in_memory, all - in_memory)
    }

    /// The latest event time of the partition's messages so far; -1: none.
    fn latest(&self, partition: u32) -> i64 {
        self.schedule.by_partition.get(&partition).map_or(-1, |held| held.latest)
    }

    /// The JSON of the account's state in memory (AccountState.to_bytes, uncompressed),
    /// or None.
    fn state_json<'py>(&mut self, py: Python<'py>, account_id: &str) -> Option<Bound<'py, PyBytes>> {
        self.states.cached.get_mut(account_id).map(|state| PyBytes::new(py, &state.stored_json()))
    }

    /// The accounts whose states are in memory.
    fn cached_accounts(&self) -> Vec<String> {
        self.states.cached.keys().cloned().collect()
    }

    /// The accounts changed since the last call.
    fn take_changed(&mut self) -> Vec<String> {
        self.states.changed.drain().collect()
    }

    /// FallbackSchedule.reset.
    fn reset(&mut self, partitions: Vec<u32>, latest: HashMap<u32, i64>) {
        self.schedule.reset(&partitions, &latest);
    }

    /// The watermark of each partition that has one.
    fn watermarks(&self) -> HashMap<u32, i64> {
        self.schedule.watermarks()
    }

    /// Accounts the schedule keeps in memory.
    fn scheduled(&self) -> usize {
        self.schedule.len()
    }
}
