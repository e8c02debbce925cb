//! The guard: rules in Rust that no policy can break. Bounds, separate up
//! and down cooldowns, scale-down stabilization (the HPA's "highest
//! recommendation of the last N seconds"), step limits, tolerance, pause,
//! dry run and a fallback on policy failure. Every decision says why.

use std::collections::VecDeque;
use std::time::Duration;

use crate::clock::Millis;

#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    pub min: u32,
    pub max: u32,
    /// Least time between two scale-ups.
    pub cooldown_up: Duration,
    /// Least time after any scaling before a scale-down.
    pub cooldown_down: Duration,
    pub stabilization_down: Duration,
    /// 0 = no limit.
    pub max_step_up: u32,
    /// 0 = no limit.
    pub max_step_down: u32,
    /// Changes within this fraction of the current count are ignored.
    pub tolerance: f64,
    pub paused: bool,
    pub dry_run: bool,
    pub fallback_replicas: Option<u32>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            min: 1,
            max: 10,
            cooldown_up: Duration::ZERO,
            cooldown_down: Duration::ZERO,
            stabilization_down: Duration::from_secs(300),
            max_step_up: 0,
            max_step_down: 0,
            tolerance: 0.0,
            paused: false,
            dry_run: false,
            fallback_replicas: None,
        }
    }
}

/// What the policy produced, as the guard sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Recommendation {
    /// The policy asked for this many replicas.
    Replicas(u32),
    /// The policy asked for no change.
    Hold,
    /// The policy failed; the text says how.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Up,
    Down,
    Hold,
}

impl Direction {
    pub fn code(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Hold => "hold",
        }
    }
}

/// Why a decision held (or was bent); a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldReason {
    Policy,
    PolicyFailed,
    Paused,
    Tolerance,
    Stabilization,
    CooldownUp,
    CooldownDown,
    AtBound,
}

impl HoldReason {
    pub fn code(self) -> &'static str {
        match self {
            HoldReason::Policy => "policy",
            HoldReason::PolicyFailed => "policy_failed",
            HoldReason::Paused => "paused",
            HoldReason::Tolerance => "tolerance",
            HoldReason::Stabilization => "stabilization",
            HoldReason::CooldownUp => "cooldown_up",
            HoldReason::CooldownDown => "cooldown_down",
            HoldReason::AtBound => "at_bound",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub current: u32,
    pub desired: u32,
    pub direction: Direction,
    pub held: Option<HoldReason>,
    pub dry_run: bool,
    /// Human-readable: what was asked and every rule that changed it.
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct Guard {
    last_up: Option<Millis>,
    last_change: Option<Millis>,
    /// (time, recommendation), times rising and recommendations falling:
    /// the front is the highest recommendation still inside the window.
    recent: VecDeque<(Millis, u32)>,
}

/// What a state snapshot keeps of a [`Guard`]: the last changes per
/// direction and the stabilization window's recommendations.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GuardState {
    pub last_up_ms: Option<Millis>,
    pub last_change_ms: Option<Millis>,
    /// (time, recommendation), times rising, recommendations falling.
    pub recent: Vec<(Millis, u32)>,
}

/// Recommendations a snapshot keeps at most (the window keeps only falling
/// ones, so this is reached only by a long stabilization with many steps).
pub const MAX_RECENT: usize = 4096;

impl Guard {
    pub fn export(&self) -> GuardState {
        GuardState {
            last_up_ms: self.last_up,
            last_change_ms: self.last_change,
            recent: self
                .recent
                .iter()
                .rev()
                .take(MAX_RECENT)
                .rev()
                .copied()
                .collect(),
        }
    }

    /// A guard in the state a snapshot kept. Recommendations out of order
    /// (a damaged or foreign snapshot) are dropped, so the window's
    /// invariant holds.
    pub fn import(s: &GuardState) -> Guard {
        let mut recent: VecDeque<(Millis, u32)> = VecDeque::new();
        for &(t, r) in s.recent.iter().take(MAX_RECENT) {
            if recent.back().is_none_or(|&(bt, br)| t >= bt && r < br) {
                recent.push_back((t, r));
            }
        }
        Guard {
            last_up: s.last_up_ms,
            last_change: s.last_change_ms,
            recent,
        }
    }

