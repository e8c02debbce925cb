//! The deployment files and reference docs against what tidewatch really
//! does: message examples against their JSON Schemas, the Grafana
//! dashboard's and the alerts' queries against the metrics tidewatch
//! exports, the compose stacks' conventions, the Kubernetes RBAC, and
//! every example configuration through `tidewatch config check`.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Fenced blocks of `lang` in `text`, each with the line before it.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<(&'a str, String)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == format!("```{lang}") {
            let before = if i >= 2 { lines[i - 1].trim() } else { "" };
            let before = if before.is_empty() && i >= 2 {
                lines[i - 2].trim()
            } else {
                before
            };
            let mut body = String::new();
            i += 1;
            while i < lines.len() && lines[i].trim() != "```" {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            out.push((before, body));
        }
        i += 1;
    }
    out
}

#[test]
fn every_message_example_validates_against_its_schema() {
    let doc = read("docs/messages.md");
    let examples = blocks(&doc, "json");
    let mut seen = std::collections::BTreeSet::new();
    for (marker, body) in &examples {
        let name = marker
            .strip_prefix("<!-- schema: ")
            .and_then(|m| m.strip_suffix(" -->"))
            .unwrap_or_else(|| panic!("example without a schema marker: {body}"));
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let errs = common::schema::errors(name, &v);
        assert!(errs.is_empty(), "{name}: {errs:?}\n{body}");
        seen.insert(name.to_owned());
    }
    // every schema file has an example, and every example a schema file
    let files: std::collections::BTreeSet<String> = std::fs::read_dir(root().join("docs/schemas"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(seen, files);
    // The schemas reject what the scaler rejects.
    let bad = [
        (
            "queue_depth",
            r#"{"type": "queue_depth", "target": "checkout", "depth": -5}"#,
        ),
        (
            "queue_depth",
            r#"{"type": "queue_depth", "target": "Checkout!", "depth": 5}"#,
        ),
        (
            "gateway_latency",
            r#"{"type": "gateway_latency", "target": "a", "latency_ms": 1, "samples_ms": [1]}"#,
        ),
        (
            "scale_command",
            r#"{"version": 2, "id": "x", "target": "a"}"#,
        ),
        (
            "scale_result",
            r#"{"version": 1, "command_id": "x", "target": "a", "generation": 1, "status": "done", "worker": "w", "finished_at": "2026-11-24T10:00:00Z"}"#,
        ),
    ];
    for (name, body) in bad {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(
            !common::schema::errors(name, &v).is_empty(),
            "{name} accepts {body}"
        );
        // and the scaler's decoder agrees on the signals
        if name == "queue_depth" || name == "gateway_latency" {
            let d =
                tidewatch::event::decode(body.as_bytes(), 0, &tidewatch::event::Limits::default());
            assert!(d.iter().any(|r| r.is_err()), "the decoder accepts {body}");
        }
    }
}

/// The metric names a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(p) = expr[i..].find("tidewatch_") {
        let start = i + p;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.push(expr[start..end].to_owned());
        i = end;
    }
    out
}

fn exported() -> Vec<String> {
    let names = tidewatch::telemetry::Metrics::new().names();
    let mut all = names.clone();
    for n in &names {
        for s in ["_bucket", "_sum", "_count"] {
            all.push(format!("{n}{s}"));
        }
    }
    all
}

