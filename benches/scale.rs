//! Many targets on one scaler (issue 21), scripted and bounded. Run with
//! `scripts/bench-scale` (or `cargo bench --bench scale -- PART...`):
//!
//! - `reaction-amqp`, `reaction-kafka`: for each N in SCALE_TARGETS
//!   (default 1000,50000), one scaler with N targets on
//!   `policies/queue_depth.lua` (three windows), the default metrics
//!   detail, and 5,000 signals/s (SCALE_RATE) spread over the targets for
//!   SCALE_SECONDS (default 20) on RabbitMQ (TIDEWATCH_TEST_AMQP) or the
//!   librdkafka mock cluster (the source with `fetch.wait.max.ms = 5`, as
//!   in the Kafka benchmark). A probe target gets a signal every 20 ms
//!   asking for more replicas than the one before; its reaction is from
//!   publication to the command's arrival at another client; on
//!   RabbitMQ a bystander consumer of the probes (a queue of its own) also
//!   times the broker's part alone. `/metrics`
//!   is scraped every 2 s meanwhile, from a thread of its own. A stand-in worker answers every
//!   command with a result at its desired count. The Kafka producer
//!   batches for up to 5 ms (librdkafka's default; SCALE_LINGER_MS sets
//!   it). SCALE_TRACE=1 prints the worst reaction in each second, and
//!   the probes over 100 ms on the wall clock (to lay beside samples
//!   taken outside the benchmark). The
//!   measured part follows SCALE_WARMUP seconds (default 10) of the same
//!   load without probes (0: measure from the first second of load), and
//!   more of it until the start's wave (every target's first command and
//!   its result) is through, SCALE_SETTLE seconds at most (default 120;
//!   0: no more); the time that took is printed.
//!   SCALE_REFIT_WAVE=1 (RabbitMQ and Kafka): every target starts from a snapshot
//!   in a state directory with 8 days of history and a forecaster fitted
//!   a day ago, so that all refits fall due at once during the load
//!   (=0: the same state a minute old, no refit due, for comparison);
//!   snapshots are written every SCALE_STATE_INTERVAL (default 1h).
//!   SCALE_TRACE_CMD=1 prints one in 200 of the other targets' commands.
//!   SCALE_SHARDS sets `engine.shards` (default 0: one per core),
//!   SCALE_TICK `engine.tick` (default the engine's, 1 s).
//!   The scaler is the `tidewatch run` binary, a process and a session
//!   of its own, as deployed (`Scaler`; its log is the temporary
//!   directory's `scaler.log`, its last lines printed if the benchmark
//!   panics); SCALE_PROCESS=0 runs it in a task of the
//!   benchmark's own runtime instead, beside the publisher and the
//!   readers, as the figures before 2026-12-06 were measured.
//!   SCALE_BIN=PATH runs another build of `tidewatch` as the scaler (two
//!   builds compared under the same benchmark). The publisher sends each
//!   millisecond's signals together, as a producer with several messages
//!   in flight does; SCALE_PIPELINE=0 awaits each before the next, as
//!   the figures before 2026-12-06 12:12 were measured (with lapin each
//!   awaited publish is a wake-up of its I/O thread and a write of its
//!   own: the benchmark's clients took 0.36 of a core that way against
//!   0.22 pipelined, on the two cores the broker and the scaler share).
//!   SCALE_ROUNDS=R runs the sizes R times in turn (1,000, 50,000, 1,000,
//!   ...) and prints each round's p99 ratio beside the broker's part alone
//!   and the tick's time a call (the machine's speed at that moment),
//!   then the medians, and the percentiles of each size's probes of all
//!   rounds pooled (the sizes alternate, so the pooled sets saw the same
//!   spells of the machine). SCALE_BURN (`Burner` below) is a diagnostic.
//!   Reports start-up (to `/readyz`),
//!   reaction p50/p90/p99/max, policy evaluations a second (every target
//!   every tick is N a second), the tick's mean length, the largest
//!   scrape and the process's RSS; then the p99 ratio of the largest N
//!   to the smallest.
//! - `memory`: RSS of an engine of N targets (the largest of
//!   SCALE_TARGETS) after 8 days of queue-depth history, time-compressed:
//!   one target is fed 8 days at a minute (virtual clock) and evaluated
//!   hourly with its refits inline, and its snapshot (history and
//!   forecaster) is restored into every target, as a restart after 8
//!   days would; then one evaluation of every target.
//! - `refit-wave`: the same engine right after the restore, when every
//!   forecaster falls due at once: for SCALE_SECONDS the tick runs in
//!   slices and after each one target that just got a signal is decided;
//!   the slices' and the decisions' times, while the refit pool works.
//!   SCALE_TRACE=1 also prints the histogram of single policy calls.
//! - `tally`: the series every policy call moves, from one thread and
//!   from two at once, into the shared series and through a shard's
//!   `Tally` (SCALE_CALLS calls each, 2,000,000 unless set).
//! - `scrape`: the text of `/metrics` for N targets (the largest of
//!   SCALE_TARGETS) at the default detail, each with its desired
//!   replicas and one in ten with an observed count that differs (a
//!   command not yet answered): the text's size, and its rendering and
//!   gzipping (the fastest level, as `/metrics` does) timed, the median
//!   and the largest of 20.
//! - `startup`: `tidewatch run` (the binary) with N targets on RabbitMQ
//!   and `source.amqp.slots = 16` (one binding per target): seconds to
//!   `/readyz`, on fresh queues and again with the bindings in place
//!   (listed through the management API when
//!   TIDEWATCH_TEST_AMQP_MANAGEMENT is set), and how many signals sent
//!   at ready to every 50th target reach the engine within 10 s (a first
//!   start's catch-all serves the targets not bound yet).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::amqp::{self as mq, Names};
use common::bench;
use futures::StreamExt;
use lapin::BasicProperties;
use rdkafka::message::Message;
use tidewatch::command::ScaleCommand;
use tidewatch::config::Config;
use tidewatch::telemetry::Metrics;

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn queue_depth_lua() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/policies/queue_depth.lua").to_owned()
}

/// N load targets on queue_depth.lua and the probe on the benchmarks'
/// policy (`p.lua`: depth / 100 replicas of the last value).
fn targets_toml(n: usize) -> String {
    let mut out = String::with_capacity(n * 120);
    let policy = queue_depth_lua();
    for i in 0..n {
        out.push_str(&format!(
            "[[targets]]\nname = \"t{i}\"\npolicy = \"{policy}\"\nmax_replicas = 10000\n\
             params = {{ per_replica_depth = 100 }}\n"
        ));
    }
    out.push_str(
        "[[targets]]\nname = \"probe\"\npolicy = \"p.lua\"\nmax_replicas = 10000\nstabilization_down = \"0s\"\n",
    );
    out
}

/// The load's publisher sends each millisecond's signals together
/// (`bench::drive_over_as`); SCALE_PIPELINE=0: one after another.
fn pipelined() -> bool {
    std::env::var("SCALE_PIPELINE").as_deref() != Ok("0")
}

/// The engine section; `SCALE_SHARDS` sets `engine.shards` (default: one
/// per core), `SCALE_TICK` `engine.tick` (default: the engine's, 1 s).
fn engine() -> String {
    let shards = std::env::var("SCALE_SHARDS").unwrap_or_else(|_| "0".into());
    let tick = std::env::var("SCALE_TICK").map_or(String::new(), |t| format!("tick = \"{t}\"\n"));
    format!(
        "\n[engine]\nmin_eval_interval = \"0s\"\ndrain_timeout = \"30s\"\nmax_event_age = \"30m\"\nshards = {shards}\n{tick}"
    )
}

fn rss_mb() -> f64 {
    rss_mb_of("self")
}

