use super::*;
use crate::config::Config;
use std::io::Write;
use std::path::Path;

const T0: Millis = 1_764_000_000_000;

const DEPTH_POLICY: &str = r#"
local P = {}
function P.decide(ctx)
  local d = ctx.window("queue_depth", "10s")
  if not d then return nil end
  return { replicas = math.ceil(d.last / ctx.params.per), reason = "depth " .. d.last }
end
return P
"#;

struct Setup {
    dir: tempfile::TempDir,
    engine: Engine,
    metrics: Arc<Metrics>,
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::File::create(dir.join(name))
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

fn setup(policy: &str, target_extra: &str, engine_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.lua", policy);
    write(
        dir.path(),
        "c.toml",
        &format!(
            r#"
[engine]
reload_interval = "1s"
{engine_extra}

[[targets]]
name = "web"
policy = "p.lua"
provider = "exec"
max_replicas = 50
initial_replicas = 2
stabilization_down = "0s"
params = {{ per = 100 }}
{target_extra}

[[targets]]
name = "other"
policy = "p.lua"
max_replicas = 5
params = {{ per = 100 }}
"#
        ),
    );
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::new(&cfg.engine, &cfg.targets, metrics.clone(), T0).unwrap();
    Setup {
        dir,
        engine,
        metrics,
    }
}

fn depth(target: &str, v: f64, ts: Millis) -> Vec<u8> {
    format!(r#"{{"type":"queue_depth","target":"{target}","queue":"q","depth":{v},"ts":{ts}}}"#)
        .into_bytes()
}

fn counter(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    for fam in m.registry().gather() {
        if fam.name() != name {
            continue;
        }
        for metric in fam.get_metric() {
            let ok = labels.iter().all(|(k, v)| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if ok {
                return metric.get_counter().get_value() + metric.get_gauge().get_value();
            }
        }
    }
    0.0
}

#[test]
fn event_to_command_on_the_event() {
    let mut s = setup(DEPTH_POLICY, "", "");
    let out = s.engine.ingest("test", &depth("web", 730.0, T0), T0 + 3);
    assert_eq!((out.applied, out.rejected.len()), (1, 0));
    let cmds = s.engine.on_events(T0 + 3);
    assert_eq!(cmds.len(), 1);
    let c = &cmds[0];
    assert_eq!(
        (c.target.as_str(), c.desired_replicas, c.current_replicas),
        ("web", 8, 2)
    );
    assert_eq!(c.provider, "exec");
    assert_eq!(c.generation, T0 + 3);
    assert!(c.reason.starts_with("depth 730"), "{}", c.reason);
    assert!(c.policy.starts_with("p.lua@"));
    assert_eq!(c.expires_at, crate::clock::rfc3339(T0 + 3 + 60_000));
    assert!(!c.dry_run);
    // The other target saw nothing and is not evaluated on events.
    assert_eq!(s.engine.status()[1].replicas, 1);
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_commands_issued_total",
            &[("target", "web"), ("direction", "up")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_events_received_total",
            &[("type", "queue_depth")]
        ),
        1.0
    );
}

#[test]
fn event_evaluation_is_rate_limited_per_target() {
    let mut s = setup(DEPTH_POLICY, "", "min_eval_interval = \"100ms\"");
    s.engine.ingest("t", &depth("web", 300.0, T0), T0);
    assert_eq!(s.engine.on_events(T0).len(), 1);
    s.engine.ingest("t", &depth("web", 900.0, T0 + 10), T0 + 10);
    assert!(
        s.engine.on_events(T0 + 10).is_empty(),
        "within the interval"
    );
    assert_eq!(s.engine.next_event_eval(), Some(T0 + 100));
    let cmds = s.engine.on_events(T0 + 100);
    assert_eq!(cmds[0].desired_replicas, 9);
    assert_eq!(s.engine.next_event_eval(), None);
}

#[test]
fn evaluate_on_event_off_waits_for_the_tick() {
    let mut s = setup(DEPTH_POLICY, "", "evaluate_on_event = false");
    s.engine.ingest("t", &depth("web", 300.0, T0), T0);
    assert!(s.engine.on_events(T0).is_empty());
    let cmds = s.engine.tick(T0 + 1000);
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].desired_replicas, 3);
}

#[test]
fn generations_rise_strictly() {
    let mut s = setup(DEPTH_POLICY, "", "min_eval_interval = \"0s\"");
    let mut last = 0;
    for (i, d) in [100.0, 500.0, 200.0, 900.0].iter().enumerate() {
        s.engine.ingest("t", &depth("web", *d, T0), T0);
        let c = s
            .engine
            .on_events(T0)
            .pop()
            .unwrap_or_else(|| panic!("step {i}"));
        assert!(c.generation > last);
        last = c.generation;
    }
}

#[test]
fn bad_input_is_counted_and_touches_no_window() {
    let mut s = setup(DEPTH_POLICY, "", "");
    for bad in [
        b"not json".to_vec(),
        br#"{"type":"queue_depth","target":"web","depth":-5}"#.to_vec(),
        br#"{"type":"queue_depth","target":"web","depth":"5"}"#.to_vec(),
        depth("web", 5.0, T0 - 3_600_000),
        depth("web", 5.0, T0 + 3_600_000),
        depth("nobody", 5.0, T0),
    ] {
        let out = s.engine.ingest("t", &bad, T0);
        assert_eq!((out.applied, out.rejected.len()), (0, 1));
    }
    assert!(s
        .engine
        .window("web", Metric::QueueDepth, T0, Duration::from_secs(300))
        .is_none());
    assert!(s.engine.on_events(T0).is_empty());
    assert!(s.engine.tick(T0).is_empty());
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_events_rejected_total",
            &[("reason", "unknown_target")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_events_rejected_total",
            &[("reason", "too_old")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_events_rejected_total",
            &[("reason", "malformed_json")]
        ),
        1.0
    );
}

#[test]
fn failing_policy_holds_or_falls_back() {
    let failing = "return { decide = function(ctx) error('broken on purpose') end }";
    let mut s = setup(failing, "", "");
    assert!(s.engine.tick(T0).is_empty());
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_policy_errors_total",
            &[("target", "web"), ("kind", "runtime")]
        ),
        1.0
    );
    let d = s.engine.status()[0].last_decision.clone().unwrap();
    assert!(d.reason.contains("broken on purpose"), "{}", d.reason);
    let mut s = setup(failing, "fallback_replicas = 6", "");
    let cmds = s.engine.tick(T0);
    assert_eq!(
        cmds.iter()
            .find(|c| c.target == "web")
            .unwrap()
            .desired_replicas,
        6
    );
    // A runaway policy is stopped by its budget and the engine goes on.
    let mut s = setup(
        "return { decide = function(ctx) while true do end end }",
        "",
        "policy_instruction_budget = 100000",
    );
    assert!(s.engine.tick(T0).is_empty());
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_policy_errors_total",
            &[("target", "web"), ("kind", "budget")]
        ),
        1.0
    );
}

#[test]
fn hot_reload_keeps_the_old_version_when_the_new_one_fails() {
    let mut s = setup("return { decide = function(ctx) return 3 end }", "", "");
    assert_eq!(s.engine.tick(T0)[0].desired_replicas, 3);
    let v1 = s.engine.status()[0].policy.clone();
    write(
        s.dir.path(),
        "p.lua",
        "return { decide = function(ctx) return 7 end } -- v2",
    );
    assert_eq!(s.engine.tick(T0 + 1000)[0].desired_replicas, 7);
    let v2 = s.engine.status()[0].policy.clone();
    assert_ne!(v1, v2);
    write(
        s.dir.path(),
        "p.lua",
        "return { decide = function(ctx) return 9 end",
    ); // syntax error
    assert!(
        s.engine.tick(T0 + 2000).is_empty(),
        "still v2, which wants 7"
    );
    assert_eq!(s.engine.status()[0].policy, v2);
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_policy_reloads_total",
            &[("target", "web"), ("result", "failed")]
        ),
        1.0
    );
    // Declared examples that fail also keep the old version.
    write(
        s.dir.path(),
        "p.lua",
        "return { decide = function(ctx) return 11 end, examples = { { expect = 12 } } }",
    );
    assert!(s.engine.tick(T0 + 3000).is_empty());
    assert_eq!(s.engine.status()[0].policy, v2);
}

