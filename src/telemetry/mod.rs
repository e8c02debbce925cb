//! Every metric name, in one place; the HTTP endpoint (`/metrics`,
//! `/healthz`, `/readyz`); logging. Observable events go through `emit`
//! functions here so that a log line and its metric never drift apart.

pub mod listener;
mod tally;
mod targets;

pub use tally::Tally;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use serde::Deserialize;

use crate::command::{ResultStatus, ScaleCommand, ScaleResult};
use crate::event::Rejection;
use crate::guard::Decision;
use crate::policy::PolicyError;
use crate::settings::{problem, Problem};

pub struct Metrics {
    registry: Registry,
    /// `registry` without the per-target gauges (see [`Reg`]).
    encoded: Registry,
    events_received: IntCounterVec,
    events_rejected: IntCounterVec,
    events_unmatched: IntCounterVec,
    target_queue_depth: GaugeVec,
    target_latency_p95: GaugeVec,
    target_desired_replicas: targets::TargetGauges,
    target_observed_replicas: targets::TargetGauges,
    target_stale: IntGaugeVec,
    target_paused: IntGaugeVec,
    forecasts_published: IntCounterVec,
    forecasts_dropped: IntCounterVec,
    controls: IntCounterVec,
    target_stale_changes: IntCounterVec,
    policy_evaluations: IntCounterVec,
    policy_errors: IntCounterVec,
    policy_seconds: HistogramVec,
    policy_reloads: IntCounterVec,
    policy_quarantined: IntGaugeVec,
    state_snapshots: IntCounterVec,
    state_snapshot_bytes: HistogramVec,
    state_snapshot_age: GaugeVec,
    state_restores: IntCounterVec,
    state_restore_seconds: HistogramVec,
    state_store_warnings: IntCounterVec,
    config_reloads: IntCounterVec,
    decisions: IntCounterVec,
    decision_holds: IntCounterVec,
    commands_issued: IntCounterVec,
    commands_published: IntCounterVec,
    event_to_command_seconds: HistogramVec,
    signal_to_command_seconds: HistogramVec,
    engine_tick_seconds: HistogramVec,
    refit_lag: Gauge,
    refits_running: prometheus::IntGauge,
    refits_deferred: prometheus::IntCounter,
    refits_done: prometheus::IntCounter,
    dead_letters: IntCounterVec,
    dead_letters_lost: IntCounterVec,
    command_publish_failures: IntCounterVec,
    results_received: IntCounterVec,
    probe_errors: IntCounterVec,
    assigned_partitions: prometheus::IntGauge,
    partition_moves: IntCounterVec,
    source_consumer_lag: IntGaugeVec,
    source_errors: IntCounterVec,
    broker_connected: IntGaugeVec,
    broker_reconnects: IntCounterVec,
    bindings_declared: IntCounterVec,
    bindings_pending: prometheus::IntGauge,
    catch_all: prometheus::IntGauge,
    commands_unacknowledged: targets::TargetGauges,
    commands_reissued: IntCounterVec,
    provider_calls: IntCounterVec,
    provider_seconds: HistogramVec,
    worker_results: IntCounterVec,
    process_restarts: IntCounterVec,
    process_backoff: GaugeVec,
    _build_info: Gauge,
    names: Vec<String>,
    health: Health,
    /// `metrics.per_target`, as [`PerTarget`] as u8.
    per_target: std::sync::atomic::AtomicU8,
}

/// How much per-target detail the metrics carry (`metrics.per_target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PerTarget {
    /// Every series per target.
    Full,
    /// Per target: the gauges and counters dashboards and alerts read.
    /// The latency histograms and the hold reasons are summed over the
    /// targets, under `target=""` (in PromQL, no target label).
    #[default]
    Summary,
    /// Nothing per target: counters and histograms summed under
    /// `target=""`, the per-target gauges not exported.
    None,
}

/// The gauge families that only mean something per target.
const PER_TARGET_GAUGES: [&str; 9] = [
    "tidewatch_target_observed_replicas",
    "tidewatch_target_desired_replicas",
    "tidewatch_commands_unacknowledged",
    "tidewatch_target_stale",
    "tidewatch_target_paused",
    "tidewatch_policy_quarantined",
    "tidewatch_target_queue_depth",
    "tidewatch_target_latency_p95_seconds",
    "tidewatch_process_backoff_seconds",
];

/// What `/healthz` answers: alive while the engine ticks (when the
/// process has one) and no input ended on its own. A policy, a deadlock
/// or a dead source task that stops the scaler turns it to 503, so
/// Kubernetes restarts it.
#[derive(Debug, Default)]
struct Health {
    /// Each engine shard's last tick and the longest gap that is still
    /// alive; `None`: no engine (a worker).
    engine: std::sync::Mutex<Option<(Vec<std::time::Instant>, std::time::Duration)>>,
    /// Inputs (sources, probes, results readers) that ended on their own.
    lost: std::sync::Mutex<Vec<String>>,
    /// Publishers with a command unacknowledged for too long.
    stalled: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// A registry that remembers the name of every metric registered in it.
/// `registry` has every metric; `encoded` all but the per-target gauges,
/// which a scrape writes straight from their slots (`TargetGauges::write_text`).
#[derive(Default)]
struct Reg {
    registry: Registry,
    encoded: Registry,
    names: std::cell::RefCell<Vec<String>>,
}

impl Reg {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        let c = self.add_unencoded(c);
        self.encoded
            .register(Box::new(c.clone()))
            .expect("metric registered once");
        c
    }

    fn add_unencoded<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.names
            .borrow_mut()
            .extend(c.desc().iter().map(|d| d.fq_name.clone()));
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric registered once");
        c
    }
}

/// The `mode` labels of `tidewatch_target_paused`.
const CONTROL_MODES: [&str; 6] = [
    "paused",
    "paused_scale_in",
    "paused_scale_out",
    "pinned",
    "dry_run_on",
    "dry_run_off",
];

fn counter(r: &Reg, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.add(c)
}

fn gauge(r: &Reg, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.add(g)
}

/// A per-target gauge whose series come and go with commands; a scrape
/// never holds a lock its writers wait on (targets.rs).
fn target_gauge(r: &Reg, name: &str, help: &str) -> targets::TargetGauges {
    r.add_unencoded(targets::TargetGauges::new(name, help).expect("valid metric definition"))
}

fn int_gauge(r: &Reg, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.add(g)
}

/// Seconds from a signal's own time to a command: milliseconds when all
/// is well, seconds to minutes when a backlog builds.
fn signal_reaction_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ]
}

