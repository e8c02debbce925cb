//! RabbitMQ stopped and started again (`rabbitmqctl stop_app` /
//! `start_app`) under a running scaler. Its own test binary: it takes the
//! shared broker away, so nothing else may run beside it; the two tests
//! here take turns.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::amqp::{self as mq, Names};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tidewatch::command::ScaleCommand;
use tidewatch::telemetry::Metrics;

const POLICY: &str = r#"return { decide = function(ctx)
  local d = ctx.window("queue_depth", "10s")
  if not d then return nil end
  return { replicas = math.ceil(d.last / 100), reason = "last " .. d.last }
end }"#;

const TARGET: &str = r#"
[engine]
min_eval_interval = "0s"
drain_timeout = "30s"

[[targets]]
name = "web"
policy = "p.lua"
provider = "exec"
max_replicas = 1000
stabilization_down = "0s"
"#;

static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn restart_broker(down_for: Duration) {
    mq::rabbitmqctl(&["stop_app"]).await;
    tokio::time::sleep(down_for).await;
    mq::rabbitmqctl(&["start_app"]).await;
    mq::rabbitmqctl(&["await_startup"]).await;
}

fn counter(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::metric(m, name, labels)
}

fn signal(depth: u32) -> String {
    mq::depth_signal("web", depth.into())
}

