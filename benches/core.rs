//! Criterion benchmarks of the hot paths: decode + window update, latency
//! samples into windows, and one `decide` of each bundled policy.
//! Run: cargo bench --bench core

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use tidewatch::config::{Config, TargetConfig};
use tidewatch::engine::{Engine, TargetData};
use tidewatch::event::GatewayLatency;
use tidewatch::forecast::holt::HoltWinters;
use tidewatch::policy::{CallInput, LuaPolicy, PolicyLimits, PolicySource};
use tidewatch::simulate::{Options, Trace};
use tidewatch::telemetry::Metrics;
use tidewatch::window::TargetWindows;

const T0: i64 = 1_764_000_000_000;

fn spans() -> Vec<Duration> {
    [10, 60, 300].map(Duration::from_secs).to_vec()
}

fn engine() -> Engine {
    let target: TargetConfig = toml_target();
    let cfg = Config {
        targets: vec![target],
        ..Config::default()
    };
    Engine::new(&cfg.engine, &cfg.targets, Arc::new(Metrics::new()), T0).expect("engine builds")
}

fn toml_target() -> TargetConfig {
    TargetConfig {
        initial_replicas: Some(2),
        windows: spans(),
        params: serde_json::json!({"per_replica_depth": 300, "latency_slo_ms": 250})
            .as_object()
            .cloned()
            .unwrap(),
        ..TargetConfig::new(
            "checkout",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/queue_depth.lua"),
            "log",
            1,
            40,
        )
    }
}

fn decode_and_apply(c: &mut Criterion) {
    let mut engine = engine();
    // Distinct messages over one minute of event time, as a source would see them.
    let msgs: Vec<Vec<u8>> = (0..60_000)
        .map(|i| {
            format!(
                r#"{{"type":"queue_depth","target":"checkout","queue":"orders","depth":{},"consumers":4,"ts":{}}}"#,
                1000 + i % 500,
                T0 + i
            )
            .into_bytes()
        })
        .collect();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("decode_apply_queue_depth", |b| {
        b.iter(|| {
            let m = &msgs[i % msgs.len()];
            i += 1;
            let out = engine.ingest("bench", m, T0 + 60_000);
            black_box(out.applied)
        })
    });
    g.finish();
}

