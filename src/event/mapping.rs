//! Messages that are not tidewatch's own: the access logs that gateways
//! publish (Kong, APISIX, Envoy, OTLP, Traefik, nginx) and any JSON a user
//! maps field by field. A [`Mapping`] turns each record of a message into
//! one `gateway_latency` signal of one request (one latency sample, and
//! an error when its status says so), exactly as a tidewatch message with
//! one sample would. The built-in formats are presets of the same
//! declarative [`MappingSpec`] a user writes (`presets.rs`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;

use super::decode::{check_batch, check_size, check_time, At};
use super::json::{Any, Needed, Records as RecordsSeed};
use super::{valid_target_name, GatewayLatency, Limits, Reason, Rejection, Signal};
use crate::clock::Millis;

/// A mistake in a mapping, with the key (under the input's) it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct MappingError {
    pub key: String,
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> MappingError {
    MappingError {
        key: key.into(),
        message: message.into(),
    }
}

/// How a message holds its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Records {
    /// One object per message, or an array of them (APISIX's batches).
    #[default]
    Auto,
    /// OTLP/JSON logs: `resourceLogs[].scopeLogs[].logRecords[]`, each
    /// record's attributes (and `resource`'s, `body`, `timeUnixNano`)
    /// seen as one object.
    Otlp,
}

/// The unit of a duration field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Ns,
    Us,
    Ms,
    S,
}

impl Unit {
    fn to_ms(self, v: f64) -> f64 {
        match self {
            Unit::Ns => v / 1e6,
            Unit::Us => v / 1e3,
            Unit::Ms => v,
            Unit::S => v * 1e3,
        }
    }

    pub fn parse(s: &str) -> Option<Unit> {
        match s {
            "ns" => Some(Unit::Ns),
            "us" => Some(Unit::Us),
            "ms" => Some(Unit::Ms),
            "s" => Some(Unit::S),
            _ => None,
        }
    }
}

/// What to make of a field with several values (nginx's
/// `$upstream_response_time` is `"0.010, 0.020"` after a retry, and
/// `"0.010 : 0.020"` after an internal redirect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Multi {
    /// The time spent in all of them.
    #[default]
    Sum,
    /// The last one (the upstream that answered).
    Last,
}

/// A number field: a JSON Pointer, its unit, and what to do with several
/// values. Written as a pointer alone (`"/latency"`, unit ms) or a table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FieldSpec {
    Pointer(String),
    Full {
        pointer: String,
        #[serde(default)]
        unit: Option<String>,
        #[serde(default)]
        multi: Multi,
    },
}

/// How an event time is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Epoch numbers by magnitude (s, ms, us or ns; as numbers or
    /// strings), otherwise RFC 3339.
    #[default]
    Auto,
    EpochS,
    EpochMs,
    EpochUs,
    EpochNs,
    Rfc3339,
}

/// The event time field. Written as a pointer alone (format `auto`) or a table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TimeSpec {
    Pointer(String),
    Full {
        pointer: String,
        #[serde(default)]
        format: TimeFormat,
    },
}

/// Where the target comes from: a template over fields
/// (`"{/service/name}"`), then an optional regex whose captures build
/// `replace` (`"$1"`), then an optional lookup table; `default` when any
/// step finds nothing (otherwise the record is unmatched).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub replace: Option<String>,
    #[serde(default)]
    pub lookup: BTreeMap<String, String>,
    #[serde(default)]
    pub default: Option<String>,
}

/// Keep or drop records by a field, as Prometheus relabeling does: the
/// regex is anchored at both ends and a missing field is the empty string.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub source: String,
    pub regex: String,
    pub action: FilterAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterAction {
    Keep,
    Drop,
}

/// Which latency feeds `latency_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LatencyChoice {
    /// The whole request as the gateway saw it.
    #[default]
    Total,
    /// The upstream's part: a request the gateway answered itself (no
    /// upstream) is no load on the target and adds nothing.
    Upstream,
}

/// The declarative mapping: what a built-in format is made of, and what
/// `format = "mapped"` spells out. Every key is optional here; a preset
/// fills what the user leaves out.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    #[serde(default)]
    pub records: Option<Records>,
    #[serde(default)]
    pub latency: Option<FieldSpec>,
    #[serde(default)]
    pub upstream_latency: Option<FieldSpec>,
    #[serde(default)]
    pub status: Option<String>,
    /// A status at or above this is an error (500).
    #[serde(default)]
    pub error_status: Option<u16>,
    #[serde(default)]
    pub time: Option<TimeSpec>,
    /// A template for the route label (`"{/route/name}"`).
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub target: Option<TargetSpec>,
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
}

