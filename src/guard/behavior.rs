//! The HPA's `behavior`, exactly: scale-up and scale-down rules, each a
//! stabilization window and rate policies (`pods` or `percent` per
//! period) chosen by `select`. The arithmetic follows Kubernetes'
//! controller (`pkg/controller/podautoscaler/horizontal.go`:
//! `stabilizeRecommendationWithBehaviors`,
//! `convertDesiredReplicasWithBehaviorRate`,
//! `calculateScaleUpLimitWithScalingRules`,
//! `calculateScaleDownLimitWithBehaviors`, `getReplicasChangePerPeriod`),
//! and its own test tables run against it (`tests.rs` of this module).
//!
//! Times are the engine's milliseconds; "within a period" is strictly
//! after `now - period`, as Go's `After(cutoff)`.

use std::collections::VecDeque;
use std::time::Duration;

use crate::clock::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// At most `value` replicas per period.
    Pods,
    /// At most `value` percent of the replicas at the period's start.
    Percent,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScalingPolicy {
    pub kind: PolicyKind,
    pub value: u32,
    pub period: Duration,
}

/// Which policy wins: the one allowing the most change, the least, or
/// none (no scaling in this direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScalingRules {
    pub stabilization: Duration,
    pub select: Select,
    pub policies: Vec<ScalingPolicy>,
}

impl ScalingRules {
    /// The HPA's scale-up default: no stabilization, the larger of 100%
    /// and 4 pods per 15 s.
    pub fn hpa_scale_up() -> Self {
        Self {
            stabilization: Duration::ZERO,
            select: Select::Max,
            policies: vec![
                ScalingPolicy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period: Duration::from_secs(15),
                },
                ScalingPolicy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period: Duration::from_secs(15),
                },
            ],
        }
    }

    /// The HPA's scale-down default: 300 s stabilization, 100% per 15 s.
    pub fn hpa_scale_down() -> Self {
        Self {
            stabilization: Duration::from_secs(300),
            select: Select::Max,
            policies: vec![ScalingPolicy {
                kind: PolicyKind::Percent,
                value: 100,
                period: Duration::from_secs(15),
            }],
        }
    }

    /// The longest period of the policies: scale events older than it
    /// no longer count.
    pub fn longest_period(&self) -> Duration {
        self.policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            scale_up: ScalingRules::hpa_scale_up(),
            scale_down: ScalingRules::hpa_scale_down(),
        }
    }
}

/// A scale event: when, and by how many replicas (always positive; the
/// direction is the list it is in).
pub type ScaleEvent = (Millis, u32);

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Replicas changed by `events` within `period` before `now`.
pub fn change_in_period(period: Duration, events: &[ScaleEvent], now: Millis) -> i64 {
    let cutoff = now - ms(period);
    events
        .iter()
        .filter(|(t, _)| *t > cutoff)
        .map(|(_, n)| i64::from(*n))
        .sum()
}

/// The replicas when `p`'s period began: `current`, minus what was added
/// and plus what was removed within it.
fn period_start(
    current: i64,
    p: &ScalingPolicy,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    now: Millis,
) -> i64 {
    current - change_in_period(p.period, up, now) + change_in_period(p.period, down, now)
}

/// The most replicas the scale-up rules allow now, from the replicas at
/// each policy's period start (current, minus what was added, plus what
/// was removed within the period).
pub fn scale_up_limit(
    current: u32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    rules: &ScalingRules,
    now: Millis,
) -> i64 {
    let current = i64::from(current);
    let (mut result, pick): (i64, fn(i64, i64) -> i64) = match rules.select {
        Select::Disabled => return current,
        Select::Min => (i64::MAX, i64::min),
        Select::Max => (i64::MIN, i64::max),
    };
    for p in &rules.policies {
        let start = period_start(current, p, up, down, now);
        let proposed = match p.kind {
            PolicyKind::Pods => start + i64::from(p.value),
            // rounded up, or a small target could never grow
            PolicyKind::Percent => {
                (start as f64 * (1.0 + f64::from(p.value) / 100.0)).ceil() as i64
            }
        };
        result = pick(result, proposed);
    }
    result
}

/// The fewest replicas the scale-down rules allow now.
pub fn scale_down_limit(
    current: u32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    rules: &ScalingRules,
    now: Millis,
) -> i64 {
    let current = i64::from(current);
    let (mut result, pick): (i64, fn(i64, i64) -> i64) = match rules.select {
        Select::Disabled => return current,
        Select::Min => (i64::MIN, i64::max),
        Select::Max => (i64::MAX, i64::min),
    };
    for p in &rules.policies {
        let start = period_start(current, p, up, down, now);
        let proposed = match p.kind {
            PolicyKind::Pods => start - i64::from(p.value),
            // truncated toward zero, as Go's int32(float64)
            PolicyKind::Percent => (start as f64 * (1.0 - f64::from(p.value) / 100.0)) as i64,
        };
        result = pick(result, proposed);
    }
    result
}

