//! Helpers shared by the integration tests (and the Kafka benchmark).
#![allow(dead_code)]

use std::sync::Arc;

use tidewatch::config::Config;
use tidewatch::scaler::{run, RunOptions, RunReport};
use tidewatch::telemetry::Metrics;

/// `tidewatch run` in a task, serving metrics on a free loopback port;
/// send on the returned channel to start the drain.
pub fn start_run(
    cfg: Config,
    metrics: Arc<Metrics>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<RunReport>,
) {
    // The tests read per-target series (commands, holds, restores of one
    // target); the default `summary` sums those. It is tested on its own
    // in telemetry's unit tests and, scraped by Prometheus, in
    // tests/prometheus.rs.
    let mut cfg = cfg;
    cfg.metrics.per_target = tidewatch::telemetry::PerTarget::Full;
    start_run_as_configured(cfg, metrics)
}

/// [`start_run`] with the metrics' detail as configured.
pub fn start_run_as_configured(
    cfg: Config,
    metrics: Arc<Metrics>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<RunReport>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let opts = RunOptions {
            metrics,
            listener: Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
            ..RunOptions::default()
        };
        run(cfg, opts, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });
    (stop, task)
}
pub mod amqp;
pub mod bench;
pub mod kafka;
pub mod schema;
pub mod state;
pub mod worker;

/// A child process killed when the test ends, passing or not.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tidewatch run --config path` as a child process, killed when the
/// returned value is dropped; its stderr appended to `log` when given.
pub fn spawn_run(path: &std::path::Path, log: Option<&std::path::Path>) -> Killed {
    let stderr = log
        .and_then(|l| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(l)
                .ok()
        })
        .map_or_else(std::process::Stdio::null, std::process::Stdio::from);
    Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_tidewatch"))
            .args(["run", "--config"])
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sum of a metric's counter and gauge values over the series whose
/// labels include `labels`.
pub fn metric(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    tidewatch::telemetry::sum(m, name, labels)
}

/// `GET path` of a process serving on `port` (plain HTTP/1.0): the whole
/// response, status line first.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `GET /metrics` of a process serving on `port`.
pub fn scrape(port: u16) -> Option<String> {
    http_get(port, "/metrics")
}

/// Whether `/readyz` of a process serving on `port` answers 200.
pub fn ready(port: u16) -> bool {
    http_get(port, "/readyz").is_some_and(|r| r.split(' ').nth(1) == Some("200"))
}

/// The sum of a metric's samples in a scrape whose labels include `labels`.
pub fn scraped(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A run's report once it has stopped, within `within`: a scaler whose
/// shutdown hangs fails the test with `what` instead of holding CI until
/// its own timeout.
pub async fn stopped(
    what: &str,
    within: std::time::Duration,
    task: tokio::task::JoinHandle<RunReport>,
) -> RunReport {
    match tokio::time::timeout(within, task).await {
        Ok(report) => report.expect("the run's task"),
        Err(_) => panic!("timed out waiting for {what} to stop ({within:?})"),
    }
}

/// Waits until `ok` holds, checking every 100 ms; fails naming `what`.
pub async fn wait_for(what: &str, within: std::time::Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
