//! Configuration: the TOML file of DESIGN.md with `TIDEWATCH__` environment
//! overrides, every default in one place, and checks that report every
//! problem with the key it concerns before anything connects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::event::{valid_target_name, Limits};
use crate::guard::GuardConfig;
use crate::policy::{CallInput, LuaPolicy, PolicyLimits, PolicySource};

/// One problem in a configuration, with the key it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub message: String,
    /// Warnings do not fail `config check` (for example a secret whose
    /// environment variable is set only where tidewatch runs).
    pub warning: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = if self.warning { "warning" } else { "error" };
        write!(f, "{level}: {}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

pub(crate) fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
        warning: false,
    }
}

pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}); write it like \"250ms\", \"10s\" or \"5m\"")
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    Kafka,
    Amqp,
    /// No broker: only `demo` and tests drive the engine.
    #[default]
    None,
}

/// A secret given as a literal, or by reference to an environment variable
/// (`*_env`) or a file (`*_file`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretRef {
    pub literal: Option<String>,
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

impl SecretRef {
    pub fn is_set(&self) -> bool {
        self.literal.is_some() || self.env.is_some() || self.file.is_some()
    }

    pub(crate) fn check(&self, key: &str, out: &mut Vec<Problem>) {
        let n = [
            self.literal.is_some(),
            self.env.is_some(),
            self.file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n > 1 {
            out.push(problem(
                key,
                format!("give only one of `{key}`, `{key}_env` and `{key}_file`"),
            ));
        } else if let Err(e) = self.resolve(key) {
            out.push(Problem {
                warning: true,
                ..problem(key, e)
            });
        }
    }

    /// The secret's value; `Ok(None)` when not set.
    pub fn resolve(&self, key: &str) -> Result<Option<String>, String> {
        if let Some(v) = &self.literal {
            return Ok(Some(v.clone()));
        }
        if let Some(var) = &self.env {
            return std::env::var(var).map(Some).map_err(|_| {
                format!("`{key}_env` names the environment variable {var}, which is not set")
            });
        }
        if let Some(path) = &self.file {
            return std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| format!("`{key}_file` {}: {e}", path.display()));
        }
        Ok(None)
    }
}

impl KafkaSourceConfig {
    /// The SASL password reference (`sasl_password`, `_env` or `_file`).
    pub fn sasl_secret(&self) -> SecretRef {
        secret(
            &self.sasl_password,
            &self.sasl_password_env,
            &self.sasl_password_file,
        )
    }
}

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
    /// Passed to librdkafka as they are (TLS, SASL and tuning settings).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub sasl_password: Option<String>,
    #[serde(default)]
    pub sasl_password_env: Option<String>,
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    #[serde(default = "default_signals_exchange")]
    pub exchange: String,
    #[serde(default = "default_scaler_queue")]
    pub queue: String,
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Declare the exchange and queue (true) or only check that they exist.
    #[serde(default = "yes")]
    pub declare: bool,
    /// Binding keys of the queue on the exchange (signals are published
    /// with routing key `<type>.<target>`).
    #[serde(default = "default_binding_keys")]
    pub binding_keys: Vec<String>,
    #[serde(default = "default_deadletter")]
    pub deadletter_exchange: String,
    /// PEM CA file for `amqps://` (default: the system's trust store).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

