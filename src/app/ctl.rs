//! `tidewatch ctl`: steer a running scaler's targets. Each action publishes
//! one control message (docs/messages.md, "Control") where the scaler
//! named by the configuration file reads its signals, so the broker's
//! ACLs decide who may steer; `status` reads the scaler's read-only status
//! endpoint (`GET /v1/targets`). Mistakes a scaler would refuse (a target
//! not in the file, a pin outside its bounds, an `until` in the past) are
//! refused here first, by name.

use std::time::Duration;

use serde_json::{json, Value};

use crate::clock::{rfc3339, Millis};
use crate::config::Config;
use crate::event::ControlAction;
use crate::lifecycle::StartError;
use crate::source::sink::Sink;

/// One control to publish.
#[derive(Debug, Clone)]
pub struct Order {
    pub action: ControlAction,
    pub target: String,
    pub replicas: Option<u32>,
    /// A duration from now (`30m`) or an RFC 3339 time.
    pub until: Option<String>,
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// `until` as a time: `30m` from `now_ms`, or an RFC 3339 time after it.
pub fn until_ms(until: &str, now_ms: Millis) -> Result<Millis, String> {
    let t = match crate::settings::parse_duration(until) {
        Ok(d) => now_ms + d.as_millis() as i64,
        Err(_) => chrono::DateTime::parse_from_rfc3339(until)
            .map_err(|e| {
                format!("--until {until:?} is neither a duration like \"30m\" nor an RFC 3339 time: {e}")
            })?
            .timestamp_millis(),
    };
    if t <= now_ms {
        return Err(format!("--until {until:?} is in the past"));
    }
    Ok(t)
}

/// The control message of `order` at `now_ms`, checked against `cfg`.
pub fn message(cfg: &Config, order: &Order, now_ms: Millis) -> Result<Value, StartError> {
    let t = cfg
        .targets
        .iter()
        .find(|t| t.name == order.target)
        .ok_or_else(|| {
            let names: Vec<&str> = cfg.targets.iter().map(|t| t.name.as_str()).collect();
            StartError::usage(format!(
                "target {:?} is not in this configuration (its targets: {})",
                order.target,
                names.join(", ")
            ))
        })?;
    if order.action == ControlAction::Pin {
        let n = order
            .replicas
            .ok_or_else(|| StartError::usage("pin needs a replica count"))?;
        if n < t.min_replicas || n > t.max_replicas {
            return Err(StartError::usage(format!(
                "pin {n}: {:?} is bounded to [{}, {}]; a pin outside is refused",
                t.name, t.min_replicas, t.max_replicas
            )));
        }
    }
    let until = match &order.until {
        Some(u) => Some(until_ms(u, now_ms).map_err(StartError::usage)?),
        None => None,
    };
    let mut m = json!({
        "type": "control",
        "target": order.target,
        "action": order.action.code(),
        "ts": rfc3339(now_ms),
    });
    if let Some(n) = order
        .replicas
        .filter(|_| order.action == ControlAction::Pin)
    {
        m["replicas"] = json!(n);
    }
    if let Some(u) = until {
        m["until"] = json!(rfc3339(u));
    }
    if let Some(by) = &order.by {
        m["by"] = json!(by);
    }
    if let Some(r) = &order.reason {
        m["reason"] = json!(r);
    }
    Ok(m)
}

/// Publishes `order` where `cfg`'s scaler reads signals; returns the
/// message and whether the broker routed it to a scaler (RabbitMQ).
pub async fn publish(
    cfg: &Config,
    order: &Order,
    now_ms: Millis,
) -> Result<(Value, bool), StartError> {
    let m = message(cfg, order, now_ms)?;
    let sink = Sink::open(&cfg.source, "ctl", None).await?;
    let routed = sink
        .send("control", &order.target, m.to_string().as_bytes())
        .await?;
    Ok((m, routed))
}

/// The scaler's status endpoint from its `metrics.listen` (a wildcard
/// address is reached on loopback).
pub fn status_url(cfg: &Config) -> String {
    let listen = cfg
        .metrics
        .listen
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    format!("http://{listen}")
}

/// `GET /v1/targets[/{target}]` of the scaler at `base`.
pub async fn status(base: &str, target: Option<&str>) -> Result<Value, StartError> {
    let url = match target {
        Some(t) => format!("{base}/v1/targets/{t}"),
        None => format!("{base}/v1/targets"),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| StartError::fault(e.to_string()))?;
    let resp = client.get(&url).send().await.map_err(|e| {
        StartError::fault(format!(
            "{url}: {e} (is the scaler running, and is metrics.listen its address?)"
        ))
    })?;
    let code = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| StartError::fault(format!("{url}: {e}")))?;
    if !code.is_success() {
        return Err(StartError::usage(format!(
            "{url}: HTTP {code}: {}",
            body.trim()
        )));
    }
    serde_json::from_str(&body).map_err(|e| StartError::fault(format!("{url}: not JSON: {e}")))
}

/// The status as a table: one line per target.
pub fn table(status: &Value) -> String {
    let targets: Vec<&Value> = match status.get("targets").and_then(Value::as_array) {
        Some(all) => all.iter().collect(),
        None => vec![status],
    };
    let mut out = format!(
        "{:<24} {:>8} {:>8}  {:<6} {:<40} {}\n",
        "TARGET", "REPLICAS", "DESIRED", "STALE", "CONTROL", "LAST REASON"
    );
    for t in targets {
        let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        let control: Vec<String> = ["mode", "dry_run"]
            .iter()
            .filter_map(|k| t["control"][k]["description"].as_str().map(str::to_owned))
            .collect();
        out.push_str(&format!(
            "{:<24} {:>8} {:>8}  {:<6} {:<40} {}\n",
            s(&t["name"]),
            t["replicas"],
            t["last_decision"]["desired"]
                .as_u64()
                .map_or("-".into(), |d| d.to_string()),
            if t["stale"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            if control.is_empty() {
                "-".into()
            } else {
                control.join(", ")
            },
            s(&t["last_decision"]["reason"]),
        ));
    }
    out
}
