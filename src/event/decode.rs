//! Decoding and validation of signal messages.

use std::borrow::Cow;

use super::json::Any;
use super::*;

/// The time of decoding and the time that signals without `ts` get.
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub now_ms: Millis,
    /// The receive time: now, or the broker's timestamp of a re-read message.
    pub default_ts: Millis,
}

/// Decodes one message (an object or a batch array) received at `now_ms`.
/// A batch yields one result per element, so one bad element loses nothing else.
pub fn decode(bytes: &[u8], now_ms: Millis, limits: &Limits) -> Vec<Result<Signal, Rejection>> {
    decode_at(
        bytes,
        At {
            now_ms,
            default_ts: now_ms,
        },
        limits,
    )
}

/// A message no larger than `max_message_bytes` (any format).
pub(super) fn check_size(bytes: &[u8], limits: &Limits) -> Result<(), Rejection> {
    if bytes.len() > limits.max_message_bytes {
        return Err(Rejection::new(
            Reason::MessageTooLarge,
            format!(
                "message of {} bytes exceeds max_message_bytes {}",
                bytes.len(),
                limits.max_message_bytes
            ),
        ));
    }
    Ok(())
}

/// A batch of no more than `max_batch` records (any format).
pub(super) fn check_batch(n: usize, limits: &Limits) -> Result<(), Rejection> {
    if n > limits.max_batch {
        return Err(Rejection::new(
            Reason::BatchTooLarge,
            format!("batch of {n} exceeds max_batch {}", limits.max_batch),
        ));
    }
    Ok(())
}

/// `decode` with a receive time other than now for signals without `ts`.
pub fn decode_at(bytes: &[u8], at: At, limits: &Limits) -> Vec<Result<Signal, Rejection>> {
    if let Err(e) = check_size(bytes, limits) {
        return vec![Err(e)];
    }
    let value: Any = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return vec![Err(Rejection::new(Reason::MalformedJson, e.to_string()))],
    };
    match value {
        Any::Object(fields) => vec![decode_object(&fields, at, limits)],
        Any::Array(items) => {
            if let Err(e) = check_batch(items.len(), limits) {
                return vec![Err(e)];
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Any::Object(fields) => decode_object(fields, at, limits),
                    other => Err(Rejection::new(
                        Reason::NotAnObject,
                        format!(
                            "batch element {i} is {}, expected an object",
                            other.type_name()
                        ),
                    )),
                })
                .collect()
        }
        other => vec![Err(Rejection::new(
            Reason::NotAnObject,
            format!(
                "message is {}, expected an object or an array",
                other.type_name()
            ),
        ))],
    }
}

