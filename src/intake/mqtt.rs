//! What arrives on the broker for this box: alarms on `{prefix}/alarms/{camera}` (parsed, handed
//! to the sink, which records them, and only then acknowledged, so an alarm is never lost between
//! the two) and operator feedback on `{prefix}/feedback/{alarm_id}`.
//!
//! An alarm the store cannot record stays unacknowledged, so the broker still holds it: it is
//! offered to the sink again with backoff until it is stored, then acknowledged. If the service
//! stops first, the persistent session keeps it at the broker for the next run.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::feedback::{self, FeedbackRefused};
use super::{AlarmSink, Arrival, Refused, alarm};
use crate::mqtt::{Inbound, Topics};
use crate::store::Store;
use crate::support::{Backoff, off_runtime};

/// How soon an alarm the store could not record is offered again, and the longest wait between tries.
const UNSTORED_RETRY_FIRST: Duration = Duration::from_secs(1);
const UNSTORED_RETRY_MAX: Duration = Duration::from_secs(10);

/// Routes the messages of the box's alarm session.
pub struct Router<'a> {
    pub sink: &'a Arc<dyn AlarmSink>,
    pub topics: &'a Topics,
    pub store: &'a Store,
    /// Whether other boxes are online on the broker: feedback goes to every box, so feedback on an
    /// alarm unknown here may be another box's.
    pub others_online: &'a (dyn Fn() -> bool + Send + Sync),
}

impl Router<'_> {
    /// Takes one message of the alarm session: feedback, an alarm, or an alarm of a camera this box
    /// no longer serves (still in its persistent session: acknowledged and left to the watch, which
    /// reports alarms that no box serves).
    pub async fn route(&self, msg: Inbound) {
        if let Some(alarm_id) = self.topics.alarm_of_feedback(&msg.topic) {
            let alarm_id = alarm_id.to_owned();
            self.take_feedback(&alarm_id, msg).await;
        } else if self
            .topics
            .camera_of_alarm(&msg.topic)
            .is_some_and(|c| !self.sink.knows_camera(c))
        {
            ack(&msg, "alarm").await;
        } else {
            take(self.sink, self.topics, msg).await;
        }
    }

    /// Feedback is stored, or reported on `errors`; acknowledged either way (a bad message would
    /// come back forever otherwise).
    async fn take_feedback(&self, alarm_id: &str, msg: Inbound) {
        match off_runtime(|| feedback::take(self.store, alarm_id, &msg.payload)) {
            Ok(_) => {}
            Err(FeedbackRefused::UnknownAlarm(_)) if (self.others_online)() => {
                tracing::debug!(alarm_id, "feedback for an alarm of another box")
            }
            Err(e) => self.sink.report(&msg.topic, &e.to_string(), &msg.payload),
        }
        ack(&msg, "feedback").await;
    }
}

async fn ack(msg: &Inbound, what: &str) {
    if let Err(e) = msg.ack().await {
        tracing::warn!(topic = %msg.topic, error = %e, "cannot acknowledge {what} message");
    }
}

/// Takes one message from the alarm subscription.
pub async fn take(sink: &Arc<dyn AlarmSink>, topics: &Topics, msg: Inbound) {
    if let Some(camera) = topics.camera_of_alarm(&msg.topic) {
        match alarm::parse("mqtt", camera, &msg.payload, |c| sink.knows_camera(c), Utc::now()) {
            Ok(alarm) => {
                let arrival = Arrival {
                    alarm,
                    origin: msg.topic.clone(),
                    raw: msg.payload.clone(),
                    snapshot: None,
                };
                match sink.accept(arrival.clone()) {
                    // Not acknowledged: the broker keeps it for the next run (persistent session).
                    Err(Refused::ShuttingDown) => return,
                    Err(Refused::Unstored(_)) => {
                        tokio::spawn(retry_unstored(sink.clone(), arrival, msg));
                        return;
                    }
                    _ => {}
                }
            }
            Err(e) => sink.report(&msg.topic, &e.to_string(), &msg.payload),
        }
    }
    ack(&msg, "alarm").await;
}

/// Offers an alarm the store could not record again, with backoff, until the store takes it (or
/// refuses it for another reason, which is reported): then it is acknowledged. The broker holds
/// at most its in-flight window of such unacknowledged alarms for this session (mosquitto's
/// `max_inflight_messages`, 20 by default), so these retries are as bounded as that.
async fn retry_unstored(sink: Arc<dyn AlarmSink>, arrival: Arrival, msg: Inbound) {
    let mut backoff = Backoff::new(UNSTORED_RETRY_FIRST, UNSTORED_RETRY_MAX);
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        match sink.accept(arrival.clone()) {
            Err(Refused::Unstored(_)) => continue,
            // Left to the broker: the persistent session delivers it to the next run.
            Err(Refused::ShuttingDown) => return,
            Ok(_) | Err(_) => break,
        }
    }
    tracing::info!(topic = %msg.topic, alarm_id = %arrival.alarm.alarm_id, "alarm stored after the store recovered; acknowledged");
    ack(&msg, "alarm").await;
}