/// Publishes signals every 2 ms with confirms, reconnecting whenever the
/// broker is away, until `stop`; counts only what the broker confirmed.
async fn publish_steadily(
    url: String,
    exchange: String,
    confirmed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let settings = tidewatch::broker::amqp::AmqpSettings {
            key: "test".into(),
            url: tidewatch::secret::SecretRef {
                literal: Some(url.clone()),
                ..Default::default()
            },
            tls_ca_file: None,
        };
        let Ok(conn) = settings.connect("restart test").await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let ch = mq::confirm_channel(&conn).await;
        while !stop.load(Ordering::Relaxed) {
            // Depths 100..=2000: never the final 4200.
            let depth = 100 + (i % 20) * 100;
            if mq::publish(&ch, &exchange, "queue_depth.web", signal(depth).as_bytes())
                .await
                .is_err()
            {
                break;
            }
            confirmed.fetch_add(1, Ordering::Relaxed);
            i += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// The commands in the workers' queue until one for `desired` arrives.
async fn commands_until(conn: &lapin::Connection, queue: &str, desired: u32) -> Vec<ScaleCommand> {
    mq::read_until(conn, queue, Duration::from_secs(60), |g| {
        g.last()
            .and_then(|m| serde_json::from_slice::<ScaleCommand>(&m.body).ok())
            .is_some_and(|c| c.desired_replicas == desired)
    })
    .await
    .iter()
    .map(|m| serde_json::from_slice(&m.body).unwrap())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_signals_flow_loses_no_acked_signal() {
    let Some(url) = mq::broker() else { return };
    let _turn = BROKER.lock().await;
    let n = Names::new();
    // A probe on a side queue restarts with the rest.
    let side = format!("side-{}", mq::suffix());
    let conn = mq::connect(&url).await;
    mq::exchange_and_queue(&conn.create_channel().await.unwrap(), &n.signals, &side).await;
    drop(conn);
    let probe = format!(
        r#"
[[probes]]
kind = "amqp_queue"
target = "backlog"
queue = "{side}"
url = "{url}"
interval = "100ms"

[[targets]]
name = "backlog"
policy = "p.lua"
max_replicas = 1000
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = mq::load(
        dir.path(),
        &format!("{}{TARGET}{probe}", n.toml(&url)),
        POLICY,
    );
    let metrics = Arc::new(Metrics::new());
    let (stop_run, task) = common::start_run(cfg, metrics.clone());
    let conn = mq::connect(&url).await;
    mq::wait_for_queue(&conn, &n.queue).await;
    drop(conn);
    let probed = || {
        counter(
            &metrics,
            "tidewatch_events_received_total",
            &[("source", "probe")],
        )
    };

    let confirmed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish_steadily(
        url.clone(),
        n.signals.clone(),
        confirmed.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_stop = confirmed.load(Ordering::Relaxed);
    assert!(
        before_stop > 100,
        "signals flow before the stop: {before_stop}"
    );
    restart_broker(Duration::from_secs(2)).await;
    let probed_at_restart = probed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let sent = confirmed.load(Ordering::Relaxed);
    assert!(
        sent > before_stop + 50,
        "signals flow after the restart: {before_stop} then {sent}"
    );

    // The final signal: its command must be the last one published.
    let conn = mq::connect(&url).await;
    let ch = mq::confirm_channel(&conn).await;
    mq::publish(&ch, &n.signals, "queue_depth.web", signal(4200).as_bytes())
        .await
        .unwrap();
    let sent = sent + 1;
    let commands = commands_until(&conn, &n.workers, 42).await;
    let last = commands.last().expect("commands after the restart");
    assert_eq!(
        last.desired_replicas,
        42,
        "the final command: {:?}",
        commands
            .iter()
            .map(|c| c.desired_replicas)
            .collect::<Vec<_>>()
    );

    // Every confirmed signal was applied (at least once: a batch delivered
    // but not yet acked when the broker went away is delivered again).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let received = loop {
        let r = counter(
            &metrics,
            "tidewatch_events_received_total",
            &[("source", "amqp")],
        );
        if r as u64 >= sent || std::time::Instant::now() > deadline {
            break r as u64;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("sent (confirmed) {sent}, before the stop {before_stop}, applied {received}");
    assert!(received >= sent, "sent {sent}, applied only {received}");
    assert!(
        received <= sent + 500,
        "redelivered at most one prefetch window: {received} for {sent}"
    );
    assert!(
        mq::drain(&conn, &n.queue).await.is_empty(),
        "nothing left unacked in the queue"
    );
    assert!(
        counter(
            &metrics,
            "tidewatch_broker_reconnects_total",
            &[("component", "source")]
        ) >= 1.0
    );
    assert!(
        counter(
            &metrics,
            "tidewatch_broker_reconnects_total",
            &[("component", "commands")]
        ) >= 1.0
    );
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_broker_connected",
            &[("component", "source")]
        ),
        1.0,
        "resumed by itself"
    );
    // The probe failed while the broker was away and measures again.
    assert!(
        counter(
            &metrics,
            "tidewatch_probe_errors_total",
            &[("target", "backlog")]
        ) >= 1.0
    );
    assert!(
        probed() > probed_at_restart,
        "the probe measures again after the restart"
    );
    // The results reader is back too: a worker's result is counted.
    let last = commands.last().unwrap();
    mq::publish_result_until_applied(&ch, &n.results, last, 42, &metrics).await;
    assert!(
        counter(
            &metrics,
            "tidewatch_broker_reconnects_total",
            &[("component", "results")]
        ) >= 1.0
    );

    stop_run.send(()).unwrap();
    assert!(task.await.unwrap().drained);
    let _ = ch.queue_delete(&side, Default::default()).await;
    n.delete(&ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_decided_while_rabbitmq_is_down_are_published_when_it_is_back() {
    let Some(url) = mq::broker() else { return };
    let _turn = BROKER.lock().await;
    // Mixed brokers: signals on Kafka (the mock cluster), commands on RabbitMQ.
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let topic = format!("signals-{}", mq::suffix());
    mock.create_topic(&topic, 1, 1).unwrap();
    // the mock has no admin API: the state topic is made here
    mock.create_topic("tidewatch.state", 1, 1).unwrap();
    let n = Names::new();
    let toml = format!(
        r#"
[source]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topics = ["{topic}"], group_id = "g-{}" }}

[commands]
kind = "amqp"
amqp = {{ url = "{url}", exchange = "{}", results_exchange = "{}", queue = "{}" }}
{TARGET}"#,
        mq::suffix(),
        n.commands,
        n.results,
        n.workers
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = mq::load(dir.path(), &toml, POLICY);
    let metrics = Arc::new(Metrics::new());
    let (stop_run, task) = common::start_run(cfg, metrics.clone());
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let send = |depth: u32| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key("web").payload(&signal(depth)),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    };
    send(300).await;
    let conn = mq::connect(&url).await;
    let first = commands_until(&conn, &n.workers, 3).await;
    assert_eq!(first.last().unwrap().desired_replicas, 3);
    drop(conn);

    mq::rabbitmqctl(&["stop_app"]).await;
    // Decided while the broker is away: 42, then 45 (the latest wins).
    send(4200).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while counter(&metrics, "tidewatch_commands_issued_total", &[]) < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine decided during the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send(4500).await;
    while counter(&metrics, "tidewatch_commands_issued_total", &[]) < 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine decided during the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    mq::rabbitmqctl(&["start_app"]).await;
    mq::rabbitmqctl(&["await_startup"]).await;

    let conn = mq::connect(&url).await;
    let after = commands_until(&conn, &n.workers, 45).await;
    let last = after
        .last()
        .expect("the latest command arrives after the restart");
    assert_eq!(last.desired_replicas, 45);
    assert!(
        after.iter().all(|c| c.generation <= last.generation),
        "nothing older after the latest: {:?}",
        after
            .iter()
            .map(|c| (c.desired_replicas, c.generation))
            .collect::<Vec<_>>()
    );
    assert!(counter(&metrics, "tidewatch_command_publish_failures_total", &[]) >= 1.0);
    stop_run.send(()).unwrap();
    assert!(task.await.unwrap().drained);
    n.delete(&conn.create_channel().await.unwrap()).await;
}

const STATEFUL: &str = r#"return { decide = function(ctx)
  ctx.state.calls = (ctx.state.calls or 0) + 1
  local f = ctx.forecast("queue_depth", 600)
  local d = ctx.window("queue_depth", "5s")
  if not d then return nil end
  local fc = f and f.source or "none"
  return { replicas = math.ceil(d.max / 100), reason = "fc " .. fc .. " calls " .. ctx.state.calls }
end }"#;

fn calls_in(reason: &str) -> u64 {
    let at = reason.find("calls ").expect("calls in the reason") + 6;
    reason[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// RabbitMQ keeps no history for anyone: with `state.dir` the scaler does.
/// A scaler holds a scale-down by stabilization and stops; RabbitMQ
/// restarts; a new scaler on the same directory holds it too, forecasts
/// with the model learnt before either ran, and the policy's count goes
/// on. Without the directory, the new scaler would scale down at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_dir_keeps_guard_forecasts_and_policy_state_across_restarts() {
    let Some(url) = mq::broker() else { return };
    let _turn = BROKER.lock().await;
    let n = Names::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let toml = format!(
        r#"{}
[engine]
min_eval_interval = "0s"
drain_timeout = "30s"

[state]
dir = "{}"
interval = "1h"

[[targets]]
name = "web"
policy = "p.lua"
provider = "exec"
max_replicas = 1000
windows = ["5s"]
stabilization_down = "300s"
"#,
        n.toml(&url),
        state.display()
    );
    let cfg = mq::load(dir.path(), &toml, STATEFUL);
    // days of history and a fitted daily model, from before the first run
    let seed = common::state::seasonal_snapshot(&cfg, "web", chrono::Utc::now().timestamp_millis());
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("web.tws"), seed).unwrap();

    let restored = |m: &Metrics| {
        counter(
            m,
            "tidewatch_state_restores_total",
            &[("target", "web"), ("outcome", "restored")],
        )
    };
    let held = |m: &Metrics| {
        counter(
            m,
            "tidewatch_decision_holds_total",
            &[("target", "web"), ("reason", "stabilization")],
        )
    };
    let wait = |what: &'static str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let m1 = Arc::new(Metrics::new());
    let (stop1, task1) = common::start_run(cfg.clone(), m1.clone());
    let conn = mq::connect(&url).await;
    mq::wait_for_queue(&conn, &n.queue).await;
    let ch = mq::confirm_channel(&conn).await;
    assert_eq!(restored(&m1), 1.0, "the seed");
    mq::publish(&ch, &n.signals, "queue_depth.web", signal(3000).as_bytes())
        .await
        .unwrap();
    let up = commands_until(&conn, &n.workers, 30).await.pop().unwrap();
    assert!(up.reason.contains("fc holt_winters"), "{}", up.reason);
    let calls_before = calls_in(&up.reason);
    for _ in 0..60 {
        mq::publish(&ch, &n.signals, "queue_depth.web", signal(1000).as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::block_in_place(|| wait("the scale-down held", &|| held(&m1) > 0.0));
    stop1.send(()).unwrap();
    assert!(task1.await.unwrap().drained);
    drop(ch);
    drop(conn);

    restart_broker(Duration::from_secs(1)).await;

    let m2 = Arc::new(Metrics::new());
    let (stop2, task2) = common::start_run(cfg, m2.clone());
    let conn = mq::connect(&url).await;
    mq::wait_for_queue(&conn, &n.queue).await;
    let ch = mq::confirm_channel(&conn).await;
    assert_eq!(restored(&m2), 1.0, "the first scaler's last snapshot");
    for _ in 0..20 {
        mq::publish(&ch, &n.signals, "queue_depth.web", signal(1000).as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::block_in_place(|| {
        wait("the new scaler to hold the scale-down", &|| held(&m2) > 0.0)
    });
    mq::publish(&ch, &n.signals, "queue_depth.web", signal(4000).as_bytes())
        .await
        .unwrap();
    let after = commands_until(&conn, &n.workers, 40).await;
    assert!(
        after.iter().all(|c| c.desired_replicas != 10),
        "a scale-down the stabilization held: {:?}",
        after.iter().map(|c| c.desired_replicas).collect::<Vec<_>>()
    );
    let last = after.last().unwrap();
    assert!(last.generation > up.generation, "generations keep rising");
    assert!(last.reason.contains("fc holt_winters"), "{}", last.reason);
    assert!(
        calls_in(&last.reason) > calls_before + 10,
        "{} then {}",
        up.reason,
        last.reason
    );
    stop2.send(()).unwrap();
    assert!(task2.await.unwrap().drained);
    n.delete(&ch).await;
}

/// tidewatch's own forecasts on RabbitMQ: with `[forecasts] publish`, the
/// model restored from a snapshot (a daily season learnt over three days)
/// goes out as `forecast` messages (the schema other systems publish to
/// tidewatch) on its own exchange, a point a minute for ten minutes,
/// source `tidewatch`, keyed `forecast.<target>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_forecasts_are_published_on_rabbitmq() {
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let exchange = format!("fc-{}", mq::suffix());
    let toml = format!(
        "{}{}",
        n.toml(&url),
        common::state::forecasting_toml(&state, &format!("exchange = \"{exchange}\""), "10m")
    );
    let cfg = mq::load(dir.path(), &toml, common::state::STATEFUL);
    common::state::seed_web(&cfg, &state);
    // a queue on the forecasts exchange before the scaler publishes
    let conn = mq::connect(&url).await;
    let ch = mq::confirm_channel(&conn).await;
    let queue = format!("fcq-{}", mq::suffix());
    mq::exchange_and_queue(&ch, &exchange, &queue).await;
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    let got = mq::read_until(&conn, &queue, Duration::from_secs(30), |g| !g.is_empty()).await;
    assert!(!got.is_empty(), "no forecast published");
    let g = &got[0];
    assert_eq!(g.routing_key, "forecast.web");
    common::state::check_published_forecast(&g.body, 10);
    // counted once the broker has confirmed the publish, which can come
    // after a consumer already has the message
    common::wait_for(
        "the published forecast to be counted",
        Duration::from_secs(10),
        || {
            common::metric(
                &metrics,
                "tidewatch_forecasts_published_total",
                &[("target", "web")],
            ) >= 1.0
        },
    )
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let _ = ch.exchange_delete(&exchange, Default::default()).await;
    let _ = ch.queue_delete(&queue, Default::default()).await;
    n.delete(&ch).await;
}
