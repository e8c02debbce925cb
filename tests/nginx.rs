//! A real gateway end to end: Debian's nginx with its Lua module serves
//! real HTTP requests to a local upstream whose latency the test raises.
//! Two paths from the same nginx to `tidewatch run` through RabbitMQ:
//! - the emitter (gateway/nginx/tidewatch.lua) publishes one
//!   `gateway_latency` message per target per second through the
//!   management plugin's HTTP API;
//! - the per-request JSON access log (the `log_format` of
//!   docs/gateways.md), shipped line by line to the exchange, read with
//!   `format = "nginx"`.
//!
//! Both targets scale up when the upstream slows down, and the commands
//! arrive. scripts/test installs nginx, libnginx-mod-http-lua and
//! lua-cjson; under CI=true a missing one fails the test.

mod common;

use std::io::{BufRead, Seek};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::amqp::{self as mq, Names};
use tidewatch::command::ScaleCommand;

const LUA_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_lua_module.so";
const NDK_MODULE: &str = "/usr/lib/nginx/modules/ndk_http_module.so";
const CJSON_DIR: &str = "/usr/lib/x86_64-linux-gnu/lua/5.1";

/// nginx with its Lua module, or None outside CI when it is missing.
fn nginx() -> Option<&'static str> {
    let ok = std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
        && std::path::Path::new(LUA_MODULE).exists()
        && std::path::Path::new(&format!("{CJSON_DIR}/cjson.so")).exists();
    match ok {
        true => Some("nginx"),
        false if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("nginx with libnginx-mod-http-lua and lua-cjson is required under CI: scripts/test installs them")
        }
        false => {
            eprintln!("nginx with its Lua module is not installed: run scripts/test");
            None
        }
    }
}

/// The management API's host, port, user and password from
/// TIDEWATCH_TEST_AMQP_MANAGEMENT (`http://user:pass@host:port`).
fn management() -> (String, u16, String, String) {
    let m = std::env::var("TIDEWATCH_TEST_AMQP_MANAGEMENT")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into());
    let u = reqwest::Url::parse(&m).unwrap();
    (
        u.host_str().unwrap().to_owned(),
        u.port().unwrap_or(15672),
        u.username().to_owned(),
        u.password().unwrap_or("").to_owned(),
    )
}

const POLICY: &str = r#"return { decide = function(ctx)
  local l = ctx.window("latency_ms", "5s")
  if not l or not l.p95 then return nil end
  return { replicas = math.max(1, math.ceil(l.p95 / 50)), reason = "p95 " .. l.p95 }
end }"#;

struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM: the master stops its workers (a KILL would orphan them)
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// The last lines of a log, for a failure's message.
fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_nginx_scales_targets_through_rabbitmq_by_emitter_and_by_json_logs() {
    let Some(url) = mq::broker() else { return };
    let Some(nginx_bin) = nginx() else { return };
    let n = Names::new();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    std::fs::write(dir.path().join("p.lua"), POLICY).unwrap();
    let cfg_path = dir.path().join("c.toml");
    let target = |name: &str| {
        format!(
            "\n[[targets]]\nname = \"{name}\"\npolicy = \"p.lua\"\nmax_replicas = 50\nwindows = [\"5s\"]\nstabilization_down = \"0s\"\ncooldown_up = \"0s\"\n"
        )
    };
    std::fs::write(
        &cfg_path,
        format!(
            "{}\n[[source.inputs]]\nbinding = \"nginx.access\"\nformat = \"nginx\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n[engine]\nmin_eval_interval = \"0s\"\n{}{}",
            n.toml(&url),
            target("shop"),
            target("search")
        ),
    )
    .unwrap();
    let _scaler = common::spawn_run(&cfg_path, Some(&dir.path().join("scaler.log")));
    let conn = mq::connect(&url).await;
    mq::wait_for_queue(&conn, &n.queue).await;
    mq::wait_for_queue(&conn, &n.workers).await;

    // nginx: an upstream whose latency /delay sets, a gateway with the
    // emitter (Host: shop), and one with the JSON access log (Host: search)
    let (up, emitting, logging) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let (mhost, mport, muser, mpass) = management();
    let access_log = dir.path().join("access.log");
    let module_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway/nginx");
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let conf = format!(
        r#"
load_module {NDK_MODULE};
load_module {LUA_MODULE};
daemon off;
pid {pid};
error_log {err} info;
events {{ worker_connections 512; }}
http {{
  access_log off;
  lua_package_path "{module_dir}/?.lua;/usr/share/lua/5.1/?.lua;;";
  lua_package_cpath "{CJSON_DIR}/?.so;;";
  lua_shared_dict tidewatch 16m;
  lua_shared_dict upstream 1m;
  init_worker_by_lua_block {{
    require("tidewatch").init({{ rabbitmq = {{ host = "{mhost}", port = {mport}, user = "{muser}", password = "{mpass}", exchange = "{exchange}" }} }})
  }}
  log_format tidewatch escape=json '{{"msec":"$msec","host":"$host","uri":"$uri",'
      '"status":"$status","request_time":"$request_time",'
      '"upstream_response_time":"$upstream_response_time","upstream_addr":"$upstream_addr"}}';
  server {{
    listen 127.0.0.1:{up};
    location = /delay {{ content_by_lua_block {{ ngx.shared.upstream:set("ms", tonumber(ngx.var.arg_ms)) ngx.say("ok") }} }}
    location / {{ content_by_lua_block {{ ngx.sleep((ngx.shared.upstream:get("ms") or 0) / 1000) ngx.say("hello") }} }}
  }}
  server {{
    listen 127.0.0.1:{emitting};
    location / {{
      proxy_pass http://127.0.0.1:{up};
      log_by_lua_block {{ require("tidewatch").log() }}
    }}
    location = /tidewatch {{ content_by_lua_block {{ ngx.say(require("tidewatch").published()) }} }}
  }}
  server {{
    listen 127.0.0.1:{logging};
    access_log {log} tidewatch;
    location / {{ proxy_pass http://127.0.0.1:{up}; }}
  }}
}}
"#,
        pid = dir.path().join("nginx.pid").display(),
        err = dir.path().join("logs/error.log").display(),
        exchange = n.signals,
        log = access_log.display(),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let _nginx = Nginx(
        std::process::Command::new(nginx_bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http
        .get(format!("http://127.0.0.1:{up}/delay?ms=10"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nginx did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // a log shipper: every new line of the access log to the exchange
    let stop = Arc::new(AtomicBool::new(false));
    let shipper = {
        let (stop, url, exchange, path) = (
            stop.clone(),
            url.clone(),
            n.signals.clone(),
            access_log.clone(),
        );
        tokio::spawn(async move {
            let conn = mq::connect(&url).await;
            let ch = mq::confirm_channel(&conn).await;
            let mut at = 0u64;
            let mut shipped = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let lines: Vec<String> = match std::fs::File::open(&path) {
                    Ok(mut f) => {
                        let _ = f.seek(std::io::SeekFrom::Start(at));
                        let mut r = std::io::BufReader::new(f);
                        let mut out = Vec::new();
                        let mut line = String::new();
                        while r.read_line(&mut line).unwrap_or(0) > 0 {
                            if !line.ends_with('\n') {
                                break; // half written: next round
                            }
                            at += line.len() as u64;
                            out.push(std::mem::take(&mut line));
                        }
                        out
                    }
                    Err(_) => Vec::new(),
                };
                for l in lines {
                    mq::publish(&ch, &exchange, "nginx.access", l.trim_end().as_bytes())
                        .await
                        .unwrap();
                    shipped += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            shipped
        })
    };
    // load: four clients on each gateway
    let mut load = Vec::new();
    for (gw, host) in [(emitting, "shop"), (logging, "search")] {
        for _ in 0..4 {
            let (stop, http) = (stop.clone(), http.clone());
            load.push(tokio::spawn(async move {
                let mut ok = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if http
                        .get(format!("http://127.0.0.1:{gw}/api"))
                        .header("Host", host)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                    {
                        ok += 1;
                    }
                }
                ok
            }));
        }
    }
    let diag = || {
        let events: Vec<String> = common::scrape(port)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("tidewatch_events_"))
            .map(str::to_owned)
            .collect();
        format!(
            "nginx error log:\n{}\nscaler log:\n{}\nevents:\n{}",
            tail(&dir.path().join("logs/error.log")),
            tail(&dir.path().join("scaler.log")),
            events.join("\n")
        )
    };
    // fast upstream: signals flow from both paths
    let received = || {
        common::scrape(port).map_or(0.0, |t| {
            common::scraped(
                &t,
                "tidewatch_events_received_total",
                &[("type", "gateway_latency")],
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while received() < 10.0 {
        assert!(
            Instant::now() < deadline,
            "signals from nginx: {} received\n{}",
            received(),
            diag()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and with a 10 ms upstream nothing asks for more (a unit read
    // wrong, seconds for milliseconds, would ask for hundreds)
    let early = mq::read_until(&conn, &n.workers, Duration::from_secs(3), |_| false).await;
    for c in early
        .iter()
        .filter_map(|g| serde_json::from_slice::<ScaleCommand>(&g.body).ok())
    {
        assert!(
            c.desired_replicas < 3,
            "{c:?} on a fast upstream\n{}",
            diag()
        );
    }
    // the upstream slows to 300 ms: p95 300 ms, 6 replicas
    http.get(format!("http://127.0.0.1:{up}/delay?ms=300"))
        .send()
        .await
        .unwrap();
    let mut up_shop = None;
    let mut up_search = None;
    let deadline = Instant::now() + Duration::from_secs(45);
    while (up_shop.is_none() || up_search.is_none()) && Instant::now() < deadline {
        let got = mq::read_until(&conn, &n.workers, Duration::from_secs(2), |_| false).await;
        for c in got
            .iter()
            .filter_map(|g| serde_json::from_slice::<ScaleCommand>(&g.body).ok())
        {
            if c.desired_replicas >= 6 {
                match c.target.as_str() {
                    "shop" => up_shop = Some(c),
                    "search" => up_search = Some(c),
                    _ => {}
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let shipped = shipper.await.unwrap();
    let mut served = 0;
    for l in load {
        served += l.await.unwrap();
    }
    let published: u64 = http
        .get(format!("http://127.0.0.1:{emitting}/tidewatch"))
        .send()
        .await
        .ok()
        .map(|r| async { r.text().await.unwrap_or_default() })
        .unwrap()
        .await
        .trim()
        .parse()
        .unwrap_or(0);
    let up_shop = up_shop.unwrap_or_else(|| {
        panic!("shop never scaled to 6 or more (emitter published {published} messages, {served} requests served)\n{}", diag())
    });
    let up_search = up_search.unwrap_or_else(|| {
        panic!("search never scaled to 6 or more ({shipped} access-log lines shipped, {served} requests served)\n{}", diag())
    });
    assert!(up_shop.reason.starts_with("p95 "), "{}", up_shop.reason);
    assert!(up_search.reason.starts_with("p95 "), "{}", up_search.reason);
    assert!(published >= 2, "{published}");
    // the emitter sends per second what the log sends per request
    assert!(shipped > published, "{shipped} lines, {published} messages");
    let text = common::scrape(port).unwrap();
    assert_eq!(
        common::scraped(&text, "tidewatch_events_rejected_total", &[]),
        0.0,
        "nothing either path sent was refused"
    );
    n.delete(&mq::confirm_channel(&conn).await).await;
}

/// Runs one of compose/gateway/'s OpenResty configurations with Debian's
/// nginx: its modules loaded, `listen 8080` on `port`, and `subs` (the
/// container names and settings of the stack) replaced.
fn run_stack_conf(
    nginx_bin: &str,
    dir: &std::path::Path,
    name: &str,
    port: u16,
    subs: &[(&str, String)],
) -> Nginx {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut conf = std::fs::read_to_string(format!("{root}/compose/gateway/{name}.conf")).unwrap();
    for (from, to) in subs
        .iter()
        .map(|(f, t)| (*f, t.clone()))
        .chain([("listen 8080;", format!("listen 127.0.0.1:{port};"))])
    {
        assert!(
            conf.contains(from),
            "compose/gateway/{name}.conf has no {from:?}"
        );
        conf = conf.replace(from, &to);
    }
    let paths = if conf.contains("lua_package_path") {
        format!("lua_package_cpath \"{CJSON_DIR}/?.so;;\";")
    } else {
        format!(
            "lua_package_path \"/usr/share/lua/5.1/?.lua;;\"; lua_package_cpath \"{CJSON_DIR}/?.so;;\";"
        )
    };
    let conf = format!(
        "load_module {NDK_MODULE};\nload_module {LUA_MODULE};\ndaemon off;\n{}",
        conf.replacen("http {", &format!("http {{\n  {paths}"), 1)
    );
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
    let err = std::fs::File::create(prefix.join("stderr.log")).unwrap();
    Nginx(
        std::process::Command::new(nginx_bin)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .arg("-p")
            .arg(&prefix)
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap(),
    )
}

fn json_of(port: u16, path: &str) -> serde_json::Value {
    common::http_get(port, path)
        .and_then(|r| r.split("\r\n\r\n").nth(1).map(str::to_owned))
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// compose/gateway.yaml without Docker: its three OpenResty
/// configurations (the demo service, the gateway with the emitter, the
/// open-loop load) run with Debian's nginx, and its scaler and worker
/// configurations with this build, on loopback (container names replaced
/// by ports, the broker's names by this test's). The load overwhelms one
/// replica; the emitter's latency reaches the scaler through RabbitMQ,
/// the scaler commands more replicas, the worker's `http` provider
/// scales the service, and its latency comes back down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_stack_scales_its_demo_service_by_the_gateways_latency() {
    let Some(url) = mq::broker() else { return };
    let Some(nginx_bin) = nginx() else { return };
    let root = env!("CARGO_MANIFEST_DIR");
    let n = Names::new();
    let dir = tempfile::tempdir().unwrap();
    let (svc, gw, load) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let (scaler_port, worker_port) = (common::free_port(), common::free_port());
    let (mhost, mport, muser, mpass) = management();

    // the scaler and the worker: the stack's files, pointed at this test
    let tidewatch_conf = |file: &str, subs: &[(&str, String)]| {
        let mut text = std::fs::read_to_string(format!("{root}/compose/tidewatch/{file}")).unwrap();
        for (from, to) in subs {
            assert!(text.contains(from), "{file} has no {from:?}");
            text = text.replace(from, to);
        }
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path
    };
    let amqp_subs = || {
        vec![
            (
                "url_env = \"TIDEWATCH_AMQP_URL\"",
                format!("url = \"{url}\""),
            ),
            ("\"tidewatch.signals\"", format!("\"{}\"", n.signals)),
            ("\"tidewatch.scaler\"", format!("\"{}\"", n.queue)),
            ("\"tidewatch.commands\"", format!("\"{}\"", n.commands)),
            ("\"tidewatch.results\"", format!("\"{}\"", n.results)),
            ("\"tidewatch.workers\"", format!("\"{}\"", n.workers)),
        ]
    };
    let mut subs = amqp_subs();
    subs.retain(|(f, _)| *f != "\"tidewatch.workers\"");
    subs.push(("0.0.0.0:9898", format!("127.0.0.1:{scaler_port}")));
    subs.push((
        "\"policies/latency_slo.lua\"",
        format!("\"{root}/policies/latency_slo.lua\""),
    ));
    let scaler_cfg = tidewatch_conf("scaler-gateway.toml", &subs);
    let mut subs = amqp_subs();
    subs.retain(|(f, _)| *f != "\"tidewatch.signals\"" && *f != "\"tidewatch.scaler\"");
    subs.push(("0.0.0.0:9899", format!("127.0.0.1:{worker_port}")));
    subs.push((
        "/var/lib/tidewatch/worker.state.json",
        dir.path().join("worker.state.json").display().to_string(),
    ));
    subs.push(("http://service:8080", format!("http://127.0.0.1:{svc}")));
    let worker_cfg = tidewatch_conf("worker-gateway.toml", &subs);
    let _scaler = common::spawn_run(&scaler_cfg, Some(&dir.path().join("scaler.log")));
    let _worker = common::Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_tidewatch"))
            .args(["worker", "--config"])
            .arg(&worker_cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("worker.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let conn = mq::connect(&url).await;
    mq::wait_for_queue(&conn, &n.queue).await;
    mq::wait_for_queue(&conn, &n.workers).await;

    // replicas that start in 2 s instead of 10 (a shorter test)
    let _service = run_stack_conf(
        nginx_bin,
        dir.path(),
        "service",
        svc,
        &[("START_S = 10 ", "START_S = 2 ".into())],
    );
    let _gateway = run_stack_conf(
        nginx_bin,
        dir.path(),
        "gateway",
        gw,
        &[
            (
                "/etc/tidewatch/lua/?.lua;;",
                format!("{root}/gateway/nginx/?.lua;/usr/share/lua/5.1/?.lua;;"),
            ),
            (
                r#"host = "rabbitmq", port = 15672, user = "guest", password = "guest""#,
                format!(
                    r#"host = "{mhost}", port = {mport}, user = "{muser}", password = "{mpass}""#
                ),
            ),
            ("\"tidewatch.signals\"", format!("\"{}\"", n.signals)),
            ("server service:8080;", format!("server 127.0.0.1:{svc};")),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while json_of(svc, "/state").is_null() || common::http_get(gw, "/healthz").is_none() {
        assert!(Instant::now() < deadline, "nginx did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a steady 60 requests/s: three replicas' capacity, one replica's
    // latency far over the 100 ms SLO
    let _load = run_stack_conf(
        nginx_bin,
        dir.path(),
        "loadgen",
        load,
        &[
            (
                "BASE, CREST, SPIKE, PERIOD = 10, 150, 300, 600",
                "BASE, CREST, SPIKE, PERIOD = 60, 60, 60, 600".into(),
            ),
            (
                "TARGET_HOST, TARGET_PORT = \"gateway\", 8080",
                format!("TARGET_HOST, TARGET_PORT = \"127.0.0.1\", {gw}"),
            ),
        ],
    );
    let diag = |dir: &std::path::Path| {
        format!(
            "service {}\nload {}\ngateway: {}\nscaler log:\n{}\nworker log:\n{}\ngateway stderr:\n{}\nload stderr:\n{}",
            json_of(svc, "/state"),
            json_of(load, "/state"),
            common::http_get(gw, "/tidewatch").unwrap_or_default(),
            tail(&dir.join("scaler.log")),
            tail(&dir.join("worker.log")),
            tail(&dir.join("gateway/stderr.log")),
            tail(&dir.join("loadgen/stderr.log")),
        )
    };
    let p95 = || {
        common::scrape(scaler_port).map_or(f64::NAN, |t| {
            common::scraped(
                &t,
                "tidewatch_target_latency_p95_seconds",
                &[("target", "checkout")],
            )
        })
    };
    // the service is scaled by the worker: at least three ready replicas
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut worst = 0.0f64;
    loop {
        let s = json_of(svc, "/state");
        worst = worst.max(p95());
        if s["ready"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service was never scaled to 3 (worst p95 {worst} s)\n{}",
            diag(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "scaled to 3 after {:?} (worst p95 {worst} s)",
        started.elapsed()
    );
    assert!(worst > 0.1, "one replica was over the SLO: p95 {worst} s");
    // ...and with the replicas the gateway's p95 comes back under the SLO
    let deadline = Instant::now() + Duration::from_secs(120);
    while p95().is_nan() || p95() > 0.1 {
        assert!(
            Instant::now() < deadline,
            "p95 stayed {} s over the 100 ms SLO\n{}",
            p95(),
            diag(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "p95 under the SLO after {:?}: {}",
        started.elapsed(),
        json_of(svc, "/state")
    );
    let text = common::scrape(worker_port).unwrap_or_default();
    assert!(
        common::scraped(
            &text,
            "tidewatch_provider_calls_total",
            &[("provider", "http")]
        ) >= 1.0,
        "the worker's http provider scaled the service"
    );
    n.delete(&mq::confirm_channel(&conn).await).await;
}
