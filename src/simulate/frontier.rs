//! Frontier scoring (`simulate --sweep KEY=V1,V2,...`): each policy runs
//! at every value of one parameter, and is judged by its frontier of cost
//! (replica-hours) against safety (under-provisioned share), not at one
//! setting. Against a baseline policy at its default setting it reports
//! the under-provisioned share the policy reaches at the baseline's cost,
//! and the cost at which it is as safe as the baseline, both read off the
//! policy's frontier between its Pareto points, linearly in cost and in
//! the share's logarithm ([`share_between`]), and flat from its safest
//! Pareto point to its costliest run ([`Frontier::envelope`]); with
//! `refine`, after runs near the baseline's cost ([`next_value`]).

use std::path::Path;

use serde::Serialize;

use super::{run, Options, PolicyReport, SimulateError, Trace};

/// One run of one policy: the value swept (None: its default setting).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub value: Option<serde_json::Value>,
    pub replica_hours: f64,
    pub under_provisioned_share: f64,
    pub under_provisioned_depth: f64,
    pub slo_violation_share: f64,
    pub cost_ratio: f64,
}

impl Point {
    fn of(value: Option<serde_json::Value>, r: &PolicyReport) -> Self {
        Self {
            value,
            replica_hours: r.replica_hours,
            under_provisioned_share: r.under_provisioned_share,
            under_provisioned_depth: r.under_provisioned_depth,
            slo_violation_share: r.slo_violation_share,
            cost_ratio: r.cost_ratio,
        }
    }
}

/// A policy's points, cheapest first, and which of them are Pareto
/// points (no other point is both cheaper and safer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frontier {
    pub policy: String,
    pub points: Vec<Point>,
    pub pareto: Vec<usize>,
}

impl Frontier {
    pub fn new(policy: String, mut points: Vec<Point>) -> Self {
        points.sort_by(|a, b| {
            a.replica_hours.total_cmp(&b.replica_hours).then(
                a.under_provisioned_share
                    .total_cmp(&b.under_provisioned_share),
            )
        });
        let mut pareto = Vec::new();
        let mut best = f64::INFINITY;
        for (i, p) in points.iter().enumerate() {
            if p.under_provisioned_share < best {
                best = p.under_provisioned_share;
                pareto.push(i);
            }
        }
        Self {
            policy,
            points,
            pareto,
        }
    }

    /// (cost, under-provisioned share) of the Pareto points, cost rising
    /// and share falling.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        self.pareto
            .iter()
            .map(|&i| {
                let p = &self.points[i];
                (p.replica_hours, p.under_provisioned_share)
            })
            .collect()
    }

    /// What the policy can buy with each cost run: the Pareto points
    /// ([`Self::curve`]), then flat to the costliest point run. A run that
    /// cost more than the safest Pareto point and was no safer (a policy
    /// never short from some setting on, or short on the same minutes)
    /// still says that at its cost the policy is as safe as that point:
    /// the cheaper setting is there to choose. Beyond the costliest run,
    /// nothing is known.
    pub fn envelope(&self) -> Vec<(f64, f64)> {
        let mut curve = self.curve();
        if let (Some(&(cost, share)), Some(top)) = (curve.last(), self.points.last()) {
            if top.replica_hours > cost {
                curve.push((top.replica_hours, share));
            }
        }
        curve
    }
}

/// The under-provisioned share on `curve` at `cost`, between the two
/// points around it ([`share_between`]); None outside the curve's cost
/// range (a frontier says nothing about costs nobody ran).
pub fn share_at_cost(curve: &[(f64, f64)], cost: f64) -> Option<f64> {
    let (first, last) = (curve.first()?, curve.last()?);
    if cost < first.0 || cost > last.0 {
        return None;
    }
    curve
        .windows(2)
        .find(|w| cost >= w[0].0 && cost <= w[1].0)
        .map(|w| share_between(w[0], w[1], cost))
        .or(Some(first.1))
}

/// The cost on `curve` at which the share is `share`; None when the curve
/// never gets that safe, or is safer even at its cheapest point (then the
/// needed cost is below what was run).
pub fn cost_at_share(curve: &[(f64, f64)], share: f64) -> Option<f64> {
    let (first, last) = (curve.first()?, curve.last()?);
    if share > first.1 || share < last.1 {
        return None;
    }
    if curve.len() == 1 || share == first.1 {
        return Some(first.0);
    }
    curve
        .windows(2)
        .find(|w| share <= w[0].1 && share >= w[1].1)
        .map(|w| cost_between(w[0], w[1], share))
}

