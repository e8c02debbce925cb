//! The scaler's side of the command channel: publishers that take the
//! engine's commands to the broker (Kafka or RabbitMQ) and report each
//! acknowledgement to the engine, and readers that bring the workers'
//! results back to it. Their configuration is the channel's
//! (`command::config`), which the worker shares.

pub mod amqp;
pub mod kafka;

use crate::command::{ScaleCommand, ScaleResult};
use crate::engine::{EngineHandle, WeakEngineHandle};
use crate::telemetry::Metrics;

/// After the broker confirmed command `c`: counts it by direction and
/// tells the engine (without waiting: see [`WeakEngineHandle::published`]).
pub fn confirmed(c: &ScaleCommand, metrics: &Metrics, engine: &WeakEngineHandle) {
    metrics.command_published(c);
    engine.published(&c.target, c.generation);
}

/// Decodes a result message and hands it to the engine, counting it by
/// status (`invalid` when it cannot be decoded; it is then skipped).
/// False when the engine is gone.
pub async fn deliver_result(bytes: &[u8], metrics: &Metrics, engine: &EngineHandle) -> bool {
    match serde_json::from_slice::<ScaleResult>(bytes) {
        Ok(r) => {
            metrics.result_received(&r);
            engine.result(r).await.is_ok()
        }
        Err(e) => {
            metrics.result_invalid(bytes.len(), &e);
            true
        }
    }
}
