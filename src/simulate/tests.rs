use super::*;

const T0: i64 = 1_700_000_040; // a whole minute, in seconds

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Exactly the replicas the last step's requests need.
const FOLLOW: &str = r#"
local P = {}
function P.decide(ctx)
  local w = ctx.window("requests", "60s")
  if not w then return nil end
  return { replicas = math.ceil(w.last / (ctx.params.step * ctx.params.capacity)) }
end
return P
"#;

fn trace(values: &[f64]) -> Trace {
    let text: String = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{},{v}\n", T0 + 60 * i as i64))
        .collect();
    trace::parse(&format!("ts,value\n{text}")).unwrap()
}

fn small_case(dir: &tempfile::TempDir) -> Options {
    let policy = write(dir, "follow.lua", FOLLOW);
    let mut o = Options::new(dir.path().join("t.csv"), vec![policy], 10.0);
    o.step = Duration::from_secs(60);
    o.startup = Duration::from_secs(60);
    o.stabilization = Duration::ZERO;
    o.slo = Duration::from_secs(30);
    o.max = 10;
    o
}

/// Worked by hand (capacity 10/s, 60 s steps, start-up 60 s):
///
/// | step | load | need | ready | backlog after | delay | replicas | decision |
/// |------|------|------|-------|---------------|-------|----------|----------|
/// | 0    | 10   | 1    | 1     | 0             | 0     | 1        | hold     |
/// | 1    | 30   | 3    | 1     | 1200          | 120 s | 1        | up to 3  |
/// | 2    | 30   | 3    | 3     | 1200          | 40 s  | 3        | hold     |
/// | 3    | 10   | 1    | 3     | 0             | 0     | 3        | down to 1|
/// | 4    | 10   | 1    | 1     | 0             | 0     | 1        | hold     |
/// | 5    | 10   | 1    | 1     | 0             | 0     | 1        | hold     |
///
/// under 1/6, depth (2/3)/6, over 1/6, SLO 2/6; replica-minutes
/// 1+1+3+3+1+1 = 10 and ideal 1+3+3+1+1+1 = 10; two actions and one
/// reversal in 0.1 h.
#[test]
fn figures_match_a_hand_computed_case() {
    let dir = tempfile::tempdir().unwrap();
    let o = small_case(&dir);
    let (r, series) = run(&o, &trace(&[10.0, 30.0, 30.0, 10.0, 10.0, 10.0]), |_, _| {}).unwrap();
    assert_eq!(r.scored_steps, 6);
    let p = &r.policies[0];
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(p.under_provisioned_share, 1.0 / 6.0), "{p:?}");
    assert!(close(p.under_provisioned_depth, 2.0 / 3.0 / 6.0), "{p:?}");
    assert!(close(p.over_provisioned_share, 1.0 / 6.0), "{p:?}");
    assert!(close(p.slo_violation_share, 2.0 / 6.0), "{p:?}");
    assert!(close(p.replica_hours, 10.0 / 60.0), "{p:?}");
    assert!(close(p.ideal_replica_hours, 10.0 / 60.0), "{p:?}");
    assert!(close(p.cost_ratio, 1.0), "{p:?}");
    assert!(close(p.actions_per_hour, 20.0), "{p:?}");
    assert!(close(p.reversals_per_hour, 10.0), "{p:?}");
    assert_eq!(p.mase, None, "the policy does not forecast");
    assert_eq!(p.policy_errors, 0);
    assert_eq!(series.ready[0], vec![1, 1, 3, 3, 1, 1]);
    assert_eq!(series.need, vec![1, 3, 3, 1, 1, 1]);
}

#[test]
fn warmup_is_replayed_but_not_scored_and_policies_run_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = small_case(&dir);
    // a second policy that never moves: 1 replica throughout
    o.policies.push(write(
        &dir,
        "still.lua",
        "return { decide = function(ctx) return nil end }",
    ));
    o.warmup = Duration::from_secs(120);
    let (r, _) = run(&o, &trace(&[10.0, 30.0, 30.0, 10.0, 10.0, 10.0]), |_, _| {}).unwrap();
    assert_eq!(r.scored_steps, 4);
    let (follow, still) = (&r.policies[0], &r.policies[1]);
    // steps 2..5: follow is over-provisioned once and never short
    assert_eq!(follow.under_provisioned_share, 0.0);
    assert_eq!(follow.over_provisioned_share, 0.25);
    // still: short at step 2 (1 of 3), with the backlog of step 1 behind it
    assert_eq!(still.under_provisioned_share, 0.25);
    assert!((still.under_provisioned_depth - 2.0 / 3.0 / 4.0).abs() < 1e-9);
    assert_eq!(still.actions_per_hour, 0.0);
    assert!(still.slo_violation_share > follow.slo_violation_share);
}

/// Ten days at a minute: 100 at night, 300 from an opening at 9:00 give
/// or take 20 minutes (a different minute each day) to 17:00. T0 is
/// 22:14 UTC; the days are counted from it.
fn openings() -> Trace {
    openings_over(10, |_, v| v)
}

/// `days` of those openings, each minute's load passed through
/// `day_load(day, load)`.
fn openings_over(days: i64, day_load: impl Fn(i64, f64) -> f64) -> Trace {
    let open = |day: i64| 9 * 60 + (day * 17 % 41) - 20;
    let values: Vec<f64> = (0..days * 1440)
        .map(|m| {
            let (day, minute) = (m / 1440, m % 1440);
            let v = if minute >= open(day) && minute < 17 * 60 {
                300.0
            } else {
                100.0
            };
            day_load(day, v)
        })
        .collect();
    trace(&values)
}