impl AmqpSourceConfig {
    pub fn settings(&self) -> crate::amqp::AmqpSettings {
        crate::amqp::AmqpSettings {
            key: "source.amqp.url".into(),
            url: secret(&self.url, &self.url_env, &self.url_file),
            tls_ca_file: self.tls_ca_file.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub kind: BrokerKind,
    #[serde(default)]
    pub kafka: Option<KafkaSourceConfig>,
    #[serde(default)]
    pub amqp: Option<AmqpSourceConfig>,
}

impl KafkaCommandsConfig {
    /// The SASL password reference (`sasl_password`, `_env` or `_file`).
    pub fn sasl_secret(&self) -> SecretRef {
        secret(
            &self.sasl_password,
            &self.sasl_password_env,
            &self.sasl_password_file,
        )
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaCommandsConfig {
    pub brokers: String,
    #[serde(default = "default_commands_topic")]
    pub topic: String,
    #[serde(default = "default_results_topic")]
    pub results_topic: String,
    /// The consumer group of workers (worker configuration only).
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where a worker sends commands it cannot decode or attribute.
    #[serde(default = "default_deadletter")]
    pub deadletter_topic: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub sasl_password: Option<String>,
    #[serde(default)]
    pub sasl_password_env: Option<String>,
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AmqpCommandsConfig {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    #[serde(default = "default_commands_topic")]
    pub exchange: String,
    #[serde(default = "default_results_topic")]
    pub results_exchange: String,
    /// The workers' durable queue, bound to `exchange` with `#`: commands
    /// wait there for a worker as they would in a Kafka topic. Declared by
    /// the scaler too (when `declare`), so that none is lost before the
    /// first worker starts; "" declares none.
    #[serde(default = "default_workers_queue")]
    pub queue: String,
    /// The keys `queue` is bound with (`<provider>.<target>` patterns):
    /// a worker for one provider only binds its own queue with, say,
    /// `["kubernetes.*"]`.
    #[serde(default = "default_binding_keys")]
    pub binding_keys: Vec<String>,
    /// Where a worker sends commands it cannot decode or attribute.
    #[serde(default = "default_deadletter")]
    pub deadletter_exchange: String,
    /// Declare the exchanges (and `queue`) or only check that they exist.
    #[serde(default = "yes")]
    pub declare: bool,
    /// PEM CA file for `amqps://` (default: the system's trust store).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

impl AmqpCommandsConfig {
    pub fn settings(&self) -> crate::amqp::AmqpSettings {
        crate::amqp::AmqpSettings {
            key: "commands.amqp.url".into(),
            url: secret(&self.url, &self.url_env, &self.url_file),
            tls_ca_file: self.tls_ca_file.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    #[serde(default)]
    pub kind: BrokerKind,
    #[serde(default)]
    pub kafka: Option<KafkaCommandsConfig>,
    #[serde(default)]
    pub amqp: Option<AmqpCommandsConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    #[serde(default = "default_tick", deserialize_with = "de_duration")]
    pub tick: Duration,
    #[serde(default = "yes")]
    pub evaluate_on_event: bool,
    /// Evaluations triggered by events happen at most this often per target.
    #[serde(
        default = "default_min_eval_interval",
        deserialize_with = "de_duration"
    )]
    pub min_eval_interval: Duration,
    #[serde(default = "default_max_event_age", deserialize_with = "de_duration")]
    pub max_event_age: Duration,
    #[serde(default = "default_max_clock_skew", deserialize_with = "de_duration")]
    pub max_clock_skew: Duration,
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default = "default_max_samples")]
    pub max_samples: usize,
    /// A command expires this long after it is issued.
    #[serde(default = "default_command_ttl", deserialize_with = "de_duration")]
    pub command_ttl: Duration,
    #[serde(default = "default_policy_memory_mb")]
    pub policy_memory_mb: usize,
    #[serde(default = "default_policy_budget")]
    pub policy_instruction_budget: u64,
    /// How often policy files are checked for changes.
    #[serde(default = "default_reload_interval", deserialize_with = "de_duration")]
    pub reload_interval: Duration,
    /// External forecasts older than this are ignored.
    #[serde(
        default = "default_forecast_freshness",
        deserialize_with = "de_duration"
    )]
    pub forecast_freshness: Duration,
    /// How often the built-in forecasters are refitted on the history
    /// (off the decision path).
    #[serde(default = "default_forecast_refit", deserialize_with = "de_duration")]
    pub forecast_refit: Duration,
    /// On SIGTERM/SIGINT: how long to finish in-flight work, publish
    /// pending commands and commit offsets before exiting anyway.
    #[serde(default = "default_drain_timeout", deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// A command with no worker result after this long is re-issued with
    /// a new generation (and counted in tidewatch_commands_unacknowledged);
    /// "0s" never re-issues.
    #[serde(default = "default_reissue_after", deserialize_with = "de_duration")]
    pub reissue_after: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            tick: default_tick(),
            evaluate_on_event: true,
            min_eval_interval: default_min_eval_interval(),
            max_event_age: default_max_event_age(),
            max_clock_skew: default_max_clock_skew(),
            max_message_bytes: default_max_message_bytes(),
            max_batch: default_max_batch(),
            max_samples: default_max_samples(),
            command_ttl: default_command_ttl(),
            policy_memory_mb: default_policy_memory_mb(),
            policy_instruction_budget: default_policy_budget(),
            reload_interval: default_reload_interval(),
            forecast_freshness: default_forecast_freshness(),
            forecast_refit: default_forecast_refit(),
            drain_timeout: default_drain_timeout(),
            reissue_after: default_reissue_after(),
        }
    }
}

