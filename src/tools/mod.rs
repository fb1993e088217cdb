//! Tools beside the service, for technicians and for the tests: the demo site, the benchmarks (the
//! detector's, and the alarm storm's), the development set and its evaluation.

pub mod bench;
pub mod demo;
pub mod devset;
pub mod eval;
pub mod export_eval;
pub mod probe;
pub mod storm;