/// VmRSS of process `pid` ("self" for this one), in MB.
fn rss_mb_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The buckets of histogram `name` in a scrape, summed over its series:
/// (upper bound, cumulative count), by bound.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut by_le: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(le) = l.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let count: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0.0);
        let e = by_le.entry(bound.to_bits()).or_insert((bound, 0.0));
        e.1 += count;
    }
    let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The bucket bound (ms) under which a share `q` of the observations of
/// histogram `name` made between two scrapes fall: an upper bound of
/// that quantile.
fn quantile_between(before: &str, after: &str, name: &str, q: f64) -> f64 {
    let (b, a) = (buckets(before, name), buckets(after, name));
    let delta: Vec<(f64, f64)> = a
        .iter()
        .map(|&(le, n)| {
            let was = b.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            (le, n - was)
        })
        .collect();
    let total = delta.last().map_or(0.0, |x| x.1);
    delta
        .iter()
        .find(|x| x.1 >= q * total)
        .map_or(f64::NAN, |x| x.0 * 1000.0)
}

/// The sum of every sample of `name` in a scrape.
fn scraped_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0
}

struct Scrapes {
    /// The largest text, and its size as sent gzipped (what Prometheus
    /// asks for).
    largest_bytes: usize,
    largest_gzip: usize,
    slowest_ms: f64,
    count: usize,
}

/// Scrapes `/metrics` every 2 s until `stop` turns true. The largest
/// body is unzipped once at the end, for its size: a scrape costs the
/// machine what Prometheus' request costs, not the benchmark's unzipping.
async fn scrape_every_2s(port: u16, mut stop: tokio::sync::watch::Receiver<bool>) -> Scrapes {
    let client = reqwest::Client::new();
    let mut s = Scrapes {
        largest_gzip: 0,
        largest_bytes: 0,
        slowest_ms: 0.0,
        count: 0,
    };
    let mut largest = Vec::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        if std::env::var("SCALE_SCRAPE").as_deref() == Ok("0") {
            continue;
        }
        let at = Instant::now();
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .header("accept-encoding", "gzip")
            .send()
            .await
        {
            if let Ok(body) = r.bytes().await {
                s.slowest_ms = s.slowest_ms.max(at.elapsed().as_secs_f64() * 1000.0);
                if body.len() > largest.len() {
                    largest = body.to_vec();
                }
                s.count += 1;
            }
        }
    }
    let mut text = Vec::new();
    let _ = std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&largest[..]), &mut text);
    s.largest_gzip = largest.len();
    s.largest_bytes = text.len();
    s
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `dir/c.toml` and the probe's policy `dir/p.lua` beside it, for
/// [`Scaler::start`].
fn write_config(dir: &std::path::Path, toml: &str) {
    std::fs::write(dir.join("p.lua"), bench::policy()).unwrap();
    std::fs::write(dir.join("c.toml"), toml).unwrap();
}

/// The scaler measured: the `tidewatch run` binary as a process of its
/// own, as it is deployed: its own runtime and threads, in a session (and
/// so, on a host with autogroup scheduling, a scheduling group) of its
/// own, as a systemd unit or a container is. SCALE_PROCESS=same: a process
/// of its own in the benchmark's session (a diagnostic: the runtime
/// apart, the scheduling group shared); SCALE_PROCESS=0:
/// `tidewatch::scaler::run` in a task of the benchmark's own runtime,
/// which the publisher and the readers share (PERFORMANCE.md, "The
/// scaler in a process of its own").
enum Scaler {
    Task(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<tidewatch::scaler::RunReport>,
    ),
    /// The process, killed first when dropped, then its log shown if the
    /// benchmark is panicking.
    Process(common::Killed, LogOnPanic),
}

/// The scaler's log: its last lines go to stderr when the benchmark
/// panics with the scaler running (a scaler that never came up, a round
/// that failed), since the log's temporary directory goes with the panic.
struct LogOnPanic(std::path::PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        eprintln!(
            "the scaler's log ({}), its last {} of {} lines:",
            self.0.display(),
            lines.len() - from,
            lines.len()
        );
        for line in &lines[from..] {
            eprintln!("  {line}");
        }
    }
}

impl Scaler {
    /// The scaler of configuration file `dir/c.toml` (its policy beside
    /// it), with its metrics on the port returned.
    async fn start(dir: &std::path::Path) -> (u16, Self) {
        let file = dir.join("c.toml");
        let mode = std::env::var("SCALE_PROCESS").unwrap_or_default();
        if mode == "0" {
            let cfg = Config::load(&file).unwrap().0;
            let (port, stop, task) = start(cfg).await;
            return (port, Scaler::Task(stop, task));
        }
        let port = common::free_port();
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(
            &file,
            format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n{text}"),
        )
        .unwrap();
        let log_path = dir.join("scaler.log");
        let log = std::fs::File::create(&log_path).unwrap();
        // SCALE_BIN: another build of the scaler, to compare two builds
        // under the same benchmark
        let bin =
            std::env::var_os("SCALE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tidewatch").into());
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["run", "--config"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(log);
        let own_session = mode != "same";
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid and prctl are async-signal-safe and touch nothing
        // of the parent's between fork and exec
        unsafe {
            cmd.pre_exec(move || {
                if own_session {
                    libc::setsid();
                }
                // a benchmark stopped by a signal (no drop runs) takes its
                // scaler along: in a session of its own, a terminal's ^C
                // never reaches it
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = common::Killed(cmd.spawn().unwrap());
        (port, Scaler::Process(child, LogOnPanic(log_path)))
    }

    /// Its process id for /proc ("self" in a task).
    fn pid(&self) -> String {
        match self {
            Scaler::Task(..) => "self".into(),
            Scaler::Process(c, _) => c.0.id().to_string(),
        }
    }

    async fn stop(self) {
        match self {
            Scaler::Task(stop, task) => {
                stop.send(()).unwrap();
                task.await.unwrap();
            }
            Scaler::Process(child, log) => drop((child, log)),
        }
    }
}

/// `tidewatch run` in a task with its metrics on `port`.
async fn start(
    cfg: Config,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<tidewatch::scaler::RunReport>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let opts = tidewatch::scaler::RunOptions {
            metrics: Arc::new(Metrics::new()),
            listener: Some(listener),
            ..Default::default()
        };
        tidewatch::scaler::run(cfg, opts, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });
    (port, stop, task)
}

async fn wait_ready(port: u16) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ok = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One row of the reaction table.
struct Row {
    n: usize,
    ready_s: f64,
    p: [f64; 4],
    evaluations_per_s: f64,
    tick_ms: f64,
    scrapes: Scrapes,
    rss_mb: f64,
    /// The bystander's p99 (RabbitMQ): the broker's part alone.
    broker_p99: Option<f64>,
    /// Every probe's reaction in ms, sorted: the rounds' probes of one
    /// size are pooled for one p99 over all of them (`ratio`).
    lat: Vec<f64>,
}

/// Signals the rigs have published since the run's `measure` began (the
/// settle step compares it with what the scaler has received).
static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A publisher of load signals and a reader of probe commands, on one
/// broker.
trait Rig {
    fn publish(&self, target: String, depth: u64) -> futures::future::BoxFuture<'static, ()>;
}

/// After the warm-up, the same load (from the `first`th signal on) until
/// the start's wave is through: every target's first command (its first
/// signal asks for replicas it has not got) and the stand-in worker's
/// result for it. At 50,000 targets that is 50,000 commands and 50,000
/// results through the broker on top of the load, and on a slow machine
/// they outlast a fixed warm-up: the broker holds the publisher back
/// (flow control) and the first probes then wait seconds for it, which is
/// the start, not the steady state the reaction is measured in. Settled:
/// in the last second at most 1% of the signal rate in new commands, at
/// most that many commands unanswered, and the scaler's intake caught up
/// (it has received all but 50 ms of the signals sent before the check:
/// the results take the scaler's time too, and a backlog of signals left
/// behind them held up the first probes of the measured load by 0.3 to
/// 0.8 s at 50,000 targets); SCALE_SETTLE seconds at most (default 120;
/// 0 skips it). Prints how long it took.
async fn settle<R: Rig>(n: usize, rig: &R, port: u16, first: u64) {
    let limit = env_u64("SCALE_SETTLE", 120);
    if limit == 0 {
        return;
    }
    let rate = env_u64("SCALE_RATE", 5000);
    let slack = (rate / 100).max(1) as f64;
    // the check scrapes (megabytes at 50,000 targets) beside the load
    let (settled_tx, settled) = tokio::sync::watch::channel(None::<(f64, f64, f64)>);
    let checker = tokio::spawn(async move {
        let mut last = f64::NAN;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let sent = SENT.load(std::sync::atomic::Ordering::Relaxed) as f64;
            let text = scrape(port).await;
            let issued = scraped_sum(&text, "tidewatch_commands_issued_total");
            let answered = scraped_sum(&text, "tidewatch_results_received_total");
            let behind = sent - scraped_sum(&text, "tidewatch_events_received_total");
            if issued - last <= slack && issued - answered <= slack && behind <= rate as f64 / 20.0
            {
                let _ = settled_tx.send(Some((issued, answered, behind)));
                return;
            }
            last = issued;
        }
    });
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let pipelined = pipelined();
    while settled.borrow().is_none() && start.elapsed() < Duration::from_secs(limit) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        let mut batch = Vec::new();
        while sent < due {
            let signal = rig.publish(format!("t{}", (first + sent) % n.max(1) as u64), 500);
            if pipelined {
                batch.push(signal);
            } else {
                signal.await;
            }
            sent += 1;
        }
        futures::future::join_all(batch).await;
    }
    checker.abort();
    match *settled.borrow() {
        Some((issued, answered, behind)) => println!(
            "targets={n}: the start's wave settled {:.1} s after the warm-up ({issued:.0} commands issued, {answered:.0} results; intake {behind:.0} signals behind)",
            start.elapsed().as_secs_f64()
        ),
        None => println!("targets={n}: the start's wave had not settled after {limit} s of load more; measuring anyway"),
    };
}

