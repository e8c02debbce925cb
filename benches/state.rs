//! State benchmarks (a bench binary; medians of repeated runs, printed):
//! the snapshot of a target with 8 days of minute history on 4 metrics
//! (size, encode, decode), the restore of 10,000 such targets (decode and
//! give each to the engine), writing them to a state directory, and the
//! reload of a 1,000-target configuration.
//! Run: cargo bench --bench state

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidewatch::config::{Config, TargetConfig};
use tidewatch::engine::{Engine, Prepared};
use tidewatch::event::Metric;
use tidewatch::forecast::builtin::RefitMode;
use tidewatch::state::{StateStore, TargetSnapshot};
use tidewatch::telemetry::Metrics;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_764_000_000_000;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.lua"),
        r#"return { decide = function(ctx)
             local f = ctx.forecast("queue_depth", 600)
             local d = ctx.window("queue_depth", "60s")
             if not d then return nil end
             return math.ceil(d.last / 100) end }"#,
    )
    .unwrap();
    dir
}

fn target(dir: &Path, name: &str) -> TargetConfig {
    TargetConfig {
        windows: [10, 60, 300].map(Duration::from_secs).to_vec(),
        ..TargetConfig::new(name, dir.join("p.lua"), "log", 1, 100)
    }
}

/// 8 days of minute history on all four metrics (a daily cycle with
/// noise), and a fitted daily model for the queue depth.
fn full_target(dir: &Path) -> TargetSnapshot {
    let t = target(dir, "checkout");
    let cfg = Config {
        targets: vec![t],
        ..Config::default()
    };
    let end = T0 + 8 * DAY;
    let mut e = Engine::new(&cfg.engine, &cfg.targets, Arc::new(Metrics::new()), end).unwrap();
    e.set_refit_mode(RefitMode::Inline);
    let mut seed: u64 = 42;
    let mut noise = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    };
    let mut ts = T0;
    while ts < end {
        let cycle = 1.0 + 0.6 * (2.0 * std::f64::consts::PI * (ts % DAY) as f64 / DAY as f64).sin();
        e.record(
            "checkout",
            Metric::QueueDepth,
            ts,
            (300.0 * cycle + 40.0 * noise()).max(0.0),
        );
        e.record(
            "checkout",
            Metric::LatencyMs,
            ts,
            80.0 * cycle + 10.0 * noise(),
        );
        e.record(
            "checkout",
            Metric::Requests,
            ts,
            (50.0 * cycle + 5.0 * noise()).round().max(0.0),
        );
        e.record(
            "checkout",
            Metric::Errors,
            ts,
            (0.5 + noise()).round().max(0.0),
        );
        ts += 60_000;
    }
    // the policy asks for the forecast: the model is fitted on the history
    e.evaluate(0, end);
    e.evaluate(0, end + 1);
    e.snapshot("checkout", end, "bench").unwrap()
}

