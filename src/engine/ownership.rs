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
    /// Partitions held back (paused) until the restore after their
    /// assignment chooses where their replay starts.
    held: Vec<Held>,
    /// The group gave this scaler an assignment (perhaps empty).
    joined: bool,
    /// Each subscribed topic's partition count, as read at the latest
    /// assignment (empty: unknown).
    totals: HashMap<String, usize>,
    /// The topic whose partitions home the targets only probes feed
    /// ([`Ownership::home`]).
    home_topic: Option<String>,
}

/// A partition held back after its assignment ([`Ownership::take_held`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub topic: String,
    pub partition: i32,
    /// Where the replay starts for the windows alone (None: the
    /// consumer's own reset position).
    pub start: Option<i64>,
    /// Where the previous owner stopped, or the end of the partition at
    /// assignment (i64::MIN: unknown).
    pub live_from: i64,
    pub epoch: u64,
}

pub type SharedOwnership = Arc<Mutex<Ownership>>;

impl Ownership {
    /// `live_from`: no evaluation for this partition's targets before its
    /// messages up to there are applied. `committed`: where a previous
    /// owner stopped; messages below it were already handled by it.
    /// `start`: where its replay starts; a partition with nothing to
    /// replay (`start` at or after `live_from`) is live at once. Under
    /// [`Ownership::wait_for_state`] the partition is also held back.
    pub fn assign(
        &mut self,
        topic: &str,
        partition: i32,
        start: Option<i64>,
        live_from: i64,
        committed: Option<i64>,
    ) {
        self.epoch += 1;
        let done_before = committed.unwrap_or(i64::MIN);
        let raw_live_from = live_from;
        let live_from = if start.is_some_and(|s| s >= live_from) {
            i64::MIN
        } else {
            live_from
        };
        self.assigned.insert(
            (topic.to_owned(), partition),
            (live_from, done_before, self.epoch),
        );
        self.processed.remove(&(topic.to_owned(), partition));
        self.held
            .retain(|h| (h.topic.as_str(), h.partition) != (topic, partition));
        if self.needs_state {
            self.held.push(Held {
                topic: topic.to_owned(),
                partition,
                start,
                live_from: raw_live_from,
                epoch: self.epoch,
            });
        }
    }

    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.assigned.remove(&(topic.to_owned(), partition));
        self.processed.remove(&(topic.to_owned(), partition));
        self.held
            .retain(|h| (h.topic.as_str(), h.partition) != (topic, partition));
    }

    /// The held-back partitions assigned up to `epoch`, to be released.
    pub fn take_held(&mut self, epoch: u64) -> Vec<Held> {
        let (out, keep) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.epoch <= epoch);
        self.held = keep;
        out
    }

    /// A held-back partition's replay starts earlier (at a snapshot's
    /// time): it goes live at `live_from` at the latest, and messages
    /// before that point are not decided on.
    pub fn replay_from(&mut self, topic: &str, partition: i32, live_from: i64) {
        if let Some(e) = self.assigned.get_mut(&(topic.to_owned(), partition)) {
            e.0 = e.0.max(live_from);
        }
    }

    /// The group gave this scaler an assignment, perhaps of nothing.
    pub fn joined(&mut self) {
        self.joined = true;
    }

    /// Each subscribed topic's partition count (`None`: one could not be
    /// read, so whether this scaler owns them all is unknown).
    pub fn partition_counts(&mut self, totals: Option<HashMap<String, usize>>) {
        self.totals = totals.unwrap_or_default();
    }

    /// The topic whose partitions home the targets that only probes feed:
    /// the first subscribed one (the same on every scaler of a group).
    pub fn home_topic(&mut self, topic: &str) {
        self.home_topic = Some(topic.to_owned());
    }

    /// The partition a target with no partition of its own (a target only
    /// probes feed) belongs to: the one of the home topic that a Java
    /// producer, or librdkafka's `murmur2` partitioner, puts a message
    /// keyed by the target's name on. Every scaler of a group computes the
    /// same, so one of them decides for the target, and the target moves
    /// (its state written before, restored after) with that partition.
    /// None while the topic's partition count is unknown.
    pub fn home(&self, target: &str) -> Option<(String, i32)> {
        let topic = self.home_topic.as_ref()?;
        let n = *self.totals.get(topic)?;
        if n == 0 {
            return None;
        }
        let p = (murmur2(target.as_bytes()) & 0x7fff_ffff) as usize % n;
        Some((topic.clone(), p as i32))
    }

    /// Whether the home partition of `target` ([`Ownership::home`]) is
    /// here, restored and caught up.
    pub fn home_live(&self, target: &str) -> bool {
        self.home(target).is_some_and(|k| self.live(&k).is_some())
    }

    /// Whether every partition of every subscribed topic is assigned
    /// here, restored and caught up: then every target's signals come
    /// here. False while the counts are unknown.
    pub fn owns_every_partition(&self) -> bool {
        !self.totals.is_empty()
            && self.ready()
            && self.totals.iter().all(|(topic, &n)| {
                n > 0 && self.assigned.keys().filter(|(t, _)| t == topic).count() == n
            })
    }

    /// Assigned at least once, restored, and every assigned partition
    /// caught up: what `/readyz` reports for a Kafka source.
    pub fn ready(&self) -> bool {
        self.joined
            && (!self.needs_state || self.restored_through >= self.epoch)
            && self.assigned.keys().all(|k| self.live(k).is_some())
    }

    /// A message its previous owner already handled (dead-lettered,
    /// committed): re-read only to rebuild windows.
    pub fn is_replay(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.assigned
            .get(&(topic.to_owned(), partition))
            .is_some_and(|(_, done_before, _)| offset < *done_before)
    }

    pub(crate) fn processed(&mut self, key: &(String, i32), offset: i64) {
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

/// Kafka's murmur2 (the Java client's `Utils.murmur2`, librdkafka's
/// `rd_murmur2`): seed 0x9747b28c, four bytes at a time, little-endian.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Java client's own cases (`UtilsTest.testMurmur2`) and
    /// librdkafka's (`rdmurmur2.c`'s unit test: "kafka").
    #[test]
    fn murmur2_is_kafkas() {
        for (key, want) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
            ("kafka", -798_503_068),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, want, "{key}");
        }
    }

    #[test]
    fn a_probe_fed_target_is_homed_on_one_partition_and_decided_where_it_is_live() {
        let mut o = Ownership::default();
        o.wait_for_state();
        o.joined();
        assert_eq!(o.home("web"), None, "no home topic");
        o.home_topic("s");
        assert_eq!(o.home("web"), None, "its partition count unknown");
        o.partition_counts(Some(HashMap::from([("s".to_owned(), 3)])));
        // toPositive(murmur2("web")) % 3, as a Java producer keys it
        let p = ((murmur2(b"web") & 0x7fff_ffff) % 3) as i32;
        assert_eq!(o.home("web"), Some(("s".to_owned(), p)));
        assert!(!o.home_live("web"), "not assigned here");
        o.assign("s", p, None, i64::MIN, None);
        assert!(!o.home_live("web"), "assigned, not restored");
        o.restored(o.epoch());
        assert!(o.home_live("web"));
        // the names spread over the partitions
        let homes: std::collections::HashSet<i32> = (0..30)
            .filter_map(|i| o.home(&format!("t{i}")).map(|(_, p)| p))
            .collect();
        assert_eq!(homes.len(), 3, "{homes:?}");
    }

    #[test]
    fn ready_only_when_joined_restored_and_caught_up() {
        let mut o = Ownership::default();
        o.wait_for_state();
        assert!(!o.ready(), "not before the group answered");
        o.joined();
        assert!(o.ready(), "an empty assignment is ready");
        o.assign("s", 0, Some(10), 20, Some(20));
        let key = ("s".to_owned(), 0);
        assert!(!o.ready(), "not restored");
        o.restored(o.epoch());
        assert!(!o.ready(), "restored, replay not caught up");
        o.processed(&key, 18);
        assert!(!o.ready());
        o.processed(&key, 19);
        assert!(o.ready(), "caught up to where the previous owner stopped");
    }

    #[test]
    fn every_partition_is_owned_only_with_the_counts_known_all_assigned_and_live() {
        let mut o = Ownership::default();
        o.wait_for_state();
        o.joined();
        o.assign("s", 0, None, i64::MIN, None);
        o.assign("s", 1, None, i64::MIN, None);
        o.restored(o.epoch());
        assert!(o.ready());
        assert!(!o.owns_every_partition(), "the counts are unknown");
        o.partition_counts(None);
        assert!(!o.owns_every_partition(), "a count could not be read");
        o.partition_counts(Some(HashMap::from([("s".to_owned(), 3)])));
        assert!(!o.owns_every_partition(), "two of three");
        o.partition_counts(Some(HashMap::from([("s".to_owned(), 2)])));
        assert!(o.owns_every_partition());
        // another subscribed topic, none of it here
        o.partition_counts(Some(HashMap::from([
            ("s".to_owned(), 2),
            ("t".to_owned(), 1),
        ])));
        assert!(!o.owns_every_partition(), "none of t");
        o.partition_counts(Some(HashMap::from([("s".to_owned(), 2)])));
        o.assign("s", 2, Some(0), 5, Some(5));
        o.partition_counts(Some(HashMap::from([("s".to_owned(), 3)])));
        assert!(!o.owns_every_partition(), "a partition not restored");
        o.restored(o.epoch());
        assert!(!o.owns_every_partition(), "a partition not caught up");
        o.processed(&("s".to_owned(), 2), 4);
        assert!(o.owns_every_partition());
        o.revoke("s", 0);
        assert!(!o.owns_every_partition(), "revoked");
    }

    #[test]
    fn nothing_to_replay_is_live_at_once_and_held_partitions_are_released_by_epoch() {
        let mut o = Ownership::default();
        o.wait_for_state();
        o.joined();
        // the previous owner stopped at the end of what is there
        o.assign("s", 0, Some(7), 7, Some(7));
        let first = o.epoch();
        o.assign("s", 1, None, i64::MIN, None);
        o.restored(o.epoch());
        assert!(o.ready());
        let held = o.take_held(first);
        assert_eq!(held.len(), 1);
        assert_eq!(
            (held[0].partition, held[0].start, held[0].live_from),
            (0, Some(7), 7)
        );
        o.revoke("s", 1);
        assert!(
            o.take_held(u64::MAX).is_empty(),
            "a revoked partition is not released"
        );
    }

    #[test]
    fn a_longer_replay_moves_where_the_partition_goes_live() {
        let mut o = Ownership::default();
        o.wait_for_state();
        o.joined();
        o.assign("s", 0, None, i64::MIN, None);
        o.restored(o.epoch());
        assert!(o.ready());
        // replayed from a snapshot's time: nothing decided before the end
        o.replay_from("s", 0, 50);
        assert!(!o.ready());
        o.processed(&("s".to_owned(), 0), 49);
        assert!(o.ready());
    }
}
