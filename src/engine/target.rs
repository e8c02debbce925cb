//! One target inside the engine: what its policy reads (windows,
//! forecasts), its policy and guard, and where its commands stand.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::clock::Millis;
use crate::command::ScaleCommand;
use crate::engine::config::{TargetConfig, DEFAULT_FORECAST_REFIT};
use crate::event::Metric;
use crate::forecast::builtin::{Builtin, RefitMode, Season, Settings as ForecastSettings};
use crate::forecast::recurring::{recurring, Reach, Recurring};
use crate::forecast::{ForecastStore, ForecastValue};
use crate::guard::{Decision, Guard, GuardConfig};
use crate::policy::{LuaPolicy, PolicyError, SignalView, VmPool};
use crate::schedule::Schedule;
use crate::state::ControlState;
use crate::window::{SpanTooLong, TargetWindows, WindowStats};

/// What a policy of one target reads.
#[derive(Debug)]
pub struct TargetData {
    pub windows: TargetWindows,
    pub forecasts: ForecastStore,
    pub builtin: Builtin,
    pub forecast: ForecastSettings,
    pub now_ms: Millis,
    pub freshness_ms: i64,
    /// The metrics the policy read since the engine last took this (a bit
    /// per `Metric`).
    pub reads: u8,
}

impl TargetData {
    /// Data with no external forecasts and the built-in forecasters at
    /// their defaults (season detected, refit every 6 h off the hot path).
    pub fn new(windows: TargetWindows, now_ms: Millis, freshness_ms: i64) -> Self {
        Self {
            windows,
            forecasts: ForecastStore::default(),
            builtin: Builtin::default(),
            forecast: ForecastSettings {
                season: Season::Auto,
                refit_ms: DEFAULT_FORECAST_REFIT.as_millis() as i64,
                mode: RefitMode::Background,
            },
            now_ms,
            freshness_ms,
            reads: 0,
        }
    }

    /// Brings the built-in forecasters up to date with the history.
    pub fn sync_forecasts(&mut self) {
        for m in Metric::ALL {
            self.builtin.sync(
                m,
                self.windows.metric(m).history(),
                self.now_ms,
                &self.forecast,
            );
        }
    }
}

impl TargetData {
    /// Where the built-in models a policy asked for and their metrics'
    /// histories are kept, for the tick to ask for them ahead of the next
    /// evaluation (`sync_forecasts` reads both in each call).
    pub fn forecast_places(&self) -> crate::prefetch::Places<4> {
        let histories = Metric::ALL
            .into_iter()
            .filter(|&m| self.builtin.wanted(m))
            .map(|m| {
                let h = self.windows.metric(m).history();
                (h as *const _ as usize, std::mem::size_of_val(h))
            });
        crate::prefetch::Places::of(self.builtin.wanted_slots().chain(histories))
    }

    /// Where `metric`'s forecast at `now_ms` would come from (an external
    /// forecaster's name, or the built-in model's), without asking the
    /// built-in forecaster to model it (a status read changes nothing).
    pub fn forecast_source(&self, metric: Metric, now_ms: Millis) -> Option<String> {
        self.forecasts
            .lookup(metric, now_ms, 0, self.freshness_ms)
            .or_else(|| {
                self.builtin
                    .peek(metric, self.windows.metric(metric).history(), now_ms, 0)
            })
            .map(|f| f.source.into_owned())
    }
}

impl SignalView for TargetData {
    fn window(&self, metric: Metric, span_ms: i64) -> Result<Option<WindowStats>, SpanTooLong> {
        self.windows.stats(metric, self.now_ms, span_ms)
    }
    fn window_stat(
        &self,
        metric: Metric,
        span_ms: i64,
        stat: usize,
    ) -> Result<Option<f64>, SpanTooLong> {
        self.windows.stat(metric, self.now_ms, span_ms, stat)
    }
    /// A fresh external forecast covering the time, else the built-in one.
    fn forecast(&self, metric: Metric, horizon_ms: i64) -> Option<ForecastValue> {
        let builtin = self.builtin.lookup(
            metric,
            self.windows.metric(metric).history(),
            self.now_ms,
            horizon_ms,
        );
        self.forecasts
            .lookup(metric, self.now_ms, horizon_ms, self.freshness_ms)
            .or(builtin)
    }
    fn recurring(
        &self,
        metric: Metric,
        reach: Reach,
        days: usize,
        align_ms: i64,
    ) -> Option<Recurring> {
        recurring(
            self.windows.metric(metric).history(),
            self.now_ms,
            reach,
            days,
            align_ms,
        )
    }
    fn age_ms(&self, metric: Metric) -> Option<i64> {
        self.windows
            .metric(metric)
            .last_seen()
            .map(|t| self.now_ms - t)
    }
    fn note_read(&mut self, metric: Metric) {
        self.reads |= metric.bit();
    }
}