fn main() {
    // as `tidewatch run` does: no transparent huge pages. With them, each
    // 2 MB region mimalloc touches again after giving it back is zeroed
    // whole, and the bench measured the directory read at about ten times
    // what the scaler takes (PERFORMANCE.md, "The state bench ran with
    // huge pages")
    tidewatch::priority::without_huge_pages();
    let dir = policy_dir();
    let snap = full_target(dir.path());
    let points: usize = snap.histories.iter().map(|(_, h)| h.len()).sum();
    let model = snap
        .forecasters
        .iter()
        .filter_map(|(_, f)| f.model.as_ref())
        .map(|m| m.season)
        .max()
        .unwrap_or(0);
    let bytes = snap.encode();
    println!(
        "snapshot: {} history points on {} metrics ({} bytes as f32), a model with a season of {model} steps",
        points,
        snap.histories.len(),
        points * 4
    );
    println!(
        "snapshot: {} bytes encoded ({:.2} of the raw f32 history)",
        bytes.len(),
        bytes.len() as f64 / (points * 4) as f64
    );
    let runs = 21;
    let enc = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(snap.encode());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let dec = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(TargetSnapshot::decode("checkout", &bytes).unwrap());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    println!("snapshot: encode {enc:.2} ms, decode {dec:.2} ms (medians of {runs})");

    // 10,000 targets
    let n: usize = std::env::var("BENCH_TARGETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let targets: Vec<TargetConfig> = (0..n)
        .map(|i| target(dir.path(), &format!("t{i}")))
        .collect();
    let cfg = Config {
        targets: targets.clone(),
        ..Config::default()
    };
    let t = Instant::now();
    let encoded: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let mut s = snap.clone();
            s.target = format!("t{i}");
            (s.target.clone(), s.encode())
        })
        .collect();
    let encode_all = t.elapsed();
    let state = tempfile::tempdir().unwrap();
    let mut store = tidewatch::state::dir::DirStore::open(state.path()).unwrap();
    // in the state thread's batches (the engine queues at most
    // `MAX_QUEUED` snapshots), each ended as the thread ends it
    let t = Instant::now();
    for batch in encoded.chunks(tidewatch::state::writer::MAX_QUEUED) {
        for (name, b) in batch {
            store.write(name, b).unwrap();
        }
        store.batch_done().unwrap();
    }
    let write_all = t.elapsed();
    let mut engine = Engine::new(
        &cfg.engine,
        &cfg.targets,
        Arc::new(Metrics::new()),
        T0 + 8 * DAY,
    )
    .unwrap();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let t = Instant::now();
    let read = store.read(&names).unwrap();
    let read_all = t.elapsed();
    drop(encoded);
    let metrics = Metrics::new();
    let t = Instant::now();
    tidewatch::state::restore_in_chunks(&names, Ok(read.clone()), &metrics, drop);
    let decode_only = t.elapsed();
    let t = Instant::now();
    let mut restored = 0;
    tidewatch::state::restore_in_chunks(&names, Ok(read), &metrics, |batch| {
        restored += batch
            .iter()
            .filter(|s| engine.restore(s) == tidewatch::engine::Restored::Applied)
            .count();
    });
    let restore_all = t.elapsed();
    assert_eq!(restored, n);
    println!(
        "{n} targets: encode {:.2} s, write to a state directory (batches of {}) {:.2} s, read {:.2} s, decode {:.2} s, decode and restore {:.2} s",
        encode_all.as_secs_f64(),
        tidewatch::state::writer::MAX_QUEUED,
        write_all.as_secs_f64(),
        read_all.as_secs_f64(),
        decode_only.as_secs_f64(),
        restore_all.as_secs_f64()
    );
    drop(engine);

    // reload of 1,000 targets: load and check the file (every policy), build
    // the new ones off the engine, apply; one added, one removed, one changed
    let m = 1000;
    let toml = |extra: &str, skip: usize| {
        let mut s = String::from("[engine]\ntick = \"1s\"\n");
        for i in 0..m {
            if i == skip {
                continue;
            }
            s.push_str(&format!(
                "[[targets]]\nname = \"t{i}\"\npolicy = \"p.lua\"\nmax_replicas = {}\n",
                if i == 1 && !extra.is_empty() { 50 } else { 100 }
            ));
        }
        s.push_str(extra);
        s
    };
    std::fs::write(dir.path().join("c.toml"), toml("", usize::MAX)).unwrap();
    let (old, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut engine = Engine::new(&old.engine, &old.targets, metrics.clone(), T0).unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        toml(
            "[[targets]]\nname = \"added\"\npolicy = \"p.lua\"\nmax_replicas = 10\n",
            2,
        ),
    )
    .unwrap();
    let mut load = Vec::new();
    let mut apply = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (new, _) = Config::load(&dir.path().join("c.toml")).unwrap();
        let fresh: Vec<TargetConfig> = engine
            .new_targets(&new.targets)
            .into_iter()
            .cloned()
            .collect();
        let prepared = Prepared::build(&new.engine, &fresh, &metrics, T0, 1).unwrap();
        load.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let report = engine.reconfigure(
            new.engine.clone(),
            new.targets.clone(),
            prepared,
            Vec::new(),
            T0,
        );
        apply.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(report);
        // back to the first file for the next round
        let prepared = Prepared::build(
            &old.engine,
            &engine
                .new_targets(&old.targets)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>(),
            &metrics,
            T0,
            1,
        )
        .unwrap();
        engine.reconfigure(
            old.engine.clone(),
            old.targets.clone(),
            prepared,
            Vec::new(),
            T0,
        );
    }
    println!(
        "reload of {m} targets (1 added, 1 removed, 1 changed): read and check the file, build the new {:.0} ms; apply on the engine task {:.2} ms (medians of 5)",
        median(load),
        median(apply)
    );

    if let Ok(brokers) = std::env::var("BENCH_KAFKA") {
        kafka_read(&brokers, &snap);
    }
}

/// The process's largest resident set since the last reset, in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Resets [`peak_rss_mb`] to what the process holds now.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `BENCH_KAFKA=host:port`: a state topic of `BENCH_KAFKA_TARGETS`
/// (default 10,000) such snapshots on a real broker (a process of its
/// own, so that this one's memory is the reader's), read as a start takes
/// it (parts of `READ_PART`) at the budget `BENCH_KAFKA_BUDGET` says:
/// time and the largest resident set while reading.
fn kafka_read(brokers: &str, snap: &TargetSnapshot) {
    use tidewatch::state::kafka::KafkaStore;
    let n: usize = std::env::var("BENCH_KAFKA_TARGETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let settings = tidewatch::broker::kafka::ClientSettings {
        key: "BENCH_KAFKA".into(),
        brokers: brokers.into(),
        options: Default::default(),
        sasl_password: Default::default(),
    };
    let topic = format!(
        "bench-state-{}",
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    );
    let mut store = KafkaStore::open(&settings, &topic).unwrap();
    let bytes = snap.encode();
    let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let t = Instant::now();
    for name in &names {
        store.write(name, &bytes).unwrap();
    }
    store.flush().unwrap();
    println!(
        "kafka state topic: {n} snapshots of {} bytes ({:.0} MB) written in {:.1} s",
        bytes.len(),
        (n * bytes.len()) as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    drop(bytes);
    // one read a process (`BENCH_KAFKA_BUDGET`: bytes, or `none` for every
    // snapshot held from one read, as before), so that what the allocator
    // kept from another read does not hide this one's peak
    let (mut store, how) = match std::env::var("BENCH_KAFKA_BUDGET").as_deref() {
        Ok("none") => (
            store.with_read_budget(usize::MAX),
            "no budget (every snapshot held)".to_string(),
        ),
        Ok(b) => {
            let b: usize = b.parse().expect("BENCH_KAFKA_BUDGET: bytes or none");
            (store.with_read_budget(b), format!("a budget of {b} bytes"))
        }
        Err(_) => (store, "the default budget".to_string()),
    };
    reset_peak_rss();
    let before = peak_rss_mb();
    let t = Instant::now();
    let mut got = 0;
    store
        .read_parts(&names, tidewatch::state::READ_PART, &mut |p| {
            got += p.len();
            true
        })
        .unwrap();
    assert_eq!(got, n, "{how}: every snapshot read");
    println!(
        "kafka state topic, {how}: read in {:.1} s, {} pass(es), largest resident set {:.0} MB ({:.0} MB before the read)",
        t.elapsed().as_secs_f64(),
        store.passes(),
        peak_rss_mb(),
        before
    );
}
