//! The reaction-time measurement both broker benchmarks share: a steady
//! load over 100 targets (BENCH_TARGETS=n for another number), a probe signal every 20 ms that asks for more
//! replicas than the one before, and each probe's time until the first
//! command that reflects it.

use std::future::Future;
use std::time::{Duration, Instant};

/// The load's targets: `t0`..`t{n-1}`, 100 unless BENCH_TARGETS says.
#[allow(dead_code)] // not every benchmark reads it
pub fn targets() -> usize {
    std::env::var("BENCH_TARGETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
}

/// The `[[targets]]` of the benchmarks: t0..t{n-1} and `probe`.
pub fn targets_toml() -> String {
    (0..targets())
        .map(|i| format!("t{i}"))
        .chain(["probe".to_string()])
        .map(|t| {
            format!(
                "[[targets]]\nname = \"{t}\"\npolicy = \"p.lua\"\nmax_replicas = 10000\nstabilization_down = \"0s\"\n"
            )
        })
        .collect()
}

/// What `drive` sent: the number of load signals, the seconds it took, and
/// each probe's asked-for replicas with the time it was sent.
pub struct Driven {
    pub sent: u64,
    pub load_s: f64,
    pub probes: Vec<(u32, Instant)>,
}

/// Sends `rate` signals a second for `seconds` (`send(target, depth)`,
/// targets `t0`..`t{n-1}` at depth 500), and every 20 ms a signal for target
/// `probe` at depth 300, 400, 500, ...
pub async fn drive<F, Fut>(rate: u64, seconds: u64, send: F) -> Driven
where
    F: FnMut(String, u64) -> Fut,
    Fut: Future<Output = ()>,
{
    drive_over(targets(), rate, seconds, send).await
}

/// [`drive`] over `n` load targets.
pub async fn drive_over<F, Fut>(n: usize, rate: u64, seconds: u64, send: F) -> Driven
where
    F: FnMut(String, u64) -> Fut,
    Fut: Future<Output = ()>,
{
    drive_over_as(n, rate, seconds, false, send).await
}

/// [`drive_over`]; `pipelined`: each millisecond's sends are awaited
/// together rather than one after another, as a producer with more than
/// one message in flight sends them (with lapin, one wake-up of its I/O
/// thread and one write for the lot instead of one a message).
pub async fn drive_over_as<F, Fut>(
    n: usize,
    rate: u64,
    seconds: u64,
    pipelined: bool,
    mut send: F,
) -> Driven
where
    F: FnMut(String, u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = Instant::now();
    let mut sent = 0u64;
    let mut probes = Vec::new();
    let n = n.max(1) as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut batch = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let signal = send(format!("t{}", sent % n), 500);
            if pipelined {
                batch.push(signal);
            } else {
                signal.await;
            }
            sent += 1;
        }
        if start.elapsed() >= Duration::from_millis(20 * (probes.len() as u64 + 1)) {
            // 3, 4, 5, ...: each asks for more replicas than the one before.
            let k = 3 + probes.len() as u32;
            probes.push((k, Instant::now()));
            batch.push(send("probe".into(), u64::from(k) * 100));
        }
        futures::future::join_all(batch.drain(..)).await;
    }
    Driven {
        sent,
        load_s: start.elapsed().as_secs_f64(),
        probes,
    }
}

/// Each probe's reaction time in ms, in the order sent: until the first
/// command (desired replicas, arrival) that reflects it; probes that
/// arrive together share a command.
pub fn reaction_ms(probes: &[(u32, Instant)], got: &[(u32, Instant)]) -> Vec<f64> {
    let mut lat = Vec::new();
    let mut j = 0;
    for (k, at) in probes {
        while j < got.len() && (got[j].0 < *k || got[j].1 < *at) {
            j += 1;
        }
        if j < got.len() {
            lat.push(got[j].1.duration_since(*at).as_secs_f64() * 1000.0);
        }
    }
    lat
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The benchmark's line for one rate.
pub fn report(rate: u64, seconds: u64, d: &Driven, lat: &[f64]) {
    let mut lat = lat.to_vec();
    lat.sort_by(f64::total_cmp);
    let lat = &lat;
    println!(
        "reaction rate={rate}/s (achieved {:.0}/s, {seconds} s): probes {} matched {} p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        d.sent as f64 / d.load_s,
        d.probes.len(),
        lat.len(),
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

/// BENCH_FORMAT=kong: the benchmarks send Kong's access-log messages (one
/// request each) instead of tidewatch's queue depths.
pub fn kong() -> bool {
    std::env::var("BENCH_FORMAT").as_deref() == Ok("kong")
}

/// A Kong log message (the shape of tests/fixtures/gateways/kong.json)
/// with three marks to replace.
fn kong_template() -> &'static str {
    static T: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gateways/kong.json"
        );
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        v["service"]["name"] = "TARGET_MARK".into();
        v["latencies"]["request"] = 123_456_789u64.into();
        v["started_at"] = 987_654_321_987u64.into();
        v.to_string()
    })
}

/// A signal asking `target` for `depth / 100` replicas (of a policy on
/// the last value): a queue depth, or with BENCH_FORMAT=kong a request
/// that took `depth` ms.
pub fn signal(target: &str, depth: u64) -> String {
    if kong() {
        kong_template()
            .replace("TARGET_MARK", target)
            .replace("123456789", &depth.to_string())
            .replace(
                "987654321987",
                &chrono::Utc::now().timestamp_millis().to_string(),
            )
    } else {
        format!(r#"{{"type":"queue_depth","target":"{target}","queue":"q","depth":{depth}}}"#)
    }
}

/// The policy of the benchmarks: `depth / 100` replicas of the last value.
pub fn policy() -> String {
    let metric = if kong() { "latency_ms" } else { "queue_depth" };
    format!(
        r#"return {{ decide = function(ctx)
             local d = ctx.window("{metric}", "10s")
             if not d then return nil end
             return math.ceil(d.last / 100) end }}"#
    )
}

/// The signal type the benchmarks' messages become.
pub fn signal_type() -> &'static str {
    if kong() {
        "gateway_latency"
    } else {
        "queue_depth"
    }
}
