//! Generated load traces, so a policy is judged on shapes nobody tuned it
//! on: a seed and a kind give the same trace on every machine.
//!
//! - **Seasonal**: a daily shape of a morning and an evening peak whose
//!   heights, widths and hours are drawn per trace, on top of a working
//!   day that opens sharply (the load steps up within 1 to 10 minutes,
//!   as at 9:00 when a shop opens or a batch starts, like crane-input15's
//!   19:01 jump) and closes gently; all its timing jitters by about 20
//!   minutes from day to day; a weekend dip, a
//!   trend, multiplicative noise, one or two holidays (a weekday that
//!   looks like a Sunday), a level shift at a random day, a few bursts at
//!   random hours, and gaps (missing rows).
//! - **Bursty**: a weak daily cycle under frequent bursts of varied height
//!   and length, noise and gaps.
//!
//! Levels are arbitrary units; `simulate --corpus` scales capacity to each
//! trace's peak, as for the real ones.

use crate::clock::Millis;

use super::trace::Trace;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Seasonal,
    Bursty,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Seasonal => "seasonal",
            Kind::Bursty => "bursty",
        }
    }
}

/// splitmix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-12);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Midnight UTC of Monday 2026-01-05, the first generated day.
const START_S: i64 = 1_767_571_200;
const DAY_S: i64 = 86_400;

/// A generated trace of `days` days at `step_s` seconds.
pub fn generate(kind: Kind, seed: u64, days: u32, step_s: u32) -> Trace {
    generate_parts(kind, seed, days, step_s).0
}

