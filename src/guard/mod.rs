//! The guard: rules in Rust that no policy can break. Bounds, separate up
//! and down cooldowns, scale-down stabilization (the HPA's "highest
//! recommendation of the last N seconds"), step limits, tolerance, pause,
//! dry run and a fallback on policy failure. Every decision says why.
//! With a `behavior` ([`behavior::Behavior`]) the rate and stabilization
//! are the Kubernetes HPA's instead of the step limits and the scale-down
//! window.

pub mod behavior;
pub mod config;

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
    /// With stale signals: go to `fallback_replicas` (true) or hold.
    pub on_stale_fallback: bool,
    /// No scale-downs (a run-time control).
    pub pause_scale_in: bool,
    /// No scale-ups (a run-time control).
    pub pause_scale_out: bool,
    /// The HPA's behavior; when set, it replaces `stabilization_down` and
    /// the `max_step_*` limits.
    pub behavior: Option<behavior::Behavior>,
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
            on_stale_fallback: false,
            pause_scale_in: false,
            pause_scale_out: false,
            behavior: None,
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
    /// The target's signals are stale; the text says since when.
    Stale(String),
    /// Activation: at zero and below the threshold; stays at zero.
    Inactive(String),
    /// Activation: this many replicas whatever the policy said (the
    /// text says why): at least 1 when activated or active.
    Forced(u32, String),
    /// Activation: idle for `idle_after`; straight to zero (no
    /// stabilization or rate limit holds it, as KEDA's cooldown).
    Idle(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Up,
    Down,
    Hold,
}

impl Direction {
    /// Every direction, in declaration order (`d as usize` is its place).
    pub const ALL: [Direction; 3] = [Direction::Up, Direction::Down, Direction::Hold];

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
    /// A behavior's rate policies (or `select = "disabled"`) allow no
    /// change now.
    ScalePolicy,
    /// The signals are stale and `on_stale = "hold"`.
    Stale,
    /// At zero, below the activation threshold.
    Inactive,
}

impl HoldReason {
    /// Every reason, in declaration order (`r as usize` is its place).
    pub const ALL: [HoldReason; 11] = [
        HoldReason::Policy,
        HoldReason::PolicyFailed,
        HoldReason::Paused,
        HoldReason::Tolerance,
        HoldReason::Stabilization,
        HoldReason::CooldownUp,
        HoldReason::CooldownDown,
        HoldReason::AtBound,
        HoldReason::ScalePolicy,
        HoldReason::Stale,
        HoldReason::Inactive,
    ];

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
            HoldReason::ScalePolicy => "scale_policy",
            HoldReason::Stale => "stale",
            HoldReason::Inactive => "inactive",
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
    /// The same for a behavior's scale-up window, recommendations rising:
    /// the front is the lowest.
    recent_up: VecDeque<(Millis, u32)>,
    /// A behavior's scale events within its longest period.
    up_events: Vec<behavior::ScaleEvent>,
    down_events: Vec<behavior::ScaleEvent>,
}

/// What a state snapshot keeps of a [`Guard`]: the last changes per
/// direction and the stabilization window's recommendations.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GuardState {
    pub last_up_ms: Option<Millis>,
    pub last_change_ms: Option<Millis>,
    /// (time, recommendation), times rising, recommendations falling.
    pub recent: Vec<(Millis, u32)>,
    /// A behavior's scale-up window: times and recommendations rising.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_up: Vec<(Millis, u32)>,
    /// A behavior's scale events (time, replicas added or removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub up_events: Vec<(Millis, u32)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub down_events: Vec<(Millis, u32)>,
}

/// Recommendations a snapshot keeps at most (the window keeps only falling
/// ones, so this is reached only by a long stabilization with many steps).
pub const MAX_RECENT: usize = 4096;