/// Field access with errors that name the field.
struct Obj<'o, 'a>(&'o [(Cow<'a, str>, Any<'a>)]);

impl<'o, 'a> Obj<'o, 'a> {
    fn get(&self, key: &str) -> &'o Any<'a> {
        static MISSING: Any<'static> = Any::Missing;
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or(&MISSING)
    }

    fn str_req(&self, key: &str) -> Result<&'o str, Rejection> {
        match self.get(key) {
            Any::Str(s) => Ok(s),
            Any::Missing | Any::Null => Err(Rejection::new(
                Reason::MissingField,
                format!("field `{key}` is required"),
            )),
            other => Err(wrong_type(key, "a string", other)),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'o str>, Rejection> {
        match self.get(key) {
            Any::Missing | Any::Null => Ok(None),
            _ => self.str_req(key).map(Some),
        }
    }

    fn num_opt(&self, key: &str) -> Result<Option<f64>, Rejection> {
        match self.get(key) {
            Any::Missing | Any::Null => Ok(None),
            Any::Num(n) => finite(key, *n).map(Some),
            other => Err(wrong_type(key, "a number", other)),
        }
    }

    fn num_req(&self, key: &str) -> Result<f64, Rejection> {
        self.num_opt(key)?.ok_or_else(|| {
            Rejection::new(Reason::MissingField, format!("field `{key}` is required"))
        })
    }

    /// A non-negative whole count (consumers, errors, status).
    fn count_opt(&self, key: &str, max: f64) -> Result<Option<u32>, Rejection> {
        let Some(n) = self.num_opt(key)? else {
            return Ok(None);
        };
        if n < 0.0 {
            return Err(Rejection::new(
                Reason::Negative,
                format!("field `{key}` is {n}, must not be negative"),
            ));
        }
        if n.fract() != 0.0 {
            return Err(Rejection::new(
                Reason::WrongType,
                format!("field `{key}` is {n}, expected a whole number"),
            ));
        }
        if n > max {
            return Err(Rejection::new(
                Reason::Absurd,
                format!("field `{key}` is {n}, above the limit {max}"),
            ));
        }
        Ok(Some(n as u32))
    }
}

fn wrong_type(key: &str, expected: &str, got: &Any) -> Rejection {
    Rejection::new(
        Reason::WrongType,
        format!("field `{key}` is {}, expected {expected}", got.type_name()),
    )
}

fn finite(key: &str, n: f64) -> Result<f64, Rejection> {
    if n.is_finite() {
        Ok(n)
    } else {
        Err(Rejection::new(
            Reason::NonFinite,
            format!("field `{key}` is {n}, must be finite"),
        ))
    }
}

fn check_target(name: &str) -> Result<String, Rejection> {
    if valid_target_name(name) {
        Ok(name.to_owned())
    } else {
        Err(Rejection::new(
            Reason::InvalidTarget,
            format!(
                "target {:?} does not match ^[a-z0-9]([a-z0-9._-]{{0,62}})$",
                truncate(name, 80)
            ),
        ))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Reads a timestamp: RFC 3339 text or unix milliseconds.
fn parse_ts(key: &str, v: &Any) -> Result<Option<Millis>, Rejection> {
    match v {
        Any::Missing | Any::Null => Ok(None),
        Any::Num(n) => {
            let n = finite(key, *n)?;
            if !(0.0..=1e15).contains(&n) || n.fract() != 0.0 {
                return Err(Rejection::new(
                    Reason::InvalidTimestamp,
                    format!("field `{key}` is {n}, expected whole unix milliseconds"),
                ));
            }
            Ok(Some(n as Millis))
        }
        Any::Str(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|e| {
                Rejection::new(
                    Reason::InvalidTimestamp,
                    format!("field `{key}` is {:?}, not RFC 3339: {e}", truncate(s, 64)),
                )
            }),
        other => Err(wrong_type(
            key,
            "an RFC 3339 string or unix milliseconds",
            other,
        )),
    }
}

/// The event time, checked against the allowed age and clock skew.
fn event_time(obj: &Obj, at: At, limits: &Limits) -> Result<Millis, Rejection> {
    let ts = parse_ts("ts", obj.get("ts"))?.unwrap_or(at.default_ts);
    check_time("ts", ts, at.now_ms, limits)?;
    Ok(ts)
}

pub(super) fn check_time(
    key: &str,
    ts: Millis,
    now_ms: Millis,
    limits: &Limits,
) -> Result<(), Rejection> {
    if ts < now_ms.saturating_sub(limits.max_event_age_ms) {
        return Err(Rejection::new(
            Reason::TooOld,
            format!(
                "field `{key}` {} is {} ms old, older than max_event_age {} ms",
                crate::clock::rfc3339(ts),
                now_ms - ts,
                limits.max_event_age_ms
            ),
        ));
    }
    if ts > now_ms.saturating_add(limits.max_clock_skew_ms) {
        return Err(Rejection::new(
            Reason::TooFarAhead,
            format!(
                "field `{key}` {} is {} ms ahead, beyond max_clock_skew {} ms",
                crate::clock::rfc3339(ts),
                ts - now_ms,
                limits.max_clock_skew_ms
            ),
        ));
    }
    Ok(())
}

fn decode_object(fields: &[(Cow<str>, Any)], at: At, limits: &Limits) -> Result<Signal, Rejection> {
    let obj = Obj(fields);
    let kind = obj.str_req("type")?;
    match kind {
        "queue_depth" => decode_depth(&obj, at, limits).map_err(|r| r.with_kind("queue_depth")),
        "gateway_latency" => {
            decode_latency(&obj, at, limits).map_err(|r| r.with_kind("gateway_latency"))
        }
        "forecast" => decode_forecast(&obj, at, limits).map_err(|r| r.with_kind("forecast")),
        "control" => decode_control(&obj, at, limits).map_err(|r| r.with_kind("control")),
        other => Err(Rejection::new(
            Reason::UnknownType,
            format!(
                "type {:?} is not queue_depth, gateway_latency, forecast or control",
                truncate(other, 64)
            ),
        )),
    }
}

/// The most replicas a pin may name (a bound of the message, before the
/// target's own `max_replicas`).
const MAX_PIN: f64 = 1_000_000.0;

fn decode_control(obj: &Obj, at: At, limits: &Limits) -> Result<Signal, Rejection> {
    let target = check_target(obj.str_req("target")?)?;
    let name = obj.str_req("action")?;
    let action = crate::event::ControlAction::parse(name).ok_or_else(|| {
        let all: Vec<&str> = crate::event::ControlAction::ALL
            .iter()
            .map(|a| a.code())
            .collect();
        Rejection::new(
            Reason::InvalidControl,
            format!(
                "action {:?} is not one of {}",
                truncate(name, 64),
                all.join(", ")
            ),
        )
    })?;
    let replicas = obj.count_opt("replicas", MAX_PIN)?;
    if action == crate::event::ControlAction::Pin && replicas.is_none() {
        return Err(Rejection::new(
            Reason::MissingField,
            "field `replicas` is required for action \"pin\"",
        ));
    }
    let ts_ms = event_time(obj, at, limits)?;
    let until_ms = parse_ts("until", obj.get("until"))?;
    if let Some(u) = until_ms.filter(|u| *u <= at.now_ms.max(ts_ms)) {
        return Err(Rejection::new(
            Reason::InvalidControl,
            format!("field `until` {} is in the past", crate::clock::rfc3339(u)),
        ));
    }
    let text = |key: &str, max: usize| -> Result<Option<String>, Rejection> {
        match obj.str_opt(key)? {
            Some(s) if s.len() > max => Err(Rejection::new(
                Reason::Absurd,
                format!("field `{key}` is {} bytes long, limit {max}", s.len()),
            )),
            other => Ok(other.map(str::to_owned)),
        }
    };
    Ok(Signal::Control(crate::event::Control {
        target,
        action,
        replicas,
        until_ms,
        by: text("by", 128)?,
        reason: text("reason", 256)?,
        ts_ms,
    }))
}

fn decode_depth(obj: &Obj, at: At, limits: &Limits) -> Result<Signal, Rejection> {
    let target = check_target(obj.str_req("target")?)?;
    let queue = obj.str_opt("queue")?.unwrap_or("").to_owned();
    if queue.len() > 255 {
        return Err(Rejection::new(
            Reason::Absurd,
            format!("field `queue` is {} bytes long, limit 255", queue.len()),
        ));
    }
    let depth = in_range("depth", obj.num_req("depth")?, limits.max_depth)?;
    let consumers = obj.count_opt("consumers", 1e6)?;
    let ts_ms = event_time(obj, at, limits)?;
    Ok(Signal::QueueDepth(QueueDepth {
        target,
        queue,
        depth,
        consumers,
        ts_ms,
    }))
}

fn check_latency(key: &str, v: f64, limits: &Limits) -> Result<f64, Rejection> {
    in_range(key, finite(key, v)?, limits.max_latency_ms)
}

/// `v` of field `key` when it is in `0..=max`; else `negative` or `absurd`.
fn in_range(key: &str, v: f64, max: f64) -> Result<f64, Rejection> {
    if v < 0.0 {
        return Err(Rejection::new(
            Reason::Negative,
            format!("field `{key}` is {v}, must not be negative"),
        ));
    }
    if v > max {
        return Err(Rejection::new(
            Reason::Absurd,
            format!("field `{key}` is {v}, above the limit {max}"),
        ));
    }
    Ok(v)
}

fn decode_latency(obj: &Obj, at: At, limits: &Limits) -> Result<Signal, Rejection> {
    let target = check_target(obj.str_req("target")?)?;
    let route = obj.str_opt("route")?.map(|r| truncate(r, 255).to_owned());
    let mut samples = Vec::new();
    match (obj.get("latency_ms"), obj.get("samples_ms")) {
        (Any::Missing | Any::Null, Any::Missing | Any::Null) => {
            return Err(Rejection::new(
                Reason::MissingField,
                "one of `latency_ms` or `samples_ms` is required",
            ))
        }
        (single, Any::Missing | Any::Null) => match single {
            Any::Num(n) => samples.push(check_latency("latency_ms", *n, limits)?),
            other => return Err(wrong_type("latency_ms", "a number", other)),
        },
        (Any::Missing | Any::Null, Any::Array(items)) => {
            if items.len() > limits.max_samples {
                return Err(Rejection::new(
                    Reason::TooManySamples,
                    format!(
                        "`samples_ms` has {} samples, above max_samples {}",
                        items.len(),
                        limits.max_samples
                    ),
                ));
            }
            samples.reserve_exact(items.len());
            for (i, item) in items.iter().enumerate() {
                let key = format!("samples_ms[{i}]");
                match item {
                    Any::Num(n) => samples.push(check_latency(&key, *n, limits)?),
                    other => return Err(wrong_type(&key, "a number", other)),
                }
            }
        }
        (Any::Missing | Any::Null, other) => {
            return Err(wrong_type("samples_ms", "an array of numbers", other))
        }
        _ => {
            return Err(Rejection::new(
                Reason::WrongType,
                "both `latency_ms` and `samples_ms` given; send one",
            ))
        }
    }
    let status = obj.count_opt("status", 999.0)?;
    let errors = match obj.count_opt("errors", 1e9)? {
        Some(e) => e,
        // A single sample with a 5xx status counts as an error.
        None => u32::from(status.is_some_and(|s| s >= 500)),
    };
    let requests = obj.count_opt("requests", 1e9)?;
    if let Some(r) = requests {
        if (r as usize) < samples.len() {
            return Err(Rejection::new(
                Reason::Absurd,
                format!(
                    "field `requests` is {r}, fewer than the {} samples",
                    samples.len()
                ),
            ));
        }
    }
    let ts_ms = event_time(obj, at, limits)?;
    Ok(Signal::Latency(GatewayLatency {
        target,
        route,
        samples_ms: samples,
        errors,
        requests,
        ts_ms,
    }))
}

/// The largest forecast value accepted.
pub const MAX_FORECAST_VALUE: f64 = 1e12;

/// Forecast points may lie in the future by any amount, not before
/// `issued_at`; `issued_at` must be recent like any event time.
fn decode_forecast(obj: &Obj, at: At, limits: &Limits) -> Result<Signal, Rejection> {
    let target = check_target(obj.str_req("target")?)?;
    let metric = obj.str_req("metric")?;
    if !Metric::NAMES.contains(&metric) {
        return Err(Rejection::new(
            Reason::InvalidForecast,
            format!(
                "metric {:?} is not one of {:?}",
                truncate(metric, 64),
                Metric::NAMES
            ),
        ));
    }
    let source = truncate(obj.str_opt("source")?.unwrap_or("external"), 128).to_owned();
    let issued_at_ms = parse_ts("issued_at", obj.get("issued_at"))?.unwrap_or(at.default_ts);
    check_time("issued_at", issued_at_ms, at.now_ms, limits)?;
    let items = match obj.get("points") {
        Any::Array(items) => items,
        Any::Missing | Any::Null => {
            return Err(Rejection::new(
                Reason::MissingField,
                "field `points` is required",
            ))
        }
        other => return Err(wrong_type("points", "an array of objects", other)),
    };
    if items.is_empty() || items.len() > limits.max_forecast_points {
        return Err(Rejection::new(
            Reason::InvalidForecast,
            format!(
                "`points` has {} entries, expected 1 to {}",
                items.len(),
                limits.max_forecast_points
            ),
        ));
    }
    let mut points = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Any::Object(fields) = item else {
            return Err(wrong_type(&format!("points[{i}]"), "an object", item));
        };
        let p = Obj(fields);
        let at = |k: &str| format!("points[{i}].{k}");
        let ts_ms = parse_ts(&at("ts"), p.get("ts"))?.ok_or_else(|| {
            Rejection::new(Reason::MissingField, format!("`{}` is required", at("ts")))
        })?;
        let value = p
            .num_req("value")
            .map_err(|r| rename(r, "value", &at("value")))?;
        let lower = p
            .num_opt("lower")
            .map_err(|r| rename(r, "lower", &at("lower")))?;
        let upper = p
            .num_opt("upper")
            .map_err(|r| rename(r, "upper", &at("upper")))?;
        if let (Some(l), Some(u)) = (lower, upper) {
            if l > u {
                return Err(Rejection::new(
                    Reason::InvalidForecast,
                    format!("{} is {l}, above {} {u}", at("lower"), at("upper")),
                ));
            }
        }
        // Every metric is a non-negative level or rate; beyond 1e12 it is
        // a unit mistake, not a forecast.
        for (k, v) in [("value", Some(value)), ("lower", lower), ("upper", upper)] {
            if let Some(v) = v {
                if v < 0.0 {
                    return Err(Rejection::new(
                        Reason::Negative,
                        format!("{} is {v}: forecasts are of non-negative metrics", at(k)),
                    ));
                }
                if v > MAX_FORECAST_VALUE {
                    return Err(Rejection::new(
                        Reason::Absurd,
                        format!("{} is {v}, above {MAX_FORECAST_VALUE:e}", at(k)),
                    ));
                }
            }
        }
        if lower.is_some_and(|l| l > value) || upper.is_some_and(|u| u < value) {
            return Err(Rejection::new(
                Reason::InvalidForecast,
                format!("{} {value} is outside its interval", at("value")),
            ));
        }
        // A forecast is about the future of its issue: a point before
        // `issued_at` (beyond the clock skew allowed) is a mistake.
        if ts_ms < issued_at_ms - limits.max_clock_skew_ms {
            return Err(Rejection::new(
                Reason::InvalidForecast,
                format!(
                    "{} is before issued_at: points must not be in the past",
                    at("ts")
                ),
            ));
        }
        if let Some(prev) = points.last().map(|p: &ForecastPoint| p.ts_ms) {
            if ts_ms <= prev {
                return Err(Rejection::new(
                    Reason::InvalidForecast,
                    format!("{} is not after the previous point", at("ts")),
                ));
            }
        }
        points.push(ForecastPoint {
            ts_ms,
            value,
            lower,
            upper,
        });
    }
    Ok(Signal::Forecast(Forecast {
        target,
        metric: metric.to_owned(),
        source,
        issued_at_ms,
        points,
    }))
}

fn rename(mut r: Rejection, from: &str, to: &str) -> Rejection {
    r.detail = r.detail.replace(&format!("`{from}`"), &format!("`{to}`"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_764_000_000_000;

    fn one(json: &str) -> Result<Signal, Rejection> {
        let mut out = decode(json.as_bytes(), NOW, &Limits::default());
        assert_eq!(out.len(), 1, "{json}");
        out.pop().unwrap()
    }

    fn reason(json: &str) -> Reason {
        match one(json) {
            Ok(s) => panic!("accepted {json}: {s:?}"),
            Err(r) => r.reason,
        }
    }

    #[test]
    fn requests_may_stand_for_more_than_the_samples_never_fewer() {
        match one(
            r#"{"type":"gateway_latency","target":"a","samples_ms":[1,2],"requests":900,"ts":1764000000000}"#,
        ) {
            Ok(Signal::Latency(l)) => assert_eq!(l.requests, Some(900)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reason(r#"{"type":"gateway_latency","target":"a","samples_ms":[1,2],"requests":1}"#),
            Reason::Absurd
        );
        assert_eq!(
            reason(r#"{"type":"gateway_latency","target":"a","latency_ms":1,"requests":"many"}"#),
            Reason::WrongType
        );
    }

    #[test]
    fn decodes_the_design_examples() {
        let depth = one(&format!(
            r#"{{"type": "queue_depth", "target": "checkout", "queue": "orders", "depth": 1520,
               "consumers": 4, "ts": "{}"}}"#,
            crate::clock::rfc3339(NOW - 120)
        ))
        .unwrap();
        assert_eq!(
            depth,
            Signal::QueueDepth(QueueDepth {
                target: "checkout".into(),
                queue: "orders".into(),
                depth: 1520.0,
                consumers: Some(4),
                ts_ms: NOW - 120,
            })
        );
        let lat = one(&format!(
            r#"{{"type": "gateway_latency", "target": "checkout", "route": "/api/checkout",
               "samples_ms": [12.1, 15.0, 230.4], "errors": 1, "ts": {}}}"#,
            NOW - 5
        ))
        .unwrap();
        match lat {
            Signal::Latency(l) => {
                assert_eq!(l.samples_ms, vec![12.1, 15.0, 230.4]);
                assert_eq!(l.errors, 1);
                assert_eq!(l.ts_ms, NOW - 5);
                assert_eq!(l.route.as_deref(), Some("/api/checkout"));
            }
            other => panic!("{other:?}"),
        }
        let single = one(r#"{"type": "gateway_latency", "target": "checkout", "latency_ms": 183.2, "status": 503}"#)
            .unwrap();
        match single {
            Signal::Latency(l) => {
                assert_eq!(l.samples_ms, vec![183.2]);
                assert_eq!(l.errors, 1, "a 5xx status counts as an error");
                assert_eq!(l.ts_ms, NOW, "absent ts means receive time");
            }
            other => panic!("{other:?}"),
        }
        let fc = one(&format!(
            r#"{{"type": "forecast", "target": "checkout", "metric": "queue_depth",
               "source": "nightly-prophet", "issued_at": "{}",
               "points": [{{"ts": "{}", "value": 1800, "lower": 1500, "upper": 2100}}]}}"#,
            crate::clock::rfc3339(NOW - 60_000),
            crate::clock::rfc3339(NOW + 300_000)
        ))
        .unwrap();
        match fc {
            Signal::Forecast(f) => {
                assert_eq!(f.source, "nightly-prophet");
                assert_eq!(f.points.len(), 1);
                assert_eq!(f.points[0].ts_ms, NOW + 300_000);
                assert_eq!(f.points[0].upper, Some(2100.0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timestamps_with_offsets_and_unknown_fields() {
        let s = one(
            r#"{"type":"queue_depth","target":"a","depth":1,"ts":"2024-11-24T17:00:00+01:00","extra":{"x":[1,2]}}"#,
        );
        // 2024-11-24T16:00:00Z
        let want = chrono::DateTime::parse_from_rfc3339("2024-11-24T16:00:00Z")
            .unwrap()
            .timestamp_millis();
        match decode(
            br#"{"type":"queue_depth","target":"a","depth":1,"ts":"2024-11-24T17:00:00+01:00"}"#,
            want,
            &Limits::default(),
        )
        .pop()
        .unwrap()
        {
            Ok(Signal::QueueDepth(d)) => assert_eq!(d.ts_ms, want),
            other => panic!("{other:?}"),
        }
        // The same message is far in the past relative to NOW.
        assert_eq!(s.unwrap_err().reason, Reason::TooOld);
    }

    #[test]
    fn every_bad_input_has_its_reason() {
        let cases: &[(&str, Reason)] = &[
            ("{", Reason::MalformedJson),
            ("", Reason::MalformedJson),
            ("\u{0}\u{1}garbage", Reason::MalformedJson),
            (
                r#"{"type":"queue_depth","target":"a","depth":NaN}"#,
                Reason::MalformedJson,
            ),
            (
                r#"{"type":"queue_depth","target":"a","depth":1e400}"#,
                Reason::MalformedJson,
            ),
            ("42", Reason::NotAnObject),
            (r#""str""#, Reason::NotAnObject),
            (r#"{"target":"a","depth":1}"#, Reason::MissingField),
            (r#"{"type":"queue_depth","depth":1}"#, Reason::MissingField),
            (
                r#"{"type":"queue_depth","target":"a"}"#,
                Reason::MissingField,
            ),
            (
                r#"{"type":"queue_depth","target":"a","depth":"12"}"#,
                Reason::WrongType,
            ),
            (
                r#"{"type":"queue_depth","target":7,"depth":1}"#,
                Reason::WrongType,
            ),
            (
                r#"{"type":"queue_depth","target":"a","depth":1,"consumers":1.5}"#,
                Reason::WrongType,
            ),
            (
                r#"{"type":"queue_size","target":"a","depth":1}"#,
                Reason::UnknownType,
            ),
            (
                r#"{"type":"queue_depth","target":"a","depth":-1}"#,
                Reason::Negative,
            ),
            (
                r#"{"type":"queue_depth","target":"a","depth":1e13}"#,
                Reason::Absurd,
            ),
            (
                r#"{"type":"queue_depth","target":"Checkout","depth":1}"#,
                Reason::InvalidTarget,
            ),
            (
                r#"{"type":"queue_depth","target":"","depth":1}"#,
                Reason::InvalidTarget,
            ),
            (
                r#"{"type":"queue_depth","target":"a","depth":1,"ts":"yesterday"}"#,
                Reason::InvalidTimestamp,
            ),
            (
                r#"{"type":"queue_depth","target":"a","depth":1,"ts":-5}"#,
                Reason::InvalidTimestamp,
            ),
            (
                r#"{"type":"queue_depth","target":"a","depth":1,"ts":1}"#,
                Reason::TooOld,
            ),
            (
                r#"{"type":"gateway_latency","target":"a"}"#,
                Reason::MissingField,
            ),
            (
                r#"{"type":"gateway_latency","target":"a","latency_ms":-3}"#,
                Reason::Negative,
            ),
            (
                r#"{"type":"gateway_latency","target":"a","latency_ms":1e9}"#,
                Reason::Absurd,
            ),
            (
                r#"{"type":"gateway_latency","target":"a","samples_ms":[1,"x"]}"#,
                Reason::WrongType,
            ),
            (
                r#"{"type":"gateway_latency","target":"a","samples_ms":5}"#,
                Reason::WrongType,
            ),
            (
                r#"{"type":"gateway_latency","target":"a","latency_ms":1,"samples_ms":[1]}"#,
                Reason::WrongType,
            ),
            (
                r#"{"type":"forecast","target":"a","metric":"cpu","points":[{"ts":1,"value":1}]}"#,
                Reason::InvalidForecast,
            ),
            (
                r#"{"type":"forecast","target":"a","metric":"queue_depth","points":[]}"#,
                Reason::InvalidForecast,
            ),
            (
                r#"{"type":"forecast","target":"a","metric":"queue_depth","points":[{"value":1}]}"#,
                Reason::MissingField,
            ),
            (
                r#"{"type":"forecast","target":"a","metric":"queue_depth","points":[{"ts":5,"value":1,"lower":3,"upper":2}]}"#,
                Reason::InvalidForecast,
            ),
        ];
        for (json, want) in cases {
            assert_eq!(reason(json), *want, "{json}");
        }
        // forecasts: past points, absurd and negative values, a value
        // outside its own interval, unsorted points
        let fc = |points: &str| {
            format!(
                r#"{{"type":"forecast","target":"a","metric":"queue_depth","issued_at":{NOW},"points":{points}}}"#
            )
        };
        let later = NOW + 60_000;
        for (points, want, detail) in [
            (
                format!(r#"[{{"ts":{},"value":1}}]"#, NOW - 3_600_000),
                Reason::InvalidForecast,
                "points[0].ts is before issued_at",
            ),
            (
                format!(r#"[{{"ts":{later},"value":1e15}}]"#),
                Reason::Absurd,
                "points[0].value is 1000000000000000",
            ),
            (
                format!(r#"[{{"ts":{later},"value":5,"lower":-1}}]"#),
                Reason::Negative,
                "points[0].lower is -1",
            ),
            (
                format!(r#"[{{"ts":{later},"value":5,"upper":4}}]"#),
                Reason::InvalidForecast,
                "points[0].value 5 is outside its interval",
            ),
            (
                format!(
                    r#"[{{"ts":{later},"value":5}},{{"ts":{},"value":5}}]"#,
                    later - 1
                ),
                Reason::InvalidForecast,
                "points[1].ts is not after the previous point",
            ),
        ] {
            let r = decode(fc(&points).as_bytes(), NOW, &Limits::default())
                .into_iter()
                .next()
                .unwrap()
                .unwrap_err();
            assert_eq!(r.reason, want, "{points}");
            assert!(r.detail.contains(detail), "{}: {}", points, r.detail);
        }
        let far = format!(
            r#"{{"type":"queue_depth","target":"a","depth":1,"ts":{}}}"#,
            NOW + 31_000
        );
        assert_eq!(reason(&far), Reason::TooFarAhead);
        let many = format!(
            r#"{{"type":"gateway_latency","target":"a","samples_ms":[{}]}}"#,
            vec!["1"; 10_001].join(",")
        );
        assert_eq!(reason(&many), Reason::TooManySamples);
        let big = vec![b' '; (1 << 20) + 1];
        assert_eq!(
            decode(&big, NOW, &Limits::default())[0]
                .as_ref()
                .unwrap_err()
                .reason,
            Reason::MessageTooLarge
        );
    }

    #[test]
    fn rejection_names_the_bad_field_and_value() {
        let r = one(r#"{"type":"queue_depth","target":"a","depth":-7}"#).unwrap_err();
        assert!(
            r.detail.contains("`depth`") && r.detail.contains("-7"),
            "{}",
            r.detail
        );
        assert_eq!(r.kind, "queue_depth");
        let r =
            one(r#"{"type":"gateway_latency","target":"a","samples_ms":[1,2,null]}"#).unwrap_err();
        assert!(r.detail.contains("samples_ms[2]"), "{}", r.detail);
    }

    #[test]
    fn batch_elements_fail_alone() {
        let out = decode(
            br#"[{"type":"queue_depth","target":"a","depth":1},
                 {"type":"queue_depth","target":"a","depth":-1},
                 7,
                 {"type":"gateway_latency","target":"b","latency_ms":3}]"#,
            NOW,
            &Limits::default(),
        );
        assert_eq!(out.len(), 4);
        assert!(out[0].is_ok());
        assert_eq!(out[1].as_ref().unwrap_err().reason, Reason::Negative);
        assert_eq!(out[2].as_ref().unwrap_err().reason, Reason::NotAnObject);
        assert!(out[3].is_ok());
        let limits = Limits {
            max_batch: 2,
            ..Limits::default()
        };
        let out = decode(b"[{},{},{}]", NOW, &limits);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ref().unwrap_err().reason, Reason::BatchTooLarge);
    }

    #[test]
    fn deeply_nested_input_is_rejected_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        assert_eq!(
            decode(deep.as_bytes(), NOW, &Limits::default())[0]
                .as_ref()
                .unwrap_err()
                .reason,
            Reason::MalformedJson
        );
    }

    /// Arbitrary bytes, including mutations of valid messages, never panic.
    #[test]
    fn never_panics_on_random_bytes() {
        let seeds: [&[u8]; 3] = [
            br#"{"type":"queue_depth","target":"a","depth":1,"ts":"2025-11-24T17:00:00Z"}"#,
            br#"[{"type":"gateway_latency","target":"b","samples_ms":[1.5,2e3]}]"#,
            br#"{"type":"forecast","target":"a","metric":"queue_depth","points":[{"ts":1,"value":2}]}"#,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let seed = seeds[round % seeds.len()];
            let mut bytes = seed.to_vec();
            for _ in 0..(next() % 6 + 1) {
                let pos = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[pos] = next() as u8,
                    1 => {
                        bytes.remove(pos);
                    }
                    _ => bytes.insert(pos, b"{}[]\",:0-e.\\"[(next() % 12) as usize]),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let _ = decode(&bytes, NOW, &Limits::default());
        }
    }
}
