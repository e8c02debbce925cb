//! What the load did next at this time of day on the previous days, for
//! `ctx.recurring`: on each of the last `days` days, the rise of the load
//! from its level at this time of day (a 3-minute mean) to each point of
//! `[from, to]` after it (5-minute means); per point, the median and the
//! quartiles of that rise across days; and the highest of each over the
//! window. Beside them, the weekly season: the level the same weekday
//! reached over the window against the median day's.
//!
//! A recurring rise (a working day that opens at 9:00 plus or minus 20
//! minutes) shows on most days, so with a window as wide as its timing
//! varies the median sees it whole; a spike at a random hour shows on one
//! day, and neither the median nor the quartiles see it. A Holt-Winters
//! season instead averages the openings of different days into a slow
//! ramp, and its interval is widest there.
//!
//! A day that runs late runs late from its first hours: with `align_ms`,
//! each previous day is read where its hours before this time of day
//! matched today's best ([`ALIGN_SPAN_MS`]), so the days' rises line up
//! with today's instead of spreading over the window.

use crate::clock::Millis;
use crate::window::History;

/// The rises of the previous days, in the metric's own unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recurring {
    /// The median rise across days.
    pub rise: f64,
    /// `rise` over the first part of the window only, up to
    /// [`Reach::near_ms`]: the rise a policy needs ready by the end of its
    /// start-up lead, where the days rise at the same minute. `None` where
    /// no point of that part has [`MIN_DAYS`] days.
    pub near: Option<f64>,
    /// `near` read from the history's own points instead of 5-minute
    /// means: a step that comes at the same minute every day shows whole
    /// at that minute, not five minutes after it. A spike on one day
    /// still does not move the median across days.
    pub sharp: Option<f64>,
    /// The lower and upper quartiles of the rises.
    pub low: f64,
    pub high: f64,
    /// The highest median level across days (not a rise): what the load
    /// reached within the window on the median day. A day later than most
    /// to rise has no rise left to show against the days that rose
    /// already, but their level still shows it.
    pub level: f64,
    /// The days with data in both the base and the window.
    pub days: usize,
    /// The weekly season: the level the load reached over the window on
    /// the same day of the week (the higher of 7 and 14 days ago) over the
    /// level the median day reached; `None` when `days` is under 7,
    /// neither day has data, or the median level is not above 0. A
    /// weekend at a third of a weekday's load reads about 0.33, while
    /// `rise` is the weekdays'; a holiday a week ago is outweighed by the
    /// day a week before it. It compares levels, not rises, so a day that
    /// had risen before this time of day still counts.
    pub week: Option<f64>,
}

/// Days needed for an answer.
pub const MIN_DAYS: usize = 3;
/// The base: the mean of the points this long before the time of day.
const BASE_MS: i64 = 180_000;
/// The window's points are means over this long (a spike of a minute or
/// two is diluted; a rise that holds is not).
const SMOOTH_MS: i64 = 300_000;
const DAY_MS: i64 = 86_400_000;
/// The most history steps one day's part of a call reads: a day's window
/// at a minute and then some. A finer history step answers shorter
/// windows only, so that a call's work stays bounded whatever the step
/// (the policy's instruction budget cannot stop a call into Rust).
pub const MAX_STEPS_A_DAY: i64 = 1_440 + 60;

/// Where a call reads, in ms after this time of day: the window
/// `[from_ms, to_ms]`, its first part `[from_ms, near_ms]` for
/// [`Recurring::near`], and the weekly season over `[from_ms, week_to_ms]`
/// (`to_ms` or later; the season is `None` when that is too long).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub from_ms: i64,
    pub to_ms: i64,
    pub near_ms: i64,
    pub week_to_ms: i64,
}

impl Reach {
    /// `[from_ms, to_ms]`, its `near` and its week read over itself.
    pub fn window(from_ms: i64, to_ms: i64) -> Self {
        Self {
            from_ms,
            to_ms,
            near_ms: to_ms,
            week_to_ms: to_ms,
        }
    }
}

