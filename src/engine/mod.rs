//! The engine: signals into windows, a policy and the guard per target,
//! scale commands out. `Engine` is synchronous and takes the time as an
//! argument (tests and the simulator drive it); `drive` runs it on a tick
//! and on events, with bounded channels on both sides.

pub mod config;
mod control;
pub mod input;
pub mod ownership;
mod persist;
mod reload;
pub mod shards;
pub mod slots;
mod status;
mod target;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::clock::{Clock, Millis};
use crate::command::{Order, ScaleCommand, ScaleResult};
use crate::event::{ControlAction, Limits, Metric, Origin, Reason, Rejection, Signal};
use crate::forecast::builtin::{RefitMode, Season};
use crate::forecast::ForecastValue;
use crate::guard::{Decision, Guard, Recommendation};
use crate::policy::{
    run_examples, CallInput, PolicyError, PolicyErrorKind, PolicySource, SignalView, VmPool,
};
use crate::state::{ControlState, StateHandle};
use crate::telemetry::Metrics;
use crate::window::{TargetWindows, WindowStats};

pub use config::{EngineConfig, TargetConfig};
pub use input::{
    decode_message, mark_processed, DecodedMessage, EngineGone, EngineHandle, EngineInput,
    Ingested, MappedInput, Pick, Reconfigure, WeakEngineHandle,
};
pub use ownership::{Held, Ownership, SharedOwnership};
pub use persist::Restored;
pub use reload::{Prepared, ReloadReport};
pub use target::TargetData;

use target::{load_policy, FileStamp, TargetRuntime, QUARANTINE_AFTER};

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

/// Where and how the engine publishes its own forecasts.
#[derive(Debug)]
struct ForecastsOut {
    tx: mpsc::Sender<(String, Vec<u8>)>,
    period_ms: i64,
    horizon_ms: i64,
    step_ms: i64,
    next_ms: Millis,
}

pub struct Engine {
    targets: Vec<TargetRuntime>,
    by_name: HashMap<String, usize>,
    cfg: EngineConfig,
    limits: Limits,
    metrics: Arc<Metrics>,
    last_reload_check: Millis,
    /// Targets that may have events waiting (a superset, cleaned as it is
    /// read), so an event-driven evaluation looks at those, not at every
    /// target.
    waiting: Vec<usize>,
    /// This tick's slices check their policy files.
    reload_round: bool,
    /// How far the slice in progress got, when it gave way to inputs
    /// ([`Engine::tick_part_until`]): the next target index to evaluate.
    slice_resume: Option<usize>,
    /// None: every target is ours (one scaler, or no Kafka source).
    ownership: Option<SharedOwnership>,
    /// RabbitMQ slot queues (`source.amqp.slots`): a target is ours while
    /// its slot is.
    slots: Option<Arc<slots::Slots>>,
    /// Where snapshots go, how often each changed target is written, and
    /// where the round of the periodic snapshots is.
    state: Option<(StateHandle, Duration)>,
    snapshot_cursor: usize,
    /// Rounds of periodic snapshots so far, and the time a target that
    /// never had one counts its snapshot's age from.
    snapshot_ticks: u64,
    snapshot_since: Millis,
    /// Which messages are in which format (`[[source.inputs]]`).
    inputs: Arc<crate::event::Inputs>,
    /// Own forecasts (`[forecasts]`): where they go, every how often,
    /// how far and how fine, and when the next round is due.
    forecasts_out: Option<ForecastsOut>,
    /// The shared policy VMs that targets loaded from here (a reload or a
    /// changed file) go into.
    vms: Mutex<VmPool>,
    /// The policy files' stamps in this round of reload checks.
    stamps: target::StampRound,
    /// Whether a policy version's declared examples pass, in this round.
    examples: HashMap<String, Result<(), PolicyError>>,
    /// Which shard this engine is (`engine.shards`; 0 when unsharded).
    shard: usize,
    /// This shard's policy calls and decisions not yet added to the
    /// shared series (telemetry/tally.rs).
    tally: crate::telemetry::Tally,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("targets", &self.by_name.len())
            .finish()
    }
}