/// A reload whose load only ran out of time (a busy machine: the load
/// shares `engine.policy_timeout` with the decisions it holds up) is tried
/// again at the next rounds without the file being touched; one that keeps
/// running out of time stays out after `RELOAD_RETRIES` more tries, until
/// the file changes.
#[test]
fn a_reload_that_ran_out_of_time_is_tried_again() {
    let mut s = setup("return { decide = function(ctx) return 3 end }", "", "");
    s.engine.cfg.policy_instruction_budget = u64::MAX / 4;
    assert_eq!(s.engine.tick(T0)[0].desired_replicas, 3);
    // a load that takes 30 ms of CPU before it returns the module
    let slow = |n: u32, tag: &str| {
        format!(
            "local t = os.clock() + 0.03 while os.clock() < t do end\n\
             return {{ decide = function(ctx) return {n} end }} -- {tag}"
        )
    };
    let failed = |s: &Setup| {
        counter(
            &s.metrics,
            "tidewatch_policy_reloads_total",
            &[("target", "web"), ("result", "failed")],
        )
    };
    write(s.dir.path(), "p.lua", &slow(7, "v2"));
    s.engine.cfg.policy_timeout = Duration::from_millis(5);
    let mut at = T0;
    let mut tick = |s: &mut Setup| {
        at += 1000;
        s.engine.tick(at)
    };
    assert!(tick(&mut s).is_empty(), "still the first version");
    assert!(tick(&mut s).is_empty());
    assert_eq!(failed(&s), 2.0, "tried again with the file unchanged");
    // the machine is quiet again: the same file loads
    s.engine.cfg.policy_timeout = Duration::from_secs(2);
    assert_eq!(tick(&mut s)[0].desired_replicas, 7);
    assert_eq!(failed(&s), 2.0);

    // a file that always runs out of time: tried RELOAD_RETRIES more
    // times, then left out until it changes
    write(s.dir.path(), "p.lua", &slow(9, "v3"));
    s.engine.cfg.policy_timeout = Duration::from_millis(5);
    for _ in 0..RELOAD_RETRIES + 3 {
        assert!(tick(&mut s).is_empty(), "still the second version");
    }
    assert_eq!(failed(&s), 2.0 + 1.0 + f64::from(RELOAD_RETRIES));
    s.engine.cfg.policy_timeout = Duration::from_secs(2);
    assert!(tick(&mut s).is_empty(), "left out until the file changes");
    write(s.dir.path(), "p.lua", &slow(9, "v3, touched"));
    assert_eq!(tick(&mut s)[0].desired_replicas, 9);
}

#[test]
fn results_of_the_latest_command_set_current_replicas() {
    let mut s = setup(DEPTH_POLICY, "", "");
    s.engine.ingest("t", &depth("web", 500.0, T0), T0);
    let c = s.engine.on_events(T0).pop().unwrap();
    let result = |generation, n| ScaleResult {
        version: 1,
        command_id: c.id.clone(),
        target: "web".into(),
        generation,
        status: crate::command::ResultStatus::Applied,
        observed_replicas: Some(n),
        error: None,
        worker: "w".into(),
        finished_at: String::new(),
    };
    assert!(
        !s.engine.observe(&result(c.generation - 1, 1)),
        "older result ignored"
    );
    assert_eq!(s.engine.status()[0].replicas, 5);
    assert!(s.engine.observe(&result(c.generation, 4)));
    assert_eq!(s.engine.status()[0].replicas, 4);
    // The policy still wants 5, so the next tick asks again.
    assert_eq!(s.engine.tick(T0 + 1000)[0].desired_replicas, 5);
}

#[test]
fn unanswered_commands_are_flagged_and_reissued_with_a_new_generation() {
    let mut s = setup(DEPTH_POLICY, "", "reissue_after = \"10s\"");
    s.engine.ingest("t", &depth("web", 500.0, T0), T0);
    let c = s.engine.on_events(T0).pop().unwrap();
    let unacked = |s: &Setup| {
        counter(
            &s.metrics,
            "tidewatch_commands_unacknowledged",
            &[("target", "web")],
        )
    };
    // Within reissue_after: nothing (the policy holds at 5).
    assert!(s.engine.tick(T0 + 9_000).is_empty());
    assert_eq!(unacked(&s), 0.0);
    // No worker answered: the same desired state, a new generation.
    let again = s.engine.tick(T0 + 10_000);
    assert_eq!(again.len(), 1, "{again:?}");
    let r = &again[0];
    assert_eq!((r.target.as_str(), r.desired_replicas), ("web", 5));
    assert!(r.generation > c.generation && r.id != c.id, "{r:?}");
    assert!(r.reason.contains("re-issued"), "{}", r.reason);
    assert_eq!(unacked(&s), 1.0);
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_commands_reissued_total",
            &[("target", "web")]
        ),
        1.0
    );
    // Not again until another reissue_after has passed.
    assert!(s.engine.tick(T0 + 15_000).is_empty());
    // A result of the re-issued generation (any status) answers it.
    let answer = ScaleResult {
        version: 1,
        command_id: r.id.clone(),
        target: "web".into(),
        generation: r.generation,
        status: crate::command::ResultStatus::Failed,
        observed_replicas: None,
        error: Some("x".into()),
        worker: "w".into(),
        finished_at: String::new(),
    };
    s.engine.observe(&answer);
    assert_eq!(unacked(&s), 0.0);
    assert!(
        s.engine.tick(T0 + 40_000).is_empty(),
        "answered: no re-issue"
    );
    // "0s" turns it off.
    let mut off = setup(DEPTH_POLICY, "", "reissue_after = \"0s\"");
    off.engine.ingest("t", &depth("web", 500.0, T0), T0);
    off.engine.on_events(T0);
    assert!(off.engine.tick(T0 + 3_600_000).is_empty());
}

#[test]
fn forecasts_reach_the_policy() {
    let policy = r#"return { decide = function(ctx)
        local f = ctx.forecast("queue_depth", 300)
        if not f then return nil end
        return { replicas = math.ceil(f.value / 100), reason = f.source } end }"#;
    let mut s = setup(policy, "", "");
    let fc = format!(
        r#"{{"type":"forecast","target":"web","metric":"queue_depth","source":"prophet","issued_at":{T0},
            "points":[{{"ts":{},"value":1200}}]}}"#,
        T0 + 300_000
    );
    assert_eq!(s.engine.ingest("t", fc.as_bytes(), T0).applied, 1);
    let c = s
        .engine
        .tick(T0)
        .into_iter()
        .find(|c| c.target == "web")
        .unwrap();
    assert_eq!(c.desired_replicas, 12);
    assert!(c.reason.starts_with("prophet"));
}

/// `drive` running on `engine` with a 1 s tick, in virtual time from T0.
struct Driving {
    clock: Arc<crate::clock::TokioClock>,
    in_tx: mpsc::Sender<EngineInput>,
    out_rx: mpsc::Receiver<ScaleCommand>,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Engine>,
}

fn start_drive(engine: Engine, out_capacity: usize) -> Driving {
    let clock = Arc::new(crate::clock::TokioClock::starting_at(T0));
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, out_rx) = mpsc::channel(out_capacity);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(drive(
        engine,
        in_rx,
        out_tx,
        clock.clone(),
        Duration::from_secs(1),
        async {
            let _ = stop_rx.await;
        },
    ));
    Driving {
        clock,
        in_tx,
        out_rx,
        stop_tx,
        task,
    }
}

#[tokio::test(start_paused = true)]
async fn drive_ticks_and_reacts_to_events() {
    let s = setup(DEPTH_POLICY, "", "tick = \"1s\"");
    let Driving {
        clock,
        in_tx,
        mut out_rx,
        stop_tx,
        task,
    } = start_drive(s.engine, 16);
    // The first tick: no data, no command.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(out_rx.try_recv().is_err());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    in_tx
        .send(EngineInput::Batch {
            source: "test",
            messages: Arc::new(vec![
                (Origin::default(), depth("web", 420.0, clock.now_ms())),
                (Origin::default(), b"junk".to_vec()),
            ]),
            done: Some(done_tx),
        })
        .await
        .unwrap();
    let outcomes = done_rx.await.unwrap();
    assert_eq!((outcomes[0].applied, outcomes[1].rejected.len()), (1, 1));
    let sent_at = clock.now_ms();
    let c = out_rx.recv().await.unwrap();
    assert_eq!(c.desired_replicas, 5);
    assert_eq!(
        clock.now_ms(),
        sent_at,
        "decided on the event, not on a later tick"
    );
    // A second event inside min_eval_interval is evaluated when it ends.
    in_tx
        .send(EngineInput::Batch {
            source: "test",
            messages: Arc::new(vec![(
                Origin::default(),
                depth("web", 1000.0, clock.now_ms()),
            )]),
            done: None,
        })
        .await
        .unwrap();
    let c = out_rx.recv().await.unwrap();
    assert_eq!(c.desired_replicas, 10);
    let waited = clock.now_ms() - sent_at;
    assert!((100..1000).contains(&waited), "waited {waited} ms");
    stop_tx.send(()).unwrap();
    let engine = task.await.unwrap();
    assert_eq!(engine.status()[0].replicas, 10);
}