impl EngineConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            max_event_age_ms: self.max_event_age.as_millis() as i64,
            max_clock_skew_ms: self.max_clock_skew.as_millis() as i64,
            max_message_bytes: self.max_message_bytes,
            max_batch: self.max_batch,
            max_samples: self.max_samples,
            ..Limits::default()
        }
    }

    pub fn policy_limits(&self) -> PolicyLimits {
        PolicyLimits {
            memory_bytes: self.policy_memory_mb << 20,
            instruction_budget: self.policy_instruction_budget,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    pub policy: PathBuf,
    #[serde(default = "default_provider")]
    pub provider: String,
    #[serde(default = "default_min")]
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// What the scaler assumes before any result tells it; default `min_replicas`.
    #[serde(default)]
    pub initial_replicas: Option<u32>,
    #[serde(default = "default_windows", deserialize_with = "de_durations")]
    pub windows: Vec<Duration>,
    #[serde(default = "zero", deserialize_with = "de_duration")]
    pub cooldown_up: Duration,
    #[serde(default = "zero", deserialize_with = "de_duration")]
    pub cooldown_down: Duration,
    #[serde(default = "default_stabilization", deserialize_with = "de_duration")]
    pub stabilization_down: Duration,
    #[serde(default)]
    pub max_step_up: u32,
    #[serde(default)]
    pub max_step_down: u32,
    #[serde(default)]
    pub tolerance: f64,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub fallback_replicas: Option<u32>,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    #[serde(default = "default_history_span", deserialize_with = "de_duration")]
    pub history_span: Duration,
    #[serde(default = "default_history_step", deserialize_with = "de_duration")]
    pub history_step: Duration,
    /// The built-in forecaster's season: "auto" (one day or one week, by
    /// autocorrelation), "none" (damped trend) or a duration.
    #[serde(default = "default_season")]
    pub forecast_season: String,
    /// Scheduled min/max overrides (`[[targets.schedules]]`).
    #[serde(default)]
    pub schedules: Vec<crate::schedule::ScheduleConfig>,
}

impl TargetConfig {
    /// A target with every optional key at its default.
    pub fn new(name: &str, policy: PathBuf, provider: &str, min: u32, max: u32) -> Self {
        Self {
            name: name.into(),
            policy,
            provider: provider.into(),
            min_replicas: min,
            max_replicas: max,
            initial_replicas: None,
            windows: default_windows(),
            cooldown_up: zero(),
            cooldown_down: zero(),
            stabilization_down: default_stabilization(),
            max_step_up: 0,
            max_step_down: 0,
            tolerance: 0.0,
            paused: false,
            dry_run: false,
            fallback_replicas: None,
            params: serde_json::Map::new(),
            history_span: default_history_span(),
            history_step: default_history_step(),
            forecast_season: default_season(),
            schedules: Vec::new(),
        }
    }

    /// The checked schedules (a bad one is a `config check` problem; here
    /// it is left out).
    pub fn parsed_schedules(&self) -> Vec<crate::schedule::Schedule> {
        self.schedules
            .iter()
            .filter_map(|s| crate::schedule::Schedule::parse(s).ok())
            .collect()
    }

    pub fn initial(&self) -> u32 {
        self.initial_replicas.unwrap_or(self.min_replicas)
    }

    pub fn guard(&self) -> GuardConfig {
        GuardConfig {
            min: self.min_replicas,
            max: self.max_replicas,
            cooldown_up: self.cooldown_up,
            cooldown_down: self.cooldown_down,
            stabilization_down: self.stabilization_down,
            max_step_up: self.max_step_up,
            max_step_down: self.max_step_down,
            tolerance: self.tolerance,
            paused: self.paused,
            dry_run: self.dry_run,
            fallback_replicas: self.fallback_replicas,
        }
    }

    /// What `init` sees: the target before any decision.
    pub fn init_input(&self) -> CallInput<'_> {
        CallInput {
            target: &self.name,
            now_ms: 0,
            replicas: self.initial(),
            min: self.min_replicas,
            max: self.max_replicas,
            schedule: None,
        }
    }

    pub fn params_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.params.clone())
    }
}

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
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// amqp_queue: read the depth from the management HTTP API instead
    /// (`http://user:pass@host:15672`), which also counts messages
    /// delivered but not yet acknowledged, as KEDA's RabbitMQ scaler does.
    #[serde(default)]
    pub management_url: Option<String>,
    #[serde(default)]
    pub management_url_env: Option<String>,
    #[serde(default)]
    pub management_url_file: Option<PathBuf>,
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

