//! Broker plumbing shared by every component that talks to Kafka or
//! RabbitMQ (the source, the probes, the command publisher, the worker,
//! loadgen): client settings with their secrets, connection and topology
//! helpers, and errors that name the setting. No component logic lives here.

pub mod amqp;
pub mod kafka;

use serde::Deserialize;

/// Which broker a section uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    Kafka,
    Amqp,
    /// No broker: only `demo` and tests drive the engine.
    #[default]
    None,
}

/// A short random suffix for group, consumer and instance names.
pub fn unique_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

/// Where refused messages go unless configured: a topic, or an exchange
/// (with a queue of the same name) on RabbitMQ.
pub fn default_deadletter() -> String {
    "tidewatch.deadletter".into()
}

/// A queue bound to everything on its exchange.
pub fn default_binding_keys() -> Vec<String> {
    vec!["#".into()]
}

/// Why a broker client could not be made or a broker call failed;
/// `setting` names the configuration key it concerns (`source.kafka`,
/// `probes[0].brokers`, ...) and `message` what went wrong, never a
/// password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct BrokerError {
    pub setting: String,
    pub message: String,
}

impl BrokerError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

impl From<crate::secret::SecretError> for BrokerError {
    fn from(e: crate::secret::SecretError) -> Self {
        let setting = match &e {
            crate::secret::SecretError::EnvUnset { key, .. }
            | crate::secret::SecretError::File { key, .. } => key.clone(),
        };
        // The message names the `_env` or `_file` key itself.
        Self {
            setting,
            message: e.to_string(),
        }
    }
}
