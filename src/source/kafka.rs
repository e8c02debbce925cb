//! The Kafka signal source: a consumer group on the signal topics,
//! at-least-once (offsets stored only after the engine applied a message
//! or it was dead-lettered), bounded memory (one batch in flight, a
//! bounded librdkafka prefetch queue), and a drain on shutdown and on
//! partition revocation.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;

use crate::broker::default_deadletter;
use crate::broker::kafka::{produce_until_acked, ClientSettings, LoggingContext};
use crate::broker::BrokerError;
use crate::clock::Clock;
use crate::engine::{EngineHandle, Held, SharedOwnership};
use crate::event::{DeadLetter, Origin};
use crate::secret::{SaslPassword, Secret};
use crate::settings::{problem, Problem};
use crate::source::SourceContext;
use crate::state::StateHandle;
use crate::telemetry::Metrics;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    pub brokers: String,
    #[serde(default = "default_signal_topics")]
    pub topics: Vec<String>,
    #[serde(default = "default_group")]
    pub group_id: String,
    #[serde(default = "default_deadletter")]
    pub deadletter_topic: String,
    /// On assignment a partition is re-read from the start of the longest
    /// window to rebuild it; when the broker cannot find that start by time,
    /// at most this many messages before the committed offset are re-read.
    #[serde(default = "default_max_replay")]
    pub max_replay_messages: u64,
    /// Static group membership (KIP-345, `group.instance.id`): a stable
    /// identity per scaler, for example the pod name
    /// (`TIDEWATCH__SOURCE__KAFKA__INSTANCE_ID` from the downward API). A
    /// scaler restarted with the same identity gets its partitions back at
    /// once instead of after the session timeout. Unique per scaler.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Passed to librdkafka as they are (TLS, SASL and tuning settings).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(flatten)]
    pub sasl_password: Secret<SaslPassword>,
}

impl KafkaSourceConfig {
    /// The client settings, with errors naming `source.kafka.*`.
    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            key: "source.kafka.brokers".into(),
            brokers: self.brokers.clone(),
            options: self.options.clone(),
            sasl_password: self.sasl_password.reference().clone(),
        }
    }

    /// Checks `[source.kafka]`.
    pub fn check(&self, out: &mut Vec<Problem>) {
        crate::broker::kafka::check(out, "source.kafka", &self.brokers, &self.sasl_password);
        if self.topics.is_empty() {
            out.push(problem(
                "source.kafka.topics",
                "must name at least one topic",
            ));
        }
        if let Some(id) = &self.instance_id {
            if id.trim().is_empty() || id.len() > 249 {
                out.push(problem(
                    "source.kafka.instance_id",
                    format!("{id:?} is not a usable group.instance.id (1 to 249 characters)"),
                ));
            }
        }
    }
}

fn default_max_replay() -> u64 {
    100_000
}
fn default_signal_topics() -> Vec<String> {
    vec!["tidewatch.signals".into()]
}
fn default_group() -> String {
    "tidewatch-scaler".into()
}

/// Messages handed to the engine at once, at most.
pub const MAX_BATCH: usize = 500;

/// Tracks assignment for readiness and ownership, commits stored offsets
/// before a partition is given away, and on assignment seeks back to the
/// start of the longest window so the new owner rebuilds its windows.
pub struct AssignmentContext {
    inner: LoggingContext,
    metrics: Arc<Metrics>,
    ownership: SharedOwnership,
    clock: Arc<dyn Clock>,
    longest_window_ms: i64,
    max_replay: i64,
    state: Option<StateHook>,
    /// The subscribed topics (whether this scaler owns all their
    /// partitions: [`crate::engine::Ownership::owns_every_partition`]).
    topics: Vec<String>,
}

