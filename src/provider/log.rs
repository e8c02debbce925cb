//! The `log` provider: a dry run that records what would happen.

use super::{Provider, ProviderFuture, ScaleCommand};

#[derive(Debug, Default)]
pub struct LogProvider;

impl Provider for LogProvider {
    fn name(&self) -> &'static str {
        "log"
    }

    fn scale<'a>(&'a self, c: &'a ScaleCommand) -> ProviderFuture<'a> {
        Box::pin(async move {
            tracing::info!(target_name = %c.target, replicas = c.desired_replicas, generation = c.generation, "log provider: would scale");
            Ok(Some(c.desired_replicas))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_the_desired_count_and_runs_nothing() {
        let c = crate::provider::tests::command("web", 7);
        assert_eq!(LogProvider.scale(&c).await.unwrap(), Some(7));
        assert_eq!(LogProvider.name(), "log");
    }
}
