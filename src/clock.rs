//! The one source of time for the engine. Everything that depends on time
//! takes a `Clock` (or an explicit `now_ms`), so tests control it:
//! `TokioClock` follows tokio time, which `tokio::time::pause()` stops.

/// Unix time in milliseconds.
pub type Millis = i64;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
}

/// Wall-clock time, for production.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// Formats unix milliseconds as RFC 3339 with millisecond precision, UTC.
pub fn rfc3339(ms: Millis) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// Unix time that follows tokio's clock, so `tokio::time::pause()` moves it.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base_ms: Millis,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(base_ms: Millis) -> Self {
        Self {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> Millis {
        self.base_ms + self.start.elapsed().as_millis() as Millis
    }
}

/// Virtual time running `speed` times faster than the wall clock from
/// `base_ms` (the demo's fast mode: every component shares one).
#[derive(Debug, Clone)]
pub struct ScaledClock {
    base_ms: Millis,
    start: std::time::Instant,
    speed: f64,
}

impl ScaledClock {
    pub fn new(base_ms: Millis, speed: f64) -> Self {
        Self {
            base_ms,
            start: std::time::Instant::now(),
            speed,
        }
    }

    /// The real time until virtual time `at` (zero when it has passed).
    pub fn real_until(&self, at: Millis) -> std::time::Duration {
        let due = (at - self.base_ms) as f64 / 1000.0 / self.speed;
        std::time::Duration::from_secs_f64(due.max(0.0)).saturating_sub(self.start.elapsed())
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> Millis {
        self.base_ms + (self.start.elapsed().as_secs_f64() * self.speed * 1000.0) as Millis
    }
}
