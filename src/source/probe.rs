//! Probes measure signals themselves, so a user needs no publisher: the
//! Kafka lag probe computes a consumer group's lag on a topic (high
//! watermark minus committed offset, summed over partitions, as KEDA's
//! Kafka scaler does) and feeds it as the target's `queue_depth`.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::config::{KafkaSourceConfig, NoOffsetRule, ProbeConfig};
use crate::engine::EngineInput;
use crate::event::{QueueDepth, Signal};
use crate::kafka::{ClientSettings, LoggingContext};
use crate::telemetry::Metrics;

const TIMEOUT: Duration = Duration::from_secs(5);

/// The client settings of probe `i`: its own `brokers` and `options` when
/// it names brokers (another cluster), else the source's, plus its options.
pub fn settings(
    p: &ProbeConfig,
    i: usize,
    source: Option<&KafkaSourceConfig>,
) -> Result<ClientSettings, String> {
    let key = format!("probes[{i}].brokers");
    let mut s = match (&p.brokers, source) {
        (Some(brokers), _) => ClientSettings {
            key,
            brokers: brokers.clone(),
            options: Default::default(),
            sasl_password: Default::default(),
        },
        (None, Some(k)) => ClientSettings {
            key,
            ..crate::source::kafka::settings(k)
        },
        (None, None) => return Err(format!("{key}: give brokers, or configure [source.kafka]")),
    };
    s.options.extend(p.options.clone());
    Ok(s)
}

/// Lag per partition: `high - committed`, and for a partition without a
/// committed offset, `high - low` (Earliest) or 0 (Latest).
pub fn partition_lag(low: i64, high: i64, committed: Option<i64>, rule: NoOffsetRule) -> i64 {
    match committed {
        Some(c) => (high - c.max(low)).max(0),
        None => match rule {
            NoOffsetRule::Earliest => (high - low).max(0),
            NoOffsetRule::Latest => 0,
        },
    }
}

pub struct KafkaLagProbe {
    cfg: ProbeConfig,
    consumer: Arc<BaseConsumer<LoggingContext>>,
}

impl KafkaLagProbe {
    pub fn new(cfg: &ProbeConfig, settings: ClientSettings) -> Result<Self, String> {
        let mut c = settings.client_config()?;
        // Reading a group's committed offsets needs its id; we never join it.
        c.set("group.id", &cfg.group)
            .set("enable.auto.commit", "false");
        let consumer = c
            .create_with_context(LoggingContext {
                key: settings.key.clone(),
                brokers: settings.brokers.clone(),
            })
            .map_err(|e| format!("{}: cannot create the probe client: {e}", settings.key))?;
        Ok(Self {
            cfg: cfg.clone(),
            consumer: Arc::new(consumer),
        })
    }

    /// The group's total lag on the topic.
    pub fn measure(
        consumer: &BaseConsumer<LoggingContext>,
        cfg: &ProbeConfig,
    ) -> Result<i64, String> {
        let md = consumer
            .fetch_metadata(Some(&cfg.topic), TIMEOUT)
            .map_err(|e| format!("topic {}: metadata: {e}", cfg.topic))?;
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == cfg.topic)
            .ok_or_else(|| format!("topic {} not found", cfg.topic))?;
        if let Some(e) = topic.error() {
            return Err(format!("topic {}: {:?}", cfg.topic, e));
        }
        let mut tpl = TopicPartitionList::new();
        for p in topic.partitions() {
            tpl.add_partition(&cfg.topic, p.id());
        }
        let committed = consumer
            .committed_offsets(tpl, TIMEOUT)
            .map_err(|e| format!("group {}: committed offsets: {e}", cfg.group))?;
        let mut total = 0;
        for p in topic.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(&cfg.topic, p.id(), TIMEOUT)
                .map_err(|e| {
                    format!("topic {} partition {}: watermarks: {e}", cfg.topic, p.id())
                })?;
            let c = committed
                .find_partition(&cfg.topic, p.id())
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            total += partition_lag(low, high, c, cfg.no_offset);
        }
        Ok(total)
    }

    /// One measurement now (blocking: call it off the async threads).
    pub fn measure_now(&self) -> Result<i64, String> {
        Self::measure(&self.consumer, &self.cfg)
    }

    /// Measures every interval until `stop`, feeding the engine.
    pub async fn run(
        self,
        engine: mpsc::Sender<EngineInput>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(self.cfg.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let queue = format!("kafka:{}/{}", self.cfg.topic, self.cfg.group);
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                _ = ticker.tick() => {}
            }
            let (consumer, cfg) = (self.consumer.clone(), self.cfg.clone());
            let lag = tokio::task::spawn_blocking(move || Self::measure(&consumer, &cfg)).await;
            match lag {
                Ok(Ok(lag)) => {
                    let s = Signal::QueueDepth(QueueDepth {
                        target: self.cfg.target.clone(),
                        queue: queue.clone(),
                        depth: lag as f64,
                        consumers: None,
                        ts_ms: clock.now_ms(),
                    });
                    if engine.send(EngineInput::Signal(s)).await.is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    metrics
                        .probe_errors
                        .with_label_values(&[self.cfg.target.as_str(), "kafka_lag"])
                        .inc();
                    tracing::warn!(target_name = %self.cfg.target, topic = %self.cfg.topic, group = %self.cfg.group, "lag probe: {e}");
                }
                Err(e) => tracing::error!("lag probe task failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_settings_come_from_the_source_or_the_probe() {
        let source: KafkaSourceConfig = serde_json::from_value(serde_json::json!({
            "brokers": "src:9092", "options": {"security.protocol": "SSL"}, "sasl_password": "pw"
        }))
        .unwrap();
        let mut p: ProbeConfig = serde_json::from_value(serde_json::json!({
            "kind": "kafka_lag", "target": "t", "topic": "orders", "group": "g",
            "interval": "10s", "options": {"client.id": "probe"}
        }))
        .unwrap();
        let s = settings(&p, 0, Some(&source)).unwrap();
        assert_eq!(
            (s.brokers.as_str(), s.key.as_str()),
            ("src:9092", "probes[0].brokers")
        );
        assert_eq!(s.options.len(), 2, "the source's options and the probe's");
        assert!(s.sasl_password.is_set());
        p.brokers = Some("other:9092".into());
        let s = settings(&p, 1, Some(&source)).unwrap();
        assert_eq!(s.brokers, "other:9092");
        assert_eq!(
            s.options.keys().collect::<Vec<_>>(),
            ["client.id"],
            "another cluster: only its own options"
        );
        assert!(!s.sasl_password.is_set());
        p.brokers = None;
        assert!(settings(&p, 2, None)
            .unwrap_err()
            .contains("probes[2].brokers"));
    }

    #[test]
    fn lag_rules() {
        assert_eq!(partition_lag(0, 100, Some(40), NoOffsetRule::Earliest), 60);
        assert_eq!(
            partition_lag(50, 100, Some(10), NoOffsetRule::Earliest),
            50,
            "deleted messages are not lag"
        );
        assert_eq!(partition_lag(0, 100, Some(120), NoOffsetRule::Earliest), 0);
        assert_eq!(partition_lag(20, 100, None, NoOffsetRule::Earliest), 80);
        assert_eq!(partition_lag(20, 100, None, NoOffsetRule::Latest), 0);
    }
}
