//! The blind spell after `kill -9`: from the kill of a running scaler to
//! the first command the restarted one publishes for a new signal, with
//! and without static membership (`source.kafka.instance_id`). Against
//! tansu (TIDEWATCH_TEST_KAFKA), or with BENCH_BROKER=mock librdkafka's
//! mock cluster in this process. Medians of BENCH_RUNS (3) kills each;
//! BENCH_MEMBERSHIP=static or dynamic measures only one of the two.
//! Run: cargo build --release && TIDEWATCH_TEST_KAFKA=127.0.0.1:PORT cargo bench --bench blackout

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use tidewatch::command::ScaleCommand;

type Mock = rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

async fn topics(mock: Option<&Mock>, brokers: &str, names: &[String]) {
    match mock {
        Some(m) => {
            for n in names {
                m.create_topic(n, 1, 1).unwrap();
            }
        }
        None => {
            let refs: Vec<(&str, i32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
            common::kafka::create_topics(brokers, &refs).await;
        }
    }
}

/// One kill and restart: the blackout in seconds, and the part of it
/// until the broker gave the restarted scaler its partition.
async fn once(mock: Option<&Mock>, brokers: &str, static_membership: bool) -> (f64, f64) {
    let s = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let t = |n: &str| format!("{n}-{s}");
    topics(
        mock,
        brokers,
        &[
            t("signals"),
            t("commands"),
            t("results"),
            t("dl"),
            t("state"),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.lua"),
        r#"return { decide = function(ctx)
             local d = ctx.window("queue_depth", "10s")
             if not d then return nil end
             return math.ceil(d.last / 100) end }"#,
    )
    .unwrap();
    let port = common::free_port();
    let instance = if static_membership {
        format!(", instance_id = \"{}\"", t("scaler"))
    } else {
        String::new()
    };
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[source]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topics = ["{}"], group_id = "{}", deadletter_topic = "{}"{instance}, options = {{ "fetch.wait.max.ms" = "10" }} }}
[commands]
kind = "kafka"
kafka = {{ brokers = "{brokers}", topic = "{}", results_topic = "{}" }}
[metrics]
listen = "127.0.0.1:{port}"
[engine]
min_eval_interval = "0s"
[state]
topic = "{}"
interval = "1s"
[[targets]]
name = "web"
policy = "p.lua"
max_replicas = 1000
stabilization_down = "0s"
"#,
            t("signals"),
            t("group"),
            t("dl"),
            t("commands"),
            t("results"),
            t("state")
        ),
    )
    .unwrap();
    let spawn = || common::spawn_run(&path, None);
    let producer = common::kafka::producer(brokers);
    let commands = common::kafka::reader(brokers, &t("commands"));
    let send = |depth: u32| {
        let (p, topic) = (producer.clone(), t("signals"));
        async move {
            let now = chrono::Utc::now().timestamp_millis();
            let body = format!(
                r#"{{"type":"queue_depth","target":"web","queue":"q","depth":{depth},"ts":{now}}}"#
            );
            p.send(
                FutureRecord::to(&topic).key("web").payload(&body),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        }
    };
    // sends `depth` every 100 ms until its command arrives
    let until_command = |depth: u32| {
        let commands = &commands;
        let send = &send;
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                assert!(Instant::now() < deadline, "no command for {depth}");
                send(depth).await;
                if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(100), async {
                    Some(commands.recv().await)
                })
                .await
                {
                    let c: ScaleCommand = serde_json::from_slice(m.payload().unwrap()).unwrap();
                    if c.desired_replicas == depth / 100 {
                        return;
                    }
                }
            }
        }
    };
    let mut first = spawn();
    until_command(1000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let killed = Instant::now();
    let _second = spawn();
    // when the restarted scaler reports its partition (scraped every 20 ms)
    let assigned = tokio::task::spawn_blocking(move || loop {
        let n = common::scrape(port).map_or(0.0, |t| {
            common::scraped(&t, "tidewatch_source_assigned_partitions", &[])
        });
        if n >= 1.0 || killed.elapsed() > Duration::from_secs(300) {
            return killed.elapsed().as_secs_f64();
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    until_command(2000).await;
    let total = killed.elapsed().as_secs_f64();
    (total, assigned.await.unwrap())
}

#[tokio::main]
async fn main() {
    let mock: Option<Mock> = (std::env::var("BENCH_BROKER").as_deref() == Ok("mock"))
        .then(|| Mock::new(1).expect("mock cluster"));
    let brokers = match &mock {
        Some(m) => m.bootstrap_servers(),
        None => std::env::var("TIDEWATCH_TEST_KAFKA")
            .expect("set TIDEWATCH_TEST_KAFKA (a tansu address) or BENCH_BROKER=mock"),
    };
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let broker = if mock.is_some() {
        "mock cluster"
    } else {
        "tansu"
    };
    // BENCH_MEMBERSHIP=static or dynamic: only that one
    let which = std::env::var("BENCH_MEMBERSHIP").unwrap_or_default();
    for static_membership in [true, false] {
        if (which == "static" && !static_membership) || (which == "dynamic" && static_membership) {
            continue;
        }
        let mut xs = Vec::new();
        let mut ours = Vec::new();
        for _ in 0..runs {
            let (total, assigned) = once(mock.as_ref(), &brokers, static_membership).await;
            xs.push(total);
            ours.push(total - assigned);
        }
        xs.sort_by(f64::total_cmp);
        ours.sort_by(f64::total_cmp);
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{broker}, static membership {}: blackout from kill -9 to the first command {:.2} s median ({}); \
             of it from the assignment to the command (restore, replay, decision) {:.2} s median ({})",
            if static_membership { "on" } else { "off" },
            xs[xs.len() / 2],
            list(&xs),
            ours[ours.len() / 2],
            list(&ours)
        );
    }
}
