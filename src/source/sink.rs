//! Publishing on the source's broker, from its configuration: where a
//! scaler reads its signals (the first topic of `[source.kafka]`, or the
//! exchange of `[source.amqp]`), or another topic or exchange there. Kafka:
//! key = target, acks=all, retried; RabbitMQ: routing key
//! `<type>.<target>`, persistent, publisher confirms. `loadgen` and `ctl`
//! publish signals and controls with it, the scaler its own forecasts.

use rdkafka::producer::FutureProducer;

use crate::broker::kafka::LoggingContext;
use crate::broker::BrokerKind;
use crate::lifecycle::StartError;

use super::SourceConfig;

/// Another destination than the signals' on the source's broker: its
/// name (a topic or an exchange, declared) and the key that sets it.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub name: &'a str,
    pub key: &'a str,
}

pub enum Sink {
    Kafka {
        producer: FutureProducer<LoggingContext>,
        topic: String,
    },
    Amqp {
        channel: lapin::Channel,
        exchange: String,
        _conn: Box<lapin::Connection>,
    },
}

impl Sink {
    /// A publisher to where `source`'s scaler reads signals, or to `to`.
    pub async fn open(
        source: &SourceConfig,
        who: &str,
        to: Option<Destination<'_>>,
    ) -> Result<Self, StartError> {
        match source.kind {
            BrokerKind::None => Err(StartError::usage(
                "source.kind = \"none\": this configuration reads no signals, so there is nowhere to publish them",
            )),
            BrokerKind::Kafka => {
                let k = source
                    .kafka
                    .as_ref()
                    .ok_or_else(|| StartError::usage("source.kafka: missing for kind = \"kafka\""))?;
                let settings = k.client_settings();
                let mut c = settings.client_config().map_err(StartError::usage)?;
                c.set("acks", "all");
                let producer = c
                    .create_with_context(LoggingContext {
                        key: settings.key.clone(),
                        brokers: settings.brokers.clone(),
                    })
                    .map_err(|e| StartError::fault(format!("{}: {e}", settings.key)))?;
                let topic = match to {
                    Some(d) => d.name.to_owned(),
                    None => k
                        .topics
                        .first()
                        .cloned()
                        .ok_or_else(|| StartError::usage("source.kafka.topics: empty"))?,
                };
                Ok(Sink::Kafka { producer, topic })
            }
            BrokerKind::Amqp => {
                let a = source
                    .amqp
                    .as_ref()
                    .ok_or_else(|| StartError::usage("source.amqp: missing for kind = \"amqp\""))?;
                let conn = a.settings().connect(who).await?;
                let channel = crate::broker::amqp::confirm_channel(&conn, |e| {
                    crate::broker::amqp::ConnectError::Unreachable(e.to_string())
                })
                .await?;
                let (exchange, key, declare) = match to {
                    Some(d) => (d.name, d.key, true),
                    None => (a.exchange.as_str(), "source.amqp.exchange", a.declare),
                };
                crate::broker::amqp::exchange(&channel, exchange, key, declare).await?;
                Ok(Sink::Amqp {
                    channel,
                    exchange: exchange.to_owned(),
                    _conn: Box::new(conn),
                })
            }
        }
    }

    /// Publishes `payload`, a `kind` message (`queue_depth`, `control`)
    /// of `target`: Kafka key = target, AMQP routing key `<kind>.<target>`.
    /// Ok(false): RabbitMQ routed it to no queue (no scaler bound yet).
    pub async fn send(&self, kind: &str, target: &str, payload: &[u8]) -> Result<bool, StartError> {
        match self {
            Sink::Kafka { producer, topic } => {
                crate::broker::kafka::produce_until_acked(
                    producer,
                    topic,
                    Some(target.as_bytes()),
                    payload,
                    |e, wait| {
                        tracing::warn!(%e, ?wait, %topic, "publish failed, retrying (does the topic exist?)")
                    },
                )
                .await
                .map(|()| true)
                .map_err(|e| StartError::Fault(format!("topic {topic}: {e}")))
            }
            Sink::Amqp {
                channel, exchange, ..
            } => {
                let key = format!("{kind}.{target}");
                match crate::broker::amqp::publish_confirmed(
                    channel,
                    exchange,
                    &key,
                    payload,
                    crate::broker::amqp::persistent_json(),
                )
                .await
                {
                    Ok(true) => Ok(true),
                    Ok(false) => {
                        tracing::warn!(%exchange, %key, "no queue is bound for this message yet (is the scaler running?)");
                        Ok(false)
                    }
                    // A fault of the running publisher, not of its configuration.
                    Err(e) => Err(StartError::fault(format!(
                        "source.amqp: publish to {exchange:?}: {e}"
                    ))),
                }
            }
        }
    }
}