#[test]
fn builtin_forecasts_answer_when_no_external_one_is_fresh() {
    let policy = r#"return { decide = function(ctx)
        local f = ctx.forecast("queue_depth", 600)
        if not f then return { replicas = 1, reason = "none" } end
        return { replicas = math.ceil(f.value / 100), reason = f.source } end }"#;
    let mut s = setup(policy, "", "");
    s.engine.set_refit_mode(RefitMode::Inline);
    let source = |e: &mut Engine, now: Millis| {
        let c = e.evaluate(0, now);
        let d = e.status()[0].last_decision.clone().unwrap();
        (c.map(|c| c.desired_replicas), d.reason)
    };
    // the first call asks; the model is built at the next evaluation
    assert!(source(&mut s.engine, T0).1.starts_with("none"));
    // three hours of a rising depth, one report a minute
    let mut now = T0;
    for i in 0..180 {
        now = T0 + i * 60_000;
        let m = format!(
            r#"{{"type":"queue_depth","target":"web","queue":"q","depth":{},"ts":{now}}}"#,
            1000 + 10 * i
        );
        s.engine.ingest("t", m.as_bytes(), now);
        s.engine.evaluate(0, now);
    }
    let (n, reason) = source(&mut s.engine, now);
    assert!(reason.starts_with("holt"), "{reason}");
    // the depth is 2790 and rising 10 a minute: about 2890 in 10 minutes
    let n = n.unwrap_or(s.engine.status()[0].replicas);
    assert!((28..=30).contains(&n), "{n}");
    // a fresh external forecast covering now + 600 s wins
    let fc = format!(
        r#"{{"type":"forecast","target":"web","metric":"queue_depth","source":"prophet","issued_at":{now},
            "points":[{{"ts":{},"value":5000}}]}}"#,
        now + 600_000
    );
    assert_eq!(s.engine.ingest("t", fc.as_bytes(), now).applied, 1);
    let (n, reason) = source(&mut s.engine, now);
    assert_eq!(n, Some(50));
    assert!(reason.starts_with("prophet"), "{reason}");
    // once it is older than forecast_freshness (1h), the built-in one again
    let later = now + 3_700_000;
    assert!(source(&mut s.engine, later).1.starts_with("holt"));
}

#[test]
fn a_schedule_bounds_the_guard_and_shows_in_ctx() {
    let policy = r#"return { decide = function(ctx)
        return { replicas = 3, reason = ctx.schedule and (ctx.schedule.name .. " min " .. ctx.schedule.min) or "none" }
      end }"#;
    // T0 is 16:00:00 UTC: the schedule runs from 16:00 to 16:30
    let extra = r#"
[[targets.schedules]]
name = "peak"
cron = "0 16 * * *"
timezone = "UTC"
duration = "30m"
min_replicas = 10
"#;
    let mut s = setup(policy, extra, "");
    let c = s.engine.evaluate(0, T0 + 60_000).unwrap();
    assert_eq!(
        c.desired_replicas, 10,
        "the schedule's min wins over the policy's 3"
    );
    assert!(c.reason.contains("peak min 10"), "{}", c.reason);
    assert!(c.reason.contains("schedule peak"), "{}", c.reason);
    let c = s.engine.evaluate(0, T0 + 40 * 60_000).unwrap();
    assert_eq!(
        c.desired_replicas, 3,
        "after 16:30 the policy decides again"
    );
    assert!(c.reason.starts_with("none"), "{}", c.reason);
}

#[test]
fn config_check_names_a_bad_schedule() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.lua", DEPTH_POLICY);
    write(
        dir.path(),
        "c.toml",
        r#"
[[targets]]
name = "web"
policy = "p.lua"
max_replicas = 5
forecast_season = "weekly"
[[targets.schedules]]
name = "x"
cron = "0 8 * * *"
timezone = "Europe/Nowhere"
duration = "1h"
"#,
    );
    let e = Config::load(&dir.path().join("c.toml")).unwrap_err();
    let text: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|p| p.contains("targets[0].schedules[0]") && p.contains("Europe/Nowhere")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|p| p.contains("targets[0].forecast_season") && p.contains("weekly")),
        "{text:?}"
    );
}

/// Two targets, one of whose policy hangs in C (the pattern of issue 16):
/// the other is decided at every tick, the bad one falls back, and after
/// three overruns in a row it is quarantined until its file changes.
#[test]
fn a_policy_stuck_in_c_stops_no_other_target() {
    const BOMB: &str = r#"return { decide = function(ctx)
  ("a"):rep(40000):find(".-.-.-.-.-.-.-.-.-.-b")
  return 1
end }"#;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.lua", BOMB);
    write(
        dir.path(),
        "good.lua",
        "return { decide = function(ctx) return ctx.replicas + 1 end }",
    );
    write(
        dir.path(),
        "c.toml",
        r#"
[engine]
reload_interval = "1s"
policy_timeout = "50ms"

[[targets]]
name = "bad"
policy = "bad.lua"
max_replicas = 50
initial_replicas = 2
fallback_replicas = 4

[[targets]]
name = "good"
policy = "good.lua"
max_replicas = 1000
initial_replicas = 1
stabilization_down = "0s"
"#,
    );
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut engine = Engine::new(&cfg.engine, &cfg.targets, metrics.clone(), T0).unwrap();
    let tick = cfg.engine.tick;
    for i in 0..5 {
        let now = T0 + i * 1000;
        let started = std::time::Instant::now();
        let cmds = engine.tick(now);
        // Without the deadline this call never returns. With it, a tick
        // costs at most one policy_timeout per overrunning policy.
        assert!(
            started.elapsed() < tick,
            "tick {i} took {:?}",
            started.elapsed()
        );
        if i == 0 {
            let bad = cmds.iter().find(|c| c.target == "bad").unwrap();
            assert_eq!(
                bad.desired_replicas, 4,
                "the stuck policy's target falls back"
            );
        }
        assert_eq!(
            counter(
                &metrics,
                "tidewatch_policy_evaluations_total",
                &[("target", "good")]
            ),
            (i + 1) as f64,
            "the good target is decided at every tick"
        );
    }
    let timeouts = counter(
        &metrics,
        "tidewatch_policy_errors_total",
        &[("target", "bad"), ("kind", "timeout")],
    );
    assert_eq!(
        timeouts, 3.0,
        "quarantined after 3 overruns: not called again"
    );
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_policy_quarantined",
            &[("target", "bad")]
        ),
        1.0
    );
    let d = engine.status()[0].last_decision.clone().unwrap();
    assert!(d.reason.contains("quarantined"), "{}", d.reason);
    // A fixed file releases it.
    write(
        dir.path(),
        "bad.lua",
        "return { decide = function(ctx) return 7 end } -- fixed, and longer than before",
    );
    let cmds = engine.tick(T0 + 6000);
    assert_eq!(
        cmds.iter()
            .find(|c| c.target == "bad")
            .map(|c| c.desired_replicas),
        Some(7)
    );
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_policy_quarantined",
            &[("target", "bad")]
        ),
        0.0
    );
    // A bomb at hot reload (at load time) keeps the running version.
    write(
        dir.path(),
        "bad.lua",
        r#"local x = ("a"):rep(40000):find(".-.-.-.-.-.-.-.-.-.-b")
return { decide = function(ctx) return 9 end }"#,
    );
    let started = std::time::Instant::now();
    let cmds = engine.tick(T0 + 7000);
    assert!(started.elapsed() < tick);
    assert!(
        cmds.iter().all(|c| c.target != "bad"),
        "still the fixed version, at 7"
    );
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_policy_reloads_total",
            &[("target", "bad"), ("result", "failed")]
        ),
        1.0
    );
}

/// Two engines over one configuration: a daily-seasonal history, a
/// scale-down held by stabilization and a policy's `state`, carried from
/// the first to the second by a snapshot (encoded and decoded, as a store
/// keeps it).
#[test]
fn a_snapshot_carries_forecasts_guard_and_policy_state_to_a_new_engine() {
    let policy = r#"return { decide = function(ctx)
        ctx.state.calls = (ctx.state.calls or 0) + 1
        local f = ctx.forecast("queue_depth", 600)
        local d = ctx.window("queue_depth", "10s")
        if not d then return nil end
        local why = f and string.format("%s %.6f", f.source, f.value) or "none"
        return { replicas = math.ceil(d.last / 100), reason = why .. " calls " .. ctx.state.calls }
    end }"#;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.lua", policy);
    write(
        dir.path(),
        "c.toml",
        r#"
[[targets]]
name = "web"
policy = "p.lua"
max_replicas = 50
initial_replicas = 2
stabilization_down = "300s"
"#,
    );
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    let build = || {
        let mut e = Engine::new(&cfg.engine, &cfg.targets, Arc::new(Metrics::new()), T0).unwrap();
        e.set_refit_mode(RefitMode::Inline);
        e
    };
    let mut a = build();
    // three days of a daily cycle, a report a minute
    let day = 86_400_000.0;
    let load =
        |t: Millis| 300.0 + 200.0 * (2.0 * std::f64::consts::PI * (t - T0) as f64 / day).sin();
    let mut now = T0;
    while now < T0 + 3 * 86_400_000 {
        a.ingest("t", &depth("web", load(now), now), now);
        a.evaluate(0, now);
        now += 60_000;
    }
    a.ingest("t", &depth("web", 1000.0, now), now);
    let up = a.evaluate(0, now).expect("a scale-up to 10");
    assert_eq!(up.desired_replicas, 10);
    now += 30_000;
    a.ingest("t", &depth("web", 500.0, now), now);
    assert!(a.evaluate(0, now).is_none(), "held by stabilization");
    let reason_a = a.status()[0].last_decision.clone().unwrap().reason;
    assert!(reason_a.starts_with("holt_winters"), "{reason_a}");

    let bytes = a.snapshot_of(0, now, "first").encode();
    let snap = crate::state::TargetSnapshot::decode("web", &bytes).unwrap();

    // the restarted engine: same forecast, same hold, the policy's count goes on
    let mut b = build();
    assert_eq!(b.restore(&snap), Restored::Applied);
    let fa = a.forecast("web", Metric::QueueDepth, now, 600_000).unwrap();
    let fb = b.forecast("web", Metric::QueueDepth, now, 600_000).unwrap();
    assert_eq!(fa, fb);
    let later = now + 10_000;
    for e in [&mut a, &mut b] {
        e.ingest("t", &depth("web", 500.0, later), later);
    }
    assert!(a.evaluate(0, later).is_none());
    assert!(
        b.evaluate(0, later).is_none(),
        "still held after the restore"
    );
    let (da, db) = (
        a.status()[0].last_decision.clone().unwrap(),
        b.status()[0].last_decision.clone().unwrap(),
    );
    assert_eq!(db.held, Some(crate::guard::HoldReason::Stabilization));
    assert_eq!(da.reason, db.reason, "same forecast, same policy state");
    assert_eq!(b.status()[0].replicas, 10);
    assert!(b.status()[0].generation >= up.generation);

    // without the snapshot the same signal scales down at once (the bug)
    let mut cold = build();
    cold.ingest("t", &depth("web", 500.0, later), later);
    assert_eq!(cold.evaluate(0, later).map(|c| c.desired_replicas), Some(5));
}

