//! Sliding time windows per target and metric, in bounded memory: each
//! window is a ring of `BUCKETS` time buckets keyed by event time, so late
//! events land where they belong and memory never grows with the rate.

mod history;
pub mod sketch;

pub use history::{Block, Closed, History, HistoryState, Packed, BLOCK};

use std::time::Duration;

use crate::clock::Millis;
use crate::event::{GatewayLatency, Metric, QueueDepth, Reason, Rejection};
use crate::prefetch;
use sketch::Sketch;

/// Buckets per window: a window of span S slides in steps of S / BUCKETS.
pub const BUCKETS: usize = 10;
/// Distinct queues a target may sum before more are refused.
pub const MAX_QUEUES: usize = 1024;

/// What `ctx.window(metric, span)` returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowStats {
    pub count: u64,
    pub sum: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    /// p50, p90, p95, p99; `None` for counters.
    pub quantiles: Option<[f64; 4]>,
    /// Per second: observations for gauges and samples, the summed value for counters.
    pub rate: f64,
    /// Least-squares trend of the values, per second.
    pub slope: f64,
}

pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.95, 0.99];

/// The statistics a rule outside a policy can name (`ctx.window`'s fields).
pub const STAT_NAMES: [&str; 12] = [
    "count", "sum", "mean", "min", "max", "last", "p50", "p90", "p95", "p99", "rate", "slope",
];

/// Where p50 to p99 stand in [`STAT_NAMES`].
pub const QUANTILE_STATS: std::ops::Range<usize> = 6..10;

impl WindowStats {
    /// The statistic called `name` ([`STAT_NAMES`]); None for an unknown
    /// name or a quantile of a counter.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.at(STAT_NAMES.iter().position(|n| *n == name)?)
    }

    /// The statistic [`STAT_NAMES`]\[`i`\]; None past the names or for a
    /// quantile not computed (a counter's).
    pub fn at(&self, i: usize) -> Option<f64> {
        let q = |i: usize| self.quantiles.map(|q| q[i]);
        match i {
            0 => Some(self.count as f64),
            1 => Some(self.sum),
            2 => Some(self.mean),
            3 => Some(self.min),
            4 => Some(self.max),
            5 => Some(self.last),
            i if QUANTILE_STATS.contains(&i) => q(i - QUANTILE_STATS.start),
            10 => Some(self.rate),
            11 => Some(self.slope),
            _ => None,
        }
    }
}

/// A window's rate: per second, the summed value of a counter, the
/// observations of anything else.
fn rate_of(counter: bool, n: f64, sum: f64, per_s: f64) -> f64 {
    if counter {
        sum * per_s
    } else {
        n * per_s
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last_ts: Millis,
    last: f64,
    // Sums over (dt, v), dt seconds from the bucket start, for the slope.
    sdt: f64,
    sdt2: f64,
    sdtv: f64,
    sketch: Option<Sketch>,
}

impl Bucket {
    fn new(with_sketch: bool) -> Self {
        Self {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last_ts: Millis::MIN,
            last: 0.0,
            sdt: 0.0,
            sdt2: 0.0,
            sdtv: 0.0,
            sketch: with_sketch.then(Sketch::default),
        }
    }

    fn reset(&mut self) {
        self.count = 0;
        self.sum = 0.0;
        self.min = f64::INFINITY;
        self.max = f64::NEG_INFINITY;
        self.last_ts = Millis::MIN;
        self.sdt = 0.0;
        self.sdt2 = 0.0;
        self.sdtv = 0.0;
        if let Some(s) = &mut self.sketch {
            s.clear();
        }
    }

    #[inline]
    fn add(&mut self, dt: f64, ts: Millis, v: f64, key: Option<i32>) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if ts >= self.last_ts {
            self.last_ts = ts;
            self.last = v;
        }
        self.sdt += dt;
        self.sdt2 += dt * dt;
        self.sdtv += dt * v;
        if let Some(s) = &mut self.sketch {
            s.add_key(key);
        }
    }
}

#[derive(Debug, Clone)]
struct Window {
    span_ms: i64,
    width_ms: i64,
    buckets: Vec<Bucket>,
    /// Which bucket of time each slot holds (event time / width; -1 =
    /// none), side by side: a read finds the live buckets here (two cache
    /// lines) and touches only those (issue 21: the scan of every bucket
    /// was a tenth of a 50,000-target tick).
    epochs: [i64; BUCKETS],
}