fn histogram(r: &Reg, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric definition");
    r.add(h)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Reg::default();
        let fast = vec![1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1];
        let reaction = vec![
            1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let build_info = Gauge::with_opts(
            Opts::new("tidewatch_build_info", "Always 1; the version is a label.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid metric definition");
        let build_info = r.add(build_info);
        build_info.set(1.0);
        Self {
            events_received: counter(
                &r,
                "tidewatch_events_received_total",
                "Signal events received.",
                &["source", "type"],
            ),
            events_rejected: counter(
                &r,
                "tidewatch_events_rejected_total",
                "Signal events rejected, by reason.",
                &["source", "type", "reason"],
            ),
            events_unmatched: counter(
                &r,
                "tidewatch_events_unmatched_total",
                "Gateway log records that became no signal: no target (no_target), a name that is not a target name (invalid_target), a target this scaler does not configure (unknown_target), or dropped by a filter (filtered). Counted per input (topic or routing-key pattern); dropped unless the input dead-letters them.",
                &["source", "input", "reason"],
            ),
            target_queue_depth: gauge(
                &r,
                "tidewatch_target_queue_depth",
                "Latest summed queue depth of a target.",
                &["target"],
            ),
            target_latency_p95: gauge(
                &r,
                "tidewatch_target_latency_p95_seconds",
                "p95 gateway latency of a target over its shortest window.",
                &["target"],
            ),
            target_desired_replicas: target_gauge(&r, "tidewatch_target_desired_replicas", "Replicas last decided."),
            target_observed_replicas: target_gauge(&r, "tidewatch_target_observed_replicas", "Replicas as last reported by a worker (or assumed)."),
            target_stale: int_gauge(
                &r,
                "tidewatch_target_stale",
                "1 while a target's signals are stale (stale_after, or failure_threshold probe failures in a row).",
                &["target"],
            ),
            target_paused: int_gauge(
                &r,
                "tidewatch_target_paused",
                "1 for each run-time control in force on a target (mode: paused, paused_scale_in, paused_scale_out, pinned, dry_run_on, dry_run_off).",
                &["target", "mode"],
            ),
            forecasts_published: counter(
                &r,
                "tidewatch_forecasts_published_total",
                "Own forecasts published ([forecasts]), per target.",
                &["target"],
            ),
            forecasts_dropped: counter(
                &r,
                "tidewatch_forecasts_dropped_total",
                "Own forecasts not published (queue full or broker error), per target.",
                &["target"],
            ),
            controls: counter(
                &r,
                "tidewatch_controls_total",
                "Control messages applied, by target and action.",
                &["target", "action"],
            ),
            target_stale_changes: counter(
                &r,
                "tidewatch_target_stale_changes_total",
                "A target's signals went stale (to=stale) or recovered (to=fresh).",
                &["target", "to"],
            ),
            policy_evaluations: counter(
                &r,
                "tidewatch_policy_evaluations_total",
                "Policy decide calls.",
                &["target"],
            ),
            policy_errors: counter(
                &r,
                "tidewatch_policy_errors_total",
                "Policy failures, by kind.",
                &["target", "kind"],
            ),
            policy_seconds: histogram(
                &r,
                "tidewatch_policy_evaluation_seconds",
                "Time in one decide call.",
                &["target"],
                fast,
            ),
            policy_reloads: counter(
                &r,
                "tidewatch_policy_reloads_total",
                "Policy file reloads, by result (ok or failed).",
                &["target", "result"],
            ),
            policy_quarantined: int_gauge(
                &r,
                "tidewatch_policy_quarantined",
                "1 while a target's policy is not called because its calls ran past engine.policy_timeout repeatedly; cleared when the policy file changes.",
                &["target"],
            ),
            state_snapshots: counter(
                &r,
                "tidewatch_state_snapshots_total",
                "Target snapshots written to the state store, by store and result (ok or failed).",
                &["store", "result"],
            ),
            state_snapshot_bytes: histogram(
                &r,
                "tidewatch_state_snapshot_bytes",
                "Encoded size of the target snapshots written (the sum is the bytes written).",
                &["store"],
                vec![1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0],
            ),
            state_snapshot_age: gauge(
                &r,
                "tidewatch_state_snapshot_age_seconds",
                "The oldest snapshot of a target whose state changed since, by engine shard, measured once per state.interval: well above state.interval means the store does not keep up.",
                &["shard"],
            ),
            state_restores: counter(
                &r,
                "tidewatch_state_restores_total",
                "Targets restored from the state store, by outcome: restored, cold (no snapshot), incompatible (a format this version cannot read), corrupt, failed (the store could not be read).",
                &["target", "outcome"],
            ),
            state_restore_seconds: histogram(
                &r,
                "tidewatch_state_restore_seconds",
                "How long one restore from the state store took (reading it, decoding, the engine taking the snapshots): at start, after each Kafka assignment that brings partitions, and when a RabbitMQ slot comes.",
                &[],
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
            ),
            state_store_warnings: counter(
                &r,
                "tidewatch_state_store_warnings_total",
                "Problems with the state store that do not stop the scaler (a state topic that is not compacted, a store that cannot be read).",
                &["store"],
            ),
            config_reloads: counter(
                &r,
                "tidewatch_config_reloads_total",
                "Configuration reloads (SIGHUP or engine.watch_config), by result: applied, refused (the file has errors; the running configuration stays), restart_needed (applied, but source, commands or metrics settings changed and wait for a restart).",
                &["result"],
            ),
            decisions: counter(
                &r,
                "tidewatch_decisions_total",
                "Guarded decisions, by direction.",
                &["target", "direction"],
            ),
            decision_holds: counter(
                &r,
                "tidewatch_decision_holds_total",
                "Decisions that held, by the rule that held them.",
                &["target", "reason"],
            ),
            commands_issued: counter(
                &r,
                "tidewatch_commands_issued_total",
                "Scale commands produced by the engine.",
                &["target", "direction"],
            ),
            commands_published: counter(
                &r,
                "tidewatch_commands_published_total",
                "Scale commands acknowledged by the broker.",
                &["target", "direction"],
            ),
            event_to_command_seconds: histogram(
                &r,
                "tidewatch_event_to_command_seconds",
                "From receiving the event that triggered an evaluation to the command.",
                &["target"],
                reaction,
            ),
            signal_to_command_seconds: histogram(
                &r,
                "tidewatch_signal_to_command_seconds",
                "From the time the triggering signal says it was taken (its ts, or the broker's timestamp) to the command: the reaction a user sees, including time spent in the broker and waiting for the engine.",
                &["target"],
                signal_reaction_buckets(),
            ),
            engine_tick_seconds: histogram(
                &r,
                "tidewatch_engine_tick_seconds",
                "How long one engine tick took (every target's periodic evaluation, gauges, snapshots), per engine shard.",
                &["shard"],
                vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            refit_lag: r.add(
                Gauge::with_opts(Opts::new(
                    "tidewatch_forecast_refit_lag_seconds",
                    "The longest wait, over the last tick, from a forecaster's refit falling due to its new model being ready.",
                ))
                .expect("valid metric definition"),
            ),
            refits_running: r.add(
                prometheus::IntGauge::with_opts(Opts::new(
                    "tidewatch_forecast_refits_running",
                    "Forecaster refits running now (at most the refit pool's threads).",
                ))
                .expect("valid metric definition"),
            ),
            refits_deferred: r.add(
                prometheus::IntCounter::with_opts(Opts::new(
                    "tidewatch_forecast_refits_deferred_total",
                    "Refits that fell due while the refit pool's queue was full; each is offered again at its target's next evaluation.",
                ))
                .expect("valid metric definition"),
            ),
            refits_done: r.add(
                prometheus::IntCounter::with_opts(Opts::new(
                    "tidewatch_forecast_refits_total",
                    "Forecaster refits the refit pool ran to the end.",
                ))
                .expect("valid metric definition"),
            ),
            dead_letters: counter(
                &r,
                "tidewatch_dead_letters_total",
                "Messages sent to the dead-letter destination, by source and first reason.",
                &["source", "reason"],
            ),
            dead_letters_lost: counter(
                &r,
                "tidewatch_dead_letters_lost_total",
                "Dead letters the broker refused for good (too large, invalid), dropped so the source goes on.",
                &["source"],
            ),
            command_publish_failures: counter(
                &r,
                "tidewatch_command_publish_failures_total",
                "Attempts to publish a command that the broker did not acknowledge (each is retried).",
                &["target"],
            ),
            results_received: counter(
                &r,
                "tidewatch_results_received_total",
                "Scale results read from workers, by status (invalid: could not be decoded).",
                &["status"],
            ),
            probe_errors: counter(
                &r,
                "tidewatch_probe_errors_total",
                "Probe measurements that failed.",
                &["target", "kind"],
            ),
            assigned_partitions: {
                let g = prometheus::IntGauge::new(
                    "tidewatch_source_assigned_partitions",
                    "Signal partitions (Kafka) or slot queues (RabbitMQ) this scaler owns (scale-out splits them).",
                )
                .expect("valid metric definition");
                r.add(g)
            },
            partition_moves: counter(
                &r,
                "tidewatch_source_partition_moves_total",
                "Signal partitions (Kafka, by the consumer group's rebalances) or slot queues (RabbitMQ, handed on or lost with the connection) given to this scaler (assigned) or taken from it (revoked); the new owner of each restores its targets' state.",
                &["change"],
            ),
            source_consumer_lag: int_gauge(
                &r,
                "tidewatch_source_consumer_lag_messages",
                "Messages on a signal partition this scaler has not consumed yet (Kafka; librdkafka's statistics every 5 s).",
                &["topic", "partition"],
            ),
            source_errors: counter(
                &r,
                "tidewatch_source_errors_total",
                "Errors a signal source reported while consuming (the broker or network); it keeps consuming.",
                &["source"],
            ),
            broker_connected: int_gauge(
                &r,
                "tidewatch_broker_connected",
                "1 while a RabbitMQ component (source, commands, results, probe) has its connection.",
                &["component"],
            ),
            broker_reconnects: counter(
                &r,
                "tidewatch_broker_reconnects_total",
                "RabbitMQ connections lost and reopened, by component.",
                &["component"],
            ),
            bindings_declared: counter(
                &r,
                "tidewatch_source_bindings_declared_total",
                "RabbitMQ queue bindings the source declared (a reconnect declares only missing ones).",
                &[],
            ),
            bindings_pending: r.add(
                prometheus::IntGauge::with_opts(Opts::new(
                    "tidewatch_source_bindings_pending",
                    "RabbitMQ queue bindings the source is still making (a first start with many targets consumes before all are made).",
                ))
                .expect("valid metric definition"),
            ),
            catch_all: r.add(
                prometheus::IntGauge::with_opts(Opts::new(
                    "tidewatch_source_catch_all",
                    "1 while a first start's signals come through a catch-all queue because its slot queues' bindings are still being made.",
                ))
                .expect("valid metric definition"),
            ),
            commands_unacknowledged: target_gauge(&r, "tidewatch_commands_unacknowledged", "1 while a target's latest command has had no worker result for longer than engine.reissue_after."),
            commands_reissued: counter(
                &r,
                "tidewatch_commands_reissued_total",
                "Commands re-issued with a new generation because no worker answered.",
                &["target"],
            ),
            provider_calls: counter(
                &r,
                "tidewatch_provider_calls_total",
                "Provider calls by a worker, by provider and status (ok, error, timeout).",
                &["provider", "status"],
            ),
            provider_seconds: histogram(
                &r,
                "tidewatch_provider_call_seconds",
                "Duration of one provider call.",
                &["provider"],
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            worker_results: counter(
                &r,
                "tidewatch_worker_results_total",
                "Results a worker published, by target and status.",
                &["target", "status"],
            ),
            process_restarts: counter(
                &r,
                "tidewatch_process_restarts_total",
                "Children of a process target that exited on their own and were replaced.",
                &["target"],
            ),
            process_backoff: gauge(
                &r,
                "tidewatch_process_backoff_seconds",
                "The wait before a process target's exited children are replaced (0 when they start at once).",
                &["target"],
            ),
            _build_info: build_info,
            names: r.names.into_inner(),
            health: Health::default(),
            per_target: std::sync::atomic::AtomicU8::new(PerTarget::Full as u8),
            registry: r.registry,
            encoded: r.encoded,
        }
    }

    /// The name of every metric tidewatch exports, whether or not it has a
    /// series yet (a labelled metric shows on the endpoint only once a
    /// label set is used). Histograms export `_bucket`, `_sum` and
    /// `_count` series under their name.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Sets `metrics.per_target` (a fresh `Metrics` has every series,
    /// `full`; `run` applies the configuration's, default `summary`).
    pub fn set_per_target(&self, p: PerTarget) {
        self.per_target
            .store(p as u8, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn per_target(&self) -> PerTarget {
        match self.per_target.load(std::sync::atomic::Ordering::Relaxed) {
            0 => PerTarget::Full,
            1 => PerTarget::Summary,
            _ => PerTarget::None,
        }
    }

    /// The target label of a series dashboards and alerts read: the
    /// target, or "" (summed) with `none`.
    fn key<'a>(&self, target: &'a str) -> &'a str {
        if self.per_target() == PerTarget::None {
            ""
        } else {
            target
        }
    }

    /// The target label of a detail series (latency histograms, hold
    /// reasons): the target only with `full`.
    fn fine<'a>(&self, target: &'a str) -> &'a str {
        if self.per_target() == PerTarget::Full {
            target
        } else {
            ""
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        self.render_into(&mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// [`Metrics::render`] into `buf` (cleared first), so that a caller
    /// that scrapes again reuses its memory: the scrape thread keeps one
    /// buffer instead of faulting in fresh pages for megabytes each time.
    pub fn render_into(&self, buf: &mut Vec<u8>) {
        buf.clear();
        let mut families = self.encoded.gather();
        let none = self.per_target() == PerTarget::None;
        if none {
            families.retain(|f| !PER_TARGET_GAUGES.contains(&f.name()));
        }
        TextEncoder::new()
            .encode(&families, buf)
            .expect("text encoding into a Vec does not fail");
        // a line a target, written from the slots after the rest
        if !none {
            for g in [
                &self.commands_unacknowledged,
                &self.target_desired_replicas,
                &self.target_observed_replicas,
            ] {
                g.write_text(buf);
            }
        }
    }

    /// The registry, for tests and tools that read every series.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A scaler target at start: its assumed replicas and, with
    /// `per_target = "full"`, every series dashboards and alerts read at 0
    /// (so they see 0, not "no data"). With `summary` the per-target
    /// gauges of trouble (stale, paused, unacknowledged, quarantined) and
    /// the error counters appear when they first happen, so that a target
    /// costs a few lines of a scrape, not dozens.
    pub fn target_configured(&self, target: &str, initial: u32) {
        self.target_observed_replicas
            .set(self.key(target), i64::from(initial));
        if self.per_target() != PerTarget::Full {
            return;
        }
        self.commands_unacknowledged.set(target, 0);
        self.target_stale.with_label_values(&[target]).set(0);
        for mode in CONTROL_MODES {
            self.target_paused.with_label_values(&[target, mode]).set(0);
        }
        for c in [
            &self.policy_evaluations,
            &self.commands_reissued,
            &self.command_publish_failures,
        ] {
            c.with_label_values(&[target]);
        }
        for dir in ["up", "down"] {
            self.commands_issued.with_label_values(&[target, dir]);
            self.commands_published.with_label_values(&[target, dir]);
        }
        for kind in crate::policy::PolicyErrorKind::ALL {
            self.policy_errors.with_label_values(&[target, kind.code()]);
        }
        self.policy_quarantined.with_label_values(&[target]).set(0);
    }

    /// The oldest snapshot of a changed target of engine `shard`.
    pub fn state_snapshot_age(&self, shard: usize, seconds: f64) {
        self.state_snapshot_age
            .with_label_values(&[shard.to_string().as_str()])
            .set(seconds);
    }

    /// A snapshot written (its encoded size) or not written.
    pub fn state_snapshot(&self, store: &str, written: Result<usize, &dyn std::fmt::Display>) {
        match written {
            Ok(bytes) => {
                self.state_snapshots.with_label_values(&[store, "ok"]).inc();
                self.state_snapshot_bytes
                    .with_label_values(&[store])
                    .observe(bytes as f64);
            }
            Err(e) => {
                self.state_snapshots
                    .with_label_values(&[store, "failed"])
                    .inc();
                tracing::warn!(store, error = %e, "snapshot not stored; the scaler keeps its state in memory and tries again");
            }
        }
    }

    /// How a target's state came back: `restored`, `cold` (no snapshot),
    /// `incompatible`, `corrupt` or `failed` (with why).
    pub fn state_restored(&self, target: &str, outcome: &str, why: Option<&dyn std::fmt::Display>) {
        self.state_restores
            .with_label_values(&[self.fine(target), outcome])
            .inc();
        match why {
            Some(e) => {
                tracing::warn!(target_name = target, outcome, error = %e, "target starts cold")
            }
            None => tracing::debug!(target_name = target, outcome, "target state"),
        }
    }

    /// A restore from the state store took `seconds`.
    pub fn state_restore_took(&self, seconds: f64) {
        self.state_restore_seconds
            .with_label_values(&[] as &[&str])
            .observe(seconds);
    }

    /// A problem with the state store that does not stop the scaler.
    pub fn state_store_warning(&self, store: &str, text: &str) {
        self.state_store_warnings.with_label_values(&[store]).inc();
        tracing::warn!(store, "{text}");
    }

    /// A configuration reload: `applied`, `refused` or `restart_needed`.
    pub fn config_reloaded(&self, result: &str, detail: &str) {
        self.config_reloads.with_label_values(&[result]).inc();
        match result {
            "applied" => tracing::info!(result, "configuration reloaded: {detail}"),
            _ => tracing::warn!(result, "configuration reload: {detail}"),
        }
    }

    pub fn scaler_started(&self) {
        for r in ["applied", "refused", "restart_needed"] {
            self.config_reloads.with_label_values(&[r]);
        }
        for s in ResultStatus::ALL {
            self.results_received.with_label_values(&[s.as_str()]);
        }
        self.results_received.with_label_values(&["invalid"]);
    }

    /// A worker target at start: its results by status at 0.
    pub fn worker_target_configured(&self, target: &str, provider: &str) {
        for s in ResultStatus::ALL {
            self.worker_results
                .with_label_values(&[self.key(target), s.as_str()]);
        }
        for outcome in ["ok", "error", "timeout"] {
            self.provider_calls.with_label_values(&[provider, outcome]);
        }
        if provider == "process" {
            self.process_restarts.with_label_values(&[self.key(target)]);
            self.process_backoff
                .with_label_values(&[self.key(target)])
                .set(0.0);
        }
    }

    /// One policy call of `target` took `seconds`.
    pub fn policy_evaluated(&self, target: &str, seconds: f64) {
        self.policy_seconds
            .with_label_values(&[self.fine(target)])
            .observe(seconds);
        self.policy_evaluations
            .with_label_values(&[self.fine(target)])
            .inc();
    }

    /// One tick of engine shard `shard` took `seconds`.
    pub fn engine_tick_took(&self, shard: usize, seconds: f64) {
        self.engine_tick_seconds
            .with_label_values(&[shard.to_string().as_str()])
            .observe(seconds);
    }

    /// The refit pool's state: the longest lag since the last call, the
    /// refits running, and the deferred and finished counts so far.
    pub fn forecast_refits(
        &self,
        lag_seconds: f64,
        running: usize,
        deferred_total: u64,
        done_total: u64,
    ) {
        self.refit_lag.set(lag_seconds);
        self.refits_running.set(running as i64);
        for (counter, total) in [
            (&self.refits_deferred, deferred_total),
            (&self.refits_done, done_total),
        ] {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }

    /// A command of `target` answers a signal taken `seconds` ago.
    pub fn signal_to_command(&self, target: &str, seconds: f64) {
        self.signal_to_command_seconds
            .with_label_values(&[self.fine(target)])
            .observe(seconds);
    }

    /// The engine issued command `c` (`direction` up or down);
    /// `reaction_seconds`: from the first signal it answers to the command.
    pub fn command_issued(&self, c: &ScaleCommand, direction: &str, reaction_seconds: Option<f64>) {
        let target = c.target.as_str();
        self.unacknowledged(target, false);
        self.commands_issued
            .with_label_values(&[self.fine(target), direction])
            .inc();
        if let Some(s) = reaction_seconds {
            self.event_to_command_seconds
                .with_label_values(&[self.fine(target)])
                .observe(s);
        }
    }

    /// No worker answered generation `old` within the re-issue time: `c`
    /// goes out again.
    pub fn command_reissued(&self, c: &ScaleCommand, old_generation: i64) {
        let target = c.target.as_str();
        tracing::warn!(
            target_name = target,
            old_generation,
            generation = c.generation,
            "no worker answered the last command; re-issuing it"
        );
        self.unacknowledged(target, true);
        self.commands_reissued
            .with_label_values(&[self.fine(target)])
            .inc();
    }

    /// A worker answered the latest command of `target`.
    pub fn command_answered(&self, target: &str) {
        self.unacknowledged(target, false);
    }

    /// `tidewatch_commands_unacknowledged` of `target`. With `summary` a
    /// target has the series only while it is 1: 50,000 targets whose
    /// commands were answered cost no line each.
    fn unacknowledged(&self, target: &str, waiting: bool) {
        let g = &self.commands_unacknowledged;
        match (waiting, self.per_target()) {
            (false, PerTarget::Summary) => g.remove(target),
            _ => g.set(self.key(target), i64::from(waiting)),
        }
    }

    /// A worker reported `replicas` for `target`'s latest command.
    /// With `summary`, the observed series of a target exists only while
    /// it differs from the desired one (`desired`: the last command's
    /// count): a target at its desired count costs a scrape one line.
    pub fn target_observed(&self, target: &str, replicas: u32, desired: Option<u32>) {
        if self.per_target() == PerTarget::Summary && desired == Some(replicas) {
            self.target_observed_replicas.remove(target);
            return;
        }
        self.target_observed_replicas
            .set(self.key(target), i64::from(replicas));
    }

    /// The shortest window's depth and p95 latency (seconds) of `target`;
    /// with `full` only (they are the inputs, which the broker and the
    /// gateway report too).
    pub fn target_windows(&self, target: &str, depth: Option<f64>, p95_seconds: Option<f64>) {
        if self.per_target() != PerTarget::Full {
            return;
        }
        if let Some(d) = depth {
            self.target_queue_depth
                .with_label_values(&[self.key(target)])
                .set(d);
        }
        if let Some(l) = p95_seconds {
            self.target_latency_p95
                .with_label_values(&[self.key(target)])
                .set(l);
        }
    }

    /// The broker confirmed command `c`.
    pub fn command_published(&self, c: &ScaleCommand) {
        let dir = if c.desired_replicas >= c.current_replicas {
            "up"
        } else {
            "down"
        };
        self.commands_published
            .with_label_values(&[self.fine(c.target.as_str()), dir])
            .inc();
    }

    /// Publishing a command of `target` failed (the caller logs why and
    /// when it tries again).
    pub fn command_publish_failed(
        &self,
        setting: &str,
        c: &ScaleCommand,
        why: &dyn std::fmt::Display,
    ) {
        self.command_publish_failures
            .with_label_values(&[self.fine(c.target.as_str())])
            .inc();
        tracing::warn!(setting, target_name = %c.target, generation = c.generation,
            "command not published: {why}; retrying");
    }

    /// A worker's result arrived.
    pub fn result_received(&self, r: &ScaleResult) {
        self.results_received
            .with_label_values(&[r.status.as_str()])
            .inc();
    }

    /// A result message could not be decoded; it is skipped.
    pub fn result_invalid(&self, bytes: usize, error: &serde_json::Error) {
        self.results_received.with_label_values(&["invalid"]).inc();
        tracing::warn!(%error, bytes, "result not decoded; skipped");
    }

    /// A message (or batch elements) went to the dead-letter destination.
    pub fn dead_lettered(&self, source: &str, reason: &str) {
        self.dead_letters.with_label_values(&[source, reason]).inc();
    }

    /// `target`'s signals went stale (`why` says since when and what), or
    /// recovered.
    pub fn target_stale(&self, target: &str, stale: bool, why: &str) {
        self.target_stale
            .with_label_values(&[self.key(target)])
            .set(i64::from(stale));
        let to = if stale { "stale" } else { "fresh" };
        self.target_stale_changes
            .with_label_values(&[self.fine(target), to])
            .inc();
        if stale {
            tracing::warn!(target_name = %target, "signals are stale: {why}");
        } else {
            tracing::info!(target_name = %target, "signals are fresh again");
        }
    }

    /// A control message was applied (logged with who, why and until).
    pub fn control_applied(&self, c: &crate::event::Control) {
        self.controls
            .with_label_values(&[self.fine(c.target.as_str()), c.action.code()])
            .inc();
        tracing::warn!(
            target_name = %c.target,
            action = c.action.code(),
            replicas = ?c.replicas,
            by = c.by.as_deref().unwrap_or("-"),
            reason = c.reason.as_deref().unwrap_or("-"),
            until = %c.until_ms.map(crate::clock::rfc3339).unwrap_or_else(|| "-".into()),
            "control applied"
        );
    }

    /// An own forecast of `target` went out.
    pub fn forecast_published(&self, target: &str) {
        self.forecasts_published
            .with_label_values(&[self.fine(target)])
            .inc();
    }

    /// An own forecast of `target` was dropped.
    pub fn forecast_dropped(&self, target: &str, why: &str) {
        self.forecasts_dropped
            .with_label_values(&[self.fine(target)])
            .inc();
        tracing::debug!(target_name = %target, "forecast not published: {why}");
    }

    /// A control of `target` reached its `until` and was lifted.
    pub fn control_expired(&self, target: &str, what: &str) {
        tracing::warn!(target_name = %target, "control lifted at its until: {what}");
    }

    /// The controls in force on `target` now, as `tidewatch_target_paused`.
    /// `actions`: the action codes in force (`pause`, `pin`, ...). With
    /// `summary` only the modes in force have a series (a restore of
    /// 50,000 targets with none in force costs a scrape no line).
    pub fn controls_in_force(&self, target: &str, actions: &[&str]) {
        let on: Vec<&str> = actions
            .iter()
            .map(|a| match *a {
                "pause" => "paused",
                "pause_scale_in" => "paused_scale_in",
                "pause_scale_out" => "paused_scale_out",
                "pin" => "pinned",
                other => other,
            })
            .collect();
        let summary = self.per_target() == PerTarget::Summary;
        for mode in CONTROL_MODES {
            let in_force = on.contains(&mode);
            if summary && !in_force {
                let _ = self.target_paused.remove_label_values(&[target, mode]);
                continue;
            }
            self.target_paused
                .with_label_values(&[self.key(target), mode])
                .set(i64::from(in_force));
        }
    }

    /// A probe of `target` could not measure.
    pub fn probe_failed(
        &self,
        target: &str,
        kind: &str,
        queue: &str,
        error: &dyn std::fmt::Display,
    ) {
        self.probe_errors
            .with_label_values(&[self.fine(target), kind])
            .inc();
        tracing::warn!(target_name = %target, queue = %queue, kind, "probe: {error}");
    }

    /// The scaler's lag on a signal partition.
    pub fn consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.source_consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    /// The number of signal partitions this scaler owns now.
    pub fn partitions_assigned(&self, n: usize) {
        self.assigned_partitions.set(n as i64);
    }

    /// A rebalance (Kafka) or a hand-over (RabbitMQ slots) gave this
    /// scaler `n` partitions (`assigned`) or took `n` from it (`revoked`).
    pub fn partitions_moved(&self, change: &str, n: usize) {
        self.partition_moves
            .with_label_values(&[change])
            .inc_by(n as u64);
    }

    /// Signal partitions this scaler owns.
    pub fn assigned_partitions(&self) -> i64 {
        self.assigned_partitions.get()
    }

    /// The source `source` failed to consume (the `first` of a run is
    /// logged as a warning, the rest at debug).
    pub fn source_error(&self, source: &str, error: &dyn std::fmt::Display, first: bool) {
        self.source_errors.with_label_values(&[source]).inc();
        if first {
            tracing::warn!(source, %error, "consuming signals failed; the client retries");
        } else {
            tracing::debug!(source, %error, "consuming signals failed again");
        }
    }

    /// A broker connection of `component` (source, commands, results,
    /// worker) is up or down.
    pub fn broker_connected(&self, component: &str, connected: bool) {
        self.broker_connected
            .with_label_values(&[component])
            .set(i64::from(connected));
    }

    /// The source declared `n` queue bindings.
    pub fn bindings_declared(&self, n: usize) {
        self.bindings_declared
            .with_label_values(&[] as &[&str])
            .inc_by(n as u64);
    }

    /// `delta` more (or, negative, fewer) bindings are still to be made.
    pub fn bindings_pending(&self, delta: i64) {
        self.bindings_pending.add(delta);
    }

    /// No binding is being made any more.
    pub fn bindings_pending_reset(&self) {
        self.bindings_pending.set(0);
    }

    /// Whether a catch-all queue carries the signals (1) or not (0).
    pub fn catch_all(&self, open: bool) {
        self.catch_all.set(i64::from(open));
    }

    /// Whether a catch-all queue carries the signals now.
    pub fn catch_all_open(&self) -> bool {
        self.catch_all.get() == 1
    }

    /// Bindings still to be made.
    pub fn bindings_pending_now(&self) -> i64 {
        self.bindings_pending.get()
    }

    /// Queue bindings the source declared so far.
    pub fn bindings_declared_total(&self) -> u64 {
        self.bindings_declared
            .with_label_values(&[] as &[&str])
            .get()
    }

    /// `component` lost its broker connection (`setting` names the
    /// broker) for `cause` and reconnects.
    pub fn broker_reconnecting(
        &self,
        component: &str,
        setting: &str,
        cause: &dyn std::fmt::Display,
    ) {
        self.broker_connected.with_label_values(&[component]).set(0);
        self.broker_reconnects.with_label_values(&[component]).inc();
        tracing::warn!(
            setting,
            component,
            "lost the broker ({cause}); reconnecting"
        );
    }

    /// `n` children of a `process` target exited on their own (`how`:
    /// their statuses and run times); replacements wait `wait`.
    pub fn process_exited(&self, target: &str, how: &str, n: usize, wait: std::time::Duration) {
        self.process_restarts
            .with_label_values(&[self.key(target)])
            .inc_by(n as u64);
        self.process_backoff
            .with_label_values(&[self.key(target)])
            .set(wait.as_secs_f64());
        tracing::warn!(target_name = %target, exited = %how, "process exited; replacing it in {wait:?}");
    }

    /// The back-off of a `process` target's replacements now.
    pub fn process_backoff(&self, target: &str, wait: std::time::Duration) {
        self.process_backoff
            .with_label_values(&[self.key(target)])
            .set(wait.as_secs_f64());
    }

    /// A dead letter the broker refused for good (too large, invalid):
    /// dropped, so that the source goes on.
    pub fn dead_letter_lost(&self, source: &str, topic: &str, e: &dyn std::fmt::Display) {
        self.dead_letters_lost.with_label_values(&[source]).inc();
        tracing::error!(source, topic, error = %e, "dead letter refused by the broker; dropped (the original stays at its offset)");
    }

    /// The process has an engine of `shards` shards that tick every
    /// `tick`: from now on it is alive only while each shard's ticks come
    /// (a gap of 5 ticks, at least 15 s, is not).
    pub fn expect_engine_ticks(
        &self,
        tick: std::time::Duration,
        shards: usize,
        now: std::time::Instant,
    ) {
        let gap = (tick * 5).max(std::time::Duration::from_secs(15));
        *self.health.engine.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((vec![now; shards.max(1)], gap));
    }

    /// Engine shard `shard` ticked.
    pub fn engine_ticked(&self, shard: usize, now: std::time::Instant) {
        if let Some(last) = self
            .health
            .engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|(last, _)| last.get_mut(shard))
        {
            *last = now;
        }
    }

    /// Whether `component` (a command publisher) has had a command
    /// unacknowledged for too long; while it has, the process is not
    /// ready.
    pub fn publisher_stalled(&self, component: &str, stalled: bool) {
        let mut set = self
            .health
            .stalled
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if stalled && set.insert(component.to_owned()) {
            tracing::error!(
                component,
                "commands are not acknowledged: not ready until they are"
            );
        } else if !stalled && set.remove(component) {
            tracing::info!(component, "commands are acknowledged again");
        }
    }

    /// Why the process is not ready although its source consumes.
    pub fn not_ready(&self) -> Option<String> {
        let set = self
            .health
            .stalled
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        set.first().map(|c| format!("the {c} publisher is stalled"))
    }

    /// An input task ended while the process was not stopping.
    pub fn input_lost(&self, input: &str) {
        tracing::error!(
            input,
            "an input ended on its own: the process is no longer alive"
        );
        self.health
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(input.to_owned());
    }

    /// Alive at `now`, or why not.
    pub fn alive(&self, now: std::time::Instant) -> Result<(), String> {
        if let Some(lost) = self
            .health
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
        {
            return Err(format!("{lost} ended"));
        }
        if let Some((last, gap)) = &*self.health.engine.lock().unwrap_or_else(|p| p.into_inner()) {
            let shards = last.len();
            for (shard, last) in last.iter().enumerate() {
                let since = now.saturating_duration_since(*last);
                if since > *gap {
                    let which = if shards > 1 {
                        format!("the engine's shard {shard}")
                    } else {
                        "the engine".to_owned()
                    };
                    return Err(format!("{which} has not ticked for {since:?}"));
                }
            }
        }
        Ok(())
    }

    /// A provider call ended: `outcome` ok, error or timeout.
    pub fn provider_called(&self, provider: &str, outcome: &str, seconds: f64) {
        self.provider_seconds
            .with_label_values(&[provider])
            .observe(seconds);
        self.provider_calls
            .with_label_values(&[provider, outcome])
            .inc();
    }

    /// A worker published result `r`.
    pub fn worker_result(&self, r: &ScaleResult) {
        self.worker_results
            .with_label_values(&[self.key(r.target.as_str()), r.status.as_str()])
            .inc();
    }

    pub fn event_received(&self, source: &str, kind: &str) {
        self.events_received
            .with_label_values(&[source, kind])
            .inc();
    }

    /// A gateway's record that became no signal (`reason`: no_target,
    /// invalid_target, unknown_target, filtered).
    pub fn event_unmatched(&self, source: &str, input: &str, reason: &str) {
        self.events_unmatched
            .with_label_values(&[source, input, reason])
            .inc();
    }

    pub fn event_rejected(&self, source: &str, r: &Rejection) {
        self.events_rejected
            .with_label_values(&[source, r.kind, r.reason.code()])
            .inc();
        tracing::debug!(source, reason = r.reason.code(), detail = %r.detail, "event rejected");
    }

    pub fn policy_failed(&self, target: &str, e: &PolicyError) {
        self.policy_errors
            .with_label_values(&[self.key(target), e.kind.code()])
            .inc();
        tracing::warn!(target_name = target, kind = e.kind.code(), error = %e, "policy failed");
    }

    /// A target's policy is quarantined (its calls ran past the deadline
    /// `overruns` times in a row) or released (its file changed).
    pub fn policy_quarantined(&self, target: &str, version: &str, overruns: Option<u32>) {
        self.policy_quarantined
            .with_label_values(&[self.key(target)])
            .set(i64::from(overruns.is_some()));
        match overruns {
            Some(n) => tracing::error!(
                target_name = target,
                version,
                "policy quarantined: {n} calls in a row ran past engine.policy_timeout; it is \
                 not called (the target falls back or holds) until its file changes"
            ),
            None => tracing::info!(
                target_name = target,
                version,
                "policy released from quarantine"
            ),
        }
    }

    pub fn policy_reloaded(&self, target: &str, version: &str, result: Result<(), &PolicyError>) {
        match result {
            Ok(()) => {
                self.policy_reloads
                    .with_label_values(&[self.key(target), "ok"])
                    .inc();
                tracing::info!(target_name = target, version, "policy reloaded");
            }
            Err(e) => {
                self.policy_reloads
                    .with_label_values(&[self.key(target), "failed"])
                    .inc();
                tracing::warn!(target_name = target, error = %e, "policy reload failed; the previous version keeps running");
            }
        }
    }

    /// The guard decided `d` for `target`: counted and logged. An engine
    /// shard counts through its [`Tally`] instead.
    pub fn decided(&self, target: &str, d: &Decision) {
        self.decisions
            .with_label_values(&[self.fine(target), d.direction.code()])
            .inc();
        if let Some(h) = d.held {
            self.decision_holds
                .with_label_values(&[self.fine(target), h.code()])
                .inc();
        }
        self.note_decision(target, d);
    }

    /// A decision's log line, and the desired replicas of one that moves.
    fn note_decision(&self, target: &str, d: &Decision) {
        if let Some(h) = d.held {
            tracing::debug!(target_name = target, replicas = d.current, held = h.code(), reason = %d.reason, "decision held");
        } else {
            self.target_desired_replicas
                .set(self.key(target), i64::from(d.desired));
            tracing::info!(
                target_name = target,
                from = d.current,
                to = d.desired,
                dry_run = d.dry_run,
                reason = %d.reason,
                "scale decision"
            );
        }
    }
}

/// `[metrics]` of the scaler: where `/metrics`, `/healthz` and `/readyz` are served.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How much per-target detail: `full`, `summary` (default), `none`.
    #[serde(default)]
    pub per_target: PerTarget,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            per_target: PerTarget::default(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9898".into()
}

/// Checks a `metrics.listen` address.
pub fn check_listen(listen: &str, example: &str, out: &mut Vec<Problem>) {
    if listen.parse::<SocketAddr>().is_err() {
        out.push(problem(
            "metrics.listen",
            format!("{listen:?} is not an address like {example}"),
        ));
    }
}

/// The scaler's status documents for `/v1/targets` (None: all targets)
/// and `/v1/targets/{name}`; None when there is no such target.
pub type StatusFn = Arc<
    dyn Fn(
            Option<String>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<serde_json::Value>> + Send>>
        + Send
        + Sync,
>;

/// Whether a request's `Accept-Encoding` takes gzip (Prometheus sends
/// `gzip` by default).
fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    == Some(0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// The nice value of the thread that encodes scrapes: at 50,000 targets
/// an encoding takes 100 to 300 ms of CPU, and on 2 cores at normal
/// priority each scrape (every 2 s in the benchmark) raised the reaction
/// time of the probes it overlapped from about 15 to 75-86 ms
/// (PERFORMANCE.md). Niced, it runs on what the decisions leave and still
/// gets a share of a full machine, so a scrape is slower there, never
/// starved (SCHED_IDLE could starve it past Prometheus' timeout).
const SCRAPE_NICE: i32 = 19;

type RenderJob = Box<dyn FnOnce() + Send>;

/// Runs `work` on the scrape thread (one, made on first use, at
/// [`SCRAPE_NICE`]; scrapes queue for it) and returns what it made, or
/// None if the thread is gone.
async fn render_off_the_path<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    static THREAD: std::sync::OnceLock<std::sync::mpsc::Sender<RenderJob>> =
        std::sync::OnceLock::new();
    let tx = THREAD.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<RenderJob>();
        let spawned = std::thread::Builder::new()
            .name("tidewatch-scrape".into())
            .spawn(move || {
                crate::priority::nice(SCRAPE_NICE);
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "the scrape thread could not start");
        }
        tx
    });
    let (done, answer) = tokio::sync::oneshot::channel();
    let job: RenderJob = Box::new(move || {
        let _ = done.send(work());
    });
    tx.send(job).ok()?;
    answer.await.ok()
}

/// `bytes` gzipped at the fastest level: a scrape's text shrinks about
/// ten-fold for a few ms a MB (as `/metrics` answers; the scale
/// benchmark times it).
pub fn gzipped(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 8);
    gzip_into(bytes, &mut out);
    out
}

/// [`gzipped`] into `out` (cleared first), reusing its memory.
pub fn gzip_into(bytes: &[u8], out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    if enc.write_all(bytes).and_then(|_| enc.try_finish()).is_err() {
        enc.get_mut().clear();
    }
}

/// The scrape thread's buffers, kept from one scrape to the next: the
/// text (2.65 MB at 50,000 targets) and its gzipped form. Made afresh
/// each time, they came from pages the allocator had given back, and
/// zeroing those new pages was three quarters of the thread's CPU
/// (PERFORMANCE.md, "Huge pages off, and a scrape's kept buffers").
#[derive(Default)]
struct ScrapeBuffers {
    text: Vec<u8>,
    gzipped: Vec<u8>,
}

thread_local! {
    static SCRAPE_BUFFERS: std::cell::RefCell<ScrapeBuffers> = Default::default();
}

/// `/metrics`' body: rendered (and gzipped when `gzip`) in the calling
/// thread's kept buffers, then copied out at its final size.
fn scrape_body(m: &Metrics, gzip: bool) -> Vec<u8> {
    SCRAPE_BUFFERS.with(|b| {
        let b = &mut *b.borrow_mut();
        m.render_into(&mut b.text);
        if gzip {
            gzip_into(&b.text, &mut b.gzipped);
            b.gzipped.clone()
        } else {
            b.text.clone()
        }
    })
}

/// Serves `/metrics`, `/healthz`, `/readyz` (and `/v1/targets` with a
/// `status`) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    status: Option<StatusFn>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener::GuardedListener::new(listener, listener::Limits::default()),
        router(metrics, ready, status),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The HTTP endpoint of a running process, until `stop`.
pub struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The listener a test passed, or else `listen` bound now (so that a busy
/// address stops the start before anything connects).
pub async fn listener_or_bind(
    given: Option<tokio::net::TcpListener>,
    listen: &str,
) -> Result<tokio::net::TcpListener, ListenError> {
    match given {
        Some(l) => Ok(l),
        None => bind(listen).await,
    }
}

impl Server {
    /// Serves `/metrics`, `/healthz` and `/readyz` on `listener`.
    pub fn start(
        listener: tokio::net::TcpListener,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
        status: Option<StatusFn>,
    ) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, metrics, ready, status, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

pub fn router(
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    status: Option<StatusFn>,
) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let health = metrics.clone();
    let readiness = metrics.clone();
    let mut app = axum::Router::new();
    if let Some(status) = status {
        let json = |v: serde_json::Value| {
            (
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
            )
        };
        let all = status.clone();
        app = app
            .route(
                "/v1/targets",
                get(move || {
                    let all = all.clone();
                    async move {
                        match all(None).await {
                            Some(v) => Ok(json(v)),
                            None => {
                                Err((StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped\n"))
                            }
                        }
                    }
                }),
            )
            .route(
                "/v1/targets/{name}",
                get(
                    move |axum::extract::Path(name): axum::extract::Path<String>| {
                        let one = status.clone();
                        async move {
                            match one(Some(name.clone())).await {
                                Some(v) => Ok(json(v)),
                                None => {
                                    Err((StatusCode::NOT_FOUND, format!("no target {name:?}\n")))
                                }
                            }
                        }
                    },
                ),
            );
    }
    app.route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| {
            let m = metrics.clone();
            let gzip = accepts_gzip(&headers);
            async move {
                // Encoding 50,000 targets' series takes about 20 ms of
                // CPU: on the scrape thread, at a low priority, so that it
                // takes no core from the sources, the shards and the
                // publisher (render_off_the_path), in buffers it keeps.
                let body = render_off_the_path(move || scrape_body(&m, gzip))
                    .await
                    .unwrap_or_default();
                let encoding = if gzip { "gzip" } else { "identity" };
                (
                    [
                        (
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                        (header::CONTENT_ENCODING, encoding),
                    ],
                    body,
                )
            }
        }),
    )
    .route(
        "/healthz",
        get({
            move || {
                let alive = health.alive(std::time::Instant::now());
                async move {
                    match alive {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not alive: {why}\n"),
                        ),
                    }
                }
            }
        }),
    )
    .route(
        "/readyz",
        get(move || {
            let r = ready.load(Ordering::Relaxed);
            let why = readiness.not_ready();
            async move {
                match (r, why) {
                    (true, None) => (StatusCode::OK, "ready\n".to_string()),
                    (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string()),
                    (true, Some(why)) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    ),
                }
            }
        }),
    )
}

/// Why the metrics address cannot be listened on; names the address.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("metrics.listen {listen:?}: {source}")]
    Address {
        listen: String,
        source: std::net::AddrParseError,
    },
    #[error("metrics.listen {listen}: cannot bind: {source}")]
    Bind {
        listen: String,
        source: std::io::Error,
    },
}

/// Binds the metrics address, naming it in the error.
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener, ListenError> {
    let addr: SocketAddr = listen.parse().map_err(|source| ListenError::Address {
        listen: listen.to_owned(),
        source,
    })?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind {
            listen: listen.to_owned(),
            source,
        })
}

