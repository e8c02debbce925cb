//! The built-in forecaster of one target: a Holt-Winters model per metric
//! that a policy asked about, fed one point per history step (O(1) each)
//! and refitted every `refit` on a snapshot of the history. In `run` a
//! refit runs on its own thread and the old model answers until the new
//! one is ready (then it catches up on the points since its snapshot);
//! the simulator refits inline, so its runs are reproducible.

use std::cell::Cell;
use std::sync::mpsc;
use std::time::Duration;

use crate::clock::Millis;
use crate::event::Metric;
use crate::forecast::holt::{detect_season, HoltWinters, Point};
use crate::forecast::ForecastValue;
use crate::window::History;

/// How the season length is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Season {
    /// Detected by autocorrelation among one day and one week.
    #[default]
    Auto,
    /// None, a day or a week, whichever forecast the last day of the
    /// history best out of sample ([`choose_season`]).
    Holdout,
    /// No season: damped Holt.
    None,
    /// A fixed season length.
    Fixed(Duration),
}

/// A season that is not `auto`, `holdout`, `none` or a duration above zero.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("season {0:?} is not \"auto\", \"holdout\", \"none\" or a duration such as \"1d\"")]
pub struct BadSeason(pub String);

impl Season {
    pub fn parse(s: &str) -> Result<Season, BadSeason> {
        match s {
            "auto" => Ok(Season::Auto),
            "holdout" => Ok(Season::Holdout),
            "none" => Ok(Season::None),
            other => humantime::parse_duration(other)
                .ok()
                .filter(|d| !d.is_zero())
                .map(Season::Fixed)
                .ok_or_else(|| BadSeason(other.to_owned())),
        }
    }
}

/// Where refits run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefitMode {
    /// On a thread of its own; decisions never wait for it.
    Background,
    /// In the caller (the simulator: reproducible).
    Inline,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub season: Season,
    pub refit_ms: i64,
    pub mode: RefitMode,
}

/// The most recent points a fit looks at: seven seasons (a week of a
/// daily season, so the median the season starts from sees every day of
/// the week), at least two days of steps (the grid search is linear in
/// this).
fn fit_span(season: usize, step_ms: i64) -> usize {
    (7 * season).max((2 * 86_400_000 / step_ms.max(1)) as usize)
}

/// A phase in `[0, period)` for the next forecaster: successive calls are
/// spread evenly (the golden ratio's low-discrepancy sequence).
fn spread(period_ms: i64) -> i64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let frac = (k as f64 * 0.618_033_988_749_895).fract();
    (frac * period_ms.max(0) as f64) as i64
}

/// How often a model is refitted: `refit`, and for a season longer than
/// a week's seventh (a weekly one) at most once per seventh of its
/// season. A weekly model's parameters move little in a day, its state
/// follows every point anyway, and its fit (two weeks of points) costs
/// twice a daily one's.
fn refit_period(model: Option<&HoltWinters>, step_ms: i64, settings: &Settings) -> i64 {
    let season_ms = model.map_or(0, |m| m.season as i64 * step_ms);
    settings.refit_ms.max(season_ms / 7)
}

#[derive(Debug)]
struct Fitted {
    model: Option<HoltWinters>,
    next_step: i64,
    /// The season `holdout` chose out of sample, if it did.
    chosen: Option<usize>,
}

#[derive(Debug, Default)]
struct Slot {
    model: Option<HoltWinters>,
    /// The history step the model takes next.
    next_step: i64,
    fitted_at: Option<Millis>,
    fitted_len: usize,
    pending: Option<mpsc::Receiver<Fitted>>,
    /// When the pending refit fell due (for the refit lag).
    due_ms: Millis,
    last: f64,
    /// `holdout`'s last out-of-sample choice and when its refit started:
    /// kept for a day, so the refits between fit one season, not three.
    chosen: Option<(usize, Millis)>,
    /// The last forecast asked for, by steps ahead, until the model next
    /// changes: a policy asks every tick and the answer moves once a step
    /// (a minute), and the model's season is far from the slot in memory.
    asked: Cell<Option<(usize, Point)>>,
}

