//! Commands on RabbitMQ: published persistent to the commands topic
//! exchange with routing key `<provider>.<target>`, `mandatory`, and with
//! publisher confirms. The publisher keeps the latest undelivered command
//! per target: a nack, a return (no queue bound) or a lost connection
//! means retry with backoff, and a command decided while the broker was
//! away is published once it is back (a newer one for the same target
//! replaces it). Results are read from the results exchange through an
//! exclusive queue of this scaler's own.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, watch};

use crate::broker::amqp::Pause as _;
use crate::broker::amqp::{self, AmqpSettings, ConnectError};
use crate::command::config::AmqpCommandsConfig;
use crate::command::ScaleCommand;
use crate::engine::{EngineHandle, WeakEngineHandle};
use crate::publish::{confirmed, deliver_result};
use crate::retry::Backoff;
use crate::telemetry::Metrics;

/// The routing key of a command.
pub fn routing_key(c: &ScaleCommand) -> String {
    format!("{}.{}", c.provider, c.target)
}

pub struct AmqpPublisher {
    cfg: AmqpCommandsConfig,
    settings: AmqpSettings,
    metrics: Arc<Metrics>,
}

pub struct PublisherSession {
    conn: Connection,
    channel: Channel,
}

/// Declares (or checks) the commands and results exchanges and, when
/// named, the workers' queue.
async fn topology(ch: &Channel, cfg: &AmqpCommandsConfig) -> Result<(), ConnectError> {
    amqp::exchange(ch, &cfg.exchange, "commands.amqp.exchange", cfg.declare).await?;
    amqp::exchange(
        ch,
        &cfg.results_exchange,
        "commands.amqp.results_exchange",
        cfg.declare,
    )
    .await?;
    if !cfg.queue.is_empty() {
        let keys = ["#".to_string()];
        amqp::queue(
            ch,
            &cfg.queue,
            "commands.amqp.queue",
            cfg.declare,
            Some((&cfg.exchange, &keys)),
        )
        .await?;
    }
    Ok(())
}

/// Commands waiting for a confirm: the latest per target.
#[derive(Default)]
struct Pending(BTreeMap<String, ScaleCommand>);

impl Pending {
    fn put(&mut self, c: ScaleCommand) {
        match self.0.get(&c.target) {
            Some(p) if p.generation > c.generation => {}
            _ => {
                self.0.insert(c.target.clone(), c);
            }
        }
    }
    /// Forgets `c` unless a newer command for its target came meanwhile.
    fn done(&mut self, c: &ScaleCommand) {
        if self.0.get(&c.target).map(|p| p.generation) == Some(c.generation) {
            self.0.remove(&c.target);
        }
    }
}

