//! A new configuration for a running engine (SIGHUP, `engine.watch_config`):
//! new targets start (from their snapshot when one exists), removed ones
//! stop (their last snapshot is written first and stays in the store),
//! changed ones keep their state where the change allows it, unchanged
//! ones are not touched.

use std::collections::HashMap;

use crate::clock::Millis;
use crate::engine::config::{EngineConfig, TargetConfig};
use crate::forecast::builtin::Season;
use crate::policy::{PolicyError, VmPool};
use crate::state::TargetSnapshot;
use crate::telemetry::Metrics;

use super::target::{load_policy, FileStamp, TargetRuntime};
use super::{build_target, Engine, Restored};

/// Targets built for a reload away from the engine task (loading policies
/// is the slow part), by name.
#[derive(Default)]
pub struct Prepared(HashMap<String, TargetRuntime>);

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Prepared").field(&self.0.len()).finish()
    }
}

impl Prepared {
    /// Builds the targets of `configs` (the new ones of a reload) for an
    /// engine of `shards` shards: targets of different shards never share
    /// a Lua VM.
    pub fn build(
        engine: &EngineConfig,
        configs: &[TargetConfig],
        metrics: &Metrics,
        now_ms: Millis,
        shards: usize,
    ) -> Result<Self, PolicyError> {
        let mut out = HashMap::new();
        let mut pools: Vec<VmPool> = (0..shards.max(1))
            .map(|_| VmPool::new(engine.targets_per_vm).reading_once())
            .collect();
        for t in configs {
            let vms = &mut pools[super::shards::shard_of(&t.name, shards)];
            out.insert(
                t.name.clone(),
                build_target(t, engine, metrics, now_ms, vms)?,
            );
        }
        crate::policy::settle(out.values().map(|t| &t.policy));
        Ok(Self(out))
    }

    /// Splits the targets by their shard among `shards`.
    pub fn split(self, shards: usize) -> Vec<Prepared> {
        let mut out: Vec<Prepared> = (0..shards.max(1)).map(|_| Prepared::default()).collect();
        for (name, t) in self.0 {
            let k = super::shards::shard_of(&name, shards);
            out[k].0.insert(name, t);
        }
        out
    }
}

/// What a reload did, by target name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    /// Added and restored from a snapshot.
    pub resumed: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
    /// Changed targets whose new policy did not load (the old one runs).
    pub failed: Vec<String>,
}

impl ReloadReport {
    /// Adds a shard's report to this one.
    pub fn merge(&mut self, other: ReloadReport) {
        self.added.extend(other.added);
        self.resumed.extend(other.resumed);
        self.removed.extend(other.removed);
        self.removed.sort();
        self.changed.extend(other.changed);
        self.unchanged += other.unchanged;
        self.failed.extend(other.failed);
    }

    pub fn summary(&self) -> String {
        format!(
            "{} added ({} resumed from a snapshot), {} removed, {} changed, {} unchanged{}",
            self.added.len(),
            self.resumed.len(),
            self.removed.len(),
            self.changed.len(),
            self.unchanged,
            if self.failed.is_empty() {
                String::new()
            } else {
                format!("; policy not reloaded for {}", self.failed.join(", "))
            }
        )
    }
}

