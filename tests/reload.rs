//! `tidewatch run` reloads its configuration on SIGHUP, under load, on
//! real RabbitMQ: a target is added, one removed, one changed, and the
//! unchanged one's commands go on without a gap or a repeated generation;
//! a bad file is refused and the running configuration stays.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::amqp::{self as mq, Names};
use tidewatch::command::ScaleCommand;

const POLICY: &str = r#"return { decide = function(ctx)
  local d = ctx.window("queue_depth", "10s")
  if not d then return nil end
  return { replicas = math.ceil(d.last / 100), reason = "last " .. d.last }
end }"#;

fn config(n: &Names, url: &str, port: u16, targets: &str) -> String {
    format!(
        r#"{}
[metrics]
listen = "127.0.0.1:{port}"
# the test reads per-target series
per_target = "full"

[engine]
min_eval_interval = "0s"

{targets}"#,
        n.toml(url)
    )
}

fn target(name: &str, max: u32) -> String {
    format!(
        r#"
[[targets]]
name = "{name}"
policy = "p.lua"
max_replicas = {max}
stabilization_down = "0s"
"#
    )
}

fn hup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_metric(port: u16, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = common::scrape(port).map_or(0.0, |t| common::scraped(&t, name, labels));
        if v >= at_least {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} {labels:?} stayed at {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_targets_under_load_and_refuses_a_bad_file() {
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let path = dir.path().join("c.toml");
    std::fs::write(dir.path().join("p.lua"), POLICY).unwrap();
    let first = config(
        &n,
        &url,
        port,
        &format!(
            "{}{}{}",
            target("web", 100),
            target("old", 100),
            target("changed", 100)
        ),
    );
    std::fs::write(&path, &first).unwrap();
    let child = common::spawn_run(&path, None);
    let pid = child.0.id();
    let conn = mq::connect(&url).await;
    mq::wait_for_queue(&conn, &n.queue).await;
    mq::wait_for_queue(&conn, &n.workers).await;

    // Load: web's depth alternates 1000 / 2000 every 20 ms, so a command
    // goes out for nearly every signal.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, url, exchange) = (stop.clone(), url.clone(), n.signals.clone());
        tokio::spawn(async move {
            let conn = mq::connect(&url).await;
            let ch = mq::confirm_channel(&conn).await;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let depth = if i.is_multiple_of(2) { 1000 } else { 2000 };
                mq::publish(
                    &ch,
                    &exchange,
                    "queue_depth.web",
                    mq::depth_signal("web", depth).as_bytes(),
                )
                .await
                .unwrap();
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Every command, with the time it was read.
    let seen: Arc<Mutex<Vec<(Instant, ScaleCommand)>>> = Arc::default();
    let reader = {
        let (seen, conn, queue, stop) = (
            seen.clone(),
            mq::connect(&url).await,
            n.workers.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let got =
                    mq::read_until(&conn, &queue, Duration::from_millis(500), |_| false).await;
                let now = Instant::now();
                let mut s = seen.lock().unwrap();
                for g in got {
                    s.push((now, serde_json::from_slice(&g.body).unwrap()));
                }
            }
        })
    };
    let web_commands = || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| c.target == "web")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while web_commands() < 20 {
        assert!(Instant::now() < deadline, "commands flow for web");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Add "new", remove "old", lower "changed"'s bound.
    let second = config(
        &n,
        &url,
        port,
        &format!(
            "{}{}{}",
            target("web", 100),
            target("changed", 5),
            target("new", 100)
        ),
    );
    std::fs::write(&path, &second).unwrap();
    let reloaded_at = Instant::now();
    hup(pid);
    tokio::task::block_in_place(|| {
        wait_metric(
            port,
            "tidewatch_config_reloads_total",
            &[("result", "applied")],
            1.0,
        )
    });
    let ch = mq::confirm_channel(&conn).await;
    for (t, depth) in [("new", 700), ("changed", 900), ("old", 800)] {
        mq::publish(
            &ch,
            &n.signals,
            &format!("queue_depth.{t}"),
            mq::depth_signal(t, depth).as_bytes(),
        )
        .await
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (new, changed) = {
            let s = seen.lock().unwrap();
            (
                s.iter()
                    .any(|(_, c)| c.target == "new" && c.desired_replicas == 7),
                s.iter()
                    .any(|(_, c)| c.target == "changed" && c.desired_replicas == 5),
            )
        };
        if new && changed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "commands for the added and the changed target"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the removed target is unknown now: its signal is refused, by name
    tokio::task::block_in_place(|| {
        wait_metric(
            port,
            "tidewatch_events_rejected_total",
            &[("reason", "unknown_target")],
            1.0,
        )
    });

    // A bad file: refused, and everything keeps running as it was.
    std::fs::write(
        &path,
        format!("{second}\n[[targets]]\nname = \"Bad Name\"\npolicy = \"missing.lua\"\n"),
    )
    .unwrap();
    hup(pid);
    tokio::task::block_in_place(|| {
        wait_metric(
            port,
            "tidewatch_config_reloads_total",
            &[("result", "refused")],
            1.0,
        )
    });
    let before = web_commands();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        web_commands() > before + 10,
        "web goes on after a refused reload"
    );
    let text = common::scrape(port).unwrap();
    assert_eq!(
        common::scraped(
            &text,
            "tidewatch_config_reloads_total",
            &[("result", "applied")]
        ),
        1.0
    );

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    reader.await.unwrap();
    // web's commands: generations strictly rising (none repeated), and no
    // gap around the reload longer than the reader's own batching
    let web: Vec<(Instant, ScaleCommand)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, c)| c.target == "web")
        .cloned()
        .collect();
    for w in web.windows(2) {
        assert!(
            w[1].1.generation > w[0].1.generation,
            "generation repeated or fell: {} then {}",
            w[0].1.generation,
            w[1].1.generation
        );
    }
    let around: Vec<Instant> = web
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| {
            *t + Duration::from_secs(5) > reloaded_at && *t < reloaded_at + Duration::from_secs(5)
        })
        .collect();
    for w in around.windows(2) {
        assert!(
            w[1] - w[0] < Duration::from_millis(1500),
            "a gap in web's commands around the reload: {:?}",
            w[1] - w[0]
        );
    }
    assert!(
        around.len() > 5,
        "web's commands around the reload: {}",
        around.len()
    );
    n.delete(&ch).await;
}

