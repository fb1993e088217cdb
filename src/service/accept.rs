//! The one place where an alarm is accepted, whichever intake it came through: refused while the
//! service stops, joined to the camera's device alarm in verification, recorded (or refused as a
//! duplicate, or recorded anew under a reused id), announced to the share group, and handed to its
//! life in [`super::alarm`] or answered `overloaded` when too many are in verification.
//!
//! Input refused before it became an alarm is reported here too, through the outbox.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Shared;
use super::alarm;
use crate::analysis::verdict::rfc3339;
use crate::delivery::publish::ErrorReport;
use crate::intake::alarm::Alarm;
use crate::intake::{Accepted, AlarmSink, Arrival, EventLink, Refused};
use crate::store::{DUPLICATE_WINDOW, EarlierAlarm, Recorded};
use crate::support::ids::{IdError, check_id};
use crate::support::lock;

/// The service as the intakes see it.
pub(super) struct ServiceSink(pub(super) Arc<Shared>);

impl AlarmSink for ServiceSink {
    fn knows_camera(&self, camera: &str) -> bool {
        self.0.cameras.contains(camera)
    }

    fn knows_alarm(&self, alarm_id: &str) -> bool {
        self.0.store.knows_alarm(alarm_id).unwrap_or(false)
    }

    fn accept(&self, arrival: Arrival) -> Result<Accepted, Refused> {
        let shared = &self.0;
        if !shared.accepting.load(Ordering::SeqCst) {
            return Err(Refused::ShuttingDown);
        }
        let Arrival {
            mut alarm,
            origin,
            raw,
            snapshot,
        } = arrival;
        if let Err(refused) = check_ids(&alarm) {
            self.report(&origin, &refused.to_string(), &raw);
            return Err(refused);
        }
        // One lock over look-up, record and registration, so that two events of a camera arriving
        // together make one alarm.
        let mut open = lock(&shared.open);
        if alarm.joinable
            && let Some(into) = open.get(&alarm.camera)
        {
            return Ok(self.join(into, &alarm, &raw));
        }
        match shared.store.record_alarm(&alarm, &raw, snapshot.as_deref()) {
            Ok(Recorded::New { record_id, reuses }) => {
                alarm.record_id = record_id;
                if let Some(earlier) = reuses {
                    self.report_reused_id(&origin, &alarm, &earlier, &raw);
                }
            }
            Ok(Recorded::Duplicate(earlier)) => return Err(self.refuse_duplicate(&origin, &alarm, &earlier, &raw)),
            // Still verified and answered: an answer matters more than the audit record.
            Err(e) => {
                tracing::error!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "alarm not recorded")
            }
        }
        if alarm.joinable {
            open.insert(alarm.camera.clone(), alarm.alarm_id.clone());
        }
        drop(open);
        shared.redundancy.announce(&alarm);
        tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, record_id = %alarm.record_id, time = %alarm.time, source = %alarm.source, "alarm received");
        shared.metrics.alarm(&alarm.source);
        let accepted = Accepted {
            alarm_id: alarm.alarm_id.clone(),
            joined: false,
        };
        alarm::start(shared, alarm);
        Ok(accepted)
    }

    fn report(&self, origin: &str, error: &str, payload: &[u8]) {
        tracing::warn!(origin, %error, "alarm rejected");
        self.send_report(ErrorReport::new(origin, error, payload));
    }

    fn event_link(&self, camera: &str, link: EventLink) {
        tracing::info!(camera, state = ?link.state, error = ?link.error, "camera event subscription");
        self.0.cameras.set_event_link(camera, link);
    }
}

/// The one id rule, checked again where every intake's alarms meet: an id that becomes a topic or
/// a file name is never built from an unchecked part.
fn check_ids(alarm: &Alarm) -> Result<(), Refused> {
    let invalid = |field| {
        move |e: IdError| Refused::Invalid {
            field,
            message: e.to_string(),
        }
    };
    check_id(&alarm.alarm_id).map_err(invalid("alarm_id"))?;
    check_id(&alarm.camera).map_err(invalid("camera"))
}

impl ServiceSink {
    /// A device event of a camera whose device alarm is in verification: recorded with that alarm,
    /// which answers it.
    fn join(&self, into: &str, event: &Alarm, raw: &[u8]) -> Accepted {
        if let Err(e) = self.0.store.record_joined_event(into, event, raw) {
            tracing::error!(camera = %event.camera, alarm_id = %into, error = %e, "joined event not recorded");
        }
        tracing::info!(camera = %event.camera, alarm_id = %into, source = %event.source, "event joined the alarm in verification");
        Accepted {
            alarm_id: into.to_owned(),
            joined: true,
        }
    }

    /// Stores a report for `errors` in the outbox; if the store fails, publishes it directly.
    fn send_report(&self, report: ErrorReport<'_>) {
        if let Err(e) = self.0.outbox.submit_error(&report) {
            tracing::error!(error = %e, "error report not stored; publishing directly");
            if let Err(e) = self.0.publisher.error_unstored(&report) {
                tracing::warn!(error = %e, "error report not published");
            }
        }
    }

    /// The same alarm sent again (a redelivery, a device's retry): refused, and reported with the
    /// record that answers it.
    fn refuse_duplicate(&self, origin: &str, alarm: &Alarm, earlier: &EarlierAlarm, payload: &[u8]) -> Refused {
        let refused = Refused::Duplicate(alarm.alarm_id.clone());
        tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, record_id = %earlier.record_id, "duplicate alarm ignored");
        let error = format!(
            "{refused} (same camera, alarm time within {} s of the alarm at {}, answered as record {})",
            DUPLICATE_WINDOW.num_seconds(),
            rfc3339(earlier.time),
            earlier.record_id
        );
        self.send_report(ErrorReport::new(origin, &error, payload).about(&alarm.alarm_id, &earlier.record_id));
        refused
    }

    /// A new alarm with an id the sender used before: it is verified and answered, and the sender
    /// hears of the reuse (a device that restarted its counter may be confusing its alarms).
    fn report_reused_id(&self, origin: &str, alarm: &Alarm, earlier: &EarlierAlarm, payload: &[u8]) {
        tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, record_id = %alarm.record_id, earlier_record = %earlier.record_id, earlier_time = %earlier.time, "alarm_id reused: a new alarm");
        let error = format!(
            "alarm_id {:?} reused: an earlier alarm with this id on {} at {} (record {}); this one on {} at {} \
             is a new alarm, verified and answered as record {}",
            alarm.alarm_id,
            earlier.camera,
            rfc3339(earlier.time),
            earlier.record_id,
            alarm.camera,
            rfc3339(alarm.time),
            alarm.record_id
        );
        self.send_report(ErrorReport::new(origin, &error, payload).about(&alarm.alarm_id, &alarm.record_id));
    }
}
