//! `tidewatch run` end to end on librdkafka's mock cluster (in process, no
//! setup): signal -> command, dead letters, results, and a broker taken
//! down and brought back mid-stream with every signal and command counted.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tidewatch::command::ScaleCommand;
use tidewatch::config::Config;
use tidewatch::event::DeadLetter;
use tidewatch::telemetry::Metrics;

const POLICY: &str = r#"return { decide = function(ctx)
  local d = ctx.window("queue_depth", "10s")
  if not d then return nil end
  return { replicas = math.ceil(d.last / 100), reason = "last " .. d.last }
end }"#;

struct Stack {
    _dir: tempfile::TempDir,
    cfg: Config,
    brokers: String,
    suffix: String,
}

fn stack(mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>) -> Stack {
    let suffix = uuid::Uuid::now_v7().simple().to_string()[24..].to_owned();
    let brokers = mock.bootstrap_servers();
    for (t, parts) in [
        ("signals", 3),
        ("commands", 1),
        ("results", 1),
        ("deadletter", 1),
        ("state", 1),
    ] {
        mock.create_topic(&format!("{t}-{suffix}"), parts, 1)
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.lua"), POLICY).unwrap();
    let toml = format!(
        r#"
[source]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topics = ["signals-{suffix}"], group_id = "scaler-{suffix}", deadletter_topic = "deadletter-{suffix}" }}

[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "commands-{suffix}", results_topic = "results-{suffix}" }}

[engine]
min_eval_interval = "0s"
drain_timeout = "20s"

[[targets]]
name = "web"
policy = "p.lua"
provider = "exec"
max_replicas = 1000
stabilization_down = "0s"

[state]
topic = "state-{suffix}"
"#
    );
    std::fs::write(dir.path().join("c.toml"), toml).unwrap();
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    Stack {
        _dir: dir,
        cfg,
        brokers,
        suffix,
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap()
}

fn consumer(brokers: &str, topic: &str) -> StreamConsumer {
    common::kafka::reader(brokers, topic)
}

