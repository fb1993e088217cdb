//! Small pieces every stage uses and none owns: locking that survives a panicked holder, blocking
//! work kept off the async workers, retry backoff, outage logging that stays readable through a
//! long outage, and the GStreamer helpers that ingest, analysis, delivery and the tools share.

mod backoff;
mod blocking;
pub mod gst;
pub mod ids;
mod lock;
mod outage;

pub use backoff::Backoff;
pub use blocking::off_runtime;
pub use lock::lock;
pub use outage::{LOG_REMINDER, OutageLog, OutageNote};
