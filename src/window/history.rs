//! A downsampled history of one metric (one point per step, for example a
//! minute over two weeks) for the forecasters. Gaps are NaN.
//!
//! Compact and bounded, so that tens of thousands of targets fit:
//! - the newest [`FINE_POINTS`] steps (8 days at a minute) are kept at the
//!   full step, one byte each: blocks of [`BLOCK`] points quantized
//!   linearly between the block's own minimum and maximum (an error of
//!   at most 1/508 of the block's range; 255 is a gap). The block being
//!   filled stays in `f32`, so the forecaster's per-step update reads
//!   exact values;
//! - older steps, up to the span, are kept as means of [`COARSE`] steps
//!   (a quarter of an hour at a minute), in `f32`, and read back as that
//!   mean for each of their steps;
//! - the buffers grow to their bound and no further (no doubling past
//!   it): 14 days at a minute take about 13 KiB, 8 days about 12 KiB
//!   (the `VecDeque<f32>` before took 64 KiB for 8 days).

use std::collections::VecDeque;
use std::time::Duration;

use crate::clock::Millis;

/// Points per quantized block.
pub const BLOCK: usize = 64;
/// Steps kept at the full step (8 days at a minute).
pub const FINE_POINTS: usize = 8 * 1440;
/// Steps per point beyond the fine part.
pub const COARSE: usize = 15;
const GAP: u8 = 255;

/// [`BLOCK`] points quantized between the block's own minimum and
/// maximum (255 a gap).
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub min: f32,
    pub max: f32,
    pub q: [u8; BLOCK],
}

impl Block {
    fn pack(values: &[f32]) -> Block {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let (min, max) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let range = max - min;
        let mut q = [GAP; BLOCK];
        for (slot, &v) in q.iter_mut().zip(values) {
            if v.is_finite() {
                *slot = if range > 0.0 {
                    (((v - min) / range) * 254.0).round().clamp(0.0, 254.0) as u8
                } else {
                    0
                };
            }
        }
        Block { min, max, q }
    }

    fn get(&self, i: usize) -> f32 {
        match self.q[i] {
            GAP => f32::NAN,
            q => self.min + (self.max - self.min) * f32::from(q) / 254.0,
        }
    }
}

/// Grows `d` by one slot, never beyond `bound` slots and never by more
/// than doubling.
fn reserve_bounded<T>(d: &mut VecDeque<T>, bound: usize) {
    if d.len() == d.capacity() {
        let more = d.len().max(4).min(bound.saturating_sub(d.len())).max(1);
        d.reserve_exact(more);
    }
}

#[derive(Debug, Clone)]
pub struct History {
    step_ms: i64,
    /// Steps kept at most (span / step).
    capacity: usize,
    /// Steps kept at the full step: min(capacity, FINE_POINTS).
    fine_cap: usize,
    /// Counters store their sum per second over the step, others the mean.
    counter: bool,
    /// Means of COARSE steps, oldest first; the first `coarse_skip` steps
    /// of the first one have left.
    coarse: VecDeque<f32>,
    coarse_skip: usize,
    /// Steps that left the fine part and wait for a whole coarse point.
    pending: Vec<f32>,
    /// Full blocks of the fine part, oldest first; its first `skip`
    /// points have left.
    blocks: VecDeque<Block>,
    skip: usize,
    /// The block being filled, exact.
    tail: Vec<f32>,
    /// The step number after the last closed point.
    end_step: i64,
    open_step: i64,
    open_sum: f64,
    open_count: u64,
}

impl History {
    pub fn new(span: Duration, step: Duration, counter: bool) -> Self {
        let step_ms = (step.as_millis() as i64).max(1);
        let capacity = (span.as_millis() as i64 / step_ms).max(1) as usize;
        Self::empty(step_ms, capacity, counter)
    }

