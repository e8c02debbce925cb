//! Signal sources: Kafka (and RabbitMQ), and probes that measure signals
//! themselves. Every source hands batches to the engine task and stores
//! offsets (or acks) only after the engine has applied them.

pub mod amqp;
pub mod kafka;
pub mod probe;

use serde::Deserialize;

use crate::broker::BrokerKind;
use crate::settings::{section, Problem};

pub use amqp::AmqpSourceConfig;

/// What every input of the scaler is given: where signals go, the clock,
/// the metrics, when to stop, and the readiness it reports (a source is
/// ready once it consumes; probes leave it alone).
#[derive(Clone)]
pub struct SourceContext {
    pub engine: crate::engine::EngineHandle,
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
    pub metrics: std::sync::Arc<crate::telemetry::Metrics>,
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}
pub use kafka::KafkaSourceConfig;

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub kind: BrokerKind,
    #[serde(default)]
    pub kafka: Option<KafkaSourceConfig>,
    #[serde(default)]
    pub amqp: Option<AmqpSourceConfig>,
}

impl SourceConfig {
    /// Checks `[source]` and its broker's section.
    pub fn check(&self, out: &mut Vec<Problem>) {
        match self.kind {
            BrokerKind::Kafka => {
                section(out, "source", "kafka", &self.kafka, |k, out| k.check(out))
            }
            BrokerKind::Amqp => section(out, "source", "amqp", &self.amqp, |a, out| a.check(out)),
            BrokerKind::None => {}
        }
    }
}