impl Slot {
    /// Takes a finished refit: its model, and `holdout`'s choice dated
    /// from when the refit started.
    fn take(&mut self, f: Fitted) {
        self.asked.set(None);
        self.model = f.model;
        self.next_step = f.next_step;
        if let (Some(season), Some(at)) = (f.chosen, self.fitted_at) {
            self.chosen = Some((season, at));
        }
    }
}

/// One target's built-in forecasters, one slot per metric.
#[derive(Debug, Default)]
pub struct Builtin {
    /// The metrics a policy asked a forecast of (a bit per `Metric`),
    /// beside each other: each of the tick's calls looks at every metric,
    /// and a flag in each slot was a line of its own to read (issue 21).
    wanted: Cell<u8>,
    slots: [Slot; 4],
}

impl Builtin {
    /// Brings the models of the metrics policies asked for up to date with
    /// `history`, and starts (or, inline, runs) a refit when one is due.
    pub fn sync(&mut self, metric: Metric, history: &History, now_ms: Millis, settings: &Settings) {
        if !self.wanted(metric) {
            return;
        }
        let slot = &mut self.slots[metric as usize];
        if let Some(rx) = &slot.pending {
            match rx.try_recv() {
                Ok(f) => {
                    slot.take(f);
                    slot.pending = None;
                    super::pool::pool().record_lag((now_ms - slot.due_ms).max(0) as u64);
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => slot.pending = None,
            }
        }
        if let Some(m) = slot.model.as_mut() {
            for (step, v) in history.since(slot.next_step) {
                m.update(f64::from(v));
                slot.next_step = step + 1;
                slot.asked.set(None);
            }
        }
        let len = history.len();
        let period = refit_period(slot.model.as_ref(), history.step_ms(), settings);
        let due = slot.pending.is_none()
            && len >= 3
            && match slot.fitted_at {
                None => true,
                Some(at) => {
                    now_ms - at >= period
                        // early on, refit as the history doubles
                        || (slot.model.as_ref().is_none_or(|m| m.season == 0)
                            && len >= 2 * slot.fitted_len)
                }
            };
        if !due {
            return;
        }
        let background = settings.mode == RefitMode::Background;
        if background && !super::pool::pool().has_room() {
            // stays due: offered again at the next sync, before any copy
            super::pool::pool().defer();
            return;
        }
        let due_ms = match slot.fitted_at {
            Some(at) if slot.model.is_some() => (at + period).min(now_ms),
            _ => now_ms,
        };
        // In the background the first fit sets a phase of its own within
        // the refit period, so the targets' refits do not fall due together.
        slot.fitted_at = Some(match slot.fitted_at {
            None if background => now_ms - spread(settings.refit_ms),
            _ => now_ms,
        });
        slot.due_ms = due_ms;
        slot.fitted_len = len;
        let step_ms = history.step_ms();
        let mut last = slot.last;
        let series: Vec<f64> = history
            .since(i64::MIN)
            .map(|(_, v)| {
                // gaps: the last value seen (a fit needs every step)
                if v.is_finite() {
                    last = f64::from(v);
                }
                last
            })
            .collect();
        slot.last = last;
        let next_step = history.next_step();
        let season = match (settings.season, slot.chosen) {
            (Season::Holdout, Some((steps, at))) if now_ms - at < CHOICE_KEPT_MS => match steps {
                0 => Season::None,
                n => Season::Fixed(Duration::from_millis(n as u64 * step_ms as u64)),
            },
            (s, _) => s,
        };
        let job = move || fit(&series, season, step_ms, next_step);
        match settings.mode {
            RefitMode::Inline => slot.take(job()),
            RefitMode::Background => {
                let (tx, rx) = mpsc::channel();
                if super::pool::pool().offer(Box::new(move || {
                    let _ = tx.send(job());
                })) {
                    slot.pending = Some(rx);
                } else {
                    // taken since has_room: due again at the next sync
                    slot.fitted_at = None;
                }
            }
        }
    }

    /// The forecast at `now + horizon` of a metric a policy already asked
    /// for, without asking for it (publishing must not make the
    /// forecaster model metrics nobody reads).
    pub fn peek(
        &self,
        metric: Metric,
        history: &History,
        now_ms: Millis,
        horizon_ms: i64,
    ) -> Option<ForecastValue> {
        if !self.wanted(metric) || self.slots[metric as usize].model.is_none() {
            return None;
        }
        self.lookup(metric, history, now_ms, horizon_ms)
    }

    /// The built-in forecast at `now + horizon`, marking the metric wanted
    /// (its model is built at the next sync).
    pub fn lookup(
        &self,
        metric: Metric,
        history: &History,
        now_ms: Millis,
        horizon_ms: i64,
    ) -> Option<ForecastValue> {
        self.want(metric);
        let slot = &self.slots[metric as usize];
        let m = slot.model.as_ref()?;
        let step_ms = history.step_ms();
        let at_step = (now_ms + horizon_ms.max(0)).div_euclid(step_ms);
        let h = (at_step - (slot.next_step - 1)).max(1) as usize;
        let p = match slot.asked.get() {
            Some((at, p)) if at == h => p,
            _ => {
                let p = m.forecast(h);
                slot.asked.set(Some((h, p)));
                p
            }
        };
        Some(ForecastValue {
            value: p.value.max(0.0),
            lower: p.lower.max(0.0),
            upper: p.upper.max(0.0),
            source: std::borrow::Cow::Borrowed(if m.season > 0 { "holt_winters" } else { "holt" }),
        })
    }

    /// The fitted state of `metric`'s forecaster, for a state snapshot;
    /// `None` when no policy asked for it.
    pub fn export(&self, metric: Metric) -> Option<ForecasterState> {
        let slot = &self.slots[metric as usize];
        self.wanted(metric).then(|| ForecasterState {
            model: slot.model.clone().filter(HoltWinters::is_sound),
            next_step: slot.next_step,
            fitted_at_ms: slot.fitted_at,
            fitted_len: slot.fitted_len,
            last: slot.last,
        })
    }

    /// Takes a snapshot's forecaster for `metric`: it answers at once and
    /// catches up on the history points since it was taken; the next refit
    /// falls due when it would have. An unsound model is dropped (refitted
    /// at the next sync).
    pub fn import(&mut self, metric: Metric, s: &ForecasterState) {
        self.want(metric);
        let slot = &mut self.slots[metric as usize];
        slot.asked.set(None);
        slot.model = s.model.clone().filter(HoltWinters::is_sound);
        slot.next_step = s.next_step;
        slot.fitted_at = if slot.model.is_some() {
            s.fitted_at_ms
        } else {
            None
        };
        slot.fitted_len = s.fitted_len;
        slot.pending = None;
        slot.last = if s.last.is_finite() { s.last } else { 0.0 };
    }

    /// Whether a policy asked for a forecast of `metric`.
    pub fn wanted(&self, metric: Metric) -> bool {
        self.wanted.get() & metric.bit() != 0
    }

    fn want(&self, metric: Metric) {
        self.wanted.set(self.wanted.get() | metric.bit());
    }

    /// Where the model of each metric a policy asked for is kept, for
    /// the tick to ask for it ahead of the next call (a slot does not
    /// move while its target's data lives; a stale address costs a
    /// wasted prefetch).
    pub fn wanted_slots(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        Metric::ALL
            .into_iter()
            .filter(|&m| self.wanted(m))
            .map(|m| &self.slots[m as usize])
            .map(|s| (s as *const Slot as usize, std::mem::size_of::<Slot>()))
    }
}

/// What a state snapshot keeps of one metric's built-in forecaster.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ForecasterState {
    pub model: Option<HoltWinters>,
    /// The history step the model takes next.
    pub next_step: i64,
    pub fitted_at_ms: Option<Millis>,
    pub fitted_len: usize,
    /// The last finite value (fills gaps before a fit).
    pub last: f64,
}

