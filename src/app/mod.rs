//! The programs besides `run` and `worker` (whose processes are the
//! `scaler` and `worker` modules): `demo` (the scaler and a worker on an
//! embedded Kafka against a simulated service) and `loadgen` (the demo's
//! wave published where a scaler reads it) and `signals` (sample
//! messages decoded offline with a configured input's format). A program
//! uses the components; no program imports another program.

pub mod demo;
pub mod loadgen;
pub mod signals;
pub mod wave;
