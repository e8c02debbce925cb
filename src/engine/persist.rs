//! The engine's side of state that outlives the process: making a
//! target's snapshot, pacing the periodic ones, and taking one back.

use std::time::Duration;

use crate::clock::Millis;
use crate::event::Metric;
use crate::guard::Guard;
use crate::state::{StateHandle, TargetSnapshot, Unanswered};

use super::target::TargetRuntime;
use super::Engine;

/// What became of a snapshot given to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Its state is the target's now.
    Applied,
    /// This process wrote it, or decides the target now: what the engine
    /// holds is newer.
    Newer,
    /// No such target is configured (its snapshot stays in the store).
    NotConfigured,
}

impl Engine {
    /// Keeps snapshots in `state`: each changed target at least every
    /// `interval` (spread over the ticks), all of them on request.
    pub fn keep_state(&mut self, state: StateHandle, interval: Duration) {
        self.state = Some((state, interval));
    }

    /// The snapshot of target `idx` at `now`; a `ctx.state` value that
    /// cannot be kept is reported as a policy error (the rest is kept).
    pub(super) fn snapshot_of(
        &mut self,
        idx: usize,
        now_ms: Millis,
        writer: &str,
    ) -> TargetSnapshot {
        let t = &mut self.targets[idx];
        t.dirty = false;
        t.snapshot_at = Some(now_ms);
        let (policy_state, err) = t.policy.export_state();
        if let Some(e) = err {
            self.metrics.policy_failed(&t.cfg.name, &e);
        }
        let data = t.data.lock().unwrap_or_else(|p| p.into_inner());
        TargetSnapshot {
            target: t.cfg.name.clone(),
            taken_at_ms: now_ms,
            writer: writer.to_owned(),
            current: t.current,
            last_generation: t.last_generation,
            published_generation: t.published_generation,
            unanswered_generation: t.unanswered.as_ref().map(|(c, _)| c.generation),
            unanswered: t.unanswered.as_ref().map(|(c, at)| Unanswered {
                command: c.clone(),
                sent_ms: *at,
            }),
            guard: t.guard.export(),
            policy: t.policy.version().to_owned(),
            policy_state,
            control: t.control.clone(),
            histories: Metric::ALL
                .iter()
                .map(|&m| (m, data.windows.metric(m).history().export()))
                .filter(|(_, h)| !h.is_empty())
                .collect(),
            forecasters: Metric::ALL
                .iter()
                .filter_map(|&m| data.builtin.export(m).map(|f| (m, f)))
                .collect(),
        }
    }

    /// The periodic snapshots of one slice of a tick (`part` of `parts`):
    /// targets changed since their last snapshot and not written for an
    /// interval, round robin, the slice's share of as many as make every
    /// target's turn come once per interval, and no more than the state
    /// thread has room for. Each slice takes its share, so the thread's
    /// queue ([`crate::state::writer::MAX_QUEUED`]) is filled again as it
    /// drains, not once a tick: once a tick, at most that many a tick
    /// were written (about 300 a second at 50,000 targets, where a 30 s
    /// interval asks for 1,667).
    pub(super) fn snapshot_some(&mut self, now_ms: Millis, part: usize, parts: usize) {
        let Some((state, interval)) = self.state.clone() else {
            return;
        };
        let n = self.targets.len();
        if n == 0 {
            return;
        }
        let ticks = (interval.as_millis() / self.cfg.tick.as_millis().max(1)).max(1) as usize;
        let per_tick = n.div_ceil(ticks);
        let parts = parts.max(1);
        let share = per_tick * (part + 1) / parts - per_tick * part / parts;
        let mut budget = share.min(state.room());
        let mut batch = Vec::new();
        let mut looked = 0;
        while budget > 0 && looked < share {
            let i = self.snapshot_cursor % n;
            self.snapshot_cursor = (i + 1) % n;
            looked += 1;
            let due = self.targets[i]
                .snapshot_at
                .is_none_or(|at| now_ms - at >= interval.as_millis() as i64);
            if due && self.targets[i].dirty && self.owned(i) {
                batch.push(self.snapshot_of(i, now_ms, state.writer()));
                budget -= 1;
            }
        }
        state.write(batch);
        if part != 0 {
            return;
        }
        // once an interval: how far behind the store is (a store slower
        // than the interval asks fills the queue, and the round stalls)
        self.snapshot_ticks += 1;
        if self.snapshot_ticks.is_multiple_of(ticks as u64) {
            let since = self.snapshot_since;
            let oldest = (0..n)
                .filter(|&i| self.targets[i].dirty && self.owned(i))
                .map(|i| now_ms - self.targets[i].snapshot_at.unwrap_or(since))
                .max()
                .unwrap_or(0);
            self.metrics
                .state_snapshot_age(self.shard, oldest.max(0) as f64 / 1000.0);
        }
    }

    /// Snapshots of every target whose state is this engine's to keep
    /// (changed or not), queued now: on shutdown, on revocation, before a
    /// target is removed. Returns how many.
    pub fn snapshot_all(&mut self, now_ms: Millis) -> usize {
        self.snapshot_where(now_ms, |_| true)
    }

