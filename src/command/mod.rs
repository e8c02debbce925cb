//! Scale commands and results (version 1 of DESIGN.md), and the
//! configuration of the channel they travel on (`[commands]`), which the
//! scaler's publisher (`publish/`) and the worker share.

pub mod config;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use serde::{Deserialize, Serialize};

use crate::clock::{rfc3339, Millis};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleCommand {
    pub version: u32,
    pub id: String,
    pub target: String,
    pub provider: String,
    pub desired_replicas: u32,
    pub current_replicas: u32,
    pub reason: String,
    pub policy: String,
    /// Rises strictly per target; workers apply only rising generations.
    pub generation: i64,
    pub issued_at: String,
    pub expires_at: String,
    pub dry_run: bool,
}

/// What a new command says; [`ScaleCommand::issue`] adds its identity
/// and lifetime.
#[derive(Debug, Clone)]
pub struct Order<'a> {
    pub target: &'a str,
    pub provider: &'a str,
    pub policy: &'a str,
    pub current: u32,
    pub desired: u32,
    pub reason: String,
    pub dry_run: bool,
}

impl ScaleCommand {
    /// The one place a command is made: `order` as generation
    /// `generation`, issued at `now_ms` (its id a UUIDv7 of that time) and
    /// expiring `ttl_ms` later.
    pub fn issue(order: Order<'_>, generation: i64, now_ms: Millis, ttl_ms: i64) -> Self {
        let (issued_at, expires_at) = timestamps(now_ms, ttl_ms);
        ScaleCommand {
            version: VERSION,
            id: command_id(now_ms),
            target: order.target.to_owned(),
            provider: order.provider.to_owned(),
            desired_replicas: order.desired,
            current_replicas: order.current,
            reason: order.reason,
            policy: order.policy.to_owned(),
            generation,
            issued_at,
            expires_at,
            dry_run: order.dry_run,
        }
    }

    /// The same order again as a new generation (nobody answered this one).
    pub fn reissue(&self, generation: i64, now_ms: Millis, ttl_ms: i64, reason: String) -> Self {
        let order = Order {
            target: &self.target,
            provider: &self.provider,
            policy: &self.policy,
            current: self.current_replicas,
            desired: self.desired_replicas,
            reason,
            dry_run: self.dry_run,
        };
        Self::issue(order, generation, now_ms, ttl_ms)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a command always serializes")
    }
}

/// A UUIDv7 from the engine clock (time-ordered, so ids sort by issue time).
pub fn command_id(now_ms: Millis) -> String {
    let ms = now_ms.max(0) as u64;
    let ts =
        uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    uuid::Uuid::new_v7(ts).to_string()
}

pub fn timestamps(now_ms: Millis, ttl_ms: i64) -> (String, String) {
    (rfc3339(now_ms), rfc3339(now_ms + ttl_ms))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    Applied,
    Failed,
    SkippedStale,
    SkippedDuplicate,
    Expired,
    DryRun,
}

impl ResultStatus {
    pub const ALL: [ResultStatus; 6] = [
        ResultStatus::Applied,
        ResultStatus::Failed,
        ResultStatus::SkippedStale,
        ResultStatus::SkippedDuplicate,
        ResultStatus::Expired,
        ResultStatus::DryRun,
    ];

    /// The name in messages, metrics labels and routing keys.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Applied => "applied",
            ResultStatus::Failed => "failed",
            ResultStatus::SkippedStale => "skipped_stale",
            ResultStatus::SkippedDuplicate => "skipped_duplicate",
            ResultStatus::Expired => "expired",
            ResultStatus::DryRun => "dry_run",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleResult {
    pub version: u32,
    pub command_id: String,
    pub target: String,
    pub generation: i64,
    pub status: ResultStatus,
    #[serde(default)]
    pub observed_replicas: Option<u32>,
    #[serde(default)]
    pub error: Option<String>,
    pub worker: String,
    pub finished_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_matches_the_design_shape() {
        let (issued_at, expires_at) = timestamps(1_732_442_400_120, 60_000);
        let c = ScaleCommand {
            version: VERSION,
            id: command_id(1_732_442_400_120),
            target: "checkout".into(),
            provider: "kubernetes".into(),
            desired_replicas: 7,
            current_replicas: 5,
            reason: "r".into(),
            policy: "queue_depth.lua@3f2a9c1".into(),
            generation: 1_732_442_400_120,
            issued_at,
            expires_at,
            dry_run: false,
        };
        let v: serde_json::Value = serde_json::from_slice(&c.to_json()).unwrap();
        assert_eq!(v["issued_at"], "2024-11-24T10:00:00.120Z");
        assert_eq!(v["expires_at"], "2024-11-24T10:01:00.120Z");
        assert_eq!(v["desired_replicas"], 7);
        assert_eq!(v["version"], 1);
        let id = uuid::Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_timestamp().unwrap().to_unix().0, 1_732_442_400);
        let back: ScaleCommand = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn result_parses_the_design_example() {
        let r: ScaleResult = serde_json::from_str(
            r#"{"version": 1, "command_id": "0193b0a4-...", "target": "checkout", "generation": 1732442400120,
                "status": "applied", "observed_replicas": 7, "error": null,
                "worker": "worker-1", "finished_at": "2026-11-24T10:00:00.410Z"}"#,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.observed_replicas),
            (ResultStatus::Applied, Some(7))
        );
        let r: ScaleResult = serde_json::from_str(
            r#"{"version":1,"command_id":"x","target":"t","generation":1,"status":"skipped_stale","worker":"w","finished_at":"x"}"#,
        )
        .unwrap();
        assert_eq!(r.status, ResultStatus::SkippedStale);
    }

    #[test]
    fn status_names_are_the_message_names() {
        use ResultStatus::*;
        for s in [
            Applied,
            Failed,
            SkippedStale,
            SkippedDuplicate,
            Expired,
            DryRun,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
