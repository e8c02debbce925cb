//! `tidewatch loadgen`: the demo's load generator against a real broker.
//! It reads a scaler configuration and publishes, for each of its targets
//! (or the ones named), a `queue_depth` signal every `every`, following the
//! demo's daily-like wave with a flash spike (`app::wave::load_at`) compressed
//! into `day`. It publishes where the scaler reads: the first topic of
//! `[source.kafka]` (key = target), or the exchange of `[source.amqp]`
//! (routing key `queue_depth.<target>`, publisher confirms). The compose
//! stacks run it so that a new stack scales at once.
//!
//! Open loop: the depth follows the wave whatever the replicas are (the
//! demo, in one process, closes the loop with a simulated service).

use std::time::Duration;

use crate::clock::{Clock, Millis};
use crate::config::Config;
use crate::lifecycle::StartError;
use crate::source::sink::Sink;

#[derive(Debug, Clone)]
pub struct LoadgenOptions {
    /// Targets to publish for; empty: every target of the configuration.
    pub targets: Vec<String>,
    /// Time between two signals of a target.
    pub every: Duration,
    /// Length of one "day" of the wave.
    pub day: Duration,
    /// Depth at the wave's trough, and its rise at the crest.
    pub base: f64,
    pub swing: f64,
    /// Stop after this many rounds (one signal per target); None: until stopped.
    pub rounds: Option<u64>,
}

impl Default for LoadgenOptions {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            every: Duration::from_secs(1),
            day: Duration::from_secs(600),
            base: 40.0,
            swing: 400.0,
            rounds: None,
        }
    }
}

/// The wave's depth `elapsed` seconds into the run.
pub fn depth_at(elapsed: f64, o: &LoadgenOptions) -> f64 {
    crate::app::wave::load_at(elapsed, o.day.as_secs_f64(), o.base, o.swing).round()
}

/// The queue-depth signal of `target` at `now_ms`.
pub fn signal(target: &str, depth: f64, now_ms: Millis) -> Vec<u8> {
    serde_json::json!({
        "type": "queue_depth",
        "target": target,
        "queue": format!("{target}-loadgen"),
        "depth": depth,
        "ts": now_ms,
    })
    .to_string()
    .into_bytes()
}

/// Publishes until `shutdown` completes or the rounds are done. Returns
/// the number of signals published.
pub async fn run(
    cfg: &Config,
    o: &LoadgenOptions,
    clock: &dyn Clock,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<u64, StartError> {
    if o.every.is_zero() || o.day.is_zero() {
        return Err(StartError::usage("--every and --day must be above zero"));
    }
    if !(o.base.is_finite() && o.swing.is_finite() && o.base >= 0.0 && o.swing >= 0.0) {
        return Err(StartError::Usage(format!(
            "--base {} / --swing {}: give numbers of at least 0",
            o.base, o.swing
        )));
    }
    let known: Vec<&str> = cfg.targets.iter().map(|t| t.name.as_str()).collect();
    for t in &o.targets {
        if !known.contains(&t.as_str()) {
            return Err(StartError::Usage(format!(
                "--target {t:?}: not a target of this configuration (it has {known:?})"
            )));
        }
    }
    let targets: Vec<&str> = if o.targets.is_empty() {
        known
    } else {
        o.targets.iter().map(String::as_str).collect()
    };
    if targets.is_empty() {
        return Err(StartError::usage(
            "the configuration has no [[targets]] to publish for",
        ));
    }
    let sink = Sink::open(&cfg.source, "loadgen", None).await?;
    let start = clock.now_ms();
    let mut sent = 0;
    let mut tick = tokio::time::interval(o.every);
    tokio::pin!(shutdown);
    for round in 0.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => return Ok(sent),
        }
        if o.rounds.is_some_and(|r| round >= r) {
            return Ok(sent);
        }
        let now = clock.now_ms();
        let depth = depth_at((now - start) as f64 / 1000.0, o);
        for t in &targets {
            let payload = signal(t, depth, now);
            tokio::select! {
                r = sink.send("queue_depth", t, &payload) => { r?; }
                // a broker that does not take the signal must not keep
                // SIGTERM waiting
                _ = &mut shutdown => return Ok(sent),
            }
            sent += 1;
        }
        if round % 10 == 0 {
            tracing::info!(depth, targets = targets.len(), "loadgen: published");
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_valid_queue_depth_events_that_follow_the_wave() {
        let o = LoadgenOptions::default();
        let trough = signal("checkout", depth_at(0.0, &o), 1_000);
        let crest = signal("checkout", depth_at(300.0, &o), 2_000);
        let decode = |b: &[u8]| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            assert_eq!(v["type"], "queue_depth");
            assert_eq!(v["target"], "checkout");
            v["depth"].as_f64().unwrap()
        };
        assert_eq!(decode(&trough), 40.0);
        assert_eq!(decode(&crest), 440.0);
        // The engine's own decoder accepts them.
        let events = crate::event::decode(&crest, 2_000, &crate::event::Limits::default());
        assert!(events.iter().all(|e| e.is_ok()), "{:?}", events);
    }
}
