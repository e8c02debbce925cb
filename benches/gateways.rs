//! Gateways' access logs: decode and apply (the engine's `ingest_from`
//! with the configured inputs, windows updated) of a 1.5 KB Kong message
//! and of a 1,000-entry APISIX array, against `serde_json::from_slice::<
//! serde_json::Value>` of the same bytes alone.
//! Run: cargo bench --bench gateways

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use tidewatch::config::Config;
use tidewatch::engine::Engine;
use tidewatch::event::Origin;
use tidewatch::telemetry::Metrics;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gateways");
/// 2024-05-14, the samples' day, plus a minute.
const NOW: i64 = 1_715_679_072_345;

fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.lua"),
        "return { decide = function(ctx) return nil end }",
    )
    .unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        r#"
[source]
kind = "kafka"
kafka = { brokers = "127.0.0.1:9" }
[commands]
kind = "kafka"
kafka = { brokers = "127.0.0.1:9" }
[engine]
evaluate_on_event = false
[[source.inputs]]
topic = "kong"
format = "kong"
[[source.inputs]]
topic = "apisix"
format = "apisix"
map = { target = { lookup = { "1" = "search", "2" = "checkout" } } }
[[targets]]
name = "checkout"
policy = "p.lua"
max_replicas = 10
windows = ["10s", "60s", "300s"]
[[targets]]
name = "search"
policy = "p.lua"
max_replicas = 10
windows = ["10s", "60s", "300s"]
"#,
    )
    .unwrap();
    let (cfg, _) = Config::load(&path).unwrap();
    let mut e = Engine::new(&cfg.engine, &cfg.targets, Arc::new(Metrics::new()), NOW).unwrap();
    e.set_inputs(Arc::new(tidewatch::source::inputs::compile(
        &cfg.source.inputs,
        &cfg.engine.limits(),
    )));
    (dir, e)
}

/// 1,000 APISIX entries: the fixture's three, over and over, with their
/// latencies and times varied.
fn apisix_batch() -> Vec<u8> {
    let text = std::fs::read_to_string(format!("{FIXTURES}/apisix.json")).unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut out = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut e = entries[i % 3].clone();
        e["latency"] = serde_json::json!(5.0 + (i % 97) as f64 * 1.37);
        e["start_time"] = serde_json::json!(NOW - 30_000 + i as i64 * 10);
        out.push(e);
    }
    serde_json::to_vec(&out).unwrap()
}

fn kong_message() -> Vec<u8> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/kong.json")).unwrap()).unwrap();
    let mut v = v;
    v["started_at"] = serde_json::json!(NOW - 1000);
    serde_json::to_vec(&v).unwrap()
}

fn bench(c: &mut Criterion) {
    let (_dir, mut e) = engine();
    for (name, topic, bytes, entries) in [
        ("kong 1.5 KB", "kong", kong_message(), 1u64),
        ("apisix 1000 entries", "apisix", apisix_batch(), 1000),
    ] {
        let origin = Origin {
            topic: topic.into(),
            ..Origin::default()
        };
        assert_eq!(
            e.ingest_from("kafka", &bytes, NOW, &origin).applied,
            entries as usize,
            "every entry reaches its target"
        );
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(entries));
        g.bench_function("serde_json::Value parse alone", |b| {
            b.iter(|| {
                black_box(serde_json::from_slice::<serde_json::Value>(black_box(
                    &bytes,
                )))
            })
        });
        g.bench_function("tidewatch decode and apply", |b| {
            b.iter(|| black_box(e.ingest_from("kafka", black_box(&bytes), NOW, &origin)))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