impl Window {
    fn new(span_ms: i64, with_sketch: bool) -> Self {
        Self {
            span_ms,
            width_ms: (span_ms / BUCKETS as i64).max(1),
            buckets: (0..BUCKETS).map(|_| Bucket::new(with_sketch)).collect(),
            epochs: [-1; BUCKETS],
        }
    }

    /// The bucket for event time `ts`, or `None` when it is too old for
    /// this window (its slot already holds a later bucket).
    #[inline]
    fn bucket(&mut self, ts: Millis) -> Option<(&mut Bucket, f64)> {
        let epoch = ts.div_euclid(self.width_ms);
        let slot = epoch.rem_euclid(BUCKETS as i64) as usize;
        let b = &mut self.buckets[slot];
        if self.epochs[slot] > epoch {
            return None;
        }
        if self.epochs[slot] < epoch {
            b.reset();
            self.epochs[slot] = epoch;
        }
        let dt = (ts - epoch * self.width_ms) as f64 / 1000.0;
        Some((b, dt))
    }

    /// Statistics over the last `span_ms` (at most this window's span) at
    /// `now`; the quantiles (a merge of the buckets' sketches, most of a
    /// read's cost) only when `quantiles` asks for them.
    fn stats(
        &self,
        now: Millis,
        span_ms: i64,
        first_seen: Millis,
        counter: bool,
        quantiles: bool,
    ) -> Option<WindowStats> {
        let (cur, n_buckets) = self.reach(now, span_ms);
        let (mut live, mut n_live) = ([0usize; BUCKETS], 0);
        for slot in 0..BUCKETS {
            if self.is_live(slot, cur, n_buckets) {
                live[n_live] = slot;
                n_live += 1;
            }
        }
        let live = || {
            live[..n_live]
                .iter()
                .map(|&slot| (self.epochs[slot], &self.buckets[slot]))
        };
        let origin = (cur - n_buckets + 1) * self.width_ms;
        let (mut count, mut sum, mut min, mut max) = (0u64, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        let (mut last_ts, mut last) = (Millis::MIN, 0.0);
        let (mut st, mut st2, mut stv) = (0.0, 0.0, 0.0);
        for (epoch, b) in live() {
            let n = b.count as f64;
            let off = (epoch * self.width_ms - origin) as f64 / 1000.0;
            count += b.count;
            sum += b.sum;
            min = min.min(b.min);
            max = max.max(b.max);
            if b.last_ts >= last_ts {
                last_ts = b.last_ts;
                last = b.last;
            }
            st += n * off + b.sdt;
            st2 += n * off * off + 2.0 * off * b.sdt + b.sdt2;
            stv += off * b.sum + b.sdtv;
        }
        if count == 0 {
            return None;
        }
        let n = count as f64;
        let denom = n * st2 - st * st;
        let slope = if count > 1 && denom.abs() > 1e-9 * n * n {
            (n * stv - st * sum) / denom
        } else {
            0.0
        };
        let per_s = self.per_second(now, first_seen, span_ms);
        let quantiles = (quantiles && !counter).then(|| {
            let mut q = [0.0; 4];
            let sketches = live().filter_map(|(_, b)| b.sketch.as_ref());
            Sketch::merged_quantiles(sketches, &QUANTILES, &mut q);
            q
        });
        Some(WindowStats {
            count,
            sum,
            mean: sum / n,
            min,
            max,
            last,
            quantiles,
            rate: rate_of(counter, n, sum, per_s),
            slope,
        })
    }

    /// 1 / the seconds a rate over `span_ms` at `now` divides by: the
    /// span, or less while the metric is younger than it.
    fn per_second(&self, now: Millis, first_seen: Millis, span_ms: i64) -> f64 {
        let covered_ms = (now - first_seen).clamp(self.width_ms, span_ms);
        1000.0 / covered_ms as f64
    }

    /// The count and the sum of [`Window::stats`], reading only those two
    /// fields of each live bucket (all that `count`, `sum`, `mean` and
    /// `rate` need: a read of a mean touches a cache line a bucket, not
    /// two). The same buckets in the same order, so the same sum to the
    /// bit.
    fn count_sum(&self, now: Millis, span_ms: i64) -> (u64, f64) {
        let (cur, n_buckets) = self.reach(now, span_ms);
        let (mut count, mut sum) = (0u64, 0.0);
        for slot in 0..BUCKETS {
            if self.is_live(slot, cur, n_buckets) {
                count += self.buckets[slot].count;
                sum += self.buckets[slot].sum;
            }
        }
        (count, sum)
    }

    /// The bucket of time of `now` and how many buckets back to it a read
    /// over `span_ms` reaches.
    fn reach(&self, now: Millis, span_ms: i64) -> (i64, i64) {
        let cur = now.div_euclid(self.width_ms);
        let n_buckets = ((span_ms + self.width_ms - 1) / self.width_ms).clamp(1, BUCKETS as i64);
        (cur, n_buckets)
    }

    /// Whether `slot` holds samples within the [`Window::reach`] of a read.
    #[inline]
    fn is_live(&self, slot: usize, cur: i64, n_buckets: i64) -> bool {
        let e = self.epochs[slot];
        e <= cur && e > cur - n_buckets && self.buckets[slot].count > 0
    }

    fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
            + self
                .buckets
                .iter()
                .filter_map(|b| b.sketch.as_ref())
                .map(Sketch::heap_bytes)
                .sum::<usize>()
    }
}

