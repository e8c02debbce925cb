//! Scale-out on RabbitMQ (`source.amqp.slots`): two scalers share the slot
//! queues (single active consumer each), split the targets between them by
//! slot without any manual binding, and when one stops the other takes its
//! slots, and so its targets, over.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::amqp::{self as mq, Names};
use tidewatch::engine::slots::slot_of;
use tidewatch::telemetry::Metrics;

const POLICY: &str = r#"return { decide = function(ctx)
  local d = ctx.window("queue_depth", "10s")
  if not d then return nil end
  return { replicas = math.ceil(d.last / 100), reason = "last " .. d.last }
end }"#;

const SLOTS: u16 = 4;

/// The test that cuts every connection on the broker (`rabbitmqctl
/// close_all_connections`) runs alone (write); the others side by side
/// (read).
static CONNECTIONS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn issued(m: &Metrics, target: &str) -> u64 {
    ["up", "down"]
        .iter()
        .map(|d| {
            common::metric(
                m,
                "tidewatch_commands_issued_total",
                &[("target", target), ("direction", d)],
            ) as u64
        })
        .sum()
}

/// The `[[targets]]` of `names`, each on `p.lua`.
fn targets_toml(names: &[String]) -> String {
    names
        .iter()
        .map(|t| {
            format!(
                "[[targets]]\nname = \"{t}\"\npolicy = \"p.lua\"\nprovider = \"exec\"\n\
                 max_replicas = 1000\nstabilization_down = \"0s\"\n"
            )
        })
        .collect()
}

/// Whether each of `targets` has had more than `n` commands, from one
/// gather (a gather of thousands of targets' series is slow in a debug
/// build; one per target took 20 s for 42 targets of 4,000).
fn all_issued_more_than(m: &Metrics, targets: &[String], n: u64) -> bool {
    let families = m.registry().gather();
    let mut per: std::collections::HashMap<&str, f64> = Default::default();
    for f in families
        .iter()
        .filter(|f| f.name() == "tidewatch_commands_issued_total")
    {
        for x in f.get_metric() {
            if let Some(t) = x.get_label().iter().find(|l| l.name() == "target") {
                *per.entry(t.value()).or_default() += x.get_counter().get_value();
            }
        }
    }
    targets
        .iter()
        .all(|t| per.get(t.as_str()).copied().unwrap_or(0.0) > n as f64)
}

/// A queue-depth signal of `depth` for each of `names`, confirmed.
async fn send_depths(ch: &lapin::Channel, signals: &str, names: &[String], depth: i64) {
    let messages: Vec<(String, String)> = names
        .iter()
        .map(|t| (format!("queue_depth.{t}"), mq::depth_signal(t, depth)))
        .collect();
    mq::publish_all(ch, signals, &messages).await;
}

/// Removes the slot queues and what else the test declared.
async fn delete_all(conn: &lapin::Connection, n: &Names) {
    let ch = conn.create_channel().await.unwrap();
    for k in 0..SLOTS {
        let _ = ch
            .queue_delete(&format!("{}.{k}", n.queue), Default::default())
            .await;
    }
    n.delete(&ch).await;
}

/// Waits until each scaler holds its number of slots.
async fn wait_for_slots(what: &str, within: Duration, holds: &[(&Metrics, i64)]) {
    common::wait_for(what, within, || {
        holds.iter().all(|(m, n)| m.assigned_partitions() == *n)
    })
    .await;
}

/// Slots given to (`assigned`) or taken from (`revoked`) a scaler.
fn moves(m: &Metrics, change: &str) -> f64 {
    common::metric(
        m,
        "tidewatch_source_partition_moves_total",
        &[("change", change)],
    )
}

fn policy_calls(m: &Metrics, target: &str) -> f64 {
    common::metric(
        m,
        "tidewatch_policy_evaluations_total",
        &[("target", target)],
    )
}

