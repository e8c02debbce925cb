//! Signals (version 1 of DESIGN.md) and what becomes of a message: the
//! typed signals, the metrics they feed, the reasons a message is refused,
//! where it came from ([`Origin`]) and the dead-letter record of a refused
//! one. Decoding ([`decode`]) never panics: every input either becomes
//! typed signals or a [`Rejection`] with a reason code used by metrics and
//! dead-letter records.

mod deadletter;
mod decode;
mod inputs;
mod json;
pub mod mapping;
pub mod presets;

use std::fmt;

use crate::clock::Millis;

pub use deadletter::{DeadLetter, Origin, RejectionRecord};
pub use decode::{decode, decode_at, At, MAX_FORECAST_VALUE};
pub use inputs::{binding_matches, decode_tidewatch, Decoded, Decoder, Input, Inputs, Matcher};

/// Why a message (or one element of a batch) was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MessageTooLarge,
    MalformedJson,
    NotAnObject,
    BatchTooLarge,
    MissingField,
    WrongType,
    UnknownType,
    NonFinite,
    Negative,
    Absurd,
    InvalidTarget,
    InvalidTimestamp,
    TooOld,
    TooFarAhead,
    TooManySamples,
    InvalidForecast,
    UnknownTarget,
    TooManyQueues,
    /// A gateway's record that maps to no configured target (or that a
    /// filter drops), dead-lettered because its input asks for that.
    Unmatched,
    /// A control message that cannot be applied (an unknown action, a pin
    /// outside the bounds, an `until` in the past).
    InvalidControl,
}

impl Reason {
    /// The stable code used as a metric label and in dead-letter records.
    pub fn code(self) -> &'static str {
        match self {
            Reason::MessageTooLarge => "message_too_large",
            Reason::MalformedJson => "malformed_json",
            Reason::NotAnObject => "not_an_object",
            Reason::BatchTooLarge => "batch_too_large",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::UnknownType => "unknown_type",
            Reason::NonFinite => "non_finite",
            Reason::Negative => "negative_value",
            Reason::Absurd => "absurd_value",
            Reason::InvalidTarget => "invalid_target",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::TooOld => "too_old",
            Reason::InvalidControl => "invalid_control",
            Reason::TooFarAhead => "too_far_ahead",
            Reason::TooManySamples => "too_many_samples",
            Reason::InvalidForecast => "invalid_forecast",
            Reason::UnknownTarget => "unknown_target",
            Reason::TooManyQueues => "too_many_queues",
            Reason::Unmatched => "unmatched",
        }
    }

    /// Signals for targets that are not configured are counted and dropped,
    /// not dead-lettered: they are valid, just not ours (DESIGN.md).
    pub fn dead_letter(self) -> bool {
        self != Reason::UnknownTarget
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected message or batch element, with a message naming the bad value.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
    /// The signal type, when it could be read (for metric labels).
    pub kind: &'static str,
}