#[derive(Debug, Clone)]
pub(super) struct FileStamp {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    pub(super) fn read(path: &PathBuf) -> Self {
        let meta = std::fs::metadata(path).ok();
        Self {
            path: path.clone(),
            modified: meta.as_ref().and_then(|m| m.modified().ok()),
            len: meta.map_or(0, |m| m.len()),
        }
    }
    /// Whether `now` (a fresh read of the same path) shows a change.
    pub(super) fn differs(&self, now: &FileStamp) -> bool {
        now.modified != self.modified || now.len != self.len
    }

    pub(super) fn path(&self) -> &PathBuf {
        &self.path
    }
}

/// Each policy file's stamp as read once in this round of checks: 50,000
/// targets on one file are one `stat`, not 50,000.
#[derive(Debug, Default)]
pub(super) struct StampRound {
    stamps: Vec<FileStamp>,
    /// Index in `stamps` by the path's bytes.
    index: std::collections::HashMap<std::ffi::OsString, usize>,
    /// The stamp found last: neighbouring targets mostly run one file,
    /// and comparing its bytes is cheaper than hashing (a `Path` hashes
    /// component by component: two hashes a target were about 2.5% of a
    /// 50,000-target tick's profile, issue 21).
    last: usize,
}

impl StampRound {
    pub(super) fn clear(&mut self) {
        self.stamps.clear();
        self.index.clear();
        self.last = 0;
    }

    pub(super) fn now(&mut self, path: &PathBuf) -> &FileStamp {
        let key = path.as_os_str();
        let hit = self
            .stamps
            .get(self.last)
            .is_some_and(|s| s.path.as_os_str() == key);
        if !hit {
            // the path is copied once a round, not once a target
            self.last = match self.index.get(key) {
                Some(&i) => i,
                None => {
                    self.stamps.push(FileStamp::read(path));
                    self.index.insert(key.to_owned(), self.stamps.len() - 1);
                    self.stamps.len() - 1
                }
            };
        }
        &self.stamps[self.last]
    }
}