/// What the source does for the state store around a rebalance: before
/// partitions are revoked, the engine's snapshots are written and flushed
/// (so the next owner reads them); after an assignment, a restore runs
/// and readiness waits for it.
#[derive(Clone)]
pub struct StateHook {
    pub engine: EngineHandle,
    pub state: StateHandle,
    /// The configured targets (a reload changes them).
    pub targets: Arc<std::sync::RwLock<Vec<String>>>,
    pub metrics: Arc<Metrics>,
    /// Wakes the restorer task ([`restore_on_assignment`]).
    pub restore: tokio::sync::mpsc::UnboundedSender<()>,
    /// Set once a restore has counted the targets with no snapshot
    /// (`cold`): the first one after the start does, as a start's restore
    /// does without a Kafka source.
    pub counted: Arc<std::sync::atomic::AtomicBool>,
}

impl StateHook {
    /// Reads the store and gives the engine every configured target's
    /// snapshot (each target takes its own unless it is live here),
    /// decoded in chunks on every core, off the engine, and applied chunk
    /// by chunk so decisions of live targets go on. Returns how many were
    /// restored and the oldest point they need signals from again.
    pub async fn restore(
        &self,
    ) -> Result<(usize, Option<crate::clock::Millis>), crate::engine::EngineGone> {
        let targets = self
            .targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let first = !self
            .counted
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        super::restore_targets(&self.engine, &self.state, targets, &self.metrics, first).await
    }

    /// Snapshots the targets of the partitions in `tpl` (being revoked)
    /// and flushes, waiting at most `REVOKE_FLUSH`. Runs inside
    /// librdkafka's rebalance callback, which blocks the consumer: on a
    /// runtime thread it steps aside with `block_in_place` (a current-thread
    /// runtime cannot, and runs no engine meanwhile: skipped).
    fn snapshot_before_revoke(&self, tpl: &TopicPartitionList) {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let (engine, state) = (self.engine.clone(), self.state.clone());
        // the targets of the revoked partitions only: under cooperative
        // rebalancing the others stay here
        let keys: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        // The work runs on a helper thread with a runtime-free executor (the
        // callback may run on librdkafka's closing thread, after the
        // runtime is gone); this thread waits for it at most REVOKE_FLUSH.
        let (tx, rx) = std::sync::mpsc::channel();
        let helper = std::thread::Builder::new()
            .name("tidewatch-revoke".into())
            .spawn(move || {
                let out = futures::executor::block_on(async {
                    let n = engine.snapshot_partitions(keys).await.unwrap_or(0);
                    let flushed = state.flush().await;
                    (n, flushed)
                });
                let _ = tx.send(out);
            });
        if helper.is_err() {
            tracing::warn!("cannot start a thread to write the state before revocation");
            return;
        }
        let wait = || rx.recv_timeout(REVOKE_FLUSH);
        let out = match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::CurrentThread => {
                // the engine shares this thread: waiting would deadlock
                tracing::debug!("current-thread runtime: no snapshot before revocation");
                return;
            }
            Ok(_) => tokio::task::block_in_place(wait),
            Err(_) => wait(),
        };
        match out {
            Ok((n, Ok(Ok(())))) => {
                tracing::info!(snapshots = n, "state written before the partitions are revoked")
            }
            Ok((_, Ok(Err(e)))) => tracing::warn!(error = %e, "state not written before revocation"),
            Ok((_, Err(_))) => tracing::warn!("state thread gone before revocation"),
            Err(_) => tracing::warn!(
                "state not stored within {REVOKE_FLUSH:?} before revocation; the next owner may start from an older snapshot"
            ),
        }
    }
}

/// The longest a revocation waits for the state to be stored.
const REVOKE_FLUSH: Duration = Duration::from_secs(10);

