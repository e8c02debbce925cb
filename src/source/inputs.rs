//! `[[source.inputs]]`: which Kafka topic or RabbitMQ routing keys carry
//! which format (tidewatch's own, a gateway's access log, or a mapping
//! spelled out), how unmatched records are handled and the limits of its
//! messages. Checked by `config check`, compiled into
//! [`crate::event::Inputs`] for the engine.

use serde::Deserialize;

use crate::broker::BrokerKind;
use crate::event::mapping::{LatencyChoice, Mapping, MappingSpec};
use crate::event::presets::FormatName;
use crate::event::{Decoder, Input, Inputs, Limits, Matcher};
use crate::settings::{problem, Problem};

/// What becomes of a record that maps to no configured target, or that a
/// filter drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Counted (`tidewatch_events_unmatched_total`) and dropped: a gateway
    /// serves many routes tidewatch does not scale.
    #[default]
    Drop,
    /// Counted and dead-lettered, to find out why.
    Deadletter,
}

/// One input of the source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Kafka: the topic (subscribed with `source.kafka.topics`).
    #[serde(default)]
    pub topic: Option<String>,
    /// RabbitMQ: a routing-key pattern (bound with
    /// `source.amqp.binding_keys`).
    #[serde(default)]
    pub binding: Option<String>,
    #[serde(default)]
    pub format: FormatName,
    /// Which latency feeds `latency_ms`: `total` or `upstream`.
    #[serde(default)]
    pub latency: LatencyChoice,
    #[serde(default)]
    pub unmatched: Unmatched,
    /// Records per message, at most (gateway formats: 10,000).
    #[serde(default)]
    pub max_batch: Option<usize>,
    /// Bytes per message, at most (gateway formats: 8 MiB).
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// The mapping: every key of the format's preset can be replaced here;
    /// `format = "mapped"` needs at least `latency` and `target`.
    #[serde(default)]
    pub map: MappingSpec,
}

/// Gateway batches: APISIX's kafka-logger sends up to `batch_max_size`
/// (1,000 by default) entries of about 1 KB in one message.
pub const GATEWAY_MAX_BATCH: usize = 10_000;
pub const GATEWAY_MAX_MESSAGE_BYTES: usize = 8 << 20;
/// The most any input may allow.
pub const MAX_BATCH: usize = 100_000;
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

impl InputConfig {
    /// The input's name in metrics and logs: its topic or pattern.
    pub fn name(&self) -> String {
        self.topic
            .clone()
            .or_else(|| self.binding.clone())
            .unwrap_or_default()
    }

    /// The preset with the user's keys over it.
    pub fn spec(&self) -> Option<MappingSpec> {
        self.format.preset().map(|p| p.overlaid(&self.map))
    }
}

/// Checks every input; `kind` is the source's broker.
pub fn check(inputs: &[InputConfig], kind: BrokerKind, out: &mut Vec<Problem>) {
    let mut seen = std::collections::HashSet::new();
    for (i, input) in inputs.iter().enumerate() {
        let key = format!("source.inputs[{i}]");
        match (kind, &input.topic, &input.binding) {
            (BrokerKind::Kafka, Some(t), None) if !t.is_empty() => {}
            (BrokerKind::Amqp, None, Some(b)) if !b.is_empty() => {}
            (BrokerKind::Kafka, _, _) => out.push(problem(
                &key,
                "a Kafka source's input names one `topic` (and no `binding`)",
            )),
            (BrokerKind::Amqp, _, _) => out.push(problem(
                &key,
                "a RabbitMQ source's input names one `binding` (a routing-key pattern) and no `topic`",
            )),
            (BrokerKind::None, _, _) => out.push(problem(&key, "inputs need a [source]")),
        }
        if !seen.insert(input.name()) {
            out.push(problem(
                &key,
                format!("{:?} is named by an earlier input too", input.name()),
            ));
        }
        for (k, v, max) in [
            ("max_batch", input.max_batch, MAX_BATCH),
            (
                "max_message_bytes",
                input.max_message_bytes,
                MAX_MESSAGE_BYTES,
            ),
        ] {
            if let Some(v) = v {
                if v == 0 || v > max {
                    out.push(problem(
                        format!("{key}.{k}"),
                        format!("{v} is not in 1..={max}"),
                    ));
                }
            }
        }
        if input.format == FormatName::Tidewatch {
            if input.map != MappingSpec::default() {
                out.push(problem(
                    format!("{key}.map"),
                    "format \"tidewatch\" takes no mapping: name a gateway format or \"mapped\"",
                ));
            }
            continue;
        }
        if let Some(spec) = input.spec() {
            if let Err(errors) = Mapping::compile(&spec, input.latency, &format!("{key}.map")) {
                out.extend(errors.into_iter().map(|e| problem(e.key, e.message)));
            }
        }
    }
}

/// The inputs the engine decodes with; `engine` the engine's limits
/// (tidewatch inputs keep them unless they set their own). Inputs that do
/// not compile are left out (`check` has reported them).
pub fn compile(inputs: &[InputConfig], engine: &Limits) -> Inputs {
    let mut list = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let matcher = match (&input.topic, &input.binding) {
            (Some(t), _) => Matcher::Topic(t.clone()),
            (None, Some(b)) => Matcher::Binding(b.clone()),
            (None, None) => continue,
        };
        let gateway = input.format != FormatName::Tidewatch;
        let decoder = match input.spec() {
            None => Decoder::Tidewatch,
            Some(spec) => {
                match Mapping::compile(&spec, input.latency, &format!("source.inputs[{i}].map")) {
                    Ok(m) => Decoder::Mapped(Box::new(m)),
                    Err(_) => continue,
                }
            }
        };
        let mut limits = engine.clone();
        limits.max_batch = input.max_batch.unwrap_or(if gateway {
            GATEWAY_MAX_BATCH.max(engine.max_batch)
        } else {
            engine.max_batch
        });
        limits.max_message_bytes = input.max_message_bytes.unwrap_or(if gateway {
            GATEWAY_MAX_MESSAGE_BYTES.max(engine.max_message_bytes)
        } else {
            engine.max_message_bytes
        });
        list.push(Input {
            name: input.name(),
            matcher,
            decoder,
            limits,
            deadletter_unmatched: input.unmatched == Unmatched::Deadletter,
        });
    }
    Inputs::new(list)
}
