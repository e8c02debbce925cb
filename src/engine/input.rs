//! What sources, probes and command publishers hand to the engine task,
//! and [`EngineHandle`], the one way they do it: a batch of raw messages
//! whose outcomes come back in order (so a source stores offsets or acks
//! only after the apply), a probe's signal, a worker's result, and the
//! broker's acknowledgement of a command.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use super::shards::shard_of;
use crate::clock::Clock;

use crate::clock::Millis;
use crate::command::ScaleResult;
use crate::engine::{
    EngineConfig, Prepared, ReloadReport, Restored, SharedOwnership, TargetConfig,
};
use crate::event::{Decoded, Inputs, Limits, Origin, Rejection, Signal};
use crate::state::TargetSnapshot;

/// One message decoded away from the engine task (by the source's task,
/// through [`EngineHandle::apply_batch`]), or the part of it that one
/// shard applies: the items with their index in the message.
#[derive(Debug)]
pub struct DecodedMessage {
    pub origin: Origin,
    pub items: Vec<(usize, Decoded)>,
    /// The input it came through, when that input maps records of
    /// another format (its unmatched records are counted per input).
    pub mapped: Option<Arc<MappedInput>>,
}

/// What the engine needs of a mapped input (`[[source.inputs]]`).
#[derive(Debug)]
pub struct MappedInput {
    pub name: String,
    pub deadletter_unmatched: bool,
}

/// Decodes one message from `source` received at `now_ms`: through the
/// input that matches it, else as tidewatch's own format within `limits`.
pub fn decode_message(
    inputs: &Inputs,
    limits: &Limits,
    source: &str,
    bytes: &[u8],
    now_ms: Millis,
    origin: &Origin,
) -> DecodedMessage {
    let at = crate::event::At {
        now_ms,
        // A message without `ts` happened when the broker got it.
        default_ts: origin.timestamp.unwrap_or(now_ms),
    };
    let input = inputs.find(source, origin);
    let decoded = match input {
        Some(i) => i.decode(bytes, at),
        None => crate::event::decode_tidewatch(bytes, at, limits),
    };
    DecodedMessage {
        origin: origin.clone(),
        items: decoded.into_iter().enumerate().collect(),
        mapped: input.filter(|i| i.is_mapped()).map(|i| {
            Arc::new(MappedInput {
                name: i.name.clone(),
                deadletter_unmatched: i.deadletter_unmatched,
            })
        }),
    }
}

/// Marks the message at `origin` processed in `ownership` (Kafka: its
/// partition goes live once the replay reaches the assignment's start).
pub fn mark_processed(ownership: Option<&SharedOwnership>, origin: &Origin) {
    if let (Some(o), Some(p), Some(offset)) = (ownership, origin.partition, origin.offset) {
        o.lock()
            .unwrap_or_else(|p| p.into_inner())
            .processed(&(origin.topic.clone(), p), offset);
    }
}

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
    /// This shard's part of a batch that [`EngineHandle::apply_batch`]
    /// decoded: each message with its index in the batch; `done` learns
    /// the outcome of each part.
    Decoded {
        source: &'static str,
        messages: Vec<(usize, DecodedMessage)>,
        done: oneshot::Sender<Vec<(usize, Ingested)>>,
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
    /// Queue a snapshot of the targets this engine keeps that `pick`
    /// names; `done` learns how many.
    SnapshotNow {
        pick: Pick,
        done: oneshot::Sender<usize>,
    },
    /// A reloaded, checked configuration ([`Engine::reconfigure`]).
    Reconfigure(Box<Reconfigure>),
}

/// Which targets a [`EngineInput::SnapshotNow`] snapshots.
#[derive(Debug, Clone)]
pub enum Pick {
    /// Every target (shutdown).
    All,
    /// The targets of one RabbitMQ slot (before it is handed on).
    Slot(u16),
    /// The targets of these Kafka partitions (before they are revoked).
    Partitions(Arc<Vec<(String, i32)>>),
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

/// The engine's input as sources, probes, publishers and the reloader use
/// it: one channel per shard ([`super::shards`]), each input routed to the
/// shard of its target. A batch is decoded here, on the caller's task,
/// and each shard gets its signals.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    shards: Arc<[mpsc::Sender<EngineInput>]>,
    router: Arc<Router>,
}

