//! `tidewatch simulate`: replays a load trace through the engine (the same
//! windows, policies, forecasters and guard as `run`) in virtual time,
//! against a capacity model, and scores each policy.
//!
//! The capacity model, one service per policy, per step of `dt` seconds:
//! 1. replicas whose start-up delay has passed become ready;
//! 2. `load * dt` units arrive; the ready replicas serve up to
//!    `ready * capacity * dt` of the backlog plus the arrivals; the rest
//!    stays queued;
//! 3. the engine receives what a deployment would send: the request count
//!    of the step (`requests`), the backlog (`queue_depth`, as a real
//!    queue_depth signal) and the queueing delay (`latency_ms`: backlog
//!    over the ready capacity);
//! 4. the engine ticks; a command sets the service's replicas at once
//!    (a removed replica stops now, an added one is ready after
//!    `startup`), and its result goes back to the engine like a worker's.
//!
//! Scores over the scored steps, with `need = ceil(load / capacity)`:
//! under-provisioned share (ready < need), depth (mean of
//! `(need - ready) / need`, 0 where provisioned), over-provisioned share,
//! SLO share (queueing delay above `slo`), replica-hours (every replica
//! that exists, starting ones included) and their ratio to the ideal
//! (`need` every step), scale actions and direction reversals per hour,
//! and for policies that forecast the load, the MASE of the forecast at
//! the start-up lead time (against the naive "same as now" forecast).

pub mod corpus;
pub mod frontier;
pub mod generate;
pub mod plot;
pub mod report;
pub mod trace;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Millis;
use crate::command::{ResultStatus, ScaleResult, VERSION};
use crate::config::{Config, EngineConfig, TargetConfig};
use crate::engine::Engine;
use crate::event::Metric;
use crate::event::{QueueDepth, Signal};
use crate::forecast::builtin::RefitMode;
use crate::telemetry::Metrics;

pub use report::{PolicyReport, Report};
pub use trace::Trace;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    pub trace: PathBuf,
    pub policies: Vec<PathBuf>,
    /// Load units one replica serves per second.
    pub capacity: f64,
    pub startup: Duration,
    /// Replayed before scoring starts.
    pub warmup: Duration,
    /// Scored after the warm-up; None: the rest of the trace.
    pub span: Option<Duration>,
    pub min: u32,
    pub max: u32,
    pub step: Duration,
    /// Queueing delay above this counts against the SLO.
    pub slo: Duration,
    /// The guard's scale-down stabilization for every policy.
    pub stabilization: Duration,
    pub refit: Duration,
    /// Every target's `forecast_season`.
    pub season: String,
    /// Window spans every policy may read.
    pub windows: Vec<Duration>,
    /// Given to every policy, after `capacity`, `startup`, `step`.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// With a sweep: rounds of runs that measure each policy's frontier
    /// near the baseline's cost ([`frontier::next_value`]); 0: the grid
    /// alone.
    pub refine: u32,
}

impl Options {
    /// Defaults for everything but the trace, policies and capacity.
    pub fn new(trace: PathBuf, policies: Vec<PathBuf>, capacity: f64) -> Self {
        Self {
            trace,
            policies,
            capacity,
            startup: Duration::from_secs(120),
            warmup: Duration::ZERO,
            span: None,
            min: 1,
            max: 1000,
            step: Duration::from_secs(15),
            slo: Duration::from_secs(30),
            stabilization: Duration::from_secs(300),
            refit: crate::config::DEFAULT_FORECAST_REFIT,
            season: "auto".into(),
            windows: [60, 120, 300, 600].map(Duration::from_secs).to_vec(),
            params: serde_json::Map::new(),
            refine: 0,
        }
    }

    fn check(&self) -> Result<(), SimulateError> {
        if !(self.capacity.is_finite() && self.capacity > 0.0) {
            return Err(SimulateError::Capacity(self.capacity));
        }
        if self.step < Duration::from_secs(1) {
            return Err(SimulateError::Step(self.step));
        }
        if self.min > self.max || self.max == 0 {
            return Err(SimulateError::Bounds {
                min: self.min,
                max: self.max,
            });
        }
        if self.policies.is_empty() {
            return Err(SimulateError::NoPolicy);
        }
        Ok(())
    }
}