/// The rises after `now_ms + [reach.from_ms, reach.to_ms]` on each of the
/// last `days` days of `history`; `None` with fewer than [`MIN_DAYS`] days
/// of data or a history step longer than an hour. `week` is read over
/// `[from_ms, week_to_ms]` in the same pass: the same as a call with
/// `to_ms = week_to_ms` would answer; `near` over `[from_ms, near_ms]`
/// (at most `to_ms`): the same as that call's `rise` where each of its
/// points has the same days. With `align_ms` above 0, each day is read
/// from where its own load matched today's last hours best, up to
/// `align_ms` earlier or later ([`Align`]); 0 reads each day at today's
/// time of day.
pub fn recurring(
    history: &History,
    now_ms: Millis,
    reach: Reach,
    days: usize,
    align_ms: i64,
) -> Option<Recurring> {
    let Reach {
        from_ms,
        to_ms,
        near_ms,
        week_to_ms,
    } = reach;
    let step = history.step_ms();
    if step > 3_600_000 || to_ms < from_ms || from_ms < 0 {
        return None;
    }
    let steps = |ms: i64| (ms + step - 1).div_euclid(step).max(1);
    let period = (DAY_MS + step / 2).div_euclid(step);
    let (base_n, smooth_n) = (steps(BASE_MS), steps(SMOOTH_MS));
    let (from, to) = (from_ms.div_euclid(step), to_ms.div_euclid(step));
    let fits = |last: i64| (last - from + 1) + smooth_n + base_n <= MAX_STEPS_A_DAY;
    if !fits(to) {
        return None;
    }
    // the rows reach the week's end when that fits; else no week
    let week_to = week_to_ms.max(to_ms).div_euclid(step);
    let (last, weekly) = if fits(week_to) {
        (week_to, true)
    } else {
        (to, false)
    };
    let now = now_ms.div_euclid(step);
    // per day: its base, and the smoothed rise above it at each offset
    let width = (to - from + 1) as usize;
    // the offsets of the window's first part (`near`)
    let near_width = (near_ms.clamp(from_ms, to_ms).div_euclid(step) - from + 1) as usize;
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(days);
    // per day kept, its own points over the first part less its base
    // (`sharp`), `near_width` of them a day
    let mut sharp_rows: Vec<f64> = Vec::with_capacity(days * near_width);
    let mut bases: Vec<f64> = Vec::with_capacity(days);
    // each day's highest level over the window, and the same weekday's
    let mut tops: Vec<f64> = Vec::with_capacity(days);
    let mut week: Option<f64> = None;
    let align = Align::new(history, now, align_ms);
    let mut scratch = AlignScratch::default();
    // the steps each day's reads take (its alignment's, then its
    // window's), one buffer for them all
    let mut points = Vec::new();
    for d in 1..=days as i64 {
        // this time of day on day d, where today's last hours put it
        let anchor = now - d * period;
        let anchor = align.as_ref().map_or(anchor, |a| {
            a.anchor(history, anchor, &mut points, &mut scratch)
        });
        let base = smoothed(history, anchor - 1, anchor - 1, base_n, 0.0, &mut points)[0];
        if base.is_nan() {
            continue;
        }
        // the window, and the week's beyond it: a running mean, so the
        // window's points are the same either way
        let row = smoothed(
            history,
            anchor + from,
            anchor + last,
            smooth_n,
            base,
            &mut points,
        );
        // the row's highest finite point (a point is a finite mean or
        // NaN, which no comparison takes), in one register
        let mut top = f64::NEG_INFINITY;
        for &v in &row {
            if v > top {
                top = v;
            }
        }
        if top.is_finite() {
            let top = top + base;
            if d % 7 == 0 {
                week = Some(week.map_or(top, |w| w.max(top)));
            }
            tops.push(top);
            if row[..width].iter().any(|v| v.is_finite()) {
                // `points` holds the steps from `smooth_n - 1` before the
                // window's first: offset o is point o + smooth_n - 1
                let first = (smooth_n - 1) as usize;
                sharp_rows.extend(points[first..first + near_width].iter().map(|&v| {
                    if v.is_finite() {
                        f64::from(v) - base
                    } else {
                        f64::NAN
                    }
                }));
                rows.push(row);
                bases.push(base);
            }
        }
    }
    if rows.len() < MIN_DAYS {
        return None;
    }
    // per offset, the quantiles across days; the highest of each over
    // the window
    let (mut col, mut levels) = (
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
    );
    tops.sort_by(f64::total_cmp);
    let typical = quantile(&tops, 0.5);
    let mut r = Recurring {
        rise: f64::NEG_INFINITY,
        near: None,
        sharp: None,
        low: f64::NEG_INFINITY,
        high: f64::NEG_INFINITY,
        level: f64::NEG_INFINITY,
        days: rows.len(),
        week: week
            .filter(|_| weekly && typical > 0.0)
            .map(|w| w / typical),
    };
    for o in 0..width {
        col.clear();
        levels.clear();
        for (row, base) in rows.iter().zip(&bases) {
            if row[o].is_finite() {
                col.push(row[o]);
                levels.push(row[o] + base);
            }
        }
        if col.len() < MIN_DAYS {
            continue;
        }
        col.sort_by(f64::total_cmp);
        levels.sort_by(f64::total_cmp);
        let median = quantile(&col, 0.5);
        r.rise = r.rise.max(median);
        if o < near_width {
            r.near = Some(r.near.map_or(median, |n| n.max(median)));
        }
        r.low = r.low.max(quantile(&col, 0.25));
        r.high = r.high.max(quantile(&col, 0.75));
        r.level = r.level.max(quantile(&levels, 0.5));
    }
    for o in 0..near_width {
        col.clear();
        col.extend(
            sharp_rows
                .iter()
                .skip(o)
                .step_by(near_width)
                .filter(|v| v.is_finite()),
        );
        if col.len() < MIN_DAYS {
            continue;
        }
        col.sort_by(f64::total_cmp);
        let median = quantile(&col, 0.5);
        r.sharp = Some(r.sharp.map_or(median, |n| n.max(median)));
    }
    r.rise.is_finite().then_some(r)
}

