//! Scale-out: two scalers in one consumer group split the targets by
//! partition; when one stops, the other takes its targets over, rebuilding
//! their windows from the partition before deciding, so it issues no
//! wrong command.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
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

/// How long a scaler may take to stop: its drain_timeout (20 s) and more.
const STOP_WITHIN: Duration = Duration::from_secs(60);

/// A mock cluster with the scalers' topics: two signal partitions. It has
/// no admin API, so the state topic is made here too.
fn mock_cluster() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("signals", 2, 1).unwrap();
    for t in [
        "commands",
        "results",
        "tidewatch.deadletter",
        "tidewatch.state",
    ] {
        mock.create_topic(t, 1, 1).unwrap();
    }
    let brokers = mock.bootstrap_servers();
    (mock, brokers)
}

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

/// A queue-depth signal for `target` on `topic`'s `partition`, delivered.
async fn send_depth(
    producer: &FutureProducer,
    topic: &str,
    target: &str,
    partition: i32,
    depth: u32,
) {
    let body =
        format!(r#"{{"type":"queue_depth","target":"{target}","queue":"q","depth":{depth}}}"#);
    producer
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(target)
                .payload(&body),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// A scaler configuration on the mock cluster's topics, in `dir`: group
/// "scalers" with a 6 s session and `options` besides, the policy `policy`
/// as p.lua, targets a and b each with `target_extra` lines, and
/// `extra` sections after `[engine]`.
fn two_target_config(
    dir: &std::path::Path,
    brokers: &str,
    policy: &str,
    options: &str,
    target_extra: &str,
    extra: &str,
) -> Config {
    std::fs::write(dir.join("p.lua"), policy).unwrap();
    let targets: String = ["a", "b"]
        .iter()
        .map(|t| {
            format!("[[targets]]\nname = \"{t}\"\npolicy = \"p.lua\"\nmax_replicas = 100\n{target_extra}")
        })
        .collect();
    std::fs::write(
        dir.join("c.toml"),
        format!(
            r#"
[source]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topics = ["signals"], group_id = "scalers", options = {{ "session.timeout.ms" = "6000"{options} }} }}
[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "commands", results_topic = "results" }}
[engine]
min_eval_interval = "0s"
drain_timeout = "20s"
{extra}
{targets}"#
        ),
    )
    .unwrap();
    Config::load(&dir.join("c.toml")).unwrap().0
}

type Stop = tokio::sync::oneshot::Sender<()>;
type Task = tokio::task::JoinHandle<tidewatch::scaler::RunReport>;

/// Two scalers on `cfg`, started together; returns once each owns one of
/// the two signal partitions.
async fn two_scalers(cfg: Config) -> ((Arc<Metrics>, Stop, Task), (Arc<Metrics>, Stop, Task)) {
    let (m1, stop1, task1) = scaler(cfg.clone());
    let (m2, stop2, task2) = scaler(cfg);
    common::wait_for(
        "each scaler to own one partition",
        Duration::from_secs(60),
        || m1.assigned_partitions() == 1 && m2.assigned_partitions() == 1,
    )
    .await;
    ((m1, stop1, task1), (m2, stop2, task2))
}

/// Tells every scaler to stop, then waits for each: each must drain.
async fn stop_all<const N: usize>(scalers: [(&str, Stop, Task); N]) {
    let mut tasks = Vec::new();
    for (who, stop, task) in scalers {
        stop.send(()).unwrap();
        tasks.push((who, task));
    }
    for (who, task) in tasks {
        assert!(common::stopped(who, STOP_WITHIN, task).await.drained);
    }
}

/// Stops the scaler `who` (it must drain), then waits for `other` to own
/// both signal partitions.
async fn stop_then_other_owns_both(who: &str, stop: Stop, task: Task, other: &Metrics) {
    stop_all([(who, stop, task)]).await;
    common::wait_for(
        "the other scaler to own both partitions",
        Duration::from_secs(60),
        || other.assigned_partitions() == 2,
    )
    .await;
}

/// How many of `target`'s restores had `outcome` (restored, cold, ...).
fn restores_of(m: &Metrics, target: &str, outcome: &str) -> f64 {
    tidewatch::telemetry::sum(
        m,
        "tidewatch_state_restores_total",
        &[("target", target), ("outcome", outcome)],
    )
}