/// A command no worker answered before the restart is re-issued by the
/// new owner when `reissue_after` has passed since it went out, with the
/// same desired replicas and a new generation; an answer to it stops that.
#[test]
fn an_unanswered_command_survives_a_snapshot_and_is_reissued_by_the_new_owner() {
    let mut a = setup(DEPTH_POLICY, "", "reissue_after = \"10s\"");
    a.engine.ingest("t", &depth("web", 500.0, T0), T0);
    let c = a.engine.on_events(T0).pop().unwrap();
    assert_eq!(c.desired_replicas, 5);
    let bytes = a.engine.snapshot_of(0, T0 + 2_000, "first").encode();
    let snap = crate::state::TargetSnapshot::decode("web", &bytes).unwrap();

    let mut b = setup(DEPTH_POLICY, "", "reissue_after = \"10s\"");
    assert_eq!(b.engine.restore(&snap), Restored::Applied);
    assert!(b.engine.tick(T0 + 9_000).is_empty(), "not yet due");
    let again = b.engine.tick(T0 + 10_000);
    assert_eq!(again.len(), 1, "re-issued after the restart: {again:?}");
    let r = &again[0];
    assert_eq!((r.target.as_str(), r.desired_replicas), ("web", 5));
    assert_eq!(r.current_replicas, c.current_replicas);
    assert!(r.generation > c.generation && r.id != c.id, "{r:?}");
    assert!(r.reason.contains(&c.generation.to_string()), "{}", r.reason);

    // an answer that came before the snapshot: nothing to re-issue
    let mut a2 = setup(DEPTH_POLICY, "", "reissue_after = \"10s\"");
    a2.engine.ingest("t", &depth("web", 500.0, T0), T0);
    let c2 = a2.engine.on_events(T0).pop().unwrap();
    a2.engine.observe(&ScaleResult {
        version: 1,
        command_id: c2.id.clone(),
        target: "web".into(),
        generation: c2.generation,
        status: crate::command::ResultStatus::Applied,
        observed_replicas: Some(5),
        error: None,
        worker: "w".into(),
        finished_at: String::new(),
    });
    let snap2 = a2.engine.snapshot_of(0, T0 + 2_000, "first");
    assert!(snap2.unanswered.is_none());
    let mut b2 = setup(DEPTH_POLICY, "", "reissue_after = \"10s\"");
    b2.engine.restore(&snap2);
    assert!(b2.engine.tick(T0 + 10_000).is_empty());
}

/// `[targets.behavior]` from the configuration file reaches the guard:
/// with "4 pods per 15 s" a target evaluated on 100 signals a second for
/// two virtual minutes gains 4 replicas per 15 s, no more, and the holds
/// are counted as `scale_policy`.
#[test]
fn a_configured_behavior_limits_per_period_at_any_event_rate() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.lua", DEPTH_POLICY);
    write(
        dir.path(),
        "c.toml",
        r#"
[[targets]]
name = "web"
policy = "p.lua"
max_replicas = 50
initial_replicas = 2
params = { per = 100 }
[targets.behavior.scale_up]
policies = [{ type = "pods", value = 4, period = "15s" }]
"#,
    );
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut s = Setup {
        dir,
        engine: Engine::new(&cfg.engine, &cfg.targets, metrics.clone(), T0).unwrap(),
        metrics,
    };
    let mut added: Vec<(Millis, u32)> = Vec::new();
    let mut current = 2;
    for i in 0..12_000 {
        let now = T0 + i * 10;
        s.engine.ingest("t", &depth("web", 4_000.0, now), now);
        for c in s.engine.on_events(now) {
            if c.target == "web" {
                added.push((now, c.desired_replicas - current));
                current = c.desired_replicas;
            }
        }
    }
    for &(t, _) in &added {
        let in_period: u32 = added
            .iter()
            .filter(|(u, _)| *u >= t && *u < t + 15_000)
            .map(|(_, n)| n)
            .sum();
        assert!(
            in_period <= 4,
            "{in_period} added within 15 s of {t}: {added:?}"
        );
    }
    assert_eq!(current, 2 + 4 * 8, "120 s at 4 per 15 s: {added:?}");
    assert!(
        counter(
            &s.metrics,
            "tidewatch_decision_holds_total",
            &[("target", "web"), ("reason", "scale_policy")]
        ) > 1000.0
    );
}

/// Signals stop: after `stale_after` the target goes to
/// `fallback_replicas` (on_stale = "fallback"), flagged and counted; when
/// they resume the policy decides again. `ctx.age` tells the policy how
/// old the newest sample is. With on_stale = "hold" nothing is commanded;
/// probe failures past `failure_threshold` make a target stale too.
#[test]
fn stale_signals_fall_back_and_recover() {
    let policy = r#"return { decide = function(ctx)
        local d = ctx.window("queue_depth", "10s")
        if not d then return nil end
        return { replicas = math.ceil(d.last / 100), reason = string.format("age %.1f", ctx.age("queue_depth")) }
    end }"#;
    let mut s = setup(
        policy,
        "stale_after = \"30s\"\non_stale = \"fallback\"\nfallback_replicas = 3",
        "reissue_after = \"0s\"",
    );
    let stale = |s: &Setup| counter(&s.metrics, "tidewatch_target_stale", &[("target", "web")]);
    s.engine.ingest("t", &depth("web", 500.0, T0), T0);
    let c = s.engine.on_events(T0).pop().unwrap();
    assert_eq!(c.desired_replicas, 5);
    assert!(c.reason.starts_with("age 0.0"), "{}", c.reason);
    // 30 s without a sample: still fresh (the window still holds it)
    let at = |ms: i64| T0 + ms;
    assert!(s.engine.tick(at(30_000)).iter().all(|c| c.target != "web"));
    assert_eq!(stale(&s), 0.0);
    // past it: the fallback
    let c: Vec<_> = s
        .engine
        .tick(at(31_000))
        .into_iter()
        .filter(|c| c.target == "web")
        .collect();
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].desired_replicas, 3);
    assert!(
        c[0].reason.contains("no sample of queue_depth for 31s"),
        "{}",
        c[0].reason
    );
    assert!(
        c[0].reason.contains("fallback_replicas 3"),
        "{}",
        c[0].reason
    );
    assert_eq!(stale(&s), 1.0);
    // held there while stale (no repeated commands)
    assert!(s.engine.tick(at(40_000)).iter().all(|c| c.target != "web"));
    // signals resume: the policy decides again
    s.engine
        .ingest("t", &depth("web", 900.0, at(41_000)), at(41_000));
    let c = s
        .engine
        .on_events(at(41_000))
        .pop()
        .expect("a decision on the fresh signal");
    assert_eq!(c.desired_replicas, 9);
    assert_eq!(stale(&s), 0.0);
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_target_stale_changes_total",
            &[("target", "web"), ("to", "stale")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_target_stale_changes_total",
            &[("target", "web"), ("to", "fresh")]
        ),
        1.0
    );

    // on_stale = "hold": the count stays, the hold says why
    let mut h = setup(
        DEPTH_POLICY,
        "stale_after = \"30s\"",
        "reissue_after = \"0s\"",
    );
    h.engine.ingest("t", &depth("web", 500.0, T0), T0);
    assert_eq!(h.engine.on_events(T0).pop().unwrap().desired_replicas, 5);
    assert!(h.engine.tick(at(60_000)).iter().all(|c| c.target != "web"));
    let d = h.engine.status()[0].last_decision.clone().unwrap();
    assert_eq!(d.held, Some(crate::guard::HoldReason::Stale));
    assert!(d.reason.contains("on_stale hold"), "{}", d.reason);

    // a probe that fails failure_threshold (3) times in a row
    let mut p = setup(
        DEPTH_POLICY,
        "on_stale = \"fallback\"\nfallback_replicas = 4",
        "reissue_after = \"0s\"",
    );
    p.engine.ingest("t", &depth("web", 500.0, T0), T0);
    assert_eq!(p.engine.on_events(T0).pop().unwrap().desired_replicas, 5);
    for _ in 0..2 {
        p.engine.probe_measured("web", false);
    }
    assert!(
        p.engine.tick(at(1_000)).iter().all(|c| c.target != "web"),
        "two failures are not three"
    );
    p.engine.probe_measured("web", false);
    let c: Vec<_> = p
        .engine
        .tick(at(2_000))
        .into_iter()
        .filter(|c| c.target == "web")
        .collect();
    assert_eq!(c[0].desired_replicas, 4, "{c:?}");
    assert!(
        c[0].reason.contains("3 probe measurements failed in a row"),
        "{}",
        c[0].reason
    );
    p.engine.probe_measured("web", true);
    p.engine
        .ingest("t", &depth("web", 500.0, at(3_000)), at(3_000));
    assert_eq!(
        p.engine
            .on_events(at(3_000))
            .pop()
            .unwrap()
            .desired_replicas,
        5
    );
}

