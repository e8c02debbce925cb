//! The programs besides `run` and `worker` (whose processes are the
//! `scaler` and `worker` modules): `demo` (the scaler and a worker on an
//! embedded Kafka against a simulated service) and `loadgen` (the demo's
//! wave published where a scaler reads it). A program uses the
//! components; no program imports another program.

pub mod demo;
pub mod loadgen;
pub mod wave;
