//! `tidewatch loadgen` against the real brokers: the binary publishes the
//! demo's wave where a scaler configuration reads signals, and what it
//! publishes is a valid `queue_depth` signal (docs/schemas/queue_depth.json)
//! that the engine's decoder accepts.

mod common;

use std::process::Command;
use std::time::Duration;

use rdkafka::Message;

fn loadgen(config: &std::path::Path, envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["loadgen", "--rounds", "3", "--every", "100ms", "--config"])
        .arg(config)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

/// `[[targets]]` tables for `names`, on the bundled queue-depth policy.
fn targets(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                "[[targets]]\nname = \"{name}\"\npolicy = \"{root}/policies/queue_depth.lua\"\n\
                 provider = \"log\"\nmax_replicas = 10\nparams = {{ per_replica_depth = 100 }}\n",
                root = env!("CARGO_MANIFEST_DIR")
            )
        })
        .collect()
}

/// Checks one published signal and returns its target and depth.
fn check(bytes: &[u8]) -> (String, f64) {
    let v: serde_json::Value = common::schema::parse("queue_depth", bytes);
    let now = tidewatch::clock::Clock::now_ms(&tidewatch::clock::SystemClock);
    let decoded = tidewatch::event::decode(bytes, now, &tidewatch::event::Limits::default());
    assert!(decoded.iter().all(|d| d.is_ok()), "{decoded:?}");
    (
        v["target"].as_str().unwrap().to_owned(),
        v["depth"].as_f64().unwrap(),
    )
}

#[tokio::test]
async fn loadgen_publishes_valid_signals_over_kafka() {
    let Some(brokers) = common::kafka::broker() else {
        return;
    };
    let topic = format!("loadgen-{}", common::amqp::suffix());
    common::kafka::create_topics(&brokers, &[(&topic, 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("scaler.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[source]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topics = ["{topic}"] }}
[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}" }}
{targets}"#,
            targets = targets(&["checkout", "thumbnails"])
        ),
    )
    .unwrap();
    let out = loadgen(&cfg, &[]);
    assert!(out.status.success(), "{out:?}");

    let consumer = common::kafka::reader(&brokers, &topic);
    let mut got = Vec::new();
    while got.len() < 6 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("six signals in time")
            .unwrap();
        let (target, depth) = check(m.payload().unwrap());
        assert_eq!(m.key(), Some(target.as_bytes()), "keyed by target");
        got.push((target, depth));
    }
    // three rounds of both targets, at the wave's trough (40) at the start
    for t in ["checkout", "thumbnails"] {
        assert_eq!(got.iter().filter(|g| g.0 == t).count(), 3, "{got:?}");
    }
    assert!(got.iter().all(|g| (40.0..45.0).contains(&g.1)), "{got:?}");

    // a target the configuration does not have is named, and nothing runs
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["loadgen", "--target", "nope", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nope\""));
}

/// Fresh names on the broker, the scaler's queue bound as `run` would
/// declare it, and a scaler configuration (`scaler.toml` in the returned
/// folder) whose source reads them with the URL from `LOADGEN_TEST_URL`.
async fn rabbitmq_stack(
    url: &str,
) -> (
    common::amqp::Names,
    lapin::Connection,
    lapin::Channel,
    tempfile::TempDir,
) {
    let names = common::amqp::Names::new();
    let conn = common::amqp::connect(url).await;
    let ch = conn.create_channel().await.unwrap();
    common::amqp::exchange_and_queue(&ch, &names.signals, &names.queue).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("scaler.toml"),
        format!(
            r#"
[source]
kind = "amqp"
amqp = {{ url_env = "LOADGEN_TEST_URL", exchange = "{ex}", queue = "{q}" }}
[commands]
kind = "amqp"
amqp = {{ url_env = "LOADGEN_TEST_URL" }}
{targets}"#,
            ex = names.signals,
            q = names.queue,
            targets = targets(&["checkout"])
        ),
    )
    .unwrap();
    (names, conn, ch, dir)
}

#[tokio::test]
async fn loadgen_publishes_valid_signals_over_rabbitmq() {
    let Some(url) = common::amqp::broker() else {
        return;
    };
    let (names, conn, ch, dir) = rabbitmq_stack(&url).await;
    let cfg = dir.path().join("scaler.toml");
    let out = loadgen(&cfg, &[("LOADGEN_TEST_URL", &url)]);
    assert!(out.status.success(), "{out:?}");
    let got = common::amqp::drain(&conn, &names.queue).await;
    assert_eq!(got.len(), 3, "{got:?}");
    for g in &got {
        assert_eq!(g.routing_key, "queue_depth.checkout");
        assert_eq!(check(&g.body).0, "checkout");
    }
    names.delete(&ch).await;
}

/// A fault at run time is not a usage error: when the broker takes the
/// exchange away under a running loadgen, it stops with status 1 (it used
/// to exit 64, EX_USAGE, as if its configuration were wrong).
#[tokio::test]
async fn a_broker_fault_at_run_time_exits_1_not_64() {
    let Some(url) = common::amqp::broker() else {
        return;
    };
    let (names, conn, ch, dir) = rabbitmq_stack(&url).await;
    let cfg = dir.path().join("scaler.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["loadgen", "--every", "100ms", "--config"])
        .arg(&cfg)
        .env("LOADGEN_TEST_URL", &url)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It runs: a signal arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::amqp::drain(&conn, &names.queue).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no signal from loadgen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The exchange goes away under it: the next publish fails (404).
    ch.exchange_delete(&names.signals, Default::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadgen went on publishing to a deleted exchange");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("publish to"), "{err}");
    names.delete(&ch).await;
}