    fn empty(step_ms: i64, capacity: usize, counter: bool) -> Self {
        Self {
            step_ms,
            capacity,
            fine_cap: capacity.min(FINE_POINTS),
            counter,
            coarse: VecDeque::new(),
            coarse_skip: 0,
            pending: Vec::new(),
            blocks: VecDeque::new(),
            skip: 0,
            tail: Vec::new(),
            end_step: 0,
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
            self.end_step = step;
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
        self.end_step = step;
    }

    fn fine_len(&self) -> usize {
        self.blocks.len() * BLOCK - self.skip + self.tail.len()
    }

    fn coarse_len(&self) -> usize {
        self.coarse.len() * COARSE - self.coarse_skip + self.pending.len()
    }

    /// Appends one closed step.
    fn push(&mut self, v: f32) {
        if self.tail.capacity() == 0 {
            self.tail.reserve_exact(BLOCK.min(self.fine_cap + 1));
        }
        self.tail.push(v);
        if self.tail.len() == BLOCK {
            reserve_bounded(&mut self.blocks, self.fine_cap.div_ceil(BLOCK) + 1);
            self.blocks.push_back(Block::pack(&self.tail));
            self.tail.clear();
        }
        while self.fine_len() > self.fine_cap {
            let old = if let Some(b) = self.blocks.front() {
                let v = b.get(self.skip);
                self.skip += 1;
                if self.skip == BLOCK {
                    self.blocks.pop_front();
                    self.skip = 0;
                }
                v
            } else {
                // a history shorter than a block: the tail is all of it
                self.tail.remove(0)
            };
            if self.capacity > self.fine_cap {
                self.pending.push(old);
                if self.pending.len() == COARSE {
                    let finite: Vec<f32> = self
                        .pending
                        .iter()
                        .copied()
                        .filter(|v| v.is_finite())
                        .collect();
                    let mean = if finite.is_empty() {
                        f32::NAN
                    } else {
                        finite.iter().sum::<f32>() / finite.len() as f32
                    };
                    let bound = (self.capacity - self.fine_cap).div_ceil(COARSE) + 1;
                    reserve_bounded(&mut self.coarse, bound);
                    self.coarse.push_back(mean);
                    self.pending.clear();
                }
            }
        }
        // beyond the span: the oldest steps leave
        while self.len() > self.capacity && !self.coarse.is_empty() {
            self.coarse_skip += 1;
            if self.coarse_skip == COARSE {
                self.coarse.pop_front();
                self.coarse_skip = 0;
            }
        }
    }

    /// [`History::push`] of each of `points` (at most the capacity) into
    /// an empty history, a block at a time: a restart imports days of
    /// points for each of tens of thousands of targets, and a point at a
    /// time it spent about 12 ns a point. The same blocks, the same
    /// quantized values leaving for the coarse part, the same means.
    fn push_all(&mut self, points: &[f32]) {
        // a fine part shorter than a block moves points out of the block
        // being filled: that only by push
        if self.fine_cap < BLOCK || !self.is_empty() || !self.tail.is_empty() {
            for &v in points {
                self.push(v);
            }
            return;
        }
        let points = &points[points.len().saturating_sub(self.capacity)..];
        let full = points.len() / BLOCK;
        let leaving = points.len().saturating_sub(self.fine_cap);
        // the blocks that stay, and the points of those that leave
        let gone = leaving / BLOCK;
        self.blocks = VecDeque::with_capacity(full - gone);
        let mut left: Vec<f32> = Vec::with_capacity(leaving);
        for (k, chunk) in points.chunks_exact(BLOCK).enumerate() {
            let block = Block::pack(chunk);
            let from = k * BLOCK;
            if from < leaving {
                let n = (leaving - from).min(BLOCK);
                left.extend((0..n).map(|i| block.get(i)));
            }
            if k >= gone {
                self.blocks.push_back(block);
            }
        }
        self.skip = leaving % BLOCK;
        let rest = &points[full * BLOCK..];
        if !rest.is_empty() {
            self.tail.reserve_exact(BLOCK.min(self.fine_cap + 1));
            self.tail.extend_from_slice(rest);
        }
        // what left the fine part: means of COARSE steps, the rest pending
        if self.capacity > self.fine_cap {
            let whole = left.len() / COARSE;
            self.coarse = VecDeque::with_capacity(whole);
            for chunk in left.chunks_exact(COARSE) {
                let finite: Vec<f32> = chunk.iter().copied().filter(|v| v.is_finite()).collect();
                self.coarse.push_back(if finite.is_empty() {
                    f32::NAN
                } else {
                    finite.iter().sum::<f32>() / finite.len() as f32
                });
            }
            self.pending.extend_from_slice(&left[whole * COARSE..]);
        }
    }

    /// The point `i` steps after the first one.
    fn get(&self, i: usize) -> f32 {
        let c = self.coarse.len() * COARSE - self.coarse_skip;
        if i < c {
            return self.coarse[(i + self.coarse_skip) / COARSE];
        }
        let i = i - c;
        if i < self.pending.len() {
            return self.pending[i];
        }
        let i = i - self.pending.len() + self.skip;
        let full = self.blocks.len() * BLOCK;
        if i < full {
            self.blocks[i / BLOCK].get(i % BLOCK)
        } else {
            self.tail[i - full]
        }
    }

    fn first_step(&self) -> i64 {
        self.end_step - self.len() as i64
    }

    /// Closed points, oldest first, and the start time of the first one.
    pub fn points(&self) -> (Millis, impl Iterator<Item = f32> + '_) {
        (
            self.first_step() * self.step_ms,
            (0..self.len()).map(|i| self.get(i)),
        )
    }

    pub fn len(&self) -> usize {
        self.coarse_len() + self.fine_len()
    }

    /// The step number (time / step) of the next point to close; points
    /// before it are in [`History::since`].
    pub fn next_step(&self) -> i64 {
        self.end_step
    }

    /// Closed points from step number `step` on (older ones are gone), with
    /// their step numbers.
    pub fn since(&self, step: i64) -> impl Iterator<Item = (i64, f32)> + '_ {
        let first = self.first_step();
        let len = self.len();
        let skip = step.saturating_sub(first).clamp(0, len as i64) as usize;
        (skip..len).map(move |i| (first + i as i64, self.get(i)))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The closed point of step number `step`; NaN for a gap or a step
    /// not kept (gone, or not closed yet).
    pub fn at(&self, step: i64) -> f32 {
        let first = self.first_step();
        if step < first || step >= self.end_step {
            return f32::NAN;
        }
        self.get((step - first) as usize)
    }

    /// `out[k]` = [`History::at`]`(step + k)` for every `k`, a block of
    /// the fine part at a time rather than a lookup a point.
    pub fn read_into(&self, step: i64, out: &mut [f32]) {
        let first = self.first_step();
        let (len, n) = (self.len(), out.len());
        // before the first point kept
        let mut k = (first - step).clamp(0, n as i64) as usize;
        out[..k].fill(f32::NAN);
        let mut i = (step + k as i64 - first).max(0) as usize;
        let coarse = self.coarse.len() * COARSE - self.coarse_skip;
        let before_fine = coarse + self.pending.len();
        let full = self.blocks.len() * BLOCK;
        // the points of `src` from `from` on, as many as fit from out[k]
        let copy = |out: &mut [f32], k: usize, src: &[f32], from: usize| {
            let take = (src.len() - from).min(out.len() - k);
            out[k..k + take].copy_from_slice(&src[from..from + take]);
            take
        };
        while k < n && i < len {
            let take = if i < coarse {
                // a coarse point, for each of its steps asked
                let at = i + self.coarse_skip;
                let take = (COARSE - at % COARSE).min(coarse - i).min(n - k);
                out[k..k + take].fill(self.coarse[at / COARSE]);
                take
            } else if i < before_fine {
                copy(out, k, &self.pending, i - coarse)
            } else {
                // the fine part: the blocks, then the tail
                let j = i - before_fine + self.skip;
                if j < full {
                    let (block, from) = (&self.blocks[j / BLOCK], j % BLOCK);
                    let take = (BLOCK - from).min(n - k);
                    for (o, slot) in out[k..k + take].iter_mut().enumerate() {
                        *slot = block.get(from + o);
                    }
                    take
                } else {
                    copy(out, k, &self.tail, j - full)
                }
            };
            (k, i) = (k + take, i + take);
        }
        // after the last closed point
        out[k..].fill(f32::NAN);
    }

    /// Heap bytes held, for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        self.coarse.capacity() * std::mem::size_of::<f32>()
            + self.pending.capacity() * std::mem::size_of::<f32>()
            + self.blocks.capacity() * std::mem::size_of::<Block>()
            + self.tail.capacity() * std::mem::size_of::<f32>()
    }