impl Engine {
    /// The names of `targets` this engine does not run yet.
    pub fn new_targets<'a>(&self, targets: &'a [TargetConfig]) -> Vec<&'a TargetConfig> {
        targets
            .iter()
            .filter(|t| !self.by_name.contains_key(&t.name))
            .collect()
    }

    /// Applies a checked configuration. `prepared` holds the new targets
    /// (built by [`Prepared::build`]); `snapshots` their stored state.
    pub fn reconfigure(
        &mut self,
        engine: EngineConfig,
        targets: Vec<TargetConfig>,
        mut prepared: Prepared,
        snapshots: Vec<TargetSnapshot>,
        now_ms: Millis,
    ) -> ReloadReport {
        let mut report = ReloadReport::default();
        // the target indices change: a slice in progress starts over
        self.slice_resume = None;
        let keep: std::collections::HashSet<&str> =
            targets.iter().map(|t| t.name.as_str()).collect();
        // Removed: their last word goes to the store first.
        let removed: Vec<usize> = (0..self.targets.len())
            .filter(|&i| !keep.contains(self.targets[i].cfg.name.as_str()))
            .collect();
        if let Some((state, _)) = self.state.clone() {
            let keepers: Vec<usize> = removed.iter().copied().filter(|&i| self.owned(i)).collect();
            let batch = keepers
                .into_iter()
                .map(|i| self.snapshot_of(i, now_ms, state.writer()))
                .collect();
            state.write(batch);
        }
        let mut old: HashMap<String, TargetRuntime> = std::mem::take(&mut self.targets)
            .into_iter()
            .map(|t| (t.cfg.name.clone(), t))
            .collect();
        report.removed = old
            .keys()
            .filter(|n| !keep.contains(n.as_str()))
            .cloned()
            .collect();
        report.removed.sort();
        if engine.targets_per_vm != self.cfg.targets_per_vm {
            self.vms = std::sync::Mutex::new(VmPool::new(engine.targets_per_vm));
        }
        self.cfg = engine;
        self.limits = self.cfg.limits();
        let mut next = Vec::with_capacity(targets.len());
        for cfg in targets {
            let name = cfg.name.clone();
            if let Some(mut t) = old.remove(&name) {
                if t.cfg == cfg {
                    report.unchanged += 1;
                } else {
                    if self.change(&mut t, cfg) {
                        report.changed.push(name);
                    } else {
                        report.failed.push(name.clone());
                        report.changed.push(name);
                    }
                }
                next.push(t);
            } else if let Some(t) = prepared.0.remove(&name) {
                report.added.push(name);
                next.push(t);
            }
        }
        self.targets = next;
        // indices moved: the waiting list is rebuilt from the targets
        self.waiting.clear();
        for (i, t) in self.targets.iter_mut().enumerate() {
            t.queued = t.pending_since.is_some();
            if t.queued {
                self.waiting.push(i);
            }
        }
        self.by_name = self
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.cfg.name.clone(), i))
            .collect();
        self.snapshot_cursor = 0;
        for s in &snapshots {
            let Some(&idx) = self.by_name.get(&s.target) else {
                continue;
            };
            if report.added.contains(&s.target) && self.apply_snapshot(idx, s) == Restored::Applied
            {
                report.resumed.push(s.target.clone());
            }
        }
        report
    }

    /// Moves a running target to its new configuration. The windows start
    /// afresh only when the window list changes, and the history is kept
    /// when its step is unchanged; a changed policy or parameters load the
    /// new policy, which adopts the plain `state` of the old one. False
    /// when the new policy does not load (the old one keeps running).
    fn change(&self, t: &mut TargetRuntime, cfg: TargetConfig) -> bool {
        let mut ok = true;
        {
            let mut data = t.data.lock().unwrap_or_else(|p| p.into_inner());
            if (&t.cfg.windows, t.cfg.history_span, t.cfg.history_step)
                != (&cfg.windows, cfg.history_span, cfg.history_step)
            {
                data.windows =
                    data.windows
                        .renewed(&cfg.windows, cfg.history_span, cfg.history_step);
            }
            data.forecast.season = Season::parse(&cfg.forecast_season).unwrap_or_default();
            data.forecast.refit_ms = self.cfg.forecast_refit.as_millis() as i64;
            data.freshness_ms = self.cfg.forecast_freshness.as_millis() as i64;
        }
        if (&t.cfg.policy, &t.cfg.params) != (&cfg.policy, &cfg.params) {
            let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
            // in the engine, between its decisions: a decision's time
            let limits = self.cfg.policy_limits().between_decisions();
            match load_policy(&cfg, &t.data, limits, &mut vms).and_then(|p| {
                p.adopt_state(&t.policy)?;
                Ok(p)
            }) {
                Ok(p) => {
                    self.metrics.policy_reloaded(&cfg.name, p.version(), Ok(()));
                    t.policy = p;
                    t.stamp = FileStamp::read(&cfg.policy);
                    t.overruns = 0;
                    t.quarantined = false;
                }
                Err(e) => {
                    self.metrics
                        .policy_reloaded(&cfg.name, t.policy.version(), Err(&e));
                    ok = false;
                }
            }
        }
        t.guard_cfg = cfg.guard();
        t.schedules = cfg.parsed_schedules();
        t.cfg = cfg;
        t.dirty = true;
        ok
    }
}