impl ProbeConfig {
    pub fn url_secret(&self) -> SecretRef {
        secret(&self.url, &self.url_env, &self.url_file)
    }
    pub fn management_secret(&self) -> SecretRef {
        secret(
            &self.management_url,
            &self.management_url_env,
            &self.management_url_file,
        )
    }
}

/// A whole scaler configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub source: SourceConfig,
    pub commands: CommandsConfig,
    pub engine: EngineConfig,
    pub metrics: MetricsConfig,
    pub targets: Vec<TargetConfig>,
    pub probes: Vec<ProbeConfig>,
}

fn default_max_replay() -> u64 {
    100_000
}
fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_reissue_after() -> Duration {
    Duration::from_secs(30)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

fn yes() -> bool {
    true
}
fn zero() -> Duration {
    Duration::ZERO
}
fn default_tick() -> Duration {
    Duration::from_secs(1)
}
fn default_min_eval_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_max_event_age() -> Duration {
    Duration::from_secs(300)
}
fn default_max_clock_skew() -> Duration {
    Duration::from_secs(30)
}
fn default_max_message_bytes() -> usize {
    1 << 20
}
fn default_max_batch() -> usize {
    1000
}
fn default_max_samples() -> usize {
    10_000
}
fn default_command_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_policy_memory_mb() -> usize {
    16
}
fn default_policy_budget() -> u64 {
    1_000_000
}
fn default_reload_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_forecast_freshness() -> Duration {
    Duration::from_secs(3600)
}
/// How often the built-in forecasters are refitted unless configured.
pub const DEFAULT_FORECAST_REFIT: Duration = Duration::from_secs(6 * 3600);

fn default_forecast_refit() -> Duration {
    DEFAULT_FORECAST_REFIT
}
fn default_season() -> String {
    "auto".into()
}
fn default_listen() -> String {
    "127.0.0.1:9898".into()
}
fn default_provider() -> String {
    "log".into()
}
fn default_min() -> u32 {
    1
}
fn default_windows() -> Vec<Duration> {
    [10, 60, 300].map(Duration::from_secs).to_vec()
}
fn default_stabilization() -> Duration {
    Duration::from_secs(300)
}
fn default_history_span() -> Duration {
    Duration::from_secs(8 * 86_400)
}
fn default_history_step() -> Duration {
    Duration::from_secs(60)
}
fn default_signal_topics() -> Vec<String> {
    vec!["tidewatch.signals".into()]
}
fn default_group() -> String {
    "tidewatch-scaler".into()
}
fn default_deadletter() -> String {
    "tidewatch.deadletter".into()
}
fn default_signals_exchange() -> String {
    "tidewatch.signals".into()
}
fn default_scaler_queue() -> String {
    "tidewatch.scaler".into()
}
fn default_binding_keys() -> Vec<String> {
    vec!["#".into()]
}
fn default_workers_queue() -> String {
    "tidewatch.workers".into()
}
fn default_vhost() -> String {
    "/".into()
}
fn default_prefetch() -> u16 {
    500
}
fn default_commands_topic() -> String {
    "tidewatch.commands".into()
}
fn default_results_topic() -> String {
    "tidewatch.results".into()
}

/// The windows a target may have at most.
pub const MAX_WINDOWS: usize = 8;

impl Config {
    /// Reads `path` with `TIDEWATCH__` overrides and checks everything,
    /// policies included. All problems come back at once.
    pub fn load(path: &Path) -> Result<(Config, Vec<Problem>), ConfigError> {
        let raw = read_raw(path)?;
        let mut problems = Vec::new();
        let source = typed(&raw, "source", &mut problems);
        let commands = typed(&raw, "commands", &mut problems);
        let engine = typed(&raw, "engine", &mut problems);
        let metrics = typed(&raw, "metrics", &mut problems);
        let targets = array::<TargetConfig>(&raw, "targets", &mut problems);
        let probes = array::<ProbeConfig>(&raw, "probes", &mut problems);
        unknown_sections(
            &raw,
            &[
                "source", "commands", "engine", "metrics", "targets", "probes",
            ],
            &mut problems,
        );
        let mut cfg = Config {
            source,
            commands,
            engine,
            metrics,
            targets,
            probes,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        for t in &mut cfg.targets {
            t.policy = resolve_policy_path(base, &t.policy);
        }
        problems.extend(cfg.check());
        if problems.iter().any(|p| !p.warning) {
            Err(ConfigError { problems })
        } else {
            Ok((cfg, problems))
        }
    }

    /// Cross-field checks, policies loaded in the sandbox.
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let e = &self.engine;
        if e.tick.is_zero() {
            out.push(problem("engine.tick", "must be above zero"));
        }
        if e.max_batch == 0 || e.max_samples == 0 || e.max_message_bytes == 0 {
            out.push(problem(
                "engine",
                "max_batch, max_samples and max_message_bytes must be above zero",
            ));
        }
        if e.policy_memory_mb == 0 || e.policy_instruction_budget < 1000 {
            out.push(problem(
                "engine.policy_memory_mb",
                "policy_memory_mb must be above 0 and policy_instruction_budget at least 1000",
            ));
        }
        if self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            out.push(problem(
                "metrics.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9898",
                    self.metrics.listen
                ),
            ));
        }
        self.check_brokers(&mut out);
        self.check_probes(&mut out);
        if self.targets.is_empty() {
            out.push(problem(
                "targets",
                "no [[targets]]: there is nothing to scale",
            ));
        }
        let mut names = HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = |k: &str| format!("targets[{i}].{k}");
            check_target_name(&t.name, &key("name"), &mut names, &mut out);
            if t.max_replicas == 0 {
                out.push(problem(key("max_replicas"), "must be at least 1"));
            }
            if t.min_replicas > t.max_replicas {
                out.push(problem(
                    key("min_replicas"),
                    format!(
                        "{} is above max_replicas {}",
                        t.min_replicas, t.max_replicas
                    ),
                ));
            }
            if let Some(init) = t.initial_replicas {
                if init < t.min_replicas || init > t.max_replicas {
                    out.push(problem(
                        key("initial_replicas"),
                        format!(
                            "{init} is outside [min_replicas {}, max_replicas {}]",
                            t.min_replicas, t.max_replicas
                        ),
                    ));
                }
            }
            if let Some(f) = t.fallback_replicas {
                if f < t.min_replicas || f > t.max_replicas {
                    out.push(problem(
                        key("fallback_replicas"),
                        format!(
                            "{f} is outside [min_replicas {}, max_replicas {}]",
                            t.min_replicas, t.max_replicas
                        ),
                    ));
                }
            }
            if t.windows.is_empty() || t.windows.len() > MAX_WINDOWS {
                out.push(problem(
                    key("windows"),
                    format!("give 1 to {MAX_WINDOWS} windows"),
                ));
            }
            for w in &t.windows {
                if *w < Duration::from_millis(100) {
                    out.push(problem(
                        key("windows"),
                        format!("{} is shorter than 100ms", humantime::format_duration(*w)),
                    ));
                }
            }
            if !(0.0..1.0).contains(&t.tolerance) {
                out.push(problem(
                    key("tolerance"),
                    format!("{} is not a fraction in [0, 1)", t.tolerance),
                ));
            }
            if t.history_step.is_zero() || t.history_span < t.history_step {
                out.push(problem(
                    key("history_step"),
                    "must be above zero and at most history_span",
                ));
            }
            if let Err(e) = crate::forecast::builtin::Season::parse(&t.forecast_season) {
                out.push(problem(key("forecast_season"), e));
            }
            for (j, sc) in t.schedules.iter().enumerate() {
                if let Err(e) = crate::schedule::Schedule::parse(sc) {
                    out.push(problem(key(&format!("schedules[{j}]")), e));
                }
            }
            if t.provider.is_empty() {
                out.push(problem(key("provider"), "must not be empty"));
            }
            if !t.policy.exists() {
                out.push(problem(
                    key("policy"),
                    format!("{} does not exist", t.policy.display()),
                ));
                continue;
            }
            let checked = PolicySource::read(&t.policy).and_then(|src| {
                let mut p = LuaPolicy::load(&src, &t.params_json(), e.policy_limits())?;
                p.init(&t.init_input())
            });
            if let Err(err) = checked {
                out.push(problem(key("policy"), err.to_string()));
            }
        }
        out
    }

    fn check_probes(&self, out: &mut Vec<Problem>) {
        for (i, p) in self.probes.iter().enumerate() {
            let key = |k: &str| format!("probes[{i}].{k}");
            if !self.targets.iter().any(|t| t.name == p.target) {
                out.push(problem(
                    key("target"),
                    format!("{:?} is not a configured target", p.target),
                ));
            }
            match p.kind {
                ProbeKind::KafkaLag => {
                    if p.topic.is_empty() || p.group.is_empty() {
                        out.push(problem(
                            key("topic"),
                            "a kafka_lag probe needs `topic` and `group`",
                        ));
                    }
                    if p.brokers.is_none() && self.source.kafka.is_none() {
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
                    let url = p.url_secret();
                    if url.is_set() {
                        url.check(&key("url"), out);
                    } else if self.source.amqp.is_none() {
                        out.push(problem(
                            key("url"),
                            "give `url`, `url_env` or `url_file`, or configure [source.amqp]",
                        ));
                    }
                    p.management_secret().check(&key("management_url"), out);
                }
            }
            if p.interval < Duration::from_millis(100) {
                out.push(problem(key("interval"), "must be at least 100ms"));
            }
        }
    }

    fn check_brokers(&self, out: &mut Vec<Problem>) {
        let (src, cmd) = (&self.source, &self.commands);
        match src.kind {
            BrokerKind::Kafka => section(out, "source", "kafka", &src.kafka, |k, out| {
                check_kafka(out, "source.kafka", &k.brokers, k.sasl_secret());
                if k.topics.is_empty() {
                    out.push(problem(
                        "source.kafka.topics",
                        "must name at least one topic",
                    ));
                }
            }),
            BrokerKind::Amqp => section(out, "source", "amqp", &src.amqp, |a, out| {
                check_amqp_url(out, &a.settings());
                if a.prefetch == 0 {
                    out.push(problem("source.amqp.prefetch", "must be at least 1"));
                }
            }),
            BrokerKind::None => {}
        }
        check_commands(cmd, out);
    }
}

