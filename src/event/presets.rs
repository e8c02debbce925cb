//! The built-in input formats: each is a [`MappingSpec`] written in the
//! same TOML a user writes under `[source.inputs.map]`, so that
//! docs/gateways.md can show exactly what a preset means. Field names and
//! units are the gateways' own (the sources are named per preset).

use super::mapping::MappingSpec;

/// The input formats a source can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FormatName {
    /// tidewatch's own messages (DESIGN.md), the default.
    #[default]
    Tidewatch,
    Kong,
    Apisix,
    Envoy,
    Otlp,
    Traefik,
    Nginx,
    /// Everything from `map`.
    Mapped,
}

impl FormatName {
    pub fn name(self) -> &'static str {
        match self {
            FormatName::Tidewatch => "tidewatch",
            FormatName::Kong => "kong",
            FormatName::Apisix => "apisix",
            FormatName::Envoy => "envoy",
            FormatName::Otlp => "otlp",
            FormatName::Traefik => "traefik",
            FormatName::Nginx => "nginx",
            FormatName::Mapped => "mapped",
        }
    }

    /// The preset's mapping, as TOML (empty for `mapped`; none for
    /// `tidewatch`, which is not a mapping).
    pub fn preset_toml(self) -> Option<&'static str> {
        match self {
            FormatName::Tidewatch => None,
            FormatName::Mapped => Some(""),
            FormatName::Kong => Some(KONG),
            FormatName::Apisix => Some(APISIX),
            FormatName::Envoy => Some(ENVOY),
            FormatName::Otlp => Some(OTLP),
            FormatName::Traefik => Some(TRAEFIK),
            FormatName::Nginx => Some(NGINX),
        }
    }

    /// The preset's mapping.
    pub fn preset(self) -> Option<MappingSpec> {
        self.preset_toml()
            .map(|t| toml::from_str(t).expect("built-in presets parse (tested)"))
    }

    pub const ALL: [FormatName; 8] = [
        FormatName::Tidewatch,
        FormatName::Kong,
        FormatName::Apisix,
        FormatName::Envoy,
        FormatName::Otlp,
        FormatName::Traefik,
        FormatName::Nginx,
        FormatName::Mapped,
    ];
}

/// Kong's log serializer (`kong/pdk/log.lua`, `serialize()`), as the
/// kafka-log, http-log, file-log and tcp-log plugins write it: one object
/// per request; `latencies.request` is the whole request in ms,
/// `latencies.proxy` the upstream's part (-1 when no upstream answered),
/// `started_at` epoch ms.
pub const KONG: &str = r#"
latency = { pointer = "/latencies/request", unit = "ms" }
upstream_latency = { pointer = "/latencies/proxy", unit = "ms" }
status = "/response/status"
time = { pointer = "/started_at", format = "epoch_ms" }
route = "{/route/name}"
target = { from = "{/service/name}" }
"#;

/// APISIX's log format (`apisix/utils/log-util.lua`, `get_full_log`), as
/// kafka-logger batches it: a JSON array of entries; `latency` in ms (a
/// float), `upstream_latency` ms (absent without an upstream),
/// `start_time` epoch ms. Routes and services are ids: map them to
/// targets with `target.lookup`.
pub const APISIX: &str = r#"
latency = { pointer = "/latency", unit = "ms" }
upstream_latency = { pointer = "/upstream_latency", unit = "ms" }
status = "/response/status"
time = { pointer = "/start_time", format = "epoch_ms" }
route = "{/route_id}"
target = { from = "{/route_id}" }
"#;

/// Envoy's JSON access log with Istio's default keys (`json_format`:
/// values are strings, "-" when unset; `typed_json_format` gives
/// numbers): `duration` ms, `upstream_service_time` ms,
/// `response_code`, `start_time` RFC 3339, `upstream_cluster`
/// (`outbound|80||reviews.default.svc.cluster.local`: the service is the
/// first label of the host).
pub const ENVOY: &str = r#"
latency = { pointer = "/duration", unit = "ms" }
upstream_latency = { pointer = "/upstream_service_time", unit = "ms" }
status = "/response_code"
time = { pointer = "/start_time", format = "rfc3339" }
route = "{/route_name}"
target = { from = "{/upstream_cluster}", regex = 'outbound\|[0-9]+\|[^|]*\|([a-z0-9]([a-z0-9-]*[a-z0-9])?)\..*', replace = "$1" }
"#;

/// OTLP/JSON logs as the OpenTelemetry Collector's Kafka exporter writes
/// them (`encoding = "otlp_json"`), from Envoy's OpenTelemetry access
/// logger with the same attribute keys as `envoy`; the record's
/// `timeUnixNano` is its time.
pub const OTLP: &str = r#"
records = "otlp"
latency = { pointer = "/duration", unit = "ms" }
upstream_latency = { pointer = "/upstream_service_time", unit = "ms" }
status = "/response_code"
time = { pointer = "/timeUnixNano", format = "epoch_ns" }
route = "{/route_name}"
target = { from = "{/upstream_cluster}", regex = 'outbound\|[0-9]+\|[^|]*\|([a-z0-9]([a-z0-9-]*[a-z0-9])?)\..*', replace = "$1" }
"#;

/// Traefik's JSON access log (`accessLog.format = "json"`), one object per
/// line as a log shipper sends it: `Duration` and `OriginDuration` in
/// ns, `DownstreamStatus`, `StartUTC` RFC 3339 with ns, `ServiceName` as
/// `name@provider`.
pub const TRAEFIK: &str = r#"
latency = { pointer = "/Duration", unit = "ns" }
upstream_latency = { pointer = "/OriginDuration", unit = "ns" }
status = "/DownstreamStatus"
time = { pointer = "/StartUTC", format = "rfc3339" }
route = "{/RouterName}"
target = { from = "{/ServiceName}", regex = '([a-z0-9][a-z0-9-]*)@.*', replace = "$1" }
"#;

/// nginx / OpenResty with the `log_format` of docs/gateways.md
/// (`escape=json`): `request_time` and `upstream_response_time` are
/// seconds in strings (several upstreams: "0.010, 0.020", redirects:
/// "0.010 : 0.020", none: "-"), `msec` epoch seconds, `host` the target.
pub const NGINX: &str = r#"
latency = { pointer = "/request_time", unit = "s" }
upstream_latency = { pointer = "/upstream_response_time", unit = "s", multi = "sum" }
status = "/status"
time = { pointer = "/msec", format = "epoch_s" }
route = "{/uri}"
target = { from = "{/host}" }
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::mapping::{LatencyChoice, Mapping};

    #[test]
    fn every_preset_parses_and_compiles_with_both_latency_choices() {
        for f in FormatName::ALL {
            let Some(spec) = f.preset() else { continue };
            if f == FormatName::Mapped {
                assert!(Mapping::compile(&spec, LatencyChoice::Total, "m").is_err());
                continue;
            }
            for choice in [LatencyChoice::Total, LatencyChoice::Upstream] {
                Mapping::compile(&spec, choice, "m")
                    .unwrap_or_else(|e| panic!("{}: {e:?}", f.name()));
            }
        }
    }
}
