//! The worker's configuration (`tidewatch worker --config FILE`): the
//! command stream it consumes (`[commands]`, as the scaler's), the
//! `[worker]` section, metrics, and per target the provider that executes
//! its commands with that provider's settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::broker::BrokerKind;
use crate::command::config::CommandsConfig;
use crate::provider::ProviderSettings;
use crate::settings::{
    array, check_target_name, de_duration, de_opt_duration, has_key, problem, read_raw, typed,
    unknown_sections, ConfigError, Problem,
};
use crate::telemetry::check_listen;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// The name in results (`worker`); default `<hostname>-<pid>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Where the last handled generation per target is kept across
    /// restarts (JSON, replaced atomically). Relative paths are taken from
    /// the working directory.
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    /// The time one provider call may take before it is abandoned (and,
    /// for `exec`, its process killed). A target may set its own.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Calls per command at most (the first and the retries); retries stop
    /// earlier when the command expires or the error is not retryable.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The first wait between two calls; it doubles up to 5 s.
    #[serde(default = "default_retry_wait", deserialize_with = "de_duration")]
    pub retry_wait: Duration,
    /// Deliveries fetched ahead (RabbitMQ prefetch; commands waiting per
    /// target lane).
    #[serde(default = "default_worker_prefetch")]
    pub prefetch: u16,
    /// How long shutdown waits for the commands in hand.
    #[serde(default = "default_drain", deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            name: None,
            state_file: default_state_file(),
            timeout: default_timeout(),
            max_attempts: default_attempts(),
            retry_wait: default_retry_wait(),
            prefetch: default_worker_prefetch(),
            drain_timeout: default_drain(),
        }
    }
}