/// All windows of one metric of one target, and its history.
#[derive(Debug, Clone)]
pub struct MetricWindows {
    metric: Metric,
    /// Ascending by span.
    windows: Vec<Window>,
    first_seen: Millis,
    /// The newest sample's time (`Millis::MIN` before any).
    last_seen: Millis,
    history: History,
    keys: Vec<Option<i32>>,
    /// The windows reads went to (a bit per index in `windows`), so that
    /// the tick can ask for them ahead of the next read
    /// ([`TargetWindows::read_windows`]).
    read: std::cell::Cell<u8>,
}

impl MetricWindows {
    fn new(
        metric: Metric,
        spans: &[Duration],
        history_span: Duration,
        history_step: Duration,
    ) -> Self {
        let mut spans_ms: Vec<i64> = spans.iter().map(|d| d.as_millis() as i64).collect();
        spans_ms.sort_unstable();
        spans_ms.dedup();
        Self {
            metric,
            windows: spans_ms
                .into_iter()
                .map(|s| Window::new(s, !metric.is_counter()))
                .collect(),
            first_seen: Millis::MAX,
            last_seen: Millis::MIN,
            history: History::new(history_span, history_step, metric.is_counter()),
            keys: Vec::new(),
            read: std::cell::Cell::new(0),
        }
    }

    /// Records values observed at `ts` (one message's worth).
    pub fn record(&mut self, ts: Millis, values: &[f64]) {
        if values.is_empty() {
            return;
        }
        self.first_seen = self.first_seen.min(ts);
        self.last_seen = self.last_seen.max(ts);
        if self.metric.is_counter() {
            for w in &mut self.windows {
                if let Some((b, dt)) = w.bucket(ts) {
                    for &v in values {
                        b.add(dt, ts, v, None);
                    }
                }
            }
        } else {
            self.keys.clear();
            self.keys.extend(values.iter().map(|&v| sketch::key(v)));
            for w in &mut self.windows {
                if let Some((b, dt)) = w.bucket(ts) {
                    for (&v, &k) in values.iter().zip(&self.keys) {
                        b.add(dt, ts, v, k);
                    }
                }
            }
        }
        for &v in values {
            self.history.record(ts, v);
        }
    }

    /// Stats over `span_ms`, served by the smallest window that covers it;
    /// an error when no window is that long.
    pub fn stats(&self, now: Millis, span_ms: i64) -> Result<Option<WindowStats>, SpanTooLong> {
        self.read(now, span_ms, true)
    }

