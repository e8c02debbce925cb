//! tidewatch: an event-driven autoscaler. Signals in, Lua-decided and
//! Rust-guarded scale commands out.
#![forbid(unsafe_code)]

pub mod clock;
pub mod event;
pub mod forecast;
pub mod policy;
pub mod window;