/// Chooses the season and fits on the most recent points of `series`.
fn fit(series: &[f64], season: Season, step_ms: i64, next_step: i64) -> Fitted {
    let (season, chosen) = match season {
        Season::None => (0, None),
        Season::Fixed(d) => (steps(d, step_ms), None),
        Season::Auto => (by_autocorrelation(series, step_ms), None),
        Season::Holdout => choose_season(series, step_ms),
    };
    let span = fit_span(season, step_ms).min(series.len());
    let tail = &series[series.len() - span..];
    Fitted {
        model: HoltWinters::fit(tail, season),
        next_step,
        chosen,
    }
}

/// How long `holdout`'s out-of-sample choice stands before a refit makes it
/// again (refits come every `refit`, 6 h by default).
const CHOICE_KEPT_MS: i64 = 86_400_000;
/// What `holdout` scores a season on: the last day of the history.
const HOLDOUT: Duration = DAY;
/// The horizons it scores: 10 and 30 minutes ahead (about a start-up
/// plus a policy's look-ahead, and the far end of one).
const SCORED_AHEAD: [Duration; 2] = [Duration::from_secs(600), Duration::from_secs(1_800)];

const DAY: Duration = Duration::from_secs(86_400);
const WEEK: Duration = Duration::from_secs(7 * 86_400);

