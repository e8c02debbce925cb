//! The worker on RabbitMQ: a durable queue (`commands.amqp.queue`, default
//! `tidewatch.workers`) bound to the commands exchange with
//! `binding_keys` (`#`, or `kubernetes.*` for a worker of one provider),
//! consumed with a prefetch of `worker.prefetch`. Each delivery is acked
//! on its own, after its result was published with a publisher confirm.
//! Results go to the results exchange with routing key
//! `<status>.<target>`; dead letters (the original body, with the reason
//! in `x-tidewatch-*` headers) to the dead-letter exchange.
//!
//! When the connection is lost the worker reconnects with backoff; what
//! was delivered but not acked is delivered again, and the ledger answers
//! it `skipped_duplicate` when it had been applied.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use tokio::sync::watch;

use super::config::WorkerConfig;
use super::{Ack, Dispatcher, Outbox, Started};
use crate::broker::amqp::{self, AmqpSettings, ConnectError};
use crate::command::config::AmqpCommandsConfig;
use crate::command::ScaleResult;
use crate::event::DeadLetter;
use crate::event::Origin;
use crate::lifecycle::StartError;
use crate::retry::Backoff;
use crate::telemetry::Metrics;

struct Session {
    conn: Connection,
    consumer: Consumer,
    publish: Channel,
}

struct AmqpOutbox {
    cfg: AmqpCommandsConfig,
    /// The publishing channel of the current connection (None while away).
    channel: watch::Receiver<Option<Channel>>,
}

impl AmqpOutbox {
    /// Publishes with a confirm, waiting for a connection and retrying a
    /// nack or a lost channel with backoff.
    async fn publish(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: lapin::BasicProperties,
        setting: &str,
    ) {
        let mut backoff = Backoff::default();
        let mut channel = self.channel.clone();
        loop {
            let ch = channel.borrow_and_update().clone();
            let outcome = match &ch {
                Some(ch) => {
                    amqp::publish_with_confirm(ch, exchange, key, body, props.clone(), false)
                        .await
                        .map_err(|e| e.to_string())
                }
                None => Err("not connected".into()),
            };
            match outcome {
                Ok(true) => return,
                Ok(false) => tracing::warn!(setting, exchange, "publish nacked; retrying"),
                Err(e) => {
                    tracing::debug!(setting, exchange, error = %e, "publish failed; retrying")
                }
            }
            let wait = backoff.next_wait();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = channel.changed() => {}
            }
        }
    }
}

impl Outbox for AmqpOutbox {
    fn result<'a>(&'a self, r: &'a ScaleResult) -> BoxFuture<'a, ()> {
        async move {
            let body = serde_json::to_vec(r).expect("a result always serializes");
            let key = format!("{}.{}", r.status.as_str(), r.target);
            self.publish(
                &self.cfg.results_exchange,
                &key,
                &body,
                amqp::persistent_json(),
                "commands.amqp.results_exchange",
            )
            .await;
        }
        .boxed()
    }

    fn dead_letter<'a>(&'a self, bytes: &'a [u8], dl: &'a DeadLetter) -> BoxFuture<'a, ()> {
        async move {
            let mut headers = FieldTable::default();
            let mut put = |k: &str, v: &str| {
                headers.insert(k.into(), AMQPValue::LongString(v.into()));
            };
            put("x-tidewatch-reason", &dl.reason);
            put("x-tidewatch-detail", &dl.detail);
            put("x-tidewatch-received-at", &dl.received_at);
            put("x-original-exchange", &dl.topic);
            let key = dl.key.clone().unwrap_or_default();
            put("x-original-routing-key", &key);
            let props = amqp::persistent_json().with_headers(headers);
            self.publish(
                &self.cfg.deadletter_exchange,
                &key,
                bytes,
                props,
                "commands.amqp.deadletter_exchange",
            )
            .await;
        }
        .boxed()
    }
}

