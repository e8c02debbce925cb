//! Forecasts for `ctx.forecast`: external forecast events stored per target
//! and metric, and the built-in forecasters behind the same lookup.

pub mod builtin;
pub mod holt;
pub mod pool;
pub mod recurring;

use crate::clock::Millis;
use crate::event::Forecast;
use crate::event::Metric;

/// A point lookup answered by a forecast.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastValue {
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
    /// The event's source, or the built-in model's name (no allocation
    /// per read for the built-in ones).
    pub source: std::borrow::Cow<'static, str>,
}

/// How far beyond its first or last point a forecast still answers.
pub const EDGE_TOLERANCE_MS: i64 = 60_000;

/// The latest external forecast per metric of one target.
#[derive(Debug, Clone, Default)]
pub struct ForecastStore {
    latest: [Option<Forecast>; 4],
}

impl ForecastStore {
    /// Keeps `f` unless a forecast issued later is already stored.
    pub fn insert(&mut self, metric: Metric, f: Forecast) {
        let slot = &mut self.latest[metric as usize];
        if slot
            .as_ref()
            .is_none_or(|old| old.issued_at_ms <= f.issued_at_ms)
        {
            *slot = Some(f);
        }
    }

    /// The value at `now + horizon` from a forecast issued within `freshness_ms`
    /// of now that covers that time (linear between points), or `None`.
    pub fn lookup(
        &self,
        metric: Metric,
        now: Millis,
        horizon_ms: i64,
        freshness_ms: i64,
    ) -> Option<ForecastValue> {
        let f = self.latest[metric as usize].as_ref()?;
        if f.issued_at_ms < now - freshness_ms {
            return None;
        }
        let at = now + horizon_ms;
        let first = f.points.first()?;
        let last = f.points.last()?;
        if at < first.ts_ms - EDGE_TOLERANCE_MS || at > last.ts_ms + EDGE_TOLERANCE_MS {
            return None;
        }
        let i = f.points.partition_point(|p| p.ts_ms <= at);
        let (value, lower, upper) = if i == 0 || i == f.points.len() {
            let p = if i == 0 { first } else { last };
            (
                p.value,
                p.lower.unwrap_or(p.value),
                p.upper.unwrap_or(p.value),
            )
        } else {
            let (a, b) = (&f.points[i - 1], &f.points[i]);
            let w = (at - a.ts_ms) as f64 / (b.ts_ms - a.ts_ms) as f64;
            let mix = |x: f64, y: f64| x + (y - x) * w;
            (
                mix(a.value, b.value),
                mix(a.lower.unwrap_or(a.value), b.lower.unwrap_or(b.value)),
                mix(a.upper.unwrap_or(a.value), b.upper.unwrap_or(b.value)),
            )
        };
        Some(ForecastValue {
            value,
            lower,
            upper,
            source: f.source.clone().into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ForecastPoint;

    fn fc(issued: Millis, pts: &[(Millis, f64)]) -> Forecast {
        Forecast {
            target: "t".into(),
            metric: "queue_depth".into(),
            source: "ext".into(),
            issued_at_ms: issued,
            points: pts
                .iter()
                .map(|&(ts_ms, value)| ForecastPoint {
                    ts_ms,
                    value,
                    lower: Some(value - 10.0),
                    upper: None,
                })
                .collect(),
        }
    }

    #[test]
    fn interpolates_within_cover_and_respects_freshness() {
        let mut s = ForecastStore::default();
        s.insert(
            Metric::QueueDepth,
            fc(0, &[(100_000, 100.0), (200_000, 200.0)]),
        );
        let v = s
            .lookup(Metric::QueueDepth, 50_000, 100_000, 600_000)
            .unwrap();
        assert_eq!((v.value, v.lower, v.upper), (150.0, 140.0, 150.0));
        assert_eq!(v.source, "ext");
        // beyond the last point plus tolerance
        assert!(s.lookup(Metric::QueueDepth, 0, 261_000, 600_000).is_none());
        // stale
        assert!(s.lookup(Metric::QueueDepth, 700_000, 0, 600_000).is_none());
        // other metric
        assert!(s
            .lookup(Metric::Requests, 50_000, 100_000, 600_000)
            .is_none());
        // an older issue does not replace a newer one
        s.insert(Metric::QueueDepth, fc(-5, &[(100_000, 1.0)]));
        assert_eq!(
            s.lookup(Metric::QueueDepth, 0, 100_000, 600_000)
                .unwrap()
                .value,
            100.0
        );
    }
}