/// `d` in history steps of `step_ms`.
fn steps(d: Duration, step_ms: i64) -> usize {
    (d.as_millis() as i64 / step_ms.max(1)) as usize
}

/// The season `auto` takes, in steps: among a day and a week (each with
/// two seasons of history), the one with the strongest autocorrelation
/// of at least 0.3, the shorter of two within 10% of each other; else none.
fn by_autocorrelation(series: &[f64], step_ms: i64) -> usize {
    let candidates: Vec<usize> = [steps(DAY, step_ms), steps(WEEK, step_ms)]
        .into_iter()
        .filter(|&c| c >= 2 && series.len() >= 2 * c)
        .collect();
    detect_season(series, &candidates, 0.3).unwrap_or(0)
}

/// The season `holdout` takes, in steps: none, a day or a week, whichever
/// forecasts the last day best out of sample. Each is fitted on the
/// history before that day (a season needs two of its own there) and
/// then run over the day, forecasting 10 and 30 minutes ahead from
/// every step; the lowest mean absolute error wins, the simpler on a tie.
/// Autocorrelation alone picked a season for any load that repeats
/// roughly, even where the seasonal model forecast worse than none (a
/// weak cycle under bursts), and the shorter of two seasons within 90%
/// of each other (a day where weekends differ). Autocorrelation still
/// decides (and the second value, the out-of-sample choice, is None)
/// with less history than two days and the day to score, and when it
/// finds a season too long to score that way: a week in the default two
/// weeks of history.
fn choose_season(series: &[f64], step_ms: i64) -> (usize, Option<usize>) {
    let (day, week, hold) = (
        steps(DAY, step_ms),
        steps(WEEK, step_ms),
        steps(HOLDOUT, step_ms),
    );
    let n = series.len();
    let by_acf = by_autocorrelation(series, step_ms);
    if day < 2 || n < hold + 2 * day || n - hold < 2 * by_acf {
        return (by_acf, None);
    }
    let (train, test) = series.split_at(n - hold);
    let ahead = SCORED_AHEAD.map(|d| steps(d, step_ms).max(1));
    let mut best = (f64::INFINITY, 0);
    for season in [0, day, week] {
        if season > 0 && train.len() < 2 * season {
            continue;
        }
        let span = fit_span(season, step_ms).min(train.len());
        let Some(model) = HoltWinters::fit(&train[train.len() - span..], season) else {
            continue;
        };
        let err = holdout_error(model, test, &ahead);
        if err < best.0 {
            best = (err, season);
        }
    }
    (best.1, Some(best.1))
}

