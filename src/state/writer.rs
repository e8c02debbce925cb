//! The state thread: encodes snapshots and talks to the store, so neither
//! the engine nor a source ever waits for a disk or a broker. Writes come
//! in batches the engine paces; flushes and reads are answered in order
//! after every write sent before them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use crate::state::{SnapshotError, StateStore, StoreError, TargetSnapshot};
use crate::telemetry::Metrics;

/// Snapshots waiting to be encoded at most; past it the engine keeps its
/// targets dirty and tries at a later tick (memory stays bounded when the
/// store is slow or down).
pub const MAX_QUEUED: usize = 256;

type Stored = Vec<(String, Vec<u8>)>;

enum Job {
    Write(Vec<TargetSnapshot>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
    Read(Vec<String>, oneshot::Sender<Result<Stored, StoreError>>),
}

/// The engine's and the scaler's way to the state thread. Cheap to clone.
#[derive(Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
    kind: &'static str,
    /// [`StateStore::reads_in_parts`] of its store.
    reads_in_parts: bool,
    /// This process's writer id: a snapshot carrying it was made here.
    writer: Arc<str>,
}

impl std::fmt::Debug for StateHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateHandle")
            .field("kind", &self.kind)
            .finish()
    }
}

impl StateHandle {
    /// Starts the state thread over `store`. It ends when every handle is
    /// dropped, after the jobs already sent.
    pub fn start(
        mut store: Box<dyn StateStore>,
        metrics: Arc<Metrics>,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let kind = store.kind();
        let reads_in_parts = store.reads_in_parts();
        let q = queued.clone();
        let thread = std::thread::Builder::new()
            .name("tidewatch-state".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    for w in store.warnings() {
                        metrics.state_store_warning(kind, &w);
                    }
                    match job {
                        Job::Write(batch) => {
                            let n = batch.len();
                            for s in batch {
                                let bytes = s.encode();
                                let r = store.write(&s.target, &bytes);
                                metrics.state_snapshot(
                                    kind,
                                    r.as_ref().map(|_| bytes.len()).map_err(|e| e as _),
                                );
                            }
                            store.batch_done();
                            q.fetch_sub(n, Ordering::Relaxed);
                        }
                        Job::Flush(done) => {
                            let r = store.flush();
                            if let Err(e) = &r {
                                metrics.state_snapshot(kind, Err(e));
                            }
                            let _ = done.send(r);
                        }
                        Job::Read(targets, done) => {
                            let _ = done.send(store.read(&targets));
                        }
                    }
                }
            })
            .expect("the state thread starts");
        let writer: Arc<str> = uuid::Uuid::now_v7().to_string().into();
        (
            Self {
                tx,
                queued,
                kind,
                reads_in_parts,
                writer,
            },
            thread,
        )
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// How many targets a start asks the store for at once: a part of
    /// [`READ_PART`] when the store reads them as cheaply that way (a
    /// directory), else all of `targets` (a topic is read whole anyway).
    pub fn read_part(&self, targets: usize) -> usize {
        if self.reads_in_parts {
            READ_PART
        } else {
            targets.max(1)
        }
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Room for this many more snapshots now.
    pub fn room(&self) -> usize {
        MAX_QUEUED.saturating_sub(self.queued.load(Ordering::Relaxed))
    }

    /// Queues snapshots to be written (never waits).
    pub fn write(&self, batch: Vec<TargetSnapshot>) {
        if batch.is_empty() {
            return;
        }
        self.queued.fetch_add(batch.len(), Ordering::Relaxed);
        let n = batch.len();
        if self.tx.send(Job::Write(batch)).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Resolves when everything queued before it is stored (or failed).
    pub fn flush(&self) -> oneshot::Receiver<Result<(), StoreError>> {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Job::Flush(done))) = self.tx.send(Job::Flush(done)) {
            let _ = done.send(Err(StoreError::new(
                "state",
                "the state thread has stopped",
            )));
        }
        rx
    }

    /// The stored bytes of each of `targets` that has a snapshot.
    pub async fn read(&self, targets: Vec<String>) -> Result<Stored, StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job::Read(targets, done))
            .map_err(|_| StoreError::new("state", "the state thread has stopped"))?;
        rx.await
            .map_err(|_| StoreError::new("state", "the state thread has stopped"))?
    }
}