    /// Decides from `current` replicas and the policy's recommendation at `now`.
    pub fn decide(
        &mut self,
        cfg: &GuardConfig,
        now: Millis,
        current: u32,
        rec: &Recommendation,
    ) -> Decision {
        let mut notes: Vec<String> = Vec::new();
        let hold = |reason: HoldReason, text: String| Decision {
            current,
            desired: current,
            direction: Direction::Hold,
            held: Some(reason),
            dry_run: cfg.dry_run,
            reason: text,
        };
        if cfg.paused {
            return hold(HoldReason::Paused, "paused".into());
        }
        let mut want = match rec {
            Recommendation::Replicas(n) => *n,
            Recommendation::Hold => {
                if current < cfg.min || current > cfg.max {
                    notes.push("policy held".into());
                    current
                } else {
                    return hold(HoldReason::Policy, "policy asked for no change".into());
                }
            }
            Recommendation::Failed(why) => match cfg.fallback_replicas {
                Some(f) => {
                    notes.push(format!("policy failed ({why}); fallback_replicas {f}"));
                    f
                }
                None => {
                    return hold(
                        HoldReason::PolicyFailed,
                        format!("policy failed ({why}); holding"),
                    )
                }
            },
        };
        if matches!(rec, Recommendation::Replicas(_)) {
            notes.push(format!("policy wants {want}"));
            if current > 0 && cfg.tolerance > 0.0 {
                let change = (f64::from(want) - f64::from(current)).abs() / f64::from(current);
                if change <= cfg.tolerance && (cfg.min..=cfg.max).contains(&current) {
                    return hold(
                        HoldReason::Tolerance,
                        format!(
                            "policy wants {want}, within tolerance {} of {current}",
                            cfg.tolerance
                        ),
                    );
                }
            }
        }
        // Stabilization: scale down only to the highest recommendation of the window.
        let window_ms = cfg.stabilization_down.as_millis() as i64;
        while self
            .recent
            .front()
            .is_some_and(|&(t, _)| t <= now - window_ms)
        {
            self.recent.pop_front();
        }
        while self.recent.back().is_some_and(|&(_, r)| r <= want) {
            self.recent.pop_back();
        }
        self.recent.push_back((now, want));
        if want < current && window_ms > 0 {
            // Never above the current count: stabilization only slows a scale-down.
            let highest = self.recent.front().map_or(want, |&(_, r)| r).min(current);
            if highest > want {
                notes.push(format!(
                    "stabilized to {highest}, the highest of the last {}",
                    humantime::format_duration(cfg.stabilization_down)
                ));
                want = highest;
            }
        }
        let clamped = want.clamp(cfg.min, cfg.max);
        if clamped != want {
            notes.push(format!("clamped to [{}, {}]", cfg.min, cfg.max));
            want = clamped;
        }
        if want > current && cfg.max_step_up > 0 && want - current > cfg.max_step_up {
            want = current + cfg.max_step_up;
            notes.push(format!("max_step_up {}", cfg.max_step_up));
        }
        if want < current && cfg.max_step_down > 0 && current - want > cfg.max_step_down {
            want = current - cfg.max_step_down;
            notes.push(format!("max_step_down {}", cfg.max_step_down));
        }
        let text = notes.join("; ");
        if want == current {
            let why = if text.contains("stabilized") {
                HoldReason::Stabilization
            } else {
                HoldReason::AtBound
            };
            return hold(why, text);
        }
        // Cooldowns apply only to real moves, and never keep a target out of bounds.
        let in_bounds = (cfg.min..=cfg.max).contains(&current);
        if want > current && in_bounds {
            if let Some(left) = left(self.last_up, cfg.cooldown_up, now) {
                return hold(
                    HoldReason::CooldownUp,
                    format!("{text}; cooldown_up, {left} ms left"),
                );
            }
        }
        if want < current && in_bounds {
            if let Some(left) = left(self.last_change, cfg.cooldown_down, now) {
                return hold(
                    HoldReason::CooldownDown,
                    format!("{text}; cooldown_down, {left} ms left"),
                );
            }
        }
        let direction = if want > current {
            Direction::Up
        } else {
            Direction::Down
        };
        if direction == Direction::Up {
            self.last_up = Some(now);
        }
        self.last_change = Some(now);
        Decision {
            current,
            desired: want,
            direction,
            held: None,
            dry_run: cfg.dry_run,
            reason: text,
        }
    }
}

fn left(since: Option<Millis>, cooldown: Duration, now: Millis) -> Option<i64> {
    let since = since?;
    let remaining = since + cooldown.as_millis() as i64 - now;
    (remaining > 0).then_some(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Recommendation::*;

    fn cfg() -> GuardConfig {
        GuardConfig {
            min: 1,
            max: 20,
            stabilization_down: Duration::ZERO,
            ..GuardConfig::default()
        }
    }

    #[test]
    fn clamps_to_bounds() {
        let mut g = Guard::default();
        let d = g.decide(&cfg(), 0, 5, &Replicas(50));
        assert_eq!((d.desired, d.direction), (20, Direction::Up));
        assert!(d.reason.contains("clamped"), "{}", d.reason);
        let d = g.decide(&cfg(), 1, 20, &Replicas(0));
        assert_eq!(d.desired, 1);
        // Already at the bound: hold, saying so.
        let d = g.decide(&cfg(), 2, 20, &Replicas(25));
        assert_eq!((d.desired, d.held), (20, Some(HoldReason::AtBound)));
        // Out of bounds and the policy holds: moved into bounds.
        let d = g.decide(&cfg(), 3, 0, &Hold);
        assert_eq!(d.desired, 1);
    }

    #[test]
    fn separate_cooldowns() {
        let c = GuardConfig {
            cooldown_up: Duration::from_secs(10),
            cooldown_down: Duration::from_secs(60),
            ..cfg()
        };
        let mut g = Guard::default();
        assert_eq!(g.decide(&c, 0, 2, &Replicas(4)).desired, 4);
        let d = g.decide(&c, 5_000, 4, &Replicas(6));
        assert_eq!(d.held, Some(HoldReason::CooldownUp));
        assert!(d.reason.contains("5000 ms left"), "{}", d.reason);
        assert_eq!(g.decide(&c, 10_000, 4, &Replicas(6)).desired, 6);
        // Down waits 60 s after the last change (at 10 s).
        assert_eq!(
            g.decide(&c, 69_999, 6, &Replicas(3)).held,
            Some(HoldReason::CooldownDown)
        );
        assert_eq!(g.decide(&c, 70_000, 6, &Replicas(3)).desired, 3);
        // Up is not blocked by a recent down.
        assert_eq!(g.decide(&c, 70_001, 3, &Replicas(5)).desired, 5);
    }

    #[test]
    fn stabilization_uses_highest_recent_recommendation() {
        let c = GuardConfig {
            stabilization_down: Duration::from_secs(300),
            ..cfg()
        };
        let mut g = Guard::default();
        assert_eq!(g.decide(&c, 0, 2, &Replicas(10)).desired, 10);
        assert_eq!(
            g.decide(&c, 60_000, 10, &Replicas(7)).held,
            Some(HoldReason::Stabilization)
        );
        assert_eq!(
            g.decide(&c, 120_000, 10, &Replicas(4)).held,
            Some(HoldReason::Stabilization)
        );
        // At 300 s the 10 ages out; the highest left is the 7 from 60 s.
        let d = g.decide(&c, 300_000, 10, &Replicas(3));
        assert_eq!((d.desired, d.direction), (7, Direction::Down));
        assert!(d.reason.contains("stabilized to 7"), "{}", d.reason);
        let d = g.decide(&c, 419_999, 7, &Replicas(3));
        assert_eq!(d.desired, 4);
        // Up is never slowed by stabilization.
        assert_eq!(g.decide(&c, 420_000, 4, &Replicas(9)).desired, 9);
    }

    /// A recommendation that a cooldown held back must not later turn a
    /// scale-down into a scale-up.
    #[test]
    fn stabilization_never_scales_up() {
        let c = GuardConfig {
            stabilization_down: Duration::from_secs(300),
            cooldown_up: Duration::from_secs(60),
            ..cfg()
        };
        let mut g = Guard::default();
        assert_eq!(g.decide(&c, 0, 5, &Replicas(8)).desired, 8);
        assert_eq!(
            g.decide(&c, 1_000, 8, &Replicas(19)).held,
            Some(HoldReason::CooldownUp)
        );
        let d = g.decide(&c, 2_000, 8, &Replicas(3));
        assert_eq!(
            (d.desired, d.held),
            (8, Some(HoldReason::Stabilization)),
            "{d:?}"
        );
    }

    #[test]
    fn step_limits() {
        let c = GuardConfig {
            max_step_up: 3,
            max_step_down: 1,
            ..cfg()
        };
        let mut g = Guard::default();
        let d = g.decide(&c, 0, 2, &Replicas(10));
        assert_eq!(d.desired, 5);
        assert!(d.reason.contains("max_step_up 3"));
        assert_eq!(g.decide(&c, 1, 5, &Replicas(1)).desired, 4);
    }

    #[test]
    fn tolerance_pause_dry_run() {
        let c = GuardConfig {
            tolerance: 0.1,
            ..cfg()
        };
        let mut g = Guard::default();
        assert_eq!(
            g.decide(&c, 0, 10, &Replicas(11)).held,
            Some(HoldReason::Tolerance)
        );
        assert_eq!(g.decide(&c, 0, 10, &Replicas(12)).desired, 12);
        let paused = GuardConfig {
            paused: true,
            ..cfg()
        };
        assert_eq!(
            g.decide(&paused, 0, 10, &Replicas(2)).held,
            Some(HoldReason::Paused)
        );
        let dry = GuardConfig {
            dry_run: true,
            ..cfg()
        };
        let d = g.decide(&dry, 0, 10, &Replicas(2));
        assert!(d.dry_run);
        assert_eq!(d.desired, 2);
    }

    #[test]
    fn policy_failure_holds_or_falls_back() {
        let mut g = Guard::default();
        let d = g.decide(&cfg(), 0, 4, &Failed("boom".into()));
        assert_eq!((d.desired, d.held), (4, Some(HoldReason::PolicyFailed)));
        assert!(d.reason.contains("boom"));
        let c = GuardConfig {
            fallback_replicas: Some(8),
            ..cfg()
        };
        let d = g.decide(&c, 0, 4, &Failed("boom".into()));
        assert_eq!((d.desired, d.direction), (8, Direction::Up));
        assert!(d.reason.contains("fallback_replicas 8"));
        let d = g.decide(&cfg(), 0, 4, &Hold);
        assert_eq!(d.held, Some(HoldReason::Policy));
    }
}
