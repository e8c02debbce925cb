//! The `log` provider: a dry run that records what would happen.

use super::{Provider, ProviderFuture, Scale};

#[derive(Debug, Default)]
pub struct LogProvider;

impl Provider for LogProvider {
    fn name(&self) -> &'static str {
        "log"
    }

    fn scale<'a>(&'a self, s: &'a Scale) -> ProviderFuture<'a> {
        Box::pin(async move {
            tracing::info!(target_name = %s.target, replicas = s.replicas, "log provider: would scale");
            Ok(Some(s.replicas))
        })
    }
}