#[test]
fn dashboard_and_alerts_query_only_metrics_tidewatch_exports() {
    let exported = exported();
    let d: serde_json::Value =
        serde_json::from_str(&read("compose/grafana/dashboards/tidewatch.json")).unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut used = Vec::new();
    for p in panels {
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel without queries: {p}"));
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "{}: {expr} names no tidewatch metric",
                p["title"]
            );
            for n in names {
                assert!(
                    exported.contains(&n),
                    "{}: {n} is not exported by tidewatch",
                    p["title"]
                );
                used.push(n);
            }
        }
    }
    // the issue's list: signals, windows, decisions, commands and results,
    // provider latency and failures, policy errors, consumer lag
    for want in [
        "tidewatch_events_received_total",
        "tidewatch_target_queue_depth",
        "tidewatch_target_latency_p95_seconds",
        "tidewatch_decisions_total",
        "tidewatch_decision_holds_total",
        "tidewatch_commands_published_total",
        "tidewatch_worker_results_total",
        "tidewatch_provider_call_seconds_bucket",
        "tidewatch_provider_calls_total",
        "tidewatch_policy_errors_total",
        "tidewatch_source_consumer_lag_messages",
    ] {
        assert!(
            used.iter().any(|u| u == want),
            "the dashboard shows no {want}"
        );
    }
    // the gateway's p95 next to the replicas, in one panel
    assert!(
        panels.iter().any(|p| {
            let exprs: Vec<&str> = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap())
                .collect();
            exprs
                .iter()
                .any(|e| e.contains("tidewatch_target_latency_p95_seconds"))
                && exprs
                    .iter()
                    .any(|e| e.contains("tidewatch_target_desired_replicas"))
        }),
        "no panel shows the gateway p95 next to the replicas"
    );
    let var = d["templating"]["list"][0]["definition"].as_str().unwrap();
    for n in metric_names(var) {
        assert!(exported.contains(&n), "{n}");
    }

    let alerts: serde_yaml::Value = serde_yaml::from_str(&read("compose/alerts.yml")).unwrap();
    let rules = alerts["groups"][0]["rules"].as_sequence().unwrap();
    for r in rules {
        let expr = r["expr"].as_str().unwrap();
        for n in metric_names(expr) {
            assert!(
                exported.contains(&n),
                "alert {:?}: {n} is not exported",
                r["alert"]
            );
        }
    }
    // and the check itself can fail
    assert!(!exported.contains(&"tidewatch_no_such_metric".to_string()));
}

