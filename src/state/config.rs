//! `[state]`: where target snapshots are kept and how often.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{de_duration, problem, Problem};

/// Where snapshots are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `kafka` when the source is Kafka, else `dir` when `state.dir` is
    /// set, else none.
    #[default]
    Auto,
    Kafka,
    Dir,
    /// Nothing is kept: a restart starts every target cold.
    None,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default)]
    pub store: StoreKind,
    /// One file per target (`store = "dir"`); a PersistentVolumeClaim in
    /// Kubernetes.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The compacted topic of `store = "kafka"`, on the source's brokers.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Targets that changed are snapshotted this often (spread over the
    /// period), and on shutdown, revocation and removal.
    #[serde(default = "default_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Auto,
            dir: None,
            topic: default_topic(),
            interval: default_interval(),
        }
    }
}

fn default_topic() -> String {
    "tidewatch.state".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(30)
}

impl StateConfig {
    /// The store in use, given whether the source is Kafka.
    pub fn resolved(&self, kafka_source: bool) -> StoreKind {
        match self.store {
            StoreKind::Auto if kafka_source => StoreKind::Kafka,
            StoreKind::Auto if self.dir.is_some() => StoreKind::Dir,
            StoreKind::Auto => StoreKind::None,
            k => k,
        }
    }

    pub fn check(&self, kafka_source: bool, out: &mut Vec<Problem>) {
        match self.resolved(kafka_source) {
            StoreKind::Dir if self.dir.is_none() => out.push(problem(
                "state.dir",
                "store = \"dir\" needs a directory: set state.dir",
            )),
            StoreKind::Kafka if !kafka_source => out.push(problem(
                "state.store",
                "\"kafka\" keeps snapshots on the source's brokers: it needs [source] kind = \"kafka\"",
            )),
            StoreKind::Kafka if self.topic.trim().is_empty() => {
                out.push(problem("state.topic", "must name a topic"))
            }
            _ => {}
        }
        if self.interval < Duration::from_secs(1) {
            out.push(problem(
                "state.interval",
                format!(
                    "{:?} is below 1s: snapshots would cost more than they keep",
                    self.interval
                ),
            ));
        }
    }
}
