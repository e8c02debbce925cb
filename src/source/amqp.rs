//! The RabbitMQ signal source: a durable queue bound to the signals topic
//! exchange, consumed with a bounded prefetch (`basic_qos`), one batch in
//! flight, acked (with `multiple`) only after the engine applied the batch
//! and every refused message was dead-lettered with a publisher confirm.
//! A lost connection or channel is reconnected with backoff; what was
//! delivered but not acked is redelivered by the broker.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::acker::Acker;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::AMQPValue;
use lapin::{Channel, Connection, Consumer};
use serde::Deserialize;
use tokio::sync::watch;

use crate::broker::amqp::{self, AmqpSettings, ConnectError};
use crate::broker::{default_binding_keys, default_deadletter};
use crate::event::{DeadLetter, Origin};
use crate::retry::Backoff;
use crate::secret::{Secret, Url};
use crate::settings::{problem, yes, Problem};
use crate::source::kafka::MAX_BATCH;
use crate::source::SourceContext;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    #[serde(flatten)]
    pub url: Secret<Url>,
    #[serde(default = "default_signals_exchange")]
    pub exchange: String,
    #[serde(default = "default_scaler_queue")]
    pub queue: String,
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Declare the exchange and queue (true) or only check that they exist.
    #[serde(default = "yes")]
    pub declare: bool,
    /// Binding keys of the queue on the exchange (signals are published
    /// with routing key `<type>.<target>`).
    #[serde(default = "default_binding_keys")]
    pub binding_keys: Vec<String>,
    #[serde(default = "default_deadletter")]
    pub deadletter_exchange: String,
    /// PEM CA file for `amqps://` (default: the system's trust store).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

impl AmqpSourceConfig {
    pub fn settings(&self) -> AmqpSettings {
        AmqpSettings {
            key: "source.amqp.url".into(),
            url: self.url.reference().clone(),
            tls_ca_file: self.tls_ca_file.clone(),
        }
    }

    /// Checks `[source.amqp]`.
    pub fn check(&self, out: &mut Vec<Problem>) {
        self.settings().check(out);
        if self.prefetch == 0 {
            out.push(problem("source.amqp.prefetch", "must be at least 1"));
        }
    }
}

fn default_signals_exchange() -> String {
    "tidewatch.signals".into()
}
fn default_scaler_queue() -> String {
    "tidewatch.scaler".into()
}
fn default_prefetch() -> u16 {
    500
}

/// How long a batch waits for more deliveries after its first.
pub const LINGER: Duration = Duration::from_millis(1);

pub struct AmqpSource {
    cfg: AmqpSourceConfig,
    settings: AmqpSettings,
    ctx: SourceContext,
}

