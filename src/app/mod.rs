//! The programs besides `run` and `worker` (whose processes are the
//! `scaler` and `worker` modules): `demo` (the scaler and a worker on an
//! embedded Kafka against a simulated service) and `loadgen` (the demo's
//! wave published where a scaler reads it) and `signals` (sample
//! messages decoded offline with a configured input's format) and `ctl`
//! (control messages and the status endpoint of a running scaler). A
//! program uses the components (and `wave`); no program imports another
//! program.

pub mod ctl;
pub mod demo;
pub mod loadgen;
pub mod signals;
pub mod wave;