/// The under-provisioned share at cost `x` between Pareto points `a` and
/// `b` (cost, share): linear in the share's logarithm, or in the share
/// when either is zero. The share falls about exponentially as capacity
/// is added (the load's tail above it), so the frontier is convex and a
/// straight chord between two settings far apart lies far above it: on a
/// generated seasonal trace, `predictive.lua` between target utilization
/// 1.0 (758 replica-hours, 0.07% short) and 1.2 (650, 2.97%) read 0.98%
/// at 724 replica-hours on the chord, where runs at 1.02 and 1.05 show
/// 0.16%, and the logarithm's curve 0.23% (docs/PREDICTIVE.md).
fn share_between(a: (f64, f64), b: (f64, f64), x: f64) -> f64 {
    if b.0 == a.0 {
        return a.1.min(b.1);
    }
    // at a point that was run: its own share, exactly
    let t = (x - a.0) / (b.0 - a.0);
    if t <= 0.0 {
        return a.1;
    }
    if t >= 1.0 {
        return b.1;
    }
    if a.1 > 0.0 && b.1 > 0.0 {
        (a.1.ln() + t * (b.1.ln() - a.1.ln())).exp()
    } else {
        a.1 + (b.1 - a.1) * t
    }
}

/// The cost at which the share is `share` between Pareto points `a` and
/// `b`: the inverse of [`share_between`].
fn cost_between(a: (f64, f64), b: (f64, f64), share: f64) -> f64 {
    if a.1 == b.1 {
        return a.0;
    }
    let t = if a.1 > 0.0 && b.1 > 0.0 && share > 0.0 {
        (a.1.ln() - share.ln()) / (a.1.ln() - b.1.ln())
    } else {
        (a.1 - share) / (a.1 - b.1)
    };
    a.0 + (b.0 - a.0) * t
}

/// A policy against the baseline at its default setting, read off its
/// [`Frontier::envelope`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub policy: String,
    /// Its under-provisioned share at the baseline's cost.
    pub share_at_baseline_cost: Option<f64>,
    /// 1 - that share / the baseline's share (0.5: half the time short).
    pub share_reduction: Option<f64>,
    /// The replica-hours it needs to be as safe as the baseline.
    pub cost_to_match: Option<f64>,
    /// That cost over the baseline's.
    pub cost_ratio_to_match: Option<f64>,
    /// Safer than the baseline even at its cheapest point (the cost to
    /// match lies below what was run).
    pub safer_at_its_cheapest: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepReport {
    pub trace: String,
    pub key: String,
    pub values: Vec<serde_json::Value>,
    pub baseline: String,
    pub baseline_default: Point,
    pub frontiers: Vec<Frontier>,
    pub comparisons: Vec<Comparison>,
}

/// Compares `f` with the baseline's default point `base`.
pub fn compare(f: &Frontier, base: &Point) -> Comparison {
    let curve = f.envelope();
    let share = share_at_cost(&curve, base.replica_hours);
    let cost = cost_at_share(&curve, base.under_provisioned_share);
    Comparison {
        policy: f.policy.clone(),
        share_at_baseline_cost: share,
        share_reduction: share
            .filter(|_| base.under_provisioned_share > 0.0)
            .map(|s| 1.0 - s / base.under_provisioned_share),
        cost_to_match: cost,
        cost_ratio_to_match: cost
            .filter(|_| base.replica_hours > 0.0)
            .map(|c| c / base.replica_hours),
        safer_at_its_cheapest: curve
            .first()
            .is_some_and(|p| p.1 < base.under_provisioned_share),
    }
}