/// A working day that opens at 9:00 give or take 20 minutes, every day:
/// a policy that provisions for what the load did in the next 40 minutes
/// on the previous days (`ctx.recurring`) is ready for the opening, while
/// one that follows the load is short at each.
#[test]
fn a_recurring_opening_is_provisioned_ahead_from_the_previous_days() {
    let dir = tempfile::tempdir().unwrap();
    let ahead = write(
        &dir,
        "ahead.lua",
        r#"return { decide = function(ctx)
             local w = ctx.window("requests", "60s")
             if not w then return nil end
             local load = w.rate
             local r = ctx.recurring("requests", 0, 2400)
             if r then load = math.max(load + r.rise, r.level) end
             return { replicas = math.ceil(load / ctx.params.capacity) }
           end }"#,
    );
    let follow = write(&dir, "follow.lua", FOLLOW);
    let mut o = Options::new(dir.path().join("t.csv"), vec![ahead, follow], 10.0);
    o.step = Duration::from_secs(60);
    o.startup = Duration::from_secs(120);
    o.warmup = Duration::from_secs(7 * 86_400);
    o.max = 100;
    let (r, _) = run(&o, &openings(), |_, _| {}).unwrap();
    let (ahead, follow) = (&r.policies[0], &r.policies[1]);
    assert_eq!(ahead.policy_errors, 0);
    // three openings scored: following the load is short for the start-up
    // and a step at each; looking ahead is never short
    assert!(
        follow.under_provisioned_share * r.scored_steps as f64 >= 6.0,
        "{follow:?}"
    );
    assert_eq!(ahead.under_provisioned_share, 0.0, "{ahead:?}");
    // and it pays for it: replicas held before the openings
    assert!(ahead.replica_hours > follow.replica_hours, "{ahead:?}");
}

/// The shipped `policies/hpa.lua` and `policies/recurring.lua`, a replica
/// serving 10 a second, at a step of a minute, scored after `warmup_days`.
fn hpa_and_recurring(warmup_days: u64) -> Options {
    let shipped = |name: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policies")
            .join(name)
    };
    let mut o = Options::new(
        PathBuf::from("t.csv"),
        vec![shipped("hpa.lua"), shipped("recurring.lua")],
        10.0,
    );
    o.step = Duration::from_secs(60);
    o.warmup = Duration::from_secs(warmup_days * 86_400);
    o
}

/// The shipped `policies/recurring.lua` against `policies/hpa.lua` on the
/// same openings (9:00 give or take 20 minutes, load three times the
/// night's): at the same target utilization it is short at fewer steps,
/// for the replicas it holds before the openings. With k = 1 it holds the
/// whole rise and is never short. The first and third scored days open
/// later than most of the days before them: by then those days' rise is
/// behind them and the median shows none left, so without `hold` (the
/// plan kept while the load has not moved) both are missed.
#[test]
fn the_shipped_recurring_policy_is_ready_for_openings_that_hpa_misses() {
    let mut o = hpa_and_recurring(7);
    // the rise added unproven: 0.4 of it never proves itself on these
    // openings (the next test)
    o.params.insert("proof".into(), 0.into());
    let t = openings();
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    let (hpa, recurring) = (&r.policies[0], &r.policies[1]);
    assert_eq!(recurring.policy_errors, 0, "{recurring:?}");
    let short = |p: &PolicyReport| (p.under_provisioned_share * r.scored_steps as f64).round();
    // three openings scored: the HPA rule climbs from 13 replicas to 38
    // in two steps of its scale-up limit, after the load has come, and is
    // short for three steps at each
    assert_eq!(short(hpa), 9.0, "{hpa:?}");
    let part = short(recurring);
    assert!(part < short(hpa), "{recurring:?} against {hpa:?}");
    assert!(recurring.replica_hours > hpa.replica_hours, "{recurring:?}");
    o.params.insert("k".into(), 1.0.into());
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    assert_eq!(
        r.policies[1].under_provisioned_share, 0.0,
        "{:?}",
        r.policies[1]
    );
    o.params.insert("hold".into(), 0.into());
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    // the two late openings, three steps each, as the HPA rule
    assert_eq!(short(&r.policies[1]), 6.0, "{:?}", r.policies[1]);
}

