//! `simulate --corpus DIR --generate N`: the frontier comparison over many
//! traces, real and generated, under one protocol (capacity per replica =
//! the trace's peak / 30, start-up 2 min, step 60 s, warm-up 14 days, 7 for
//! series of at most 15 days), reported per trace and as medians over the
//! seasonal and the bursty ones. A trace is seasonal when its hourly load
//! correlates with itself a day later (autocorrelation above 0.5).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::frontier::{sweep, SweepReport};
use super::generate::{generate_parts, Kind};
use super::{Options, SimulateError, Trace};

/// What to score.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Real traces (`*.csv`); None: only generated ones.
    pub dir: Option<PathBuf>,
    /// Generated traces per kind, seeds `first_seed..first_seed + n`.
    pub generated: u32,
    pub first_seed: u64,
    pub days: u32,
    /// Also write each generated trace here as `NAME.csv` (`ts,value`), so
    /// that it can be run on its own with `simulate --trace`.
    pub write_generated: Option<PathBuf>,
}

/// One trace's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct TraceResult {
    pub name: String,
    pub kind: &'static str,
    pub generated: bool,
    pub daily_autocorrelation: f64,
    pub sweep: SweepReport,
}

/// Medians of a class, per policy.
#[derive(Debug, Clone, Serialize)]
pub struct Median {
    pub kind: &'static str,
    pub policy: String,
    pub traces: usize,
    /// Traces where the reduction could be read: the baseline's default
    /// cost lies on the policy's frontier and the baseline is ever short.
    pub measured: usize,
    /// Median of 1 - share at the baseline's cost / the baseline's share.
    pub share_reduction: Option<f64>,
    /// The worst trace's reduction (negative: worse than the baseline).
    pub worst_reduction: Option<f64>,
}

/// A file of the corpus that could not be scored, and why: a line that is
/// not a trace's (the error names it), or a trace shorter than its
/// warm-up. The rest of the corpus is scored without it.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub name: String,
    pub error: String,
}

