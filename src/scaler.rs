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
use crate::engine::{drive, Engine, EngineHandle, TargetStatus};
use crate::lifecycle::StartError;
use crate::publish::amqp::{AmqpPublisher, AmqpResults};
use crate::publish::kafka::{KafkaPublisher, KafkaResults};
use crate::source::amqp::AmqpSource;
use crate::source::kafka::KafkaSource;
use crate::source::probe::{run_probe, AmqpQueueProbe, KafkaLagProbe};
use crate::source::SourceContext;
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
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(crate::clock::SystemClock),
            metrics: Arc::new(Metrics::new()),
            listener: None,
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
    } = opts;
    let listener = crate::telemetry::listener_or_bind(listener, &cfg.metrics.listen)
        .await
        .map_err(StartError::usage)?;
    metrics.scaler_started();
    let mut engine = Engine::new(&cfg.engine, &cfg.targets, metrics.clone(), clock.now_ms())
        .map_err(|e| StartError::Usage(e.to_string()))?;
    let ready = Arc::new(AtomicBool::new(cfg.source.kind == BrokerKind::None));
    let (in_tx, in_rx) = EngineHandle::channel(64);
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
            let source = AmqpSource::new(a, ctx.clone());
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
    let http = crate::telemetry::Server::start(listener, metrics.clone(), ready.clone());

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
        engine.track_ownership(ownership.clone());
        let longest = cfg
            .targets
            .iter()
            .flat_map(|t| t.windows.iter())
            .max()
            .map_or(300_000, |d| d.as_millis() as i64);
        let source =
            KafkaSource::new(k, ctx.clone(), ownership, longest).map_err(StartError::fault)?;
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
    drop(in_tx);
    metrics.expect_engine_ticks(cfg.engine.tick, std::time::Instant::now());
    let engine_task = tokio::spawn(drive(
        engine,
        in_rx,
        cmd_tx,
        clock.clone(),
        cfg.engine.tick,
        std::future::pending::<()>(),
    ));
    tracing::info!(targets = cfg.targets.len(), "tidewatch running");

    shutdown.await;
    tracing::info!(deadline = ?cfg.engine.drain_timeout, "shutting down: draining");
    ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let drain = async {
        for h in inputs {
            let _ = h.await;
        }
        // Every input sender is gone now: the engine finishes and closes the
        // command channel, and the publisher drains it.
        let engine = engine_task.await.ok();
        let _ = publisher.await;
        engine
    };
    let (engine, drained) = match tokio::time::timeout(cfg.engine.drain_timeout, drain).await {
        Ok(e) => (e, true),
        Err(_) => {
            tracing::warn!("drain deadline passed; exiting with work unfinished");
            (None, false)
        }
    };
    http.stop().await;
    Ok(RunReport {
        targets: engine.map(|e| e.status()).unwrap_or_default(),
        drained,
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
