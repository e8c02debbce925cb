//! The engine: signals into windows, a policy and the guard per target,
//! scale commands out. `Engine` is synchronous and takes the time as an
//! argument (tests and the simulator drive it); `drive` runs it on a tick
//! and on events, with bounded channels on both sides.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::clock::{Clock, Millis};
use crate::command::{command_id, timestamps, ScaleCommand, ScaleResult, VERSION};
use crate::config::{Config, EngineConfig, TargetConfig};
use crate::event::{Limits, Reason, Rejection, Signal};
use crate::forecast::builtin::{Builtin, RefitMode, Season, Settings as ForecastSettings};
use crate::forecast::{ForecastStore, ForecastValue};
use crate::guard::{Decision, Guard, GuardConfig, Recommendation};
use crate::policy::{
    run_examples, CallInput, LuaPolicy, PolicyError, PolicyErrorKind, PolicySource, SignalView,
};
use crate::schedule::Schedule;
use crate::telemetry::Metrics;
use crate::window::{Metric, TargetWindows, WindowStats};

/// What a policy of one target reads.
#[derive(Debug)]
pub struct TargetData {
    pub windows: TargetWindows,
    pub forecasts: ForecastStore,
    pub builtin: Builtin,
    pub forecast: ForecastSettings,
    pub now_ms: Millis,
    pub freshness_ms: i64,
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
                refit_ms: crate::config::DEFAULT_FORECAST_REFIT.as_millis() as i64,
                mode: RefitMode::Background,
            },
            now_ms,
            freshness_ms,
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

impl SignalView for TargetData {
    fn window(&self, metric: Metric, span_ms: i64) -> Result<Option<WindowStats>, String> {
        self.windows.stats(metric, self.now_ms, span_ms)
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
}

/// Where a message came from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub key: Option<Vec<u8>>,
    /// The broker's (or producer's) timestamp, the receive time of a
    /// message re-read after a rebalance.
    pub timestamp: Option<Millis>,
    /// Re-read to rebuild windows: applied, never evaluated on, never
    /// dead-lettered again (its previous owner did that).
    pub replay: bool,
}

/// Which partitions this scaler owns, shared by the Kafka source (which
/// learns of assignments) and the engine (which evaluates only targets on
/// owned partitions that have caught up with their previous owner).
#[derive(Debug, Default)]
pub struct Ownership {
    /// Assigned partitions: (the offset from which the partition is live,
    /// the previous owner's committed offset, an assignment counter).
    assigned: HashMap<(String, i32), (i64, i64, u64)>,
    /// The highest offset applied per partition.
    processed: HashMap<(String, i32), i64>,
    epoch: u64,
}

pub type SharedOwnership = Arc<Mutex<Ownership>>;

impl Ownership {
    /// `live_from`: no evaluation for this partition's targets before its
    /// messages up to there are applied. `committed`: where a previous
    /// owner stopped; messages below it were already handled by it.
    pub fn assign(&mut self, topic: &str, partition: i32, live_from: i64, committed: Option<i64>) {
        self.epoch += 1;
        let done_before = committed.unwrap_or(i64::MIN);
        self.assigned.insert(
            (topic.to_owned(), partition),
            (live_from, done_before, self.epoch),
        );
        self.processed.remove(&(topic.to_owned(), partition));
    }

    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.assigned.remove(&(topic.to_owned(), partition));
        self.processed.remove(&(topic.to_owned(), partition));
    }

    /// A message its previous owner already handled (dead-lettered,
    /// committed): re-read only to rebuild windows.
    pub fn is_replay(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.assigned
            .get(&(topic.to_owned(), partition))
            .is_some_and(|(_, done_before, _)| offset < *done_before)
    }

    fn processed(&mut self, key: &(String, i32), offset: i64) {
        let e = self.processed.entry(key.clone()).or_insert(offset);
        *e = (*e).max(offset);
    }

    /// Owned and caught up.
    fn live(&self, key: &(String, i32)) -> Option<u64> {
        let (live_from, _, epoch) = self.assigned.get(key)?;
        let done = self.processed.get(key).map_or(i64::MIN, |o| o + 1);
        (done >= *live_from).then_some(*epoch)
    }

    pub fn assigned_count(&self) -> usize {
        self.assigned.len()
    }

    fn epoch_of(&self, key: &(String, i32)) -> Option<u64> {
        self.assigned.get(key).map(|(_, _, e)| *e)
    }
}

