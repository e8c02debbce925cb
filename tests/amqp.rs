//! `tidewatch run` against a real RabbitMQ (started by scripts/test; URL in
//! TIDEWATCH_TEST_AMQP): signals published by an outside client (Python
//! pika), commands with routing key `<provider>.<target>`, dead letters
//! with reasons in their headers, results, the queue-depth probe (passive
//! declare and the management API), and the start-up errors.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::amqp::{self as mq, Names};
use tidewatch::command::ScaleCommand;
use tidewatch::telemetry::Metrics;

const POLICY: &str = r#"return { decide = function(ctx)
  local d = ctx.window("queue_depth", "10s")
  if not d then return nil end
  return { replicas = math.ceil(d.last / 100), reason = "last " .. d.last }
end }"#;

fn targets(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                r#"
[[targets]]
name = "{n}"
policy = "p.lua"
provider = "exec"
max_replicas = 1000
stabilization_down = "0s"
"#
            )
        })
        .collect()
}

const ENGINE: &str = r#"
[engine]
min_eval_interval = "0s"
drain_timeout = "20s"
"#;

fn counter(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::metric(m, name, labels)
}

/// A scaler with one target, "web", on this test's names, and the test's
/// own connection, once the scaler's queue exists.
struct Scaler {
    _dir: tempfile::TempDir,
    metrics: Arc<Metrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<tidewatch::scaler::RunReport>,
    conn: lapin::Connection,
}

async fn scaler(url: &str, n: &Names) -> Scaler {
    let dir = tempfile::tempdir().unwrap();
    let cfg = mq::load(
        dir.path(),
        &format!("{}{ENGINE}{}", n.toml(url), targets(&["web"])),
        POLICY,
    );
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    let conn = mq::connect(url).await;
    mq::wait_for_queue(&conn, &n.queue).await;
    Scaler {
        _dir: dir,
        metrics,
        stop,
        task,
        conn,
    }
}