/// What bounded a desired count (the HPA's `ScalingLimited` reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    DesiredWithinRange,
    ScaleUpLimit,
    TooManyReplicas,
    ScaleDownLimit,
    TooFewReplicas,
}

impl Limited {
    /// The HPA's condition reason, for messages.
    pub fn hpa_reason(self) -> &'static str {
        match self {
            Limited::DesiredWithinRange => "DesiredWithinRange",
            Limited::ScaleUpLimit => "ScaleUpLimit",
            Limited::TooManyReplicas => "TooManyReplicas",
            Limited::ScaleDownLimit => "ScaleDownLimit",
            Limited::TooFewReplicas => "TooFewReplicas",
        }
    }
}

/// `desired` bounded by the rate policies and by `min..=max`, from
/// `current` (the HPA's `convertDesiredReplicasWithBehaviorRate`).
#[allow(clippy::too_many_arguments)]
pub fn limit_rate(
    behavior: &Behavior,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    min: u32,
    max: u32,
    current: u32,
    desired: u32,
    now: Millis,
) -> (u32, Limited) {
    let (c, d) = (i64::from(current), i64::from(desired));
    if d > c {
        let limit = scale_up_limit(current, up, down, &behavior.scale_up, now).max(c);
        let (allowed, why) = if i64::from(max) > limit {
            (limit, Limited::ScaleUpLimit)
        } else {
            (i64::from(max), Limited::TooManyReplicas)
        };
        if d > allowed {
            return (allowed as u32, why);
        }
    } else if d < c {
        let limit = scale_down_limit(current, up, down, &behavior.scale_down, now).min(c);
        let (allowed, why) = if i64::from(min) < limit {
            (limit, Limited::ScaleDownLimit)
        } else {
            (i64::from(min), Limited::TooFewReplicas)
        };
        if d < allowed {
            return (allowed as u32, why);
        }
    }
    (desired, Limited::DesiredWithinRange)
}

/// The recommendations of a stabilization window, as a monotonic queue:
/// times rising, and values falling (`Keep::Highest`, for scale-down) or
/// rising (`Keep::Lowest`, for scale-up), so the front is the window's
/// extreme. Exactly the HPA's answer over its list of recommendations,
/// in memory bounded by the distinct values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Highest,
    Lowest,
}

/// Adds `(now, value)` to `q` after dropping what left the window; returns
/// the window's extreme (`value` itself when the window is zero).
pub fn window_push(
    q: &mut VecDeque<(Millis, u32)>,
    keep: Keep,
    window: Duration,
    now: Millis,
    value: u32,
) -> u32 {
    let cutoff = now - ms(window);
    while q.front().is_some_and(|&(t, _)| t <= cutoff) {
        q.pop_front();
    }
    let dominated = |r: u32| match keep {
        Keep::Highest => r <= value,
        Keep::Lowest => r >= value,
    };
    while q.back().is_some_and(|&(_, r)| dominated(r)) {
        q.pop_back();
    }
    q.push_back((now, value));
    q.front().map_or(value, |&(_, r)| r)
}

/// The HPA's stabilization: `desired` joins both windows, and the result
/// is `current` moved toward `desired` no further than the lowest
/// recommendation of the scale-up window (up) and the highest of the
/// scale-down window (down).
pub fn stabilize(
    up_window: &mut VecDeque<(Millis, u32)>,
    down_window: &mut VecDeque<(Millis, u32)>,
    behavior: &Behavior,
    now: Millis,
    current: u32,
    desired: u32,
) -> u32 {
    let up = window_push(
        up_window,
        Keep::Lowest,
        behavior.scale_up.stabilization,
        now,
        desired,
    );
    let down = window_push(
        down_window,
        Keep::Highest,
        behavior.scale_down.stabilization,
        now,
        desired,
    );
    current.max(up).min(down)
}

/// Whether `q` keeps its invariant for `keep` (for restored state).
pub fn window_ordered(q: &[(Millis, u32)], keep: Keep) -> bool {
    q.windows(2).all(|w| {
        w[0].0 <= w[1].0
            && match keep {
                Keep::Highest => w[0].1 > w[1].1,
                Keep::Lowest => w[0].1 < w[1].1,
            }
    })
}

/// Adds a scale event, dropping those older than `longest` (they count
/// in no period; the HPA marks them outdated and reuses their slots).
pub fn record_event(events: &mut Vec<ScaleEvent>, longest: Duration, now: Millis, change: u32) {
    let cutoff = now - ms(longest);
    events.retain(|(t, _)| *t > cutoff);
    events.push((now, change));
}

#[cfg(test)]
mod tests;
