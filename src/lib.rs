//! tidewatch: an event-driven autoscaler. Signals in, Lua-decided and
//! Rust-guarded scale commands out.
// Unsafe code is denied everywhere but the `process` provider, which needs
// kill(2) and prctl(2) for its children.
#![deny(unsafe_code)]

pub mod amqp;
pub mod clock;
pub mod command;
pub mod config;
pub mod demo;
pub mod engine;
pub mod event;
pub mod forecast;
pub mod guard;
pub mod kafka;
pub mod loadgen;
pub mod policy;
pub mod provider;
pub mod retry;
pub mod run;
pub mod schedule;
pub mod simulate;
pub mod source;
pub mod telemetry;
pub mod window;
pub mod worker;