/// Aligning a day with today: the last [`ALIGN_SPAN_MS`] of today's
/// load, as means of the logarithm over [`ALIGN_BLOCK_MS`], against the
/// same on a previous day ending up to `max` steps earlier or later, in
/// strides of [`ALIGN_STRIDE_MS`]; the level aside (the mean difference
/// of the logarithms is taken out, so a weekend at half the load, or a
/// trend, matches its weekday's shape). A day whose hours matched best
/// ending `s` steps earlier is read `s` steps earlier: a day that runs
/// 20 minutes late shows the previous days' rise 20 minutes later. A
/// shift is taken only where it fits [`ALIGN_GAIN`] times better than
/// none and matched a shape ([`ALIGN_SHAPE`]); else the day is read at
/// today's time of day.
pub const ALIGN_SPAN_MS: i64 = 3 * 3_600_000;
/// See [`ALIGN_SPAN_MS`].
pub const ALIGN_BLOCK_MS: i64 = 600_000;
/// See [`ALIGN_SPAN_MS`].
pub const ALIGN_STRIDE_MS: i64 = 300_000;
/// See [`ALIGN_SPAN_MS`].
pub const ALIGN_GAIN: f64 = 2.0;
/// A shift is taken only where what it leaves unexplained is under this
/// part of today's own spread (the sum of its blocks' squared distances
/// from their mean): a shape, not noise, is what it matched. On a flat
/// morning today's spread is the noise's, and some shift among the
/// strides always halves a misfit of noise against noise.
pub const ALIGN_SHAPE: f64 = 4.0;
/// The largest shift a call may ask for.
pub const MAX_ALIGN_MS: i64 = 2 * 3_600_000;

/// Today's side of an alignment (see [`ALIGN_SPAN_MS`]).
struct Align {
    /// Today's block means of the logarithm, the newest first.
    today: Vec<f64>,
    /// Their squared distances from their mean, summed.
    shape: f64,
    /// In history steps.
    block: i64,
    stride: i64,
    max: i64,
}

impl Align {
    /// None when `align_ms` is 0 or less, today's hours have a gap, or
    /// the steps a day's alignment reads would exceed [`MAX_STEPS_A_DAY`]
    /// (a fine history step: the call's work stays bounded).
    fn new(history: &History, now: i64, align_ms: i64) -> Option<Self> {
        let step = history.step_ms();
        let steps = |ms: i64| (ms / step).max(1);
        let (block, stride) = (steps(ALIGN_BLOCK_MS), steps(ALIGN_STRIDE_MS));
        let blocks = (steps(ALIGN_SPAN_MS) / block).max(2);
        let max = align_ms.min(MAX_ALIGN_MS) / step;
        if max <= 0 || blocks * block + 2 * max > MAX_STEPS_A_DAY {
            return None;
        }
        let mut points = vec![0.0; (blocks * block) as usize];
        history.read_into(now - blocks * block, &mut points);
        // the newest block first
        let today = points
            .rchunks_exact(block as usize)
            .map(|b| Some(log_sum(b)? / block as f64))
            .collect::<Option<Vec<f64>>>()?;
        let mean = today.iter().sum::<f64>() / today.len() as f64;
        let shape = today.iter().map(|x| (x - mean) * (x - mean)).sum();
        Some(Self {
            today,
            shape,
            block,
            stride,
            max,
        })
    }