async fn send(p: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    p.send(
        FutureRecord::to(topic).key(key).payload(payload),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
}

fn counter(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::metric(m, name, labels)
}

fn depth(v: u64) -> Vec<u8> {
    format!(r#"{{"type":"queue_depth","target":"web","queue":"q","depth":{v}}}"#).into_bytes()
}

/// The next command; transport errors while a broker is down are skipped.
async fn next_command(c: &StreamConsumer, within: Duration) -> ScaleCommand {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.recv())
            .await
            .expect("a command in time")
        {
            Ok(m) => return common::schema::parse("scale_command", m.payload().unwrap()),
            Err(e) => eprintln!("reader: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_to_command_dead_letters_and_results() {
    let mock = MockCluster::new(1).unwrap();
    let s = stack(&mock);
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(s.cfg.clone(), metrics.clone());
    let p = producer(&s.brokers);
    let commands = consumer(&s.brokers, &format!("commands-{}", s.suffix));
    let deadletters = consumer(&s.brokers, &format!("deadletter-{}", s.suffix));
    let signals = format!("signals-{}", s.suffix);

    send(&p, &signals, "web", &depth(730)).await;
    let c = next_command(&commands, Duration::from_secs(60)).await;
    assert_eq!(
        (c.target.as_str(), c.desired_replicas, c.provider.as_str()),
        ("web", 8, "exec")
    );
    assert_eq!(c.version, 1);
    // a run turns the process's transparent huge pages off
    // (priority::without_huge_pages; nothing else in this binary does)
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        assert!(tidewatch::priority::huge_pages_off());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.contains("THP_enabled:\t0"), "{status}");
    }

    // A poison message: dead-lettered with its bytes and reason, and the
    // partition moves on to the next signal.
    send(&p, &signals, "web", b"\xff not json").await;
    send(&p, &signals, "web", &depth(1200)).await;
    let dl = tokio::time::timeout(Duration::from_secs(30), deadletters.recv())
        .await
        .unwrap()
        .unwrap();
    let dl: DeadLetter = common::schema::parse("deadletter", dl.payload().unwrap());
    assert_eq!(dl.reason, "malformed_json");
    assert_eq!(dl.topic, signals);
    assert_eq!(dl.key.as_deref(), Some("web"));
    assert!(dl.payload_base64.is_some() && dl.offset.is_some());
    let c2 = next_command(&commands, Duration::from_secs(30)).await;
    assert_eq!(c2.desired_replicas, 12);
    assert!(c2.generation > c.generation);

    // A worker's result sets the replica count the policy sees.
    let result = serde_json::json!({"version": 1, "command_id": c2.id, "target": "web", "generation": c2.generation,
        "status": "applied", "observed_replicas": 11, "error": null, "worker": "w1", "finished_at": "x"});
    // The results reader starts from the end: send until it has joined
    // and the engine has applied the result.
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter(
        &metrics,
        "tidewatch_target_observed_replicas",
        &[("target", "web")],
    ) != 11.0
    {
        assert!(Instant::now() < deadline, "the result was never applied");
        send(
            &p,
            &format!("results-{}", s.suffix),
            "web",
            result.to_string().as_bytes(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        counter(
            &metrics,
            "tidewatch_results_received_total",
            &[("status", "applied")]
        ) >= 1.0
    );
    // The policy still wants 12 for a depth of 1200: the next command
    // starts from the 11 the worker observed (a tick may already have
    // issued it; the signal makes sure one is issued).
    send(&p, &signals, "web", &depth(1200)).await;
    let c3 = next_command(&commands, Duration::from_secs(30)).await;
    assert_eq!(
        (c3.current_replicas, c3.desired_replicas),
        (11, 12),
        "observed replicas from the result"
    );
    stop.send(()).unwrap();
    let report = task.await.unwrap();
    assert!(report.drained);
    assert_eq!(report.targets[0].replicas, 12);
    assert_eq!(
        report.targets[0].published_generation, c3.generation,
        "the broker acknowledged the last command"
    );
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_dead_letters_total",
            &[("reason", "malformed_json")]
        ),
        1.0
    );
}

/// A broker taken down and brought back mid-stream: no signal and no
/// command lost. Each signal raises the depth, so each evaluation issues a
/// command; every issued command must arrive, in generation order, and the
/// last must carry the last depth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_nothing() {
    let mock = MockCluster::new(1).unwrap();
    let s = stack(&mock);
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(s.cfg.clone(), metrics.clone());
    let p = producer(&s.brokers);
    let commands = consumer(&s.brokers, &format!("commands-{}", s.suffix));
    let signals = format!("signals-{}", s.suffix);
    // Let the scaler join its group before the stream starts.
    send(&p, &signals, "web", &depth(200)).await;
    assert_eq!(
        next_command(&commands, Duration::from_secs(60))
            .await
            .desired_replicas,
        2
    );

    const N: u64 = 300;
    let mut pending = Vec::new();
    for i in 3..=N {
        if i == 100 {
            mock.broker_down(-1).unwrap();
        }
        if i == 200 {
            mock.broker_up(-1).unwrap();
        }
        let payload = depth(i * 100);
        let record = FutureRecord::to(&signals).key("web").payload(&payload);
        pending.push(p.send_result(record).map_err(|(e, _)| e).unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for d in pending {
        d.await
            .unwrap()
            .expect("the test's own producer delivered every signal");
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.last().map(|c: &ScaleCommand| c.desired_replicas) != Some(N as u32) {
        assert!(
            Instant::now() < deadline,
            "last command not seen; got {:?}",
            seen.last()
        );
        seen.push(next_command(&commands, Duration::from_secs(60)).await);
    }
    stop.send(()).unwrap();
    let report = task.await.unwrap();
    assert!(report.drained);
    // No signal lost: the engine applied all of them (the first, then 3..=N).
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_events_received_total",
            &[("source", "kafka")]
        ),
        (N - 1) as f64
    );
    // No command lost: everything issued was published and read back
    // (the first command was read before the loop).
    let issued = counter(
        &metrics,
        "tidewatch_commands_issued_total",
        &[("target", "web")],
    );
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_commands_published_total",
            &[("target", "web")]
        ),
        issued
    );
    assert_eq!(seen.len() as f64 + 1.0, issued);
    assert!(
        seen.windows(2).all(|w| w[0].generation < w[1].generation),
        "in order"
    );
    assert!(seen
        .windows(2)
        .all(|w| w[0].desired_replicas < w[1].desired_replicas));
    // The outage was real: the publisher had to retry, or the source waited.
    assert!(report.targets[0].published_generation == seen.last().unwrap().generation);
}