/// KEDA's activation: a target at zero stays there below the threshold,
/// whatever the policy says; above it, the policy sizes it; after
/// `idle_after` at or below the threshold it goes straight to zero.
#[test]
fn activation_holds_zero_until_the_threshold_and_returns_to_zero_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.lua", DEPTH_POLICY);
    write(
        dir.path(),
        "c.toml",
        r#"
[engine]
reissue_after = "0s"
[[targets]]
name = "web"
policy = "p.lua"
min_replicas = 0
max_replicas = 50
stabilization_down = "0s"
params = { per = 100 }
[targets.activation]
metric = "queue_depth"
threshold = 10
idle_after = "60s"
"#,
    );
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut e = Engine::new(&cfg.engine, &cfg.targets, metrics.clone(), T0).unwrap();
    let at = |e: &mut Engine, ms: i64, d: f64| {
        e.ingest("t", &depth("web", d, T0 + ms), T0 + ms);
        e.on_events(T0 + ms).pop()
    };
    // below the threshold: the policy would ask for 1, the target stays at 0
    assert!(at(&mut e, 0, 5.0).is_none());
    let d = e.status()[0].last_decision.clone().unwrap();
    assert_eq!(d.held, Some(crate::guard::HoldReason::Inactive));
    assert!(
        d.reason.contains("inactive: queue_depth last 5"),
        "{}",
        d.reason
    );
    // above it: activated, and then sized by the policy
    assert_eq!(at(&mut e, 1_000, 11.0).unwrap().desired_replicas, 1);
    assert_eq!(at(&mut e, 2_000, 300.0).unwrap().desired_replicas, 3);
    // quiet: the policy sizes down, but not to zero before idle_after
    assert_eq!(at(&mut e, 3_000, 5.0).unwrap().desired_replicas, 1);
    assert!(at(&mut e, 50_000, 5.0).is_none());
    let zero = at(&mut e, 63_000, 5.0).expect("idle for 60 s: to zero");
    assert_eq!(zero.desired_replicas, 0);
    assert!(
        zero.reason
            .contains("idle: queue_depth last 5, at or below 10 for 60s"),
        "{}",
        zero.reason
    );
    // at zero it stays; a burst above the threshold wakes it
    assert!(at(&mut e, 64_000, 8.0).is_none());
    assert_eq!(at(&mut e, 65_000, 40.0).unwrap().desired_replicas, 1);

    // config check: activation needs min_replicas = 0 and a real metric
    write(
        dir.path(),
        "bad.toml",
        "[[targets]]\nname = \"web\"\npolicy = \"p.lua\"\nmax_replicas = 5\n[targets.activation]\nmetric = \"depth\"\nstat = \"median\"\nthreshold = 1\n",
    );
    let err = Config::load(&dir.path().join("bad.toml"))
        .unwrap_err()
        .to_string();
    for want in [
        "targets[0].activation.metric: \"depth\" is not a metric",
        "targets[0].activation.stat: \"median\" is not one of",
        "set min_replicas = 0 (it is 1)",
    ] {
        assert!(err.contains(want), "no {want:?} in {err}");
    }
}

fn control(action: &str, extra: &str, ts: Millis) -> Vec<u8> {
    format!(
        r#"{{"type":"control","target":"web","action":"{action}","by":"alice","reason":"incident 4411","ts":{ts}{extra}}}"#
    )
    .into_bytes()
}

