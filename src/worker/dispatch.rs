//! The dispatcher: decodes commands (refusing what it cannot attribute),
//! and runs each target's commands in order on a lane of its own, with a
//! timeout and retries per provider call, a result for every command.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::ledger::{parse_rfc3339, Ledger, StateFile, Verdict};
use crate::clock::{rfc3339, Clock, Millis};
use crate::command::{ResultStatus, ScaleCommand, ScaleResult, VERSION};
use crate::event::{DeadLetter, Origin};
use crate::provider::{Provider, ProviderError};
use crate::retry::Backoff;
use crate::telemetry::Metrics;

/// Acknowledges a command to its broker (stores the Kafka offset, acks
/// the AMQP delivery), after its result was published.
pub type Ack = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// Where a worker publishes: results and dead letters. Both retry until
/// the broker takes the message.
pub trait Outbox: Send + Sync {
    fn result<'a>(&'a self, r: &'a ScaleResult) -> BoxFuture<'a, ()>;
    fn dead_letter<'a>(&'a self, bytes: &'a [u8], dl: &'a DeadLetter) -> BoxFuture<'a, ()>;
}

/// A configured target and its provider.
pub struct Target {
    pub name: String,
    /// The provider name commands must carry.
    pub provider_name: String,
    pub provider: Arc<dyn Provider>,
    pub timeout: Duration,
}

/// How provider calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_wait: Duration,
}

struct Job {
    command: ScaleCommand,
    ack: Ack,
}

/// What lanes share.
struct Shared {
    ledger: Mutex<Ledger>,
    state: StateFile,
    /// Orders the writes of the state file.
    save: tokio::sync::Mutex<()>,
    outbox: Arc<dyn Outbox>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    worker: String,
    retry: RetryPolicy,
}

/// Why a command was refused before any provider saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
    /// (target, command id, generation) when the message names them.
    pub attributed: Option<(String, String, i64)>,
}

/// Decodes and checks a command against the configured targets: one typed
/// parse; only a message that fails it is read again as plain JSON, to
/// say why and to whom it belongs.
pub fn decode(
    bytes: &[u8],
    targets: &HashMap<String, Arc<Target>>,
) -> Result<ScaleCommand, Refusal> {
    let c = match serde_json::from_slice::<ScaleCommand>(bytes) {
        Ok(c) => c,
        Err(e) => return Err(refusal_of(bytes, e)),
    };
    let refuse = |reason, detail: String| Refusal {
        reason,
        detail,
        attributed: crate::event::valid_target_name(&c.target)
            .then(|| (c.target.clone(), c.id.clone(), c.generation)),
    };
    if c.version != VERSION {
        return Err(refuse(
            "unsupported_version",
            format!(
                "command version {}; this worker reads version {VERSION}",
                c.version
            ),
        ));
    }
    let Some(t) = targets.get(&c.target) else {
        return Err(refuse(
            "unknown_target",
            format!("target {:?} is not configured in this worker", c.target),
        ));
    };
    if c.provider != t.provider_name {
        return Err(refuse(
            "unknown_provider",
            format!(
                "the command names provider {:?}; target {:?} is configured with {:?}",
                c.provider, c.target, t.provider_name
            ),
        ));
    }
    Ok(c)
}

/// Why a message is not a version-1 command, attributed to its target
/// when it names one.
fn refusal_of(bytes: &[u8], typed: serde_json::Error) -> Refusal {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            return Refusal {
                reason: "invalid_json",
                detail: format!("not JSON: {e}"),
                attributed: None,
            }
        }
    };
    let attributed = match (&value["target"], &value["generation"]) {
        (serde_json::Value::String(t), g) if crate::event::valid_target_name(t) => Some((
            t.clone(),
            value["id"].as_str().unwrap_or_default().to_owned(),
            g.as_i64().unwrap_or(0),
        )),
        _ => None,
    };
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v != u64::from(VERSION) => Refusal {
            reason: "unsupported_version",
            detail: format!("command version {v}; this worker reads version {VERSION}"),
            attributed,
        },
        _ => Refusal {
            reason: "invalid_command",
            detail: format!("not a scale command: {typed}"),
            attributed,
        },
    }
}