fn desired(m: &Metrics, target: &str) -> f64 {
    common::metric(
        m,
        "tidewatch_target_desired_replicas",
        &[("target", target)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scalers_share_the_slots_and_one_takes_over_when_the_other_stops() {
    let _alone = CONNECTIONS.write().await;
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    let names: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
    let slots: Vec<u16> = names.iter().map(|t| slot_of(t, SLOTS)).collect();
    assert!(
        (0..SLOTS).all(|k| slots.contains(&k)),
        "every slot has a target: {slots:?}"
    );
    let targets = targets_toml(&names);
    // with the management API a scaler lists the bindings in place
    let management = std::env::var("TIDEWATCH_TEST_AMQP_MANAGEMENT").ok();
    assert!(
        management.is_some() || std::env::var("CI").as_deref() != Ok("true"),
        "the management API is needed under CI"
    );
    let listed = management
        .as_ref()
        .map(|m| format!(", management_url = \"{m}\""))
        .unwrap_or_default();
    let toml = format!(
        "{}\n[engine]\nmin_eval_interval = \"0s\"\ndrain_timeout = \"20s\"\n{targets}",
        n.toml(&url).replace(
            "prefetch = 500",
            &format!("prefetch = 500, slots = {SLOTS}{listed}")
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = mq::load(dir.path(), &toml, POLICY);
    let (m1, m2) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
    let (stop1, task1) = common::start_run(cfg.clone(), m1.clone());
    let conn = mq::connect(&url).await;
    for k in 0..SLOTS {
        mq::wait_for_queue(&conn, &format!("{}.{k}", n.queue)).await;
    }
    let (stop2, task2) = common::start_run(cfg, m2.clone());
    // The first scaler holds every slot at first; it hands on what is
    // over its share (half, with two scalers on the queues).
    wait_for_slots(
        "each scaler to hold two slots",
        Duration::from_secs(60),
        &[(&m1, 2), (&m2, 2)],
    )
    .await;

    // the first took every slot and handed two on
    assert!(moves(&m1, "assigned") >= 4.0 && moves(&m1, "revoked") >= 2.0);
    let ch = mq::confirm_channel(&conn).await;
    let send = |depth: i64| send_depths(&ch, &n.signals, &names, depth);
    send(1000).await;
    common::wait_for(
        "a command for every target",
        Duration::from_secs(30),
        || names.iter().all(|t| issued(&m1, t) + issued(&m2, t) > 0),
    )
    .await;
    // Each target is decided by exactly one scaler, and the same one for
    // all the targets of a slot.
    let mut owner = vec![None; usize::from(SLOTS)];
    for (t, &k) in names.iter().zip(&slots) {
        let (a, b) = (issued(&m1, t) > 0, issued(&m2, t) > 0);
        assert!(a ^ b, "target {t} commanded by both or neither");
        let o = if a { 1 } else { 2 };
        assert!(
            owner[usize::from(k)].replace(o).is_none_or(|p| p == o),
            "slot {k} split between scalers"
        );
    }
    assert!(
        owner.contains(&Some(1)) && owner.contains(&Some(2)),
        "both scalers decide: {owner:?}"
    );

    // The first scaler stops: the second holds all the slots and decides
    // for the first one's targets.
    stop1.send(()).unwrap();
    assert!(task1.await.unwrap().drained);
    let before: Vec<u64> = names.iter().map(|t| issued(&m2, t)).collect();
    wait_for_slots(
        "the second scaler to hold every slot",
        Duration::from_secs(30),
        &[(&m2, i64::from(SLOTS))],
    )
    .await;
    // the first gave up its two as it stopped, and the second took them
    assert!(moves(&m1, "revoked") >= 4.0 && moves(&m2, "assigned") >= 4.0);
    send(4000).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !names.iter().all(|t| desired(&m2, t) == 40.0) {
        let now: Vec<f64> = names.iter().map(|t| desired(&m2, t)).collect();
        assert!(
            Instant::now() < deadline,
            "the second scaler does not command 40 for every target: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, t) in names.iter().enumerate() {
        assert!(issued(&m2, t) > before[i], "{t}: no new command");
    }

    // Bindings are declared only when missing. The first scaler bound all
    // 8 targets; the second started on queues with them in place: it found
    // them through the management API (without it, it declares them
    // again). A lost connection binds nothing again; a queue deleted under
    // a scaler has lost its bindings and gets them back.
    assert_eq!(m1.bindings_declared_total(), 8);
    let at_start = if management.is_some() { 0 } else { 8 };
    assert_eq!(m2.bindings_declared_total(), at_start);
    let reconnects = |m: &Metrics| {
        common::metric(
            m,
            "tidewatch_broker_reconnects_total",
            &[("component", "source")],
        )
    };
    mq::rabbitmqctl(&["close_all_connections", "test: a lost connection"]).await;
    common::wait_for("the source to reconnect", Duration::from_secs(30), || {
        reconnects(&m2) >= 1.0 && m2.assigned_partitions() == i64::from(SLOTS)
    })
    .await;
    assert_eq!(
        m2.bindings_declared_total(),
        at_start,
        "a reconnect binds nothing again"
    );
    let conn = mq::connect(&url).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(&format!("{}.0", n.queue), Default::default())
        .await
        .unwrap();
    let in_slot0 = slots.iter().filter(|&&k| k == 0).count() as u64;
    common::wait_for(
        "slot 0's bindings to be declared again",
        Duration::from_secs(30),
        || m2.bindings_declared_total() == at_start + in_slot0,
    )
    .await;
    let ch = mq::confirm_channel(&conn).await;
    for (t, _) in names.iter().zip(&slots).filter(|(_, &k)| k == 0) {
        let body = mq::depth_signal(t, 500);
        mq::publish(
            &ch,
            &n.signals,
            &format!("queue_depth.{t}"),
            body.as_bytes(),
        )
        .await
        .unwrap();
    }
    common::wait_for(
        "slot 0's targets to be decided again",
        Duration::from_secs(30),
        || {
            names
                .iter()
                .zip(&slots)
                .filter(|(_, &k)| k == 0)
                .all(|(t, _)| desired(&m2, t) == 5.0)
        },
    )
    .await;
    stop2.send(()).unwrap();
    assert!(task2.await.unwrap().drained);
    delete_all(&conn, &n).await;
}

/// A slot's targets move with what they learned: two scalers share a
/// state directory (a shared volume), and each slot that changes hands is
/// written by the scaler that gives it up (when it hands it on, or when
/// it stops) and restored by the one that takes it before it decides. The
/// policy remembers the highest depth it saw (`ctx.state`), so a target
/// that starts cold shows up as a lower replica count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_changes_hands_takes_its_targets_state_along() {
    let _alone = CONNECTIONS.read().await;
    const PEAK: &str = r#"return { decide = function(ctx)
  local d = ctx.window("queue_depth", "10s")
  if d then ctx.state.peak = math.max(ctx.state.peak or 0, d.last) end
  if not ctx.state.peak then return nil end
  return { replicas = math.ceil(ctx.state.peak / 100), reason = "peak " .. ctx.state.peak }
end }"#;
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    let names: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
    let targets = targets_toml(&names);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let toml = format!(
        "{}\n[engine]\nmin_eval_interval = \"0s\"\ndrain_timeout = \"20s\"\n\
         [state]\nstore = \"dir\"\ndir = \"{}\"\ninterval = \"1h\"\n{targets}",
        n.toml(&url).replace(
            "prefetch = 500",
            &format!("prefetch = 500, slots = {SLOTS}")
        ),
        state.display()
    );
    let cfg = mq::load(dir.path(), &toml, PEAK);
    let conn = mq::connect(&url).await;
    let ch = mq::confirm_channel(&conn).await;
    let send = |depth: i64| send_depths(&ch, &n.signals, &names, depth);
    let outcome = |m: &Metrics, t: &str, outcome: &str| {
        common::metric(
            m,
            "tidewatch_state_restores_total",
            &[("target", t), ("outcome", outcome)],
        )
    };
    let restored = |m: &Metrics, t: &str| outcome(m, t, "restored");

    // The first scaler alone: every target peaks at 3000 (30 replicas).
    let (m1, m2) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
    let (stop1, task1) = common::start_run(cfg.clone(), m1.clone());
    wait_for_slots(
        "the first scaler to hold every slot",
        Duration::from_secs(60),
        &[(&m1, i64::from(SLOTS))],
    )
    .await;
    // the first gain of each slot counts its targets with no snapshot
    common::wait_for(
        "every target counted cold once",
        Duration::from_secs(30),
        || names.iter().all(|t| outcome(&m1, t, "cold") == 1.0),
    )
    .await;
    send(3000).await;
    common::wait_for(
        "30 replicas for every target",
        Duration::from_secs(30),
        || names.iter().all(|t| desired(&m1, t) == 30.0),
    )
    .await;

    // A second scaler: the first hands half the slots on, their state
    // written first; the second restores it.
    let (stop2, task2) = common::start_run(cfg, m2.clone());
    wait_for_slots(
        "each scaler to hold two slots",
        Duration::from_secs(60),
        &[(&m1, 2), (&m2, 2)],
    )
    .await;
    // A depth under the peak each scaler has: had the second started its
    // targets cold, it would command 20 for them; with the peak of 3000
    // restored (and 30 replicas), it holds.
    send(2000).await;
    send(5000).await;
    common::wait_for(
        "50 replicas for every target",
        Duration::from_secs(30),
        || {
            names
                .iter()
                .all(|t| desired(&m1, t) == 50.0 || desired(&m2, t) == 50.0)
        },
    )
    .await;
    let moved: Vec<&String> = names.iter().filter(|t| desired(&m2, t) == 50.0).collect();
    assert!(
        !moved.is_empty() && moved.len() < names.len(),
        "both scalers decide: {moved:?}"
    );
    for t in &moved {
        assert_eq!(restored(&m2, t), 1.0, "{t}: restored when its slot came");
        assert_eq!(
            issued(&m2, t),
            1,
            "{t}: only the command to 50 (no 20: not cold)"
        );
    }
    send(200).await;

    // The second stops: it writes its targets before its consumers go,
    // and the first takes them back with the peak of 5000 they learned
    // there.
    let calls_before: Vec<f64> = moved.iter().map(|t| policy_calls(&m1, t)).collect();
    stop2.send(()).unwrap();
    let report2 = task2.await.unwrap();
    assert!(report2.drained);
    wait_for_slots(
        "the first scaler to hold every slot again",
        Duration::from_secs(30),
        &[(&m1, i64::from(SLOTS))],
    )
    .await;
    common::wait_for(
        "the moved targets restored again",
        Duration::from_secs(30),
        || moved.iter().all(|t| restored(&m1, t) == 1.0),
    )
    .await;
    // slots gained again, or with snapshots, count nothing cold
    for t in &names {
        assert_eq!(outcome(&m1, t, "cold"), 1.0, "{t}");
        assert_eq!(outcome(&m2, t, "cold"), 0.0, "{t}");
    }
    // a signal under the peak: decided from what the second learned
    send(300).await;
    common::wait_for(
        "the first scaler decides the moved targets",
        Duration::from_secs(30),
        || {
            moved
                .iter()
                .zip(&calls_before)
                .all(|(t, &before)| policy_calls(&m1, t) > before)
        },
    )
    .await;
    stop1.send(()).unwrap();
    let report1 = task1.await.unwrap();
    for t in &report1.targets {
        assert_eq!(
            t.replicas, 50,
            "{}: the peak learned on either scaler",
            t.name
        );
    }
    delete_all(&conn, &n).await;
}

/// A first start with more bindings than RabbitMQ makes within
/// `bindings_wait` consumes before they are all made (the rest follow on
/// channels of their own), and every target is bound in the end. Its
/// targets are decided from the start, bound or not (the catch-all
/// queue), each signal applied once; when every target is bound the
/// catch-all ends and the slot queues carry the signals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_consumes_while_the_rest_of_its_bindings_are_made() {
    let _alone = CONNECTIONS.read().await;
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    // about three seconds of RabbitMQ's binding at its fastest here
    let names: Vec<String> = (0..6000).map(|i| format!("b{i}")).collect();
    let toml = format!(
        "{}\n[engine]\nmin_eval_interval = \"0s\"\ndrain_timeout = \"20s\"\n{}",
        n.toml(&url).replace(
            "prefetch = 500",
            &format!("prefetch = 500, slots = {SLOTS}, bindings_wait = \"0s\"")
        ),
        targets_toml(&names)
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = mq::load(dir.path(), &toml, POLICY);
    // the test's publisher is ready before the scaler starts, so that its
    // signals go out in the first moments of the binding
    let conn = mq::connect(&url).await;
    let ch = mq::confirm_channel(&conn).await;
    let m = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, m.clone());
    // (read directly: a gather of 6,000 targets' series takes a large part
    // of a second in a debug build, and the binding about three)
    common::wait_for(
        "the source to consume through its catch-all",
        Duration::from_secs(60),
        || m.catch_all_open(),
    )
    .await;
    let pending = m.bindings_pending_now();
    assert!(
        pending > 0,
        "consuming began with every binding made: it waited for them"
    );
    // while most targets are not bound yet: a sample across the slots
    let sample: Vec<String> = names.iter().step_by(97).cloned().collect();
    let received = || {
        common::metric(
            &m,
            "tidewatch_events_received_total",
            &[("source", "amqp"), ("type", "queue_depth")],
        )
    };
    send_depths(&ch, &n.signals, &sample, 700).await;
    // another scaler's target: the catch-all carries it too, but it is not
    // this scaler's (received once more would fail the count below)
    send_depths(&ch, &n.signals, &["not-configured".to_owned()], 700).await;
    let pending_after = m.bindings_pending_now();
    assert!(
        pending_after > pending / 2,
        "the sample was sent after most bindings were made ({pending_after} of {pending} pending)"
    );
    common::wait_for(
        "a command for each sampled target, bound or not",
        Duration::from_secs(30),
        || all_issued_more_than(&m, &sample, 0),
    )
    .await;
    assert_eq!(
        received(),
        sample.len() as f64,
        "each signal applied once: through the catch-all, not also its slot queue's copy"
    );
    assert_eq!(
        common::metric(&m, "tidewatch_events_rejected_total", &[("source", "amqp")]),
        0.0,
        "the other target's signal was taken as this scaler's (and dead-lettered)"
    );
    common::wait_for("every binding to be made", Duration::from_secs(60), || {
        common::metric(&m, "tidewatch_source_bindings_pending", &[]) == 0.0
    })
    .await;
    assert_eq!(
        common::metric(&m, "tidewatch_source_bindings_declared_total", &[]),
        names.len() as f64
    );
    // the catch-all ends once its markers are back: then the slot queues
    // carry each signal, once
    common::wait_for("the catch-all to end", Duration::from_secs(10), || {
        !m.catch_all_open()
    })
    .await;
    send_depths(&ch, &n.signals, &sample, 1400).await;
    common::wait_for(
        "a second command for each sampled target",
        Duration::from_secs(30),
        || all_issued_more_than(&m, &sample, 1),
    )
    .await;
    assert_eq!(received(), 2.0 * sample.len() as f64);
    assert_eq!(
        common::metric(&m, "tidewatch_broker_connected", &[("component", "source")]),
        1.0,
        "the session survived the catch-all's end"
    );
    let _ = stop.send(());
    let _ = task.await;
    delete_all(&conn, &n).await;
}