/// Acks the latest acker sent (with `multiple`) until the sender is gone;
/// a value sent before that is still acked.
async fn ack_latest(mut pending: watch::Receiver<Option<Acker>>) -> Result<(), lapin::Error> {
    loop {
        if pending.changed().await.is_err() {
            return Ok(());
        }
        let latest = pending.borrow_and_update().clone();
        if let Some(a) = latest {
            a.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
}

/// One connection's worth of state.
pub struct Session {
    conn: Connection,
    consumer: Consumer,
    /// In confirm mode, for dead letters.
    deadletters: Channel,
}

/// How a session ended.
enum Ended {
    /// Told to stop, or the engine is gone: close and return.
    Stopped,
    /// The connection or channel broke: reconnect.
    Lost(String),
}

impl AmqpSource {
    pub fn new(cfg: &AmqpSourceConfig, ctx: SourceContext) -> Self {
        Self {
            settings: cfg.settings(),
            cfg: cfg.clone(),
            ctx,
        }
    }

    /// Connects, declares (or checks) the exchanges and the queue, sets the
    /// prefetch and starts consuming.
    pub async fn open(&self) -> Result<Session, ConnectError> {
        let conn = self.settings.connect("source").await?;
        let lost = |e: lapin::Error| {
            ConnectError::Unreachable(format!("source.amqp {}: {e}", self.settings.shown_url()))
        };
        let ch = conn.create_channel().await.map_err(lost)?;
        let c = &self.cfg;
        amqp::exchange(&ch, &c.exchange, "source.amqp.exchange", c.declare).await?;
        amqp::deadletter_topology(
            &ch,
            &c.deadletter_exchange,
            "source.amqp.deadletter_exchange",
            c.declare,
        )
        .await?;
        amqp::queue(
            &ch,
            &c.queue,
            "source.amqp.queue",
            c.declare,
            Some((&c.exchange, &c.binding_keys)),
        )
        .await?;
        let consumer = amqp::consume(
            &ch,
            &c.queue,
            "source.amqp.queue",
            c.prefetch,
            "tidewatch",
            lost,
        )
        .await?;
        let deadletters = amqp::confirm_channel(&conn, lost).await?;
        Ok(Session {
            conn,
            consumer,
            deadletters,
        })
    }

    /// Consumes until `stop` turns true, reconnecting whenever the broker
    /// goes away. `first` is a session opened by the caller at start.
    pub async fn run(self, first: Option<Session>) {
        let mut stop = self.ctx.stop.clone();
        let mut backoff = Backoff::default();
        let mut session = first;
        loop {
            let s = match session.take() {
                Some(s) => s,
                None => match amqp::connect_with_retry(
                    "source.amqp.url",
                    "amqp source",
                    &mut backoff,
                    || self.open(),
                    &mut stop,
                )
                .await
                {
                    Some(s) => {
                        tracing::info!(setting = "source.amqp.url", url = %self.settings.shown_url(), queue = %self.cfg.queue, "amqp source connected");
                        s
                    }
                    None => break,
                },
            };
            backoff.reset();
            self.ctx.ready.store(true, Ordering::Relaxed);
            self.ctx.metrics.broker_connected("source", true);
            let ended = self.consume(&s, &mut stop).await;
            self.ctx.metrics.broker_connected("source", false);
            match ended {
                Ended::Stopped => {
                    let _ = s.conn.close(200, "tidewatch stopping").await;
                    break;
                }
                Ended::Lost(e) => {
                    self.ctx.ready.store(false, Ordering::Relaxed);
                    self.ctx.metrics.broker_reconnecting(
                        "source",
                        "source.amqp.url",
                        &format_args!("{} at {}", e, self.settings.shown_url()),
                    );
                    if !amqp::wait_or_stop(&mut backoff, &mut stop).await {
                        break;
                    }
                }
            }
        }
        tracing::info!("amqp source stopped");
    }

    /// At most half the prefetch per batch: while the engine applies one
    /// batch, the broker keeps delivering the next one within the unacked
    /// budget instead of waiting for the ack.
    fn max_batch(&self) -> usize {
        (usize::from(self.cfg.prefetch) / 2).clamp(1, MAX_BATCH)
    }

    async fn consume(&self, s: &Session, stop: &mut watch::Receiver<bool>) -> Ended {
        // Acks go out from their own task, the latest batch's with
        // `multiple` covering every earlier one, so that the next batch is
        // read while an ack is on its way.
        let (acks, pending) = watch::channel::<Option<Acker>>(None);
        let mut acker = tokio::spawn(ack_latest(pending));
        let ended = self.consume_batches(s, stop, &acks, &mut acker).await;
        drop(acks);
        match ended {
            Ended::Lost(e) => {
                acker.abort();
                Ended::Lost(e)
            }
            ended => {
                // The last ack must leave before the connection closes.
                match tokio::time::timeout(Duration::from_secs(5), &mut acker).await {
                    Ok(Ok(Ok(()))) => {}
                    other => tracing::warn!("amqp source: last ack not confirmed: {other:?}"),
                }
                ended
            }
        }
    }

    async fn consume_batches(
        &self,
        s: &Session,
        stop: &mut watch::Receiver<bool>,
        acks: &watch::Sender<Option<Acker>>,
        acker: &mut tokio::task::JoinHandle<Result<(), lapin::Error>>,
    ) -> Ended {
        let mut consumer = s.consumer.clone();
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Ended::Stopped,
                r = &mut *acker => return Ended::Lost(match r {
                    Ok(Err(e)) => format!("ack: {e}"),
                    other => format!("ack task ended: {other:?}"),
                }),
                d = consumer.next() => d,
            };
            let mut batch = Vec::with_capacity(64);
            match first {
                Some(Ok(d)) => batch.push(d),
                Some(Err(e)) => return Ended::Lost(e.to_string()),
                None => return Ended::Lost("the broker cancelled the consumer".into()),
            }
            // Gather what else arrives within LINGER of the first: under
            // load, fewer and larger batches (each batch wakes the engine
            // and sends an ack); when idle, at most LINGER more latency.
            let until = tokio::time::Instant::now() + LINGER;
            while batch.len() < self.max_batch() {
                let next = match consumer.next().now_or_never() {
                    Some(d) => d,
                    None => match tokio::time::timeout_at(until, consumer.next()).await {
                        Ok(d) => d,
                        Err(_) => break,
                    },
                };
                match next {
                    Some(Ok(d)) => batch.push(d),
                    _ => break,
                }
            }
            match self.handle(s, batch).await {
                Ok(last) => {
                    let _ = acks.send(Some(last));
                }
                Err(ended) => return ended,
            }
        }
    }

    /// Applies a batch and dead-letters what was refused; returns the
    /// acker of its last delivery, to ack it all.
    async fn handle(&self, s: &Session, mut batch: Vec<Delivery>) -> Result<Acker, Ended> {
        // The routing key says which input (format) a message is in; a
        // dead letter takes the rest from the delivery.
        let messages: Vec<(Origin, Vec<u8>)> = batch
            .iter_mut()
            .map(|d| {
                let origin = Origin {
                    topic: d.exchange.to_string(),
                    key: Some(d.routing_key.as_str().as_bytes().to_vec()),
                    ..Origin::default()
                };
                (origin, std::mem::take(&mut d.data))
            })
            .collect();
        let messages = Arc::new(messages);
        let Ok(outcomes) = self.ctx.engine.apply_batch("amqp", messages.clone()).await else {
            return Err(Ended::Stopped);
        };
        let now = self.ctx.clock.now_ms();
        for (((_, bytes), outcome), d) in messages.iter().zip(&outcomes).zip(&batch) {
            if outcome.rejected.is_empty() {
                continue;
            }
            let origin = Origin {
                topic: d.exchange.to_string(),
                key: Some(d.routing_key.as_str().as_bytes().to_vec()),
                ..Origin::default()
            };
            if let Some(dl) = DeadLetter::of("amqp", &origin, bytes, &outcome.rejected, now) {
                if let Err(e) = self.dead_letter(s, d, bytes, &dl).await {
                    return Err(Ended::Lost(format!("dead letter: {e}")));
                }
            }
        }
        let last = batch.pop().expect("a batch has a first delivery");
        Ok(last.acker)
    }

    /// Publishes the original message to the dead-letter exchange with the
    /// reasons in its headers, retrying a nack with backoff; Err when the
    /// channel is gone (the batch is then redelivered, not acked).
    async fn dead_letter(
        &self,
        s: &Session,
        d: &Delivery,
        bytes: &[u8],
        dl: &DeadLetter,
    ) -> Result<(), lapin::Error> {
        let mut headers = d.properties.headers().clone().unwrap_or_default();
        let mut put = |k: &str, v: &str| {
            headers.insert(k.into(), AMQPValue::LongString(v.into()));
        };
        put("x-tidewatch-reason", &dl.reason);
        put("x-tidewatch-detail", &dl.detail);
        put("x-tidewatch-received-at", &dl.received_at);
        put("x-original-exchange", d.exchange.as_str());
        put("x-original-routing-key", d.routing_key.as_str());
        let reasons = serde_json::to_string(&dl.rejections).unwrap_or_default();
        put("x-tidewatch-rejections", &reasons);
        if let Some(total) = dl.rejections_total {
            put("x-tidewatch-rejections-total", &total.to_string());
        }
        let props = d
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        let mut backoff = Backoff::default();
        loop {
            match amqp::publish_confirmed(
                &s.deadletters,
                &self.cfg.deadletter_exchange,
                d.routing_key.as_str(),
                bytes,
                props.clone(),
            )
            .await
            {
                Ok(true) => break,
                Ok(false) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(setting = "source.amqp.deadletter_exchange", exchange = %self.cfg.deadletter_exchange, "dead letter not confirmed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.ctx
            .metrics
            .dead_lettered(dl.source.as_str(), dl.reason.as_str());
        Ok(())
    }
}
