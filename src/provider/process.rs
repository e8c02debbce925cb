//! The `process` provider: keeps N local processes of a configured command
//! running, so tidewatch can scale real local workers. Scaling up spawns;
//! scaling down sends SIGTERM to the newest children and SIGKILL to those
//! still alive after the grace period; a supervisor replaces children that
//! exit on their own, backing off as Kubernetes' CrashLoopBackOff does
//! when they keep exiting (1 s, doubling to 5 min, reset once a child has
//! run for 10 min). Children get SIGTERM when the worker dies
//! (`PR_SET_PDEATHSIG` on Linux), so a killed worker leaves no orphans, and
//! the worker restores the last applied count when it starts again.

#![allow(unsafe_code)]

use serde::Deserialize;

use crate::settings::de_duration;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::telemetry::Metrics;

use super::exec::CommandLineError;
use super::{Provider, ProviderError, ProviderFuture, ScaleCommand};

/// How often the supervisor looks for exited children.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);

/// Checks a command: not empty, and `{target}` only as a whole argument
/// (the replica count has no meaning for one process).
pub fn check_command(argv: &[String]) -> Result<(), CommandLineError> {
    if argv.is_empty() {
        return Err(CommandLineError::Empty);
    }
    for (i, a) in argv.iter().enumerate() {
        if a != "{target}" && super::exec::placeholder_in(a).is_some() {
            return Err(CommandLineError::OnlyTarget {
                index: i,
                arg: a.clone(),
            });
        }
    }
    Ok(())
}

/// The first wait before a child that exited is replaced.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait (Kubernetes' cap).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A child that ran this long without exiting resets the back-off
/// (Kubernetes resets after 10 minutes).
pub const STEADY_AFTER: Duration = Duration::from_secs(600);

/// The back-off of one target's children: each round of exits after a
/// short run doubles the wait before replacements start, from
/// [`FIRST_BACKOFF`] to [`MAX_BACKOFF`]; an exit after [`STEADY_AFTER`]
/// starts over. The time is a parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashLoop {
    wait: Duration,
    until: Option<Instant>,
}

impl CrashLoop {
    /// Children exited at `now`, the longest-lived after running `ran`;
    /// returns the wait before replacements.
    pub fn exited(&mut self, ran: Duration, now: Instant) -> Duration {
        if ran >= STEADY_AFTER {
            self.wait = Duration::ZERO;
        }
        self.wait = if self.wait.is_zero() {
            FIRST_BACKOFF
        } else {
            (self.wait * 2).min(MAX_BACKOFF)
        };
        self.until = Some(now + self.wait);
        self.wait
    }

    /// Whether a child may be started at `now`.
    pub fn may_start(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| now >= u)
    }

    /// What is left of the wait at `now` (zero when children may start).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.until
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now))
    }
}

struct Running {
    child: Child,
    started: Instant,
}

#[derive(Default)]
struct Pool {
    desired: u32,
    children: Vec<Running>,
    /// Children that exited on their own and were replaced.
    replaced: u64,
    /// The last spawn error, so a command that cannot start is reported.
    spawn_error: Option<String>,
    crash: CrashLoop,
}