/// Snapshots a scaler wrote to the Kafka state store.
fn written(m: &Metrics) -> f64 {
    tidewatch::telemetry::sum(
        m,
        "tidewatch_state_snapshots_total",
        &[("store", "kafka"), ("result", "ok")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scalers_split_targets_and_take_over_cleanly() {
    let (_mock, brokers) = mock_cluster();
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_target_config(
        dir.path(),
        &brokers,
        POLICY,
        "",
        "stabilization_down = \"0s\"\n",
        "",
    );
    let ((m1, stop1, task1), (m2, stop2, task2)) = two_scalers(cfg).await;

    let producer = common::kafka::producer(&brokers);
    let send = |target: &'static str, partition: i32, depth: u32| {
        send_depth(&producer, "signals", target, partition, depth)
    };
    // a: a spike to 3000, then a steady 1000; b: a steady 500.
    send("a", 0, 3000).await;
    for _ in 0..10 {
        send("a", 0, 1000).await;
        send("b", 1, 500).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::wait_for("commands for both targets", Duration::from_secs(30), || {
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

    stop_then_other_owns_both("the owner", stop_owner, task_owner, &other_metrics).await;
    // Every command of a so far came from the stopped owner (all published:
    // it drained); the reader skips those.
    let before = issued(&m_owner, "a") as usize;
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
    stop_all([("the other scaler", stop_other, task_other)]).await;
}

/// When the owner of a target stops, the other scaler continues it with
/// its state: the forecaster (a daily season learnt before either started,
/// from the state topic), the guard (a scale-down held by stabilization
/// stays held) and the policy's `state` (its count goes on). Before this
/// state moved, the new owner commanded 10 at once: its guard had never
/// seen the 30.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_keeps_forecasts_guard_and_policy_state() {
    let (_mock, brokers) = mock_cluster();
    takeover(&brokers, "").await;
}

/// The same takeover on tansu, a real broker (its own topics and group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_on_tansu_keeps_forecasts_guard_and_policy_state() {
    let Some(brokers) = common::kafka::broker() else {
        return;
    };
    let sfx = format!("-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let n = |t: &str| format!("{t}{sfx}");
    common::kafka::create_topics(
        &brokers,
        &[
            (&n("signals"), 2),
            (&n("commands"), 1),
            (&n("results"), 1),
            (&n("tidewatch.deadletter"), 1),
            (&n("tidewatch.state"), 1),
        ],
    )
    .await;
    takeover(&brokers, &sfx).await;
}

/// Two scalers in one group on topics named with `sfx`.
async fn takeover(brokers: &str, sfx: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.lua"), common::state::STATEFUL).unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        format!(
            r#"
[source]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topics = ["signals{sfx}"], group_id = "scalers{sfx}", deadletter_topic = "tidewatch.deadletter{sfx}", options = {{ "session.timeout.ms" = "6000" }} }}
[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "commands{sfx}", results_topic = "results{sfx}" }}
[engine]
min_eval_interval = "0s"
drain_timeout = "20s"
# only the snapshots written when the partitions are revoked count here
[state]
topic = "tidewatch.state{sfx}"
interval = "1h"
[[targets]]
name = "a"
policy = "p.lua"
max_replicas = 100
windows = ["5s"]
stabilization_down = "300s"
[[targets]]
name = "b"
policy = "p.lua"
max_replicas = 100
windows = ["5s"]
[[targets]]
name = "c"
policy = "p.lua"
max_replicas = 100
windows = ["5s"]
stabilization_down = "0s"
history_step = "1h"
"#
        ),
    )
    .unwrap();
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    // a's history and model, from days before either scaler started
    let now = chrono::Utc::now().timestamp_millis();
    let producer = common::kafka::producer(brokers);
    for t in ["a", "c"] {
        let seed = common::state::seasonal_snapshot(&cfg, t, now);
        producer
            .send(
                FutureRecord::to(&format!("tidewatch.state{sfx}"))
                    .key(t)
                    .payload(&seed),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    let ((m1, stop1, task1), (m2, stop2, task2)) = two_scalers(cfg).await;
    let signals = format!("signals{sfx}");
    let send = |target: &'static str, partition: i32, depth: u32| {
        send_depth(&producer, &signals, target, partition, depth)
    };
    let commands = common::kafka::reader(brokers, &format!("commands{sfx}"));
    // The next command for `target`, the signal sent again every second
    // until it comes, as a gateway publishes it, within 90 s in all. Sent
    // once, a signal could decide nothing: while its group forms, tansu
    // moves the partitions several times, a few seconds apart, and one of
    // them was once owned by no scaler for 10 s, longer than the 5 s
    // window, so the signal had left the window when its new owner went
    // live (a CI run waited for a's first command in vain). Commands for
    // the other targets do not extend the wait, and a failure names them.
    let command_for = |target: &'static str, partition: i32, depth: u32| {
        let (commands, send) = (&commands, &send);
        async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(90);
            let mut others = Vec::new();
            let mut sent = 0;
            while tokio::time::Instant::now() < until {
                send(target, partition, depth).await;
                sent += 1;
                let again = tokio::time::Instant::now() + Duration::from_secs(1);
                while let Ok(m) = tokio::time::timeout_at(again.min(until), commands.recv()).await {
                    let m = m.unwrap();
                    let c: ScaleCommand = serde_json::from_slice(m.payload().unwrap()).unwrap();
                    if c.target == target {
                        if sent > 1 {
                            eprintln!("{target}'s command came after {sent} sends of its signal");
                        }
                        return c;
                    }
                    others.push((c.target, c.desired_replicas, c.generation));
                }
            }
            panic!("no command for {target} within 90 s; came instead: {others:?}")
        }
    };
    // c's history takes a point an hour, and the policy asks for the
    // forecast 600 s ahead, read at the hour that falls in: while neither
    // hour turns its forecast stays exactly what its model says, wherever
    // the model runs (comparing only the hour of now failed when a run
    // crossed xx:50)
    let hour = || {
        let now = chrono::Utc::now().timestamp_millis();
        (now / 3_600_000, (now + 600_000) / 3_600_000)
    };
    // a scales to 30, then its depth falls to 1000 for longer than its
    // window: the scale-down to 10 is held by stabilization
    send("b", 1, 500).await;
    let up = command_for("a", 0, 3000).await;
    assert_eq!(up.desired_replicas, 30);
    let calls_before: u64 = common::state::reason_part(&up.reason, "calls ")
        .parse()
        .unwrap();
    eprintln!("a scaled up: {}", up.reason);
    let hour_before = hour();
    let c_before = command_for("c", 0, 2500).await;
    let forecast_before: f64 = common::state::reason_part(&c_before.reason, "fc holt_winters ")
        .parse()
        .unwrap();
    let held = |m: &Metrics| {
        tidewatch::telemetry::sum(
            m,
            "tidewatch_decision_holds_total",
            &[("target", "a"), ("reason", "stabilization")],
        )
    };
    for _ in 0..70 {
        send("a", 0, 1000).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a's owner now: the scaler whose count of held scale-downs rises (a
    // partition may have moved since a's first command)
    let until = Instant::now() + Duration::from_secs(30);
    let first_owns = loop {
        let before = (held(&m1), held(&m2));
        send("a", 0, 1000).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = (held(&m1), held(&m2));
        match (now.0 > before.0, now.1 > before.1) {
            (true, false) => break true,
            (false, true) => break false,
            _ => assert!(
                Instant::now() < until,
                "no one scaler held a's scale-down within 30 s: {before:?} then {now:?}"
            ),
        }
    };
    let (owner, stop_owner, task_owner, m_other, stop_other, task_other) = if first_owns {
        ("first", stop1, task1, m2.clone(), stop2, task2)
    } else {
        ("second", stop2, task2, m1.clone(), stop1, task1)
    };
    eprintln!("the {owner} scaler owns a; stopping it");
    stop_then_other_owns_both("the owner", stop_owner, task_owner, &m_other).await;
    // the seed at the first assignment, then the owner's snapshot at the
    // takeover, whose restore ends after the assignment is counted (a
    // broker may assign more than once meanwhile: each restores again)
    common::wait_for(
        "the owner's snapshot of a restored",
        Duration::from_secs(30),
        || restores_of(&m_other, "a", "restored") >= 2.0,
    )
    .await;
    // the new owner holds the scale-down too ...
    let held_before = held(&m_other);
    for _ in 0..20 {
        send("a", 0, 1000).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::wait_for(
        "the new owner to hold the scale-down",
        Duration::from_secs(30),
        || held(&m_other) > held_before,
    )
    .await;
    // ... and its first command continues the count
    let c = command_for("a", 0, 4000).await;
    assert_eq!(
        c.desired_replicas, 40,
        "the first command after the takeover is the spike's, never 10: {c:?}"
    );
    assert!(c.generation > up.generation);
    let calls_after: u64 = common::state::reason_part(&c.reason, "calls ")
        .parse()
        .unwrap();
    // c's forecast goes on from the model its old owner had
    let c_after = command_for("c", 0, 5500).await;
    let same_hour = hour() == hour_before;
    assert!(c_after.generation > c_before.generation);
    let forecast_after: f64 = common::state::reason_part(&c_after.reason, "fc holt_winters ")
        .parse()
        .unwrap();
    // the same model on the other scaler: the same forecast (printed to
    // three decimals), unless an hour turned meanwhile and it took a point
    if same_hour {
        assert_eq!(forecast_after, forecast_before, "the forecast of c");
    } else {
        eprintln!(
            "an hour turned during the test: c's model took a point or its forecast moved a step"
        );
    }
    assert!(
        calls_after > calls_before + 10,
        "the policy's count went on: {calls_before} then {calls_after}"
    );
    stop_all([("the other scaler", stop_other, task_other)]).await;
}

/// A second scaler joins while the first keeps running: the partition
/// that moves takes its targets' latest state along, written by the first
/// scaler inside the revocation. The periodic snapshots are an hour apart
/// here, so the store otherwise holds only each target's first snapshot
/// (taken at 20 replicas). With the revocation's snapshot the new owner
/// knows the 30 and holds at a load worth 25; from the first snapshot
/// alone it would scale up to 25.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_that_joins_takes_the_latest_state_of_the_partition_it_gets() {
    let (_mock, brokers) = mock_cluster();
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_target_config(
        dir.path(),
        &brokers,
        common::state::STATEFUL,
        "",
        "windows = [\"5s\"]\nstabilization_down = \"300s\"\n",
        "[state]\ninterval = \"1h\"",
    );
    let producer = common::kafka::producer(&brokers);
    let send = |target: &'static str, depth: u32| {
        let partition = if target == "a" { 0 } else { 1 };
        send_depth(&producer, "signals", target, partition, depth)
    };
    // The first scaler alone: both targets to 20 (their first snapshot is
    // taken then), then to 30.
    let (m1, stop1, task1) = scaler(cfg.clone());
    common::wait_for(
        "the first scaler to own both partitions",
        Duration::from_secs(60),
        || m1.assigned_partitions() == 2,
    )
    .await;
    send("a", 2000).await;
    send("b", 2000).await;
    common::wait_for(
        "both at 20 and snapshotted",
        Duration::from_secs(30),
        || issued(&m1, "a") == 1 && issued(&m1, "b") == 1 && written(&m1) >= 2.0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    send("a", 3000).await;
    send("b", 3000).await;
    common::wait_for("both at 30", Duration::from_secs(30), || {
        issued(&m1, "a") == 2 && issued(&m1, "b") == 2
    })
    .await;
    assert_eq!(written(&m1), 2.0, "no periodic snapshot after the first");

    // The second joins: one partition moves to it.
    let (m2, stop2, task2) = scaler(cfg);
    common::wait_for("one partition each", Duration::from_secs(60), || {
        m1.assigned_partitions() == 1 && m2.assigned_partitions() == 1
    })
    .await;
    // A load worth 25 on both for longer than the window, then a spike
    // each: the scaler that commands a target owns it.
    for _ in 0..70 {
        send("a", 2500).await;
        send("b", 2500).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send("a", 4000).await;
    send("b", 5000).await;
    common::wait_for("the spikes' commands", Duration::from_secs(30), || {
        issued(&m1, "a") + issued(&m2, "a") >= 3 && issued(&m1, "b") + issued(&m2, "b") >= 3
    })
    .await;
    let moved = if issued(&m2, "a") > 0 { "a" } else { "b" };
    let commands = common::kafka::reader(&brokers, "commands");
    // the first command of the moved target after its 30 (from the
    // first scaler) must be the spike's
    let mut seen_thirty = false;
    let mut after_join = Vec::new();
    while after_join.is_empty() {
        let m = tokio::time::timeout(Duration::from_secs(30), commands.recv())
            .await
            .expect("the commands")
            .unwrap();
        let c: ScaleCommand = serde_json::from_slice(m.payload().unwrap()).unwrap();
        if c.target != moved {
            continue;
        }
        if seen_thirty {
            after_join.push(c.desired_replicas);
        }
        seen_thirty |= c.desired_replicas == 30;
    }
    assert_eq!(
        after_join,
        vec![if moved == "a" { 40 } else { 50 }],
        "the new owner of {moved} scaled to a load worth 25 it should have held at 30"
    );
    stop_all([
        ("the second scaler", stop2, task2),
        ("the first scaler", stop1, task1),
    ])
    .await;
}

/// With `partition.assignment.strategy = "cooperative-sticky"` (librdkafka's
/// incremental rebalancing, set in `options`), a scaler that joins takes
/// one partition and the first scaler gives up that one only: it
/// snapshots only that partition's target before giving it up, and does
/// not restore again, since the targets of the partition it keeps stay
/// live. With librdkafka's default (eager) strategy the first scaler gives
/// up both partitions (snapshotting both targets), is given one back and
/// restores. `tidewatch_source_partition_moves_total` counts the moves,
/// `tidewatch_state_restore_seconds` the restores: one per assignment
/// with targets to restore, none at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cooperative_rebalancing_a_join_moves_only_the_partition_it_takes() {
    let restores =
        |m: &Metrics| tidewatch::telemetry::sum(m, "tidewatch_state_restore_seconds", &[]);
    let cold = |m: &Metrics, target: &str| restores_of(m, target, "cold");
    let moves = |m: &Metrics, change: &str| {
        tidewatch::telemetry::sum(
            m,
            "tidewatch_source_partition_moves_total",
            &[("change", change)],
        )
    };
    for strategy in ["cooperative-sticky", "range,roundrobin"] {
        let cooperative = strategy == "cooperative-sticky";
        let (_mock, brokers) = mock_cluster();
        let dir = tempfile::tempdir().unwrap();
        // only the first snapshots and those of the revocation count here
        let cfg = two_target_config(
            dir.path(),
            &brokers,
            POLICY,
            &format!(", \"partition.assignment.strategy\" = \"{strategy}\""),
            "",
            "[state]\ntopic = \"tidewatch.state\"\ninterval = \"1h\"",
        );
        // the first scaler alone: a on partition 0, b on 1, each
        // commanded and snapshotted once
        let (m1, stop1, task1) = scaler(cfg.clone());
        common::wait_for(
            "the first scaler to own both partitions",
            Duration::from_secs(60),
            || m1.assigned_partitions() == 2,
        )
        .await;
        assert_eq!((moves(&m1, "assigned"), moves(&m1, "revoked")), (2.0, 0.0));
        let producer = common::kafka::producer(&brokers);
        for (t, p) in [("a", 0), ("b", 1)] {
            send_depth(&producer, "signals", t, p, 500).await;
        }
        common::wait_for(
            "both commanded and snapshotted",
            Duration::from_secs(30),
            || issued(&m1, "a") == 1 && issued(&m1, "b") == 1 && written(&m1) == 2.0,
        )
        .await;
        // one restore, after the assignment: none at start, where which
        // targets are this scaler's is not known yet (the store was read
        // twice before); it counts each target with no snapshot once
        assert_eq!(restores(&m1), 1.0);
        assert_eq!((cold(&m1, "a"), cold(&m1, "b")), (1.0, 1.0));
        // the second joins
        let (m2, stop2, task2) = scaler(cfg);
        common::wait_for(
            &format!("one partition each ({strategy})"),
            Duration::from_secs(60),
            || m1.assigned_partitions() == 1 && m2.assigned_partitions() == 1,
        )
        .await;
        common::wait_for(
            "the second scaler's restore",
            Duration::from_secs(30),
            || restores(&m2) == 1.0,
        )
        .await;
        // the first one's would have come with the second's
        tokio::time::sleep(Duration::from_secs(2)).await;
        let first = (moves(&m1, "assigned"), moves(&m1, "revoked"));
        assert_eq!((moves(&m2, "assigned"), moves(&m2, "revoked")), (1.0, 0.0));
        if cooperative {
            // one partition moved, once; one target's snapshot; no restore
            assert_eq!(first, (2.0, 1.0), "the first scaler's moves");
            assert_eq!(written(&m1), 3.0, "snapshots beyond the moved target's");
            assert_eq!(restores(&m1), 1.0, "a restore for an assignment of nothing");
        } else {
            // both revoked, the one it keeps included (an eager group may
            // rebalance once more, and each then revokes all again)
            assert!(first.1 >= 2.0, "{strategy}: {first:?}");
            assert!(written(&m1) >= 4.0, "{strategy}: {}", written(&m1));
            assert!(restores(&m1) >= 2.0, "{strategy}: {}", restores(&m1));
        }
        // a restore after a rebalance counts no target cold again, and the
        // second scaler found both snapshots
        assert_eq!((cold(&m1, "a"), cold(&m1, "b")), (1.0, 1.0));
        assert_eq!((cold(&m2, "a"), cold(&m2, "b")), (0.0, 0.0));
        stop_all([
            ("the second scaler", stop2, task2),
            ("the first scaler", stop1, task1),
        ])
        .await;
    }
}