/// A broker that is down when the scaler starts: the scaler keeps retrying
/// (librdkafka reconnects; errors are logged with the setting) and works as
/// soon as the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_recovers() {
    let mock = MockCluster::new(1).unwrap();
    let s = stack(&mock);
    mock.broker_down(-1).unwrap();
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(s.cfg.clone(), metrics.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metrics.assigned_partitions(), 0, "no broker, no assignment");
    mock.broker_up(-1).unwrap();
    let p = producer(&s.brokers);
    let commands = consumer(&s.brokers, &format!("commands-{}", s.suffix));
    send(&p, &format!("signals-{}", s.suffix), "web", &depth(450)).await;
    let c = next_command(&commands, Duration::from_secs(60)).await;
    assert_eq!(c.desired_replicas, 5);
    stop.send(()).unwrap();
    assert!(task.await.unwrap().drained);
}

/// The lag probe against a broker: a consumer group has committed part of
/// a topic; the probe feeds the rest as the target's queue depth, and the
/// scaler commands replicas for it with no publisher of the user's own.
/// Its state survives a restart (a Kafka source, a state topic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_probe_feeds_queue_depth() {
    use rdkafka::consumer::{BaseConsumer, CommitMode};
    use rdkafka::{Offset, TopicPartitionList};
    let mock = MockCluster::new(1).unwrap();
    let s = stack(&mock);
    let orders = format!("orders-{}", s.suffix);
    mock.create_topic(&orders, 2, 1).unwrap();
    let p = producer(&s.brokers);
    for i in 0..700 {
        let payload = format!("order {i}");
        p.send(
            FutureRecord::to(&orders)
                .partition(i % 2)
                .key("k")
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    // The workers' group has done 100 of partition 0 and nothing of partition 1.
    let group = format!("workers-{}", s.suffix);
    let workers: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut done = TopicPartitionList::new();
    done.add_partition_offset(&orders, 0, Offset::Offset(100))
        .unwrap();
    workers.commit(&done, CommitMode::Sync).unwrap();

    let mut cfg = s.cfg.clone();
    cfg.probes.push(
        serde_json::from_value(serde_json::json!({
            "kind": "kafka_lag", "target": "web", "topic": orders, "group": group,
            "interval": "500ms", "no_offset": "earliest"
        }))
        .unwrap(),
    );
    // Lag: partition 0 350 - 100 = 250, partition 1 (no offset, earliest) 350.
    let settings = cfg.source.kafka.as_ref().unwrap().client_settings();
    let probe_cfg = cfg.probes[0].clone();
    let lag = tokio::task::spawn_blocking(move || {
        let probe = tidewatch::source::probe::KafkaLagProbe::new(&probe_cfg, settings).unwrap();
        probe.measure_now()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(lag, 600);
    // no worker answers here: an unanswered command is re-issued after 8 s
    cfg.engine.reissue_after = Duration::from_secs(8);
    // the probe-fed target is decided where its home partition is: the
    // restarted scaler's assignment waits for the mock cluster to drop
    // the first scaler from the group, which takes a session timeout
    // there (45 s by default; tansu takes the leave at once)
    cfg.source
        .kafka
        .as_mut()
        .unwrap()
        .options
        .insert("session.timeout.ms".into(), "6000".into());
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg.clone(), metrics.clone());
    let commands = consumer(&s.brokers, &format!("commands-{}", s.suffix));
    let c = next_command(&commands, Duration::from_secs(60)).await;
    assert_eq!(c.desired_replicas, 6, "ceil(600 / 100)");
    assert!(
        tidewatch::telemetry::sum(
            &metrics,
            "tidewatch_events_received_total",
            &[("source", "probe"), ("type", "queue_depth")],
        ) >= 1.0
    );
    stop.send(()).unwrap();
    assert!(task.await.unwrap().drained);
    // the last command it sent (a re-issue if it was slow to stop)
    let mut last = c;
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), commands.recv()).await {
        last = common::schema::parse("scale_command", m.payload().unwrap());
    }

    // A restart: the target has no partition (its probe feeds it), so its
    // state is written by the scaler whose probe measures it, and taken
    // back at start. The restarted scaler knows its command went
    // unanswered and re-issues it; a cold one would command 6 afresh.
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    let again = next_command(&commands, Duration::from_secs(60)).await;
    assert_eq!(again.desired_replicas, 6, "{again:?}");
    assert!(
        again.generation > last.generation,
        "{again:?} after {last:?}"
    );
    assert!(
        again.reason.contains("re-issued") && again.reason.contains(&last.generation.to_string()),
        "{}",
        again.reason
    );
    // at start (its probe may measure before the first assignment); the
    // assignment's restore takes it again only if the probe had not yet
    assert!(
        tidewatch::telemetry::sum(
            &metrics,
            "tidewatch_state_restores_total",
            &[("target", "web"), ("outcome", "restored")],
        ) >= 1.0
    );
    stop.send(()).unwrap();
    assert!(task.await.unwrap().drained);
}