/// Control messages with the signals: pause (no commands, reasons say
/// who and why), pause scale-in only, pin (one command past every guard
/// rule, then nothing), dry run, resume, an `until` that lifts itself, and
/// the state through a snapshot. Bad ones are rejected with a reason.
#[test]
fn control_messages_pause_pin_and_resume() {
    let eng = "reissue_after = \"0s\"\nmin_eval_interval = \"0s\"";
    let mut s = setup(DEPTH_POLICY, "", eng);
    let paused = |s: &Setup, mode: &str| {
        counter(
            &s.metrics,
            "tidewatch_target_paused",
            &[("target", "web"), ("mode", mode)],
        )
    };
    let web = |cs: Vec<ScaleCommand>| {
        cs.into_iter()
            .filter(|c| c.target == "web")
            .collect::<Vec<_>>()
    };
    s.engine.ingest("t", &depth("web", 500.0, T0), T0);
    assert_eq!(web(s.engine.on_events(T0))[0].desired_replicas, 5);
    // pause: the policy still decides, nothing is commanded
    let r = s.engine.ingest("t", &control("pause", "", T0 + 1), T0 + 1);
    assert_eq!(r.applied, 1, "{r:?}");
    assert_eq!(paused(&s, "paused"), 1.0);
    s.engine.ingest("t", &depth("web", 900.0, T0 + 2), T0 + 2);
    assert!(web(s.engine.on_events(T0 + 2)).is_empty());
    let d = s.engine.status()[0].last_decision.clone().unwrap();
    assert_eq!(d.held, Some(crate::guard::HoldReason::Paused));
    assert!(
        d.reason.contains("control: pause by alice (incident 4411)"),
        "{}",
        d.reason
    );
    // pause scale-in only: up goes, down does not
    s.engine
        .ingest("t", &control("pause_scale_in", "", T0 + 3), T0 + 3);
    assert_eq!(paused(&s, "paused"), 0.0);
    assert_eq!(paused(&s, "paused_scale_in"), 1.0);
    s.engine.ingest("t", &depth("web", 900.0, T0 + 4), T0 + 4);
    let up = web(s.engine.on_events(T0 + 4));
    assert_eq!(up[0].desired_replicas, 9);
    assert!(
        up[0].reason.contains("control: pause scale in by alice"),
        "{}",
        up[0].reason
    );
    s.engine.ingest("t", &depth("web", 100.0, T0 + 5), T0 + 5);
    assert!(
        web(s.engine.on_events(T0 + 5)).is_empty(),
        "scale-in paused"
    );
    // pin: one command to 12 whatever the policy says, then nothing
    s.engine
        .ingest("t", &control("pin", r#","replicas":12"#, T0 + 6), T0 + 6);
    let pin = web(s.engine.on_events(T0 + 6));
    assert_eq!(pin.len(), 1);
    assert_eq!(pin[0].desired_replicas, 12);
    assert!(
        pin[0].reason.contains("pinned to 12 by alice"),
        "{}",
        pin[0].reason
    );
    s.engine.ingest("t", &depth("web", 100.0, T0 + 7), T0 + 7);
    assert!(web(s.engine.on_events(T0 + 7)).is_empty(), "pinned");
    // dry run on, then resume: commands again, dry_run off
    s.engine
        .ingest("t", &control("dry_run_on", "", T0 + 8), T0 + 8);
    s.engine.ingest("t", &control("resume", "", T0 + 9), T0 + 9);
    assert_eq!(paused(&s, "pinned"), 0.0);
    s.engine.ingest("t", &depth("web", 300.0, T0 + 10), T0 + 10);
    let back = web(s.engine.on_events(T0 + 10));
    assert_eq!(back[0].desired_replicas, 3);
    assert!(
        !back[0].dry_run && !back[0].reason.contains("control:"),
        "{:?}",
        back[0]
    );
    // dry run alone: commands carry dry_run
    s.engine
        .ingest("t", &control("dry_run_on", "", T0 + 11), T0 + 11);
    s.engine.ingest("t", &depth("web", 700.0, T0 + 12), T0 + 12);
    assert!(web(s.engine.on_events(T0 + 12))[0].dry_run);
    // a pause until a time lifts itself then; it survives a snapshot
    let until = T0 + 60_000;
    s.engine.ingest(
        "t",
        &control("pause", &format!(r#","until":{until}"#), T0 + 13),
        T0 + 13,
    );
    let snap = crate::state::TargetSnapshot::decode(
        "web",
        &s.engine.snapshot_of(0, T0 + 14, "first").encode(),
    )
    .unwrap();
    let mut b = setup(DEPTH_POLICY, "", eng);
    assert_eq!(b.engine.restore(&snap), Restored::Applied);
    b.engine
        .ingest("t", &depth("web", 100.0, T0 + 20_000), T0 + 20_000);
    assert!(
        web(b.engine.on_events(T0 + 20_000)).is_empty(),
        "paused after the restart"
    );
    assert_eq!(paused(&b, "paused"), 1.0);
    b.engine.ingest("t", &depth("web", 100.0, until), until);
    let lifted = web(b.engine.on_events(until));
    assert_eq!(lifted[0].desired_replicas, 1, "resumed by itself at until");
    assert_eq!(paused(&b, "paused"), 0.0);
    // a re-read older control (a replay) changes nothing
    b.engine
        .ingest("t", &control("pause", "", T0 + 5), until + 1);
    assert_eq!(paused(&b, "paused"), 0.0);

    // bad ones: each rejected with its reason
    let now = T0 + 100_000;
    for (msg, reason, detail) in [
        (
            control("explode", "", now),
            "invalid_control",
            "action \"explode\" is not one of",
        ),
        (
            control("pin", r#","replicas":80"#, now),
            "invalid_control",
            "outside [min_replicas 1, max_replicas 50]",
        ),
        (
            control("pin", "", now),
            "missing_field",
            "`replicas` is required",
        ),
        (
            control("pause", &format!(r#","until":{}"#, now - 1000), now),
            "invalid_control",
            "is in the past",
        ),
    ] {
        let r = b.engine.ingest("t", &msg, now);
        assert_eq!(r.applied, 0);
        let (_, rej) = &r.rejected[0];
        assert_eq!(rej.reason.code(), reason, "{rej}");
        assert!(rej.detail.contains(detail), "{rej}");
    }
    let unknown = br#"{"type":"control","target":"nope","action":"pause"}"#;
    let r = b.engine.ingest("t", unknown, now);
    assert_eq!(r.rejected[0].1.reason, Reason::UnknownTarget);
}

/// `ctx.behavior` says whether the guard applies the HPA's behavior, and
/// `policies/hpa.lua` leaves its own scale-up limit out then: from 2
/// replicas at 10 times its load it asks for 6 alone (max(+100%, +4)), but
/// for the whole 20 when the guard limits the rate.
#[test]
fn hpa_lua_leaves_the_rate_to_a_configured_behavior() {
    let dir = tempfile::tempdir().unwrap();
    let hpa = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/hpa.lua");
    let target = |name: &str, behavior: &str| {
        format!(
            "[[targets]]\nname = \"{name}\"\npolicy = \"{hpa}\"\nmax_replicas = 100\ninitial_replicas = 2\nstabilization_down = \"300s\"\nparams = {{ target_per_replica = 100, metric = \"queue_depth\", stat = \"last\", window = \"10s\" }}\n{behavior}\n"
        )
    };
    write(
        dir.path(),
        "c.toml",
        &format!(
            "[engine]\nmin_eval_interval = \"0s\"\n{}{}",
            target("plain", ""),
            target(
                "guarded",
                "[targets.behavior.scale_up]\npolicies = [{ type = \"pods\", value = 100, period = \"15s\" }]"
            )
        ),
    );
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    let mut e = Engine::new(&cfg.engine, &cfg.targets, Arc::new(Metrics::new()), T0).unwrap();
    for t in ["plain", "guarded"] {
        e.ingest("t", &depth(t, 2000.0, T0), T0);
    }
    let mut out: Vec<(String, u32)> = e
        .on_events(T0)
        .into_iter()
        .map(|c| (c.target, c.desired_replicas))
        .collect();
    out.sort();
    assert_eq!(out, vec![("guarded".into(), 20), ("plain".into(), 6)]);
}

/// `tidewatch_signal_to_command_seconds` runs from the signal's own time,
/// not from when the engine received it: a signal taken 3 s before it
/// arrived answers in 3 s, though the engine took no time at all.
#[test]
fn the_reaction_from_the_signals_own_time_is_measured() {
    let mut s = setup(DEPTH_POLICY, "", "min_eval_interval = \"0s\"");
    s.engine.ingest("t", &depth("web", 500.0, T0 - 3_000), T0);
    assert_eq!(s.engine.on_events(T0).len(), 1);
    let text = s.metrics.render();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("target=\"web\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert_eq!(value("tidewatch_signal_to_command_seconds_count"), 1.0);
    assert!((value("tidewatch_signal_to_command_seconds_sum") - 3.0).abs() < 1e-9);
    // the engine's own part: received and decided at once
    assert_eq!(value("tidewatch_event_to_command_seconds_sum"), 0.0);
}

#[test]
fn a_snapshot_of_an_unknown_target_changes_nothing() {
    let mut s = setup(DEPTH_POLICY, "", "");
    let mut snap = s.engine.snapshot_of(0, T0, "x");
    snap.target = "gone".into();
    assert_eq!(s.engine.restore(&snap), Restored::NotConfigured);
}

#[test]
fn a_policy_state_with_a_function_is_reported_and_the_rest_kept() {
    let policy = r#"return { decide = function(ctx)
        ctx.state.n = 7
        ctx.state.cb = function() end
        return nil end }"#;
    let mut s = setup(policy, "", "");
    s.engine.evaluate(0, T0);
    let snap = s.engine.snapshot_of(0, T0, "x");
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_policy_errors_total",
            &[("target", "web"), ("kind", "state")]
        ),
        1.0
    );
    let crate::policy::Plain::Table(pairs) = &snap.policy_state else {
        panic!("a table")
    };
    assert_eq!(pairs.len(), 1, "{pairs:?}");
}

/// With Kafka partitions, a target no signal of which came from a
/// partition is this scaler's only when its probe measured it and its
/// home partition is here, or when every partition is here: then it is
/// evaluated and its state written (before its home partition is
/// revoked, too).
/// Otherwise another scaler may read its signals, and deciding for it
/// here (a stale fallback) or writing it would fight that scaler.
#[test]
fn a_target_without_a_partition_is_ours_by_its_probe_or_with_every_partition_here() {
    let mut s = setup(DEPTH_POLICY, "", "");
    let dir = tempfile::tempdir().unwrap();
    let store = crate::state::dir::DirStore::open(dir.path()).unwrap();
    let (handle, _thread) = crate::state::StateHandle::start(Box::new(store), s.metrics.clone());
    s.engine
        .keep_state(handle.clone(), Duration::from_secs(3600));
    let ownership: SharedOwnership = Default::default();
    // two partitions; the one web is homed on is not here yet
    let home = {
        let mut o = ownership.lock().unwrap();
        o.joined();
        o.home_topic("signals");
        o.partition_counts(Some(std::collections::HashMap::from([(
            "signals".to_owned(),
            2,
        )])));
        o.home("web").unwrap().1
    };
    s.engine.track_ownership(ownership.clone());
    let calls =
        |m: &Metrics, t: &str| counter(m, "tidewatch_policy_evaluations_total", &[("target", t)]);
    // a probe measured web; nothing came for other
    s.engine.probe_measured("web", true);
    s.engine.ingest("t", &depth("web", 300.0, T0), T0);
    let out = s.engine.tick(T0);
    assert!(
        out.is_empty(),
        "web's home partition is another scaler's: {out:?}"
    );
    assert_eq!(calls(&s.metrics, "web"), 0.0);
    assert_eq!(s.engine.snapshot_all(T0), 0, "nothing of ours to write");
    ownership
        .lock()
        .unwrap()
        .assign("signals", home, None, i64::MIN, None);
    let out = s.engine.tick(T0 + 500);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].target, "web");
    assert_eq!(calls(&s.metrics, "other"), 0.0, "other is not ours");
    assert_eq!(s.engine.snapshot_all(T0), 1, "web written, other not");
    // before its home partition is revoked, web is written with it
    assert_eq!(
        s.engine
            .snapshot_partitions(&[("signals".to_owned(), home)], T0),
        1
    );
    assert_eq!(
        s.engine
            .snapshot_partitions(&[("signals".to_owned(), 1 - home)], T0),
        0
    );
    // both partitions: every partition is here
    ownership
        .lock()
        .unwrap()
        .assign("signals", 1 - home, None, i64::MIN, None);
    s.engine.tick(T0 + 1000);
    assert!(calls(&s.metrics, "other") > 0.0, "other is ours now");
    assert_eq!(s.engine.snapshot_all(T0 + 1000), 2);
    stored(&handle);
    // an older snapshot of web (another process's) does not roll back
    // what web's probe has been deciding here since
    let mut old = s.engine.snapshot("web", T0 - 60_000, "another").unwrap();
    old.current = 40;
    assert_eq!(s.engine.restore(&old), Restored::Newer);
    assert_ne!(s.engine.status()[0].replicas, 40);
}

/// Each changed target is written at most once per `state.interval`,
/// however few targets there are (the round robin alone wrote a target
/// every N ticks).
#[test]
fn periodic_snapshots_keep_to_the_interval() {
    let mut s = setup(DEPTH_POLICY, "", "");
    let dir = tempfile::tempdir().unwrap();
    let store = crate::state::dir::DirStore::open(dir.path()).unwrap();
    let (handle, _thread) = crate::state::StateHandle::start(Box::new(store), s.metrics.clone());
    s.engine.keep_state(handle.clone(), Duration::from_secs(10));
    // 30 s of ticks, a signal every second: both targets change every tick
    for i in 0..30 {
        let now = T0 + i * 1000;
        s.engine
            .ingest("t", &depth("web", 100.0 + i as f64, now), now);
        s.engine
            .ingest("t", &depth("other", 100.0 + i as f64, now), now);
        s.engine.tick(now);
    }
    stored(&handle);
    let written = counter(
        &s.metrics,
        "tidewatch_state_snapshots_total",
        &[("store", "dir"), ("result", "ok")],
    );
    // at 0 s, 10 s and 20 s for each of the two targets
    assert_eq!(written, 6.0);
}

/// An engine of `n` targets `t0..t{n-1}` on DEPTH_POLICY, each with a
/// queue depth of 420 already applied (no evaluation on the event yet).
fn many_targets(n: usize) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.lua", DEPTH_POLICY);
    let mut toml = String::from("[engine]\nevaluate_on_event = false\n");
    for i in 0..n {
        toml.push_str(&format!(
            "[[targets]]\nname = \"t{i}\"\npolicy = \"p.lua\"\nmax_replicas = 50\nparams = {{ per = 100 }}\n"
        ));
    }
    write(dir.path(), "c.toml", &toml);
    let (cfg, _) = Config::load(&dir.path().join("c.toml")).unwrap();
    let mut engine = Engine::new(&cfg.engine, &cfg.targets, Arc::new(Metrics::new()), T0).unwrap();
    for i in 0..n {
        assert_eq!(
            engine
                .ingest("t", &depth(&format!("t{i}"), 420.0, T0), T0)
                .applied,
            1
        );
    }
    (dir, engine)
}

/// Issue 21: a tick is spread over slices of about 32 neighbouring
/// targets, each target evaluated once per tick at its own phase.
#[test]
fn a_spread_tick_evaluates_each_target_once_at_its_own_phase() {
    let s = setup(DEPTH_POLICY, "", "");
    assert_eq!(
        s.engine.tick_parts(Duration::from_secs(1)),
        1,
        "two targets: one slice"
    );
    let (_dir, mut engine) = many_targets(600);
    assert_eq!(engine.tick_parts(Duration::from_secs(1)), 19);
    assert_eq!(
        engine.tick_parts(Duration::from_millis(3)),
        3,
        "at most one slice per millisecond"
    );
    let mut seen = std::collections::BTreeMap::new();
    let mut next = 0;
    for part in 0..19 {
        let mut slice = Vec::new();
        for c in engine.tick_part(T0 + 10 * part as i64, part, 19) {
            let i: usize = c.target[1..].parse().unwrap();
            assert_eq!(c.desired_replicas, 5);
            assert!(seen.insert(i, part).is_none(), "{} twice", c.target);
            slice.push(i);
        }
        // a run of neighbours (a few VMs' memory, not one target in each
        // of them), following the slice before
        slice.sort_unstable();
        assert!((31..=32).contains(&slice.len()), "slice {part}: {slice:?}");
        let run: Vec<usize> = (next..next + slice.len()).collect();
        assert_eq!(slice, run, "slice {part}");
        next += slice.len();
    }
    assert_eq!(seen.len(), 600, "every target once");
}

/// `drive` spreads the tick: 96 targets in three slices of 32 a third of
/// a tick apart, all within the first tick.
#[tokio::test(start_paused = true)]
async fn drive_spreads_the_tick_over_slices() {
    let (_dir, engine) = many_targets(96);
    let Driving {
        clock,
        in_tx: _in_tx,
        mut out_rx,
        stop_tx,
        task,
    } = start_drive(engine, 1024);
    let mut at = std::collections::BTreeMap::<i64, usize>::new();
    for _ in 0..96 {
        let _c = out_rx.recv().await.unwrap();
        *at.entry(clock.now_ms() - T0).or_default() += 1;
    }
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    let times: Vec<(i64, usize)> = at.into_iter().collect();
    assert_eq!(times.len(), 3, "{times:?}");
    assert!(times.iter().all(|&(_, n)| n == 32), "{times:?}");
    assert!(times[2].0 < 1000, "all within the first tick: {times:?}");
    assert!(
        (300..=340).contains(&(times[1].0 - times[0].0)),
        "{times:?}"
    );
}

/// A slice gives way to inputs between two targets and goes on where it
/// stopped: every target of the slice once, none twice, however often it
/// gives way (issue 21: an input waited behind a whole slice).
#[test]
fn a_slice_gives_way_between_targets_and_goes_on_where_it_stopped() {
    let (_dir, mut e) = many_targets(600);
    let asked = std::cell::Cell::new(0);
    let mut out = Vec::new();
    let mut calls = 0;
    while !e.tick_part_until(T0, 0, 1, &mut out, || {
        asked.set(asked.get() + 1);
        asked.get() % 100 == 0
    }) {
        calls += 1;
        assert!(calls < 100, "the slice never ends");
    }
    // asked between each two of the 600 targets, giving way 5 times
    assert_eq!((asked.get(), calls), (599, 5));
    let mut names: Vec<&str> = out.iter().map(|c| c.target.as_str()).collect();
    assert_eq!(names.len(), 600);
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 600, "a target evaluated twice");
    // the next slice starts afresh
    assert!(e.tick_part_until(T0 + 1000, 0, 1, &mut Vec::new(), || false));
}

/// Event-driven evaluation looks only at the targets that got events
/// (issue 21: it scanned every target on each batch), in target order,
/// and a target evaluated within `min_eval_interval` waits its turn.
#[test]
fn events_evaluate_only_the_targets_that_got_them() {
    let s = setup(DEPTH_POLICY, "", "min_eval_interval = \"100ms\"");
    let mut e = s.engine;
    assert_eq!(e.next_event_eval(), None);
    e.ingest("t", &depth("other", 300.0, T0), T0);
    e.ingest("t", &depth("web", 300.0, T0), T0);
    let names: Vec<String> = e.on_events(T0).into_iter().map(|c| c.target).collect();
    assert_eq!(names, ["web", "other"], "in target order");
    assert_eq!(e.next_event_eval(), None, "nothing waits");
    assert!(e.on_events(T0 + 1).is_empty());
    // web again 10 ms later: due at T0 + 100
    e.ingest("t", &depth("web", 900.0, T0 + 10), T0 + 10);
    assert!(e.on_events(T0 + 10).is_empty());
    assert_eq!(e.next_event_eval(), Some(T0 + 100));
    let c = e.on_events(T0 + 100);
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].target.as_str(), c[0].desired_replicas), ("web", 9));
    assert_eq!(e.next_event_eval(), None);
}

