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

/// Reads the snapshots of `targets` from the store and gives the engine
/// each one (a target takes its own unless what it holds is newer),
/// decoded in chunks off the runtime's workers and applied chunk by chunk
/// so that decisions of live targets go on. How many were restored, and
/// the oldest point they need signals from again. With `count_cold`, each
/// target the store has no snapshot of is counted `cold` (once per
/// process: a rebalance hands over targets that were live a moment ago).
pub async fn restore_targets(
    engine: &crate::engine::EngineHandle,
    state: &crate::state::StateHandle,
    targets: Vec<String>,
    metrics: &std::sync::Arc<crate::telemetry::Metrics>,
    count_cold: bool,
) -> Result<(usize, Option<crate::clock::Millis>), crate::engine::EngineGone> {
    let started = std::time::Instant::now();
    let mut parts = state.read_parts(targets.clone(), crate::state::READ_PART);
    let (tx, mut chunks) = tokio::sync::mpsc::channel(2);
    let m = metrics.clone();
    let decoding = tokio::task::spawn_blocking(move || {
        let mut restoring = crate::state::Restoring::new(&targets, &m);
        while let Some(part) = parts.blocking_recv() {
            restoring.part(part, |b| {
                let _ = tx.blocking_send(b);
            });
        }
        restoring.finish(count_cold);
    });
    let mut restored = 0;
    let mut since: Option<crate::clock::Millis> = None;
    while let Some(snapshots) = chunks.recv().await {
        let needs: std::collections::HashMap<String, crate::clock::Millis> = snapshots
            .iter()
            .map(|s| (s.target.clone(), s.resume_ms()))
            .collect();
        let outcomes = engine.restore(snapshots).await?;
        for (name, r) in &outcomes {
            if *r == crate::engine::Restored::Applied {
                restored += 1;
                if let Some(&t) = needs.get(name) {
                    since = Some(since.map_or(t, |s| s.min(t)));
                }
            }
        }
    }
    let _ = decoding.await;
    metrics.state_restore_took(started.elapsed().as_secs_f64());
    Ok((restored, since))
}

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
