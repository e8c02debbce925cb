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

/// The tables after `[source]` and `[commands]` of a scaler that
/// publishes its forecasts of one target, "web" (a point a minute over
/// `horizon`), to `sink` (`topic = "..."` or `exchange = "..."`), with
/// its state in `state_dir`.
pub fn forecasting_toml(state_dir: &std::path::Path, sink: &str, horizon: &str) -> String {
    format!(
        r#"
[engine]
tick = "200ms"
[state]
store = "dir"
dir = "{}"
[forecasts]
publish = true
period = "1s"
horizon = "{horizon}"
step = "1m"
{sink}
[[targets]]
name = "web"
policy = "p.lua"
max_replicas = 1000
windows = ["5s"]
history_step = "1h"
"#,
        state_dir.display()
    )
}

/// Puts web's snapshot after three days of the daily cycle into
/// `state_dir`, for the scaler of `cfg` to restore.
pub fn seed_web(cfg: &Config, state_dir: &std::path::Path) {
    let seed = seasonal_snapshot(cfg, "web", chrono::Utc::now().timestamp_millis());
    std::fs::create_dir_all(state_dir).unwrap();
    std::fs::write(state_dir.join("web.tws"), seed).unwrap();
}

/// Checks a forecast tidewatch published about web: valid against the
/// `forecast` schema, web's queue depth by `tidewatch`, `points` points a
/// minute apart, each the daily model's value (above zero, not a flat
/// line at zero).
pub fn check_published_forecast(body: &[u8], points: usize) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert!(super::schema::errors("forecast", &v).is_empty(), "{v}");
    assert_eq!(
        (
            v["target"].as_str(),
            v["metric"].as_str(),
            v["source"].as_str()
        ),
        (Some("web"), Some("queue_depth"), Some("tidewatch"))
    );
    let got = v["points"].as_array().unwrap();
    assert_eq!(got.len(), points, "{v}");
    let ts: Vec<i64> = got.iter().map(|p| p["ts"].as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[1] - w[0] == 60_000), "{ts:?}");
    assert!(
        got.iter().all(|p| p["value"].as_f64().unwrap() > 0.0),
        "{v}"
    );
}

/// A scaler on Kafka (`brokers`, the topics `[signals, commands, results,
/// forecasts]` made already, consumer group `group`) that restores web's
/// model and publishes its forecasts: the first one read from the
/// forecasts topic within `within` is keyed by the target and passes
/// [`check_published_forecast`].
pub async fn forecasts_reach_kafka(
    brokers: &str,
    [signals, commands, results, forecasts]: [&str; 4],
    group: &str,
    within: std::time::Duration,
) {
    use rdkafka::message::Message;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.lua"), STATEFUL).unwrap();
    let state = dir.path().join("state");
    std::fs::write(
        dir.path().join("c.toml"),
        format!(
            r#"
[source]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topics = ["{signals}"], group_id = "{group}" }}
[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "{commands}", results_topic = "{results}" }}
{}"#,
            forecasting_toml(&state, &format!("topic = \"{forecasts}\""), "5m")
        ),
    )
    .unwrap();
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    seed_web(&cfg, &state);
    let (stop, task) = super::start_run(cfg, Arc::new(Metrics::new()));
    let reader = super::kafka::reader(brokers, forecasts);
    let m = tokio::time::timeout(within, reader.recv())
        .await
        .expect("a forecast in time")
        .unwrap();
    assert_eq!(m.key(), Some(&b"web"[..]));
    check_published_forecast(m.payload().unwrap(), 5);
    stop.send(()).unwrap();
    assert!(task.await.unwrap().drained);
}

/// Each stored snapshot as its target and the start of its bytes (the
/// version a test wrote), for assertions that print short.
pub fn heads(stored: &[(String, Vec<u8>)]) -> Vec<String> {
    stored
        .iter()
        .map(|(n, b)| {
            let text = String::from_utf8_lossy(&b[..b.len().min(12)]).into_owned();
            format!(
                "{n}: {} ({} bytes)",
                text.trim_end_matches('x').trim(),
                b.len()
            )
        })
        .collect()
}
