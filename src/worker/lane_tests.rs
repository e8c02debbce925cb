//! The dispatcher and its lanes with an in-memory outbox: verdicts,
//! order, parallelism, retries, timeouts, refusals and the state file.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::clock::SystemClock;
use crate::command::{ScaleCommand, ScaleResult};
use crate::event::{DeadLetter, Origin};
use crate::provider::exec::ExecProvider;
use crate::provider::ProviderFuture;

#[derive(Default)]
struct MemOutbox {
    results: Mutex<Vec<ScaleResult>>,
    dead: Mutex<Vec<DeadLetter>>,
}

impl Outbox for MemOutbox {
    fn result<'a>(&'a self, r: &'a ScaleResult) -> BoxFuture<'a, ()> {
        self.results.lock().unwrap().push(r.clone());
        Box::pin(async {})
    }
    fn dead_letter<'a>(&'a self, _bytes: &'a [u8], dl: &'a DeadLetter) -> BoxFuture<'a, ()> {
        self.dead.lock().unwrap().push(dl.clone());
        Box::pin(async {})
    }
}

/// Records the generations it applies; each call takes `delay`; counts
/// calls running at once.
#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<i64>>,
    delay: Duration,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl Provider for Recorder {
    fn name(&self) -> &'static str {
        "log"
    }
    fn scale<'a>(&'a self, c: &'a ScaleCommand) -> ProviderFuture<'a> {
        Box::pin(async move {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.applied.lock().unwrap().push(c.generation);
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(Some(c.desired_replicas))
        })
    }
}

fn cmd(target: &str, generation: i64, ttl_ms: i64) -> ScaleCommand {
    let replicas = (generation % 50) as u32 + 1;
    crate::provider::tests::command_with(target, "log", generation, replicas, ttl_ms)
}

struct Rig {
    d: Dispatcher,
    out: Arc<MemOutbox>,
    acks: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

fn rig(targets: Vec<(&str, Arc<dyn Provider>, Duration)>, state: &Path, attempts: u32) -> Rig {
    let out = Arc::new(MemOutbox::default());
    let metrics = Arc::new(Metrics::new());
    let ledger = StateFile::new(state).load().unwrap();
    let targets = targets
        .into_iter()
        .map(|(name, provider, timeout)| Target {
            name: name.into(),
            provider_name: "log".into(),
            provider,
            timeout,
        })
        .collect();
    let d = Dispatcher::new(
        targets,
        ledger,
        StateFile::new(state),
        out.clone(),
        metrics.clone(),
        Arc::new(SystemClock),
        "w1".into(),
        RetryPolicy {
            max_attempts: attempts,
            first_wait: Duration::from_millis(20),
        },
        16,
    );
    Rig {
        d,
        out,
        acks: Arc::default(),
        metrics,
    }
}

impl Rig {
    async fn send(&self, bytes: &[u8]) {
        let acks = self.acks.clone();
        let ack: Ack = Box::new(move || {
            Box::pin(async move {
                acks.fetch_add(1, Ordering::SeqCst);
            })
        });
        let origin = Origin {
            topic: "tidewatch.commands".into(),
            ..Origin::default()
        };
        self.d.submit(bytes, &origin, ack).await;
    }

    async fn wait_results(&self, n: usize) -> Vec<ScaleResult> {
        for _ in 0..500 {
            if self.out.results.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.out.results.lock().unwrap().clone()
    }

    fn statuses(&self, target: &str) -> Vec<(i64, &'static str)> {
        self.out
            .results
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.target == target)
            .map(|r| (r.generation, r.status.as_str()))
            .collect()
    }
}

#[tokio::test]
async fn duplicates_stale_expired_dry_runs_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let web = Arc::new(Recorder::default());
    let r = rig(
        vec![("web", web.clone(), Duration::from_secs(5))],
        &state,
        3,
    );
    let mut dry = cmd("web", 8, 60_000);
    dry.dry_run = true;
    let mut wrong_provider = cmd("web", 20, 60_000);
    wrong_provider.provider = "kubernetes".into();
    let inputs: Vec<Vec<u8>> = vec![
        cmd("web", 5, 60_000).to_json(),
        cmd("web", 5, 60_000).to_json(), // redelivered
        cmd("web", 3, 60_000).to_json(), // out of order: older
        cmd("web", 7, -1_000).to_json(), // expired before it arrived
        dry.to_json(),
        cmd("web", 9, 60_000).to_json(),
        cmd("api", 1, 60_000).to_json(), // unknown target
        b"{not json".to_vec(),           // undecodable
        wrong_provider.to_json(),        // unknown provider for the target
    ];
    for b in &inputs {
        r.send(b).await;
    }
    r.wait_results(8).await;
    r.d.drain(Duration::from_secs(5)).await;
    assert_eq!(
        r.statuses("web"),
        vec![
            (20, "failed"), // refused before the lane: answered at once
            (5, "applied"),
            (5, "skipped_duplicate"),
            (3, "skipped_stale"),
            (7, "expired"),
            (8, "dry_run"),
            (9, "applied"),
        ]
    );
    assert_eq!(*web.applied.lock().unwrap(), vec![5, 9], "nothing else ran");
    assert_eq!(r.statuses("api"), vec![(1, "failed")]);
    let results = r.out.results.lock().unwrap().clone();
    let api = results.iter().find(|x| x.target == "api").unwrap();
    assert!(
        api.error.as_deref().unwrap().contains("unknown_target"),
        "{api:?}"
    );
    assert_eq!(api.command_id, "api-1");
    let applied = results.iter().find(|x| x.generation == 9).unwrap();
    assert_eq!(
        (applied.observed_replicas, applied.worker.as_str()),
        (Some(10), "w1")
    );
    let dead: Vec<String> = r
        .out
        .dead
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.reason.clone())
        .collect();
    assert_eq!(
        dead,
        vec!["unknown_target", "invalid_json", "unknown_provider"]
    );
    assert_eq!(
        r.acks.load(Ordering::SeqCst),
        inputs.len(),
        "every message acked once"
    );
    assert_eq!(
        crate::telemetry::sum(
            &r.metrics,
            "tidewatch_worker_results_total",
            &[("target", "web"), ("status", "skipped_duplicate")]
        ) as u64,
        1
    );

    // A restarted worker reads the ledger back: the redelivery of 9 is a
    // duplicate, the next generation applies, the restored count is known.
    let web2 = Arc::new(Recorder::default());
    let r2 = rig(
        vec![("web", web2.clone(), Duration::from_secs(5))],
        &state,
        3,
    );
    r2.send(&cmd("web", 9, 60_000).to_json()).await;
    r2.send(&cmd("web", 10, 60_000).to_json()).await;
    r2.wait_results(2).await;
    assert_eq!(
        r2.statuses("web"),
        vec![(9, "skipped_duplicate"), (10, "applied")]
    );
    assert_eq!(*web2.applied.lock().unwrap(), vec![10]);
    let saved = StateFile::new(&state).load().unwrap();
    assert_eq!(
        (saved.last("web"), saved.replicas("web")),
        (Some(10), Some(11))
    );
}

