//! Event time per partition, and the accounts due as it passes: the fall-back schedule
//! as processors.watermarks.FallbackSchedule defines it (the definition, with the reasons).

use indexmap::IndexMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// (due time, account): accounts of equal due times are ordered by id.
type Entry = (i64, String);
const EVERYTHING: i64 = i64::MAX; // horizon of a partition whose due accounts are all kept
const UNSCANNED: i64 = i64::MIN; // horizon of a partition not scanned yet: it keeps nothing

pub(crate) struct PartitionSchedule {
    horizon: Entry,
    pub(crate) latest: i64, // latest event time of its messages; -1: none yet
    latest_from_states: bool,
    queue: BinaryHeap<Reverse<Entry>>, // entries whose due time changed since are stale
    due: HashMap<String, i64>,
}

impl PartitionSchedule {
    fn new(horizon: i64, latest: i64, latest_from_states: bool) -> Self {
        PartitionSchedule { horizon: (horizon, String::new()), latest, latest_from_states, queue: BinaryHeap::new(), due: HashMap::new() }
    }

    pub(crate) fn unscanned(&self) -> bool {
        self.horizon.0 == UNSCANNED
    }

    /// The earliest entry due by ``mark`` that still stands, taken off the schedule.
    pub(crate) fn pop_due(&mut self, mark: i64) -> Option<String> {
        while let Some(Reverse((at, _))) = self.queue.peek() {
            if *at > mark {
                return None;
            }
            let Reverse((at, account_id)) = self.queue.pop().expect("peeked");
            if self.due.get(&account_id) == Some(&at) {
                self.due.remove(&account_id);
                return Some(account_id);
            }
        }
        None
    }

    /// Whether the horizon is past ``mark`` (else accounts beyond it may be due).
    pub(crate) fn covers(&self, mark: i64) -> bool {
        self.horizon.0 > mark
    }
}

pub(crate) struct FallbackSchedule {
    lateness_ms: i64,
    capacity: usize,
    slack: usize,
    pub(crate) by_partition: IndexMap<u32, PartitionSchedule>, // in the order reset names them, as the Python dict
}

/// When an account must next be settled: its earliest held event or its fall-back,
/// whichever comes first; 0 = never.
pub(crate) fn due(fallback_at_ms: i64, first_held_ms: i64) -> i64 {
    if first_held_ms != 0 && (fallback_at_ms == 0 || first_held_ms < fallback_at_ms) {
        first_held_ms
    } else {
        fallback_at_ms
    }
}

impl FallbackSchedule {
    pub(crate) fn new(lateness_ms: i64, capacity: usize) -> Self {
        FallbackSchedule { lateness_ms, capacity: capacity.max(1), slack: (capacity / 4).max(1), by_partition: IndexMap::new() }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_partition.values().map(|p| p.due.len()).sum()
    }

    /// Forgets everything; the next settling scans these partitions' states. A partition
    /// missing from ``latest`` takes the latest of its stored states.
    pub(crate) fn reset(&mut self, partitions: &[u32], latest: &HashMap<u32, i64>) {
        self.by_partition = partitions.iter().map(|p| (*p, PartitionSchedule::new(UNSCANNED, latest.get(p).copied().unwrap_or(-1), !latest.contains_key(p)))).collect();
    }

    pub(crate) fn watermark(&self, partition: u32) -> Option<i64> {
        self.by_partition.get(&partition).filter(|held| held.latest >= 0).map(|held| held.latest - self.lateness_ms)
    }

    pub(crate) fn watermarks(&self) -> HashMap<u32, i64> {
        self.by_partition.iter().filter(|(_, held)| held.latest >= 0).map(|(p, held)| (*p, held.latest - self.lateness_ms)).collect()
    }

    pub(crate) fn partition(&mut self, partition: u32) -> &mut PartitionSchedule {
        // a partition never reset and never noted holds no states yet: nothing lies beyond
        self.by_partition.entry(partition).or_insert_with(|| PartitionSchedule::new(EVERYTHING, -1, false))
    }

    pub(crate) fn advance(&mut self, partition: u32, event_ms: i64) {
        let held = self.partition(partition);
        held.latest = held.latest.max(event_ms);
    }

    /// Takes in when the account is due next.
    pub(crate) fn note(&mut self, partition: u32, account_id: &str, fallback_at_ms: i64, first_held_ms: i64) {
        let capacity = self.capacity;
        let slack = self.slack;
        let held = self.partition(partition);
        let at = due(fallback_at_ms, first_held_ms);
        if held.due.get(account_id).copied().unwrap_or(0) == at {
            return;
        }
        if at == 0 || (at, account_id) > (held.horizon.0, held.horizon.1.as_str()) {
            held.due.remove(account_id); // found again by a scan when its time comes
            return;
        }
        held.due.insert(account_id.to_owned(), at);
        held.queue.push(Reverse((at, account_id.to_owned())));
        if held.due.len() > capacity + slack {
            let entries: Vec<Entry> = held.due.iter().map(|(account, when)| (*when, account.clone())).collect();
            keep_nearest(held, entries, capacity);
        } else if held.queue.len() > 64 && held.queue.len() > 2 * held.due.len() {
            held.queue = held.due.iter().map(|(account, when)| Reverse((*when, account.clone()))).collect();
        }
    }

    /// Keeps the nearest of the partition's states' timings: (account, fall-back, first
    /// held, latest seen); the partition's latest event time follows them while it comes
    /// from the states.
    pub(crate) fn scan(&mut self, partition: u32, timings: impl IntoIterator<Item = (String, i64, i64, i64)>) {
        let capacity = self.capacity;
        let held = self.partition(partition);
        let mut entries = Vec::new();
        for (account_id, fallback_at_ms, first_held_ms, latest_seen_ms) in timings {
            if held.latest_from_states {
                held.latest = held.latest.max(latest_seen_ms);
            }
            let at = due(fallback_at_ms, first_held_ms);
            if at != 0 {
                entries.push((at, account_id));
            }
        }
        keep_nearest(held, entries, capacity);
        held.latest_from_states = false;
    }
}

/// Keeps the ``capacity`` nearest entries (all when they are no more); the horizon moves
/// to the last one kept.
fn keep_nearest(held: &mut PartitionSchedule, mut entries: Vec<Entry>, capacity: usize) {
    entries.sort_unstable();
    if entries.len() > capacity {
        entries.truncate(capacity);
        held.horizon = entries.last().expect("capacity >= 1").clone();
    } else {
        held.horizon = (EVERYTHING, String::new());
    }
    held.due = entries.iter().map(|(at, account)| (account.clone(), *at)).collect();
    held.queue = entries.into_iter().map(Reverse).collect();
}
