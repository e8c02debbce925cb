//! Which RabbitMQ slot queues this scaler is the active consumer of
//! (`source.amqp.slots`): each target belongs to one slot by the hash of
//! its name, and only the scaler that RabbitMQ delivers that slot's
//! messages to decides for its targets.

use std::sync::atomic::{AtomicBool, Ordering};

/// Shared by the AMQP source (which learns from deliveries) and the engine
/// (which decides only for targets in slots it holds).
#[derive(Debug)]
pub struct Slots {
    held: Vec<AtomicBool>,
    /// With a state store: whether each held slot's targets have their
    /// snapshots back (a slot is live only then).
    restored: Vec<AtomicBool>,
    needs_state: AtomicBool,
}

impl Slots {
    /// `count` slots, none held.
    pub fn new(count: u16) -> Self {
        let flags = || (0..count.max(1)).map(|_| AtomicBool::new(false)).collect();
        Self {
            held: flags(),
            restored: flags(),
            needs_state: AtomicBool::new(false),
        }
    }

    /// From now on a slot that is gained is live only once its targets'
    /// snapshots are restored ([`Slots::restored`]): the scaler that had
    /// it wrote what its targets learned.
    pub fn wait_for_state(&self) {
        self.needs_state.store(true, Ordering::Release);
    }

    /// The snapshots of `slot`'s targets are restored: it is live.
    pub fn restored(&self, slot: u16) {
        if let Some(r) = self.restored.get(usize::from(slot)) {
            r.store(true, Ordering::Release);
        }
    }

    /// Whether this scaler decides (and writes the state) for `target`
    /// now: its slot is held and, with a state store, restored.
    pub fn live_target(&self, target: &str) -> bool {
        let k = self.slot_of(target);
        self.holds(k)
            && (!self.needs_state.load(Ordering::Acquire)
                || self
                    .restored
                    .get(usize::from(k))
                    .is_some_and(|r| r.load(Ordering::Acquire)))
    }

    pub fn count(&self) -> u16 {
        self.held.len() as u16
    }

    /// The slot of a target: FNV-1a (32 bits) of its name, modulo the
    /// number of slots. Stable across versions and machines: every scaler
    /// must agree on it.
    pub fn slot_of(&self, target: &str) -> u16 {
        slot_of(target, self.count())
    }

    /// A delivery came from `slot`: RabbitMQ made this scaler its single
    /// active consumer. True when that is news.
    pub fn gained(&self, slot: u16) -> bool {
        let Some(h) = self.held.get(usize::from(slot)) else {
            return false;
        };
        let news = !h.swap(true, Ordering::AcqRel);
        if news {
            self.restored[usize::from(slot)].store(false, Ordering::Release);
        }
        news
    }

    /// This scaler hands `slot` on (cancels its consumer of it).
    pub fn release(&self, slot: u16) {
        if let Some(h) = self.held.get(usize::from(slot)) {
            h.store(false, Ordering::Release);
        }
    }

    /// The connection or channel is gone, and with it every consumer:
    /// another scaler is (or will be) active now.
    pub fn lost_all(&self) {
        for h in &self.held {
            h.store(false, Ordering::Release);
        }
    }

    pub fn holds(&self, slot: u16) -> bool {
        self.held
            .get(usize::from(slot))
            .is_some_and(|h| h.load(Ordering::Acquire))
    }

    pub fn held_count(&self) -> usize {
        self.held
            .iter()
            .filter(|h| h.load(Ordering::Acquire))
            .count()
    }
}

/// FNV-1a, 32 bits, of `name`, modulo `slots` (at least 1).
pub fn slot_of(name: &str, slots: u16) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % u32::from(slots.max(1))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_fnv1a_of_the_name_and_spread() {
        // FNV-1a 32 reference values: "" = 0x811c9dc5, "a" = 0xe40c292c
        assert_eq!(slot_of("", 1 << 15), (0x811c_9dc5u32 % (1 << 15)) as u16);
        assert_eq!(slot_of("a", 1000), (0xe40c_292cu32 % 1000) as u16);
        let mut per = [0u32; 8];
        for i in 0..8000 {
            per[usize::from(slot_of(&format!("t{i}"), 8))] += 1;
        }
        assert!(per.iter().all(|&n| (800..1200).contains(&n)), "{per:?}");
        assert_eq!(slot_of("anything", 0), 0);
    }

    #[test]
    fn held_until_lost() {
        let s = Slots::new(4);
        let t = (0..100)
            .map(|i| format!("t{i}"))
            .find(|n| s.slot_of(n) == 2)
            .unwrap();
        assert!(!s.live_target(&t));
        assert!(s.gained(2));
        assert!(!s.gained(2), "not news the second time");
        assert!(!s.gained(9), "no such slot");
        assert!(s.live_target(&t));
        assert_eq!(s.held_count(), 1);
        s.release(2);
        assert!(!s.live_target(&t));
        assert!(s.gained(2), "gained again after a release");
        s.gained(0);
        s.lost_all();
        assert!(!s.live_target(&t));
        assert_eq!(s.held_count(), 0);
    }

    #[test]
    fn with_a_state_store_a_gained_slot_is_live_once_restored() {
        let s = Slots::new(4);
        s.wait_for_state();
        let t = (0..100)
            .map(|i| format!("t{i}"))
            .find(|n| s.slot_of(n) == 1)
            .unwrap();
        assert!(s.gained(1));
        assert!(s.holds(1) && !s.live_target(&t), "held, not restored yet");
        s.restored(1);
        assert!(s.live_target(&t));
        // handed on and gained again: restored again first
        s.release(1);
        assert!(s.gained(1));
        assert!(!s.live_target(&t));
        s.restored(1);
        assert!(s.live_target(&t));
    }
}
