//! State prepared for a scaler: a target's snapshot after days of virtual
//! time (a daily cycle learnt by the built-in forecaster), made by the
//! engine itself.

use std::sync::Arc;

use tidewatch::config::Config;
use tidewatch::engine::Engine;
use tidewatch::forecast::builtin::RefitMode;
use tidewatch::telemetry::Metrics;

/// A policy for state tests: the window's highest depth of the last 5 s
/// sizes the target; the forecast (source and value) and a count kept in
/// `ctx.state` go into the reason, where a test reads them.
pub const STATEFUL: &str = r#"return { decide = function(ctx)
  ctx.state.calls = (ctx.state.calls or 0) + 1
  local f = ctx.forecast("queue_depth", 600)
  local d = ctx.window("queue_depth", "5s")
  if not d then return nil end
  local fc = f and string.format("%s %.3f", f.source, f.value) or "none"
  return { replicas = math.ceil(d.max / 100), reason = "fc " .. fc .. " calls " .. ctx.state.calls }
end }"#;

/// The number after `key` in a command's reason (`"calls "` -> `"42"`).
pub fn reason_part<'a>(reason: &'a str, key: &str) -> &'a str {
    let at = reason
        .find(key)
        .unwrap_or_else(|| panic!("{key} in {reason:?}"))
        + key.len();
    let rest = &reason[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The depth of the daily cycle at `t` (ms): 300 +- 200.
pub fn daily_depth(t: i64) -> f64 {
    300.0 + 200.0 * (2.0 * std::f64::consts::PI * t as f64 / 86_400_000.0).sin()
}

/// The encoded snapshot of `target` of `cfg` after three days of the
/// daily cycle, one report a minute, ending at `end_ms`; every evaluation
/// asks for the forecast, so the model is fitted.
pub fn seasonal_snapshot(cfg: &Config, target: &str, end_ms: i64) -> Vec<u8> {
    let mut e = Engine::new(&cfg.engine, &cfg.targets, Arc::new(Metrics::new()), end_ms).unwrap();
    e.set_refit_mode(RefitMode::Inline);
    let idx = cfg.targets.iter().position(|t| t.name == target).unwrap();
    let start = end_ms - 3 * 86_400_000;
    let mut now = start - start.rem_euclid(60_000);
    while now < end_ms {
        let m = format!(
            r#"{{"type":"queue_depth","target":"{target}","queue":"q","depth":{},"ts":{now}}}"#,
            daily_depth(now)
        );
        e.ingest("seed", m.as_bytes(), now);
        e.evaluate(idx, now);
        now += 60_000;
    }
    let mut s = e.snapshot(target, end_ms, "seed").unwrap();
    // a scaler that ran for three days had its commands answered: without
    // this, the new owner would re-issue the seed's last command at once
    s.unanswered = None;
    s.unanswered_generation = None;
    assert!(
        s.forecasters
            .iter()
            .any(|(_, f)| f.model.as_ref().is_some_and(|m| m.season > 0)),
        "the seed has a seasonal model"
    );
    s.encode()
}