/// A target's name: valid in messages, and used once.
pub(crate) fn check_target_name<'a>(
    name: &'a str,
    key: &str,
    seen: &mut HashSet<&'a str>,
    out: &mut Vec<Problem>,
) {
    if !valid_target_name(name) {
        out.push(problem(
            key,
            format!("{name:?} does not match ^[a-z0-9]([a-z0-9._-]{{0,62}})$"),
        ));
    }
    if !seen.insert(name) {
        out.push(problem(key, format!("{name:?} is used by another target")));
    }
}

/// Checks `[commands]` and its broker section.
pub(crate) fn check_commands(cmd: &CommandsConfig, out: &mut Vec<Problem>) {
    match cmd.kind {
        BrokerKind::Kafka => section(out, "commands", "kafka", &cmd.kafka, |k, out| {
            check_kafka(out, "commands.kafka", &k.brokers, k.sasl_secret());
        }),
        BrokerKind::Amqp => section(out, "commands", "amqp", &cmd.amqp, |a, out| {
            check_amqp_url(out, &a.settings());
        }),
        BrokerKind::None => {}
    }
}

/// Reads a TOML file with its `TIDEWATCH__` environment overrides.
pub(crate) fn read_raw(path: &Path) -> Result<config::Config, ConfigError> {
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("TIDEWATCH")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| ConfigError {
            problems: vec![problem(path.display().to_string(), e.to_string())],
        })
}