/// Days that run late or early all day: from 6:00 the load climbs from
/// 100 to 160, opens to 400 at 9:00 and closes at 17:00, the whole day
/// shifted by up to half an hour either way. Read at today's time of day
/// (`align = 0`) the previous days' openings spread over an hour; read
/// where their climbs match today's (`align`, the default), they line up
/// with today's, and the shipped `recurring.lua` is short at fewer steps.
#[test]
fn the_shipped_recurring_policy_lines_the_days_up_on_their_climbs() {
    let mut o = hpa_and_recurring(7);
    // the whole rise, unproven: what is measured is where it is placed
    o.params.insert("proof".into(), 0.into());
    o.params.insert("k".into(), 1.0.into());
    let late = |day: i64| (day * 23 % 61) - 30;
    let values: Vec<f64> = (0..12 * 1440)
        .map(|m| {
            let minute = m % 1440 - late(m / 1440);
            if (540..1020).contains(&minute) {
                400.0
            } else if (360..540).contains(&minute) {
                100.0 + 60.0 * (minute - 360) as f64 / 180.0
            } else {
                100.0
            }
        })
        .collect();
    let t = trace(&values);
    let short =
        |r: &Report| (r.policies[1].under_provisioned_share * r.scored_steps as f64).round();
    let (aligned, _) = run(&o, &t, |_, _| {}).unwrap();
    o.params.insert("align".into(), 0.into());
    let (plain, _) = run(&o, &t, |_, _| {}).unwrap();
    assert_eq!(
        aligned.policies[1].policy_errors, 0,
        "{:?}",
        aligned.policies[1]
    );
    assert!(
        short(&aligned) < short(&plain),
        "aligned {:?} against {:?}",
        aligned.policies[1],
        plain.policies[1]
    );
}

/// A batch job by the clock: every day at 11:03 the load steps from 100
/// to 400 within the minute, for 40 minutes. The shipped `recurring.lua`
/// is ready for it like a rise whose hour varies; with the near rungs
/// (the default) it buys it over the start-up lead and `near` only, not
/// over the whole window from `ahead` before, so it holds fewer
/// replica-hours for it, at no more short steps. Read at its minute
/// (`sharp`) it holds fewer than from 5-minute means.
#[test]
fn the_shipped_recurring_policy_buys_a_step_at_the_same_minute_just_before_it() {
    let mut o = hpa_and_recurring(7);
    let values: Vec<f64> = (0..10 * 1440)
        .map(|m| {
            if (663..703).contains(&(m % 1440)) {
                400.0
            } else {
                100.0
            }
        })
        .collect();
    let t = trace(&values);
    let short =
        |p: &PolicyReport, r: &Report| (p.under_provisioned_share * r.scored_steps as f64).round();
    let (near, _) = run(&o, &t, |_, _| {}).unwrap();
    o.params.insert("near_ks".into(), serde_json::json!([]));
    let (wide, _) = run(&o, &t, |_, _| {}).unwrap();
    let (hpa, with_near, without) = (&near.policies[0], &near.policies[1], &wide.policies[1]);
    assert_eq!(with_near.policy_errors, 0, "{with_near:?}");
    // the default holds fewer replica-hours than `other` for the steps,
    // at no more short steps (one trace: the same scored steps)
    let cheaper_than = |other: &PolicyReport| {
        assert_eq!(other.policy_errors, 0, "{other:?}");
        assert!(
            short(with_near, &near) <= short(other, &near),
            "{with_near:?} against {other:?}"
        );
        assert!(
            with_near.replica_hours < other.replica_hours,
            "{with_near:?} against {other:?}"
        );
    };
    // the HPA rule is short after each of the three scored steps; both
    // ways of buying the rise ahead are short less, and the near rungs
    // hold fewer replica-hours for it
    assert!(short(hpa, &near) >= 6.0, "{hpa:?}");
    assert!(
        short(without, &wide) < short(hpa, &near),
        "{without:?} against {hpa:?}"
    );
    cheaper_than(without);
    // read from the 5-minute means (before 2026-12-07), which show the
    // step whole only 5 minutes after it, the near rungs had to reach 600 s
    // past the lead, and bought it from about 12 minutes before it: more
    // replica-hours, and no fewer short steps
    o.params.remove("near_ks");
    o.params.insert("sharp".into(), 0.into());
    o.params.insert("near".into(), 600.into());
    let (smooth, _) = run(&o, &t, |_, _| {}).unwrap();
    cheaper_than(&smooth.policies[1]);
}

/// `recurring.lua` keeps a plan only while the load has not moved: when
/// the load falls (an evening), it scales down with `hpa.lua`, not
/// `hold` later.
#[test]
fn the_shipped_recurring_policy_lets_go_of_its_plan_when_the_load_falls() {
    let mut o = hpa_and_recurring(4);
    o.params.insert("proof".into(), 0.into());
    // a level has no daily cycle: without this the rise would never be
    // added (daily_min, the next test)
    o.params.insert("daily_min".into(), 0.into());
    // level for four days and a half, then a third of it
    let values: Vec<f64> = (0..5 * 1440)
        .map(|m| if m < 4 * 1440 + 720 { 300.0 } else { 100.0 })
        .collect();
    let (r, _) = run(&o, &trace(&values), |_, _| {}).unwrap();
    let (hpa, recurring) = (&r.policies[0], &r.policies[1]);
    assert_eq!(recurring.policy_errors, 0, "{recurring:?}");
    assert!(hpa.actions_per_hour > 0.0, "{hpa:?}");
    assert_eq!(
        recurring.replica_hours, hpa.replica_hours,
        "{recurring:?} against {hpa:?}"
    );
}

