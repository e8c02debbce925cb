//! RabbitMQ helpers for the integration tests and the AMQP benchmark: the
//! broker's URL from TIDEWATCH_TEST_AMQP (set by scripts/test), a
//! configuration with random exchange and queue names, and a plain lapin
//! client for the test's side of the broker.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tidewatch::broker::amqp::AmqpSettings;
use tidewatch::config::Config;
use tidewatch::secret::SecretRef;

/// The test broker, or None outside CI when it is not set (the test then
/// says so and returns). Under CI=true a missing broker fails the test.
pub fn broker() -> Option<String> {
    match std::env::var("TIDEWATCH_TEST_AMQP") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "TIDEWATCH_TEST_AMQP is not set under CI: scripts/test starts RabbitMQ and sets it"
            )
        }
        _ => {
            eprintln!("TIDEWATCH_TEST_AMQP not set: run scripts/test, which starts RabbitMQ");
            None
        }
    }
}

pub fn suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

/// Names of one test's exchanges and queues.
#[derive(Clone, Debug)]
pub struct Names {
    pub signals: String,
    pub queue: String,
    pub deadletter: String,
    pub commands: String,
    pub results: String,
    pub workers: String,
}

impl Names {
    pub fn new() -> Self {
        let s = suffix();
        Self {
            signals: format!("sig-{s}"),
            queue: format!("scaler-{s}"),
            deadletter: format!("dl-{s}"),
            commands: format!("cmd-{s}"),
            results: format!("res-{s}"),
            workers: format!("workers-{s}"),
        }
    }

    /// `[source]` and `[commands]` on RabbitMQ under these names.
    pub fn toml(&self, url: &str) -> String {
        format!(
            r#"
[source]
kind = "amqp"
amqp = {{ url = "{url}", exchange = "{}", queue = "{}", deadletter_exchange = "{}", prefetch = 500 }}

[commands]
kind = "amqp"
amqp = {{ url = "{url}", exchange = "{}", results_exchange = "{}", queue = "{}" }}
"#,
            self.signals, self.queue, self.deadletter, self.commands, self.results, self.workers
        )
    }

    /// Removes what the test (and the scaler) declared.
    pub async fn delete(&self, ch: &Channel) {
        for q in [&self.queue, &self.deadletter, &self.workers] {
            let _ = ch.queue_delete(q, Default::default()).await;
        }
        for e in [
            &self.signals,
            &self.deadletter,
            &self.commands,
            &self.results,
        ] {
            let _ = ch.exchange_delete(e, Default::default()).await;
        }
    }
}

/// Writes `policy` and a configuration (`toml` plus the given targets) to
/// `dir` and loads it.
pub fn load(dir: &Path, toml: &str, policy: &str) -> Config {
    std::fs::write(dir.join("p.lua"), policy).unwrap();
    std::fs::write(dir.join("c.toml"), toml).unwrap();
    Config::load(&dir.join("c.toml")).unwrap().0
}

