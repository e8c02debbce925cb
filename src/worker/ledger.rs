//! The worker's ledger: the last generation handled per target, which
//! decides what a command gets (apply, dry run, or a skip with its
//! reason), kept in a state file replaced atomically after every change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// What the ledger keeps per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The last generation handled (applied, dry run, expired).
    pub generation: i64,
    /// The replicas last applied, restored into providers that hold the
    /// state themselves (`process`) after a restart.
    #[serde(default)]
    pub replicas: Option<u32>,
}

/// The last generation handled per target (applied, dry run, expired or
/// skipped), so that a redelivered command is a duplicate and an older
/// one is stale.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(default)]
    targets: HashMap<String, Entry>,
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
        match self.targets.get(&c.target).map(|e| e.generation) {
            Some(g) if c.generation == g => return Verdict::Skip(ResultStatus::SkippedDuplicate),
            Some(g) if c.generation < g => return Verdict::Skip(ResultStatus::SkippedStale),
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

    /// Records that `c` was handled with `status`; true when the ledger
    /// changed. A failed command is not recorded: the scaler re-issues it
    /// with a new generation, and a redelivery of the same one may be
    /// tried again.
    pub fn record(&mut self, c: &ScaleCommand, status: ResultStatus) -> bool {
        if status == ResultStatus::Failed {
            return false;
        }
        let e = self.targets.entry(c.target.clone()).or_insert(Entry {
            generation: i64::MIN,
            replicas: None,
        });
        if c.generation <= e.generation {
            return false;
        }
        e.generation = c.generation;
        if status == ResultStatus::Applied {
            e.replicas = Some(c.desired_replicas);
        }
        true
    }

    /// The last generation handled for `target`.
    pub fn last(&self, target: &str) -> Option<i64> {
        self.targets.get(target).map(|e| e.generation)
    }

    /// The replicas last applied to `target`.
    pub fn replicas(&self, target: &str) -> Option<u32> {
        self.targets.get(target).and_then(|e| e.replicas)
    }
}

/// Why the state file cannot be loaded; names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error(
        "worker.state_file {}: cannot be read ({source}); fix or delete it to start \
         with no memory of applied commands",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("worker.state_file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The ledger on disk: JSON, written to a temporary file, synced, then
/// renamed over the old one, so a crash leaves the old or the new state.
#[derive(Debug, Clone)]
pub struct StateFile {
    pub(super) path: PathBuf,
}

/// The file as read: `version` and `worker` are required, only the ledger is used.
#[derive(Deserialize)]
#[allow(dead_code)]
struct StateDoc {
    version: u32,
    worker: String,
    #[serde(flatten)]
    ledger: Ledger,
}

impl StateFile {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    /// The saved ledger; empty when the file does not exist yet. A file
    /// that cannot be read is an error naming it: starting afresh would
    /// apply old commands again.
    pub fn load(&self) -> Result<Ledger, StateFileError> {
        let path = || self.path.clone();
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<StateDoc>(&bytes)
                .map(|d| d.ledger)
                .map_err(|source| StateFileError::Corrupt {
                    path: path(),
                    source,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(source) => Err(StateFileError::Read {
                path: path(),
                source,
            }),
        }
    }

    pub fn save(&self, worker: &str, ledger: &Ledger) -> std::io::Result<()> {
        self.write(&Self::encode(worker, ledger))
    }

    /// The file's contents for `ledger`.
    pub fn encode(worker: &str, ledger: &Ledger) -> Vec<u8> {
        #[derive(Serialize)]
        struct Doc<'a> {
            version: u32,
            worker: &'a str,
            #[serde(flatten)]
            ledger: &'a Ledger,
        }
        let doc = Doc {
            version: 1,
            worker,
            ledger,
        };
        serde_json::to_vec_pretty(&doc).expect("a ledger always serializes")
    }

    /// Replaces the file with `bytes`: temporary file, fsync, rename.
    pub fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        crate::state::dir::replace_file(&self.path, bytes)
    }
}
