//! The background refits of every target's forecasters: a fixed number of
//! threads (cores - 1, at least one, each in the idle scheduling class and
//! busy at most a quarter of the time) and a short queue. A refit that finds
//! the queue full stays due and is offered again at the target's next
//! evaluation, so a wave of refits (every target due in the same tick, as
//! after a start) is worked off a few at a time: never more refits at
//! once than threads, never more than a few histories copied and waiting,
//! and no decision ever waits for one (the old model answers meanwhile).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

pub struct RefitPool {
    tx: Mutex<mpsc::SyncSender<Job>>,
    threads: usize,
    running: Arc<AtomicUsize>,
    /// Jobs accepted and not yet taken by a thread.
    queued: Arc<AtomicUsize>,
    /// Refits offered while the queue was full (they wait for a later try).
    deferred: AtomicU64,
    /// Refits run to the end.
    done: Arc<AtomicU64>,
    /// The longest wait from a refit falling due to its model being ready,
    /// in ms, since it was last read.
    lag_ms: AtomicU64,
}

/// After each refit a thread rests this many times as long as the refit
/// took: at most a quarter of a core each. SCHED_IDLE keeps refits off a
/// core a decision wants, but not out of the caches and memory bandwidth
/// the engine shares with them: at 50,000 targets on 2 cores, refits at
/// full speed (28 a second) raised the reaction p99 from 43 to 152 ms, a
/// quarter (6 a second) left it at 45 ms (PERFORMANCE.md). A quarter still
/// refits 50,000 targets in about 2 h, well within the 6 h refit period.
const REST_PER_WORK: u32 = 3;

impl RefitPool {
    /// `threads` workers and a queue of as many jobs again.
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let running = Arc::new(AtomicUsize::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicU64::new(0));
        for i in 0..threads {
            let done = done.clone();
            let rx = rx.clone();
            let running = running.clone();
            let queued = queued.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tidewatch-refit-{i}"))
                .spawn(move || {
                    crate::priority::idle();
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            rx.recv()
                        };
                        let Ok(job) = job else { return };
                        running.fetch_add(1, Ordering::SeqCst);
                        queued.fetch_sub(1, Ordering::SeqCst);
                        let t = std::time::Instant::now();
                        job();
                        running.fetch_sub(1, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(t.elapsed() * REST_PER_WORK);
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a forecaster refit thread");
            }
        }
        Self {
            tx: Mutex::new(tx),
            threads,
            running,
            queued,
            deferred: AtomicU64::new(0),
            done,
            lag_ms: AtomicU64::new(0),
        }
    }

    /// Whether a job offered now would be queued (checked before copying a
    /// history for it).
    pub fn has_room(&self) -> bool {
        self.queued.load(Ordering::SeqCst) < self.threads
    }

    /// Counts a refit that was not offered because there was no room.
    pub fn defer(&self) {
        self.deferred.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues `job`; false (and nothing queued) when the queue is full.
    pub fn offer(&self, job: Job) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        self.queued.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(job) {
            Ok(()) => true,
            Err(_) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                self.deferred.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Refits running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Refits turned away by a full queue so far.
    pub fn deferred(&self) -> u64 {
        self.deferred.load(Ordering::Relaxed)
    }

    /// Refits run to the end so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// A model became ready `ms` after its refit fell due.
    pub fn record_lag(&self, ms: u64) {
        self.lag_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The longest lag recorded since the last call, in seconds.
    pub fn take_lag_seconds(&self) -> f64 {
        self.lag_ms.swap(0, Ordering::Relaxed) as f64 / 1000.0
    }
}

/// The process's pool: one thread per core but one, at least one.
pub fn pool() -> &'static RefitPool {
    static POOL: OnceLock<RefitPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        RefitPool::new(cores.saturating_sub(1).max(1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Never more refits at once than threads; a full queue turns a job
    /// away instead of piling up copies of histories; every accepted job
    /// runs.
    #[test]
    fn runs_at_most_its_threads_at_once_and_turns_away_when_full() {
        let pool = RefitPool::new(2);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let job = || {
            let (release_rx, peak, now, done) =
                (release_rx.clone(), peak.clone(), now.clone(), done.clone());
            Box::new(move || {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                let _ = release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(5));
                now.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
            }) as Job
        };
        // two run, two wait in the queue, the rest are turned away
        let mut accepted = 0;
        for _ in 0..10 {
            if pool.offer(job()) {
                accepted += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(accepted, 4, "2 running + 2 queued");
        assert!(!pool.has_room());
        assert_eq!(pool.deferred(), 6);
        assert_eq!(pool.running(), 2);
        for _ in 0..accepted {
            release_tx.send(()).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while done.load(Ordering::SeqCst) < accepted && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(done.load(Ordering::SeqCst), accepted);
        while pool.done() < accepted as u64 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.done(), accepted as u64, "the pool counts what it ran");
        assert_eq!(
            peak.load(Ordering::SeqCst),
            2,
            "never more than the threads"
        );
        // lag: the longest since the last read
        pool.record_lag(1500);
        pool.record_lag(200);
        assert_eq!(pool.take_lag_seconds(), 1.5);
        assert_eq!(pool.take_lag_seconds(), 0.0);
    }

    /// A refit runs only on a core nothing else wants (Linux SCHED_IDLE),
    /// so a wave of them takes no CPU from decisions.
    #[cfg(target_os = "linux")]
    #[test]
    fn refits_run_in_the_idle_scheduling_class() {
        let pool = RefitPool::new(1);
        let (tx, rx) = mpsc::channel::<i32>();
        assert!(pool.offer(Box::new(move || {
            let _ = tx.send(crate::priority::current().0);
        })));
        let class = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(class, libc::SCHED_IDLE);
    }

    /// A thread rests three times as long as a refit took before it takes
    /// the next one (sleep waits at least that long: no timing race).
    #[test]
    fn a_thread_rests_three_times_its_work_between_refits() {
        let pool = RefitPool::new(1);
        let (tx, rx) = mpsc::channel::<(std::time::Instant, std::time::Instant)>();
        for _ in 0..2 {
            let tx = tx.clone();
            // the queue holds one: the second waits until the first runs
            while !pool.has_room() {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(pool.offer(Box::new(move || {
                let start = std::time::Instant::now();
                std::thread::sleep(Duration::from_millis(40));
                let _ = tx.send((start, std::time::Instant::now()));
            })));
        }
        let (s1, e1) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let (s2, _) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let work = e1 - s1;
        assert!(
            s2 - e1 >= work * REST_PER_WORK,
            "rested {:?} after {work:?} of work",
            s2 - e1
        );
    }
}
