//! Kubernetes' own behavior tables as an outside oracle: the cases of
//! `TestScalingWithRules`, `TestNormalizeDesiredReplicasWithBehavior`,
//! `TestCalculateScaleUpLimitWithScalingRules` and
//! `TestCalculateScaleDownLimitWithBehaviors` in
//! kubernetes/kubernetes `pkg/controller/podautoscaler/horizontal_test.go`
//! (read at commit 003e86297d18), each under its upstream name, with the
//! upstream helpers' meaning: `rules(pods, pods_period, percent,
//! percent_period, stabilization)` is `generateScalingRules`, and
//! `uniform(changes, seconds)` is `generateEventsUniformDistribution`.

use super::*;

const NOW: Millis = 1_000_000_000;

/// `generateScalingRules`: select Max, a pods policy when `pods` is not
/// 0, then a percent policy when `percent` is not 0.
fn rules(
    pods: u32,
    pods_period: u64,
    percent: u32,
    percent_period: u64,
    stab: u64,
) -> ScalingRules {
    let mut policies = Vec::new();
    if pods != 0 {
        policies.push(ScalingPolicy {
            kind: PolicyKind::Pods,
            value: pods,
            period: Duration::from_secs(pods_period),
        });
    }
    if percent != 0 {
        policies.push(ScalingPolicy {
            kind: PolicyKind::Percent,
            value: percent,
            period: Duration::from_secs(percent_period),
        });
    }
    ScalingRules {
        stabilization: Duration::from_secs(stab),
        select: Select::Max,
        policies,
    }
}

/// `GenerateHPAScale{Up,Down}Rules`: the given fields over the defaults
/// (policies only when some were given).
fn or_default(r: Option<ScalingRules>, default: ScalingRules) -> ScalingRules {
    match r {
        None => default,
        Some(r) if r.policies.is_empty() => ScalingRules {
            policies: default.policies,
            ..r
        },
        Some(r) => r,
    }
}

/// `generateEventsUniformDistribution`: the events spread over the last
/// `seconds`, each in the middle of its segment (whole seconds, as the
/// upstream `time.Duration` conversion truncates).
fn uniform(changes: &[u32], seconds: u64) -> Vec<ScaleEvent> {
    let seg = seconds as f64 / changes.len() as f64;
    changes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let ago = (seconds as f64 - seg * (i + 1) as f64 + seg / 2.0) as i64;
            (NOW - ago * 1000, c)
        })
        .collect()
}

struct Case {
    name: &'static str,
    up_events: Vec<ScaleEvent>,
    down_events: Vec<ScaleEvent>,
    min: u32,
    max: u32,
    up: Option<ScalingRules>,
    down: Option<ScalingRules>,
    current: u32,
    desired: u32,
    expected: u32,
    condition: &'static str,
}

fn case(
    name: &'static str,
    min: u32,
    max: u32,
    current: u32,
    desired: u32,
    expected: u32,
    condition: &'static str,
) -> Case {
    Case {
        name,
        up_events: vec![],
        down_events: vec![],
        min,
        max,
        up: None,
        down: None,
        current,
        desired,
        expected,
        condition,
    }
}

impl Case {
    fn up(mut self, r: ScalingRules) -> Self {
        self.up = Some(r);
        self
    }
    fn down(mut self, r: ScalingRules) -> Self {
        self.down = Some(r);
        self
    }
    fn up_events(mut self, e: Vec<ScaleEvent>) -> Self {
        self.up_events = e;
        self
    }
    fn down_events(mut self, e: Vec<ScaleEvent>) -> Self {
        self.down_events = e;
        self
    }
}

