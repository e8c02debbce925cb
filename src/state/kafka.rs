//! `store = "kafka"`: a compacted topic keyed by target, as Kafka Streams
//! keeps its changelogs. The latest record per key is the snapshot; the
//! topic is read from its start to its end to restore. Blocking: it runs
//! on the scaler's state thread.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::broker::kafka::ClientSettings;
use crate::state::{PartSink, StateStore, StoreError};

/// How long a read may go without a record before it gives up (the
/// targets then start cold and the scaler says why). A bound on progress,
/// not on the whole read: a large topic on a slow broker (tansu serves
/// about 20 MB/s here, so 50,000 targets' snapshots take two minutes a
/// read) is read to its end, a broker that stops answering is not waited
/// for.
const READ_STALL: Duration = Duration::from_secs(30);
const META: Duration = Duration::from_secs(10);
/// Bytes of snapshots a read keeps from its first pass through the topic
/// (about 10,000 targets after 8 days of queue-depth history and a model,
/// snapshot format 2): a topic holding less is read once, a larger one
/// twice, so that a start of 50,000 targets does not hold 1.3 GB of
/// snapshots (2.7 GB in format 1) beside the state it restores.
pub const READ_BUDGET: usize = 256 << 20;
/// A read's poll; past the end the broker gave, an empty one ends the
/// read ([`KafkaStore::scan`]).
const POLL: Duration = Duration::from_millis(200);
/// The most records a read takes past the end the broker gave: a batch
/// of snapshots is far fewer (a batch is at most a megabyte).
const PAST_END_RECORDS: usize = 100_000;

/// Collects delivery failures for `flush` to report.
#[derive(Clone, Default)]
pub struct Deliveries {
    failed: Arc<Mutex<Vec<String>>>,
}

impl ClientContext for Deliveries {}
impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
            self.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{key}: {e}"));
        }
    }
}

/// A partition of the topic, its first offset and its end.
type Span = (i32, i64, i64);

pub struct KafkaStore {
    settings: ClientSettings,
    topic: String,
    producer: ThreadedProducer<Deliveries>,
    deliveries: Deliveries,
    warnings: Arc<Mutex<Vec<String>>>,
    /// [`KafkaStore::with_read_budget`].
    read_budget: usize,
    /// [`KafkaStore::passes`].
    passes: u8,
}

impl KafkaStore {
    /// Connects, creates the topic (compacted) when it is missing and
    /// checks that an existing one is compacted.
    pub fn open(settings: &ClientSettings, topic: &str) -> Result<Self, StoreError> {
        let err = |m: String| StoreError::new("state.topic", format!("{topic}: {m}"));
        let mut pc = settings
            .client_config()
            .map_err(|e| StoreError::new(settings.key.clone(), e.to_string()))?;
        pc.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", "none") // snapshots are zstd already
            .set(
                "message.max.bytes",
                (crate::state::snapshot::MAX_ENCODED + 4096).to_string(),
            )
            .set("linger.ms", "20");
        let deliveries = Deliveries::default();
        let producer: ThreadedProducer<Deliveries> = pc
            .create_with_context(deliveries.clone())
            .map_err(|e| err(format!("cannot create the producer: {e}")))?;
        let mut store = Self {
            settings: settings.clone(),
            topic: topic.to_owned(),
            producer,
            deliveries,
            warnings: Arc::default(),
            read_budget: READ_BUDGET,
            passes: 0,
        };
        store.ensure_topic();
        Ok(store)
    }

