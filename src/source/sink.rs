//! Publishing where a scaler reads its signals, from its configuration:
//! the first topic of `[source.kafka]` (key = target, acks=all, retried),
//! or the exchange of `[source.amqp]` (routing key `<type>.<target>`,
//! persistent, publisher confirms). `loadgen` and `ctl` use it.

use rdkafka::producer::FutureProducer;

use crate::broker::kafka::LoggingContext;
use crate::config::{BrokerKind, Config};
use crate::lifecycle::StartError;

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
    /// A publisher to where `cfg`'s scaler reads signals.
    pub async fn open(cfg: &Config, who: &str) -> Result<Self, StartError> {
        match cfg.source.kind {
            BrokerKind::None => Err(StartError::usage(
                "source.kind = \"none\": this configuration reads no signals, so there is nowhere to publish them",
            )),
            BrokerKind::Kafka => {
                let k = cfg
                    .source
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
                let topic = k
                    .topics
                    .first()
                    .cloned()
                    .ok_or_else(|| StartError::usage("source.kafka.topics: empty"))?;
                Ok(Sink::Kafka { producer, topic })
            }
            BrokerKind::Amqp => {
                let a = cfg
                    .source
                    .amqp
                    .as_ref()
                    .ok_or_else(|| StartError::usage("source.amqp: missing for kind = \"amqp\""))?;
                let conn = a.settings().connect(who).await?;
                let channel = crate::broker::amqp::confirm_channel(&conn, |e| {
                    crate::broker::amqp::ConnectError::Unreachable(e.to_string())
                })
                .await?;
                crate::broker::amqp::exchange(&channel, &a.exchange, "source.amqp.exchange", a.declare)
                    .await?;
                Ok(Sink::Amqp {
                    channel,
                    exchange: a.exchange.clone(),
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
