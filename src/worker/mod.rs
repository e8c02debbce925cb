//! The worker (issue 5, in progress): what a worker decides about each
//! command before any provider runs. Per target it applies only rising
//! generations that have not expired; everything else gets a result that
//! says why. The clock is a parameter.

pub mod config;

use std::collections::HashMap;

use crate::clock::Millis;
use crate::command::{ResultStatus, ScaleCommand};

/// What to do with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Run the provider.
    Apply,
    /// Record what would happen; run nothing.
    DryRun,
    /// Done without running anything, with this result status.
    Skip(ResultStatus),
}

/// The last generation handled per target (applied, dry run, expired or
/// skipped), so that a redelivered command is a duplicate and an older
/// one is stale.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    last: HashMap<String, i64>,
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

impl Ledger {
    /// The verdict for `c` at `now`. An unparseable `expires_at` counts as
    /// expired: a command whose deadline cannot be read is not executed.
    pub fn judge(&self, c: &ScaleCommand, now: Millis) -> Verdict {
        match self.last.get(&c.target) {
            Some(&g) if c.generation == g => return Verdict::Skip(ResultStatus::SkippedDuplicate),
            Some(&g) if c.generation < g => return Verdict::Skip(ResultStatus::SkippedStale),
            _ => {}
        }
        match parse_rfc3339(&c.expires_at) {
            Some(at) if now <= at => {}
            _ => return Verdict::Skip(ResultStatus::Expired),
        }
        if c.dry_run {
            Verdict::DryRun
        } else {
            Verdict::Apply
        }
    }

    /// Records that `c` was handled with `status`. A failed command is not
    /// recorded: the scaler re-issues it with a new generation, and a
    /// redelivery of the same one may be tried again.
    pub fn record(&mut self, c: &ScaleCommand, status: ResultStatus) {
        if status == ResultStatus::Failed {
            return;
        }
        let g = self.last.entry(c.target.clone()).or_insert(i64::MIN);
        *g = (*g).max(c.generation);
    }

    /// The last generation handled for `target`.
    pub fn last(&self, target: &str) -> Option<i64> {
        self.last.get(target).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::rfc3339;

    fn cmd(target: &str, generation: i64, expires_ms: Millis) -> ScaleCommand {
        ScaleCommand {
            version: 1,
            id: format!("id-{generation}"),
            target: target.into(),
            provider: "log".into(),
            desired_replicas: 3,
            current_replicas: 2,
            reason: String::new(),
            policy: String::new(),
            generation,
            issued_at: rfc3339(expires_ms - 60_000),
            expires_at: rfc3339(expires_ms),
            dry_run: false,
        }
    }

    #[test]
    fn rising_generations_apply_others_are_skipped_with_a_reason() {
        let mut l = Ledger::default();
        let now = 1_800_000_000_000;
        let c5 = cmd("web", 5, now + 1000);
        assert_eq!(l.judge(&c5, now), Verdict::Apply);
        l.record(&c5, ResultStatus::Applied);
        assert_eq!(
            l.judge(&c5, now),
            Verdict::Skip(ResultStatus::SkippedDuplicate)
        );
        assert_eq!(
            l.judge(&cmd("web", 4, now + 1000), now),
            Verdict::Skip(ResultStatus::SkippedStale)
        );
        assert_eq!(l.judge(&cmd("web", 6, now + 1000), now), Verdict::Apply);
        assert_eq!(
            l.judge(&cmd("api", 1, now + 1000), now),
            Verdict::Apply,
            "targets are independent"
        );
        // Out of order: 8 handled first, then 7 arrives late.
        l.record(&cmd("web", 8, now + 1000), ResultStatus::Applied);
        l.record(&cmd("web", 7, now + 1000), ResultStatus::Applied);
        assert_eq!(l.last("web"), Some(8), "the ledger never goes back");
    }

    #[test]
    fn expiry_dry_run_and_failures() {
        let mut l = Ledger::default();
        let now = 1_800_000_000_000;
        assert_eq!(
            l.judge(&cmd("web", 1, now - 1), now),
            Verdict::Skip(ResultStatus::Expired)
        );
        assert_eq!(
            l.judge(&cmd("web", 1, now), now),
            Verdict::Apply,
            "expires_at itself is still valid"
        );
        let mut bad = cmd("web", 1, now + 1000);
        bad.expires_at = "tomorrow".into();
        assert_eq!(l.judge(&bad, now), Verdict::Skip(ResultStatus::Expired));
        let mut dry = cmd("web", 2, now + 1000);
        dry.dry_run = true;
        assert_eq!(l.judge(&dry, now), Verdict::DryRun);
        l.record(&cmd("web", 3, now + 1000), ResultStatus::Failed);
        assert_eq!(l.last("web"), None, "a failure is not recorded");
        assert_eq!(l.judge(&cmd("web", 3, now + 1000), now), Verdict::Apply);
    }
}