/// Openings on two days in three: the median day rises, but the days
/// are not alike (the hourly means correlate about 0.36 with the day
/// before), so `recurring.lua` adds no rise and decides as `hpa.lua`
/// does; with `daily_min = 0` it adds the rise (here unproven) and holds
/// more.
#[test]
fn the_shipped_recurring_policy_is_the_hpa_rule_where_days_are_not_alike() {
    let mut o = hpa_and_recurring(7);
    o.params.insert("proof".into(), 0.into());
    let t = openings_over(12, |day, v| if day % 3 == 2 { 100.0 } else { v });
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    let (hpa, recurring) = (&r.policies[0], &r.policies[1]);
    assert_eq!(recurring.policy_errors, 0, "{recurring:?}");
    assert!(hpa.under_provisioned_share > 0.0, "{hpa:?}");
    assert_eq!(
        (recurring.replica_hours, recurring.under_provisioned_share),
        (hpa.replica_hours, hpa.under_provisioned_share),
        "{recurring:?} against {hpa:?}"
    );
    o.params.insert("daily_min".into(), 0.into());
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    let ungated = &r.policies[1];
    assert!(ungated.replica_hours > hpa.replica_hours, "{ungated:?}");
    // and every day alike (the openings of the tests above) passes the
    // gate at its default
    o.params.remove("daily_min");
    let (r, _) = run(&o, &openings(), |_, _| {}).unwrap();
    assert!(
        r.policies[1].replica_hours > r.policies[0].replica_hours,
        "{:?}",
        r.policies[1]
    );
}

/// A real CPU series (NAB's `ec2_cpu_utilization_24ae8d`, in
/// `tests/unseen-traces/`) under the corpus protocol: the load sits in
/// whole steps of 0.85 of a replica with a spike at 03:30 every day.
/// Judged against a 5% probe of uniform headroom (the gate before
/// 2026-12-06), which at three replicas rescues no step of 0.85, the
/// 1.5-times rung paid ten times over and was taken most of the day, for
/// 35% more replica-hours than `hpa.lua`; the same replica-hours spent
/// as uniform headroom save more. Compared with uniform headroom of the
/// same cost, no rung is taken and `recurring.lua` holds what `hpa.lua`
/// holds.
#[test]
fn the_shipped_recurring_policy_takes_no_rung_that_uniform_headroom_of_its_cost_beats() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/unseen-traces/nab-ec2-cpu-utilization-24ae8d.csv");
    recurring_holds_at_most(&Trace::load(&path).unwrap(), "24ae8d", 1.02);
}

/// `recurring.lua` against `hpa.lua` on `t` under the corpus protocol, at
/// the default setting: without a policy error, `hpa.lua` short at some
/// minutes, and `recurring.lua` holding at most `factor` times its
/// replica-hours.
fn recurring_holds_at_most(t: &Trace, name: &str, factor: f64) {
    let o = corpus::protocol(&hpa_and_recurring(0), t, name);
    let (r, _) = run(&o, t, |_, _| {}).unwrap();
    let (hpa, recurring) = (&r.policies[0], &r.policies[1]);
    assert_eq!(recurring.policy_errors, 0, "{recurring:?}");
    assert!(hpa.under_provisioned_share > 0.0, "{hpa:?}");
    assert!(
        recurring.replica_hours <= factor * hpa.replica_hours,
        "{recurring:?} against {hpa:?}"
    );
}

/// Generated seasonal seed 207 (21 days, the corpus protocol): past
/// `hpa.lua`'s default the load's noise finds it short quickly (0.40% of
/// the week at a target utilization of 0.8, 0.92% at 0.85). Judged
/// against uniform headroom added above B alone (the gate shipped before
/// 2026-12-06's fifth session), rungs passed that held 9.7% more
/// replica-hours than `hpa.lua` at the default, and at `hpa.lua`'s cost
/// the headroom they displace lost more than they saved (-48% in the
/// corpus table). Charged also for the headroom they take away where
/// they cannot stand in for it, fewer pass: 5.0% more.
#[test]
fn the_shipped_recurring_policy_pays_for_the_headroom_its_rungs_take_away() {
    let t = generate::generate(generate::Kind::Seasonal, 207, 21, 60);
    recurring_holds_at_most(&t, "generated-seasonal-207", 1.07);
}

/// Two policies' runs that held the same replicas and were short the
/// same minutes.
fn holds_the_same(a: &report::PolicyReport, b: &report::PolicyReport) {
    assert_eq!(a.replica_hours, b.replica_hours, "{a:?} against {b:?}");
    assert_eq!(
        a.under_provisioned_share, b.under_provisioned_share,
        "{a:?} against {b:?}"
    );
}

/// `days` of a load that swings once a day between 10 a second and 200,
/// with noise of about 5 a second whatever the load (seed `seed`); with
/// `shifted`, each day's swing starts at a random hour.
fn swing_with_steady_noise(days: usize, seed: u64, shifted: bool) -> Trace {
    swing(days, seed, shifted, |_| 5.0)
}

/// The report of the second policy of `o` (`recurring.lua` in
/// [`hpa_and_recurring`]) run on `t`.
fn second_policy(o: &Options, t: &Trace) -> report::PolicyReport {
    let (r, _) = run(o, t, |_, _| {}).unwrap();
    r.policies[1].clone()
}

/// The day's swing of [`swing_with_steady_noise`], with noise of spread
/// `noise(load)` at each load.
fn swing(days: usize, seed: u64, shifted: bool, noise: impl Fn(f64) -> f64) -> Trace {
    let mut rng = super::generate::Rng::new(seed);
    let mut shift = 0.0;
    let values: Vec<f64> = (0..days * 1440)
        .map(|m| {
            if shifted && m % 1440 == 0 {
                shift = rng.unit() * std::f64::consts::TAU;
            }
            let phase = (m % 1440) as f64 / 1440.0 * std::f64::consts::TAU + shift;
            let load = 105.0 - 95.0 * phase.cos();
            (load + noise(load) * rng.normal()).max(0.0)
        })
        .collect();
    trace(&values)
}

