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
pub mod kafka;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::clock::{rfc3339, Clock, Millis};
use crate::command::{ResultStatus, ScaleCommand, ScaleResult, VERSION};
use crate::engine::Origin;
use crate::provider::{Provider, ProviderError};
use crate::retry::Backoff;
use crate::run::RunError;
use crate::source::DeadLetter;
use crate::telemetry::Metrics;
use config::{WorkerConfig, WorkerTargetConfig};

/// What to do with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Run the provider.
    Apply,
    /// Record what would happen; run nothing.
    DryRun,
    /// Done without running anything, with this result status.
    Skip(ResultStatus),
}

/// What the ledger keeps per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The last generation handled (applied, dry run, expired).
    pub generation: i64,
    /// The replicas last applied, restored into providers that hold the
    /// state themselves (`process`) after a restart.
    #[serde(default)]
    pub replicas: Option<u32>,
}

/// The last generation handled per target (applied, dry run, expired or
/// skipped), so that a redelivered command is a duplicate and an older
/// one is stale.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(default)]
    targets: HashMap<String, Entry>,
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

impl Ledger {
    /// The verdict for `c` at `now`. An unparseable `expires_at` counts as
    /// expired: a command whose deadline cannot be read is not executed.
    pub fn judge(&self, c: &ScaleCommand, now: Millis) -> Verdict {
        match self.targets.get(&c.target).map(|e| e.generation) {
            Some(g) if c.generation == g => return Verdict::Skip(ResultStatus::SkippedDuplicate),
            Some(g) if c.generation < g => return Verdict::Skip(ResultStatus::SkippedStale),
            _ => {}
        }
        match parse_rfc3339(&c.expires_at) {
            Some(at) if now <= at => {}
            _ => return Verdict::Skip(ResultStatus::Expired),
        }
        if c.dry_run {
            Verdict::DryRun
        } else {
            Verdict::Apply
        }
    }

    /// Records that `c` was handled with `status`; true when the ledger
    /// changed. A failed command is not recorded: the scaler re-issues it
    /// with a new generation, and a redelivery of the same one may be
    /// tried again.
    pub fn record(&mut self, c: &ScaleCommand, status: ResultStatus) -> bool {
        if status == ResultStatus::Failed {
            return false;
        }
        let e = self.targets.entry(c.target.clone()).or_insert(Entry {
            generation: i64::MIN,
            replicas: None,
        });
        if c.generation <= e.generation {
            return false;
        }
        e.generation = c.generation;
        if status == ResultStatus::Applied {
            e.replicas = Some(c.desired_replicas);
        }
        true
    }

    /// The last generation handled for `target`.
    pub fn last(&self, target: &str) -> Option<i64> {
        self.targets.get(target).map(|e| e.generation)
    }

    /// The replicas last applied to `target`.
    pub fn replicas(&self, target: &str) -> Option<u32> {
        self.targets.get(target).and_then(|e| e.replicas)
    }
}

/// The ledger on disk: JSON, written to a temporary file, synced, then
/// renamed over the old one, so a crash leaves the old or the new state.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

/// The file as read: `version` and `worker` are required, only the ledger is used.
#[derive(Deserialize)]
#[allow(dead_code)]
struct StateDoc {
    version: u32,
    worker: String,
    #[serde(flatten)]
    ledger: Ledger,
}

impl StateFile {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    /// The saved ledger; empty when the file does not exist yet. A file
    /// that cannot be read is an error naming it: starting afresh would
    /// apply old commands again.
    pub fn load(&self) -> Result<Ledger, String> {
        let shown = self.path.display();
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<StateDoc>(&bytes)
                .map(|d| d.ledger)
                .map_err(|e| {
                    format!(
                        "worker.state_file {shown}: cannot be read ({e}); fix or delete it to start                          with no memory of applied commands"
                    )
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(format!("worker.state_file {shown}: {e}")),
        }
    }

    pub fn save(&self, worker: &str, ledger: &Ledger) -> std::io::Result<()> {
        self.write(&Self::encode(worker, ledger))
    }

    /// The file's contents for `ledger`.
    pub fn encode(worker: &str, ledger: &Ledger) -> Vec<u8> {
        #[derive(Serialize)]
        struct Doc<'a> {
            version: u32,
            worker: &'a str,
            #[serde(flatten)]
            ledger: &'a Ledger,
        }
        let doc = Doc {
            version: 1,
            worker,
            ledger,
        };
        serde_json::to_vec_pretty(&doc).expect("a ledger always serializes")
    }