impl AssignmentContext {
    /// Sets each newly assigned partition's start offset to the first message
    /// of the longest window (or the committed offset, if earlier), and
    /// records where it goes live: where the previous owner stopped.
    fn seek_to_window(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        const T: Duration = Duration::from_secs(5);
        let since = self.clock.now_ms() - self.longest_window_ms;
        let committed = consumer.committed_offsets(tpl.clone(), T).ok();
        let by_time = tpl.clone();
        for mut e in by_time.elements() {
            let _ = e.set_offset(Offset::Offset(since));
        }
        let by_time = consumer.offsets_for_times(by_time, T).ok();
        let offset_in = |list: &Option<TopicPartitionList>, topic: &str, p: i32| {
            list.as_ref()
                .and_then(|l| l.find_partition(topic, p))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                })
        };
        // how many partitions each subscribed topic has: all of them
        // here means every target's signals come here
        let totals: Option<std::collections::HashMap<String, usize>> = self
            .topics
            .iter()
            .map(|t| {
                let md = consumer.fetch_metadata(Some(t), T).ok()?;
                let n = md
                    .topics()
                    .iter()
                    .find(|m| m.name() == t)?
                    .partitions()
                    .len();
                Some((t.clone(), n))
            })
            .collect();
        if totals.is_none() {
            tracing::warn!(topics = ?self.topics, "cannot read the subscribed topics' partition counts: until the next assignment, targets only probes feed are decided nowhere, and a lone scaler decides only targets whose signals it has read");
        }
        let mut ownership = self.ownership.lock().unwrap_or_else(|p| p.into_inner());
        ownership.joined();
        ownership.partition_counts(totals);
        for mut e in tpl.elements() {
            let (topic, p) = (e.topic().to_owned(), e.partition());
            let c = offset_in(&committed, &topic, p);
            let t = offset_in(&by_time, &topic, p);
            let (start, live_from) = match (c, t) {
                (Some(c), Some(t)) => (Some(c.min(t)), c),
                // "Nothing that recent" (or a broker that cannot look up by
                // time): replay a bounded tail; the windows keep what is recent.
                (Some(c), None) => {
                    let low = consumer
                        .fetch_watermarks(&topic, p, T)
                        .map(|(l, _)| l)
                        .unwrap_or(c);
                    (Some(low.max(c - self.max_replay)), c)
                }
                // No previous owner: replay the window, go live at its end.
                (None, Some(t)) => {
                    let high = consumer
                        .fetch_watermarks(&topic, p, T)
                        .map(|(_, h)| h)
                        .unwrap_or(t);
                    (Some(t), high)
                }
                (None, None) => (None, i64::MIN),
            };
            if let Some(start) = start {
                let _ = e.set_offset(Offset::Offset(start));
            }
            tracing::info!(topic = %topic, partition = p, start = ?start, live_from, "partition assigned; rebuilding windows");
            ownership.assign(&topic, p, start, live_from, c);
        }
    }
}

impl ClientContext for AssignmentContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the
    /// scaler's own consumer lag per assigned partition.
    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                // -1: the internal unassigned partition; a lag of -1 is unknown
                if *p < 0 || part.consumer_lag < 0 {
                    continue;
                }
                self.metrics.consumer_lag(topic, *p, part.consumer_lag);
            }
        }
    }
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.inner.error(error, reason)
    }
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.inner.log(level, fac, message)
    }
}

impl ConsumerContext for AssignmentContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                if let Some(hook) = &self.state {
                    hook.snapshot_before_revoke(tpl);
                }
                // Messages are applied before their offsets are stored and the
                // source handles one batch at a time: what is stored is done.
                if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                    tracing::debug!(error = %e, "commit before revoking {} partitions", tpl.count());
                }
                let mut ownership = self.ownership.lock().unwrap_or_else(|p| p.into_inner());
                for e in tpl.elements() {
                    ownership.revoke(e.topic(), e.partition());
                }
                self.metrics.partitions_moved("revoked", tpl.count());
            }
            Rebalance::Assign(tpl) => {
                self.seek_to_window(consumer, tpl);
                self.metrics.partitions_moved("assigned", tpl.count());
                let n = self
                    .ownership
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .assigned_count();
                self.metrics.partitions_assigned(n);
            }
            Rebalance::Error(_) => {}
        }
    }
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(setting = %self.inner.key, "kafka source rebalance: {rebalance:?}");
        let n = self
            .ownership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assigned_count();
        self.metrics.partitions_assigned(n);
        if let (Rebalance::Assign(tpl), Some(hook)) = (rebalance, &self.state) {
            // Held back until the restorer task says from when to replay
            // ([`Releaser::release`]); readiness follows the catch-up. An
            // assignment of nothing (a cooperative rebalance's second
            // step, for the scalers that only gave partitions up) needs
            // no restore: what this scaler owns is live already.
            if tpl.count() > 0 {
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(error = %e, "cannot hold the assigned partitions back for the restore");
                }
                let _ = hook.restore.send(());
            }
        }
    }
}

