//! `tidewatch worker`: consumes scale commands, executes them through the
//! provider of their target, and publishes a result for every command
//! before it commits (Kafka) or acks (RabbitMQ) it.
//!
//! - Per target, a lane task executes commands one at a time in the order
//!   they arrive; lanes of different targets run in parallel.
//! - The [`Ledger`] keeps the last generation handled per target: only
//!   rising generations that have not expired run; the others get
//!   `skipped_duplicate`, `skipped_stale` or `expired`. It is kept in a
//!   state file (replaced atomically after every change, before the result
//!   is published), so a restarted worker does not apply a redelivered
//!   command again. docs/design-notes.md says why a file and not the
//!   results topic.
//! - A provider call has a timeout and is retried with backoff while its
//!   error is retryable, attempts remain and the command has not expired.
//! - A command that cannot be decoded, or names an unknown target or the
//!   wrong provider, is dead-lettered with its reason and, when it can be
//!   attributed to a target, answered with a `failed` result. Nothing runs.

pub mod amqp;
pub mod config;
mod dispatch;
pub mod kafka;
mod ledger;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::broker::BrokerKind;
use crate::clock::Clock;
use crate::lifecycle::StartError;
use crate::provider::Provider;
use crate::telemetry::Metrics;
use config::WorkerConfig;

pub use dispatch::{decode, Ack, Dispatcher, Outbox, Refusal, RetryPolicy, Target};
pub use ledger::{parse_rfc3339, Entry, Ledger, StateFile, Verdict};

/// Options that tests and the demo set; production uses the defaults.
pub struct WorkerOptions {
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Serve metrics here instead of binding `metrics.listen`.
    pub listener: Option<tokio::net::TcpListener>,
    /// Providers by target name that replace the configured ones (the
    /// demo's simulated service).
    pub providers: HashMap<String, Arc<dyn Provider>>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(crate::clock::SystemClock),
            metrics: Arc::new(Metrics::new()),
            listener: None,
            providers: HashMap::new(),
        }
    }
}

/// The worker's name in results: `worker.name`, else `<hostname>-<pid>`.
pub fn worker_name(cfg: &WorkerConfig) -> String {
    cfg.worker.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".into());
        format!("{host}-{}", std::process::id())
    })
}

/// What `worker` leaves behind, for tests and logs.
#[derive(Debug)]
pub struct WorkerReport {
    /// True when the commands in hand finished before the deadline.
    pub drained: bool,
}

/// A command consumer, connected: its outbox for the dispatcher, and the
/// loop that feeds the dispatcher until `stop`, then drains it
/// (`worker.drain_timeout`) and commits. The loop returns whether the
/// drain finished in time.
pub(crate) struct Started {
    pub outbox: Arc<dyn Outbox>,
    #[allow(clippy::type_complexity)]
    pub consume: Box<dyn FnOnce(Arc<Dispatcher>) -> BoxFuture<'static, bool> + Send>,
}