/// A target's signals go to one partition, so only the scaler that owns
/// it has them, and only that scaler decides for the target. The other
/// never sees one of them. It must not count the target as its own, as
/// it does a target fed by its probes: there the signals would be stale
/// after `stale_after`, and with `on_stale = "fallback"` it would command
/// `fallback_replicas` for a target the owner is scaling on fresh signals
/// (before the fix, each scaler commanded 7 for the other's target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_never_decides_for_a_target_whose_signals_another_reads() {
    let (_mock, brokers) = mock_cluster();
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_target_config(
        dir.path(),
        &brokers,
        POLICY,
        "",
        "stabilization_down = \"0s\"\nstale_after = \"15s\"\non_stale = \"fallback\"\nfallback_replicas = 7\n",
        "",
    );
    let ((m1, stop1, task1), (m2, stop2, task2)) = two_scalers(cfg).await;
    // fresh signals for both, from before either could be stale (15 s
    // after its start: the group formed well before) to well after
    let producer = common::kafka::producer(&brokers);
    for _ in 0..100 {
        send_depth(&producer, "signals", "a", 0, 1500).await;
        send_depth(&producer, "signals", "b", 1, 2500).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let commands = common::kafka::reader(&brokers, "commands");
    // every command so far (the reader joins its own group first)
    let mut seen = Vec::new();
    let mut wait = Duration::from_secs(30);
    while let Ok(Ok(m)) = tokio::time::timeout(wait, commands.recv()).await {
        let c: ScaleCommand = serde_json::from_slice(m.payload().unwrap()).unwrap();
        seen.push((c.target, c.desired_replicas));
        wait = Duration::from_secs(3);
    }
    // each target commanded by one scaler, to its load and never to 7
    for (t, want) in [("a", 15), ("b", 25)] {
        assert!(
            (issued(&m1, t) > 0) ^ (issued(&m2, t) > 0),
            "target {t} commanded by both scalers or neither ({} and {}): {seen:?}",
            issued(&m1, t),
            issued(&m2, t)
        );
        assert!(
            seen.iter().any(|(s, r)| s == t && *r == want),
            "{t} to {want}: {seen:?}"
        );
    }
    assert!(
        seen.iter().all(|(_, r)| *r != 7),
        "a fallback command: {seen:?}"
    );
    stop_all([
        ("the second scaler", stop2, task2),
        ("the first scaler", stop1, task1),
    ])
    .await;
}

