//! Probes measure signals themselves, so a user needs no publisher: the
//! Kafka lag probe computes a consumer group's lag on a topic (high
//! watermark minus committed offset, summed over partitions, as KEDA's
//! Kafka scaler does) and feeds it as the target's `queue_depth`; the
//! RabbitMQ queue probe reads a queue's depth the same way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use crate::broker::amqp::AmqpSettings;
use crate::broker::kafka::{ClientSettings, LoggingContext};
use crate::event::{QueueDepth, Signal};
use crate::secret::{ManagementUrl, Secret, Url};
use crate::settings::{de_duration, problem, Problem};
use crate::source::{KafkaSourceConfig, SourceContext};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// A consumer group's lag on a topic, summed over partitions.
    KafkaLag,
    /// A RabbitMQ queue's depth (ready messages by passive declare, or
    /// ready plus unacknowledged from the management API).
    AmqpQueue,
}

/// What a lag probe counts for a partition where the group has committed
/// no offset yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoOffsetRule {
    /// Everything retained is unconsumed: lag = high watermark - low watermark.
    #[default]
    Earliest,
    /// The group will start at the end: lag = 0.
    Latest,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub kind: ProbeKind,
    /// The target whose `queue_depth` the probe feeds.
    pub target: String,
    /// kafka_lag: the topic and the consumer group whose lag is measured.
    #[serde(default)]
    pub topic: String,
    #[serde(default)]
    pub group: String,
    /// kafka_lag: default `source.kafka.brokers`.
    #[serde(default)]
    pub brokers: Option<String>,
    /// amqp_queue: the queue whose depth is measured.
    #[serde(default)]
    pub queue: String,
    /// amqp_queue: the broker (default: `source.amqp`'s URL and CA file).
    #[serde(flatten)]
    pub url: Secret<Url>,
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// amqp_queue: read the depth from the management HTTP API instead
    /// (`http://user:pass@host:15672`), which also counts messages
    /// delivered but not yet acknowledged, as KEDA's RabbitMQ scaler does.
    #[serde(flatten)]
    pub management_url: Secret<ManagementUrl>,
    /// amqp_queue with the management API: the queue's virtual host.
    #[serde(default = "default_vhost")]
    pub vhost: String,
    #[serde(default = "default_probe_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    #[serde(default)]
    pub no_offset: NoOffsetRule,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_vhost() -> String {
    "/".into()
}

