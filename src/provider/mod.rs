//! Providers carry out a scale command against a platform. One trait; one
//! file per provider; `build` makes one from a worker's target settings.

pub mod exec;
pub mod http;
pub mod kubernetes;
pub mod log;
pub mod process;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use crate::command::ScaleCommand;
use crate::settings::{problem, Problem};

/// The providers a target may name.
pub const PROVIDERS: [&str; 5] = ["kubernetes", "exec", "http", "process", "log"];

/// A target's provider settings: the table of its provider
/// (`kubernetes = { ... }`, `exec = { ... }`, ...), flattened into the
/// worker's `[[targets]]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct ProviderSettings {
    #[serde(default)]
    pub kubernetes: Option<kubernetes::KubernetesConfig>,
    #[serde(default)]
    pub exec: Option<exec::ExecConfig>,
    #[serde(default)]
    pub http: Option<http::HttpConfig>,
    #[serde(default)]
    pub process: Option<process::ProcessConfig>,
}

/// Why a provider could not be built; the key names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct BuildError {
    pub key: String,
    pub message: String,
}

impl ProviderSettings {
    fn has(&self, provider: &str) -> bool {
        match provider {
            "kubernetes" => self.kubernetes.is_some(),
            "exec" => self.exec.is_some(),
            "http" => self.http.is_some(),
            "process" => self.process.is_some(),
            _ => false,
        }
    }

    /// Checks the settings of `provider`; `key` makes a key of a field
    /// (`targets[0].http.url`).
    pub fn check(&self, provider: &str, key: &dyn Fn(&str) -> String, out: &mut Vec<Problem>) {
        for other in PROVIDERS {
            if other != provider && self.has(other) {
                out.push(problem(
                    key(other),
                    format!("settings for provider {other:?}, but the provider is {provider:?}"),
                ));
            }
        }
        match provider {
            "log" => {}
            p if PROVIDERS.contains(&p) && !self.has(p) => out.push(problem(
                key(p),
                format!("provider {p:?} needs its settings: `{p} = {{ ... }}`"),
            )),
            "kubernetes" => {
                if let Some(k) = &self.kubernetes {
                    k.check(key, out);
                }
            }
            "exec" => {
                if let Some(e) = &self.exec {
                    if let Err(m) = exec::check_template(&e.command) {
                        out.push(problem(key("exec.command"), m.to_string()));
                    }
                }
            }
            "http" => {
                if let Some(h) = &self.http {
                    h.check(key, out);
                }
            }
            "process" => {
                if let Some(p) = &self.process {
                    if let Err(m) = process::check_command(&p.command) {
                        out.push(problem(key("process.command"), m.to_string()));
                    }
                }
            }
            other => out.push(problem(
                key("provider"),
                format!("{other:?} is not a provider; give one of {PROVIDERS:?}"),
            )),
        }
    }
}

/// Builds the provider `provider` of target `target` from its settings
/// (on the current runtime: `process` starts its supervisor).
pub fn build(
    target: &str,
    provider: &str,
    settings: &ProviderSettings,
    timeout: Duration,
    metrics: &Arc<crate::telemetry::Metrics>,
) -> Result<Arc<dyn Provider>, BuildError> {
    let fail = |k: &str, m: &dyn std::fmt::Display| BuildError {
        key: format!("targets.{target}.{k}"),
        message: m.to_string(),
    };
    let missing = || fail(provider, &"missing");
    Ok(match provider {
        "log" => Arc::new(log::LogProvider),
        "exec" => {
            let e = settings.exec.as_ref().ok_or_else(missing)?;
            Arc::new(
                exec::ExecProvider::new(e.command.clone(), timeout)
                    .map_err(|m| fail("exec.command", &m))?,
            )
        }
        "http" => {
            let h = settings.http.as_ref().ok_or_else(missing)?;
            let token = h
                .token
                .resolve(&format!("targets.{target}.http.token"))
                .map_err(|m| fail("http.token", &m))?;
            Arc::new(http::HttpProvider::new(&h.url, token, timeout).map_err(|m| fail("http", &m))?)
        }
        "process" => {
            let p = settings.process.as_ref().ok_or_else(missing)?;
            Arc::new(
                process::ProcessProvider::new(
                    target,
                    p.command.clone(),
                    p.grace,
                    p.dir.clone(),
                    metrics.clone(),
                )
                .map_err(|m| fail("process.command", &m))?,
            )
        }
        "kubernetes" => {
            let k = settings.kubernetes.as_ref().ok_or_else(missing)?;
            Arc::new(kubernetes::Deferred::new(k, timeout).map_err(|m| fail("kubernetes", &m))?)
        }
        other => return Err(fail("provider", &format!("{other:?} is not a provider"))),
    })
}

/// Why a provider call failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub message: String,
    pub retryable: bool,
}

pub type ProviderFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<u32>, ProviderError>> + Send + 'a>>;

/// A platform that can be scaled. `scale` returns the observed replicas
/// afterwards when the platform reports them.
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Sets `c.target` to `c.desired_replicas`.
    fn scale<'a>(&'a self, c: &'a ScaleCommand) -> ProviderFuture<'a>;
    /// At start: the replicas last applied before a restart, for providers
    /// that hold the state themselves (`process`). Others keep theirs.
    fn restore<'a>(&'a self, _replicas: u32) -> ProviderFuture<'a> {
        Box::pin(async { Ok(None) })
    }
    /// At shutdown: release what the provider holds.
    fn stop<'a>(&'a self) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async {})
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::ScaleCommand;
    use crate::command::testing;

    /// A command to scale `target` to `replicas`, valid for a minute.
    pub fn command(target: &str, replicas: u32) -> ScaleCommand {
        let now = chrono::Utc::now().timestamp_millis();
        command_with(target, "test", now, replicas, 60_000)
    }

    /// A command issued now that expires after `ttl_ms` (negative: already
    /// expired), with id `<target>-<generation>`.
    pub fn command_with(
        target: &str,
        provider: &str,
        generation: i64,
        replicas: u32,
        ttl_ms: i64,
    ) -> ScaleCommand {
        testing::command(target)
            .provider(provider)
            .generation(generation)
            .replicas(replicas)
            .ttl_ms(ttl_ms)
            .build()
    }
}
