//! `tidewatch run`: wires the source, probes, engine, command publisher and
//! results reader together, serves metrics, and drains on shutdown: stop
//! consuming, finish the batch in hand, commit offsets, publish the
//! commands already decided, flush, all within `engine.drain_timeout`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::amqp::ConnectError;
use crate::clock::Clock;
use crate::command::ScaleCommand;
use crate::config::{BrokerKind, Config, ProbeKind};
use crate::engine::{Engine, EngineHandle, Restored, TargetStatus};
use crate::lifecycle::StartError;
use crate::publish::amqp::{AmqpPublisher, AmqpResults};
use crate::publish::kafka::{KafkaPublisher, KafkaResults};
use crate::source::amqp::AmqpSource;
use crate::source::kafka::{KafkaSource, StateHook};
use crate::source::probe::{run_probe, AmqpQueueProbe, KafkaLagProbe};
use crate::source::SourceContext;
use crate::state::dir::DirStore;
use crate::state::kafka::KafkaStore;
use crate::state::{
    decode_all, Restoring, StateHandle, StateStore, StoreKind, TargetSnapshot, READ_PART,
};
use crate::telemetry::Metrics;

/// What `run` leaves behind, for tests and logs.
#[derive(Debug)]
pub struct RunReport {
    pub targets: Vec<TargetStatus>,
    /// True when everything drained before the deadline.
    pub drained: bool,
}

/// Options that tests set; production uses the defaults.
pub struct RunOptions {
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Serve metrics here instead of binding `metrics.listen`.
    pub listener: Option<tokio::net::TcpListener>,
    /// The configuration file, re-read on SIGHUP (and when it changes,
    /// with `engine.watch_config`); `None`: no reloads.
    pub config_path: Option<std::path::PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(crate::clock::SystemClock),
            metrics: Arc::new(Metrics::new()),
            listener: None,
            config_path: None,
        }
    }
}