#[derive(Debug)]
pub(super) struct TargetRuntime {
    pub(super) cfg: TargetConfig,
    pub(super) guard_cfg: GuardConfig,
    pub(super) guard: Guard,
    pub(super) data: Arc<Mutex<TargetData>>,
    pub(super) policy: LuaPolicy,
    pub(super) stamp: FileStamp,
    /// Replicas as last commanded, or as a worker last reported for the latest command.
    pub(super) current: u32,
    /// What the metrics show as observed (a worker's last report, or the
    /// assumed count before one) and as desired (the last command's).
    pub(super) shown: (u32, Option<u32>),
    pub(super) last_generation: i64,
    /// The highest generation the broker acknowledged.
    pub(super) published_generation: i64,
    /// The last evaluation triggered by events (ticks do not count, so a
    /// tick never delays the reaction to an event).
    pub(super) last_event_eval_ms: Option<Millis>,
    /// Receive time of the earliest event not evaluated yet.
    pub(super) pending_since: Option<Millis>,
    /// In the engine's list of targets with events waiting.
    pub(super) queued: bool,
    /// The earliest own time (`ts`) of the signals not evaluated yet.
    pub(super) pending_ts: Option<Millis>,
    pub(super) last_decision: Option<Decision>,
    /// The policy's reason of `last_decision` when it is still a pattern
    /// and arguments, to format when read ([`Target::last_decision`]).
    pub(super) last_format: Option<crate::policy::ReasonFormat>,
    /// The latest command and when it was (re-)issued, until a worker
    /// answers it (any result of its generation or a later one).
    pub(super) unanswered: Option<(ScaleCommand, Millis)>,
    /// The partition its signals arrive on, and the assignment it was
    /// learned under (a new assignment starts the windows afresh).
    pub(super) partition: Option<((String, i32), u64)>,
    pub(super) schedules: Vec<Schedule>,
    /// Calls in a row that ran past the policy deadline.
    pub(super) overruns: u32,
    /// Reload rounds in a row whose load of the changed file ran out of
    /// time ([`super::RELOAD_RETRIES`]).
    pub(super) reload_timeouts: u8,
    /// Not called until the policy file changes.
    pub(super) quarantined: bool,
    /// Changed since its last snapshot.
    pub(super) dirty: bool,
    /// When its last snapshot was taken (or restored).
    pub(super) snapshot_at: Option<Millis>,
    /// Pause and pin at run time (kept in snapshots).
    pub(super) control: ControlState,
    /// The metrics the policy last read (a bit per `Metric`; 0: none yet).
    pub(super) read_mask: u8,
    /// Where the windows it read last keep their rings, to ask for them
    /// ahead of its next evaluation.
    pub(super) window_lines: crate::window::WindowLines,
    /// Where its built-in models and their histories are kept
    /// ([`TargetData::forecast_places`]).
    pub(super) forecast_places: crate::prefetch::Places<4>,
    /// Since when this engine has had the target (a target is not stale
    /// before `stale_after` has passed once).
    pub(super) since_ms: Millis,
    /// Probe measurements of it that failed in a row.
    pub(super) probe_failures: u32,
    /// A probe of this scaler has measured it (or failed to): it is
    /// decided here though no signal of it came from a partition.
    pub(super) probed: bool,
    /// Whether its signals are stale now.
    pub(super) stale: bool,
    /// Activation: since when its metric has been at or below the
    /// threshold (None: above it, or never measured).
    pub(super) idle_since: Option<Millis>,
}

impl TargetRuntime {
    /// The last decision, its reason whole (a policy's reason kept as a
    /// pattern and its arguments formatted now).
    pub(super) fn last_decision(&self) -> Option<Decision> {
        let mut d = self.last_decision.clone()?;
        if let Some(f) = &self.last_format {
            d.reason = format!("{}; {}", self.policy.render(f), d.reason);
        }
        Some(d)
    }
}

/// Calls in a row past the deadline before a policy is quarantined: each
/// costs the engine at most `policy_timeout`, so a policy that always
/// overruns costs at most this many timeouts, once.
pub const QUARANTINE_AFTER: u32 = 3;

/// `t`'s policy loaded with `limits` (`cfg.policy_limits()` off the
/// decision path, `.between_decisions()` on it).
pub(super) fn load_policy(
    t: &TargetConfig,
    data: &Arc<Mutex<TargetData>>,
    limits: crate::policy::PolicyLimits,
    vms: &mut VmPool,
) -> Result<LuaPolicy, PolicyError> {
    let src = vms.read(&t.policy)?;
    let mut p = vms.load(&src, &t.params_json(), limits)?;
    // `ctx.behavior`: the guard limits the rate as the HPA does, so a
    // policy need not (hpa.lua leaves its own scale-up limit out then)
    p.ctx()
        .raw_set("behavior", t.behavior.is_some())
        .map_err(|e| PolicyError {
            kind: crate::policy::PolicyErrorKind::Load,
            policy: src.version.clone(),
            message: e.to_string(),
        })?;
    p.bind(data.clone())?;
    p.init(&t.init_input())?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Targets on two files, interleaved and in runs: each lookup gives
    /// its own file's stamp, read once a round; a new round reads again.
    #[test]
    fn a_round_gives_each_path_its_own_stamp_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.lua"), dir.path().join("b.lua"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "22").unwrap();
        let mut round = StampRound::default();
        for p in [&a, &a, &b, &a, &b, &b, &a] {
            let s = round.now(p);
            assert_eq!(s.path(), p);
            assert_eq!(s.len, if p == &a { 1 } else { 2 });
        }
        assert_eq!(round.stamps.len(), 2, "one read a file a round");
        // within the round a change is not seen; in the next it is
        std::fs::write(&a, "4444").unwrap();
        assert_eq!(round.now(&a).len, 1);
        round.clear();
        assert_eq!(round.now(&b).len, 2);
        assert_eq!(round.now(&a).len, 4);
    }
}