/// Where a target is, for status displays and tests.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    pub name: String,
    pub replicas: u32,
    pub policy: String,
    pub last_decision: Option<Decision>,
    /// Generations issued and acknowledged by the broker.
    pub generation: i64,
    pub published_generation: i64,
}

#[derive(Debug)]
struct FileStamp {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    fn read(path: &PathBuf) -> Self {
        let meta = std::fs::metadata(path).ok();
        Self {
            path: path.clone(),
            modified: meta.as_ref().and_then(|m| m.modified().ok()),
            len: meta.map_or(0, |m| m.len()),
        }
    }
    fn changed(&self) -> bool {
        let now = Self::read(&self.path);
        now.modified != self.modified || now.len != self.len
    }
}

#[derive(Debug)]
struct TargetRuntime {
    cfg: TargetConfig,
    guard_cfg: GuardConfig,
    guard: Guard,
    data: Arc<Mutex<TargetData>>,
    policy: LuaPolicy,
    stamp: FileStamp,
    /// Replicas as last commanded, or as a worker last reported for the latest command.
    current: u32,
    last_generation: i64,
    /// The highest generation the broker acknowledged.
    published_generation: i64,
    /// The last evaluation triggered by events (ticks do not count, so a
    /// tick never delays the reaction to an event).
    last_event_eval_ms: Option<Millis>,
    /// Receive time of the earliest event not evaluated yet.
    pending_since: Option<Millis>,
    last_decision: Option<Decision>,
    /// The latest command and when it was (re-)issued, until a worker
    /// answers it (any result of its generation or a later one).
    unanswered: Option<(ScaleCommand, Millis)>,
    /// The partition its signals arrive on, and the assignment it was
    /// learned under (a new assignment starts the windows afresh).
    partition: Option<((String, i32), u64)>,
    schedules: Vec<Schedule>,
}

pub struct Engine {
    targets: Vec<TargetRuntime>,
    by_name: HashMap<String, usize>,
    cfg: EngineConfig,
    limits: Limits,
    metrics: Arc<Metrics>,
    last_reload_check: Millis,
    /// None: every target is ours (one scaler, or no Kafka source).
    ownership: Option<SharedOwnership>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("targets", &self.by_name.len())
            .finish()
    }
}

/// The outcome of one message.
#[derive(Debug, Default)]
pub struct Ingested {
    pub applied: usize,
    /// Each rejection with the index of its element (0 for a single object).
    pub rejected: Vec<(usize, Rejection)>,
}

fn load_policy(
    t: &TargetConfig,
    data: &Arc<Mutex<TargetData>>,
    cfg: &EngineConfig,
) -> Result<LuaPolicy, PolicyError> {
    let src = PolicySource::read(&t.policy)?;
    let mut p = LuaPolicy::load(&src, &t.params_json(), cfg.policy_limits())?;
    p.bind(data.clone())?;
    p.init(&t.init_input())?;
    Ok(p)
}

impl Engine {
    /// Builds every target; fails when a policy does not load.
    pub fn new(cfg: &Config, metrics: Arc<Metrics>, now_ms: Millis) -> Result<Self, PolicyError> {
        let mut targets = Vec::with_capacity(cfg.targets.len());
        let mut by_name = HashMap::new();
        for t in &cfg.targets {
            let mut d = TargetData::new(
                TargetWindows::new(&t.windows, t.history_span, t.history_step),
                now_ms,
                cfg.engine.forecast_freshness.as_millis() as i64,
            );
            d.forecast.season = Season::parse(&t.forecast_season).unwrap_or_default();
            d.forecast.refit_ms = cfg.engine.forecast_refit.as_millis() as i64;
            let data = Arc::new(Mutex::new(d));
            let policy = load_policy(t, &data, &cfg.engine)?;
            metrics
                .target_observed_replicas
                .with_label_values(&[t.name.as_str()])
                .set(i64::from(t.initial()));
            by_name.insert(t.name.clone(), targets.len());
            targets.push(TargetRuntime {
                guard_cfg: t.guard(),
                guard: Guard::default(),
                stamp: FileStamp::read(&t.policy),
                current: t.initial(),
                cfg: t.clone(),
                data,
                policy,
                last_generation: 0,
                published_generation: 0,
                last_event_eval_ms: None,
                pending_since: None,
                last_decision: None,
                unanswered: None,
                partition: None,
                schedules: t.parsed_schedules(),
            });
        }
        Ok(Self {
            targets,
            by_name,
            limits: cfg.engine.limits(),
            cfg: cfg.engine.clone(),
            metrics,
            last_reload_check: now_ms,
            ownership: None,
        })
    }