#[tokio::test]
async fn one_target_in_order_never_concurrent_targets_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Arc::new(Recorder {
        delay: Duration::from_millis(150),
        ..Recorder::default()
    });
    let fast = Arc::new(Recorder::default());
    let r = rig(
        vec![
            ("slow", slow.clone(), Duration::from_secs(5)),
            ("fast", fast.clone(), Duration::from_secs(5)),
        ],
        &dir.path().join("s.json"),
        1,
    );
    for g in 1..=4 {
        r.send(&cmd("slow", g, 60_000).to_json()).await;
    }
    r.send(&cmd("fast", 1, 60_000).to_json()).await;
    let first = r.wait_results(1).await;
    assert_eq!(
        first[0].target, "fast",
        "a slow target does not hold up another"
    );
    r.wait_results(5).await;
    assert_eq!(
        *slow.applied.lock().unwrap(),
        vec![1, 2, 3, 4],
        "in arrival order"
    );
    assert_eq!(
        slow.most_at_once.load(Ordering::SeqCst),
        1,
        "never two at once"
    );
}

#[tokio::test]
async fn retries_a_provider_that_fails_twice_and_gives_up_on_one_that_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("attempts");
    // A real command that fails on its first two calls.
    let flaky = ExecProvider::new(
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "n=$(cat \"$0\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$0\"; \
             [ $n -ge 3 ] || { echo \"attempt $n failed\" >&2; exit 1; }"
                .into(),
            count.to_str().unwrap().into(),
        ],
        Duration::from_secs(5),
    )
    .unwrap();
    // A command that never ends: the worker's timeout abandons it.
    let hangs =
        ExecProvider::new(vec!["sleep".into(), "30".into()], Duration::from_secs(60)).unwrap();
    let r = rig(
        vec![
            ("flaky", Arc::new(flaky), Duration::from_secs(5)),
            ("hangs", Arc::new(hangs), Duration::from_millis(300)),
        ],
        &dir.path().join("s.json"),
        3,
    );
    let started = std::time::Instant::now();
    r.send(&cmd("flaky", 1, 60_000).to_json()).await;
    r.send(&cmd("hangs", 1, 60_000).to_json()).await;
    r.wait_results(2).await;
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");
    assert_eq!(r.statuses("flaky"), vec![(1, "applied")]);
    assert_eq!(r.statuses("hangs"), vec![(1, "failed")]);
    let results = r.out.results.lock().unwrap().clone();
    let hung = results.iter().find(|x| x.target == "hangs").unwrap();
    let e = hung.error.as_deref().unwrap();
    assert!(
        e.contains("no answer within") && e.contains("attempt 3 of 3"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let calls = |p: &str, s: &str| {
        crate::telemetry::sum(
            &r.metrics,
            "tidewatch_provider_calls_total",
            &[("provider", p), ("status", s)],
        ) as u64
    };
    assert_eq!(
        (
            calls("exec", "error"),
            calls("exec", "ok"),
            calls("exec", "timeout")
        ),
        (2, 1, 3)
    );
    // A hang leaves no process behind (dropped calls kill their child).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(crate::provider::process::count_processes("sleep 30"), 0);

    // A failure that retrying cannot fix is not retried; nor past expiry.
    let missing = ExecProvider::new(vec!["/no/such/tool".into()], Duration::from_secs(1)).unwrap();
    let r = rig(
        vec![("m", Arc::new(missing), Duration::from_secs(1))],
        &dir.path().join("m.json"),
        5,
    );
    r.send(&cmd("m", 1, 60_000).to_json()).await;
    let res = r.wait_results(1).await;
    assert!(
        res[0]
            .error
            .as_deref()
            .unwrap()
            .contains("attempt 1 of 5; not retryable"),
        "{res:?}"
    );
}
