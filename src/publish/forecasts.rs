//! Publishing tidewatch's own forecasts (`[forecasts]`): every `period`,
//! for each owned target and each metric its built-in forecaster models,
//! a `forecast` message (docs/messages.md: the same schema other systems
//! publish to tidewatch) with a point every `step` up to `horizon`, source
//! `tidewatch`. It goes to its own topic or exchange on the source's
//! broker, never the signal one (tidewatch would read its own forecasts
//! back as external ones). Best effort: rounds that find the publishing
//! queue full (the broker down or slow) are dropped and counted; a
//! decision never waits for them.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::settings::{de_duration, problem, Problem};
use crate::source::sink::{Destination, Sink};
use crate::source::SourceConfig;
use crate::telemetry::Metrics;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForecastsConfig {
    #[serde(default)]
    pub publish: bool,
    #[serde(default = "default_period", deserialize_with = "de_duration")]
    pub period: Duration,
    #[serde(default = "default_horizon", deserialize_with = "de_duration")]
    pub horizon: Duration,
    #[serde(default = "default_step", deserialize_with = "de_duration")]
    pub step: Duration,
    /// With a Kafka source: the topic, on its brokers.
    #[serde(default = "default_name")]
    pub topic: String,
    /// With a RabbitMQ source: the topic exchange (routing key
    /// `forecast.<target>`), on its broker.
    #[serde(default = "default_name")]
    pub exchange: String,
}

fn default_period() -> Duration {
    Duration::from_secs(300)
}
fn default_horizon() -> Duration {
    Duration::from_secs(3600)
}
fn default_step() -> Duration {
    Duration::from_secs(300)
}
fn default_name() -> String {
    "tidewatch.forecasts".into()
}

impl Default for ForecastsConfig {
    fn default() -> Self {
        Self {
            publish: false,
            period: default_period(),
            horizon: default_horizon(),
            step: default_step(),
            topic: default_name(),
            exchange: default_name(),
        }
    }
}

impl ForecastsConfig {
    pub fn check(&self, source: &SourceConfig, out: &mut Vec<Problem>) {
        if !self.publish {
            return;
        }
        if self.period < Duration::from_secs(1) {
            out.push(problem("forecasts.period", "give at least 1s"));
        }
        if self.step < Duration::from_secs(1) || self.step > self.horizon {
            out.push(problem(
                "forecasts.step",
                "give at least 1s and at most forecasts.horizon",
            ));
        } else if self.horizon.as_millis() / self.step.as_millis() > 10_000 {
            out.push(problem(
                "forecasts.step",
                "more than 10,000 points per forecast (the message limit): a longer step or a shorter horizon",
            ));
        }
        match source.kind {
            crate::broker::BrokerKind::Kafka => {
                if source
                    .kafka
                    .as_ref()
                    .is_some_and(|k| k.topics.contains(&self.topic))
                {
                    out.push(problem(
                        "forecasts.topic",
                        format!(
                            "{:?} is a signal topic: tidewatch would read its own forecasts back",
                            self.topic
                        ),
                    ));
                }
            }
            crate::broker::BrokerKind::Amqp => {
                if source
                    .amqp
                    .as_ref()
                    .is_some_and(|a| a.exchange == self.exchange)
                {
                    out.push(problem(
                        "forecasts.exchange",
                        format!("{:?} is the signal exchange: tidewatch would read its own forecasts back", self.exchange),
                    ));
                }
            }
            crate::broker::BrokerKind::None => out.push(problem(
                "forecasts.publish",
                "forecasts go to the source's broker, and source.kind is \"none\"",
            )),
        }
    }
}

/// One forecast message of one target.
pub type Outgoing = (String, Vec<u8>);

/// Publishes what the engine hands it until the channel closes; a
/// connection lost is opened again with the next message.
pub async fn run(
    cfg: ForecastsConfig,
    source: SourceConfig,
    mut rx: mpsc::Receiver<Outgoing>,
    metrics: std::sync::Arc<Metrics>,
) {
    let to = match source.kind {
        crate::broker::BrokerKind::Amqp => Destination {
            name: &cfg.exchange,
            key: "forecasts.exchange",
        },
        _ => Destination {
            name: &cfg.topic,
            key: "forecasts.topic",
        },
    };
    let mut out: Option<Sink> = None;
    while let Some((target, payload)) = rx.recv().await {
        if out.is_none() {
            match Sink::open(&source, "forecasts", Some(to)).await {
                Ok(s) => out = Some(s),
                Err(e) => {
                    metrics.forecast_dropped(&target, &e.to_string());
                    continue;
                }
            }
        }
        let Some(sink) = &out else { continue };
        match sink.send("forecast", &target, &payload).await {
            Ok(_) => metrics.forecast_published(&target),
            Err(e) => {
                metrics.forecast_dropped(&target, &e.to_string());
                out = None;
            }
        }
    }
}