/// One simulated service.
#[derive(Debug, Clone, Default)]
struct Service {
    ready: u32,
    /// Replicas starting, with the time they become ready; oldest first.
    starting: VecDeque<Millis>,
    backlog: f64,
}

impl Service {
    fn total(&self) -> u32 {
        self.ready + self.starting.len() as u32
    }

    fn promote(&mut self, now: Millis) {
        while self.starting.front().is_some_and(|&at| at <= now) {
            self.starting.pop_front();
            self.ready += 1;
        }
    }

    /// Scales to `n`: new replicas are ready after `startup_ms`; removals
    /// take the youngest starting replicas first, then ready ones.
    fn scale_to(&mut self, n: u32, now: Millis, startup_ms: i64) {
        while self.total() < n {
            self.starting.push_back(now + startup_ms);
        }
        while self.total() > n {
            if self.starting.pop_back().is_none() {
                self.ready -= 1;
            }
        }
    }

    /// Serves one step; returns the queueing delay in seconds afterwards.
    fn serve(&mut self, load: f64, capacity: f64, dt: f64) -> f64 {
        let served_max = f64::from(self.ready) * capacity * dt;
        let queued = self.backlog + load * dt;
        self.backlog = (queued - served_max).max(0.0);
        if self.backlog <= 0.0 {
            0.0
        } else if self.ready == 0 {
            f64::INFINITY
        } else {
            self.backlog / (f64::from(self.ready) * capacity)
        }
    }
}

/// Running scores of one policy.
#[derive(Debug, Clone, Default)]
struct Score {
    steps: u64,
    under: u64,
    depth_sum: f64,
    over: u64,
    slo: u64,
    replica_seconds: f64,
    ideal_seconds: f64,
    actions: u64,
    reversals: u64,
    last_direction: i8,
    errors: u64,
    /// Forecasts of the load at the start-up lead time, by the step index
    /// they are for.
    forecasts: Vec<(usize, f64)>,
}

/// Per-step values for the plot: time, load, need, and each policy's ready
/// replicas.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub ts: Vec<Millis>,
    pub load: Vec<f64>,
    pub need: Vec<u32>,
    pub ready: Vec<Vec<u32>>,
}

impl Series {
    /// `ts,load,need,READY...` with a column per policy (its file name),
    /// `ts` in unix seconds.
    pub fn to_csv(&self, policies: &[PathBuf]) -> String {
        use std::fmt::Write as _;
        let mut out = String::from("ts,load,need");
        for p in policies {
            let name = p
                .file_stem()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let _ = write!(out, ",{name}");
        }
        out.push('\n');
        for i in 0..self.ts.len() {
            let _ = write!(
                out,
                "{},{},{}",
                self.ts[i] / 1000,
                self.load[i],
                self.need[i]
            );
            for r in &self.ready {
                let _ = write!(out, ",{}", r.get(i).copied().unwrap_or(0));
            }
            out.push('\n');
        }
        out
    }
}

/// Replicas needed to serve `load` at `capacity` each: `ceil(load /
/// capacity)` (a hair of tolerance, so 2.0000000001 is 2).
pub fn need(load: f64, capacity: f64) -> u32 {
    (load / capacity - 1e-9).ceil().max(0.0) as u32
}

/// A distinct target name per policy file.
fn target_names(policies: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in policies {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let mut base: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(50)
            .collect();
        if !base.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            base.insert(0, 'p');
        }
        let mut name = base.clone();
        let mut k = 2;
        while names.contains(&name) {
            name = format!("{base}-{k}");
            k += 1;
        }
        names.push(name);
    }
    names
}

