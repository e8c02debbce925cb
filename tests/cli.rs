//! The `tidewatch` binary as a user runs it: exit codes and messages.

use std::path::Path;
use std::process::Command;

fn tidewatch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("TIDEWATCH_AMQP_URL")
        .output()
        .expect("tidewatch runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bundled_configs_pass_config_check() {
    for file in [
        "config/kafka.toml",
        "config/rabbitmq.toml",
        "config/worker.toml",
    ] {
        let (code, out, err) = tidewatch(&["config", "check", file]);
        assert_eq!(code, 0, "{file}: {out}{err}");
        assert!(out.contains("ok ("), "{out}");
    }
    // The unset secret variable is named, as a warning.
    let (_, _, err) = tidewatch(&["config", "check", "config/rabbitmq.toml"]);
    assert!(
        err.contains("warning") && err.contains("TIDEWATCH_AMQP_URL"),
        "{err}"
    );
}

#[test]
fn a_bad_config_exits_64_naming_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[[targets]]
name = "web"
policy = "nowhere.lua"
min_replicas = 3
max_replicas = 2
"#,
    )
    .unwrap();
    let (code, _, err) = tidewatch(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("targets[0].min_replicas: 3 is above max_replicas 2"),
        "{err}"
    );
    assert!(
        err.contains("targets[0].policy") && err.contains("nowhere.lua does not exist"),
        "{err}"
    );
    let (code, _, err) = tidewatch(&["config", "check", "/no/such/file.toml"]);
    assert_eq!(code, 64, "{err}");
    // `run` refuses the same file before connecting to anything.
    let (code, _, err) = tidewatch(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("targets[0].min_replicas"), "{err}");
}

#[test]
fn bundled_policies_pass_their_examples() {
    let (code, out, err) = tidewatch(&[
        "policy",
        "check",
        "policies/queue_depth.lua",
        "policies/latency_slo.lua",
        "policies/hpa.lua",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("FAIL"));
    assert!(out.matches(": ok ").count() >= 15, "{out}");
}

#[test]
fn a_failing_example_fails_policy_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.lua");
    std::fs::write(
        &path,
        "return { decide = function(ctx) return 2 end, examples = { { name = 'want three', expect = 3 } } }",
    )
    .unwrap();
    let (code, out, _) = tidewatch(&["policy", "check", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("FAIL want three: expected 3, got 2"), "{out}");
    std::fs::write(&path, "os.execute('true') return {}").unwrap();
    let (code, _, err) = tidewatch(&["policy", "check", path.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("os.execute") || err.contains("nil"), "{err}");
}

#[test]
fn json_logs_with_the_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args([
            "--log-format",
            "json",
            "demo",
            "--speed",
            "120",
            "--duration",
            "2m",
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let mut decisions = 0;
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["fields"]["message"] == "scale decision" {
            assert!(v["fields"]["reason"].is_string(), "{line}");
            decisions += 1;
        }
    }
    assert!(decisions > 0, "the demo logs its scale decisions: {err}");
}

#[test]
fn demo_runs_and_summarizes() {
    let (code, out, err) = tidewatch(&[
        "demo",
        "--speed",
        "150",
        "--duration",
        "5m",
        "--every",
        "60s",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("summary: 300 virtual s"), "{out}");
    assert!(out.contains("commands applied by the worker"), "{out}");
    let (code, _, err) = tidewatch(&["demo", "--speed", "0"]);
    assert_eq!(code, 64);
    assert!(err.contains("--speed 0"), "{err}");
    assert!(Path::new(env!("CARGO_BIN_EXE_tidewatch")).exists());
}