impl AmqpPublisher {
    pub fn new(cfg: &AmqpCommandsConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            settings: cfg.settings(),
            cfg: cfg.clone(),
            metrics,
        }
    }

    pub async fn open(&self) -> Result<PublisherSession, ConnectError> {
        let conn = self.settings.connect("commands").await?;
        let lost = |e: lapin::Error| {
            ConnectError::Unreachable(format!("commands.amqp {}: {e}", self.settings.shown_url()))
        };
        let channel = conn.create_channel().await.map_err(lost)?;
        topology(&channel, &self.cfg).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(lost)?;
        Ok(PublisherSession { conn, channel })
    }

    /// Publishes every command from `rx` until it closes and nothing is
    /// pending, telling the engine about each confirmed one. Each command
    /// goes out as it arrives, while earlier ones wait for their confirms
    /// (a window, not rounds: a round waited for its slowest confirm, a
    /// persistent message's disk write, before the next command could
    /// leave).
    pub async fn run(
        self,
        first: Option<PublisherSession>,
        mut rx: mpsc::Receiver<ScaleCommand>,
        engine: WeakEngineHandle,
    ) {
        let mut pending = Pending::default();
        let mut session = first;
        // Bumped at each new session: confirms of an older one are stale.
        let mut epoch = 0u64;
        let mut inflight = futures::stream::FuturesUnordered::new();
        // (target, generation) of every publish of this session in flight
        let mut flying: std::collections::HashSet<(String, i64)> = Default::default();
        // Commands in `pending` that have no publish in flight (a nack, a
        // return, a lost connection): published again when `retry_at` is.
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut closed = false;
        let mut backoff = Backoff::default();
        let stall = crate::publish::StallWatch::start(
            "commands",
            self.metrics.clone(),
            crate::publish::kafka::STALLED_AFTER,
        );
        let publish = |ch: &Channel, c: ScaleCommand, epoch: u64| {
            let (ch, exchange) = (ch.clone(), self.cfg.exchange.clone());
            async move {
                let outcome = amqp::publish_confirmed(
                    &ch,
                    &exchange,
                    &routing_key(&c),
                    &c.to_json(),
                    amqp::persistent_json(),
                )
                .await;
                (c, epoch, outcome)
            }
        };
        loop {
            if closed && pending.0.is_empty() {
                break;
            }
            if session.is_none() && (!pending.0.is_empty() || !closed) {
                if pending.0.is_empty() {
                    // nothing to publish: wait for a command first
                    match rx.recv().await {
                        Some(c) => pending.put(c),
                        None => {
                            closed = true;
                            continue;
                        }
                    }
                }
                stall.waiting();
                let s = amqp::connect_with_retry(
                    "commands.amqp.url",
                    "amqp command publisher",
                    &mut backoff,
                    || self.open(),
                    &mut Intake {
                        rx: &mut rx,
                        pending: &mut pending,
                        closed: &mut closed,
                    },
                )
                .await
                .expect("the publisher retries until it connects");
                tracing::info!(setting = "commands.amqp.url", url = %self.settings.shown_url(), pending = pending.0.len(), "amqp command publisher connected");
                self.metrics.broker_connected("commands", true);
                epoch += 1;
                flying.clear();
                for c in pending.0.values() {
                    flying.insert((c.target.clone(), c.generation));
                    inflight.push(publish(&s.channel, c.clone(), epoch));
                }
                retry_at = None;
                session = Some(s);
            }
            let retry_due = retry_at.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                biased;
                // a new command leaves at once, whatever waits for confirms
                c = rx.recv(), if !closed => match c {
                    Some(c) => {
                        stall.waiting();
                        pending.put(c.clone());
                        if let Some(s) = &session {
                            flying.insert((c.target.clone(), c.generation));
                            inflight.push(publish(&s.channel, c, epoch));
                        }
                    }
                    None => closed = true,
                },
                Some((c, at, outcome)) = inflight.next(), if !inflight.is_empty() => {
                    if at != epoch {
                        // its session is gone; the new one published it again
                        if matches!(outcome, Ok(true)) {
                            pending.done(&c);
                        }
                        continue;
                    }
                    flying.remove(&(c.target.clone(), c.generation));
                    match outcome {
                        Ok(true) => {
                            pending.done(&c);
                            confirmed(&c, &self.metrics, &engine);
                            stall.acknowledged(!pending.0.is_empty());
                            backoff.reset();
                        }
                        Ok(false) => {
                            self.metrics.command_publish_failed(
                                "commands.amqp.exchange",
                                &c,
                                &format_args!(
                                    "nacked or unroutable on exchange {:?} with routing key {:?} \
                                     (is a queue bound for this routing key?)",
                                    self.cfg.exchange,
                                    routing_key(&c)
                                ),
                            );
                            retry_at.get_or_insert_with(|| {
                                tokio::time::Instant::now() + backoff.next_wait()
                            });
                        }
                        Err(e) => {
                            self.metrics.command_publish_failed("commands.amqp.url", &c, &e);
                            if session.is_none() {
                                // another publish of this session failed first
                                continue;
                            }
                            self.metrics.broker_reconnecting(
                                "commands",
                                "commands.amqp.url",
                                &format_args!(
                                    "{e} at {}; {} commands pending",
                                    self.settings.shown_url(),
                                    pending.0.len()
                                ),
                            );
                            if let Some(s) = session.take() {
                                let _ = s.conn.close(200, "reconnecting").await;
                            }
                            // a pause before the reconnect, taking commands in
                            let wait = backoff.next_wait();
                            Intake {
                                rx: &mut rx,
                                pending: &mut pending,
                                closed: &mut closed,
                            }
                            .pause(wait)
                            .await;
                        }
                    }
                }
                _ = tokio::time::sleep_until(retry_due), if retry_at.is_some() => {
                    retry_at = None;
                    if let Some(s) = &session {
                        // what is pending and not in flight goes again
                        for c in pending.0.values() {
                            if flying.insert((c.target.clone(), c.generation)) {
                                inflight.push(publish(&s.channel, c.clone(), epoch));
                            }
                        }
                    }
                }
                else => {
                    // closed, nothing in flight, commands pending: again soon
                    retry_at = Some(tokio::time::Instant::now() + backoff.next_wait());
                }
            }
        }
        if let Some(s) = session {
            let _ = s.conn.close(200, "tidewatch stopping").await;
        }
        self.metrics.broker_connected("commands", false);
    }
}

