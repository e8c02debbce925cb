//! The engine's settings (`[engine]`) and each target's (`[[targets]]`),
//! with their defaults and checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::event::Limits;
use crate::guard::GuardConfig;
use crate::policy::{CallInput, LuaPolicy, PolicyLimits, PolicySource};
use crate::settings::{de_duration, de_durations, problem, yes, Problem};

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
    /// How many targets running the same policy file share one Lua VM
    /// (each with its own globals, module, `ctx` and `state`); 1 gives
    /// every target a VM of its own.
    #[serde(default = "default_targets_per_vm")]
    pub targets_per_vm: usize,
    /// Engines the targets are split over, each on its own task (0: one
    /// per core).
    #[serde(default)]
    pub shards: usize,
    /// Wall-clock time a policy call may take (load, `init`, `decide`),
    /// including time inside library functions; past it the call is
    /// abandoned and the target falls back or holds.
    #[serde(default = "default_policy_timeout", deserialize_with = "de_duration")]
    pub policy_timeout: Duration,
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
    /// Reload the configuration when its file changes (checked every
    /// `reload_interval`), as on SIGHUP.
    #[serde(default)]
    pub watch_config: bool,
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
            targets_per_vm: default_targets_per_vm(),
            shards: 0,
            policy_timeout: default_policy_timeout(),
            reload_interval: default_reload_interval(),
            forecast_freshness: default_forecast_freshness(),
            forecast_refit: default_forecast_refit(),
            drain_timeout: default_drain_timeout(),
            watch_config: false,
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
            timeout: self.policy_timeout,
            load_timeout: crate::policy::load_allowance(self.policy_timeout),
        }
    }

    /// Checks `[engine]`.
    pub fn check(&self, out: &mut Vec<Problem>) {
        let e = self;
        if e.tick.is_zero() {
            out.push(problem("engine.tick", "must be above zero"));
        }
        for (name, value, most) in [
            ("max_batch", e.max_batch, MAX_BATCH),
            ("max_samples", e.max_samples, MAX_SAMPLES),
            ("max_message_bytes", e.max_message_bytes, MAX_MESSAGE_BYTES),
        ] {
            if value == 0 || value > most {
                out.push(problem(
                    format!("engine.{name}"),
                    format!("{value}: give 1 to {most}"),
                ));
            }
        }
        for (name, value) in [
            ("command_ttl", e.command_ttl),
            ("max_event_age", e.max_event_age),
        ] {
            if value < Duration::from_secs(1) {
                out.push(problem(
                    format!("engine.{name}"),
                    format!(
                        "{}: give at least 1s (shorter, every {} is refused at once)",
                        humantime::format_duration(value),
                        if name == "command_ttl" {
                            "command"
                        } else {
                            "signal"
                        }
                    ),
                ));
            }
        }
        if !(1..=MAX_TARGETS_PER_VM).contains(&e.targets_per_vm) {
            out.push(problem(
                "engine.targets_per_vm",
                format!("{}: give 1 to {MAX_TARGETS_PER_VM}", e.targets_per_vm),
            ));
        }
        if e.shards > MAX_SHARDS {
            out.push(problem(
                "engine.shards",
                format!("{}: give 0 (one per core) to {MAX_SHARDS}", e.shards),
            ));
        }
        if e.policy_memory_mb == 0 || e.policy_instruction_budget < 1000 {
            out.push(problem(
                "engine.policy_memory_mb",
                "policy_memory_mb must be above 0 and policy_instruction_budget at least 1000",
            ));
        }
        if e.policy_timeout < Duration::from_millis(1) {
            out.push(problem(
                "engine.policy_timeout",
                format!(
                    "{}: give at least 1ms",
                    humantime::format_duration(e.policy_timeout)
                ),
            ));
        } else if e.policy_timeout > e.tick {
            out.push(
                problem(
                    "engine.policy_timeout",
                    format!(
                        "{} is longer than the tick ({}): one slow policy can hold the others \
                         past their next decision",
                        humantime::format_duration(e.policy_timeout),
                        humantime::format_duration(e.tick)
                    ),
                )
                .warning(),
            );
        }
    }
}

