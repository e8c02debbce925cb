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