    /// One statistic ([`STAT_NAMES`]\[`stat`\]) over `span_ms`: what
    /// `ctx.window(metric, span, stat)` returns, without the quantiles'
    /// merge unless a quantile is asked. None with no data, for a quantile
    /// of a counter, or for an index past the names.
    pub fn stat(&self, now: Millis, span_ms: i64, stat: usize) -> Result<Option<f64>, SpanTooLong> {
        // count, sum, mean, rate: from the count and the sum alone
        if let 0 | 1 | 2 | 10 = stat {
            let w = self.window_for(span_ms)?;
            let (count, sum) = w.count_sum(now, span_ms);
            if count == 0 {
                return Ok(None);
            }
            let n = count as f64;
            return Ok(Some(match stat {
                0 => n,
                1 => sum,
                2 => sum / n,
                _ => rate_of(
                    self.metric.is_counter(),
                    n,
                    sum,
                    w.per_second(now, self.first_seen, span_ms),
                ),
            }));
        }
        let s = self.read(now, span_ms, QUANTILE_STATS.contains(&stat))?;
        Ok(s.and_then(|s| s.at(stat)))
    }

    /// The shortest window that covers `span_ms`.
    fn window_for(&self, span_ms: i64) -> Result<&Window, SpanTooLong> {
        let at = self.windows.iter().position(|w| w.span_ms >= span_ms);
        if let Some(i) = at.filter(|&i| i < 8) {
            self.read.set(self.read.get() | 1 << i);
        }
        at.map(|i| &self.windows[i]).ok_or_else(|| SpanTooLong {
            span_ms,
            metric: self.metric,
            longest_ms: self.windows.last().map_or(0, |w| w.span_ms),
        })
    }

    /// [`MetricWindows::stats`], the quantiles only when `quantiles` says.
    fn read(
        &self,
        now: Millis,
        span_ms: i64,
        quantiles: bool,
    ) -> Result<Option<WindowStats>, SpanTooLong> {
        let w = self.window_for(span_ms)?;
        Ok(w.stats(
            now,
            span_ms,
            self.first_seen,
            self.metric.is_counter(),
            quantiles,
        ))
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// When its newest sample was taken, if it has one.
    pub fn last_seen(&self) -> Option<Millis> {
        (self.last_seen != Millis::MIN).then_some(self.last_seen)
    }

    pub fn heap_bytes(&self) -> usize {
        self.windows.capacity() * std::mem::size_of::<Window>()
            + self.windows.iter().map(Window::heap_bytes).sum::<usize>()
    }
}

#[derive(Debug, Clone)]
struct QueueLatest {
    name: String,
    ts: Millis,
    depth: f64,
}

/// The addresses of up to four windows' rings ([`TargetWindows::read_windows`]):
/// each window's slot times and its buckets.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowLines([(usize, usize); 4]);

impl WindowLines {
    /// Asks the CPU for the slot times of each window and the first line
    /// of each of its buckets (a bucket's count and sum, what a mean
    /// reads).
    pub fn prefetch(&self) {
        for &(window, buckets) in &self.0 {
            if window == 0 {
                break;
            }
            prefetch::lines(window as *const Window, std::mem::size_of::<Window>(), 4);
            let first = buckets as *const Bucket;
            for k in 0..BUCKETS {
                prefetch::line(first.wrapping_add(k));
            }
        }
    }
}

/// Every window of one target.
#[derive(Debug, Clone)]
pub struct TargetWindows {
    metrics: Vec<MetricWindows>,
    queues: Vec<QueueLatest>,
    /// A queue silent for longer than this stops counting toward the sum.
    queue_ttl_ms: i64,
}

impl TargetWindows {
    pub fn new(spans: &[Duration], history_span: Duration, history_step: Duration) -> Self {
        let longest = spans
            .iter()
            .max()
            .copied()
            .unwrap_or(Duration::from_secs(300));
        Self {
            metrics: Metric::ALL
                .iter()
                .map(|&m| MetricWindows::new(m, spans, history_span, history_step))
                .collect(),
            queues: Vec::new(),
            queue_ttl_ms: longest.as_millis() as i64,
        }
    }

    pub fn metric(&self, m: Metric) -> &MetricWindows {
        &self.metrics[m as usize]
    }

