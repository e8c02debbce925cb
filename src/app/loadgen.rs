//! `tidewatch loadgen`: the demo's load generator against a real broker.
//! It reads a scaler configuration and publishes, for each of its targets
//! (or the ones named), a `queue_depth` signal every `every`, following the
//! demo's daily-like wave with a flash spike (`app::wave::load_at`) compressed
//! into `day`. It publishes where the scaler reads: the first topic of
//! `[source.kafka]` (key = target), or the exchange of `[source.amqp]`
//! (routing key `queue_depth.<target>`, publisher confirms). The compose
//! stacks run it so that a new stack scales at once.
//!
//! Open loop: the depth follows the wave whatever the replicas are (the
//! demo, in one process, closes the loop with a simulated service).

use std::time::Duration;

use rdkafka::producer::FutureProducer;

use crate::broker::kafka::LoggingContext;
use crate::clock::{Clock, Millis};
use crate::config::{BrokerKind, Config};
use crate::lifecycle::StartError;

#[derive(Debug, Clone)]
pub struct LoadgenOptions {
    /// Targets to publish for; empty: every target of the configuration.
    pub targets: Vec<String>,
    /// Time between two signals of a target.
    pub every: Duration,
    /// Length of one "day" of the wave.
    pub day: Duration,
    /// Depth at the wave's trough, and its rise at the crest.
    pub base: f64,
    pub swing: f64,
    /// Stop after this many rounds (one signal per target); None: until stopped.
    pub rounds: Option<u64>,
}

impl Default for LoadgenOptions {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            every: Duration::from_secs(1),
            day: Duration::from_secs(600),
            base: 40.0,
            swing: 400.0,
            rounds: None,
        }
    }
}

/// The wave's depth `elapsed` seconds into the run.
pub fn depth_at(elapsed: f64, o: &LoadgenOptions) -> f64 {
    crate::app::wave::load_at(elapsed, o.day.as_secs_f64(), o.base, o.swing).round()
}

/// The queue-depth signal of `target` at `now_ms`.
pub fn signal(target: &str, depth: f64, now_ms: Millis) -> Vec<u8> {
    serde_json::json!({
        "type": "queue_depth",
        "target": target,
        "queue": format!("{target}-loadgen"),
        "depth": depth,
        "ts": now_ms,
    })
    .to_string()
    .into_bytes()
}

enum Sink {
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
    async fn open(cfg: &Config) -> Result<Self, StartError> {
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
                let conn = a.settings().connect("loadgen").await?;
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

    async fn send(&self, target: &str, payload: &[u8]) -> Result<(), StartError> {
        match self {
            Sink::Kafka { producer, topic } => {
                crate::broker::kafka::produce_until_acked(
                    producer,
                    topic,
                    Some(target.as_bytes()),
                    payload,
                    |e, wait| {
                        tracing::warn!(%e, ?wait, %topic, "loadgen: publish failed, retrying (does the topic exist?)")
                    },
                )
                .await
                .map_err(|e| StartError::Fault(format!("loadgen: topic {topic}: {e}")))
            }
            Sink::Amqp {
                channel, exchange, ..
            } => {
                let key = format!("queue_depth.{target}");
                match crate::broker::amqp::publish_confirmed(
                    channel,
                    exchange,
                    &key,
                    payload,
                    crate::broker::amqp::persistent_json(),
                )
                .await
                {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        tracing::warn!(%exchange, %key, "loadgen: no queue is bound for this signal yet (is the scaler running?)");
                        Ok(())
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

/// Publishes until `shutdown` completes or the rounds are done. Returns
/// the number of signals published.
pub async fn run(
    cfg: &Config,
    o: &LoadgenOptions,
    clock: &dyn Clock,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<u64, StartError> {
    if o.every.is_zero() || o.day.is_zero() {
        return Err(StartError::usage("--every and --day must be above zero"));
    }
    if !(o.base.is_finite() && o.swing.is_finite() && o.base >= 0.0 && o.swing >= 0.0) {
        return Err(StartError::Usage(format!(
            "--base {} / --swing {}: give numbers of at least 0",
            o.base, o.swing
        )));
    }
    let known: Vec<&str> = cfg.targets.iter().map(|t| t.name.as_str()).collect();
    for t in &o.targets {
        if !known.contains(&t.as_str()) {
            return Err(StartError::Usage(format!(
                "--target {t:?}: not a target of this configuration (it has {known:?})"
            )));
        }
    }
    let targets: Vec<&str> = if o.targets.is_empty() {
        known
    } else {
        o.targets.iter().map(String::as_str).collect()
    };
    if targets.is_empty() {
        return Err(StartError::usage(
            "the configuration has no [[targets]] to publish for",
        ));
    }
    let sink = Sink::open(cfg).await?;
    let start = clock.now_ms();
    let mut sent = 0;
    let mut tick = tokio::time::interval(o.every);
    tokio::pin!(shutdown);
    for round in 0.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => return Ok(sent),
        }
        if o.rounds.is_some_and(|r| round >= r) {
            return Ok(sent);
        }
        let now = clock.now_ms();
        let depth = depth_at((now - start) as f64 / 1000.0, o);
        for t in &targets {
            let payload = signal(t, depth, now);
            tokio::select! {
                r = sink.send(t, &payload) => r?,
                // a broker that does not take the signal must not keep
                // SIGTERM waiting
                _ = &mut shutdown => return Ok(sent),
            }
            sent += 1;
        }
        if round % 10 == 0 {
            tracing::info!(depth, targets = targets.len(), "loadgen: published");
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_valid_queue_depth_events_that_follow_the_wave() {
        let o = LoadgenOptions::default();
        let trough = signal("checkout", depth_at(0.0, &o), 1_000);
        let crest = signal("checkout", depth_at(300.0, &o), 2_000);
        let decode = |b: &[u8]| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            assert_eq!(v["type"], "queue_depth");
            assert_eq!(v["target"], "checkout");
            v["depth"].as_f64().unwrap()
        };
        assert_eq!(decode(&trough), 40.0);
        assert_eq!(decode(&crest), 440.0);
        // The engine's own decoder accepts them.
        let events = crate::event::decode(&crest, 2_000, &crate::event::Limits::default());
        assert!(events.iter().all(|e| e.is_ok()), "{:?}", events);
    }
}
