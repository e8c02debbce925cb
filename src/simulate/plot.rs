//! The simulation plot (PNG or SVG, by the file's extension): the load in
//! replicas (load / capacity), the replicas needed, and each policy's
//! ready replicas over the scored span, in hours. Long runs are bucketed
//! to at most `MAX_POINTS` points: the most needed and the fewest ready in
//! each bucket, so a short shortfall stays visible.
//!
//! Text needs a TrueType font: `TIDEWATCH_FONT`, or DejaVu Sans or
//! Liberation Sans where Debian, Fedora and Arch put them. Without one the
//! plot is drawn without text (and `plot` says so).

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Series, SimulateError};

const MAX_POINTS: usize = 1500;

fn font() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let mut candidates: Vec<String> = std::env::var("TIDEWATCH_FONT").into_iter().collect();
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            ]
            .map(String::from),
        );
        candidates.iter().any(|p| {
            std::fs::read(p).ok().is_some_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    })
}

/// Draws with `$draw` (a function of the drawing area and whether there
/// is text) into a PNG or an SVG by `$path`'s extension; returns the note
/// when the text had to be left out.
macro_rules! render {
    ($path:expr, $size:expr, $draw:expr) => {{
        let path: &Path = $path;
        let text = font();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let err = |detail: String| SimulateError::Plot {
            path: path.to_owned(),
            detail,
        };
        match ext.as_str() {
            "png" => {
                let root = BitMapBackend::new(path, $size).into_drawing_area();
                $draw(&root, text).map_err(|e: DrawError| err(e.0))?;
                root.present().map_err(|e| err(e.to_string()))?;
            }
            "svg" => {
                let root = SVGBackend::new(path, $size).into_drawing_area();
                $draw(&root, text).map_err(|e: DrawError| err(e.0))?;
                root.present().map_err(|e| err(e.to_string()))?;
            }
            other => {
                return Err(SimulateError::PlotExtension {
                    path: path.to_owned(),
                    ext: other.to_owned(),
                })
            }
        }
        Ok((!text).then(|| {
            "no TrueType font found (set TIDEWATCH_FONT to a .ttf file): the plot has no text"
                .into()
        }))
    }};
}

/// Writes the plot; returns a note when it had to leave out the text.
pub fn write(
    path: &Path,
    series: &Series,
    names: &[String],
    capacity: f64,
) -> Result<Option<String>, SimulateError> {
    if series.ts.is_empty() {
        return Err(SimulateError::NothingToPlot);
    }
    render!(path, (1400, 700), |root, text| draw(
        root, series, names, capacity, text
    ))
}

/// A drawing backend's error, as its text (the backends' error types differ).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DrawError(String);

/// Bucket `i` of `n` over `len` points.
fn bucket(i: usize, n: usize, len: usize) -> std::ops::Range<usize> {
    (i * len / n)..((i + 1) * len / n).max(i * len / n + 1).min(len)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    s: &Series,
    names: &[String],
    capacity: f64,
    text: bool,
) -> Result<(), DrawError>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| DrawError(x.to_string());
    root.fill(&WHITE).map_err(e)?;
    let len = s.ts.len();
    let n = len.min(MAX_POINTS);
    let t0 = s.ts[0];
    let hours = |i: usize| (s.ts[i] - t0) as f64 / 3_600_000.0;
    let xmax = hours(len - 1).max(1e-3);
    let pick = |f: &dyn Fn(std::ops::Range<usize>) -> f64| -> Vec<(f64, f64)> {
        (0..n)
            .map(|b| {
                let r = bucket(b, n, len);
                (hours(r.start), f(r))
            })
            .collect()
    };
    let load = pick(&|r| s.load[r].iter().fold(0.0_f64, |m, v| m.max(*v / capacity)));
    let need = pick(&|r| s.need[r].iter().copied().max().unwrap_or(0) as f64);
    let ready: Vec<Vec<(f64, f64)>> = s
        .ready
        .iter()
        .map(|rs| pick(&|r| rs[r].iter().copied().min().unwrap_or(0) as f64))
        .collect();
    let ymax = need
        .iter()
        .chain(load.iter())
        .chain(ready.iter().flatten())
        .fold(1.0_f64, |m, p| m.max(p.1))
        * 1.08;
    let mut b = ChartBuilder::on(root);
    b.margin(12);
    if text {
        b.caption(
            "load, needed and ready replicas",
            ("sans-serif", 22).into_font(),
        )
        .x_label_area_size(40)
        .y_label_area_size(56);
    }
    let mut chart = b.build_cartesian_2d(0.0..xmax, 0.0..ymax).map_err(e)?;
    if text {
        chart
            .configure_mesh()
            .x_desc("hours into the scored span")
            .y_desc("replicas")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
    } else {
        chart
            .configure_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()
            .map_err(e)?;
    }
    let gray = RGBColor(170, 170, 170);
    chart
        .draw_series(LineSeries::new(load, gray.stroke_width(1)))
        .map_err(e)?
        .label("load / capacity")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], gray));
    chart
        .draw_series(LineSeries::new(need, BLACK.stroke_width(2)))
        .map_err(e)?
        .label("needed")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    for (k, pts) in ready.into_iter().enumerate() {
        let c = Palette99::pick(k).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(e)?
            .label(format!(
                "{} ready",
                names.get(k).map_or("?", |s| s.as_str())
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c));
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
    }
    Ok(())
}