/// The measured part, the same on both brokers: warm-up, load with
/// probes, scrapes beside, then the figures.
async fn measure<R: Rig>(
    n: usize,
    rig: &R,
    port: u16,
    pid: &str,
    started: Instant,
    mut probes_seen: tokio::sync::mpsc::UnboundedReceiver<(u32, Instant)>,
) -> Row {
    SENT.store(0, std::sync::atomic::Ordering::Relaxed);
    wait_ready(port).await;
    let ready_s = started.elapsed().as_secs_f64();
    // warm up: one probe command all the way round
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no warm-up command");
        rig.publish("probe".into(), 200).await;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), probes_seen.recv()).await
        {
            break;
        }
    }
    // the same load without probes first (SCALE_WARMUP seconds, default
    // 10): the first seconds of load fill every target's windows for the
    // first time (fresh memory, page faults) and are not the steady state
    let warmup = env_u64("SCALE_WARMUP", 10);
    if warmup > 0 {
        let rate = env_u64("SCALE_RATE", 5000);
        bench::drive_over_as(n, rate, warmup, pipelined(), |t, d| {
            if t == "probe" {
                Box::pin(async {}) as futures::future::BoxFuture<'static, ()>
            } else {
                rig.publish(t, d)
            }
        })
        .await;
        settle(n, rig, port, warmup * rate).await;
    }
    while probes_seen.try_recv().is_ok() {}
    PROBE_COMMANDS.lock().unwrap().clear();
    let before = scrape(port).await;
    let (stop_scrapes, scrapes_stop) = tokio::sync::watch::channel(false);
    // The scraper stands for a Prometheus outside the scaler: a thread and
    // a runtime of its own, so that reading and unzipping 2.6 MB never
    // holds up a worker of the runtime the scaler, the publisher and the
    // bystander share (it did: PERFORMANCE.md, "The scrape, and the
    // benchmark's own scraper").
    let scrapes = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scrape_every_2s(port, scrapes_stop))
    });
    let rate = env_u64("SCALE_RATE", 5000);
    let seconds = env_u64("SCALE_SECONDS", 20);
    let burner = Burner::from_env();
    let t0 = Instant::now();
    let driven =
        bench::drive_over_as(n, rate, seconds, pipelined(), |t, d| rig.publish(t, d)).await;
    let load_s = t0.elapsed().as_secs_f64();
    drop(burner);
    let after = scrape(port).await;
    let _ = stop_scrapes.send(true);
    let scrapes = tokio::task::spawn_blocking(move || scrapes.join().unwrap())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(Some(g)) = tokio::time::timeout(Duration::from_secs(3), probes_seen.recv()).await {
        got.push(g);
    }
    let outside = to_bystander(&driven.probes);
    if !outside.is_empty() {
        println!(
            "targets={n}: a probe from its publication to a bystander consumer (the broker's part, {} of {}) p50 {:.1} p90 {:.1} p99 {:.1} ms",
            outside.len(),
            driven.probes.len(),
            bench::percentile(&outside, 0.5),
            bench::percentile(&outside, 0.9),
            bench::percentile(&outside, 0.99),
        );
    }
    let (pre, issued) = split_at_issue(&driven.probes);
    if !issued.is_empty() && !pre.is_empty() {
        println!(
            "targets={n}: a probe from its publication to its command's issue p50 {:.0} p90 {:.0} p99 {:.0} ms; \
             from the issue to the reader p50 {:.0} p90 {:.0} p99 {:.0} ms (clock ms)",
            bench::percentile(&pre, 0.5),
            bench::percentile(&pre, 0.9),
            bench::percentile(&pre, 0.99),
            bench::percentile(&issued, 0.5),
            bench::percentile(&issued, 0.9),
            bench::percentile(&issued, 0.99)
        );
    }
    let mut lat = bench::reaction_ms(&driven.probes, &got);
    if std::env::var("SCALE_TRACE").is_ok() {
        // the families with the most lines in the last scrape
        let mut lines: std::collections::HashMap<&str, usize> = Default::default();
        for l in after.lines().filter(|l| !l.starts_with('#')) {
            *lines
                .entry(l.split(['{', ' ']).next().unwrap_or(""))
                .or_default() += 1;
        }
        let mut lines: Vec<_> = lines.into_iter().collect();
        lines.sort_by_key(|l| std::cmp::Reverse(l.1));
        println!(
            "targets={n}: the scrape's largest families: {:?}",
            &lines[..lines.len().min(5)]
        );
        // the worst reaction in each second of load, in order
        let per_s: Vec<String> = lat
            .chunks(50)
            .map(|c| format!("{:.0}", c.iter().cloned().fold(0.0, f64::max)))
            .collect();
        println!("targets={n}: worst per second: {}", per_s.join(" "));
        // the slow probes on the wall clock, to lay beside samples taken
        // outside (CPU, the broker's state)
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            - t0.elapsed().as_secs_f64();
        let slow: Vec<String> = driven
            .probes
            .iter()
            .zip(&lat)
            .filter(|(_, ms)| **ms > 100.0)
            .map(|((_, at), ms)| {
                format!("{:.2}:{ms:.0}", wall + at.duration_since(t0).as_secs_f64())
            })
            .collect();
        println!(
            "targets={n}: load from {wall:.2} (unix s); probes over 100 ms (at:ms): {}",
            slow.join(" ")
        );
    }
    assert!(!lat.is_empty(), "no probe command matched");
    lat.sort_by(f64::total_cmp);
    let q = |x| bench::percentile(&lat, x);
    let delta = |name: &str| scraped_sum(&after, name) - scraped_sum(&before, name);
    let row = Row {
        n,
        ready_s,
        p: [q(0.5), q(0.9), q(0.99), *lat.last().unwrap()],
        evaluations_per_s: delta("tidewatch_policy_evaluations_total") / load_s,
        tick_ms: delta("tidewatch_engine_tick_seconds_sum")
            / delta("tidewatch_engine_tick_seconds_count").max(1.0)
            * 1000.0,
        scrapes,
        rss_mb: rss_mb_of(pid),
        broker_p99: (!outside.is_empty()).then(|| bench::percentile(&outside, 0.99)),
        lat,
    };
    // the scaler's part: from the signal's `ts` to the command's issue
    let inside = "tidewatch_signal_to_command_seconds";
    println!(
        "targets={}: commands {:.0}/s, results {:.0}/s, forecaster refits {:.0}/s (lag at the end {:.0} s), snapshots {:.0}/s; signal ts -> command issued p50 <= {} ms, p99 <= {} ms",
        n,
        delta("tidewatch_commands_issued_total") / load_s,
        delta("tidewatch_results_received_total") / load_s,
        delta("tidewatch_forecast_refits_total") / load_s,
        scraped_sum(&after, "tidewatch_forecast_refit_lag_seconds"),
        delta("tidewatch_state_snapshots_total") / load_s,
        quantile_between(&before, &after, inside, 0.5),
        quantile_between(&before, &after, inside, 0.99),
    );
    println!(
        "targets={} ready {:.1} s; sent {:.0}/s; probes {} matched {}; reaction p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms; \
         evaluations {:.0}/s; tick {:.1} ms; largest scrape {:.2} MB of text, {:.2} MB gzipped, in {:.0} ms ({} scrapes); RSS {:.0} MB",
        row.n,
        row.ready_s,
        driven.sent as f64 / driven.load_s,
        driven.probes.len(),
        row.lat.len(),
        row.p[0],
        row.p[1],
        row.p[2],
        row.p[3],
        row.evaluations_per_s,
        row.tick_ms,
        row.scrapes.largest_bytes as f64 / 1e6,
        row.scrapes.largest_gzip as f64 / 1e6,
        row.scrapes.slowest_ms,
        row.scrapes.count,
        row.rss_mb
    );
    row
}