/// Issue 16, finding 3: a malformed message of about 1 MB made a dead
/// letter of about 2 MB (JSON escaping doubles it), which the producer
/// refused with MessageSizeTooLarge and retried for ever: the partition
/// stalled, across restarts. Now the dead letter carries the first 64 KiB
/// and where the original is, and the partition goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_poison_message_does_not_stall_the_partition() {
    let mock = MockCluster::new(1).unwrap();
    let s = stack(&mock);
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(s.cfg.clone(), metrics.clone());
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    let commands = consumer(&s.brokers, &format!("commands-{}", s.suffix));
    let deadletters = consumer(&s.brokers, &format!("deadletter-{}", s.suffix));
    let signals = format!("signals-{}", s.suffix);
    let poison = format!("[{}", "\"".repeat(1_000_000));
    send(&p, &signals, "web", poison.as_bytes()).await;
    send(&p, &signals, "web", &depth(730)).await;
    let c = next_command(&commands, Duration::from_secs(60)).await;
    assert_eq!(
        c.desired_replicas, 8,
        "the signal after the poison was applied"
    );
    let dl = tokio::time::timeout(Duration::from_secs(30), deadletters.recv())
        .await
        .unwrap()
        .unwrap();
    let raw = dl.payload().unwrap();
    assert!(raw.len() < 200_000, "{} bytes", raw.len());
    let dl: DeadLetter = common::schema::parse("deadletter", raw);
    assert_eq!(dl.reason, "malformed_json");
    assert_eq!(dl.payload_truncated_from, Some(poison.len()));
    assert!(dl.offset.is_some());
    stop.send(()).unwrap();
    assert!(task.await.unwrap().drained);
}

/// Issue 16, finding 4: a broker that lost the idempotent producer's state
/// (tansu restarted with empty storage answered `UnknownProducerId`, then
/// every record of that producer timed out) and no command was published
/// again. Here the mock broker answers the next produce requests with
/// `UnknownProducerId` and `OutOfOrderSequenceNumber`, which put an
/// idempotent producer in a state it cannot leave; the publisher replaces
/// it, and the commands flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_cannot_recover_is_replaced() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    let s = stack(&mock);
    // Commands on the tick only, so that the test's own signal is sent
    // before the errors are armed and the scaler's command meets them.
    let mut cfg = s.cfg.clone();
    cfg.engine.evaluate_on_event = false;
    cfg.engine.tick = Duration::from_secs(2);
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    let p = producer(&s.brokers);
    let commands = consumer(&s.brokers, &format!("commands-{}", s.suffix));
    let signals = format!("signals-{}", s.suffix);
    send(&p, &signals, "web", &depth(730)).await;
    assert_eq!(
        next_command(&commands, Duration::from_secs(60))
            .await
            .desired_replicas,
        8
    );
    send(&p, &signals, "web", &depth(1800)).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
        ],
    );
    let c = next_command(&commands, Duration::from_secs(120)).await;
    assert_eq!(c.desired_replicas, 18, "the commands flow again");
    assert!(
        counter(
            &metrics,
            "tidewatch_command_publish_failures_total",
            &[("target", "web")]
        ) >= 1.0,
        "the injected errors were met"
    );
    stop.send(()).unwrap();
    let report = task.await.unwrap();
    assert!(report.drained);
}

