//! Scale-out: two scalers in one consumer group split the targets by
//! partition; when one stops, the other takes its targets over, rebuilding
//! their windows from the partition before deciding, so it issues no
//! wrong command.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureRecord;
use tidewatch::command::ScaleCommand;
use tidewatch::config::Config;
use tidewatch::telemetry::Metrics;

// The highest depth of the last minute decides: a target that forgot its
// window would scale down at once.
const POLICY: &str = r#"return { decide = function(ctx)
  local d = ctx.window("queue_depth", "60s")
  if not d then return nil end
  return { replicas = math.ceil(d.max / 100), reason = "max " .. d.max }
end }"#;

fn scaler(
    cfg: Config,
) -> (
    Arc<Metrics>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<tidewatch::scaler::RunReport>,
) {
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    (metrics, stop, task)
}

fn issued(m: &Metrics, target: &str) -> u64 {
    ["up", "down"]
        .iter()
        .map(|d| {
            tidewatch::telemetry::sum(
                m,
                "tidewatch_commands_issued_total",
                &[("target", target), ("direction", d)],
            ) as u64
        })
        .sum()
}

async fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scalers_split_targets_and_take_over_cleanly() {
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    mock.create_topic("signals", 2, 1).unwrap();
    for t in ["commands", "results", "tidewatch.deadletter"] {
        mock.create_topic(t, 1, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.lua"), POLICY).unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        format!(
            r#"
[source]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topics = ["signals"], group_id = "scalers", options = {{ "session.timeout.ms" = "6000" }} }}
[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "commands", results_topic = "results" }}
[engine]
min_eval_interval = "0s"
drain_timeout = "20s"
[[targets]]
name = "a"
policy = "p.lua"
max_replicas = 100
stabilization_down = "0s"
[[targets]]
name = "b"
policy = "p.lua"
max_replicas = 100
stabilization_down = "0s"
"#
        ),
    )
    .unwrap();
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    let (m1, stop1, task1) = scaler(cfg.clone());
    let (m2, stop2, task2) = scaler(cfg);
    wait_for(
        "each scaler to own one partition",
        Duration::from_secs(60),
        || m1.assigned_partitions() == 1 && m2.assigned_partitions() == 1,
    )
    .await;

    let producer = common::kafka::producer(&brokers);
    let send = |target: &'static str, partition: i32, depth: u32| {
        let p = producer.clone();
        async move {
            let body = format!(
                r#"{{"type":"queue_depth","target":"{target}","queue":"q","depth":{depth}}}"#
            );
            p.send(
                FutureRecord::to("signals")
                    .partition(partition)
                    .key(target)
                    .payload(&body),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        }
    };
    // a: a spike to 3000, then a steady 1000; b: a steady 500.
    send("a", 0, 3000).await;
    for _ in 0..10 {
        send("a", 0, 1000).await;
        send("b", 1, 500).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("commands for both targets", Duration::from_secs(30), || {
        issued(&m1, "a") + issued(&m2, "a") > 0 && issued(&m1, "b") + issued(&m2, "b") > 0
    })
    .await;
    // Each target is commanded by exactly one scaler.
    for t in ["a", "b"] {
        assert!(
            (issued(&m1, t) > 0) ^ (issued(&m2, t) > 0),
            "target {t} commanded by both or neither"
        );
    }
    let (owner_of_a, m_owner, stop_owner, task_owner, other_metrics, stop_other, task_other) =
        if issued(&m1, "a") > 0 {
            ("first", m1.clone(), stop1, task1, m2.clone(), stop2, task2)
        } else {
            ("second", m2.clone(), stop2, task2, m1.clone(), stop1, task1)
        };
    assert_eq!(issued(&other_metrics, "a"), 0);
    eprintln!("the {owner_of_a} scaler owns a; stopping it");

    stop_owner.send(()).unwrap();
    assert!(task_owner.await.unwrap().drained);
    // Every command of a so far came from the stopped owner (all published:
    // it drained); the reader skips those.
    let before = issued(&m_owner, "a") as usize;
    wait_for(
        "the other scaler to own both partitions",
        Duration::from_secs(60),
        || other_metrics.assigned_partitions() == 2,
    )
    .await;
    // Steady signals keep coming; a spike of 4000 then proves the new owner
    // is live for a.
    for _ in 0..10 {
        send("a", 0, 1000).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send("a", 0, 4000).await;
    let commands = common::kafka::reader(&brokers, "commands");
    let mut skipped = 0;
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "no command for a after the spike; saw {after:?}"
        );
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), commands.recv()).await else {
            continue;
        };
        let c: ScaleCommand = serde_json::from_slice(m.payload().unwrap()).unwrap();
        if c.target != "a" {
            continue;
        }
        if skipped < before {
            skipped += 1;
            continue;
        }
        after.push(c.desired_replicas);
        if c.desired_replicas == 40 {
            break;
        }
    }
    // Before the spike, only what the rebuilt window says (max 3000 -> 30):
    // never the 10 that a forgotten window would give.
    assert!(
        after[..after.len() - 1].iter().all(|&d| d == 30),
        "wrong commands after takeover: {after:?}"
    );
    stop_other.send(()).unwrap();
    let report = task_other.await.unwrap();
    assert!(report.drained);
}