/// Whether the file has the top-level key `key`.
pub(crate) fn has_key(raw: &config::Config, key: &str) -> bool {
    !matches!(
        raw.get::<config::Value>(key),
        Err(config::ConfigError::NotFound(_))
    )
}

fn value(raw: &config::Config, key: &str, problems: &mut Vec<Problem>) -> Option<config::Value> {
    match raw.get::<config::Value>(key) {
        Ok(v) => Some(v),
        Err(config::ConfigError::NotFound(_)) => None,
        Err(e) => {
            problems.push(problem(key, e.to_string()));
            None
        }
    }
}

/// The section `key` as `T` (its default when absent; a problem when bad).
pub(crate) fn typed<T: serde::de::DeserializeOwned + Default>(
    raw: &config::Config,
    key: &str,
    problems: &mut Vec<Problem>,
) -> T {
    match value(raw, key, problems).map(|v| v.try_deserialize::<T>()) {
        None => T::default(),
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            problems.push(problem(key, e.to_string()));
            T::default()
        }
    }
}

/// The array of tables `key`, each element checked on its own.
pub(crate) fn array<T: serde::de::DeserializeOwned>(
    raw: &config::Config,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Vec<T> {
    let mut out = Vec::new();
    if let Some(v) = value(raw, key, problems) {
        match v.into_array() {
            Ok(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    match item.try_deserialize::<T>() {
                        Ok(t) => out.push(t),
                        Err(e) => problems.push(problem(format!("{key}[{i}]"), e.to_string())),
                    }
                }
            }
            Err(e) => problems.push(problem(key, e.to_string())),
        }
    }
    out
}

