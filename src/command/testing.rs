//! Commands for tests (unit tests, and integration tests through the
//! `test-util` feature): one builder instead of a literal per test file.

use super::{timestamps, ScaleCommand, VERSION};
use crate::clock::Millis;

/// A command to `target` built step by step: by default provider `log`,
/// generation 1, 1 -> 1 replicas, issued now, valid for a minute, id
/// `<target>-<generation>`.
#[derive(Debug, Clone)]
pub struct CommandBuilder {
    c: ScaleCommand,
    id: Option<String>,
}

/// Starts a [`CommandBuilder`] for `target`.
pub fn command(target: &str) -> CommandBuilder {
    let now = chrono::Utc::now().timestamp_millis();
    let (issued_at, expires_at) = timestamps(now, 60_000);
    CommandBuilder {
        c: ScaleCommand {
            version: VERSION,
            id: String::new(),
            target: target.into(),
            provider: "log".into(),
            desired_replicas: 1,
            current_replicas: 1,
            reason: "test".into(),
            policy: "test.lua".into(),
            generation: 1,
            issued_at,
            expires_at,
            dry_run: false,
        },
        id: None,
    }
}

impl CommandBuilder {
    pub fn provider(mut self, provider: &str) -> Self {
        self.c.provider = provider.into();
        self
    }
    pub fn generation(mut self, generation: i64) -> Self {
        self.c.generation = generation;
        self
    }
    /// The desired replicas.
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.c.desired_replicas = replicas;
        self
    }
    pub fn current(mut self, replicas: u32) -> Self {
        self.c.current_replicas = replicas;
        self
    }
    /// Issued now, expiring after `ttl_ms` (negative: already expired).
    pub fn ttl_ms(mut self, ttl_ms: i64) -> Self {
        let now = chrono::Utc::now().timestamp_millis();
        (self.c.issued_at, self.c.expires_at) = timestamps(now, ttl_ms);
        self
    }
    /// Expiring at `expires_ms`, issued a minute before.
    pub fn expires_at(mut self, expires_ms: Millis) -> Self {
        (self.c.issued_at, self.c.expires_at) = timestamps(expires_ms - 60_000, 60_000);
        self
    }
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.into());
        self
    }
    pub fn build(self) -> ScaleCommand {
        let id = self
            .id
            .unwrap_or_else(|| format!("{}-{}", self.c.target, self.c.generation));
        ScaleCommand { id, ..self.c }
    }
}