/// What the corpus command reports as it goes: a trace scored, or one
/// skipped.
pub enum Done<'a> {
    Scored(&'a TraceResult),
    Skipped(&'a Skipped),
}

#[derive(Debug, Clone, Serialize)]
pub struct CorpusReport {
    pub key: String,
    pub values: Vec<serde_json::Value>,
    pub baseline: String,
    pub traces: Vec<TraceResult>,
    pub medians: Vec<Median>,
    /// The files that could not be scored, with the error of each.
    pub skipped: Vec<Skipped>,
}

/// Autocorrelation of `x` at `lag` (0 when it cannot be computed).
pub fn autocorrelation(x: &[f64], lag: usize) -> f64 {
    if x.len() <= lag + 1 {
        return 0.0;
    }
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    let var: f64 = x.iter().map(|v| (v - mean).powi(2)).sum();
    if var <= 0.0 {
        return 0.0;
    }
    let cov: f64 = (0..x.len() - lag)
        .map(|i| (x[i] - mean) * (x[i + lag] - mean))
        .sum();
    cov / var
}

/// Seasonal or bursty, and the daily autocorrelation it was judged by
/// (hourly means).
pub fn classify(t: &Trace) -> (Kind, f64) {
    // means, not the load at each hour: on a bursty series a sample is
    // mostly its bursts, and hides the daily cycle under them
    let hourly = t.means(3_600_000);
    let a = autocorrelation(&hourly, 24);
    (
        if a > 0.5 {
            Kind::Seasonal
        } else {
            Kind::Bursty
        },
        a,
    )
}

/// The protocol's options for `trace`: `base` with its capacity, warm-up
/// and step set.
pub fn protocol(base: &Options, t: &Trace, name: &str) -> Options {
    let peak = t.points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let span_days = (t.end() - t.start()) as f64 / 86_400_000.0;
    let mut o = base.clone();
    o.trace = PathBuf::from(name);
    o.capacity = (peak / 30.0).max(1e-9);
    o.startup = Duration::from_secs(120);
    o.step = Duration::from_secs(60);
    o.warmup = Duration::from_secs(if span_days > 15.0 { 14 } else { 7 } * 86_400);
    o
}

/// Runs the comparison over the corpus; `each` is told of every trace done
/// or skipped. A file that is not a trace, or a trace shorter than its
/// warm-up, is skipped with its error (in the report's `skipped`), and the
/// rest is scored; any other error (a policy's, an output's) ends the run.
pub fn run_corpus(
    base: &Options,
    c: &Corpus,
    key: &str,
    values: &[serde_json::Value],
    baseline: &Path,
    mut each: impl FnMut(Done<'_>),
) -> Result<CorpusReport, SimulateError> {
    let mut traces: Vec<(String, Trace, bool)> = Vec::new();
    let mut skipped = Vec::new();
    let mut skip = |name: String, e: SimulateError, each: &mut dyn FnMut(Done<'_>)| {
        let s = Skipped {
            name,
            error: e.to_string(),
        };
        each(Done::Skipped(&s));
        skipped.push(s);
    };
    if let Some(dir) = &c.dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| SimulateError::TraceFile {
                path: dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            match Trace::load(&f) {
                Ok(t) => traces.push((name, t, false)),
                Err(e @ SimulateError::Trace { .. }) => skip(name, e, &mut each),
                Err(e) => return Err(e),
            }
        }
    }
    // the predictable parts in a directory of their own, so that DIR can
    // be a --corpus without them
    let clean_dir = match &c.write_generated {
        Some(dir) if c.generated > 0 => {
            let clean_dir = dir.join("clean");
            std::fs::create_dir_all(&clean_dir).map_err(|source| SimulateError::TraceFile {
                path: clean_dir.clone(),
                source,
            })?;
            Some(clean_dir)
        }
        _ => None,
    };
    for seed in c.first_seed..c.first_seed + u64::from(c.generated) {
        for kind in [Kind::Seasonal, Kind::Bursty] {
            let name = format!("generated-{}-{seed}", kind.name());
            let (t, clean) = generate_parts(kind, seed, c.days, 60);
            if let (Some(dir), Some(clean_dir)) = (&c.write_generated, &clean_dir) {
                for (path, t) in [
                    (dir.join(format!("{name}.csv")), &t),
                    (clean_dir.join(format!("{name}.csv")), &clean),
                ] {
                    t.save(&path)
                        .map_err(|source| SimulateError::TraceFile { path, source })?;
                }
            }
            traces.push((name, t, true));
        }
    }
    let mut results = Vec::new();
    for (name, t, generated) in traces {
        let (kind, acf) = classify(&t);
        let o = protocol(base, &t, &name);
        let sweep = match sweep(&o, &t, key, values, baseline) {
            Ok(s) => s,
            Err(e @ SimulateError::Warmup { .. }) => {
                skip(name, e, &mut each);
                continue;
            }
            Err(e) => return Err(e),
        };
        let r = TraceResult {
            name,
            kind: kind.name(),
            generated,
            daily_autocorrelation: acf,
            sweep,
        };
        each(Done::Scored(&r));
        results.push(r);
    }
    let mut medians = Vec::new();
    for kind in ["seasonal", "bursty"] {
        for (k, policy) in base.policies.iter().enumerate() {
            let mut red: Vec<f64> = results
                .iter()
                .filter(|r| r.kind == kind)
                .filter_map(|r| r.sweep.comparisons[k].share_reduction)
                .collect();
            red.sort_by(f64::total_cmp);
            medians.push(Median {
                kind,
                policy: policy.display().to_string(),
                traces: results.iter().filter(|r| r.kind == kind).count(),
                measured: red.len(),
                share_reduction: median(&red),
                worst_reduction: red.first().copied(),
            });
        }
    }
    Ok(CorpusReport {
        key: key.to_owned(),
        values: values.to_vec(),
        baseline: baseline.display().to_string(),
        traces: results,
        medians,
        skipped,
    })
}

fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

impl TraceResult {
    /// One line per policy: the trace, its kind, the baseline's default
    /// point and the policy's standing against it.
    pub fn lines(&self) -> String {
        let b = &self.sweep.baseline_default;
        let pct = |x: Option<f64>| x.map_or("-".into(), |x| format!("{:.1}", 100.0 * x));
        let mut out = String::new();
        for (c, f) in self.sweep.comparisons.iter().zip(&self.sweep.frontiers) {
            let policy = Path::new(&f.policy)
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let matched = match (c.cost_ratio_to_match, c.safer_at_its_cheapest) {
                (Some(x), _) => format!("{x:.3}"),
                (None, true) => "<min".into(),
                (None, false) => "-".into(),
            };
            out.push_str(&format!(
                "{:<34} {:<9} {:>9.1} {:>7.2} {:<18} {:>8} {:>9} {:>8}\n",
                self.name,
                self.kind,
                b.replica_hours,
                100.0 * b.under_provisioned_share,
                policy,
                pct(c.share_at_baseline_cost),
                pct(c.share_reduction),
                matched
            ));
        }
        out
    }
}

/// The header of [`TraceResult::lines`].
pub fn header() -> String {
    format!(
        "{:<34} {:<9} {:>9} {:>7} {:<18} {:>8} {:>9} {:>8}\n",
        "trace", "kind", "base rep-h", "base u%", "policy", "u% @cost", "reduct%", "cost x"
    )
}

impl CorpusReport {
    pub fn to_json(&self) -> String {
        super::report::pretty_json(self)
    }

    pub fn medians_table(&self) -> String {
        let mut out = format!(
            "{:<9} {:<18} {:>9} {:>16} {:>16}\n",
            "kind", "policy", "measured", "median reduct%", "worst reduct%"
        );
        for m in &self.medians {
            let policy = Path::new(&m.policy)
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let pct = |x: Option<f64>| x.map_or("-".into(), |x| format!("{:.1}", 100.0 * x));
            out.push_str(&format!(
                "{:<9} {:<18} {:>9} {:>16} {:>16}\n",
                m.kind,
                policy,
                format!("{}/{}", m.measured, m.traces),
                pct(m.share_reduction),
                pct(m.worst_reduction)
            ));
        }
        out
    }
}
