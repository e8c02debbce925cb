//! Load traces for `tidewatch simulate` (issue 6, started): CSV with the
//! header `ts,value` (the header may be left out), `ts` a unix time in
//! seconds (or milliseconds, when above 10^11), `value` a load level.
//!
//! Rules, so that no trace is scored on something it does not say:
//! - an empty file, a line that is not two numbers, a negative, NaN or
//!   infinite value, and a timestamp that is not later than the one before
//!   (unsorted or duplicate) are errors naming the line;
//! - blank lines and lines starting with `#` are skipped;
//! - gaps are filled when the trace is resampled to the simulation step,
//!   by linear interpolation between the points on either side (a gap is
//!   neither zero load nor a spike); [`Trace::gaps`] counts them.

use std::path::Path;

use crate::clock::Millis;

/// A parsed trace: strictly rising times (ms) and their values.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub points: Vec<(Millis, f64)>,
}

/// What is wrong, and on which line (1-based, header included).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TraceError {
    pub line: usize,
    pub message: String,
}

impl Trace {
    /// Reads and parses a file; errors name the file and the line.
    pub fn load(path: &Path) -> Result<Trace, super::SimulateError> {
        use super::SimulateError;
        let text = std::fs::read_to_string(path).map_err(|source| SimulateError::TraceFile {
            path: path.to_owned(),
            source,
        })?;
        parse(&text).map_err(|source| SimulateError::Trace {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the trace as `ts,value` (unix seconds when whole, else ms),
    /// the format [`Trace::load`] reads.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::fmt::Write as _;
        let seconds = self.points.iter().all(|p| p.0 % 1000 == 0);
        let mut out = String::from("ts,value\n");
        for &(t, v) in &self.points {
            let ts = if seconds { t / 1000 } else { t };
            let _ = writeln!(out, "{ts},{v}");
        }
        std::fs::write(path, out)
    }

    /// The usual spacing of the points: the median difference.
    pub fn step_ms(&self) -> Millis {
        let mut d: Vec<Millis> = self.points.windows(2).map(|w| w[1].0 - w[0].0).collect();
        if d.is_empty() {
            return 0;
        }
        d.sort_unstable();
        d[d.len() / 2]
    }

    /// Spacings longer than 1.5 times the usual step.
    pub fn gaps(&self) -> usize {
        let step = self.step_ms();
        self.points
            .windows(2)
            .filter(|w| (w[1].0 - w[0].0) * 2 > step * 3)
            .count()
    }

    pub fn start(&self) -> Millis {
        self.points[0].0
    }

    pub fn end(&self) -> Millis {
        self.points[self.points.len() - 1].0
    }

    /// The load at `t`, interpolated linearly between the points around it
    /// (the first or last value outside the trace).
    pub fn at(&self, t: Millis) -> f64 {
        let i = self.points.partition_point(|p| p.0 <= t);
        if i == 0 {
            return self.points[0].1;
        }
        if i == self.points.len() {
            return self.points[i - 1].1;
        }
        let ((t0, v0), (t1, v1)) = (self.points[i - 1], self.points[i]);
        v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64
    }

    /// The mean load over each `step_ms` from the first point on: the
    /// points within each span, or where a span has none (a gap, or a
    /// trace coarser than the span) the load at its middle.
    pub fn means(&self, step_ms: Millis) -> Vec<f64> {
        let step = step_ms.max(1);
        let spans = ((self.end() - self.start()) / step + 1) as usize;
        let mut sums = vec![(0.0, 0u32); spans];
        for &(t, v) in &self.points {
            let s = &mut sums[((t - self.start()) / step) as usize];
            s.0 += v;
            s.1 += 1;
        }
        sums.iter()
            .enumerate()
            .map(|(k, &(sum, n))| {
                if n > 0 {
                    sum / f64::from(n)
                } else {
                    self.at(self.start() + k as Millis * step + step / 2)
                }
            })
            .collect()
    }

    /// The load every `step_ms` from the first point to the last.
    pub fn resample(&self, step_ms: Millis) -> Vec<(Millis, f64)> {
        let step = step_ms.max(1);
        (0..)
            .map(|k| self.start() + k * step)
            .take_while(|t| *t <= self.end())
            .map(|t| (t, self.at(t)))
            .collect()
    }
}

/// Parses the text of a trace.
pub fn parse(text: &str) -> Result<Trace, TraceError> {
    let mut points: Vec<(Millis, f64)> = Vec::new();
    let mut last_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let err = |message: String| TraceError { line, message };
        let mut cols = l.split(',').map(str::trim);
        let (Some(ts), Some(value), None) = (cols.next(), cols.next(), cols.next()) else {
            return Err(err(format!("{l:?}: expected two columns, ts,value")));
        };
        if points.is_empty() && ts.eq_ignore_ascii_case("ts") {
            continue;
        }
        let ts: f64 = ts
            .parse()
            .map_err(|_| err(format!("ts {ts:?} is not a number")))?;
        if !ts.is_finite() || ts < 0.0 {
            return Err(err(format!("ts {ts} is not a unix time")));
        }
        let ms = if ts > 1e11 { ts } else { ts * 1000.0 } as Millis;
        let v: f64 = value
            .parse()
            .map_err(|_| err(format!("value {value:?} is not a number")))?;
        if !v.is_finite() || v < 0.0 {
            return Err(err(format!(
                "value {value}: must be a finite number, 0 or more"
            )));
        }
        if let Some(&(prev, _)) = points.last() {
            if ms == prev {
                return Err(err(format!("ts {ts} repeats the time of line {last_line}")));
            }
            if ms < prev {
                return Err(err(format!(
                    "ts {ts} is earlier than line {last_line}'s: the trace must be sorted by time"
                )));
            }
        }
        points.push((ms, v));
        last_line = line;
    }
    if points.is_empty() {
        return Err(TraceError {
            line: text.lines().count().max(1),
            message: "no data: the trace is empty".into(),
        });
    }
    Ok(Trace { points })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `simulate --write-generated` writes reads back as the same trace.
    #[test]
    fn a_saved_trace_loads_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        for points in [
            vec![(1_767_571_200_000, 1.5), (1_767_571_260_000, 0.1 + 0.2)],
            vec![(1_767_571_200_250, 7.0), (1_767_571_260_500, 1e-7)],
        ] {
            let t = Trace { points };
            let path = dir.path().join("t.csv");
            t.save(&path).unwrap();
            assert_eq!(Trace::load(&path).unwrap(), t);
        }
    }