fn python() -> String {
    std::env::var("TIDEWATCH_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

/// Publishes each (routing key, body) with pika, persistent, with
/// publisher confirms; fails the test when pika reports an error.
fn pika_publish(url: &str, exchange: &str, messages: &[(&str, &str)]) {
    const SCRIPT: &str = r#"
import json, sys, pika
url, exchange, messages = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.confirm_delivery()
for key, body in messages:
    ch.basic_publish(exchange=exchange, routing_key=key, body=body.encode(),
                     properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"),
                     mandatory=True)
conn.close()
print(len(messages))
"#;
    use std::io::Write;
    let json = serde_json::to_string(messages).unwrap();
    // The messages on stdin: a batch is larger than an argument may be.
    let mut child = std::process::Command::new(python())
        .args(["-c", SCRIPT, url, exchange])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test installs python3-pika)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pika failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        messages.len().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_signals_become_commands_and_poison_is_dead_lettered() {
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    let Scaler {
        _dir,
        metrics,
        stop,
        task,
        conn,
    } = scaler(&url, &n).await;

    let good = mq::depth_signal("web", 750);
    let negative = mq::depth_signal("web", -5);
    pika_publish(
        &url,
        &n.signals,
        &[
            ("queue_depth.web", &negative),
            ("queue_depth.web", "this is not json"),
            ("queue_depth.web", &good),
        ],
    );

    // The command: routing key <provider>.<target>, persistent, JSON.
    let commands = mq::read_until(&conn, &n.workers, Duration::from_secs(20), |g| {
        g.iter().any(|c| {
            serde_json::from_slice::<ScaleCommand>(&c.body).is_ok_and(|c| c.desired_replicas == 8)
        })
    })
    .await;
    let last = commands.last().expect("a command arrived");
    let cmd: ScaleCommand = common::schema::parse("scale_command", &last.body);
    assert_eq!((cmd.target.as_str(), cmd.desired_replicas), ("web", 8));
    assert_eq!(last.routing_key, "exec.web");
    assert_eq!(last.properties.delivery_mode(), &Some(2), "persistent");

    // Both poison messages, original bytes, reasons in the headers.
    let dead = mq::read_until(&conn, &n.deadletter, Duration::from_secs(10), |g| {
        g.len() >= 2
    })
    .await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].body, negative.as_bytes());
    assert_eq!(
        mq::header(&dead[0], "x-tidewatch-reason").as_deref(),
        Some("negative_value")
    );
    assert_eq!(dead[1].body, b"this is not json");
    assert_eq!(
        mq::header(&dead[1], "x-tidewatch-reason").as_deref(),
        Some("malformed_json")
    );
    assert_eq!(
        mq::header(&dead[1], "x-original-exchange").as_deref(),
        Some(n.signals.as_str())
    );
    assert_eq!(
        mq::header(&dead[1], "x-original-routing-key").as_deref(),
        Some("queue_depth.web")
    );
    assert!(mq::header(&dead[0], "x-tidewatch-detail")
        .unwrap()
        .contains("-5"));
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_dead_letters_total",
            &[("source", "amqp")]
        ),
        2.0
    );

    // A worker's result reaches the engine (closed loop).
    let pubch = mq::confirm_channel(&conn).await;
    mq::publish_result_until_applied(&pubch, &n.results, &cmd, 8, &metrics).await;
    // Every message was acked: nothing waits in the scaler's queue.
    assert!(mq::drain(&conn, &n.queue).await.is_empty());

    stop.send(()).unwrap();
    let report = task.await.unwrap();
    assert!(report.drained);
    let web = report.targets.iter().find(|t| t.name == "web").unwrap();
    assert_eq!(web.replicas, 8, "the result's observed replicas");
    n.delete(&conn.create_channel().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_probe_reads_depth_by_passive_declare_and_management_api() {
    let Some(url) = mq::broker() else { return };
    let management = std::env::var("TIDEWATCH_TEST_AMQP_MANAGEMENT")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into());
    let n = Names::new();
    let (orders, jobs) = (
        format!("orders-{}", mq::suffix()),
        format!("jobs-{}", mq::suffix()),
    );
    let conn = mq::connect(&url).await;
    let ch = mq::confirm_channel(&conn).await;
    for q in [&orders, &jobs] {
        ch.queue_declare(q, Default::default(), Default::default())
            .await
            .unwrap();
    }
    for i in 0..250 {
        mq::publish(&ch, "", &orders, format!("{i}").as_bytes())
            .await
            .unwrap();
    }
    for i in 0..730 {
        mq::publish(&ch, "", &jobs, format!("{i}").as_bytes())
            .await
            .unwrap();
    }
    // A consumer holds 30 jobs unacknowledged: the management API counts
    // them (730), a passive declare would not (700).
    let holder = conn.create_channel().await.unwrap();
    holder.basic_qos(30, Default::default()).await.unwrap();
    let _held = holder
        .basic_consume(&jobs, "holder", Default::default(), Default::default())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[commands]
kind = "amqp"
amqp = {{ url = "{url}", exchange = "{}", results_exchange = "{}", queue = "{}" }}
{ENGINE}
[[probes]]
kind = "amqp_queue"
target = "orders"
queue = "{orders}"
url = "{url}"
interval = "200ms"

[[probes]]
kind = "amqp_queue"
target = "jobs"
queue = "{jobs}"
url = "{url}"
management_url = "{management}"
interval = "500ms"
{}"#,
        n.commands,
        n.results,
        n.workers,
        targets(&["orders", "jobs"])
    );
    let cfg = mq::load(dir.path(), &toml, POLICY);
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    mq::wait_for_queue(&conn, &n.workers).await;
    let want = |c: &ScaleCommand| match c.target.as_str() {
        "orders" => c.desired_replicas == 3,
        "jobs" => c.desired_replicas == 8,
        _ => false,
    };
    // The management API refreshes its statistics every 5 s.
    let got = mq::read_until(&conn, &n.workers, Duration::from_secs(30), |g| {
        let cmds: Vec<ScaleCommand> = g
            .iter()
            .filter_map(|m| serde_json::from_slice(&m.body).ok())
            .collect();
        ["orders", "jobs"]
            .iter()
            .all(|t| cmds.iter().any(|c| c.target == *t && want(c)))
    })
    .await;
    let cmds: Vec<ScaleCommand> = got
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.body).ok())
        .collect();
    for t in ["orders", "jobs"] {
        assert!(
            cmds.iter().any(|c| c.target == t && want(c)),
            "{t}: {:?}",
            cmds.iter()
                .map(|c| (&c.target, c.desired_replicas, &c.reason))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        !cmds
            .iter()
            .any(|c| c.target == "jobs" && c.desired_replicas == 7),
        "the management probe counts unacknowledged messages"
    );
    assert_eq!(counter(&metrics, "tidewatch_probe_errors_total", &[]), 0.0);
    stop.send(()).unwrap();
    assert!(task.await.unwrap().drained);
    for q in [&orders, &jobs] {
        let _ = ch.queue_delete(q, Default::default()).await;
    }
    n.delete(&ch).await;
}

