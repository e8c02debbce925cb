//! Gateways' access logs as they publish them (tests/fixtures/gateways,
//! sources in its README): each built-in format decodes its samples, and
//! every signal is checked field by field. Decoded by the same code as a
//! broker source: the configured inputs, found by topic or routing key.

mod common;

use tidewatch::config::Config;
use tidewatch::event::{Decoded, GatewayLatency, Origin, Signal};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gateways");

/// A scaler configuration with one Kafka input per format (topic = the
/// format's name) and `extra` appended to it.
fn config(extra: &str) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.lua"),
        "return { decide = function(ctx) return nil end }",
    )
    .unwrap();
    let mut toml = String::from(
        r#"
[source]
kind = "kafka"
kafka = { brokers = "127.0.0.1:9", topics = ["tidewatch.signals"] }
[commands]
kind = "kafka"
kafka = { brokers = "127.0.0.1:9" }
[[targets]]
name = "checkout"
policy = "p.lua"
max_replicas = 10
"#,
    );
    for f in ["kong", "apisix", "envoy", "otlp", "traefik", "nginx"] {
        toml.push_str(&format!(
            "[[source.inputs]]\ntopic = \"{f}\"\nformat = \"{f}\"\n"
        ));
    }
    toml.push_str(extra);
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let (cfg, _) = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    (dir, cfg)
}

/// Every record of `file` decoded by the input of `topic`.
fn decode(cfg: &Config, topic: &str, file: &str) -> Vec<Decoded> {
    let mut limits = cfg.engine.limits();
    limits.max_event_age_ms = i64::MAX / 4; // the samples are from 2024
    let inputs = tidewatch::source::inputs::compile(&cfg.source.inputs, &limits);
    let origin = Origin {
        topic: topic.into(),
        ..Origin::default()
    };
    let input = inputs
        .find("kafka", &origin)
        .expect("an input for the topic");
    let bytes = std::fs::read(format!("{FIXTURES}/{file}")).unwrap();
    let now = 1_715_679_100_000;
    input.decode(
        &bytes,
        tidewatch::event::At {
            now_ms: now,
            default_ts: now,
        },
    )
}