pub async fn run(
    cfg: Config,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, StartError> {
    let RunOptions {
        clock,
        metrics,
        listener,
        config_path,
    } = opts;
    // before the targets' memory is made (crate::priority::without_huge_pages)
    crate::priority::without_huge_pages();
    let listener = crate::telemetry::listener_or_bind(listener, &cfg.metrics.listen)
        .await
        .map_err(StartError::usage)?;
    metrics.set_per_target(cfg.metrics.per_target);
    metrics.scaler_started();
    // The targets split over the engine's shards, each built on a thread.
    let mut engines = {
        let (engine_cfg, targets, metrics, now) = (
            cfg.engine.clone(),
            cfg.targets.clone(),
            metrics.clone(),
            clock.now_ms(),
        );
        tokio::task::spawn_blocking(move || {
            crate::engine::shards::build(&engine_cfg, &targets, &metrics, now)
        })
        .await
        .map_err(|e| StartError::Fault(e.to_string()))?
        .map_err(|e| StartError::Usage(e.to_string()))?
    };
    let inputs = Arc::new(crate::source::inputs::compile(
        &cfg.source.inputs,
        &cfg.engine.limits(),
    ));
    for engine in &mut engines {
        engine.set_inputs(inputs.clone());
    }
    let state = open_state(&cfg, &metrics).await?;
    // With RabbitMQ slots each slot's targets are restored when this
    // scaler becomes the slot's active consumer, not all at start.
    let slots_configured = cfg.source.kind == BrokerKind::Amqp
        && cfg.source.amqp.as_ref().is_some_and(|a| a.slots > 0);
    if let Some((handle, _)) = &state {
        for engine in &mut engines {
            engine.keep_state(handle.clone(), cfg.state.interval);
        }
        // With Kafka each assignment restores the configured targets
        // before its partitions go live (`restore_on_assignment`), and
        // which targets are this scaler's is known only then (those only
        // probes feed included: they are decided where their home
        // partition is); a restore here too read the whole store twice.
        if cfg.source.kind != BrokerKind::Kafka && !slots_configured {
            let names = cfg.targets.iter().map(|t| t.name.clone()).collect();
            restore_at_start(&mut engines, names, handle, &metrics).await;
        }
    }
    let ready = Arc::new(AtomicBool::new(cfg.source.kind == BrokerKind::None));
    // The configured targets' names, as reloads change them.
    let names = Arc::new(std::sync::RwLock::new(
        cfg.targets
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>(),
    ));
    let (in_tx, in_rxs) = EngineHandle::sharded(
        engines.len(),
        64,
        clock.clone(),
        inputs,
        cfg.engine.limits(),
        names.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = SourceContext {
        engine: in_tx.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        stop: stop_rx.clone(),
        ready: ready.clone(),
    };
    // RabbitMQ: connect before anything runs, so that refused credentials or
    // a missing exchange or queue (with declaring off) stop the start with
    // one clear error; an unreachable broker is waited for in the background.
    let amqp_source = match (&cfg.source.kind, &cfg.source.amqp) {
        (BrokerKind::Amqp, Some(a)) => {
            // the inputs' routing keys are bound with the configured ones
            let a = crate::source::AmqpSourceConfig {
                binding_keys: cfg.source.amqp_bindings(),
                ..a.clone()
            };
            // Slot queues: the targets of the slots RabbitMQ makes this
            // scaler the active consumer of are this scaler's.
            let slots = (a.slots > 0).then(|| {
                let slots = Arc::new(crate::engine::slots::Slots::new(a.slots));
                if state.is_some() {
                    slots.wait_for_state();
                }
                for engine in &mut engines {
                    engine.track_slots(slots.clone());
                }
                crate::source::amqp::SlotMode {
                    slots,
                    names: names.clone(),
                    state: state.as_ref().map(|(h, _)| h.clone()),
                    counted: Default::default(),
                }
            });
            let source = AmqpSource::new(&a, ctx.clone(), slots);
            let first = first_session(source.open().await)?;
            Some((source, first))
        }
        (BrokerKind::Amqp, None) => {
            return Err(StartError::Usage("[source.amqp] is missing".into()))
        }
        _ => None,
    };
    let amqp_publisher = match (&cfg.commands.kind, &cfg.commands.amqp) {
        (BrokerKind::Amqp, Some(a)) => {
            let publisher = AmqpPublisher::new(a, metrics.clone());
            let first = first_session(publisher.open().await)?;
            Some((publisher, first, AmqpResults::new(a, metrics.clone())))
        }
        (BrokerKind::Amqp, None) => {
            return Err(StartError::Usage("[commands.amqp] is missing".into()))
        }
        _ => None,
    };
    let status: crate::telemetry::StatusFn = {
        let weak = in_tx.downgrade();
        std::sync::Arc::new(move |target: Option<String>| {
            let weak = weak.clone();
            Box::pin(async move { weak.status(target).await })
        })
    };
    let http =
        crate::telemetry::Server::start(listener, metrics.clone(), ready.clone(), Some(status));

    let (cmd_tx, cmd_rx) = mpsc::channel::<ScaleCommand>(1024);
    let mut inputs: Vec<JoinHandle<()>> = Vec::new();

    if cfg.source.kind == BrokerKind::Kafka {
        let k = cfg
            .source
            .kafka
            .as_ref()
            .ok_or_else(|| StartError::Usage("[source.kafka] is missing".into()))?;
        // Several scalers in one group split the partitions, so the targets.
        let ownership = crate::engine::SharedOwnership::default();
        for engine in &mut engines {
            engine.track_ownership(ownership.clone());
        }
        in_tx.track_ownership(ownership.clone());
        // With a state store, an assignment goes live after a restore.
        let mut restorer = None;
        let hook = state.as_ref().map(|(handle, _)| {
            ownership
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .wait_for_state();
            let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
            let hook = StateHook {
                engine: in_tx.clone(),
                state: handle.clone(),
                targets: names.clone(),
                metrics: metrics.clone(),
                restore: wake,
                counted: Default::default(),
            };
            restorer = Some((woken, hook.clone()));
            hook
        });
        let longest = cfg
            .targets
            .iter()
            .flat_map(|t| t.windows.iter())
            .max()
            .map_or(300_000, |d| d.as_millis() as i64);
        // the inputs' topics are subscribed with the configured ones
        let k = &crate::source::KafkaSourceConfig {
            topics: cfg.source.kafka_topics(),
            ..k.clone()
        };
        let source = KafkaSource::new(k, ctx.clone(), ownership.clone(), longest, hook)
            .map_err(StartError::fault)?;
        if let Some((woken, hook)) = restorer {
            inputs.push(tokio::spawn(crate::source::kafka::restore_on_assignment(
                woken,
                hook,
                ctx.clone(),
                ownership,
                source.releaser(),
            )));
        }
        inputs.push(watched(
            "the kafka source",
            source.run(),
            &metrics,
            &stop_rx,
        ));
    }
    if let Some((source, first)) = amqp_source {
        inputs.push(watched(
            "the amqp source",
            source.run(first),
            &metrics,
            &stop_rx,
        ));
    }

    for (i, p) in cfg.probes.iter().enumerate() {
        inputs.push(match p.kind {
            ProbeKind::KafkaLag => {
                let settings = crate::source::probe::settings(p, i, cfg.source.kafka.as_ref())
                    .map_err(StartError::usage)?;
                let probe = KafkaLagProbe::new(p, settings).map_err(StartError::fault)?;
                watched(
                    "a kafka lag probe",
                    run_probe(probe, ctx.clone()),
                    &metrics,
                    &stop_rx,
                )
            }
            ProbeKind::AmqpQueue => {
                let probe = AmqpQueueProbe::new(p, i, cfg.source.amqp.as_ref())
                    .map_err(StartError::usage)?;
                watched(
                    "an amqp queue probe",
                    run_probe(probe, ctx.clone()),
                    &metrics,
                    &stop_rx,
                )
            }
        });
    }
    drop(ctx);
    let publisher: JoinHandle<()> = match cfg.commands.kind {
        BrokerKind::Kafka => {
            let k = cfg
                .commands
                .kafka
                .as_ref()
                .ok_or_else(|| StartError::Usage("[commands.kafka] is missing".into()))?;
            let results = KafkaResults::new(k, metrics.clone()).map_err(StartError::fault)?;
            inputs.push(watched(
                "the kafka results reader",
                results.run(in_tx.clone(), stop_rx.clone()),
                &metrics,
                &stop_rx,
            ));
            let publisher = KafkaPublisher::new(k, metrics.clone()).map_err(StartError::fault)?;
            // A weak sender: acknowledgements must not keep the engine's input open.
            tokio::spawn(publisher.run(cmd_rx, in_tx.downgrade()))
        }
        BrokerKind::Amqp => {
            let (publisher, first, results) =
                amqp_publisher.expect("opened above for commands.kind amqp");
            inputs.push(watched(
                "the amqp results reader",
                results.run(in_tx.clone(), stop_rx.clone()),
                &metrics,
                &stop_rx,
            ));
            tokio::spawn(publisher.run(first, cmd_rx, in_tx.downgrade()))
        }
        // No command transport: commands are logged (a dry run of the whole scaler).
        _ => tokio::spawn(log_commands(cmd_rx)),
    };
    if let Some(path) = config_path {
        let reloader = Reloader {
            path,
            running: cfg.clone(),
            engine: in_tx.clone(),
            state: state.as_ref().map(|(h, _)| h.clone()),
            metrics: metrics.clone(),
            clock: clock.clone(),
            names: names.clone(),
        };
        inputs.push(tokio::spawn(reloader.run(stop_rx.clone())));
    }
    drop(in_tx);
    // Own forecasts: the engine hands them to a task that publishes them
    // (ended when the engine is dropped, closing the channel).
    if cfg.forecasts.publish {
        let (tx, rx) = mpsc::channel(1024);
        for engine in &mut engines {
            engine.publish_forecasts(
                tx.clone(),
                cfg.forecasts.period,
                cfg.forecasts.horizon,
                cfg.forecasts.step,
            );
        }
        tokio::spawn(crate::publish::forecasts::run(
            cfg.forecasts.clone(),
            cfg.source.clone(),
            rx,
            metrics.clone(),
        ));
    }
    metrics.expect_engine_ticks(cfg.engine.tick, engines.len(), std::time::Instant::now());
    let shards = engines.len();
    let mut engine_tasks = Vec::with_capacity(shards);
    for (engine, rx) in engines.into_iter().zip(in_rxs) {
        let task = crate::engine::shards::spawn(
            engine,
            rx,
            cmd_tx.clone(),
            clock.clone(),
            cfg.engine.tick,
        )
        .map_err(|e| StartError::Fault(format!("cannot start an engine shard: {e}")))?;
        engine_tasks.push(task);
    }
    drop(cmd_tx);
    tracing::info!(targets = cfg.targets.len(), shards, "tidewatch running");

    shutdown.await;
    tracing::info!(deadline = ?cfg.engine.drain_timeout, "shutting down: draining");
    ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let drain = async {
        for h in inputs {
            let _ = h.await;
        }
        // Every input sender is gone now: the shards finish and close the
        // command channel, and the publisher drains it.
        let mut engines = Vec::new();
        for task in engine_tasks {
            if let Ok(e) = task.await {
                engines.push(e);
            }
        }
        let _ = publisher.await;
        engines
    };
    let (mut engines, drained) = match tokio::time::timeout(cfg.engine.drain_timeout, drain).await {
        Ok(e) => (e, true),
        Err(_) => {
            tracing::warn!("drain deadline passed; exiting with work unfinished");
            (Vec::new(), false)
        }
    };
    // The last word on every target this scaler still keeps (with Kafka,
    // revocation already wrote the partitions it gave away).
    // (The state thread ends by itself once the last handle is gone.)
    if let (false, Some((handle, _thread))) = (engines.is_empty(), state) {
        let n: usize = engines
            .iter_mut()
            .map(|e| e.snapshot_all(clock.now_ms()))
            .sum();
        match tokio::time::timeout(cfg.engine.drain_timeout, handle.flush()).await {
            Ok(Ok(Ok(()))) => tracing::info!(snapshots = n, "state written"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "state not written at shutdown"),
            _ => tracing::warn!("state not written within engine.drain_timeout"),
        }
    }
    http.stop().await;
    let mut targets: Vec<TargetStatus> = engines.iter().flat_map(|e| e.status()).collect();
    // in the configuration's order, as the last reload left it
    let names = names.read().unwrap_or_else(|p| p.into_inner());
    let order: std::collections::HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    targets.sort_by_key(|t| order.get(t.name.as_str()).copied().unwrap_or(usize::MAX));
    Ok(RunReport { targets, drained })
}

/// Re-reads the configuration on SIGHUP (and on change with
/// `engine.watch_config`) and hands the engine what passes every check; a
/// bad file is refused and the running configuration stays, as
/// `nginx -s reload` does.
struct Reloader {
    path: std::path::PathBuf,
    /// The configuration running now.
    running: Config,
    engine: EngineHandle,
    state: Option<StateHandle>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    names: Arc<std::sync::RwLock<Vec<String>>>,
}

impl Reloader {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: no configuration reloads");
                None
            }
        };
        let stamp = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut seen = stamp(&self.path);
        loop {
            let watch = self.running.engine.watch_config;
            let poll = self.running.engine.reload_interval;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!(file = %self.path.display(), "SIGHUP: reloading the configuration");
                }
                _ = tokio::time::sleep(poll), if watch => {
                    let now = stamp(&self.path);
                    if now == seen {
                        continue;
                    }
                    tracing::info!(file = %self.path.display(), "the configuration file changed: reloading");
                }
            }
            seen = stamp(&self.path);
            if !self.reload().await {
                return;
            }
        }
    }

    /// One reload; false when the engine is gone.
    async fn reload(&mut self) -> bool {
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load_for_run(&path)).await;
        let new = match loaded {
            Ok(Ok((c, _warnings))) => c,
            Ok(Err(e)) => {
                self.metrics.config_reloaded(
                    "refused",
                    &format!(
                        "{}: {e}; the running configuration stays",
                        self.path.display()
                    ),
                );
                return true;
            }
            Err(e) => {
                self.metrics.config_reloaded("refused", &e.to_string());
                return true;
            }
        };
        let mut restart = Vec::new();
        let old = &self.running;
        for (name, differs) in [
            ("source", new.source != old.source),
            ("commands", new.commands != old.commands),
            ("metrics", new.metrics != old.metrics),
            ("state", new.state != old.state),
            ("probes", new.probes != old.probes),
            ("engine.tick", new.engine.tick != old.engine.tick),
            ("engine.shards", new.engine.shards != old.engine.shards),
        ] {
            if differs {
                restart.push(name);
            }
        }
        let running: std::collections::HashSet<&str> =
            old.targets.iter().map(|t| t.name.as_str()).collect();
        let fresh: Vec<crate::engine::TargetConfig> = new
            .targets
            .iter()
            .filter(|t| !running.contains(t.name.as_str()))
            .cloned()
            .collect();
        let (engine_cfg, metrics, now) = (
            new.engine.clone(),
            self.metrics.clone(),
            self.clock.now_ms(),
        );
        let to_build = fresh.clone();
        let shards = self.engine.shards();
        let prepared = tokio::task::spawn_blocking(move || {
            crate::engine::Prepared::build(&engine_cfg, &to_build, &metrics, now, shards)
        })
        .await;
        let prepared = match prepared {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                self.metrics.config_reloaded("refused", &e.to_string());
                return true;
            }
            Err(e) => {
                self.metrics.config_reloaded("refused", &e.to_string());
                return true;
            }
        };
        let fresh_names: Vec<String> = fresh.iter().map(|t| t.name.clone()).collect();
        let snapshots = match &self.state {
            Some(h) if !fresh_names.is_empty() => decode_all(
                &fresh_names,
                h.read(fresh_names.clone()).await,
                &self.metrics,
            ),
            _ => Vec::new(),
        };
        // The engine keeps its shard count until a restart.
        let mut engine_cfg = new.engine.clone();
        engine_cfg.shards = old.engine.shards;
        let reconfigured = self
            .engine
            .reconfigure(engine_cfg, new.targets.clone(), prepared, snapshots)
            .await;
        let Ok(report) = reconfigured else {
            return false;
        };
        *self.names.write().unwrap_or_else(|p| p.into_inner()) =
            new.targets.iter().map(|t| t.name.clone()).collect();
        // What needs a restart keeps running as it was, and keeps being reported.
        // what needs a restart keeps its running value, so that the next
        // reload still reports it
        let (tick, shards) = (self.running.engine.tick, self.running.engine.shards);
        self.running.engine = new.engine;
        self.running.engine.tick = tick;
        self.running.engine.shards = shards;
        self.running.targets = new.targets;
        if restart.is_empty() {
            self.metrics.config_reloaded("applied", &report.summary());
        } else {
            self.metrics.config_reloaded(
                "restart_needed",
                &format!(
                    "{}; changed settings that need a restart, still running as before: {}",
                    report.summary(),
                    restart.join(", ")
                ),
            );
        }
        true
    }
}