/// The mean absolute error of `model`'s forecasts `ahead` steps out from
/// every step of `test`, the model taking each point of `test` as it
/// goes; infinite when nothing could be scored.
fn holdout_error(mut model: HoltWinters, test: &[f64], ahead: &[usize]) -> f64 {
    let (mut sum, mut count) = (0.0, 0usize);
    for (i, &y) in test.iter().enumerate() {
        for &k in ahead {
            if let Some(&truth) = test.get(i + k - 1) {
                if truth.is_finite() {
                    sum += (model.forecast(k).value - truth).abs();
                    count += 1;
                }
            }
        }
        model.update(y);
    }
    if count == 0 {
        f64::INFINITY
    } else {
        sum / count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forecasters' first phases spread over the refit period, so that
    /// the refits of many targets do not fall due in the same tick.
    #[test]
    fn first_refit_phases_spread_over_the_period() {
        let period = 6 * 3_600_000;
        let mut phases: Vec<i64> = (0..64).map(|_| spread(period)).collect();
        assert!(
            phases.iter().all(|&p| (0..period).contains(&p)),
            "{phases:?}"
        );
        phases.sort_unstable();
        // 64 phases in 6 h: no hour holds more than a quarter of them
        for h in 0..6 {
            let n = phases.iter().filter(|&&p| p / 3_600_000 == h).count();
            assert!(n <= 16, "hour {h}: {n} of 64");
        }
    }

    /// A weekly model is refitted at most daily; a daily one every `refit`.
    #[test]
    fn a_weekly_model_is_refitted_at_most_once_a_day() {
        let settings = Settings {
            season: Season::Auto,
            refit_ms: 6 * 3_600_000,
            mode: RefitMode::Inline,
        };
        let wave = |season: usize| -> Vec<f64> {
            (0..3 * season)
                .map(|i| 100.0 + 50.0 * (i as f64 / season as f64 * std::f64::consts::TAU).sin())
                .collect()
        };
        // at a 10-minute step a week is 1,008 steps and a day 144
        let step_ms = 600_000;
        let weekly = HoltWinters::fit(&wave(1008), 1008).unwrap();
        let daily = HoltWinters::fit(&wave(144), 144).unwrap();
        assert_eq!(refit_period(Some(&weekly), step_ms, &settings), 86_400_000);
        assert_eq!(
            refit_period(Some(&daily), step_ms, &settings),
            6 * 3_600_000
        );
        assert_eq!(refit_period(None, step_ms, &settings), 6 * 3_600_000);
    }

    fn settings(mode: RefitMode) -> Settings {
        Settings {
            season: Season::Auto,
            refit_ms: 6 * 3_600_000,
            mode,
        }
    }

    /// A history of `days` days at a minute.
    fn minutely(days: u64) -> History {
        History::new(
            Duration::from_secs(days * 86_400),
            Duration::from_secs(60),
            false,
        )
    }

    /// A daily sine of amplitude 50 around 100, one point a minute.
    fn load(t_ms: i64) -> f64 {
        100.0 + 50.0 * (2.0 * std::f64::consts::PI * t_ms as f64 / 86_400_000.0).sin()
    }

    /// Uniform noise in [-1, 1), the same for the same seed.
    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut x = seed;
        move || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    /// `holdout` takes the season that forecasts the last day best, where
    /// autocorrelation (`auto`) takes another: a week when Monday follows a quieter
    /// weekend (autocorrelation takes the day, the shorter of two close
    /// seasons), none for a wandering level under a faint daily ripple.
    #[test]
    fn holdout_takes_the_season_that_forecasts_the_last_day_best() {
        let step_ms = 600_000; // ten minutes: a day is 144 steps, a week 1,008
        let (day, week) = (144, 1008);
        let mut r = noise(7);
        // weekdays with a working-day bump of 100, weekends 70; 15 days,
        // so the held-out last day is a Monday
        let weekly: Vec<f64> = (0..15 * day)
            .map(|i| {
                let frac = (i % day) as f64 / day as f64;
                let bump = if (0.35..0.75).contains(&frac) {
                    100.0
                } else {
                    0.0
                };
                let weekend = i / day % 7 >= 5;
                50.0 + bump * if weekend { 0.7 } else { 1.0 } + 3.0 * r()
            })
            .collect();
        assert_eq!(by_autocorrelation(&weekly, step_ms), day);
        assert_eq!(choose_season(&weekly, step_ms), (week, Some(week)));
        // a level that swells and ebbs over nine days, noise, and a
        // ripple of 2 a day
        let tau = std::f64::consts::TAU;
        let wander: Vec<f64> = (0..10 * day)
            .map(|i| {
                let days = i as f64 / day as f64;
                500.0 + 200.0 * (days / 9.0 * tau).sin() + 2.0 * (days * tau).sin() + 10.0 * r()
            })
            .collect();
        assert_eq!(by_autocorrelation(&wander, step_ms), day);
        assert_eq!(choose_season(&wander, step_ms), (0, Some(0)));
        // flat weekends in exactly two weeks: autocorrelation finds the
        // week, which cannot be fitted on the 13 days before the last
        let flat_weekends: Vec<f64> = (0..14 * day)
            .map(|i| {
                let frac = (i % day) as f64 / day as f64;
                let work = i / day % 7 < 5 && (0.35..0.75).contains(&frac);
                50.0 + if work { 100.0 } else { 0.0 } + 3.0 * r()
            })
            .collect();
        assert_eq!(choose_season(&flat_weekends, step_ms), (week, None));
        // too short to hold a day out: autocorrelation decides
        let short: Vec<f64> = weekly[..2 * day + day / 2].to_vec();
        assert_eq!(
            choose_season(&short, step_ms),
            (by_autocorrelation(&short, step_ms), None)
        );
    }

    /// `holdout`'s choice is made at a refit and stands for a day:
    /// the refits in between fit the season chosen, not every candidate.
    #[test]
    fn a_holdout_choice_stands_for_a_day_of_refits() {
        let mut h = minutely(14);
        let mut b = Builtin::default();
        let s = Settings {
            season: Season::Holdout,
            ..settings(RefitMode::Inline)
        };
        b.lookup(Metric::QueueDepth, &h, 0, 0);
        let mut chosen_at = Vec::new();
        let mut t = 0;
        while t < 6 * 86_400_000 {
            h.record(t, load(t));
            b.sync(Metric::QueueDepth, &h, t, &s);
            let c = b.slots[Metric::QueueDepth as usize].chosen;
            if let Some((season, at)) = c {
                assert_eq!(season, 1440, "a daily sine: a daily season");
                if chosen_at.last() != Some(&at) {
                    chosen_at.push(at);
                }
            }
            t += 60_000;
        }
        // none before three days (two to fit on, one to score), then one
        // a day though the model is refitted every 6 h
        assert!(chosen_at[0] >= 3 * 86_400_000, "{chosen_at:?}");
        assert_eq!(chosen_at.len(), 3, "{chosen_at:?}");
        for w in chosen_at.windows(2) {
            assert!(w[1] - w[0] >= CHOICE_KEPT_MS, "{chosen_at:?}");
        }
        let model = b.slots[Metric::QueueDepth as usize].model.as_ref().unwrap();
        assert_eq!(model.season, 1440);
    }

    /// `days` of the daily `load` at a minute, synced inline into a
    /// forecaster asked for queue depth; the time after the last point.
    fn fed_daily(days: i64) -> (History, Builtin, Settings, Millis) {
        let mut h = minutely(8);
        let mut b = Builtin::default();
        let s = settings(RefitMode::Inline);
        assert!(b.lookup(Metric::QueueDepth, &h, 0, 0).is_none());
        assert!(b.wanted(Metric::QueueDepth));
        let mut t = 0;
        while t < days * 86_400_000 {
            h.record(t, load(t));
            b.sync(Metric::QueueDepth, &h, t, &s);
            t += 60_000;
        }
        (h, b, s, t)
    }

    #[test]
    fn learns_a_daily_season_from_history_and_answers_ahead() {
        let (h, b, _, t) = fed_daily(3);
        let f = b
            .lookup(Metric::QueueDepth, &h, t, 3_600_000)
            .expect("a model after three days");
        assert_eq!(f.source, "holt_winters");
        let truth = load(t + 3_600_000);
        assert!((f.value - truth).abs() < 3.0, "{} vs {truth}", f.value);
        assert!(f.lower <= f.value && f.value <= f.upper);
        // metrics nobody asked about get no model
        assert!(!b.wanted(Metric::LatencyMs));
    }

    /// The forecast a policy asks for every tick is kept until the model
    /// changes: a new history point (or a refit) answers afresh.
    #[test]
    fn a_forecast_asked_again_is_the_models_until_the_model_moves() {
        let (mut h, mut b, s, t) = fed_daily(2);
        // what the model answers with nothing kept
        let fresh = |b: &Builtin, h: &History, now, ahead| {
            b.slots[Metric::QueueDepth as usize].asked.set(None);
            b.lookup(Metric::QueueDepth, h, now, ahead).unwrap().value
        };
        // 5 minutes ahead, asked twice within the step, then after a
        // jump in the load moved the model, at the same steps ahead
        let at = |b: &Builtin, h: &History, now| {
            b.lookup(Metric::QueueDepth, h, now, 300_000).unwrap().value
        };
        let first = at(&b, &h, t);
        assert_eq!(at(&b, &h, t + 1_000), first);
        assert_eq!(first, fresh(&b, &h, t, 300_000));
        // one step on: the model folds one more point, and the same
        // steps ahead are asked a step later
        let before = at(&b, &h, t + 60_000);
        h.record(t, load(t) + 500.0);
        b.sync(Metric::QueueDepth, &h, t + 60_000, &s);
        let moved = at(&b, &h, t + 120_000);
        assert_ne!(moved, before, "the model moved");
        assert_eq!(moved, fresh(&b, &h, t + 120_000, 300_000));
        // another horizon of the same model is its own
        let hour = b
            .lookup(Metric::QueueDepth, &h, t + 120_000, 3_600_000)
            .unwrap()
            .value;
        assert_eq!(hour, fresh(&b, &h, t + 120_000, 3_600_000));
        assert_ne!(hour, moved);
    }

    #[test]
    fn a_background_refit_does_not_block_and_lands_later() {
        let mut h = minutely(1);
        let mut b = Builtin::default();
        let s = settings(RefitMode::Background);
        b.lookup(Metric::QueueDepth, &h, 0, 0);
        for i in 0..100 {
            h.record(i * 60_000, 10.0 + i as f64);
        }
        b.sync(Metric::QueueDepth, &h, 100 * 60_000, &s);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut got = None;
        while got.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            b.sync(Metric::QueueDepth, &h, 100 * 60_000, &s);
            got = b.lookup(Metric::QueueDepth, &h, 100 * 60_000, 60_000);
        }
        let f = got.expect("the refit thread delivers a model");
        assert_eq!(f.source, "holt");
        // a rising line: the forecast continues it
        assert!(f.value > 100.0, "{}", f.value);
    }

    #[test]
    fn season_setting_parses() {
        assert_eq!(Season::parse("auto"), Ok(Season::Auto));
        assert_eq!(Season::parse("none"), Ok(Season::None));
        assert_eq!(Season::parse("holdout"), Ok(Season::Holdout));
        assert_eq!(
            Season::parse("1d"),
            Ok(Season::Fixed(Duration::from_secs(86_400)))
        );
        assert!(Season::parse("daily")
            .unwrap_err()
            .to_string()
            .contains("\"daily\""));
    }
}
