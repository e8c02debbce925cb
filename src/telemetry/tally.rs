//! The series every policy call moves, counted by the engine shard that
//! makes the call and added to the shared series once a slice.
//!
//! With `summary` and `none` these series have no target label, so both
//! shards move the same few: a `with_label_values` lookup takes the
//! vector's lock and clones the series (two shared atomics), and the
//! increment is a third, per series and per call. On 2 cores with two
//! shards each call then waits for cache lines the other shard wrote a
//! few microseconds before (0.4 to 1.2 µs a call against 80 ns from one
//! thread, with both calling without pause: `scripts/bench-scale tally`). A shard counts here instead, in plain
//! integers of its own, and [`Tally::flush`] adds them at the end of each
//! slice and each batch of signal-driven calls. With `full` every call
//! goes to its target's series as before.

use prometheus::local::LocalHistogram;
use prometheus::IntCounterVec;

use super::{Metrics, PerTarget};
use crate::guard::{Decision, Direction, HoldReason};

/// One shard's uncounted policy calls and decisions (see the module's text).
#[derive(Default)]
pub struct Tally {
    /// The `target=""` series of the call's time, made at the first call
    /// counted here (with `full` it never is: that detail has no such
    /// series). Its sample count is the calls not yet added.
    seconds: Option<LocalHistogram>,
    /// By [`Direction`], in the order of [`Direction::ALL`].
    decisions: [u64; Direction::ALL.len()],
    /// By [`HoldReason`], in the order of [`HoldReason::ALL`].
    holds: [u64; HoldReason::ALL.len()],
}

impl Tally {
    pub fn new() -> Self {
        Self::default()
    }

    /// One policy call of `target` took `seconds`.
    pub fn policy_evaluated(&mut self, metrics: &Metrics, target: &str, seconds: f64) {
        if metrics.per_target() == PerTarget::Full {
            metrics.policy_evaluated(target, seconds);
        } else {
            self.seconds
                .get_or_insert_with(|| metrics.policy_seconds.with_label_values(&[""]).local())
                .observe(seconds);
        }
    }

    /// The guard decided `d` for `target`: counted here, logged (and the
    /// desired replicas set) at once.
    pub fn decided(&mut self, metrics: &Metrics, target: &str, d: &Decision) {
        if metrics.per_target() == PerTarget::Full {
            metrics.decided(target, d);
            return;
        }
        self.decisions[d.direction as usize] += 1;
        if let Some(h) = d.held {
            self.holds[h as usize] += 1;
        }
        metrics.note_decision(target, d);
    }

    /// Adds what was counted since the last flush to the shared series.
    pub fn flush(&mut self, metrics: &Metrics) {
        if let Some(h) = &self.seconds {
            let calls = h.get_sample_count();
            if calls > 0 {
                metrics
                    .policy_evaluations
                    .with_label_values(&[""])
                    .inc_by(calls);
                h.flush();
            }
        }
        add(
            &metrics.decisions,
            Direction::ALL.map(Direction::code),
            &mut self.decisions,
        );
        add(
            &metrics.decision_holds,
            HoldReason::ALL.map(HoldReason::code),
            &mut self.holds,
        );
    }
}

/// Adds `counts` to the `target=""` series of `series` whose second label
/// is the code at the same place, and zeroes them.
fn add<const N: usize>(series: &IntCounterVec, codes: [&str; N], counts: &mut [u64; N]) {
    for (code, n) in codes.iter().zip(counts) {
        if *n > 0 {
            series.with_label_values(&["", code]).inc_by(*n);
            *n = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Direction;

    fn decision(direction: Direction, held: Option<HoldReason>) -> Decision {
        Decision {
            current: 2,
            desired: if direction == Direction::Up { 3 } else { 2 },
            direction,
            held,
            dry_run: false,
            reason: String::new(),
        }
    }

    /// Two shards' tallies add up in the one series `summary` has, and
    /// only once flushed; with `full` a call is its target's at once.
    #[test]
    fn the_shards_tallies_add_up_when_flushed() {
        let m = Metrics::new();
        m.set_per_target(PerTarget::Summary);
        let (mut a, mut b) = (Tally::new(), Tally::new());
        // no series before a call: a shard made is not a call counted
        assert!(!m.render().contains("tidewatch_policy_evaluation_seconds"));
        for i in 0..5 {
            let t = if i < 3 { &mut a } else { &mut b };
            t.policy_evaluated(&m, "web", 0.001 * i as f64);
            let held = (i % 2 == 0).then_some(HoldReason::Tolerance);
            let dir = if held.is_some() {
                Direction::Hold
            } else {
                Direction::Up
            };
            t.decided(&m, "web", &decision(dir, held));
        }
        let count = "tidewatch_policy_evaluations_total{target=\"\"}";
        assert!(!m.render().contains(count), "counted before a flush");
        a.flush(&m);
        assert!(m.render().contains(&format!("{count} 3")), "{}", m.render());
        b.flush(&m);
        b.flush(&m);
        let text = m.render();
        for want in [
            format!("{count} 5"),
            "tidewatch_policy_evaluation_seconds_count{target=\"\"} 5".into(),
            // 0 + 1 + 2 + 3 + 4 ms
            "tidewatch_policy_evaluation_seconds_sum{target=\"\"} 0.01".into(),
            "tidewatch_decisions_total{direction=\"hold\",target=\"\"} 3".into(),
            "tidewatch_decisions_total{direction=\"up\",target=\"\"} 2".into(),
            "tidewatch_decision_holds_total{reason=\"tolerance\",target=\"\"} 3".into(),
            // a move's desired count is set at once, not at the flush
            "tidewatch_target_desired_replicas{target=\"web\"} 3".into(),
        ] {
            assert!(text.contains(&want), "no {want}\n{text}");
        }
        assert!(!text.contains("target=\"web\"} 5"));

        let m = Metrics::new();
        m.set_per_target(PerTarget::Full);
        let mut t = Tally::new();
        t.policy_evaluated(&m, "web", 0.001);
        t.decided(
            &m,
            "web",
            &decision(Direction::Hold, Some(HoldReason::Stale)),
        );
        let text = m.render();
        for want in [
            "tidewatch_policy_evaluations_total{target=\"web\"} 1",
            "tidewatch_decision_holds_total{reason=\"stale\",target=\"web\"} 1",
        ] {
            assert!(text.contains(want), "full: no {want}\n{text}");
        }
        t.flush(&m);
        assert!(
            !m.render().contains("target=\"\""),
            "full has a target=\"\" series"
        );
    }

    #[test]
    fn every_hold_reason_and_direction_has_its_own_place() {
        for (i, h) in HoldReason::ALL.iter().enumerate() {
            assert_eq!(*h as usize, i, "{h:?}");
        }
        for (i, d) in Direction::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i, "{d:?}");
        }
    }
}