/// Load whose noise does not grow with it: a day that swings slowly
/// between 10 a second at night and 200 by day (1 and 20 replicas at 10
/// each), with the same noise of about 5 a second at both. The HPA
/// rule's headroom, a share of the load, is a quarter of a replica at
/// night and more than it needs by day, so `hpa.lua` is short at night. The
/// square-root rule (`shape`) holds more at night and less by day for
/// the same cost; `recurring.lua` proves it on this load and, at
/// `hpa.lua`'s cost, is short far less often. Without it (`shape = 0`)
/// it gains little: there is no rise to buy ahead.
#[test]
fn the_shipped_recurring_policy_shapes_its_headroom_to_noise_that_does_not_grow_with_load() {
    let mut o = hpa_and_recurring(3);
    let t = swing_with_steady_noise(5, 11, false);
    let grid: Vec<serde_json::Value> = [0.7, 0.8, 0.9, 1.0]
        .iter()
        .map(|v| serde_json::json!(v))
        .collect();
    let base = o.policies[0].clone();
    let reduction = |o: &Options| {
        let r = frontier::sweep(o, &t, "target_utilization", &grid, &base).unwrap();
        assert!(
            r.baseline_default.under_provisioned_share > 0.0,
            "{:?}",
            r.baseline_default
        );
        r.comparisons[1].share_reduction.unwrap()
    };
    let shaped = reduction(&o);
    o.params.insert("shape".into(), 0.into());
    let unshaped = reduction(&o);
    assert!(shaped > 0.5, "{shaped} (without: {unshaped})");
    assert!(shaped > unshaped + 0.3, "{shaped} against {unshaped}");
}

/// Generated seasonal seed 11 of the tuning set (three weeks, the corpus
/// protocol) at a setting of 0.9: what `hpa.lua` is left short by there
/// is mostly noise, single minutes a replica short, because the HPA rule
/// sizes on the last minute's reading and the guard keeps the highest of
/// five minutes of such sizings. With the level on (`steady = 6`: a line
/// fitted to the last six minutes' logarithms), `recurring.lua` proves
/// on this load that the HPA rule on that level pays at the same cost,
/// beyond the spread of its own tallies (`steady_sure`), and sizes on it:
/// at the same setting it holds fewer replica-hours than with `steady =
/// 0` (docs/PREDICTIVE.md, "The level only beyond the noise of its own
/// tallies": at `hpa.lua`'s cost, +12.0% to +15.5% on this trace). As
/// shipped the level is off (the twelfth session's criterion on fresh
/// seeds 1040 to 1079), and the policy holds what it holds with `steady =
/// 0`.
#[test]
fn the_recurring_policy_sizes_on_the_level_where_that_has_paid() {
    let t = super::generate::generate(super::generate::Kind::Seasonal, 11, 21, 60);
    let mut o = corpus::protocol(&hpa_and_recurring(0), &t, "generated-seasonal-11");
    o.params.insert("steady".into(), 6.into());
    o.params.insert("target_utilization".into(), 0.9.into());
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    let steady = r.policies[1].clone();
    assert_eq!(steady.policy_errors, 0, "{steady:?}");
    o.params.insert("steady".into(), 0.into());
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    let without = &r.policies[1];
    assert!(
        steady.replica_hours < 0.98 * without.replica_hours,
        "{steady:?} against {without:?}"
    );
    // the shipped policy leaves the level off (its default `steady` is 0)
    let without = without.clone();
    o.params.remove("steady");
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    holds_the_same(&r.policies[1], &without);
    // and a level of fewer than 3 minutes is refused (two days suffice)
    o.params.insert("steady".into(), 2.into());
    o.warmup = Duration::from_secs(86_400);
    let two_days = Trace {
        points: t.points[..2 * 1440].to_vec(),
    };
    let (r, _) = run(&o, &two_days, |_, _| {}).unwrap();
    assert!(r.policies[1].policy_errors > 0, "{:?}", r.policies[1]);
}

/// A day that swings between 10 a second and 200, with noise of a tenth
/// of the load (three weeks): noise that grows with the load, nothing
/// else. The level (the shipped `steady_slope = 1`, the line read at
/// now, set here as the test's subject) comes out ahead of the HPA
/// rule's by more than `steady_proof`'s 8 checks here, out of many more
/// checks either way: an advantage within the spread of its own tallies.
/// Taken on that (`steady_sure = 0`), it is 11% worse at equal cost on
/// such a load (docs/PREDICTIVE.md, "The level only beyond the noise of
/// its own tallies"); with the shipped `steady_sure = 2` it is not
/// taken, and the policy holds what it holds with `steady = 0`, step for
/// step.
#[test]
fn the_recurring_policy_does_not_take_the_level_on_an_advantage_within_its_noise() {
    let t = swing(21, 3, false, |load| 0.1 * load);
    let mut o = corpus::protocol(&hpa_and_recurring(0), &t, "swing");
    o.params.insert("steady".into(), 6.into());
    o.params.insert("steady_slope".into(), 1.into());
    o.params.insert("steady_proof".into(), 8.into());
    o.params.insert("steady_sure".into(), 2.into());
    let guarded = second_policy(&o, &t);
    assert_eq!(guarded.policy_errors, 0, "{guarded:?}");
    o.params.insert("steady_sure".into(), 0.into());
    let on_a_coin = second_policy(&o, &t);
    o.params.insert("steady".into(), 0.into());
    let without = second_policy(&o, &t);
    holds_the_same(&guarded, &without);
    assert_ne!(
        on_a_coin.replica_hours, without.replica_hours,
        "{on_a_coin:?}"
    );
}

