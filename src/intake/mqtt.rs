//! MQTT alarms on `{prefix}/alarms/{camera}`: parsed, handed to the sink (which records them), and
//! only then acknowledged to the broker, so an alarm is never lost between the two.

use chrono::Utc;

use super::{AlarmSink, Arrival, Refused, alarm};
use crate::mqtt::{Inbound, Topics};

/// Takes one message from the alarm subscription.
pub async fn take(sink: &dyn AlarmSink, topics: &Topics, msg: Inbound) {
    if let Some(camera) = topics.camera_of_alarm(&msg.topic) {
        match alarm::parse("mqtt", camera, &msg.payload, |c| sink.knows_camera(c), Utc::now()) {
            Ok(alarm) => {
                let arrival = Arrival {
                    alarm,
                    origin: msg.topic.clone(),
                    raw: msg.payload.clone(),
                    snapshot: None,
                };
                // Not acknowledged: the broker keeps it for the next run (persistent session).
                if sink.accept(arrival) == Err(Refused::ShuttingDown) {
                    return;
                }
            }
            Err(e) => sink.report(&msg.topic, &e.to_string(), &msg.payload),
        }
    }
    if let Err(e) = msg.ack().await {
        tracing::warn!(topic = %msg.topic, error = %e, "cannot acknowledge alarm message");
    }
}
