//! Built-in forecasters: additive Holt-Winters with
//! a damped trend, and damped Holt (no season) for series too short for
//! one. Parameters are fitted on the history by a grid search of one-step
//! errors; an update is O(1); prediction intervals come from the one-step
//! residuals, widened with the horizon as sqrt(h) (the random-walk
//! approximation: conservative for the seasonal part). With a season, the
//! residual spread is kept per slot of the season (24 slots: the hour of a
//! daily season), so a quiet hour gets a narrow interval and a bursty hour
//! a wide one; a slot with too few residuals uses the overall spread.

/// A forecast for one horizon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
}

/// A fitted forecaster, updated one observation at a time. Serializable:
/// a state snapshot carries it, so a restarted scaler forecasts at once.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HoltWinters {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    /// Trend damping; 1 is an undamped trend.
    pub phi: f64,
    /// Season length in steps; 0 for none.
    pub season: usize,
    level: f64,
    trend: f64,
    seasonals: Vec<f64>,
    /// The index into `seasonals` of the next observation.
    pos: usize,
    /// Mean squared one-step error.
    mse: f64,
    n: u64,
    /// Mean squared one-step error and count per slot of the season.
    slot_mse: Vec<(f64, u64)>,
}

/// The state a fit starts every candidate from.
struct Initial {
    level: f64,
    trend: f64,
    seasonals: Vec<f64>,
}

/// Slots of the season with their own residual spread.
const SLOTS: usize = 24;
/// Residuals a slot needs before its own spread is used.
const SLOT_MIN: u64 = 30;

const ALPHAS: [f64; 5] = [0.05, 0.1, 0.2, 0.4, 0.7];
const BETAS: [f64; 4] = [0.0, 0.01, 0.05, 0.2];
const GAMMAS: [f64; 4] = [0.05, 0.1, 0.3, 0.5];
const PHIS: [f64; 3] = [0.9, 0.98, 1.0];
/// z for a 90% two-sided interval.
const Z90: f64 = 1.645;

impl HoltWinters {
    /// Initial level and trend from the first two seasons (or the first
    /// points); initial seasonals from every whole season in `series`: per
    /// step of the season, the median of its deviations from its season's
    /// mean. The median keeps a burst seen on one day of several out of
    /// the season; a season started from one day would carry that day's
    /// bursts at a low gamma for the whole fit.
    fn initial(series: &[f64], season: usize) -> Initial {
        if season == 0 {
            return Initial {
                level: series[0],
                trend: series.get(1).map_or(0.0, |y| y - series[0]),
                seasonals: Vec::new(),
            };
        }
        let means: Vec<f64> = series
            .chunks_exact(season)
            .map(|c| c.iter().sum::<f64>() / season as f64)
            .collect();
        let mut column = Vec::with_capacity(means.len());
        let seasonals = (0..season)
            .map(|p| {
                column.clear();
                column.extend(
                    means
                        .iter()
                        .enumerate()
                        .map(|(j, m)| series[j * season + p] - m),
                );
                median(&mut column)
            })
            .collect();
        Initial {
            level: means[0],
            trend: (means[1] - means[0]) / season as f64,
            seasonals,
        }
    }

    fn start(init: &Initial, season: usize, alpha: f64, beta: f64, gamma: f64, phi: f64) -> Self {
        let (level, trend, seasonals) = (init.level, init.trend, init.seasonals.clone());
        Self {
            alpha,
            beta,
            gamma,
            phi,
            season,
            level,
            trend,
            seasonals,
            pos: 0,
            mse: 0.0,
            n: 0,
            slot_mse: if season > 0 {
                vec![(0.0, 0); SLOTS.min(season)]
            } else {
                Vec::new()
            },
        }
    }

    /// Fits on `series` (one value per step). With `season` > 0 and at
    /// least two seasons of data: Holt-Winters; otherwise damped Holt.
    /// None for fewer than 3 points or a non-finite value.
    pub fn fit(series: &[f64], season: usize) -> Option<Self> {
        Self::search(series, season, true)
    }

    /// The search without skipping: what [`fit`](Self::fit) must equal.
    #[cfg(test)]
    pub(crate) fn fit_exhaustive(series: &[f64], season: usize) -> Option<Self> {
        Self::search(series, season, false)
    }

