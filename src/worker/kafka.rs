//! The worker on Kafka: a consumer group on the command topic (several
//! workers split its partitions; commands are keyed by target, so one
//! target's commands stay in one partition and in order), a producer for
//! results (keyed by target) and dead letters. An offset is stored only
//! when every command up to it has its result published; librdkafka
//! commits stored offsets every second and on shutdown.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;

use super::config::WorkerConfig;
use super::{Ack, Dispatcher, Outbox, Started};
use crate::broker::kafka::{produce_until_acked, LoggingContext};
use crate::broker::BrokerError;
use crate::command::config::KafkaCommandsConfig;
use crate::command::ScaleResult;
use crate::event::DeadLetter;
use crate::event::Origin;

/// Offsets in flight per partition: the offset to store is the one below
/// the lowest unfinished command, or the highest received when none is.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: HashMap<(String, i32), Part>,
}

#[derive(Debug)]
struct Part {
    in_flight: BTreeSet<i64>,
    highest: i64,
    stored: i64,
}

impl Part {
    /// A partition read from `offset` on: nothing before it is ours.
    fn from(offset: i64) -> Self {
        Part {
            in_flight: BTreeSet::new(),
            highest: offset - 1,
            stored: offset - 1,
        }
    }
}

impl OffsetTracker {
    /// A message was received.
    pub fn received(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self
            .parts
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| Part::from(offset));
        if offset <= p.highest {
            // Re-read (a rebalance gave the partition back): start over.
            *p = Part::from(offset);
        }
        p.in_flight.insert(offset);
        p.highest = offset;
    }

    /// A message's result is published: the offset (of the last message
    /// done, librdkafka stores the next one) to store now, if it moved.
    pub fn done(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.parts.get_mut(&(topic.to_owned(), partition))?;
        if !p.in_flight.remove(&offset) {
            return None;
        }
        let safe = match p.in_flight.first() {
            Some(&lowest) => lowest - 1,
            None => p.highest,
        };
        (safe > p.stored).then(|| {
            p.stored = safe;
            safe
        })
    }
}

struct KafkaOutbox {
    producer: FutureProducer<LoggingContext>,
    results_topic: String,
    deadletter_topic: String,
}

impl Outbox for KafkaOutbox {
    fn result<'a>(&'a self, r: &'a ScaleResult) -> BoxFuture<'a, ()> {
        async move {
            let bytes = serde_json::to_vec(r).expect("a result always serializes");
            produce_until_acked(&self.producer, &self.results_topic, Some(r.target.as_bytes()), &bytes, |e, wait| {
                tracing::warn!(setting = "commands.kafka.results_topic", topic = %self.results_topic, error = %e, "result not acknowledged; retrying in {wait:?}");
            })
            .await
            .unwrap_or_else(|e| tracing::error!(setting = "commands.kafka.results_topic", topic = %self.results_topic, error = %e, "result refused by the broker; dropped"));
        }
        .boxed()
    }

    fn dead_letter<'a>(&'a self, _bytes: &'a [u8], dl: &'a DeadLetter) -> BoxFuture<'a, ()> {
        async move {
            let key = dl.key.as_ref().map(String::as_bytes);
            produce_until_acked(&self.producer, &self.deadletter_topic, key, &dl.to_json(), |e, wait| {
                tracing::warn!(setting = "commands.kafka.deadletter_topic", topic = %self.deadletter_topic, error = %e, "dead letter not accepted; retrying in {wait:?}");
            })
            .await
            .unwrap_or_else(|e| tracing::error!(setting = "commands.kafka.deadletter_topic", topic = %self.deadletter_topic, error = %e, "dead letter refused by the broker; dropped"));
        }
        .boxed()
    }
}

