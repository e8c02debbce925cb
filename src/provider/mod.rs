//! Providers carry out a scale command against a platform (issue 5, in
//! progress). One trait; one file per provider.

pub mod exec;
pub mod http;
pub mod log;

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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::ScaleCommand;

    /// A command to scale `target` to `replicas`, valid for a minute.
    pub fn command(target: &str, replicas: u32) -> ScaleCommand {
        let now = chrono::Utc::now().timestamp_millis();
        let (issued_at, expires_at) = crate::command::timestamps(now, 60_000);
        ScaleCommand {
            version: 1,
            id: crate::command::command_id(now),
            target: target.into(),
            provider: "test".into(),
            desired_replicas: replicas,
            current_replicas: 1,
            reason: "test".into(),
            policy: "test.lua".into(),
            generation: now,
            issued_at,
            expires_at,
            dry_run: false,
        }
    }
}
