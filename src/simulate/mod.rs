//! `tidewatch simulate` (issue 6, in progress): replaying load traces
//! through the engine against a capacity model. So far: reading traces.

pub mod trace;