    /// The closed points, for a state snapshot (the open step is left out:
    /// a Kafka source re-reads its messages, and elsewhere it is at most
    /// one step of data): the history's own parts, so that an import is a
    /// copy, bit for bit, and not a quantization of every point again.
    pub fn export(&self) -> HistoryState {
        HistoryState {
            step_ms: self.step_ms,
            first_step: self.first_step(),
            closed: Closed::Packed(Packed {
                capacity: self.capacity,
                coarse: self.coarse.iter().copied().collect(),
                coarse_skip: self.coarse_skip,
                pending: self.pending.clone(),
                blocks: self.blocks.iter().cloned().collect(),
                skip: self.skip,
                tail: self.tail.clone(),
            }),
        }
    }

    /// A history of the parts `p` (checked) holds, its steps kept at most
    /// `capacity`: the parts as they are when `capacity` is the writer's.
    fn from_packed(
        step_ms: i64,
        first_step: i64,
        p: &Packed,
        capacity: usize,
        counter: bool,
    ) -> Self {
        let mut h = History::empty(step_ms, capacity, counter);
        // grown a block at a time from here (`reserve_bounded`)
        h.blocks = p.blocks.iter().cloned().collect();
        h.skip = p.skip;
        h.coarse = p.coarse.iter().copied().collect();
        h.coarse_skip = p.coarse_skip;
        h.pending = p.pending.clone();
        if !p.tail.is_empty() {
            h.tail
                .reserve_exact(BLOCK.min(h.fine_cap + 1).max(p.tail.len()));
            h.tail.extend_from_slice(&p.tail);
        }
        h.closed_after(first_step, p.len());
        h
    }

