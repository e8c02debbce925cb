//! Commands on Kafka: an idempotent producer (acks=all) publishes each
//! command keyed by target and retries with backoff until the broker
//! acknowledges it; a consumer reads workers' results for the closed loop.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::broker::kafka::LoggingContext;
use crate::broker::unique_suffix;
use crate::broker::BrokerError;
use crate::command::config::KafkaCommandsConfig;
use crate::command::ScaleCommand;
use crate::engine::{EngineHandle, WeakEngineHandle};
use crate::publish::{confirmed, deliver_result};
use crate::telemetry::Metrics;

pub struct KafkaPublisher {
    config: ClientConfig,
    context: LoggingContext,
    producer: FutureProducer<LoggingContext>,
    topic: String,
    metrics: Arc<Metrics>,
}

/// Failed attempts in a row (of any command) after which the producer is
/// replaced by a new one: a broker that lost the producer's state (a
/// restart with empty storage, `UnknownProducerId`) otherwise times out
/// every record of the old producer for ever.
const RECREATE_AFTER: u32 = 3;
/// A command unacknowledged this long makes the scaler not ready.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

type Attempt = futures::future::BoxFuture<'static, (ScaleCommand, Result<(), KafkaError>)>;

impl KafkaPublisher {
    pub fn new(cfg: &KafkaCommandsConfig, metrics: Arc<Metrics>) -> Result<Self, BrokerError> {
        let s = cfg.client_settings();
        let mut c = s.client_config()?;
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            // librdkafka retries inside this time; we retry beyond it.
            .set("message.timeout.ms", "10000");
        let context = LoggingContext {
            key: s.key.clone(),
            brokers: s.brokers.clone(),
        };
        let producer = c.create_with_context(context.clone()).map_err(|e| {
            BrokerError::new("commands.kafka", format!("cannot create the producer: {e}"))
        })?;
        Ok(Self {
            config: c,
            context,
            producer,
            topic: cfg.topic.clone(),
            metrics,
        })
    }