/// Runs the simulation; `progress` is called with (steps done, steps).
pub fn run(
    opts: &Options,
    trace: &Trace,
    mut progress: impl FnMut(u64, u64),
) -> Result<(Report, Series), SimulateError> {
    opts.check()?;
    let step_ms = opts.step.as_millis() as i64;
    let dt = step_ms as f64 / 1000.0;
    let startup_ms = opts.startup.as_millis() as i64;
    let load: Vec<(Millis, f64)> = trace.resample(step_ms);
    let first_scored = (opts.warmup.as_millis() as i64 / step_ms) as usize;
    if first_scored >= load.len() {
        return Err(SimulateError::Warmup {
            warmup: opts.warmup,
            steps: load.len(),
            step: opts.step,
        });
    }
    let last_scored = match opts.span {
        Some(s) => (first_scored + (s.as_millis() as i64 / step_ms) as usize).min(load.len()),
        None => load.len(),
    };
    let need_of = |l: f64| need(l, opts.capacity);
    let start_ms = load[0].0;
    let initial = need_of(load[0].1).clamp(opts.min, opts.max);

    let names = target_names(&opts.policies);
    let mut params = serde_json::Map::new();
    params.insert("capacity".into(), opts.capacity.into());
    params.insert("startup".into(), opts.startup.as_secs_f64().into());
    params.insert("step".into(), dt.into());
    params.extend(opts.params.clone());
    let targets = opts
        .policies
        .iter()
        .zip(&names)
        .map(|(p, name)| TargetConfig {
            initial_replicas: Some(initial),
            windows: opts.windows.clone(),
            stabilization_down: opts.stabilization,
            forecast_season: opts.season.clone(),
            params: params.clone(),
            ..TargetConfig::new(name, p.clone(), "simulated", opts.min, opts.max)
        })
        .collect();
    let cfg = Config {
        engine: EngineConfig {
            evaluate_on_event: false,
            reload_interval: Duration::from_secs(100 * 365 * 86_400),
            reissue_after: Duration::ZERO,
            forecast_refit: opts.refit,
            // a run's results must not depend on the machine's load: the
            // 50 ms wall-clock deadline failed calls of a policy whose
            // thread was descheduled while cargo built beside it; the
            // instruction budget still stops a runaway policy, and the
            // deadline is at most the tick
            policy_timeout: EngineConfig::default().tick,
            // virtual time runs far from the wall clock
            max_event_age: Duration::from_secs(100 * 365 * 86_400),
            max_clock_skew: Duration::from_secs(100 * 365 * 86_400),
            ..EngineConfig::default()
        },
        targets,
        ..Config::default()
    };
    let problems = cfg.check();
    if let Some(p) = problems.first() {
        return Err(SimulateError::Options(p.to_string()));
    }
    let mut engine = Engine::new(
        &cfg.engine,
        &cfg.targets,
        Arc::new(Metrics::new()),
        start_ms,
    )
    .map_err(SimulateError::Policy)?;
    engine.set_refit_mode(RefitMode::Inline);

    let n = names.len();
    let mut services: Vec<Service> = (0..n)
        .map(|_| Service {
            ready: initial,
            ..Service::default()
        })
        .collect();
    let mut scores: Vec<Score> = vec![Score::default(); n];
    let mut series = Series {
        ready: vec![Vec::new(); n],
        ..Series::default()
    };
    let total = load.len() as u64;
    for (i, &(t, l)) in load.iter().enumerate() {
        let scored = (first_scored..last_scored).contains(&i);
        let need = need_of(l);
        for (k, name) in names.iter().enumerate() {
            let svc = &mut services[k];
            svc.promote(t);
            let delay = svc.serve(l, opts.capacity, dt);
            engine.record(name, Metric::Requests, t, l * dt);
            engine.record(name, Metric::LatencyMs, t, (delay * 1000.0).min(3.6e6));
            let depth = Signal::QueueDepth(QueueDepth {
                target: name.clone(),
                queue: "sim".into(),
                depth: svc.backlog,
                consumers: Some(svc.ready),
                ts_ms: t,
            });
            if let Err(e) = engine.apply(&depth, t) {
                return Err(SimulateError::Signal {
                    step: i,
                    detail: e.detail,
                });
            }
            if scored {
                let s = &mut scores[k];
                s.steps += 1;
                if svc.ready < need {
                    s.under += 1;
                    s.depth_sum += f64::from(need - svc.ready) / f64::from(need);
                } else if svc.ready > need {
                    s.over += 1;
                }
                if delay > opts.slo.as_secs_f64() {
                    s.slo += 1;
                }
                s.ideal_seconds += f64::from(need) * dt;
                s.replica_seconds += f64::from(svc.total()) * dt;
                series.ready[k].push(svc.ready);
            }
        }
        let commands = engine.tick(t);
        for c in &commands {
            let Some(k) = names.iter().position(|n| *n == c.target) else {
                continue;
            };
            let svc = &mut services[k];
            let before = svc.total();
            svc.scale_to(c.desired_replicas, t, startup_ms);
            if scored && c.desired_replicas != before {
                let s = &mut scores[k];
                s.actions += 1;
                let dir = if c.desired_replicas > before { 1 } else { -1 };
                if s.last_direction != 0 && s.last_direction != dir {
                    s.reversals += 1;
                }
                s.last_direction = dir;
            }
            engine.observe(&ScaleResult {
                version: VERSION,
                command_id: c.id.clone(),
                target: c.target.clone(),
                generation: c.generation,
                status: ResultStatus::Applied,
                observed_replicas: Some(c.desired_replicas),
                error: None,
                worker: "simulate".into(),
                finished_at: String::new(),
            });
        }
        if scored {
            series.ts.push(t);
            series.load.push(l);
            series.need.push(need);
            for (k, name) in names.iter().enumerate() {
                let s = &mut scores[k];
                if engine.forecast_wanted(name, Metric::Requests) {
                    if let Some(f) = engine.forecast(name, Metric::Requests, t, startup_ms) {
                        let at = i + (startup_ms / step_ms).max(1) as usize;
                        s.forecasts.push((at, f.value));
                    }
                }
            }
        }
        if i % 4096 == 0 {
            progress(i as u64, total);
        }
    }
    progress(total, total);
    let m = engine.metrics().clone();
    for (k, name) in names.iter().enumerate() {
        scores[k].errors =
            crate::telemetry::sum(&m, "tidewatch_policy_errors_total", &[("target", name)]) as u64;
    }
    let hours = (last_scored - first_scored) as f64 * dt / 3600.0;
    let lead = (startup_ms / step_ms).max(1) as usize;
    let values: Vec<f64> = load.iter().map(|p| p.1).collect();
    let policies = opts
        .policies
        .iter()
        .zip(&scores)
        .map(|(p, s)| {
            let share = |x: u64| x as f64 / s.steps.max(1) as f64;
            PolicyReport {
                policy: p.display().to_string(),
                under_provisioned_share: share(s.under),
                under_provisioned_depth: s.depth_sum / s.steps.max(1) as f64,
                over_provisioned_share: share(s.over),
                slo_violation_share: share(s.slo),
                replica_hours: s.replica_seconds / 3600.0,
                ideal_replica_hours: s.ideal_seconds / 3600.0,
                cost_ratio: if s.ideal_seconds > 0.0 {
                    s.replica_seconds / s.ideal_seconds
                } else {
                    f64::NAN
                },
                actions_per_hour: s.actions as f64 / hours,
                reversals_per_hour: s.reversals as f64 / hours,
                mase: mase(&s.forecasts, &values, first_scored..last_scored, lead),
                policy_errors: s.errors,
            }
        })
        .collect();
    Ok((
        Report {
            trace: opts.trace.display().to_string(),
            step_seconds: dt,
            capacity: opts.capacity,
            startup_seconds: opts.startup.as_secs_f64(),
            warmup_seconds: opts.warmup.as_secs_f64(),
            scored_steps: (last_scored - first_scored) as u64,
            gaps_filled: trace.gaps() as u64,
            policies,
        },
        series,
    ))
}

