//! An outside client checks the wire format: kcat (Debian's package, a
//! program tidewatch did not write) publishes signals and reads the
//! commands. The broker is librdkafka's mock cluster on a loopback port:
//! kcat 1.7's librdkafka 2.0.2 cannot parse tansu 0.6's ApiVersions v3
//! reply (see docs/design-notes.md), so tansu is exercised by
//! tests/kafka_tansu.rs with tidewatch's own clients.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use tidewatch::command::ScaleCommand;
use tidewatch::config::Config;
use tidewatch::telemetry::Metrics;

fn kcat() -> Option<&'static str> {
    if Command::new("kcat").arg("-V").output().is_ok() {
        return Some("kcat");
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("kcat is not installed under CI: scripts/test installs it (apt-get install kcat)");
    }
    eprintln!("kcat not installed: run scripts/test, which installs it");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_publishes_signals_and_reads_commands() {
    let Some(kcat) = kcat() else { return };
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    for (t, p) in [
        ("signals", 2),
        ("commands", 1),
        ("results", 1),
        ("tidewatch.deadletter", 1),
        ("tidewatch.state", 1),
    ] {
        mock.create_topic(t, p, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.lua"),
        r#"return { decide = function(ctx)
             local d = ctx.window("queue_depth", "10s")
             local l = ctx.window("latency_ms", "10s")
             if not d or not l then return nil end
             return { replicas = math.ceil(d.last / 100) + (l.p95 > 200 and 1 or 0), reason = "kcat" } end }"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        format!(
            r#"
[source]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topics = ["signals"] }}
[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "commands", results_topic = "results" }}
[engine]
min_eval_interval = "0s"
[[targets]]
name = "checkout"
policy = "p.lua"
max_replicas = 50
"#
        ),
    )
    .unwrap();
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    let (stop, task) = common::start_run(cfg, Arc::new(Metrics::new()));
    // Both signal types of DESIGN.md, keyed by target, as kcat sends them.
    let mut child = Command::new(kcat)
        .args(["-P", "-b", &brokers, "-t", "signals", "-K", "|"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = concat!(
        r#"checkout|{"type": "gateway_latency", "target": "checkout", "route": "/api/checkout", "samples_ms": [120.5, 250.1, 300.0, 280.2], "errors": 1}"#,
        "\n",
        r#"checkout|{"type": "queue_depth", "target": "checkout", "queue": "orders", "depth": 1520, "consumers": 4}"#,
        "\n"
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "kcat produced");
    let deadline = Instant::now() + Duration::from_secs(90);
    let command = loop {
        assert!(Instant::now() < deadline, "kcat read no command");
        let out = Command::new(kcat)
            .args([
                "-C",
                "-b",
                &brokers,
                "-t",
                "commands",
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%k\t%s\n",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = text.lines().last() {
            let (key, json) = line.split_once('\t').expect("key<TAB>value");
            assert_eq!(key, "checkout");
            break serde_json::from_str::<ScaleCommand>(json).expect("kcat reads a valid command");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        command.desired_replicas, 17,
        "1520/100 -> 16, +1 for p95 over 200 ms"
    );
    assert_eq!(command.reason.split(';').next(), Some("kcat"));
    // A control message from the same outside client: pin to 30.
    let mut child = Command::new(kcat)
        .args(["-P", "-b", &brokers, "-t", "signals", "-K", "|"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            concat!(
                r#"checkout|{"type": "control", "target": "checkout", "action": "pin", "replicas": 30, "by": "kcat", "reason": "drill"}"#,
                "\n"
            )
            .as_bytes(),
        )
        .unwrap();
    assert!(child.wait().unwrap().success(), "kcat produced the control");
    let deadline = Instant::now() + Duration::from_secs(60);
    let pinned = loop {
        assert!(Instant::now() < deadline, "no pinned command");
        let out = Command::new(kcat)
            .args([
                "-C",
                "-b",
                &brokers,
                "-t",
                "commands",
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%s\n",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(c) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<ScaleCommand>(l).ok())
            .find(|c| c.desired_replicas == 30)
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        pinned.reason.contains("pinned to 30 by kcat (drill)"),
        "{}",
        pinned.reason
    );
    // `tidewatch ctl` publishes to Kafka from the same configuration file:
    // a resume, then the policy decides again on the next signal.
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["ctl", "resume", "checkout", "--by", "ctl-test", "--config"])
        .arg(dir.path().join("c.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["action"], "resume");
    let mut child = Command::new(kcat)
        .args(["-P", "-b", &brokers, "-t", "signals", "-K", "|"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            concat!(
                r#"checkout|{"type": "queue_depth", "target": "checkout", "queue": "orders", "depth": 4400}"#,
                "\n"
            )
            .as_bytes(),
        )
        .unwrap();
    assert!(child.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no command after the resume");
        let out = Command::new(kcat)
            .args([
                "-C",
                "-b",
                &brokers,
                "-t",
                "commands",
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%s\n",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(c) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<ScaleCommand>(l).ok())
            .find(|c| c.desired_replicas >= 44)
        {
            assert!(!c.reason.contains("control:"), "{}", c.reason);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.send(()).unwrap();
    assert!(task.await.unwrap().drained);
}