    /// Where the windows that reads went to since the last call keep
    /// what a read touches, for the tick to ask for them ahead of the
    /// next evaluation ([`WindowLines::prefetch`]); the marks are
    /// cleared. A window's ring never moves once made, so the addresses
    /// hold until the windows are made anew (a restore), and a stale one
    /// costs a wasted prefetch, nothing else. Only the metrics in
    /// `metrics` (a bit per `Metric as u8`: those the call read) are
    /// looked at: another metric's marks are its own memory, out of the
    /// cache when nothing read it, and stay for a call that does.
    pub fn read_windows(&self, metrics: u8) -> WindowLines {
        let mut out = WindowLines::default();
        let mut n = 0;
        let read_by_call = |&m: &Metric| metrics & m.bit() != 0;
        for m in Metric::ALL
            .into_iter()
            .filter(read_by_call)
            .map(|m| self.metric(m))
        {
            let read = m.read.replace(0);
            for (k, w) in m.windows.iter().enumerate().take(8) {
                if read & (1 << k) != 0 && n < out.0.len() {
                    out.0[n] = (w as *const Window as usize, w.buckets.as_ptr() as usize);
                    n += 1;
                }
            }
        }
        out
    }

    /// The downsampled history of `m`, to restore it from a snapshot.
    pub fn history_mut(&mut self, m: Metric) -> &mut History {
        &mut self.metrics[m as usize].history
    }

    /// Fresh windows over `spans`, keeping every metric's history (when its
    /// step is unchanged): a replay or a changed window list refills the
    /// windows, but the history holds days nobody can re-read.
    pub fn renewed(
        &self,
        spans: &[Duration],
        history_span: Duration,
        history_step: Duration,
    ) -> Self {
        let mut fresh = Self::new(spans, history_span, history_step);
        for m in Metric::ALL {
            fresh
                .history_mut(m)
                .import(&self.metric(m).history.export());
            // how old the newest sample is does not change with the windows
            fresh.metric_mut(m).last_seen = self.metric(m).last_seen;
        }
        fresh
    }

    fn metric_mut(&mut self, m: Metric) -> &mut MetricWindows {
        &mut self.metrics[m as usize]
    }

    /// Applies a depth report: the target's depth is the sum of the latest
    /// depth of each of its queues (DESIGN.md).
    pub fn apply_depth(&mut self, d: &QueueDepth) -> Result<(), Rejection> {
        let ttl = self.queue_ttl_ms;
        self.queues
            .retain(|q| q.ts >= d.ts_ms - ttl || q.name == d.queue);
        let mut others = 0.0;
        let mut found = false;
        for q in &mut self.queues {
            if q.name == d.queue {
                found = true;
                if d.ts_ms >= q.ts {
                    q.ts = d.ts_ms;
                    q.depth = d.depth;
                }
            } else {
                others += q.depth;
            }
        }
        if !found {
            if self.queues.len() >= MAX_QUEUES {
                return Err(Rejection {
                    reason: Reason::TooManyQueues,
                    detail: format!(
                        "queue {:?} would be queue number {} of target {}; the limit is {MAX_QUEUES}",
                        d.queue,
                        MAX_QUEUES + 1,
                        d.target
                    ),
                    kind: "queue_depth",
                });
            }
            self.queues.push(QueueLatest {
                name: d.queue.clone(),
                ts: d.ts_ms,
                depth: d.depth,
            });
        }
        // A late report lands at its own time, beside the other queues' latest.
        self.metric_mut(Metric::QueueDepth)
            .record(d.ts_ms, &[others + d.depth]);
        Ok(())
    }

    /// Records one value of `metric` at `ts` directly (a count, for
    /// counters): what a message would record, for the simulator, which
    /// has request counts, not per-request samples.
    pub fn record(&mut self, metric: Metric, ts: Millis, value: f64) {
        self.metric_mut(metric).record(ts, &[value]);
    }

    pub fn apply_latency(&mut self, l: &GatewayLatency) {
        self.metric_mut(Metric::LatencyMs)
            .record(l.ts_ms, &l.samples_ms);
        let requests = l.requests.map_or(l.samples_ms.len() as f64, f64::from);
        self.metric_mut(Metric::Requests)
            .record(l.ts_ms, &[requests.max(f64::from(l.errors))]);
        if l.errors > 0 {
            self.metric_mut(Metric::Errors)
                .record(l.ts_ms, &[f64::from(l.errors)]);
        }
    }