/// TestScalingWithRules, every case in upstream order.
#[test]
fn kubernetes_scaling_with_rules() {
    let ev = || uniform(&[1, 5, 9], 120);
    let outdated = || uniform(&[8, 12, 9, 11], 120);
    let cases = vec![
        case("prenormalized desired replicas within range", 3, 8, 5, 7, 7, "DesiredWithinRange"),
        case("prenormalized desired replicas < minReplicas", 2, 8, 3, 1, 2, "TooFewReplicas"),
        case("prenormalized desired replicas within range when minReplicas is 0", 0, 10, 1, 0, 0, "DesiredWithinRange"),
        case("maxReplicas is the limit because maxReplicas < scaleUpLimit", 1, 10, 20, 1000, 10, "TooManyReplicas"),
        case("desired replica count is more than the maximum replica count", 100, 150, 100, 1000, 150, "TooManyReplicas"),
        case("scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies", 1, 2000, 3, 1000, 4, "ScaleUpLimit")
            .up(rules(0, 0, 1, 60, 0)),
        // upstream marks this case `testThis` and skips it; it holds here
        case("scaleDownLimit is the limit because scaleDownLimit > minReplicas with user defined policies", 3, 2000, 1000, 3, 980, "ScaleDownLimit")
            .down(rules(20, 60, 0, 0, 0)),
        case("scaleUp with default behavior", 1, 1000, 10, 50, 20, "ScaleUpLimit"),
        case("scaleUp with pods policy larger than percent policy", 1, 1000, 10, 500, 110, "ScaleUpLimit")
            .up(rules(100, 60, 100, 60, 0)),
        case("scaleUp with percent policy larger than pods policy", 1, 1000, 10, 500, 20, "ScaleUpLimit")
            .up(rules(2, 60, 100, 60, 0)),
        case("scaleUp with spec MaxReplicas limitation with large pod policy", 1, 1000, 10, 50, 50, "DesiredWithinRange")
            .up(rules(100, 60, 0, 0, 0)),
        case("scaleUp with spec MaxReplicas limitation with large percent policy", 1, 1000, 10, 50, 50, "DesiredWithinRange")
            .up(rules(10000, 60, 0, 0, 0)),
        case("scaleUp with pod policy limitation", 1, 1000, 10, 50, 40, "ScaleUpLimit")
            .up(rules(30, 60, 0, 0, 0)),
        case("scaleUp with percent policy limitation", 1, 1000, 10, 50, 30, "ScaleUpLimit")
            .up(rules(0, 0, 200, 60, 0)),
        case("scaleDown with percent policy larger than pod policy", 1, 1000, 100, 2, 80, "ScaleDownLimit")
            .down(rules(20, 60, 1, 60, 300)),
        case("scaleDown with pod policy larger than percent policy", 1, 1000, 100, 2, 98, "ScaleDownLimit")
            .down(rules(2, 60, 1, 60, 300)),
        case("scaleDown with spec MinReplicas=nil limitation with large pod policy", 1, 1000, 10, 0, 1, "TooFewReplicas")
            .down(rules(100, 60, 0, 0, 300)),
        case("scaleDown with spec MinReplicas limitation with large pod policy", 1, 1000, 10, 0, 1, "TooFewReplicas")
            .down(rules(100, 60, 0, 0, 300)),
        case("scaleDown with spec MinReplicas limitation with large percent policy", 5, 1000, 10, 2, 5, "TooFewReplicas")
            .down(rules(0, 0, 100, 60, 300)),
        case("scaleDown with pod policy limitation", 1, 1000, 10, 2, 5, "ScaleDownLimit")
            .down(rules(5, 60, 0, 0, 300)),
        case("scaleDown with percent policy limitation", 1, 1000, 10, 5, 5, "DesiredWithinRange")
            .down(rules(0, 0, 50, 60, 300)),
        case("scaleUp with spec MaxReplicas limitation with large pod policy and events", 1, 200, 100, 500, 200, "TooManyReplicas")
            .up(rules(300, 60, 0, 0, 0)).up_events(ev()),
        case("scaleUp with spec MaxReplicas limitation with large percent policy and events", 1, 200, 100, 500, 200, "TooManyReplicas")
            .up(rules(0, 0, 10000, 60, 0)).up_events(ev()),
        case("scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent scale up events", 1, 1000, 100, 500, 100, "ScaleUpLimit")
            .up(rules(5, 120, 0, 0, 0)).up_events(ev()),
        case("scaleUp with pod policy and previous scale up events", 1, 1000, 100, 500, 235, "ScaleUpLimit")
            .up(rules(150, 120, 0, 0, 0)).up_events(ev()),
        case("scaleUp with percent policy and previous scale up events", 1, 1000, 100, 500, 255, "ScaleUpLimit")
            .up(rules(0, 0, 200, 120, 0)).up_events(ev()),
        case("scaleUp with percent policy and previous scale up and down events", 1, 1000, 6, 24, 16, "ScaleUpLimit")
            .up(rules(0, 0, 300, 300, 0)).up_events(uniform(&[4], 120)).down_events(uniform(&[2], 120)),
        case("scaleDown with default policy and previous events", 1, 1000, 10, 5, 5, "DesiredWithinRange")
            .down_events(ev()),
        case("scaleDown with spec MinReplicas=nil limitation with large pod policy and previous events", 1, 1000, 100, 0, 1, "TooFewReplicas")
            .down(rules(115, 120, 0, 0, 300)).down_events(ev()),
        case("scaleDown with spec MinReplicas limitation with large pod policy and previous events", 5, 1000, 100, 0, 5, "TooFewReplicas")
            .down(rules(130, 120, 0, 0, 300)).down_events(ev()),
        case("scaleDown with spec MinReplicas limitation with large percent policy and previous events", 5, 1000, 100, 2, 5, "TooFewReplicas")
            .down(rules(0, 0, 100, 120, 300)).down_events(ev()),
        case("scaleDown with pod policy limitation and previous events", 1, 1000, 100, 2, 100, "ScaleDownLimit")
            .down(rules(5, 120, 0, 0, 300)).down_events(ev()),
        case("scaleDown with percent policy limitation and previous events", 1, 1000, 100, 0, 56, "ScaleDownLimit")
            .down(rules(0, 0, 50, 120, 300)).down_events(uniform(&[2, 4, 6], 120)),
        case("scaleDown with percent policy and previous scale up and down events", 1, 1000, 10, 1, 6, "ScaleDownLimit")
            .down(rules(0, 0, 50, 180, 0)).up_events(uniform(&[2], 120)).down_events(uniform(&[4], 120)),
        case("scaleDown with previous events preventing further scale down", 1, 1000, 100, 0, 100, "ScaleDownLimit")
            .down(rules(0, 0, 10, 120, 300)).down_events(uniform(&[10, 10, 10], 120)),
        case("scaleDown with with previous events still allowing more scale down", 1, 1000, 10, 5, 5, "DesiredWithinRange")
            .down(rules(0, 0, 1000, 120, 300)).down_events(uniform(&[10, 10, 10], 120)),
        case("check 'outdated' flag for events for one behavior for up", 1, 1000, 100, 200, 200, "DesiredWithinRange")
            .up(rules(1000, 60, 0, 0, 0)).up_events(outdated()),
        case("check that events were not marked 'outdated' for two different policies in the behavior for up", 1, 1000, 100, 200, 200, "DesiredWithinRange")
            .up(rules(1000, 120, 100, 60, 0)).up_events(outdated()),
        case("check that events were marked 'outdated' for two different policies in the behavior for up", 1, 1000, 100, 200, 200, "DesiredWithinRange")
            .up(rules(1000, 30, 100, 60, 0)).up_events(outdated()),
        case("check 'outdated' flag for events for one behavior for down", 1, 1000, 100, 5, 5, "DesiredWithinRange")
            .down(rules(1000, 60, 0, 0, 300)).down_events(outdated()),
        case("check that events were not marked 'outdated' for two different policies in the behavior for down", 1, 1000, 100, 5, 5, "DesiredWithinRange")
            .down(rules(1000, 120, 100, 60, 300)).down_events(outdated()),
        case("check that events were marked 'outdated' for two different policies in the behavior for down", 1, 1000, 100, 5, 5, "DesiredWithinRange")
            .down(rules(1000, 30, 100, 60, 300)).down_events(outdated()),
    ];
    assert_eq!(cases.len(), 42);
    let mut failed = Vec::new();
    for c in &cases {
        let b = Behavior {
            scale_up: or_default(c.up.clone(), ScalingRules::hpa_scale_up()),
            scale_down: or_default(c.down.clone(), ScalingRules::hpa_scale_down()),
        };
        let (n, why) = limit_rate(
            &b,
            &c.up_events,
            &c.down_events,
            c.min,
            c.max,
            c.current,
            c.desired,
            NOW,
        );
        if (n, why.hpa_reason()) != (c.expected, c.condition) {
            failed.push(format!(
                "{}: got {n} {}, upstream expects {} {}",
                c.name,
                why.hpa_reason(),
                c.expected,
                c.condition
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// TestCalculateScaleUpLimitWithScalingRules and
/// TestCalculateScaleDownLimitWithBehaviors: `select = "min"` over a pods
/// and a percent policy.
#[test]
fn kubernetes_limits_with_select_min() {
    let r = ScalingRules {
        stabilization: Duration::from_secs(300),
        select: Select::Min,
        policies: vec![
            ScalingPolicy {
                kind: PolicyKind::Pods,
                value: 2,
                period: Duration::from_secs(60),
            },
            ScalingPolicy {
                kind: PolicyKind::Percent,
                value: 50,
                period: Duration::from_secs(60),
            },
        ],
    };
    assert_eq!(scale_up_limit(1, &[], &[], &r, NOW), 2);
    assert_eq!(scale_down_limit(5, &[], &[], &r, NOW), 3);
    // "disabled": no change allowed in that direction
    let off = ScalingRules {
        select: Select::Disabled,
        ..r
    };
    assert_eq!(scale_up_limit(7, &[], &[], &off, NOW), 7);
    assert_eq!(scale_down_limit(7, &[], &[], &off, NOW), 7);
}

/// TestNormalizeDesiredReplicasWithBehavior, every case: the stored
/// recommendations (value, minutes ago), current, desired, expected, the
/// scale-up and scale-down windows in seconds.
#[test]
fn kubernetes_normalize_desired_replicas_with_behavior() {
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Vec<(u32, i64)>, u32, u32, u32, u64, u64)> = vec![
        (
            "empty recommendations for scaling down",
            vec![],
            100,
            5,
            5,
            0,
            0,
        ),
        (
            "simple scale down stabilization",
            vec![(4, 2), (5, 1)],
            100,
            3,
            5,
            0,
            180,
        ),
        (
            "simple scale up stabilization",
            vec![(4, 2), (5, 1)],
            1,
            7,
            4,
            300,
            0,
        ),
        (
            "no scale down stabilization",
            vec![(1, 2), (2, 1)],
            100,
            3,
            3,
            300,
            0,
        ),
        (
            "no scale up stabilization",
            vec![(4, 2), (5, 1)],
            1,
            3,
            3,
            0,
            300,
        ),
        (
            "no scale down stabilization, reuse recommendation element",
            vec![(10, 10), (9, 9)],
            100,
            3,
            3,
            0,
            0,
        ),
        (
            "no scale up stabilization, reuse recommendation element",
            vec![(10, 10), (9, 9)],
            1,
            100,
            100,
            0,
            0,
        ),
        (
            "scale down stabilization, reuse one of obsolete recommendation element",
            vec![(10, 10), (4, 1), (5, 2), (9, 9)],
            100,
            3,
            5,
            0,
            180,
        ),
        (
            "scale up stabilization, reuse one of obsolete recommendation element",
            vec![(10, 100), (6, 1), (5, 2), (9, 3)],
            1,
            100,
            5,
            300,
            0,
        ),
        (
            "scale up and down stabilization, do not scale up when prenormalized rec goes down",
            vec![(2, 100), (3, 3)],
            2,
            1,
            2,
            300,
            300,
        ),
        (
            "scale up and down stabilization, do not scale down when prenormalized rec goes up",
            vec![(2, 100), (1, 3)],
            2,
            3,
            2,
            300,
            300,
        ),
    ];
    let mut failed = Vec::new();
    for (name, recs, current, desired, expected, up_s, down_s) in cases {
        let b = Behavior {
            scale_up: ScalingRules {
                stabilization: Duration::from_secs(up_s),
                ..ScalingRules::hpa_scale_up()
            },
            scale_down: ScalingRules {
                stabilization: Duration::from_secs(down_s),
                ..ScalingRules::hpa_scale_down()
            },
        };
        // the stored recommendations, oldest first, as they were recorded
        let mut recs: Vec<(Millis, u32)> =
            recs.iter().map(|&(v, m)| (NOW - m * 60_000, v)).collect();
        recs.sort_by_key(|r| r.0);
        let (mut up, mut down) = (VecDeque::new(), VecDeque::new());
        for &(t, v) in &recs {
            window_push(&mut up, Keep::Lowest, b.scale_up.stabilization, t, v);
            window_push(&mut down, Keep::Highest, b.scale_down.stabilization, t, v);
        }
        let got = stabilize(&mut up, &mut down, &b, NOW, current, desired);
        if got != expected {
            failed.push(format!("{name}: got {got}, upstream expects {expected}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// TestStoreScaleEvents' sums: events older than the longest period stop
/// counting when a new one is stored; the rest count in their period.
#[test]
fn kubernetes_store_scale_events() {
    let ago = |s: i64| NOW - s * 1000;
    // (previous events, longest period, replica change expected in 60 s
    // before storing, events kept after storing 5)
    let cases: Vec<(&str, Vec<ScaleEvent>, u64, i64, usize)> = vec![
        ("empty entries with two-policy-behavior", vec![], 60, 0, 1),
        (
            "one outdated entry to be replaced with behavior",
            vec![(ago(61), 7)],
            60,
            0,
            1,
        ),
        (
            "one actual entry to be not touched with behavior",
            vec![(ago(58), 7)],
            60,
            7,
            2,
        ),
        (
            "two entries, one of them to be replaced",
            vec![(ago(61), 7), (ago(59), 6)],
            60,
            6,
            2,
        ),
        (
            "two entries, both actual",
            vec![(ago(58), 7), (ago(59), 6)],
            120,
            13,
            3,
        ),
    ];
    for (name, prev, longest, before, kept) in cases {
        assert_eq!(
            change_in_period(Duration::from_secs(60), &prev, NOW),
            before,
            "{name}"
        );
        let mut events = prev.clone();
        record_event(&mut events, Duration::from_secs(longest), NOW, 5);
        assert_eq!(events.len(), kept, "{name}: {events:?}");
        assert_eq!(events.last(), Some(&(NOW, 5)), "{name}");
    }
}