/// Routes commands to per-target lanes.
pub struct Dispatcher {
    targets: HashMap<String, Arc<Target>>,
    lanes: Mutex<HashMap<String, mpsc::Sender<Job>>>,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
    shared: Arc<Shared>,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        targets: Vec<Target>,
        ledger: Ledger,
        state: StateFile,
        outbox: Arc<dyn Outbox>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        worker: String,
        retry: RetryPolicy,
        lane_depth: usize,
    ) -> Self {
        let shared = Arc::new(Shared {
            ledger: Mutex::new(ledger),
            state,
            save: tokio::sync::Mutex::new(()),
            outbox,
            metrics,
            clock,
            worker,
            retry,
        });
        let mut tasks = JoinSet::new();
        let mut lanes = HashMap::new();
        let mut by_name = HashMap::new();
        for t in targets {
            let t = Arc::new(t);
            let (tx, rx) = mpsc::channel(lane_depth.max(1));
            tasks.spawn(lane(t.clone(), rx, shared.clone()));
            lanes.insert(t.name.clone(), tx);
            by_name.insert(t.name.clone(), t);
        }
        Self {
            targets: by_name,
            lanes: Mutex::new(lanes),
            tasks: tokio::sync::Mutex::new(tasks),
            shared,
        }
    }

    /// Hands one message to its target's lane (waiting while the lane is
    /// full), or refuses it: dead letter, a `failed` result when it can be
    /// attributed, then the ack.
    pub async fn submit(&self, bytes: &[u8], origin: &Origin, ack: Ack) {
        match decode(bytes, &self.targets) {
            Ok(command) => {
                let lane = self
                    .lanes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&command.target)
                    .cloned();
                // No lane: draining for shutdown; the message stays unacked
                // and is delivered again.
                if let Some(lane) = lane {
                    let _ = lane.send(Job { command, ack }).await;
                }
            }
            Err(r) => {
                let s = &self.shared;
                tracing::warn!(reason = r.reason, detail = %r.detail, topic = %origin.topic, "command refused; dead-lettered");
                let dl = DeadLetter::single(
                    "worker",
                    origin,
                    bytes,
                    r.reason,
                    &r.detail,
                    s.clock.now_ms(),
                );
                s.outbox.dead_letter(bytes, &dl).await;
                s.metrics.dead_lettered("worker", r.reason);
                if let Some((target, id, generation)) = r.attributed {
                    let result = s.result(
                        &target,
                        id,
                        generation,
                        ResultStatus::Failed,
                        None,
                        Some(format!("{}: {}", r.reason, r.detail)),
                    );
                    s.outbox.result(&result).await;
                }
                ack().await;
            }
        }
    }

    /// Stops taking commands and waits up to `timeout` for the lanes to
    /// finish what they hold. True when they did.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut tasks = self.tasks.lock().await;
        let done = async { while tasks.join_next().await.is_some() {} };
        let drained = tokio::time::timeout(timeout, done).await.is_ok();
        if !drained {
            tasks.abort_all();
        }
        for t in self.targets.values() {
            t.provider.stop().await;
        }
        drained
    }
}

impl Shared {
    fn result(
        &self,
        target: &str,
        command_id: String,
        generation: i64,
        status: ResultStatus,
        observed: Option<u32>,
        error: Option<String>,
    ) -> ScaleResult {
        ScaleResult {
            version: VERSION,
            command_id,
            target: target.to_owned(),
            generation,
            status,
            observed_replicas: observed,
            error,
            worker: self.worker.clone(),
            finished_at: rfc3339(self.clock.now_ms()),
        }
    }