    pub fn stats(
        &self,
        metric: Metric,
        now: Millis,
        span_ms: i64,
    ) -> Result<Option<WindowStats>, SpanTooLong> {
        self.metric(metric).stats(now, span_ms)
    }

    /// One statistic of one metric ([`MetricWindows::stat`]).
    pub fn stat(
        &self,
        metric: Metric,
        now: Millis,
        span_ms: i64,
        stat: usize,
    ) -> Result<Option<f64>, SpanTooLong> {
        self.metric(metric).stat(now, span_ms, stat)
    }

    /// Heap bytes held by the windows (not the history), for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .metrics
                .iter()
                .map(MetricWindows::heap_bytes)
                .sum::<usize>()
            + self.queues.capacity() * std::mem::size_of::<QueueLatest>()
            + self.queues.iter().map(|q| q.name.capacity()).sum::<usize>()
    }
}

/// A policy asked for a span longer than any configured window.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("span {span_ms} ms is longer than the longest window of {} ({longest_ms} ms)", metric.name())]
pub struct SpanTooLong {
    pub span_ms: i64,
    pub metric: Metric,
    pub longest_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_764_000_000_000;

    fn spans() -> Vec<Duration> {
        ["10s", "60s", "300s"]
            .iter()
            .map(|s| humantime::parse_duration(s).unwrap())
            .collect()
    }

    fn target() -> TargetWindows {
        TargetWindows::new(&spans(), Duration::from_secs(3600), Duration::from_secs(60))
    }

    fn depth(queue: &str, v: f64, ts: Millis) -> QueueDepth {
        QueueDepth {
            target: "t".into(),
            queue: queue.into(),
            depth: v,
            consumers: None,
            ts_ms: ts,
        }
    }

    /// The windows a read went to are the ones the tick asks for ahead
    /// of the next evaluation: the shortest covering each span read, each
    /// once, the marks cleared by taking them.
    #[test]
    fn the_windows_read_are_the_ones_asked_for() {
        let mut t = target();
        t.apply_depth(&depth("q", 5.0, T0)).unwrap();
        let depth_only = 1 << Metric::QueueDepth as u8;
        assert_eq!(
            t.read_windows(depth_only).0,
            [(0, 0); 4],
            "nothing read yet"
        );
        let m = t.metric(Metric::QueueDepth);
        let at = |k: usize| {
            let w = &m.windows[k];
            (w as *const Window as usize, w.buckets.as_ptr() as usize)
        };
        t.stat(Metric::QueueDepth, T0, 60_000, 2).unwrap();
        t.stat(Metric::QueueDepth, T0, 10_000, 2).unwrap();
        t.stat(Metric::QueueDepth, T0, 45_000, 0).unwrap();
        t.stats(Metric::QueueDepth, T0, 60_000).unwrap();
        assert_eq!(
            t.read_windows(!depth_only).0,
            [(0, 0); 4],
            "a metric the call did not read is not looked at"
        );
        let lines = t.read_windows(depth_only);
        assert_eq!(
            lines.0,
            [at(0), at(1), (0, 0), (0, 0)],
            "10 s and 60 s, in span order, once each (the marks kept by the look that left them out)"
        );
        assert_ne!(at(0), at(1));
        assert_eq!(t.read_windows(depth_only).0, [(0, 0); 4], "taken");
        lines.prefetch();
        assert_eq!(
            t.stat(Metric::QueueDepth, T0, 60_000, 2).unwrap(),
            Some(5.0)
        );
    }

    #[test]
    fn basic_stats_and_slope() {
        let mut t = target();
        // depth rises 10 per second for 60 s
        for i in 0..60 {
            t.apply_depth(&depth("q", 10.0 * i as f64, T0 + i * 1000))
                .unwrap();
        }
        let now = T0 + 59_000;
        let s = t.stats(Metric::QueueDepth, now, 60_000).unwrap().unwrap();
        assert!(s.count >= 54 && s.count <= 60, "{s:?}");
        assert_eq!(s.max, 590.0);
        assert_eq!(s.last, 590.0);
        assert!((s.slope - 10.0).abs() < 1e-6, "slope {}", s.slope);
        let short = t.stats(Metric::QueueDepth, now, 10_000).unwrap().unwrap();
        assert_eq!(short.count, 10);
        assert_eq!(short.min, 500.0);
        assert!((short.mean - 545.0).abs() < 1e-9);
        assert!(
            (short.rate - 1.0).abs() < 0.01,
            "one report per second: {}",
            short.rate
        );
        // A span that is not configured is served by the next larger window.
        let thirty = t.stats(Metric::QueueDepth, now, 30_000).unwrap().unwrap();
        assert_eq!(thirty.count, 30);
        assert_eq!(thirty.min, 300.0);
        assert!(t.stats(Metric::QueueDepth, now, 600_000).is_err());
    }