    /// Its closed steps are the `len` from `first_step` on; the step after
    /// them opens (none while there are none).
    fn closed_after(&mut self, first_step: i64, len: usize) {
        self.end_step = first_step.saturating_add(len as i64);
        self.open_step = if len == 0 { i64::MIN } else { self.end_step };
    }

    /// Replaces the closed points with a snapshot's, keeping the newest
    /// that fit; the step after them opens. Refused (false, nothing
    /// changed) when the snapshot's step is not this history's, or its
    /// parts are not a history's.
    pub fn import(&mut self, s: &HistoryState) -> bool {
        if s.step_ms != self.step_ms {
            return false;
        }
        let fresh = match &s.closed {
            Closed::Packed(p) if p.check().is_err() => return false,
            // the same span (and layout): the parts as they are
            Closed::Packed(p) if p.capacity == self.capacity && p.fine_len() <= self.fine_cap => {
                History::from_packed(self.step_ms, s.first_step, p, self.capacity, self.counter)
            }
            closed => {
                let points = match closed {
                    Closed::Points(v) => std::borrow::Cow::Borrowed(&v[..]),
                    Closed::Packed(_) => std::borrow::Cow::Owned(s.points()),
                };
                let mut fresh = History::empty(self.step_ms, self.capacity, self.counter);
                let skip = points.len().saturating_sub(self.capacity);
                fresh.push_all(&points[skip..]);
                fresh.closed_after(s.first_step, points.len());
                fresh
            }
        };
        *self = fresh;
        true
    }
}

/// What a state snapshot keeps of a [`History`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryState {
    pub step_ms: i64,
    /// The step number (time / step) of the first point.
    pub first_step: i64,
    pub closed: Closed,
}

/// A history's closed points, in either form a snapshot has held.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// Every point at the full step, coarse ones repeated (snapshot
    /// format 1).
    Points(Vec<f32>),
    /// The history's own parts (format 2).
    Packed(Packed),
}

/// A [`History`]'s parts, as it holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    /// Steps the writer kept at most (its span / step).
    pub capacity: usize,
    /// Means of [`COARSE`] steps; the first `coarse_skip` steps have left.
    pub coarse: Vec<f32>,
    pub coarse_skip: usize,
    /// Steps waiting for a whole coarse point.
    pub pending: Vec<f32>,
    /// The fine part's full blocks; the first `skip` points have left.
    pub blocks: Vec<Block>,
    pub skip: usize,
    /// The block being filled, exact.
    pub tail: Vec<f32>,
}

impl Packed {
    fn fine_len(&self) -> usize {
        (self.blocks.len() * BLOCK + self.tail.len()).saturating_sub(self.skip)
    }

