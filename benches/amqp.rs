//! RabbitMQ benchmarks against a real broker on loopback (URL in
//! TIDEWATCH_TEST_AMQP; `scripts/bench-amqp` finds or starts one):
//!
//! 1. reaction time, signal published -> command consumed by another
//!    client, at 1,000 and 5,000 signals/s (p50, p99);
//! 2. draining a backlog (default 200,000 signals, DRAIN_SIGNALS=n) with
//!    `run`, as a ratio to a bare lapin consumer that only decodes the same
//!    messages (same prefetch, acks every 500), from an identical queue.
//!
//! BENCH_FORMAT=kong sends Kong's per-request log messages instead (one
//! request each, `tests/fixtures/gateways/kong.json` with the target as
//! the service and the depth as the latency), read by a `kong` input;
//! BENCH_RATES=20000 sets the reaction rates (default 1000,5000).
//!
//! 3. `reaction-bare` (only when named): the same load and probes with no
//!    scaler, a bare lapin consumer noting when each probe arrives: the
//!    broker's and the machine's floor under the reaction time.
//!
//! Run: scripts/bench-amqp   (or: cargo bench --bench amqp -- [reaction|drain|reaction-bare])

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::amqp::{self as mq, Names};
use common::bench;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tidewatch::command::ScaleCommand;
use tidewatch::config::Config;
use tidewatch::event::{decode, Limits};
use tidewatch::telemetry::sum;
use tidewatch::telemetry::Metrics;

const PREFETCH: u16 = 500;

/// The routing key of a signal for `target`.
fn key(target: &str) -> String {
    if bench::kong() {
        format!("kong.{target}")
    } else {
        format!("queue_depth.{target}")
    }
}

fn config(dir: &std::path::Path, url: &str, n: &Names, min_eval_interval: &str) -> Config {
    let mut toml = n.toml(url);
    if bench::kong() {
        toml.push_str("\n[[source.inputs]]\nbinding = \"kong.#\"\nformat = \"kong\"\n");
    }
    toml.push_str(&format!(
        r#"
[engine]
min_eval_interval = "{min_eval_interval}"
drain_timeout = "30s"
max_event_age = "30m"
"#
    ));
    toml.push_str(&bench::targets_toml());
    mq::load(dir, &toml, &bench::policy())
}

async fn reaction(url: &str, rate: u64, seconds: u64) {
    let n = Names::new();
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(config(dir.path(), url, &n, "0s"), metrics.clone());
    let conn = mq::connect(url).await;
    mq::wait_for_queue(&conn, &n.workers).await;
    let mut commands = mq::consume_no_ack(&conn, &n.workers, "bench-reader").await;
    // Load without confirms (a steady stream, as gateways publish).
    let load = conn.create_channel().await.unwrap();
    let publish = |target: String, depth: u64| {
        let load = load.clone();
        let exchange = n.signals.clone();
        async move {
            let _ = load
                .basic_publish(
                    &exchange,
                    &key(&target),
                    Default::default(),
                    bench::signal(&target, depth).as_bytes(),
                    BasicProperties::default(),
                )
                .await;
        }
    };
    // Warm up: one probe command goes all the way round.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no warm-up command");
        publish("probe".into(), 200).await;
        if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(1), commands.next()).await
        {
            let c: ScaleCommand = serde_json::from_slice(&d.data).unwrap();
            if c.target == "probe" {
                break;
            }
        }
    }
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_secs(5), commands.next()).await
        {
            let at = Instant::now();
            let c: ScaleCommand = serde_json::from_slice(&d.data).unwrap();
            if c.target == "probe" {
                got.push((c.desired_replicas, at));
            }
        }
        got
    });
    let driven = bench::drive(rate, seconds, publish).await;
    let got = reader.await.unwrap();
    let lat = bench::reaction_ms(&driven.probes, &got);
    assert!(!lat.is_empty(), "no probe command matched");
    bench::report(rate, seconds, &driven, &lat);
    stop.send(()).unwrap();
    task.await.unwrap();
    n.delete(&conn.create_channel().await.unwrap()).await;
}

/// The same load and probes as [`reaction`] with no scaler: a bare lapin
/// consumer (same prefetch, acks every 500) that parses each message and
/// notes when each probe arrives. What the broker, the publisher and one
/// consumer cost on this machine at `rate`: the floor under tidewatch's
/// reaction time.
async fn reaction_bare(url: &str, rate: u64, seconds: u64) {
    let n = Names::new();
    let conn = mq::connect(url).await;
    let setup = mq::confirm_channel(&conn).await;
    mq::exchange_and_queue(&setup, &n.signals, &n.queue).await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            &n.queue,
            "bare-reaction",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let probe_key = key("probe");
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut seen = 0u64;
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        {
            let at = Instant::now();
            let ok = serde_json::from_slice::<serde_json::Value>(&d.data).is_ok();
            if ok && d.routing_key.as_str() == probe_key {
                // probes are sent in order, 3, 4, 5, ...
                got.push((3 + got.len() as u32, at));
            }
            seen += 1;
            if seen.is_multiple_of(500) {
                let _ = d.acker.ack(BasicAckOptions { multiple: true }).await;
            }
        }
        got
    });
    let load = conn.create_channel().await.unwrap();
    let publish = |target: String, depth: u64| {
        let load = load.clone();
        let exchange = n.signals.clone();
        async move {
            let _ = load
                .basic_publish(
                    &exchange,
                    &key(&target),
                    Default::default(),
                    bench::signal(&target, depth).as_bytes(),
                    BasicProperties::default(),
                )
                .await;
        }
    };
    let driven = bench::drive(rate, seconds, publish).await;
    let got = reader.await.unwrap();
    let lat = bench::reaction_ms(&driven.probes, &got);
    assert!(!lat.is_empty(), "no probe arrived");
    print!("bare consumer, no scaler: ");
    bench::report(rate, seconds, &driven, &lat);
    n.delete(&setup).await;
}