impl Engine {
    /// Builds every target; fails when a policy does not load.
    pub fn new(
        engine: &EngineConfig,
        configured: &[TargetConfig],
        metrics: Arc<Metrics>,
        now_ms: Millis,
    ) -> Result<Self, PolicyError> {
        let mut targets = Vec::with_capacity(configured.len());
        let mut by_name = HashMap::new();
        let mut vms = VmPool::new(engine.targets_per_vm).reading_once();
        for t in configured {
            by_name.insert(t.name.clone(), targets.len());
            targets.push(build_target(t, engine, &metrics, now_ms, &mut vms)?);
        }
        vms.fresh_reads();
        crate::policy::settle(targets.iter().map(|t| &t.policy));
        Ok(Self {
            tally: crate::telemetry::Tally::new(),
            targets,
            by_name,
            limits: engine.limits(),
            cfg: engine.clone(),
            metrics,
            last_reload_check: now_ms,
            waiting: Vec::new(),
            reload_round: false,
            slice_resume: None,
            ownership: None,
            slots: None,
            state: None,
            snapshot_cursor: 0,
            snapshot_ticks: 0,
            snapshot_since: now_ms,
            forecasts_out: None,
            inputs: Arc::default(),
            vms: Mutex::new(vms),
            stamps: Default::default(),
            examples: HashMap::new(),
            shard: 0,
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

    /// Which shard this engine is (0 when unsharded).
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Evaluates only targets on partitions `ownership` says are ours.
    pub fn track_ownership(&mut self, ownership: SharedOwnership) {
        self.ownership = Some(ownership);
    }

    /// Decides only for targets whose slot queue this scaler consumes as
    /// RabbitMQ's single active consumer.
    pub fn track_slots(&mut self, slots: Arc<slots::Slots>) {
        self.slots = Some(slots);
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
        let message = decode_message(&self.inputs, &self.limits, source, bytes, now_ms, origin);
        let out = self.apply_decoded(source, &message, now_ms);
        self.processed(origin);
        out
    }

    /// Applies the items of one decoded message that are this engine's
    /// (all of them, or a shard's part); counts each and returns the
    /// outcome. The message's offset is not marked processed here (see
    /// [`Engine::processed`]): with shards, only once every shard has its
    /// part.
    pub fn apply_decoded(&mut self, source: &str, m: &DecodedMessage, now_ms: Millis) -> Ingested {
        use crate::event::Decoded;
        let origin = &m.origin;
        let mut out = Ingested::default();
        // Partitions matter only when ownership is tracked (Kafka source).
        let partition = self
            .ownership
            .as_ref()
            .and(origin.partition)
            .map(|p| (origin.topic.clone(), p));
        let mapped = m.mapped.as_ref();
        for (i, item) in &m.items {
            let i = *i;
            let applied = match item {
                Decoded::Signal(s) => {
                    if let Some(key) = &partition {
                        self.place(s.target(), key);
                    }
                    self.apply_as(s, now_ms, origin.replay).map(|()| s.kind())
                }
                Decoded::Rejected(r) => Err(r.clone()),
                Decoded::Skipped(skip) => {
                    if let Some(input) = mapped {
                        self.unmatched(source, input, skip.code(), i, origin.replay, &mut out);
                    }
                    continue;
                }
            };
            match applied {
                Ok(kind) => {
                    out.applied += 1;
                    self.metrics.event_received(source, kind);
                }
                // a gateway names many services tidewatch does not scale
                Err(r) if r.reason == Reason::UnknownTarget && mapped.is_some() => {
                    if let Some(input) = mapped {
                        self.unmatched(source, input, "unknown_target", i, origin.replay, &mut out);
                    }
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
        out
    }

    /// Marks the message at `origin` processed: its partition goes live
    /// once the replay reaches where the assignment started.
    pub fn processed(&self, origin: &Origin) {
        mark_processed(self.ownership.as_ref(), origin);
    }

    /// A gateway record that became no signal: counted per input, and
    /// dead-lettered when its input asks for that.
    fn unmatched(
        &self,
        source: &str,
        input: &MappedInput,
        reason: &str,
        index: usize,
        replay: bool,
        out: &mut Ingested,
    ) {
        if replay {
            return;
        }
        self.metrics.event_unmatched(source, &input.name, reason);
        if input.deadletter_unmatched {
            out.rejected.push((
                index,
                Rejection::unmatched(format!(
                    "record {index} of input {:?}: {reason}",
                    input.name
                )),
            ));
        }
    }

    /// Which messages are in which format (`[[source.inputs]]`, compiled).
    pub fn set_inputs(&mut self, inputs: Arc<crate::event::Inputs>) {
        self.inputs = inputs;
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
            // The replay refills the windows; the history is days long and
            // stays (a snapshot of the previous owner may replace it).
            let mut data = t.data.lock().unwrap_or_else(|p| p.into_inner());
            data.windows =
                data.windows
                    .renewed(&t.cfg.windows, t.cfg.history_span, t.cfg.history_step);
        }
        t.partition = Some((key.clone(), epoch));
        t.pending_since = None;
    }

    /// Whether this scaler decides for target `idx` now. With Kafka
    /// partitions, a target no signal of which came from a partition yet
    /// is ours only when a probe here measures it and its home partition
    /// ([`Ownership::home`]) is live here (every scaler of a group runs
    /// the same probes: one of them decides), or when this scaler owns
    /// every partition of the source's topics (its signals, when they
    /// come, come here). Otherwise another scaler may be reading its
    /// signals: counted as ours, it would be stale here after
    /// `stale_after` and go to its fallback against its owner's commands.
    /// Only the state of a target it decides for is written here: a stale
    /// copy must never overwrite its owner's snapshot.
    fn owned(&self, idx: usize) -> bool {
        if let Some(s) = &self.slots {
            return s.live_target(&self.targets[idx].cfg.name);
        }
        let Some(o) = &self.ownership else {
            return true;
        };
        let t = &self.targets[idx];
        let o = o.lock().unwrap_or_else(|p| p.into_inner());
        match &t.partition {
            Some((key, epoch)) => o.live(key) == Some(*epoch),
            None => (t.probed && o.home_live(&t.cfg.name)) || o.owns_every_partition(),
        }
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
        if let Signal::Control(c) = s {
            let min = t.cfg.min_replicas;
            let max = t.cfg.max_replicas;
            if control::apply(&mut t.control, c, min, max)? == control::Applied::Applied {
                self.metrics.control_applied(c);
                self.metrics
                    .controls_in_force(&t.cfg.name, &control::actions(&t.control));
                if !replay {
                    t.pending_since.get_or_insert(received_ms);
                    if !t.queued {
                        t.queued = true;
                        self.waiting.push(idx);
                    }
                }
                t.dirty = true;
            }
            return Ok(());
        }
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
                Signal::Control(_) => {}
            }
        }
        if !matches!(s, Signal::Forecast(_)) && !replay {
            t.pending_since.get_or_insert(received_ms);
            if !t.queued {
                t.queued = true;
                self.waiting.push(idx);
            }
            let ts = match s {
                Signal::QueueDepth(d) => Some(d.ts_ms),
                Signal::Latency(l) => Some(l.ts_ms),
                _ => None,
            };
            if let Some(ts) = ts {
                t.pending_ts = Some(t.pending_ts.map_or(ts, |p| p.min(ts)));
            }
        }
        t.dirty = true;
        Ok(())
    }

    /// Evaluates targets changed by events, each at most once per
    /// `min_eval_interval`. Nothing when `evaluate_on_event` is off.
    pub fn on_events(&mut self, now_ms: Millis) -> Vec<ScaleCommand> {
        if !self.cfg.evaluate_on_event {
            return Vec::new();
        }
        let gap = self.cfg.min_eval_interval.as_millis() as i64;
        let mut due = Vec::new();
        let mut still = Vec::new();
        for i in std::mem::take(&mut self.waiting) {
            let t = &self.targets[i];
            if t.pending_since.is_none() {
                self.targets[i].queued = false;
            } else if t.last_event_eval_ms.is_none_or(|l| now_ms - l >= gap) && self.owned(i) {
                self.targets[i].queued = false;
                due.push(i);
            } else {
                still.push(i);
            }
        }
        self.waiting = still;
        // in target order, as before
        due.sort_unstable();
        let mut out = Vec::new();
        for i in due {
            self.targets[i].last_event_eval_ms = Some(now_ms);
            out.extend(self.evaluate_counted(i, now_ms));
        }
        self.tally.flush(&self.metrics);
        out
    }

    /// When the next event-triggered evaluation may run, if one is waiting.
    pub fn next_event_eval(&self) -> Option<Millis> {
        if !self.cfg.evaluate_on_event {
            return None;
        }
        let gap = self.cfg.min_eval_interval.as_millis() as i64;
        self.waiting
            .iter()
            .copied()
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
        self.tick_part(now_ms, 0, 1)
    }

    /// How many slices `drive` spreads one tick over: about
    /// [`TARGETS_PER_SLICE`] targets each, at most one slice per
    /// [`SLICE_EVERY_MS`] of the tick. A signal then waits behind one
    /// target's policy, not behind every target's, and the engine never
    /// holds a core for long at a time: the broker and the I/O threads
    /// that a reaction also goes through get it back within a fraction of
    /// a millisecond.
    pub fn tick_parts(&self, tick: Duration) -> usize {
        let by_size = self.targets.len().div_ceil(TARGETS_PER_SLICE).max(1);
        let by_time = (tick.as_millis() / SLICE_EVERY_MS).max(1) as usize;
        by_size.min(by_time)
    }

    /// One slice of a tick spread over `parts`: the owned targets of the
    /// `part`th of `parts` runs of neighbours ([`slice_range`]), so each is
    /// evaluated once per tick at its own phase. The reload check, the
    /// gauges and the periodic snapshots are each slice's share; the
    /// once-per-tick work (whether this is a reload round, the refit
    /// pool's report, own forecasts) goes with part 0.
    pub fn tick_part(&mut self, now_ms: Millis, part: usize, parts: usize) -> Vec<ScaleCommand> {
        let mut out = Vec::new();
        self.tick_part_until(now_ms, part, parts, &mut out, || false);
        out
    }

    /// [`Engine::tick_part`], giving way when `give_way` says so between
    /// two targets: the commands so far go into `out`, and false comes
    /// back; the next call for the same part goes on from the next target
    /// (the slice's once-only work is done once). True once the slice is
    /// done. So an input waits behind one policy call, not behind a slice.
    pub fn tick_part_until(
        &mut self,
        now_ms: Millis,
        part: usize,
        parts: usize,
        out: &mut Vec<ScaleCommand>,
        give_way: impl Fn() -> bool,
    ) -> bool {
        let parts = parts.max(1);
        let resume = self.slice_resume.take();
        if resume.is_none() {
            self.slice_begin(now_ms, part, parts);
        }
        let range = slice_range(self.targets.len(), part, parts);
        let mut i = resume.unwrap_or(range.start);
        while i < range.end {
            // the next two targets' memory is asked for while this one
            // is evaluated: most of a target's reads miss every cache at
            // 50,000 targets (crate::prefetch)
            for ahead in 1..=PREFETCH_STAGES {
                if i + ahead < range.end {
                    self.prefetch(i + ahead, PREFETCH_STAGES - ahead);
                }
            }
            if self.owned(i) {
                // a target with a new command has nothing to re-issue
                match self.evaluate_counted(i, now_ms) {
                    Some(c) => out.push(c),
                    None => out.extend(self.reissue(i, now_ms)),
                }
            }
            i += 1;
            if i < range.end && give_way() {
                self.slice_resume = Some(i);
                self.tally.flush(&self.metrics);
                return false;
            }
        }
        self.tally.flush(&self.metrics);
        self.slice_end(now_ms, part, parts);
        true
    }

    /// One stage of asking for target `idx`'s memory ahead of its
    /// evaluation, stage 0 the earliest ([`PREFETCH_STAGES`] targets
    /// ahead): each stage reads only what the one before brought into
    /// cache, and asks for what that points to.
    fn prefetch(&self, idx: usize, stage: usize) {
        let t = &self.targets[idx];
        match stage {
            // the target, its data's lock and fields, its guard's
            // recommendations, the headers of its Lua objects
            0 => {
                let base = (t as *const TargetRuntime).cast::<u8>();
                for &at in hot_lines() {
                    crate::prefetch::line(base.wrapping_add(at));
                }
                crate::prefetch::line(Arc::as_ptr(&t.data));
                crate::prefetch::lines(t.cfg.name.as_ptr(), t.cfg.name.len(), 2);
                t.guard.prefetch();
                t.policy.prefetch_headers();
                t.window_lines.prefetch();
                t.forecast_places.prefetch(4);
            }
            // what those point to: the Lua tables' slots and the
            // closures' upvalues, the last reason's buffer
            _ => {
                t.policy.prefetch_inside();
                if let Some(d) = &t.last_decision {
                    crate::prefetch::line(d.reason.as_ptr());
                }
            }
        }
    }

    /// The start of a slice: the reload check for its targets' files.
    fn slice_begin(&mut self, now_ms: Millis, part: usize, parts: usize) {
        if part == 0 {
            self.reload_round =
                now_ms - self.last_reload_check >= self.cfg.reload_interval.as_millis() as i64;
            if self.reload_round {
                self.last_reload_check = now_ms;
                self.stamps.clear();
                self.examples.clear();
            }
        }
        if self.reload_round {
            // each slice looks at its own targets' files
            self.reload_changed_in(part, parts);
        }
    }

    /// The end of a slice: its gauges, its share of the periodic
    /// snapshots, and with part 0 the once-a-tick work.
    fn slice_end(&mut self, now_ms: Millis, part: usize, parts: usize) {
        self.export_gauges_in(now_ms, part, parts);
        self.snapshot_some(now_ms, part, parts);
        if part == 0 {
            // the refit pool is the process's: one shard reports it (each
            // reading it would take the lag away from the others' reports)
            if self.shard == 0 {
                let pool = crate::forecast::pool::pool();
                self.metrics.forecast_refits(
                    pool.take_lag_seconds(),
                    pool.running(),
                    pool.deferred(),
                    pool.done(),
                );
            }
            self.send_forecasts(now_ms);
        }
    }

    /// Publishes its own forecasts into `tx` every `period`: for each
    /// owned target and metric its built-in forecaster models, a point
    /// every `step` up to `horizon` (`[forecasts]`).
    pub fn publish_forecasts(
        &mut self,
        tx: mpsc::Sender<(String, Vec<u8>)>,
        period: Duration,
        horizon: Duration,
        step: Duration,
    ) {
        self.forecasts_out = Some(ForecastsOut {
            tx,
            period_ms: period.as_millis() as i64,
            horizon_ms: horizon.as_millis() as i64,
            step_ms: (step.as_millis() as i64).max(1000),
            next_ms: Millis::MIN,
        });
    }

    fn send_forecasts(&mut self, now_ms: Millis) {
        let Some(out) = self.forecasts_out.as_mut() else {
            return;
        };
        if now_ms < out.next_ms {
            return;
        }
        out.next_ms = now_ms + out.period_ms;
        let (horizon, step) = (out.horizon_ms, out.step_ms);
        let mut messages = Vec::new();
        for i in 0..self.targets.len() {
            if !self.owned(i) {
                continue;
            }
            let t = &self.targets[i];
            let d = t.data.lock().unwrap_or_else(|p| p.into_inner());
            for m in Metric::ALL {
                let history = d.windows.metric(m).history();
                let points: Vec<serde_json::Value> = (1..=horizon / step)
                    .filter_map(|k| {
                        let f = d.builtin.peek(m, history, now_ms, k * step)?;
                        Some(serde_json::json!({
                            "ts": now_ms + k * step,
                            "value": f.value,
                            "lower": f.lower.min(f.value),
                            "upper": f.upper.max(f.value),
                        }))
                    })
                    .collect();
                if points.is_empty() {
                    continue;
                }
                let msg = serde_json::json!({
                    "type": "forecast",
                    "target": t.cfg.name,
                    "metric": m.name(),
                    "source": "tidewatch",
                    "issued_at": now_ms,
                    "points": points,
                });
                messages.push((t.cfg.name.clone(), msg.to_string().into_bytes()));
            }
        }
        let out = self.forecasts_out.as_ref().expect("set above");
        for (target, payload) in messages {
            if out.tx.try_send((target.clone(), payload)).is_err() {
                self.metrics
                    .forecast_dropped(&target, "the publishing queue is full");
            }
        }
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
        let paused = t
            .control
            .mode
            .as_ref()
            .and_then(control::action)
            .is_some_and(|a| a == ControlAction::Pause);
        if paused || t.cfg.paused {
            return None;
        }
        let (old, since) = t.unanswered.as_ref()?;
        if after == 0 || now_ms - since < after {
            return None;
        }
        let generation = now_ms.max(t.last_generation + 1);
        t.last_generation = generation;
        let reason = format!(
            "re-issued: no worker result for generation {} within {}s",
            old.generation,
            after / 1000
        );
        let c = old.reissue(generation, now_ms, ttl_ms, reason);
        self.metrics.command_reissued(&c, old.generation);
        t.unanswered = Some((c.clone(), now_ms));
        Some(c)
    }

    /// The window gauges of one slice's targets.
    fn export_gauges_in(&self, now_ms: Millis, part: usize, parts: usize) {
        if self.metrics.per_target() != crate::telemetry::PerTarget::Full {
            return;
        }
        for t in &self.targets[slice_range(self.targets.len(), part, parts)] {
            let data = t.data.lock().unwrap_or_else(|p| p.into_inner());
            let shortest = t
                .cfg
                .windows
                .iter()
                .min()
                .map_or(10_000, |d| d.as_millis() as i64);
            let depth = match data.windows.stats(Metric::QueueDepth, now_ms, shortest) {
                Ok(Some(s)) => Some(s.last),
                _ => None,
            };
            let p95 = match data.windows.stats(Metric::LatencyMs, now_ms, shortest) {
                Ok(Some(WindowStats {
                    quantiles: Some(q), ..
                })) => Some(q[2] / 1000.0),
                _ => None,
            };
            self.metrics.target_windows(&t.cfg.name, depth, p95);
        }
    }

    /// Reloads policy files that changed on disk. A file that fails to load,
    /// or whose declared examples fail, leaves the running version in place.
    pub fn reload_changed(&mut self) {
        self.stamps.clear();
        self.examples.clear();
        self.reload_changed_in(0, 1);
    }

    /// [`Engine::reload_changed`] for one slice's targets.
    fn reload_changed_in(&mut self, part: usize, parts: usize) {
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        let range = slice_range(self.targets.len(), part, parts);
        for t in &mut self.targets[range] {
            let now = self.stamps.now(t.stamp.path());
            if !t.stamp.differs(now) {
                continue;
            }
            let before = std::mem::replace(&mut t.stamp, now.clone());
            let loaded = PolicySource::read(&t.cfg.policy).and_then(|src| {
                if src.version == t.policy.version() {
                    return Ok(None);
                }
                // the examples of a version are run once, not per target;
                // a load here holds up the shard's decisions
                let limits = self.cfg.policy_limits().between_decisions();
                self.examples
                    .entry(src.version.clone())
                    .or_insert_with(|| examples_pass(&src, limits))
                    .clone()?;
                let p = load_policy(&t.cfg, &t.data, limits, &mut vms)?;
                p.adopt_state(&t.policy)?;
                Ok(Some(p))
            });
            match loaded {
                Ok(None) => {}
                Ok(Some(p)) => {
                    self.metrics
                        .policy_reloaded(&t.cfg.name, p.version(), Ok(()));
                    if t.quarantined {
                        self.metrics
                            .policy_quarantined(&t.cfg.name, p.version(), None);
                    }
                    t.policy = p;
                    t.overruns = 0;
                    t.quarantined = false;
                    t.reload_timeouts = 0;
                }
                Err(e) => {
                    self.metrics
                        .policy_reloaded(&t.cfg.name, t.policy.version(), Err(&e));
                    // A load that ran out of time on a busy machine is
                    // tried again at the next rounds (the file still reads
                    // as changed); one that fails for what it is, or keeps
                    // running out of time, stays out until the file changes.
                    if e.kind == PolicyErrorKind::Timeout && t.reload_timeouts < RELOAD_RETRIES {
                        t.reload_timeouts += 1;
                        t.stamp = before;
                    } else {
                        t.reload_timeouts = 0;
                    }
                }
            }
        }
    }

    /// One evaluation of target `idx`: policy, guard, and a command when the
    /// replica count changes.
    pub fn evaluate(&mut self, idx: usize, now_ms: Millis) -> Option<ScaleCommand> {
        let c = self.evaluate_counted(idx, now_ms);
        self.tally.flush(&self.metrics);
        c
    }

    /// [`Engine::evaluate`], its call and decision counted in the shard's
    /// tally: the caller flushes it.
    fn evaluate_counted(&mut self, idx: usize, now_ms: Millis) -> Option<ScaleCommand> {
        let metrics = &*self.metrics;
        let tally = &mut self.tally;
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
        // borrowed unless a schedule or a control changes it (a clone is two
        // vectors with `behavior`)
        let mut guard_cfg = std::borrow::Cow::Borrowed(&t.guard_cfg);
        if let Some(a) = &active {
            let guard_cfg = guard_cfg.to_mut();
            guard_cfg.max = a.max.unwrap_or(guard_cfg.max);
            guard_cfg.min = a.min.unwrap_or(guard_cfg.min);
            guard_cfg.max = guard_cfg.max.max(guard_cfg.min);
        }
        // Run-time controls: those past their `until` lift themselves.
        let expired = control::expire(&mut t.control, now_ms);
        if !expired.is_empty() {
            for r in &expired {
                metrics.control_expired(name, &control::describe(r));
            }
            metrics.controls_in_force(name, &control::actions(&t.control));
            t.dirty = true;
        }
        let mode = t.control.mode.as_ref().and_then(control::action);
        match mode {
            Some(ControlAction::Pause) => guard_cfg.to_mut().paused = true,
            Some(ControlAction::PauseScaleIn) => guard_cfg.to_mut().pause_scale_in = true,
            Some(ControlAction::PauseScaleOut) => guard_cfg.to_mut().pause_scale_out = true,
            _ => {}
        }
        match t.control.dry_run.as_ref().and_then(control::action) {
            Some(ControlAction::DryRunOn) => guard_cfg.to_mut().dry_run = true,
            Some(ControlAction::DryRunOff) => guard_cfg.to_mut().dry_run = false,
            _ => {}
        }
        let input = CallInput {
            target: name,
            now_ms,
            replicas: t.current,
            min: guard_cfg.min,
            max: guard_cfg.max,
            schedule: active.as_ref(),
        };
        let (rec, policy_reason) = if t.quarantined {
            let why = format!(
                "policy {} is quarantined: {QUARANTINE_AFTER} calls in a row ran past \
                 engine.policy_timeout; fix the file to release it",
                t.policy.version()
            );
            (Recommendation::Failed(why), None)
        } else {
            let started = std::time::Instant::now();
            let proposal = t.policy.decide(&input);
            tally.policy_evaluated(metrics, name, started.elapsed().as_secs_f64());
            match proposal {
                Ok(p) => {
                    t.overruns = 0;
                    (
                        p.replicas
                            .map_or(Recommendation::Hold, Recommendation::Replicas),
                        p.reason.map(Ok).or(p.format.map(Err)),
                    )
                }
                Err(e) => {
                    metrics.policy_failed(name, &e);
                    if e.kind == PolicyErrorKind::Timeout {
                        t.overruns += 1;
                        if t.overruns >= QUARANTINE_AFTER {
                            t.quarantined = true;
                            metrics.policy_quarantined(name, t.policy.version(), Some(t.overruns));
                        }
                    } else {
                        t.overruns = 0;
                    }
                    (Recommendation::Failed(e.to_string()), None)
                }
            }
        };
        let (stale, activation) = {
            let mut d = t.data.lock().unwrap_or_else(|p| p.into_inner());
            let reads = std::mem::take(&mut d.reads);
            if reads != 0 {
                t.read_mask = reads;
                t.window_lines = d.windows.read_windows(reads);
                t.forecast_places = d.forecast_places();
            }
            let value = t.cfg.activation.as_ref().map(|a| {
                let span = a.span(&t.cfg.windows).as_millis() as i64;
                Metric::parse(&a.metric)
                    .and_then(|m| d.windows.stats(m, now_ms, span).ok().flatten())
                    .and_then(|s| s.get(&a.stat))
            });
            (staleness(t, &d, now_ms), value)
        };
        if stale.is_some() != t.stale {
            t.stale = stale.is_some();
            metrics.target_stale(name, t.stale, stale.as_deref().unwrap_or(""));
        }
        let rec = match (stale, activation) {
            (Some(why), _) => Recommendation::Stale(why),
            (None, Some(value)) => activate(
                t.cfg.activation.as_ref(),
                t.current,
                &mut t.idle_since,
                value,
                now_ms,
                rec,
            ),
            (None, None) => rec,
        };
        let pin = match (mode, t.control.mode.as_mut()) {
            (Some(ControlAction::Pin), Some(r)) => Some(r),
            _ => None,
        };
        let mut decision = match pin {
            // A pin: one command to its count, past every guard rule, then
            // nothing until it is lifted.
            Some(r) => {
                let n = r.replicas.unwrap_or(t.current);
                let first = !r.done;
                r.done = true;
                let direction = match n.cmp(&t.current) {
                    std::cmp::Ordering::Greater => crate::guard::Direction::Up,
                    std::cmp::Ordering::Less => crate::guard::Direction::Down,
                    std::cmp::Ordering::Equal => crate::guard::Direction::Hold,
                };
                let moves = first && direction != crate::guard::Direction::Hold;
                crate::guard::Decision {
                    current: t.current,
                    desired: if moves { n } else { t.current },
                    direction: if moves {
                        direction
                    } else {
                        crate::guard::Direction::Hold
                    },
                    held: (!moves).then_some(crate::guard::HoldReason::Paused),
                    dry_run: guard_cfg.dry_run,
                    reason: if moves {
                        format!("pinned to {n}")
                    } else {
                        format!("pinned at {n}")
                    },
                }
            }
            // the last decision's reason is written over, not a new one
            // allocated (and the old freed) for each of the tick's holds
            None => {
                let buf = t.last_decision.take().map(|d| d.reason).unwrap_or_default();
                t.guard
                    .decide_reusing(&guard_cfg, now_ms, t.current, &rec, buf)
            }
        };
        if let Some(a) = &active {
            decision.reason = format!("{}; schedule {}", decision.reason, a.name);
        }
        if let Some(c) = control::summary(&t.control) {
            decision.reason = format!("{}; {c}", decision.reason);
        }
        // The policy's reason leads; one returned as a pattern and its
        // arguments is formatted only where it is read: a command, a log
        // line, the status (Target::last_decision)
        t.last_format = None;
        let policy_text = match policy_reason {
            Some(Ok(r)) => Some(r),
            // a pattern its arguments do not fit is counted and logged as
            // the policy's error; the decision stands
            Some(Err(f)) if decision.held.is_none() || tracing::enabled!(tracing::Level::DEBUG) => {
                Some(t.policy.try_render(&f).unwrap_or_else(|e| {
                    metrics.policy_failed(name, &e);
                    f.failed(&e)
                }))
            }
            Some(Err(f)) => {
                t.last_format = Some(f);
                None
            }
            None => None,
        };
        if let Some(r) = policy_text {
            decision.reason = format!("{r}; {}", decision.reason);
        }
        tally.decided(metrics, name, &decision);
        let pending = t.pending_since.take();
        let pending_ts = t.pending_ts.take();
        t.dirty = true;
        let command = if decision.held.is_none() {
            let generation = now_ms.max(t.last_generation + 1);
            t.last_generation = generation;
            let order = Order {
                target: name,
                provider: &t.cfg.provider,
                policy: t.policy.version(),
                current: decision.current,
                desired: decision.desired,
                reason: decision.reason.clone(),
                dry_run: decision.dry_run,
            };
            let c = ScaleCommand::issue(order, generation, now_ms, ttl_ms);
            t.current = decision.desired;
            t.shown.1 = Some(decision.desired);
            metrics.target_observed(name, t.shown.0, t.shown.1);
            t.unanswered = Some((c.clone(), now_ms));
            let reaction = pending.map(|since| (now_ms - since).max(0) as f64 / 1000.0);
            metrics.command_issued(&c, decision.direction.code(), reaction);
            if let Some(ts) = pending_ts {
                metrics.signal_to_command(name, (now_ms - ts).max(0) as f64 / 1000.0);
            }
            Some(c)
        } else {
            None
        };
        t.last_decision = Some(decision);
        command
    }

    /// A probe of `target` measured (`ok`) or failed: failures in a row
    /// count toward its `failure_threshold`.
    pub fn probe_measured(&mut self, target: &str, ok: bool) {
        if let Some(&idx) = self.by_name.get(target) {
            let t = &mut self.targets[idx];
            t.probed = true;
            t.probe_failures = if ok {
                0
            } else {
                t.probe_failures.saturating_add(1)
            };
        }
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
            self.metrics.command_answered(&r.target);
        }
        match r.observed_replicas {
            Some(n) if r.generation >= t.last_generation => {
                t.current = n;
                t.dirty = true;
                t.shown.0 = n;
                self.metrics.target_observed(&r.target, n, t.shown.1);
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
                last_decision: t.last_decision(),
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

/// One target as configured, its policy loaded and initialized.
fn build_target(
    t: &TargetConfig,
    engine: &EngineConfig,
    metrics: &Metrics,
    now_ms: Millis,
    vms: &mut VmPool,
) -> Result<TargetRuntime, PolicyError> {
    let mut d = TargetData::new(
        TargetWindows::new(&t.windows, t.history_span, t.history_step),
        now_ms,
        engine.forecast_freshness.as_millis() as i64,
    );
    d.forecast.season = Season::parse(&t.forecast_season).unwrap_or_default();
    d.forecast.refit_ms = engine.forecast_refit.as_millis() as i64;
    let data = Arc::new(Mutex::new(d));
    let policy = load_policy(t, &data, engine.policy_limits(), vms)?;
    metrics.target_configured(&t.name, t.initial());
    Ok(TargetRuntime {
        guard_cfg: t.guard(),
        guard: Guard::default(),
        stamp: FileStamp::read(&t.policy),
        current: t.initial(),
        shown: (t.initial(), None),
        cfg: t.clone(),
        data,
        policy,
        last_generation: 0,
        published_generation: 0,
        last_event_eval_ms: None,
        pending_since: None,
        queued: false,
        pending_ts: None,
        last_decision: None,
        last_format: None,
        unanswered: None,
        partition: None,
        schedules: t.parsed_schedules(),
        overruns: 0,
        reload_timeouts: 0,
        quarantined: false,
        dirty: false,
        snapshot_at: None,
        control: ControlState::default(),
        read_mask: 0,
        window_lines: Default::default(),
        forecast_places: Default::default(),
        since_ms: now_ms,
        probe_failures: 0,
        probed: false,
        stale: false,
        idle_since: None,
    })
}

/// KEDA's activation over the policy's recommendation: at zero, stay
/// there until the metric (`value`, None without samples) is above the
/// threshold, then at least 1; with replicas, at least 1, until the metric
/// has been at or below the threshold for `idle_after`: then zero.
fn activate(
    activation: Option<&crate::engine::config::ActivationConfig>,
    current: u32,
    idle_since: &mut Option<Millis>,
    value: Option<f64>,
    now_ms: Millis,
    rec: Recommendation,
) -> Recommendation {
    let Some(a) = activation else {
        return rec;
    };
    let above = value.is_some_and(|v| v > a.threshold);
    let shown = value.map_or("no samples".to_owned(), |v| format!("{} {v}", a.stat));
    if above {
        *idle_since = None;
    } else {
        idle_since.get_or_insert(now_ms);
    }
    if current == 0 {
        if !above {
            return Recommendation::Inactive(format!(
                "inactive: {} {shown}, activation threshold {}",
                a.metric, a.threshold
            ));
        }
        return match rec {
            Recommendation::Replicas(n) if n >= 1 => Recommendation::Replicas(n),
            Recommendation::Failed(why) => Recommendation::Failed(why),
            _ => Recommendation::Forced(
                1,
                format!("activated: {} {shown} > {}", a.metric, a.threshold),
            ),
        };
    }
    let idle_ms = idle_since.map_or(0, |s| now_ms - s);
    if idle_ms >= a.idle_after.as_millis() as i64 {
        return Recommendation::Idle(format!(
            "idle: {} {shown}, at or below {} for {}s (idle_after {})",
            a.metric,
            a.threshold,
            idle_ms / 1000,
            humantime::format_duration(a.idle_after)
        ));
    }
    match rec {
        Recommendation::Replicas(0) => {
            Recommendation::Forced(1, "active: at least 1 until idle_after".into())
        }
        other => other,
    }
}

/// Why target `t`'s signals are stale at `now_ms`, if they are: its probe
/// failed `failure_threshold` times in a row, or no metric the policy
/// read (any metric, before it read one) has had a sample for
/// `stale_after` (counted from when this engine got the target at the
/// earliest).
fn staleness(t: &TargetRuntime, d: &TargetData, now_ms: Millis) -> Option<String> {
    if t.probe_failures >= t.cfg.failure_threshold {
        return Some(format!(
            "{} probe measurements failed in a row (failure_threshold {})",
            t.probe_failures, t.cfg.failure_threshold
        ));
    }
    let after = t.cfg.stale_after?;
    let read: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|&m| t.read_mask == 0 || t.read_mask & m.bit() != 0)
        .collect();
    let newest = read
        .iter()
        .filter_map(|&m| d.windows.metric(m).last_seen())
        .max();
    let since = newest.unwrap_or(Millis::MIN).max(t.since_ms);
    let age = now_ms - since;
    (age > after.as_millis() as i64).then(|| {
        let names: Vec<&str> = read.iter().map(|m| m.name()).collect();
        format!(
            "no sample of {} for {}s (stale_after {})",
            names.join(", "),
            age / 1000,
            humantime::format_duration(after)
        )
    })
}

/// Whether `src`'s declared examples pass; the error names each that
/// fails.
fn examples_pass(
    src: &PolicySource,
    limits: crate::policy::PolicyLimits,
) -> Result<(), PolicyError> {
    let failed: Vec<_> = run_examples(src, limits)?
        .into_iter()
        .filter(|o| !o.passed())
        .collect();
    // an example that only ran out of time says nothing of the policy: the
    // load is retried (see RELOAD_RETRIES)
    let kind = if failed
        .iter()
        .any(|o| matches!(&o.got, Err(e) if e.kind == PolicyErrorKind::Timeout))
    {
        PolicyErrorKind::Timeout
    } else {
        PolicyErrorKind::Load
    };
    let failed: Vec<String> = failed
        .into_iter()
        .map(|o| {
            format!(
                "example {:?} expected {:?}, got {}",
                o.name,
                o.expected,
                o.got_text()
            )
        })
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(PolicyError {
        kind,
        policy: src.version.clone(),
        message: failed.join("; "),
    })
}

/// The offsets in a [`TargetRuntime`] of the cache lines an evaluation
/// reads, one each (a target is about 2 KB, most of it configuration an
/// evaluation does not read).
fn hot_lines() -> &'static [usize] {
    use std::mem::{offset_of, size_of};
    static LINES: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    LINES.get_or_init(|| {
        // (offset, bytes) of each field read
        let fields: [(usize, usize); 26] = [
            (offset_of!(TargetRuntime, cfg.name), 24),
            (offset_of!(TargetRuntime, cfg.paused), 1),
            (offset_of!(TargetRuntime, cfg.activation), 8),
            (offset_of!(TargetRuntime, cfg.stale_after), 16),
            (offset_of!(TargetRuntime, cfg.failure_threshold), 4),
            (
                offset_of!(TargetRuntime, guard_cfg),
                size_of::<crate::guard::GuardConfig>(),
            ),
            (
                offset_of!(TargetRuntime, guard),
                size_of::<crate::guard::Guard>(),
            ),
            (offset_of!(TargetRuntime, data), 8),
            (
                offset_of!(TargetRuntime, policy),
                size_of::<crate::policy::LuaPolicy>(),
            ),
            (offset_of!(TargetRuntime, current), 4),
            (offset_of!(TargetRuntime, shown), 12),
            (offset_of!(TargetRuntime, last_generation), 8),
            (offset_of!(TargetRuntime, pending_since), 16),
            (offset_of!(TargetRuntime, pending_ts), 16),
            (
                offset_of!(TargetRuntime, last_decision),
                size_of::<Option<Decision>>(),
            ),
            (offset_of!(TargetRuntime, last_format), 16),
            (offset_of!(TargetRuntime, unanswered), 16),
            (offset_of!(TargetRuntime, schedules), 24),
            (offset_of!(TargetRuntime, overruns), 4),
            (offset_of!(TargetRuntime, quarantined), 1),
            (offset_of!(TargetRuntime, dirty), 1),
            (
                offset_of!(TargetRuntime, control),
                size_of::<crate::state::ControlState>(),
            ),
            (offset_of!(TargetRuntime, read_mask), 1),
            (offset_of!(TargetRuntime, probe_failures), 4),
            (
                offset_of!(TargetRuntime, window_lines),
                size_of::<crate::window::WindowLines>(),
            ),
            (
                offset_of!(TargetRuntime, forecast_places),
                size_of::<crate::prefetch::Places<4>>(),
            ),
        ];
        let mut lines: Vec<usize> = fields
            .iter()
            .flat_map(|&(at, bytes)| {
                let first = at / crate::prefetch::LINE;
                let last = (at + bytes.max(1) - 1) / crate::prefetch::LINE;
                (first..=last).map(|l| l * crate::prefetch::LINE)
            })
            .collect();
        lines.sort_unstable();
        lines.dedup();
        lines
    })
}

/// The targets of slice `part` of `parts`: a run of neighbours, so a slice
/// works on the memory of a few policy VMs rather than one target in each.
pub fn slice_range(len: usize, part: usize, parts: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    let part = part.min(parts);
    (len * part / parts)..(len * (part + 1) / parts).min(len)
}

/// Reload rounds that try a changed policy file again after its load ran
/// out of time (`engine.policy_timeout`, which a reload's load shares with
/// the decisions it holds up): a busy moment does not keep a new version
/// out until the file is touched again, and a file that always runs out of
/// time costs a few rounds, not every one.
pub const RELOAD_RETRIES: u8 = 3;

/// Targets per slice of a spread tick (see [`Engine::tick_parts`]): about
/// a third of a millisecond of `queue_depth.lua` (issue 21: slices of 256,
/// 2.5 ms at a time, raised the reaction p99 at 50,000 targets from 9 to
/// 12-15 ms, because what the slice holds up is the broker and the I/O
/// threads, which cannot see it give way).
pub const TARGETS_PER_SLICE: usize = 32;
/// How many targets ahead of its evaluation the tick starts asking for a
/// target's memory, a stage a target ([`Engine::prefetch`]).
const PREFETCH_STAGES: usize = 2;
/// The shortest time between two slices (tokio's timer resolution).
pub const SLICE_EVERY_MS: u128 = 1;

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
    // the tick is spread over `parts` slices, one every tick / parts
    let every = |parts: usize| (tick / parts.max(1) as u32).max(Duration::from_millis(1));
    let slice_ticker = |parts: usize, first: tokio::time::Instant| {
        let mut t = tokio::time::interval_at(first, every(parts));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        t
    };
    let mut parts = engine.tick_parts(tick);
    let mut part = 0usize;
    let mut round = Duration::ZERO;
    let mut ticker = slice_ticker(parts, tokio::time::Instant::now());
    // a slice that gave way to inputs, to go on with once they are taken
    let mut unfinished = false;
    loop {
        let wake = engine.next_event_eval().map(|at| {
            // `at` is Millis::MIN for "now" (a target that became live with
            // signals waiting, after a restore): saturate, never overflow
            let wait = at.saturating_sub(clock.now_ms()).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_millis(wait)
        });
        // Signals first, then evaluations they made due, then the tick's
        // next slice: under load a signal never waits behind the slices
        // that have piled up, and a slice gives way between two targets
        // to inputs that arrive while it runs.
        let mut slicing = false;
        let mut out = tokio::select! {
            biased;
            _ = &mut shutdown => break,
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
                Some(EngineInput::Decoded { source, messages, done }) => {
                    let now = clock.now_ms();
                    let outcomes = messages
                        .iter()
                        .map(|(k, m)| (*k, engine.apply_decoded(source, m, now)))
                        .collect();
                    let _ = done.send(outcomes);
                    engine.on_events(now)
                }
                Some(EngineInput::Signal(s)) => {
                    let now = clock.now_ms();
                    engine.probe_measured(s.target(), true);
                    match engine.apply(&s, now) {
                        Ok(()) => engine.metrics().event_received("probe", s.kind()),
                        Err(r) => engine.metrics().event_rejected("probe", &r),
                    }
                    engine.on_events(now)
                }
                Some(EngineInput::ProbeFailed { target }) => {
                    engine.probe_measured(&target, false);
                    Vec::new()
                }
                Some(EngineInput::Result(r)) => {
                    engine.observe(&r);
                    Vec::new()
                }
                Some(EngineInput::Published { target, generation }) => {
                    engine.published(&target, generation);
                    Vec::new()
                }
                Some(EngineInput::Restore { snapshots, done }) => {
                    let outcomes = snapshots
                        .iter()
                        .map(|s| (s.target.clone(), engine.restore(s)))
                        .collect();
                    let _ = done.send(outcomes);
                    Vec::new()
                }
                Some(EngineInput::Reconfigure(r)) => {
                    let Reconfigure { engine: cfg, targets, prepared, snapshots, done } = *r;
                    let report = engine.reconfigure(cfg, targets, prepared, snapshots, clock.now_ms());
                    let _ = done.send(report);
                    Vec::new()
                }
                Some(EngineInput::Status { target, done }) => {
                    let _ = done.send(engine.status_json(target.as_deref(), clock.now_ms()));
                    Vec::new()
                }
                Some(EngineInput::SnapshotNow { pick, done }) => {
                    let n = match pick {
                        Pick::All => engine.snapshot_all(clock.now_ms()),
                        Pick::Slot(k) => engine.snapshot_slot(k, clock.now_ms()),
                        Pick::Partitions(keys) => {
                            engine.snapshot_partitions(&keys, clock.now_ms())
                        }
                    };
                    let _ = done.send(n);
                    Vec::new()
                }
            },
            _ = async { tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)).await }, if wake.is_some() => {
                engine.on_events(clock.now_ms())
            }
            // the slice that gave way goes on once the inputs are taken
            _ = async {}, if unfinished => {
                slicing = true;
                Vec::new()
            }
            _ = ticker.tick(), if !unfinished => {
                if part == 0 {
                    engine.metrics().engine_ticked(engine.shard(), std::time::Instant::now());
                }
                slicing = true;
                Vec::new()
            }
        };
        if slicing {
            let started = std::time::Instant::now();
            let done =
                engine.tick_part_until(clock.now_ms(), part, parts, &mut out, || !input.is_empty());
            round += started.elapsed();
            unfinished = !done;
            if done {
                part += 1;
                if part >= parts {
                    // a whole tick: its slices' work, summed
                    engine
                        .metrics()
                        .engine_tick_took(engine.shard(), round.as_secs_f64());
                    round = Duration::ZERO;
                    part = 0;
                    let want = engine.tick_parts(tick);
                    if want != parts {
                        parts = want;
                        ticker = slice_ticker(parts, tokio::time::Instant::now() + every(parts));
                    }
                }
            }
        }
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