/// Runs the scaler with `toml` and expects it to refuse to start.
async fn start_error(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = mq::load(dir.path(), toml, POLICY);
    let opts = tidewatch::scaler::RunOptions {
        listener: Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
        ..Default::default()
    };
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tidewatch::scaler::run(cfg, opts, std::future::pending::<()>()),
    )
    .await
    .expect("a refused start returns at once");
    match out {
        Err(tidewatch::lifecycle::StartError::Fault(e)) => {
            eprintln!("start error: {e}");
            e
        }
        other => panic!("expected a start error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_name_the_setting() {
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    let undeclared = n
        .toml(&url)
        .replace("prefetch = 500", "prefetch = 500, declare = false");
    let toml = format!("{undeclared}{}", targets(&["web"]));

    // Declaring off and nothing there: the exchange is named.
    let e = start_error(&toml).await;
    assert!(
        e.contains("source.amqp.exchange")
            && e.contains(&n.signals)
            && e.contains("source.amqp.declare"),
        "{e}"
    );

    // The exchanges exist but the queue does not.
    let conn = mq::connect(&url).await;
    let ch = conn.create_channel().await.unwrap();
    for x in [&n.signals, &n.deadletter] {
        ch.exchange_declare(
            x,
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    }
    let e = start_error(&toml).await;
    assert!(
        e.contains("source.amqp.queue") && e.contains(&n.queue),
        "{e}"
    );

    // Refused credentials: the setting is named, the password is not shown.
    let bad = url.replacen("guest:guest@", "guest:wrong-password@", 1);
    assert_ne!(bad, url, "the test URL carries guest:guest");
    let e = start_error(&format!("{}{}", n.toml(&bad), targets(&["web"]))).await;
    assert!(e.contains("source.amqp.url"), "{e}");
    assert!(e.contains("refused") || e.contains("credentials"), "{e}");
    assert!(!e.contains("wrong-password"), "{e}");
    n.delete(&ch).await;

    // An unreachable broker is waited for, not fatal: the scaler starts,
    // is not ready, and drains cleanly.
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = mq::load(
        dir.path(),
        &format!(
            "{}{}",
            n.toml(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
            targets(&["web"])
        ),
        POLICY,
    );
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_broker_connected",
            &[("component", "source")]
        ),
        0.0
    );
    stop.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(report.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_rabbitmq_config_runs_the_binary() {
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    let port = common::free_port();
    let root = env!("CARGO_MANIFEST_DIR");
    // config/rabbitmq.toml as shipped; only the names (random per test) and
    // the metrics port come from the environment.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args(["run", "--config", "config/rabbitmq.toml"])
        .current_dir(root)
        .env("TIDEWATCH_AMQP_URL", &url)
        .env("TIDEWATCH__METRICS__LISTEN", format!("127.0.0.1:{port}"))
        .env("TIDEWATCH__SOURCE__AMQP__EXCHANGE", &n.signals)
        .env("TIDEWATCH__SOURCE__AMQP__QUEUE", &n.queue)
        .env(
            "TIDEWATCH__SOURCE__AMQP__DEADLETTER_EXCHANGE",
            &n.deadletter,
        )
        .env("TIDEWATCH__COMMANDS__AMQP__EXCHANGE", &n.commands)
        .env("TIDEWATCH__COMMANDS__AMQP__RESULTS_EXCHANGE", &n.results)
        .env("TIDEWATCH__COMMANDS__AMQP__QUEUE", &n.workers)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(&ready).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        assert!(
            child.try_wait().unwrap().is_none(),
            "tidewatch exited early"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // p95 of 600 ms against the example's SLO of 250 ms: double min_replicas 2.
    let now = chrono::Utc::now().timestamp_millis();
    let samples = vec!["600"; 30].join(",");
    let batch = format!(
        r#"{{"type":"gateway_latency","target":"checkout","route":"/api/checkout","samples_ms":[{samples}],"ts":{now}}}"#
    );
    pika_publish(&url, &n.signals, &[("gateway_latency.checkout", &batch)]);
    let conn = mq::connect(&url).await;
    let got = mq::read_until(&conn, &n.workers, Duration::from_secs(20), |g| {
        !g.is_empty()
    })
    .await;
    let cmd: ScaleCommand = serde_json::from_slice(&got.first().expect("a command").body).unwrap();
    assert_eq!(
        (
            cmd.target.as_str(),
            cmd.desired_replicas,
            cmd.current_replicas
        ),
        ("checkout", 4, 2)
    );
    assert_eq!(got[0].routing_key, "kubernetes.checkout");
    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tidewatch_broker_connected{component=\"source\"} 1"),
        "{metrics}"
    );

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "a clean drain exits 0: {status:?}");
    n.delete(&conn.create_channel().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_the_configured_ca() {
    let Some(url) = mq::broker() else { return };
    let (tls_url, ca) = match (
        std::env::var("TIDEWATCH_TEST_AMQPS"),
        std::env::var("TIDEWATCH_TEST_AMQPS_CA"),
    ) {
        (Ok(u), Ok(c)) => (u, c),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "TIDEWATCH_TEST_AMQPS(_CA) not set under CI: scripts/test starts RabbitMQ with TLS"
            )
        }
        _ => return eprintln!("TIDEWATCH_TEST_AMQPS not set: run scripts/test"),
    };
    // Without the CA the broker's certificate is not trusted: a clear error.
    let untrusted = tidewatch::broker::amqp::AmqpSettings {
        key: "source.amqp.url".into(),
        url: tidewatch::secret::SecretRef {
            literal: Some(tls_url.clone()),
            ..Default::default()
        },
        tls_ca_file: None,
    };
    let e = untrusted.connect("test").await.unwrap_err();
    eprintln!("untrusted: {e:?}");
    let e = e.to_string();
    assert!(
        e.contains("source.amqp") && e.contains("certificate"),
        "{e}"
    );
    assert!(!e.contains("guest:guest"), "{e}");

    // With it, the whole path runs over TLS.
    let n = Names::new();
    let toml = n.toml(&tls_url).replace(
        &format!("url = \"{tls_url}\""),
        &format!("url = \"{tls_url}\", tls_ca_file = \"{ca}\""),
    );
    assert_eq!(toml.matches("tls_ca_file").count(), 2);
    let dir = tempfile::tempdir().unwrap();
    let cfg = mq::load(
        dir.path(),
        &format!("{toml}{ENGINE}{}", targets(&["web"])),
        POLICY,
    );
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    let conn = mq::connect(&url).await;
    mq::wait_for_queue(&conn, &n.queue).await;
    let ch = mq::confirm_channel(&conn).await;
    let signal = mq::depth_signal("web", 420);
    // The queue can exist before its binding does (bindings are made
    // beside the first session), and a signal published between the two
    // is unroutable: publish the same signal again until a command comes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.is_empty() && std::time::Instant::now() < deadline {
        mq::publish(&ch, &n.signals, "queue_depth.web", signal.as_bytes())
            .await
            .unwrap();
        got = mq::read_until(&conn, &n.workers, Duration::from_secs(1), |g| !g.is_empty()).await;
    }
    let cmd: ScaleCommand =
        serde_json::from_slice(&got.first().expect("a command over AMQPS").body).unwrap();
    assert_eq!(cmd.desired_replicas, 5);
    stop.send(()).unwrap();
    assert!(task.await.unwrap().drained);
    n.delete(&ch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_and_nacked_commands_are_retried_until_confirmed() {
    use lapin::types::{AMQPValue, FieldTable};
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    // The scaler declares no workers' queue: nothing is bound at first.
    let toml = n
        .toml(&url)
        .replace(&format!("queue = \"{}\"", n.workers), "queue = \"\"");
    let dir = tempfile::tempdir().unwrap();
    let cfg = mq::load(
        dir.path(),
        &format!("{toml}{ENGINE}{}", targets(&["web"])),
        POLICY,
    );
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    let conn = mq::connect(&url).await;
    mq::wait_for_queue(&conn, &n.queue).await;
    let ch = mq::confirm_channel(&conn).await;
    let failures = || {
        counter(
            &metrics,
            "tidewatch_command_publish_failures_total",
            &[("target", "web")],
        )
    };
    let wait_for = |what: &'static str, cond: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let signal = mq::depth_signal("web", 300);
    mq::publish(&ch, &n.signals, "queue_depth.web", signal.as_bytes())
        .await
        .unwrap();

    // 1. Returned (no queue bound): counted, retried. The scaler's queue
    // exists a moment before it is bound: a signal published in between
    // is unroutable, so it is sent again until the command comes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while failures() < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a returned command is counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        mq::publish(&ch, &n.signals, "queue_depth.web", signal.as_bytes())
            .await
            .unwrap();
    }

    // 2. Bound to a full queue that rejects publishes: the broker nacks.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare(
        &n.workers,
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    mq::publish(&ch, "", &n.workers, b"filler").await.unwrap();
    ch.queue_bind(
        &n.workers,
        &n.commands,
        "#",
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let before = failures();
    tokio::task::block_in_place(|| {
        wait_for("a nacked command is counted", &|| failures() > before)
    });
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_commands_published_total",
            &[("target", "web")]
        ),
        0.0,
        "nothing counts as published before the broker confirms it"
    );

    // 3. Room again: the retry is confirmed and the command arrives.
    let filler = ch
        .basic_get(&n.workers, lapin::options::BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the filler");
    assert_eq!(filler.delivery.data, b"filler");
    let got = mq::read_until(&conn, &n.workers, Duration::from_secs(20), |g| {
        !g.is_empty()
    })
    .await;
    let cmd: ScaleCommand =
        serde_json::from_slice(&got.first().expect("the retried command").body).unwrap();
    assert_eq!((cmd.target.as_str(), cmd.desired_replicas), ("web", 3));
    stop.send(()).unwrap();
    assert!(task.await.unwrap().drained);
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_commands_published_total",
            &[("target", "web")]
        ),
        1.0
    );
    n.delete(&ch).await;
}

