//! The scaler's configuration: the TOML file of DESIGN.md with
//! `TIDEWATCH__` environment overrides. Each section's struct, defaults and
//! checks live beside the component it configures; this module composes
//! them, reads the file, and adds the checks that span sections (probe
//! targets, unique target names). Every problem comes back at once, with
//! the key it concerns, before anything connects.

use std::collections::HashSet;
use std::path::Path;

pub use crate::broker::BrokerKind;
pub use crate::command::config::{AmqpCommandsConfig, CommandsConfig, KafkaCommandsConfig};
pub use crate::engine::config::{EngineConfig, TargetConfig, DEFAULT_FORECAST_REFIT, MAX_WINDOWS};
pub use crate::settings::{parse_duration, ConfigError, Problem};
pub use crate::source::probe::{NoOffsetRule, ProbeConfig, ProbeKind};
pub use crate::source::{AmqpSourceConfig, KafkaSourceConfig, SourceConfig};
use crate::state::StateConfig;
use crate::telemetry::check_listen;
pub use crate::telemetry::MetricsConfig;

use crate::engine::config::resolve_policy_path;
use crate::settings::{array, check_target_name, problem, read_raw, typed, unknown_sections};

/// A whole scaler configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub source: SourceConfig,
    pub commands: CommandsConfig,
    pub engine: EngineConfig,
    pub metrics: MetricsConfig,
    pub targets: Vec<TargetConfig>,
    pub probes: Vec<ProbeConfig>,
    pub state: StateConfig,
    /// Publishing tidewatch's own forecasts (`[forecasts]`).
    pub forecasts: crate::publish::forecasts::ForecastsConfig,
}

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
        let state = typed(&raw, "state", &mut problems);
        let forecasts = typed(&raw, "forecasts", &mut problems);
        unknown_sections(
            &raw,
            &[
                "source",
                "commands",
                "engine",
                "metrics",
                "targets",
                "probes",
                "state",
                "forecasts",
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
            state,
            forecasts,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        for t in &mut cfg.targets {
            t.policy = resolve_policy_path(base, &t.policy);
        }
        problems.extend(cfg.check());
        ConfigError::check(cfg, problems)
    }

    /// [`Config::load`], and the problems that stop a scaler that runs
    /// (`tidewatch run` and `config check`): something must feed the
    /// engine or take its commands, else it stops at once and nothing is
    /// ever evaluated.
    pub fn load_for_run(path: &Path) -> Result<(Config, Vec<Problem>), ConfigError> {
        let (cfg, warnings) = Self::load(path)?;
        let mut problems = warnings;
        problems.extend(cfg.runnable());
        ConfigError::check(cfg, problems)
    }

    /// What a running scaler needs beyond [`Config::check`].
    pub fn runnable(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.source.kind == BrokerKind::None
            && self.probes.is_empty()
            && self.commands.kind == BrokerKind::None
        {
            out.push(problem(
                "source",
                "no [source], no [[probes]] and no [commands]: nothing feeds the engine and \
                 nothing takes its commands, so the scaler would stop at once; configure a \
                 source (or probes) and a command channel",
            ));
        }
        out
    }

    /// Every section's checks and those across sections; policies are
    /// loaded in the sandbox.
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        self.engine.check(&mut out);
        check_listen(&self.metrics.listen, "127.0.0.1:9898", &mut out);
        self.source.check(&mut out);
        self.commands.check(&mut out);
        self.state
            .check(self.source.kind == BrokerKind::Kafka, &mut out);
        self.forecasts.check(&self.source, &mut out);
        for (i, p) in self.probes.iter().enumerate() {
            if !self.targets.iter().any(|t| t.name == p.target) {
                out.push(problem(
                    format!("probes[{i}].target"),
                    format!("{:?} is not a configured target", p.target),
                ));
            }
            p.check(i, &self.source, &mut out);
        }
        if self.targets.is_empty() {
            out.push(problem(
                "targets",
                "no [[targets]]: there is nothing to scale",
            ));
        }
        let mut names = HashSet::new();
        let mut policies = crate::engine::config::PolicyChecks::default();
        for (i, t) in self.targets.iter().enumerate() {
            check_target_name(&t.name, &format!("targets[{i}].name"), &mut names, &mut out);
            t.check(i, &self.engine, &mut policies, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretRef;
    use std::io::Write;
    use std::path::PathBuf;
    use std::time::Duration;

    const POLICY: &str = "return { decide = function(ctx) return ctx.params.n end }";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p
    }

    /// 50,000 targets on one policy load it once at the check (issue 21:
    /// every policy was loaded twice at start, here and in the engine); a
    /// policy that fails is still reported for every target that uses it.
    #[test]
    fn targets_sharing_a_policy_are_checked_with_one_load() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p.lua", POLICY);
        write(dir.path(), "bad.lua", "return { decide = 42 }");
        let targets: Vec<crate::engine::config::TargetConfig> = [
            ("a", "p.lua", 1),
            ("b", "p.lua", 1),
            ("c", "p.lua", 2),
            ("d", "bad.lua", 1),
            ("e", "bad.lua", 1),
        ]
        .iter()
        .map(|(name, policy, n)| {
            toml::from_str(&format!(
                "name = \"{name}\"\npolicy = \"{}\"\nmax_replicas = 5\nparams = {{ n = {n} }}\n",
                dir.path().join(policy).display()
            ))
            .unwrap()
        })
        .collect();
        let engine = crate::engine::config::EngineConfig::default();
        let mut policies = crate::engine::config::PolicyChecks::default();
        let mut out = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            t.check(i, &engine, &mut policies, &mut out);
        }
        assert_eq!(policies.loads(), 3, "p.lua with n = 1, with n = 2, bad.lua");
        let bad: Vec<&str> = out.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(bad, ["targets[3].policy", "targets[4].policy"], "{out:?}");
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
    fn amqp_slots_are_checked_against_bindings_and_inputs() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p.lua", POLICY);
        let load = |amqp: &str, inputs: &str| {
            let path = write(
                dir.path(),
                "c.toml",
                &format!(
                    "[source]\nkind = \"amqp\"\namqp = {{ url = \"amqp://127.0.0.1\", {amqp} }}\n{inputs}\n\
                     [[targets]]\nname = \"a\"\npolicy = \"p.lua\"\nmax_replicas = 3\n"
                ),
            );
            Config::load(&path).map(|_| ()).map_err(|e| e.to_string())
        };
        assert_eq!(load("slots = 16", ""), Ok(()));
        let e = load("slots = 2000", "").unwrap_err();
        assert!(
            e.contains("source.amqp.slots: 2000: give 0 (one queue) to 1024"),
            "{e}"
        );
        let e = load("slots = 4, binding_keys = [\"*.a\"]", "").unwrap_err();
        assert!(
            e.contains("source.amqp.binding_keys: [\"*.a\"]: with slots"),
            "{e}"
        );
        let kong = "[[source.inputs]]\nformat = \"kong\"\nbinding = \"kong.#\"\n";
        assert_eq!(load("slots = 0", kong), Ok(()));
        let e = load("slots = 4", kong).unwrap_err();
        assert!(
            e.contains("source.amqp.slots: slot queues route each message by the target"),
            "{e}"
        );
        assert!(e.contains("\"kong.#\""), "{e}");
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
        assert!(e.to_string().contains("TIDEWATCH_TEST_SURELY_UNSET"), "{e}");
        // An unresolvable reference is a warning for `config check`.
        let mut out = Vec::new();
        s.check("source.amqp.url", &mut out);
        assert!(out[0].warning);
    }
}