fn default_state_file() -> PathBuf {
    "tidewatch-worker.state.json".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_attempts() -> u32 {
    5
}
fn default_retry_wait() -> Duration {
    Duration::from_millis(200)
}
fn default_worker_prefetch() -> u16 {
    64
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerMetrics {
    #[serde(default = "default_worker_listen")]
    pub listen: String,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self {
            listen: default_worker_listen(),
        }
    }
}

/// Not the scaler's 9898, so both run on one host with their defaults.
fn default_worker_listen() -> String {
    "127.0.0.1:9899".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerTargetConfig {
    pub name: String,
    pub provider: String,
    /// Overrides `worker.timeout` for this target.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    /// The provider's table (`kubernetes = { ... }`, ...).
    #[serde(flatten)]
    pub settings: ProviderSettings,
}

/// A whole worker configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerConfig {
    pub commands: CommandsConfig,
    pub worker: WorkerSection,
    pub metrics: WorkerMetrics,
    pub targets: Vec<WorkerTargetConfig>,
}

impl WorkerConfig {
    /// Reads `path` with `TIDEWATCH__` overrides and checks everything.
    pub fn load(path: &Path) -> Result<(WorkerConfig, Vec<Problem>), ConfigError> {
        let raw = read_raw(path)?;
        let mut problems = Vec::new();
        let cfg = WorkerConfig {
            commands: typed(&raw, "commands", &mut problems),
            worker: typed(&raw, "worker", &mut problems),
            metrics: typed(&raw, "metrics", &mut problems),
            targets: array(&raw, "targets", &mut problems),
        };
        unknown_sections(
            &raw,
            &["commands", "worker", "metrics", "targets"],
            &mut problems,
        );
        problems.extend(cfg.check());
        ConfigError::check(cfg, problems)
    }

    /// Whether `path` is a worker configuration rather than a scaler's: it
    /// has a `[worker]` section, or no `[source]` and no target naming a
    /// policy.
    pub fn is_worker_file(path: &Path) -> bool {
        let Ok(raw) = read_raw(path) else {
            return false;
        };
        if has_key(&raw, "worker") {
            return true;
        }
        if has_key(&raw, "source") {
            return false;
        }
        let targets = raw
            .get::<Vec<::config::Value>>("targets")
            .unwrap_or_default();
        !targets.is_empty()
            && targets.into_iter().all(|t| {
                t.into_table()
                    .map(|t| !t.contains_key("policy"))
                    .unwrap_or(false)
            })
    }

    pub fn timeout_of(&self, t: &WorkerTargetConfig) -> Duration {
        t.timeout.unwrap_or(self.worker.timeout)
    }

    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.commands.kind == BrokerKind::None {
            out.push(problem(
                "commands.kind",
                "a worker needs a command stream: \"kafka\" or \"amqp\"",
            ));
        }
        self.commands.check(&mut out);
        let w = &self.worker;
        if w.max_attempts == 0 {
            out.push(problem("worker.max_attempts", "must be at least 1"));
        }
        if w.timeout.is_zero() {
            out.push(problem("worker.timeout", "must be above zero"));
        }
        if w.prefetch == 0 {
            out.push(problem("worker.prefetch", "must be at least 1"));
        }
        if let Some(n) = &w.name {
            if n.trim().is_empty() {
                out.push(problem("worker.name", "must not be empty"));
            }
        }
        check_listen(&self.metrics.listen, "127.0.0.1:9899", &mut out);
        if self.targets.is_empty() {
            out.push(problem(
                "targets",
                "no [[targets]]: this worker would execute nothing",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = |k: &str| format!("targets[{i}].{k}");
            check_target_name(&t.name, &key("name"), &mut names, &mut out);
            if t.timeout.is_some_and(|d| d.is_zero()) {
                out.push(problem(key("timeout"), "must be above zero"));
            }
            t.settings.check(&t.provider, &key, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WorkerConfig, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.toml");
        std::fs::write(&p, text).unwrap();
        WorkerConfig::load(&p)
            .map(|(c, _)| c)
            .map_err(|e| e.problems.iter().map(|p| p.to_string()).collect())
    }

    const GOOD: &str = r#"
[commands]
kind = "kafka"
kafka = { brokers = "127.0.0.1:9092", group_id = "tidewatch-workers" }

[[targets]]
name = "checkout"
provider = "kubernetes"
kubernetes = { namespace = "shop", kind = "Deployment", name = "checkout" }

[[targets]]
name = "thumbnails"
provider = "process"
process = { command = ["python3", "thumbnailer.py"], grace = "10s" }

[[targets]]
name = "web"
provider = "exec"
timeout = "5s"
exec = { command = ["kubectl", "scale", "deployment/web", "--replicas", "{replicas}"] }
"#;

    #[test]
    fn the_design_example_loads_with_defaults() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.targets.len(), 3);
        assert_eq!(c.worker.max_attempts, 5);
        assert_eq!(c.metrics.listen, "127.0.0.1:9899");
        assert_eq!(c.timeout_of(&c.targets[2]), Duration::from_secs(5));
        assert_eq!(c.timeout_of(&c.targets[0]), Duration::from_secs(30));
        let k = c.targets[0].settings.kubernetes.as_ref().unwrap();
        assert_eq!(
            (k.namespace.as_str(), k.kind.as_str()),
            ("shop", "Deployment")
        );
        let kafka = c.commands.kafka.unwrap();
        assert_eq!(kafka.topic, "tidewatch.commands");
        assert_eq!(kafka.deadletter_topic, "tidewatch.deadletter");
    }

    #[test]
    fn bad_templates_providers_and_sections_are_named() {
        let bad = GOOD.replace("\"{replicas}\"", "\"--replicas={replicas}\"");
        let e = load(&bad).unwrap_err().join("\n");
        assert!(
            e.contains("targets[2].exec.command") && e.contains("--replicas={replicas}"),
            "{e}"
        );
        let bad = GOOD.replace("\"{replicas}\"", "\"{namespace}\"");
        let e = load(&bad).unwrap_err().join("\n");
        assert!(e.contains("{namespace}"), "{e}");
        let bad = GOOD.replace("provider = \"process\"", "provider = \"nomad\"");
        let e = load(&bad).unwrap_err().join("\n");
        assert!(
            e.contains("targets[1].provider") && e.contains("nomad"),
            "{e}"
        );
        let bad = GOOD.replace("provider = \"kubernetes\"", "provider = \"http\"");
        let e = load(&bad).unwrap_err().join("\n");
        assert!(e.contains("targets[0].http"), "{e}");
        assert!(e.contains("targets[0].kubernetes"), "{e}");
        // Any kind with a scale subresource, but outside apps/v1 only
        // with its api_version.
        let ok = GOOD.replace("kind = \"Deployment\"", "kind = \"ReplicaSet\"");
        assert!(load(&ok).is_ok());
        let bad = GOOD.replace("kind = \"Deployment\"", "kind = \"Rollout\"");
        let e = load(&bad).unwrap_err().join("\n");
        assert!(
            e.contains("targets[0].kubernetes.kind") && e.contains("api_version"),
            "{e}"
        );
        let bad = GOOD.replace("kind = \"kafka\"", "kind = \"none\"");
        assert!(load(&bad).unwrap_err().join("\n").contains("commands.kind"));
        let e = load(&format!("{GOOD}\n[engine]\ntick = \"1s\"\n"))
            .unwrap_err()
            .join("\n");
        assert!(e.contains("engine: unknown section"), "{e}");
    }

    #[test]
    fn worker_and_scaler_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("w.toml");
        std::fs::write(&w, GOOD).unwrap();
        assert!(WorkerConfig::is_worker_file(&w));
        let s = dir.path().join("s.toml");
        std::fs::write(
            &s,
            "[[targets]]\nname = \"a\"\npolicy = \"p.lua\"\nmax_replicas = 3\n",
        )
        .unwrap();
        assert!(!WorkerConfig::is_worker_file(&s));
        for f in [
            "config/worker.toml",
            "config/kafka.toml",
            "config/rabbitmq.toml",
        ] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            if p.exists() {
                assert_eq!(
                    WorkerConfig::is_worker_file(&p),
                    f == "config/worker.toml",
                    "{f}"
                );
            }
        }
    }
}