/// What routing needs besides the channels.
struct Router {
    clock: Arc<dyn Clock>,
    /// How messages are decoded: the inputs and the validation limits
    /// (the limits follow configuration reloads).
    decoding: RwLock<(Arc<Inputs>, Limits)>,
    /// Kafka partitions: a message's offset is marked processed once
    /// every shard has applied its part.
    ownership: RwLock<Option<SharedOwnership>>,
    /// The configured targets in order (a reload changes them), for the
    /// status list.
    names: Arc<RwLock<Vec<String>>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

/// A handle that does not keep the engine's input open (publishers hold
/// one: acknowledgements must not keep the engine running).
#[derive(Debug, Clone)]
pub struct WeakEngineHandle {
    shards: Arc<[mpsc::WeakSender<EngineInput>]>,
    router: Arc<Router>,
}

impl WeakEngineHandle {
    /// The status document of `target` (or of every target, in the
    /// configuration's order), while the engine runs; None when it has
    /// stopped or the target is unknown.
    pub async fn status(&self, target: Option<String>) -> Option<serde_json::Value> {
        let ask = |k: usize, target: Option<String>| {
            let tx = self.shards[k].upgrade();
            async move {
                let (done, answer) = oneshot::channel();
                tx?.send(EngineInput::Status { target, done }).await.ok()?;
                answer.await.ok().flatten()
            }
        };
        if let Some(name) = target {
            let k = shard_of(&name, self.shards.len());
            return ask(k, Some(name)).await;
        }
        let mut all = Vec::new();
        for k in 0..self.shards.len() {
            let doc = ask(k, None).await?;
            if let Some(serde_json::Value::Array(list)) = doc.get("targets") {
                all.extend(list.iter().cloned());
            }
        }
        if self.shards.len() > 1 {
            let names = self.router.names.read().unwrap_or_else(|p| p.into_inner());
            let order: HashMap<&str, usize> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), i))
                .collect();
            all.sort_by_key(|t| {
                t.get("name")
                    .and_then(|n| n.as_str())
                    .and_then(|n| order.get(n).copied())
                    .unwrap_or(usize::MAX)
            });
        }
        Some(serde_json::json!({ "targets": all }))
    }

    /// Tells the engine the broker acknowledged a command, if the engine
    /// still runs; never waits (the engine may be blocked on a full command
    /// channel that only the publisher empties: an acknowledgement is not
    /// worth a deadlock).
    pub fn published(&self, target: &str, generation: i64) {
        let k = shard_of(target, self.shards.len());
        if let Some(tx) = self.shards[k].upgrade() {
            let _ = tx.try_send(EngineInput::Published {
                target: target.to_owned(),
                generation,
            });
        }
    }
}

/// The engine task has ended (shutdown): nothing more can be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine has stopped")]
pub struct EngineGone;