    /// The grid search over the smoothing parameters, the lowest mean
    /// squared one-step error winning (the first in grid order on a tie).
    /// With `prune`, a candidate stops once its sum of squared errors
    /// passes the best model's whole sum, or that of a typical grid point
    /// computed first (the sum only grows, so it cannot win; the margin
    /// covers the running mean's rounding): the same model, far sooner.
    fn search(series: &[f64], season: usize, prune: bool) -> Option<Self> {
        if series.len() < 3 || series.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let season = if season >= 2 && series.len() >= 2 * season {
            season
        } else {
            0
        };
        let gammas: &[f64] = if season > 0 { &GAMMAS } else { &[0.0] };
        let init = Self::initial(series, season);
        let run = |alpha, beta, gamma, phi, bound: f64| {
            let mut m = Self::start(&init, season, alpha, beta, gamma, phi);
            for chunk in series.chunks(256) {
                for &y in chunk {
                    m.update(y);
                }
                if m.mse * m.n as f64 > bound {
                    return None;
                }
            }
            Some(m)
        };
        let guess = match prune {
            true => run(
                0.2,
                0.01,
                gammas[gammas.len().min(2) - 1],
                0.98,
                f64::INFINITY,
            )
            .map_or(f64::INFINITY, |m| m.mse * m.n as f64),
            false => f64::INFINITY,
        };
        let mut best: Option<Self> = None;
        for &alpha in &ALPHAS {
            for &beta in &BETAS {
                for &gamma in gammas {
                    for &phi in &PHIS {
                        let bound = best
                            .as_ref()
                            .map_or(f64::INFINITY, |b| b.mse * b.n as f64)
                            .min(guess)
                            * (1.0 + 1e-6);
                        let bound = if prune { bound } else { f64::INFINITY };
                        if let Some(m) = run(alpha, beta, gamma, phi, bound) {
                            if best.as_ref().is_none_or(|b| m.mse < b.mse) {
                                best = Some(m);
                            }
                        }
                    }
                }
            }
        }
        best
    }

    fn seasonal(&self, ahead: usize) -> f64 {
        if self.season == 0 {
            0.0
        } else {
            self.seasonals[(self.pos + ahead) % self.season]
        }
    }

    /// The slot of the season `ahead` steps from the next observation.
    fn slot(&self, ahead: usize) -> usize {
        (self.pos + ahead) % self.season * self.slot_mse.len() / self.season
    }

    /// The mean squared one-step error for the step `ahead` steps from the
    /// next observation: its slot's, once the slot has enough residuals.
    fn spread(&self, ahead: usize) -> f64 {
        if self.season == 0 {
            return self.mse;
        }
        match self.slot_mse[self.slot(ahead)] {
            (mse, n) if n >= SLOT_MIN => mse,
            _ => self.mse,
        }
    }

    /// Takes the next observation. A missing one (NaN) is replaced by the
    /// model's own prediction, so the season stays aligned.
    pub fn update(&mut self, y: f64) {
        // `pos` is always below `season`: the slot's value without a modulo
        let s = if self.season == 0 {
            0.0
        } else {
            self.seasonals[self.pos]
        };
        let predicted = self.level + self.phi * self.trend + s;
        let y = if y.is_finite() {
            let err = y - predicted;
            self.n += 1;
            self.mse += (err * err - self.mse) / self.n as f64;
            if let Some(slot) = (self.pos * self.slot_mse.len()).checked_div(self.season) {
                let (mse, n) = &mut self.slot_mse[slot];
                *n += 1;
                *mse += (err * err - *mse) / *n as f64;
            }
            y
        } else {
            predicted
        };
        let prev_level = self.level;
        self.level =
            self.alpha * (y - s) + (1.0 - self.alpha) * (prev_level + self.phi * self.trend);
        self.trend =
            self.beta * (self.level - prev_level) + (1.0 - self.beta) * self.phi * self.trend;
        if self.season > 0 {
            self.seasonals[self.pos] = self.gamma * (y - self.level) + (1.0 - self.gamma) * s;
            self.pos += 1;
            if self.pos == self.season {
                self.pos = 0;
            }
        }
    }

    /// Whether a model read back from a snapshot is one this code can run:
    /// finite numbers and arrays of the lengths its season implies.
    /// The seasonal terms, moved out: a snapshot (format 2) keeps them as
    /// bytes beside its JSON, where 1,440 numbers as text were most of
    /// its encoding and decoding. [`HoltWinters::is_sound`] is false
    /// until they are put back.
    pub fn take_seasonals(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.seasonals)
    }

    /// Puts seasonal terms back (see [`HoltWinters::take_seasonals`]).
    pub fn put_seasonals(&mut self, seasonals: Vec<f64>) {
        self.seasonals = seasonals;
    }

    pub fn is_sound(&self) -> bool {
        let finite = [
            self.alpha, self.beta, self.gamma, self.phi, self.level, self.trend, self.mse,
        ]
        .iter()
        .all(|x| x.is_finite());
        finite
            && self.seasonals.len() == self.season
            && self.seasonals.iter().all(|x| x.is_finite())
            && (self.season == 0 || self.pos < self.season)
            && self.slot_mse.len()
                == if self.season > 0 {
                    SLOTS.min(self.season)
                } else {
                    0
                }
    }

    /// The forecast `h` steps ahead (h >= 1) with a 90% interval.
    pub fn forecast(&self, h: usize) -> Point {
        let h = h.max(1);
        let damp = damped_sum(self.phi, h);
        let value = self.level + damp * self.trend + self.seasonal(h - 1);
        let half = Z90 * self.spread(h - 1).sqrt() * (h as f64).sqrt();
        Point {
            value,
            lower: value - half,
            upper: value + half,
        }
    }
}

