//! Run-time control of a target: pause, pause scale-in or scale-out, pin,
//! dry run, resume, each with who, why and until when. Control messages
//! arrive with the signals (docs/messages.md, "Control"); the state is
//! kept in the target's snapshot.

use crate::clock::Millis;
use crate::event::{Control, ControlAction, Reason, Rejection};
use crate::state::{ControlRecord, ControlState};

/// What a control did to a target's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Now in force.
    Applied,
    /// Not newer than the last control applied (a replay): nothing done.
    Stale,
}

/// Applies `c` to `state` for a target bounded by `min..=max`. A pin
/// outside the bounds is refused, not clamped: an operator who pins 80 on a
/// target capped at 50 has a mistake to see, not a silent 50.
pub fn apply(
    state: &mut ControlState,
    c: &Control,
    min: u32,
    max: u32,
) -> Result<Applied, Rejection> {
    if c.ts_ms <= state.applied_ms {
        return Ok(Applied::Stale);
    }
    if c.action == ControlAction::Pin {
        let n = c.replicas.unwrap_or(0);
        if n < min || n > max {
            return Err(Rejection {
                reason: Reason::InvalidControl,
                detail: format!(
                    "pin to {n} replicas is outside [min_replicas {min}, max_replicas {max}] of {:?}: refused, not clamped",
                    c.target
                ),
                kind: "control",
            });
        }
    }
    let record = ControlRecord {
        action: c.action.code().to_owned(),
        replicas: c.replicas.filter(|_| c.action == ControlAction::Pin),
        until_ms: c.until_ms,
        by: c.by.clone(),
        reason: c.reason.clone(),
        at_ms: c.ts_ms,
        done: false,
    };
    match c.action {
        ControlAction::Resume => {
            state.mode = None;
            state.dry_run = None;
        }
        ControlAction::DryRunOn | ControlAction::DryRunOff => state.dry_run = Some(record),
        _ => state.mode = Some(record),
    }
    state.applied_ms = c.ts_ms;
    Ok(Applied::Applied)
}

/// Lifts the controls whose `until` has passed at `now_ms`; returns them.
pub fn expire(state: &mut ControlState, now_ms: Millis) -> Vec<ControlRecord> {
    let mut out = Vec::new();
    for slot in [&mut state.mode, &mut state.dry_run] {
        if slot
            .as_ref()
            .and_then(|r| r.until_ms)
            .is_some_and(|u| u <= now_ms)
        {
            out.extend(slot.take());
        }
    }
    out
}

/// The action codes in force.
pub fn actions(state: &ControlState) -> Vec<&str> {
    [&state.mode, &state.dry_run]
        .into_iter()
        .flatten()
        .map(|r| r.action.as_str())
        .collect()
}

/// The action of a record in force.
pub fn action(r: &ControlRecord) -> Option<ControlAction> {
    ControlAction::parse(&r.action)
}

/// "pause by alice until 2026-12-02T10:30:00.000Z (incident 4411)".
pub fn describe(r: &ControlRecord) -> String {
    let mut s = match (action(r), r.replicas) {
        (Some(ControlAction::Pin), Some(n)) => format!("pinned to {n}"),
        _ => r.action.replace('_', " "),
    };
    if let Some(by) = &r.by {
        s.push_str(&format!(" by {by}"));
    }
    if let Some(u) = r.until_ms {
        s.push_str(&format!(" until {}", crate::clock::rfc3339(u)));
    }
    if let Some(why) = &r.reason {
        s.push_str(&format!(" ({why})"));
    }
    s
}

/// Every control in force, described, for a command's or decision's reason.
pub fn summary(state: &ControlState) -> Option<String> {
    let parts: Vec<String> = [&state.mode, &state.dry_run]
        .into_iter()
        .flatten()
        .map(describe)
        .collect();
    (!parts.is_empty()).then(|| format!("control: {}", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(action: ControlAction, ts: Millis) -> Control {
        Control {
            target: "web".into(),
            action,
            replicas: (action == ControlAction::Pin).then_some(12),
            until_ms: None,
            by: Some("alice".into()),
            reason: Some("incident 4411".into()),
            ts_ms: ts,
        }
    }

    #[test]
    fn controls_apply_in_time_order_and_expire() {
        let mut s = ControlState::default();
        assert_eq!(
            apply(&mut s, &control(ControlAction::Pause, 10), 1, 50),
            Ok(Applied::Applied)
        );
        assert_eq!(
            summary(&s).unwrap(),
            "control: pause by alice (incident 4411)"
        );
        // a replayed older control changes nothing
        assert_eq!(
            apply(&mut s, &control(ControlAction::Resume, 5), 1, 50),
            Ok(Applied::Stale)
        );
        assert!(s.mode.is_some());
        apply(&mut s, &control(ControlAction::DryRunOn, 11), 1, 50).unwrap();
        assert!(s.mode.is_some() && s.dry_run.is_some(), "two dimensions");
        apply(&mut s, &control(ControlAction::Resume, 12), 1, 50).unwrap();
        assert_eq!((s.mode.clone(), s.dry_run.clone()), (None, None));
        // a pin outside the bounds is refused
        let mut pin = control(ControlAction::Pin, 20);
        pin.replicas = Some(80);
        let e = apply(&mut s, &pin, 1, 50).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidControl);
        assert!(
            e.detail
                .contains("outside [min_replicas 1, max_replicas 50]"),
            "{}",
            e.detail
        );
        // until: lifted when it passes
        let mut until = control(ControlAction::PauseScaleIn, 30);
        until.until_ms = Some(1_000);
        apply(&mut s, &until, 1, 50).unwrap();
        assert!(expire(&mut s, 999).is_empty());
        let gone = expire(&mut s, 1_000);
        assert_eq!(gone.len(), 1);
        assert!(s.mode.is_none());
    }
}
