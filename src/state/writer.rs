//! The state thread: encodes snapshots and talks to the store, so neither
//! the engine nor a source ever waits for a disk or a broker. Writes come
//! in batches the engine paces; flushes and reads are answered in order
//! after every write sent before them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use crate::state::{SnapshotError, StateStore, StoreError, Stored, TargetSnapshot};
use crate::telemetry::Metrics;

/// Snapshots waiting to be encoded at most; past it the engine keeps its
/// targets dirty and tries at a later tick (memory stays bounded when the
/// store is slow or down).
pub const MAX_QUEUED: usize = 256;

/// How long a batch of writes waits for the writes behind it: the engine
/// queues a few snapshots a slice, and each batch ends in one sync of the
/// store (`StateStore::batch_done`). A flush or a read ends the wait.
const GATHER: std::time::Duration = std::time::Duration::from_millis(100);

/// A gathered batch goes to the store at half the queue: the engine
/// queues the next while it is written (a batch of the whole queue left
/// the engine no room until it was stored, about 1,000 snapshots a
/// second at 50,000 targets).
const GATHERED: usize = MAX_QUEUED / 2;

enum Job {
    Write(Vec<TargetSnapshot>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
    Read(Vec<String>, oneshot::Sender<Result<Stored, StoreError>>),
    /// Parts of at most `.1` targets into the channel; an error, if any,
    /// last.
    ReadParts(
        Vec<String>,
        usize,
        tokio::sync::mpsc::Sender<Result<Stored, StoreError>>,
    ),
}

/// Adds the writes that follow `batch` within [`GATHER`] to it, up to
/// [`GATHERED`] snapshots, so that they end in one sync; returns the
/// job that ended the wait early (a flush or a read), to be done next.
fn gather(rx: &mpsc::Receiver<Job>, batch: &mut Vec<TargetSnapshot>) -> Option<Job> {
    let until = std::time::Instant::now() + GATHER;
    while batch.len() < GATHERED {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Job::Write(more)) => batch.extend(more),
            Ok(other) => return Some(other),
            Err(_) => break,
        }
    }
    None
}