/// The state store `[state]` asks for, on its own thread. A store that
/// cannot be opened stops the start (a scaler told to keep state that
/// silently forgets it would mislead); a topic that is not compacted is a
/// warning.
async fn open_state(
    cfg: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<(StateHandle, std::thread::JoinHandle<()>)>, StartError> {
    let store: Box<dyn StateStore> = match cfg.state.resolved(cfg.source.kind == BrokerKind::Kafka)
    {
        StoreKind::Dir => {
            let dir = cfg
                .state
                .dir
                .as_ref()
                .ok_or_else(|| StartError::Usage("state.dir: not set".into()))?;
            Box::new(DirStore::open(dir).map_err(|e| StartError::Usage(e.to_string()))?)
        }
        StoreKind::Kafka => {
            let k = cfg
                .source
                .kafka
                .as_ref()
                .ok_or_else(|| StartError::Usage("[source.kafka] is missing".into()))?;
            let (settings, topic) = (k.client_settings(), cfg.state.topic.clone());
            // it talks to the broker and blocks: off the runtime's threads
            let store = tokio::task::spawn_blocking(move || KafkaStore::open(&settings, &topic))
                .await
                .map_err(|e| StartError::Fault(e.to_string()))?;
            Box::new(store.map_err(|e| StartError::Fault(e.to_string()))?)
        }
        StoreKind::None | StoreKind::Auto => {
            tracing::info!("no state store: a restart starts every target cold (set state.dir, or use a Kafka source)");
            return Ok(None);
        }
    };
    Ok(Some(StateHandle::start_writing(
        store,
        metrics.clone(),
        cfg.state.format,
    )))
}

/// Gives each of the targets `names` its snapshot before anything runs;
/// counts each target's outcome.
async fn restore_at_start(
    engines: &mut [Engine],
    names: Vec<String>,
    handle: &StateHandle,
    metrics: &Metrics,
) {
    let started = std::time::Instant::now();
    let mut restored = std::collections::HashSet::new();
    // a part at a time, so that the stored bytes of every target are
    // never held at once
    let mut parts = handle.read_parts(names.clone(), READ_PART);
    let mut restoring = Restoring::new(&names, metrics);
    while let Some(part) = parts.recv().await {
        restoring.part(part, |batch| {
            restored.extend(apply_on_each_shard(engines, batch));
        });
    }
    restoring.finish(true);
    metrics.state_restore_took(started.elapsed().as_secs_f64());
    tracing::info!(
        store = handle.kind(),
        restored = restored.len(),
        targets = names.len(),
        took = ?started.elapsed(),
        "state restored"
    );
}

/// Gives each snapshot of `batch` to its shard's engine, every shard on a
/// thread of its own (a format 1 snapshot's restore re-packs days of
/// history, and on one core it took longer than decoding the snapshots on
/// every core; format 2's copies them, and the shards still share the
/// rest of the import); the targets that took theirs.
fn apply_on_each_shard(engines: &mut [Engine], batch: Vec<TargetSnapshot>) -> Vec<String> {
    use crate::engine::shards::{shard_of, split_into};
    let shards = engines.len();
    let taken = |e: &mut Engine, part: Vec<TargetSnapshot>| -> Vec<String> {
        part.into_iter()
            .filter(|s| e.restore(s) == Restored::Applied)
            .map(|s| s.target)
            .collect()
    };
    if shards == 1 {
        return taken(&mut engines[0], batch);
    }
    let parts = split_into(batch, shards, |s| shard_of(&s.target, shards));
    std::thread::scope(|scope| {
        let running: Vec<_> = engines
            .iter_mut()
            .zip(parts)
            .filter(|(_, part)| !part.is_empty())
            .map(|(e, part)| scope.spawn(move || taken(e, part)))
            .collect();
        running
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// The first connection of a RabbitMQ component: fatal when retrying
/// cannot help, else `None` (the component keeps trying by itself).
fn first_session<S>(opened: Result<S, ConnectError>) -> Result<Option<S>, StartError> {
    match opened {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.retryable() => {
            tracing::error!("{e}; retrying in the background");
            Ok(None)
        }
        Err(e) => Err(StartError::Fault(e.to_string())),
    }
}

async fn log_commands(mut rx: mpsc::Receiver<ScaleCommand>) {
    while let Some(c) = rx.recv().await {
        tracing::info!(
            target_name = %c.target, desired = c.desired_replicas, generation = c.generation,
            "command (no commands transport configured): {}", String::from_utf8_lossy(&c.to_json())
        );
    }
}

/// Spawns an input; if it ends before the scaler is told to stop, the
/// process is no longer alive (`/healthz` says which input ended).
fn watched(
    name: &'static str,
    input: impl std::future::Future<Output = ()> + Send + 'static,
    metrics: &Arc<Metrics>,
    stop: &watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (metrics, stop) = (metrics.clone(), stop.clone());
    tokio::spawn(async move {
        input.await;
        if !*stop.borrow() {
            metrics.input_lost(name);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Millis;
    use crate::engine::{EngineConfig, TargetConfig};

    const T0: Millis = 1_764_000_000_000;

    /// A start's restore gives each shard the snapshots of its own
    /// targets, the shards side by side: every target takes its own, and
    /// each comes back as a target that took its snapshot.
    #[test]
    fn each_shard_takes_its_own_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.lua"),
            "return { decide = function(ctx) return 7 end }",
        )
        .unwrap();
        let targets: Vec<TargetConfig> = (0..40)
            .map(|i| TargetConfig::new(&format!("t{i}"), dir.path().join("p.lua"), "log", 1, 100))
            .collect();
        let metrics = Arc::new(Metrics::new());
        let cfg = |shards| EngineConfig {
            shards,
            ..EngineConfig::default()
        };
        // the state of a process that commanded 7 replicas of each
        let mut before = crate::engine::shards::build(&cfg(1), &targets, &metrics, T0).unwrap();
        assert_eq!(before[0].tick(T0).len(), 40);
        let snapshots: Vec<TargetSnapshot> = targets
            .iter()
            .map(|t| {
                before[0]
                    .snapshot(&t.name, T0, "the process before")
                    .unwrap()
            })
            .collect();
        let mut engines = crate::engine::shards::build(&cfg(2), &targets, &metrics, T0).unwrap();
        let held = |engines: &[Engine]| -> Vec<(String, u32)> {
            let mut all: Vec<(String, u32)> = engines
                .iter()
                .flat_map(|e| e.status())
                .map(|s| (s.name, s.replicas))
                .collect();
            all.sort();
            all
        };
        assert!(
            engines.iter().all(|e| !e.status().is_empty()),
            "both shards hold targets"
        );
        assert!(held(&engines).iter().all(|(_, n)| *n != 7));
        let mut took = apply_on_each_shard(&mut engines, snapshots);
        took.sort();
        let mut names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        names.sort();
        assert_eq!(took, names);
        let want: Vec<(String, u32)> = names.iter().map(|n| (n.clone(), 7)).collect();
        assert_eq!(held(&engines), want);
    }
}