/// The publisher's pause: waits out one backoff interval while still
/// taking new commands in (it never gives up: commands are desired state).
struct Intake<'a> {
    rx: &'a mut mpsc::Receiver<ScaleCommand>,
    pending: &'a mut Pending,
    closed: &'a mut bool,
}

impl amqp::Pause for Intake<'_> {
    async fn pause(&mut self, wait: std::time::Duration) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                c = self.rx.recv(), if !*self.closed => match c {
                    Some(c) => self.pending.put(c),
                    None => *self.closed = true,
                },
            }
        }
    }
}

/// Reads every worker's results through an exclusive, auto-deleted queue
/// bound to the results exchange (the closed loop needs what happens from
/// now on, as the Kafka reader starts at the end).
pub struct AmqpResults {
    cfg: AmqpCommandsConfig,
    settings: AmqpSettings,
    metrics: Arc<Metrics>,
}

impl AmqpResults {
    pub fn new(cfg: &AmqpCommandsConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            settings: cfg.settings(),
            cfg: cfg.clone(),
            metrics,
        }
    }

    async fn open(&self) -> Result<(Connection, lapin::Consumer), ConnectError> {
        let conn = self.settings.connect("results").await?;
        let lost = |e: lapin::Error| {
            ConnectError::Unreachable(format!(
                "commands.amqp.results_exchange {:?}: {e}",
                self.cfg.results_exchange
            ))
        };
        let ch = conn.create_channel().await.map_err(lost)?;
        amqp::exchange(
            &ch,
            &self.cfg.results_exchange,
            "commands.amqp.results_exchange",
            self.cfg.declare,
        )
        .await?;
        let q = amqp::exclusive_catch_all(&ch, "", &self.cfg.results_exchange)
            .await
            .map_err(lost)?;
        let consumer = ch
            .basic_consume(
                &q,
                "tidewatch-results",
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(lost)?;
        Ok((conn, consumer))
    }

    pub async fn run(self, engine: EngineHandle, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            let Some((conn, mut consumer)) = amqp::connect_with_retry(
                "commands.amqp.results_exchange",
                "amqp results reader",
                &mut backoff,
                || self.open(),
                &mut stop,
            )
            .await
            else {
                return;
            };
            self.metrics.broker_connected("results", true);
            let lost = loop {
                let d = tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break None,
                    d = consumer.next() => d,
                };
                match d {
                    Some(Ok(d)) => {
                        if !deliver_result(&d.data, &self.metrics, &engine).await {
                            break None;
                        }
                    }
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break Some("the broker cancelled the consumer".into()),
                }
            };
            self.metrics.broker_connected("results", false);
            match lost {
                None => {
                    let _ = conn.close(200, "tidewatch stopping").await;
                    return;
                }
                Some(e) => {
                    self.metrics
                        .broker_reconnecting("results", "commands.amqp.url", &e);
                    if !amqp::wait_or_stop(&mut backoff, &mut stop).await {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(target: &str, generation: i64) -> ScaleCommand {
        crate::command::testing::command(target)
            .provider("kubernetes")
            .generation(generation)
            .replicas(3)
            .current(2)
            .id(&format!("id-{generation}"))
            .build()
    }

    #[test]
    fn pending_keeps_the_latest_per_target() {
        let mut p = Pending::default();
        p.put(cmd("a", 2));
        p.put(cmd("a", 1));
        p.put(cmd("b", 5));
        assert_eq!(
            p.0["a"].generation, 2,
            "an older command never replaces a newer one"
        );
        p.put(cmd("a", 3));
        assert_eq!(p.0.len(), 2);
        p.done(&cmd("a", 2));
        assert_eq!(
            p.0["a"].generation, 3,
            "a confirm for generation 2 leaves 3 pending"
        );
        p.done(&cmd("a", 3));
        p.done(&cmd("b", 5));
        assert!(p.0.is_empty());
        assert_eq!(routing_key(&cmd("checkout", 1)), "kubernetes.checkout");
    }
}