impl ProbeConfig {
    /// Checks probe `i` against the source it may borrow brokers from
    /// (that its target exists is the whole configuration's check).
    pub fn check(&self, i: usize, source: &crate::source::SourceConfig, out: &mut Vec<Problem>) {
        let p = self;
        let key = |k: &str| format!("probes[{i}].{k}");
        match p.kind {
            ProbeKind::KafkaLag => {
                if p.topic.is_empty() || p.group.is_empty() {
                    out.push(problem(
                        key("topic"),
                        "a kafka_lag probe needs `topic` and `group`",
                    ));
                }
                if p.brokers.is_none() && source.kafka.is_none() {
                    out.push(problem(
                        key("brokers"),
                        "give `brokers`, or configure [source.kafka]",
                    ));
                }
            }
            ProbeKind::AmqpQueue => {
                if p.queue.is_empty() {
                    out.push(problem(key("queue"), "an amqp_queue probe needs `queue`"));
                }
                let url = p.url.reference().clone();
                if url.is_set() {
                    url.check(&key("url"), out);
                } else if source.amqp.is_none() {
                    out.push(problem(
                        key("url"),
                        "give `url`, `url_env` or `url_file`, or configure [source.amqp]",
                    ));
                }
                p.management_url.check(&key("management_url"), out);
            }
        }
        if p.interval < Duration::from_millis(100) {
            out.push(problem(key("interval"), "must be at least 100ms"));
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a probe cannot be set up or one measurement failed; names the key,
/// topic, group, queue or URL (password hidden).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{key}: give brokers, or configure [source.kafka]")]
    NoBrokers { key: String },
    #[error("{key}: give `url`, `url_env` or `url_file`, or configure [source.amqp]")]
    NoUrl { key: String },
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error(transparent)]
    Amqp(#[from] crate::broker::amqp::ConnectError),
    /// A Kafka call; `what` says which and of what.
    #[error("{what}: {source}")]
    Kafka {
        what: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {0} not found")]
    NoTopic(String),
    #[error("topic {topic}: {code:?}")]
    Topic {
        topic: String,
        code: rdkafka::types::RDKafkaRespErr,
    },
    #[error("{key}.url: {source}")]
    Channel { key: String, source: lapin::Error },
    #[error("management_url {0}: must start with http:// or https://")]
    ManagementScheme(String),
    /// The management API did not answer with a queue object.
    #[error("{key} {url}: {detail}")]
    Management {
        key: String,
        url: String,
        detail: String,
    },
    #[error("management API: not a queue object: {0}")]
    NotJson(serde_json::Error),
    #[error("not a queue object: no `name` and no `messages`")]
    NotQueue,
    #[error("lag probe task failed: {0}")]
    Task(tokio::task::JoinError),
}

/// The client settings of probe `i`: its own `brokers` and `options` when
/// it names brokers (another cluster), else the source's, plus its options.
pub fn settings(
    p: &ProbeConfig,
    i: usize,
    source: Option<&KafkaSourceConfig>,
) -> Result<ClientSettings, ProbeError> {
    let key = format!("probes[{i}].brokers");
    let mut s = match (&p.brokers, source) {
        (Some(brokers), _) => ClientSettings {
            key,
            brokers: brokers.clone(),
            options: Default::default(),
            sasl_password: Default::default(),
        },
        (None, Some(k)) => ClientSettings {
            key,
            ..k.client_settings()
        },
        (None, None) => return Err(ProbeError::NoBrokers { key }),
    };
    s.options.extend(p.options.clone());
    Ok(s)
}

/// Lag per partition: `high - committed`, and for a partition without a
/// committed offset, `high - low` (Earliest) or 0 (Latest).
pub fn partition_lag(low: i64, high: i64, committed: Option<i64>, rule: NoOffsetRule) -> i64 {
    match committed {
        Some(c) => (high - c.max(low)).max(0),
        None => match rule {
            NoOffsetRule::Earliest => (high - low).max(0),
            NoOffsetRule::Latest => 0,
        },
    }
}

pub struct KafkaLagProbe {
    cfg: ProbeConfig,
    consumer: Arc<BaseConsumer<LoggingContext>>,
}

impl KafkaLagProbe {
    pub fn new(cfg: &ProbeConfig, settings: ClientSettings) -> Result<Self, ProbeError> {
        let mut c = settings.client_config()?;
        // Reading a group's committed offsets needs its id; we never join it.
        c.set("group.id", &cfg.group)
            .set("enable.auto.commit", "false");
        let consumer = c
            .create_with_context(LoggingContext {
                key: settings.key.clone(),
                brokers: settings.brokers.clone(),
            })
            .map_err(|source| ProbeError::Kafka {
                what: format!("{}: cannot create the probe client", settings.key),
                source,
            })?;
        Ok(Self {
            cfg: cfg.clone(),
            consumer: Arc::new(consumer),
        })
    }

    /// The group's total lag on the topic.
    pub fn measure(
        consumer: &BaseConsumer<LoggingContext>,
        cfg: &ProbeConfig,
    ) -> Result<i64, ProbeError> {
        let kafka = |what: String| move |source| ProbeError::Kafka { what, source };
        let md = consumer
            .fetch_metadata(Some(&cfg.topic), TIMEOUT)
            .map_err(kafka(format!("topic {}: metadata", cfg.topic)))?;
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == cfg.topic)
            .ok_or_else(|| ProbeError::NoTopic(cfg.topic.clone()))?;
        if let Some(code) = topic.error() {
            return Err(ProbeError::Topic {
                topic: cfg.topic.clone(),
                code,
            });
        }
        let mut tpl = TopicPartitionList::new();
        for p in topic.partitions() {
            tpl.add_partition(&cfg.topic, p.id());
        }
        let committed = consumer
            .committed_offsets(tpl, TIMEOUT)
            .map_err(kafka(format!("group {}: committed offsets", cfg.group)))?;
        let mut total = 0;
        for p in topic.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(&cfg.topic, p.id(), TIMEOUT)
                .map_err(kafka(format!(
                    "topic {} partition {}: watermarks",
                    cfg.topic,
                    p.id()
                )))?;
            let c = committed
                .find_partition(&cfg.topic, p.id())
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            total += partition_lag(low, high, c, cfg.no_offset);
        }
        Ok(total)
    }

    /// One measurement now (blocking: call it off the async threads).
    pub fn measure_now(&self) -> Result<i64, ProbeError> {
        Self::measure(&self.consumer, &self.cfg)
    }
}

impl Measure for KafkaLagProbe {
    const KIND: &'static str = "kafka_lag";
    fn cfg(&self) -> &ProbeConfig {
        &self.cfg
    }
    fn queue_label(&self) -> String {
        format!("kafka:{}/{}", self.cfg.topic, self.cfg.group)
    }
    async fn depth(&mut self) -> Result<Option<(f64, Option<u32>)>, ProbeError> {
        let (consumer, cfg) = (self.consumer.clone(), self.cfg.clone());
        match tokio::task::spawn_blocking(move || Self::measure(&consumer, &cfg)).await {
            Ok(r) => r.map(|lag| Some((lag as f64, None))),
            Err(e) => Err(ProbeError::Task(e)),
        }
    }
}

/// A probe: one depth measurement at a time.
pub trait Measure: Send {
    const KIND: &'static str;
    fn cfg(&self) -> &ProbeConfig;
    /// The `queue` of the signals it feeds.
    fn queue_label(&self) -> String;
    /// The depth and, when known, the number of consumers.
    /// `Ok(None)`: nothing to report yet (no error).
    fn depth(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<(f64, Option<u32>)>, ProbeError>> + Send;
}

/// Measures every interval until `stop`, feeding the engine the target's
/// `queue_depth`; a failed measurement is logged and counted.
pub async fn run_probe<M: Measure>(mut probe: M, ctx: SourceContext) {
    let SourceContext {
        engine,
        clock,
        metrics,
        mut stop,
        ..
    } = ctx;
    let mut ticker = tokio::time::interval(probe.cfg().interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let queue = probe.queue_label();
    let target = probe.cfg().target.clone();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = ticker.tick() => {}
        }
        let measured = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            m = probe.depth() => m,
        };
        match measured {
            Ok(None) => {}
            Ok(Some((depth, consumers))) => {
                let s = Signal::QueueDepth(QueueDepth {
                    target: target.clone(),
                    queue: queue.clone(),
                    depth,
                    consumers,
                    ts_ms: clock.now_ms(),
                });
                if engine.signal(s).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                metrics.probe_failed(&target, M::KIND, &queue, &e);
                if engine.probe_failed(target.clone()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A RabbitMQ queue's depth: the ready messages and consumers from a
/// passive declare, or, with `management_url`, ready plus unacknowledged
/// messages from the management HTTP API (KEDA's RabbitMQ scaler counts
/// the same). The connection is kept and reopened after a failure.
pub struct AmqpQueueProbe {
    cfg: ProbeConfig,
    key: String,
    settings: AmqpSettings,
    management: Option<(reqwest::Client, String)>,
    channel: Option<(lapin::Connection, lapin::Channel)>,
}

impl AmqpQueueProbe {
    /// Probe `i`: its own URL, else the source's.
    pub fn new(
        cfg: &ProbeConfig,
        i: usize,
        source: Option<&crate::source::AmqpSourceConfig>,
    ) -> Result<Self, ProbeError> {
        let key = format!("probes[{i}]");
        let url = cfg.url.reference().clone();
        let settings = match (url.is_set(), source) {
            (true, _) => AmqpSettings {
                key: format!("{key}.url"),
                url,
                tls_ca_file: cfg.tls_ca_file.clone(),
            },
            (false, Some(s)) => AmqpSettings {
                key: format!("{key}.url"),
                ..s.settings()
            },
            (false, None) => return Err(ProbeError::NoUrl { key }),
        };
        let management = match cfg
            .management_url
            .resolve(&format!("{key}.management_url"))?
        {
            Some(base) => {
                let client = reqwest::Client::builder()
                    .timeout(TIMEOUT)
                    .build()
                    .map_err(|e| ProbeError::Management {
                        key: format!("{key}.management_url"),
                        url: crate::broker::amqp::redact(&base),
                        detail: e.to_string(),
                    })?;
                Some((client, management_queue_url(&base, &cfg.vhost, &cfg.queue)?))
            }
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            key,
            settings,
            management,
            channel: None,
        })
    }

    async fn passive(&mut self) -> Result<(f64, Option<u32>), ProbeError> {
        if self.channel.is_none() {
            let conn = self.settings.connect("probe").await?;
            let ch = conn
                .create_channel()
                .await
                .map_err(|source| ProbeError::Channel {
                    key: self.key.clone(),
                    source,
                })?;
            self.channel = Some((conn, ch));
        }
        let (_, ch) = self.channel.as_ref().expect("opened above");
        let qkey = format!("{}.queue", self.key);
        match crate::broker::amqp::queue(ch, &self.cfg.queue, &qkey, false, None).await {
            Ok((messages, consumers)) => Ok((messages as f64, Some(consumers))),
            Err(e) => {
                // A failed passive declare closes the channel: start over.
                if let Some((conn, _)) = self.channel.take() {
                    let _ = conn.close(200, "probe retry").await;
                }
                Err(e.into())
            }
        }
    }

    async fn http(&self) -> Result<Option<(f64, Option<u32>)>, ProbeError> {
        let (client, url) = self.management.as_ref().expect("called with management");
        let failed = |detail: String| ProbeError::Management {
            key: format!("{}.management_url", self.key),
            url: crate::broker::amqp::redact(url),
            detail: crate::broker::amqp::redact(&detail),
        };
        let resp = client
            .get(url.as_str())
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(failed(format!("HTTP {status}")));
        }
        let body = resp.bytes().await.map_err(|e| failed(e.to_string()))?;
        parse_management(&body).map_err(|e| failed(e.to_string()))
    }
}

impl Measure for AmqpQueueProbe {
    const KIND: &'static str = "amqp_queue";
    fn cfg(&self) -> &ProbeConfig {
        &self.cfg
    }
    fn queue_label(&self) -> String {
        format!("amqp:{}", self.cfg.queue)
    }
    async fn depth(&mut self) -> Result<Option<(f64, Option<u32>)>, ProbeError> {
        if self.management.is_some() {
            self.http().await
        } else {
            self.passive().await.map(Some)
        }
    }
}

/// `http://u:p@host:15672` + vhost + queue -> the API URL of the queue.
pub fn management_queue_url(base: &str, vhost: &str, queue: &str) -> Result<String, ProbeError> {
    let base = base.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(ProbeError::ManagementScheme(crate::broker::amqp::redact(
            base,
        )));
    }
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    Ok(format!("{base}/api/queues/{}/{}", enc(vhost), enc(queue)))
}

/// The depth (`messages`: ready + unacknowledged) and `consumers` of a
/// management API queue object; `None` for a queue so new that the API has
/// no statistics for it yet.
pub fn parse_management(body: &[u8]) -> Result<Option<(f64, Option<u32>)>, ProbeError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(ProbeError::NotJson)?;
    let messages = v.get("messages").and_then(|m| m.as_f64()).or_else(|| {
        let ready = v.get("messages_ready")?.as_f64()?;
        let unacked = v.get("messages_unacknowledged")?.as_f64()?;
        Some(ready + unacked)
    });
    let Some(messages) = messages else {
        return match v.get("name") {
            Some(_) => Ok(None),
            None => Err(ProbeError::NotQueue),
        };
    };
    let consumers = v
        .get("consumers")
        .and_then(|c| c.as_u64())
        .map(|c| c.min(u32::MAX as u64) as u32);
    Ok(Some((messages, consumers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_settings_come_from_the_source_or_the_probe() {
        let source: KafkaSourceConfig = serde_json::from_value(serde_json::json!({
            "brokers": "src:9092", "options": {"security.protocol": "SSL"}, "sasl_password": "pw"
        }))
        .unwrap();
        let mut p: ProbeConfig = serde_json::from_value(serde_json::json!({
            "kind": "kafka_lag", "target": "t", "topic": "orders", "group": "g",
            "interval": "10s", "options": {"client.id": "probe"}
        }))
        .unwrap();
        let s = settings(&p, 0, Some(&source)).unwrap();
        assert_eq!(
            (s.brokers.as_str(), s.key.as_str()),
            ("src:9092", "probes[0].brokers")
        );
        assert_eq!(s.options.len(), 2, "the source's options and the probe's");
        assert!(s.sasl_password.is_set());
        p.brokers = Some("other:9092".into());
        let s = settings(&p, 1, Some(&source)).unwrap();
        assert_eq!(s.brokers, "other:9092");
        assert_eq!(
            s.options.keys().collect::<Vec<_>>(),
            ["client.id"],
            "another cluster: only its own options"
        );
        assert!(!s.sasl_password.is_set());
        p.brokers = None;
        assert!(settings(&p, 2, None)
            .unwrap_err()
            .to_string()
            .contains("probes[2].brokers"));
    }

    #[test]
    fn management_api_urls_and_bodies() {
        assert_eq!(
            management_queue_url("http://u:p@127.0.0.1:15672/", "/", "orders.in").unwrap(),
            "http://u:p@127.0.0.1:15672/api/queues/%2F/orders.in"
        );
        let e = management_queue_url("amqp://u:secret@h", "/", "q")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://") && !e.contains("secret"), "{e}");
        assert_eq!(
            parse_management(br#"{"messages": 12, "messages_ready": 10, "consumers": 3}"#).unwrap(),
            Some((12.0, Some(3)))
        );
        assert_eq!(
            parse_management(br#"{"messages_ready": 4, "messages_unacknowledged": 5}"#).unwrap(),
            Some((9.0, None))
        );
        assert_eq!(
            parse_management(br#"{"name": "q"}"#).unwrap(),
            None,
            "a new queue has no statistics yet"
        );
        assert!(parse_management(br#"{"error": "x"}"#)
            .unwrap_err()
            .to_string()
            .contains("messages"));
        assert!(parse_management(b"<html>")
            .unwrap_err()
            .to_string()
            .contains("not a queue object"));
    }

    #[test]
    fn lag_rules() {
        assert_eq!(partition_lag(0, 100, Some(40), NoOffsetRule::Earliest), 60);
        assert_eq!(
            partition_lag(50, 100, Some(10), NoOffsetRule::Earliest),
            50,
            "deleted messages are not lag"
        );
        assert_eq!(partition_lag(0, 100, Some(120), NoOffsetRule::Earliest), 0);
        assert_eq!(partition_lag(20, 100, None, NoOffsetRule::Earliest), 80);
        assert_eq!(partition_lag(20, 100, None, NoOffsetRule::Latest), 0);
    }
}