struct AmqpRig {
    ch: lapin::Channel,
    exchange: String,
}

impl Rig for AmqpRig {
    fn publish(&self, target: String, depth: u64) -> futures::future::BoxFuture<'static, ()> {
        let (ch, exchange) = (self.ch.clone(), self.exchange.clone());
        SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            let _ = ch
                .basic_publish(
                    &exchange,
                    &format!("queue_depth.{target}"),
                    Default::default(),
                    bench::signal(&target, depth).as_bytes(),
                    BasicProperties::default(),
                )
                .await;
        })
    }
}

async fn reaction_amqp(n: usize) -> Row {
    let url = std::env::var("TIDEWATCH_TEST_AMQP")
        .expect("set TIDEWATCH_TEST_AMQP (scripts/bench-scale starts RabbitMQ)");
    let names = Names::new();
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &format!(
            "{}{}{}{}",
            names.toml(&url),
            engine(),
            wave_state(n, dir.path()),
            targets_toml(n)
        ),
    );
    let started = Instant::now();
    let (port, scaler) = Scaler::start(dir.path()).await;
    let conn = mq::connect(&url).await;
    // the scaler declares it once its targets are built: with every
    // target's state restored (SCALE_REFIT_WAVE) that was 15 to 29 s
    mq::wait_for_queue_within(&conn, &names.workers, Duration::from_secs(120)).await;
    let mut commands = mq::consume_no_ack(&conn, &names.workers, "bench-reader").await;
    let (seen, probes_seen) = tokio::sync::mpsc::unbounded_channel();
    // the stand-in worker, on a task of its own so that the reader only
    // reads: every command applied at once, a result at its desired count
    let (work, mut todo) = tokio::sync::mpsc::unbounded_channel::<ScaleCommand>();
    let (results, exchange) = (conn.create_channel().await.unwrap(), names.results.clone());
    tokio::spawn(async move {
        while let Some(c) = todo.recv().await {
            let _ = results
                .basic_publish(
                    &exchange,
                    &format!("{}.{}", c.provider, c.target),
                    Default::default(),
                    &applied(&c),
                    BasicProperties::default(),
                )
                .await;
        }
    });
    tokio::spawn(async move {
        while let Some(Ok(d)) = commands.next().await {
            let at = Instant::now();
            let c: ScaleCommand = serde_json::from_slice(&d.data).unwrap();
            if c.target == "probe" {
                after_issue(&c);
                if seen.send((c.desired_replicas, at)).is_err() {
                    break;
                }
            } else if std::env::var("SCALE_TRACE_CMD").is_ok() && one_in(200) {
                println!(
                    "cmd {} {}->{} gen {} {:?}",
                    c.target, c.current_replicas, c.desired_replicas, c.generation, c.reason
                );
            }
            let _ = work.send(c);
        }
    });
    BYSTANDER.lock().unwrap().clear();
    let bystander = bystander(&url, &names.signals).await;
    let rig = AmqpRig {
        ch: conn.create_channel().await.unwrap(),
        exchange: names.signals.clone(),
    };
    let row = measure(n, &rig, port, &scaler.pid(), started, probes_seen).await;
    bystander.abort();
    scaler.stop().await;
    names.delete(&conn.create_channel().await.unwrap()).await;
    row
}

/// A stand-in for a big tick's CPU, beside a small run (a diagnostic:
/// PERFORMANCE.md, "The machine's speed decides the tail"). SCALE_BURN=F:
/// two threads, each busy F of every millisecond (the tick's slices are
/// about 0.3 ms, at most one a millisecond per shard); SCALE_BURN_MB=M:
/// while busy, each reads cache lines at random from M MB of its own (the
/// targets' memory a tick walks through), else a few registers;
/// SCALE_BURN_IDLE=1: the threads in SCHED_IDLE, so that anything else
/// runnable goes first.
struct Burner {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Burner {
    fn from_env() -> Option<Self> {
        let share: f64 = std::env::var("SCALE_BURN").ok()?.parse().ok()?;
        let mb = env_u64("SCALE_BURN_MB", 0) as usize;
        let idle = std::env::var("SCALE_BURN_IDLE").as_deref() == Ok("1");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy = Duration::from_secs_f64(share.clamp(0.0, 1.0) / 1000.0);
        let threads = (0..2)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    if idle {
                        let p = libc::sched_param { sched_priority: 0 };
                        // SAFETY: this thread's own policy; a plain struct
                        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) };
                    }
                    let lines = (mb << 20) / 64;
                    let memory = vec![1u64; lines.max(1) * 8];
                    let (mut x, mut sum) = (0x9E37_79B9_7F4A_7C15u64 ^ i, 0u64);
                    let mut next = Instant::now();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let until = Instant::now() + busy;
                        while Instant::now() < until {
                            for _ in 0..64 {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                sum = sum.wrapping_add(if lines > 1 {
                                    memory[(x as usize % lines) * 8]
                                } else {
                                    x
                                });
                            }
                        }
                        next += Duration::from_millis(1);
                        if let Some(rest) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(rest);
                        } else {
                            next = Instant::now();
                        }
                    }
                    sum
                })
            })
            .collect();
        println!(
            "burner: 2 threads, {share} of each ms, {mb} MB each, {}",
            if idle { "SCHED_IDLE" } else { "SCHED_OTHER" }
        );
        Some(Self { stop, threads })
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Probes as an outside consumer sees them: (depth, arrival), from a
/// queue of its own bound to the probe's routing key. Their arrival
/// against their publication is the broker's part of the reaction (the
/// publisher, RabbitMQ and a consumer's connection, on the same machine),
/// which the scaler does not take part in.
static BYSTANDER: std::sync::Mutex<Vec<(u64, Instant)>> = std::sync::Mutex::new(Vec::new());