/// `tidewatch run` on a queue holding the backlog, until every signal is
/// applied: (seconds, commands issued, commands published).
async fn drain_with_run(
    url: &str,
    n: &Names,
    total: u64,
    min_eval_interval: &str,
) -> (f64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let t = Instant::now();
    let (stop, task) = common::start_run(
        config(dir.path(), url, n, min_eval_interval),
        metrics.clone(),
    );
    let received = || {
        sum(
            &metrics,
            "tidewatch_events_received_total",
            &[("source", "amqp"), ("type", bench::signal_type())],
        ) as u64
    };
    // Timed from when the source consumes, as the bare consumer is timed
    // from its basic.consume; start-up (connect, declare, policies) is
    // reported apart.
    while sum(
        &metrics,
        "tidewatch_broker_connected",
        &[("component", "source")],
    ) == 0.0
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let startup_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    while received() < total {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let tw_s = t.elapsed().as_secs_f64();
    println!(
        "drain: tidewatch start-up (connect, declare, {} policies) {startup_s:.2} s, not counted",
        bench::targets()
    );
    // Per target, so that only this run's targets count.
    let total = |name: &str| -> u64 {
        (0..bench::targets())
            .map(|i| sum(&metrics, name, &[("target", &format!("t{i}"))]) as u64)
            .sum()
    };
    let counts = (
        total("tidewatch_commands_issued_total"),
        total("tidewatch_commands_published_total"),
    );
    stop.send(()).unwrap();
    task.await.unwrap();
    (tw_s, counts.0, counts.1)
}

async fn drain(url: &str, total: u64) {
    let n = Names::new();
    // Same exchange, other scaler queues and command names.
    let eager = Names {
        signals: n.signals.clone(),
        ..Names::new()
    };
    let bare_queue = format!("bare-{}", mq::suffix());
    let conn = mq::connect(url).await;
    let ch = mq::confirm_channel(&conn).await;
    // Identical backlogs: the bare consumer's and each scaler's queue.
    for q in [&n.queue, &eager.queue, &bare_queue] {
        mq::exchange_and_queue(&ch, &n.signals, q).await;
    }
    let t = Instant::now();
    let mut pending = Vec::new();
    let n_targets = bench::targets() as u64;
    for i in 0..total {
        let target = format!("t{}", i % n_targets);
        let confirm = ch
            .basic_publish(
                &n.signals,
                &key(&target),
                Default::default(),
                bench::signal(&target, 100 + i % 1000).as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() >= 1000 {
            for c in pending.drain(..) {
                assert!(c.await.unwrap().is_ack());
            }
        }
    }
    for c in pending.drain(..) {
        assert!(c.await.unwrap().is_ack());
    }
    println!(
        "drain: published {total} signals (to three queues) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The bare consumer: consume, decode, ack every 500, nothing else.
    let bare_ch = conn.create_channel().await.unwrap();
    bare_ch
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let limits = Limits {
        max_event_age_ms: 3_600_000,
        ..Limits::default()
    };
    let t = Instant::now();
    let mut consumer = bare_ch
        .basic_consume(
            &bare_queue,
            "bare",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (mut seen, mut ok) = (0u64, 0u64);
    while seen < total {
        let d = consumer.next().await.unwrap().unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        ok += if bench::kong() {
            // decoding only: the JSON parsed, nothing applied
            u64::from(serde_json::from_slice::<serde_json::Value>(&d.data).is_ok())
        } else {
            decode(&d.data, now, &limits)
                .iter()
                .filter(|r| r.is_ok())
                .count() as u64
        };
        seen += 1;
        if seen % 500 == 0 || seen == total {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
    }
    assert_eq!(ok, total);
    let bare_s = t.elapsed().as_secs_f64();
    println!(
        "drain: bare lapin consumer {bare_s:.2} s ({:.0}/s)",
        total as f64 / bare_s
    );
    for (names, eval) in [(&n, "100ms"), (&eager, "0s")] {
        let (tw_s, issued, published) = drain_with_run(url, names, total, eval).await;
        println!(
            "drain: tidewatch run, min_eval_interval {eval}: {tw_s:.2} s ({:.0}/s), ratio {:.2}; {issued} commands issued, {published} published",
            total as f64 / tw_s,
            bare_s / tw_s
        );
    }
    let _ = ch.queue_delete(&bare_queue, Default::default()).await;
    eager.delete(&ch).await;
    n.delete(&ch).await;
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = which.is_empty();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = std::env::var("TIDEWATCH_TEST_AMQP")
        .expect("set TIDEWATCH_TEST_AMQP (scripts/bench-amqp starts RabbitMQ)");
    rt.block_on(async {
        if all || which.iter().any(|w| w == "reaction") {
            let rates: Vec<u64> = std::env::var("BENCH_RATES")
                .ok()
                .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![1_000, 5_000]);
            for rate in rates {
                reaction(&url, rate, 10).await;
            }
        }
        if which.iter().any(|w| w == "reaction-bare") {
            let rates: Vec<u64> = std::env::var("BENCH_RATES")
                .ok()
                .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![1_000, 5_000]);
            for rate in rates {
                reaction_bare(&url, rate, 10).await;
            }
        }
        if all || which.iter().any(|w| w == "drain") {
            let total = std::env::var("DRAIN_SIGNALS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(200_000);
            drain(&url, total).await;
        }
    });
}
