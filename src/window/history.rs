//! A downsampled history of one metric (one point per step, for example a
//! minute over several days) for the forecasters. Gaps are NaN.

use std::collections::VecDeque;
use std::time::Duration;

use crate::clock::Millis;

#[derive(Debug, Clone)]
pub struct History {
    step_ms: i64,
    capacity: usize,
    /// Counters store their sum per second over the step, others the mean.
    counter: bool,
    /// Closed steps, oldest first; `points[i]` is step `first_step + i`.
    points: VecDeque<f32>,
    first_step: i64,
    open_step: i64,
    open_sum: f64,
    open_count: u64,
}

impl History {
    pub fn new(span: Duration, step: Duration, counter: bool) -> Self {
        let step_ms = (step.as_millis() as i64).max(1);
        Self {
            step_ms,
            capacity: (span.as_millis() as i64 / step_ms).max(1) as usize,
            counter,
            points: VecDeque::new(),
            first_step: 0,
            open_step: i64::MIN,
            open_sum: 0.0,
            open_count: 0,
        }
    }

    pub fn step_ms(&self) -> i64 {
        self.step_ms
    }

    pub fn record(&mut self, ts: Millis, v: f64) {
        let step = ts.div_euclid(self.step_ms);
        if self.open_step == i64::MIN {
            self.open_step = step;
            self.first_step = step;
        }
        if step < self.open_step {
            return; // its step is closed; the history is approximate by design
        }
        if step > self.open_step {
            self.close_until(step);
        }
        self.open_sum += v;
        self.open_count += 1;
    }

    fn close_until(&mut self, step: i64) {
        let value = if self.counter {
            self.open_sum * 1000.0 / self.step_ms as f64
        } else if self.open_count == 0 {
            // opened by an import and never reached: a gap, not a zero
            f64::NAN
        } else {
            self.open_sum / self.open_count as f64
        };
        self.push(value as f32);
        // Steps with no data at all; at most a full history of them.
        let gaps = (step - self.open_step - 1).min(self.capacity as i64);
        for _ in 0..gaps {
            self.push(if self.counter { 0.0 } else { f32::NAN });
        }
        self.open_step = step;
        self.open_sum = 0.0;
        self.open_count = 0;
        self.first_step = step - self.points.len() as i64;
    }

    fn push(&mut self, v: f32) {
        if self.points.len() == self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(v);
    }

    /// Closed points, oldest first, and the start time of the first one.
    pub fn points(&self) -> (Millis, impl Iterator<Item = f32> + '_) {
        (self.first_step * self.step_ms, self.points.iter().copied())
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// The step number (time / step) of the next point to close; points
    /// before it are in [`History::since`].
    pub fn next_step(&self) -> i64 {
        self.first_step + self.points.len() as i64
    }

    /// Closed points from step number `step` on (older ones are gone), with
    /// their step numbers.
    pub fn since(&self, step: i64) -> impl Iterator<Item = (i64, f32)> + '_ {
        let skip = step
            .saturating_sub(self.first_step)
            .clamp(0, self.points.len() as i64) as usize;
        self.points
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, v)| (self.first_step + i as i64, *v))
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The closed points, for a state snapshot (the open step is left out:
    /// a Kafka source re-reads its messages, and elsewhere it is at most
    /// one step of data).
    pub fn export(&self) -> HistoryState {
        HistoryState {
            step_ms: self.step_ms,
            first_step: self.first_step,
            points: self.points.iter().copied().collect(),
        }
    }

    /// Replaces the closed points with a snapshot's, keeping the newest
    /// that fit; the step after them opens. Refused (false, nothing
    /// changed) when the snapshot's step is not this history's.
    pub fn import(&mut self, s: &HistoryState) -> bool {
        if s.step_ms != self.step_ms {
            return false;
        }
        let skip = s.points.len().saturating_sub(self.capacity);
        self.points = s.points[skip..].iter().copied().collect();
        self.first_step = s.first_step + skip as i64;
        self.open_step = if s.points.is_empty() {
            i64::MIN
        } else {
            self.next_step()
        };
        self.open_sum = 0.0;
        self.open_count = 0;
        true
    }
}

/// What a state snapshot keeps of a [`History`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryState {
    pub step_ms: i64,
    /// The step number (time / step) of the first point.
    pub first_step: i64,
    pub points: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsamples_to_means_with_gaps_and_bounded_length() {
        let mut h = History::new(Duration::from_secs(300), Duration::from_secs(60), false);
        let t0: i64 = 1_764_000_000_000; // a whole minute
        h.record(t0, 1.0);
        h.record(t0 + 30_000, 3.0);
        h.record(t0 + 60_000, 10.0);
        h.record(t0 + 10_000, 99.0); // late: its step is closed
        h.record(t0 + 180_000, 5.0); // closes step 1, one gap
        let (start, pts) = h.points();
        let pts: Vec<f32> = pts.collect();
        assert_eq!(start, t0);
        assert_eq!(pts.len(), 3);
        assert_eq!(&pts[..2], &[2.0, 10.0]);
        assert!(pts[2].is_nan());
        for i in 4..100 {
            h.record(t0 + i * 60_000, i as f64);
        }
        assert_eq!(h.len(), 5, "capacity is span / step");
        let (start, pts) = h.points();
        assert_eq!(pts.last(), Some(98.0));
        assert_eq!(start, t0 + 94 * 60_000);
    }

    #[test]
    fn export_and_import_keep_closed_points_and_refuse_another_step() {
        let mut h = History::new(Duration::from_secs(600), Duration::from_secs(60), false);
        for i in 0..8 {
            h.record(i * 60_000, i as f64);
        }
        let s = h.export();
        assert_eq!(s.points.len(), 7, "the open step is not in it");
        let mut small = History::new(Duration::from_secs(300), Duration::from_secs(60), false);
        assert!(small.import(&s));
        let (start, pts) = small.points();
        assert_eq!(pts.collect::<Vec<_>>(), vec![2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(start, 2 * 60_000);
        // the next record goes into the step after the last point
        small.record(7 * 60_000 + 5, 70.0);
        small.record(8 * 60_000, 0.0);
        assert_eq!(small.points().1.last(), Some(70.0));
        let mut other = History::new(Duration::from_secs(600), Duration::from_secs(30), false);
        assert!(!other.import(&s));
        assert!(other.is_empty());
    }

    #[test]
    fn a_step_opened_by_an_import_and_never_reached_is_a_gap_not_a_zero() {
        let mut h = History::new(Duration::from_secs(600), Duration::from_secs(60), false);
        for i in 0..4 {
            h.record(i * 60_000, 10.0);
        }
        let mut restored = History::new(Duration::from_secs(600), Duration::from_secs(60), false);
        assert!(restored.import(&h.export()));
        // the signals of step 3 are lost with the process; step 5's arrive
        restored.record(5 * 60_000, 20.0);
        restored.record(6 * 60_000, 20.0);
        let pts: Vec<f32> = restored.points().1.collect();
        assert_eq!(pts.len(), 6);
        assert!(pts[3].is_nan() && pts[4].is_nan(), "{pts:?}");
        assert_eq!(pts[5], 20.0);
    }

    #[test]
    fn counters_store_rate_per_second() {
        let mut h = History::new(Duration::from_secs(600), Duration::from_secs(60), true);
        for i in 0..60 {
            h.record(i * 1000, 2.0);
        }
        h.record(60_000, 0.0);
        let (_, mut pts) = h.points();
        assert_eq!(pts.next(), Some(2.0));
    }
}
