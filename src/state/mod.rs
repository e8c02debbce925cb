//! State that outlives a scaler process: one snapshot per target
//! ([`snapshot`]) kept in a [`StateStore`]: a directory of atomic files
//! ([`dir`]) or a compacted Kafka topic ([`kafka`]). The engine makes the
//! snapshots and takes them back; the store only keeps bytes by target.

pub mod config;
pub mod dir;
pub mod kafka;
pub mod snapshot;
pub mod writer;

pub use config::{StateConfig, StoreKind};
pub use snapshot::{ControlRecord, ControlState, SnapshotError, TargetSnapshot, Unanswered};
pub use writer::{decode_all, restore_in_chunks, Restoring, StateHandle, READ_PART};

/// What a store read: each target's stored bytes.
pub type Stored = Vec<(String, Vec<u8>)>;

/// Where [`StateStore::read_parts`] hands each part; false ends the read.
pub type PartSink<'a> = &'a mut dyn FnMut(Stored) -> bool;

/// A store failed; the text names the setting and the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct StoreError {
    pub setting: String,
    pub message: String,
}

impl StoreError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

/// Where snapshots are kept, by target name. Blocking: the scaler calls
/// it from a thread of its own, never from the engine.
pub trait StateStore: Send {
    /// "dir" or "kafka", for metrics and logs.
    fn kind(&self) -> &'static str;
    /// Stores the latest snapshot of `target` (it may be buffered until
    /// [`StateStore::flush`]).
    fn write(&mut self, target: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// The end of a batch of writes (what a store syncs once for many);
    /// an error means the batch's snapshots were not stored.
    fn batch_done(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Returns once everything written is stored.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// The latest snapshot of each of `targets` that has one. A snapshot
    /// of a target not in `targets` is left alone (it stays stored, so
    /// adding the target back resumes it).
    fn read(&mut self, targets: &[String]) -> Result<Stored, StoreError>;
    /// The latest snapshot of each of `targets` that has one, handed to
    /// `sink` a part of at most `part` targets at a time (in no set
    /// order), so that a start never holds every target's bytes at once;
    /// `sink` returning false ends the read. The default asks
    /// [`StateStore::read`] for `part` targets at a time: right for a store
    /// that reads a target as cheaply alone (a file each), not for one that
    /// scans everything for each call (a topic overrides it).
    fn read_parts(
        &mut self,
        targets: &[String],
        part: usize,
        sink: PartSink<'_>,
    ) -> Result<(), StoreError> {
        for chunk in targets.chunks(part.max(1)) {
            let got = self.read(chunk)?;
            if !got.is_empty() && !sink(got) {
                break;
            }
        }
        Ok(())
    }
    /// Problems with the store that do not stop it (a state topic that is
    /// not compacted): logged and counted once at start.
    fn warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
}
