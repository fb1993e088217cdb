//! Intake: where alarms come from. Each intake (MQTT, HTTP webhooks, NVR e-mails, ONVIF camera
//! events) turns what it hears into one [`alarm::Alarm`] and hands it to the one
//! [`AlarmSink::accept`], which the service implements: record, deduplicate or join, verify, answer.

use chrono::{DateTime, Utc};
use serde::Serialize;

pub mod alarm;
pub mod dc09;
pub mod feedback;
pub mod http;
pub mod mqtt;
pub mod onvif;
pub mod smtp;

use alarm::Alarm;

/// An alarm as an intake hands it over.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub alarm: Alarm,
    /// Where it came from, for error reports: an MQTT topic, `POST /api/alarms/gate`, ...
    pub origin: String,
    /// The message as received, kept with the record (JSON body, the mail's headers, the event).
    pub raw: Vec<u8>,
    /// The device's own picture of the alarm (an NVR mail's JPEG attachment).
    pub snapshot: Option<Vec<u8>>,
}

/// How an alarm was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The alarm whose verdict will answer it: its own, or the one it joined.
    pub alarm_id: String,
    /// It joined an alarm of the same camera that was already in verification.
    pub joined: bool,
}

/// Why an alarm was not taken. The sink has already reported it on `{prefix}/errors`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("duplicate alarm_id {0:?}: already received; no second verdict")]
    Duplicate(String),
    #[error("the service is shutting down; send the alarm again")]
    ShuttingDown,
    /// An id that breaks the one id rule (`support::ids`); whichever intake let it through, it
    /// goes no further.
    #[error("field `{field}`: {message}")]
    Invalid { field: &'static str, message: String },
    /// The store could not record the alarm (database locked, disk full or read-only). Nothing is
    /// acknowledged, so the sender (or the broker) sends it again: MQTT gets no ack, HTTP 503,
    /// SMTP 451.
    #[error("the alarm could not be stored ({0}); it is not acknowledged: send it again")]
    Unstored(String),
    /// An alarm dated ahead of this box's clock waits for its video; past this many waiting at
    /// once, more are refused.
    #[error(
        "alarm time {time} is {ahead_s} s ahead of this box's clock, and {waiting} alarms dated ahead are \
         already waiting for their video (the most allowed): refused; check the sender's clock"
    )]
    TooManyAhead { time: String, ahead_s: i64, waiting: usize },
}

/// The service as the intakes see it.
pub trait AlarmSink: Send + Sync + 'static {
    fn knows_camera(&self, camera: &str) -> bool;
    /// An alarm with this id is already recorded here.
    fn knows_alarm(&self, _alarm_id: &str) -> bool {
        false
    }
    /// Records the alarm (before this returns), then verifies and answers it in the background.
    /// Only an `Ok` alarm is stored: the intake acknowledges nothing else as taken.
    fn accept(&self, arrival: Arrival) -> Result<Accepted, Refused>;
    /// Input refused before it became an alarm (unknown camera, malformed body, unmatched mail):
    /// logged and reported on `{prefix}/errors`. `origin` says where it came from.
    fn report(&self, origin: &str, error: &str, payload: &[u8]);
    /// A camera's event subscription changed state; shown in the camera's state message.
    fn event_link(&self, camera: &str, link: EventLink);
}

/// A camera's ONVIF event subscription, as shown under `onvif` in its state message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventLink {
    pub state: EventLinkState,
    pub since: DateTime<Utc>,
    /// Why it failed, or what it is doing ("connecting").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventLinkState {
    Connecting,
    Subscribed,
    Failed,
}

impl EventLink {
    pub fn now(state: EventLinkState, error: Option<String>) -> Self {
        Self {
            state,
            since: Utc::now(),
            error,
        }
    }
}
