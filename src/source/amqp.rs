//! The RabbitMQ signal source: a durable queue bound to the signals topic
//! exchange, consumed with a bounded prefetch (`basic_qos`), one batch in
//! flight, acked (with `multiple`) only after the engine applied the batch
//! and every refused message was dead-lettered with a publisher confirm.
//! A lost connection or channel is reconnected with backoff; what was
//! delivered but not acked is redelivered by the broker.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::acker::Acker;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use serde::Deserialize;
use tokio::sync::watch;

use crate::broker::amqp::{self, AmqpSettings, ConnectError};
use crate::broker::{default_binding_keys, default_deadletter};
use crate::engine::slots::Slots;
use crate::event::{DeadLetter, Origin};
use crate::retry::Backoff;
use crate::secret::{ManagementUrl, Secret, Url};
use crate::settings::{de_duration, problem, yes, Problem};
use crate::source::kafka::MAX_BATCH;
use crate::source::SourceContext;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    #[serde(flatten)]
    pub url: Secret<Url>,
    #[serde(default = "default_signals_exchange")]
    pub exchange: String,
    #[serde(default = "default_scaler_queue")]
    pub queue: String,
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Declare the exchange and queue (true) or only check that they exist.
    #[serde(default = "yes")]
    pub declare: bool,
    /// Binding keys of the queue on the exchange (signals are published
    /// with routing key `<type>.<target>`).
    #[serde(default = "default_binding_keys")]
    pub binding_keys: Vec<String>,
    #[serde(default = "default_deadletter")]
    pub deadletter_exchange: String,
    /// PEM CA file for `amqps://` (default: the system's trust store).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The management HTTP API (`http://user:pass@host:15672`): at start,
    /// the bindings a queue already has are listed there and not declared
    /// again.
    #[serde(flatten)]
    pub management_url: Secret<ManagementUrl>,
    /// Scale-out: 0 reads one queue; N reads N slot queues `<queue>.<k>`,
    /// each with a single active consumer, each target bound on the slot
    /// its name hashes to. Scalers sharing the slots share the targets.
    #[serde(default)]
    pub slots: u16,
    /// How long connecting waits for the bindings the queues miss before
    /// it consumes anyway and makes the rest meanwhile (a first start
    /// with tens of thousands of targets: RabbitMQ makes a few thousand
    /// bindings a second).
    #[serde(default = "default_bindings_wait", deserialize_with = "de_duration")]
    pub bindings_wait: Duration,
}

fn default_bindings_wait() -> Duration {
    Duration::from_secs(5)
}

impl AmqpSourceConfig {
    pub fn settings(&self) -> AmqpSettings {
        AmqpSettings {
            key: "source.amqp.url".into(),
            url: self.url.reference().clone(),
            tls_ca_file: self.tls_ca_file.clone(),
        }
    }

    /// Checks `[source.amqp]`.
    pub fn check(&self, out: &mut Vec<Problem>) {
        self.settings().check(out);
        self.management_url.check("source.amqp.management_url", out);
        if self.prefetch == 0 {
            out.push(problem("source.amqp.prefetch", "must be at least 1"));
        }
        if self.slots > MAX_SLOTS {
            out.push(problem(
                "source.amqp.slots",
                format!("{}: give 0 (one queue) to {MAX_SLOTS}", self.slots),
            ));
        }
        if self.slots > 0 && self.binding_keys != crate::broker::default_binding_keys() {
            out.push(problem(
                "source.amqp.binding_keys",
                format!(
                    "{:?}: with slots, each slot queue is bound to its own targets' routing \
                     keys; leave binding_keys out",
                    self.binding_keys
                ),
            ));
        }
    }
}

fn default_signals_exchange() -> String {
    "tidewatch.signals".into()
}
fn default_scaler_queue() -> String {
    "tidewatch.scaler".into()
}
fn default_prefetch() -> u16 {
    500
}

/// The virtual host an AMQP URL names: its path, percent-decoded; `/`
/// when it has none.
pub fn vhost_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() {
        return "/".into();
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The routing keys `queue` is bound with from `exchange`, from the
/// management API at `base`.
async fn existing_bindings(
    base: &str,
    vhost: &str,
    queue: &str,
    exchange: &str,
) -> Result<Vec<String>, String> {
    let queue_url = crate::source::probe::management_queue_url(base, vhost, queue)
        .map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let redact = |e: &dyn std::fmt::Display| amqp::redact(&e.to_string());
    let resp = client
        .get(format!("{queue_url}/bindings"))
        .send()
        .await
        .map_err(|e| redact(&e))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body = resp.bytes().await.map_err(|e| redact(&e))?;
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&body).map_err(|e| format!("not a list of bindings: {e}"))?;
    Ok(list
        .iter()
        .filter(|b| b.get("source").and_then(|s| s.as_str()) == Some(exchange))
        .filter_map(|b| b.get("routing_key")?.as_str().map(str::to_owned))
        .collect())
}

/// The setting a queue comes from, for errors.
fn setting_of(slot: Option<u16>) -> &'static str {
    match slot {
        Some(_) => "source.amqp.slots",
        None => "source.amqp.queue",
    }
}

/// The name of slot queue `k` of `queue`.
pub fn slot_queue(queue: &str, k: u16) -> String {
    format!("{queue}.{k}")
}

/// The most slot queues.
pub const MAX_SLOTS: u16 = 1024;

/// How long a batch waits for more deliveries after its first.
pub const LINGER: Duration = Duration::from_millis(1);

pub struct AmqpSource {
    cfg: AmqpSourceConfig,
    settings: AmqpSettings,
    ctx: SourceContext,
    /// With `slots`: which slot queues this scaler is the active consumer
    /// of, and the configured targets (each bound on its slot's queue).
    slots: Option<SlotMode>,
    /// The bindings this process made, per queue: a reconnect binds only
    /// what is missing from a queue that still exists.
    bound: Arc<std::sync::Mutex<HashMap<String, HashSet<String>>>>,
}

/// The slot queues' side of a source with `slots`.
pub struct SlotMode {
    pub slots: Arc<Slots>,
    /// The configured targets' names, as reloads change them.
    pub names: Arc<std::sync::RwLock<Vec<String>>>,
    /// The state store, when there is one: a slot gained from another
    /// scaler goes live once its targets' snapshots are restored, and a
    /// slot handed on is written first.
    pub state: Option<crate::state::StateHandle>,
    /// The slots whose targets with no snapshot have been counted `cold`:
    /// the first time this process gains each (a slot gained again hands
    /// over targets that were live a moment ago).
    pub counted: Arc<std::sync::Mutex<HashSet<u16>>>,
}

/// How long handing a slot on waits for its targets' snapshots to be
/// written.
const HAND_ON_FLUSH: Duration = Duration::from_secs(5);

