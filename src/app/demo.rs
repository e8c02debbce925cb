//! `tidewatch demo`: the whole loop in one process, with nothing
//! installed. An embedded Kafka (librdkafka's mock cluster) carries the
//! signals, commands and results; a load generator publishes queue depth
//! and gateway latency of a simulated service following a daily-like wave
//! with a flash spike; the real scaler (`run`) decides with the bundled
//! queue-depth policy; the real worker (`worker`) executes the commands
//! through a provider that moves the simulated service, whose replicas
//! drain the queue at a fixed rate after a start-up delay, so depth and
//! latency respond to scaling. Every component reads one clock that runs
//! `speed` times faster than real time.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::app::wave::load_at;
use crate::clock::{Clock, Millis, ScaledClock};
use crate::command::ScaleCommand;
use crate::config::{
    BrokerKind, CommandsConfig, Config, EngineConfig, KafkaCommandsConfig, KafkaSourceConfig,
    SourceConfig, TargetConfig,
};
use crate::provider::{Provider, ProviderFuture};
use crate::telemetry::Metrics;
use crate::worker::config::{WorkerConfig, WorkerSection, WorkerTargetConfig};

/// The bundled policies, so the demo runs from any directory.
pub const BUNDLED: [(&str, &str); 3] = [
    (
        "queue_depth.lua",
        include_str!("../../policies/queue_depth.lua"),
    ),
    (
        "latency_slo.lua",
        include_str!("../../policies/latency_slo.lua"),
    ),
    ("hpa.lua", include_str!("../../policies/hpa.lua")),
];

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Virtual seconds per real second; 0 runs as fast as the CPU allows.
    pub speed: f64,
    /// Virtual time to run.
    pub duration: Duration,
    /// The most virtual seconds per real second the demo allows: the
    /// brokers and processes run in real time underneath.
    pub max_speed: f64,
    /// Virtual length of one "day" of the load wave.
    pub day: Duration,
    /// Virtual seconds between two status lines.
    pub print_every: Duration,
    /// Where to plot load, needed and ready replicas (.png or .svg).
    pub plot: Option<std::path::PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            speed: 60.0,
            duration: Duration::from_secs(1800),
            max_speed: 200.0,
            day: Duration::from_secs(1200),
            print_every: Duration::from_secs(30),
            plot: None,
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

/// The demo configuration: one target on the bundled queue-depth policy,
/// signals and commands on the embedded Kafka at `brokers`.
fn demo_config(policy_dir: &Path, brokers: &str, tick: Duration) -> Config {
    Config {
        source: SourceConfig {
            kind: BrokerKind::Kafka,
            kafka: Some(KafkaSourceConfig {
                instance_id: None,
                brokers: brokers.into(),
                topics: vec!["tidewatch.signals".into()],
                group_id: "tidewatch-scaler".into(),
                deadletter_topic: "tidewatch.deadletter".into(),
                max_replay_messages: 100_000,
                options: fast_fetch(),
                sasl_password: Default::default(),
            }),
            amqp: None,
            inputs: Vec::new(),
        },
        commands: CommandsConfig {
            kind: BrokerKind::Kafka,
            kafka: Some(demo_commands(brokers)),
            amqp: None,
        },
        engine: EngineConfig {
            tick,
            min_eval_interval: Duration::from_millis(500),
            ..EngineConfig::default()
        },
        targets: vec![TargetConfig {
            initial_replicas: Some(2),
            cooldown_up: Duration::from_secs(5),
            cooldown_down: Duration::from_secs(30),
            stabilization_down: Duration::from_secs(90),
            max_step_up: 10,
            max_step_down: 3,
            // 40 in flight per replica is 80% of its 50 messages/s at 1 s each.
            params: serde_json::json!({"per_replica_depth": 40, "latency_slo_ms": 2000})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            history_span: Duration::from_secs(86_400),
            ..TargetConfig::new(
                "checkout",
                policy_dir.join("queue_depth.lua"),
                "simulated",
                1,
                40,
            )
        }],
        // a fresh embedded cluster every run: nothing to keep
        state: crate::state::StateConfig {
            store: crate::state::StoreKind::None,
            ..Default::default()
        },
        ..Config::default()
    }
}

/// librdkafka waits up to 500 ms for a fetch by default: minutes of
/// virtual time at the demo's speed.
fn fast_fetch() -> std::collections::BTreeMap<String, String> {
    [("fetch.wait.max.ms".to_string(), "5".to_string())].into()
}