    #[test]
    fn windows_slide_and_empty_means_none() {
        let mut t = target();
        t.apply_depth(&depth("q", 5.0, T0)).unwrap();
        assert!(t.stats(Metric::QueueDepth, T0, 10_000).unwrap().is_some());
        assert!(t
            .stats(Metric::QueueDepth, T0 + 11_000, 10_000)
            .unwrap()
            .is_none());
        assert!(t
            .stats(Metric::QueueDepth, T0 + 11_000, 60_000)
            .unwrap()
            .is_some());
        assert!(t.stats(Metric::LatencyMs, T0, 10_000).unwrap().is_none());
    }

    #[test]
    fn late_events_land_in_their_bucket() {
        let mut t = target();
        t.apply_depth(&depth("q", 100.0, T0 + 20_000)).unwrap();
        // Arrives later but happened 15 s earlier: outside the 10 s window
        // at T0+20s, inside the 60 s one.
        t.apply_depth(&depth("q", 1.0, T0 + 5_000)).unwrap();
        let now = T0 + 20_000;
        let s10 = t.stats(Metric::QueueDepth, now, 10_000).unwrap().unwrap();
        assert_eq!((s10.count, s10.min), (1, 100.0));
        let s60 = t.stats(Metric::QueueDepth, now, 60_000).unwrap().unwrap();
        assert_eq!((s60.count, s60.min, s60.last), (2, 1.0, 100.0));
        // Far older than the longest window: touches nothing.
        t.apply_depth(&depth("q", 7.0, T0 - 400_000)).unwrap();
        let s300 = t.stats(Metric::QueueDepth, now, 300_000).unwrap().unwrap();
        assert_eq!(s300.count, 2);
    }

    #[test]
    fn depth_is_the_sum_of_each_queues_latest() {
        let mut t = target();
        t.apply_depth(&depth("a", 100.0, T0)).unwrap();
        t.apply_depth(&depth("b", 50.0, T0 + 1)).unwrap();
        t.apply_depth(&depth("a", 10.0, T0 + 2)).unwrap();
        let s = t
            .stats(Metric::QueueDepth, T0 + 2, 10_000)
            .unwrap()
            .unwrap();
        assert_eq!(s.last, 60.0);
        // A queue silent for longer than the longest window stops counting.
        t.apply_depth(&depth("b", 1.0, T0 + 301_000)).unwrap();
        let s = t
            .stats(Metric::QueueDepth, T0 + 301_000, 10_000)
            .unwrap()
            .unwrap();
        assert_eq!(s.last, 1.0);
    }

    #[test]
    fn too_many_queues_is_refused() {
        let mut t = target();
        for i in 0..MAX_QUEUES {
            t.apply_depth(&depth(&format!("q{i}"), 1.0, T0)).unwrap();
        }
        let err = t.apply_depth(&depth("one-more", 1.0, T0)).unwrap_err();
        assert_eq!(err.reason, Reason::TooManyQueues);
    }