/// Human-readable logs by default, JSON lines with `json`; `RUST_LOG` filters.
/// The sum of a counter's or gauge's values over the series whose labels
/// include `labels` (all series for none).
pub fn sum(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|x| {
            labels.iter().all(|(k, v)| {
                x.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|x| {
            // a histogram counts its observations
            x.get_counter().get_value()
                + x.get_gauge().get_value()
                + x.get_histogram().get_sample_count() as f64
        })
        .sum()
}

/// Logs to stderr; `RUST_LOG` overrides `default` (e.g. "info").
pub fn init_logging(json: bool, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// `metrics.per_target` (issue 21): what a scrape carries per target
    /// at each level, and how many bytes a target costs.
    #[test]
    fn per_target_detail_decides_what_a_scrape_carries() {
        use crate::guard::{Decision, Direction};
        let scrape = |p: PerTarget, n: usize| {
            let m = Metrics::new();
            m.set_per_target(p);
            for i in 0..n {
                let t = format!("target-{i:05}");
                m.target_configured(&t, 2);
                m.policy_evaluated(&t, 0.0001);
                m.decided(
                    &t,
                    &Decision {
                        current: 2,
                        desired: 3,
                        direction: Direction::Up,
                        held: None,
                        dry_run: false,
                        reason: String::new(),
                    },
                );
                let c = ScaleCommand {
                    version: 1,
                    id: String::new(),
                    target: t.clone(),
                    provider: "log".into(),
                    desired_replicas: 3,
                    current_replicas: 2,
                    reason: String::new(),
                    policy: String::new(),
                    generation: 1,
                    issued_at: String::new(),
                    expires_at: String::new(),
                    dry_run: false,
                };
                m.command_issued(&c, "up", Some(0.002));
                m.signal_to_command(&t, 0.004);
                m.command_published(&c);
                m.target_windows(&t, Some(40.0), None);
                // the worker reached the desired count
                m.target_observed(&t, 3, Some(3));
            }
            m.render()
        };
        let full = scrape(PerTarget::Full, 1);
        for want in [
            "tidewatch_signal_to_command_seconds_bucket{target=\"target-00000\"",
            "tidewatch_policy_evaluation_seconds_count{target=\"target-00000\"}",
            "tidewatch_target_stale{target=\"target-00000\"} 0",
            "tidewatch_target_desired_replicas{target=\"target-00000\"} 3",
        ] {
            assert!(full.contains(want), "full: no {want}");
        }
        assert!(full.contains("tidewatch_target_queue_depth{target=\"target-00000\"} 40"));
        let summary = scrape(PerTarget::Summary, 1);
        for want in [
            "tidewatch_target_desired_replicas{target=\"target-00000\"} 3",
            "tidewatch_signal_to_command_seconds_count{target=\"\"} 1",
            "tidewatch_commands_issued_total{direction=\"up\",target=\"\"} 1",
        ] {
            assert!(summary.contains(want), "summary: no {want}\n{summary}");
        }
        for not in [
            "tidewatch_signal_to_command_seconds_bucket{target=\"target-00000\"",
            "tidewatch_target_stale{target=\"target-00000\"}",
            "tidewatch_commands_unacknowledged{target=\"target-00000\"}",
            "tidewatch_target_queue_depth{target=\"target-00000\"}",
            // observed equals desired
            "tidewatch_target_observed_replicas{target=\"target-00000\"}",
        ] {
            assert!(!summary.contains(not), "summary has {not}");
        }
        // the worker reports the desired count: the observed line goes,
        // and comes back when the two part again
        let m = Metrics::new();
        m.set_per_target(PerTarget::Summary);
        let line = "tidewatch_target_observed_replicas{target=\"web\"}";
        m.target_configured("web", 2);
        assert!(m.render().contains(&format!("{line} 2")));
        m.target_observed("web", 3, Some(3));
        assert!(!m.render().contains(line), "{}", m.render());
        m.target_observed("web", 3, Some(5));
        assert!(m.render().contains(&format!("{line} 3")));
        m.set_per_target(PerTarget::Full);
        m.target_observed("web", 5, Some(5));
        assert!(m.render().contains(&format!("{line} 5")), "full keeps it");
        // a command no worker answers shows while it is unanswered
        let m = Metrics::new();
        m.set_per_target(PerTarget::Summary);
        let c = crate::command::testing::command("late").build();
        m.command_issued(&c, "up", None);
        let line = "tidewatch_commands_unacknowledged{target=\"late\"}";
        assert!(!m.render().contains(line));
        m.command_reissued(&c, 1);
        assert!(m.render().contains(&format!("{line} 1")));
        m.command_answered("late");
        assert!(!m.render().contains(line), "{}", m.render());
        // a control shows while it is in force; none in force (what a
        // restore reports for every target) costs no line
        let m = Metrics::new();
        m.set_per_target(PerTarget::Summary);
        m.controls_in_force("held", &[]);
        assert!(
            !m.render().contains("tidewatch_target_paused{"),
            "{}",
            m.render()
        );
        m.controls_in_force("held", &["pause"]);
        let paused = "tidewatch_target_paused{mode=\"paused\",target=\"held\"} 1";
        assert!(m.render().contains(paused), "{}", m.render());
        assert_eq!(m.render().matches("tidewatch_target_paused{").count(), 1);
        m.controls_in_force("held", &[]);
        assert!(
            !m.render().contains("tidewatch_target_paused{"),
            "{}",
            m.render()
        );
        let none = scrape(PerTarget::None, 1);
        assert!(!none.contains("target-00000"), "{none}");
        assert!(!none.contains("tidewatch_target_desired_replicas"));
        assert!(none.contains("tidewatch_signal_to_command_seconds_count{target=\"\"} 1"));
        // the bytes a target costs: 1,000 targets against 1
        let per = |p: PerTarget| (scrape(p, 1001).len() - scrape(p, 1).len()) / 1000;
        let (f, s, n) = (
            per(PerTarget::Full),
            per(PerTarget::Summary),
            per(PerTarget::None),
        );
        println!("bytes per target: full {f}, summary {s}, none {n}");
        assert!(s * 10 < f, "summary {s} B per target against full {f}");
        // one gauge of about 58 bytes (desired; observed equals it)
        assert!(s <= 70, "summary {s} B per target");
        assert_eq!(n, 0);
    }

    #[test]
    fn names_lists_every_registered_metric() {
        let m = Metrics::new();
        let names = m.names();
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        // Every family in the registry is named, labelled or not.
        let registered: std::collections::BTreeSet<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for r in &registered {
            assert!(names.contains(r), "{r} missing from names()");
        }
        assert!(names.contains(&"tidewatch_provider_call_seconds".to_string()));
        assert!(names.iter().all(|n| n.starts_with("tidewatch_")));
    }

    /// A scrape's body comes from buffers the scrape thread keeps: each
    /// body is exactly the text of that moment, gzipped or not, also when
    /// it is shorter than the one before (a target gone, a line shorter).
    #[test]
    fn a_kept_buffer_gives_each_scrape_its_own_text() {
        use std::io::Read;
        let unzip = |b: &[u8]| {
            let mut s = String::new();
            flate2::read::GzDecoder::new(b)
                .read_to_string(&mut s)
                .unwrap();
            s
        };
        let m = Metrics::new();
        m.set_per_target(PerTarget::Summary);
        for i in 0..300 {
            m.target_configured(&format!("target-{i:05}"), 1000);
        }
        let long = m.render();
        assert_eq!(unzip(&scrape_body(&m, true)), long);
        assert_eq!(scrape_body(&m, false), long.as_bytes());
        for i in 0..300 {
            m.target_observed(&format!("target-{i:05}"), 1000, Some(1000));
        }
        m.target_configured("target-00000", 1);
        let short = m.render();
        assert!(
            short.len() < long.len() / 10,
            "{} then {}",
            long.len(),
            short.len()
        );
        assert_eq!(unzip(&scrape_body(&m, true)), short);
        assert_eq!(scrape_body(&m, false), short.as_bytes());
        assert_eq!(unzip(&gzipped(short.as_bytes())), short);
    }

    /// Each shard's tick is timed under its own label: one shard with no
    /// time left shows, where a histogram of both averaged it away.
    #[test]
    fn each_shard_times_its_own_ticks() {
        let m = Metrics::new();
        m.engine_tick_took(0, 0.002);
        m.engine_tick_took(1, 0.9);
        m.engine_tick_took(1, 0.8);
        let text = m.render();
        assert!(
            text.contains("tidewatch_engine_tick_seconds_count{shard=\"0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tidewatch_engine_tick_seconds_count{shard=\"1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tidewatch_engine_tick_seconds_bucket{shard=\"1\",le=\"0.5\"} 0"),
            "{text}"
        );
    }

    /// A scrape is encoded on a thread of lower priority than the
    /// shards and the sources (at 50,000 targets an encoding at normal
    /// priority raised the probes' reaction from about 15 to 75-86 ms).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn scrapes_are_encoded_at_a_low_priority() {
        let before = crate::priority::current();
        let (class, nice) = render_off_the_path(crate::priority::current)
            .await
            .expect("the scrape thread answers");
        assert_eq!((class, nice), (libc::SCHED_OTHER, SCRAPE_NICE));
        // and the caller's own thread is left as it was
        assert_eq!(crate::priority::current(), before);
    }

    /// The real server on a loopback port, spoken to over TCP.
    #[tokio::test]
    async fn serves_over_tcp_and_shuts_down() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let m = Arc::new(Metrics::new());
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            m,
            Arc::new(AtomicBool::new(true)),
            None,
            async {
                let _ = stopped.await;
            },
        ));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("text/plain; version=0.0.4"), "{text}");
        assert!(text.contains("# TYPE tidewatch_build_info gauge"), "{text}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(bind("not an address")
            .await
            .unwrap_err()
            .to_string()
            .contains("metrics.listen"));
    }

    #[tokio::test]
    async fn endpoints_answer() {
        let m = Arc::new(Metrics::new());
        m.event_received("kafka", "queue_depth");
        let ready = Arc::new(AtomicBool::new(false));
        let app = router(m.clone(), ready.clone(), None);
        let get = |path: &'static str| Request::builder().uri(path).body(Body::empty()).unwrap();
        let res = app.clone().oneshot(get("/metrics")).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec())
            .unwrap();
        assert!(
            body.contains(
                "tidewatch_events_received_total{source=\"kafka\",type=\"queue_depth\"} 1"
            ),
            "{body}"
        );
        assert!(body.contains("tidewatch_build_info{version="));
        // gzip when asked, as Prometheus asks: the same text, smaller
        let zipped = app
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/metrics")
                    .header("accept-encoding", "identity;q=0.5, gzip")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(zipped.headers()["content-encoding"], "gzip");
        let bytes = zipped.into_body().collect().await.unwrap().to_bytes();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
            .unwrap();
        assert!(text.contains("tidewatch_build_info{version="), "{text}");
        assert!(bytes.len() < text.len());
        let refused = app
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/metrics")
                    .header("accept-encoding", "gzip;q=0")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(refused.headers()["content-encoding"], "identity");
        assert_eq!(
            app.clone().oneshot(get("/healthz")).await.unwrap().status(),
            200
        );
        assert_eq!(
            app.clone().oneshot(get("/readyz")).await.unwrap().status(),
            503
        );
        ready.store(true, Ordering::Relaxed);
        assert_eq!(
            app.clone().oneshot(get("/readyz")).await.unwrap().status(),
            200
        );
        // A publisher that cannot get its commands acknowledged: not ready.
        m.publisher_stalled("commands", true);
        let res = app.clone().oneshot(get("/readyz")).await.unwrap();
        assert_eq!(res.status(), 503);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"not ready: the commands publisher is stalled\n");
        m.publisher_stalled("commands", false);
        assert_eq!(
            app.clone().oneshot(get("/readyz")).await.unwrap().status(),
            200
        );
        // An input that ended on its own: not alive, and it says which.
        m.input_lost("the kafka source");
        let res = app.oneshot(get("/healthz")).await.unwrap();
        assert_eq!(res.status(), 503);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"not alive: the kafka source ended\n");
    }

    /// Issue 16, finding 1: `/healthz` was a fixed "ok" while every target
    /// was frozen. Alive means the engine ticks.
    #[test]
    fn alive_while_the_engine_ticks() {
        let m = Metrics::new();
        let t0 = std::time::Instant::now();
        assert!(m.alive(t0).is_ok(), "no engine (a worker): alive");
        m.expect_engine_ticks(std::time::Duration::from_secs(1), 1, t0);
        let at = |s| t0 + std::time::Duration::from_secs(s);
        assert!(m.alive(at(14)).is_ok());
        let e = m.alive(at(16)).unwrap_err();
        assert!(e.contains("has not ticked for 16"), "{e}");
        m.engine_ticked(0, at(16));
        assert!(m.alive(at(20)).is_ok());
        // A slow tick: five ticks without one.
        m.expect_engine_ticks(std::time::Duration::from_secs(10), 1, at(20));
        assert!(m.alive(at(69)).is_ok() && m.alive(at(71)).is_err());
        // Shards: one that stops ticking is enough to be not alive.
        m.expect_engine_ticks(std::time::Duration::from_secs(1), 2, at(100));
        m.engine_ticked(0, at(110));
        m.engine_ticked(0, at(120));
        let e = m.alive(at(120)).unwrap_err();
        assert!(e.contains("shard 1 has not ticked for 20"), "{e}");
        m.engine_ticked(1, at(120));
        assert!(m.alive(at(121)).is_ok());
    }
}