    /// Closed steps held.
    pub fn len(&self) -> usize {
        (self.coarse.len() * COARSE).saturating_sub(self.coarse_skip)
            + self.pending.len()
            + self.fine_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why these parts are not a history's, if they are not (a damaged
    /// snapshot): a history never holds them, and reading them could
    /// index past its buffers.
    pub fn check(&self) -> Result<(), String> {
        let bad = |what: String| Err(format!("history parts: {what}"));
        if self.capacity == 0 {
            return bad("a capacity of 0 steps".into());
        }
        if self.skip >= BLOCK || (self.skip > 0 && self.blocks.is_empty()) {
            return bad(format!(
                "{} points left of {} blocks",
                self.skip,
                self.blocks.len()
            ));
        }
        if self.coarse_skip >= COARSE || (self.coarse_skip > 0 && self.coarse.is_empty()) {
            return bad(format!(
                "{} steps left of {} coarse points",
                self.coarse_skip,
                self.coarse.len()
            ));
        }
        if self.pending.len() >= COARSE {
            return bad(format!(
                "{} steps pending, a coarse point is {COARSE}",
                self.pending.len()
            ));
        }
        if self.tail.len() >= BLOCK {
            return bad(format!(
                "a block being filled of {} points, a block is {BLOCK}",
                self.tail.len()
            ));
        }
        Ok(())
    }
}

impl HistoryState {
    /// Closed steps held.
    pub fn len(&self) -> usize {
        match &self.closed {
            Closed::Points(v) => v.len(),
            Closed::Packed(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every closed point at the full step, oldest first (coarse points
    /// repeated for each of their steps); none for parts that are not a
    /// history's.
    pub fn points(&self) -> Vec<f32> {
        match &self.closed {
            Closed::Points(v) => v.clone(),
            Closed::Packed(p) if p.check().is_err() => Vec::new(),
            Closed::Packed(p) => {
                let h = History::from_packed(self.step_ms, self.first_step, p, p.capacity, false);
                let points = h.points().1.collect();
                points
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An import packs a block at a time ([`History::push_all`]) and gives
    /// what pushing each point gives: the same points read back (the
    /// quantized blocks, the coarse means, the pending steps), at every
    /// length around a block, the fine part's bound and the capacity, with
    /// gaps, and for a history shorter than a block (pushed).
    #[test]
    fn an_import_a_block_at_a_time_is_a_push_of_each_point() {
        let series: Vec<f32> = (0..26_000)
            .map(|i| {
                if i % 37 == 0 || (5000..5090).contains(&i) {
                    f32::NAN
                } else {
                    (i as f32 * 0.01).sin() * 100.0 + i as f32 * 0.1
                }
            })
            .collect();
        let minute = Duration::from_secs(60);
        for days in [14u64, 8, 2] {
            let span = Duration::from_secs(days * 86_400);
            for n in [
                0, 1, 63, 64, 65, 1000, 11_519, 11_520, 11_521, 11_527, 11_727, 20_159, 20_160,
                20_161, 26_000,
            ] {
                let state = HistoryState {
                    step_ms: 60_000,
                    first_step: 1_000,
                    closed: Closed::Points(series[..n].to_vec()),
                };
                let mut imported = History::new(span, minute, false);
                assert!(imported.import(&state));
                let mut pushed = History::new(span, minute, false);
                for &v in &series[n.saturating_sub(pushed.capacity)..n] {
                    pushed.push(v);
                }
                let bits = |h: &History| -> Vec<u32> { h.points().1.map(f32::to_bits).collect() };
                assert_eq!(imported.len(), pushed.len(), "{days} days, {n} points");
                assert_eq!(bits(&imported), bits(&pushed), "{days} days, {n} points");
                assert_eq!(imported.export().len(), n.min(pushed.capacity));
            }
        }
        // shorter than a block: pushed, as before
        let span = Duration::from_secs(3600);
        let mut imported = History::new(span, minute, false);
        let state = HistoryState {
            step_ms: 60_000,
            first_step: 0,
            closed: Closed::Points(series[..100].to_vec()),
        };
        assert!(imported.import(&state));
        assert_eq!(
            imported.points().1.map(f32::to_bits).collect::<Vec<_>>(),
            series[40..100]
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        );
    }

    /// A range read a block at a time is each point read alone: across
    /// the coarse part (a run of steps a point, also where the oldest
    /// point has lost some of its steps), the pending steps, the blocks
    /// and the tail, with gaps, and before the first point and after the
    /// last.
    #[test]
    fn a_range_read_is_each_point_read() {
        for pushed in [19_000, 20_160 + 7] {
            let mut h = History::new(
                Duration::from_secs(14 * 86_400),
                Duration::from_secs(60),
                false,
            );
            for i in 0..pushed {
                let v = if i % 41 == 0 {
                    f32::NAN
                } else {
                    (i as f32 * 0.01).sin() * 50.0 + 100.0
                };
                h.push(v);
            }
            assert!(!h.coarse.is_empty() && !h.tail.is_empty());
            if pushed == 19_000 {
                assert!(!h.pending.is_empty());
            } else {
                assert!(h.coarse_skip > 0, "the oldest coarse point has lost steps");
            }
            let (first, end) = (h.first_step(), h.next_step());
            for (from, n) in [
                (first - 100, 300),
                (first, 1),
                (first + 5, 40),
                (first + 7_000, 2_000),
                (end - 500, 700),
                (end - 1, 1),
                (end, 5),
                (first + 3, 0),
            ] {
                let mut out = vec![0.0; n];
                h.read_into(from, &mut out);
                let each: Vec<u32> = (0..n as i64).map(|k| h.at(from + k).to_bits()).collect();
                let read: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                assert_eq!(read, each, "{pushed} pushed, from {from}, {n} points");
            }
        }
    }

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
        assert_eq!(s.len(), 7, "the open step is not in it");
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

    /// An export is the history's own parts: an import into the same span
    /// is the same history, bit for bit (not quantized again); a shorter
    /// span takes the newest points that fit, within the quantization
    /// error; parts no history holds are refused, never read.
    #[test]
    fn an_export_is_the_parts_and_an_import_of_them_the_same_history() {
        let minute = Duration::from_secs(60);
        let bits = |h: &History| -> Vec<u32> { h.points().1.map(f32::to_bits).collect() };
        for n in [0, 1, 63, 64, 100, 11_520, 11_600, 20_160, 25_000] {
            let (h, _) = fill(14, n);
            let e = h.export();
            let Closed::Packed(p) = &e.closed else {
                panic!("{n} points: not exported as parts");
            };
            assert_eq!((p.len(), e.len()), (h.len(), h.len()), "{n} points");
            let mut back = History::new(Duration::from_secs(14 * 86_400), minute, false);
            assert!(back.import(&e), "{n} points");
            assert_eq!(bits(&back), bits(&h), "{n} points");
            assert_eq!(back.next_step(), h.next_step(), "{n} points");
            // the same parts: it goes on as the original would
            assert_eq!(
                format!("{:?}", back.export()),
                format!("{e:?}"),
                "{n} points"
            );
            assert_eq!(
                e.points().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                bits(&h)
            );
            // two days: the newest points, within a block's quantization
            let mut short = History::new(Duration::from_secs(2 * 86_400), minute, false);
            assert!(short.import(&e));
            assert_eq!(short.len(), h.len().min(2 * 1440), "{n} points");
            assert_eq!(short.next_step(), h.next_step());
            let newest: Vec<f32> = h.points().1.skip(h.len() - short.len()).collect();
            for (a, b) in short.points().1.zip(newest) {
                assert!(a.is_nan() == b.is_nan(), "{n} points: {a} against {b}");
                assert!(
                    a.is_nan() || (a - b).abs() <= 0.6,
                    "{n} points: {a} against {b}"
                );
            }
        }
        let (h, _) = fill(14, 12_000);
        let good = h.export();
        let Closed::Packed(p) = &good.closed else {
            panic!("not exported as parts");
        };
        let damaged = [
            Packed {
                capacity: 0,
                ..p.clone()
            },
            Packed {
                skip: BLOCK,
                ..p.clone()
            },
            Packed {
                skip: 1,
                blocks: Vec::new(),
                ..p.clone()
            },
            Packed {
                coarse_skip: COARSE,
                ..p.clone()
            },
            Packed {
                coarse_skip: 1,
                coarse: Vec::new(),
                ..p.clone()
            },
            Packed {
                pending: vec![1.0; COARSE],
                ..p.clone()
            },
            Packed {
                tail: vec![1.0; BLOCK],
                ..p.clone()
            },
        ];
        for d in damaged {
            let why = d.check().expect_err("damaged parts pass the check");
            assert!(why.starts_with("history parts:"), "{why}");
            let s = HistoryState {
                closed: Closed::Packed(d),
                ..good.clone()
            };
            let mut into = History::new(Duration::from_secs(14 * 86_400), minute, false);
            into.record(0, 5.0);
            into.record(60_000, 5.0);
            assert!(!into.import(&s), "{why}");
            assert_eq!(into.len(), 1, "{why}: the history it had is kept");
            assert!(s.points().is_empty(), "{why}");
        }
    }

    /// A load-like series: a daily wave, minute noise, a gap.
    fn series(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                if (5000..5030).contains(&i) {
                    return f32::NAN;
                }
                let day = (i as f32 / 1440.0 * std::f32::consts::TAU).sin();
                100.0 + 60.0 * day + ((i * 7919) % 13) as f32
            })
            .collect()
    }

    fn fill(span_days: u64, n: usize) -> (History, Vec<f32>) {
        let mut h = History::new(
            Duration::from_secs(span_days * 86_400),
            Duration::from_secs(60),
            false,
        );
        let xs = series(n);
        for (i, &v) in xs.iter().enumerate() {
            if v.is_finite() {
                h.record(i as i64 * 60_000, f64::from(v));
            }
        }
        h.record(n as i64 * 60_000, 0.0); // closes the last step
        (h, xs)
    }

    /// The budget of issue 21: at most 16 KiB per metric for 8 days at a
    /// minute, and for the two-week default too (the VecDeque<f32> this
    /// replaced held 64 KiB for 8 days).
    #[test]
    fn eight_days_and_two_weeks_at_a_minute_fit_in_16_kib() {
        for days in [8u64, 14] {
            let (h, _) = fill(days, days as usize * 1440 + 777);
            assert_eq!(h.len(), days as usize * 1440, "{days} days");
            let bytes = h.heap_bytes();
            assert!(bytes <= 16 * 1024, "{days} days: {bytes} bytes");
        }
        // well past the span, still bounded
        let (h, _) = fill(14, 30 * 1440);
        assert!(h.heap_bytes() <= 16 * 1024, "{}", h.heap_bytes());
    }

    /// The newest 8 days read back within 1/508 of their block's range
    /// (an hour here), gaps as gaps; older steps as their quarter-hour's
    /// mean; step numbers line up with `since`.
    #[test]
    fn points_read_back_within_the_quantization_error() {
        let n = 12 * 1440 + 5;
        let (h, xs) = fill(14, n);
        let (start, pts) = h.points();
        let pts: Vec<f32> = pts.collect();
        assert_eq!(pts.len(), n);
        assert_eq!(start, 0);
        let fine_from = n - FINE_POINTS;
        for (i, (&got, &want)) in pts.iter().zip(&xs).enumerate().skip(fine_from) {
            if want.is_nan() {
                assert!(got.is_nan(), "step {i}: {got}");
            } else {
                // the range of a block of this series is at most about 60
                assert!(
                    (got - want).abs() <= 80.0 / 508.0,
                    "step {i}: {got} vs {want}"
                );
            }
        }
        // the coarse part: means of whole quarter-hours (the gap's NaNs
        // left out) of the quantized points
        let coarse_len = fine_from / COARSE * COARSE;
        for i in (0..coarse_len).step_by(COARSE) {
            let chunk: Vec<f32> = xs[i..i + COARSE]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            let mean = chunk.iter().sum::<f32>() / chunk.len() as f32;
            for (k, got) in pts[i..i + COARSE].iter().enumerate() {
                if chunk.is_empty() {
                    assert!(got.is_nan(), "step {}: a whole gap reads as a gap", i + k);
                    continue;
                }
                assert!(
                    (got - mean).abs() <= 80.0 / 508.0,
                    "step {}: {got} vs {mean}",
                    i + k
                );
            }
        }
        let tail: Vec<(i64, f32)> = h.since(n as i64 - 3).collect();
        assert_eq!(tail.len(), 3);
        assert_eq!(tail[0].0, n as i64 - 3);
        assert_eq!(tail[2].1, pts[n - 1]);
        // a round trip through a snapshot keeps every point
        let mut back = History::new(
            Duration::from_secs(14 * 86_400),
            Duration::from_secs(60),
            false,
        );
        assert!(back.import(&h.export()));
        let again: Vec<f32> = back.points().1.collect();
        assert_eq!(again.len(), n);
        for (a, b) in again.iter().zip(&pts) {
            assert!(a == b || (a - b).abs() <= 80.0 / 508.0 || (a.is_nan() && b.is_nan()));
        }
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