fn demo_commands(brokers: &str) -> KafkaCommandsConfig {
    KafkaCommandsConfig {
        brokers: brokers.into(),
        topic: "tidewatch.commands".into(),
        results_topic: "tidewatch.results".into(),
        group_id: Some("tidewatch-workers".into()),
        deadletter_topic: "tidewatch.deadletter".into(),
        options: fast_fetch(),
        sasl_password: Default::default(),
    }
}

/// What the simulated platform shares with the generator.
struct Sim {
    service: Service,
    last_reason: String,
    commands: u64,
    ups: u64,
    downs: u64,
}

/// The worker's provider in the demo: sets the simulated service's replicas.
struct SimulatedProvider {
    sim: Arc<Mutex<Sim>>,
    clock: Arc<dyn Clock>,
}

impl Provider for SimulatedProvider {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn scale<'a>(&'a self, c: &'a ScaleCommand) -> ProviderFuture<'a> {
        Box::pin(async move {
            let mut sim = self.sim.lock().unwrap_or_else(|p| p.into_inner());
            let before = sim.service.desired();
            sim.service.scale(c.desired_replicas, self.clock.now_ms());
            sim.commands += 1;
            if c.desired_replicas > before {
                sim.ups += 1;
            } else if c.desired_replicas < before {
                sim.downs += 1;
            }
            sim.last_reason = format!("{before} -> {}: {}", c.desired_replicas, c.reason);
            Ok(Some(sim.service.desired()))
        })
    }
}

/// Why the demo cannot run; names the option, file or step.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "--speed {speed}: give a number above 0 and at most {max} (virtual seconds per real \
         second; the embedded Kafka, the scaler and the worker run in real time underneath)"
    )]
    Speed { speed: f64, max: f64 },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot create a temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error("cannot write {name}: {source}")]
    Bundled {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("embedded Kafka{what}: {source}")]
    Kafka {
        what: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("demo configuration: {0}")]
    Config(crate::settings::Problem),
    #[error(transparent)]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Plot(#[from] crate::simulate::SimulateError),
}

fn kafka(what: String) -> impl FnOnce(rdkafka::error::KafkaError) -> DemoError {
    move |source| DemoError::Kafka { what, source }
}

