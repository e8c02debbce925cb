//! The scaler's side of the command channel: publishers that take the
//! engine's commands to the broker (Kafka or RabbitMQ) and report each
//! acknowledgement to the engine, and readers that bring the workers'
//! results back to it. Their configuration is the channel's
//! (`command::config`), which the worker shares.

pub mod amqp;
pub mod forecasts;
pub mod kafka;

use crate::command::{ScaleCommand, ScaleResult};
use crate::engine::{EngineHandle, WeakEngineHandle};
use crate::telemetry::Metrics;

/// After the broker confirmed command `c`: counts it by direction and
/// tells the engine (without waiting: see [`WeakEngineHandle::published`]).
pub fn confirmed(c: &ScaleCommand, metrics: &Metrics, engine: &WeakEngineHandle) {
    metrics.command_published(c);
    engine.published(&c.target, c.generation);
}

/// Decodes a result message and hands it to the engine, counting it by
/// status (`invalid` when it cannot be decoded; it is then skipped).
/// False when the engine is gone.
pub async fn deliver_result(bytes: &[u8], metrics: &Metrics, engine: &EngineHandle) -> bool {
    match serde_json::from_slice::<ScaleResult>(bytes) {
        Ok(r) => {
            metrics.result_received(&r);
            engine.result(r).await.is_ok()
        }
        Err(e) => {
            metrics.result_invalid(bytes.len(), &e);
            true
        }
    }
}

/// How long a publisher has had commands waiting with no acknowledgement
/// at all: past `after`, the process is not ready (`/readyz` says which
/// publisher) until one is acknowledged. The Kafka and the RabbitMQ
/// publisher share it. Checked every second on a task of its own,
/// so it also sees a publisher that is waiting for its broker.
pub struct StallWatch {
    component: &'static str,
    since: std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    metrics: std::sync::Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
}

impl StallWatch {
    pub fn start(
        component: &'static str,
        metrics: std::sync::Arc<Metrics>,
        after: std::time::Duration,
    ) -> Self {
        let since: std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>> =
            std::sync::Arc::default();
        let (s, m) = (since.clone(), metrics.clone());
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                every.tick().await;
                let waiting = *s.lock().unwrap_or_else(|p| p.into_inner());
                m.publisher_stalled(component, waiting.is_some_and(|t| t.elapsed() > after));
            }
        });
        Self {
            component,
            since,
            metrics,
            task,
        }
    }

    /// Commands wait for an acknowledgement (since now, unless already).
    pub fn waiting(&self) {
        self.since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(tokio::time::Instant::now);
    }

    /// A command was acknowledged; `more` says whether others still wait.
    pub fn acknowledged(&self, more: bool) {
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) =
            more.then(tokio::time::Instant::now);
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.task.abort();
        self.metrics.publisher_stalled(self.component, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_publisher_without_acknowledgements_is_not_ready() {
        let m = std::sync::Arc::new(Metrics::new());
        let w = StallWatch::start("commands", m.clone(), Duration::from_secs(30));
        w.waiting();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(m.not_ready(), None, "20 s is not a stall");
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(
            m.not_ready().as_deref(),
            Some("the commands publisher is stalled")
        );
        w.acknowledged(true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(m.not_ready(), None, "an acknowledgement restarts the count");
        drop(w);
        assert_eq!(m.not_ready(), None);
    }
}