impl MappingSpec {
    /// `self` with every key `over` sets replaced (the target's keys one by
    /// one; filters are added).
    pub fn overlaid(&self, over: &MappingSpec) -> MappingSpec {
        let target = match (&self.target, &over.target) {
            (Some(a), Some(b)) => Some(TargetSpec {
                from: b.from.clone().or_else(|| a.from.clone()),
                // a new `from` comes with its own regex (or none)
                regex: if b.from.is_some() {
                    b.regex.clone()
                } else {
                    b.regex.clone().or_else(|| a.regex.clone())
                },
                replace: if b.from.is_some() || b.regex.is_some() {
                    b.replace.clone()
                } else {
                    b.replace.clone().or_else(|| a.replace.clone())
                },
                lookup: if b.lookup.is_empty() {
                    a.lookup.clone()
                } else {
                    b.lookup.clone()
                },
                default: b.default.clone().or_else(|| a.default.clone()),
            }),
            (a, b) => b.clone().or_else(|| a.clone()),
        };
        MappingSpec {
            records: over.records.or(self.records),
            latency: over.latency.clone().or_else(|| self.latency.clone()),
            upstream_latency: over
                .upstream_latency
                .clone()
                .or_else(|| self.upstream_latency.clone()),
            status: over.status.clone().or_else(|| self.status.clone()),
            error_status: over.error_status.or(self.error_status),
            time: over.time.clone().or_else(|| self.time.clone()),
            route: over.route.clone().or_else(|| self.route.clone()),
            target,
            filters: self
                .filters
                .iter()
                .chain(over.filters.iter())
                .cloned()
                .collect(),
        }
    }
}

/// An RFC 6901 JSON Pointer, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    pub fn parse(s: &str) -> Result<Pointer, String> {
        if s.is_empty() {
            return Ok(Pointer {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!(
                "{s:?} is not a JSON Pointer (RFC 6901): it must start with '/'"
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut t = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => t.push('~'),
                        Some('1') => t.push('/'),
                        other => {
                            return Err(format!(
                                "{s:?}: '~' must be followed by 0 or 1 (RFC 6901), not {other:?}"
                            ))
                        }
                    }
                } else {
                    t.push(c);
                }
            }
            tokens.push(t);
        }
        Ok(Pointer {
            text: s.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn get<'o, 'a>(&self, mut v: &'o Any<'a>) -> &'o Any<'a> {
        static MISSING: Any<'static> = Any::Missing;
        for t in &self.tokens {
            v = match v {
                Any::Object(fields) => match fields.iter().find(|(k, _)| k == t) {
                    Some((_, x)) => x,
                    None => return &MISSING,
                },
                Any::Array(items) => match t.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some(x) => x,
                    None => return &MISSING,
                },
                _ => return &MISSING,
            };
        }
        v
    }
}

/// A field as text, for templates and filters: strings as they are,
/// numbers in their shortest form, booleans as words; absent is `None`.
fn text<'o>(v: &'o Any<'_>) -> Option<Cow<'o, str>> {
    match v {
        Any::Str(s) => Some(Cow::Borrowed(s.as_ref())),
        Any::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => {
            Some(Cow::Owned(format!("{}", *n as i64)))
        }
        Any::Num(n) => Some(Cow::Owned(n.to_string())),
        Any::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// Literal text and `{/pointer}` fields.
#[derive(Debug, Clone)]
struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Field(Pointer),
}

impl Template {
    fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{s:?}: '{{' without a closing '}}'"))?;
            parts.push(Part::Field(Pointer::parse(&after[..close])?));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{s:?}: '}}' without an opening '{{'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err(format!(
                "{s:?} names no field: write a JSON Pointer in braces, for example \"{{/service/name}}\""
            ));
        }
        Ok(Template { parts })
    }

    /// The text, or `None` when a field it names is absent or empty.
    fn render(&self, record: &Any) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(ptr) => {
                    let v = text(ptr.get(record))?;
                    if v.is_empty() || v == "-" {
                        return None;
                    }
                    out.push_str(&v);
                }
            }
        }
        Some(out)
    }

    /// The literal text alone (what config check can say of a name).
    fn literal(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Field(_) => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Field {
    ptr: Pointer,
    unit: Unit,
    multi: Multi,
}

#[derive(Debug, Clone)]
struct TargetRule {
    from: Template,
    regex: Option<Regex>,
    replace: String,
    lookup: BTreeMap<String, String>,
    default: Option<String>,
}

#[derive(Debug, Clone)]
struct Filter {
    ptr: Pointer,
    regex: Regex,
    keep: bool,
}

/// A compiled mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    records: Records,
    latency: Field,
    upstream: Option<Field>,
    choice: LatencyChoice,
    status: Option<Pointer>,
    error_status: u16,
    time: Option<(Pointer, TimeFormat)>,
    route: Option<Template>,
    target: TargetRule,
    filters: Vec<Filter>,
    /// What of a record the pointers read (the rest is skipped unparsed).
    needed: Needed,
}

/// Why a record became no signal, when that is not an error in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// No target: the template's fields are absent, the regex did not
    /// match, or the lookup has no entry (and there is no default).
    NoTarget,
    /// The target it names is not a valid target name.
    InvalidTarget,
    /// A filter dropped it.
    Filtered,
}