/// Decodes what a store returned for `targets`, all at once (for a few
/// targets: a reload's new ones); see [`restore_in_chunks`].
pub fn decode_all(
    targets: &[String],
    stored: Result<Stored, StoreError>,
    metrics: &Metrics,
) -> Vec<TargetSnapshot> {
    let mut out = Vec::new();
    restore_in_chunks(targets, stored, metrics, |b| out.extend(b));
    out
}

/// Targets whose stored bytes a start reads at once from a store that
/// reads in parts: 2,048 of 8 days' snapshots are about 110 MB, where
/// 50,000 read at once were 2.7 GB held beside the state they restore.
pub const READ_PART: usize = 2048;

/// Snapshots decoded at once, at most: decoded history is about four
/// times its encoded size, so a restore of many targets holds a chunk,
/// not all of them.
pub const RESTORE_CHUNK: usize = 256;

/// Decodes what a store returned for `targets` in chunks of
/// [`RESTORE_CHUNK`], each on every core, and hands each chunk to `apply`
/// before the next is decoded. A snapshot that does not decode is counted
/// (corrupt, incompatible) and costs its target its state, nothing else;
/// a store that cannot be read counts every target as `failed`. Targets
/// without a snapshot are the caller's to count.
pub fn restore_in_chunks(
    targets: &[String],
    stored: Result<Stored, StoreError>,
    metrics: &Metrics,
    mut apply: impl FnMut(Vec<TargetSnapshot>),
) {
    let stored = match stored {
        Ok(s) => s,
        Err(e) => {
            metrics.state_store_warning("state", &e.to_string());
            for t in targets {
                metrics.state_restored(t, "failed", Some(&e));
            }
            return;
        }
    };
    let wanted: std::collections::HashSet<&str> = targets.iter().map(String::as_str).collect();
    let stored: Vec<(String, Vec<u8>)> = stored
        .into_iter()
        .filter(|(n, _)| wanted.contains(n.as_str()))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for chunk in stored.chunks(RESTORE_CHUNK) {
        let per = chunk.len().div_ceil(threads).max(1);
        let decoded: Vec<Vec<Result<TargetSnapshot, SnapshotError>>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .chunks(per)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|(n, b)| TargetSnapshot::decode(n, b))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let mut ok = Vec::with_capacity(chunk.len());
        for r in decoded.into_iter().flatten() {
            match r {
                Ok(s) => ok.push(s),
                Err(e) => metrics.state_restored(e.target(), e.code(), Some(&e)),
            }
        }
        apply(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that reads only whole (the trait's default).
    struct Whole;
    impl StateStore for Whole {
        fn kind(&self) -> &'static str {
            "whole"
        }
        fn write(&mut self, _: &str, _: &[u8]) -> Result<(), StoreError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn read(&mut self, _: &[String]) -> Result<Stored, StoreError> {
            Ok(Vec::new())
        }
    }

    /// A start reads a directory a part at a time, and a store that reads
    /// whole (a topic) all at once.
    #[test]
    fn a_start_reads_a_directory_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let store = crate::state::dir::DirStore::open(dir.path()).unwrap();
        let (h, _) = StateHandle::start(Box::new(store), metrics.clone());
        assert_eq!(h.read_part(50_000), READ_PART);
        let (h, _) = StateHandle::start(Box::new(Whole), metrics);
        assert_eq!(h.read_part(50_000), 50_000);
        assert_eq!(h.read_part(0), 1, "chunks of 0 would panic");
    }
}