/// Issue 16, finding 2: a batch of 1,000 signals, 990 with a bad `ts`:
/// the dead letter's rejections header outgrew the broker's frame, the
/// channel dropped, and the unacked batch was redelivered and applied
/// again about 9 times a second. Now the header is bounded: one dead
/// letter, and the 10 good signals applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_batch_is_dead_lettered_once_and_applied_once() {
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    let Scaler {
        _dir,
        metrics,
        stop,
        task,
        conn,
    } = scaler(&url, &n).await;
    let bad_ts = format!("not a time {}", "x".repeat(200));
    let mut batch: Vec<serde_json::Value> = (0..990)
        .map(|i| {
            serde_json::json!({"type": "queue_depth", "target": "web", "queue": format!("q{i}"),
                "depth": 5, "ts": bad_ts})
        })
        .collect();
    for i in 0..10 {
        batch.push(serde_json::from_str(&mq::depth_signal("web", 100 + i)).unwrap());
    }
    let body = serde_json::to_string(&batch).unwrap();
    assert!(body.len() > 250_000, "{}", body.len());
    pika_publish(&url, &n.signals, &[("queue_depth.web", &body)]);
    let dead = mq::read_until(&conn, &n.deadletter, Duration::from_secs(20), |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        mq::header(&dead[0], "x-tidewatch-rejections-total").as_deref(),
        Some("990")
    );
    // Long enough for several redeliveries, had there been any.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_events_received_total",
            &[("source", "amqp")]
        ),
        10.0,
        "applied once"
    );
    assert_eq!(
        counter(
            &metrics,
            "tidewatch_dead_letters_total",
            &[("source", "amqp")]
        ),
        1.0
    );
    let more = mq::read_until(&conn, &n.deadletter, Duration::from_millis(500), |_| false).await;
    assert!(more.is_empty(), "a second dead letter: {}", more.len());
    stop.send(()).unwrap();
    assert!(task.await.unwrap().drained);
}

