//! Kafka benchmarks against a real broker (tansu on loopback; address in
//! TIDEWATCH_TEST_KAFKA; `scripts/bench-kafka` starts one):
//!
//! 1. reaction time, signal produced -> command consumed by another client,
//!    at 1,000 and 10,000 signals/s (p50, p99);
//! 2. draining a backlog of 1,000,000 signals with `run`, as a ratio to a
//!    bare rdkafka consumer that only decodes the same messages.
//!
//! Run: scripts/bench-kafka   (or: cargo bench --bench kafka -- [reaction|drain])

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tidewatch::command::ScaleCommand;
use tidewatch::config::Config;
use tidewatch::event::{decode, Limits};
use tidewatch::telemetry::Metrics;

fn brokers() -> String {
    if let Some(b) = MOCK.with(|m| m.as_ref().map(|m| m.bootstrap_servers())) {
        return b;
    }
    std::env::var("TIDEWATCH_TEST_KAFKA")
        .expect("set TIDEWATCH_TEST_KAFKA (scripts/bench-kafka starts tansu)")
}

type Mock = rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

thread_local! {
    /// With BENCH_BROKER=mock: librdkafka's in-process mock cluster instead
    /// of tansu, to tell the broker's share of the reaction time from ours.
    static MOCK: Option<Mock> = (std::env::var("BENCH_BROKER").as_deref() == Ok("mock"))
        .then(|| Mock::new(1).expect("mock cluster"));
}

async fn create_topics(brokers: &str, topics: &[(String, i32)]) {
    let mocked = MOCK.with(|m| {
        m.as_ref().map(|m| {
            for (n, p) in topics {
                m.create_topic(n, *p, 1).unwrap();
            }
        })
    });
    if mocked.is_some() {
        return;
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    for _ in 0..30 {
        if let Ok(r) = admin.create_topics(&new, &AdminOptions::new()).await {
            if r.iter().all(|r| r.is_ok()) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("could not create topics on {brokers}");
}

/// The signal topic (4 partitions) and the scaler's other topics.
async fn create_scaler_topics(brokers: &str, signals: &str, suffix: &str) {
    let topics = [
        (signals.to_owned(), 4),
        (format!("commands-{suffix}"), 1),
        (format!("results-{suffix}"), 1),
        (format!("dl-{suffix}"), 1),
        (format!("state-{suffix}"), 1),
    ];
    create_topics(brokers, &topics).await;
}

fn config(
    dir: &std::path::Path,
    brokers: &str,
    suffix: &str,
    signals: &str,
    group: &str,
) -> Config {
    std::fs::write(dir.join("p.lua"), bench::policy()).unwrap();
    let mut toml = format!(
        r#"
[source]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topics = ["{signals}"], group_id = "{group}", deadletter_topic = "dl-{suffix}", options = {{ "fetch.wait.max.ms" = "5" }} }}
[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "commands-{suffix}", results_topic = "results-{suffix}" }}
[engine]
min_eval_interval = "0s"
drain_timeout = "30s"
max_event_age = "30m"
[state]
topic = "state-{suffix}"
# every target every second: the most snapshot work a run can do
interval = "1s"
"#
    );
    if bench::kong() {
        toml.push_str(&format!(
            "[[source.inputs]]\ntopic = \"{signals}\"\nformat = \"kong\"\n"
        ));
    }
    if std::env::var("BENCH_STATE").as_deref() == Ok("off") {
        toml.push_str("store = \"none\"\n");
    }
    toml.push_str(&bench::targets_toml());
    std::fs::write(dir.join("c.toml"), toml).unwrap();
    Config::load(&dir.join("c.toml")).unwrap().0
}

fn producer(brokers: &str, linger_ms: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms)
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

async fn reaction(brokers: &str, rate: u64, seconds: u64) {
    let suffix = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let signals = format!("signals-{suffix}");
    create_scaler_topics(brokers, &signals, &suffix).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        brokers,
        &suffix,
        &signals,
        &format!("scaler-{suffix}"),
    );
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    let commands: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{suffix}"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    commands
        .subscribe(&[format!("commands-{suffix}").as_str()])
        .unwrap();
    let p = producer(brokers, "0");
    let send = |target: String, depth: u64| {
        let body = bench::signal(&target, depth);
        let _ = p.send_result(FutureRecord::to(&signals).key(&target).payload(&body));
    };
    // Warm up: every target gets its first command, both groups are joined.
    send("probe".into(), 200);
    let mut warm = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while warm < 1 {
        assert!(Instant::now() < deadline, "no warm-up command");
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), commands.recv()).await {
            let c: ScaleCommand = serde_json::from_slice(m.payload().unwrap()).unwrap();
            if c.target == "probe" {
                warm += 1;
            }
        } else {
            send("probe".into(), 200);
        }
    }
    // Background load at `rate`, all targets at a steady depth, and a probe
    // every 20 ms whose depth forces a new command each time.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), commands.recv()).await {
            let at = Instant::now();
            let c: ScaleCommand = serde_json::from_slice(m.payload().unwrap()).unwrap();
            if c.target == "probe" {
                got.push((c.desired_replicas, at));
            }
        }
        got
    });
    let driven = bench::drive(rate, seconds, |target, depth| {
        send(target, depth);
        async {}
    })
    .await;
    let _ = p.flush(Duration::from_secs(10));
    let got = reader.await.unwrap();
    let lat = bench::reaction_ms(&driven.probes, &got);
    if std::env::var("BENCH_TRACE").is_ok() {
        let by_second: Vec<String> = lat
            .chunks(50)
            .map(|c| format!("{:.0}", c.iter().cloned().fold(0.0, f64::max)))
            .collect();
        eprintln!(
            "max latency per second of load (ms): {}",
            by_second.join(" ")
        );
    }
    if lat.is_empty() {
        panic!(
            "no probe command matched: {} probes sent, {} probe commands read, first {:?}, metrics issued {}",
            driven.probes.len(),
            got.len(),
            got.first().map(|g| g.0),
            tidewatch::telemetry::sum(
                &metrics,
                "tidewatch_commands_issued_total",
                &[("target", "probe"), ("direction", "up")]
            )
        );
    }
    bench::report(rate, seconds, &driven, &lat);
    stop.send(()).unwrap();
    task.await.unwrap();
}