impl Rejection {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            kind: "unknown",
        }
    }
    /// A gateway record dead-lettered because it maps to no target.
    pub fn unmatched(detail: impl Into<String>) -> Self {
        Self::new(Reason::Unmatched, detail)
    }

    pub fn with_kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Rejection {}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueDepth {
    pub target: String,
    pub queue: String,
    pub depth: f64,
    pub consumers: Option<u32>,
    pub ts_ms: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayLatency {
    pub target: String,
    pub route: Option<String>,
    pub samples_ms: Vec<f64>,
    /// Failed requests among (or in addition to) the samples.
    pub errors: u32,
    /// The requests the samples stand for, when they are a sample of
    /// more; `None`: one per sample.
    pub requests: Option<u32>,
    pub ts_ms: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForecastPoint {
    pub ts_ms: Millis,
    pub value: f64,
    pub lower: Option<f64>,
    pub upper: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub target: String,
    pub metric: String,
    pub source: String,
    pub issued_at_ms: Millis,
    /// Sorted by time, strictly rising.
    pub points: Vec<ForecastPoint>,
}

/// What a control message asks (docs/messages.md, "Control").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    /// No commands (decisions are still made and logged).
    Pause,
    /// No scale-downs.
    PauseScaleIn,
    /// No scale-ups.
    PauseScaleOut,
    /// One command to `replicas`, then nothing.
    Pin,
    /// Commands carry `dry_run = true`.
    DryRunOn,
    /// Commands carry `dry_run = false` (whatever the configuration says).
    DryRunOff,
    /// Back to the configuration: every control above lifted.
    Resume,
}

impl ControlAction {
    pub const ALL: [ControlAction; 7] = [
        ControlAction::Pause,
        ControlAction::PauseScaleIn,
        ControlAction::PauseScaleOut,
        ControlAction::Pin,
        ControlAction::DryRunOn,
        ControlAction::DryRunOff,
        ControlAction::Resume,
    ];

    pub fn code(self) -> &'static str {
        match self {
            ControlAction::Pause => "pause",
            ControlAction::PauseScaleIn => "pause_scale_in",
            ControlAction::PauseScaleOut => "pause_scale_out",
            ControlAction::Pin => "pin",
            ControlAction::DryRunOn => "dry_run_on",
            ControlAction::DryRunOff => "dry_run_off",
            ControlAction::Resume => "resume",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.code() == s)
    }
}

/// A run-time control of one target, with who asked, why and until when.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub target: String,
    pub action: ControlAction,
    /// For `pin`.
    pub replicas: Option<u32>,
    pub until_ms: Option<Millis>,
    pub by: Option<String>,
    pub reason: Option<String>,
    pub ts_ms: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    QueueDepth(QueueDepth),
    Latency(GatewayLatency),
    Forecast(Forecast),
    Control(Control),
}

impl Signal {
    pub fn target(&self) -> &str {
        match self {
            Signal::QueueDepth(s) => &s.target,
            Signal::Latency(s) => &s.target,
            Signal::Forecast(s) => &s.target,
            Signal::Control(s) => &s.target,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Signal::QueueDepth(_) => "queue_depth",
            Signal::Latency(_) => "gateway_latency",
            Signal::Forecast(_) => "forecast",
            Signal::Control(_) => "control",
        }
    }
}

/// The validation limits; defaults are in `config.rs` (`EngineConfig`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_event_age_ms: i64,
    pub max_clock_skew_ms: i64,
    pub max_message_bytes: usize,
    pub max_batch: usize,
    pub max_samples: usize,
    /// Depths above this are taken for a broken producer.
    pub max_depth: f64,
    /// Latencies above this (ms) are taken for a broken producer.
    pub max_latency_ms: f64,
    pub max_forecast_points: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_age_ms: 5 * 60_000,
            max_clock_skew_ms: 30_000,
            max_message_bytes: 1 << 20,
            max_batch: 1000,
            max_samples: 10_000,
            max_depth: 1e12,
            max_latency_ms: 86_400_000.0,
            max_forecast_points: 10_000,
        }
    }
}

/// A target name as DESIGN.md allows: `^[a-z0-9]([a-z0-9._-]{0,62})$`.
pub fn valid_target_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..].iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// The metrics a target's windows keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    QueueDepth,
    LatencyMs,
    Requests,
    Errors,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::QueueDepth,
        Metric::LatencyMs,
        Metric::Requests,
        Metric::Errors,
    ];
    pub const NAMES: [&'static str; 4] = ["queue_depth", "latency_ms", "requests", "errors"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn parse(s: &str) -> Option<Metric> {
        Self::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Self::ALL[i])
    }

    /// The metric's bit in a set of metrics kept as a `u8` (the metrics a
    /// call read, the forecasts a policy asked for).
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Counters sum per-message counts; their `rate` is sum per second and
    /// they keep no quantile sketch.
    pub fn is_counter(self) -> bool {
        matches!(self, Metric::Requests | Metric::Errors)
    }
}