impl Skipped {
    pub fn code(self) -> &'static str {
        match self {
            Skipped::NoTarget => "no_target",
            Skipped::InvalidTarget => "invalid_target",
            Skipped::Filtered => "filtered",
        }
    }
}

fn field(
    key: &str,
    spec: &FieldSpec,
    default_unit: Unit,
    errors: &mut Vec<MappingError>,
) -> Option<Field> {
    let (pointer, unit, multi) = match spec {
        FieldSpec::Pointer(p) => (p.as_str(), None, Multi::Sum),
        FieldSpec::Full {
            pointer,
            unit,
            multi,
        } => (pointer.as_str(), unit.as_deref(), *multi),
    };
    let ptr = Pointer::parse(pointer)
        .map_err(|m| errors.push(err(format!("{key}.pointer"), m)))
        .ok();
    let unit = match unit {
        None => Some(default_unit),
        Some(u) => Unit::parse(u).or_else(|| {
            errors.push(err(
                format!("{key}.unit"),
                format!("{u:?} is not a unit: ns, us, ms or s"),
            ));
            None
        }),
    };
    Some(Field {
        ptr: ptr?,
        unit: unit?,
        multi,
    })
}

/// `regex` as the whole field must match it (Prometheus' anchoring).
fn anchored(key: &str, re: &str) -> Result<Regex, MappingError> {
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| err(key, format!("{re:?} does not compile: {e}")))
}

impl Mapping {
    /// Compiles `spec` (a preset overlaid with the user's keys); errors
    /// name the key under `key` (for example `source.inputs[0].map`).
    pub fn compile(
        spec: &MappingSpec,
        choice: LatencyChoice,
        key: &str,
    ) -> Result<Mapping, Vec<MappingError>> {
        let mut errors = Vec::new();
        let k = |s: &str| format!("{key}.{s}");
        let latency = match &spec.latency {
            Some(f) => field(&k("latency"), f, Unit::Ms, &mut errors),
            None => {
                errors.push(err(
                    k("latency"),
                    "is required: a JSON Pointer to the request's latency, for example \"/latency\"",
                ));
                None
            }
        };
        let upstream = spec
            .upstream_latency
            .as_ref()
            .and_then(|f| field(&k("upstream_latency"), f, Unit::Ms, &mut errors));
        if choice == LatencyChoice::Upstream && spec.upstream_latency.is_none() {
            errors.push(err(
                k("upstream_latency"),
                "is required with latency = \"upstream\"",
            ));
        }
        let status = spec.status.as_ref().and_then(|p| {
            Pointer::parse(p)
                .map_err(|m| errors.push(err(k("status"), m)))
                .ok()
        });
        let time = spec.time.as_ref().and_then(|t| {
            let (p, f) = match t {
                TimeSpec::Pointer(p) => (p, TimeFormat::Auto),
                TimeSpec::Full { pointer, format } => (pointer, *format),
            };
            Pointer::parse(p)
                .map_err(|m| errors.push(err(k("time.pointer"), m)))
                .ok()
                .map(|p| (p, f))
        });
        let route = spec.route.as_ref().and_then(|r| {
            Template::parse(r)
                .map_err(|m| errors.push(err(k("route"), m)))
                .ok()
        });
        let target = match &spec.target {
            Some(t) => compile_target(t, &k("target"), &mut errors),
            None => {
                errors.push(err(
                    k("target"),
                    "is required: where the target comes from, for example target = { from = \"{/service/name}\" }",
                ));
                None
            }
        };
        let mut filters = Vec::new();
        for (i, f) in spec.filters.iter().enumerate() {
            let fk = k(&format!("filters[{i}]"));
            let ptr = Pointer::parse(&f.source).map_err(|m| err(format!("{fk}.source"), m));
            let regex = anchored(&format!("{fk}.regex"), &f.regex);
            match (ptr, regex) {
                (Ok(ptr), Ok(regex)) => filters.push(Filter {
                    ptr,
                    regex,
                    keep: f.action == FilterAction::Keep,
                }),
                (a, b) => errors.extend(a.err().into_iter().chain(b.err())),
            }
        }
        let error_status = spec.error_status.unwrap_or(500);
        if !(100..=999).contains(&error_status) {
            errors.push(err(
                k("error_status"),
                format!("{error_status} is not an HTTP status (100 to 999)"),
            ));
        }
        let mut needed = Needed::default();
        {
            let mut need = |p: &Pointer| needed.add(&p.tokens);
            for f in latency.iter().chain(upstream.iter()) {
                need(&f.ptr);
            }
            for p in status.iter().chain(time.iter().map(|(p, _)| p)) {
                need(p);
            }
            for t in route.iter().chain(target.iter().map(|t| &t.from)) {
                for part in &t.parts {
                    if let Part::Field(p) = part {
                        need(p);
                    }
                }
            }
            for f in &filters {
                need(&f.ptr);
            }
        }
        match (latency, target) {
            (Some(latency), Some(target)) if errors.is_empty() => Ok(Mapping {
                records: spec.records.unwrap_or_default(),
                latency,
                upstream,
                choice,
                status,
                error_status,
                time,
                route,
                target,
                filters,
                needed,
            }),
            _ => Err(errors),
        }
    }