impl Guard {
    /// Asks the CPU for the recommendations a decision reads, ahead of
    /// it ([`crate::prefetch`]).
    pub fn prefetch(&self) {
        let (front, _) = self.recent.as_slices();
        crate::prefetch::lines(front.as_ptr(), std::mem::size_of_val(front), 2);
    }

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
            recent_up: self
                .recent_up
                .iter()
                .rev()
                .take(MAX_RECENT)
                .rev()
                .copied()
                .collect(),
            up_events: last(&self.up_events),
            down_events: last(&self.down_events),
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
        let mut recent_up: VecDeque<(Millis, u32)> = VecDeque::new();
        for &(t, r) in s.recent_up.iter().take(MAX_RECENT) {
            if recent_up.back().is_none_or(|&(bt, br)| t >= bt && r > br) {
                recent_up.push_back((t, r));
            }
        }
        Guard {
            last_up: s.last_up_ms,
            last_change: s.last_change_ms,
            recent,
            recent_up,
            up_events: last(&s.up_events),
            down_events: last(&s.down_events),
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
        self.decide_reusing(cfg, now, current, rec, String::new())
    }

    /// [`Guard::decide`], its reason written into `buf` (cleared first):
    /// the engine hands back the previous decision's reason, so a tick
    /// of holds allocates nothing for them.
    pub fn decide_reusing(
        &mut self,
        cfg: &GuardConfig,
        now: Millis,
        current: u32,
        rec: &Recommendation,
        mut buf: String,
    ) -> Decision {
        buf.clear();
        let mut notes = Notes(buf);
        let hold = |reason: HoldReason, text: String| Decision {
            current,
            desired: current,
            direction: Direction::Hold,
            held: Some(reason),
            dry_run: cfg.dry_run,
            reason: text,
        };
        if cfg.paused {
            return hold(HoldReason::Paused, notes.text(format_args!("paused")));
        }
        let want = match rec {
            Recommendation::Replicas(n) => *n,
            Recommendation::Hold => {
                if current < cfg.min || current > cfg.max {
                    notes.push(format_args!("policy held"));
                    current
                } else {
                    return hold(
                        HoldReason::Policy,
                        notes.text(format_args!("policy asked for no change")),
                    );
                }
            }
            Recommendation::Failed(why) => match cfg.fallback_replicas {
                Some(f) => {
                    notes.push(format_args!("policy failed ({why}); fallback_replicas {f}"));
                    f
                }
                None => {
                    return hold(
                        HoldReason::PolicyFailed,
                        notes.text(format_args!("policy failed ({why}); holding")),
                    )
                }
            },
            Recommendation::Inactive(why) => {
                return hold(HoldReason::Inactive, notes.text(format_args!("{why}")))
            }
            Recommendation::Forced(n, why) => {
                notes.push(format_args!("{why}"));
                *n
            }
            Recommendation::Idle(why) => {
                if current == 0 {
                    return hold(HoldReason::Inactive, notes.text(format_args!("{why}")));
                }
                self.last_change = Some(now);
                if let Some(b) = &cfg.behavior {
                    behavior::record_event(
                        &mut self.down_events,
                        b.scale_down.longest_period(),
                        now,
                        current,
                    );
                }
                return Decision {
                    current,
                    desired: 0,
                    direction: Direction::Down,
                    held: None,
                    dry_run: cfg.dry_run,
                    reason: notes.text(format_args!("{why}")),
                };
            }
            Recommendation::Stale(why) => match cfg.fallback_replicas {
                Some(f) if cfg.on_stale_fallback => {
                    notes.push(format_args!(
                        "{why}; on_stale fallback to fallback_replicas {f}"
                    ));
                    f
                }
                _ => {
                    return hold(
                        HoldReason::Stale,
                        notes.text(format_args!("{why}; on_stale hold")),
                    )
                }
            },
        };
        if matches!(rec, Recommendation::Replicas(_)) {
            // a hold within the tolerance writes its one reason, not the
            // notes first
            if current > 0 && cfg.tolerance > 0.0 {
                let change = (f64::from(want) - f64::from(current)).abs() / f64::from(current);
                if change <= cfg.tolerance && (cfg.min..=cfg.max).contains(&current) {
                    return hold(
                        HoldReason::Tolerance,
                        notes.text(format_args!(
                            "policy wants {want}, within tolerance {} of {current}",
                            cfg.tolerance
                        )),
                    );
                }
            }
            notes.push(format_args!("policy wants {want}"));
        }
        let (want, same) = match &cfg.behavior {
            None => self.steps(cfg, now, current, want, &mut notes),
            Some(b) => self.behave(cfg, b, now, current, want, &mut notes),
        };
        if want == current {
            return hold(same, notes.0);
        }
        if want < current && cfg.pause_scale_in {
            notes.push(format_args!("scale-in paused"));
            return hold(HoldReason::Paused, notes.0);
        }
        if want > current && cfg.pause_scale_out {
            notes.push(format_args!("scale-out paused"));
            return hold(HoldReason::Paused, notes.0);
        }
        // Cooldowns apply only to real moves, and never keep a target out of bounds.
        let in_bounds = (cfg.min..=cfg.max).contains(&current);
        if want > current && in_bounds {
            if let Some(left) = left(self.last_up, cfg.cooldown_up, now) {
                notes.push(format_args!("cooldown_up, {left} ms left"));
                return hold(HoldReason::CooldownUp, notes.0);
            }
        }
        if want < current && in_bounds {
            if let Some(left) = left(self.last_change, cfg.cooldown_down, now) {
                notes.push(format_args!("cooldown_down, {left} ms left"));
                return hold(HoldReason::CooldownDown, notes.0);
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
        if let Some(b) = &cfg.behavior {
            match direction {
                Direction::Up => behavior::record_event(
                    &mut self.up_events,
                    b.scale_up.longest_period(),
                    now,
                    want - current,
                ),
                _ => behavior::record_event(
                    &mut self.down_events,
                    b.scale_down.longest_period(),
                    now,
                    current - want,
                ),
            }
        }
        Decision {
            current,
            desired: want,
            direction,
            held: None,
            dry_run: cfg.dry_run,
            reason: notes.0,
        }
    }
}

impl Guard {
    /// The step rules: scale-down stabilization, bounds, `max_step_*`.
    /// Returns the count and why it would equal `current`.
    fn steps(
        &mut self,
        cfg: &GuardConfig,
        now: Millis,
        current: u32,
        mut want: u32,
        notes: &mut Notes,
    ) -> (u32, HoldReason) {
        // Stabilization: scale down only to the highest recommendation of the window.
        let highest = behavior::window_push(
            &mut self.recent,
            behavior::Keep::Highest,
            cfg.stabilization_down,
            now,
            want,
        );
        let mut stabilized = false;
        if want < current && !cfg.stabilization_down.is_zero() {
            // Never above the current count: stabilization only slows a scale-down.
            let highest = highest.min(current);
            if highest > want {
                notes.push(format_args!(
                    "stabilized to {highest}, the highest of the last {}",
                    humantime::format_duration(cfg.stabilization_down)
                ));
                want = highest;
                stabilized = true;
            }
        }
        let clamped = want.clamp(cfg.min, cfg.max);
        if clamped != want {
            notes.push(format_args!("clamped to [{}, {}]", cfg.min, cfg.max));
            want = clamped;
        }
        if want > current && cfg.max_step_up > 0 && want - current > cfg.max_step_up {
            want = current + cfg.max_step_up;
            notes.push(format_args!("max_step_up {}", cfg.max_step_up));
        }
        if want < current && cfg.max_step_down > 0 && current - want > cfg.max_step_down {
            want = current - cfg.max_step_down;
            notes.push(format_args!("max_step_down {}", cfg.max_step_down));
        }
        let same = if stabilized {
            HoldReason::Stabilization
        } else {
            HoldReason::AtBound
        };
        (want, same)
    }

    /// The HPA's behavior: out of bounds straight to the bound (as the
    /// HPA does before any behavior), else the stabilization windows,
    /// then the rate policies and the bounds.
    fn behave(
        &mut self,
        cfg: &GuardConfig,
        b: &behavior::Behavior,
        now: Millis,
        current: u32,
        want: u32,
        notes: &mut Notes,
    ) -> (u32, HoldReason) {
        if current > cfg.max || current < cfg.min {
            let to = current.clamp(cfg.min, cfg.max);
            notes.push(format_args!(
                "{current} is outside [{}, {}]: to {to}",
                cfg.min, cfg.max
            ));
            return (to, HoldReason::AtBound);
        }
        let stabilized =
            behavior::stabilize(&mut self.recent_up, &mut self.recent, b, now, current, want);
        if stabilized != want {
            let (dir, window) = if want > current {
                ("scale-up", b.scale_up.stabilization)
            } else {
                ("scale-down", b.scale_down.stabilization)
            };
            notes.push(format_args!(
                "stabilized to {stabilized} by the {dir} window of {}",
                humantime::format_duration(window)
            ));
        }
        let (limited, why) = behavior::limit_rate(
            b,
            &self.up_events,
            &self.down_events,
            cfg.min,
            cfg.max,
            current,
            stabilized,
            now,
        );
        use behavior::Limited;
        match why {
            Limited::DesiredWithinRange => {}
            Limited::TooManyReplicas | Limited::TooFewReplicas => {
                notes.push(format_args!("clamped to [{}, {}]", cfg.min, cfg.max));
            }
            Limited::ScaleUpLimit | Limited::ScaleDownLimit => {
                let (dir, rules) = if why == Limited::ScaleUpLimit {
                    ("scale_up", &b.scale_up)
                } else {
                    ("scale_down", &b.scale_down)
                };
                notes.push(format_args!(
                    "behavior.{dir} allows {limited} now ({})",
                    describe(rules)
                ));
            }
        }
        let same = match why {
            Limited::ScaleUpLimit | Limited::ScaleDownLimit => HoldReason::ScalePolicy,
            Limited::TooManyReplicas | Limited::TooFewReplicas => HoldReason::AtBound,
            Limited::DesiredWithinRange if stabilized == current && want != current => {
                HoldReason::Stabilization
            }
            Limited::DesiredWithinRange => HoldReason::AtBound,
        };
        (limited, same)
    }
}

/// A decision's notes, joined with "; " as they are written: one string
/// a decision, not a string a note and a vector of them (the guard runs
/// for every target every tick: issue 21).
#[derive(Default)]
struct Notes(String);

impl Notes {
    /// `text` alone as the reason, in the notes' buffer (what was noted
    /// before is dropped).
    fn text(&mut self, text: std::fmt::Arguments<'_>) -> String {
        use std::fmt::Write as _;
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        let _ = buf.write_fmt(text);
        buf
    }

    fn push(&mut self, note: std::fmt::Arguments<'_>) {
        use std::fmt::Write as _;
        if self.0.is_empty() {
            // room for the usual reason at once, not grown a few bytes at
            // a time
            self.0.reserve(64);
        } else {
            self.0.push_str("; ");
        }
        let _ = self.0.write_fmt(note);
    }
}

/// A direction's rules in a reason: "select max of 4 pods per 15s, 100% per 15s".
fn describe(r: &behavior::ScalingRules) -> String {
    use behavior::{PolicyKind, Select};
    if r.select == Select::Disabled {
        return "select disabled".into();
    }
    let policies: Vec<String> = r
        .policies
        .iter()
        .map(|p| {
            let per = humantime::format_duration(p.period);
            match p.kind {
                PolicyKind::Pods => format!("{} pods per {per}", p.value),
                PolicyKind::Percent => format!("{}% per {per}", p.value),
            }
        })
        .collect();
    let select = if r.select == Select::Min {
        "min"
    } else {
        "max"
    };
    format!("select {select} of {}", policies.join(", "))
}

/// The newest `MAX_RECENT` of a list (what a snapshot keeps).
fn last<T: Copy>(v: &[T]) -> Vec<T> {
    v[v.len().saturating_sub(MAX_RECENT)..].to_vec()
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

    /// A reason is its notes in the order the rules ran, joined with
    /// "; ", and a hold's own words after them.
    #[test]
    fn a_reason_is_its_notes_in_order() {
        let mut g = Guard::default();
        let c = GuardConfig {
            max_step_up: 3,
            ..cfg()
        };
        let d = g.decide(&c, 0, 5, &Replicas(50));
        assert_eq!(
            d.reason,
            "policy wants 50; clamped to [1, 20]; max_step_up 3"
        );
        let d = g.decide(&cfg(), 1, 7, &Replicas(7));
        assert_eq!(
            (d.reason.as_str(), d.held),
            ("policy wants 7", Some(HoldReason::AtBound))
        );
        let paused = GuardConfig {
            pause_scale_out: true,
            ..cfg()
        };
        let d = g.decide(&paused, 2, 7, &Replicas(9));
        assert_eq!(d.reason, "policy wants 9; scale-out paused");
        let d = g.decide(&cfg(), 3, 0, &Hold);
        assert_eq!(d.reason, "policy held; clamped to [1, 20]");
        let tolerant = GuardConfig {
            tolerance: 0.1,
            ..cfg()
        };
        let d = g.decide(&tolerant, 4, 10, &Replicas(11));
        assert_eq!(d.reason, "policy wants 11, within tolerance 0.1 of 10");
    }

    /// A reason written into the last one's buffer is the same, word for
    /// word, as one written afresh, whatever the buffer held, for every
    /// kind of decision; and a hold writes into the buffer it was handed.
    #[test]
    fn a_reused_buffer_gives_the_same_reasons() {
        let cooling = GuardConfig {
            cooldown_up: Duration::from_secs(10),
            ..cfg()
        };
        let paused = GuardConfig {
            paused: true,
            ..cfg()
        };
        let tolerant = GuardConfig {
            tolerance: 0.1,
            ..cfg()
        };
        let in_paused = GuardConfig {
            pause_scale_in: true,
            ..cfg()
        };
        let cases: Vec<(GuardConfig, u32, Recommendation)> = vec![
            (cfg(), 5, Replicas(50)),
            (cfg(), 7, Replicas(7)),
            (cfg(), 0, Hold),
            (cfg(), 5, Hold),
            (paused, 5, Replicas(9)),
            (tolerant, 10, Replicas(11)),
            (in_paused, 9, Replicas(4)),
            (cooling.clone(), 2, Replicas(4)),
            (cooling, 4, Replicas(8)),
            (cfg(), 3, Recommendation::Failed("boom".into())),
            (cfg(), 3, Recommendation::Stale("no sample".into())),
            (cfg(), 3, Recommendation::Inactive("idle".into())),
            (cfg(), 3, Recommendation::Idle("to zero".into())),
        ];
        let (mut fresh, mut reused) = (Guard::default(), Guard::default());
        let mut buf = String::with_capacity(256);
        buf.push_str("left over from the last decision");
        for (k, (c, current, rec)) in cases.iter().enumerate() {
            let now = k as Millis * 1000;
            let want = fresh.decide(c, now, *current, rec);
            let at = buf.as_ptr();
            let got = reused.decide_reusing(c, now, *current, rec, buf);
            assert_eq!(got, want, "case {k}");
            assert_eq!(
                got.reason.as_ptr(),
                at,
                "case {k}: written into the buffer handed in"
            );
            buf = got.reason;
        }
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

    fn behavior_cfg(b: behavior::Behavior) -> GuardConfig {
        GuardConfig {
            min: 1,
            max: 1000,
            behavior: Some(b),
            ..GuardConfig::default()
        }
    }

    fn pods_per(n: u32, secs: u64) -> behavior::ScalingRules {
        behavior::ScalingRules {
            stabilization: Duration::ZERO,
            select: behavior::Select::Max,
            policies: vec![behavior::ScalingPolicy {
                kind: behavior::PolicyKind::Pods,
                value: n,
                period: Duration::from_secs(secs),
            }],
        }
    }

    /// The test: "4 pods per 15 s" holds however often the target
    /// is evaluated (here 100 times a second for ten virtual minutes),
    /// where `max_step_up = 4` limits each decision and lets the target
    /// grow by hundreds a second.
    #[test]
    fn a_pods_policy_limits_per_period_whatever_the_event_rate() {
        let c = behavior_cfg(behavior::Behavior {
            scale_up: pods_per(4, 15),
            ..behavior::Behavior::default()
        });
        let mut g = Guard::default();
        let mut current = 2;
        let mut moves: Vec<(Millis, u32)> = Vec::new();
        for i in 0..60_000 {
            let now = i * 10;
            let d = g.decide(&c, now, current, &Replicas(1000));
            if d.held.is_none() {
                moves.push((now, d.desired - current));
                current = d.desired;
            } else {
                assert_eq!(d.held, Some(HoldReason::ScalePolicy), "{}", d.reason);
            }
        }
        // every 15 s window holds at most 4 new replicas
        for &(t, _) in &moves {
            let added: u32 = moves
                .iter()
                .filter(|(u, _)| *u >= t && *u < t + 15_000)
                .map(|(_, n)| n)
                .sum();
            assert!(added <= 4, "{added} added in the 15 s from {t} ms");
        }
        // ...and the target does grow at that rate: 4 per 15 s for 600 s
        assert_eq!(current, 2 + 4 * 40, "{moves:?}");
        // the step limit alone, for comparison: hundreds a second
        let steps = GuardConfig {
            max_step_up: 4,
            stabilization_down: Duration::ZERO,
            ..behavior_cfg(behavior::Behavior::default())
        };
        let steps = GuardConfig {
            behavior: None,
            ..steps
        };
        let mut g = Guard::default();
        let mut n = 2;
        for i in 0..100 {
            n = g.decide(&steps, i * 10, n, &Replicas(1000)).desired;
        }
        assert_eq!(n, 402, "the step limit is per decision");
    }

    /// A scale-down with the HPA's defaults waits out the 300 s window,
    /// then goes at most 100% per 15 s; a scale-up is at most the larger of
    /// 4 pods and 100% per 15 s; "disabled" never moves that way; and the
    /// reason names the rule.
    #[test]
    fn the_hpa_defaults_and_disabled() {
        let c = behavior_cfg(behavior::Behavior::default());
        let mut g = Guard::default();
        let d = g.decide(&c, 0, 3, &Replicas(100));
        assert_eq!(d.desired, 7, "max(3 + 4, 3 * 2): {}", d.reason);
        assert!(
            d.reason.contains("behavior.scale_up allows 7"),
            "{}",
            d.reason
        );
        let d = g.decide(&c, 15_001, 7, &Replicas(100));
        assert_eq!(d.desired, 14);
        // the load goes: held by the scale-down window for 300 s
        let d = g.decide(&c, 20_000, 14, &Replicas(2));
        assert_eq!((d.desired, d.held), (14, Some(HoldReason::Stabilization)));
        assert!(d.reason.contains("scale-down window of 5m"), "{}", d.reason);
        let d = g.decide(&c, 15_001 + 300_000, 14, &Replicas(2));
        assert_eq!(d.desired, 2, "{}", d.reason);
        // disabled scale-down
        let mut off = behavior::Behavior::default();
        off.scale_down.select = behavior::Select::Disabled;
        off.scale_down.stabilization = Duration::ZERO;
        let c = behavior_cfg(off);
        let mut g = Guard::default();
        let d = g.decide(&c, 0, 10, &Replicas(1));
        assert_eq!((d.desired, d.held), (10, Some(HoldReason::ScalePolicy)));
        assert!(d.reason.contains("select disabled"), "{}", d.reason);
        assert_eq!(g.decide(&c, 1, 10, &Replicas(12)).desired, 12);
    }

    /// The behavior's windows and events go through a snapshot: a
    /// restored guard limits as the old one would have.
    #[test]
    fn behavior_state_survives_export_and_import() {
        let c = behavior_cfg(behavior::Behavior {
            scale_up: behavior::ScalingRules {
                stabilization: Duration::from_secs(60),
                ..pods_per(4, 60)
            },
            ..behavior::Behavior::default()
        });
        let mut g = Guard::default();
        // recommendations 9 then 6 inside the scale-up window
        assert_eq!(g.decide(&c, 0, 2, &Replicas(9)).desired, 6);
        let json = serde_json::to_string(&g.export()).unwrap();
        let mut h = Guard::import(&serde_json::from_str(&json).unwrap());
        let live = g.decide(&c, 30_000, 6, &Replicas(20));
        let restored = h.decide(&c, 30_000, 6, &Replicas(20));
        for (d, who) in [(live, "live"), (restored, "restored")] {
            // 4 pods per 60 s were used at 0: no more until 60 s
            assert_eq!(
                (d.desired, d.held),
                (6, Some(HoldReason::ScalePolicy)),
                "{who}: {}",
                d.reason
            );
        }
        let d = h.decide(&c, 60_001, 6, &Replicas(20));
        assert_eq!(d.desired, 10, "{}", d.reason);
    }
}
