//! `tidewatch worker` on a real Kafka-protocol broker (tansu, started by
//! scripts/test; address in TIDEWATCH_TEST_KAFKA): the shared scenario
//! with every provider and a SIGKILL mid-stream, then the dead letters.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tidewatch::command::ScaleResult;

/// Reads a topic from the start into `into`, in the background.
fn collect(brokers: &str, topic: &str, into: Arc<Mutex<Vec<Vec<u8>>>>) {
    let c = common::kafka::reader(brokers, topic);
    tokio::spawn(async move {
        loop {
            if let Ok(m) = c.recv().await {
                into.lock()
                    .unwrap()
                    .push(m.payload().unwrap_or_default().to_vec());
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_on_tansu_with_every_provider_and_a_kill() {
    let Some(brokers) = common::kafka::broker() else {
        return;
    };
    let suffix = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let t = |n: &str| format!("w{n}-{suffix}");
    let (commands, results, deadletter) = (t("commands"), t("results"), t("deadletter"));
    common::kafka::create_topics(&brokers, &[(&commands, 2), (&results, 1), (&deadletter, 1)])
        .await;
    let setup = common::worker::setup(&format!(
        r#"[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "{}", results_topic = "{}", deadletter_topic = "{}", group_id = "{}", options = {{ "fetch.wait.max.ms" = "5", "session.timeout.ms" = "6000" }} }}"#,
        t("commands"),
        t("results"),
        t("deadletter"),
        t("workers")
    ))
    .await;
    let raw: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    collect(&brokers, &t("results"), raw.clone());
    let dead: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    collect(&brokers, &t("deadletter"), dead.clone());
    let results: Arc<Mutex<Vec<ScaleResult>>> = Arc::default();
    {
        // Decode as they arrive (every result must decode).
        let (raw, results) = (raw.clone(), results.clone());
        tokio::spawn(async move {
            loop {
                let got: Vec<Vec<u8>> = std::mem::take(&mut *raw.lock().unwrap());
                for b in got {
                    results
                        .lock()
                        .unwrap()
                        .push(common::schema::parse("scale_result", &b));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let topic = t("commands");
    let send: common::worker::Send = Arc::new(move |target, _provider, bytes| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&target).payload(&bytes),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
        .boxed()
    });
    common::worker::scenario(&setup, send, results).await;
    // The undecodable command and the unknown target were dead-lettered.
    common::worker::eventually("two dead letters", Duration::from_secs(20), || {
        dead.lock().unwrap().len() >= 2
    })
    .await;
    let reasons: Vec<String> = dead
        .lock()
        .unwrap()
        .iter()
        .map(|b| {
            common::schema::parse::<serde_json::Value>("deadletter", b)["reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        reasons.contains(&"invalid_json".to_string())
            && reasons.contains(&"unknown_target".to_string()),
        "{reasons:?}"
    );
}

/// Children of `pid` whose command line is exactly `argv`, counted by the OS.
fn children(pid: u32, argv: &[&str]) -> usize {
    let want = argv.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let mut after = stat.rsplit(") ").next().unwrap_or("").split(' ');
            let state = after.next();
            let ppid = after.next().and_then(|p| p.parse::<u32>().ok());
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            state != Some("Z") && ppid == Some(pid) && cmd == want.as_bytes()
        })
        .count()
}

/// config/worker.toml as shipped (only the broker, topics, state file and
/// metrics port overridden from the environment, as a user would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_worker_config_runs() {
    let Some(brokers) = common::kafka::broker() else {
        return;
    };
    let suffix = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let t = |n: &str| format!("b{n}-{suffix}");
    let (commands, results, deadletter) = (t("commands"), t("results"), t("deadletter"));
    common::kafka::create_topics(&brokers, &[(&commands, 1), (&results, 1), (&deadletter, 1)])
        .await;
    let raw: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    collect(&brokers, &t("results"), raw.clone());
    let home = tempfile::tempdir().unwrap();
    let mut worker = common::worker::Worker(
        std::process::Command::new(env!("CARGO_BIN_EXE_tidewatch"))
            .args(["worker", "--config", "config/worker.toml"])
            .env("TIDEWATCH__COMMANDS__KAFKA__BROKERS", &brokers)
            .env("TIDEWATCH__COMMANDS__KAFKA__TOPIC", t("commands"))
            .env("TIDEWATCH__COMMANDS__KAFKA__RESULTS_TOPIC", t("results"))
            .env(
                "TIDEWATCH__COMMANDS__KAFKA__DEADLETTER_TOPIC",
                t("deadletter"),
            )
            .env("TIDEWATCH__COMMANDS__KAFKA__GROUP_ID", t("workers"))
            .env(
                "TIDEWATCH__WORKER__STATE_FILE",
                home.path().join("state.json"),
            )
            .env("TIDEWATCH__METRICS__LISTEN", "127.0.0.1:0")
            // No cluster here: checkout's commands must fail with the reason.
            .env("HOME", home.path())
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .spawn()
            .unwrap(),
    );
    let producer = common::kafka::producer(&brokers);
    for c in [
        common::worker::command("thumbnails", "process", 1, 3, 60_000),
        common::worker::command("checkout", "kubernetes", 1, 4, 60_000),
    ] {
        producer
            .send(
                FutureRecord::to(&t("commands"))
                    .key(&c.target)
                    .payload(&c.to_json()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let pid = worker.0.id();
    common::worker::eventually("3 sleep children", Duration::from_secs(60), || {
        children(pid, &["sleep", "infinity"]) == 3
    })
    .await;
    common::worker::eventually("two results", Duration::from_secs(30), || {
        raw.lock().unwrap().len() >= 2
    })
    .await;
    let results: Vec<ScaleResult> = raw
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    let checkout = results.iter().find(|r| r.target == "checkout").unwrap();
    let e = checkout.error.as_deref().unwrap_or_default();
    assert!(
        e.contains("kubeconfig") || e.contains(".kube"),
        "{checkout:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| r.target == "thumbnails" && r.observed_replicas == Some(3)),
        "{results:?}"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let st = worker.0.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert_eq!(children(pid, &["sleep", "infinity"]), 0);
}

/// Issue 16, finding 6: after `kill -9` of a worker, an exec command in
/// flight went on and finished after the next worker had applied a newer
/// one, leaving the platform at the older count. The exec child dies with
/// the worker now (`PR_SET_PDEATHSIG`): what it had left to do never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_command_dies_with_its_worker() {
    let Some(brokers) = common::kafka::broker() else {
        return;
    };
    let suffix = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let t = |n: &str| format!("d{n}-{suffix}");
    common::kafka::create_topics(
        &brokers,
        &[
            (&t("commands"), 1),
            (&t("results"), 1),
            (&t("deadletter"), 1),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (pidfile, applied) = (dir.path().join("pid"), dir.path().join("applied"));
    let script = format!(
        "echo $$ > {}; sleep 5; echo \"$1\" > {}",
        pidfile.display(),
        applied.display()
    );
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            r#"[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "{}", results_topic = "{}", deadletter_topic = "{}", group_id = "{}" }}

[worker]
state_file = "{}"
timeout = "30s"

[metrics]
listen = "127.0.0.1:0"

[[targets]]
name = "web"
provider = "exec"
exec = {{ command = ["/bin/sh", "-c", {script:?}, "sh", "{{replicas}}"] }}
"#,
            t("commands"),
            t("results"),
            t("deadletter"),
            t("workers"),
            dir.path().join("state.json").display(),
        ),
    )
    .unwrap();
    let mut worker = common::worker::spawn_worker(&config);
    let c = common::worker::command("web", "exec", 1, 4, 600_000);
    common::kafka::producer(&brokers)
        .send(
            FutureRecord::to(&t("commands"))
                .key("web")
                .payload(&c.to_json()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    common::worker::eventually("the exec command to start", Duration::from_secs(60), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| !p.trim().is_empty())
    })
    .await;
    let child: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    worker.0.kill().unwrap();
    worker.0.wait().unwrap();
    common::worker::eventually(
        "the exec child to die with the worker",
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(format!("/proc/{child}/stat")).map_or(true, |s| {
                s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z'))
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        !applied.exists(),
        "the killed worker's command finished after it"
    );
}