async fn bystander(url: &str, exchange: &str) -> tokio::task::JoinHandle<()> {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    let conn = mq::connect(url).await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let q = q.name().as_str().to_owned();
    ch.queue_bind(
        &q,
        exchange,
        "queue_depth.probe",
        QueueBindOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let mut seen = mq::consume_no_ack(&conn, &q, "bystander").await;
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(d)) = seen.next().await {
            let at = Instant::now();
            let depth = serde_json::from_slice::<serde_json::Value>(&d.data)
                .ok()
                .and_then(|v| v["depth"].as_u64());
            if let Some(depth) = depth {
                BYSTANDER.lock().unwrap().push((depth, at));
            }
        }
    })
}

/// Ms from each probe's publication to the bystander's receipt of it,
/// sorted (the last publication of a depth: the warm-up's probes repeat
/// the depths of the measured ones).
fn to_bystander(probes: &[(u32, Instant)]) -> Vec<f64> {
    let seen = BYSTANDER.lock().unwrap();
    let mut out: Vec<f64> = probes
        .iter()
        .filter_map(|(k, at)| {
            let depth = u64::from(*k) * 100;
            seen.iter()
                .filter(|(d, got)| *d == depth && got >= at)
                .map(|(_, got)| got.duration_since(*at).as_secs_f64() * 1000.0)
                .reduce(f64::min)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

struct KafkaRig {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
}

impl Rig for KafkaRig {
    fn publish(&self, target: String, depth: u64) -> futures::future::BoxFuture<'static, ()> {
        let (p, topic) = (self.producer.clone(), self.topic.clone());
        SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            let body = bench::signal(&target, depth);
            // queued, not awaited: a steady stream, as gateways produce
            let _ = p.send_result(
                rdkafka::producer::FutureRecord::to(&topic)
                    .key(&target)
                    .payload(&body),
            );
        })
    }
}

