//! `tidewatch demo`: the engine on a simulated service, in virtual time.
//! A load generator follows a daily-like wave with a flash spike; the
//! service's replicas drain a queue at a fixed rate and start after a
//! delay; its queue depth and latency go through the real decode, window,
//! policy and guard path, and commands move the service (the closed loop).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Millis;
use crate::command::{ResultStatus, ScaleCommand, ScaleResult, VERSION};
use crate::config::{Config, EngineConfig, TargetConfig};
use crate::engine::Engine;
use crate::telemetry::Metrics;
use crate::window::Metric;

/// The bundled policies, so the demo runs from any directory.
pub const BUNDLED: [(&str, &str); 3] = [
    (
        "queue_depth.lua",
        include_str!("../policies/queue_depth.lua"),
    ),
    (
        "latency_slo.lua",
        include_str!("../policies/latency_slo.lua"),
    ),
    ("hpa.lua", include_str!("../policies/hpa.lua")),
];

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Virtual seconds per real second; 0 runs as fast as the CPU allows.
    pub speed: f64,
    /// Virtual time to run.
    pub duration: Duration,
    /// Virtual length of one "day" of the load wave.
    pub day: Duration,
    /// Virtual seconds between two status lines.
    pub print_every: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            speed: 60.0,
            duration: Duration::from_secs(1800),
            day: Duration::from_secs(1200),
            print_every: Duration::from_secs(30),
        }
    }
}

/// The simulated service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Messages one ready replica handles per second.
    pub capacity: f64,
    /// Seconds until a new replica is ready.
    pub startup: f64,
    /// Seconds one message takes to process; messages in flight count toward
    /// the queue depth as unacknowledged messages do in a real broker.
    pub service_time: f64,
    /// Messages waiting for a consumer.
    pub backlog: f64,
    served: f64,
    /// Start times (virtual ms) of replicas; ready once started + startup.
    replicas: Vec<Millis>,
    rng: u64,
}

