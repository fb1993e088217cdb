//! Operator feedback on a verdict ("it was real", "it was false"), the one path for both doors it
//! comes through: `{prefix}/feedback/{alarm_id}` on the broker and
//! `POST /api/alarms/{alarm_id}/feedback` (the API and the console's buttons).
//!
//! The body is checked, stored with the alarm's record, and logged; each door answers its sender in
//! its own way (an error report on `errors`, an HTTP status).

use crate::store::records::{Feedback, FeedbackError, parse_feedback};
use crate::store::{Store, StoreError};

/// Why feedback was not stored.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackRefused {
    #[error(transparent)]
    Invalid(#[from] FeedbackError),
    #[error("unknown alarm {0:?}")]
    UnknownAlarm(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks and stores a feedback document (JSON) on `alarm_id`, returning what was stored.
pub fn take(store: &Store, alarm_id: &str, body: &[u8]) -> Result<Feedback, FeedbackRefused> {
    record(store, alarm_id, parse_feedback(body)?)
}

/// Stores feedback already read (the console's form) on `alarm_id`.
pub fn record(store: &Store, alarm_id: &str, feedback: Feedback) -> Result<Feedback, FeedbackRefused> {
    if !store.record_feedback(alarm_id, &feedback)? {
        return Err(FeedbackRefused::UnknownAlarm(alarm_id.to_owned()));
    }
    tracing::info!(alarm_id, outcome = feedback.outcome.as_str(), operator = %feedback.operator, "operator feedback");
    Ok(feedback)
}