/// Writes the frontier chart of a sweep: replica-hours against the
/// under-provisioned share, one curve per policy through its points
/// (Pareto points filled), the baseline's default setting marked with a
/// cross. Returns a note when it had to leave out the text.
pub fn write_frontier(
    path: &Path,
    r: &super::frontier::SweepReport,
) -> Result<Option<String>, SimulateError> {
    render!(path, (1000, 700), |root, text| draw_frontier(root, r, text))
}

fn draw_frontier<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &super::frontier::SweepReport,
    text: bool,
) -> Result<(), DrawError>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| DrawError(x.to_string());
    root.fill(&WHITE).map_err(e)?;
    let b = &r.baseline_default;
    let all = r
        .frontiers
        .iter()
        .flat_map(|f| f.points.iter())
        .chain(std::iter::once(b));
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, 0.0_f64, 0.0_f64);
    for p in all {
        x0 = x0.min(p.replica_hours);
        x1 = x1.max(p.replica_hours);
        y1 = y1.max(100.0 * p.under_provisioned_share);
    }
    let pad = ((x1 - x0) * 0.05).max(1.0);
    let mut cb = ChartBuilder::on(root);
    cb.margin(12);
    if text {
        cb.caption(
            format!(
                "cost and safety over {} = {}",
                r.key,
                r.values
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ("sans-serif", 20).into_font(),
        )
        .x_label_area_size(40)
        .y_label_area_size(56);
    }
    let mut chart = cb
        .build_cartesian_2d((x0 - pad)..(x1 + pad), 0.0..(y1 * 1.1).max(1.0))
        .map_err(e)?;
    if text {
        chart
            .configure_mesh()
            .x_desc("replica-hours")
            .y_desc("under-provisioned time, %")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
    } else {
        chart
            .configure_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()
            .map_err(e)?;
    }
    for (k, f) in r.frontiers.iter().enumerate() {
        let c = Palette99::pick(k).to_rgba();
        let pts: Vec<(f64, f64)> = f
            .points
            .iter()
            .map(|p| (p.replica_hours, 100.0 * p.under_provisioned_share))
            .collect();
        let name = Path::new(&f.policy)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| f.policy.clone());
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(e)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c));
        chart
            .draw_series(pts.iter().enumerate().map(|(i, &p)| {
                let filled = f.pareto.contains(&i);
                Circle::new(
                    p,
                    4,
                    if filled {
                        c.filled()
                    } else {
                        c.stroke_width(1)
                    },
                )
            }))
            .map_err(e)?;
    }
    let base = (b.replica_hours, 100.0 * b.under_provisioned_share);
    chart
        .draw_series(std::iter::once(Cross::new(base, 8, BLACK.stroke_width(3))))
        .map_err(e)?
        .label("baseline at its default")
        .legend(|(x, y)| Cross::new((x + 9, y), 6, BLACK.stroke_width(2)));
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
    }
    Ok(())
}
