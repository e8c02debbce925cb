//! `[commands]`: the command channel, shared by the scaler (which
//! publishes commands and reads results) and the worker (which reads
//! commands and publishes results), on Kafka or RabbitMQ.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::broker::amqp::AmqpSettings;
use crate::broker::kafka::ClientSettings;
use crate::broker::{default_binding_keys, default_deadletter, BrokerKind};
use crate::secret::{SaslPassword, Secret, Url};
use crate::settings::{section, yes, Problem};

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    #[serde(default)]
    pub kind: BrokerKind,
    #[serde(default)]
    pub kafka: Option<KafkaCommandsConfig>,
    #[serde(default)]
    pub amqp: Option<AmqpCommandsConfig>,
}

impl CommandsConfig {
    /// Checks `[commands]` and its broker's section.
    pub fn check(&self, out: &mut Vec<Problem>) {
        match self.kind {
            BrokerKind::Kafka => section(out, "commands", "kafka", &self.kafka, |k, out| {
                crate::broker::kafka::check(out, "commands.kafka", &k.brokers, &k.sasl_password);
            }),
            BrokerKind::Amqp => section(out, "commands", "amqp", &self.amqp, |a, out| {
                a.settings().check(out)
            }),
            BrokerKind::None => {}
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaCommandsConfig {
    pub brokers: String,
    #[serde(default = "default_commands_topic")]
    pub topic: String,
    #[serde(default = "default_results_topic")]
    pub results_topic: String,
    /// The consumer group of workers (worker configuration only).
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where a worker sends commands it cannot decode or attribute.
    #[serde(default = "default_deadletter")]
    pub deadletter_topic: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(flatten)]
    pub sasl_password: Secret<SaslPassword>,
}

impl KafkaCommandsConfig {
    /// The client settings, with errors naming `commands.kafka.*`.
    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            key: "commands.kafka.brokers".into(),
            brokers: self.brokers.clone(),
            options: self.options.clone(),
            sasl_password: self.sasl_password.reference().clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AmqpCommandsConfig {
    #[serde(flatten)]
    pub url: Secret<Url>,
    #[serde(default = "default_commands_topic")]
    pub exchange: String,
    #[serde(default = "default_results_topic")]
    pub results_exchange: String,
    /// The workers' durable queue, bound to `exchange` with `#`: commands
    /// wait there for a worker as they would in a Kafka topic. Declared by
    /// the scaler too (when `declare`), so that none is lost before the
    /// first worker starts; "" declares none.
    #[serde(default = "default_workers_queue")]
    pub queue: String,
    /// The keys `queue` is bound with (`<provider>.<target>` patterns):
    /// a worker for one provider only binds its own queue with, say,
    /// `["kubernetes.*"]`.
    #[serde(default = "default_binding_keys")]
    pub binding_keys: Vec<String>,
    /// Where a worker sends commands it cannot decode or attribute.
    #[serde(default = "default_deadletter")]
    pub deadletter_exchange: String,
    /// Declare the exchanges (and `queue`) or only check that they exist.
    #[serde(default = "yes")]
    pub declare: bool,
    /// PEM CA file for `amqps://` (default: the system's trust store).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

impl AmqpCommandsConfig {
    pub fn settings(&self) -> AmqpSettings {
        AmqpSettings {
            key: "commands.amqp.url".into(),
            url: self.url.reference().clone(),
            tls_ca_file: self.tls_ca_file.clone(),
        }
    }
}

fn default_workers_queue() -> String {
    "tidewatch.workers".into()
}

fn default_commands_topic() -> String {
    "tidewatch.commands".into()
}

fn default_results_topic() -> String {
    "tidewatch.results".into()
}