    /// Queues a snapshot of every target of RabbitMQ slot `slot` this
    /// engine writes (before the slot is handed on); how many.
    pub fn snapshot_slot(&mut self, slot: u16, now_ms: Millis) -> usize {
        let Some(slots) = self.slots.clone() else {
            return 0;
        };
        self.snapshot_where(now_ms, |t| slots.slot_of(&t.cfg.name) == slot)
    }

    /// Queues a snapshot of every target of the Kafka partitions `keys`
    /// this engine writes (before they are revoked: under cooperative
    /// rebalancing the others stay here), those homed on them included
    /// (probe-fed, [`crate::engine::Ownership::home`]); how many.
    pub fn snapshot_partitions(&mut self, keys: &[(String, i32)], now_ms: Millis) -> usize {
        let ownership = self.ownership.clone();
        self.snapshot_where(now_ms, |t| match &t.partition {
            Some((k, _)) => keys.contains(k),
            None => {
                t.probed
                    && ownership.as_ref().is_some_and(|o| {
                        o.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .home(&t.cfg.name)
                            .is_some_and(|h| keys.contains(&h))
                    })
            }
        })
    }

    /// Queues a snapshot of every target this engine writes that `pick`
    /// takes; how many.
    fn snapshot_where(&mut self, now_ms: Millis, pick: impl Fn(&TargetRuntime) -> bool) -> usize {
        let Some((state, _)) = self.state.clone() else {
            return 0;
        };
        let mut batch = Vec::new();
        for i in 0..self.targets.len() {
            if pick(&self.targets[i]) && self.owned(i) {
                batch.push(self.snapshot_of(i, now_ms, state.writer()));
            }
        }
        let n = batch.len();
        state.write(batch);
        n
    }

    /// Takes a target's state from its snapshot: history, forecasters,
    /// guard, replicas and generations, the policy's `state` table and the
    /// controls. The windows are not in it: a Kafka source re-reads them,
    /// elsewhere new signals fill them. A snapshot this process wrote, or
    /// of a target it decides now, is left alone (what it holds is newer).
    /// A restore is counted (`tidewatch_state_restores_total`) here, once.
    pub fn restore(&mut self, s: &TargetSnapshot) -> Restored {
        let Some(&idx) = self.by_name.get(&s.target) else {
            return Restored::NotConfigured;
        };
        let ours = self
            .state
            .as_ref()
            .is_some_and(|(h, _)| h.writer() == s.writer);
        // decided here now: on a partition live here, measured by a probe
        // here (its snapshots are written now too, and an older one must
        // not roll it back at the next assignment), or in a slot held
        let t = &self.targets[idx];
        let live = (self.ownership.is_some() && (t.partition.is_some() || t.probed)
            || self.slots.is_some())
            && self.owned(idx);
        if ours || live {
            return Restored::Newer;
        }
        self.apply_snapshot(idx, s)
    }

    /// Target `idx` takes its state from `s`, whoever wrote it (a target
    /// just added holds nothing newer, even when this process wrote `s`
    /// before the target was removed).
    pub(super) fn apply_snapshot(&mut self, idx: usize, s: &TargetSnapshot) -> Restored {
        let metrics = self.metrics.clone();
        let t = &mut self.targets[idx];
        {
            let mut data = t.data.lock().unwrap_or_else(|p| p.into_inner());
            for (m, h) in &s.histories {
                if !data.windows.history_mut(*m).import(h) {
                    tracing::warn!(
                        target_name = %s.target, metric = m.name(), step_ms = h.step_ms,
                        "the snapshot's history has another step than history_step, or parts no history holds; this metric's history starts cold"
                    );
                }
            }
            for (m, f) in &s.forecasters {
                data.builtin.import(*m, f);
            }
        }
        t.guard = Guard::import(&s.guard);
        t.current = s.current;
        t.last_generation = t.last_generation.max(s.last_generation);
        t.published_generation = t.published_generation.max(s.published_generation);
        t.control = s.control.clone();
        // An unanswered command goes on waiting for its answer here, and is
        // re-issued after `reissue_after` from when it was last sent.
        t.unanswered = s
            .unanswered
            .as_ref()
            .filter(|u| u.command.generation >= t.last_generation)
            .map(|u| (u.command.clone(), u.sent_ms));
        t.dirty = false;
        t.snapshot_at = Some(s.taken_at_ms);
        if let Err(e) = t.policy.import_state(&s.policy_state) {
            metrics.policy_failed(&t.cfg.name, &e);
        }
        t.shown.0 = t.current;
        metrics.target_observed(&t.cfg.name, t.current, t.shown.1);
        metrics.controls_in_force(&t.cfg.name, &super::control::actions(&t.control));
        metrics.state_restored(&t.cfg.name, "restored", None);
        Restored::Applied
    }

    /// The snapshot of `target` now, as `writer` (tools and tests that
    /// prepare state for a scaler).
    pub fn snapshot(
        &mut self,
        target: &str,
        now_ms: Millis,
        writer: &str,
    ) -> Option<TargetSnapshot> {
        let idx = *self.by_name.get(target)?;
        Some(self.snapshot_of(idx, now_ms, writer))
    }

    /// Every configured target's name.
    pub fn target_names(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.cfg.name.clone()).collect()
    }
}
