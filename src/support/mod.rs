//! Small pieces every stage uses and none owns: locking that survives a panicked holder, retry
//! backoff, outage logging that stays readable through a long outage, and the GStreamer helpers
//! that ingest, analysis, delivery and the tools share.

mod backoff;
pub mod gst;
pub mod ids;
mod lock;
mod outage;

pub use backoff::Backoff;
pub use lock::lock;
pub use outage::{LOG_REMINDER, OutageLog, OutageNote};