/// [`generate`], and beside it the trace's predictable part: the same
/// load at every step (no gaps) without its noise and its bursts, so with
/// each day's timing jitter, the weekends, the holidays, the trend and the
/// level shift. A policy that knew it would know every rise that recurs,
/// to the minute; what is left for it to miss is noise and bursts. Written
/// as clean/NAME.csv by `simulate --write-generated`, for diagnostics such
/// as the bound in docs/PREDICTIVE.md.
pub fn generate_parts(kind: Kind, seed: u64, days: u32, step_s: u32) -> (Trace, Trace) {
    let mut r = Rng::new(seed.wrapping_mul(2).wrapping_add(kind as u64));
    let step_s = i64::from(step_s.max(1));
    let n = i64::from(days) * DAY_S / step_s;
    let base = r.range(50.0, 200.0);
    let noise = r.range(0.03, 0.12);
    // per-trace daily shape
    let (m_hour, m_height, m_width) = (r.range(8.0, 11.0), r.range(0.8, 2.5), r.range(0.6, 2.0));
    let (e_hour, e_height, e_width) = (r.range(17.0, 21.0), r.range(0.5, 2.0), r.range(0.8, 2.5));
    // the working day: opens at `o_hour` within `o_ramp` hours, `o_height`
    // above the rest, closes at `c_hour` over about an hour
    let (o_hour, o_ramp, o_height) = (
        r.range(7.0, 10.0),
        r.range(1.0, 10.0) / 60.0,
        r.range(0.5, 2.0),
    );
    let c_hour = r.range(16.0, 20.0);
    let weekend = r.range(0.35, 0.9);
    let trend = r.range(-0.25, 0.35);
    let cycle = match kind {
        Kind::Seasonal => 1.0,
        Kind::Bursty => r.range(0.0, 0.3),
    };
    // per-day timing jitter (about 20 minutes) and holidays
    let jitter: Vec<f64> = (0..days).map(|_| r.normal() * 20.0 / 60.0).collect();
    let holidays: Vec<u32> = (0..r.range(1.0, 3.0) as u32)
        .map(|_| r.range(7.0, f64::from(days.max(8))) as u32)
        .collect();
    let shift = match kind {
        Kind::Seasonal => Some((
            r.range(f64::from(days) * 0.4, f64::from(days) * 0.9),
            r.range(0.7, 1.4),
        )),
        Kind::Bursty => None,
    };
    // bursts: (start s, length s, factor)
    let burst_count = match kind {
        Kind::Seasonal => r.range(2.0, 6.0) as usize,
        Kind::Bursty => (f64::from(days) * r.range(1.5, 4.0)) as usize,
    };
    let mut bursts: Vec<(i64, i64, f64)> = (0..burst_count)
        .map(|_| {
            let start = (r.unit() * (days as f64) * DAY_S as f64) as i64;
            let len = r.range(5.0, 90.0) as i64 * 60;
            let factor = match kind {
                Kind::Seasonal => r.range(1.5, 3.0),
                Kind::Bursty => r.range(2.0, 15.0),
            };
            (start, len, factor)
        })
        .collect();
    bursts.sort_by_key(|b| b.0);
    // gaps: (start s, length s)
    let gaps: Vec<(i64, i64)> = (0..r.range(1.0, 4.0) as usize)
        .map(|_| {
            (
                (r.unit() * days as f64 * DAY_S as f64) as i64,
                r.range(10.0, 60.0) as i64 * 60,
            )
        })
        .collect();
    let bump = |h: f64, at: f64, width: f64| {
        // the daily distance, wrapped
        let d = ((h - at + 12.0).rem_euclid(24.0)) - 12.0;
        (-0.5 * (d / width).powi(2)).exp()
    };
    let mut points = Vec::with_capacity(n as usize);
    let mut clean = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = i * step_s;
        let gap = gaps.iter().any(|&(s, l)| t >= s && t < s + l);
        let day = (t / DAY_S) as u32;
        let hour = (t % DAY_S) as f64 / 3600.0 - jitter[day as usize];
        let weekday = day % 7; // day 0 is a Monday
        let off = weekday >= 5 || holidays.contains(&day);
        let open =
            ((hour - o_hour) / o_ramp).clamp(0.0, 1.0) * (1.0 - ((hour - c_hour).clamp(0.0, 1.0)));
        let shape = 0.35
            + m_height * bump(hour, m_hour, m_width)
            + e_height * bump(hour, e_hour, e_width)
            + o_height * open;
        let mut v = base * (1.0 + cycle * (shape - 1.0).max(-0.65));
        if off {
            v *= 1.0 - cycle * (1.0 - weekend);
        }
        v *= 1.0 + trend * t as f64 / (f64::from(days) * DAY_S as f64);
        if let Some((at_day, f)) = shift {
            if t as f64 >= at_day * DAY_S as f64 {
                v *= f;
            }
        }
        clean.push(((START_S + t) as Millis * 1000, v.max(0.0)));
        if gap {
            continue;
        }
        for &(s, l, f) in &bursts {
            if t >= s && t < s + l {
                v *= f;
            }
        }
        v *= (noise * r.normal()).exp();
        points.push(((START_S + t) as Millis * 1000, v.max(0.0)));
    }
    (Trace { points }, Trace { points: clean })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_trace_and_another_seed_another() {
        let a = generate(Kind::Seasonal, 7, 21, 60);
        let b = generate(Kind::Seasonal, 7, 21, 60);
        let c = generate(Kind::Seasonal, 8, 21, 60);
        assert_eq!(a.points, b.points);
        assert_ne!(a.points, c.points);
        assert_ne!(
            generate(Kind::Bursty, 7, 21, 60).points,
            a.points,
            "the kind is part of the seed"
        );
        // gaps: fewer rows than steps; times rising; values non-negative
        assert!(a.points.len() < 21 * 1440 && a.points.len() > 20 * 1440);
        assert!(a.points.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(a.points.iter().all(|p| p.1 >= 0.0 && p.1.is_finite()));
    }

    /// The predictable part has every step, and the trace is it times
    /// noise and bursts: on a seasonal trace (few bursts) the ratio's
    /// median is about 1 and its spread the noise's.
    #[test]
    fn the_clean_part_is_the_trace_without_its_noise_and_bursts() {
        let (t, clean) = generate_parts(Kind::Seasonal, 7, 21, 60);
        assert_eq!(clean.points.len(), 21 * 1440);
        let by: std::collections::HashMap<_, _> = clean.points.iter().copied().collect();
        let mut ratio: Vec<f64> = t.points.iter().map(|&(ts, v)| (v / by[&ts]).ln()).collect();
        ratio.sort_by(f64::total_cmp);
        let median = ratio[ratio.len() / 2];
        let spread = (ratio[ratio.len() * 3 / 4] - ratio[ratio.len() / 4]) / 1.349;
        assert!(median.abs() < 0.02, "median log ratio {median}");
        assert!(spread > 0.02 && spread < 0.13, "noise spread {spread}");
        // and the clean part is smooth: neighbours differ by far less
        let jumps = clean
            .points
            .windows(2)
            .filter(|w| (w[1].1 / w[0].1).ln().abs() > 0.2)
            .count();
        assert!(jumps < 60, "{jumps} steps of more than 20%");
    }

    /// A seasonal trace repeats day to day (autocorrelation at one day
    /// high); a bursty one's peaks tower over its mean.
    #[test]
    fn the_kinds_have_their_shapes() {
        let series = |t: &Trace| {
            t.resample(60_000)
                .into_iter()
                .map(|p| p.1)
                .collect::<Vec<_>>()
        };
        for seed in 0..4 {
            let s = series(&generate(Kind::Seasonal, seed, 21, 60));
            assert!(
                acf(&s, 1440) > 0.5,
                "seed {seed}: daily autocorrelation {}",
                acf(&s, 1440)
            );
            let b = series(&generate(Kind::Bursty, seed, 21, 60));
            let mean = b.iter().sum::<f64>() / b.len() as f64;
            let peak = b.iter().cloned().fold(0.0, f64::max);
            assert!(peak / mean > 3.0, "seed {seed}: peak/mean {}", peak / mean);
        }
    }

    fn acf(x: &[f64], lag: usize) -> f64 {
        super::super::corpus::autocorrelation(x, lag)
    }
}