async fn reaction_kafka(n: usize) -> Row {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    for (t, parts) in [
        ("signals", 3),
        ("commands", 1),
        ("results", 1),
        ("tidewatch.deadletter", 1),
        ("tidewatch.state", 1),
    ] {
        mock.create_topic(t, parts, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    // SCALE_REFIT_WAVE: every target's snapshot in a state directory, as
    // on RabbitMQ (a Kafka start then restores at its first assignment)
    let state = match wave_state(n, dir.path()) {
        s if s.is_empty() => "[state]\nstore = \"none\"\n".to_owned(),
        s => s,
    };
    let toml = format!(
        "[source]\nkind = \"kafka\"\nkafka = {{ brokers = \"{brokers}\", topics = [\"signals\"], group_id = \"scale\", options = {{ \"fetch.wait.max.ms\" = \"5\" }} }}\n\
         [commands]\nkind = \"kafka\"\nkafka = {{ brokers = \"{brokers}\", topic = \"commands\", results_topic = \"results\" }}\n\
         {state}{}{}",
        engine(),
        targets_toml(n)
    );
    write_config(dir.path(), &toml);
    let started = Instant::now();
    let (port, scaler) = Scaler::start(dir.path()).await;
    let commands = common::kafka::reader(&brokers, "commands");
    let (seen, probes_seen) = tokio::sync::mpsc::unbounded_channel();
    let results = common::kafka::producer(&brokers);
    tokio::spawn(async move {
        loop {
            let Ok(m) = commands.recv().await else {
                continue;
            };
            let at = Instant::now();
            let Some(body) = m.payload() else { continue };
            let c: ScaleCommand = serde_json::from_slice(body).unwrap();
            if c.target == "probe" {
                after_issue(&c);
                if seen.send((c.desired_replicas, at)).is_err() {
                    break;
                }
            }
            // the stand-in worker: every command applied at once
            let result = applied(&c);
            let _ = results.send_result(
                rdkafka::producer::FutureRecord::to("results")
                    .key(&c.target)
                    .payload(&result),
            );
        }
    });
    let producer: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        // librdkafka's default linger (SCALE_LINGER_MS=0: a request per
        // message, which the mock cluster serves ever slower: it finds a
        // fetch's offset by a scan of every message set it keeps)
        .set(
            "linger.ms",
            std::env::var("SCALE_LINGER_MS").as_deref().unwrap_or("5"),
        )
        .create()
        .unwrap();
    let rig = KafkaRig {
        producer,
        topic: "signals".into(),
    };
    let row = measure(n, &rig, port, &scaler.pid(), started, probes_seen).await;
    scaler.stop().await;
    row
}

/// True once in `n` calls.
fn one_in(n: u64) -> bool {
    static C: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    C.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(n)
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Each probe command read: its desired replicas, its issue (its
/// generation is the engine's clock at the issue) and its arrival at the
/// reader, in ms of the wall clock, in the order read.
static PROBE_COMMANDS: std::sync::Mutex<Vec<(u32, i64, i64)>> = std::sync::Mutex::new(Vec::new());

fn after_issue(c: &ScaleCommand) {
    PROBE_COMMANDS
        .lock()
        .unwrap()
        .push((c.desired_replicas, c.generation, wall_ms()));
}

/// The probes' reaction split at the command's issue, each sorted: ms
/// from each probe's publication to the issue of the first command that
/// reflects it (paired as [`bench::reaction_ms`] pairs them), and ms
/// from each probe command's issue to the reader.
fn split_at_issue(probes: &[(u32, Instant)]) -> (Vec<f64>, Vec<f64>) {
    let read = PROBE_COMMANDS.lock().unwrap();
    let (now, wall) = (Instant::now(), wall_ms());
    let mut before = Vec::new();
    let mut j = 0;
    for (k, at) in probes {
        let at_ms = wall - now.duration_since(*at).as_millis() as i64;
        while j < read.len() && (read[j].0 < *k || read[j].1 < at_ms - 1) {
            j += 1;
        }
        if j < read.len() {
            before.push((read[j].1 - at_ms) as f64);
        }
    }
    let mut after: Vec<f64> = read
        .iter()
        .map(|&(_, issued, at)| (at - issued) as f64)
        .collect();
    before.sort_by(f64::total_cmp);
    after.sort_by(f64::total_cmp);
    (before, after)
}

/// A stand-in worker's result for `c`: applied, at its desired count.
fn applied(c: &ScaleCommand) -> Vec<u8> {
    serde_json::json!({
        "version": 1, "command_id": c.id, "target": c.target, "generation": c.generation,
        "status": "applied", "observed_replicas": c.desired_replicas, "error": null,
        "worker": "bench", "finished_at": "2026-12-02T00:00:00Z"
    })
    .to_string()
    .into_bytes()
}

fn ratio(rows: &[Row], sizes: usize) {
    let rounds: Vec<&[Row]> = rows.chunks(sizes.max(1)).collect();
    let (Some(first), Some(last)) = (rows.first(), rows.get(sizes.max(1) - 1)) else {
        return;
    };
    if sizes < 2 {
        return;
    }
    // each round's sizes run back to back, so a round's ratio compares
    // like conditions on a machine whose speed moves from minute to minute
    let mut ratios = Vec::new();
    for (i, round) in rounds.iter().enumerate() {
        let (a, b) = (&round[0], &round[round.len() - 1]);
        let r = b.p[2] / a.p[2];
        ratios.push(r);
        // a tick's work on one shard over that shard's targets: each is
        // evaluated once a tick, whatever the tick's length (the events'
        // evaluations are not in the tick's time)
        let per_call = |row: &Row| row.tick_ms * 1000.0 * shards() / (row.n.max(1) as f64);
        println!(
            "round {}: p99 at {} targets / p99 at {} targets = {:.2} ({:.2} / {:.2} ms; the broker's part alone p99 {} / {}; \
             tick {:.1} / {:.1} us a call)",
            i + 1,
            b.n,
            a.n,
            r,
            b.p[2],
            a.p[2],
            b.broker_p99.map_or("-".into(), |p| format!("{p:.1}")),
            a.broker_p99.map_or("-".into(), |p| format!("{p:.1} ms")),
            per_call(b),
            per_call(a),
        );
    }
    if rounds.len() > 1 {
        // of an even count, the mean of the middle two
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => f64::NAN,
                n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
                n => v[n / 2],
            }
        };
        let of = |n: usize| median(rows.iter().filter(|r| r.n == n).map(|r| r.p[2]).collect());
        println!(
            "{} rounds: median p99 {:.2} ms at {} targets, {:.2} ms at {} targets; median of the rounds' ratios {:.2}",
            rounds.len(),
            of(last.n),
            last.n,
            of(first.n),
            first.n,
            median(ratios)
        );
        // The sizes alternate, so pooled they saw the same spells of the
        // machine: one slow spell is a share of a size's tail, not the
        // whole of one round's.
        let pooled = |n: usize| {
            let mut all: Vec<f64> = rows
                .iter()
                .filter(|r| r.n == n)
                .flat_map(|r| r.lat.iter().copied())
                .collect();
            all.sort_by(f64::total_cmp);
            let q = |x| bench::percentile(&all, x);
            (all.len(), [q(0.5), q(0.9), q(0.99)])
        };
        let ((na, a), (nb, b)) = (pooled(first.n), pooled(last.n));
        println!(
            "{} rounds pooled: at {} targets ({} probes) p50 {:.2} p90 {:.2} p99 {:.2} ms; at {} targets ({} probes) \
             p50 {:.2} p90 {:.2} p99 {:.2} ms; p99 ratio {:.2} (p50 {:.2}, p90 {:.2})",
            rounds.len(),
            last.n,
            nb,
            b[0],
            b[1],
            b[2],
            first.n,
            na,
            a[0],
            a[1],
            a[2],
            b[2] / a[2],
            b[0] / a[0],
            b[1] / a[1],
        );
    }
}

/// The engine's shards in the reaction runs (`SCALE_SHARDS`, else one
/// per core), as the engine counts them.
fn shards() -> f64 {
    let engine = tidewatch::engine::EngineConfig {
        shards: env_u64("SCALE_SHARDS", 0) as usize,
        ..Default::default()
    };
    tidewatch::engine::shards::count(&engine) as f64
}

/// 8 days of queue depth at a minute for one target, evaluated hourly
/// with refits inline; its snapshot restored into N targets.
fn memory(n: usize) {
    use tidewatch::event::Metric;
    let (mut engine, end) = restored_with(n, default_metrics());
    // a signal each, so the policies have windows to read
    for i in 0..n {
        engine.record(&format!("t{i}"), Metric::QueueDepth, end, 1000.0);
    }
    let t3 = Instant::now();
    engine.tick(end + 1000);
    let tick_s = t3.elapsed().as_secs_f64();
    let t4 = Instant::now();
    for k in 2..12 {
        engine.tick(end + k * 1000);
    }
    let ticks_s = t4.elapsed().as_secs_f64() / 10.0;
    println!(
        "memory: a tick of {n} targets with data: {:.0} ms ({:.1} us a target)",
        ticks_s * 1000.0,
        ticks_s * 1e6 / n as f64
    );
    println!(
        "memory: one evaluation of every target in {tick_s:.1} s: {:.0} MB",
        rss_mb()
    );
}

/// The refit wave: right after a restart every restored forecaster falls
/// due at its first sync (the snapshots here are copies of one, so all at
/// once). For SCALE_SECONDS of real time the engine runs its tick in
/// slices, and after each slice decides one target that just got a
/// signal; the times of both, and what the refit pool did meanwhile.
/// The engine's tick in slices back to back for `seconds`, after each
/// slice one target's signal taken and decided: the slices' and the
/// decisions' times (ms), and the commands.
fn slices_for(
    engine: &mut tidewatch::engine::Engine,
    n: usize,
    start: i64,
    seconds: u64,
) -> (Vec<f64>, Vec<f64>, usize) {
    let parts = engine.tick_parts(Duration::from_secs(1));
    let step = 1000 / parts as i64;
    let (mut slices, mut decisions) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let mut now = start + 1000;
    let mut part = 0;
    let mut depth = 1000;
    let mut evaluated = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let t = Instant::now();
        engine.tick_part(now, part, parts);
        slices.push(t.elapsed().as_secs_f64() * 1000.0);
        part = (part + 1) % parts;
        depth += 100;
        let probe = format!("t{}", (now / step) as usize % n);
        let t = Instant::now();
        engine.ingest("bench", bench::signal(&probe, depth).as_bytes(), now);
        evaluated += engine.on_events(now).len();
        decisions.push(t.elapsed().as_secs_f64() * 1000.0);
        now += step;
    }
    (slices, decisions, evaluated)
}

fn refit_wave(n: usize) {
    use tidewatch::event::Metric;
    // SCALE_SHARDS=2: two engines of n / 2 targets sharing one set of
    // metrics, each on a thread of its own, as `engine.shards = 2` runs
    // them (the figures are the two shards' together)
    let shards = env_u64("SCALE_SHARDS", 1).max(1) as usize;
    let metrics = default_metrics();
    let mut engines = Vec::new();
    let mut end = 0;
    for _ in 0..shards {
        let (e, at) = restored_with(n / shards, metrics.clone());
        engines.push(e);
        end = at;
    }
    // six hours on: every restored model's refit is due (all were fitted
    // at the same moment, being copies)
    // (SCALE_WAVE=0: a minute on, nothing due, for comparison)
    let wave = std::env::var("SCALE_WAVE").as_deref() != Ok("0");
    let start = end + if wave { 6 * 3_600_000 } else { 0 } + 60_000;
    for engine in &mut engines {
        for i in 0..n / shards {
            engine.record(&format!("t{i}"), Metric::QueueDepth, start, 1000.0);
        }
    }
    let pool = tidewatch::forecast::pool::pool();
    let deferred0 = pool.deferred();
    let seconds = env_u64("SCALE_SECONDS", 20);
    // targets a slice evaluates, for the tick's time a call
    let per_slice = (n / shards) as f64 / engines[0].tick_parts(Duration::from_secs(1)) as f64;
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = engines
            .iter_mut()
            .map(|engine| s.spawn(move || slices_for(engine, n / shards, start, seconds)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (mut slices, mut decisions, mut evaluated) = (Vec::new(), Vec::new(), 0);
    for (s, d, e) in runs {
        slices.extend(s);
        decisions.extend(d);
        evaluated += e;
    }
    let q = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (
            bench::percentile(v, 0.5),
            bench::percentile(v, 0.99),
            *v.last().unwrap_or(&f64::NAN),
        )
    };
    let per_call_us = slices.iter().sum::<f64>() * 1000.0 / (slices.len() as f64 * per_slice);
    let (s50, s99, smax) = q(&mut slices);
    let (d50, d99, dmax) = q(&mut decisions);
    println!(
        "refit wave: {n} targets in {shards} shard(s), {}, {seconds} s: {} slices p50 {s50:.2} p99 {s99:.2} max {smax:.2} ms, {per_call_us:.2} us a target; \
         a signal taken and decided p50 {d50:.3} p99 {d99:.3} max {dmax:.3} ms ({evaluated} commands); refits turned away meanwhile {} (queue full), running at the end {}",
        if wave { "every forecaster due at once" } else { "no refit due (SCALE_WAVE=0)" },
        slices.len(),
        pool.deferred() - deferred0,
        pool.running()
    );
    if std::env::var("SCALE_TRACE").is_ok() {
        for l in metrics.render().lines() {
            if l.starts_with("tidewatch_policy_evaluation_seconds") {
                println!("{l}");
            }
        }
    }
}

/// One target on queue_depth.lua fed 8 days at a minute up to `end`
/// (virtual clock) and evaluated hourly with its refits inline: its
/// configuration and its snapshot (history and a fitted forecaster).
fn seed_snapshot(
    end: i64,
) -> (
    tidewatch::engine::TargetConfig,
    tidewatch::state::TargetSnapshot,
) {
    use tidewatch::engine::{Engine, EngineConfig, TargetConfig};
    use tidewatch::event::Metric;
    const MIN: i64 = 60_000;
    let days = 8;
    let start_ms = end - days * 24 * 60 * MIN;
    let mut t = TargetConfig::new("seed", queue_depth_lua().into(), "exec", 1, 10_000);
    t.params
        .insert("per_replica_depth".into(), serde_json::json!(100));
    let engine_cfg = EngineConfig::default();
    let t0 = Instant::now();
    let mut seed = Engine::new(
        &engine_cfg,
        std::slice::from_ref(&t),
        Arc::new(Metrics::new()),
        start_ms,
    )
    .unwrap();
    seed.set_refit_mode(tidewatch::forecast::builtin::RefitMode::Inline);
    let mut ts = start_ms;
    let mut x: u64 = 1;
    while ts < end {
        let day = ((ts - start_ms) % (24 * 60 * MIN)) as f64 / (24.0 * 60.0 * MIN as f64);
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = (x >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
        let depth = 1000.0 + 800.0 * (std::f64::consts::TAU * day).sin() + 100.0 * noise;
        seed.record("seed", Metric::QueueDepth, ts, depth.max(0.0));
        if (ts - start_ms) % (60 * MIN) == 0 {
            seed.tick(ts);
        }
        ts += MIN;
    }
    seed.tick(end);
    let snapshot = seed.snapshot("seed", end, "bench").unwrap();
    let history_points: usize = snapshot.histories.iter().map(|(_, h)| h.len()).sum();
    println!(
        "memory: one target fed {days} days at a minute in {:.1} s (virtual clock); its snapshot holds {} history points and {} forecaster(s)",
        t0.elapsed().as_secs_f64(),
        history_points,
        snapshot.forecasters.len()
    );
    (t, snapshot)
}

/// With SCALE_REFIT_WAVE=1: a `[state]` section on a directory in `dir`
/// holding a snapshot for each of the N targets, copies of one whose
/// history and forecaster end a day ago, so that every forecaster's
/// refit is due as soon as the scaler has restored them; =0: the same a
/// minute old, nothing due. Else nothing.
fn wave_state(n: usize, dir: &std::path::Path) -> String {
    let ago = match std::env::var("SCALE_REFIT_WAVE").as_deref() {
        // a day ago: every refit is due (they fall due every 6 h), and
        // the daily curve is where it was a day ago, so the forecasts ask
        // what they ask a minute after the state was taken (six hours
        // would move every copy's forecast at once: a storm of commands,
        // not a refit wave)
        Ok("1") => 24 * 3_600_000 + 60_000,
        // the same state with nothing due, for comparison
        Ok("0") => 60_000,
        _ => return String::new(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (_, mut snapshot) = seed_snapshot(now - ago);
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let t0 = Instant::now();
    let mut bytes = 0;
    for i in 0..n {
        snapshot.target = format!("t{i}");
        let encoded = snapshot.encode();
        bytes += encoded.len();
        std::fs::write(state.join(format!("t{i}.tws")), encoded).unwrap();
    }
    println!(
        "refit wave: {n} snapshots ({:.0} MB) written in {:.1} s, each forecaster fitted {} min ago",
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64(),
        ago / 60_000
    );
    // snapshots written every SCALE_STATE_INTERVAL (default 1h: none
    // during the load, so that the wave is measured alone; 50,000
    // snapshots of 53 KB every 30 s, the default, are a load of their own)
    let interval = std::env::var("SCALE_STATE_INTERVAL").unwrap_or_else(|_| "1h".into());
    format!(
        "\n[state]\nstore = \"dir\"\ndir = \"{}\"\ninterval = \"{interval}\"\n",
        state.display()
    )
}

/// Metrics at the detail `run` has by default.
fn default_metrics() -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::new());
    metrics.set_per_target(tidewatch::telemetry::PerTarget::default());
    metrics
}

/// An engine of N targets on queue_depth.lua, each with 8 days of history
/// and a fitted forecaster: one target fed 8 days at a minute and
/// evaluated hourly (refits inline), its snapshot restored into all N.
/// Returns the engine (its metrics `metrics`) and the time the history
/// ends.
fn restored_with(n: usize, metrics: Arc<Metrics>) -> (tidewatch::engine::Engine, i64) {
    use tidewatch::engine::{Engine, EngineConfig, TargetConfig};
    let end: i64 = 1_764_000_000_000 + 8 * 24 * 3_600_000;
    let (t, snapshot) = seed_snapshot(end);
    let engine_cfg = EngineConfig::default();
    let rss0 = rss_mb();
    let targets: Vec<TargetConfig> = (0..n)
        .map(|i| {
            let mut c = t.clone();
            c.name = format!("t{i}");
            c
        })
        .collect();
    let t1 = Instant::now();
    let mut engine = Engine::new(&engine_cfg, &targets, metrics, end).unwrap();
    let built_s = t1.elapsed().as_secs_f64();
    let rss1 = rss_mb();
    let t2 = Instant::now();
    let mut s = snapshot;
    for i in 0..n {
        s.target = format!("t{i}");
        engine.restore(&s);
    }
    let restored_s = t2.elapsed().as_secs_f64();
    let rss2 = rss_mb();
    println!(
        "memory: {n} targets: before {:.0} MB; built in {built_s:.1} s: {:.0} MB; 8 days of history restored into each in {restored_s:.1} s: {:.0} MB",
        rss0, rss1, rss2
    );
    (engine, end)
}

/// Sends a queue-depth signal to each of `targets` and says how many the
/// scaler (metrics on `port`) received, and how soon: at most 10 s.
async fn served_at_ready(url: &str, signals: &str, port: u16, targets: &[String]) -> String {
    // the bench sends nothing else: every event received is one of these
    let received = |text: &str| scraped_sum(text, "tidewatch_events_received_total");
    let before = received(&scrape(port).await);
    let conn = mq::connect(url).await;
    let ch = mq::confirm_channel(&conn).await;
    let messages: Vec<(String, String)> = targets
        .iter()
        .map(|t| (format!("queue_depth.{t}"), mq::depth_signal(t, 500)))
        .collect();
    let t0 = Instant::now();
    mq::publish_all(&ch, signals, &messages).await;
    let want = targets.len() as f64;
    let mut got = 0.0;
    while t0.elapsed() < Duration::from_secs(10) {
        got = received(&scrape(port).await) - before;
        if got >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = conn.close(200, "sent").await;
    format!(
        "{got} of {want} received within {:.2} s",
        t0.elapsed().as_secs_f64()
    )
}

/// `tidewatch run` with N targets and one binding each (16 slots):
/// seconds to `/readyz` on fresh queues, then with the bindings in place;
/// at ready, a signal to every 50th target, bound yet or not, and how
/// many of them reach the engine.
async fn startup(n: usize) {
    let url = std::env::var("TIDEWATCH_TEST_AMQP")
        .expect("set TIDEWATCH_TEST_AMQP (scripts/bench-scale starts RabbitMQ)");
    let names = Names::new();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    // with the management API, a restart lists the bindings in place
    let listed = std::env::var("TIDEWATCH_TEST_AMQP_MANAGEMENT")
        .map(|m| format!(", management_url = \"{m}\""))
        .unwrap_or_default();
    let toml = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n{}{}{}",
        names.toml(&url).replace(
            "prefetch = 500",
            &format!("prefetch = 500, slots = 16{listed}")
        ),
        engine(),
        targets_toml(n)
    );
    write_config(dir.path(), &toml);
    for round in ["fresh queues", "bindings in place"] {
        let t0 = Instant::now();
        let child = common::spawn_run(&dir.path().join("c.toml"), None);
        wait_ready(port).await;
        let ready = t0.elapsed().as_secs_f64();
        let at_ready = scraped_sum(&scrape(port).await, "tidewatch_source_bindings_pending");
        // a signal for every 50th target, bound yet or not, sent at ready:
        // how many reach the engine (before the catch-all, those of targets
        // not bound yet were dropped by the exchange)
        let sample: Vec<String> = (0..n).step_by(50).map(|i| format!("t{i}")).collect();
        let served = served_at_ready(&url, &names.signals, port, &sample).await;
        // a first start goes on binding after it is ready
        let mut text = scrape(port).await;
        while scraped_sum(&text, "tidewatch_source_bindings_pending") > 0.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            text = scrape(port).await;
        }
        let bound = t0.elapsed().as_secs_f64();
        let rss_mb = rss_mb_of(&child.0.id().to_string());
        println!(
            "startup: {n} targets, one binding each ({round}): ready in {ready:.1} s with {at_ready} bindings still to make; signals sent at ready to {} targets: {served}; every target bound at {bound:.1} s; bindings declared {}; RSS {:.0} MB; idle scrape {:.2} MB",
            sample.len(),
            scraped_sum(&text, "tidewatch_source_bindings_declared_total"),
            rss_mb,
            text.len() as f64 / 1e6
        );
        drop(child);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let conn = mq::connect(&url).await;
    let ch = conn.create_channel().await.unwrap();
    for k in 0..16 {
        let _ = ch
            .queue_delete(&format!("{}.{k}", names.queue), Default::default())
            .await;
    }
    names.delete(&ch).await;
}

/// A scrape's text for `n` targets (see the module's text).
fn scrape_text(n: usize) {
    use tidewatch::guard::{Decision, Direction};
    let m = default_metrics();
    let moved = Decision {
        current: 1,
        desired: 2,
        direction: Direction::Up,
        held: None,
        dry_run: false,
        reason: String::new(),
    };
    for i in 0..n {
        let t = format!("t{i}");
        m.target_configured(&t, 1);
        m.decided(&t, &moved);
        // one in ten not answered yet: its observed count differs
        m.target_observed(&t, if i % 10 == 0 { 1 } else { 2 }, Some(2));
    }
    let (mut render, mut zip, mut encoder) = (Vec::new(), Vec::new(), Vec::new());
    let (mut text, mut gz_len) = (String::new(), 0);
    for _ in 0..20 {
        // every series through the `prometheus` crate's encoder, as
        // `render` did before it wrote the per-target gauges itself
        let at = Instant::now();
        let mut via = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &m.registry().gather(),
            &mut via,
        )
        .unwrap();
        encoder.push(at.elapsed().as_secs_f64() * 1000.0);
        let at = Instant::now();
        text = m.render();
        render.push(at.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(text.len(), via.len(), "the same series either way");
        let at = Instant::now();
        gz_len = tidewatch::telemetry::gzipped(text.as_bytes()).len();
        zip.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    let q = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (bench::percentile(v, 0.5), *v.last().unwrap_or(&f64::NAN))
    };
    let ((r50, rmax), (z50, zmax)) = (q(&mut render), q(&mut zip));
    let (e50, emax) = q(&mut encoder);
    println!(
        "scrape: {n} targets, {:.2} MB of text ({} lines), {:.2} MB gzipped; render p50 {r50:.1} max {rmax:.1} ms \
         (through the crate's encoder: p50 {e50:.1} max {emax:.1} ms), gzip p50 {z50:.1} max {zmax:.1} ms",
        text.len() as f64 / 1e6,
        text.lines().count(),
        gz_len as f64 / 1e6,
    );
}

/// The series every policy call moves, from one and from two threads at
/// once (two engine shards on two cores): straight into the shared series
/// (`Metrics`, as every call did before) and through a shard's `Tally`,
/// flushed every 32 calls (a slice). Nanoseconds a call, each thread.
fn tally() {
    use tidewatch::guard::{Decision, Direction, HoldReason};
    use tidewatch::telemetry::Tally;
    let m = default_metrics();
    let d = Decision {
        current: 3,
        desired: 3,
        direction: Direction::Hold,
        held: Some(HoldReason::Tolerance),
        dry_run: false,
        reason: String::new(),
    };
    let calls = env_u64("SCALE_CALLS", 2_000_000);
    for round in 0..2 {
        for tallied in [false, true] {
            for threads in [1, 2] {
                let started = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        let (m, d) = (m.clone(), d.clone());
                        s.spawn(move || {
                            let mut t = Tally::new();
                            for i in 0..calls {
                                let secs = 1e-5 * (i % 7) as f64;
                                if tallied {
                                    t.policy_evaluated(&m, "t", secs);
                                    t.decided(&m, "t", &d);
                                    if i % 32 == 31 {
                                        t.flush(&m);
                                    }
                                } else {
                                    m.policy_evaluated("t", secs);
                                    m.decided("t", &d);
                                }
                            }
                            t.flush(&m);
                        });
                    }
                });
                println!(
                    "tally: round {round}, {}, {threads} thread(s): {:.0} ns a call",
                    if tallied {
                        "tallied per shard"
                    } else {
                        "shared series"
                    },
                    started.elapsed().as_nanos() as f64 / calls as f64
                );
            }
        }
    }
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = which.is_empty();
    let wants = |p: &str| all || which.iter().any(|w| w == p);
    let ns = env_list("SCALE_TARGETS", "1000,50000");
    let largest = ns.iter().copied().max().unwrap_or(50_000);
    // as `tidewatch run` does, also for the parts that build engines
    // without it (memory, refit-wave): no transparent huge pages
    tidewatch::priority::without_huge_pages();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if wants("memory") {
        memory(largest);
    }
    if wants("refit-wave") {
        refit_wave(largest);
    }
    if wants("tally") {
        tally();
    }
    if wants("scrape") {
        scrape_text(largest);
    }
    rt.block_on(async {
        let rounds = env_u64("SCALE_ROUNDS", 1).max(1);
        if wants("reaction-amqp") {
            let mut rows = Vec::new();
            for _ in 0..rounds {
                for &n in &ns {
                    rows.push(reaction_amqp(n).await);
                }
            }
            ratio(&rows, ns.len());
        }
        if wants("reaction-kafka") {
            let mut rows = Vec::new();
            for _ in 0..rounds {
                for &n in &ns {
                    rows.push(reaction_kafka(n).await);
                }
            }
            ratio(&rows, ns.len());
        }
        if wants("startup") {
            startup(largest).await;
        }
    });
}
