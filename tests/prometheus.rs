//! A real Prometheus server (Debian's `prometheus`) scrapes a running
//! scaler and worker (the binaries, on tansu, fed by `tidewatch loadgen`),
//! and `promtool check metrics` passes on both endpoints' output. The
//! scrape configuration is compose/prometheus.yml's, with the addresses of
//! this test.

mod common;

use std::process::{Command, Stdio};

use common::{free_port, Killed};
use std::time::{Duration, Instant};

fn tool(name: &str) -> Option<String> {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return Some(p);
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is required under CI: scripts/test installs Debian's prometheus package");
    }
    eprintln!("{name} not installed: run scripts/test, which installs it");
    None
}

fn spawn(args: &[&str], config: &std::path::Path) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_tidewatch"))
            .args(args)
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn get(url: &str) -> Option<String> {
    let r = reqwest::get(url).await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

/// The result vector of an instant query.
async fn query(prom: &str, q: &str) -> Vec<serde_json::Value> {
    let url = format!("{prom}/api/v1/query?query={}", urlencode(q));
    let Some(body) = get(&url).await else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn prometheus_scrapes_scaler_and_worker_and_promtool_accepts_their_metrics() {
    let Some(brokers) = common::kafka::broker() else {
        return;
    };
    let (Some(prometheus), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        return;
    };
    let s = common::amqp::suffix();
    let (signals, commands, results, dl) = (
        format!("prom-sig-{s}"),
        format!("prom-cmd-{s}"),
        format!("prom-res-{s}"),
        format!("prom-dl-{s}"),
    );
    common::kafka::create_topics(
        &brokers,
        &[(&signals, 1), (&commands, 1), (&results, 1), (&dl, 1)],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (scaler_port, worker_port, prom_port) = (free_port(), free_port(), free_port());
    let root = env!("CARGO_MANIFEST_DIR");
    let scaler = dir.path().join("scaler.toml");
    std::fs::write(
        &scaler,
        format!(
            r#"
[source]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topics = ["{signals}"], group_id = "prom-{s}", deadletter_topic = "{dl}" }}
[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "{commands}", results_topic = "{results}" }}
[metrics]
listen = "127.0.0.1:{scaler_port}"
[state]
topic = "prom-state-{s}"
[[targets]]
name = "checkout"
policy = "{root}/policies/queue_depth.lua"
provider = "log"
max_replicas = 20
params = {{ per_replica_depth = 20 }}
"#
        ),
    )
    .unwrap();
    let worker = dir.path().join("worker.toml");
    std::fs::write(
        &worker,
        format!(
            r#"
[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "{commands}", results_topic = "{results}", deadletter_topic = "{dl}", group_id = "prom-w-{s}" }}
[worker]
state_file = "{state}"
[metrics]
listen = "127.0.0.1:{worker_port}"
[[targets]]
name = "checkout"
provider = "log"
"#,
            state = dir.path().join("state.json").display()
        ),
    )
    .unwrap();
    // compose/prometheus.yml's scrape jobs, pointed at this test's ports
    let shipped = std::fs::read_to_string(format!("{root}/compose/prometheus.yml")).unwrap();
    assert!(
        shipped.contains("job_name: tidewatch-scaler")
            && shipped.contains("job_name: tidewatch-worker")
    );
    std::fs::copy(
        format!("{root}/compose/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        shipped
            .replace("scaler:9898", &format!("127.0.0.1:{scaler_port}"))
            .replace("worker:9899", &format!("127.0.0.1:{worker_port}"))
            .replace("scrape_interval: 5s", "scrape_interval: 1s"),
    )
    .unwrap();
    let check = Command::new(&promtool)
        .args(["check", "config"])
        .arg(&prom_cfg)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let _scaler = spawn(&["run", "--config"], &scaler);
    let _worker = common::worker::spawn_worker(&worker);
    let _prom = Killed(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let gen = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args([
            "loadgen", "--rounds", "20", "--every", "250ms", "--base", "100", "--config",
        ])
        .arg(&scaler)
        .output()
        .unwrap();
    assert!(gen.status.success(), "{gen:?}");

    let prom = format!("http://127.0.0.1:{prom_port}");
    eventually(
        "both tidewatch processes up in Prometheus",
        Duration::from_secs(60),
        || async {
            let up = query(&prom, "up == 1").await;
            let jobs: Vec<&str> = up
                .iter()
                .filter_map(|r| r["metric"]["job"].as_str())
                .collect();
            jobs.contains(&"tidewatch-scaler") && jobs.contains(&"tidewatch-worker")
        },
    )
    .await;
    for (q, what) in [
        (
            "tidewatch_events_received_total{job=\"tidewatch-scaler\",type=\"queue_depth\"} >= 20",
            "the loadgen's signals, counted by the scaler",
        ),
        (
            // summed over the targets at the default metrics.per_target
            "tidewatch_commands_published_total{job=\"tidewatch-scaler\",target=\"\"} > 0",
            "a scale command",
        ),
        (
            "tidewatch_target_desired_replicas{job=\"tidewatch-scaler\",target=\"checkout\"} > 0",
            "the target's desired replicas, kept per target",
        ),
        (
            "tidewatch_worker_results_total{job=\"tidewatch-worker\",target=\"checkout\",status=\"applied\"} > 0",
            "the worker's result",
        ),
        (
            "tidewatch_provider_call_seconds_count{job=\"tidewatch-worker\",provider=\"log\"}",
            "a provider call",
        ),
        (
            "tidewatch_source_consumer_lag_messages{job=\"tidewatch-scaler\"}",
            "the scaler's consumer lag",
        ),
    ] {
        eventually(what, Duration::from_secs(60), || async { !query(&prom, q).await.is_empty() }).await;
    }

    for port in [scaler_port, worker_port] {
        let text = get(&format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap();
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "promtool check metrics on :{port}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
