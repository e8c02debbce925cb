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
    /// The snapshot format written: 2 (the default) keeps each history's
    /// own parts; 1 is the format tidewatch wrote before 2026-12-04, for
    /// a rolling upgrade while scalers that read only version 1 may still
    /// take over targets. Both are read.
    #[serde(default = "default_format")]
    pub format: u16,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Auto,
            dir: None,
            topic: default_topic(),
            interval: default_interval(),
            format: default_format(),
        }
    }
}

fn default_topic() -> String {
    "tidewatch.state".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_format() -> u16 {
    crate::state::snapshot::FORMAT_VERSION
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
        if !(crate::state::snapshot::OLDEST_READABLE..=crate::state::snapshot::FORMAT_VERSION)
            .contains(&self.format)
        {
            out.push(problem(
                "state.format",
                format!(
                    "{} is not a snapshot format: 1 or 2 (the default; 1 for a rolling upgrade from a tidewatch that reads only 1)",
                    self.format
                ),
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `state.format` takes the formats this tidewatch reads, 2 by
    /// default; another is a problem that names the key and the value.
    #[test]
    fn the_format_is_one_this_tidewatch_reads() {
        let parse = |toml: &str| -> StateConfig { ::toml::from_str(toml).unwrap() };
        assert_eq!(parse("").format, 2);
        for (toml, bad) in [
            ("format = 1", false),
            ("format = 2", false),
            ("format = 3", true),
            ("format = 0", true),
        ] {
            let mut out = Vec::new();
            parse(toml).check(false, &mut out);
            assert_eq!(!out.is_empty(), bad, "{toml}: {out:?}");
            if bad {
                let text = format!("{out:?}");
                assert!(
                    text.contains("state.format") && text.contains(&toml[9..]),
                    "{text}"
                );
            }
        }
    }
}