async fn open(
    cfg: &AmqpCommandsConfig,
    settings: &AmqpSettings,
    prefetch: u16,
) -> Result<Session, ConnectError> {
    let conn = settings.connect("worker").await?;
    let lost = |e: lapin::Error| {
        ConnectError::Unreachable(format!("commands.amqp {}: {e}", settings.shown_url()))
    };
    let ch = conn.create_channel().await.map_err(lost)?;
    amqp::exchange(&ch, &cfg.exchange, "commands.amqp.exchange", cfg.declare).await?;
    amqp::exchange(
        &ch,
        &cfg.results_exchange,
        "commands.amqp.results_exchange",
        cfg.declare,
    )
    .await?;
    amqp::deadletter_topology(
        &ch,
        &cfg.deadletter_exchange,
        "commands.amqp.deadletter_exchange",
        cfg.declare,
    )
    .await?;
    amqp::queue(
        &ch,
        &cfg.queue,
        "commands.amqp.queue",
        cfg.declare,
        Some((&cfg.exchange, &cfg.binding_keys)),
    )
    .await?;
    let consumer = amqp::consume(
        &ch,
        &cfg.queue,
        "commands.amqp.queue",
        prefetch,
        "tidewatch-worker",
        lost,
    )
    .await?;
    let publish = amqp::confirm_channel(&conn, lost).await?;
    Ok(Session {
        conn,
        consumer,
        publish,
    })
}

/// Connects (refused credentials or missing topology with declaring off
/// stop the start; an unreachable broker is waited for).
pub(crate) async fn start(
    a: &AmqpCommandsConfig,
    cfg: &WorkerConfig,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Result<Started, StartError> {
    let settings = a.settings();
    let prefetch = cfg.worker.prefetch;
    let first = match open(a, &settings, prefetch).await {
        Ok(s) => Some(s),
        Err(e) if e.retryable() => {
            tracing::warn!(
                setting = "commands.amqp.url",
                "worker cannot reach RabbitMQ yet, retrying: {e}"
            );
            None
        }
        Err(e) => return Err(StartError::Fault(e.to_string())),
    };
    let (channel_tx, channel_rx) = watch::channel(None);
    let outbox = Arc::new(AmqpOutbox {
        cfg: a.clone(),
        channel: channel_rx,
    });
    let a = a.clone();
    let drain_timeout = cfg.worker.drain_timeout;
    let consume = move |d: Arc<Dispatcher>| {
        consume_loop(
            a,
            settings,
            prefetch,
            first,
            channel_tx,
            d,
            stop,
            metrics,
            drain_timeout,
        )
        .boxed()
    };
    Ok(Started {
        outbox,
        consume: Box::new(consume),
    })
}

#[allow(clippy::too_many_arguments)]
async fn consume_loop(
    cfg: AmqpCommandsConfig,
    settings: AmqpSettings,
    prefetch: u16,
    first: Option<Session>,
    channel: watch::Sender<Option<Channel>>,
    dispatcher: Arc<Dispatcher>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    drain_timeout: std::time::Duration,
) -> bool {
    let mut backoff = Backoff::default();
    let mut session = first;
    let mut last_conn: Option<Connection> = None;
    loop {
        let s = match session.take() {
            Some(s) => s,
            None => match amqp::connect_with_retry(
                "commands.amqp.url",
                "worker",
                &mut backoff,
                || open(&cfg, &settings, prefetch),
                &mut stop,
            )
            .await
            {
                Some(s) => s,
                None => break,
            },
        };
        tracing::info!(setting = "commands.amqp.url", url = %settings.shown_url(), queue = %cfg.queue, "worker connected");
        backoff.reset();
        metrics.broker_connected("worker", true);
        let _ = channel.send(Some(s.publish.clone()));
        let Session {
            conn, mut consumer, ..
        } = s;
        let lost = loop {
            let next = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break None,
                d = consumer.next() => d,
            };
            let d = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => break Some(e.to_string()),
                None => break Some("the consumer was cancelled".to_string()),
            };
            let origin = Origin {
                topic: d.exchange.to_string(),
                key: Some(d.routing_key.as_str().as_bytes().to_vec()),
                ..Origin::default()
            };
            let acker = d.acker.clone();
            let ack: Ack = Box::new(move || {
                async move {
                    if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                        // The channel is gone: the delivery comes again.
                        tracing::debug!(error = %e, "ack not sent");
                    }
                }
                .boxed()
            });
            dispatcher.submit(&d.data, &origin, ack).await;
        };
        metrics.broker_connected("worker", false);
        match lost {
            None => {
                last_conn = Some(conn);
                break;
            }
            Some(e) => {
                let _ = channel.send(None);
                metrics.broker_reconnecting("worker", "commands.amqp.url", &e);
                if !amqp::wait_or_stop(&mut backoff, &mut stop).await {
                    break;
                }
            }
        }
    }
    // The lanes publish and ack over the connection still open.
    let drained = dispatcher.drain(drain_timeout).await;
    if let Some(conn) = last_conn {
        let _ = conn.close(200, "tidewatch worker stopping").await;
    }
    drained
}
