//! What sources, probes and command publishers hand to the engine task,
//! and [`EngineHandle`], the one way they do it: a batch of raw messages
//! whose outcomes come back in order (so a source stores offsets or acks
//! only after the apply), a probe's signal, a worker's result, and the
//! broker's acknowledgement of a command.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::command::ScaleResult;
use crate::engine::{EngineConfig, Prepared, ReloadReport, Restored, TargetConfig};
use crate::event::{Origin, Rejection, Signal};
use crate::state::TargetSnapshot;

/// The outcome of one message.
#[derive(Debug, Default)]
pub struct Ingested {
    pub applied: usize,
    /// Each rejection with the index of its element (0 for a single object).
    pub rejected: Vec<(usize, Rejection)>,
}

/// What sources hand to the engine task.
#[derive(Debug)]
pub enum EngineInput {
    /// Raw messages from one source; `done` learns the outcome of each, in
    /// order (so a source stores its offsets or acks only after the apply).
    Batch {
        source: &'static str,
        messages: Arc<Vec<(Origin, Vec<u8>)>>,
        done: Option<tokio::sync::oneshot::Sender<Vec<Ingested>>>,
    },
    /// A signal a probe measured itself.
    Signal(Signal),
    /// A probe of this target could not measure.
    ProbeFailed { target: String },
    /// The status document of one target or of all (`/v1/targets`).
    Status {
        target: Option<String>,
        done: oneshot::Sender<Option<serde_json::Value>>,
    },
    /// A worker's result (the closed loop).
    Result(ScaleResult),
    /// The broker acknowledged the command of this generation.
    Published { target: String, generation: i64 },
    /// Snapshots read from the state store: each target takes its own
    /// unless what the engine holds is newer; `done` learns the outcomes.
    Restore {
        snapshots: Vec<TargetSnapshot>,
        done: oneshot::Sender<Vec<(String, Restored)>>,
    },
    /// Queue a snapshot of every target this engine keeps (before a
    /// partition is revoked); `done` learns how many.
    SnapshotNow { done: oneshot::Sender<usize> },
    /// A reloaded, checked configuration ([`Engine::reconfigure`]).
    Reconfigure(Box<Reconfigure>),
}

/// What a reload hands the engine.
#[derive(Debug)]
pub struct Reconfigure {
    pub engine: EngineConfig,
    pub targets: Vec<TargetConfig>,
    pub prepared: Prepared,
    pub snapshots: Vec<TargetSnapshot>,
    pub done: oneshot::Sender<ReloadReport>,
}

/// The engine's input channel as sources and publishers use it.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<EngineInput>,
}

/// A handle that does not keep the engine's input open (publishers hold
/// one: acknowledgements must not keep the engine running).
#[derive(Debug, Clone)]
pub struct WeakEngineHandle {
    tx: mpsc::WeakSender<EngineInput>,
}

impl WeakEngineHandle {
    /// The status document of `target` (or of every target), while the
    /// engine runs; None when it has stopped or the target is unknown.
    pub async fn status(&self, target: Option<String>) -> Option<serde_json::Value> {
        let tx = self.tx.upgrade()?;
        let (done, answer) = oneshot::channel();
        tx.send(EngineInput::Status { target, done }).await.ok()?;
        answer.await.ok().flatten()
    }
}

/// The engine task has ended (shutdown): nothing more can be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine has stopped")]
pub struct EngineGone;

impl EngineHandle {
    /// A handle and the receiver the engine task reads (`capacity` inputs
    /// wait at most).
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<EngineInput>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    pub fn downgrade(&self) -> WeakEngineHandle {
        WeakEngineHandle {
            tx: self.tx.downgrade(),
        }
    }

    /// Hands a batch of raw messages from `source` to the engine and waits
    /// for the outcome of each, in order.
    pub async fn apply_batch(
        &self,
        source: &'static str,
        messages: Arc<Vec<(Origin, Vec<u8>)>>,
    ) -> Result<Vec<Ingested>, EngineGone> {
        let (done, outcome) = oneshot::channel();
        let input = EngineInput::Batch {
            source,
            messages,
            done: Some(done),
        };
        self.tx.send(input).await.map_err(|_| EngineGone)?;
        outcome.await.map_err(|_| EngineGone)
    }

    /// A signal a probe measured.
    pub async fn signal(&self, s: Signal) -> Result<(), EngineGone> {
        self.send(EngineInput::Signal(s)).await
    }

    /// A probe of `target` failed to measure (counted toward its
    /// `failure_threshold`).
    pub async fn probe_failed(&self, target: String) -> Result<(), EngineGone> {
        self.send(EngineInput::ProbeFailed { target }).await
    }

    /// A worker's result (the closed loop).
    pub async fn result(&self, r: ScaleResult) -> Result<(), EngineGone> {
        self.send(EngineInput::Result(r)).await
    }

    /// Gives the engine snapshots read from the store; the outcome of each.
    pub async fn restore(
        &self,
        snapshots: Vec<TargetSnapshot>,
    ) -> Result<Vec<(String, Restored)>, EngineGone> {
        let (done, outcome) = oneshot::channel();
        self.send(EngineInput::Restore { snapshots, done }).await?;
        outcome.await.map_err(|_| EngineGone)
    }

    /// Has the engine queue a snapshot of every target it keeps.
    pub async fn snapshot_now(&self) -> Result<usize, EngineGone> {
        let (done, outcome) = oneshot::channel();
        self.send(EngineInput::SnapshotNow { done }).await?;
        outcome.await.map_err(|_| EngineGone)
    }

    /// Any input, waiting for room.
    pub async fn send(&self, input: EngineInput) -> Result<(), EngineGone> {
        self.tx.send(input).await.map_err(|_| EngineGone)
    }
}

impl WeakEngineHandle {
    /// Tells the engine the broker acknowledged a command, if the engine
    /// still runs; never waits (the engine may be blocked on a full command
    /// channel that only the publisher empties: an acknowledgement is not
    /// worth a deadlock).
    pub fn published(&self, target: &str, generation: i64) {
        if let Some(tx) = self.tx.upgrade() {
            let _ = tx.try_send(EngineInput::Published {
                target: target.to_owned(),
                generation,
            });
        }
    }
}