/// A problem for every top-level key not in `known`.
pub(crate) fn unknown_sections(raw: &config::Config, known: &[&str], problems: &mut Vec<Problem>) {
    let top = raw
        .clone()
        .try_deserialize::<HashMap<String, config::Value>>();
    for key in top
        .map(|m| m.into_keys().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if !known.contains(&key.as_str()) {
            problems.push(problem(key, "unknown section"));
        }
    }
}

/// Checks `[<part>.<kind>]` with `check`, or reports it missing.
pub(crate) fn section<T>(
    out: &mut Vec<Problem>,
    part: &str,
    kind: &str,
    cfg: &Option<T>,
    check: impl FnOnce(&T, &mut Vec<Problem>),
) {
    match cfg {
        Some(c) => check(c, out),
        None => out.push(problem(
            format!("{part}.{kind}"),
            format!("{part}.kind is \"{kind}\" but [{part}.{kind}] is missing"),
        )),
    }
}

pub(crate) fn check_kafka(
    out: &mut Vec<Problem>,
    prefix: &str,
    brokers: &str,
    password: SecretRef,
) {
    if brokers.trim().is_empty() {
        out.push(problem(
            format!("{prefix}.brokers"),
            "must name at least one broker",
        ));
    }
    password.check(&format!("{prefix}.sasl_password"), out);
}

pub(crate) fn check_amqp_url(out: &mut Vec<Problem>, s: &crate::amqp::AmqpSettings) {
    if !s.url.is_set() {
        out.push(problem(&s.key, "give `url`, `url_env` or `url_file`"));
    }
    s.url.check(&s.key, out);
}

pub fn secret(literal: &Option<String>, env: &Option<String>, file: &Option<PathBuf>) -> SecretRef {
    SecretRef {
        literal: literal.clone(),
        env: env.clone(),
        file: file.clone(),
    }
}