    /// Replaces the file with `bytes`: temporary file, fsync, rename.
    pub fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

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

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    fn new(
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
                s.metrics
                    .dead_letters
                    .with_label_values(&["worker", r.reason])
                    .inc();
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

async fn lane(t: Arc<Target>, mut rx: mpsc::Receiver<Job>, s: Arc<Shared>) {
    while let Some(Job { command, ack }) = rx.recv().await {
        let r = s.execute(&t, &command).await;
        s.outbox.result(&r).await;
        s.metrics
            .worker_results
            .with_label_values(&[r.target.as_str(), r.status.as_str()])
            .inc();
        ack().await;
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
                    (ResultStatus::Failed, None, Some(e))
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
    async fn call(&self, t: &Target, c: &ScaleCommand) -> Result<Option<u32>, String> {
        let provider = t.provider.name();
        let expires = parse_rfc3339(&c.expires_at).unwrap_or(Millis::MIN);
        let max = self.retry.max_attempts.max(1);
        let mut backoff = Backoff::starting_at(self.retry.first_wait);
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(t.timeout, t.provider.scale(c)).await;
            self.metrics
                .provider_seconds
                .with_label_values(&[provider])
                .observe(started.elapsed().as_secs_f64());
            let (label, err) = match outcome {
                Ok(Ok(observed)) => {
                    self.metrics
                        .provider_calls
                        .with_label_values(&[provider, "ok"])
                        .inc();
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
            self.metrics
                .provider_calls
                .with_label_values(&[provider, label])
                .inc();
            if !err.retryable {
                return Err(format!(
                    "{} (attempt {attempt} of {max}; not retryable)",
                    err.message
                ));
            }
            if attempt >= max {
                return Err(format!("{} (attempt {attempt} of {max})", err.message));
            }
            let wait = backoff.next_wait();
            if self.clock.now_ms() + wait.as_millis() as Millis > expires {
                return Err(format!(
                    "{} (attempt {attempt} of {max}; no retry: the command expires at {})",
                    err.message, c.expires_at
                ));
            }
            tracing::warn!(target_name = %c.target, generation = c.generation, attempt, error = %err.message, "provider call failed; retrying in {wait:?}");
            tokio::time::sleep(wait).await;
            attempt += 1;
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

/// Builds a target's provider from its settings (on the current runtime:
/// `process` starts its supervisor).
pub fn build_provider(
    t: &WorkerTargetConfig,
    timeout: Duration,
) -> Result<Arc<dyn Provider>, String> {
    use crate::provider::*;
    let key = |k: &str| format!("targets.{}.{k}", t.name);
    let missing = || format!("{}: missing", key(&t.provider));
    Ok(match t.provider.as_str() {
        "log" => Arc::new(log::LogProvider),
        "exec" => {
            let e = t.exec.as_ref().ok_or_else(missing)?;
            Arc::new(
                exec::ExecProvider::new(e.command.clone(), timeout)
                    .map_err(|m| format!("{}: {m}", key("exec.command")))?,
            )
        }
        "http" => {
            let h = t.http.as_ref().ok_or_else(missing)?;
            let token = h.token_secret().resolve(&key("http.token"))?;
            Arc::new(
                http::HttpProvider::new(&h.url, token, timeout)
                    .map_err(|m| format!("{}: {m}", key("http")))?,
            )
        }
        "process" => {
            let p = t.process.as_ref().ok_or_else(missing)?;
            Arc::new(
                process::ProcessProvider::new(&t.name, p.command.clone(), p.grace, p.dir.clone())
                    .map_err(|m| format!("{}: {m}", key("process.command")))?,
            )
        }
        "kubernetes" => {
            let k = t.kubernetes.as_ref().ok_or_else(missing)?;
            Arc::new(
                kubernetes::Deferred::new(k, timeout)
                    .map_err(|m| format!("{}: {m}", key("kubernetes")))?,
            )
        }
        other => return Err(format!("{}: {other:?} is not a provider", key("provider"))),
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
) -> Result<WorkerReport, RunError> {
    let WorkerOptions {
        clock,
        metrics,
        listener,
        mut providers,
    } = opts;
    let listener = crate::telemetry::listener_or_bind(listener, &cfg.metrics.listen)
        .await
        .map_err(RunError::Config)?;
    let state = StateFile::new(&cfg.worker.state_file);
    let ledger = state.load().map_err(RunError::Config)?;
    let name = worker_name(&cfg);
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = match (&cfg.commands.kind, &cfg.commands.kafka, &cfg.commands.amqp) {
        (crate::config::BrokerKind::Kafka, Some(k), _) => {
            kafka::start(k, &cfg, stop_rx.clone()).map_err(RunError::Config)?
        }
        (crate::config::BrokerKind::Amqp, _, Some(a)) => {
            amqp::start(a, &cfg, metrics.clone(), stop_rx.clone()).await?
        }
        _ => {
            return Err(RunError::Config(
                "commands: a worker needs [commands.kafka] or [commands.amqp]".into(),
            ))
        }
    };
    let mut targets = Vec::new();
    for t in &cfg.targets {
        let timeout = cfg.timeout_of(t);
        let provider = match providers.remove(&t.name) {
            Some(p) => p,
            None => build_provider(t, timeout).map_err(RunError::Config)?,
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
    let http = crate::telemetry::Server::start(listener, metrics.clone(), ready);
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
    use crate::clock::rfc3339;

    fn cmd(target: &str, generation: i64, expires_ms: Millis) -> ScaleCommand {
        ScaleCommand {
            version: 1,
            id: format!("id-{generation}"),
            target: target.into(),
            provider: "log".into(),
            desired_replicas: 3,
            current_replicas: 2,
            reason: String::new(),
            policy: String::new(),
            generation,
            issued_at: rfc3339(expires_ms - 60_000),
            expires_at: rfc3339(expires_ms),
            dry_run: false,
        }
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