impl Service {
    pub fn new(capacity: f64, startup: f64, initial: u32) -> Self {
        Self {
            capacity,
            startup,
            service_time: 1.0,
            backlog: 0.0,
            served: 0.0,
            replicas: vec![Millis::MIN / 2; initial as usize],
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }

    pub fn ready(&self, now: Millis) -> u32 {
        let startup_ms = (self.startup * 1000.0) as i64;
        self.replicas
            .iter()
            .filter(|&&t| t + startup_ms <= now)
            .count() as u32
    }

    pub fn desired(&self) -> u32 {
        self.replicas.len() as u32
    }

    /// Scale up starts new replicas; scale down stops the youngest first.
    pub fn scale(&mut self, n: u32, now: Millis) {
        let n = n as usize;
        if n > self.replicas.len() {
            self.replicas.resize(n, now);
        } else {
            self.replicas.truncate(n);
        }
    }

    /// Advances by `dt` seconds under `load` messages per second.
    pub fn step(&mut self, load: f64, dt: f64, now: Millis) {
        let capacity = f64::from(self.ready(now)) * self.capacity;
        let offered = load + self.backlog / dt;
        self.served = offered.min(capacity);
        self.backlog = (self.backlog + (load - capacity) * dt).max(0.0);
    }

    /// Waiting plus in flight (Little's law: throughput x service time).
    pub fn depth(&self) -> f64 {
        self.backlog + self.served * self.service_time
    }

    fn noise(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Latency samples: the service time plus the wait in the queue.
    pub fn latency_samples(&mut self, n: usize, now: Millis) -> Vec<f64> {
        let throughput = (f64::from(self.ready(now)) * self.capacity).max(1.0);
        let wait_ms = self.backlog / throughput * 1000.0;
        let base_ms = self.service_time * 1000.0;
        (0..n)
            .map(|_| {
                let jitter = 0.8 + 0.4 * self.noise();
                ((base_ms + wait_ms) * jitter).min(60_000.0)
            })
            .collect()
    }
}

/// Messages per second at virtual second `t`: a daily-like wave between
/// `base` and `base + swing`, and a flash spike at 60% of each day.
pub fn load_at(t: f64, day: f64, base: f64, swing: f64) -> f64 {
    let phase = (t % day) / day;
    let wave = base + swing * 0.5 * (1.0 - (2.0 * std::f64::consts::PI * phase).cos());
    let spike_start = 0.6 * day;
    let spike = if (t % day) >= spike_start && (t % day) < spike_start + day / 20.0 {
        2.0
    } else {
        1.0
    };
    wave * spike
}

#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    pub virtual_seconds: u64,
    pub commands: u64,
    pub scale_ups: u64,
    pub scale_downs: u64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub peak_load: f64,
    /// Mean replicas over the seconds with the top and bottom 20% of load.
    pub replicas_at_high_load: f64,
    pub replicas_at_low_load: f64,
    /// Share of seconds with ready capacity below the load.
    pub under_provisioned_share: f64,
    pub max_depth: f64,
    pub events_rejected: u64,
}

/// The demo configuration: one target on the bundled queue-depth policy.
fn demo_config(policy_dir: &Path) -> Config {
    Config {
        engine: EngineConfig {
            min_eval_interval: Duration::from_millis(500),
            ..EngineConfig::default()
        },
        targets: vec![TargetConfig {
            name: "checkout".into(),
            policy: policy_dir.join("queue_depth.lua"),
            provider: "simulated".into(),
            min_replicas: 1,
            max_replicas: 40,
            initial_replicas: Some(2),
            windows: [10, 60, 300].map(Duration::from_secs).to_vec(),
            cooldown_up: Duration::from_secs(5),
            cooldown_down: Duration::from_secs(30),
            stabilization_down: Duration::from_secs(90),
            max_step_up: 10,
            max_step_down: 3,
            tolerance: 0.0,
            paused: false,
            dry_run: false,
            fallback_replicas: None,
            // 40 in flight per replica is 80% of its 50 messages/s at 1 s each.
            params: serde_json::json!({"per_replica_depth": 40, "latency_slo_ms": 2000})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            history_span: Duration::from_secs(86_400),
            history_step: Duration::from_secs(60),
        }],
        ..Config::default()
    }
}

/// Runs the demo, writing the live view to `out`.
pub fn run(opts: &DemoOptions, out: &mut dyn Write) -> Result<DemoSummary, String> {
    let dir =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    for (name, text) in BUNDLED {
        std::fs::write(dir.path().join(name), text)
            .map_err(|e| format!("cannot write {name}: {e}"))?;
    }
    let cfg = demo_config(dir.path());
    let problems = cfg.check();
    if let Some(p) = problems.iter().find(|p| !p.warning) {
        return Err(format!("demo configuration: {p}"));
    }
    let t0: Millis = 1_764_000_000_000;
    let metrics = Arc::new(Metrics::new());
    let mut engine = Engine::new(&cfg, metrics.clone(), t0).map_err(|e| e.to_string())?;
    let mut service = Service::new(50.0, 20.0, 2);
    let day = opts.day.as_secs_f64();
    let (base, swing) = (100.0, 600.0);
    let step_ms: i64 = 250;
    let steps = opts.duration.as_millis() as i64 / step_ms;
    let mut summary = DemoSummary {
        min_replicas: u32::MAX,
        ..DemoSummary::default()
    };
    let mut per_second: Vec<(f64, u32)> = Vec::new();
    let mut under = 0u64;
    let mut last_reason = String::from("-");
    let started = std::time::Instant::now();
    writeln!(
        out,
        "tidewatch demo: target checkout, policy queue_depth.lua, {} virtual s at {}",
        opts.duration.as_secs(),
        if opts.speed > 0.0 {
            format!("{}x real time", opts.speed)
        } else {
            "full speed".into()
        }
    )
    .map_err(|e| e.to_string())?;
    writeln!(
        out,
        "{:>6} {:>7} {:>8} {:>8} {:>9}  last decision",
        "t(s)", "load/s", "depth", "p95 ms", "replicas"
    )
    .map_err(|e| e.to_string())?;
    for i in 1..=steps {
        let now = t0 + i * step_ms;
        let t = (i * step_ms) as f64 / 1000.0;
        let load = load_at(t, day, base, swing);
        service.step(load, step_ms as f64 / 1000.0, now);
        let mut commands: Vec<ScaleCommand> = Vec::new();
        if i * step_ms % 1000 == 0 {
            // One depth report and one latency batch per virtual second, as JSON.
            let depth = format!(
                r#"{{"type":"queue_depth","target":"checkout","queue":"orders","depth":{:.0},"ts":{now}}}"#,
                service.depth()
            );
            let samples = service.latency_samples(20, now);
            let latency = serde_json::json!({
                "type": "gateway_latency", "target": "checkout", "route": "/api/checkout",
                "samples_ms": samples, "ts": now,
            })
            .to_string();
            for msg in [depth.as_bytes(), latency.as_bytes()] {
                let r = engine.ingest("demo", msg, now);
                summary.events_rejected += r.rejected.len() as u64;
            }
            commands.extend(engine.on_events(now));
            commands.extend(engine.tick(now));
            let ready = service.ready(now);
            per_second.push((load, service.desired()));
            if f64::from(ready) * service.capacity < load {
                under += 1;
            }
            summary.peak_load = summary.peak_load.max(load);
            summary.max_depth = summary.max_depth.max(service.depth());
        }
        for c in commands {
            summary.commands += 1;
            if c.desired_replicas > c.current_replicas {
                summary.scale_ups += 1;
            } else {
                summary.scale_downs += 1;
            }
            service.scale(c.desired_replicas, now);
            last_reason = format!(
                "{} -> {}: {}",
                c.current_replicas, c.desired_replicas, c.reason
            );
            engine.observe(&ScaleResult {
                version: VERSION,
                command_id: c.id.clone(),
                target: c.target.clone(),
                generation: c.generation,
                status: ResultStatus::Applied,
                observed_replicas: Some(service.desired()),
                error: None,
                worker: "demo".into(),
                finished_at: c.issued_at.clone(),
            });
        }
        summary.min_replicas = summary.min_replicas.min(service.desired());
        summary.max_replicas = summary.max_replicas.max(service.desired());
        if (i * step_ms) % opts.print_every.as_millis().max(1) as i64 == 0 {
            let p95 = engine
                .window("checkout", Metric::LatencyMs, now, Duration::from_secs(10))
                .and_then(|w| w.quantiles)
                .map_or(0.0, |q| q[2]);
            let mut reason = last_reason.clone();
            reason.truncate(90);
            writeln!(
                out,
                "{:>6.0} {:>7.0} {:>8.0} {:>8.0} {:>4}/{:<4}  {}",
                t,
                load,
                service.depth(),
                p95,
                service.ready(now),
                service.desired(),
                reason
            )
            .map_err(|e| e.to_string())?;
        }
        if opts.speed > 0.0 {
            let due = Duration::from_secs_f64(t / opts.speed);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    summary.virtual_seconds = per_second.len() as u64;
    summary.under_provisioned_share = under as f64 / per_second.len().max(1) as f64;
    let mut by_load = per_second.clone();
    by_load.sort_by(|a, b| a.0.total_cmp(&b.0));
    let fifth = (by_load.len() / 5).max(1);
    let mean =
        |s: &[(f64, u32)]| s.iter().map(|x| f64::from(x.1)).sum::<f64>() / s.len().max(1) as f64;
    summary.replicas_at_low_load = mean(&by_load[..fifth.min(by_load.len())]);
    summary.replicas_at_high_load = mean(&by_load[by_load.len().saturating_sub(fifth)..]);
    writeln!(
        out,
        "\nsummary: {} virtual s, {} commands ({} up, {} down), replicas {}..{}, \
         mean replicas at the lowest 20% of load {:.1} and at the highest 20% {:.1}, \
         under-provisioned {:.1}% of the time, peak load {:.0}/s, max depth {:.0}, {} events rejected",
        summary.virtual_seconds,
        summary.commands,
        summary.scale_ups,
        summary.scale_downs,
        summary.min_replicas,
        summary.max_replicas,
        summary.replicas_at_low_load,
        summary.replicas_at_high_load,
        summary.under_provisioned_share * 100.0,
        summary.peak_load,
        summary.max_depth,
        summary.events_rejected
    )
    .map_err(|e| e.to_string())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_model() {
        let mut s = Service::new(10.0, 5.0, 1);
        s.step(30.0, 1.0, 0);
        assert_eq!(s.backlog, 20.0);
        assert_eq!(s.depth(), 30.0, "20 waiting, 10 in flight");
        s.scale(3, 0);
        assert_eq!((s.ready(4_999), s.ready(5_000)), (1, 3));
        s.step(5.0, 1.0, 5_000);
        assert_eq!(s.backlog, 0.0);
        assert_eq!(s.depth(), 25.0, "the backlog and new load served");
        s.step(5.0, 1.0, 6_000);
        assert_eq!(s.depth(), 5.0);
        s.scale(1, 6_000);
        assert_eq!(s.desired(), 1);
    }

    #[test]
    fn load_wave_and_spike() {
        let day = 1000.0;
        assert_eq!(load_at(0.0, day, 100.0, 600.0), 100.0);
        assert!((load_at(500.0, day, 100.0, 600.0) - 700.0).abs() < 1e-9);
        let before = load_at(599.0, day, 100.0, 600.0);
        let during = load_at(601.0, day, 100.0, 600.0);
        assert!(during > 1.9 * before);
    }

    /// The closed loop: replicas follow the load.
    #[test]
    fn replicas_follow_the_load() {
        let opts = DemoOptions {
            speed: 0.0,
            duration: Duration::from_secs(1200),
            ..DemoOptions::default()
        };
        let mut out = Vec::new();
        let s = run(&opts, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("summary:"), "{text}");
        assert_eq!(s.events_rejected, 0);
        assert!(s.scale_ups > 0 && s.scale_downs > 0, "{s:?}");
        assert!(
            s.replicas_at_high_load > 2.0 * s.replicas_at_low_load,
            "high {} low {}",
            s.replicas_at_high_load,
            s.replicas_at_low_load
        );
        // Peak load needs peak/capacity replicas; the loop must get there.
        assert!(f64::from(s.max_replicas) >= s.peak_load / 50.0, "{s:?}");
        assert!(s.under_provisioned_share < 0.5, "{s:?}");
    }
}