/// The engine's and the scaler's way to the state thread. Cheap to clone.
#[derive(Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
    kind: &'static str,
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
    /// Starts the state thread over `store`, writing the default snapshot
    /// format. It ends when every handle is dropped, after the jobs
    /// already sent.
    pub fn start(
        store: Box<dyn StateStore>,
        metrics: Arc<Metrics>,
    ) -> (Self, std::thread::JoinHandle<()>) {
        Self::start_writing(store, metrics, crate::state::snapshot::FORMAT_VERSION)
    }

    /// [`StateHandle::start`], writing snapshot format `format`
    /// (`state.format`).
    pub fn start_writing(
        mut store: Box<dyn StateStore>,
        metrics: Arc<Metrics>,
        format: u16,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let kind = store.kind();
        let q = queued.clone();
        let thread = std::thread::Builder::new()
            .name("tidewatch-state".into())
            .spawn(move || {
                // a job that ended a batch's gathering, next in order
                let mut next = None;
                while let Some(job) = next.take().or_else(|| rx.recv().ok()) {
                    for w in store.warnings() {
                        metrics.state_store_warning(kind, &w);
                    }
                    match job {
                        Job::Write(mut batch) => {
                            next = gather(&rx, &mut batch);
                            let n = batch.len();
                            let written: Vec<Result<usize, StoreError>> = batch
                                .into_iter()
                                .map(|s| {
                                    let bytes = s.encode_as(format);
                                    store.write(&s.target, &bytes).map(|()| bytes.len())
                                })
                                .collect();
                            // a snapshot is stored once its batch is
                            let done = store.batch_done();
                            for r in &written {
                                let r = match (r, &done) {
                                    (Ok(len), Ok(())) => Ok(*len),
                                    (Err(e), _) | (Ok(_), Err(e)) => Err(e as _),
                                };
                                metrics.state_snapshot(kind, r);
                            }
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
                        Job::ReadParts(targets, part, parts) => {
                            // the channel holds one part: the store reads
                            // the next while the start decodes this one
                            let r = store.read_parts(&targets, part, &mut |p| {
                                parts.blocking_send(Ok(p)).is_ok()
                            });
                            if let Err(e) = r {
                                let _ = parts.blocking_send(Err(e));
                            }
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
                writer,
            },
            thread,
        )
    }

    pub fn kind(&self) -> &'static str {
        self.kind
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

    /// The stored bytes of each of `targets` that has a snapshot, a part
    /// of at most `part` targets at a time ([`StateStore::read_parts`]):
    /// the store reads one part ahead of the one being taken, no more. A
    /// store error comes last, after the parts read before it.
    pub fn read_parts(
        &self,
        targets: Vec<String>,
        part: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<Stored, StoreError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        if let Err(mpsc::SendError(Job::ReadParts(_, _, tx))) =
            self.tx.send(Job::ReadParts(targets, part, tx))
        {
            let _ = tx.try_send(Err(StoreError::new(
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

/// Targets whose stored bytes a start takes at once
/// ([`StateHandle::read_parts`]): 2,048 of 8 days' snapshots are about
/// 110 MB, where 50,000 read at once were 2.7 GB held beside the state they
/// restore.
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
    apply: impl FnMut(Vec<TargetSnapshot>),
) {
    let wanted: std::collections::HashSet<&str> = targets.iter().map(String::as_str).collect();
    let stored = stored.map(|s| {
        s.into_iter()
            .filter(|(n, _)| wanted.contains(n.as_str()))
            .collect()
    });
    let mut restoring = Restoring::new(targets, metrics);
    restoring.part(stored, apply);
    restoring.finish(false);
}

/// A restore of `targets` from parts of a store's read
/// ([`StateHandle::read_parts`]), or from a whole read
/// ([`restore_in_chunks`]): each part decoded in chunks of
/// [`RESTORE_CHUNK`], and at the end the targets no part held counted,
/// cold or (after a store error) failed.
pub struct Restoring<'a> {
    targets: &'a [String],
    metrics: &'a Metrics,
    held: std::collections::HashSet<String>,
    error: Option<StoreError>,
}

impl<'a> Restoring<'a> {
    pub fn new(targets: &'a [String], metrics: &'a Metrics) -> Self {
        Self {
            targets,
            metrics,
            held: std::collections::HashSet::new(),
            error: None,
        }
    }

    /// One part of the read (or its error): decoded, chunk by chunk, into
    /// `apply`.
    pub fn part(
        &mut self,
        part: Result<Stored, StoreError>,
        apply: impl FnMut(Vec<TargetSnapshot>),
    ) {
        match part {
            Ok(stored) => {
                self.held.extend(stored.iter().map(|(n, _)| n.clone()));
                decode_in_chunks(stored, self.metrics, apply);
            }
            Err(e) => {
                self.metrics.state_store_warning("state", &e.to_string());
                self.error = Some(e);
            }
        }
    }

    /// Counts the targets no part held: `failed` with the store's error
    /// when the read failed, else `cold` when `count_cold`. How many
    /// targets a part held.
    pub fn finish(self, count_cold: bool) -> usize {
        for t in self.targets.iter().filter(|t| !self.held.contains(*t)) {
            match &self.error {
                Some(e) => self.metrics.state_restored(t, "failed", Some(e)),
                None if count_cold => self.metrics.state_restored(t, "cold", None),
                None => {}
            }
        }
        self.held.len()
    }
}

/// Decodes `stored` in chunks of [`RESTORE_CHUNK`], each on every core,
/// into `apply`; a snapshot that does not decode is counted.
fn decode_in_chunks(stored: Stored, metrics: &Metrics, mut apply: impl FnMut(Vec<TargetSnapshot>)) {
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

    /// A store that fails after handing out its first part.
    struct FailsMidway;
    impl StateStore for FailsMidway {
        fn kind(&self) -> &'static str {
            "fails"
        }
        fn write(&mut self, _: &str, _: &[u8]) -> Result<(), StoreError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn read(&mut self, targets: &[String]) -> Result<Stored, StoreError> {
            if targets.iter().any(|t| t == "t0") {
                Ok(vec![("t0".into(), b"not a snapshot".to_vec())])
            } else {
                Err(StoreError::new("state.dir", "disk gone"))
            }
        }
    }

    /// A store whose writes succeed and whose batches fail to sync.
    struct SyncFails;
    impl StateStore for SyncFails {
        fn kind(&self) -> &'static str {
            "syncfails"
        }
        fn write(&mut self, _: &str, _: &[u8]) -> Result<(), StoreError> {
            Ok(())
        }
        fn batch_done(&mut self) -> Result<(), StoreError> {
            Err(StoreError::new("state.dir", "sync failed"))
        }
        fn flush(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn read(&mut self, _: &[String]) -> Result<Stored, StoreError> {
            Ok(Vec::new())
        }
    }

    /// Keeps the size of each batch it is told is done.
    struct Batches(Arc<std::sync::Mutex<(usize, Vec<usize>)>>);
    impl StateStore for Batches {
        fn kind(&self) -> &'static str {
            "batches"
        }
        fn write(&mut self, _: &str, _: &[u8]) -> Result<(), StoreError> {
            self.0.lock().unwrap().0 += 1;
            Ok(())
        }
        fn batch_done(&mut self) -> Result<(), StoreError> {
            let mut b = self.0.lock().unwrap();
            let n = std::mem::take(&mut b.0);
            b.1.push(n);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn read(&mut self, _: &[String]) -> Result<Stored, StoreError> {
            Ok(Vec::new())
        }
    }

    /// Writes queued one at a time (as the tick's slices queue them) end
    /// in one batch, so in one sync of the store, not one each; a write
    /// with nothing behind it is stored within the gathering time; a
    /// batch is at most half the queue.
    #[tokio::test]
    async fn writes_queued_one_at_a_time_end_in_one_batch() {
        use crate::state::snapshot::tests::sample;
        let seen = Arc::new(std::sync::Mutex::new((0, Vec::new())));
        let (h, _) = StateHandle::start(Box::new(Batches(seen.clone())), Arc::new(Metrics::new()));
        let twenty: Vec<_> = (0..20).map(|_| sample()).collect();
        for s in twenty {
            h.write(vec![s]);
        }
        h.flush().await.unwrap().unwrap();
        let batches = seen.lock().unwrap().1.clone();
        assert_eq!(batches.iter().sum::<usize>(), 20, "{batches:?}");
        // one unless this thread lost the core for GATHER between sends
        assert!(batches.len() <= 3, "{batches:?}");
        h.write(vec![sample()]);
        let t = std::time::Instant::now();
        while seen.lock().unwrap().1.len() == batches.len() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "a lone write was not stored"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(seen.lock().unwrap().1.last(), Some(&1));
        // a batch goes to the store at half the queue, so that the engine
        // has room for the next meanwhile
        seen.lock().unwrap().1.clear();
        // made first, so that they are queued within the gathering time
        let many: Vec<_> = (0..MAX_QUEUED).map(|_| sample()).collect();
        for s in many {
            h.write(vec![s]);
        }
        h.flush().await.unwrap().unwrap();
        let batches = seen.lock().unwrap().1.clone();
        assert_eq!(batches.iter().sum::<usize>(), MAX_QUEUED, "{batches:?}");
        assert!(batches.iter().all(|&b| b <= MAX_QUEUED / 2), "{batches:?}");
    }

    /// A snapshot counts as stored only once its batch is: when the
    /// batch's end fails, every snapshot of it counts as failed, none as
    /// written.
    #[tokio::test]
    async fn a_batch_that_fails_to_sync_counts_its_snapshots_failed() {
        use crate::state::snapshot::tests::sample;
        let metrics = Arc::new(Metrics::new());
        let (h, _) = StateHandle::start(Box::new(SyncFails), metrics.clone());
        h.write(vec![sample(), sample(), sample()]);
        h.flush().await.unwrap().unwrap();
        let count = |outcome: &str| -> f64 {
            metrics
                .render()
                .lines()
                .filter(|l| {
                    l.starts_with("tidewatch_state_snapshots_total{")
                        && l.contains("syncfails")
                        && l.contains(&format!("\"{outcome}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        assert_eq!(count("failed"), 3.0);
        assert_eq!(count("ok"), 0.0);
    }

    /// `tidewatch_state_restores_total` of `target` by `outcome`.
    fn restores(metrics: &Metrics, target: &str, outcome: &str) -> f64 {
        let text = metrics.render();
        let line =
            format!("tidewatch_state_restores_total{{outcome=\"{outcome}\",target=\"{target}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// The state thread writes the format it was started with
    /// (`state.format`): 2 by default, 1 for a rolling upgrade, and each
    /// reads back as the same snapshot.
    #[tokio::test]
    async fn the_thread_writes_the_format_configured() {
        use crate::state::snapshot::{tests::sample, FORMAT_VERSION};
        for (format, want) in [(None, FORMAT_VERSION), (Some(1), 1), (Some(2), 2)] {
            let dir = tempfile::tempdir().unwrap();
            let store = crate::state::dir::DirStore::open(dir.path()).unwrap();
            let metrics = Arc::new(Metrics::new());
            let (h, _) = match format {
                None => StateHandle::start(Box::new(store), metrics),
                Some(f) => StateHandle::start_writing(Box::new(store), metrics, f),
            };
            let s = sample();
            h.write(vec![s.clone()]);
            h.flush().await.unwrap().unwrap();
            let stored = h.read(vec![s.target.clone()]).await.unwrap();
            let bytes = &stored[0].1;
            assert_eq!(bytes[4..6], want.to_le_bytes(), "{format:?}");
            let back = TargetSnapshot::decode(&s.target, bytes).unwrap();
            let points = |t: &TargetSnapshot| -> Vec<Vec<u32>> {
                t.histories
                    .iter()
                    .map(|(_, h)| h.points().iter().map(|v| v.to_bits()).collect())
                    .collect()
            };
            assert_eq!(points(&back), points(&s), "{format:?}");
            assert_eq!(back.guard, s.guard);
        }
    }

    /// A start takes a directory's snapshots a part at a time, each part
    /// at most the size asked, every stored target once; the targets no
    /// part held count as cold.
    #[tokio::test]
    async fn a_start_takes_a_directory_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut store = crate::state::dir::DirStore::open(dir.path()).unwrap();
        let names: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
        for n in &names[..5] {
            store.write(n, n.as_bytes()).unwrap();
        }
        let (h, _) = StateHandle::start(Box::new(store), metrics.clone());
        let mut parts = h.read_parts(names.clone(), 2);
        let mut got = Vec::new();
        while let Some(p) = parts.recv().await {
            let p = p.unwrap();
            assert!((1..=2).contains(&p.len()), "a part of {}", p.len());
            got.extend(p);
        }
        got.sort();
        let want: Vec<(String, Vec<u8>)> = names[..5]
            .iter()
            .map(|n| (n.clone(), n.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);

        // the restore's accounting: t5 and t6 have nothing stored
        let mut restoring = Restoring::new(&names, &metrics);
        restoring.part(Ok(got), |_| {});
        assert_eq!(restoring.finish(true), 5);
        assert_eq!(restores(&metrics, "t5", "cold"), 1.0);
        assert_eq!(restores(&metrics, "t6", "cold"), 1.0);
        assert_eq!(restores(&metrics, "t0", "cold"), 0.0);
        // and the bytes that are no snapshot are counted as such
        assert_eq!(restores(&metrics, "t0", "corrupt"), 1.0);
    }

    /// A store error after some parts: the parts read before it come
    /// first, then the error; the targets no part held count as failed,
    /// not cold.
    #[tokio::test]
    async fn a_store_error_midway_fails_the_rest() {
        let metrics = Arc::new(Metrics::new());
        let (h, _) = StateHandle::start(Box::new(FailsMidway), metrics.clone());
        let names: Vec<String> = (0..4).map(|i| format!("t{i}")).collect();
        let mut parts = h.read_parts(names.clone(), 2);
        let mut restoring = Restoring::new(&names, &metrics);
        let mut seen = Vec::new();
        while let Some(p) = parts.recv().await {
            seen.push(p.as_ref().map(|p| p.len()).map_err(|e| e.to_string()));
            restoring.part(p, |_| {});
        }
        assert_eq!(seen, vec![Ok(1), Err("state.dir: disk gone".to_string())]);
        assert_eq!(restoring.finish(true), 1);
        for t in ["t1", "t2", "t3"] {
            assert_eq!(restores(&metrics, t, "failed"), 1.0, "{t}");
            assert_eq!(restores(&metrics, t, "cold"), 0.0, "{t}");
        }
    }
}