/// With RabbitMQ slot queues, the engine decides only for the targets of
/// the slots this scaler holds, and stops when it loses them.
#[test]
fn slots_decide_which_targets_are_ours() {
    let mut s = setup(DEPTH_POLICY, "", "");
    let slots = Arc::new(slots::Slots::new(64));
    let (web, other) = (slots.slot_of("web"), slots.slot_of("other"));
    assert_ne!(web, other, "the two targets hash to different slots");
    s.engine.track_slots(slots.clone());
    for t in ["web", "other"] {
        s.engine.ingest("amqp", &depth(t, 400.0, T0), T0);
    }
    let decided = |cmds: &[ScaleCommand]| {
        let mut t: Vec<&str> = cmds.iter().map(|c| c.target.as_str()).collect();
        t.sort();
        t.join(",")
    };
    assert_eq!(decided(&s.engine.tick(T0 + 1000)), "", "no slot held");
    slots.gained(web);
    assert_eq!(decided(&s.engine.tick(T0 + 2000)), "web");
    slots.gained(other);
    s.engine
        .ingest("amqp", &depth("web", 900.0, T0 + 2500), T0 + 2500);
    assert_eq!(decided(&s.engine.tick(T0 + 3000)), "other,web");
    slots.lost_all();
    s.engine
        .ingest("amqp", &depth("web", 1500.0, T0 + 3500), T0 + 3500);
    assert_eq!(decided(&s.engine.tick(T0 + 4000)), "", "every slot lost");
    assert!(s.engine.on_events(T0 + 4100).is_empty());
}