/// Mean absolute error of `forecasts` (step index, value) against
/// `actual`, over the mean absolute error of the naive forecast at the
/// same lead (the value `lead` steps earlier), both over the forecasts
/// whose step lies in `scored`. None without forecasts or when the naive
/// error is zero.
fn mase(
    forecasts: &[(usize, f64)],
    actual: &[f64],
    scored: std::ops::Range<usize>,
    lead: usize,
) -> Option<f64> {
    let (mut err, mut naive, mut n) = (0.0, 0.0, 0usize);
    for &(at, f) in forecasts {
        if !scored.contains(&at) || at < lead || at >= actual.len() {
            continue;
        }
        err += (actual[at] - f).abs();
        naive += (actual[at] - actual[at - lead]).abs();
        n += 1;
    }
    (n > 0 && naive > 0.0).then(|| err / naive)
}

/// Where `main` writes, besides the table on `out`.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub report: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    /// Every scored step as CSV: time, load, need, each policy's ready.
    pub series: Option<PathBuf>,
    /// A progress bar on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
}

impl Output {
    /// Writes a report's JSON to `--report`, when it was given.
    fn write_report(&self, json: &str) -> Result<(), Failure> {
        let Some(p) = &self.report else {
            return Ok(());
        };
        std::fs::write(p, format!("{json}\n")).map_err(|source| {
            Failure::Other(SimulateError::Write {
                path: p.clone(),
                source,
            })
        })
    }
}