impl EngineHandle {
    /// A handle to `shards` engine shards and the receiver each shard's
    /// task reads (`capacity` inputs wait at most, per shard). Messages
    /// are decoded with `inputs` and `limits` at `clock`'s time; `names`
    /// (the configured targets, as reloads change them) orders the status
    /// list.
    pub fn sharded(
        shards: usize,
        capacity: usize,
        clock: Arc<dyn Clock>,
        inputs: Arc<Inputs>,
        limits: Limits,
        names: Arc<RwLock<Vec<String>>>,
    ) -> (Self, Vec<mpsc::Receiver<EngineInput>>) {
        let (txs, rxs): (Vec<_>, Vec<_>) =
            (0..shards.max(1)).map(|_| mpsc::channel(capacity)).unzip();
        let router = Router {
            clock,
            decoding: RwLock::new((inputs, limits)),
            ownership: RwLock::new(None),
            names,
        };
        let handle = Self {
            shards: txs.into(),
            router: Arc::new(router),
        };
        (handle, rxs)
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    pub fn downgrade(&self) -> WeakEngineHandle {
        WeakEngineHandle {
            shards: self.shards.iter().map(|tx| tx.downgrade()).collect(),
            router: self.router.clone(),
        }
    }

    /// Kafka partitions: marks each message's offset processed once every
    /// shard has applied its part.
    pub fn track_ownership(&self, ownership: SharedOwnership) {
        *self
            .router
            .ownership
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(ownership);
    }

    fn shard(&self, target: &str) -> &mpsc::Sender<EngineInput> {
        &self.shards[shard_of(target, self.shards.len())]
    }

    /// Decodes a batch of raw messages from `source`, hands each shard its
    /// signals and waits for the outcome of each message, in order.
    /// Records that name no target (rejected, skipped) go to shard 0,
    /// which counts them.
    pub async fn apply_batch(
        &self,
        source: &'static str,
        messages: Arc<Vec<(Origin, Vec<u8>)>>,
    ) -> Result<Vec<Ingested>, EngineGone> {
        let n = self.shards.len();
        let now = self.router.clock.now_ms();
        let mut parts: Vec<Vec<(usize, DecodedMessage)>> = (0..n).map(|_| Vec::new()).collect();
        {
            let decoding = self
                .router
                .decoding
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let (inputs, limits) = &*decoding;
            for (k, (origin, bytes)) in messages.iter().enumerate() {
                let m = decode_message(inputs, limits, source, bytes, now, origin);
                if n == 1 {
                    parts[0].push((k, m));
                    continue;
                }
                let DecodedMessage {
                    origin,
                    items,
                    mapped,
                } = m;
                // a signal to its target's shard; the rest to shard 0
                let split = super::shards::split_into(items, n, |(_, d)| match d {
                    Decoded::Signal(s) => shard_of(s.target(), n),
                    _ => 0,
                });
                for (shard, items) in split.into_iter().enumerate() {
                    if !items.is_empty() {
                        parts[shard].push((
                            k,
                            DecodedMessage {
                                origin: origin.clone(),
                                items,
                                mapped: mapped.clone(),
                            },
                        ));
                    }
                }
            }
        }
        let answers = self
            .ask(non_empty(parts), |messages, done| EngineInput::Decoded {
                source,
                messages,
                done,
            })
            .await?;
        let mut out: Vec<Ingested> = (0..messages.len()).map(|_| Ingested::default()).collect();
        for answer in answers {
            for (k, got) in answer {
                let o = &mut out[k];
                o.applied += got.applied;
                o.rejected.extend(got.rejected);
            }
        }
        if n > 1 {
            for o in &mut out {
                o.rejected.sort_by_key(|(i, _)| *i);
            }
        }
        let ownership = self
            .router
            .ownership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (origin, _) in messages.iter() {
            mark_processed(ownership.as_ref(), origin);
        }
        Ok(out)
    }

    /// A signal a probe measured.
    pub async fn signal(&self, s: Signal) -> Result<(), EngineGone> {
        let tx = self.shard(s.target()).clone();
        tx.send(EngineInput::Signal(s))
            .await
            .map_err(|_| EngineGone)
    }

    /// A probe of `target` failed to measure (counted toward its
    /// `failure_threshold`).
    pub async fn probe_failed(&self, target: String) -> Result<(), EngineGone> {
        let tx = self.shard(&target).clone();
        tx.send(EngineInput::ProbeFailed { target })
            .await
            .map_err(|_| EngineGone)
    }

    /// A worker's result (the closed loop).
    pub async fn result(&self, r: ScaleResult) -> Result<(), EngineGone> {
        let tx = self.shard(&r.target).clone();
        tx.send(EngineInput::Result(r))
            .await
            .map_err(|_| EngineGone)
    }

    /// Gives each shard its targets' snapshots from the store; the outcome
    /// of each.
    pub async fn restore(
        &self,
        snapshots: Vec<TargetSnapshot>,
    ) -> Result<Vec<(String, Restored)>, EngineGone> {
        let parts = super::shards::split_by(snapshots, self.shards.len(), |s| s.target.as_str());
        let answers = self
            .ask(non_empty(parts), |snapshots, done| EngineInput::Restore {
                snapshots,
                done,
            })
            .await?;
        Ok(answers.into_iter().flatten().collect())
    }

    /// Has every shard queue a snapshot of every target it keeps; how many.
    pub async fn snapshot_now(&self) -> Result<usize, EngineGone> {
        self.snapshot(Pick::All).await
    }

    /// Has every shard queue a snapshot of the targets of RabbitMQ slot
    /// `slot` it keeps; how many.
    pub async fn snapshot_slot(&self, slot: u16) -> Result<usize, EngineGone> {
        self.snapshot(Pick::Slot(slot)).await
    }

    /// Has every shard queue a snapshot of the targets of the Kafka
    /// partitions `keys` (topic, partition) it keeps; how many.
    pub async fn snapshot_partitions(&self, keys: Vec<(String, i32)>) -> Result<usize, EngineGone> {
        self.snapshot(Pick::Partitions(Arc::new(keys))).await
    }

    async fn snapshot(&self, pick: Pick) -> Result<usize, EngineGone> {
        let every = vec![Some(()); self.shards.len()];
        let counts = self
            .ask(every, |(), done| EngineInput::SnapshotNow {
                pick: pick.clone(),
                done,
            })
            .await?;
        Ok(counts.into_iter().sum())
    }

    /// A reloaded, checked configuration: each shard gets its targets,
    /// the new ones built in `prepared` and their snapshots; the reports
    /// are merged.
    pub async fn reconfigure(
        &self,
        engine: EngineConfig,
        targets: Vec<TargetConfig>,
        prepared: Prepared,
        snapshots: Vec<TargetSnapshot>,
    ) -> Result<ReloadReport, EngineGone> {
        let n = self.shards.len();
        {
            let mut decoding = self
                .router
                .decoding
                .write()
                .unwrap_or_else(|p| p.into_inner());
            decoding.1 = engine.limits();
        }
        let targets = super::shards::split_by(targets, n, |t| t.name.as_str());
        let snapshots = super::shards::split_by(snapshots, n, |s| s.target.as_str());
        let parts: Vec<_> = targets
            .into_iter()
            .zip(prepared.split(n))
            .zip(snapshots)
            .map(Some)
            .collect();
        let reports = self
            .ask(parts, |((targets, prepared), snapshots), done| {
                EngineInput::Reconfigure(Box::new(Reconfigure {
                    engine: engine.clone(),
                    targets,
                    prepared,
                    snapshots,
                    done,
                }))
            })
            .await?;
        let mut all = ReloadReport::default();
        for report in reports {
            all.merge(report);
        }
        Ok(all)
    }

    /// Sends shard k the input `input` makes of `parts[k]` and an answer
    /// channel (no input where `parts[k]` is None: nothing wakes a shard
    /// with nothing to do), then waits for each answer.
    async fn ask<P, R>(
        &self,
        parts: Vec<Option<P>>,
        input: impl Fn(P, oneshot::Sender<R>) -> EngineInput,
    ) -> Result<Vec<R>, EngineGone> {
        let mut waiting = Vec::with_capacity(parts.len());
        for (tx, part) in self.shards.iter().zip(parts) {
            let Some(part) = part else { continue };
            let (done, answer) = oneshot::channel();
            tx.send(input(part, done)).await.map_err(|_| EngineGone)?;
            waiting.push(answer);
        }
        let mut out = Vec::with_capacity(waiting.len());
        for answer in waiting {
            out.push(answer.await.map_err(|_| EngineGone)?);
        }
        Ok(out)
    }
}

/// Each shard's part, None where it is empty.
fn non_empty<T>(parts: Vec<Vec<T>>) -> Vec<Option<Vec<T>>> {
    parts
        .into_iter()
        .map(|p| (!p.is_empty()).then_some(p))
        .collect()
}
