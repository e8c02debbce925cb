//! `tidewatch worker` on a real RabbitMQ (started by scripts/test; URL in
//! TIDEWATCH_TEST_AMQP): the shared scenario with every provider and a
//! SIGKILL mid-stream, dead letters with their reason headers, and a
//! routing-key filter that keeps other providers' commands out.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use tidewatch::command::ScaleResult;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_on_rabbitmq_with_every_provider_and_a_kill() {
    let Some(url) = common::amqp::broker() else {
        return;
    };
    let n = common::amqp::Names::new();
    let setup = common::worker::setup(&format!(
        r#"[commands]
kind = "amqp"
amqp = {{ url = "{url}", exchange = "{}", results_exchange = "{}", deadletter_exchange = "{}", queue = "{}", binding_keys = ["exec.*", "process.*", "http.*", "kubernetes.*"] }}"#,
        n.commands, n.results, n.deadletter, n.workers
    ))
    .await;
    let conn = common::amqp::connect(&url).await;
    let ch = common::amqp::confirm_channel(&conn).await;
    // The test declares what the scaler would: the commands exchange, and
    // listens to every result through its own queue.
    for ex in [&n.commands, &n.results] {
        ch.exchange_declare(
            ex,
            ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().as_str(),
        &n.results,
        "#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let results: Arc<Mutex<Vec<ScaleResult>>> = Arc::default();
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let mut consumer = ch
            .basic_consume(
                q.name().as_str(),
                "results",
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (results, keys) = (results.clone(), keys.clone());
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                keys.lock().unwrap().push(d.routing_key.to_string());
                results
                    .lock()
                    .unwrap()
                    .push(common::schema::parse("scale_result", &d.data));
            }
        });
    }
    // A command for a provider this worker does not bind: it must never
    // reach the worker's queue (published before the worker declares it,
    // and again after, to a queue bound only for the four providers).
    let send: common::worker::Send = {
        let ch = ch.clone();
        let exchange = n.commands.clone();
        Arc::new(move |target, provider, bytes| {
            let (ch, exchange) = (ch.clone(), exchange.clone());
            async move {
                let key = format!("{provider}.{target}");
                // Unroutable until the worker declared its queue: retry.
                for _ in 0..200 {
                    let c = ch
                        .basic_publish(
                            &exchange,
                            &key,
                            lapin::options::BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &bytes,
                            lapin::BasicProperties::default().with_delivery_mode(2),
                        )
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                    if c.is_ack() && c.take_message().is_none() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("command {key} never routed");
            }
            .boxed()
        })
    };
    common::worker::scenario(&setup, send.clone(), results.clone()).await;
    // Results are routed `<status>.<target>`.
    let keys = keys.lock().unwrap().clone();
    assert!(keys.contains(&"applied.checkout".to_string()), "{keys:?}");
    assert!(keys.contains(&"skipped_stale.web".to_string()), "{keys:?}");
    // Dead letters keep the body and say why.
    let dead = common::amqp::drain(&conn, &n.deadletter).await;
    let reasons: Vec<String> = dead
        .iter()
        .filter_map(|g| common::amqp::header(g, "x-tidewatch-reason"))
        .collect();
    assert!(
        reasons.contains(&"invalid_json".to_string())
            && reasons.contains(&"unknown_target".to_string()),
        "{reasons:?}"
    );
    assert!(dead
        .iter()
        .any(|g| g.body.starts_with(b"{\"version\": 1, \"target\": ")));
    // The filter: a `log.*` command is not routed to this worker's queue.
    let c = common::worker::command("web", "log", 99, 1, 60_000);
    let routed = ch
        .basic_publish(
            &n.commands,
            "log.web",
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &c.to_json(),
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        routed.take_message().is_some(),
        "log.web was routed to the worker's queue"
    );
    n.delete(&ch).await;
}
