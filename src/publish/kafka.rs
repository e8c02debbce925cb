//! Commands on Kafka: an idempotent producer (acks=all) publishes each
//! command keyed by target and retries with backoff until the broker
//! acknowledges it; a consumer reads workers' results for the closed loop.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use tokio::sync::{mpsc, watch};

use crate::broker::kafka::{produce_until_acked, LoggingContext};
use crate::broker::unique_suffix;
use crate::broker::BrokerError;
use crate::command::config::KafkaCommandsConfig;
use crate::command::ScaleCommand;
use crate::engine::{EngineHandle, WeakEngineHandle};
use crate::publish::{confirmed, deliver_result};
use crate::telemetry::Metrics;

pub struct KafkaPublisher {
    producer: FutureProducer<LoggingContext>,
    topic: String,
    metrics: Arc<Metrics>,
}

impl KafkaPublisher {
    pub fn new(cfg: &KafkaCommandsConfig, metrics: Arc<Metrics>) -> Result<Self, BrokerError> {
        let s = cfg.client_settings();
        let mut c = s.client_config()?;
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            // librdkafka retries inside this time; we retry beyond it.
            .set("message.timeout.ms", "10000");
        let producer = c
            .create_with_context(LoggingContext {
                key: s.key.clone(),
                brokers: s.brokers.clone(),
            })
            .map_err(|e| {
                BrokerError::new("commands.kafka", format!("cannot create the producer: {e}"))
            })?;
        Ok(Self {
            producer,
            topic: cfg.topic.clone(),
            metrics,
        })
    }

    /// Publishes one command, retrying with exponential backoff (capped at
    /// 5 s between attempts) until the broker acknowledges it.
    pub async fn publish(&self, c: &ScaleCommand) {
        let sent = produce_until_acked(
            &self.producer,
            &self.topic,
            Some(c.target.as_bytes()),
            &c.to_json(),
            |e, wait| {
                self.metrics.command_publish_failed(
                    "commands.kafka.topic",
                    c,
                    &format_args!("topic {}: {e} (next try in {wait:?})", self.topic),
                );
            },
        )
        .await;
        if let Err(e) = sent {
            // Not retried: the same record would fail the same way.
            self.metrics.command_publish_failed(
                "commands.kafka.topic",
                c,
                &format_args!("topic {}: {e}; dropped, not retried", self.topic),
            );
        }
    }

    /// Publishes every command from `rx` in order until it closes, telling
    /// the engine about each acknowledgement.
    pub async fn run(self, mut rx: mpsc::Receiver<ScaleCommand>, engine: WeakEngineHandle) {
        while let Some(c) = rx.recv().await {
            self.publish(&c).await;
            confirmed(&c, &self.metrics, &engine);
        }
        let _ = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            self.producer.flush(Duration::from_secs(5))
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