/// Why a simulation cannot run or its output cannot be written; names the
/// bad option, file or step.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("capacity {0} must be above zero")]
    Capacity(f64),
    #[error("step {} is below 1s", humantime::format_duration(*.0))]
    Step(Duration),
    #[error("min {min} and max {max}: need 0 <= min <= max and max >= 1")]
    Bounds { min: u32, max: u32 },
    #[error("give at least one --policy")]
    NoPolicy,
    #[error(
        "the warm-up ({}) covers the whole trace ({steps} steps of {})",
        humantime::format_duration(*warmup),
        humantime::format_duration(*step)
    )]
    Warmup {
        warmup: Duration,
        steps: usize,
        step: Duration,
    },
    #[error("simulate options: {0}")]
    Options(String),
    #[error("policy: {0}")]
    Policy(crate::policy::PolicyError),
    #[error("step {step}: {detail}")]
    Signal { step: usize, detail: String },
    #[error("{}: {source}", path.display())]
    TraceFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Trace {
        path: PathBuf,
        source: trace::TraceError,
    },
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Output(std::io::Error),
    #[error(
        "{count} file(s) of the corpus could not be scored (each named above, with its error); \
         the {traces} other traces were, and the medians leave those out"
    )]
    Skipped { count: usize, traces: usize },
    #[error("nothing was scored, so there is nothing to plot")]
    NothingToPlot,
    #[error("plot {}: extension {ext:?} is not png or svg", path.display())]
    PlotExtension { path: PathBuf, ext: String },
    #[error("plot {}: {detail}", path.display())]
    Plot { path: PathBuf, detail: String },
}

/// Why `main` failed: bad input (exit 64) or something else.
#[derive(Debug)]
pub enum Failure {
    Usage(SimulateError),
    Other(SimulateError),
}

/// `tidewatch simulate --sweep KEY=V1,...`: every policy at every value,
/// the baseline at its default; prints the frontiers and the comparisons,
/// writes the JSON report and the frontier chart.
pub fn main_sweep(
    opts: &Options,
    out: &Output,
    key: &str,
    values: &[serde_json::Value],
    baseline: &std::path::Path,
    w: &mut impl std::io::Write,
) -> Result<(), Failure> {
    opts.check().map_err(Failure::Usage)?;
    if values.is_empty() {
        return Err(Failure::Usage(SimulateError::Options(format!(
            "--sweep {key}: give at least one value"
        ))));
    }
    let trace = Trace::load(&opts.trace).map_err(Failure::Usage)?;
    let r = frontier::sweep(opts, &trace, key, values, baseline).map_err(Failure::Usage)?;
    let io = |e: std::io::Error| Failure::Other(SimulateError::Output(e));
    writeln!(
        w,
        "{}: {} swept over {} values, baseline {}",
        r.trace,
        key,
        values.len(),
        r.baseline
    )
    .map_err(io)?;
    write!(w, "{}", r.table()).map_err(io)?;
    out.write_report(&r.to_json())?;
    if let Some(p) = &out.plot {
        if let Some(note) = plot::write_frontier(p, &r).map_err(Failure::Other)? {
            eprintln!("{note}");
        }
    }
    Ok(())
}

