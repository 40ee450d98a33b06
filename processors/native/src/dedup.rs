//! De-duplication by (source, event id) over an event-time horizon, as processors.dedup
//! defines it: the same digests, the same pruning, the same bytes in a state.

use pyo3::FromPyObject;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::collections::HashMap;

const MIN_PRUNE_SIZE: usize = 1024;
const MIN_MERGE_SIZE: usize = 256;

/// processors.dedup.DedupPolicy.
#[derive(Clone, Copy, FromPyObject)]
pub(crate) struct DedupPolicy {
    pub(crate) horizon_ms: i64,
    pub(crate) max_ids: usize,
}

/// processors.dedup.event_key: blake2b-64 of "source\x1fevent id", big-endian.
pub(crate) fn event_key(source: &str, event_id: &str) -> u64 {
    let mut state = blake2b_simd::Params::new().hash_length(8).to_state();
    state.update(source.as_bytes()).update(b"\x1f").update(event_id.as_bytes());
    u64::from_be_bytes(state.finalize().as_bytes().try_into().expect("8 bytes"))
}

/// processors.dedup.RecentIds: sorted arrays of the ids merged, and those added since.
#[derive(Default)]
pub(crate) struct RecentIds {
    keys: Vec<u64>,
    times: Vec<i64>,
    added: HashMap<u64, i64>,
}

impl RecentIds {
    /// From ids and times in any order (the last time of an id repeated wins).
    pub(crate) fn from_pairs(pairs: impl IntoIterator<Item = (u64, i64)>) -> Self {
        let mut by_key: HashMap<u64, i64> = HashMap::new();
        by_key.extend(pairs);
        let mut items: Vec<(u64, i64)> = by_key.into_iter().collect();
        items.sort_unstable();
        RecentIds { keys: items.iter().map(|(k, _)| *k).collect(), times: items.iter().map(|(_, t)| *t).collect(), added: HashMap::new() }
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len() + self.added.len()
    }

    fn merged_has(&self, key: u64) -> bool {
        self.keys.binary_search(&key).is_ok()
    }

    /// Records the key; false when it was there already (its time is kept).
    pub(crate) fn add(&mut self, key: u64, occurred_at_ms: i64) -> bool {
        if self.added.contains_key(&key) || self.merged_has(key) {
            return false;
        }
        self.added.insert(key, occurred_at_ms);
        if self.added.len() > MIN_MERGE_SIZE.max(self.keys.len() / 8) {
            self.merge();
        }
        true
    }

    /// Drops the ids older than ``older_than_ms``; then, over ``max_ids``, the oldest down
    /// to seven eighths of it (at equal times, the smaller ids first).
    pub(crate) fn forget(&mut self, older_than_ms: i64, max_ids: usize) {
        self.merge();
        let mut kept: Vec<usize> = (0..self.times.len()).filter(|&i| self.times[i] >= older_than_ms).collect();
        if kept.len() > max_ids {
            let excess = kept.len() - (max_ids - max_ids / 8);
            kept.sort_by_key(|&i| self.times[i]); // stable: by id at equal times
            kept.drain(..excess);
            kept.sort_unstable();
        }
        if kept.len() < self.times.len() {
            self.keys = kept.iter().map(|&i| self.keys[i]).collect();
            self.times = kept.iter().map(|&i| self.times[i]).collect();
        }
    }

    fn merge(&mut self) {
        if self.added.is_empty() {
            return;
        }
        let mut added: Vec<(u64, i64)> = self.added.drain().collect();
        added.sort_unstable();
        let mut keys = Vec::with_capacity(self.keys.len() + added.len());
        let mut times = Vec::with_capacity(keys.capacity());
        let mut start = 0;
        for (key, at) in added {
            let index = start + self.keys[start..].partition_point(|k| *k < key);
            keys.extend_from_slice(&self.keys[start..index]);
            times.extend_from_slice(&self.times[start..index]);
            keys.push(key);
            times.push(at);
            start = index;
        }
        keys.extend_from_slice(&self.keys[start..]);
        times.extend_from_slice(&self.times[start..]);
        self.keys = keys;
        self.times = times;
    }

    /// As a state stores them: base64 of the ids then the times, little-endian 64-bit.
    pub(crate) fn packed(&mut self) -> String {
        self.merge();
        let mut raw = Vec::with_capacity(16 * self.keys.len());
        for key in &self.keys {
            raw.extend_from_slice(&key.to_le_bytes());
        }
        for at in &self.times {
            raw.extend_from_slice(&at.to_le_bytes());
        }
        STANDARD.encode(raw)
    }

    pub(crate) fn unpacked(packed: &str) -> Result<Self, String> {
        let raw = STANDARD.decode(packed).map_err(|e| format!("recent_ids is not base64: {e}"))?;
        if raw.len() % 16 != 0 {
            return Err(format!("recent_ids holds {} bytes, not pairs of 64-bit ids and times", raw.len()));
        }
        let (keys, times) = raw.split_at(raw.len() / 2);
        let keys: Vec<u64> = keys.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
        let times: Vec<i64> = times.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
        if keys.windows(2).all(|pair| pair[0] <= pair[1]) {
            return Ok(RecentIds { keys, times, added: HashMap::new() });
        }
        Ok(RecentIds::from_pairs(keys.into_iter().zip(times)))
    }
}

/// processors.dedup.next_prune_size: prune again once the ids doubled.
pub(crate) fn next_prune_size(size_after_prune: usize) -> usize {
    MIN_PRUNE_SIZE.max(2 * size_after_prune)
}

/// processors.dedup.must_prune.
pub(crate) fn must_prune(recent: &RecentIds, prune_at: usize, policy: &DedupPolicy) -> bool {
    recent.len() > prune_at || recent.len() > policy.max_ids
}

/// processors.dedup.forget_old.
pub(crate) fn forget_old(recent: &mut RecentIds, newest_ms: i64, policy: &DedupPolicy) {
    recent.forget(newest_ms - policy.horizon_ms, policy.max_ids);
}