/// Runs a worker until `shutdown` resolves: starts the providers (and
/// restores the last applied replicas into those that hold state), then
/// consumes commands; on shutdown stops consuming, lets the lanes finish
/// within `worker.drain_timeout`, stops the providers and commits.
pub async fn run(
    cfg: WorkerConfig,
    opts: WorkerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<WorkerReport, StartError> {
    let WorkerOptions {
        clock,
        metrics,
        listener,
        mut providers,
    } = opts;
    let listener = crate::telemetry::listener_or_bind(listener, &cfg.metrics.listen)
        .await
        .map_err(StartError::usage)?;
    let state = StateFile::new(&cfg.worker.state_file);
    let ledger = state.load().map_err(StartError::usage)?;
    let name = worker_name(&cfg);
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = match (&cfg.commands.kind, &cfg.commands.kafka, &cfg.commands.amqp) {
        (BrokerKind::Kafka, Some(k), _) => {
            kafka::start(k, &cfg, stop_rx.clone()).map_err(StartError::usage)?
        }
        (BrokerKind::Amqp, _, Some(a)) => {
            amqp::start(a, &cfg, metrics.clone(), stop_rx.clone()).await?
        }
        _ => {
            return Err(StartError::Usage(
                "commands: a worker needs [commands.kafka] or [commands.amqp]".into(),
            ))
        }
    };
    let mut targets = Vec::new();
    for t in &cfg.targets {
        metrics.worker_target_configured(&t.name, &t.provider);
        let timeout = cfg.timeout_of(t);
        let provider = match providers.remove(&t.name) {
            Some(p) => p,
            None => crate::provider::build(&t.name, &t.provider, &t.settings, timeout, &metrics)
                .map_err(StartError::usage)?,
        };
        if let Some(n) = ledger.replicas(&t.name) {
            if let Err(e) = provider.restore(n).await {
                tracing::error!(target_name = %t.name, replicas = n, error = %e, "cannot restore the last applied replicas");
            }
        }
        targets.push(Target {
            name: t.name.clone(),
            provider_name: t.provider.clone(),
            provider,
            timeout,
        });
    }
    let dispatcher = Arc::new(Dispatcher::new(
        targets,
        ledger,
        state,
        started.outbox.clone(),
        metrics.clone(),
        clock,
        name.clone(),
        RetryPolicy {
            max_attempts: cfg.worker.max_attempts,
            first_wait: cfg.worker.retry_wait,
        },
        usize::from(cfg.worker.prefetch),
    ));
    let ready = Arc::new(AtomicBool::new(true));
    let http = crate::telemetry::Server::start(listener, metrics.clone(), ready, None);
    tracing::info!(worker = %name, targets = cfg.targets.len(), "worker started");
    let mut consume = tokio::spawn((started.consume)(dispatcher));
    tokio::pin!(shutdown);
    let drained = tokio::select! {
        _ = &mut shutdown => {
            tracing::info!("worker stopping: no new commands; finishing those in hand");
            let _ = stop_tx.send(true);
            consume.await.unwrap_or(false)
        }
        r = &mut consume => {
            tracing::error!("the command consumer ended by itself");
            r.unwrap_or(false)
        }
    };
    http.stop().await;
    tracing::info!(drained, "worker stopped");
    Ok(WorkerReport { drained })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Millis;
    use crate::command::{ResultStatus, ScaleCommand};

    fn cmd(target: &str, generation: i64, expires_ms: Millis) -> ScaleCommand {
        crate::command::testing::command(target)
            .generation(generation)
            .replicas(3)
            .current(2)
            .expires_at(expires_ms)
            .id(&format!("id-{generation}"))
            .build()
    }

    #[test]
    fn rising_generations_apply_others_are_skipped_with_a_reason() {
        let mut l = Ledger::default();
        let now = 1_800_000_000_000;
        let c5 = cmd("web", 5, now + 1000);
        assert_eq!(l.judge(&c5, now), Verdict::Apply);
        l.record(&c5, ResultStatus::Applied);
        assert_eq!(
            l.judge(&c5, now),
            Verdict::Skip(ResultStatus::SkippedDuplicate)
        );
        assert_eq!(
            l.judge(&cmd("web", 4, now + 1000), now),
            Verdict::Skip(ResultStatus::SkippedStale)
        );
        assert_eq!(l.judge(&cmd("web", 6, now + 1000), now), Verdict::Apply);
        assert_eq!(
            l.judge(&cmd("api", 1, now + 1000), now),
            Verdict::Apply,
            "targets are independent"
        );
        // Out of order: 8 handled first, then 7 arrives late.
        l.record(&cmd("web", 8, now + 1000), ResultStatus::Applied);
        l.record(&cmd("web", 7, now + 1000), ResultStatus::Applied);
        assert_eq!(l.last("web"), Some(8), "the ledger never goes back");
    }

    #[test]
    fn expiry_dry_run_and_failures() {
        let mut l = Ledger::default();
        let now = 1_800_000_000_000;
        assert_eq!(
            l.judge(&cmd("web", 1, now - 1), now),
            Verdict::Skip(ResultStatus::Expired)
        );
        assert_eq!(
            l.judge(&cmd("web", 1, now), now),
            Verdict::Apply,
            "expires_at itself is still valid"
        );
        let mut bad = cmd("web", 1, now + 1000);
        bad.expires_at = "tomorrow".into();
        assert_eq!(l.judge(&bad, now), Verdict::Skip(ResultStatus::Expired));
        let mut dry = cmd("web", 2, now + 1000);
        dry.dry_run = true;
        assert_eq!(l.judge(&dry, now), Verdict::DryRun);
        l.record(&cmd("web", 3, now + 1000), ResultStatus::Failed);
        assert_eq!(l.last("web"), None, "a failure is not recorded");
        assert_eq!(l.judge(&cmd("web", 3, now + 1000), now), Verdict::Apply);
    }
}

#[cfg(test)]
mod lane_tests;