fn latency(d: &Decoded) -> &GatewayLatency {
    match d {
        Decoded::Signal(Signal::Latency(l)) => l,
        other => panic!("not a latency signal: {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn kong_total_and_upstream_latency_status_route_and_time() {
    let (_d, cfg) = config("");
    let out = decode(&cfg, "kong", "kong.json");
    assert_eq!(out.len(), 1);
    let l = latency(&out[0]);
    assert_eq!(l.target, "checkout");
    assert_eq!(l.route.as_deref(), Some("checkout-orders"));
    assert_eq!(l.samples_ms, vec![87.0], "latencies.request");
    assert_eq!(l.errors, 0);
    assert_eq!(l.ts_ms, 1_715_679_012_345, "started_at");
    // a 401 from a plugin: one request, no upstream, not an error
    let out = decode(&cfg, "kong", "kong-no-upstream.json");
    let l = latency(&out[0]);
    assert_eq!((l.samples_ms.clone(), l.errors), (vec![1.0], 0));
    let (_d, up) = config("");
    let mut up = up;
    up.source.inputs[0].latency = tidewatch::event::mapping::LatencyChoice::Upstream;
    assert_eq!(
        latency(&decode(&up, "kong", "kong.json")[0]).samples_ms,
        vec![84.0]
    );
    // proxy = -1: the upstream saw nothing
    assert!(latency(&decode(&up, "kong", "kong-no-upstream.json")[0])
        .samples_ms
        .is_empty());
}

#[test]
fn apisix_arrays_with_ids_mapped_by_a_lookup() {
    let (_d, cfg) = config("");
    // without a lookup the route id is the target: "1" and "2"
    let out = decode(&cfg, "apisix", "apisix.json");
    assert_eq!(out.len(), 3);
    let targets: Vec<&str> = out.iter().map(|d| latency(d).target.as_str()).collect();
    assert_eq!(targets, ["1", "2", "1"]);
    let (_d, cfg) = config(
        r#"
[[source.inputs]]
topic = "apisix-mapped"
format = "apisix"
latency = "upstream"
map = { target = { lookup = { "1" = "search", "2" = "checkout" } } }
"#,
    );
    let out = decode(&cfg, "apisix-mapped", "apisix.json");
    let l: Vec<&GatewayLatency> = out.iter().map(latency).collect();
    assert_eq!(l[0].target, "search");
    assert_eq!(l[0].samples_ms, vec![15.0], "upstream_latency");
    assert_eq!(l[0].ts_ms, 1_715_679_012_345);
    assert_eq!(l[1].target, "checkout");
    assert_eq!(
        (l[1].samples_ms.clone(), l[1].errors),
        (vec![248.0], 1),
        "a 503"
    );
    // answered by APISIX itself (429): no upstream latency, not a 5xx
    assert!(l[2].samples_ms.is_empty() && l[2].errors == 0);
    // the total latency is a float
    let out = decode(&config("").1, "apisix", "apisix.json");
    assert!(close(latency(&out[0]).samples_ms[0], 18.000173568726));
}

#[test]
fn envoy_strings_dashes_typed_values_and_istio_clusters() {
    let (_d, cfg) = config("");
    let l = latency(&decode(&cfg, "envoy", "envoy-json-format.json")[0]).clone();
    assert_eq!(
        l.target, "reviews",
        "from outbound|9080||reviews.default.svc.cluster.local"
    );
    assert_eq!(l.route.as_deref(), Some("default"));
    assert_eq!(l.samples_ms, vec![27.0], "duration, a string");
    assert_eq!(l.errors, 0);
    assert_eq!(l.ts_ms, 1_715_679_012_345);
    let l = latency(&decode(&cfg, "envoy", "envoy-no-upstream.json")[0]).clone();
    assert_eq!(
        (l.target.as_str(), l.samples_ms.clone(), l.errors),
        ("ratings", vec![0.0], 1)
    );
    let l = latency(&decode(&cfg, "envoy", "envoy-typed-json-format.json")[0]).clone();
    assert_eq!(l.target, "reviews", "a subset in the cluster name");
    assert_eq!(
        (l.samples_ms.clone(), l.errors),
        (vec![31.0], 1),
        "a typed 504"
    );
    assert_eq!(l.ts_ms, 1_715_679_014_250);
}

#[test]
fn otlp_json_records_with_string_and_int_attributes() {
    let (_d, cfg) = config("");
    let out = decode(&cfg, "otlp", "otlp.json");
    assert_eq!(out.len(), 2);
    let a = latency(&out[0]);
    assert_eq!(a.target, "productpage");
    assert_eq!(a.samples_ms, vec![42.0]);
    assert_eq!(a.errors, 0);
    assert_eq!(a.ts_ms, 1_715_679_012_345, "timeUnixNano");
    let b = latency(&out[1]);
    assert_eq!(
        (b.samples_ms.clone(), b.errors),
        (vec![7.0], 1),
        "intValue 502"
    );
    assert_eq!(b.ts_ms, 1_715_679_012_501);
}

#[test]
fn traefik_nanoseconds_and_provider_suffixed_services() {
    let (_d, cfg) = config("");
    let l = latency(&decode(&cfg, "traefik", "traefik.json")[0]).clone();
    assert_eq!(l.target, "cart", "from cart@docker");
    assert_eq!(l.route.as_deref(), Some("cart@docker"));
    assert!(close(l.samples_ms[0], 12.345678), "{:?}", l.samples_ms);
    assert_eq!(l.errors, 0);
    assert_eq!(l.ts_ms, 1_715_679_012_123, "StartUTC with ns");
}

#[test]
fn nginx_seconds_in_strings_retries_redirects_and_no_upstream() {
    let (_d, cfg) = config(
        r#"
[[source.inputs]]
topic = "nginx-upstream"
format = "nginx"
latency = "upstream"
"#,
    );
    let l = latency(&decode(&cfg, "nginx", "nginx.json")[0]).clone();
    assert_eq!(l.target, "api.example.com");
    assert_eq!(l.route.as_deref(), Some("/orders"));
    assert!(close(l.samples_ms[0], 120.0));
    assert_eq!(l.errors, 1, "a 502");
    assert_eq!(l.ts_ms, 1_715_679_012_345, "msec");
    let up = |file| {
        latency(&decode(&cfg, "nginx-upstream", file)[0])
            .samples_ms
            .clone()
    };
    assert!(
        close(up("nginx.json")[0], 110.0),
        "two upstreams tried: 50 + 60 ms"
    );
    assert!(
        close(up("nginx-redirect.json")[0], 30.0),
        "a redirect: 10 + 20 ms"
    );
    assert!(up("nginx-cached.json").is_empty(), "\"-\": no upstream");
}

#[test]
fn filters_and_unmatched_records_are_counted_not_dead_lettered() {
    use std::sync::Arc;
    let (_d, cfg) = config(
        r#"
[[source.inputs]]
topic = "nginx-filtered"
format = "nginx"
map = { target = { from = "{/host}", regex = '([a-z]+)\.example\.com', replace = "$1" }, filters = [{ source = "/uri", regex = "/health.*", action = "drop" }] }
[[source.inputs]]
topic = "nginx-dl"
format = "nginx"
unmatched = "deadletter"
"#,
    );
    let metrics = Arc::new(tidewatch::telemetry::Metrics::new());
    let mut engine =
        tidewatch::engine::Engine::new(&cfg.engine, &cfg.targets, metrics.clone(), 0).unwrap();
    let mut limits = cfg.engine.limits();
    limits.max_event_age_ms = i64::MAX / 4;
    engine.set_inputs(Arc::new(tidewatch::source::inputs::compile(
        &cfg.source.inputs,
        &limits,
    )));
    let now = 1_715_679_100_000;
    let from = |topic: &str| Origin {
        topic: topic.into(),
        ..Origin::default()
    };
    let read = |f: &str| std::fs::read(format!("{FIXTURES}/{f}")).unwrap();
    // "api" is not a configured target: unmatched, dropped
    let out = engine.ingest_from("kafka", &read("nginx.json"), now, &from("nginx-filtered"));
    assert_eq!((out.applied, out.rejected.len()), (0, 0));
    // /health is filtered
    let out = engine.ingest_from(
        "kafka",
        &read("nginx-cached.json"),
        now,
        &from("nginx-filtered"),
    );
    assert_eq!((out.applied, out.rejected.len()), (0, 0));
    let unmatched = |reason: &str| {
        common::metric(
            &metrics,
            "tidewatch_events_unmatched_total",
            &[("input", "nginx-filtered"), ("reason", reason)],
        )
    };
    assert_eq!(unmatched("unknown_target"), 1.0);
    assert_eq!(unmatched("filtered"), 1.0);
    // the same record on an input that dead-letters what it cannot place
    let out = engine.ingest_from("kafka", &read("nginx.json"), now, &from("nginx-dl"));
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].1.reason.code(), "unmatched");
    // malformed: dead-lettered as any bad message, with the field named
    let out = engine.ingest_from(
        "kafka",
        br#"{"host":"checkout.example.com","request_time":"soon","status":"200"}"#,
        now,
        &from("nginx-filtered"),
    );
    assert_eq!(out.rejected.len(), 1);
    assert!(
        out.rejected[0].1.detail.contains("/request_time"),
        "{}",
        out.rejected[0].1
    );
    // and a good one reaches its target
    let out = engine.ingest_from(
        "kafka",
        br#"{"host":"checkout.example.com","uri":"/pay","request_time":"0.2","status":"200","msec":"1715679090.5"}"#,
        now,
        &from("nginx-filtered"),
    );
    assert_eq!((out.applied, out.rejected.len()), (1, 0));
    // a message on no input's topic is a tidewatch message
    let out = engine.ingest_from(
        "kafka",
        &read("nginx.json"),
        now,
        &from("tidewatch.signals"),
    );
    assert_eq!(out.rejected[0].1.reason.code(), "missing_field");
}

