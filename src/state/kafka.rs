//! `store = "kafka"`: a compacted topic keyed by target, as Kafka Streams
//! keeps its changelogs. The latest record per key is the snapshot; the
//! topic is read from its start to its end to restore. Blocking: it runs
//! on the scaler's state thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::broker::kafka::ClientSettings;
use crate::state::{StateStore, StoreError};

/// How long a restore may read before it gives up (the targets then start
/// cold and the scaler says why).
const READ_DEADLINE: Duration = Duration::from_secs(120);
const META: Duration = Duration::from_secs(10);

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

pub struct KafkaStore {
    settings: ClientSettings,
    topic: String,
    producer: ThreadedProducer<Deliveries>,
    deliveries: Deliveries,
    warnings: Arc<Mutex<Vec<String>>>,
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
        let err = |m: String| StoreError::new("state.topic", format!("{}: {m}", self.topic));
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
        let consumer: BaseConsumer = cc
            .create()
            .map_err(|e| err(format!("cannot create a reader: {e}")))?;
        let md = consumer
            .fetch_metadata(Some(&self.topic), META)
            .map_err(|e| err(format!("metadata: {e}")))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let wanted: std::collections::HashSet<&str> = targets.iter().map(String::as_str).collect();
        let mut latest: HashMap<String, Vec<u8>> = HashMap::new();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, *p, META)
                .map_err(|e| err(format!("partition {p}: {e}")))?;
            if high > low {
                ends.insert(*p, high);
                tpl.add_partition_offset(&self.topic, *p, Offset::Offset(low))
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        consumer
            .assign(&tpl)
            .map_err(|e| err(format!("assign: {e}")))?;
        let deadline = Instant::now() + READ_DEADLINE;
        while !ends.is_empty() {
            if Instant::now() > deadline {
                return Err(err(format!(
                    "not read to its end within {READ_DEADLINE:?} ({} partitions left)",
                    ends.len()
                )));
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let p = m.partition();
                    if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                        if wanted.contains(key) {
                            match m.payload() {
                                Some(b) if !b.is_empty() => {
                                    latest.insert(key.to_owned(), b.to_vec());
                                }
                                // a tombstone: the target was forgotten
                                _ => {
                                    latest.remove(key);
                                }
                            }
                        }
                    }
                    if ends.get(&p).is_some_and(|&end| m.offset() + 1 >= end) {
                        ends.remove(&p);
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "state topic read"),
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
        Ok(latest.into_iter().collect())
    }

    fn warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
