//! Kafka client settings shared by the source, the probes and the command
//! transport: brokers, librdkafka options passed through as they are (TLS,
//! SASL, tuning), the SASL password by secret reference, and a client
//! context that turns librdkafka's errors into log lines naming the setting.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;

use crate::secret::{SecretError, SecretRef};
use crate::settings::{problem, Problem};

/// Where a client's settings came from, for error messages.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The configuration key of the brokers, e.g. `source.kafka.brokers`.
    pub key: String,
    pub brokers: String,
    pub options: BTreeMap<String, String>,
    pub sasl_password: SecretRef,
}

impl ClientSettings {
    /// A librdkafka configuration; the password secret is resolved here.
    pub fn client_config(&self) -> Result<ClientConfig, SecretError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.options {
            c.set(k, v);
        }
        let pw_key = self.key.replace(".brokers", ".sasl_password");
        if let Some(pw) = self.sasl_password.resolve(&pw_key)? {
            c.set("sasl.password", pw);
        }
        c.set_log_level(RDKafkaLogLevel::Warning);
        Ok(c)
    }
}

/// Checks a Kafka section's brokers and password under `prefix`
/// (`source.kafka`, `commands.kafka`).
pub fn check(out: &mut Vec<Problem>, prefix: &str, brokers: &str, password: &SecretRef) {
    if brokers.trim().is_empty() {
        out.push(problem(
            format!("{prefix}.brokers"),
            "must name at least one broker",
        ));
    }
    password.check(&format!("{prefix}.sasl_password"), out);
}

/// Logs librdkafka's errors with the setting they concern.
#[derive(Debug, Clone)]
pub struct LoggingContext {
    pub key: String,
    pub brokers: String,
}

impl ClientContext for LoggingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(setting = %self.key, brokers = %self.brokers, %error, "kafka: {reason}");
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(setting = %self.key, facility = fac, "kafka: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(setting = %self.key, facility = fac, "kafka: {message}")
            }
            _ => tracing::debug!(setting = %self.key, facility = fac, "kafka: {message}"),
        }
    }
}

impl ConsumerContext for LoggingContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(setting = %self.key, "kafka rebalance: {rebalance:?}");
    }
}

/// Produces one record, retrying with exponential backoff (100 ms to 5 s
/// between attempts) until the broker acknowledges it: nothing handed to
/// it is dropped. `on_retry` hears of each failed attempt and the wait.
pub async fn produce_until_acked(
    producer: &FutureProducer<LoggingContext>,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    mut on_retry: impl FnMut(&KafkaError, Duration),
) -> Result<(), KafkaError> {
    let mut backoff = crate::retry::Backoff::default();
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        match producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => return Ok(()),
            Err((e, _)) if permanent(&e) => return Err(e),
            Err((e, _)) => {
                let wait = backoff.next_wait();
                on_retry(&e, wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Drops a consumer on a thread of its own. librdkafka's close can wait for
/// ever: rdkafka's drop serves a rebalance that arrives during the close,
/// and its `rd_kafka_assign` waits on the group thread (seen with the
/// results reader after a broker outage). That must not hold one of the
/// runtime's threads, nor the runtime's shutdown: the process exits
/// anyway, and a thread blocked there goes with it.
pub fn close_in_background<C: Send + 'static>(consumer: C) {
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || drop(consumer));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to close a Kafka consumer");
    }
}

/// An error that no retry of the same record can cure: the record is too
/// large or malformed for the broker, or the topic name is invalid.
pub fn permanent(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::MessageBatchTooLarge
                | C::InvalidRecord
                | C::InvalidTopic
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_secret_reach_librdkafka() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let s = ClientSettings {
            key: "source.kafka.brokers".into(),
            brokers: "k1:9093".into(),
            options: [("security.protocol".to_string(), "SASL_SSL".to_string())].into(),
            sasl_password: SecretRef {
                file: Some(pw),
                ..SecretRef::default()
            },
        };
        let c = s.client_config().unwrap();
        assert_eq!(c.get("bootstrap.servers"), Some("k1:9093"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.password"), Some("hunter2"));
        let missing = ClientSettings {
            sasl_password: SecretRef {
                env: Some("TIDEWATCH_TEST_NO_SUCH_VAR".into()),
                ..SecretRef::default()
            },
            ..s
        };
        let e = missing.client_config().unwrap_err().to_string();
        assert!(
            e.contains("source.kafka.sasl_password_env")
                && e.contains("TIDEWATCH_TEST_NO_SUCH_VAR"),
            "{e}"
        );
    }
}