async fn drain(brokers: &str, n: u64) {
    let suffix = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let signals = format!("backlog-{suffix}");
    create_scaler_topics(brokers, &signals, &suffix).await;
    // One message per produce request: tansu 0.6 keeps only part of a
    // multi-message batch (seen here: 13,124 of 20,000 acknowledged).
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let t = Instant::now();
    let mut pending = Vec::new();
    let n_targets = bench::targets() as u64;
    for i in 0..n {
        let target = format!("t{}", i % n_targets);
        let body = bench::signal(&target, 100 + i % 1000);
        loop {
            match p.send_result(FutureRecord::to(&signals).key(&target).payload(&body)) {
                Ok(d) => {
                    pending.push(d);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        if pending.len() >= 100_000 {
            for d in pending.drain(..) {
                d.await.unwrap().unwrap();
            }
        }
    }
    for d in pending.drain(..) {
        d.await.unwrap().unwrap();
    }
    println!(
        "drain: produced {n} signals in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    {
        use rdkafka::consumer::BaseConsumer;
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        let total: i64 = (0..4)
            .map(|p| {
                probe
                    .fetch_watermarks(&signals, p, Duration::from_secs(5))
                    .map(|(l, h)| h - l)
                    .unwrap_or(-1)
            })
            .sum();
        eprintln!("drain: {total} messages in the topic");
    }

    // The bare consumer: poll and decode, nothing else, on its own thread.
    let (b, topic, group) = (
        brokers.to_owned(),
        signals.clone(),
        format!("bare-{suffix}"),
    );
    let bare_s = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::BaseConsumer;
        let bare: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", &group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        // Partitions assigned directly, from the beginning: no group work.
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        bare.assign(&tpl).unwrap();
        let limits = Limits {
            max_event_age_ms: 3_600_000,
            ..Limits::default()
        };
        let t = Instant::now();
        let (mut seen, mut ok) = (0u64, 0u64);
        while seen < n {
            let Some(m) = bare.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("bare consumer: {e}");
                    continue;
                }
            };
            let now = chrono::Utc::now().timestamp_millis();
            ok += if bench::kong() {
                // decoding only: the JSON parsed, nothing applied
                u64::from(
                    serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default())
                        .is_ok(),
                )
            } else {
                decode(m.payload().unwrap_or_default(), now, &limits)
                    .iter()
                    .filter(|r| r.is_ok())
                    .count() as u64
            };
            seen += 1;
        }
        assert_eq!(ok, n);
        t.elapsed().as_secs_f64()
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        brokers,
        &suffix,
        &signals,
        &format!("scaler-{suffix}"),
    );
    let metrics = Arc::new(Metrics::new());
    let t = Instant::now();
    let (stop, task) = common::start_run(cfg, metrics.clone());
    let received = || -> u64 {
        [bench::signal_type()]
            .iter()
            .map(|k| {
                tidewatch::telemetry::sum(
                    &metrics,
                    "tidewatch_events_received_total",
                    &[("source", "kafka"), ("type", k)],
                ) as u64
            })
            .sum()
    };
    // Timed from its first applied message, as the bare consumer is timed
    // from its first poll: start-up and the group join are reported apart.
    while received() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let startup_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    while received() < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let tw_s = t.elapsed().as_secs_f64();
    stop.send(()).unwrap();
    task.await.unwrap();
    println!("drain: tidewatch start-up and group join {startup_s:.2} s, not counted");
    println!(
        "drain: bare consumer {bare_s:.2} s ({:.0}/s), tidewatch run {tw_s:.2} s ({:.0}/s), ratio {:.2}",
        n as f64 / bare_s,
        n as f64 / tw_s,
        bare_s / tw_s
    );
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
    let b = brokers();
    rt.block_on(async {
        if all || which.iter().any(|w| w == "reaction") {
            let rates: Vec<u64> = std::env::var("BENCH_RATES")
                .ok()
                .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![1_000, 5_000, 10_000]);
            for rate in rates {
                reaction(&b, rate, 10).await;
            }
        }
        if all || which.iter().any(|w| w == "drain") {
            let n = std::env::var("DRAIN_SIGNALS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1_000_000);
            drain(&b, n).await;
        }
    });
}