impl SlotMode {
    /// The configured targets of `slot`.
    fn targets_of(&self, slot: u16) -> Vec<String> {
        self.names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|n| self.slots.slot_of(n) == slot)
            .cloned()
            .collect()
    }
}

/// How often each slot queue gets a heartbeat, so that a scaler learns it
/// is a slot's active consumer even when its targets send nothing.
pub const SLOT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Channels the slot queues are declared over at once.
const DECLARE_CHANNELS: usize = 16;
/// Heartbeats between two looks at the share of slots.
const REBALANCE_EVERY: u64 = 5;
/// The header that marks a heartbeat (its value: the slot).
const HEARTBEAT_HEADER: &str = "x-tidewatch-slot-heartbeat";

/// A catch-all end marker for `queue` (default exchange), expiring in a
/// minute if nobody reads it.
async fn publish_marker(s: &Session, queue: &str, id: &str) -> Result<(), String> {
    let mut headers = FieldTable::default();
    headers.insert(CATCH_ALL_END.into(), AMQPValue::LongString(id.into()));
    let props = lapin::BasicProperties::default()
        .with_headers(headers)
        .with_expiration("60000".into());
    s.ch.basic_publish(
        "",
        queue,
        lapin::options::BasicPublishOptions::default(),
        &[],
        props,
    )
    .await
    .map(drop)
    .map_err(|e| format!("catch-all end marker to {queue:?}: {e}"))
}

/// Once the catch-all has ended: cancels its consumer (RabbitMQ deletes
/// the queue, `auto_delete`) and forgets it.
async fn close_catch_all(
    s: &Session,
    catch_all: &mut Option<CatchAll>,
    metrics: &crate::telemetry::Metrics,
) -> Result<(), String> {
    if !catch_all.as_ref().is_some_and(CatchAll::ended) {
        return Ok(());
    }
    *catch_all = None;
    metrics.catch_all(false);
    let Some(consumer) = &s.catch_all else {
        return Ok(());
    };
    s.ch.basic_cancel(
        consumer.tag().as_str(),
        lapin::options::BasicCancelOptions::default(),
    )
    .await
    .map_err(|e| format!("cancelling the catch-all's consumer: {e}"))
}

/// The text of a header's value (a long or short string; else empty).
fn field_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(t) => String::from_utf8_lossy(t.as_bytes()).into_owned(),
        AMQPValue::ShortString(t) => t.as_str().to_owned(),
        _ => String::new(),
    }
}

/// Acks the latest acker sent (with `multiple`) until the sender is gone;
/// a value sent before that is still acked.
async fn ack_latest(mut pending: watch::Receiver<Option<Acker>>) -> Result<(), lapin::Error> {
    loop {
        if pending.changed().await.is_err() {
            return Ok(());
        }
        let latest = pending.borrow_and_update().clone();
        if let Some(a) = latest {
            a.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
}

/// One connection's worth of state.
pub struct Session {
    conn: Connection,
    /// The consuming channel (heartbeats and new bindings go out on it).
    ch: Channel,
    /// Each consumer with its slot (None: the one queue).
    consumers: Vec<(Option<u16>, Consumer)>,
    /// In confirm mode, for dead letters.
    deadletters: Channel,
    /// The bindings still being made when the session opened.
    binder: std::sync::Mutex<Option<Binder>>,
    /// A first start's catch-all queue and its consumer, with slots.
    catch_all: Option<Consumer>,
    catch_all_plan: std::sync::Mutex<Option<CatchAll>>,
}

/// A first start's catch-all, with slots. RabbitMQ makes a few thousand
/// bindings a second, so a first start with 50,000 targets waits half a
/// minute for the last of them, and until a target's binding is made the
/// exchange drops its signals. Meanwhile an exclusive queue bound with `#`
/// carries every signal: this scaler applies from it the signals of the
/// slots whose queues it created now (the engine decides only for those it
/// holds) and drops those slots' copies in their slot queues, which are
/// new, so there is no backlog to lose. Once every binding is made it
/// sends an end marker into each such slot queue it holds, unbinds the
/// catch-all and sends an end marker into it: a slot queue's signals count
/// again after its marker, the catch-all's until its own. A signal
/// published between the two markers (one round trip) is applied twice.
/// A slot handed on leaves the catch-all at once.
#[derive(Debug)]
pub struct CatchAll {
    queue: String,
    /// This session's markers carry it (a marker of another session or
    /// scaler is ignored).
    id: String,
    /// Per slot: its signals are taken from the catch-all.
    serves: Vec<bool>,
    /// Per slot: its slot queue's signals are copies, dropped until its
    /// end marker.
    drops: Vec<bool>,
    /// The configured targets of the slots it serves: a signal for any
    /// other (another scaler's, or no one's) is not this scaler's, as the
    /// exchange would not have routed it to a slot queue.
    targets: HashSet<String>,
    phase: Phase,
}

/// Where a catch-all is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Bindings are still being made.
    Open,
    /// Every binding is made; its end markers are out since then.
    Ending(std::time::Instant),
    /// Its own end marker came back (or the markers were waited for too
    /// long): it carries nothing any more.
    Ended,
}

/// The header of a catch-all's end marker (its value: the session's id).
const CATCH_ALL_END: &str = "x-tidewatch-catch-all-end";
/// How long slot queues' end markers are waited for before their signals
/// count again anyway (one lost with a slot handed on mid-way).
const CATCH_ALL_END_WAIT: Duration = Duration::from_secs(30);

impl CatchAll {
    /// A catch-all serving the slots `new` says were created now, whose
    /// configured targets are `targets`.
    fn new(queue: String, id: String, new: Vec<bool>, targets: HashSet<String>) -> Self {
        Self {
            queue,
            id,
            drops: new.clone(),
            serves: new,
            targets,
            phase: Phase::Open,
        }
    }

    fn ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Whether a signal delivered from `from` is applied. A slot queue's
    /// slot is in `from`; what the catch-all carries is judged by the
    /// target its routing key names and that target's slot (`key`, read
    /// only then).
    fn applies<'k>(&self, from: From, key: impl FnOnce() -> (&'k str, u16)) -> bool {
        let flag = |v: &[bool], k: u16| v.get(usize::from(k)).copied().unwrap_or(false);
        match from {
            From::Queue => true,
            From::Slot(k, _) => !flag(&self.drops, k),
            From::CatchAll => {
                let (target, k) = key();
                flag(&self.serves, k) && self.targets.contains(target)
            }
        }
    }

    /// `slot` is handed on: its signals come from its slot queue alone if
    /// it comes back.
    fn released(&mut self, slot: u16) {
        let k = usize::from(slot);
        if k < self.serves.len() {
            self.serves[k] = false;
            self.drops[k] = false;
        }
    }

    /// Every binding is made: the slots held (by `holds`) that get an end
    /// marker; the rest's slot queues count at once.
    fn end(&mut self, holds: impl Fn(u16) -> bool, now: std::time::Instant) -> Vec<u16> {
        self.phase = Phase::Ending(now);
        let mut marked = Vec::new();
        for (k, d) in self.drops.iter_mut().enumerate() {
            if *d && holds(k as u16) {
                marked.push(k as u16);
            } else {
                *d = false;
            }
        }
        marked
    }

    /// An end marker arrived from `from` with `id`.
    fn marker(&mut self, from: From, id: &str) {
        if id != self.id {
            return;
        }
        match from {
            From::Slot(k, _) => {
                if let Some(d) = self.drops.get_mut(usize::from(k)) {
                    *d = false;
                }
            }
            From::CatchAll => self.finish(),
            From::Queue => {}
        }
    }

    fn finish(&mut self) {
        self.serves.iter_mut().for_each(|s| *s = false);
        self.phase = Phase::Ended;
    }

    /// Whether the end markers have been waited for too long (`now`): if
    /// so every slot queue counts again and the catch-all ends.
    fn overdue(&mut self, now: std::time::Instant) -> bool {
        let late = matches!(self.phase,
            Phase::Ending(t) if now.duration_since(t) >= CATCH_ALL_END_WAIT);
        if late {
            self.drops.iter_mut().for_each(|d| *d = false);
            self.finish();
        }
        late
    }
}