/// Signals stop on a real broker: after `stale_after` the fallback command
/// arrives, with the reason; when signals resume the policy decides again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_signals_on_rabbitmq_fall_back_and_recover() {
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = mq::load(
        dir.path(),
        &format!(
            "{}{ENGINE}tick = \"200ms\"\nreissue_after = \"0s\"\n{}stale_after = \"2s\"\non_stale = \"fallback\"\nfallback_replicas = 7\n",
            n.toml(&url),
            targets(&["web"])
        ),
        POLICY,
    );
    let metrics = Arc::new(Metrics::new());
    let (stop, task) = common::start_run(cfg, metrics.clone());
    let conn = mq::connect(&url).await;
    mq::wait_for_queue(&conn, &n.queue).await;
    let ch = mq::confirm_channel(&conn).await;
    let commands = |want: usize| {
        let conn = &conn;
        let workers = n.workers.clone();
        async move {
            mq::read_until(conn, &workers, Duration::from_secs(20), |g| g.len() >= want)
                .await
                .iter()
                .map(|g| serde_json::from_slice::<ScaleCommand>(&g.body).unwrap())
                .collect::<Vec<_>>()
        }
    };
    mq::publish(
        &ch,
        &n.signals,
        "queue_depth.web",
        mq::depth_signal("web", 300).as_bytes(),
    )
    .await
    .unwrap();
    let first = commands(1).await;
    assert_eq!(first[0].desired_replicas, 3, "{first:?}");
    // nothing more: after 2 s without a sample, the fallback
    let started = std::time::Instant::now();
    let fallback = commands(1).await;
    assert_eq!(fallback.len(), 1, "{fallback:?}");
    assert_eq!(fallback[0].desired_replicas, 7);
    assert!(
        fallback[0].reason.contains("stale_after 2s"),
        "{}",
        fallback[0].reason
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(
        counter(&metrics, "tidewatch_target_stale", &[("target", "web")]),
        1.0
    );
    mq::publish(
        &ch,
        &n.signals,
        "queue_depth.web",
        mq::depth_signal("web", 500).as_bytes(),
    )
    .await
    .unwrap();
    let again = commands(1).await;
    assert_eq!(again[0].desired_replicas, 5, "{again:?}");
    assert!(
        again[0].reason.starts_with("last 500"),
        "{}",
        again[0].reason
    );
    assert_eq!(
        counter(&metrics, "tidewatch_target_stale", &[("target", "web")]),
        0.0
    );
    // the engine's ticks are timed, per shard
    let text = metrics.render();
    let counts: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("tidewatch_engine_tick_seconds_count{shard="))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    let ticks: f64 = counts.iter().sum();
    assert!(ticks >= 5.0, "ticks timed: {counts:?}\n{text}");
    stop.send(()).unwrap();
    task.await.unwrap();
    n.delete(&ch).await;
}

