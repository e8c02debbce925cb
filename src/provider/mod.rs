//! Providers carry out a scale command against a platform (issue 5, in
//! progress). One trait; one file per provider.

pub mod exec;
pub mod log;

use std::future::Future;
use std::pin::Pin;

/// What a provider was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub target: String,
    pub replicas: u32,
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
    fn scale<'a>(&'a self, s: &'a Scale) -> ProviderFuture<'a>;
}
