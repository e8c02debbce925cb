//! The Lua watchdog (src/policy/watchdog.rs) sleeps while no decision
//! runs and wakes for the next one. Its own test binary: the watchdog is
//! one per process, and the library's other tests run decisions in
//! parallel, which would keep it awake.

use std::path::Path;
use std::time::{Duration, Instant};

use tidewatch::policy::{CallInput, LuaPolicy, PolicyErrorKind, PolicyLimits, PolicySource};

fn input() -> CallInput<'static> {
    CallInput {
        target: "t",
        now_ms: 1_764_000_000_500,
        replicas: 3,
        min: 1,
        max: 10,
        schedule: None,
    }
}

/// The voluntary context switches of this process's thread named `name`
/// (Linux's /proc): how often it has gone to sleep.
fn sleeps_of(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("voluntary_ctxt_switches:"))
            .unwrap();
        return line.split_whitespace().nth(1).unwrap().parse().unwrap();
    }
    panic!("no thread named {name}");
}

/// The watchdog's sleeps in a second with no decision, from 200 ms
/// after the last one.
fn quiet_second() -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    let before = sleeps_of("tw-lua-watchdog");
    std::thread::sleep(Duration::from_secs(1));
    sleeps_of("tw-lua-watchdog") - before
}

/// Issue 21's note: the watchdog woke every 5 ms whether or not a
/// decision ran. Now, with no decision in progress it sleeps (a second
/// of quiet costs it at most a couple of wakeups, not 200), and a
/// decision that starts while it sleeps wakes it: a runaway is still
/// stopped at its deadline, which only the hook the watchdog sets reads.
#[cfg(target_os = "linux")]
#[test]
fn the_watchdog_sleeps_while_no_decision_runs_and_wakes_for_a_runaway() {
    let limits = PolicyLimits {
        memory_bytes: 4 << 20,
        instruction_budget: u64::MAX / 2,
        timeout: Duration::from_millis(100),
        load_timeout: Duration::from_secs(5),
    };
    let quick = PolicySource::from_text(
        Path::new("quick.lua"),
        "local P = {} function P.decide(ctx) return 2 end return P".into(),
    );
    // about a second of work at full speed, far more than the deadline
    let runaway = PolicySource::from_text(
        Path::new("runaway.lua"),
        "local P = {} function P.decide(ctx) local x = 0 for i = 1, 3e8 do x = x + i end return 1 end return P"
            .into(),
    );
    let mut p = LuaPolicy::load(&quick, &serde_json::json!({}), limits).unwrap();
    // the first decision starts the watchdog
    assert_eq!(p.decide(&input()).unwrap().replicas, Some(2));
    let quiet = quiet_second();
    assert!(
        quiet <= 2,
        "the watchdog went to sleep {quiet} times in a quiet second"
    );

    // a decision while it sleeps: the watchdog wakes and sets the hook
    let mut r = LuaPolicy::load(&runaway, &serde_json::json!({}), limits).unwrap();
    let started = Instant::now();
    let err = r.decide(&input()).unwrap_err();
    assert_eq!(err.kind, PolicyErrorKind::Timeout, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // and sleeps again
    let quiet = quiet_second();
    assert!(
        quiet <= 2,
        "after the runaway: {quiet} times in a quiet second"
    );
}
