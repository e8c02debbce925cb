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
    // every policy shipped in policies/, so a new one cannot be left out
    let mut files: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "lua"))
            .map(|p| format!("policies/{}", p.file_name().unwrap().to_string_lossy()))
            .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let mut args = vec!["policy", "check"];
    args.extend(files.iter().map(String::as_str));
    let (code, out, err) = tidewatch(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("FAIL"));
    // holt_winters 3, hpa 6, latency_slo 5, predictive 7, queue_depth 6,
    // recurring 5
    assert!(out.matches(": ok ").count() >= 32, "{out}");
    for f in &files {
        let name = f.trim_start_matches("policies/");
        assert!(out.contains(&format!("{name}@")), "{f} not checked: {out}");
    }
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

/// `policy check` runs examples under the same deadline as `run`: a
/// pattern that backtracks for hours in C ends in a clear timeout.
#[test]
fn policy_check_returns_within_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.lua");
    std::fs::write(
        &path,
        r#"return { decide = function(ctx)
  return ("a"):rep(40000):find(".-.-.-.-.-.-.-.-.-.-b") or 1
end, examples = { { name = "bomb", expect = 1 } } }"#,
    )
    .unwrap();
    let (code, out, _) = tidewatch(&["policy", "check", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL bomb") && out.contains("(timeout)") && out.contains("deadline of 50ms"),
        "{out}"
    );
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
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("demo.svg");
    let (code, out, err) = tidewatch(&[
        "demo",
        "--speed",
        "150",
        "--duration",
        "5m",
        "--every",
        "60s",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<polyline"), "{svg:.300}");
    assert!(out.contains("summary: 300 virtual s"), "{out}");
    assert!(out.contains("commands applied by the worker"), "{out}");
    let (code, _, err) = tidewatch(&["demo", "--speed", "0"]);
    assert_eq!(code, 64);
    assert!(err.contains("--speed 0"), "{err}");
    assert!(Path::new(env!("CARGO_BIN_EXE_tidewatch")).exists());
}

/// The demo says where its metrics and status are, and they answer
/// there while it runs (issue 21: it bound random ports and did not say
/// which).
#[test]
fn the_demo_prints_where_its_metrics_and_status_answer() {
    use std::io::{BufRead, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["demo", "--speed", "1", "--duration", "10m"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _child = Kill(child);
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("scaler: http://"))
        .expect("the demo names its addresses");
    let urls: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == ')')
        .filter(|w| w.starts_with("http://"))
        .collect();
    assert_eq!(urls.len(), 4, "{line}");
    let get = |url: &str| -> String {
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/v1/targets" } else { path };
        let mut conn = std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("{url}: {e}"));
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{url}: {body:.200}");
        body
    };
    // the scaler's metrics, its status, the worker's metrics
    assert!(get(urls[0]).contains("tidewatch_"), "{}", urls[0]);
    assert!(get(urls[1]).contains("\"name\""), "{}", urls[1]);
    assert!(get(urls[3]).contains("tidewatch_"), "{}", urls[3]);
}

/// Five days, one point a minute: 60 units, and every day from 09:00 a
/// climb to 400 within five minutes, for three hours.
fn daily_burst_trace(path: &Path) {
    let mut text = String::from("ts,value\n");
    let t0: i64 = 1_700_006_400; // a midnight UTC
    for i in 0..5 * 1440 {
        let minute = i % 1440;
        let v = match minute {
            540..=544 => 60.0 + 68.0 * (minute - 539) as f64,
            545..=719 => 400.0,
            _ => 60.0,
        };
        text.push_str(&format!("{},{v}\n", t0 + 60 * i));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn simulate_scores_policies_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("daily.csv");
    daily_burst_trace(&trace);
    let report = dir.path().join("r.json");
    let plot = dir.path().join("p.png");
    let (code, out, err) = tidewatch(&[
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--policy",
        "policies/hpa.lua",
        "--policy",
        "policies/predictive.lua",
        "--capacity",
        "20",
        "--warmup",
        "3d",
        "--step",
        "60s",
        "--report",
        report.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("hpa.lua") && out.contains("predictive.lua"),
        "{out}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["scored_steps"], 2880);
    let p = r["policies"].as_array().unwrap();
    let under = |i: usize| p[i]["under_provisioned_share"].as_f64().unwrap();
    assert!(p[0]["mase"].is_null(), "hpa.lua does not forecast");
    assert!(p[1]["mase"].as_f64().is_some(), "predictive.lua does");
    // the daily climb is learned: the predictive policy is ready for it
    assert!(under(0) > 0.0, "{r}");
    assert!(under(1) < under(0) / 2.0, "{r}");
    assert_eq!(&std::fs::read(&plot).unwrap()[..4], b"\x89PNG");
}

/// `--sweep`: every policy at every value, the baseline at its default,
/// the frontiers (Pareto points marked) and the comparison, in the table,
/// the JSON report and a frontier chart.
#[test]
fn simulate_sweeps_a_parameter_into_frontiers() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("daily.csv");
    daily_burst_trace(&trace);
    let report = dir.path().join("sweep.json");
    let plot = dir.path().join("frontier.svg");
    let (code, out, err) = tidewatch(&[
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--policy",
        "policies/hpa.lua",
        "--policy",
        "policies/predictive.lua",
        "--capacity",
        "20",
        "--warmup",
        "3d",
        "--span",
        "1d",
        "--step",
        "60s",
        "--sweep",
        "target_utilization=0.6,0.8,1.0",
        "--report",
        report.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("baseline policies/hpa.lua at its default")
            || out.contains("baseline hpa.lua at its default"),
        "{out}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["key"], "target_utilization");
    let frontiers = r["frontiers"].as_array().unwrap();
    assert_eq!(frontiers.len(), 2);
    for f in frontiers {
        let points = f["points"].as_array().unwrap();
        assert_eq!(points.len(), 3, "{f}");
        // cheapest first; a lower utilization target costs more
        let cost: Vec<f64> = points
            .iter()
            .map(|p| p["replica_hours"].as_f64().unwrap())
            .collect();
        assert!(cost.windows(2).all(|w| w[0] <= w[1]), "{cost:?}");
        assert_eq!(points[0]["value"], 1.0);
        assert!(!f["pareto"].as_array().unwrap().is_empty());
    }
    // hpa.lua's default utilization is 0.8: its default point is its 0.8 point
    let base = &r["baseline_default"];
    let hpa08 = frontiers[0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["value"] == 0.8)
        .unwrap();
    assert_eq!(base["replica_hours"], hpa08["replica_hours"]);
    let cmp = &r["comparisons"].as_array().unwrap()[0];
    assert!(
        (cmp["share_at_baseline_cost"].as_f64().unwrap()
            - base["under_provisioned_share"].as_f64().unwrap())
        .abs()
            < 1e-9,
        "{cmp}"
    );
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    // a sweep without values is refused by name, and so is a season the
    // forecasters do not know
    let refused = |flag: &str, value: &str| {
        let trace = trace.to_str().unwrap();
        let args = ["simulate", "--trace", trace, "--policy", "policies/hpa.lua"];
        let (code, _, err) =
            tidewatch(&[&args[..], &["--capacity", "20", flag, value, "--quiet"]].concat());
        assert_eq!(code, 64, "{err}");
        err
    };
    let err = refused("--sweep", "target_utilization=");
    assert!(
        err.contains("--sweep target_utilization: give at least one value"),
        "{err}"
    );
    let err = refused("--season", "weekly");
    assert!(
        err.contains("--season") && err.contains("\"weekly\""),
        "{err}"
    );
}

/// A corpus file that is not a trace (a repeated time, as two of NAB's
/// series have at a daylight-saving change) or is shorter than its
/// warm-up is skipped with its error named, and the rest is scored and
/// reported; the run still ends with the usage exit.
#[test]
fn simulate_corpus_skips_a_bad_file_and_scores_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let series = |days: u64| {
        let mut text = String::from("ts,value\n");
        for i in 0..days * 288 {
            let day = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
            text.push_str(&format!(
                "{},{:.3}\n",
                1_600_000_000 + i * 300,
                50.0 - 40.0 * day.cos()
            ));
        }
        text
    };
    std::fs::write(corpus.join("good.csv"), series(9)).unwrap();
    std::fs::write(corpus.join("short.csv"), series(2)).unwrap();
    std::fs::write(corpus.join("repeats.csv"), "ts,value\n0,1\n60,1\n60,2\n").unwrap();
    std::fs::write(corpus.join("notes.txt"), "not a trace, not read").unwrap();
    let report = dir.path().join("r.json");
    let (code, out, err) = tidewatch(&[
        "simulate",
        "--corpus",
        corpus.to_str().unwrap(),
        "--policy",
        "policies/hpa.lua",
        "--sweep",
        "target_utilization=0.8,0.9",
        "--report",
        report.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 64, "{out}{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    let repeats = line("repeats.csv");
    assert!(
        repeats.contains("skipped") && repeats.contains("line 4") && repeats.contains("ts 60"),
        "{out}"
    );
    let short = line("short.csv");
    assert!(
        short.contains("skipped") && short.contains("warm-up"),
        "{out}"
    );
    assert!(line("good.csv").contains("seasonal"), "{out}");
    assert!(out.contains("median reduct%"), "{out}");
    assert!(
        err.contains("2 file(s) of the corpus could not be scored"),
        "{err}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let names = |key: &str| -> Vec<String> {
        r[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names("traces"), ["good.csv"]);
    assert_eq!(names("skipped"), ["repeats.csv", "short.csv"]);
    assert_eq!(r["medians"][0]["traces"], 1);
}

/// The corpus command on generated traces: one line per trace and
/// policy, the medians per kind, every point in the JSON report; the same
/// seed gives the same report.
#[test]
fn simulate_scores_a_generated_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("generated");
    std::fs::create_dir(&written).unwrap();
    let run_with = |name: &str, more: &[&str]| {
        let report = dir.path().join(name);
        let mut args = vec![
            "simulate",
            "--write-generated",
            written.to_str().unwrap(),
            "--policy",
            "policies/hpa.lua",
            "--policy",
            "policies/predictive.lua",
            "--generate",
            "1",
            "--seed",
            "5",
            "--days",
            "9",
            "--sweep",
            "target_utilization=0.7,0.9",
            "--report",
            report.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(more);
        let (code, out, err) = tidewatch(&args);
        assert_eq!(code, 0, "{out}{err}");
        (out, std::fs::read_to_string(&report).unwrap())
    };
    let run = |name: &str| run_with(name, &[]);
    let (out, json) = run("a.json");
    for want in [
        "generated-seasonal-5",
        "generated-bursty-5",
        "median reduct%",
    ] {
        assert!(out.contains(want), "no {want} in {out}");
    }
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    let traces = r["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 2);
    assert_eq!(traces[0]["kind"], "seasonal");
    assert_eq!(traces[1]["kind"], "bursty");
    for t in traces {
        assert_eq!(
            t["sweep"]["frontiers"][1]["points"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    assert_eq!(r["medians"].as_array().unwrap().len(), 4);
    let (_, again) = run("b.json");
    assert_eq!(json, again, "deterministic per seed");
    // --refine: runs between the two settings, toward hpa.lua's cost at
    // its default (0.8), on some trace; never more than asked
    let (_, refined) = run_with("c.json", &["--refine", "2"]);
    let r: serde_json::Value = serde_json::from_str(&refined).unwrap();
    let added: Vec<f64> = r["traces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["sweep"]["frontiers"].as_array().unwrap().clone())
        .flat_map(|f| f["points"].as_array().unwrap().clone())
        .filter_map(|p| p["value"].as_f64())
        .filter(|v| *v != 0.7 && *v != 0.9)
        .collect();
    assert!(
        !added.is_empty() && added.len() <= 2 * 2 * 2 && added.iter().all(|v| *v > 0.7 && *v < 0.9),
        "{added:?}"
    );
    // a written trace runs on its own; --series has every scored step
    let series = dir.path().join("series.csv");
    let (code, out, err) = tidewatch(&[
        "simulate",
        "--trace",
        written.join("generated-seasonal-5.csv").to_str().unwrap(),
        "--policy",
        "policies/hpa.lua",
        "--capacity",
        "20",
        "--step",
        "60s",
        "--warmup",
        "7d",
        "--series",
        series.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let csv = std::fs::read_to_string(&series).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("ts,load,need,hpa"));
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert!(
        out.contains(&format!("{} scored steps", rows.len())),
        "{out}"
    );
    // about two days scored at a minute; need = ceil(load / capacity)
    assert!(
        (2 * 1440 - 60..=2 * 1440).contains(&rows.len()),
        "{}",
        rows.len()
    );
    for r in &rows {
        assert_eq!(r[2], (r[1] / 20.0 - 1e-9).ceil().max(0.0), "{r:?}");
    }
    // the corpus needs a sweep
    let (code, _, err) = tidewatch(&[
        "simulate",
        "--policy",
        "policies/hpa.lua",
        "--generate",
        "1",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--sweep"), "{err}");
}

#[test]
fn simulate_rejects_bad_input_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("bad.csv");
    std::fs::write(&trace, "ts,value\n1700000000,5\n1700000060,lots\n").unwrap();
    let args = |t: &str, cap: &str| {
        tidewatch(&[
            "simulate",
            "--trace",
            t,
            "--policy",
            "policies/hpa.lua",
            "--capacity",
            cap,
        ])
    };
    let (code, _, err) = args(trace.to_str().unwrap(), "10");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("line 3") && err.contains("lots"), "{err}");
    let good = dir.path().join("good.csv");
    std::fs::write(&good, "ts,value\n1700000000,5\n1700000060,6\n").unwrap();
    let (code, _, err) = args(good.to_str().unwrap(), "0");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("capacity 0"), "{err}");
}

/// Issue 16, finding 8: settings that `config check` accepted and that
/// made a scaler useless or unbounded. Each is refused by name now.
#[test]
fn foot_guns_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.lua");
    std::fs::write(&policy, "return { decide = function(ctx) return 1 end }").unwrap();
    let check = |name: &str, engine: &str, target: &str, rest: &str, env: &[(&str, &str)]| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "{rest}\n[engine]\n{engine}\n\n[[targets]]\nname = \"web\"\npolicy = \"p.lua\"\nmax_replicas = 5\n{target}\n"
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tidewatch"))
            .args(["config", "check", path.to_str().unwrap()])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let sink = "[commands]\nkind = \"kafka\"\n[commands.kafka]\nbrokers = \"127.0.0.1:9\"\n";
    let (code, err) = check("sane", "", "", sink, &[]);
    assert_eq!(code, 0, "{err}");
    for (name, engine, target, rest, env, want) in [
        (
            "ttl",
            "command_ttl = \"0s\"",
            "",
            sink,
            vec![],
            "engine.command_ttl: 0s: give at least 1s",
        ),
        (
            "age",
            "max_event_age = \"0s\"",
            "",
            sink,
            vec![],
            "engine.max_event_age: 0s",
        ),
        (
            "batch",
            "",
            "",
            sink,
            vec![("TIDEWATCH__ENGINE__MAX_BATCH", "1e999")],
            "engine.max_batch",
        ),
        (
            "history",
            "",
            "history_step = \"1ms\"\nhistory_span = \"3650days\"",
            sink,
            vec![],
            "is 315360000000 points per metric; at most 200000",
        ),
        (
            "behavior and steps",
            "",
            "max_step_up = 4\n[targets.behavior.scale_up]\nstabilization = \"30s\"",
            sink,
            vec![],
            "targets[0].max_step_up: 4 limits each decision; with [targets.behavior] write behavior.scale_up.policies",
        ),
        (
            "behavior select",
            "",
            "[targets.behavior.scale_down]\nselect = \"never\"",
            sink,
            vec![],
            "targets[0].behavior.scale_down.select: \"never\" is not",
        ),
        (
            "forecasts nowhere",
            "",
            "",
            &*format!("{sink}\n[forecasts]\npublish = true\n"),
            vec![],
            "forecasts.publish: forecasts go to the source's broker",
        ),
        ("nothing", "", "", "", vec![], "nothing feeds the engine"),
    ] {
        let (code, err) = check(name, engine, target, rest, &env);
        assert_eq!(code, 64, "{name}: {err}");
        assert!(err.contains(want), "{name}: wanted {want:?} in {err}");
    }
    let path = dir.path().join("zero.toml");
    std::fs::write(
        &path,
        format!("{sink}\n[[targets]]\nname = \"web\"\npolicy = \"/dev/zero\"\nmax_replicas = 5\n"),
    )
    .unwrap();
    let (code, _, err) = tidewatch(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/dev/zero is not a regular file"), "{err}");
}