    /// Creates the topic compacted when it is missing (a metadata lookup
    /// first, so a broker without the admin API, or without the right to
    /// use it, costs nothing when the topic exists); whether an existing
    /// topic is compacted is checked on a thread of its own, and a warning
    /// naming the setting comes from [`StateStore::warnings`].
    fn ensure_topic(&mut self) {
        let topic = self.topic.clone();
        let exists = self
            .settings
            .client_config()
            .ok()
            .and_then(|c| c.create::<BaseConsumer>().ok())
            .and_then(|c| c.fetch_metadata(Some(&topic), META).ok())
            .is_some_and(|md| {
                md.topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            });
        let Ok(ac) = self.settings.client_config() else {
            return;
        };
        let admin: AdminClient<DefaultClientContext> = match ac.create() {
            Ok(a) => a,
            Err(e) => {
                self.push_warning(format!(
                    "state.topic {topic}: cannot create an admin client: {e}"
                ));
                return;
            }
        };
        if !exists {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(rt) = rt else { return };
            let opts = AdminOptions::new().request_timeout(Some(META));
            // -1: the broker's default replication (KIP-464); a broker that
            // does not know it gets 1
            let create = |replicas: i32| {
                let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(replicas))
                    .set("cleanup.policy", "compact");
                rt.block_on(admin.create_topics([&new], &opts))
            };
            let created = match create(-1) {
                Ok(r)
                    if matches!(
                        r.first(),
                        Some(Err((
                            _,
                            rdkafka::types::RDKafkaErrorCode::InvalidReplicationFactor
                        )))
                    ) =>
                {
                    create(1)
                }
                other => other,
            };
            match created {
                Ok(r) => match r.first() {
                    Some(Ok(_)) => {
                        tracing::info!(setting = "state.topic", topic = %topic, "created the compacted state topic");
                        return;
                    }
                    Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) | None => {
                    }
                    Some(Err((_, code))) => {
                        self.push_warning(format!(
                            "state.topic {topic} does not exist and cannot be created ({code}): \
                             create it with cleanup.policy=compact, or snapshots are not kept"
                        ));
                        return;
                    }
                },
                Err(e) => {
                    self.push_warning(format!(
                        "state.topic {topic} does not exist and cannot be created ({e}): \
                         create it with cleanup.policy=compact, or snapshots are not kept"
                    ));
                    return;
                }
            }
        }
        let warnings = self.warnings.clone();
        let _ = std::thread::Builder::new()
            .name("tidewatch-state-check".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    return;
                };
                let opts = AdminOptions::new().request_timeout(Some(META));
                let resource = ResourceSpecifier::Topic(&topic);
                let policy = rt
                    .block_on(admin.describe_configs([&resource], &opts))
                    .ok()
                    .and_then(|r| r.into_iter().next())
                    .and_then(|r| r.ok())
                    .and_then(|r| r.get("cleanup.policy").and_then(|e| e.value.clone()));
                let warning = match policy {
                    Some(p) if p.split(',').any(|x| x.trim() == "compact") => return,
                    Some(p) => format!(
                        "state.topic {topic} has cleanup.policy={p}: the broker will delete snapshots \
                         after its retention and targets will start cold; set cleanup.policy=compact \
                         on the topic"
                    ),
                    None => format!(
                        "state.topic {topic}: cannot read its cleanup.policy; make sure it is compact, \
                         or snapshots are deleted after the topic's retention"
                    ),
                };
                warnings.lock().unwrap_or_else(|p| p.into_inner()).push(warning);
            });
    }

    /// Reads of at most this many bytes of snapshots are kept from the
    /// first read of the topic; past it the topic is read a second time
    /// ([`StateStore::read_parts`]). Default [`READ_BUDGET`].
    pub fn with_read_budget(mut self, bytes: usize) -> Self {
        self.read_budget = bytes;
        self
    }

    /// How many times the last read went through the topic (1, or 2 past
    /// the read budget).
    pub fn passes(&self) -> u8 {
        self.passes
    }

    /// Each partition's first and end offsets (the end read now: what is
    /// written after it is not read), or `None` when the topic is empty.
    fn range(&self) -> Result<Option<Vec<Span>>, StoreError> {
        let err = |m: String| StoreError::new("state.topic", format!("{}: {m}", self.topic));
        let consumer = self.reader()?;
        let md = consumer
            .fetch_metadata(Some(&self.topic), META)
            .map_err(|e| err(format!("metadata: {e}")))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut range = Vec::new();
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, p, META)
                .map_err(|e| err(format!("partition {p}: {e}")))?;
            if high > low {
                range.push((p, low, high));
            }
        }
        Ok((!range.is_empty()).then_some(range))
    }

    fn reader(&self) -> Result<BaseConsumer, StoreError> {
        let mut cc = self
            .settings
            .client_config()
            .map_err(|e| StoreError::new(self.settings.key.clone(), e.to_string()))?;
        cc.set("group.id", "tidewatch-state-reader") // never joins: partitions are assigned
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set(
                "fetch.message.max.bytes",
                (crate::state::snapshot::MAX_ENCODED + 4096).to_string(),
            );
        cc.create().map_err(|e| {
            StoreError::new(
                "state.topic",
                format!("{}: cannot create a reader: {e}", self.topic),
            )
        })
    }

    /// Reads `range` (partition, first, end) in order, each keyed record
    /// into `each` (its key as text), until every partition reaches its end
    /// or `each` says stop. With `past_end` it goes on while records come
    /// (a poll of [`POLL`] comes back empty): a broker may give an end
    /// short of its last records (tansu 0.6 gives the last batch's first
    /// offset plus one, so all but one record of the last batch were never
    /// read, and a restart after a shutdown's batch of snapshots lost most
    /// of them). The range as read: each partition's end is past the last
    /// record read.
    fn scan(
        &self,
        range: &[Span],
        past_end: bool,
        each: &mut dyn FnMut(&str, &BorrowedMessage<'_>) -> bool,
    ) -> Result<Vec<Span>, StoreError> {
        let err = |m: String| StoreError::new("state.topic", format!("{}: {m}", self.topic));
        let consumer = self.reader()?;
        let mut tpl = TopicPartitionList::new();
        let mut read: Vec<Span> = range.to_vec();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        for &(p, low, high) in range {
            ends.insert(p, high);
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(low))
                .map_err(|e| err(e.to_string()))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| err(format!("assign: {e}")))?;
        let mut progress = Instant::now();
        // what is written after the read began is not waited for (other
        // scalers on the topic write snapshots all the time)
        let began_ms = chrono::Utc::now().timestamp_millis();
        let mut past = 0usize;
        loop {
            if ends.is_empty() && !past_end {
                break;
            }
            // at the broker's end: on while records come
            let draining = ends.is_empty();
            if progress.elapsed() > READ_STALL {
                return Err(err(format!(
                    "not read to its end: no record for {READ_STALL:?} ({} partitions left)",
                    ends.len()
                )));
            }
            match consumer.poll(POLL) {
                Some(Ok(m)) => {
                    progress = Instant::now();
                    let p = m.partition();
                    let Some(span) = read.iter_mut().find(|s| s.0 == p) else {
                        continue;
                    };
                    let end = ends.get(&p).copied();
                    // within the range, or (`past_end`) after it: the range
                    // then grows to it
                    let beyond = past_end && m.offset() >= span.2;
                    if beyond {
                        let written_ms = m.timestamp().to_millis();
                        past += 1;
                        if written_ms.is_some_and(|t| t > began_ms) || past > PAST_END_RECORDS {
                            // no more past the end here: the rest is news
                            ends.remove(&p);
                            if draining {
                                break;
                            }
                            continue;
                        }
                    }
                    if m.offset() < span.2 || beyond {
                        if beyond {
                            span.2 = m.offset() + 1;
                        }
                        if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                            if !each(key, &m) {
                                return Ok(read);
                            }
                        }
                    }
                    if end.is_some_and(|end| m.offset() + 1 >= end) {
                        ends.remove(&p);
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "state topic read"),
                None if draining => break,
                None => {
                    // a compacted partition may end in a gap: compare positions
                    if let Ok(pos) = consumer.position() {
                        for e in pos.elements() {
                            if let Offset::Offset(o) = e.offset() {
                                if ends.get(&e.partition()).is_some_and(|&end| o >= end) {
                                    ends.remove(&e.partition());
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(read)
    }

    fn push_warning(&self, w: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(w);
    }
}

impl StateStore for KafkaStore {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn write(&mut self, target: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut record = BaseRecord::to(&self.topic).key(target).payload(bytes);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, r))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        && Instant::now() < deadline =>
                {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    return Err(StoreError::new(
                        "state.topic",
                        format!("{}: snapshot of {target:?} not sent: {e}", self.topic),
                    ))
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        use rdkafka::producer::Producer;
        let flushed = self.producer.flush(Duration::from_secs(30));
        let failed: Vec<String> = std::mem::take(
            &mut *self
                .deliveries
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if let Err(e) = flushed {
            return Err(StoreError::new(
                "state.topic",
                format!("{}: flush: {e}", self.topic),
            ));
        }
        if !failed.is_empty() {
            return Err(StoreError::new(
                "state.topic",
                format!(
                    "{}: {} snapshots not stored: {}",
                    self.topic,
                    failed.len(),
                    failed.join("; ")
                ),
            ));
        }
        Ok(())
    }

    fn read(&mut self, targets: &[String]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut all = Vec::new();
        self.read_parts(targets, usize::MAX, &mut |p| {
            all.extend(p);
            true
        })?;
        Ok(all)
    }

    /// The topic read once from its start to its end, keeping each wanted
    /// target's latest record; while they come to at most
    /// [`KafkaStore::with_read_budget`] bytes, their bytes too, handed out
    /// in parts at the end. Past the budget it keeps only where each latest
    /// record is (partition and offset) and reads the same range a second
    /// time for them, handing each part out as it fills: a start holds the
    /// budget or a part, never every target's snapshot.
    fn read_parts(
        &mut self,
        targets: &[String],
        part: usize,
        sink: PartSink<'_>,
    ) -> Result<(), StoreError> {
        let part = part.max(1);
        self.passes = 0;
        let wanted: HashSet<&str> = targets.iter().map(String::as_str).collect();
        let Some(range) = self.range()? else {
            return Ok(());
        };
        // pass 1: where each latest record is, and its bytes within the budget
        let mut latest: HashMap<String, (i32, i64)> = HashMap::new();
        let mut kept: Option<HashMap<String, Vec<u8>>> = Some(HashMap::new());
        let mut kept_bytes = 0usize;
        let range = self.scan(&range, true, &mut |key, m| {
            if !wanted.contains(key) {
                return true;
            }
            let at = (m.partition(), m.offset());
            match m.payload() {
                Some(b) if !b.is_empty() => {
                    latest.insert(key.to_owned(), at);
                    if let Some(k) = kept.as_mut() {
                        kept_bytes += b.len();
                        if let Some(old) = k.insert(key.to_owned(), b.to_vec()) {
                            kept_bytes -= old.len();
                        }
                        if kept_bytes > self.read_budget {
                            kept = None;
                        }
                    }
                }
                // a tombstone: the target was forgotten
                _ => {
                    latest.remove(key);
                    if let Some(old) = kept.as_mut().and_then(|k| k.remove(key)) {
                        kept_bytes -= old.len();
                    }
                }
            }
            true
        })?;
        self.passes = 1;
        if let Some(kept) = kept {
            let mut kept: Vec<(String, Vec<u8>)> = kept.into_iter().collect();
            while !kept.is_empty() {
                let rest = kept.split_off(part.min(kept.len()));
                if !sink(std::mem::replace(&mut kept, rest)) {
                    break;
                }
            }
            return Ok(());
        }
        // pass 2: the same range, each latest record handed out as read
        self.passes = 2;
        let mut found = 0usize;
        let mut batch = Vec::new();
        let mut open = true;
        self.scan(&range, false, &mut |key, m| {
            if latest.get(key) == Some(&(m.partition(), m.offset())) {
                if let Some(b) = m.payload() {
                    found += 1;
                    batch.push((key.to_owned(), b.to_vec()));
                    if batch.len() >= part {
                        open = sink(std::mem::take(&mut batch));
                    }
                }
            }
            open
        })?;
        if open && !batch.is_empty() {
            sink(batch);
        }
        if open && found < latest.len() {
            // compacted away between the two reads: a newer record came
            // after the range; those targets start cold
            self.push_warning(format!(
                "state.topic {}: {} snapshots were compacted away while they were read; \
                 their targets start cold",
                self.topic,
                latest.len() - found
            ));
        }
        Ok(())
    }

    fn warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