fn default_policy_timeout() -> Duration {
    crate::policy::DEFAULT_TIMEOUT
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

/// Upper bounds of the engine's sizes: above them a typo (or `1e999`
/// through an environment variable) would let one message hold the
/// engine for minutes or take its memory.
pub const MAX_BATCH: usize = 100_000;
pub const MAX_SAMPLES: usize = 1_000_000;
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Points of one metric's minute history (200,000: 138 days of minutes).
pub const MAX_HISTORY_POINTS: usize = 200_000;

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

/// Targets per shared policy VM unless configured: a VM's heap stays a
/// few MB, so its garbage collections stay short.
fn default_targets_per_vm() -> usize {
    256
}

const MAX_TARGETS_PER_VM: usize = 65_536;
const MAX_SHARDS: usize = 256;

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

fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_reissue_after() -> Duration {
    Duration::from_secs(30)
}

/// The windows a target may have at most.
pub const MAX_WINDOWS: usize = 8;

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
    /// The HPA's behavior (`[targets.behavior.scale_up]`, `.scale_down`).
    #[serde(default)]
    pub behavior: Option<crate::guard::config::BehaviorConfig>,
    /// Stale after this long without a sample of any metric the policy
    /// read (none: never stale by time).
    #[serde(default, deserialize_with = "crate::settings::de_opt_duration")]
    pub stale_after: Option<Duration>,
    /// With stale signals: `"hold"` or `"fallback"` (to `fallback_replicas`).
    #[serde(default = "default_on_stale")]
    pub on_stale: String,
    /// Probe failures in a row that make the target stale (KEDA's
    /// `fallback.failureThreshold`).
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// KEDA's activation (`[targets.activation]`).
    #[serde(default)]
    pub activation: Option<ActivationConfig>,
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
            behavior: None,
            stale_after: None,
            on_stale: default_on_stale(),
            failure_threshold: default_failure_threshold(),
            activation: None,
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
            on_stale_fallback: self.on_stale == "fallback",
            pause_scale_in: false,
            pause_scale_out: false,
            behavior: self.behavior.as_ref().map(|b| b.resolve()),
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

    /// Checks this target (`targets[i]`), loading its policy in the
    /// sandbox (once for all the targets that share its file, params and
    /// bounds: `policies` remembers). Its name's uniqueness is the whole
    /// configuration's check.
    pub fn check(
        &self,
        i: usize,
        engine: &EngineConfig,
        policies: &mut PolicyChecks,
        out: &mut Vec<Problem>,
    ) {
        let t = self;
        let key = |k: &str| format!("targets[{i}].{k}");
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
        for (name, n) in [
            ("initial_replicas", t.initial_replicas),
            ("fallback_replicas", t.fallback_replicas),
        ] {
            if let Some(n) = n.filter(|n| *n < t.min_replicas || *n > t.max_replicas) {
                out.push(problem(
                    key(name),
                    format!(
                        "{n} is outside [min_replicas {}, max_replicas {}]",
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
        } else if t.history_span.as_millis() / t.history_step.as_millis().max(1)
            > MAX_HISTORY_POINTS as u128
        {
            out.push(problem(
                key("history_step"),
                format!(
                    "{} over {} is {} points per metric; at most {MAX_HISTORY_POINTS} (a longer step or a shorter span)",
                    humantime::format_duration(t.history_step),
                    humantime::format_duration(t.history_span),
                    t.history_span.as_millis() / t.history_step.as_millis().max(1)
                ),
            ));
        }
        match t.on_stale.as_str() {
            "hold" => {}
            "fallback" if t.fallback_replicas.is_none() => out.push(problem(
                key("on_stale"),
                "\"fallback\" needs fallback_replicas",
            )),
            "fallback" => {}
            other => out.push(problem(
                key("on_stale"),
                format!("{other:?} is not \"hold\" or \"fallback\""),
            )),
        }
        if t.stale_after.is_some_and(|d| d < Duration::from_secs(1)) {
            out.push(problem(key("stale_after"), "give at least 1s"));
        }
        if t.failure_threshold == 0 {
            out.push(problem(key("failure_threshold"), "must be at least 1"));
        }
        if let Some(a) = &t.activation {
            a.check(&key("activation"), &t.windows, t.min_replicas, out);
        }
        if let Some(b) = &t.behavior {
            b.check(&key("behavior"), out);
            // The step keys mean something else; with a behavior they
            // would be silently ignored, so giving both is refused.
            if t.stabilization_down != default_stabilization() {
                out.push(problem(
                    key("stabilization_down"),
                    "with [targets.behavior] set behavior.scale_down.stabilization instead (both are given)",
                ));
            }
            for (name, n) in [
                ("max_step_up", t.max_step_up),
                ("max_step_down", t.max_step_down),
            ] {
                if n > 0 {
                    let dir = if name == "max_step_up" {
                        "scale_up"
                    } else {
                        "scale_down"
                    };
                    out.push(problem(
                        key(name),
                        format!(
                            "{n} limits each decision; with [targets.behavior] write behavior.{dir}.policies = [{{ type = \"pods\", value = {n}, period = \"15s\" }}] instead (both are given)"
                        ),
                    ));
                }
            }
        }
        if let Err(e) = crate::forecast::builtin::Season::parse(&t.forecast_season) {
            out.push(problem(key("forecast_season"), e.to_string()));
        }
        for (j, sc) in t.schedules.iter().enumerate() {
            if let Err(e) = crate::schedule::Schedule::parse(sc) {
                out.push(problem(key(&format!("schedules[{j}]")), e.to_string()));
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
            return;
        }
        let same = (
            t.policy.clone(),
            t.params_json().to_string(),
            (t.initial(), t.min_replicas, t.max_replicas),
        );
        let checked = policies.0.entry(same).or_insert_with(|| {
            PolicySource::read(&t.policy)
                .and_then(|src| {
                    let mut p = LuaPolicy::load(&src, &t.params_json(), engine.policy_limits())?;
                    p.init(&t.init_input())
                })
                .map_err(|e| e.to_string())
        });
        if let Err(err) = checked {
            out.push(problem(key("policy"), err.clone()));
        }
    }
}

/// The outcome of loading a policy file with given params and bounds, so
/// that 50,000 targets on one policy load it once at the check, not
/// 50,000 times (the engine loads each target's own VM after).
#[derive(Debug, Default)]
pub struct PolicyChecks(std::collections::HashMap<PolicyKey, Result<(), String>>);

/// A policy file, its params (as JSON) and the bounds its `init` sees
/// (initial, min, max replicas).
type PolicyKey = (std::path::PathBuf, String, (u32, u32, u32));

impl PolicyChecks {
    /// Policies loaded so far (distinct file, params and bounds).
    pub fn loads(&self) -> usize {
        self.0.len()
    }
}

fn default_on_stale() -> String {
    "hold".into()
}

fn default_failure_threshold() -> u32 {
    3
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

/// The guard's own default: one value for the guard and the key.
fn default_stabilization() -> Duration {
    GuardConfig::default().stabilization_down
}

fn default_history_span() -> Duration {
    Duration::from_secs(14 * 86_400)
}

fn default_history_step() -> Duration {
    Duration::from_secs(60)
}

fn default_season() -> String {
    "auto".into()
}

fn zero() -> Duration {
    Duration::ZERO
}

/// A relative policy path is taken from the working directory when the file
/// is there, else from the configuration file's directory.
pub fn resolve_policy_path(config_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        p.to_owned()
    } else {
        config_dir.join(p)
    }
}

/// `[targets.activation]`: KEDA's `activationThreshold` for targets that
/// go to zero. While at zero the target stays there until `metric`'s
/// `stat` over `window` is above `threshold`; while it has replicas, the
/// policy sizes it (at least 1); after `idle_after` at or below the
/// threshold it goes to zero, whatever the policy says.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActivationConfig {
    pub metric: String,
    #[serde(default = "default_stat")]
    pub stat: String,
    #[serde(default, deserialize_with = "crate::settings::de_opt_duration")]
    pub window: Option<Duration>,
    pub threshold: f64,
    #[serde(
        default = "default_idle_after",
        deserialize_with = "crate::settings::de_duration"
    )]
    pub idle_after: Duration,
}

fn default_stat() -> String {
    "last".into()
}

fn default_idle_after() -> Duration {
    Duration::from_secs(300)
}

impl ActivationConfig {
    /// Problems under `key` ("targets[0].activation"); `windows` are the
    /// target's, `min_replicas` its lower bound.
    pub fn check(
        &self,
        key: &str,
        windows: &[Duration],
        min_replicas: u32,
        out: &mut Vec<Problem>,
    ) {
        if crate::event::Metric::parse(&self.metric).is_none() {
            out.push(problem(
                format!("{key}.metric"),
                format!(
                    "{:?} is not a metric (queue_depth, latency_ms, requests, errors)",
                    self.metric
                ),
            ));
        }
        if !crate::window::STAT_NAMES.contains(&self.stat.as_str()) {
            out.push(problem(
                format!("{key}.stat"),
                format!(
                    "{:?} is not one of {}",
                    self.stat,
                    crate::window::STAT_NAMES.join(", ")
                ),
            ));
        }
        let longest = windows.iter().max().copied().unwrap_or_default();
        if let Some(w) = self.window.filter(|w| *w > longest) {
            out.push(problem(
                format!("{key}.window"),
                format!(
                    "{} is longer than the target's longest window {}",
                    humantime::format_duration(w),
                    humantime::format_duration(longest)
                ),
            ));
        }
        if !self.threshold.is_finite() {
            out.push(problem(
                format!("{key}.threshold"),
                "must be a finite number",
            ));
        }
        if min_replicas != 0 {
            out.push(problem(
                key.to_string(),
                format!("activation takes a target to and from zero: set min_replicas = 0 (it is {min_replicas})"),
            ));
        }
    }

    /// The window it reads: `window`, else the target's shortest.
    pub fn span(&self, windows: &[Duration]) -> Duration {
        self.window
            .or_else(|| windows.iter().min().copied())
            .unwrap_or(Duration::from_secs(10))
    }
}