/// The same noisy swing, eight days. A line fitted to six minutes and
/// read at now has the noise of most of one reading; read at its middle
/// plus half its rise to now (`steady_slope = 0.5`), about half that
/// noise. Sized on it (the level used unless it has lost, `steady_proof
/// = 0`, `steady_sure = 0`), the policy's replicas follow the noise
/// less: at the same setting it turns back (a scale-up then a
/// scale-down, or the converse) clearly less often than with the line
/// read at now, and holds fewer replicas, and with either it holds other
/// replicas than without the level (`steady = 0`). A slope outside 0 to
/// 1 is refused. Not shipped: so used, it raised the tuning set's mean
/// at `hpa.lua`'s cost from +58.5% to +63.5%, and lost up to 92.6% on
/// fresh seeds (docs/PREDICTIVE.md, "The level read nearer the middle
/// of its line").
#[test]
fn the_recurring_policy_can_read_the_level_nearer_the_middle_of_its_line() {
    let t = swing(8, 3, false, |load| 0.1 * load);
    let mut o = hpa_and_recurring(3);
    o.params.insert("steady".into(), 6.into());
    o.params.insert("steady_proof".into(), 0.into());
    o.params.insert("steady_sure".into(), 0.into());
    o.params.insert("steady_slope".into(), 0.5.into());
    let nearer = second_policy(&o, &t);
    assert_eq!(nearer.policy_errors, 0, "{nearer:?}");
    o.params.insert("steady_slope".into(), 1.into());
    let at_now = second_policy(&o, &t);
    o.params.insert("steady".into(), 0.into());
    let without = second_policy(&o, &t);
    assert!(
        nearer.reversals_per_hour < 0.75 * at_now.reversals_per_hour,
        "{nearer:?} against {at_now:?}"
    );
    assert!(
        nearer.replica_hours < at_now.replica_hours,
        "{nearer:?} against {at_now:?}"
    );
    assert_ne!(at_now.replica_hours, without.replica_hours, "{at_now:?}");
    o.params.insert("steady".into(), 6.into());
    o.params.insert("steady_slope".into(), 1.5.into());
    let two_days = Trace {
        points: t.points[..2 * 1440].to_vec(),
    };
    o.warmup = Duration::from_secs(86_400);
    let (r, _) = run(&o, &two_days, |_, _| {}).unwrap();
    assert!(r.policies[1].policy_errors > 0, "{:?}", r.policies[1]);
}

/// The same load with each day's swing shifted to a random hour (ten
/// days, the same noise of about 5 a second), so the days are not alike:
/// their hourly means do not correlate with the day before. Where the
/// days are not alike, a proof on the hours seen is spent on hours of
/// another kind (the square-root rule cost three real counts of tweets
/// 3% to 5% at equal cost, spent in news bursts), so `recurring.lua`
/// departs from `hpa.lua` in neither way (the rise, the square-root
/// rule) and holds what `hpa.lua` holds, step for step. With the guard
/// off (`daily_min = 0`) the square-root rule is taken on this load.
#[test]
fn the_shipped_recurring_policy_keeps_the_hpa_rules_headroom_where_the_days_are_not_alike() {
    let mut o = hpa_and_recurring(3);
    let t = swing_with_steady_noise(10, 12, true);
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    let (hpa, recurring) = (&r.policies[0], &r.policies[1]);
    assert_eq!(recurring.policy_errors, 0, "{recurring:?}");
    holds_the_same(recurring, hpa);
    o.params.insert("daily_min".into(), 0.into());
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    let shaped = r.policies[1].clone();
    o.params.insert("shape".into(), 0.into());
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    let unshaped = &r.policies[1];
    assert_ne!(
        shaped.replica_hours, unshaped.replica_hours,
        "{shaped:?} against {unshaped:?}"
    );
}