impl Pool {
    /// The children still running (exited ones are reaped on the next
    /// supervisor pass).
    fn alive(&mut self) -> u32 {
        self.children
            .iter_mut()
            .map(|r| r.child.try_wait())
            .filter(|w| matches!(w, Ok(None)))
            .count() as u32
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// argv of one replica; `{target}` may stand as a whole argument.
    pub command: Vec<String>,
    /// Between SIGTERM and SIGKILL when scaling down.
    #[serde(default = "default_grace", deserialize_with = "de_duration")]
    pub grace: Duration,
    /// Working directory of the children (default: the worker's).
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

pub struct ProcessProvider {
    argv: Vec<String>,
    grace: Duration,
    dir: Option<PathBuf>,
    target: String,
    pool: Arc<Mutex<Pool>>,
    supervisor: tokio::task::JoinHandle<()>,
}

/// What the supervisor needs besides the pool.
struct Supervised {
    argv: Vec<String>,
    dir: Option<PathBuf>,
    target: String,
    metrics: Arc<Metrics>,
}

impl Drop for ProcessProvider {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl ProcessProvider {
    /// Starts the supervisor (on the current runtime) with no children.
    pub fn new(
        target: &str,
        argv: Vec<String>,
        grace: Duration,
        dir: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, CommandLineError> {
        check_command(&argv)?;
        let argv: Vec<String> = argv
            .into_iter()
            .map(|a| {
                if a == "{target}" {
                    target.to_owned()
                } else {
                    a
                }
            })
            .collect();
        let pool = Arc::new(Mutex::new(Pool::default()));
        let supervisor = tokio::spawn(supervise(
            pool.clone(),
            Supervised {
                argv: argv.clone(),
                dir: dir.clone(),
                target: target.to_owned(),
                metrics,
            },
        ));
        Ok(Self {
            argv,
            grace,
            dir,
            target: target.to_owned(),
            pool,
            supervisor,
        })
    }

    /// The process ids of the running children, oldest first.
    pub async fn pids(&self) -> Vec<u32> {
        self.pool
            .lock()
            .await
            .children
            .iter()
            .filter_map(|r| r.child.id())
            .collect()
    }

    /// Children replaced after exiting on their own.
    pub async fn replaced(&self) -> u64 {
        self.pool.lock().await.replaced
    }

    /// The current back-off: what is left of the wait before exited
    /// children are replaced.
    pub async fn backoff(&self) -> Duration {
        self.pool.lock().await.crash.remaining(Instant::now())
    }

    /// Sets the number of children; answers how many are running. In a
    /// crash loop the missing ones are started by the supervisor when the
    /// back-off allows, not here, so the answer says how many really run.
    async fn set(&self, n: u32) -> Result<u32, ProviderError> {
        let doomed = {
            let mut pool = self.pool.lock().await;
            pool.desired = n;
            pool.spawn_error = None;
            let may_start = pool.crash.may_start(Instant::now());
            while may_start && pool.children.len() < n as usize {
                match spawn(&self.argv, self.dir.as_ref()) {
                    Ok(child) => pool.children.push(Running {
                        child,
                        started: Instant::now(),
                    }),
                    Err(e) => {
                        return Err(ProviderError {
                            message: format!(
                                "process {:?} for {}: cannot start: {e}",
                                self.argv[0], self.target
                            ),
                            retryable: false,
                        })
                    }
                }
            }
            let keep = n as usize;
            if pool.children.len() > keep {
                pool.children.split_off(keep)
            } else {
                Vec::new()
            }
        };
        let grace = self.grace;
        futures::future::join_all(doomed.into_iter().map(|r| terminate(r.child, grace))).await;
        Ok(self.pool.lock().await.alive())
    }
}

fn spawn(argv: &[String], dir: Option<&PathBuf>) -> std::io::Result<Child> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// SIGTERM, then SIGKILL after `grace`; waits for the exit either way.
async fn terminate(mut c: Child, grace: Duration) {
    if let Some(pid) = c.id() {
        // SAFETY: kill(2) on a child we have not reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(grace, c.wait()).await.is_err() {
        tracing::warn!(pid = ?c.id(), ?grace, "process did not exit after SIGTERM; SIGKILL");
        let _ = c.kill().await;
    }
}

async fn supervise(pool: Arc<Mutex<Pool>>, s: Supervised) {
    let Supervised {
        argv,
        dir,
        target,
        metrics,
    } = s;
    loop {
        tokio::time::sleep(SUPERVISE_EVERY).await;
        let mut pool = pool.lock().await;
        let now = Instant::now();
        let mut longest: Option<Duration> = None;
        let mut statuses = Vec::new();
        pool.children.retain_mut(|r| match r.child.try_wait() {
            Ok(Some(status)) => {
                let ran = now - r.started;
                longest = Some(longest.map_or(ran, |l| l.max(ran)));
                statuses.push(format!("{status} after {ran:?}"));
                false
            }
            _ => true,
        });
        if let Some(ran) = longest {
            let wait = pool.crash.exited(ran, now);
            pool.replaced += statuses.len() as u64;
            metrics.process_exited(&target, &statuses.join(", "), statuses.len(), wait);
        }
        if !pool.crash.may_start(now) {
            continue;
        }
        metrics.process_backoff(&target, Duration::ZERO);
        while pool.children.len() < pool.desired as usize {
            match spawn(&argv, dir.as_ref()) {
                Ok(child) => pool.children.push(Running {
                    child,
                    started: Instant::now(),
                }),
                Err(e) => {
                    let e = e.to_string();
                    if pool.spawn_error.as_deref() != Some(e.as_str()) {
                        tracing::error!(target_name = %target, error = %e, "cannot start a replacement process");
                    }
                    pool.spawn_error = Some(e);
                    break;
                }
            }
        }
    }
}

impl Provider for ProcessProvider {
    fn name(&self) -> &'static str {
        "process"
    }

    fn scale<'a>(&'a self, c: &'a ScaleCommand) -> ProviderFuture<'a> {
        Box::pin(async move { self.set(c.desired_replicas).await.map(Some) })
    }

    fn restore<'a>(&'a self, replicas: u32) -> ProviderFuture<'a> {
        Box::pin(async move { self.set(replicas).await.map(Some) })
    }

    fn stop<'a>(&'a self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            self.supervisor.abort();
            let _ = self.set(0).await;
        })
    }
}