pub struct KafkaSource {
    consumer: Arc<StreamConsumer<AssignmentContext>>,
    ownership: SharedOwnership,
    max_replay: i64,
    deadletter: FutureProducer<LoggingContext>,
    deadletter_topic: String,
    ctx: SourceContext,
}

impl KafkaSource {
    pub fn new(
        cfg: &KafkaSourceConfig,
        ctx: SourceContext,
        ownership: SharedOwnership,
        longest_window_ms: i64,
        state: Option<StateHook>,
    ) -> Result<Self, BrokerError> {
        let s = cfg.client_settings();
        let mut c = s.client_config()?;
        c.set("group.id", &cfg.group_id)
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            // Bounds what librdkafka prefetches: memory stays flat under any rate.
            .set("queued.max.messages.kbytes", "16384");
        if let Some(id) = &cfg.instance_id {
            c.set("group.instance.id", id);
        }
        if !cfg.options.contains_key("statistics.interval.ms") {
            // for tidewatch_source_consumer_lag_messages
            c.set("statistics.interval.ms", "5000");
        }
        let log = LoggingContext {
            key: s.key.clone(),
            brokers: s.brokers.clone(),
        };
        // probe-fed targets are homed on the first subscribed topic's
        // partitions (every scaler of the group reads the same list)
        if let Some(first) = cfg.topics.first() {
            ownership
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .home_topic(first);
        }
        let consumer: StreamConsumer<AssignmentContext> = c
            .create_with_context(AssignmentContext {
                inner: log.clone(),
                metrics: ctx.metrics.clone(),
                ownership: ownership.clone(),
                clock: ctx.clock.clone(),
                longest_window_ms,
                max_replay: cfg.max_replay_messages as i64,
                state,
                topics: cfg.topics.clone(),
            })
            .map_err(|e| {
                BrokerError::new("source.kafka", format!("cannot create the consumer: {e}"))
            })?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| BrokerError::new("source.kafka.topics", format!("{topics:?}: {e}")))?;
        let mut pc = s.client_config()?;
        pc.set("enable.idempotence", "true").set("acks", "all");
        let deadletter = pc.create_with_context(log).map_err(|e| {
            BrokerError::new(
                "source.kafka",
                format!("cannot create the dead-letter producer: {e}"),
            )
        })?;
        Ok(Self {
            consumer: Arc::new(consumer),
            ownership,
            max_replay: cfg.max_replay_messages as i64,
            deadletter,
            deadletter_topic: cfg.deadletter_topic.clone(),
            ctx,
        })
    }

    /// Consumes until `stop` turns true, then finishes the batch in hand,
    /// stores its offsets and commits them.
    pub async fn run(self) {
        let mut stop = self.ctx.stop.clone();
        let mut failures = 0u32;
        let mut readiness = tokio::time::interval(READINESS_CHECK);
        readiness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                _ = readiness.tick() => {
                    self.update_readiness();
                    continue;
                }
                m = self.consumer.recv() => m,
            };
            let mut batch: Vec<(Origin, Vec<u8>)> = Vec::new();
            match first {
                Ok(m) => batch.push(self.owned(&m)),
                Err(e) => {
                    // librdkafka reconnects by itself and reports transient
                    // errors here; a long pause would only delay the group join,
                    // which needs this consumer polled. Log the first of a run.
                    failures += 1;
                    self.ctx.metrics.source_error(
                        "kafka",
                        &e,
                        failures == 1 || failures.is_multiple_of(100),
                    );
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            }
            failures = 0;
            while batch.len() < MAX_BATCH {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(self.owned(&m)),
                    _ => break,
                }
            }
            if !self.handle(batch).await {
                break;
            }
            self.update_readiness();
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit");
        }
        tracing::info!("kafka source stopped; offsets committed");
        crate::broker::kafka::close_in_background(self.consumer);
    }

    /// Ready once assigned, restored and caught up on every partition it
    /// owns ([`crate::engine::Ownership::ready`]).
    fn update_readiness(&self) {
        let ready = self
            .ownership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ready();
        self.ctx.ready.store(ready, Ordering::Relaxed);
    }

    /// What lets the partitions held back after an assignment go, once
    /// the restore is done.
    pub fn releaser(&self) -> Releaser {
        Releaser {
            consumer: Arc::downgrade(&self.consumer),
            ownership: self.ownership.clone(),
            max_replay: self.max_replay,
        }
    }

    /// Applies a batch, dead-letters what was refused, then stores offsets.
    /// Replayed messages (re-read to rebuild windows) are neither
    /// dead-lettered again nor stored: the committed offset stays where the
    /// previous owner left it. False when the engine is gone.
    async fn handle(&self, batch: Vec<(Origin, Vec<u8>)>) -> bool {
        let messages = Arc::new(batch);
        let Ok(outcomes) = self.ctx.engine.apply_batch("kafka", messages.clone()).await else {
            return false;
        };
        let now = self.ctx.clock.now_ms();
        for ((origin, bytes), outcome) in messages.iter().zip(&outcomes) {
            if origin.replay {
                continue;
            }
            if let Some(dl) = DeadLetter::of("kafka", origin, bytes, &outcome.rejected, now) {
                produce_dead_letter(
                    &self.deadletter,
                    &self.deadletter_topic,
                    &dl,
                    &self.ctx.metrics,
                )
                .await;
            }
            if let (Some(p), Some(o)) = (origin.partition, origin.offset) {
                if let Err(e) = self.consumer.store_offset(&origin.topic, p, o) {
                    // The partition was revoked meanwhile: its next owner re-reads it.
                    tracing::debug!(topic = %origin.topic, partition = p, offset = o, error = %e, "offset not stored");
                }
            }
        }
        true
    }

    fn owned(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> (Origin, Vec<u8>) {
        let replay = self
            .ownership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_replay(m.topic(), m.partition(), m.offset());
        (
            Origin {
                topic: m.topic().to_owned(),
                partition: Some(m.partition()),
                offset: Some(m.offset()),
                key: m.key().map(<[u8]>::to_vec),
                timestamp: m.timestamp().to_millis(),
                replay,
            },
            m.payload().unwrap_or_default().to_vec(),
        )
    }
}