/// Targets only a probe feeds have no partition, and every scaler of a
/// group runs the same `[[probes]]`. Each such target is decided by the
/// scaler that owns its home partition (the partition a Java producer
/// keys its name to), not by every scaler: a rise of its lag is commanded
/// by one scaler only (before, by both, each with its own generations).
/// When that scaler stops, the other takes the target over with its
/// home partition, its state included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_fed_targets_are_decided_by_one_scaler_and_move_with_their_home_partition() {
    let (mock, brokers) = mock_cluster();
    mock.create_topic("orders", 1, 1).unwrap();
    let producer = common::kafka::producer(&brokers);
    let orders = |n: usize| {
        let producer = producer.clone();
        async move {
            for i in 0..n {
                let body = format!("order {i}");
                producer
                    .send(
                        FutureRecord::to("orders").key("k").payload(&body),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    // no worker has committed anything: the lag is every message
    orders(300).await;
    let dir = tempfile::tempdir().unwrap();
    let probes: String = ["a", "b"]
        .iter()
        .map(|t| {
            format!(
                "[[probes]]\nkind = \"kafka_lag\"\ntarget = \"{t}\"\ntopic = \"orders\"\ngroup = \"workers\"\ninterval = \"500ms\"\nno_offset = \"earliest\"\n"
            )
        })
        .collect();
    let cfg = two_target_config(
        dir.path(),
        &brokers,
        POLICY,
        "",
        "",
        &format!("[state]\ntopic = \"tidewatch.state\"\n{probes}"),
    );
    let ((m1, stop1, task1), (m2, stop2, task2)) = two_scalers(cfg).await;
    common::wait_for("a and b commanded", Duration::from_secs(60), || {
        ["a", "b"]
            .iter()
            .all(|t| issued(&m1, t) + issued(&m2, t) > 0)
    })
    .await;
    // the group may still have moved a partition since: let it settle,
    // then the lag rises from 300 to 700 and each target is commanded
    // to 7 once, by one scaler
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: Vec<(u64, u64)> = ["a", "b"]
        .iter()
        .map(|t| (issued(&m1, t), issued(&m2, t)))
        .collect();
    orders(400).await;
    let commands = common::kafka::reader(&brokers, "commands");
    let mut sevens = Vec::new();
    while sevens.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), commands.recv())
            .await
            .expect("a and b commanded to 7")
            .unwrap();
        let c: ScaleCommand = serde_json::from_slice(m.payload().unwrap()).unwrap();
        if c.desired_replicas == 7 && !sevens.iter().any(|s: &ScaleCommand| s.target == c.target) {
            sevens.push(c);
        }
    }
    // any second scaler's command for the same would have come by now
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut owners = Vec::new();
    for (i, t) in ["a", "b"].iter().enumerate() {
        let d = (issued(&m1, t) - before[i].0, issued(&m2, t) - before[i].1);
        assert!(
            (d.0 > 0) ^ (d.1 > 0),
            "{t} commanded by both scalers or neither after the rise: {d:?}"
        );
        owners.push(d.0 > 0);
    }
    let who = |first: bool| if first { "first" } else { "second" };
    eprintln!(
        "a decided by the {} scaler, b by the {}",
        who(owners[0]),
        who(owners[1])
    );
    // a's deciding scaler stops; the other owns both partitions, takes
    // a's state (written as the partition was revoked), and commands a's
    // next rise
    let (stop_owner, task_owner, m_other, stop_other, task_other) = if owners[0] {
        (stop1, task1, m2.clone(), stop2, task2)
    } else {
        (stop2, task2, m1.clone(), stop1, task1)
    };
    let restored = |m: &Metrics| restores_of(m, "a", "restored");
    let restored_before = restored(&m_other);
    stop_then_other_owns_both("a's scaler", stop_owner, task_owner, &m_other).await;
    orders(400).await;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), commands.recv())
            .await
            .expect("a commanded to 11 by the other scaler")
            .unwrap();
        let c: ScaleCommand = serde_json::from_slice(m.payload().unwrap()).unwrap();
        if c.target == "a" && c.desired_replicas == 11 {
            break;
        }
    }
    assert!(issued(&m_other, "a") > 0);
    // the other scaler took a's state with its home partition (before,
    // it counted a as its own all along and kept what it held)
    assert!(
        restored(&m_other) > restored_before,
        "{} restores of a, {restored_before} before the takeover",
        restored(&m_other)
    );
    stop_all([("the other scaler", stop_other, task_other)]).await;
}