/// `tidewatch ctl` with `tidewatch run` on RabbitMQ: pause with who, why
/// and until, the status endpoint shows it, the pause survives a restart
/// (state.dir), an outside client (pika) resumes with a control message,
/// and ctl refuses a pin outside the bounds and an unknown target by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_and_pika_steer_a_scaler_and_a_pause_survives_a_restart() {
    let Some(url) = mq::broker() else { return };
    let n = Names::new();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    std::fs::write(dir.path().join("p.lua"), POLICY).unwrap();
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "{}{ENGINE}reissue_after = \"0s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n[state]\ndir = \"{}\"\n{}",
            n.toml(&url),
            dir.path().join("state").display(),
            targets(&["web"])
        ),
    )
    .unwrap();
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewatch"))
            .arg("ctl")
            .args(args)
            .args(["--config", cfg_path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let log = dir.path().join("scaler.log");
    let wait_ready = || async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !common::ready(port) {
            assert!(std::time::Instant::now() < deadline, "scaler not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut scaler = common::spawn_run(&cfg_path, Some(&log));
    wait_ready().await;
    let conn = mq::connect(&url).await;
    let ch = mq::confirm_channel(&conn).await;
    let depth = |d: i64| mq::depth_signal("web", d);
    let commands = |secs: u64| {
        let (conn, workers) = (&conn, n.workers.clone());
        async move {
            mq::read_until(conn, &workers, Duration::from_secs(secs), |g| !g.is_empty())
                .await
                .iter()
                .map(|g| serde_json::from_slice::<ScaleCommand>(&g.body).unwrap())
                .collect::<Vec<_>>()
        }
    };
    mq::publish(&ch, &n.signals, "queue_depth.web", depth(300).as_bytes())
        .await
        .unwrap();
    assert_eq!(commands(20).await[0].desired_replicas, 3);

    let (code, out, err) = ctl(&[
        "pause",
        "web",
        "--reason",
        "incident 4411",
        "--by",
        "alice",
        "--until",
        "1h",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let m: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (m["action"].as_str(), m["by"].as_str()),
        (Some("pause"), Some("alice"))
    );
    assert!(common::schema::errors("control", &m).is_empty(), "{m}");
    // the pause is in force once the status shows it
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, _) = ctl(&["status", "web", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if v["control"]["mode"]["action"] == "pause" {
            assert_eq!(v["control"]["mode"]["by"], "alice");
            assert!(v["control"]["mode"]["until"].is_string(), "{v}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pause never showed: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, table, _) = ctl(&["status"]);
    assert!(table.contains("pause by alice until"), "{table}");
    // status by address alone, no configuration file (as the demo prints it)
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewatch"))
        .args([
            "ctl",
            "status",
            "--url",
            &format!("http://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pause by alice"));
    mq::publish(&ch, &n.signals, "queue_depth.web", depth(900).as_bytes())
        .await
        .unwrap();
    assert!(commands(2).await.is_empty(), "paused: no command");

    // a graceful restart keeps the pause (state.dir)
    unsafe {
        libc::kill(scaler.0.id() as i32, libc::SIGTERM);
    }
    let _ = scaler.0.wait();
    let _scaler = common::spawn_run(&cfg_path, Some(&log));
    wait_ready().await;
    mq::publish(&ch, &n.signals, "queue_depth.web", depth(900).as_bytes())
        .await
        .unwrap();
    assert!(
        commands(3).await.is_empty(),
        "still paused after the restart"
    );
    let (_, out, _) = ctl(&["status", "web", "--json"]);
    assert!(out.contains("\"incident 4411\""), "{out}");

    // an outside client resumes
    pika_publish(
        &url,
        &n.signals,
        &[(
            "control.web",
            r#"{"type": "control", "target": "web", "action": "resume", "by": "pika"}"#,
        )],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    mq::publish(&ch, &n.signals, "queue_depth.web", depth(900).as_bytes())
        .await
        .unwrap();
    let c = commands(20).await;
    assert_eq!(c[0].desired_replicas, 9, "{c:?}");
    assert!(!c[0].reason.contains("control:"), "{}", c[0].reason);

    // refused by name before anything is published
    let (code, _, err) = ctl(&["pin", "web", "5000"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("pin 5000: \"web\" is bounded to [1, 1000]"),
        "{err}"
    );
    let (code, _, err) = ctl(&["pause", "nope"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("target \"nope\" is not in this configuration"),
        "{err}"
    );
    n.delete(&ch).await;
}

/// One binding per target, thousands of them: all declared (pipelined on
/// the channel), as the management API lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_bindings_are_all_declared() {
    let Some(url) = mq::broker() else { return };
    let Ok(management) = std::env::var("TIDEWATCH_TEST_AMQP_MANAGEMENT") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "the management API is needed under CI"
        );
        return;
    };
    let n = Names::new();
    let keys: Vec<String> = (0..3000).map(|i| format!("\"queue_depth.t{i}\"")).collect();
    let toml = n.toml(&url).replace(
        "prefetch = 500",
        &format!("prefetch = 500, binding_keys = [{}]", keys.join(", ")),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = mq::load(
        dir.path(),
        &format!("{toml}{ENGINE}{}", targets(&["web"])),
        POLICY,
    );
    let started = std::time::Instant::now();
    let (stop, task) = common::start_run(cfg, Arc::new(Metrics::new()));
    let conn = mq::connect(&url).await;
    mq::wait_for_queue(&conn, &n.queue).await;
    let u = reqwest::Url::parse(&management).unwrap();
    let api = format!(
        "http://{}:{}/api/bindings/%2F/e/{}/q/{}",
        u.host_str().unwrap(),
        u.port().unwrap_or(15672),
        n.signals,
        n.queue
    );
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let count = loop {
        let body = client
            .get(&api)
            .basic_auth(u.username(), u.password())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap_or_default();
        let r: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let count = r.as_array().map_or(0, |a| a.len());
        if count >= 3000 || std::time::Instant::now() > deadline {
            break count;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("3000 bindings in place after {:?}", started.elapsed());
    assert_eq!(count, 3000);
    stop.send(()).unwrap();
    task.await.unwrap();
    n.delete(&mq::confirm_channel(&conn).await).await;
}