/// How often readiness is re-checked while no message arrives.
const READINESS_CHECK: Duration = Duration::from_millis(200);

/// Releases the partitions held back after an assignment (paused in the
/// rebalance callback) once their targets' state is restored, each from
/// where the restored state needs its signals again.
#[derive(Clone)]
pub struct Releaser {
    /// Weak: the consumer's context holds the restorer's wake-up sender,
    /// and the consumer must close when the source ends.
    consumer: std::sync::Weak<StreamConsumer<AssignmentContext>>,
    ownership: SharedOwnership,
    max_replay: i64,
}

impl Releaser {
    /// Releases the partitions held back after the assignments up to
    /// `epoch` (paused), each from where [`replay_starts`] says.
    /// Blocking (broker lookups).
    pub fn release(&self, epoch: u64, since_ms: Option<crate::clock::Millis>) {
        const T: Duration = Duration::from_secs(5);
        let Some(consumer) = self.consumer.upgrade() else {
            return;
        };
        let held = self
            .ownership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_held(epoch);
        if held.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (h, start) in replay_starts(
            &*consumer,
            &held,
            since_ms,
            self.max_replay,
            &self.ownership,
        ) {
            tpl.add_partition(&h.topic, h.partition);
            if let Some(start) = start {
                if let Err(e) = consumer.seek(&h.topic, h.partition, Offset::Offset(start), T) {
                    tracing::warn!(topic = %h.topic, partition = h.partition, start, error = %e, "cannot seek the assigned partition");
                }
            }
        }
        if let Err(e) = consumer.resume(&tpl) {
            tracing::warn!(error = %e, "cannot release the assigned partitions");
        }
        // librdkafka's broker thread notices a resume only at its next
        // wake-up (up to a second later); a request to the partition's
        // leader wakes it now
        if let Some(h) = held.first() {
            let _ = consumer.fetch_watermarks(&h.topic, h.partition, T);
        }
    }
}