/// Counts its calls in `ctx.state`, and says so in the reason.
const COUNTING: &str = r#"return { decide = function(ctx)
  ctx.state.calls = (ctx.state.calls or 0) + 1
  local d = ctx.window("queue_depth", "10s")
  if not d then return nil end
  return { replicas = math.ceil(d.last / 100), reason = "calls " .. ctx.state.calls }
end }"#;

/// With `engine.watch_config` a changed file is reloaded without a
/// signal; a target removed and added back resumes from the snapshot its
/// removal wrote (`state.dir`); a change that needs a restart is applied
/// where it can be and reported as `restart_needed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_file_readded_target_resumes_and_restart_settings_are_reported() {
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let path = dir.path().join("c.toml");
    std::fs::write(dir.path().join("p.lua"), COUNTING).unwrap();
    let state_dir = dir.path().join("state");
    let write = |targets: &[&str], state_interval: &str, tick: &str| {
        let toml = format!(
            r#"{}
[metrics]
listen = "127.0.0.1:{port}"
# the test reads per-target series
per_target = "full"

[engine]
min_eval_interval = "0s"
watch_config = true
reload_interval = "200ms"
tick = "{tick}"

[state]
store = "dir"
dir = "{}"
interval = "{state_interval}"
{}"#,
            n.toml(&url),
            state_dir.display(),
            targets.iter().map(|t| target(t, 100)).collect::<String>()
        );
        std::fs::write(&path, toml).unwrap();
    };
    // waits until `result` reloads are counted
    let reloads = |result: &str, count: f64| {
        tokio::task::block_in_place(|| {
            wait_metric(
                port,
                "tidewatch_config_reloads_total",
                &[("result", result)],
                count,
            )
        });
    };
    write(&["a", "b"], "30s", "1s");
    let _child = common::spawn_run(&path, None);
    let conn = Arc::new(mq::connect(&url).await);
    mq::wait_for_queue(&conn, &n.queue).await;
    mq::wait_for_queue(&conn, &n.workers).await;
    let ch = mq::confirm_channel(&conn).await;
    let send = |t: &'static str, depth: i64| {
        let (ch, exchange) = (ch.clone(), n.signals.clone());
        async move {
            mq::publish(
                &ch,
                &exchange,
                &format!("queue_depth.{t}"),
                mq::depth_signal(t, depth).as_bytes(),
            )
            .await
            .unwrap();
        }
    };
    let command = |t: &'static str, replicas: u32| {
        let (conn, queue) = (conn.clone(), n.workers.clone());
        async move {
            let got = mq::read_until(&conn, &queue, Duration::from_secs(30), |g| {
                g.iter().any(|g| {
                    serde_json::from_slice::<ScaleCommand>(&g.body)
                        .is_ok_and(|c| c.target == t && c.desired_replicas == replicas)
                })
            })
            .await;
            got.iter()
                .filter_map(|g| serde_json::from_slice::<ScaleCommand>(&g.body).ok())
                .find(|c| c.target == t && c.desired_replicas == replicas)
                .unwrap_or_else(|| panic!("a command of {replicas} for {t}"))
        }
    };
    let calls = |c: &ScaleCommand| -> u64 {
        common::state::reason_part(&c.reason, "calls ")
            .parse()
            .unwrap()
    };
    for _ in 0..5 {
        send("b", 900).await;
    }
    let before = command("b", 9).await;

    // removed by editing the file, no SIGHUP
    write(&["a"], "30s", "1s");
    reloads("applied", 1.0);
    assert!(
        std::fs::read_dir(&state_dir).unwrap().count() >= 1,
        "the removed target's snapshot is written"
    );
    // and back: it resumes from that snapshot
    write(&["a", "b"], "30s", "1s");
    tokio::task::block_in_place(|| {
        wait_metric(
            port,
            "tidewatch_config_reloads_total",
            &[("result", "applied")],
            2.0,
        );
        wait_metric(
            port,
            "tidewatch_state_restores_total",
            &[("target", "b"), ("outcome", "restored")],
            1.0,
        )
    });
    send("b", 1500).await;
    let after = command("b", 15).await;
    assert!(
        calls(&after) > calls(&before),
        "the policy state came back: {} then {}",
        before.reason,
        after.reason
    );
    assert!(after.generation > before.generation);

    // A new target and a state setting: the target starts, the state
    // setting waits for a restart, and the reload says so.
    write(&["a", "b", "c"], "10s", "1s");
    reloads("restart_needed", 1.0);
    send("c", 300).await;
    command("c", 3).await;
    // A tick change waits for a restart too, and is still reported at the
    // next reload (the scaler still ticks at the old one).
    write(&["a", "b", "c"], "30s", "2s");
    reloads("restart_needed", 2.0);
    write(&["a", "b", "c", "d"], "30s", "2s");
    reloads("restart_needed", 3.0);
    let text = common::scrape(port).unwrap();
    assert_eq!(
        common::scraped(
            &text,
            "tidewatch_config_reloads_total",
            &[("result", "refused")]
        ),
        0.0
    );
    n.delete(&ch).await;
}