    /// Where forecaster refits run: the simulator runs them inline.
    pub fn set_refit_mode(&mut self, mode: RefitMode) {
        for t in &self.targets {
            t.data
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forecast
                .mode = mode;
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Evaluates only targets on partitions `ownership` says are ours.
    pub fn track_ownership(&mut self, ownership: SharedOwnership) {
        self.ownership = Some(ownership);
    }

    /// Decodes one message and applies what is valid; every rejection is
    /// counted and returned (for the dead-letter destination).
    pub fn ingest(&mut self, source: &str, bytes: &[u8], now_ms: Millis) -> Ingested {
        self.ingest_from(source, bytes, now_ms, &Origin::default())
    }

    /// `ingest` for a message from a partition: the target learns its
    /// partition, and a replayed message rebuilds windows without
    /// triggering an evaluation.
    pub fn ingest_from(
        &mut self,
        source: &str,
        bytes: &[u8],
        now_ms: Millis,
        origin: &Origin,
    ) -> Ingested {
        let mut out = Ingested::default();
        let at = crate::event::At {
            now_ms,
            // A message without `ts` happened when the broker got it.
            default_ts: origin.timestamp.unwrap_or(now_ms),
        };
        // Partitions matter only when ownership is tracked (Kafka source).
        let partition = self
            .ownership
            .as_ref()
            .and(origin.partition)
            .map(|p| (origin.topic.clone(), p));
        for (i, item) in crate::event::decode_at(bytes, at, &self.limits)
            .into_iter()
            .enumerate()
        {
            let applied = item.and_then(|s| {
                if let Some(key) = &partition {
                    self.place(s.target(), key);
                }
                self.apply_as(&s, now_ms, origin.replay).map(|()| s.kind())
            });
            match applied {
                Ok(kind) => {
                    out.applied += 1;
                    self.metrics.event_received(source, kind);
                }
                Err(r) => {
                    // A replay re-reads what its previous owner counted.
                    if !origin.replay {
                        self.metrics.event_rejected(source, &r);
                    }
                    out.rejected.push((i, r));
                }
            }
        }
        if let (Some(key), Some(offset), Some(o)) = (&partition, origin.offset, &self.ownership) {
            o.lock()
                .unwrap_or_else(|p| p.into_inner())
                .processed(key, offset);
        }
        out
    }

    /// Records the partition of a target's signals; under a new assignment
    /// of that partition, its windows start afresh (the replay refills them).
    fn place(&mut self, target: &str, key: &(String, i32)) {
        let Some(o) = &self.ownership else { return };
        let Some(&idx) = self.by_name.get(target) else {
            return;
        };
        let epoch = o
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .epoch_of(key)
            .unwrap_or(0);
        let t = &mut self.targets[idx];
        if t.partition
            .as_ref()
            .is_some_and(|(k, e)| k == key && *e == epoch)
        {
            return;
        }
        if t.partition.is_some() {
            let mut data = t.data.lock().unwrap_or_else(|p| p.into_inner());
            data.windows =
                TargetWindows::new(&t.cfg.windows, t.cfg.history_span, t.cfg.history_step);
        }
        t.partition = Some((key.clone(), epoch));
        t.pending_since = None;
    }

    /// Whether this scaler decides for target `idx` now. A target whose
    /// partition is unknown (fed only by probes) counts as ours.
    fn owned(&self, idx: usize) -> bool {
        let (Some(o), Some((key, epoch))) = (&self.ownership, &self.targets[idx].partition) else {
            return true;
        };
        o.lock().unwrap_or_else(|p| p.into_inner()).live(key) == Some(*epoch)
    }

    /// Applies one decoded signal received at `received_ms`.
    pub fn apply(&mut self, s: &Signal, received_ms: Millis) -> Result<(), Rejection> {
        self.apply_as(s, received_ms, false)
    }

    fn apply_as(&mut self, s: &Signal, received_ms: Millis, replay: bool) -> Result<(), Rejection> {
        let Some(&idx) = self.by_name.get(s.target()) else {
            return Err(Rejection {
                reason: Reason::UnknownTarget,
                detail: format!("target {:?} is not configured", s.target()),
                kind: s.kind(),
            });
        };
        let t = &mut self.targets[idx];
        {
            let mut data = t.data.lock().unwrap_or_else(|p| p.into_inner());
            match s {
                Signal::QueueDepth(d) => data.windows.apply_depth(d)?,
                Signal::Latency(l) => data.windows.apply_latency(l),
                Signal::Forecast(f) => {
                    let metric = Metric::parse(&f.metric).ok_or_else(|| Rejection {
                        reason: Reason::InvalidForecast,
                        detail: format!("metric {:?} is unknown", f.metric),
                        kind: "forecast",
                    })?;
                    data.forecasts.insert(metric, f.clone());
                }
            }
        }
        if !matches!(s, Signal::Forecast(_)) && !replay {
            t.pending_since.get_or_insert(received_ms);
        }
        Ok(())
    }

    /// Evaluates targets changed by events, each at most once per
    /// `min_eval_interval`. Nothing when `evaluate_on_event` is off.
    pub fn on_events(&mut self, now_ms: Millis) -> Vec<ScaleCommand> {
        if !self.cfg.evaluate_on_event {
            return Vec::new();
        }
        let gap = self.cfg.min_eval_interval.as_millis() as i64;
        let due: Vec<usize> = (0..self.targets.len())
            .filter(|&i| {
                let t = &self.targets[i];
                t.pending_since.is_some() && t.last_event_eval_ms.is_none_or(|l| now_ms - l >= gap)
            })
            .filter(|&i| self.owned(i))
            .collect();
        let mut out = Vec::new();
        for i in due {
            self.targets[i].last_event_eval_ms = Some(now_ms);
            out.extend(self.evaluate(i, now_ms));
        }
        out
    }

    /// When the next event-triggered evaluation may run, if one is waiting.
    pub fn next_event_eval(&self) -> Option<Millis> {
        if !self.cfg.evaluate_on_event {
            return None;
        }
        let gap = self.cfg.min_eval_interval.as_millis() as i64;
        (0..self.targets.len())
            .filter(|&i| self.targets[i].pending_since.is_some() && self.owned(i))
            .map(|i| {
                self.targets[i]
                    .last_event_eval_ms
                    .map_or(Millis::MIN, |l| l + gap)
            })
            .min()
    }

    /// The periodic evaluation of every target; also reloads changed policies.
    pub fn tick(&mut self, now_ms: Millis) -> Vec<ScaleCommand> {
        if now_ms - self.last_reload_check >= self.cfg.reload_interval.as_millis() as i64 {
            self.last_reload_check = now_ms;
            self.reload_changed();
        }
        let owned: Vec<usize> = (0..self.targets.len()).filter(|&i| self.owned(i)).collect();
        let mut out: Vec<ScaleCommand> = owned
            .iter()
            .filter_map(|&i| self.evaluate(i, now_ms))
            .collect();
        for i in owned {
            if !out.iter().any(|c| c.target == self.targets[i].cfg.name) {
                out.extend(self.reissue(i, now_ms));
            }
        }
        self.export_gauges(now_ms);
        out
    }

    /// The closed loop's safety net: when no worker answered the latest
    /// command within `reissue_after`, the target is flagged in
    /// `tidewatch_commands_unacknowledged` and the command goes out again
    /// with a new generation (the old one may have been lost, or expired
    /// in a queue nobody read).
    fn reissue(&mut self, idx: usize, now_ms: Millis) -> Option<ScaleCommand> {
        let after = self.cfg.reissue_after.as_millis() as i64;
        let ttl_ms = self.cfg.command_ttl.as_millis() as i64;
        let t = &mut self.targets[idx];
        let (old, since) = t.unanswered.as_ref()?;
        if after == 0 || now_ms - since < after {
            return None;
        }
        let name = t.cfg.name.as_str();
        let generation = now_ms.max(t.last_generation + 1);
        t.last_generation = generation;
        let (issued_at, expires_at) = timestamps(now_ms, ttl_ms);
        let c = ScaleCommand {
            id: command_id(now_ms),
            generation,
            issued_at,
            expires_at,
            reason: format!(
                "re-issued: no worker result for generation {} within {}s",
                old.generation,
                after / 1000
            ),
            ..old.clone()
        };
        tracing::warn!(
            target_name = name,
            old_generation = old.generation,
            generation,
            "no worker answered the last command; re-issuing it"
        );
        self.metrics
            .commands_unacknowledged
            .with_label_values(&[name])
            .set(1);
        self.metrics
            .commands_reissued
            .with_label_values(&[name])
            .inc();
        t.unanswered = Some((c.clone(), now_ms));
        Some(c)
    }

    fn export_gauges(&self, now_ms: Millis) {
        for t in &self.targets {
            let data = t.data.lock().unwrap_or_else(|p| p.into_inner());
            let shortest = t
                .cfg
                .windows
                .iter()
                .min()
                .map_or(10_000, |d| d.as_millis() as i64);
            let name = [t.cfg.name.as_str()];
            if let Ok(Some(s)) = data.windows.stats(Metric::QueueDepth, now_ms, shortest) {
                self.metrics
                    .target_queue_depth
                    .with_label_values(&name)
                    .set(s.last);
            }
            if let Ok(Some(WindowStats {
                quantiles: Some(q), ..
            })) = data.windows.stats(Metric::LatencyMs, now_ms, shortest)
            {
                self.metrics
                    .target_latency_p95
                    .with_label_values(&name)
                    .set(q[2] / 1000.0);
            }
        }
    }

    /// Reloads policy files that changed on disk. A file that fails to load,
    /// or whose declared examples fail, leaves the running version in place.
    pub fn reload_changed(&mut self) {
        for t in &mut self.targets {
            if !t.stamp.changed() {
                continue;
            }
            t.stamp = FileStamp::read(&t.cfg.policy);
            let loaded = PolicySource::read(&t.cfg.policy).and_then(|src| {
                if src.version == t.policy.version() {
                    return Ok(None);
                }
                let failed: Vec<String> = run_examples(&src, self.cfg.policy_limits())?
                    .into_iter()
                    .filter(|o| !o.passed())
                    .map(|o| {
                        format!(
                            "example {:?} expected {:?}, got {:?}",
                            o.name, o.expected, o.got
                        )
                    })
                    .collect();
                if !failed.is_empty() {
                    return Err(PolicyError {
                        kind: PolicyErrorKind::Load,
                        policy: src.version,
                        message: failed.join("; "),
                    });
                }
                let p = load_policy(&t.cfg, &t.data, &self.cfg)?;
                p.adopt_state(&t.policy)?;
                Ok(Some(p))
            });
            match loaded {
                Ok(None) => {}
                Ok(Some(p)) => {
                    self.metrics
                        .policy_reloaded(&t.cfg.name, p.version(), Ok(()));
                    t.policy = p;
                }
                Err(e) => self
                    .metrics
                    .policy_reloaded(&t.cfg.name, t.policy.version(), Err(&e)),
            }
        }
    }

    /// One evaluation of target `idx`: policy, guard, and a command when the
    /// replica count changes.
    pub fn evaluate(&mut self, idx: usize, now_ms: Millis) -> Option<ScaleCommand> {
        let metrics = self.metrics.clone();
        let ttl_ms = self.cfg.command_ttl.as_millis() as i64;
        let t = &mut self.targets[idx];
        let name = t.cfg.name.as_str();
        {
            let mut d = t.data.lock().unwrap_or_else(|p| p.into_inner());
            d.now_ms = now_ms;
            d.sync_forecasts();
        }
        // A schedule in force overrides the bounds (its min wins over the
        // target's max, so a planned peak is never capped below itself).
        let active = crate::schedule::active(&t.schedules, now_ms);
        let mut guard_cfg = t.guard_cfg.clone();
        if let Some(a) = &active {
            guard_cfg.max = a.max.unwrap_or(guard_cfg.max);
            guard_cfg.min = a.min.unwrap_or(guard_cfg.min);
            guard_cfg.max = guard_cfg.max.max(guard_cfg.min);
        }
        let input = CallInput {
            target: name,
            now_ms,
            replicas: t.current,
            min: guard_cfg.min,
            max: guard_cfg.max,
            schedule: active.as_ref(),
        };
        let started = std::time::Instant::now();
        let proposal = t.policy.decide(&input);
        metrics
            .policy_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        metrics.policy_evaluations.with_label_values(&[name]).inc();
        let (rec, policy_reason) = match proposal {
            Ok(p) => (
                p.replicas
                    .map_or(Recommendation::Hold, Recommendation::Replicas),
                p.reason,
            ),
            Err(e) => {
                metrics.policy_failed(name, &e);
                (Recommendation::Failed(e.to_string()), None)
            }
        };
        let mut decision = t.guard.decide(&guard_cfg, now_ms, t.current, &rec);
        if let Some(a) = &active {
            decision.reason = format!("{}; schedule {}", decision.reason, a.name);
        }
        if let Some(r) = policy_reason {
            decision.reason = format!("{r}; {}", decision.reason);
        }
        metrics.decided(name, &decision);
        let pending = t.pending_since.take();
        let command = if decision.held.is_none() {
            let generation = now_ms.max(t.last_generation + 1);
            t.last_generation = generation;
            let (issued_at, expires_at) = timestamps(now_ms, ttl_ms);
            let c = ScaleCommand {
                version: VERSION,
                id: command_id(now_ms),
                target: name.to_owned(),
                provider: t.cfg.provider.clone(),
                desired_replicas: decision.desired,
                current_replicas: decision.current,
                reason: decision.reason.clone(),
                policy: t.policy.version().to_owned(),
                generation,
                issued_at,
                expires_at,
                dry_run: decision.dry_run,
            };
            t.current = decision.desired;
            t.unanswered = Some((c.clone(), now_ms));
            metrics
                .commands_unacknowledged
                .with_label_values(&[name])
                .set(0);
            metrics
                .commands_issued
                .with_label_values(&[name, decision.direction.code()])
                .inc();
            if let Some(since) = pending {
                metrics
                    .event_to_command_seconds
                    .with_label_values(&[name])
                    .observe((now_ms - since).max(0) as f64 / 1000.0);
            }
            Some(c)
        } else {
            None
        };
        t.last_decision = Some(decision);
        command
    }

    /// The closed loop: a worker's report of the latest command sets the
    /// replica count the policy sees. Reports of older commands are ignored.
    pub fn observe(&mut self, r: &ScaleResult) -> bool {
        let Some(&idx) = self.by_name.get(&r.target) else {
            return false;
        };
        let t = &mut self.targets[idx];
        if t.unanswered
            .as_ref()
            .is_some_and(|(c, _)| r.generation >= c.generation)
        {
            t.unanswered = None;
            self.metrics
                .commands_unacknowledged
                .with_label_values(&[r.target.as_str()])
                .set(0);
        }
        match r.observed_replicas {
            Some(n) if r.generation >= t.last_generation => {
                t.current = n;
                self.metrics
                    .target_observed_replicas
                    .with_label_values(&[r.target.as_str()])
                    .set(i64::from(n));
                true
            }
            _ => false,
        }
    }

    /// Records the broker's acknowledgement of a command.
    pub fn published(&mut self, target: &str, generation: i64) {
        if let Some(&idx) = self.by_name.get(target) {
            let t = &mut self.targets[idx];
            t.published_generation = t.published_generation.max(generation);
        }
    }

    pub fn status(&self) -> Vec<TargetStatus> {
        self.targets
            .iter()
            .map(|t| TargetStatus {
                name: t.cfg.name.clone(),
                replicas: t.current,
                policy: t.policy.version().to_owned(),
                last_decision: t.last_decision.clone(),
                generation: t.last_generation,
                published_generation: t.published_generation,
            })
            .collect()
    }

    /// Records one value of `metric` for `target` at `ts`, as a message
    /// would (the simulator feeds request counts this way). False for an
    /// unknown target.
    pub fn record(&mut self, target: &str, metric: Metric, ts: Millis, value: f64) -> bool {
        let Some(&idx) = self.by_name.get(target) else {
            return false;
        };
        let mut d = self.targets[idx]
            .data
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        d.windows.record(metric, ts, value);
        true
    }

    /// What `ctx.forecast(metric, horizon)` of `target` answers at `now`.
    pub fn forecast(
        &self,
        target: &str,
        metric: Metric,
        now_ms: Millis,
        horizon_ms: i64,
    ) -> Option<ForecastValue> {
        let t = &self.targets[*self.by_name.get(target)?];
        let mut d = t.data.lock().unwrap_or_else(|p| p.into_inner());
        d.now_ms = now_ms;
        d.forecast(metric, horizon_ms)
    }

    /// Whether a policy of `target` asked for a built-in forecast of `metric`.
    pub fn forecast_wanted(&self, target: &str, metric: Metric) -> bool {
        self.by_name.get(target).is_some_and(|&i| {
            self.targets[i]
                .data
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .builtin
                .wanted(metric)
        })
    }

    /// Window statistics of a target, for displays.
    pub fn window(
        &self,
        target: &str,
        metric: Metric,
        now_ms: Millis,
        span: Duration,
    ) -> Option<WindowStats> {
        let t = &self.targets[*self.by_name.get(target)?];
        let data = t.data.lock().unwrap_or_else(|p| p.into_inner());
        data.windows
            .stats(metric, now_ms, span.as_millis() as i64)
            .ok()
            .flatten()
    }
}

/// What sources hand to the engine task.
#[derive(Debug)]
pub enum EngineInput {
    /// Raw messages from one source; `done` learns the outcome of each, in
    /// order (so a source stores its offsets or acks only after the apply).
    Batch {
        source: &'static str,
        messages: Arc<Vec<(Origin, Vec<u8>)>>,
        done: Option<tokio::sync::oneshot::Sender<Vec<Ingested>>>,
    },
    /// A signal a probe measured itself.
    Signal(Signal),
    /// A worker's result (the closed loop).
    Result(ScaleResult),
    /// The broker acknowledged the command of this generation.
    Published { target: String, generation: i64 },
}

/// Runs the engine: a tick, evaluation right after events (rate-limited per
/// target), commands into `commands`. Returns when `shutdown` resolves or
/// every input sender is gone.
pub async fn drive(
    mut engine: Engine,
    mut input: mpsc::Receiver<EngineInput>,
    commands: mpsc::Sender<ScaleCommand>,
    clock: Arc<dyn Clock>,
    tick: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> Engine {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let wake = engine.next_event_eval().map(|at| {
            let wait = (at - clock.now_ms()).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_millis(wait)
        });
        let out = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = ticker.tick() => engine.tick(clock.now_ms()),
            msg = input.recv() => match msg {
                None => break,
                Some(EngineInput::Batch { source, messages, done }) => {
                    let now = clock.now_ms();
                    let outcomes: Vec<Ingested> = messages
                        .iter()
                        .map(|(origin, m)| engine.ingest_from(source, m, now, origin))
                        .collect();
                    if let Some(done) = done {
                        let _ = done.send(outcomes);
                    }
                    engine.on_events(now)
                }
                Some(EngineInput::Signal(s)) => {
                    let now = clock.now_ms();
                    match engine.apply(&s, now) {
                        Ok(()) => engine.metrics().event_received("probe", s.kind()),
                        Err(r) => engine.metrics().event_rejected("probe", &r),
                    }
                    engine.on_events(now)
                }
                Some(EngineInput::Result(r)) => {
                    engine.observe(&r);
                    Vec::new()
                }
                Some(EngineInput::Published { target, generation }) => {
                    engine.published(&target, generation);
                    Vec::new()
                }
            },
            _ = async { tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)).await }, if wake.is_some() => {
                engine.on_events(clock.now_ms())
            }
        };
        for c in out {
            if commands.send(c).await.is_err() {
                return engine;
            }
        }
    }
    engine
}

#[cfg(test)]
mod tests;