    /// Decodes one message: one result per record. `Ok(None)` is a record
    /// skipped for the reason given (no target, filtered), not an error.
    pub fn decode(
        &self,
        bytes: &[u8],
        at: At,
        limits: &Limits,
    ) -> Vec<Result<Result<Signal, Skipped>, Rejection>> {
        if let Err(e) = check_size(bytes, limits) {
            return vec![Err(e)];
        }
        let parsed = match self.records {
            // OTLP's records are found by walking the whole message
            Records::Otlp => serde_json::from_slice::<Any>(bytes),
            Records::Auto => {
                use serde::de::DeserializeSeed;
                let mut d = serde_json::Deserializer::from_slice(bytes);
                RecordsSeed(&self.needed)
                    .deserialize(&mut d)
                    .and_then(|v| d.end().map(|()| v))
            }
        };
        let value: Any = match parsed {
            Ok(v) => v,
            Err(e) => return vec![Err(Rejection::new(Reason::MalformedJson, e.to_string()))],
        };
        let records: Vec<Any> = match (self.records, value) {
            (Records::Otlp, v) => match otlp_records(v) {
                Ok(r) => r,
                Err(e) => return vec![Err(e)],
            },
            (Records::Auto, Any::Array(items)) => items,
            (Records::Auto, v @ Any::Object(_)) => vec![v],
            (Records::Auto, other) => {
                return vec![Err(Rejection::new(
                    Reason::NotAnObject,
                    format!(
                        "message is {}, expected an object or an array of them",
                        other.type_name()
                    ),
                ))]
            }
        };
        if let Err(e) = check_batch(records.len(), limits) {
            return vec![Err(e)];
        }
        records
            .iter()
            .enumerate()
            .map(|(i, r)| match r {
                Any::Object(_) => self.record(r, at, limits),
                other => Err(Rejection::new(
                    Reason::NotAnObject,
                    format!("record {i} is {}, expected an object", other.type_name()),
                )),
            })
            .collect()
    }

    fn record(
        &self,
        r: &Any,
        at: At,
        limits: &Limits,
    ) -> Result<Result<Signal, Skipped>, Rejection> {
        for f in &self.filters {
            let v = text(f.ptr.get(r)).unwrap_or_default();
            if f.regex.is_match(&v) != f.keep {
                return Ok(Err(Skipped::Filtered));
            }
        }
        let Some(target) = self.target_of(r) else {
            return Ok(Err(Skipped::NoTarget));
        };
        if !valid_target_name(&target) {
            return Ok(Err(Skipped::InvalidTarget));
        }
        let total = number(&self.latency, r, limits)?;
        if total.is_none() && matches!(self.latency.ptr.get(r), Any::Missing) {
            return Err(Rejection::new(
                Reason::MissingField,
                format!(
                    "field `{}` (the latency) is missing",
                    self.latency.ptr.as_str()
                ),
            ));
        }
        let sample = match (self.choice, &self.upstream) {
            (LatencyChoice::Upstream, Some(u)) => number(u, r, limits)?,
            _ => total,
        };
        let status = match &self.status {
            None => None,
            Some(p) => status_of(p, r)?,
        };
        let errors = u32::from(status.is_some_and(|s| s >= f64::from(self.error_status)));
        let ts_ms = match &self.time {
            None => at.default_ts,
            Some((p, f)) => match time_of(p, *f, r)? {
                Some(t) => t,
                None => at.default_ts,
            },
        };
        check_time(
            self.time.as_ref().map_or("ts", |(p, _)| p.as_str()),
            ts_ms,
            at.now_ms,
            limits,
        )?;
        let route = self
            .route
            .as_ref()
            .and_then(|t| t.render(r))
            .map(|r| r.chars().take(255).collect());
        Ok(Ok(Signal::Latency(GatewayLatency {
            target,
            route,
            samples_ms: sample.into_iter().collect(),
            errors,
            requests: None,
            ts_ms,
        })))
    }

    fn target_of(&self, r: &Any) -> Option<String> {
        let t = &self.target;
        let found = t.from.render(r).and_then(|v| match &t.regex {
            None => Some(v),
            Some(re) => re.captures(&v).map(|c| {
                let mut out = String::new();
                c.expand(&t.replace, &mut out);
                out
            }),
        });
        let found = match found {
            Some(v) if !t.lookup.is_empty() => t.lookup.get(&v).cloned(),
            other => other,
        };
        found
            .filter(|v| !v.is_empty())
            .or_else(|| t.default.clone())
    }
}