/// Bindings made on a task of their own; dropping it stops the task.
pub struct Binder {
    task: tokio::task::JoinHandle<Result<usize, ConnectError>>,
    metrics: Arc<crate::telemetry::Metrics>,
}

impl Binder {
    /// How many bindings were made, once all are.
    async fn wait(&mut self) -> Result<usize, ConnectError> {
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ConnectError::Unreachable(format!(
                "source.amqp: the binding task ended: {e}"
            ))),
        }
    }
}

impl Drop for Binder {
    fn drop(&mut self) {
        self.task.abort();
        self.metrics.bindings_pending_reset();
    }
}

/// Notes that `queue` has the bindings `keys`.
fn remember(
    bound: &std::sync::Mutex<HashMap<String, HashSet<String>>>,
    queue: &str,
    keys: Vec<String>,
) {
    bound
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(queue.to_owned())
        .or_default()
        .extend(keys);
}

/// `keys` were declared on `queue` now: counted and noted.
fn note_bound(
    metrics: &crate::telemetry::Metrics,
    bound: &std::sync::Mutex<HashMap<String, HashSet<String>>>,
    queue: &str,
    keys: Vec<String>,
) {
    metrics.bindings_declared(keys.len());
    remember(bound, queue, keys);
}

/// Waits for `binder` to finish and empties it; never, when empty.
async fn all_bound(binder: &mut Option<Binder>) -> Result<usize, ConnectError> {
    let Some(b) = binder.as_mut() else {
        return std::future::pending().await;
    };
    let r = b.wait().await;
    *binder = None;
    r
}

/// Where a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    /// The one queue (no slots).
    Queue,
    /// A slot queue, and which of this session's consumers of it (a
    /// released slot is consumed anew).
    Slot(u16, u32),
    /// A first start's catch-all queue ([`CatchAll`]).
    CatchAll,
}

type Deliveries = futures::stream::SelectAll<
    futures::stream::BoxStream<'static, (From, Option<Result<Delivery, lapin::Error>>)>,
>;

/// A consumer's deliveries tagged with where they come from, ending with
/// a `None` delivery when the consumer ends.
fn tagged(
    from: From,
    c: &Consumer,
) -> futures::stream::BoxStream<'static, (From, Option<Result<Delivery, lapin::Error>>)> {
    c.clone()
        .map(move |d| (from, Some(d)))
        .chain(futures::stream::once(async move { (from, None) }))
        .boxed()
}

impl Session {
    /// Every consumer's deliveries as one stream.
    fn deliveries(&self) -> Deliveries {
        futures::stream::select_all(
            self.consumers
                .iter()
                .map(|(slot, c)| tagged(slot.map_or(From::Queue, |k| From::Slot(k, 0)), c))
                .chain(self.catch_all.iter().map(|c| tagged(From::CatchAll, c))),
        )
    }
}

/// The slot consumers of one session, as rebalancing replaces them.
struct SlotConsumers {
    /// Per slot: the consumer's generation and tag.
    current: Vec<(u32, lapin::types::ShortString)>,
}

impl SlotConsumers {
    fn of(s: &Session) -> Self {
        Self {
            current: s
                .consumers
                .iter()
                .filter(|(slot, _)| slot.is_some())
                .map(|(_, c)| (0, c.tag()))
                .collect(),
        }
    }

    /// A delivery or end from the slot's current consumer (not one this
    /// scaler cancelled to hand the slot on).
    fn is_current(&self, from: From) -> bool {
        match from {
            From::Queue | From::CatchAll => true,
            From::Slot(k, generation) => self
                .current
                .get(usize::from(k))
                .is_some_and(|(g, _)| *g == generation),
        }
    }
}

/// How a session ended.
enum Ended {
    /// Told to stop, or the engine is gone: close and return.
    Stopped,
    /// The connection or channel broke: reconnect.
    Lost(String),
}

impl AmqpSource {
    pub fn new(cfg: &AmqpSourceConfig, ctx: SourceContext, slots: Option<SlotMode>) -> Self {
        Self {
            settings: cfg.settings(),
            cfg: cfg.clone(),
            ctx,
            slots,
            bound: Default::default(),
        }
    }

    /// The queues to read, each with its slot and binding keys.
    fn queues(&self) -> Vec<(String, Option<u16>, Vec<String>)> {
        let c = &self.cfg;
        let Some(mode) = &self.slots else {
            return vec![(c.queue.clone(), None, c.binding_keys.clone())];
        };
        let n = mode.slots.count();
        let mut keys: Vec<Vec<String>> = vec![Vec::new(); usize::from(n)];
        for name in mode.names.read().unwrap_or_else(|p| p.into_inner()).iter() {
            keys[usize::from(mode.slots.slot_of(name))].push(format!("*.{name}"));
        }
        keys.into_iter()
            .enumerate()
            .map(|(k, keys)| (slot_queue(&c.queue, k as u16), Some(k as u16), keys))
            .collect()
    }

    /// The keys of `keys` not bound to `queue` by this process yet.
    fn missing(&self, queue: &str, keys: &[String]) -> Vec<String> {
        let bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        match bound.get(queue) {
            Some(have) => keys
                .iter()
                .filter(|k| !have.contains(*k))
                .cloned()
                .collect(),
            None => keys.to_vec(),
        }
    }

    fn knows_nothing_of(&self, queue: &str) -> bool {
        !self
            .bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(queue)
    }