/// A relative policy path is taken from the working directory when the file
/// is there, else from the configuration file's directory.
pub(crate) fn resolve_policy_path(config_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        p.to_owned()
    } else {
        config_dir.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const POLICY: &str = "return { decide = function(ctx) return ctx.params.n end }";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p
    }

    fn good(dir: &Path) -> String {
        write(dir, "p.lua", POLICY);
        r#"
[engine]
tick = "500ms"

[[targets]]
name = "checkout"
policy = "p.lua"
max_replicas = 40
initial_replicas = 2
windows = ["10s", "60s"]
cooldown_down = "1m"
params = { n = 3, per_replica_depth = 300 }
"#
        .to_owned()
    }

    #[test]
    fn loads_with_defaults_and_relative_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "c.toml", &good(dir.path()));
        let (cfg, warnings) = Config::load(&path).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.engine.tick, Duration::from_millis(500));
        assert_eq!(cfg.engine.max_event_age, Duration::from_secs(300));
        let t = &cfg.targets[0];
        assert_eq!(t.policy, dir.path().join("p.lua"));
        assert_eq!(
            (t.min_replicas, t.initial(), t.provider.as_str()),
            (1, 2, "log")
        );
        assert_eq!(t.cooldown_down, Duration::from_secs(60));
        assert_eq!(t.stabilization_down, Duration::from_secs(300));
        assert_eq!(t.params["per_replica_depth"], 300);
        assert_eq!(cfg.metrics.listen, "127.0.0.1:9898");
    }

    #[test]
    fn environment_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "c.toml", &good(dir.path()));
        // Tests run in parallel in one process: this key is asserted nowhere else.
        std::env::set_var("TIDEWATCH__ENGINE__MAX_SAMPLES", "77");
        let (cfg, _) = Config::load(&path).unwrap();
        std::env::remove_var("TIDEWATCH__ENGINE__MAX_SAMPLES");
        assert_eq!(cfg.engine.max_samples, 77);
        assert_eq!(
            cfg.engine.tick,
            Duration::from_millis(500),
            "the file still counts"
        );
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "broken.lua", "return {");
        let path = write(
            dir.path(),
            "c.toml",
            r#"
[engine]
tick = "soon"

[source]
kind = "amqp"
amqp = { url = "amqp://x", url_env = "ALSO" }

[[targets]]
name = "Bad Name"
policy = "missing.lua"
min_replicas = 5
max_replicas = 3

[[targets]]
name = "ok"
policy = "broken.lua"
max_replicas = 3
initial_replicas = 9
windows = ["10 parsecs"]

[[targets]]
name = "ok"
policy = "broken.lua"
max_replicas = "many"

[bogus]
x = 1
"#,
        );
        let err = Config::load(&path).unwrap_err();
        let text = err.to_string();
        for needle in [
            "engine: invalid duration \"soon\"",
            "source.amqp.url: give only one",
            "targets[0].name: \"Bad Name\"",
            "targets[0].min_replicas: 5 is above max_replicas 3",
            "targets[0].policy: ",
            "missing.lua does not exist",
            "targets[1]: invalid duration \"10 parsecs\"",
            "targets[2]: invalid type",
            "bogus: unknown section",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn cross_field_checks() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "broken.lua", "return {");
        write(dir.path(), "p.lua", POLICY);
        let path = write(
            dir.path(),
            "c.toml",
            r#"
[[targets]]
name = "a"
policy = "p.lua"
max_replicas = 3
initial_replicas = 9
fallback_replicas = 0
tolerance = 1.5

[[targets]]
name = "a"
policy = "broken.lua"
max_replicas = 3
"#,
        );
        let text = Config::load(&path).unwrap_err().to_string();
        for needle in [
            "targets[0].initial_replicas: 9 is outside",
            "targets[0].fallback_replicas: 0 is outside",
            "targets[0].tolerance",
            "targets[1].name: \"a\" is used by another target",
            "targets[1].policy: policy broken.lua@",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn secrets_by_reference() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "secret", "s3cret\n");
        let s = SecretRef {
            file: Some(f),
            ..SecretRef::default()
        };
        assert_eq!(s.resolve("x").unwrap().as_deref(), Some("s3cret"));
        let s = SecretRef {
            env: Some("TIDEWATCH_TEST_SURELY_UNSET".into()),
            ..SecretRef::default()
        };
        let e = s.resolve("source.amqp.url").unwrap_err();
        assert!(e.contains("TIDEWATCH_TEST_SURELY_UNSET"), "{e}");
        // An unresolvable reference is a warning for `config check`.
        let mut out = Vec::new();
        s.check("source.amqp.url", &mut out);
        assert!(out[0].warning);
    }
}
