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
use crate::forecast::holt::{detect_season, HoltWinters};
use crate::forecast::ForecastValue;
use crate::window::History;

/// How the season length is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Season {
    /// Detected by autocorrelation among one day and one week.
    #[default]
    Auto,
    /// No season: damped Holt.
    None,
    /// A fixed season length.
    Fixed(Duration),
}

/// A season that is not `auto`, `none` or a duration above zero.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("season {0:?} is not \"auto\", \"none\" or a duration such as \"1d\"")]
pub struct BadSeason(pub String);

impl Season {
    pub fn parse(s: &str) -> Result<Season, BadSeason> {
        match s {
            "auto" => Ok(Season::Auto),
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
}

#[derive(Debug, Default)]
struct Slot {
    /// A policy asked for this metric: keep a model for it.
    wanted: Cell<bool>,
    model: Option<HoltWinters>,
    /// The history step the model takes next.
    next_step: i64,
    fitted_at: Option<Millis>,
    fitted_len: usize,
    pending: Option<mpsc::Receiver<Fitted>>,
    /// When the pending refit fell due (for the refit lag).
    due_ms: Millis,
    last: f64,
}

/// One target's built-in forecasters, one slot per metric.
#[derive(Debug, Default)]
pub struct Builtin {
    slots: [Slot; 4],
}

impl Builtin {
    /// Brings the models of the metrics policies asked for up to date with
    /// `history`, and starts (or, inline, runs) a refit when one is due.
    pub fn sync(&mut self, metric: Metric, history: &History, now_ms: Millis, settings: &Settings) {
        let slot = &mut self.slots[metric as usize];
        if !slot.wanted.get() {
            return;
        }
        if let Some(rx) = &slot.pending {
            match rx.try_recv() {
                Ok(f) => {
                    slot.model = f.model;
                    slot.next_step = f.next_step;
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
        let season = settings.season;
        let job = move || fit(&series, season, step_ms, next_step);
        match settings.mode {
            RefitMode::Inline => {
                let f = job();
                slot.model = f.model;
                slot.next_step = f.next_step;
            }
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
        let slot = &self.slots[metric as usize];
        if !slot.wanted.get() || slot.model.is_none() {
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
        let slot = &self.slots[metric as usize];
        slot.wanted.set(true);
        let m = slot.model.as_ref()?;
        let step_ms = history.step_ms();
        let at_step = (now_ms + horizon_ms.max(0)).div_euclid(step_ms);
        let h = (at_step - (slot.next_step - 1)).max(1) as usize;
        let p = m.forecast(h);
        Some(ForecastValue {
            value: p.value.max(0.0),
            lower: p.lower.max(0.0),
            upper: p.upper.max(0.0),
            source: if m.season > 0 { "holt_winters" } else { "holt" }.into(),
        })
    }

    /// The fitted state of `metric`'s forecaster, for a state snapshot;
    /// `None` when no policy asked for it.
    pub fn export(&self, metric: Metric) -> Option<ForecasterState> {
        let slot = &self.slots[metric as usize];
        slot.wanted.get().then(|| ForecasterState {
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
        let slot = &mut self.slots[metric as usize];
        slot.wanted.set(true);
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
        self.slots[metric as usize].wanted.get()
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
    let steps = |d: Duration| (d.as_millis() as i64 / step_ms.max(1)) as usize;
    let season = match season {
        Season::None => 0,
        Season::Fixed(d) => steps(d),
        Season::Auto => {
            let candidates: Vec<usize> = [86_400, 7 * 86_400]
                .iter()
                .map(|&s| steps(Duration::from_secs(s)))
                .filter(|&c| c >= 2 && series.len() >= 2 * c)
                .collect();
            detect_season(series, &candidates, 0.3).unwrap_or(0)
        }
    };
    let span = fit_span(season, step_ms).min(series.len());
    let tail = &series[series.len() - span..];
    Fitted {
        model: HoltWinters::fit(tail, season),
        next_step,
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

    /// A daily sine of amplitude 50 around 100, one point a minute.
    fn load(t_ms: i64) -> f64 {
        100.0 + 50.0 * (2.0 * std::f64::consts::PI * t_ms as f64 / 86_400_000.0).sin()
    }

    #[test]
    fn learns_a_daily_season_from_history_and_answers_ahead() {
        let mut h = History::new(
            Duration::from_secs(8 * 86_400),
            Duration::from_secs(60),
            false,
        );
        let mut b = Builtin::default();
        let s = settings(RefitMode::Inline);
        assert!(b.lookup(Metric::QueueDepth, &h, 0, 0).is_none());
        assert!(b.wanted(Metric::QueueDepth));
        let mut t = 0;
        while t < 3 * 86_400_000 {
            h.record(t, load(t));
            b.sync(Metric::QueueDepth, &h, t, &s);
            t += 60_000;
        }
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

    #[test]
    fn a_background_refit_does_not_block_and_lands_later() {
        let mut h = History::new(Duration::from_secs(86_400), Duration::from_secs(60), false);
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