/// Signals go before the tick's next slice (issue 21), but a flood of them
/// cannot stop the tick: the input channel yields to the ticker when
/// tokio's budget for the task runs out, so the tick is late, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_inputs_does_not_stop_the_tick() {
    let (_dir, engine) = many_targets(600);
    let Driving {
        clock: _clock,
        in_tx,
        mut out_rx,
        stop_tx,
        task,
    } = start_drive(engine, 1024);
    // batches of 2,000 signals: each costs the engine far more than the
    // sender, so the input channel is never empty
    let messages: Arc<Vec<(Origin, Vec<u8>)>> = Arc::new(
        (0..2000)
            .map(|i| {
                (
                    Origin::default(),
                    depth(&format!("t{}", i % 600), 420.0, T0),
                )
            })
            .collect(),
    );
    let flood = tokio::spawn(async move {
        let mut sent = 0;
        loop {
            let msg = EngineInput::Batch {
                source: "t",
                messages: messages.clone(),
                done: None,
            };
            if in_tx.send(msg).await.is_err() {
                return sent;
            }
            sent += 1;
        }
    });
    // the first tick's 600 commands (in slices) get out during the flood
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..600 {
            out_rx.recv().await.unwrap();
        }
    })
    .await;
    assert!(got.is_ok(), "the tick did not get through the flood");
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    assert!(flood.await.unwrap() > 16, "the channel was kept full");
}

/// Waits until the state thread has stored everything queued before.
fn stored(handle: &crate::state::StateHandle) {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(handle.flush())
        .unwrap()
        .unwrap();
}

/// A state store that calls its function at each write and keeps nothing.
struct OnWrite<F>(F);

impl<F: FnMut() + Send> crate::state::StateStore for OnWrite<F> {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn write(&mut self, _: &str, _: &[u8]) -> Result<(), crate::state::StoreError> {
        (self.0)();
        Ok(())
    }
    fn flush(&mut self) -> Result<(), crate::state::StoreError> {
        Ok(())
    }
    fn read(&mut self, _: &[String]) -> Result<Vec<(String, Vec<u8>)>, crate::state::StoreError> {
        Ok(Vec::new())
    }
}

/// A store slower than `state.interval` asks: the queue of snapshots
/// fills, the round stalls, and the oldest changed target's snapshot
/// age grows past the interval; once the store drains it comes back.
#[test]
fn the_snapshot_age_shows_a_store_that_does_not_keep_up() {
    use std::sync::Condvar;
    // more targets than the writer's queue holds
    let n = crate::state::writer::MAX_QUEUED + 44;
    let (_dir, mut engine) = many_targets(n);
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    // every write waits until the gate opens
    let shut = gate.clone();
    let gated = OnWrite(move || {
        let (open, cv) = &*shut;
        let mut o = open.lock().unwrap();
        while !*o {
            o = cv.wait(o).unwrap();
        }
    });
    let (handle, _thread) =
        crate::state::StateHandle::start(Box::new(gated), engine.metrics().clone());
    engine.keep_state(handle.clone(), Duration::from_secs(10));
    let metrics = engine.metrics().clone();
    let age = || {
        crate::telemetry::sum(
            &metrics,
            "tidewatch_state_snapshot_age_seconds",
            &[("shard", "0")],
        )
    };
    // ticks of virtual time, as fast as they run; `drained`: the store
    // takes a tick's snapshots before the next tick (a second is long
    // beside that), not whatever the state thread did meanwhile
    let run = |engine: &mut Engine, from: i64, seconds: i64, drained: bool| {
        for s in from..from + seconds {
            let now = T0 + s * 1000;
            for i in 0..n {
                engine.ingest("t", &depth(&format!("t{i}"), 100.0 + s as f64, now), now);
            }
            engine.tick(now);
            if drained {
                stored(&handle);
            }
        }
    };
    run(&mut engine, 0, 30, false);
    assert!(age() >= 20.0, "stuck store: oldest snapshot {} s", age());
    {
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
    run(&mut engine, 30, 30, true);
    assert!(age() <= 20.0, "drained: oldest snapshot {} s", age());
}

/// Each slice of a spread tick queues its share of the tick's periodic
/// snapshots, so the state thread's queue is filled again as it drains.
/// Queued once a tick, with part 0, they were capped at the queue's
/// `MAX_QUEUED` a tick, whatever `state.interval` asked (about 300 a
/// second at 50,000 targets, where 30 s asks for 1,667).
#[test]
fn each_slice_queues_its_share_of_the_snapshots() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = 1024;
    let (_dir, mut engine) = many_targets(n);
    let written = Arc::new(AtomicUsize::new(0));
    let count = written.clone();
    let counting = OnWrite(move || {
        count.fetch_add(1, Ordering::Relaxed);
    });
    let (handle, _thread) =
        crate::state::StateHandle::start(Box::new(counting), engine.metrics().clone());
    // every target's turn once in 8 ticks: 128 a tick
    engine.keep_state(handle.clone(), Duration::from_secs(8));
    let parts = engine.tick_parts(Duration::from_secs(1));
    assert_eq!(parts, 32);
    let flushed = || {
        stored(&handle);
        written.load(Ordering::Relaxed)
    };
    engine.tick_part(T0, 0, parts);
    assert_eq!(flushed(), 128 / 32, "the first slice's share");
    for part in 1..parts / 2 {
        engine.tick_part(T0, part, parts);
    }
    assert_eq!(flushed(), 128 / 2, "half the slices, half the tick's");
    for part in parts / 2..parts {
        engine.tick_part(T0, part, parts);
    }
    assert_eq!(flushed(), 128, "the whole tick's");
}

/// `web` of [`setup`] with `policy`, and the one command a depth of 730
/// makes.
fn first_command(policy: &str) -> (Setup, Vec<crate::command::ScaleCommand>) {
    let mut s = setup(policy, "", "");
    s.engine.ingest("test", &depth("web", 730.0, T0), T0 + 3);
    let cmds = s.engine.on_events(T0 + 3);
    assert_eq!(cmds.len(), 1);
    (s, cmds)
}

/// A policy's reason returned as a pattern and its arguments reads the
/// same as one formatted in the call: in the command, and in the status
/// of a decision that was held (where it was formatted only when read).
#[test]
fn a_reason_kept_as_a_pattern_reads_whole_in_the_command_and_the_status() {
    let policy = r#"
local P = {}
function P.decide(ctx)
  local d = ctx.window("queue_depth", "10s", "last")
  if not d then return nil end
  return math.ceil(d / ctx.params.per), "depth %d over %d a replica", d, ctx.params.per
end
return P
"#;
    let (mut s, cmds) = first_command(policy);
    assert_eq!(cmds[0].desired_replicas, 8);
    assert!(
        cmds[0].reason.starts_with("depth 730 over 100 a replica; "),
        "{}",
        cmds[0].reason
    );
    let issued = s.engine.status()[0].last_decision.clone().unwrap();
    assert_eq!(issued.reason, cmds[0].reason);
    // the same depth again: held, its reason formatted when the status asks
    s.engine
        .ingest("test", &depth("web", 750.0, T0 + 2_000), T0 + 2_003);
    assert!(s.engine.evaluate(0, T0 + 2_003).is_none());
    let held = s.engine.status()[0].last_decision.clone().unwrap();
    assert!(held.held.is_some(), "{held:?}");
    assert!(
        held.reason.starts_with("depth 750 over 100 a replica; "),
        "{}",
        held.reason
    );
}

/// A reason pattern its arguments do not fit: the command goes out with
/// the pattern and the error as its reason, and the error is counted as
/// the policy's.
#[test]
fn a_reason_pattern_that_does_not_fit_is_counted_and_the_command_stands() {
    let policy = r#"
local P = {}
function P.decide(ctx) return 7, "depth %d", 1.5 end
return P
"#;
    let (s, cmds) = first_command(policy);
    assert_eq!(cmds[0].desired_replicas, 7);
    assert!(
        cmds[0]
            .reason
            .starts_with("depth %d (the reason's format failed: "),
        "{}",
        cmds[0].reason
    );
    assert_eq!(
        counter(
            &s.metrics,
            "tidewatch_policy_errors_total",
            &[("target", "web"), ("kind", "invalid_return")]
        ),
        1.0
    );
}

/// The places the tick asks for ahead of a call are the models a policy
/// asked a forecast of and those metrics' histories, nothing for a metric
/// no policy forecast.
#[test]
fn the_forecast_places_are_the_wanted_models_and_their_histories() {
    use crate::window::TargetWindows;
    let windows = TargetWindows::new(
        &[Duration::from_secs(10), Duration::from_secs(60)],
        Duration::from_secs(3600),
        Duration::from_secs(60),
    );
    let d = TargetData::new(windows, 0, 60_000);
    assert_eq!(d.forecast_places().places()[0], (0, 0), "nothing wanted");
    assert!(!d.builtin.wanted(Metric::QueueDepth));
    d.builtin.lookup(
        Metric::QueueDepth,
        d.windows.metric(Metric::QueueDepth).history(),
        0,
        300_000,
    );
    assert!(d.builtin.wanted(Metric::QueueDepth));
    assert!(
        !d.builtin.wanted(Metric::LatencyMs),
        "one metric's flag only"
    );
    let places = *d.forecast_places().places();
    let history = d.windows.metric(Metric::QueueDepth).history();
    assert_ne!(places[0].0, 0, "the model's slot");
    assert_eq!(
        places[1],
        (history as *const _ as usize, std::mem::size_of_val(history)),
        "its history"
    );
    assert_eq!(places[2], (0, 0));
}
