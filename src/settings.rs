//! The vocabulary of configuration that every component's settings use:
//! a [`Problem`] with the key it concerns, durations, the reading of a
//! TOML file with `TIDEWATCH__` environment overrides, and the helpers that
//! turn its sections into typed structs. Each component keeps its own
//! configuration struct, defaults and checks beside its code; `config/`
//! (the scaler) and `worker::config` (the worker) only compose them.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::event::valid_target_name;

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

pub fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
        warning: false,
    }
}

impl Problem {
    /// The same problem as a warning (it does not fail `config check`).
    pub fn warning(self) -> Self {
        Self {
            warning: true,
            ..self
        }
    }
}

impl ConfigError {
    /// Problems that include an error fail; warnings alone pass along.
    pub fn check<T>(value: T, problems: Vec<Problem>) -> Result<(T, Vec<Problem>), ConfigError> {
        if problems.iter().any(|p| !p.warning) {
            Err(ConfigError { problems })
        } else {
            Ok((value, problems))
        }
    }
}

/// A duration in configuration: `"250ms"`, `"10s"`, `"5m"`.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// An optional duration (absent: `None`).
pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A list of durations.
pub fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

/// A duration that does not parse, with the text that was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {given:?} ({cause}); write it like \"250ms\", \"10s\" or \"5m\"")]
pub struct DurationError {
    pub given: String,
    pub cause: String,
}

pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(s.trim()).map_err(|e| DurationError {
        given: s.to_owned(),
        cause: e.to_string(),
    })
}

/// A target's name: valid in messages, and used once.
pub fn check_target_name<'a>(
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

/// Reads a TOML file with its `TIDEWATCH__` environment overrides.
pub fn read_raw(path: &Path) -> Result<config::Config, ConfigError> {
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
pub fn has_key(raw: &config::Config, key: &str) -> bool {
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
pub fn typed<T: serde::de::DeserializeOwned + Default>(
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
pub fn array<T: serde::de::DeserializeOwned>(
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
pub fn unknown_sections(raw: &config::Config, known: &[&str], problems: &mut Vec<Problem>) {
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
pub fn section<T>(
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

/// `#[serde(default = "yes")]`: a switch that is on unless turned off.
pub fn yes() -> bool {
    true
}