/// phi + phi^2 + ... + phi^h in closed form: a forecast across a long
/// gap (a target quiet for a day, a scaler restarted from a day-old
/// snapshot: h in the thousands) costs what a forecast a step ahead does.
fn damped_sum(phi: f64, h: usize) -> f64 {
    if (1.0 - phi).abs() < 1e-12 {
        return h as f64;
    }
    let h = i32::try_from(h).unwrap_or(i32::MAX);
    phi * (1.0 - phi.powi(h)) / (1.0 - phi)
}

/// The median of `xs` (not empty; reordered).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The season length among `candidates` (in steps) with the strongest
/// autocorrelation of the linearly detrended series, if any reaches
/// `min_acf`; among those within 90% of the best, the shortest (a multiple
/// of a season correlates as well as the season itself).
pub fn detect_season(series: &[f64], candidates: &[usize], min_acf: f64) -> Option<usize> {
    let n = series.len();
    if n < 4 {
        return None;
    }
    let t_mean = (n - 1) as f64 / 2.0;
    let y_mean = series.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in series.iter().enumerate() {
        let dt = i as f64 - t_mean;
        sxy += dt * (y - y_mean);
        sxx += dt * dt;
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let r: Vec<f64> = series
        .iter()
        .enumerate()
        .map(|(i, y)| y - y_mean - slope * (i as f64 - t_mean))
        .collect();
    let var: f64 = r.iter().map(|x| x * x).sum();
    if var <= 0.0 {
        return None;
    }
    let acf = |lag: usize| -> f64 {
        if lag == 0 || lag * 2 > n {
            return f64::NEG_INFINITY;
        }
        let c: f64 = (0..n - lag).map(|i| r[i] * r[i + lag]).sum();
        c / var * n as f64 / (n - lag) as f64
    };
    let scored: Vec<(usize, f64)> = candidates.iter().map(|&c| (c, acf(c))).collect();
    let best = scored.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
    if best < min_acf {
        return None;
    }
    scored
        .iter()
        .filter(|s| s.1 >= 0.9 * best)
        .map(|s| s.0)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_damped_sum_in_closed_form_is_the_sum() {
        for phi in [0.8, 0.9, 0.98, 0.999, 1.0] {
            for h in [1usize, 2, 7, 100, 1_440, 20_160] {
                let looped: f64 = (1..=h).map(|i| f64::powi(phi, i as i32)).sum();
                let closed = damped_sum(phi, h);
                assert!(
                    (closed - looped).abs() <= 1e-9 * looped.max(1.0),
                    "phi {phi} h {h}: {closed} against {looped}"
                );
            }
        }
    }

    /// Skipping hopeless candidates changes nothing: on smooth, noisy,
    /// trending, spiky, constant and short series, with and without a
    /// season, the chosen model is the exhaustive search's, bit for bit.
    #[test]
    fn the_pruned_search_chooses_what_the_exhaustive_one_does() {
        let shapes: Vec<(&str, Vec<f64>, usize)> = vec![
            (
                "daily",
                (0..2000).map(|t| truth(t) + 3.0 * noise(t)).collect(),
                24,
            ),
            (
                "daily at a minute",
                (0..4000)
                    .map(|t| {
                        50.0 + 40.0 * (2.0 * std::f64::consts::PI * t as f64 / 1440.0).sin()
                            + 5.0 * noise(t)
                    })
                    .collect(),
                1440,
            ),
            (
                "spiky",
                (0..1500)
                    .map(|t| if t % 97 < 3 { 900.0 } else { 20.0 + noise(t) })
                    .collect(),
                24,
            ),
            (
                "trend only",
                (0..800).map(|t| 5.0 + 0.1 * t as f64 + noise(t)).collect(),
                0,
            ),
            ("constant", vec![7.0; 600], 24),
            ("short", vec![1.0, 4.0, 2.0, 8.0, 5.0], 2),
        ];
        for (name, series, season) in shapes {
            assert_eq!(
                HoltWinters::fit(&series, season),
                HoltWinters::fit_exhaustive(&series, season),
                "{name}"
            );
        }
    }

    /// Deterministic noise in [-1, 1].
    fn noise(i: usize) -> f64 {
        let x = ((i as u64)
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 33) as f64;
        x / (1u64 << 31) as f64 * 2.0 - 1.0
    }

    fn truth(t: usize) -> f64 {
        100.0 + 0.5 * t as f64 + 20.0 * (2.0 * std::f64::consts::PI * t as f64 / 24.0).sin()
    }

    #[test]
    fn recovers_a_known_season_and_trend() {
        let series: Vec<f64> = (0..240).map(|t| truth(t) + noise(t)).collect();
        let m = HoltWinters::fit(&series, 24).unwrap();
        assert_eq!(m.season, 24);
        // The next season, against the noiseless truth: within 3% at every
        // horizon, 1.5% on average (the stated error of this forecaster on
        // a clean season with +-1 noise).
        let mut total = 0.0;
        for h in 1..=24 {
            let f = m.forecast(h);
            let want = truth(239 + h);
            let err = (f.value - want).abs() / want;
            assert!(err < 0.03, "h {h}: {} vs {want}", f.value);
            assert!(f.lower < f.value && f.value < f.upper);
            total += err;
        }
        assert!(total / 24.0 < 0.015, "mean error {}", total / 24.0);
        // Intervals widen with the horizon and hold the truth.
        let (near, far) = (m.forecast(1), m.forecast(24));
        assert!(far.upper - far.lower > near.upper - near.lower);
        assert!(far.lower <= truth(263) && truth(263) <= far.upper);
    }

    #[test]
    fn intervals_follow_the_residual_spread_of_their_slot_of_the_season() {
        // A daily-like season of 48 steps: quiet (+-0.1 noise) in its first
        // half, bursty (+-10 noise) in its second.
        let noisy = |t: usize| if t % 48 < 24 { 0.1 } else { 10.0 };
        let series: Vec<f64> = (0..48 * 20).map(|t| 100.0 + noisy(t) * noise(t)).collect();
        let m = HoltWinters::fit(&series, 48).unwrap();
        assert_eq!(m.season, 48);
        // The next step (t = 960) is in the quiet half; 30 steps on, in the
        // bursty half.
        let width = |h: usize| {
            let f = m.forecast(h);
            (f.upper - f.lower) / (h as f64).sqrt()
        };
        let (quiet, bursty) = (width(1), width(31));
        assert!(
            bursty > 10.0 * quiet,
            "quiet slot {quiet}, bursty slot {bursty}"
        );
        // The overall spread would give both the same width per sqrt(h).
        assert!(
            quiet < 2.0 * Z90 * m.mse.sqrt() / 3.0,
            "quiet {quiet}, overall {}",
            m.mse.sqrt()
        );
    }

    #[test]
    fn a_burst_in_one_season_does_not_stay_in_the_season() {
        // 4 seasons of 48 steps (fewer than a fit's span of seven), flat at 100
        // (+-3 noise), with a burst of +40 at steps 20..24 of the first
        // season only: a one-off incident.
        let burst = |t: usize| t < 48 && (20..24).contains(&t);
        let series: Vec<f64> = (0..48 * 4)
            .map(|t| 100.0 + 3.0 * noise(t) + if burst(t) { 40.0 } else { 0.0 })
            .collect();
        let m = HoltWinters::fit(&series, 48).unwrap();
        // The next season's steps 20..24 are h = 21..24 ahead.
        for h in 21..=24 {
            let f = m.forecast(h);
            assert!(
                (f.value - 100.0).abs() < 5.0,
                "h {h}: {} (the first season's burst is still in the season)",
                f.value
            );
        }
    }

    #[test]
    fn damped_holt_without_enough_history_for_a_season() {
        let series: Vec<f64> = (0..30).map(|t| 5.0 + 2.0 * t as f64).collect();
        let m = HoltWinters::fit(&series, 24).unwrap();
        assert_eq!(m.season, 0, "30 points are less than two seasons");
        let f = m.forecast(10);
        let want = 5.0 + 2.0 * 39.0;
        assert!(
            (f.value - want).abs() / want < 0.05,
            "{} vs {want}",
            f.value
        );
        assert!(HoltWinters::fit(&[1.0, 2.0], 0).is_none());
        assert!(HoltWinters::fit(&[1.0, f64::NAN, 2.0], 0).is_none());
    }

    #[test]
    fn detects_the_season_by_autocorrelation() {
        let series: Vec<f64> = (0..24 * 14).map(|t| truth(t) + noise(t)).collect();
        assert_eq!(detect_season(&series, &[12, 24, 48, 168], 0.3), Some(24));
        let flat: Vec<f64> = (0..500).map(|t| 10.0 + noise(t)).collect();
        assert_eq!(detect_season(&flat, &[12, 24, 48], 0.3), None);
    }
}
