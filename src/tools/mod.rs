//! Tools beside the service, for technicians and for the tests: the demo site, the benchmark, the
//! development set and its evaluation.

pub mod bench;
pub mod demo;
pub mod devset;
pub mod eval;