fn compile_target(t: &TargetSpec, key: &str, errors: &mut Vec<MappingError>) -> Option<TargetRule> {
    let Some(from) = &t.from else {
        errors.push(err(
            format!("{key}.from"),
            "is required: a template over fields, for example \"{/service/name}\"",
        ));
        return None;
    };
    let template = Template::parse(from)
        .map_err(|m| errors.push(err(format!("{key}.from"), m)))
        .ok()?;
    let regex = match &t.regex {
        None => None,
        Some(re) => Some(
            anchored(&format!("{key}.regex"), re)
                .map_err(|e| errors.push(e))
                .ok()?,
        ),
    };
    let replace = t.replace.clone().unwrap_or_else(|| match &regex {
        // the first capture group if there is one, else the whole match
        Some(re) if re.captures_len() > 1 => "$1".into(),
        _ => "$0".into(),
    });
    let mut ok = true;
    // What config check can know of the names it will produce.
    if regex.is_none() && t.lookup.is_empty() {
        let literal = template.literal();
        if literal.chars().any(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        }) {
            errors.push(err(
                format!("{key}.from"),
                format!(
                    "{from:?} has text {literal:?} that no target name can contain (a-z, 0-9, '.', '_', '-')"
                ),
            ));
            ok = false;
        }
    }
    for (k, v) in &t.lookup {
        if !valid_target_name(v) {
            errors.push(err(
                format!("{key}.lookup.{k}"),
                format!("{v:?} is not a valid target name (^[a-z0-9][a-z0-9._-]{{0,62}}$)"),
            ));
            ok = false;
        }
    }
    if let Some(d) = &t.default {
        if !valid_target_name(d) {
            errors.push(err(
                format!("{key}.default"),
                format!("{d:?} is not a valid target name (^[a-z0-9][a-z0-9._-]{{0,62}}$)"),
            ));
            ok = false;
        }
    }
    ok.then_some(TargetRule {
        from: template,
        regex,
        replace,
        lookup: t.lookup.clone(),
        default: t.default.clone(),
    })
}

/// A duration field in ms: numbers, or numbers in strings; `"-"`, empty,
/// null, absent and negative values (Kong's -1 without an upstream) are
/// none. Several values (`"0.010, 0.020"`, `"0.010 : 0.020"`) are summed
/// or the last taken.
fn number(f: &Field, r: &Any, limits: &Limits) -> Result<Option<f64>, Rejection> {
    let key = f.ptr.as_str();
    let raw = match f.ptr.get(r) {
        Any::Missing | Any::Null => return Ok(None),
        Any::Num(n) => Some(*n),
        Any::Str(s) => {
            let mut acc: Option<f64> = None;
            for part in s.split([',', ':']) {
                let part = part.trim();
                if part.is_empty() || part == "-" {
                    continue;
                }
                let v: f64 = part.parse().map_err(|_| {
                    Rejection::new(
                        Reason::WrongType,
                        format!(
                            "field `{key}` is {:?}, not a number",
                            s.chars().take(64).collect::<String>()
                        ),
                    )
                })?;
                acc = Some(match (f.multi, acc) {
                    (Multi::Sum, Some(a)) => a + v,
                    _ => v,
                });
            }
            acc
        }
        other => {
            return Err(Rejection::new(
                Reason::WrongType,
                format!(
                    "field `{key}` is {}, expected a number or a number in a string",
                    other.type_name()
                ),
            ))
        }
    };
    let Some(v) = raw else { return Ok(None) };
    if !v.is_finite() {
        return Err(Rejection::new(
            Reason::NonFinite,
            format!("field `{key}` is not finite"),
        ));
    }
    if v < 0.0 {
        return Ok(None);
    }
    let ms = f.unit.to_ms(v);
    if ms > limits.max_latency_ms {
        return Err(Rejection::new(
            Reason::Absurd,
            format!(
                "field `{key}` is {ms} ms, above the limit {}",
                limits.max_latency_ms
            ),
        ));
    }
    Ok(Some(ms))
}

fn status_of(p: &Pointer, r: &Any) -> Result<Option<f64>, Rejection> {
    match p.get(r) {
        Any::Missing | Any::Null => Ok(None),
        Any::Num(n) => Ok(Some(*n)),
        Any::Str(s) if s.is_empty() || s == "-" => Ok(None),
        Any::Str(s) => s.trim().parse::<f64>().map(Some).map_err(|_| {
            Rejection::new(
                Reason::WrongType,
                format!(
                    "field `{}` is {:?}, not a status code",
                    p.as_str(),
                    s.chars().take(32).collect::<String>()
                ),
            )
        }),
        other => Err(Rejection::new(
            Reason::WrongType,
            format!(
                "field `{}` is {}, expected a status code",
                p.as_str(),
                other.type_name()
            ),
        )),
    }
}