    /// Where to read the day whose time of day is `anchor`: `anchor` less
    /// the shift that fits best (0 where none fits well enough, or the
    /// day has a gap). `points` and `scratch` are buffers the days of a
    /// call share.
    fn anchor(
        &self,
        history: &History,
        anchor: i64,
        points: &mut Vec<f32>,
        scratch: &mut AlignScratch,
    ) -> i64 {
        let blocks = self.today.len() as i64;
        // the shifts tried, from -reach to reach in strides; every block
        // a shift reads starts and ends on a multiple of `unit` from
        // `first`
        let reach = self.max / self.stride * self.stride;
        let unit = gcd(self.block, self.stride);
        let first = anchor - reach - blocks * self.block;
        let units = (2 * reach + blocks * self.block) / unit;
        let AlignScratch {
            sums,
            means,
            sum,
            squares,
        } = scratch;
        // the logarithm's running sum at each unit's end
        points.clear();
        points.resize((units * unit) as usize, 0.0);
        history.read_into(first, points);
        sums.clear();
        sums.push(0.0);
        for u in points.chunks_exact(unit as usize) {
            match log_sum(u) {
                Some(l) => sums.push(sums[sums.len() - 1] + l),
                None => return anchor,
            }
        }
        // units a block
        let per = (self.block / unit) as usize;
        // the mean of the day's block ending at unit `u`, for every `u`
        // a block can end at (once a day, not once a shift and block)
        means.clear();
        means.resize(per, 0.0);
        means.extend(
            sums.iter()
                .zip(&sums[per..])
                .map(|(a, b)| (b - a) / self.block as f64),
        );
        // the spread of today's blocks less the day's, for the j-th shift
        // (`j * stride - reach`): block b of the day ends at unit
        // (reach - s) / unit + (blocks - b) * per
        let (top, stride) = ((2 * reach / unit) as usize, (self.stride / unit) as usize);
        let zero = (reach / self.stride) as usize;
        // every shift's misfit at once, a block at a time: each shift
        // sums its blocks in the same order as alone (the same figures),
        // but the shifts' sums do not wait for one another
        let shifts = 2 * zero + 1;
        sum.clear();
        sum.resize(shifts, 0.0);
        squares.clear();
        squares.resize(shifts, 0.0);
        for (b, x) in self.today.iter().enumerate() {
            // today's block b against the day's ending at
            // top - j * stride + (blocks - b) * per, for each shift j
            let at = top + (blocks as usize - b) * per;
            // shift j reads means[at - j * stride]: the shifts' means,
            // newest first
            let row = means[at - (shifts - 1) * stride..=at].iter().rev();
            let add = |(s, q): (&mut f64, &mut f64), m: &f64| {
                let d = x - m;
                *s += d;
                *q += d * d;
            };
            let pairs = sum.iter_mut().zip(squares.iter_mut());
            if stride == 1 {
                // the usual case (a stride of one unit, as at any step that
                // divides 5 minutes), which the compiler runs in lanes
                // (about 3% of a 215-day run against `step_by(1)`)
                pairs.zip(row).for_each(|(p, m)| add(p, m));
            } else {
                pairs.zip(row.step_by(stride)).for_each(|(p, m)| add(p, m));
            }
        }
        let misfit = |j: usize| squares[j] - sum[j] * sum[j] / blocks as f64;
        let none = misfit(zero);
        let (mut best, mut at) = (none, zero);
        for j in (0..shifts).filter(|&j| j != zero) {
            let m = misfit(j);
            if m < best {
                (best, at) = (m, j);
            }
        }
        let at = at as i64 * self.stride - reach;
        if best * ALIGN_GAIN < none && best * ALIGN_SHAPE < self.shape {
            anchor - at
        } else {
            anchor
        }
    }
}