/// Runs every policy of `opts` at every value of `key`, and `baseline` at
/// its default setting; the runs go on every core. Then, `opts.refine`
/// rounds at most, each policy again at the value [`next_value`] picks,
/// so that its frontier is measured near the baseline's cost rather than
/// read off a chord between two settings far apart.
pub fn sweep(
    opts: &Options,
    trace: &Trace,
    key: &str,
    values: &[serde_json::Value],
    baseline: &Path,
) -> Result<SweepReport, SimulateError> {
    let mut runs: Vec<Options> = values
        .iter()
        .map(|v| with_value(opts, key, v.clone()))
        .collect();
    let mut default = opts.clone();
    default.policies = vec![baseline.to_path_buf()];
    default.params.remove(key);
    runs.push(default);
    let mut reports = run_all(&runs, trace)?;
    let default_report = reports.pop().expect("the default run");
    let base_default = Point::of(None, &default_report.policies[0]);
    let names: Vec<String> = opts
        .policies
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut points: Vec<Vec<Point>> = (0..names.len())
        .map(|k| {
            values
                .iter()
                .zip(&reports)
                .map(|(v, r)| Point::of(Some(v.clone()), &r.policies[k]))
                .collect()
        })
        .collect();
    for _ in 0..opts.refine {
        // one run of each policy still to refine, all of them at once
        let more: Vec<(usize, f64)> = points
            .iter()
            .enumerate()
            .filter_map(|(k, ps)| {
                let costs: Option<Vec<(f64, f64)>> = ps
                    .iter()
                    .map(|p| Some((p.value.as_ref()?.as_f64()?, p.replica_hours)))
                    .collect();
                next_value(&costs?, base_default.replica_hours).map(|v| (k, v))
            })
            .collect();
        if more.is_empty() {
            break;
        }
        let runs: Vec<Options> = more
            .iter()
            .map(|&(k, v)| {
                let mut o = with_value(opts, key, v.into());
                o.policies = vec![opts.policies[k].clone()];
                o
            })
            .collect();
        for (&(k, v), r) in more.iter().zip(run_all(&runs, trace)?) {
            points[k].push(Point::of(Some(v.into()), &r.policies[0]));
        }
    }
    let frontiers: Vec<Frontier> = names
        .iter()
        .zip(points)
        .map(|(name, points)| Frontier::new(name.clone(), points))
        .collect();
    let comparisons = frontiers
        .iter()
        .map(|f| compare(f, &base_default))
        .collect();
    Ok(SweepReport {
        trace: default_report.trace.clone(),
        key: key.to_owned(),
        values: values.to_vec(),
        baseline: baseline.display().to_string(),
        baseline_default: base_default,
        frontiers,
        comparisons,
    })
}

/// `opts` with policy parameter `key` set to `v`.
fn with_value(opts: &Options, key: &str, v: serde_json::Value) -> Options {
    let mut o = opts.clone();
    o.params.insert(key.to_owned(), v);
    o
}

