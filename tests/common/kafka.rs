//! The Kafka-protocol broker of the integration tests: tansu, started by
//! scripts/test, its address in TIDEWATCH_TEST_KAFKA.
#![allow(dead_code)]

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;

/// The broker, or None outside CI when it is not set (the test then says
/// so and returns). Under CI=true a missing broker fails the test.
pub fn broker() -> Option<String> {
    match std::env::var("TIDEWATCH_TEST_KAFKA") {
        Ok(b) if !b.is_empty() => {
            // set but nobody listening: fail at once and say so, rather
            // than wait in librdkafka's retries until a test's timeout
            let reachable = b.split(',').any(|a| {
                use std::net::ToSocketAddrs;
                a.trim()
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut it| it.next())
                    .is_some_and(|addr| {
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
                    })
            });
            assert!(
                reachable,
                "TIDEWATCH_TEST_KAFKA={b}: nothing listens there; start tansu (scripts/test does)"
            );
            Some(b)
        }
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "TIDEWATCH_TEST_KAFKA is not set under CI: scripts/test starts tansu and sets it"
            )
        }
        _ => {
            eprintln!("TIDEWATCH_TEST_KAFKA not set: run scripts/test, which starts tansu");
            None
        }
    }
}

/// Waits for the broker with a retry instead of a sleep.
pub async fn create_topics(brokers: &str, names: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    for attempt in 0..30 {
        match admin.create_topics(&topics, &AdminOptions::new()).await {
            Ok(results) if results.iter().all(|r| r.is_ok()) => return,
            other => eprintln!("create topics, attempt {attempt}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("broker at {brokers} did not create topics");
}

/// A consumer of `topic` from its start, in a consumer group of its own,
/// fetching without librdkafka's default 500 ms wait.
pub fn reader(brokers: &str, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("reader-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// A producer with librdkafka's defaults, except that a message not
/// delivered within 30 s fails its send (the default waits 300 s, so a
/// broker that stops answering held a test for minutes a message).
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap()
}

/// Client settings for `brokers` and nothing else (a state store opened
/// by a test).
pub fn settings(brokers: &str) -> tidewatch::broker::kafka::ClientSettings {
    tidewatch::broker::kafka::ClientSettings {
        key: "source.kafka.brokers".into(),
        brokers: brokers.into(),
        options: Default::default(),
        sasl_password: Default::default(),
    }
}