    #[test]
    fn bad_traces_name_the_line() {
        let e = |t: &str| parse(t).unwrap_err();
        assert_eq!(e("").message, "no data: the trace is empty");
        assert_eq!(e("ts,value\n").line, 1);
        let x = e("ts,value\n60,1\n120,abc\n");
        assert_eq!(x.line, 3);
        assert!(x.message.contains("\"abc\""), "{x}");
        let x = e("ts,value\n60,1\n120,-2\n");
        assert!(x.line == 3 && x.message.contains("-2"), "{x}");
        let x = e("60,1\n120,2\n120,3\n");
        assert!(x.line == 3 && x.message.contains("line 2"), "{x}");
        let x = e("60,1\n180,2\n120,3\n");
        assert!(x.line == 3 && x.message.contains("sorted"), "{x}");
        assert_eq!(e("60,1,2\n").line, 1);
        assert_eq!(e("60,NaN\n").line, 1);
        assert!(e("60\n").message.contains("two columns"));
    }

    #[test]
    fn gaps_are_filled_linearly_on_resampling() {
        // Seconds; a three-step gap between 120 and 300; a comment and a
        // blank line skipped; no header.
        let t = parse("# load\n60,10\n120,20\n\n300,50\n360,40\n").unwrap();
        assert_eq!(t.step_ms(), 60_000);
        assert_eq!(t.gaps(), 1);
        let r: Vec<f64> = t.resample(60_000).into_iter().map(|p| p.1).collect();
        assert_eq!(r, vec![10.0, 20.0, 30.0, 40.0, 50.0, 40.0]);
        assert_eq!(t.at(0), 10.0, "before the trace: its first value");
        assert_eq!(t.at(1_000_000), 40.0);
        // Milliseconds are taken as they are.
        let ms = parse("ts,value\n1633478400000,1\n1633478460000,3\n").unwrap();
        assert_eq!(ms.step_ms(), 60_000);
    }

    #[test]
    fn the_shared_traces_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!(
                "{}: not here (a clone outside the workspace); not checked",
                dir.display()
            );
            return;
        };
        let mut seen = 0;
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("csv") {
                continue;
            }
            let t = Trace::load(&p).unwrap();
            let step = t.step_ms();
            // The steps and spans of shared/traces/README.md: 15 s to 30 min,
            // 14 to 215 days.
            assert!(
                [15_000, 60_000, 300_000, 1_800_000].contains(&step),
                "{}: {step}",
                p.display()
            );
            assert!(t.end() - t.start() > 13 * 86_400_000, "{}", p.display());
            seen += 1;
        }
        assert!(seen >= 4, "{seen} traces in {}", dir.display());
    }
}