/// Runs each of `runs` on `trace`, on every core; the reports in the
/// same order.
fn run_all(runs: &[Options], trace: &Trace) -> Result<Vec<super::Report>, SimulateError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Result<super::Report, SimulateError>>>> =
        std::sync::Mutex::new((0..runs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.min(runs.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(o) = runs.get(i) else { break };
                let r = run(o, trace, |_, _| {}).map(|(r, _)| r);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut reports = Vec::with_capacity(runs.len());
    for r in results {
        reports
            .push(r.ok_or_else(|| SimulateError::Options("a sweep run did not finish".into()))??);
    }
    Ok(reports)
}

/// The swept value to run a policy at next so that its frontier is
/// measured at `cost` (the baseline's replica-hours), given the (value,
/// replica-hours) of the runs so far; None when a run is within 0.25% of
/// that cost, when two runs of neighbouring values bracket it within 1%,
/// or when no two do. It bisects, in the value, the pair of neighbouring
/// values whose costs bracket `cost` most tightly. A policy's cost need
/// not fall as its value rises (a gate that opens at one setting and not
/// at the next), so any neighbours that bracket it will do, not only
/// Pareto points.
pub fn next_value(runs: &[(f64, f64)], cost: f64) -> Option<f64> {
    if !(cost.is_finite() && cost > 0.0) {
        return None;
    }
    if runs.iter().any(|r| (r.1 - cost).abs() <= 0.0025 * cost) {
        return None;
    }
    let mut runs: Vec<(f64, f64)> = runs
        .iter()
        .copied()
        .filter(|r| r.0.is_finite() && r.1.is_finite())
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (a, b) = runs
        .windows(2)
        .filter(|w| (w[0].1 - cost) * (w[1].1 - cost) < 0.0)
        .map(|w| (w[0], w[1]))
        .min_by(|x, y| (x.0 .1 - x.1 .1).abs().total_cmp(&(y.0 .1 - y.1 .1).abs()))?;
    if (a.1 - b.1).abs() <= 0.01 * cost {
        return None;
    }
    // a value as short as it prints: 0.825, not 0.8250000000000001
    let mid = ((a.0 + b.0) / 2.0 * 1e6).round() / 1e6;
    (mid > a.0 && mid < b.0).then_some(mid)
}

impl SweepReport {
    pub fn to_json(&self) -> String {
        super::report::pretty_json(self)
    }

    /// Each policy's points, then the comparisons with the baseline.
    pub fn table(&self) -> String {
        let short = |p: &str| {
            std::path::Path::new(p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.to_owned())
        };
        let pct = |x: Option<f64>| x.map_or("-".into(), |x| format!("{:.2}", 100.0 * x));
        let mut out = format!(
            "{:<24} {:>10} {:>9} {:>7} {:>7} {:>7}  {}\n",
            "policy", self.key, "rep-h", "under%", "depth%", "slo%", "pareto"
        );
        for f in &self.frontiers {
            for (i, p) in f.points.iter().enumerate() {
                out.push_str(&format!(
                    "{:<24} {:>10} {:>9.1} {:>7.2} {:>7.2} {:>7.2}  {}\n",
                    short(&f.policy),
                    p.value.as_ref().map_or("default".into(), |v| v.to_string()),
                    p.replica_hours,
                    100.0 * p.under_provisioned_share,
                    100.0 * p.under_provisioned_depth,
                    100.0 * p.slo_violation_share,
                    if f.pareto.contains(&i) { "*" } else { "" }
                ));
            }
        }
        let b = &self.baseline_default;
        out.push_str(&format!(
            "\nbaseline {} at its default: {:.1} replica-hours, under-provisioned {:.2}%\n",
            short(&self.baseline),
            b.replica_hours,
            100.0 * b.under_provisioned_share
        ));
        out.push_str(&format!(
            "{:<24} {:>18} {:>10} {:>16} {:>10}\n",
            "policy", "under% @ its cost", "reduction", "rep-h to match", "cost x"
        ));
        for (c, f) in self.comparisons.iter().zip(&self.frontiers) {
            let cheapest = f.curve().first().map_or(0.0, |p| p.0);
            let (to_match, ratio) = match (c.cost_to_match, c.safer_at_its_cheapest) {
                (Some(x), _) => (
                    format!("{x:.1}"),
                    format!("{:.3}", c.cost_ratio_to_match.unwrap_or(f64::NAN)),
                ),
                (None, true) => (
                    format!("< {cheapest:.1}"),
                    format!(
                        "< {:.3}",
                        cheapest / self.baseline_default.replica_hours.max(1e-9)
                    ),
                ),
                (None, false) => ("-".into(), "-".into()),
            };
            out.push_str(&format!(
                "{:<24} {:>18} {:>10} {:>16} {:>10}\n",
                short(&c.policy),
                pct(c.share_at_baseline_cost),
                pct(c.share_reduction),
                to_match,
                ratio,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(cost: f64, share: f64) -> Point {
        Point {
            value: None,
            replica_hours: cost,
            under_provisioned_share: share,
            under_provisioned_depth: 0.0,
            slo_violation_share: 0.0,
            cost_ratio: 0.0,
        }
    }

    /// A frontier computed by hand: (100, 20%), (150, 10%), (200, 5%),
    /// and (160, 12%), which (150, 10%) dominates.
    #[test]
    fn interpolation_on_a_hand_computed_frontier() {
        let f = Frontier::new(
            "p".into(),
            vec![
                point(200.0, 0.05),
                point(160.0, 0.12),
                point(100.0, 0.20),
                point(150.0, 0.10),
            ],
        );
        assert_eq!(f.curve(), vec![(100.0, 0.20), (150.0, 0.10), (200.0, 0.05)]);
        let c = f.curve();
        // halfway between 100 and 150: the geometric mean of 20% and 10%,
        // sqrt(0.02) = 0.141421...
        assert!((share_at_cost(&c, 125.0).unwrap() - 0.141_421_356_237).abs() < 1e-9);
        // 180 is 0.6 of the way from 150 to 200: 10% x 0.5^0.6 = 6.5975%
        assert!((share_at_cost(&c, 180.0).unwrap() - 0.065_975_395_538).abs() < 1e-9);
        assert_eq!(share_at_cost(&c, 150.0), Some(0.10));
        assert_eq!(share_at_cost(&c, 99.0), None, "cheaper than anything run");
        assert_eq!(share_at_cost(&c, 201.0), None);
        // 7.5% between 150 (10%) and 200 (5%): ln(10/7.5) / ln 2 =
        // 0.415037 of the way, 170.7519
        assert!((cost_at_share(&c, 0.075).unwrap() - 170.751_874_963).abs() < 1e-6);
        assert!((cost_at_share(&c, 0.15).unwrap() - 120.751_874_963).abs() < 1e-6);
        assert_eq!(cost_at_share(&c, 0.01), None, "never that safe");
        assert_eq!(cost_at_share(&c, 0.30), None, "safer at its cheapest");
        // against a baseline at (150, 16%): at 150 the policy has 10%, a
        // 37.5% reduction; it is as safe (16%) at ln(20/16) / ln 2 =
        // 0.321928 of the way from 100 to 150: 116.0964 replica-hours
        let cmp = compare(&f, &point(150.0, 0.16));
        assert!((cmp.share_reduction.unwrap() - 0.375).abs() < 1e-12);
        assert!(
            (cmp.cost_to_match.unwrap() - 116.096_404_744).abs() < 1e-6,
            "{cmp:?}"
        );
        assert!((cmp.cost_ratio_to_match.unwrap() - 0.773_976_031_6).abs() < 1e-9);
        // a point that is never short: linear toward it, as in the share
        let z = Frontier::new("z".into(), vec![point(100.0, 0.04), point(200.0, 0.0)]);
        assert!((share_at_cost(&z.curve(), 150.0).unwrap() - 0.02).abs() < 1e-12);
        assert!((cost_at_share(&z.curve(), 0.01).unwrap() - 175.0).abs() < 1e-9);
    }

    /// A policy never short from some setting on: its costlier runs are
    /// no Pareto points, but at their costs it is as safe as the cheapest
    /// of them (it could run there), not unknown.
    #[test]
    fn beyond_the_safest_pareto_point_the_frontier_is_flat_to_the_costliest_run() {
        let f = Frontier::new(
            "p".into(),
            vec![
                point(100.0, 0.04),
                point(150.0, 0.0),
                point(180.0, 0.0),
                point(200.0, 0.001),
            ],
        );
        assert_eq!(f.curve(), vec![(100.0, 0.04), (150.0, 0.0)]);
        assert_eq!(
            f.envelope(),
            vec![(100.0, 0.04), (150.0, 0.0), (200.0, 0.0)]
        );
        // a baseline at (170, 0.2%): the policy could spend 150 and never
        // be short, a 100% reduction (on the Pareto points alone: unknown)
        let cmp = compare(&f, &point(170.0, 0.002));
        assert_eq!(cmp.share_at_baseline_cost, Some(0.0));
        assert_eq!(cmp.share_reduction, Some(1.0));
        assert_eq!(share_at_cost(&f.curve(), 170.0), None);
        // as safe as the baseline (0.2%) from 0.95 of the way from 100 to
        // 150 (linear toward 0): 147.5
        assert!((cmp.cost_to_match.unwrap() - 147.5).abs() < 1e-9, "{cmp:?}");
        // nothing run costs 201
        assert_eq!(
            compare(&f, &point(201.0, 0.002)).share_at_baseline_cost,
            None
        );
        // a costliest run that is itself the safest: nothing added
        let g = Frontier::new("g".into(), vec![point(100.0, 0.04), point(200.0, 0.01)]);
        assert_eq!(g.envelope(), g.curve());
    }

    /// Which value is run next, by hand: the neighbours whose costs
    /// bracket the baseline's most tightly are halved in the value.
    #[test]
    fn refinement_halves_the_values_that_bracket_the_baseline_cost() {
        // a cost falling as the value rises: 850 lies between 0.8 (900)
        // and 0.9 (800)
        let runs = [(0.6, 1100.0), (0.8, 900.0), (0.9, 800.0), (1.2, 600.0)];
        assert_eq!(next_value(&runs, 850.0), Some(0.85));
        // the order the runs come in does not matter
        let mut rev = runs;
        rev.reverse();
        assert_eq!(next_value(&rev, 850.0), Some(0.85));
        // a gate that makes 0.8 dearer than 0.75 (generated-seasonal-219:
        // 952.5 at 0.75, 953.7 at 0.8, 879.6 at 0.85; hpa.lua 897.1):
        // only 0.8 and 0.85 bracket it
        let gated = [(0.75, 952.5), (0.8, 953.7), (0.85, 879.6)];
        assert_eq!(next_value(&gated, 897.1), Some(0.825));
        // two brackets: the tighter one (0.8 to 0.85, 40 apart, against
        // 0.6 to 0.7, 200 apart)
        let two = [
            (0.6, 1000.0),
            (0.7, 800.0),
            (0.75, 950.0),
            (0.8, 920.0),
            (0.85, 880.0),
        ];
        assert_eq!(next_value(&two, 900.0), Some(0.825));
        // done: a run within 0.25% of the cost, a bracket within 1%, no
        // bracket at all, or no cost to aim at
        assert_eq!(next_value(&[(0.8, 901.0), (0.9, 800.0)], 900.0), None);
        assert_eq!(next_value(&[(0.8, 905.0), (0.9, 897.0)], 900.0), None);
        assert_eq!(next_value(&[(0.8, 1000.0), (0.9, 950.0)], 900.0), None);
        assert_eq!(next_value(&runs, 0.0), None);
        assert_eq!(next_value(&runs, f64::NAN), None);
        // a value printed short: 0.1 + 0.2 is 0.30000000000000004
        assert_eq!(next_value(&[(0.2, 1000.0), (0.4, 800.0)], 900.0), Some(0.3));
    }
}