#[test]
fn config_check_names_the_key_and_the_value_of_a_bad_mapping() {
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
[[targets]]
name = "checkout"
policy = "p.lua"
max_replicas = 10
[[source.inputs]]
topic = "logs"
format = "mapped"
map = { latency = { pointer = "duration", unit = "fortnights" }, target = { from = "{/svc}", regex = "([a-z" } }
[[source.inputs]]
topic = "logs2"
format = "traefik"
map = { target = { from = "{/ServiceName}", regex = "(.*)", lookup = { "x" = "Not Valid" } } }
[[source.inputs]]
binding = "kong.#"
format = "kong"
"#,
    )
    .unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    for want in [
        "source.inputs[0].map.latency.pointer",
        "\"duration\"",
        "source.inputs[0].map.latency.unit",
        "fortnights",
        "source.inputs[0].map.target.regex",
        "source.inputs[1].map.target.lookup.x",
        "Not Valid",
        "source.inputs[2]",
    ] {
        assert!(e.contains(want), "{want:?} in:\n{e}");
    }
}

#[test]
fn signals_check_prints_what_samples_become() {
    let (dir, _cfg) = config("");
    let cfg_path = dir.path().join("c.toml");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tidewatch"))
            .args(["signals", "check", "--config"])
            .arg(&cfg_path)
            .args(args)
            .output()
            .unwrap()
    };
    let kong = format!("{FIXTURES}/kong.json");
    let out = run(&["--input", "kong", &kong]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "gateway_latency target=checkout route=checkout-orders samples_ms=[87.0] errors=0"
        ),
        "{text}"
    );
    // APISIX's ids are no configured target: exit 65, each record said
    let out = run(&["--input", "1", &format!("{FIXTURES}/apisix.json")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(65), "{text}");
    assert_eq!(text.matches("not in [[targets]]").count(), 3, "{text}");
    // a malformed line among good ones, one message per line
    let lines = dir.path().join("lines.log");
    std::fs::write(
        &lines,
        "{\"host\":\"checkout\",\"request_time\":\"0.1\",\"status\":\"200\"}\nnot json\n",
    )
    .unwrap();
    let out = run(&["--input", "nginx", "--lines", lines.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(65), "{text}");
    assert!(
        text.contains("lines.log:1 record 0: gateway_latency target=checkout"),
        "{text}"
    );
    assert!(
        text.contains("lines.log:2 record 0: refused: malformed_json"),
        "{text}"
    );
    let out = run(&["--input", "nope", &kong]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such input"));
}

#[test]
fn docs_show_each_preset_exactly_as_defined() {
    use tidewatch::event::presets::FormatName;
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/gateways.md")).unwrap();
    for f in FormatName::ALL {
        let Some(text) = f.preset_toml().filter(|t| !t.is_empty()) else {
            continue;
        };
        let marker = format!("<!-- preset: {} -->\n```toml preset\n", f.name());
        let at = doc
            .find(&marker)
            .unwrap_or_else(|| panic!("docs/gateways.md has no {marker:?}"))
            + marker.len();
        let end = doc[at..].find("```").unwrap() + at;
        assert_eq!(doc[at..end].trim(), text.trim(), "preset {}", f.name());
    }
}