/// Runs the demo, writing the live view to `out`.
pub fn run(opts: &DemoOptions, out: &mut dyn Write) -> Result<DemoSummary, DemoError> {
    if !(opts.speed > 0.0 && opts.speed <= opts.max_speed) {
        return Err(DemoError::Speed {
            speed: opts.speed,
            max: opts.max_speed,
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)?;
    rt.block_on(run_loop(opts, out))
}

fn io(e: std::io::Error) -> DemoError {
    DemoError::Output(e)
}

async fn run_loop(opts: &DemoOptions, out: &mut dyn Write) -> Result<DemoSummary, DemoError> {
    let dir = tempfile::tempdir().map_err(DemoError::TempDir)?;
    for (name, text) in BUNDLED {
        std::fs::write(dir.path().join(name), text)
            .map_err(|source| DemoError::Bundled { name, source })?;
    }
    let mock = MockCluster::new(1).map_err(kafka(String::new()))?;
    for t in [
        "tidewatch.signals",
        "tidewatch.commands",
        "tidewatch.results",
        "tidewatch.deadletter",
    ] {
        mock.create_topic(t, 1, 1)
            .map_err(kafka(format!(": topic {t}")))?;
    }
    let brokers = mock.bootstrap_servers();
    let tick = Duration::from_secs_f64((1.0 / opts.speed).max(0.01));
    let cfg = demo_config(dir.path(), &brokers, tick);
    if let Some(p) = cfg.check().into_iter().find(|p| !p.warning) {
        return Err(DemoError::Config(p));
    }
    let t0: Millis = 1_764_000_000_000;
    let scaled = Arc::new(ScaledClock::new(t0, opts.speed));
    let clock: Arc<dyn Clock> = scaled.clone();
    let sim = Arc::new(Mutex::new(Sim {
        service: Service::new(50.0, 20.0, 2),
        last_reason: "-".into(),
        commands: 0,
        ups: 0,
        downs: 0,
    }));
    let scaler_metrics = Arc::new(Metrics::new());
    // Free ports, said out loud: where to look while the demo runs.
    let scaler_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io)?;
    let worker_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io)?;
    let (scaler_at, worker_at) = (
        scaler_listener.local_addr().map_err(io)?,
        worker_listener.local_addr().map_err(io)?,
    );
    writeln!(
        out,
        "scaler: http://{scaler_at}/metrics, status http://{scaler_at}/v1/targets \
         (or: tidewatch ctl status --url http://{scaler_at}); worker: http://{worker_at}/metrics"
    )
    .map_err(io)?;
    let (stop_scaler, scaler_stopped) = tokio::sync::oneshot::channel::<()>();
    let scaler = tokio::spawn(crate::scaler::run(
        cfg,
        crate::scaler::RunOptions {
            clock: clock.clone(),
            metrics: scaler_metrics.clone(),
            listener: Some(scaler_listener),
            config_path: None,
        },
        async {
            let _ = scaler_stopped.await;
        },
    ));
    let worker_cfg = WorkerConfig {
        commands: CommandsConfig {
            kind: BrokerKind::Kafka,
            kafka: Some(demo_commands(&brokers)),
            amqp: None,
        },
        worker: WorkerSection {
            name: Some("demo-worker".into()),
            state_file: dir.path().join("worker.state.json"),
            ..WorkerSection::default()
        },
        targets: vec![WorkerTargetConfig {
            name: "checkout".into(),
            provider: "simulated".into(),
            timeout: None,
            settings: Default::default(),
        }],
        ..WorkerConfig::default()
    };
    let provider: Arc<dyn Provider> = Arc::new(SimulatedProvider {
        sim: sim.clone(),
        clock: clock.clone(),
    });
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(crate::worker::run(
        worker_cfg,
        crate::worker::WorkerOptions {
            clock: clock.clone(),
            metrics: Arc::new(Metrics::new()),
            listener: Some(worker_listener),
            providers: [("checkout".to_string(), provider)].into(),
        },
        async {
            let _ = worker_stopped.await;
        },
    ));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .create()
        .map_err(kafka(String::new()))?;
    // Start the load once the scaler owns the signals partition.
    for _ in 0..300 {
        if scaler_metrics.assigned_partitions() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writeln!(
        out,
        "tidewatch demo: embedded Kafka at {brokers}; scaler (policy queue_depth.lua) and worker \
         (a simulated service: 50 msg/s per replica, 20 s start-up) on target checkout; \
         {} virtual s at {}x real time",
        opts.duration.as_secs(),
        opts.speed
    )
    .map_err(io)?;
    writeln!(
        out,
        "{:>6} {:>7} {:>8} {:>8} {:>9}  last decision",
        "t(s)", "load/s", "depth", "p95 ms", "replicas"
    )
    .map_err(io)?;
    let start = clock.now_ms();
    let day = opts.day.as_secs_f64();
    let (base, swing) = (100.0, 600.0);
    let step_ms: i64 = 250;
    let steps = opts.duration.as_millis() as i64 / step_ms;
    let mut summary = DemoSummary {
        min_replicas: u32::MAX,
        ..DemoSummary::default()
    };
    let mut per_second: Vec<(f64, u32)> = Vec::new();
    let mut series = crate::simulate::Series {
        ready: vec![Vec::new()],
        ..Default::default()
    };
    let mut under = 0u64;
    let mut last_p95 = 0.0;
    let mut sends = Vec::new();
    for i in 1..=steps {
        let now = start + i * step_ms;
        tokio::time::sleep(scaled.real_until(now)).await;
        let t = (i * step_ms) as f64 / 1000.0;
        let load = load_at(t, day, base, swing);
        let (messages, desired, ready, depth, reason, capacity) = {
            let mut sim = sim.lock().unwrap_or_else(|p| p.into_inner());
            sim.service.step(load, step_ms as f64 / 1000.0, now);
            let mut messages = Vec::new();
            if i * step_ms % 1000 == 0 {
                messages.push(format!(
                    r#"{{"type":"queue_depth","target":"checkout","queue":"orders","depth":{:.0},"ts":{now}}}"#,
                    sim.service.depth()
                ));
                let mut samples = sim.service.latency_samples(20, now);
                messages.push(
                    serde_json::json!({
                        "type": "gateway_latency", "target": "checkout", "route": "/api/checkout",
                        "samples_ms": samples, "ts": now,
                    })
                    .to_string(),
                );
                samples.sort_by(f64::total_cmp);
                last_p95 = samples[(samples.len() * 95 / 100).min(samples.len() - 1)];
            }
            let s = &sim.service;
            (
                messages,
                s.desired(),
                s.ready(now),
                s.depth(),
                sim.last_reason.clone(),
                s.capacity,
            )
        };
        for m in messages {
            let producer = producer.clone();
            sends.push(tokio::spawn(async move {
                let record = FutureRecord::<str, str>::to("tidewatch.signals")
                    .key("checkout")
                    .payload(&m);
                producer.send(record, Duration::from_secs(5)).await.is_ok()
            }));
        }
        if i * step_ms % 1000 == 0 {
            per_second.push((load, desired));
            series.ts.push(now);
            series.load.push(load);
            series.need.push(crate::simulate::need(load, capacity));
            series.ready[0].push(ready);
            if f64::from(ready) * capacity < load {
                under += 1;
            }
            summary.peak_load = summary.peak_load.max(load);
            summary.max_depth = summary.max_depth.max(depth);
        }
        summary.min_replicas = summary.min_replicas.min(desired);
        summary.max_replicas = summary.max_replicas.max(desired);
        if (i * step_ms) % opts.print_every.as_millis().max(1) as i64 == 0 {
            let mut reason = reason;
            reason.truncate(90);
            writeln!(
                out,
                "{:>6.0} {:>7.0} {:>8.0} {:>8.0} {:>4}/{:<4}  {}",
                t, load, depth, last_p95, ready, desired, reason
            )
            .map_err(io)?;
            out.flush().map_err(io)?;
        }
    }
    let mut lost = 0;
    for s in sends {
        if !s.await.unwrap_or(false) {
            lost += 1;
        }
    }
    let _ = stop_scaler.send(());
    let _ = stop_worker.send(());
    let _ = scaler.await;
    let _ = worker.await;
    // Every client goes before the embedded broker does.
    drop(producer);
    drop(mock);
    {
        let sim = sim.lock().unwrap_or_else(|p| p.into_inner());
        summary.commands = sim.commands;
        summary.scale_ups = sim.ups;
        summary.scale_downs = sim.downs;
    }
    summary.events_rejected =
        crate::telemetry::sum(&scaler_metrics, "tidewatch_events_rejected_total", &[]) as u64
            + lost;
    summary.virtual_seconds = per_second.len() as u64;
    summary.under_provisioned_share = under as f64 / per_second.len().max(1) as f64;
    if let Some(p) = &opts.plot {
        let capacity = sim
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .service
            .capacity;
        let names = ["queue_depth.lua".to_string()];
        if let Some(note) = crate::simulate::plot::write(p, &series, &names, capacity)? {
            writeln!(out, "{note}").map_err(io)?;
        }
    }
    let mut by_load = per_second.clone();
    by_load.sort_by(|a, b| a.0.total_cmp(&b.0));
    let fifth = (by_load.len() / 5).max(1);
    let mean =
        |s: &[(f64, u32)]| s.iter().map(|x| f64::from(x.1)).sum::<f64>() / s.len().max(1) as f64;
    summary.replicas_at_low_load = mean(&by_load[..fifth.min(by_load.len())]);
    summary.replicas_at_high_load = mean(&by_load[by_load.len().saturating_sub(fifth)..]);
    writeln!(
        out,
        "\nsummary: {} virtual s, {} commands applied by the worker ({} up, {} down), replicas {}..{}, \
         mean replicas at the lowest 20% of load {:.1} and at the highest 20% {:.1}, \
         under-provisioned {:.1}% of the time, peak load {:.0}/s, max depth {:.0}, {} events rejected or lost",
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
    .map_err(io)?;
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

    /// The closed loop through the embedded Kafka, the scaler and the
    /// worker: replicas follow the load.
    #[test]
    fn replicas_follow_the_load() {
        // 100 virtual seconds a real one: the loop keeps up while the other
        // tests share the two cores (at 150 it lagged behind in 1 of 3 full
        // runs of the library tests)
        let opts = DemoOptions {
            speed: 100.0,
            duration: Duration::from_secs(1200),
            ..DemoOptions::default()
        };
        let mut out = Vec::new();
        let s = run(&opts, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("summary:"), "{text}");
        // it says where its endpoints are
        let status = text
            .lines()
            .find_map(|l| l.split("status http://").nth(1))
            .and_then(|rest| rest.split('/').next())
            .expect("the status address is printed");
        assert!(status.parse::<std::net::SocketAddr>().is_ok(), "{status}");
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
