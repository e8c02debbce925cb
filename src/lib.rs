//! tidewatch: an event-driven autoscaler. Signals in, Lua-decided and
//! Rust-guarded scale commands out. The modules follow the data flow, and
//! every import points down it: docs/ARCHITECTURE.md draws the map.
// Unsafe code is denied everywhere but the `process` provider, which needs
// kill(2) and prctl(2) for its children, and `priority` (setpriority(2),
// sched_setscheduler(2), and prctl(2) for the process's huge pages).
#![deny(unsafe_code)]

/// mimalloc for every allocation, the Lua VMs' among them: under glibc's
/// malloc a scaler of 50,000 targets spent about 29% of its CPU in the
/// allocator (docs/PERFORMANCE.md, "Engine shards"). Declared in the
/// library so that the binary, the benchmarks and the tests all run on
/// what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The vocabulary every layer uses.
pub mod clock;
pub mod prefetch;
pub mod priority;
pub mod retry;
pub mod secret;
pub mod settings;

// Signals, their windows, forecasts and the decision.
pub mod event;
pub mod forecast;
pub mod guard;
pub mod policy;
pub mod schedule;
pub mod window;

// Commands, observability and broker plumbing.
pub mod broker;
pub mod command;
pub mod telemetry;

// Target state that outlives a process: snapshots and their stores.
pub mod state;

// The scaler: the engine, what feeds it, what takes its commands away.
pub mod engine;
pub mod publish;
pub mod source;

// The worker and the platforms it scales.
pub mod provider;
pub mod worker;

// Composition: the scaler's configuration and process, lifecycles,
// the simulator, and the programs.
pub mod app;
pub mod config;
pub mod lifecycle;
pub mod scaler;
pub mod simulate;