/// Creates the consumer (joining `commands.kafka.group_id`, default
/// `tidewatch-workers`) and the producer.
pub(crate) fn start(
    k: &KafkaCommandsConfig,
    cfg: &WorkerConfig,
    stop: watch::Receiver<bool>,
) -> Result<Started, BrokerError> {
    let s = k.client_settings();
    let log = LoggingContext {
        key: s.key.clone(),
        brokers: s.brokers.clone(),
    };
    let mut c = s.client_config()?;
    c.set(
        "group.id",
        k.group_id.as_deref().unwrap_or("tidewatch-workers"),
    )
    .set("enable.auto.offset.store", "false")
    .set("enable.auto.commit", "true")
    .set("auto.commit.interval.ms", "1000")
    // Commands published before the first worker started still count;
    // the expired ones are answered `expired`.
    .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer<LoggingContext> =
        c.create_with_context(log.clone()).map_err(|e| {
            BrokerError::new("commands.kafka", format!("cannot create the consumer: {e}"))
        })?;
    consumer
        .subscribe(&[k.topic.as_str()])
        .map_err(|e| BrokerError::new("commands.kafka.topic", format!("{}: {e}", k.topic)))?;
    let mut pc = s.client_config()?;
    pc.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0");
    let producer = pc.create_with_context(log).map_err(|e| {
        BrokerError::new("commands.kafka", format!("cannot create the producer: {e}"))
    })?;
    let outbox = Arc::new(KafkaOutbox {
        producer,
        results_topic: k.results_topic.clone(),
        deadletter_topic: k.deadletter_topic.clone(),
    });
    let drain_timeout = cfg.worker.drain_timeout;
    let consumer = Arc::new(consumer);
    let consume = move |d: Arc<Dispatcher>| consume(consumer, d, stop, drain_timeout).boxed();
    Ok(Started {
        outbox,
        consume: Box::new(consume),
    })
}

async fn consume(
    consumer: Arc<StreamConsumer<LoggingContext>>,
    dispatcher: Arc<Dispatcher>,
    mut stop: watch::Receiver<bool>,
    drain_timeout: std::time::Duration,
) -> bool {
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let mut failures = 0u32;
    loop {
        let m = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(100) {
                    tracing::warn!(setting = "commands.kafka", error = %e, failures, "kafka consume error; retrying");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        failures = 0;
        let (topic, partition, offset) = (m.topic().to_owned(), m.partition(), m.offset());
        let origin = Origin {
            topic: topic.clone(),
            partition: Some(partition),
            offset: Some(offset),
            key: m.key().map(<[u8]>::to_vec),
            timestamp: m.timestamp().to_millis(),
            replay: false,
        };
        let bytes = m.payload().unwrap_or_default().to_vec();
        drop(m);
        tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .received(&topic, partition, offset);
        let ack: Ack = {
            let tracker = tracker.clone();
            let consumer = consumer.clone();
            Box::new(move || {
                async move {
                    let store = tracker
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .done(&topic, partition, offset);
                    if let Some(o) = store {
                        if let Err(e) = consumer.store_offset(&topic, partition, o) {
                            // Revoked meanwhile: its next owner reads it again.
                            tracing::debug!(%topic, partition, offset = o, error = %e, "offset not stored");
                        }
                    }
                }
                .boxed()
            })
        };
        dispatcher.submit(&bytes, &origin, ack).await;
    }
    let drained = dispatcher.drain(drain_timeout).await;
    let c = consumer.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = c.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit");
        }
    })
    .await;
    // Closing may wait for ever on a rebalance (see close_in_background).
    crate::broker::kafka::close_in_background(consumer);
    drained
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_move_only_past_finished_commands() {
        let mut t = OffsetTracker::default();
        for o in 10..14 {
            t.received("c", 0, o);
        }
        t.received("c", 1, 5);
        // 11 and 12 finish first (other targets): nothing below them is done.
        assert_eq!(t.done("c", 0, 11), None);
        assert_eq!(t.done("c", 0, 12), None);
        assert_eq!(t.done("c", 0, 10), Some(12), "10..=12 are done, 13 is not");
        assert_eq!(t.done("c", 0, 13), Some(13));
        assert_eq!(t.done("c", 0, 13), None, "an ack counts once");
        assert_eq!(t.done("c", 1, 5), Some(5), "partitions are independent");
        // The partition is read again from 11 after a rebalance.
        t.received("c", 0, 11);
        assert_eq!(t.done("c", 0, 11), Some(11));
        assert_eq!(t.done("x", 0, 1), None, "unknown partitions are ignored");
    }
}