/// How many live processes carry `marker` in their command line, not
/// counting a fork whose parent carries it too (a shell's child before it
/// execs): the children a `process` target runs, when its command names a
/// marker. For tests and diagnostics; reads /proc.
pub fn count_processes(marker: &str) -> usize {
    // (pid, parent pid) of every live process whose command line carries
    // the marker; a shell's fork that has not exec'd yet carries it too,
    // so a process whose parent is also marked is not counted.
    let marked: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // after "(comm) ": state, ppid, ...; zombies (Z) have exited
            let mut rest = stat.rsplit(") ").next()?.split(' ');
            let state = rest.next()?;
            let ppid: u32 = rest.next()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            (state != "Z" && String::from_utf8_lossy(&cmd).contains(marker)).then_some((pid, ppid))
        })
        .collect();
    marked
        .iter()
        .filter(|(_, ppid)| !marked.iter().any(|(pid, _)| pid == ppid))
        .count()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Polls until `want` children carry the marker; returns the count
    /// that matched, or the last one. (A count taken again afterwards
    /// could catch a shell's fork before it execs `sleep`, which still
    /// shows the marker in its command line.)
    async fn settle(marker: &str, want: usize) -> usize {
        let mut n = count_processes(marker);
        for _ in 0..100 {
            if n == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            n = count_processes(marker);
        }
        n
    }

    #[test]
    fn commands_are_checked() {
        assert!(check_command(&["sleep".into(), "{target}".into()]).is_ok());
        let e = check_command(&["sleep".into(), "{replicas}".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("argument 1"), "{e}");
        assert!(check_command(&[]).is_err());
    }

    #[tokio::test]
    async fn keeps_n_real_processes_replaces_crashes_and_escalates_to_sigkill() {
        let marker = format!("tidewatch-proc-{}", crate::broker::unique_suffix());
        // A child that ignores SIGTERM, so scale-down must escalate.
        let script = format!("trap '' TERM; while :; do sleep 0.1; done # {marker}");
        let p = ProcessProvider::new(
            "web",
            vec!["/bin/sh".into(), "-c".into(), script],
            Duration::from_millis(300),
            None,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let c = |n| crate::provider::tests::command("web", n);
        assert_eq!(p.scale(&c(3)).await.unwrap(), Some(3));
        assert_eq!(settle(&marker, 3).await, 3);

        // Kill one from outside: the supervisor replaces it.
        let victim = p.pids().await[0];
        unsafe {
            libc::kill(victim as i32, libc::SIGKILL);
        }
        for _ in 0..50 {
            if p.replaced().await == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(p.replaced().await, 1);
        assert!(!p.pids().await.contains(&victim));
        assert_eq!(settle(&marker, 3).await, 3);

        // Down to 1: SIGTERM is ignored, SIGKILL after the grace period.
        let started = std::time::Instant::now();
        assert_eq!(p.scale(&c(1)).await.unwrap(), Some(1));
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(settle(&marker, 1).await, 1);

        p.stop().await;
        assert_eq!(settle(&marker, 0).await, 0);
    }

    #[tokio::test]
    async fn polite_children_stop_on_sigterm_and_bad_commands_fail() {
        let marker = format!("tidewatch-polite-{}", crate::broker::unique_suffix());
        let p = ProcessProvider::new(
            "web",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("while :; do sleep 0.1; done # {marker}"),
            ],
            Duration::from_secs(20),
            None,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let c = |n| crate::provider::tests::command("web", n);
        assert_eq!(p.scale(&c(2)).await.unwrap(), Some(2));
        assert_eq!(settle(&marker, 2).await, 2);
        let started = std::time::Instant::now();
        assert_eq!(p.scale(&c(0)).await.unwrap(), Some(0));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SIGTERM was enough"
        );
        assert_eq!(settle(&marker, 0).await, 0);

        let bad = ProcessProvider::new(
            "web",
            vec!["/no/such/program".into()],
            Duration::from_secs(1),
            None,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let e = bad.scale(&c(1)).await.unwrap_err();
        assert!(
            !e.retryable && e.message.contains("/no/such/program"),
            "{e:?}"
        );
    }

    #[test]
    fn the_back_off_doubles_to_five_minutes_and_resets_after_a_steady_run() {
        let t0 = Instant::now();
        let mut c = CrashLoop::default();
        assert!(c.may_start(t0));
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            let w = c.exited(Duration::from_millis(5), now);
            assert!(!c.may_start(now) && c.may_start(now + w));
            waits.push(w.as_secs());
            now += w;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(
            c.remaining(now - Duration::from_secs(100)),
            Duration::from_secs(100)
        );
        // A child that ran 10 minutes starts the count over.
        assert_eq!(c.exited(STEADY_AFTER, now), FIRST_BACKOFF);
    }

    /// A child that exits at once, for 7.5 s of real time: started at
    /// 0 s, then after 1, 2 and 4 s of back-off (4 starts), where a tight
    /// loop starts one every supervisor pass (about 35). The result counts
    /// only what runs. Once the child can run, it is started after the
    /// current back-off and kept.
    #[tokio::test]
    async fn a_crash_loop_backs_off_and_a_recovered_child_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("healthy");
        let script = format!("test -e {} || exit 3; exec sleep 100000", flag.display());
        let metrics = Arc::new(Metrics::new());
        let p = ProcessProvider::new(
            "web",
            vec!["/bin/sh".into(), "-c".into(), script],
            Duration::from_secs(1),
            None,
            metrics.clone(),
        )
        .unwrap();
        let c = |n| crate::provider::tests::command("web", n);
        p.scale(&c(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(7500)).await;
        let starts = 1 + p.replaced().await;
        assert!(
            (3..=6).contains(&starts),
            "{starts} starts in 7.5 s of a crash loop"
        );
        let restarts = crate::telemetry::sum(
            &metrics,
            "tidewatch_process_restarts_total",
            &[("target", "web")],
        );
        assert_eq!(restarts as u64, p.replaced().await);
        // In back-off (the 4 s wait): a command answers what runs.
        assert!(p.backoff().await > Duration::ZERO, "in back-off");
        assert_eq!(p.scale(&c(1)).await.unwrap(), Some(0));
        assert!(
            crate::telemetry::sum(
                &metrics,
                "tidewatch_process_backoff_seconds",
                &[("target", "web")]
            ) >= 4.0
        );

        // Healthy from now on: started when the back-off ends, then kept.
        std::fs::write(&flag, "").unwrap();
        let mut pids = Vec::new();
        for _ in 0..120 {
            pids = p.pids().await;
            if !pids.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(pids.len(), 1);
        let replaced = p.replaced().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(p.pids().await, pids, "the recovered child is kept");
        assert_eq!(p.replaced().await, replaced);
        assert_eq!(p.scale(&c(1)).await.unwrap(), Some(1));
        p.stop().await;
    }
}