fn latency_samples(c: &mut Criterion) {
    let samples: Vec<f64> = (0..1000).map(|i| 5.0 + (i * 37 % 400) as f64).collect();
    let mut w = TargetWindows::new(
        &spans(),
        Duration::from_secs(8 * 86_400),
        Duration::from_secs(60),
    );
    let mut g = c.benchmark_group("windows");
    g.throughput(Throughput::Elements(samples.len() as u64));
    let mut ts = T0;
    g.bench_function("latency_samples_3_windows", |b| {
        b.iter_batched(
            || {
                ts += 7;
                GatewayLatency {
                    target: "checkout".into(),
                    route: None,
                    samples_ms: samples.clone(),
                    errors: 0,
                    requests: None,
                    ts_ms: ts,
                }
            },
            |l| w.apply_latency(black_box(&l)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn filled_data() -> Arc<Mutex<TargetData>> {
    let mut windows = TargetWindows::new(
        &spans(),
        Duration::from_secs(86_400),
        Duration::from_secs(60),
    );
    for s in 0..300 {
        let ts = T0 + s * 1000;
        windows
            .apply_depth(&tidewatch::event::QueueDepth {
                target: "checkout".into(),
                queue: "orders".into(),
                depth: 800.0 + (s % 50) as f64,
                consumers: None,
                ts_ms: ts,
            })
            .unwrap();
        windows.apply_latency(&GatewayLatency {
            target: "checkout".into(),
            route: None,
            samples_ms: (0..50).map(|i| 20.0 + (i * 13 % 300) as f64).collect(),
            errors: 1,
            requests: None,
            ts_ms: ts,
        });
    }
    Arc::new(Mutex::new(TargetData::new(
        windows,
        T0 + 299_500,
        3_600_000,
    )))
}

/// The same call for every policy: 3 replicas, now at the end of the data.
fn decide_input() -> CallInput<'static> {
    CallInput {
        target: "checkout",
        now_ms: T0 + 299_500,
        replicas: 3,
        min: 1,
        max: 40,
        schedule: None,
    }
}

fn decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    let policies = [
        (
            "queue_depth.lua",
            serde_json::json!({"per_replica_depth": 300, "latency_slo_ms": 250}),
        ),
        // as the scale benchmark's targets have it: two means and a
        // forecast, no quantile
        (
            "queue_depth.lua (no SLO)",
            serde_json::json!({"per_replica_depth": 100}),
        ),
        (
            "latency_slo.lua",
            serde_json::json!({"latency_slo_ms": 250}),
        ),
        // period 0: decide every call (the bench calls at one instant)
        (
            "hpa.lua",
            serde_json::json!({"target_per_replica": 100, "period": 0}),
        ),
    ];
    for (file, params) in policies {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policies")
            .join(file.split(' ').next().unwrap_or(file));
        let src = PolicySource::read(&path).expect("bundled policy reads");
        let mut p =
            LuaPolicy::load(&src, &params, PolicyLimits::default()).expect("bundled policy loads");
        p.bind(filled_data()).expect("binds");
        let input = decide_input();
        assert!(
            p.decide(&input).expect("decides").replicas.is_some(),
            "{file} decides on full windows"
        );
        g.bench_function(file, |b| {
            b.iter(|| black_box(p.decide(&input).expect("decides")))
        });
    }
    // Where the time goes: the call itself, one window read, one format.
    for (name, body) in [
        ("baseline_constant", "return { decide = function(ctx) return 3 end }"),
        (
            "baseline_one_window",
            "return { decide = function(ctx) local w = ctx.window('queue_depth', '60s') return 3 end }",
        ),
        (
            "baseline_format",
            "return { decide = function(ctx) return { replicas = 3, reason = string.format('%.1f %.1f', 1.5, 2.5) } end }",
        ),
    ] {
        let src = PolicySource::from_text(Path::new(name), body.to_owned());
        let mut p = LuaPolicy::load(&src, &serde_json::Value::Null, PolicyLimits::default()).expect("loads");
        p.bind(filled_data()).expect("binds");
        let input = decide_input();
        g.bench_function(name, |b| b.iter(|| black_box(p.decide(&input).expect("decides"))));
    }
    g.finish();
}

/// A daily cycle with noise, one point a minute.
fn minutes(days: usize) -> Vec<f64> {
    (0..days * 1440)
        .map(|i| {
            let day = (i % 1440) as f64 / 1440.0;
            100.0 + 60.0 * (2.0 * std::f64::consts::PI * day).sin() + ((i * 7919) % 23) as f64
        })
        .collect()
}

fn forecaster(c: &mut Criterion) {
    let mut g = c.benchmark_group("forecast");
    let series = minutes(7);
    let mut model = HoltWinters::fit(&series, 1440).expect("fits");
    let mut i = 0usize;
    g.bench_function("holt_winters_update_daily_season", |b| {
        b.iter(|| {
            i += 1;
            model.update(black_box(series[i % series.len()]));
        })
    });
    g.bench_function("holt_winters_forecast_135s", |b| {
        b.iter(|| black_box(model.forecast(black_box(3))))
    });
    g.sample_size(10);
    g.bench_function("holt_winters_refit_7_days_daily_season", |b| {
        b.iter(|| black_box(HoltWinters::fit(&series, 1440)))
    });
    g.finish();
}

/// `tidewatch simulate`'s loop: 15.5 days of crane-input15 at its 15 s
/// step (89,632 steps), one policy.
fn simulate(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let trace_path = root.join("../shared/traces/crane-input15.csv");
    let Ok(trace) = Trace::load(&trace_path) else {
        eprintln!(
            "{} not found: simulate benchmark skipped",
            trace_path.display()
        );
        return;
    };
    let mut g = c.benchmark_group("simulate");
    g.sample_size(10);
    for policy in ["hpa.lua", "predictive.lua"] {
        let mut o = Options::new(
            trace_path.clone(),
            vec![root.join("policies").join(policy)],
            1000.0,
        );
        o.warmup = Duration::from_secs(14 * 86_400);
        g.bench_function(format!("crane15_15s_{policy}"), |b| {
            b.iter(|| black_box(tidewatch::simulate::run(&o, &trace, |_, _| {}).expect("runs")))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = decode_and_apply, latency_samples, decide, forecaster, simulate
}
criterion_main!(benches);