    async fn execute(&self, t: &Target, c: &ScaleCommand) -> ScaleResult {
        let verdict = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .judge(c, self.clock.now_ms());
        let (status, observed, error) = match verdict {
            Verdict::Skip(s) => {
                tracing::info!(target_name = %c.target, generation = c.generation, status = s.as_str(), "command skipped");
                (s, None, None)
            }
            Verdict::DryRun => {
                tracing::info!(target_name = %c.target, generation = c.generation, replicas = c.desired_replicas, "dry run: would scale");
                (ResultStatus::DryRun, None, None)
            }
            Verdict::Apply => match self.call(t, c).await {
                Ok(observed) => {
                    tracing::info!(target_name = %c.target, generation = c.generation, replicas = c.desired_replicas, ?observed, provider = t.provider.name(), "applied");
                    (ResultStatus::Applied, observed, None)
                }
                Err(e) => {
                    tracing::warn!(target_name = %c.target, generation = c.generation, error = %e, "command failed");
                    (ResultStatus::Failed, None, Some(e.to_string()))
                }
            },
        };
        let changed = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(c, status);
        if changed {
            self.persist().await;
        }
        self.result(
            &c.target,
            c.id.clone(),
            c.generation,
            status,
            observed,
            error,
        )
    }

    /// Writes the ledger; a failure is logged and retried with the next
    /// change (the result is still published: the command did happen).
    async fn persist(&self) {
        let _order = self.save.lock().await;
        let bytes = StateFile::encode(
            &self.worker,
            &self.ledger.lock().unwrap_or_else(|p| p.into_inner()),
        );
        let state = self.state.clone();
        match tokio::task::spawn_blocking(move || state.write(&bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(file = %self.state.path.display(), error = %e, "worker.state_file: cannot write")
            }
            Err(e) => tracing::error!(error = %e, "worker.state_file: writer failed"),
        }
    }

    /// The provider call with a timeout per attempt and retries with
    /// backoff for retryable errors, while attempts remain and the command
    /// has not expired.
    async fn call(&self, t: &Target, c: &ScaleCommand) -> Result<Option<u32>, CallFailed> {
        let provider = t.provider.name();
        let expires = parse_rfc3339(&c.expires_at).unwrap_or(Millis::MIN);
        let max = self.retry.max_attempts.max(1);
        let mut backoff = Backoff::starting_at(self.retry.first_wait);
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(t.timeout, t.provider.scale(c)).await;
            let seconds = started.elapsed().as_secs_f64();
            let (label, err) = match outcome {
                Ok(Ok(observed)) => {
                    self.metrics.provider_called(provider, "ok", seconds);
                    return Ok(observed);
                }
                Ok(Err(e)) => ("error", e),
                Err(_) => (
                    "timeout",
                    ProviderError {
                        message: format!("{provider}: no answer within {:?}", t.timeout),
                        retryable: true,
                    },
                ),
            };
            self.metrics.provider_called(provider, label, seconds);
            let failed = |stop| CallFailed {
                message: err.message.clone(),
                attempt,
                max,
                stop,
            };
            if !err.retryable {
                return Err(failed(Stop::NotRetryable));
            }
            if attempt >= max {
                return Err(failed(Stop::Exhausted));
            }
            let wait = backoff.next_wait();
            if self.clock.now_ms() + wait.as_millis() as Millis > expires {
                return Err(failed(Stop::Expires(c.expires_at.clone())));
            }
            tracing::warn!(target_name = %c.target, generation = c.generation, attempt, error = %err.message, "provider call failed; retrying in {wait:?}");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// A provider call that gave up: the provider's last error, the attempts,
/// and why there was no further attempt. Its text is the result's `error`.
#[derive(Debug, thiserror::Error)]
#[error("{message} (attempt {attempt} of {max}{stop})")]
struct CallFailed {
    message: String,
    attempt: u32,
    max: u32,
    stop: Stop,
}

#[derive(Debug)]
enum Stop {
    NotRetryable,
    Exhausted,
    Expires(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::NotRetryable => f.write_str("; not retryable"),
            Stop::Exhausted => Ok(()),
            Stop::Expires(at) => write!(f, "; no retry: the command expires at {at}"),
        }
    }
}

async fn lane(t: Arc<Target>, mut rx: mpsc::Receiver<Job>, s: Arc<Shared>) {
    while let Some(Job { command, ack }) = rx.recv().await {
        let r = s.execute(&t, &command).await;
        s.outbox.result(&r).await;
        s.metrics.worker_result(&r);
        ack().await;
    }
}