/// Epoch numbers (s, ms, us, ns) or RFC 3339; a string of digits is a
/// number. With `Auto`, the magnitude tells the unit (a time after 2001
/// in seconds is above 1e9, in ms above 1e12, and so on).
fn time_of(p: &Pointer, f: TimeFormat, r: &Any) -> Result<Option<Millis>, Rejection> {
    let key = p.as_str();
    let bad = |what: String| Rejection::new(Reason::InvalidTimestamp, what);
    let from_number = |n: f64| -> Result<Millis, Rejection> {
        if !n.is_finite() || n < 0.0 {
            return Err(bad(format!("field `{key}` is {n}, not a time")));
        }
        let ms = match f {
            TimeFormat::EpochS => n * 1e3,
            TimeFormat::EpochMs => n,
            TimeFormat::EpochUs => n / 1e3,
            TimeFormat::EpochNs => n / 1e6,
            _ if n >= 1e17 => n / 1e6,
            _ if n >= 1e14 => n / 1e3,
            _ if n >= 1e11 => n,
            _ => n * 1e3,
        };
        Ok(ms.round() as Millis)
    };
    match p.get(r) {
        Any::Missing | Any::Null => Ok(None),
        Any::Str(s) if s.is_empty() || s == "-" => Ok(None),
        Any::Num(n) if f != TimeFormat::Rfc3339 => from_number(*n).map(Some),
        Any::Str(s) if f != TimeFormat::Rfc3339 && s.trim().parse::<f64>().is_ok() => {
            from_number(s.trim().parse().unwrap_or(f64::NAN)).map(Some)
        }
        Any::Str(s) if matches!(f, TimeFormat::Auto | TimeFormat::Rfc3339) => {
            chrono::DateTime::parse_from_rfc3339(s.trim())
                .map(|t| Some(t.timestamp_millis()))
                .map_err(|e| {
                    bad(format!(
                        "field `{key}` is {:?}, not RFC 3339: {e}",
                        s.chars().take(64).collect::<String>()
                    ))
                })
        }
        other => Err(bad(format!(
            "field `{key}` is {}, not a time in the configured format",
            other.type_name()
        ))),
    }
}

/// The log records of an OTLP/JSON logs message, each as one object: its
/// attributes by key, `body`, `timeUnixNano`, `observedTimeUnixNano`,
/// `severityText`, and the resource's attributes under `resource`.
fn otlp_records(v: Any) -> Result<Vec<Any>, Rejection> {
    let not_otlp =
        |what: &str| Rejection::new(Reason::MissingField, format!("not OTLP/JSON logs: {what}"));
    let Any::Object(top) = v else {
        return Err(not_otlp("the message is not an object"));
    };
    let Some((_, Any::Array(resource_logs))) = top.into_iter().find(|(k, _)| k == "resourceLogs")
    else {
        return Err(not_otlp("no `resourceLogs` array"));
    };
    let mut out = Vec::new();
    for rl in resource_logs {
        let Any::Object(rl) = rl else { continue };
        let mut resource = Vec::new();
        let mut scopes = Vec::new();
        for (k, v) in rl {
            match (k.as_ref(), v) {
                ("resource", Any::Object(r)) => {
                    if let Some((_, Any::Array(attrs))) =
                        r.into_iter().find(|(k, _)| k == "attributes")
                    {
                        resource = key_values(attrs);
                    }
                }
                ("scopeLogs", Any::Array(s)) => scopes = s,
                _ => {}
            }
        }
        for scope in scopes {
            let Any::Object(scope) = scope else { continue };
            let Some((_, Any::Array(records))) = scope.into_iter().find(|(k, _)| k == "logRecords")
            else {
                continue;
            };
            for rec in records {
                let Any::Object(rec) = rec else {
                    out.push(Any::Null);
                    continue;
                };
                let mut flat: Vec<(Cow<str>, Any)> = Vec::new();
                for (k, v) in rec {
                    match (k.as_ref(), v) {
                        ("attributes", Any::Array(attrs)) => flat.extend(key_values(attrs)),
                        ("body", v) => flat.push((k, any_value(v))),
                        (_, v @ (Any::Str(_) | Any::Num(_))) => flat.push((k, v)),
                        _ => {}
                    }
                }
                if !resource.is_empty() {
                    flat.push((Cow::Borrowed("resource"), Any::Object(resource.clone())));
                }
                out.push(Any::Object(flat));
            }
        }
    }
    Ok(out)
}

/// `[{"key": k, "value": AnyValue}]` as object fields.
fn key_values(attrs: Vec<Any>) -> Vec<(Cow<str>, Any)> {
    let mut out = Vec::with_capacity(attrs.len());
    for a in attrs {
        let Any::Object(kv) = a else { continue };
        let mut key = None;
        let mut value = Any::Missing;
        for (k, v) in kv {
            match (k.as_ref(), v) {
                ("key", Any::Str(s)) => key = Some(s),
                ("value", v) => value = any_value(v),
                _ => {}
            }
        }
        if let Some(k) = key {
            if !out.iter().any(|(x, _): &(Cow<str>, Any)| *x == k) {
                out.push((k, value));
            }
        }
    }
    out
}