    /// One attempt to publish `c`, on the current producer.
    fn attempt(&self, c: ScaleCommand) -> Attempt {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        async move {
            let payload = c.to_json();
            let record = FutureRecord::<[u8], [u8]>::to(&topic)
                .key(c.target.as_bytes())
                .payload(&payload);
            let r = producer
                .send(record, Duration::from_secs(10))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e);
            (c, r)
        }
        .boxed()
    }

    /// A new producer in place of one that cannot recover.
    fn recreate(&mut self, why: &str) {
        match self.config.create_with_context(self.context.clone()) {
            Ok(p) => {
                tracing::warn!(setting = "commands.kafka", topic = %self.topic, "command producer replaced: {why}");
                self.producer = p;
            }
            Err(e) => {
                tracing::error!(setting = "commands.kafka", error = %e, "cannot create a new command producer")
            }
        }
    }

    /// Publishes the commands from `rx` until it closes and every one is
    /// acknowledged, telling the engine about each acknowledgement.
    /// Targets are published concurrently, each in order: one attempt in
    /// flight per target, the next after it is acknowledged. Failed attempts are
    /// retried with backoff; a producer that cannot recover is replaced;
    /// a command unacknowledged for [`STALLED_AFTER`] makes the scaler
    /// not ready until the commands flow again.
    pub async fn run(mut self, mut rx: mpsc::Receiver<ScaleCommand>, engine: WeakEngineHandle) {
        // Per target: the commands to publish, in order, and when the first may be tried.
        let mut waiting: BTreeMap<String, (VecDeque<ScaleCommand>, Instant)> = BTreeMap::new();
        let mut busy: HashSet<String> = HashSet::new();
        let mut inflight: FuturesUnordered<Attempt> = FuturesUnordered::new();
        let mut backoff = crate::retry::Backoff::default();
        let mut failures = 0u32;
        let mut open = true;
        let stall =
            crate::publish::StallWatch::start("commands", self.metrics.clone(), STALLED_AFTER);
        // Wakes the loop to start retries whose wait is over.
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let now = Instant::now();
            // Start what may start: targets with nothing in flight whose wait is over.
            let ready: Vec<String> = waiting
                .iter()
                .filter(|(t, (q, at))| !busy.contains(*t) && *at <= now && !q.is_empty())
                .map(|(t, _)| t.clone())
                .collect();
            for t in ready {
                let (q, _) = waiting.get_mut(&t).expect("listed above");
                let c = q.pop_front().expect("not empty");
                if q.is_empty() {
                    waiting.remove(&t);
                }
                busy.insert(t);
                inflight.push(self.attempt(c));
            }
            if !open && waiting.is_empty() && inflight.is_empty() {
                break;
            }
            tokio::select! {
                c = rx.recv(), if open => match c {
                    Some(c) => {
                        stall.waiting();
                        waiting
                            .entry(c.target.clone())
                            .or_insert_with(|| (VecDeque::new(), now))
                            .0
                            .push_back(c);
                    }
                    None => open = false,
                },
                Some((c, r)) = inflight.next() => {
                    busy.remove(&c.target);
                    match r {
                        Ok(()) => {
                            failures = 0;
                            backoff.reset();
                            stall.acknowledged(!waiting.is_empty() || !inflight.is_empty());
                            confirmed(&c, &self.metrics, &engine);
                        }
                        Err(e) if crate::broker::kafka::permanent(&e) => {
                            // Not retried: the same record would fail the same way.
                            self.metrics.command_publish_failed(
                                "commands.kafka.topic",
                                &c,
                                &format_args!("topic {}: {e}; dropped, not retried", self.topic),
                            );
                            stall.acknowledged(!waiting.is_empty() || !inflight.is_empty());
                        }
                        Err(e) => {
                            failures += 1;
                            let wait = backoff.next_wait();
                            self.metrics.command_publish_failed(
                                "commands.kafka.topic",
                                &c,
                                &format_args!("topic {}: {e} (next try in {wait:?})", self.topic),
                            );
                            let fatal = self.producer.client().fatal_error();
                            if let Some((code, text)) = fatal {
                                self.recreate(&format!("fatal error {code:?}: {text}"));
                                failures = 0;
                            } else if failures >= RECREATE_AFTER {
                                self.recreate(&format!("{failures} attempts in a row failed, the last with {e}"));
                                failures = 0;
                            }
                            // Again first, after the wait: the target's order holds.
                            let (q, at) = waiting
                                .entry(c.target.clone())
                                .or_insert_with(|| (VecDeque::new(), now));
                            *at = Instant::now() + wait;
                            q.push_front(c);
                        }
                    }
                },
                _ = check.tick() => {}
            }
        }
        drop(stall);
        let producer = self.producer;
        let _ = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer.flush(Duration::from_secs(5))
        })
        .await;
    }
}

/// Reads results from every worker (its own consumer group, from the end:
/// the closed loop needs what happens from now on).
pub struct KafkaResults {
    consumer: StreamConsumer<LoggingContext>,
    metrics: Arc<Metrics>,
}

impl KafkaResults {
    pub fn new(cfg: &KafkaCommandsConfig, metrics: Arc<Metrics>) -> Result<Self, BrokerError> {
        let s = cfg.client_settings();
        let mut c = s.client_config()?;
        c.set("group.id", format!("tidewatch-results-{}", unique_suffix()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest");
        let consumer: StreamConsumer<LoggingContext> = c
            .create_with_context(LoggingContext {
                key: s.key.clone(),
                brokers: s.brokers.clone(),
            })
            .map_err(|e| {
                BrokerError::new(
                    "commands.kafka",
                    format!("cannot create the results consumer: {e}"),
                )
            })?;
        consumer
            .subscribe(&[cfg.results_topic.as_str()])
            .map_err(|e| {
                BrokerError::new(
                    "commands.kafka.results_topic",
                    format!("{}: {e}", cfg.results_topic),
                )
            })?;
        Ok(Self { consumer, metrics })
    }

    pub async fn run(self, engine: EngineHandle, mut stop: watch::Receiver<bool>) {
        self.read(engine, &mut stop).await;
        crate::broker::kafka::close_in_background(self.consumer);
    }

    async fn read(&self, engine: EngineHandle, stop: &mut watch::Receiver<bool>) {
        loop {
            let m = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                m = self.consumer.recv() => m,
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(setting = "commands.kafka.results_topic", error = %e, "results consume error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if !deliver_result(m.payload().unwrap_or_default(), &self.metrics, &engine).await {
                return;
            }
        }
    }
}