/// tidewatch's own forecasts on Kafka (the mock cluster): the model
/// restored from a snapshot goes out as `forecast` messages on the
/// forecasts topic, keyed by target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_forecasts_are_published_on_kafka() {
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    for t in ["signals", "commands", "results", "forecasts"] {
        mock.create_topic(t, 1, 1).unwrap();
    }
    common::state::forecasts_reach_kafka(
        &brokers,
        ["signals", "commands", "results", "forecasts"],
        "tidewatch",
        Duration::from_secs(60),
    )
    .await;
}

/// Issue 21: the targets split over two engine shards. One message holds
/// signals for every target (so for both shards) and a bad element: each
/// target gets its own command, the bad element is dead-lettered once
/// with its index, the status list keeps the configuration's order, and
/// after a restart every target's state comes back from the store into
/// its shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_split_the_targets_and_each_keeps_its_own() {
    let mock = MockCluster::new(1).unwrap();
    let s = stack(&mock);
    let names: Vec<String> = (0..8).map(|i| format!("svc{i}")).collect();
    let mut cfg = s.cfg.clone();
    cfg.engine.shards = 2;
    let web = cfg.targets[0].clone();
    cfg.targets = names
        .iter()
        .map(|n| tidewatch::engine::TargetConfig {
            name: n.clone(),
            ..web.clone()
        })
        .collect();
    let on = |k: usize| {
        names
            .iter()
            .filter(|n| tidewatch::engine::shards::shard_of(n, 2) == k)
            .count()
    };
    assert!(on(0) > 0 && on(1) > 0, "the names land on both shards");

    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg.clone(), metrics.clone());
    let p = producer(&s.brokers);
    let commands = consumer(&s.brokers, &format!("commands-{}", s.suffix));
    let deadletters = consumer(&s.brokers, &format!("deadletter-{}", s.suffix));
    let signals = format!("signals-{}", s.suffix);
    // target i at depth (i + 1) * 100 + 50: i + 2 replicas; element 3 is bad
    let mut batch: Vec<serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::json!({"type": "queue_depth", "target": n, "queue": "q",
                "depth": (i as u64 + 1) * 100 + 50})
        })
        .collect();
    batch.insert(
        3,
        serde_json::json!({"type": "queue_depth", "target": "svc1", "depth": -5}),
    );
    send(
        &p,
        &signals,
        "mixed",
        serde_json::Value::Array(batch).to_string().as_bytes(),
    )
    .await;

    let mut seen = std::collections::HashMap::new();
    while seen.len() < names.len() {
        let c = next_command(&commands, Duration::from_secs(60)).await;
        seen.insert(c.target.clone(), c.desired_replicas);
    }
    for (i, n) in names.iter().enumerate() {
        assert_eq!(seen[n], i as u32 + 2, "{n}");
    }
    let dl = tokio::time::timeout(Duration::from_secs(30), deadletters.recv())
        .await
        .unwrap()
        .unwrap();
    let dl: DeadLetter = common::schema::parse("deadletter", dl.payload().unwrap());
    assert_eq!(dl.rejections.len(), 1, "{dl:?}");
    assert_eq!(dl.rejections[0].index, 3, "{dl:?}");
    assert!(dl.rejections[0].detail.contains("-5"), "{dl:?}");
    stop.send(()).unwrap();
    let report = task.await.unwrap();
    assert!(report.drained);
    let listed: Vec<&str> = report.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(listed, names.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, t) in report.targets.iter().enumerate() {
        assert_eq!(t.replicas, i as u32 + 2, "{}", t.name);
    }
    let rejected = counter(
        &metrics,
        "tidewatch_events_rejected_total",
        &[("reason", dl.rejections[0].reason.as_str())],
    );
    assert_eq!(rejected, 1.0, "counted once, by one shard");

    // A restart: each target's snapshot goes back into its own shard.
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    common::wait_for("every target restored", Duration::from_secs(60), || {
        names.iter().all(|n| {
            counter(
                &metrics,
                "tidewatch_state_restores_total",
                &[("target", n), ("outcome", "restored")],
            ) == 1.0
        })
    })
    .await;
    stop.send(()).unwrap();
    let report = task.await.unwrap();
    for (i, t) in report.targets.iter().enumerate() {
        assert_eq!(t.replicas, i as u32 + 2, "{} restored", t.name);
    }
}

