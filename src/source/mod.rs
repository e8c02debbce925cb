//! Signal sources: Kafka (and RabbitMQ), and probes that measure signals
//! themselves. Every source hands batches to the engine task and stores
//! offsets (or acks) only after the engine has applied them.

pub mod amqp;
pub mod inputs;
pub mod kafka;
pub mod probe;
pub mod sink;

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
    /// Which topic or routing keys carry which format (gateways' access
    /// logs); messages no input names are tidewatch messages.
    #[serde(default)]
    pub inputs: Vec<inputs::InputConfig>,
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
        if let (BrokerKind::Amqp, Some(a)) = (self.kind, &self.amqp) {
            if a.slots > 0 {
                if let Some(i) = self.inputs.iter().find(|i| i.binding.is_some()) {
                    out.push(crate::settings::problem(
                        "source.amqp.slots",
                        format!(
                            "slot queues route each message by the target in its routing key; \
                             input {:?} (binding {:?}) carries many targets per message: \
                             use one queue (slots = 0) or a Kafka source for it",
                            i.name(),
                            i.binding.as_deref().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        inputs::check(&self.inputs, self.kind, out);
    }

    /// The Kafka topics to subscribe: `source.kafka.topics` and every
    /// input's.
    pub fn kafka_topics(&self) -> Vec<String> {
        let mut t = self
            .kafka
            .as_ref()
            .map(|k| k.topics.clone())
            .unwrap_or_default();
        for i in &self.inputs {
            if let Some(topic) = &i.topic {
                if !t.contains(topic) {
                    t.push(topic.clone());
                }
            }
        }
        t
    }

    /// The routing keys to bind: `source.amqp.binding_keys` and every
    /// input's pattern.
    pub fn amqp_bindings(&self) -> Vec<String> {
        let mut b = self
            .amqp
            .as_ref()
            .map(|a| a.binding_keys.clone())
            .unwrap_or_default();
        for i in &self.inputs {
            if let Some(k) = &i.binding {
                if !b.contains(k) {
                    b.push(k.clone());
                }
            }
        }
        b
    }
}