#[test]
fn compose_stacks_follow_the_conventions() {
    // the gateway stack's load comes from OpenResty, not `tidewatch loadgen`
    for (file, broker, extra, tidewatch_loadgen) in [
        ("compose/kafka.yaml", "kafka", &[][..], true),
        ("compose/rabbitmq.yaml", "rabbitmq", &[][..], true),
        (
            "compose/gateway.yaml",
            "rabbitmq",
            &["gateway", "service"][..],
            false,
        ),
    ] {
        let mut c: serde_yaml::Value = serde_yaml::from_str(&read(file)).unwrap();
        c.apply_merge().unwrap();
        let services = c["services"].as_mapping().unwrap();
        for s in [
            broker,
            "scaler",
            "worker",
            "loadgen",
            "prometheus",
            "grafana",
        ]
        .iter()
        .chain(extra)
        {
            assert!(services.contains_key(s), "{file}: no service {s}");
        }
        let volumes = c["volumes"].as_mapping().unwrap();
        for (name, svc) in services {
            let name = name.as_str().unwrap();
            // nothing bound beyond localhost
            for p in svc["ports"].as_sequence().into_iter().flatten() {
                let p = p.as_str().unwrap();
                assert!(p.starts_with("127.0.0.1:"), "{file}: {name} publishes {p}");
            }
            // depends_on with conditions only
            if let Some(deps) = svc["depends_on"].as_mapping() {
                for (dep, cond) in deps {
                    let cond = cond["condition"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{file}: {name} -> {dep:?} without a condition"));
                    assert!(cond.starts_with("service_"), "{cond}");
                    if cond == "service_healthy" {
                        assert!(
                            !services[dep]["healthcheck"].is_null(),
                            "{file}: {dep:?} has no health check"
                        );
                    }
                }
            }
            // long-running services have health checks, but the generator
            let one_shot = svc["restart"].as_str() == Some("no");
            if !one_shot && name != "loadgen" {
                assert!(
                    !svc["healthcheck"].is_null(),
                    "{file}: {name} has no health check"
                );
            }
            // named volumes are declared; bind mounts exist in the repo
            for v in svc["volumes"].as_sequence().into_iter().flatten() {
                let src = v.as_str().unwrap().split(':').next().unwrap();
                if src.starts_with('.') {
                    assert!(root().join("compose").join(src).exists(), "{file}: {src}");
                } else {
                    assert!(
                        volumes.contains_key(src),
                        "{file}: volume {src} not declared"
                    );
                }
            }
        }
        // the tidewatch services run the image's binary on the mounted config
        for (svc, sub) in [
            ("scaler", "run"),
            ("worker", "worker"),
            ("loadgen", "loadgen"),
        ] {
            if svc == "loadgen" && !tidewatch_loadgen {
                continue;
            }
            let cmd: Vec<&str> = services[svc]["command"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert_eq!(cmd[0], sub, "{file}: {svc}");
        }
    }
    let k: serde_yaml::Value = serde_yaml::from_str(&read("compose/kafka.yaml")).unwrap();
    assert!(k["services"]["kafka"]["image"]
        .as_str()
        .unwrap()
        .starts_with("apache/kafka:"));
    assert_eq!(
        k["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"],
        "broker,controller"
    );
    for file in ["compose/rabbitmq.yaml", "compose/gateway.yaml"] {
        let r: serde_yaml::Value = serde_yaml::from_str(&read(file)).unwrap();
        assert!(r["services"]["rabbitmq"]["image"]
            .as_str()
            .unwrap()
            .ends_with("-management"));
    }
    // the gateway stack: OpenResty with the emitter in front of the demo
    // service, the worker scaling it over HTTP
    let mut g: serde_yaml::Value = serde_yaml::from_str(&read("compose/gateway.yaml")).unwrap();
    g.apply_merge().unwrap();
    let mounts = |svc: &str| -> Vec<String> {
        g["services"][svc]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(mounts("gateway")
        .iter()
        .any(|m| m.starts_with("../gateway/nginx/tidewatch.lua:")));
    for svc in ["gateway", "service", "loadgen"] {
        assert!(g["services"][svc]["image"]
            .as_str()
            .unwrap()
            .starts_with("openresty/openresty:"));
        assert!(mounts(svc)
            .iter()
            .any(|m| m.starts_with(&format!("./gateway/{svc}.conf:"))
                && m.contains("/usr/local/openresty/nginx/conf/nginx.conf")));
    }
    let worker = read("compose/tidewatch/worker-gateway.toml");
    assert!(worker.contains("http://service:8080/scale"));
    assert!(read("compose/gateway/gateway.conf").contains("server service:8080;"));
    assert!(read("compose/gateway/loadgen.conf").contains("\"gateway\", 8080"));
}

#[test]
fn kubernetes_rbac_grants_the_worker_scale_and_nothing_more() {
    let docs: Vec<serde_yaml::Value> =
        serde_yaml::Deserializer::from_str(&read("deploy/kubernetes/rbac.yaml"))
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    let roles: Vec<&serde_yaml::Value> = docs.iter().filter(|d| d["kind"] == "Role").collect();
    assert!(docs
        .iter()
        .all(|d| d["kind"] != "ClusterRole" && d["kind"] != "ClusterRoleBinding"));
    assert!(!roles.is_empty());
    for r in &roles {
        let rules = r["rules"].as_sequence().unwrap();
        assert_eq!(rules.len(), 1, "{r:?}");
        let strs = |k: &str| -> Vec<&str> {
            rules[0][k]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect()
        };
        assert_eq!(strs("apiGroups"), ["apps"]);
        assert_eq!(
            strs("resources"),
            ["deployments/scale", "statefulsets/scale"]
        );
        assert_eq!(strs("verbs"), ["get", "patch"]);
    }
    // every namespace the shipped worker config scales in has a Role and a
    // RoleBinding for the worker's ServiceAccount
    let cm: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/kubernetes/config.yaml")).unwrap();
    let worker = cm["data"]["worker.toml"].as_str().unwrap();
    let namespaces: Vec<&str> = worker
        .split("namespace = \"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert!(!namespaces.is_empty());
    for ns in namespaces {
        assert!(
            roles.iter().any(|r| r["metadata"]["namespace"] == ns),
            "no Role in {ns}"
        );
        assert!(
            docs.iter().any(|d| d["kind"] == "RoleBinding"
                && d["metadata"]["namespace"] == ns
                && d["subjects"][0]["name"] == "tidewatch-worker"),
            "no RoleBinding in {ns}"
        );
    }
    let manifest = read("deploy/kubernetes/worker.yaml");
    let deploy: serde_yaml::Value =
        serde_yaml::from_str(manifest.split("---").next().unwrap()).unwrap();
    assert_eq!(
        deploy["spec"]["template"]["spec"]["serviceAccountName"],
        "tidewatch-worker"
    );
}

/// `tidewatch config check` on `text`, written next to a `policies` link
/// to the bundled policies (as the image has /etc/tidewatch/policies).
fn config_check(what: &str, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("etc");
    std::fs::create_dir(&sub).unwrap();
    std::os::unix::fs::symlink(root().join("policies"), sub.join("policies")).unwrap();
    let file = sub.join("tidewatch.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["config", "check"])
        .arg(&file)
        .env(
            "TIDEWATCH_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: config check failed:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const BASE_SOURCE: &str = "[source]\nkind = \"kafka\"\nkafka = { brokers = \"127.0.0.1:9092\" }\n[commands]\nkind = \"kafka\"\nkafka = { brokers = \"127.0.0.1:9092\" }\n";
const BASE_AMQP: &str = "[source]\nkind = \"amqp\"\namqp = { url_env = \"TIDEWATCH_AMQP_URL\" }\n[commands]\nkind = \"amqp\"\namqp = { url_env = \"TIDEWATCH_AMQP_URL\" }\n";
const BASE_TARGET: &str = "\n[[targets]]\nname = \"checkout\"\npolicy = \"policies/queue_depth.lua\"\nmax_replicas = 10\nparams = { per_replica_depth = 100 }\n";

#[test]
fn every_example_configuration_in_the_docs_passes_config_check() {
    let mut checked = 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.push(root().join("README.md"));
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (_, body) in blocks(&text, "toml") {
            // A fragment is completed with a minimal source or target, the
            // way the doc around it describes.
            let worker = body.contains("[worker]")
                || body.contains("provider = \"process\"\nprocess")
                || body.contains("kubernetes = {");
            let mut full = body.replace("../policies/", "policies/");
            if !worker {
                if !full.contains("[source]") {
                    let base = if full.contains("amqp") {
                        BASE_AMQP
                    } else {
                        BASE_SOURCE
                    };
                    full = format!("{base}{full}");
                }
                if !full.contains("[[targets]]") {
                    full.push_str(BASE_TARGET);
                }
            }
            config_check(&format!("{}", f.display()), &full);
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked}");
    // the Kubernetes manifests' configurations, too
    let cm: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/kubernetes/config.yaml")).unwrap();
    for key in ["scaler.toml", "worker.toml"] {
        config_check(key, cm["data"][key].as_str().unwrap());
    }
    // and a broken one fails, naming the key
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "{BASE_SOURCE}\n[[targets]]\nname = \"x\"\npolicy = \"nope.lua\"\nmax_replicas = 0\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("targets[0]"),
        "{out:?}"
    );
}

#[test]
fn dockerfile_is_multi_stage_small_and_non_root() {
    let text = read("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains(" AS build"), "{froms:?}");
    let last = froms.last().unwrap();
    assert!(last.contains("-slim"), "a small runtime image: {last}");
    // the runtime stage: the binary from the build stage, a non-root user
    let runtime = &text[text.rfind("\nFROM ").unwrap()..];
    assert!(runtime.contains("COPY --from=build /src/target/release/tidewatch "));
    let user = runtime
        .lines()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "runs as root");
    assert!(runtime.contains("ENTRYPOINT [\"/usr/local/bin/tidewatch\"]"));
    // what it copies exists, and it builds the binary Cargo.toml names
    for l in &lines {
        if let Some(rest) = l.strip_prefix("COPY ") {
            if rest.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(
                    root().join(src).exists(),
                    "COPY {src}: not in the repository"
                );
            }
        }
    }
    assert!(read("Cargo.toml").contains("[[bin]]\nname = \"tidewatch\""));
    assert!(text.contains("cargo build --release --locked --bin tidewatch"));
}

#[test]
fn kubernetes_manifests_fit_together() {
    let mut kinds = Vec::new();
    let cm: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/kubernetes/config.yaml")).unwrap();
    for (file, key, port) in [
        ("deploy/kubernetes/scaler.yaml", "scaler.toml", 9898),
        ("deploy/kubernetes/worker.yaml", "worker.toml", 9899),
    ] {
        let text = read(file);
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        for d in &docs {
            assert!(
                d["apiVersion"].is_string() && d["metadata"]["name"].is_string(),
                "{file}"
            );
            kinds.push(d["kind"].as_str().unwrap().to_owned());
        }
        let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let pod = &dep["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{file}");
        let c = &pod["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args.last().unwrap(), &format!("/etc/tidewatch/{key}"));
        let mount = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["subPath"] == key);
        assert!(mount.is_some(), "{file}: {key} not mounted");
        assert_eq!(c["ports"][0]["containerPort"], port);
        let config = cm["data"][key].as_str().unwrap();
        assert!(
            config.contains(&format!("listen = \"0.0.0.0:{port}\"")),
            "{key} listens elsewhere"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    }
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/kubernetes/kustomization.yaml")).unwrap();
    for r in kustomization["resources"].as_sequence().unwrap() {
        assert!(root()
            .join("deploy/kubernetes")
            .join(r.as_str().unwrap())
            .exists());
    }
    assert!(kinds.contains(&"PersistentVolumeClaim".to_string()));
}
