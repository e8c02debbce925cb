//! Which Kafka partitions this scaler owns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which partitions this scaler owns, shared by the Kafka source (which
/// learns of assignments) and the engine (which evaluates only targets on
/// owned partitions that have caught up with their previous owner).
#[derive(Debug, Default)]
pub struct Ownership {
    /// Assigned partitions: (the offset from which the partition is live,
    /// the previous owner's committed offset, an assignment counter).
    assigned: HashMap<(String, i32), (i64, i64, u64)>,
    /// The highest offset applied per partition.
    processed: HashMap<(String, i32), i64>,
    epoch: u64,
    /// Targets take their state from a store after an assignment: no
    /// partition is live before the restore that followed its assignment.
    needs_state: bool,
    restored_through: u64,
}

pub type SharedOwnership = Arc<Mutex<Ownership>>;

impl Ownership {
    /// `live_from`: no evaluation for this partition's targets before its
    /// messages up to there are applied. `committed`: where a previous
    /// owner stopped; messages below it were already handled by it.
    pub fn assign(&mut self, topic: &str, partition: i32, live_from: i64, committed: Option<i64>) {
        self.epoch += 1;
        let done_before = committed.unwrap_or(i64::MIN);
        self.assigned.insert(
            (topic.to_owned(), partition),
            (live_from, done_before, self.epoch),
        );
        self.processed.remove(&(topic.to_owned(), partition));
    }

    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.assigned.remove(&(topic.to_owned(), partition));
        self.processed.remove(&(topic.to_owned(), partition));
    }

    /// A message its previous owner already handled (dead-lettered,
    /// committed): re-read only to rebuild windows.
    pub fn is_replay(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.assigned
            .get(&(topic.to_owned(), partition))
            .is_some_and(|(_, done_before, _)| offset < *done_before)
    }

    pub(super) fn processed(&mut self, key: &(String, i32), offset: i64) {
        let e = self.processed.entry(key.clone()).or_insert(offset);
        *e = (*e).max(offset);
    }

    /// Owned, restored and caught up.
    pub(super) fn live(&self, key: &(String, i32)) -> Option<u64> {
        let (live_from, _, epoch) = self.assigned.get(key)?;
        if self.needs_state && *epoch > self.restored_through {
            return None;
        }
        let done = self.processed.get(key).map_or(i64::MIN, |o| o + 1);
        (done >= *live_from).then_some(*epoch)
    }

    /// From now on a partition goes live only once the state restore that
    /// followed its assignment is done ([`Ownership::restored`]).
    pub fn wait_for_state(&mut self) {
        self.needs_state = true;
    }

    /// The latest assignment.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The state of every assignment up to `epoch` is restored.
    pub fn restored(&mut self, epoch: u64) {
        self.restored_through = self.restored_through.max(epoch);
    }

    pub fn assigned_count(&self) -> usize {
        self.assigned.len()
    }

    pub(super) fn epoch_of(&self, key: &(String, i32)) -> Option<u64> {
        self.assigned.get(key).map(|(_, _, e)| *e)
    }
}