    /// With `management_url`: notes the bindings `queue` has on the signal
    /// exchange as made, so that a new process declares only the missing
    /// ones. A failure is logged, and everything is declared.
    async fn list_bindings(&self, queue: &str) {
        let base = match self
            .cfg
            .management_url
            .resolve("source.amqp.management_url")
        {
            Ok(Some(base)) => base,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("{e}; declaring every binding");
                return;
            }
        };
        match existing_bindings(&base, &self.vhost(), queue, &self.cfg.exchange).await {
            Ok(keys) => {
                tracing::info!(
                    queue,
                    bindings = keys.len(),
                    "amqp source: bindings already in place (management API)"
                );
                self.remember(queue, keys);
            }
            Err(e) => tracing::warn!(
                setting = "source.amqp.management_url",
                queue,
                "cannot list the queue's bindings ({e}); declaring every binding"
            ),
        }
    }

    /// The virtual host of the source's URL (`/` when it names none).
    fn vhost(&self) -> String {
        let url = self
            .cfg
            .url
            .resolve("source.amqp.url")
            .ok()
            .flatten()
            .unwrap_or_default();
        vhost_of(&url)
    }

    /// `keys` were declared on `queue` now.
    fn note_bound(&self, queue: &str, keys: Vec<String>) {
        note_bound(&self.ctx.metrics, &self.bound, queue, keys);
    }

    /// `queue` has the bindings `keys`.
    fn remember(&self, queue: &str, keys: Vec<String>) {
        remember(&self.bound, queue, keys);
    }

    /// Declares `queue` (or checks it) and returns the bindings it misses,
    /// and whether it was created now. A queue that did not exist has none
    /// of its bindings, whatever this process made before.
    async fn declare_queue(
        &self,
        conn: &Connection,
        ch: &Channel,
        (queue, slot, keys): &(String, Option<u16>, Vec<String>),
    ) -> Result<(Vec<String>, bool), ConnectError> {
        let c = &self.cfg;
        let key = setting_of(*slot);
        let mut created = false;
        if c.declare {
            let lost = |e: lapin::Error| ConnectError::Unreachable(format!("{key} {queue:?}: {e}"));
            if !amqp::queue_exists(conn, queue).await.map_err(lost)? {
                created = true;
                self.bound
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(queue.as_str());
            } else if self.knows_nothing_of(queue) {
                self.list_bindings(queue).await;
            }
        }
        let mut args = FieldTable::default();
        if slot.is_some() {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        amqp::queue_with(ch, queue, key, c.declare, args).await?;
        Ok(match c.declare {
            true => (self.missing(queue, keys), created),
            false => (Vec::new(), false),
        })
    }

    /// With slots, when this session created slot queues that miss
    /// bindings: the catch-all ([`CatchAll`]), bound before any of them so
    /// that no signal falls between.
    async fn open_catch_all(
        &self,
        ch: &Channel,
        created: &[u16],
    ) -> Result<Option<(Consumer, CatchAll)>, ConnectError> {
        let Some(mode) = &self.slots else {
            return Ok(None);
        };
        if created.is_empty() {
            return Ok(None);
        }
        let id = crate::broker::unique_suffix();
        let queue = format!("{}.catch-all.{id}", self.cfg.queue);
        let key = "source.amqp.slots";
        let broke = |e: lapin::Error| {
            ConnectError::Topology(format!("{key}: the catch-all queue {queue:?}: {e}"))
        };
        amqp::exclusive_catch_all(ch, &queue, &self.cfg.exchange)
            .await
            .map_err(broke)?;
        let lost = |e: lapin::Error| ConnectError::Unreachable(format!("{key}: {e}"));
        let consumer = amqp::consume(ch, &queue, key, self.cfg.prefetch, "tidewatch", lost).await?;
        let mut new = vec![false; usize::from(mode.slots.count())];
        for &k in created {
            new[usize::from(k)] = true;
        }
        let targets: HashSet<String> = created.iter().flat_map(|&k| mode.targets_of(k)).collect();
        tracing::info!(queue = %queue, slots = created.len(), targets = targets.len(), "amqp source: new slot queues; their signals come through a catch-all queue until every target is bound");
        Ok(Some((consumer, CatchAll::new(queue, id, new, targets))))
    }

    /// Binds what the queues miss over a few channels of their own at once
    /// (the broker handles each channel's methods in turn), each
    /// pipelined, on a task of its own: the bindings are noted (and
    /// counted) chunk by chunk, so a reconnect midway binds only the rest.
    /// None when nothing is missing.
    async fn bind_missing(
        &self,
        conn: &Connection,
        missing: Vec<(String, Option<u16>, Vec<String>)>,
    ) -> Result<Option<Binder>, ConnectError> {
        let lost = |e: lapin::Error| {
            ConnectError::Unreachable(format!("source.amqp {}: {e}", self.settings.shown_url()))
        };
        // (queue, slot, a chunk of its keys), dealt out over the lanes
        let chunks: Vec<(String, Option<u16>, Vec<String>)> = missing
            .iter()
            .flat_map(|(q, slot, keys)| {
                keys.chunks(amqp::BIND_IN_FLIGHT)
                    .map(move |c| (q.clone(), *slot, c.to_vec()))
            })
            .collect();
        if chunks.is_empty() {
            return Ok(None);
        }
        let pending: usize = chunks.iter().map(|c| c.2.len()).sum();
        let lanes = chunks.len().clamp(1, DECLARE_CHANNELS);
        let mut channels = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            channels.push(conn.create_channel().await.map_err(lost)?);
        }
        // each lane's chunks its own, in turn
        let mut dealt = vec![Vec::new(); lanes];
        for (k, chunk) in chunks.into_iter().enumerate() {
            dealt[k % lanes].push(chunk);
        }
        let exchange = self.cfg.exchange.clone();
        let bound = self.bound.clone();
        let metrics = self.ctx.metrics.clone();
        metrics.bindings_pending(pending as i64);
        let task = tokio::spawn(async move {
            let lanes_done =
                futures::future::try_join_all(channels.iter().zip(dealt).map(|(lc, lane)| {
                    let (exchange, bound, metrics) = (&exchange, &bound, &metrics);
                    async move {
                        for (queue, slot, keys) in lane {
                            amqp::bind_keys(lc, &queue, exchange, &keys, setting_of(slot)).await?;
                            metrics.bindings_pending(-(keys.len() as i64));
                            note_bound(metrics, bound, &queue, keys);
                        }
                        Ok::<(), ConnectError>(())
                    }
                }))
                .await;
            for lc in &channels {
                let _ = lc.close(200, "bound").await;
            }
            lanes_done.map(|_| pending)
        });
        Ok(Some(Binder {
            task,
            metrics: self.ctx.metrics.clone(),
        }))
    }

    /// Connects, declares (or checks) the exchanges and the queue, sets the
    /// prefetch and starts consuming.
    pub async fn open(&self) -> Result<Session, ConnectError> {
        let conn = self.settings.connect("source").await?;
        let lost = |e: lapin::Error| {
            ConnectError::Unreachable(format!("source.amqp {}: {e}", self.settings.shown_url()))
        };
        let ch = conn.create_channel().await.map_err(lost)?;
        let c = &self.cfg;
        amqp::exchange(&ch, &c.exchange, "source.amqp.exchange", c.declare).await?;
        amqp::deadletter_topology(
            &ch,
            &c.deadletter_exchange,
            "source.amqp.deadletter_exchange",
            c.declare,
        )
        .await?;
        let queues = self.queues();
        let mut missing = Vec::new();
        let mut created = Vec::new();
        for q in &queues {
            let (keys, new) = self.declare_queue(&conn, &ch, q).await?;
            if !keys.is_empty() {
                if let (true, Some(k)) = (new, q.1) {
                    created.push(k);
                }
                missing.push((q.0.clone(), q.1, keys));
            }
        }
        let catch_all = self.open_catch_all(&ch, &created).await?;
        // what the catch-all does not carry waits for its bindings a while
        let uncovered = missing
            .iter()
            .any(|(_, slot, _)| catch_all.is_none() || slot.is_none_or(|k| !created.contains(&k)));
        let mut binder = self.bind_missing(&conn, missing).await?;
        if let (Some(b), true) = (binder.as_mut(), uncovered) {
            // A first start with many targets: ready (consuming, deciding
            // for the targets bound so far) after `bindings_wait` while
            // the rest are bound at the broker's pace. Until a binding is
            // made its signals are dropped by the exchange, which was so
            // when every binding was waited for too.
            match tokio::time::timeout(self.cfg.bindings_wait, b.wait()).await {
                Ok(r) => {
                    binder = None;
                    r?;
                }
                Err(_) => tracing::info!(
                    pending = self.ctx.metrics.bindings_pending_now(),
                    "amqp source: still binding targets; consuming meanwhile"
                ),
            }
        }
        let mut consumers = Vec::with_capacity(queues.len());
        for (queue, slot, _) in &queues {
            let consumer =
                amqp::consume(&ch, queue, setting_of(*slot), c.prefetch, "tidewatch", lost).await?;
            consumers.push((*slot, consumer));
        }
        let deadletters = amqp::confirm_channel(&conn, lost).await?;
        let (catch_all, plan) = catch_all.unzip();
        Ok(Session {
            conn,
            ch,
            consumers,
            deadletters,
            binder: std::sync::Mutex::new(binder),
            catch_all,
            catch_all_plan: std::sync::Mutex::new(plan),
        })
    }

    /// Consumes until `stop` turns true, reconnecting whenever the broker
    /// goes away. `first` is a session opened by the caller at start.
    pub async fn run(self, first: Option<Session>) {
        let mut stop = self.ctx.stop.clone();
        let mut backoff = Backoff::default();
        let mut session = first;
        loop {
            let s = match session.take() {
                Some(s) => s,
                None => match amqp::connect_with_retry(
                    "source.amqp.url",
                    "amqp source",
                    &mut backoff,
                    || self.open(),
                    &mut stop,
                )
                .await
                {
                    Some(s) => {
                        tracing::info!(setting = "source.amqp.url", url = %self.settings.shown_url(), queue = %self.cfg.queue, "amqp source connected");
                        s
                    }
                    None => break,
                },
            };
            backoff.reset();
            self.ctx.ready.store(true, Ordering::Relaxed);
            self.ctx.metrics.broker_connected("source", true);
            let ended = self.consume(&s, &mut stop).await;
            if matches!(ended, Ended::Stopped) {
                // the scalers that take the slots over read this
                self.write_slot_state(None).await;
            }
            self.ctx.metrics.broker_connected("source", false);
            self.ctx.metrics.catch_all(false);
            if let Some(mode) = &self.slots {
                // with the channel go the consumers: others are active now
                self.ctx
                    .metrics
                    .partitions_moved("revoked", mode.slots.held_count());
                mode.slots.lost_all();
                self.ctx.metrics.partitions_assigned(0);
            }
            match ended {
                Ended::Stopped => {
                    let _ = s.conn.close(200, "tidewatch stopping").await;
                    break;
                }
                Ended::Lost(e) => {
                    self.ctx.ready.store(false, Ordering::Relaxed);
                    self.ctx.metrics.broker_reconnecting(
                        "source",
                        "source.amqp.url",
                        &format_args!("{} at {}", e, self.settings.shown_url()),
                    );
                    if !amqp::wait_or_stop(&mut backoff, &mut stop).await {
                        break;
                    }
                }
            }
        }
        tracing::info!("amqp source stopped");
    }

    /// With slots and a state store: writes the snapshots of the targets
    /// of `slot` (None: of every slot held) and waits for the store, at
    /// most [`HAND_ON_FLUSH`], before their consumers go.
    async fn write_slot_state(&self, slot: Option<u16>) {
        let Some(state) = self.slots.as_ref().and_then(|m| m.state.as_ref()) else {
            return;
        };
        let written = async {
            let n = match slot {
                Some(k) => self.ctx.engine.snapshot_slot(k).await,
                None => self.ctx.engine.snapshot_now().await,
            };
            let _ = state.flush().await;
            n.unwrap_or(0)
        };
        match tokio::time::timeout(HAND_ON_FLUSH, written).await {
            Ok(n) => tracing::info!(
                ?slot,
                snapshots = n,
                "amqp source: the state is written before the slot's consumer goes"
            ),
            Err(_) => tracing::warn!(
                ?slot,
                "amqp source: the state was not written within 5 s; the consumer goes anyway"
            ),
        }
    }

    /// At most half the prefetch per batch: while the engine applies one
    /// batch, the broker keeps delivering the next one within the unacked
    /// budget instead of waiting for the ack.
    fn max_batch(&self) -> usize {
        (usize::from(self.cfg.prefetch) / 2).clamp(1, MAX_BATCH)
    }

    async fn consume(&self, s: &Session, stop: &mut watch::Receiver<bool>) -> Ended {
        // Acks go out from their own task, the latest batch's with
        // `multiple` covering every earlier one, so that the next batch is
        // read while an ack is on its way.
        let (acks, pending) = watch::channel::<Option<Acker>>(None);
        let mut acker = tokio::spawn(ack_latest(pending));
        let ended = self.consume_batches(s, stop, &acks, &mut acker).await;
        drop(acks);
        match ended {
            Ended::Lost(e) => {
                acker.abort();
                Ended::Lost(e)
            }
            ended => {
                // The last ack must leave before the connection closes.
                match tokio::time::timeout(Duration::from_secs(5), &mut acker).await {
                    Ok(Ok(Ok(()))) => {}
                    other => tracing::warn!("amqp source: last ack not confirmed: {other:?}"),
                }
                ended
            }
        }
    }

    async fn consume_batches(
        &self,
        s: &Session,
        stop: &mut watch::Receiver<bool>,
        acks: &watch::Sender<Option<Acker>>,
        acker: &mut tokio::task::JoinHandle<Result<(), lapin::Error>>,
    ) -> Ended {
        let mut deliveries = s.deliveries();
        let mut consumers = SlotConsumers::of(s);
        // With slots: heartbeats into every slot queue, bindings for
        // targets a reload added, and a fair share of the slots.
        let mut beat = tokio::time::interval(SLOT_HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = 0u64;
        let mut binder = s.binder.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut catch_all = s
            .catch_all_plan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.ctx.metrics.catch_all(catch_all.is_some());
        /// What woke the loop (a value on the stack for one turn: the
        /// delivery is not boxed).
        #[allow(clippy::large_enum_variant)]
        enum Step {
            Beat,
            AllBound,
            Delivery(Option<(From, Option<Result<Delivery, lapin::Error>>)>),
        }
        loop {
            let step = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Ended::Stopped,
                r = all_bound(&mut binder) => match r {
                    Ok(n) => {
                        tracing::info!(bindings = n, "amqp source: every target is bound");
                        Step::AllBound
                    }
                    Err(e) => return Ended::Lost(e.to_string()),
                },
                r = &mut *acker => return Ended::Lost(match r {
                    Ok(Err(e)) => format!("ack: {e}"),
                    other => format!("ack task ended: {other:?}"),
                }),
                _ = beat.tick(), if self.slots.is_some() => Step::Beat,
                d = deliveries.next() => Step::Delivery(d),
            };
            let first = match step {
                Step::Delivery(d) => d,
                Step::AllBound => {
                    if let Some(c) = catch_all.as_mut() {
                        if let Err(e) = self.end_catch_all(s, c).await {
                            return Ended::Lost(e);
                        }
                    }
                    continue;
                }
                Step::Beat => {
                    beats += 1;
                    if let Err(e) = self.beat(s, beats, binder.is_none()).await {
                        return Ended::Lost(e);
                    }
                    if let Some(c) = catch_all.as_mut() {
                        if c.overdue(std::time::Instant::now()) {
                            tracing::warn!(queue = %c.queue, "amqp source: the catch-all's end markers did not all come back within 30 s; it ends anyway");
                        }
                    }
                    if let Err(e) = close_catch_all(s, &mut catch_all, &self.ctx.metrics).await {
                        return Ended::Lost(e);
                    }
                    if beats.is_multiple_of(REBALANCE_EVERY) {
                        if let Err(e) = self
                            .rebalance(s, &mut consumers, &mut deliveries, &mut catch_all)
                            .await
                        {
                            return Ended::Lost(e);
                        }
                    }
                    continue;
                }
            };
            let mut batch = Vec::with_capacity(64);
            let cancelled = |from: From| {
                !consumers.is_current(from)
                    // (once ended, the catch-all is forgotten before its
                    // consumer is cancelled)
                    || (from == From::CatchAll && catch_all.is_none())
            };
            match first {
                Some((from, Some(Ok(d)))) => batch.push((from, d)),
                Some((_, Some(Err(e)))) => return Ended::Lost(e.to_string()),
                // a consumer this scaler cancelled itself has ended
                Some((from, None)) if cancelled(from) => continue,
                Some((_, None)) | None => {
                    return Ended::Lost("the broker cancelled the consumer".into())
                }
            }
            // Gather what else arrives within LINGER of the first: under
            // load, fewer and larger batches (each batch wakes the engine
            // and sends an ack); when idle, at most LINGER more latency.
            // Sleeping through the LINGER and then taking what is there,
            // rather than awaiting each delivery within it, wakes this task
            // once a batch instead of once a delivery: at 5,000 signals a
            // second that was 5,000 thread wake-ups a second on each of
            // the runtime's workers, most of the source's CPU
            // (docs/PERFORMANCE.md, "One wake-up a batch").
            let until = tokio::time::Instant::now() + LINGER;
            let mut slept = false;
            while batch.len() < self.max_batch() {
                let next = match deliveries.next().now_or_never() {
                    Some(d) => d,
                    None if slept => break,
                    None => {
                        tokio::time::sleep_until(until).await;
                        slept = true;
                        continue;
                    }
                };
                match next {
                    Some((from, Some(Ok(d)))) => batch.push((from, d)),
                    Some((_, Some(Err(e)))) => return Ended::Lost(e.to_string()),
                    Some((from, None)) if cancelled(from) => continue,
                    Some((_, None)) | None => {
                        return Ended::Lost("the broker cancelled the consumer".into())
                    }
                }
            }
            match self.handle(s, batch, &consumers, &mut catch_all).await {
                Ok(last) => {
                    let _ = acks.send(Some(last));
                }
                Err(ended) => return ended,
            }
            if let Err(e) = close_catch_all(s, &mut catch_all, &self.ctx.metrics).await {
                return Ended::Lost(e);
            }
        }
    }

    /// Every binding is made: sends the catch-all's end markers (into the
    /// slot queues first, so that a signal published meanwhile is applied
    /// twice rather than never), unbinding the catch-all between them.
    async fn end_catch_all(&self, s: &Session, c: &mut CatchAll) -> Result<(), String> {
        let Some(mode) = &self.slots else {
            return Ok(());
        };
        if c.phase != Phase::Open {
            return Ok(());
        }
        let marked = c.end(|k| mode.slots.holds(k), std::time::Instant::now());
        for &k in &marked {
            publish_marker(s, &slot_queue(&self.cfg.queue, k), &c.id).await?;
        }
        s.ch.queue_unbind(&c.queue, &self.cfg.exchange, "#", FieldTable::default())
            .await
            .map_err(|e| format!("unbinding the catch-all queue {:?}: {e}", c.queue))?;
        publish_marker(s, &c.queue, &c.id).await?;
        tracing::info!(queue = %c.queue, slots = marked.len(), "amqp source: every target is bound; the catch-all ends");
        Ok(())
    }

    /// The target a signal's routing key (`<type>.<target>`) names, and
    /// its slot.
    fn target_of_key<'k>(&self, routing_key: &'k str) -> (&'k str, u16) {
        let target = routing_key.split_once('.').map_or("", |(_, t)| t);
        (
            target,
            self.slots.as_ref().map_or(0, |m| m.slots.slot_of(target)),
        )
    }

    /// Hands slots on while this scaler holds more than its share: the
    /// slot queues' consumer count says how many scalers there are (each
    /// consumes every slot), and a share is the slots over that, rounded
    /// up. One slot a round: its consumer is cancelled (so RabbitMQ makes
    /// the next waiting consumer, another scaler's, active) and consumed
    /// anew at the back of the line.
    async fn rebalance(
        &self,
        s: &Session,
        consumers: &mut SlotConsumers,
        deliveries: &mut Deliveries,
        catch_all: &mut Option<CatchAll>,
    ) -> Result<(), String> {
        let Some(mode) = &self.slots else {
            return Ok(());
        };
        let first = slot_queue(&self.cfg.queue, 0);
        let (_, scalers) = amqp::queue_with(
            &s.ch,
            &first,
            "source.amqp.slots",
            false,
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let n = usize::from(mode.slots.count());
        let share = n.div_ceil((scalers as usize).max(1));
        if mode.slots.held_count() <= share {
            return Ok(());
        }
        let Some(k) = (0..mode.slots.count()).rev().find(|&k| mode.slots.holds(k)) else {
            return Ok(());
        };
        let queue = slot_queue(&self.cfg.queue, k);
        let (generation, tag) = consumers.current[usize::from(k)].clone();
        // what its targets learned here goes to the store first, for the
        // scaler that takes the slot
        self.write_slot_state(Some(k)).await;
        // not ours from this moment: what is in flight is still applied
        mode.slots.release(k);
        self.ctx.metrics.partitions_moved("revoked", 1);
        if let Some(c) = catch_all.as_mut() {
            c.released(k);
        }
        self.ctx
            .metrics
            .partitions_assigned(mode.slots.held_count());
        s.ch.basic_cancel(tag.as_str(), lapin::options::BasicCancelOptions::default())
            .await
            .map_err(|e| format!("cancelling the consumer of {queue:?}: {e}"))?;
        let lost = |e: lapin::Error| ConnectError::Unreachable(e.to_string());
        let c = amqp::consume(
            &s.ch,
            &queue,
            "source.amqp.slots",
            self.cfg.prefetch,
            "tidewatch",
            lost,
        )
        .await
        .map_err(|e| e.to_string())?;
        consumers.current[usize::from(k)] = (generation + 1, c.tag());
        deliveries.push(tagged(From::Slot(k, generation + 1), &c));
        tracing::info!(slot = k, queue = %queue, scalers, share, "amqp source: handed a slot on to another scaler");
        Ok(())
    }

    /// One heartbeat into every slot queue (default exchange, expiring in
    /// a few beats): whoever is its active consumer learns so. Every fifth
    /// beat also binds the targets a reload added (with `bind`: not while
    /// the session's first bindings are still being made).
    async fn beat(&self, s: &Session, beats: u64, bind: bool) -> Result<(), String> {
        let Some(mode) = &self.slots else {
            return Ok(());
        };
        for slot in 0..mode.slots.count() {
            let queue = slot_queue(&self.cfg.queue, slot);
            let mut headers = FieldTable::default();
            headers.insert(
                HEARTBEAT_HEADER.into(),
                AMQPValue::LongUInt(u32::from(slot)),
            );
            let props = lapin::BasicProperties::default()
                .with_headers(headers)
                .with_expiration((SLOT_HEARTBEAT.as_millis() as u64 * 5).to_string().into());
            s.ch.basic_publish(
                "",
                &queue,
                lapin::options::BasicPublishOptions::default(),
                &[],
                props,
            )
            .await
            .map_err(|e| format!("slot heartbeat to {queue:?}: {e}"))?;
        }
        // the targets' binding keys only every few beats, not every second
        if beats.is_multiple_of(REBALANCE_EVERY) && self.cfg.declare && bind {
            for (queue, _, keys) in self.queues() {
                let missing = self.missing(&queue, &keys);
                if missing.is_empty() {
                    continue;
                }
                amqp::bind_keys(
                    &s.ch,
                    &queue,
                    &self.cfg.exchange,
                    &missing,
                    "source.amqp.slots",
                )
                .await
                .map_err(|e| e.to_string())?;
                tracing::info!(queue = %queue, bindings = missing.len(), "amqp source: bound new targets");
                self.note_bound(&queue, missing);
            }
        }
        self.ctx
            .metrics
            .partitions_assigned(mode.slots.held_count());
        Ok(())
    }

    /// Applies a batch and dead-letters what was refused; returns the
    /// acker of its last delivery, to ack it all. A delivery from a slot
    /// queue shows this scaler is its active consumer; heartbeats stop here.
    async fn handle(
        &self,
        s: &Session,
        batch: Vec<(From, Delivery)>,
        consumers: &SlotConsumers,
        catch_all: &mut Option<CatchAll>,
    ) -> Result<Acker, Ended> {
        let mut last = None;
        let mut work = Vec::with_capacity(batch.len());
        for (from, d) in batch {
            // what a cancelled consumer still delivers is applied, but
            // shows nothing about who is active now
            let gained = match (&self.slots, from) {
                (Some(mode), From::Slot(k, _)) if consumers.is_current(from) => {
                    mode.slots.gained(k).then_some((mode, k))
                }
                _ => None,
            };
            if let Some((mode, k)) = gained {
                tracing::info!(slot = k, queue = %slot_queue(&self.cfg.queue, k), "amqp source: this scaler is now the slot's active consumer");
                self.ctx.metrics.partitions_moved("assigned", 1);
                self.ctx
                    .metrics
                    .partitions_assigned(mode.slots.held_count());
                if let Some(state) = &mode.state {
                    // live once its targets have what the last owner wrote
                    let (engine, metrics) = (self.ctx.engine.clone(), self.ctx.metrics.clone());
                    let (slots, names, state) =
                        (mode.slots.clone(), mode.targets_of(k), state.clone());
                    let first = mode
                        .counted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(k);
                    tokio::spawn(async move {
                        let started = std::time::Instant::now();
                        let restored =
                            crate::source::restore_targets(&engine, &state, names, &metrics, first)
                                .await;
                        if slots.holds(k) {
                            slots.restored(k);
                        }
                        let restored = restored.map_or(0, |(n, _)| n);
                        tracing::info!(slot = k, restored, took = ?started.elapsed(), "amqp source: the slot's targets restored; live");
                    });
                }
            }
            let headers = d.properties.headers().as_ref();
            let beat = headers.is_some_and(|h| h.inner().contains_key(HEARTBEAT_HEADER));
            let marker = headers.and_then(|h| h.inner().get(CATCH_ALL_END));
            if let (Some(id), Some(c)) = (marker, catch_all.as_mut()) {
                c.marker(from, &field_text(id));
            }
            let skipped = match catch_all.as_ref() {
                Some(c) => !c.applies(from, || self.target_of_key(d.routing_key.as_str())),
                // what the catch-all still delivers after it ended
                None => from == From::CatchAll,
            };
            // the acker of the batch's last delivery acks it all
            if beat || marker.is_some() || skipped {
                last = Some(d.acker);
            } else {
                last = None;
                work.push(d);
            }
        }
        let applied = match work.is_empty() {
            true => None,
            false => Some(self.apply(s, work).await?),
        };
        Ok(last.or(applied).expect("a batch has a first delivery"))
    }

    async fn apply(&self, s: &Session, mut batch: Vec<Delivery>) -> Result<Acker, Ended> {
        // The routing key says which input (format) a message is in; a
        // dead letter takes the rest from the delivery.
        let messages: Vec<(Origin, Vec<u8>)> = batch
            .iter_mut()
            .map(|d| {
                let origin = Origin {
                    topic: d.exchange.to_string(),
                    key: Some(d.routing_key.as_str().as_bytes().to_vec()),
                    ..Origin::default()
                };
                (origin, std::mem::take(&mut d.data))
            })
            .collect();
        let messages = Arc::new(messages);
        let Ok(outcomes) = self.ctx.engine.apply_batch("amqp", messages.clone()).await else {
            return Err(Ended::Stopped);
        };
        let now = self.ctx.clock.now_ms();
        for (((_, bytes), outcome), d) in messages.iter().zip(&outcomes).zip(&batch) {
            if outcome.rejected.is_empty() {
                continue;
            }
            let origin = Origin {
                topic: d.exchange.to_string(),
                key: Some(d.routing_key.as_str().as_bytes().to_vec()),
                ..Origin::default()
            };
            if let Some(dl) = DeadLetter::of("amqp", &origin, bytes, &outcome.rejected, now) {
                if let Err(e) = self.dead_letter(s, d, bytes, &dl).await {
                    return Err(Ended::Lost(format!("dead letter: {e}")));
                }
            }
        }
        let last = batch.pop().expect("a batch has a first delivery");
        Ok(last.acker)
    }

    /// Publishes the original message to the dead-letter exchange with the
    /// reasons in its headers, retrying a nack with backoff; Err when the
    /// channel is gone (the batch is then redelivered, not acked).
    async fn dead_letter(
        &self,
        s: &Session,
        d: &Delivery,
        bytes: &[u8],
        dl: &DeadLetter,
    ) -> Result<(), lapin::Error> {
        let mut headers = d.properties.headers().clone().unwrap_or_default();
        let mut put = |k: &str, v: &str| {
            headers.insert(k.into(), AMQPValue::LongString(v.into()));
        };
        put("x-tidewatch-reason", &dl.reason);
        put("x-tidewatch-detail", &dl.detail);
        put("x-tidewatch-received-at", &dl.received_at);
        put("x-original-exchange", d.exchange.as_str());
        put("x-original-routing-key", d.routing_key.as_str());
        let reasons = serde_json::to_string(&dl.rejections).unwrap_or_default();
        put("x-tidewatch-rejections", &reasons);
        if let Some(total) = dl.rejections_total {
            put("x-tidewatch-rejections-total", &total.to_string());
        }
        let props = d
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        let mut backoff = Backoff::default();
        loop {
            match amqp::publish_confirmed(
                &s.deadletters,
                &self.cfg.deadletter_exchange,
                d.routing_key.as_str(),
                bytes,
                props.clone(),
            )
            .await
            {
                Ok(true) => break,
                Ok(false) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(setting = "source.amqp.deadletter_exchange", exchange = %self.cfg.deadletter_exchange, "dead letter not confirmed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.ctx
            .metrics
            .dead_lettered(dl.source.as_str(), dl.reason.as_str());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{CatchAll, From, CATCH_ALL_END_WAIT};
    use std::time::Instant;

    /// Slots 0 and 2 of 4 were created now; "t" is a configured target.
    fn catch_all() -> CatchAll {
        CatchAll::new(
            "q.catch-all.x".into(),
            "x".into(),
            vec![true, false, true, false],
            ["t".to_owned()].into(),
        )
    }

    #[test]
    fn the_catch_all_carries_the_new_slots_and_their_queues_copies_are_dropped() {
        let c = catch_all();
        for (slot, new) in [(0, true), (1, false), (2, true), (3, false)] {
            assert_eq!(
                c.applies(From::CatchAll, || ("t", slot)),
                new,
                "slot {slot}"
            );
            assert_eq!(
                c.applies(From::Slot(slot, 0), || ("t", slot)),
                !new,
                "slot {slot}"
            );
        }
        assert!(c.applies(From::Queue, || ("t", 0)));
        // a routing key's slot out of range is not carried
        assert!(!c.applies(From::CatchAll, || ("t", 9)));
        // nor a target this scaler does not have, whatever its slot
        assert!(!c.applies(From::CatchAll, || ("other", 0)));
    }

    #[test]
    fn each_slot_queue_counts_again_after_its_own_marker_and_the_catch_all_after_its_own() {
        let mut c = catch_all();
        let t = Instant::now();
        // slot 2 is not held: no marker, its queue counts at once
        assert_eq!(c.end(|k| k == 0, t), vec![0]);
        assert!(c.applies(From::Slot(2, 0), || ("t", 2)));
        assert!(!c.applies(From::Slot(0, 0), || ("t", 0)));
        // another session's marker changes nothing
        c.marker(From::Slot(0, 0), "y");
        assert!(!c.applies(From::Slot(0, 0), || ("t", 0)));
        c.marker(From::Slot(0, 0), "x");
        assert!(c.applies(From::Slot(0, 0), || ("t", 0)));
        // until the catch-all's own marker, what it holds still counts
        assert!(c.applies(From::CatchAll, || ("t", 0)) && !c.ended());
        c.marker(From::CatchAll, "x");
        assert!(c.ended() && !c.applies(From::CatchAll, || ("t", 0)));
        assert!(!c.overdue(t + CATCH_ALL_END_WAIT * 2), "ended already");
    }

    #[test]
    fn a_slot_handed_on_leaves_the_catch_all() {
        let mut c = catch_all();
        c.released(0);
        assert!(!c.applies(From::CatchAll, || ("t", 0)));
        assert!(
            c.applies(From::Slot(0, 1), || ("t", 0)),
            "if it comes back, from its queue"
        );
        assert!(c.applies(From::CatchAll, || ("t", 2)));
        c.released(7); // out of range: nothing
    }

    #[test]
    fn markers_that_never_come_back_are_waited_for_30_seconds() {
        let mut c = catch_all();
        let t = Instant::now();
        assert!(!c.overdue(t + CATCH_ALL_END_WAIT), "not ending yet");
        c.end(|_| true, t);
        assert!(!c.overdue(t + CATCH_ALL_END_WAIT - std::time::Duration::from_millis(1)));
        assert!(!c.applies(From::Slot(2, 0), || ("t", 2)));
        assert!(c.overdue(t + CATCH_ALL_END_WAIT));
        assert!(c.ended());
        assert!(
            c.applies(From::Slot(2, 0), || ("t", 2)) && !c.applies(From::CatchAll, || ("t", 2))
        );
    }

    #[test]
    fn the_vhost_is_the_urls_decoded_path() {
        for (url, vhost) in [
            ("amqp://guest:guest@127.0.0.1:5672/%2f", "/"),
            ("amqp://guest:guest@127.0.0.1:5672/%2F", "/"),
            ("amqp://127.0.0.1:5672", "/"),
            ("amqps://u:p@h:5671/orders?heartbeat=10", "orders"),
            ("amqp://h/a%2Fb", "a/b"),
            ("amqp://h/100%", "100%"),
        ] {
            assert_eq!(super::vhost_of(url), vhost, "{url}");
        }
    }
}
