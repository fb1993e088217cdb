//! Delivery: the durable record of alarms and verdicts, and sending verdicts, camera state, errors
//! and status to the monitoring centre.

pub mod arc;
pub mod clips;
pub mod mail;
pub mod publish;
