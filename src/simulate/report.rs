//! The simulation report: JSON (DESIGN.md's fields, plus a few) and a
//! plain-text table.

use serde::Serialize;

/// Scores of one policy; shares are fractions of the scored steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    pub policy: String,
    pub under_provisioned_share: f64,
    pub under_provisioned_depth: f64,
    pub over_provisioned_share: f64,
    pub slo_violation_share: f64,
    pub replica_hours: f64,
    pub ideal_replica_hours: f64,
    pub cost_ratio: f64,
    pub actions_per_hour: f64,
    pub reversals_per_hour: f64,
    /// Forecast accuracy of the load at the start-up lead time; null for
    /// policies that do not forecast.
    pub mase: Option<f64>,
    pub policy_errors: u64,
}

/// Any report as indented JSON; NaN (a cost ratio with no load at all)
/// is not JSON: null instead (through `Value`).
pub fn pretty_json(report: &impl Serialize) -> String {
    let v = serde_json::to_value(report).unwrap_or(serde_json::Value::Null);
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub trace: String,
    pub step_seconds: f64,
    pub capacity: f64,
    pub startup_seconds: f64,
    pub warmup_seconds: f64,
    pub scored_steps: u64,
    /// Gaps in the trace, filled by linear interpolation.
    pub gaps_filled: u64,
    pub policies: Vec<PolicyReport>,
}

impl Report {
    pub fn to_json(&self) -> String {
        pretty_json(self)
    }

    /// A fixed-width table, one row per policy.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<24} {:>7} {:>7} {:>7} {:>9} {:>6} {:>8} {:>8} {:>6}\n",
            "policy", "under%", "depth%", "slo%", "rep-h", "cost", "acts/h", "revs/h", "mase"
        );
        for p in &self.policies {
            let name = std::path::Path::new(&p.policy)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.policy.clone());
            out.push_str(&format!(
                "{:<24} {:>7.2} {:>7.2} {:>7.2} {:>9.1} {:>6.3} {:>8.2} {:>8.2} {:>6}\n",
                name,
                100.0 * p.under_provisioned_share,
                100.0 * p.under_provisioned_depth,
                100.0 * p.slo_violation_share,
                p.replica_hours,
                p.cost_ratio,
                p.actions_per_hour,
                p.reversals_per_hour,
                p.mase.map_or("-".into(), |m| format!("{m:.2}")),
            ));
        }
        out
    }
}
