//! The one place where an alarm is accepted, whichever intake it came through: refused while the
//! service stops, joined to the camera's device alarm in verification, recorded (or refused as a
//! duplicate, or recorded anew under a reused id), announced to the share group, and handed to its
//! life in [`super::alarm`] or answered `overloaded` when too many are in verification.
//!
//! An alarm the store cannot record is refused ([`Refused::Unstored`]): only what is stored is
//! acknowledged. Alarms dated ahead of this box's clock are bounded in number
//! ([`MAX_WAITING_AHEAD`]). The store's work runs off the async workers ([`off_runtime`]).
//!
//! Input refused before it became an alarm is reported here too, through the outbox.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::TimeDelta;
use tokio::sync::OwnedSemaphorePermit;

use super::Shared;
use super::alarm;
use crate::analysis::verdict::rfc3339;
use crate::delivery::publish::ErrorReport;
use crate::intake::alarm::Alarm;
use crate::intake::{Accepted, AlarmSink, Arrival, EventLink, Refused};
use crate::store::{DUPLICATE_WINDOW, EarlierAlarm, Recorded};
use crate::support::ids::{IdError, check_id};
use crate::support::{lock, off_runtime};

/// Alarms dated ahead of this box's clock wait for their video, and their clip, in a task each
/// (up to [`crate::intake::alarm::MAX_CLOCK_SKEW`] ahead); at most this many wait at once.
pub(super) const MAX_WAITING_AHEAD: usize = 64;
/// An alarm dated ahead by no more than this is an ordinary difference between clocks, not one
/// that waits: it counts against no bound.
const AHEAD_TOLERANCE: TimeDelta = TimeDelta::seconds(10);

/// The service as the intakes see it.
pub(super) struct ServiceSink(pub(super) Arc<Shared>);

impl AlarmSink for ServiceSink {
    fn knows_camera(&self, camera: &str) -> bool {
        self.0.cameras.contains(camera)
    }

    fn knows_alarm(&self, alarm_id: &str) -> bool {
        off_runtime(|| self.0.store.knows_alarm(alarm_id).unwrap_or(false))
    }

    /// Off the async workers: the record's commit waits for fsync (or for the store's lock), and
    /// the `open` lock is held meanwhile.
    fn accept(&self, arrival: Arrival) -> Result<Accepted, Refused> {
        off_runtime(|| self.take(arrival))
    }

    fn report(&self, origin: &str, error: &str, payload: &[u8]) {
        tracing::warn!(origin, %error, "alarm rejected");
        off_runtime(|| self.send_report(ErrorReport::new(origin, error, payload)));
    }

    fn event_link(&self, camera: &str, link: EventLink) {
        tracing::info!(camera, state = ?link.state, error = ?link.error, "camera event subscription");
        self.0.cameras.set_event_link(camera, link);
    }
}

impl ServiceSink {
    fn take(&self, arrival: Arrival) -> Result<Accepted, Refused> {
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
        let waiting_ahead = match self.hold_place_ahead(&alarm) {
            Ok(place) => place,
            Err(refused) => {
                tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, time = %alarm.time, "too many alarms dated ahead");
                self.report(&origin, &format!("alarm {:?}: {refused}", alarm.alarm_id), &raw);
                return Err(refused);
            }
        };
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
            Err(e) => {
                drop(open);
                return Err(self.refuse_unstored(&origin, &alarm, &e.to_string(), &raw));
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
        alarm::start(shared, alarm, waiting_ahead);
        Ok(accepted)
    }

    /// A place among the alarms dated ahead, for one that is (None for one dated about now), or
    /// its refusal when [`MAX_WAITING_AHEAD`] already wait.
    fn hold_place_ahead(&self, alarm: &Alarm) -> Result<Option<OwnedSemaphorePermit>, Refused> {
        let ahead = alarm.time - alarm.received;
        if ahead <= AHEAD_TOLERANCE {
            return Ok(None);
        }
        self.0
            .waiting_ahead
            .clone()
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| Refused::TooManyAhead {
                time: rfc3339(alarm.time),
                ahead_s: ahead.num_seconds(),
                waiting: MAX_WAITING_AHEAD,
            })
    }

    /// An alarm the store could not record: refused, so that the intake does not acknowledge it,
    /// and reported straight to the broker (the outbox is in the store that just failed).
    fn refuse_unstored(&self, origin: &str, alarm: &Alarm, error: &str, payload: &[u8]) -> Refused {
        tracing::error!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, %error, "alarm not recorded: not acknowledged");
        let refused = Refused::Unstored(error.to_owned());
        let report = format!("alarm {:?} on camera {}: {refused}", alarm.alarm_id, alarm.camera);
        if let Err(e) = self
            .0
            .publisher
            .error_unstored(&ErrorReport::new(origin, &report, payload))
        {
            tracing::warn!(error = %e, "error report not published");
        }
        refused
    }

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