/// An OTLP AnyValue (`{"stringValue": "x"}`, `{"intValue": "3"}`, ...) as
/// a plain value.
fn any_value(v: Any) -> Any {
    let Any::Object(fields) = v else { return v };
    let Some((k, v)) = fields.into_iter().next() else {
        return Any::Null;
    };
    match (k.as_ref(), v) {
        ("stringValue", v @ Any::Str(_)) => v,
        // int64 is a string in OTLP/JSON
        ("intValue", Any::Str(s)) => s.parse::<f64>().map_or(Any::Str(s), Any::Num),
        ("intValue" | "doubleValue", v @ Any::Num(_)) => v,
        ("boolValue", v @ Any::Bool(_)) => v,
        ("kvlistValue", Any::Object(o)) => match o.into_iter().find(|(k, _)| k == "values") {
            Some((_, Any::Array(vals))) => Any::Object(key_values(vals)),
            _ => Any::Object(Vec::new()),
        },
        ("arrayValue", Any::Object(o)) => match o.into_iter().find(|(k, _)| k == "values") {
            Some((_, Any::Array(vals))) => Any::Array(vals.into_iter().map(any_value).collect()),
            _ => Any::Array(Vec::new()),
        },
        (_, other) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> At {
        At {
            now_ms: 1_700_000_100_000,
            default_ts: 1_700_000_100_000,
        }
    }

    fn spec(toml_text: &str) -> MappingSpec {
        toml::from_str(toml_text).unwrap()
    }

    fn one(m: &Mapping, msg: &str) -> Result<Result<Signal, Skipped>, Rejection> {
        let mut out = m.decode(msg.as_bytes(), at(), &Limits::default());
        assert_eq!(out.len(), 1, "{out:?}");
        out.remove(0)
    }

    fn latency(r: Result<Result<Signal, Skipped>, Rejection>) -> GatewayLatency {
        match r {
            Ok(Ok(Signal::Latency(l))) => l,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let doc: Any = serde_json::from_str(r#"{"a/b": {"m~n": [10, {"x": 1}]}, "": 7}"#).unwrap();
        let p = Pointer::parse("/a~1b/m~0n/1/x").unwrap();
        assert_eq!(p.get(&doc), &Any::Num(1.0));
        assert_eq!(Pointer::parse("/").unwrap().get(&doc), &Any::Num(7.0));
        assert_eq!(
            Pointer::parse("/a~1b/m~0n/5").unwrap().get(&doc),
            &Any::Missing
        );
        assert!(Pointer::parse("a/b")
            .unwrap_err()
            .contains("must start with '/'"));
        assert!(Pointer::parse("/a~2").unwrap_err().contains("'~'"));
    }

    #[test]
    fn units_strings_dashes_and_several_values() {
        let m = Mapping::compile(
            &spec(
                r#"
latency = { pointer = "/t", unit = "s" }
upstream_latency = { pointer = "/u", unit = "s", multi = "sum" }
status = "/status"
target = { from = "{/host}" }
"#,
            ),
            LatencyChoice::Upstream,
            "m",
        )
        .unwrap();
        let l = latency(one(
            &m,
            r#"{"t":"0.250","u":"0.010, 0.020 : 0.005","status":"503","host":"web"}"#,
        ));
        assert_eq!(l.samples_ms.len(), 1);
        assert!((l.samples_ms[0] - 35.0).abs() < 1e-9, "{:?}", l.samples_ms);
        assert_eq!(l.errors, 1);
        // no upstream: the request is not the upstream's
        let l = latency(one(
            &m,
            r#"{"t":"0.001","u":"-","status":"200","host":"web"}"#,
        ));
        assert!(l.samples_ms.is_empty() && l.errors == 0);
        let e = one(&m, r#"{"t":"fast","u":"1","host":"web"}"#).unwrap_err();
        assert_eq!(e.reason, Reason::WrongType);
        assert!(
            e.detail.contains("`/t`") && e.detail.contains("fast"),
            "{e}"
        );
        let e = one(&m, r#"{"u":"1","host":"web"}"#).unwrap_err();
        assert_eq!(e.reason, Reason::MissingField);
    }

    #[test]
    fn targets_from_templates_regexes_lookups_and_defaults() {
        let m = Mapping::compile(
            &spec(
                r#"
latency = "/d"
target = { from = "{/cluster}", regex = 'outbound\|\d+\|[^|]*\|([a-z0-9-]+)\..*' }
"#,
            ),
            LatencyChoice::Total,
            "m",
        )
        .unwrap();
        let l = latency(one(
            &m,
            r#"{"d":5,"cluster":"outbound|80||reviews.default.svc.cluster.local"}"#,
        ));
        assert_eq!(l.target, "reviews");
        assert_eq!(
            one(&m, r#"{"d":5,"cluster":"inbound|9080||"}"#).unwrap(),
            Err(Skipped::NoTarget)
        );
        let m = Mapping::compile(
            &spec(
                r#"
latency = "/d"
target = { from = "{/route_id}", lookup = { "1" = "checkout", "2" = "search" }, default = "other" }
"#,
            ),
            LatencyChoice::Total,
            "m",
        )
        .unwrap();
        assert_eq!(
            latency(one(&m, r#"{"d":1,"route_id":"2"}"#)).target,
            "search"
        );
        assert_eq!(latency(one(&m, r#"{"d":1,"route_id":9}"#)).target, "other");
        let m = Mapping::compile(
            &spec("latency = \"/d\"\ntarget = { from = \"{/svc}\" }"),
            LatencyChoice::Total,
            "m",
        )
        .unwrap();
        assert_eq!(
            one(&m, r#"{"d":1,"svc":"Not A Name"}"#).unwrap(),
            Err(Skipped::InvalidTarget)
        );
    }

    #[test]
    fn only_the_fields_read_are_parsed_and_array_indices_still_work() {
        let m = Mapping::compile(
            &spec(
                r#"
latency = "/l/1"
route = "{/tries/0/ip}"
target = { from = "{/svc/name}" }
"#,
            ),
            LatencyChoice::Total,
            "m",
        )
        .unwrap();
        let msg = r#"{"junk":{"deep":[1,2,{"x":"y"}]},"l":[9,12.5],"tries":[{"ip":"10.0.0.1","port":80},{"ip":"x"}],
                      "svc":{"id":"u","name":"web","name":"later"},"svc":{"name":"second"}}"#;
        let l = latency(one(&m, msg));
        assert_eq!(
            (l.target.as_str(), l.samples_ms.clone()),
            ("web", vec![12.5])
        );
        assert_eq!(l.route.as_deref(), Some("10.0.0.1"));
        // a syntax error in a skipped part is still an error
        let e = one(&m, r#"{"junk":[1,2,,],"l":[1,2],"svc":{"name":"web"}}"#).unwrap_err();
        assert_eq!(e.reason, Reason::MalformedJson);
        let e = one(&m, r#"{"l":[1,2],"svc":{"name":"web"}} trailing"#).unwrap_err();
        assert_eq!(e.reason, Reason::MalformedJson);
    }

    #[test]
    fn filters_keep_and_drop_like_relabeling() {
        let m = Mapping::compile(
            &spec(
                r#"
latency = "/d"
target = { from = "{/svc}" }
filters = [
  { source = "/uri", regex = "/health.*", action = "drop" },
  { source = "/method", regex = "GET|POST", action = "keep" },
]
"#,
            ),
            LatencyChoice::Total,
            "m",
        )
        .unwrap();
        assert!(
            one(&m, r#"{"d":1,"svc":"a","uri":"/orders","method":"GET"}"#)
                .unwrap()
                .is_ok()
        );
        assert_eq!(
            one(&m, r#"{"d":1,"svc":"a","uri":"/healthz","method":"GET"}"#).unwrap(),
            Err(Skipped::Filtered)
        );
        // anchored: "GETX" is not kept, and a missing method is ""
        assert_eq!(
            one(&m, r#"{"d":1,"svc":"a","uri":"/","method":"GETX"}"#).unwrap(),
            Err(Skipped::Filtered)
        );
        assert_eq!(
            one(&m, r#"{"d":1,"svc":"a","uri":"/"}"#).unwrap(),
            Err(Skipped::Filtered)
        );
    }

    #[test]
    fn times_by_format_and_magnitude() {
        let doc: Any = serde_json::from_str(
            r#"{"s": 1700000000.5, "ms": 1700000000500, "ns": "1700000000500000000",
                "iso": "2023-11-14T22:13:20.5Z", "dash": "-"}"#,
        )
        .unwrap();
        for k in ["/s", "/ms", "/ns", "/iso"] {
            let t = time_of(&Pointer::parse(k).unwrap(), TimeFormat::Auto, &doc).unwrap();
            assert_eq!(t, Some(1_700_000_000_500), "{k}");
        }
        let p = Pointer::parse("/dash").unwrap();
        assert_eq!(time_of(&p, TimeFormat::Auto, &doc).unwrap(), None);
        let e = time_of(&Pointer::parse("/iso").unwrap(), TimeFormat::EpochMs, &doc).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidTimestamp);
    }

    #[test]
    fn config_mistakes_name_the_key_and_the_value() {
        let e = Mapping::compile(
            &spec(
                r#"
latency = { pointer = "latency", unit = "minutes" }
target = { from = "{/svc}", regex = "([a-z" }
filters = [{ source = "/x", regex = "(", action = "drop" }]
"#,
            ),
            LatencyChoice::Upstream,
            "source.inputs[0].map",
        )
        .unwrap_err();
        let text = format!("{e:?}");
        for want in [
            "source.inputs[0].map.latency.pointer",
            "source.inputs[0].map.upstream_latency",
            "source.inputs[0].map.target.regex",
            "source.inputs[0].map.filters[0].regex",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let e = Mapping::compile(
            &spec("latency = { pointer = \"/l\", unit = \"minutes\" }\ntarget = { from = \"svc {/svc}\" }"),
            LatencyChoice::Total,
            "m",
        )
        .unwrap_err();
        let text = format!("{e:?}");
        assert!(
            text.contains("m.latency.unit") && text.contains("minutes"),
            "{text}"
        );
        assert!(
            text.contains("m.target.from") && text.contains("svc "),
            "{text}"
        );
    }
}