/// A rise that recurs every day but never finds the HPA rule short (a
/// slow climb from 100 to 130 over the hour from 9:00, down again from
/// 17:00): `recurring.lua` does not add it until it has paid on this
/// load (`proof`), so it holds what `hpa.lua` holds; unproven (`proof =
/// 0`) it pays for replicas that were never needed. On openings to three
/// times the load the whole rise pays and is proven; 0.4 of it never is.
#[test]
fn the_shipped_recurring_policy_adds_the_rise_only_once_it_has_paid() {
    let mut o = hpa_and_recurring(7);
    let values: Vec<f64> = (0..10 * 1440)
        .map(|m| {
            let minute = (m % 1440) as f64;
            let up = ((minute - 540.0) / 60.0).clamp(0.0, 1.0);
            let down = ((minute - 1020.0) / 60.0).clamp(0.0, 1.0);
            100.0 + 30.0 * (up - down)
        })
        .collect();
    let t = trace(&values);
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    let (hpa, recurring) = (&r.policies[0], &r.policies[1]);
    assert_eq!(recurring.policy_errors, 0, "{recurring:?}");
    assert_eq!(hpa.under_provisioned_share, 0.0, "{hpa:?}");
    assert_eq!(
        recurring.replica_hours, hpa.replica_hours,
        "{recurring:?} against {hpa:?}"
    );
    o.params.insert("proof".into(), 0.into());
    let (r, _) = run(&o, &t, |_, _| {}).unwrap();
    let (hpa, recurring) = (&r.policies[0], &r.policies[1]);
    assert_eq!(recurring.under_provisioned_share, 0.0, "{recurring:?}");
    assert!(
        recurring.replica_hours > hpa.replica_hours,
        "{recurring:?} against {hpa:?}"
    );
    // the openings: the whole rise (k = 1) saves the HPA rule's
    // shortfalls in the warm-up days, late openings (held plans)
    // included, and is proven before the scored days: never short
    o.params.remove("proof");
    let openings = openings();
    o.params.insert("k".into(), 1.0.into());
    let (r, _) = run(&o, &openings, |_, _| {}).unwrap();
    let (hpa, recurring) = (&r.policies[0], &r.policies[1]);
    assert!(hpa.under_provisioned_share > 0.0, "{hpa:?}");
    assert_eq!(recurring.under_provisioned_share, 0.0, "{recurring:?}");
    // 0.4 of it and the HPA rule's headroom are short of those openings
    // too: the rise saves no check, is never proven, and it is the HPA
    // rule
    o.params.insert("k".into(), 0.4.into());
    let (r, _) = run(&o, &openings, |_, _| {}).unwrap();
    assert_eq!(
        r.policies[1].replica_hours, r.policies[0].replica_hours,
        "{:?} against {:?}",
        r.policies[1], r.policies[0]
    );
    // the default shares (0.4, 0.7, 1, 1.5): 0.4 is skipped, a larger
    // share pays at the margin and is taken
    o.params.remove("k");
    let (r, _) = run(&o, &openings, |_, _| {}).unwrap();
    let (hpa, shares) = (&r.policies[0], &r.policies[1]);
    assert_eq!(shares.policy_errors, 0, "{shares:?}");
    assert!(
        shares.under_provisioned_share < hpa.under_provisioned_share / 2.0,
        "{shares:?} against {hpa:?}"
    );
    // shares out of order are refused, by name
    o.params.insert("ks".into(), serde_json::json!([0.7, 0.4]));
    let (r, _) = run(&o, &openings, |_, _| {}).unwrap();
    assert!(r.policies[1].policy_errors > 0, "{:?}", r.policies[1]);
}

/// Three weeks of openings (9:00 give or take 20 minutes, from 100 to
/// 300) whose weekends run at a third of the working days' load: the
/// median of the last 14 days is a working day's rise, but on a weekend
/// `recurring.lua` adds only what the same weekday had (`ctx.recurring`'s
/// `week`), so it is as safe for fewer replica-hours than with `weekly =
/// 0`: short at the same steps (midnight before Monday, and two days that
/// open later than `hold` covers). On openings alike every day, `weekly`
/// changes nothing.
#[test]
fn the_shipped_recurring_policy_follows_the_weekly_season() {
    // day 0 is a Monday
    let weekends = openings_over(21, |day, v| if day % 7 >= 5 { v / 3.0 } else { v });
    let mut o = hpa_and_recurring(14);
    o.params.insert("proof".into(), 0.into());
    o.params.insert("k".into(), 1.0.into());
    let (r, _) = run(&o, &weekends, |_, _| {}).unwrap();
    let weekly = r.policies[1].clone();
    assert_eq!(weekly.policy_errors, 0, "{weekly:?}");
    let hpa = &r.policies[0];
    assert!(
        weekly.under_provisioned_share < hpa.under_provisioned_share,
        "{weekly:?} against {hpa:?}"
    );
    o.params.insert("weekly".into(), 0.into());
    let (r, _) = run(&o, &weekends, |_, _| {}).unwrap();
    let daily = &r.policies[1];
    assert_eq!(
        weekly.under_provisioned_share, daily.under_provisioned_share,
        "{weekly:?} against {daily:?}"
    );
    assert!(
        weekly.replica_hours < daily.replica_hours,
        "{weekly:?} against {daily:?}"
    );
    // every day alike: the same weekday had the whole rise
    o.warmup = Duration::from_secs(7 * 86_400);
    let (r, _) = run(&o, &openings(), |_, _| {}).unwrap();
    let daily = r.policies[1].replica_hours;
    o.params.remove("weekly");
    let (r, _) = run(&o, &openings(), |_, _| {}).unwrap();
    assert_eq!(r.policies[1].replica_hours, daily, "{:?}", r.policies[1]);
}

#[test]
fn a_forecasting_policy_gets_a_mase() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(
        &dir,
        "ahead.lua",
        r#"return { decide = function(ctx)
             local f = ctx.forecast("requests", ctx.params.startup)
             if not f then return nil end
             return { replicas = math.ceil(f.value / ctx.params.capacity) }
           end }"#,
    );
    let mut o = Options::new(dir.path().join("t.csv"), vec![policy], 10.0);
    o.step = Duration::from_secs(60);
    o.warmup = Duration::from_secs(3600);
    // a steady ramp: the damped trend forecasts it better than "same as now"
    let values: Vec<f64> = (0..240).map(|i| 100.0 + i as f64).collect();
    let (r, _) = run(&o, &trace(&values), |_, _| {}).unwrap();
    let m = r.policies[0].mase.expect("forecasts were scored");
    assert!(m < 0.5, "MASE {m}");
}