/// Where each held-back partition's replay starts: where its window
/// starts, or earlier when `since_ms` (the oldest restored snapshot's
/// first missing history step) is earlier, at most `max_replay` messages
/// before where the partition goes live, so the history has no hole
/// between the snapshot and the window. A partition replayed from
/// earlier goes live no sooner than where its previous owner stopped (or
/// its end at assignment). Blocking (broker lookups).
fn replay_starts<C: Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    held: &[Held],
    since_ms: Option<crate::clock::Millis>,
    max_replay: i64,
    ownership: &SharedOwnership,
) -> Vec<(Held, Option<i64>)> {
    const T: Duration = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    for h in held {
        tpl.add_partition(&h.topic, h.partition);
    }
    let by_time = since_ms.and_then(|t| {
        let q = tpl.clone();
        for mut e in q.elements() {
            let _ = e.set_offset(Offset::Offset(t));
        }
        consumer.offsets_for_times(q, T).ok()
    });
    let mut out = Vec::with_capacity(held.len());
    for h in held {
        let mut start = h.start;
        let earlier = by_time
            .as_ref()
            .and_then(|l| l.find_partition(&h.topic, h.partition))
            .and_then(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            });
        if let Some(e) = earlier.filter(|e| h.start.is_none_or(|s| *e < s)) {
            match consumer.fetch_watermarks(&h.topic, h.partition, T) {
                Ok((low, high)) => {
                    let live_from = if h.live_from == i64::MIN {
                        high
                    } else {
                        h.live_from
                    };
                    let from = e.max(low).max(live_from - max_replay);
                    if h.start.is_none_or(|s| from < s) && from < live_from {
                        start = Some(from);
                        ownership
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .replay_from(&h.topic, h.partition, live_from);
                        tracing::info!(topic = %h.topic, partition = h.partition, from, window_start = ?h.start, "replaying from the restored state's time");
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %h.topic, partition = h.partition, error = %e, "cannot look up the partition's offsets; replaying the longest window only")
                }
            }
        }
        out.push((h.clone(), start));
    }
    out
}

/// Produces a dead-letter record, retrying until the broker takes it.
pub async fn produce_dead_letter(
    producer: &FutureProducer<LoggingContext>,
    topic: &str,
    dl: &DeadLetter,
    metrics: &Metrics,
) {
    let key = dl.key.as_ref().map(String::as_bytes);
    let sent = produce_until_acked(producer, topic, key, &dl.to_json(), |e, wait| {
        tracing::warn!(setting = "source.kafka.deadletter_topic", topic, error = %e, "dead letter not accepted; retrying in {wait:?}");
    })
    .await;
    match sent {
        Ok(()) => metrics.dead_lettered(&dl.source, &dl.reason),
        // The partition goes on: the original stays at its offset.
        Err(e) => metrics.dead_letter_lost(&dl.source, topic, &e),
    }
}

/// After each assignment: reads the state store, gives the engine every
/// snapshot (each target takes its own unless it is live here), then lets
/// the assigned partitions go live and the scaler report ready. Ends when
/// the source's hook is dropped.
pub async fn restore_on_assignment(
    mut wake: tokio::sync::mpsc::UnboundedReceiver<()>,
    hook: StateHook,
    ctx: SourceContext,
    ownership: SharedOwnership,
    releaser: Releaser,
) {
    let mut stop = ctx.stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            woken = wake.recv() => if woken.is_none() { return },
        }
        while wake.try_recv().is_ok() {}
        let epoch = ownership.lock().unwrap_or_else(|p| p.into_inner()).epoch();
        let started = std::time::Instant::now();
        let Ok((restored, since)) = hook.restore().await else {
            return;
        };
        let r = releaser.clone();
        let _ = tokio::task::spawn_blocking(move || r.release(epoch, since)).await;
        ownership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restored(epoch);
        tracing::info!(restored, took = ?started.elapsed(), replay_since = ?since, "state restored after an assignment");
    }
}