/// `tidewatch simulate --corpus DIR --generate N --sweep ...`: the frontier
/// comparison over every trace, a line per trace and policy as each is
/// done, then the medians; the JSON report has every point.
#[allow(clippy::too_many_arguments)]
pub fn main_corpus(
    opts: &Options,
    out: &Output,
    c: &corpus::Corpus,
    key: &str,
    values: &[serde_json::Value],
    baseline: &std::path::Path,
    w: &mut impl std::io::Write,
) -> Result<(), Failure> {
    let mut o = opts.clone();
    o.capacity = 1.0;
    o.check().map_err(Failure::Usage)?;
    if values.is_empty() {
        return Err(Failure::Usage(SimulateError::Options(format!(
            "--sweep {key}: give at least one value"
        ))));
    }
    if c.dir.is_none() && c.generated == 0 {
        return Err(Failure::Usage(SimulateError::Options(
            "give --corpus DIR, --generate N, or both".into(),
        )));
    }
    let io = |e: std::io::Error| Failure::Other(SimulateError::Output(e));
    write!(w, "{}", corpus::header()).map_err(io)?;
    let mut failed = None;
    let report = corpus::run_corpus(&o, c, key, values, baseline, |done| {
        let line = match done {
            corpus::Done::Scored(r) => r.lines(),
            corpus::Done::Skipped(s) => format!("{:<34} skipped: {}\n", s.name, s.error),
        };
        if let Err(e) = write!(w, "{line}").and_then(|()| w.flush()) {
            failed.get_or_insert(e);
        }
    })
    .map_err(Failure::Usage)?;
    if let Some(e) = failed {
        return Err(io(e));
    }
    write!(w, "\n{}", report.medians_table()).map_err(io)?;
    out.write_report(&report.to_json())?;
    // the rest is scored and reported; the run still fails, so that a
    // nightly job does not read medians without them as the corpus's
    if !report.skipped.is_empty() {
        return Err(Failure::Usage(SimulateError::Skipped {
            count: report.skipped.len(),
            traces: report.traces.len(),
        }));
    }
    Ok(())
}

/// `tidewatch simulate`: loads the trace, runs, prints the table, writes
/// the report and the plot.
pub fn main(opts: &Options, out: &Output, w: &mut impl std::io::Write) -> Result<(), Failure> {
    let trace = Trace::load(&opts.trace).map_err(Failure::Usage)?;
    let bar = if out.progress {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps, {eta} left")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (report, series) = run(opts, &trace, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .map_err(Failure::Usage)?;
    bar.finish_and_clear();
    let io = |e: std::io::Error| Failure::Other(SimulateError::Output(e));
    writeln!(
        w,
        "{}: {} scored steps of {}s, capacity {}/s per replica, start-up {}s{}",
        report.trace,
        report.scored_steps,
        report.step_seconds,
        report.capacity,
        report.startup_seconds,
        if report.gaps_filled > 0 {
            format!(", {} gaps filled", report.gaps_filled)
        } else {
            String::new()
        }
    )
    .map_err(io)?;
    write!(w, "{}", report.table()).map_err(io)?;
    out.write_report(&report.to_json())?;
    if let Some(p) = &out.series {
        let csv = series.to_csv(&opts.policies);
        std::fs::write(p, csv).map_err(|source| {
            Failure::Other(SimulateError::Write {
                path: p.clone(),
                source,
            })
        })?;
    }
    if let Some(p) = &out.plot {
        let names: Vec<String> = opts
            .policies
            .iter()
            .map(|p| {
                p.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            })
            .collect();
        if let Some(note) =
            plot::write(p, &series, &names, opts.capacity).map_err(Failure::Other)?
        {
            eprintln!("{note}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