#[test]
fn bad_options_and_policies_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = small_case(&dir);
    let t = trace(&[1.0, 2.0, 3.0]);
    o.capacity = 0.0;
    assert!(run(&o, &t, |_, _| {})
        .unwrap_err()
        .to_string()
        .contains("capacity 0"));
    o.capacity = 10.0;
    o.warmup = Duration::from_secs(3600);
    let e = run(&o, &t, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("warm-up (1h)"), "{e}");
    o.warmup = Duration::ZERO;
    o.policies = vec![write(&dir, "broken.lua", "return {")];
    let e = run(&o, &t, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("broken.lua"), "{e}");
}

#[test]
fn plots_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let o = small_case(&dir);
    let (_, series) = run(&o, &trace(&[10.0, 30.0, 30.0, 10.0, 10.0, 10.0]), |_, _| {}).unwrap();
    let names = vec!["follow".to_string()];
    let png = dir.path().join("p.png");
    plot::write(&png, &series, &names, 10.0).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let svg = dir.path().join("p.svg");
    plot::write(&svg, &series, &names, 10.0).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("<svg") && text.contains("<polyline"),
        "{text:.200}"
    );
    let e = plot::write(&dir.path().join("p.gif"), &series, &names, 10.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"gif\""), "{e}");
}

/// A daily cycle under bursts that land on whole hours (a cron job at
/// minute 0 of random hours) is seasonal: judged by hourly means, the
/// cycle shows; judged by the load at each hour, the bursts hide it.
#[test]
fn a_daily_cycle_under_bursts_on_the_hour_is_seasonal() {
    let mut rng = generate::Rng::new(3);
    let values: Vec<f64> = (0..21 * 1440)
        .map(|i| {
            let hour = (i % 1440) as f64 / 60.0;
            let cycle = 100.0 + 60.0 * (2.0 * std::f64::consts::PI * hour / 24.0).sin();
            if i % 60 < 2 && rng.unit() < 0.5 {
                cycle + 3000.0 * rng.unit()
            } else {
                cycle
            }
        })
        .collect();
    let t = trace(&values);
    let (kind, acf) = corpus::classify(&t);
    assert_eq!(
        kind,
        generate::Kind::Seasonal,
        "daily autocorrelation {acf}"
    );
    assert!(acf > 0.6, "{acf}");
    // the load at each hour alone would have called it bursty
    let at_hours: Vec<f64> = t.resample(3_600_000).into_iter().map(|p| p.1).collect();
    let sampled = corpus::autocorrelation(&at_hours, 24);
    assert!(sampled < 0.5, "{sampled}");
    // a gap is filled from the points around it, and spans stay aligned
    let mut gapped = values.clone();
    gapped.truncate(200);
    let mut g = trace(&gapped);
    let start = g.start();
    g.points
        .retain(|p| !(60..120).contains(&((p.0 - start) / 60_000)));
    let m = g.means(3_600_000);
    assert_eq!(m.len(), 4);
    assert!((m[1] - g.at(g.start() + 90 * 60_000)).abs() < 1e-9, "{m:?}");
}

/// `--refine`: `hpa.lua` swept over 0.5 and 1.0 only, against itself at
/// its default (0.8). On the grid its own default is read off the curve
/// between 0.5 and 1.0; the refinement runs it between them, each run
/// closer to the default's cost, so the reading comes close to what the
/// default measured (a reduction near 0).
#[test]
fn refinement_measures_the_frontier_at_the_baseline_cost() {
    let mut o = hpa_and_recurring(0);
    o.policies.truncate(1);
    o.capacity = 4.0;
    let t = super::generate::generate(super::generate::Kind::Bursty, 3, 3, 60);
    let grid = [serde_json::json!(0.5), serde_json::json!(1.0)];
    let base = o.policies[0].clone();
    let coarse = frontier::sweep(&o, &t, "target_utilization", &grid, &base).unwrap();
    o.refine = 4;
    let fine = frontier::sweep(&o, &t, "target_utilization", &grid, &base).unwrap();
    let cost = fine.baseline_default.replica_hours;
    assert!(
        fine.baseline_default.under_provisioned_share > 0.0,
        "{fine:?}"
    );
    let added: Vec<f64> = fine.frontiers[0]
        .points
        .iter()
        .filter_map(|p| p.value.as_ref()?.as_f64())
        .filter(|v| *v != 0.5 && *v != 1.0)
        .collect();
    assert!(
        (1..=4).contains(&added.len()) && added.iter().all(|v| *v > 0.5 && *v < 1.0),
        "{added:?}"
    );
    // the runs come closer to the default's cost than the grid's
    let gap = |r: &frontier::SweepReport| {
        r.frontiers[0]
            .points
            .iter()
            .map(|p| (p.replica_hours - cost).abs() / cost)
            .fold(f64::INFINITY, f64::min)
    };
    assert!(
        gap(&fine) < gap(&coarse) / 4.0,
        "{} {}",
        gap(&fine),
        gap(&coarse)
    );
    let reduction = |r: &frontier::SweepReport| r.comparisons[0].share_reduction.unwrap().abs();
    assert!(
        reduction(&fine) < reduction(&coarse),
        "{} {}",
        reduction(&fine),
        reduction(&coarse)
    );
}