/// The state topic is read within its budget (issue 21): a topic whose
/// snapshots come to more than the budget is read twice, the second time
/// handing out each part as it fills, and the two ways give the same
/// latest snapshot of each wanted target: older versions, tombstones and
/// unwanted targets left out, on every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_topic_is_read_in_parts_within_its_budget() {
    use tidewatch::state::StateStore;
    let mock = MockCluster::new(1).unwrap();
    let topic = format!("state-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    mock.create_topic(&topic, 3, 1).unwrap();
    let settings = common::kafka::settings(&mock.bootstrap_servers());
    let checked = tokio::task::spawn_blocking(move || {
        let mut store = tidewatch::state::kafka::KafkaStore::open(&settings, &topic).unwrap();
        let bytes = |name: &str, v: usize| format!("{name} v{v} {}", "x".repeat(1000)).into_bytes();
        let names: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
        for v in 0..3 {
            for n in &names {
                store.write(n, &bytes(n, v)).unwrap();
            }
        }
        // forgotten: a tombstone after its versions
        store.write("t3", b"").unwrap();
        store.write("t7", b"").unwrap();
        store.flush().unwrap();
        let mut wanted: Vec<String> = names.iter().filter(|n| *n != "t39").cloned().collect();
        wanted.push("never-stored".into());
        let mut expected: Vec<(String, Vec<u8>)> = wanted
            .iter()
            .filter(|n| !["t3", "t7", "never-stored"].contains(&n.as_str()))
            .map(|n| (n.clone(), bytes(n, 2)))
            .collect();
        expected.sort();
        assert_eq!(expected.len(), 37);

        let read_with = |store: &mut tidewatch::state::kafka::KafkaStore| {
            let mut got = Vec::new();
            let mut sizes = Vec::new();
            store
                .read_parts(&wanted, 7, &mut |p| {
                    sizes.push(p.len());
                    got.extend(p);
                    true
                })
                .unwrap();
            got.sort();
            (got, sizes, store.passes())
        };
        // within the budget: one pass
        let (got, sizes, passes) = read_with(&mut store);
        assert_eq!(passes, 1);
        assert!(sizes.iter().all(|&s| (1..=7).contains(&s)), "{sizes:?}");
        assert_eq!(
            common::state::heads(&got),
            common::state::heads(&expected),
            "one pass"
        );
        // past it (10 snapshots' worth): two
        let mut store = store.with_read_budget(10_000);
        let (got, sizes, passes) = read_with(&mut store);
        assert_eq!(passes, 2);
        assert!(sizes.iter().all(|&s| (1..=7).contains(&s)), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 37, "{sizes:?}");
        assert_eq!(
            common::state::heads(&got),
            common::state::heads(&expected),
            "two passes"
        );
        // a sink that has had enough ends the read after its part
        let mut parts = 0;
        store
            .read_parts(&wanted, 7, &mut |_| {
                parts += 1;
                false
            })
            .unwrap();
        assert_eq!(parts, 1);
        // `read` (a reload's few targets) gives the same
        let mut all = store.read(&wanted).unwrap();
        all.sort();
        assert_eq!(
            common::state::heads(&all),
            common::state::heads(&expected),
            "read"
        );
        true
    })
    .await
    .unwrap();
    assert!(checked);
}
