//! `[targets.behavior]`: the HPA's behavior block, in TOML.
//!
//! ```toml
//! [targets.behavior.scale_up]
//! stabilization = "0s"
//! select = "max"                     # "max" | "min" | "disabled"
//! policies = [{ type = "pods", value = 4, period = "15s" },
//!             { type = "percent", value = 100, period = "15s" }]
//! [targets.behavior.scale_down]
//! stabilization = "300s"
//! ```
//!
//! A key left out takes the HPA's default for its direction (a rules
//! table without `policies` keeps the default policies), as Kubernetes'
//! `GenerateHPAScaleUpRules` / `GenerateHPAScaleDownRules` do. The limits
//! are the HPA API's validation: a value above 0, a period of 1 s to
//! 30 min, a stabilization of at most an hour, at least one policy unless
//! the direction is disabled.

use std::time::Duration;

use serde::Deserialize;

use super::behavior::{Behavior, PolicyKind, ScalingPolicy, ScalingRules, Select};
use crate::settings::{de_opt_duration, parse_duration, problem, Problem};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BehaviorConfig {
    #[serde(default)]
    pub scale_up: Option<RulesConfig>,
    #[serde(default)]
    pub scale_down: Option<RulesConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub stabilization: Option<Duration>,
    #[serde(default)]
    pub select: Option<String>,
    #[serde(default)]
    pub policies: Option<Vec<PolicyConfig>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: i64,
    pub period: String,
}

const MAX_PERIOD: Duration = Duration::from_secs(1800);
const MAX_STABILIZATION: Duration = Duration::from_secs(3600);

impl BehaviorConfig {
    /// The behavior, defaults filled in; what does not pass [`check`]
    /// (`Self::check`) is left out here.
    pub fn resolve(&self) -> Behavior {
        Behavior {
            scale_up: resolve(self.scale_up.as_ref(), ScalingRules::hpa_scale_up()),
            scale_down: resolve(self.scale_down.as_ref(), ScalingRules::hpa_scale_down()),
        }
    }

    /// Problems under `key` ("targets[0].behavior").
    pub fn check(&self, key: &str, out: &mut Vec<Problem>) {
        for (dir, r) in [
            ("scale_up", &self.scale_up),
            ("scale_down", &self.scale_down),
        ] {
            let Some(r) = r else { continue };
            let k = |s: &str| format!("{key}.{dir}.{s}");
            if let Some(s) = r.stabilization.filter(|s| *s > MAX_STABILIZATION) {
                out.push(problem(
                    k("stabilization"),
                    format!(
                        "{} is longer than an hour (the HPA's limit)",
                        humantime::format_duration(s)
                    ),
                ));
            }
            let select = match r.select.as_deref() {
                None => Some(Select::Max),
                Some(s) => {
                    let parsed = parse_select(s);
                    if parsed.is_none() {
                        out.push(problem(
                            k("select"),
                            format!("{s:?} is not \"max\", \"min\" or \"disabled\""),
                        ));
                    }
                    parsed
                }
            };
            if let Some(ps) = &r.policies {
                if ps.is_empty() && select != Some(Select::Disabled) {
                    out.push(problem(
                        k("policies"),
                        "give at least one policy, or select = \"disabled\"",
                    ));
                }
                for (i, p) in ps.iter().enumerate() {
                    let pk = |s: &str| format!("{key}.{dir}.policies[{i}].{s}");
                    if parse_kind(&p.kind).is_none() {
                        out.push(problem(
                            pk("type"),
                            format!("{:?} is not \"pods\" or \"percent\"", p.kind),
                        ));
                    }
                    if p.value <= 0 || p.value > i64::from(u32::MAX) {
                        out.push(problem(pk("value"), format!("{} is not above 0", p.value)));
                    }
                    match parse_duration(&p.period) {
                        Err(e) => out.push(problem(pk("period"), e.to_string())),
                        Ok(d) if d < Duration::from_secs(1) || d > MAX_PERIOD => out.push(problem(
                            pk("period"),
                            format!(
                                "{} is outside 1s to 30m (the HPA's limits)",
                                humantime::format_duration(d)
                            ),
                        )),
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}

fn parse_select(s: &str) -> Option<Select> {
    match s {
        "max" | "Max" => Some(Select::Max),
        "min" | "Min" => Some(Select::Min),
        "disabled" | "Disabled" => Some(Select::Disabled),
        _ => None,
    }
}

fn parse_kind(s: &str) -> Option<PolicyKind> {
    match s {
        "pods" | "Pods" => Some(PolicyKind::Pods),
        "percent" | "Percent" => Some(PolicyKind::Percent),
        _ => None,
    }
}

fn resolve(r: Option<&RulesConfig>, default: ScalingRules) -> ScalingRules {
    let Some(r) = r else { return default };
    let policies: Option<Vec<ScalingPolicy>> = r.policies.as_ref().map(|ps| {
        ps.iter()
            .filter_map(|p| {
                Some(ScalingPolicy {
                    kind: parse_kind(&p.kind)?,
                    value: u32::try_from(p.value).ok().filter(|v| *v > 0)?,
                    period: parse_duration(&p.period).ok()?,
                })
            })
            .collect()
    });
    ScalingRules {
        stabilization: r.stabilization.unwrap_or(default.stabilization),
        select: r
            .select
            .as_deref()
            .and_then(parse_select)
            .unwrap_or(default.select),
        policies: policies.unwrap_or(default.policies),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> BehaviorConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn a_block_takes_the_hpas_defaults_for_what_it_leaves_out() {
        let b = parse("[scale_down]\nstabilization = \"60s\"\n").resolve();
        assert_eq!(b.scale_up, ScalingRules::hpa_scale_up());
        assert_eq!(b.scale_down.stabilization, Duration::from_secs(60));
        assert_eq!(
            b.scale_down.policies,
            ScalingRules::hpa_scale_down().policies
        );
        let b = parse(
            "[scale_up]\nselect = \"min\"\npolicies = [{ type = \"pods\", value = 2, period = \"1m\" }]\n",
        )
        .resolve();
        assert_eq!(b.scale_up.select, Select::Min);
        assert_eq!(b.scale_up.policies.len(), 1);
        assert_eq!(b.scale_down, ScalingRules::hpa_scale_down());
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let b = parse(
            r#"
[scale_up]
select = "most"
stabilization = "2h"
policies = [{ type = "replicas", value = 0, period = "45m" }, { type = "pods", value = 2, period = "soon" }]
[scale_down]
policies = []
"#,
        );
        let mut out = Vec::new();
        b.check("targets[0].behavior", &mut out);
        let text: Vec<String> = out
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect();
        let has = |k: &str, m: &str| {
            assert!(
                text.iter().any(|t| t.starts_with(k) && t.contains(m)),
                "no {k} / {m} in {text:#?}"
            )
        };
        has("targets[0].behavior.scale_up.select", "\"most\"");
        has("targets[0].behavior.scale_up.stabilization", "2h");
        has(
            "targets[0].behavior.scale_up.policies[0].type",
            "\"replicas\"",
        );
        has("targets[0].behavior.scale_up.policies[0].value", "0");
        has("targets[0].behavior.scale_up.policies[0].period", "45m");
        has(
            "targets[0].behavior.scale_up.policies[1].period",
            "\"soon\"",
        );
        has("targets[0].behavior.scale_down.policies", "at least one");
        assert_eq!(out.len(), 7, "{text:#?}");
        // disabled needs no policy
        let mut out = Vec::new();
        parse("[scale_down]\nselect = \"disabled\"\npolicies = []\n").check("b", &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
