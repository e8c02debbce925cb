//! Providers carry out a scale command against a platform. One trait; one
//! file per provider; `build` makes one from a worker's target settings.

pub mod exec;
pub mod http;
pub mod kubernetes;
pub mod log;
pub mod process;

use std::future::Future;
use std::pin::Pin;

pub use crate::command::ScaleCommand;

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
        let now = chrono::Utc::now().timestamp_millis();
        let (issued_at, expires_at) = crate::command::timestamps(now, ttl_ms);
        ScaleCommand {
            version: 1,
            id: format!("{target}-{generation}"),
            target: target.into(),
            provider: provider.into(),
            desired_replicas: replicas,
            current_replicas: 1,
            reason: "test".into(),
            policy: "test.lua".into(),
            generation,
            issued_at,
            expires_at,
            dry_run: false,
        }
    }
}