pub async fn connect(url: &str) -> Connection {
    AmqpSettings {
        key: "test".into(),
        url: SecretRef {
            literal: Some(url.into()),
            ..SecretRef::default()
        },
        tls_ca_file: None,
    }
    .connect("test client")
    .await
    .unwrap()
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

/// How long a test publish is offered again while no queue is bound for
/// its key.
const UNROUTED_FOR: Duration = Duration::from_secs(30);

/// Publishes persistently and waits for the broker's confirm. Published
/// `mandatory`: a message no queue is bound for yet (the scaler declares
/// its queue, then binds it) comes back and is published again, so a test
/// never loses a signal to that gap; after 30 s unrouted it fails.
pub async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
) -> Result<(), lapin::Error> {
    let deadline = Instant::now() + UNROUTED_FOR;
    loop {
        let c = ch
            .basic_publish(
                exchange,
                key,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        assert!(c.is_ack(), "broker nacked a test publish");
        if c.take_message().is_none() {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "no queue bound for {key} on {exchange:?} within {UNROUTED_FOR:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes each `(key, body)` persistently, all at once, then waits for
/// every confirm (one round trip for the lot, not one each); what comes
/// back unrouted is published again, as [`publish`] does.
pub async fn publish_all(ch: &Channel, exchange: &str, messages: &[(String, String)]) {
    let deadline = Instant::now() + UNROUTED_FOR;
    let mut todo: Vec<&(String, String)> = messages.iter().collect();
    while !todo.is_empty() {
        let mut confirms = Vec::with_capacity(todo.len());
        for m in &todo {
            let c = ch
                .basic_publish(
                    exchange,
                    &m.0,
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    m.1.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap();
            confirms.push((*m, c));
        }
        let mut unrouted = Vec::new();
        for (m, c) in confirms {
            let c = c.await.unwrap();
            assert!(c.is_ack(), "broker nacked a test publish");
            if c.take_message().is_some() {
                unrouted.push(m);
            }
        }
        todo = unrouted;
        if !todo.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} messages unrouted on {exchange:?} for {UNROUTED_FOR:?}",
                todo.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until `queue` exists (the scaler declared it).
pub async fn wait_for_queue(conn: &Connection, queue: &str) {
    wait_for_queue_within(conn, queue, Duration::from_secs(30)).await
}

/// [`wait_for_queue`] for at most `within` (a start that restores 50,000
/// targets' state takes longer than 30 s).
pub async fn wait_for_queue_within(conn: &Connection, queue: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let ch = conn.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        if ch
            .queue_declare(queue, passive, FieldTable::default())
            .await
            .is_ok()
        {
            let _ = ch.close(200, "ok").await;
            return;
        }
        assert!(Instant::now() < deadline, "queue {queue} never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message read back from a queue: body, routing key and headers.
#[derive(Debug)]
pub struct Got {
    pub body: Vec<u8>,
    pub routing_key: String,
    pub properties: BasicProperties,
}

/// Reads messages from `queue` (acking them) until `done` holds for what
/// was read or the timeout passes; waits for the queue to exist first.
pub async fn read_until(
    conn: &Connection,
    queue: &str,
    timeout: Duration,
    mut done: impl FnMut(&[Got]) -> bool,
) -> Vec<Got> {
    // The scaler may not have declared it yet.
    wait_for_queue(conn, queue).await;
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue,
            &format!("reader-{}", suffix()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&got) {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.ack(BasicAckOptions::default()).await.unwrap();
                got.push(Got {
                    body: d.data.clone(),
                    routing_key: d.routing_key.to_string(),
                    properties: d.properties.clone(),
                });
            }
            _ => break,
        }
    }
    let _ = ch.close(200, "ok").await;
    got
}

/// Everything in `queue` right now (basic.get until empty).
pub async fn drain(conn: &Connection, queue: &str) -> Vec<Got> {
    let ch = conn.create_channel().await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get(queue, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        got.push(Got {
            body: m.delivery.data.clone(),
            routing_key: m.delivery.routing_key.to_string(),
            properties: m.delivery.properties.clone(),
        });
    }
    got
}

/// A string header of a message.
pub fn header(g: &Got, name: &str) -> Option<String> {
    let headers = g.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Declares the durable topic exchange and a durable queue bound to it
/// with `#`, as the scaler does.
pub async fn exchange_and_queue(ch: &Channel, exchange: &str, queue: &str) {
    tidewatch::broker::amqp::exchange(ch, exchange, "test", true)
        .await
        .unwrap();
    let all = ["#".to_string()];
    tidewatch::broker::amqp::queue(ch, queue, "test", true, Some((exchange, &all)))
        .await
        .unwrap();
}

/// A queue-depth signal stamped now.
pub fn depth_signal(target: &str, depth: i64) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    format!(
        r#"{{"type":"queue_depth","target":"{target}","queue":"q","depth":{depth},"ts":{now}}}"#
    )
}

/// Publishes an `applied` result for `c` to the results exchange until the
/// scaler's engine has applied it (its observed replicas for the target
/// are `observed`). RabbitMQ drops a result while the scaler's exclusive
/// results queue is not bound (yet, or again), so one publish may be
/// lost; and the reader counts a result before the engine sees it, so the
/// received counter alone would race a stop.
pub async fn publish_result_until_applied(
    ch: &Channel,
    results_exchange: &str,
    c: &tidewatch::command::ScaleCommand,
    observed: u32,
    metrics: &tidewatch::telemetry::Metrics,
) {
    let result = format!(
        r#"{{"version":1,"command_id":"{}","target":"{}","generation":{},"status":"applied","observed_replicas":{observed},"error":null,"worker":"w1","finished_at":"2026-11-24T10:00:00Z"}}"#,
        c.id, c.target, c.generation
    );
    let key = format!("{}.{}", c.provider, c.target);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = publish(ch, results_exchange, &key, result.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let applied = super::metric(
            metrics,
            "tidewatch_target_observed_replicas",
            &[("target", c.target.as_str())],
        );
        if applied == f64::from(observed) {
            break;
        }
        assert!(Instant::now() < deadline, "the result was never applied");
    }
}

/// Runs `rabbitmqctl` with `args` (scripts/test installs it); fails with
/// its stderr.
pub async fn rabbitmqctl(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl")
            .args(&args)
            .output()
            .expect("rabbitmqctl runs (scripts/test installs rabbitmq-server)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A consumer of `queue` without acks (the benchmarks' command readers).
pub async fn consume_no_ack(conn: &Connection, queue: &str, tag: &str) -> lapin::Consumer {
    conn.create_channel()
        .await
        .unwrap()
        .basic_consume(
            queue,
            tag,
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
}
