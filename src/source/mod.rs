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