    /// One statistic read alone is the full read's field, for a gauge
    /// (with its quantiles), a counter (whose quantiles are None) and a
    /// span shorter than its window; past the names None; a span too long
    /// the same error.
    #[test]
    fn one_statistic_is_the_full_reads_field() {
        let spans = [Duration::from_secs(10), Duration::from_secs(60)];
        let mut w = TargetWindows::new(&spans, Duration::from_secs(3600), Duration::from_secs(60));
        for i in 0..50 {
            let ts = 1_000_000 + i * 700;
            // fractions, so that a sum in another order would differ
            w.record(Metric::LatencyMs, ts, 10.1 + (i % 7) as f64 * 30.7);
            w.record(Metric::Requests, ts, (i % 3) as f64 * 0.3);
        }
        let now = 1_000_000 + 50 * 700;
        for metric in [Metric::LatencyMs, Metric::Requests] {
            for span in [5_000, 10_000, 45_000, 60_000] {
                let full = w.stats(metric, now, span).unwrap().unwrap();
                for (i, name) in STAT_NAMES.iter().enumerate() {
                    let one = w.stat(metric, now, span, i).unwrap();
                    assert_eq!(one, full.get(name), "{metric:?} {span} {name}");
                    assert_eq!(
                        one.is_some(),
                        metric == Metric::LatencyMs || !(6..10).contains(&i)
                    );
                }
                assert_eq!(w.stat(metric, now, span, STAT_NAMES.len()).unwrap(), None);
            }
            assert_eq!(
                w.stat(metric, now, 61_000, 2).unwrap_err(),
                w.stats(metric, now, 61_000).unwrap_err()
            );
        }
        assert_eq!(w.stat(Metric::QueueDepth, now, 10_000, 2).unwrap(), None);
    }

    #[test]
    fn latency_quantiles_requests_and_errors() {
        let mut t = target();
        for s in 0..10 {
            let samples: Vec<f64> = (1..=100).map(|i| i as f64).collect();
            t.apply_latency(&GatewayLatency {
                target: "t".into(),
                route: None,
                samples_ms: samples,
                errors: 2,
                requests: None,
                ts_ms: T0 + s * 1000,
            });
        }
        let now = T0 + 9_999;
        let lat = t.stats(Metric::LatencyMs, now, 10_000).unwrap().unwrap();
        assert_eq!(lat.count, 1000);
        let [p50, p90, p95, p99] = lat.quantiles.unwrap();
        for (got, want) in [(p50, 50.0), (p90, 90.0), (p95, 95.0), (p99, 99.0)] {
            assert!(
                (got - want).abs() / want <= sketch::ALPHA,
                "{got} vs {want}"
            );
        }
        assert!((lat.rate - 100.0).abs() < 1.0, "samples/s {}", lat.rate);
        let req = t.stats(Metric::Requests, now, 10_000).unwrap().unwrap();
        assert_eq!(req.sum, 1000.0);
        assert!(req.quantiles.is_none());
        let err = t.stats(Metric::Errors, now, 10_000).unwrap().unwrap();
        assert_eq!(err.sum, 20.0);
        assert!((err.rate - 2.0).abs() < 0.05, "errors/s {}", err.rate);
    }

    #[test]
    fn a_sample_of_a_busy_second_counts_the_requests_it_stands_for() {
        let mut t = target();
        t.apply_latency(&GatewayLatency {
            target: "t".into(),
            route: None,
            samples_ms: vec![10.0, 20.0],
            errors: 3,
            requests: Some(5000),
            ts_ms: T0,
        });
        let now = T0 + 1000;
        assert_eq!(
            t.stats(Metric::Requests, now, 10_000).unwrap().unwrap().sum,
            5000.0
        );
        assert_eq!(
            t.stats(Metric::LatencyMs, now, 10_000)
                .unwrap()
                .unwrap()
                .count,
            2
        );
    }

    /// The memory budget of DESIGN/issue: 3 metrics x 3 windows under 64 KiB,
    /// measured as heap bytes after the worst case (every bucket of every
    /// window holding a full-width sketch).
    #[test]
    fn window_state_stays_under_64_kib() {
        let mut t = target();
        for s in 0..300 {
            let ts = T0 + s * 1000;
            // values spread over a range wider than the sketch keeps
            let samples: Vec<f64> = (0..200).map(|i| 0.01 * 1.1f64.powi(i)).collect();
            t.apply_latency(&GatewayLatency {
                target: "t".into(),
                route: None,
                samples_ms: samples.clone(),
                errors: 1,
                requests: None,
                ts_ms: ts,
            });
            for v in samples.iter().step_by(10) {
                t.apply_depth(&depth("q", *v, ts)).unwrap();
            }
        }
        let bytes = t.heap_bytes();
        assert!(bytes < 64 * 1024, "window state {bytes} bytes");
    }
}
