//! Engine shards (`engine.shards`): the targets are split over a fixed
//! number of engines, each on its own task with its own windows, policies
//! (and Lua VMs) and guard, so one scaler uses every core. A target's
//! shard is a hash of its name; [`super::EngineHandle`] routes each
//! decoded signal, result and control to it. Inside a shard nothing
//! changes: one task, no locks on the hot path.

use std::sync::Arc;

use crate::clock::Millis;
use crate::policy::PolicyError;
use crate::telemetry::Metrics;

use super::{Engine, EngineConfig, TargetConfig};

/// The shard of target `name` among `shards`. A 64-bit FNV-1a of the
/// name, mixed and folded from its high bits, so that it does not follow
/// the RabbitMQ slot of the same name (FNV-1a 32 modulo the slot count):
/// a scaler holding every other slot still spreads its targets over all
/// its shards.
pub fn shard_of(name: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mixed = h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    (mixed % shards as u64) as usize
}

/// Splits `items` over `shards` by `shard` (each item's shard), keeping
/// their order within a shard.
pub fn split_into<T>(
    items: impl IntoIterator<Item = T>,
    shards: usize,
    shard: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..shards.max(1)).map(|_| Vec::new()).collect();
    for item in items {
        let k = shard(&item);
        out[k].push(item);
    }
    out
}

/// Splits `items` by the shard of each one's target name, keeping their
/// order within a shard.
pub fn split_by<T>(items: Vec<T>, shards: usize, name: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    split_into(items, shards, |t| shard_of(name(t), shards))
}

/// The shard count `engine.shards` asks for: 0 is one per core.
pub fn count(engine: &EngineConfig) -> usize {
    match engine.shards {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Builds one engine per shard, each with its share of `targets`, on a
/// thread each (loading the policies is the slow part of a start).
pub fn build(
    engine: &EngineConfig,
    targets: &[TargetConfig],
    metrics: &Arc<Metrics>,
    now_ms: Millis,
) -> Result<Vec<Engine>, PolicyError> {
    let n = count(engine);
    let parts = split_by(targets.to_vec(), n, |t| t.name.as_str());
    let built: Vec<Result<Engine, PolicyError>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(k, part)| {
                let metrics = metrics.clone();
                s.spawn(move || {
                    let mut e = Engine::new(engine, part, metrics, now_ms)?;
                    e.shard = k;
                    Ok(e)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(_) => Err(PolicyError {
                    kind: crate::policy::PolicyErrorKind::Load,
                    policy: String::new(),
                    message: "a shard's build panicked".into(),
                }),
            })
            .collect()
    });
    built.into_iter().collect()
}

/// Runs shard `engine` on a thread of its own, with its own
/// single-threaded runtime, until its input closes; the engine comes back
/// through the returned receiver. A shard's slices are Lua calls that do
/// not yield: on the shared runtime's workers they held the sources, the
/// publisher and the results reader off a core until a slice ended, while
/// on their own threads the kernel preempts them for the I/O tasks.
pub fn spawn(
    engine: Engine,
    input: tokio::sync::mpsc::Receiver<super::EngineInput>,
    commands: tokio::sync::mpsc::Sender<crate::command::ScaleCommand>,
    clock: Arc<dyn crate::clock::Clock>,
    tick: std::time::Duration,
) -> std::io::Result<tokio::sync::oneshot::Receiver<Engine>> {
    let (done, finished) = tokio::sync::oneshot::channel();
    let shard = engine.shard();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name(format!("tidewatch-shard-{shard}"))
        .spawn(move || {
            let engine = rt.block_on(super::drive(
                engine,
                input,
                commands,
                clock,
                tick,
                std::future::pending::<()>(),
            ));
            let _ = done.send(engine);
        })?;
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_has_one_shard_and_names_spread_evenly() {
        for n in [1, 2, 3, 8] {
            let mut counts = vec![0usize; n];
            for i in 0..10_000 {
                let name = format!("t{i}");
                let k = shard_of(&name, n);
                assert_eq!(k, shard_of(&name, n), "stable");
                counts[k] += 1;
            }
            let even = 10_000 / n;
            for c in &counts {
                assert!(
                    c.abs_diff(even) * 10 < even,
                    "{n} shards: {counts:?} is not within 10% of {even} each"
                );
            }
        }
    }

    #[test]
    fn shards_do_not_follow_rabbitmq_slots() {
        // the targets of one slot spread over both shards
        let names: Vec<String> = (0..20_000)
            .map(|i| format!("t{i}"))
            .filter(|n| super::super::slots::slot_of(n, 16) == 3)
            .collect();
        let in_zero = names.iter().filter(|n| shard_of(n, 2) == 0).count();
        assert!(
            in_zero.abs_diff(names.len() / 2) * 10 < names.len() / 2,
            "{in_zero} of {} in shard 0",
            names.len()
        );
    }

    #[test]
    fn split_keeps_the_order_within_a_shard() {
        let names: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
        let parts = split_by(names.clone(), 3, |s| s.as_str());
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 100);
        for (k, part) in parts.iter().enumerate() {
            let expected: Vec<&String> = names.iter().filter(|n| shard_of(n, 3) == k).collect();
            assert_eq!(part.iter().collect::<Vec<_>>(), expected);
        }
    }
}