/// The buffers of a day's alignment, reused across the days of a call.
#[derive(Default)]
struct AlignScratch {
    sums: Vec<f64>,
    means: Vec<f64>,
    /// Per shift: the differences of its blocks from today's, summed,
    /// and their squares.
    sum: Vec<f64>,
    squares: Vec<f64>,
}

/// Below this a load is taken as this, so that its logarithm is finite.
const LOG_FLOOR: f64 = 1e-9;

/// The sum of the logarithm of `points`; None with a gap. A logarithm of
/// the product of up to eight of them at a time: an eighth of the
/// logarithms a point each would take, the same sum to within rounding
/// (a product of eight loads stays far inside an f64).
fn log_sum(points: &[f32]) -> Option<f64> {
    let mut sum = 0.0;
    for eight in points.chunks(8) {
        let mut product = 1.0;
        for &v in eight {
            if !v.is_finite() {
                return None;
            }
            product *= f64::from(v).max(LOG_FLOOR);
        }
        sum += product.ln();
    }
    Some(sum)
}

/// The greatest common divisor of two positive numbers.
fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The `p` quantile of sorted `xs` (not empty), linear between points.
fn quantile(xs: &[f64], p: f64) -> f64 {
    let x = p * (xs.len() - 1) as f64;
    let (i, w) = (x.floor() as usize, x.fract());
    let next = xs.get(i + 1).copied().unwrap_or(xs[i]);
    xs[i] + (next - xs[i]) * w
}

