//! The read-only status document of the targets (`GET /v1/targets` and
//! `/v1/targets/{name}` on the metrics listener): replicas, the last
//! decision and its reason, guard and control state, staleness and the
//! forecast source per metric.

use serde_json::{json, Value};

use crate::clock::{rfc3339, Millis};
use crate::event::Metric;

use super::Engine;

impl Engine {
    /// Every target's status (`target` None), or one target's (None when
    /// it is not configured), at `now_ms`.
    pub fn status_json(&self, target: Option<&str>, now_ms: Millis) -> Option<Value> {
        match target {
            Some(name) => {
                let &idx = self.by_name.get(name)?;
                Some(self.target_json(idx, now_ms))
            }
            None => Some(json!({
                "targets": (0..self.targets.len())
                    .map(|i| self.target_json(i, now_ms))
                    .collect::<Vec<_>>()
            })),
        }
    }

    fn target_json(&self, idx: usize, now_ms: Millis) -> Value {
        let t = &self.targets[idx];
        let time = |ms: Option<Millis>| ms.map(rfc3339);
        let record = |r: &Option<crate::state::ControlRecord>| {
            r.as_ref().map(|r| {
                json!({
                    "action": r.action,
                    "replicas": r.replicas,
                    "by": r.by,
                    "reason": r.reason,
                    "since": rfc3339(r.at_ms),
                    "until": time(r.until_ms),
                    "description": super::control::describe(r),
                })
            })
        };
        let guard = t.guard.export();
        let (ages, forecasts) = {
            let d = t.data.lock().unwrap_or_else(|p| p.into_inner());
            let mut ages = serde_json::Map::new();
            let mut forecasts = serde_json::Map::new();
            for m in Metric::ALL {
                if let Some(seen) = d.windows.metric(m).last_seen() {
                    ages.insert(
                        m.name().into(),
                        json!((now_ms - seen).max(0) as f64 / 1000.0),
                    );
                }
                if let Some(source) = d.forecast_source(m, now_ms) {
                    forecasts.insert(m.name().into(), json!(source));
                }
            }
            (ages, forecasts)
        };
        json!({
            "name": t.cfg.name,
            "replicas": t.current,
            "min_replicas": t.cfg.min_replicas,
            "max_replicas": t.cfg.max_replicas,
            "policy": t.policy.version(),
            "owned": self.owned(idx),
            "last_decision": t.last_decision().as_ref().map(|d| json!({
                "current": d.current,
                "desired": d.desired,
                "direction": d.direction.code(),
                "held": d.held.map(|h| h.code()),
                "dry_run": d.dry_run,
                "reason": d.reason,
            })),
            "generation": t.last_generation,
            "published_generation": t.published_generation,
            "unanswered_generation": t.unanswered.as_ref().map(|(c, _)| c.generation),
            "guard": {
                "last_scale_up": time(guard.last_up_ms),
                "last_change": time(guard.last_change_ms),
                "behavior": t.guard_cfg.behavior.is_some(),
                "paused_in_config": t.cfg.paused,
                "dry_run_in_config": t.cfg.dry_run,
            },
            "control": {
                "mode": record(&t.control.mode),
                "dry_run": record(&t.control.dry_run),
            },
            "stale": t.stale,
            "signal_age_seconds": ages,
            "forecast_source": forecasts,
        })
    }
}