/// For each step of `[first, last]`, the mean of the `n` steps up to it
/// (`NaN` when half of them or more are missing) less `base`: a running
/// sum over the steps read once into `points` (scratch, reused across
/// calls), so a day costs its window plus `n` reads.
fn smoothed(
    history: &History,
    first: i64,
    last: i64,
    n: i64,
    base: f64,
    points: &mut Vec<f32>,
) -> Vec<f64> {
    let start = first + 1 - n;
    let len = (last - start + 1).max(0) as usize;
    points.clear();
    points.resize(len, 0.0);
    history.read_into(start, points);
    let (mut sum, mut count) = (0.0, 0i64);
    let n_ = n.max(0) as usize;
    let mut out = Vec::with_capacity((last - first + 1).max(0) as usize);
    for (i, &v) in points.iter().enumerate() {
        if v.is_finite() {
            sum += f64::from(v);
            count += 1;
        }
        if i >= n_ {
            let gone = points[i - n_];
            if gone.is_finite() {
                sum -= f64::from(gone);
                count -= 1;
            }
        }
        if i + 1 >= n_ {
            out.push(if 2 * count > n {
                sum / count as f64 - base
            } else {
                f64::NAN
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::generate::Rng;
    use std::time::Duration;

    const MIN: i64 = 60_000;

    /// A call whose week is read over its own window.
    fn recurring(h: &History, now: Millis, from: i64, to: i64, days: usize) -> Option<Recurring> {
        super::recurring(h, now, Reach::window(from, to), days, 0)
    }

    /// A call over `[0, to]` whose week is read over `[0, week_to]`.
    fn with_week(
        h: &History,
        now: Millis,
        to: i64,
        week_to: i64,
        days: usize,
    ) -> Option<Recurring> {
        let reach = Reach {
            week_to_ms: week_to,
            ..Reach::window(0, to)
        };
        super::recurring(h, now, reach, days, 0)
    }

    /// A call over `[0, 60 minutes]` whose first part ends at `near_ms`,
    /// over 7 days.
    fn with_near(h: &History, now: Millis, near_ms: i64) -> Recurring {
        let reach = Reach {
            near_ms,
            ..Reach::window(0, 60 * MIN)
        };
        super::recurring(h, now, reach, 7, 0).unwrap()
    }

    /// `days` of `load(day, minute of the day)`, a point every `step_s`.
    fn history_at(step_s: u64, days: i64, load: impl Fn(i64, i64) -> f64) -> History {
        let mut h = History::new(
            Duration::from_secs(14 * 86_400),
            Duration::from_secs(step_s),
            false,
        );
        let step_ms = step_s as i64 * 1000;
        for t in (0..days * 86_400_000).step_by(step_ms as usize) {
            let m = t / MIN;
            h.record(t, load(m / 1440, m % 1440));
        }
        h
    }

    fn history(days: i64, load: impl Fn(i64, i64) -> f64) -> History {
        history_at(60, days, load)
    }

    #[test]
    fn a_rise_that_comes_every_day_at_a_varying_minute_is_seen_whole() {
        // opens at 9:00 + (day * 13 % 41 - 20) minutes: 40 minutes of jitter
        let open = |day: i64| 540 + (day * 13 % 41) - 20;
        let h = history(
            8,
            |day, minute| if minute >= open(day) { 300.0 } else { 100.0 },
        );
        // day 8 at 8:30: within the next 60 minutes every day opened
        let r = recurring(&h, (8 * 1440 + 510) * MIN, 0, 60 * MIN, 7).unwrap();
        assert_eq!(r.days, 7);
        assert!((r.rise - 200.0).abs() < 1.0, "{r:?}");
        assert!((r.level - 300.0).abs() < 1.0, "{r:?}");
        // at 9:15 most days have opened: little rise is left to see, but
        // the level the median day reached is still there
        let r = recurring(&h, (8 * 1440 + 555) * MIN, 0, 60 * MIN, 7).unwrap();
        assert!(r.rise < 1.0 && (r.level - 300.0).abs() < 1.0, "{r:?}");
        // after the opening there is nothing more to rise by
        let r = recurring(&h, (8 * 1440 + 600) * MIN, 0, 60 * MIN, 7).unwrap();
        assert!(r.high.abs() < 1.0, "{r:?}");
        // long before it, neither
        let r = recurring(&h, (8 * 1440 + 300) * MIN, 0, 60 * MIN, 7).unwrap();
        assert!(r.high.abs() < 1.0, "{r:?}");
    }

    /// A working day: from 100 at 6:00 the load climbs to 160 at 9:00,
    /// and opens to 400 there (`ramp` false: flat at 100 until the
    /// opening), the whole day `late(day)` minutes late, times a noise of
    /// 3% that differs from day to day.
    fn late_days(ramp: bool, late: impl Fn(i64) -> i64) -> History {
        history(9, |day, minute| {
            let m = minute - late(day);
            let v = if m >= 540 {
                400.0
            } else if ramp && m >= 360 {
                100.0 + 60.0 * (m - 360) as f64 / 180.0
            } else {
                100.0
            };
            // splitmix64 of the minute: noise with no pattern a shift
            // could match
            let noise = Rng::new((day * 1440 + minute) as u64).unit() - 0.5;
            v * (1.0 + 0.06 * noise)
        })
    }

    #[test]
    fn near_is_the_rise_within_the_first_part_of_the_window() {
        // every day opens from 100 to 300 at 9:00 sharp; now is 8:40
        let h = history(8, |_, minute| if minute >= 540 { 300.0 } else { 100.0 });
        let now = (8 * 1440 + 520) * MIN;
        let up_to = |near_ms| with_near(&h, now, near_ms);
        let whole = up_to(60 * MIN);
        assert!((whole.rise - 200.0).abs() < 1.0, "{whole:?}");
        assert_eq!(whole.near, Some(whole.rise));
        // the opening is 20 minutes away: not within the first 10
        let early = up_to(10 * MIN);
        assert!(early.near.unwrap().abs() < 1.0, "{early:?}");
        // the rest of the answer is the whole window's
        assert_eq!((early.rise, early.level), (whole.rise, whole.level));
        // within 25 minutes it is, whole (its first 5-minute mean after 9:00)
        let through = up_to(25 * MIN);
        assert!((through.near.unwrap() - 200.0).abs() < 1.0, "{through:?}");
        // what a call over those 25 minutes alone gives as its rise
        let alone = recurring(&h, now, 0, 25 * MIN, 7).unwrap();
        assert_eq!(through.near, Some(alone.rise));
    }

    #[test]
    fn sharp_sees_a_step_at_its_minute_and_not_a_spike_on_one_day() {
        // every day steps from 100 to 300 at 9:00 sharp; day 5 also has a
        // spike to 5,000 at 8:58; now is 8:55 and the first part of the
        // window reaches 9:00 exactly
        let h = history(8, |day, minute| match minute {
            m if m >= 540 => 300.0,
            538 if day == 5 => 5_000.0,
            _ => 100.0,
        });
        let now = (8 * 1440 + 535) * MIN;
        let at = |near_ms| with_near(&h, now, near_ms);
        let r = at(5 * MIN);
        // the 9:00 point itself: the whole step
        assert!((r.sharp.unwrap() - 200.0).abs() < 1.0, "{r:?}");
        // the 5-minute mean ending at 9:00 has a fifth of it
        assert!((r.near.unwrap() - 40.0).abs() < 1.0, "{r:?}");
        // a minute short of 9:00 neither sees the step, nor the spike
        let r = at(4 * MIN);
        assert!(r.sharp.unwrap().abs() < 1.0, "{r:?}");
        // over the whole window both read the step whole
        let r = at(60 * MIN);
        assert!((r.sharp.unwrap() - 200.0).abs() < 1.0, "{r:?}");
        assert!((r.near.unwrap() - 200.0).abs() < 1.0, "{r:?}");
    }

    #[test]
    fn a_day_late_all_day_is_read_late_with_align() {
        // the previous days open within 5 minutes of 9:00; today (day 8)
        // runs 40 minutes late all day, its climb too
        let late = |day: i64| if day == 8 { 40 } else { day % 3 * 5 - 5 };
        let h = late_days(true, late);
        // today at 9:05: the previous days had opened by now, so read at
        // today's time of day they show no rise left within 40 minutes
        let now = (8 * 1440 + 545) * MIN;
        let at_the_hour = super::recurring(&h, now, Reach::window(0, 40 * MIN), 7, 0).unwrap();
        assert!(at_the_hour.rise < 20.0, "{at_the_hour:?}");
        // aligned on today's climb, each is read 40 minutes earlier (give
        // or take its own 5), where its opening is still ahead: from
        // about 150 to 400
        let aligned = super::recurring(&h, now, Reach::window(0, 40 * MIN), 7, 3_600_000).unwrap();
        assert!(aligned.rise > 200.0 && aligned.rise < 280.0, "{aligned:?}");
        assert_eq!(aligned.days, 7);
    }

    #[test]
    fn a_flat_morning_gives_no_shift() {
        // the same days without the climb: today's last three hours are
        // noise around 100 on every day, and no shift fits twice as well
        // as none, so the days are read at today's time of day (a shift
        // taken by chance would show their opening within the window)
        let h = late_days(false, |day| if day == 8 { 40 } else { 0 });
        let now = (8 * 1440 + 545) * MIN;
        let plain = super::recurring(&h, now, Reach::window(0, 40 * MIN), 7, 0).unwrap();
        let aligned = super::recurring(&h, now, Reach::window(0, 40 * MIN), 7, 3_600_000).unwrap();
        assert_eq!(plain, aligned);
        assert!(aligned.rise < 20.0, "{aligned:?}");
    }

    #[test]
    fn the_same_day_a_week_before_shows_the_weekly_season() {
        // day 0 is a Monday; working days open from 100 to 300 at 9:00,
        // weekends (days 5 and 6 of each week) and a holiday (day 7) from
        // 50 to 100: a third of the level
        let off = |day: i64| day % 7 >= 5 || day == 7;
        let load = |day: i64, minute: i64| {
            let v = if minute >= 540 { 300.0 } else { 100.0 };
            if off(day) {
                v / 3.0
            } else {
                v
            }
        };
        // a Saturday at 8:30: the median day is a working day's, the week
        // (day 5, a Saturday) a weekend's
        let r = recurring(&history(13, load), (12 * 1440 + 510) * MIN, 0, 60 * MIN, 14).unwrap();
        assert!((r.rise - 200.0).abs() < 1.0, "{r:?}");
        assert!((r.week.unwrap() - 1.0 / 3.0).abs() < 0.01, "{r:?}");
        // a Monday after the Monday holiday: the Monday before it counts
        let r = recurring(&history(14, load), (14 * 1440 + 510) * MIN, 0, 60 * MIN, 14).unwrap();
        assert!((r.week.unwrap() - 1.0).abs() < 0.01, "{r:?}");
        // only the holiday a week ago, with 7 days asked for
        let r = recurring(&history(14, load), (14 * 1440 + 510) * MIN, 0, 60 * MIN, 7).unwrap();
        assert!((r.week.unwrap() - 1.0 / 3.0).abs() < 0.01, "{r:?}");
        // a working day a week ago (not a holiday now) that opened before
        // this time of day (at 8:00; at 8:30 its rise is behind it) still
        // counts whole
        let early = |day: i64, minute: i64| match day {
            7 if minute >= 480 => 300.0,
            7 => 100.0,
            _ => load(day, minute),
        };
        let r = recurring(&history(14, early), (14 * 1440 + 510) * MIN, 0, 60 * MIN, 7).unwrap();
        assert!((r.week.unwrap() - 1.0).abs() < 0.01, "{r:?}");
        // the week over a wider window in the same call: what a call over
        // that window answers for it, and the rest what the narrow one does
        let h = history(13, load);
        let now = (12 * 1440 + 480) * MIN;
        let both = with_week(&h, now, 40 * MIN, 100 * MIN, 14).unwrap();
        let narrow = recurring(&h, now, 0, 40 * MIN, 14).unwrap();
        let wide = recurring(&h, now, 0, 100 * MIN, 14).unwrap();
        assert_eq!(both.week, wide.week);
        assert_ne!(both.week, narrow.week, "{narrow:?}");
        assert_eq!(
            (both.rise, both.level, both.days),
            (narrow.rise, narrow.level, narrow.days)
        );
        // fewer than 7 days asked for: no week
        let r = recurring(&history(14, load), (14 * 1440 + 510) * MIN, 0, 60 * MIN, 6).unwrap();
        assert_eq!(r.week, None);
    }

    #[test]
    fn a_spike_on_one_day_moves_only_the_upper_quartile() {
        // a 30-minute spike at 14:00 on day 5 only
        let h = history(8, |day, minute| {
            if day == 5 && (840..870).contains(&minute) {
                1000.0
            } else {
                100.0
            }
        });
        let r = recurring(&h, (8 * 1440 + 830) * MIN, 0, 30 * MIN, 7).unwrap();
        assert!(r.rise.abs() < 1e-3, "{r:?}");
        assert!(r.low.abs() < 1e-3 && r.high.abs() < 1e-3, "{r:?}");
        // a two-minute spike every day is diluted by the 5-minute mean
        let h = history(8, |_, minute| {
            if (840..842).contains(&minute) {
                600.0
            } else {
                100.0
            }
        });
        let r = recurring(&h, (8 * 1440 + 830) * MIN, 0, 30 * MIN, 7).unwrap();
        assert!((r.rise - 200.0).abs() < 1.0, "{r:?}");
    }

    #[test]
    fn too_few_days_or_gaps_give_no_answer() {
        let h = history(2, |_, _| 100.0);
        assert_eq!(recurring(&h, (2 * 1440 + 600) * MIN, 0, 30 * MIN, 7), None);
        // gaps over the base on every day but two
        let h = history(8, |day, minute| {
            if day >= 2 && (590..600).contains(&minute) {
                f64::NAN
            } else {
                100.0
            }
        });
        assert_eq!(recurring(&h, (8 * 1440 + 600) * MIN, 0, 30 * MIN, 7), None);
        let h = history(8, |_, _| 100.0);
        assert_eq!(recurring(&h, (8 * 1440 + 600) * MIN, 30 * MIN, 0, 7), None);
    }

    #[test]
    fn a_fine_history_step_answers_short_windows_only() {
        // a step of a second: a day's window would read 86,400 steps a day
        let h = history_at(1, 4, |_, _| 100.0);
        let now = 4 * 86_400 * 1000;
        assert_eq!(recurring(&h, now, 0, 86_400_000, 3), None);
        // ten minutes (600 steps, and 480 of base and smoothing) is within
        let r = recurring(&h, now, 0, 10 * MIN, 3).unwrap();
        assert!(r.rise.abs() < 1e-6 && r.days == 3, "{r:?}");
        // at a step of 20 s (8 days, so that a week ago has data) a week's
        // window of a day is too long to read: no week, the rest answered
        let h = history_at(20, 8, |_, _| 100.0);
        let now = 8 * 86_400 * 1000;
        let short = with_week(&h, now, 10 * MIN, 20 * MIN, 7).unwrap();
        assert!((short.week.unwrap() - 1.0).abs() < 1e-6, "{short:?}");
        let long = with_week(&h, now, 10 * MIN, 86_400_000, 7).unwrap();
        assert_eq!((long.week, long.rise), (None, short.rise));
    }
}
