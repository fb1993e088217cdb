//! An alarm's life after it is accepted: verified under its deadline (or answered `overloaded`,
//! or `unverifiable` when the service stops first), its verdict completed and handed to the outbox,
//! and its clip kept with the record once the window's video is in. Alarms that an earlier run
//! recorded and never answered are answered here too.
//!
//! Every path ends in a verdict in the outbox.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::Shared;
use crate::analysis::verdict::Cause;
use crate::analysis::verify::Finding;
use crate::delivery::clips;
use crate::ingest::camera::StreamKind;
use crate::intake::alarm::Alarm;
use crate::store::{Store, Unanswered};
use crate::support::{lock, off_runtime};

/// Of the shutdown bound, what is kept for answering the alarms still in verification and
/// flushing the outbox, and what is kept after the flush for the last messages and the cameras.
pub(super) const SHUTDOWN_RESERVE: Duration = Duration::from_secs(3);
pub(super) const SHUTDOWN_LAST: Duration = Duration::from_secs(1);
/// After the alarm window ends, its last packets are waited for this long before the clip is made.
const CLIP_SETTLE: Duration = Duration::from_millis(700);

/// Starts the verification of an alarm just accepted, or answers it `overloaded` when the queue
/// of alarms in verification is full. `waiting_ahead`, an alarm dated ahead's place among those
/// that wait, is held as long as the alarm's tasks wait.
pub(super) fn start(shared: &Arc<Shared>, alarm: Alarm, waiting_ahead: Option<OwnedSemaphorePermit>) {
    match shared.in_flight.clone().try_acquire_owned() {
        Ok(permit) => {
            shared
                .tasks
                .spawn(handle_alarm(shared.clone(), alarm, permit, waiting_ahead));
        }
        Err(_) => {
            let shared = shared.clone();
            shared.tasks.clone().spawn(async move {
                let finding = shared.verifier.unverifiable(
                    &alarm,
                    Cause::Overloaded,
                    "overloaded: too many alarms in verification",
                );
                close_device_alarm(&shared, &alarm);
                deliver(&shared, &alarm, finding).await;
            });
        }
    }
}

async fn handle_alarm(
    shared: Arc<Shared>,
    alarm: Alarm,
    _in_flight: OwnedSemaphorePermit,
    waiting_ahead: Option<OwnedSemaphorePermit>,
) {
    let deadline = alarm.received_at + shared.deadline;
    let verified = tokio::select! {
        verified = tokio::time::timeout_at(deadline, verify_alarm(&shared, &alarm, deadline)) => verified.ok(),
        _ = shared.stop_alarms.cancelled() => Some(shared.verifier.unverifiable(
            &alarm,
            Cause::Interrupted,
            "the service was stopped before this alarm was verified",
        )),
    };
    let finding = match verified {
        Some(finding) => finding,
        None => shared.verifier.unverifiable(
            &alarm,
            Cause::Overloaded,
            &format!(
                "overloaded: not verified within the {} s deadline",
                shared.deadline.as_secs_f64()
            ),
        ),
    };
    close_device_alarm(&shared, &alarm);
    deliver(&shared, &alarm, finding).await;
    if shared.max_clip_bytes > 0 {
        shared.tasks.spawn(keep_clip(shared.clone(), alarm, waiting_ahead));
    }
}

async fn verify_alarm(shared: &Arc<Shared>, alarm: &Alarm, deadline: Instant) -> Finding {
    let Some(camera) = shared.cameras.get(&alarm.camera) else {
        return shared
            .verifier
            .unverifiable(alarm, Cause::CameraOffline, "unknown camera");
    };
    shared.live.analyse(camera, alarm, deadline).await
}

/// Device events of the camera no longer join this alarm: its verdict is made.
fn close_device_alarm(shared: &Shared, alarm: &Alarm) {
    if alarm.joinable {
        let mut open = lock(&shared.open);
        if open.get(&alarm.camera) == Some(&alarm.alarm_id) {
            open.remove(&alarm.camera);
        }
    }
}

/// The one place where analysis's verdict document is completed with what only the service
/// knows: the record it answers (a shared analysis hands over the lead alarm's document), the
/// evidence's topic, and the time from receipt to verdict.
fn complete_verdict(shared: &Shared, alarm: &Alarm, finding: &mut Finding) {
    finding.doc.record_id = alarm.record_id.clone();
    if finding.evidence.is_some() {
        finding.doc.evidence_topic = Some(shared.publisher.topics().evidence(&alarm.record_id));
    }
    finding.doc.latency_ms = alarm.received_at.elapsed().as_millis() as u64;
}

/// Hands a verdict to the outbox; if the store fails, publishes it directly so the alarm is answered.
async fn deliver(shared: &Shared, alarm: &Alarm, mut finding: Finding) {
    complete_verdict(shared, alarm, &mut finding);
    shared.metrics.verdict(
        &alarm.camera,
        finding.doc.verdict.as_str(),
        finding.doc.cause.map(Cause::as_str),
        alarm.received_at.elapsed().as_secs_f64(),
    );
    tracing::info!(
        camera = %alarm.camera,
        alarm_id = %alarm.alarm_id,
        verdict = ?finding.doc.verdict,
        cause = finding.doc.cause.map(Cause::as_str),
        reason = %finding.doc.reason,
        elapsed_ms = finding.doc.latency_ms,
        "verdict"
    );
    if let Some(arc) = &shared.arc {
        off_runtime(|| arc.enqueue(alarm, finding.doc.verdict, &finding.doc.reason));
    }
    if let Some(mail) = &shared.mail
        && let Err(e) = off_runtime(|| mail.enqueue(&finding.doc, finding.evidence.as_deref()))
    {
        tracing::error!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "verdict mail not queued");
    }
    let submitted = off_runtime(|| shared.outbox.submit(&finding.doc, finding.evidence.as_deref()));
    if let Err(e) = submitted {
        tracing::error!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "verdict not stored; publishing directly");
        if let Err(e) = shared.publisher.verdict_unstored(&finding.doc, finding.evidence).await {
            tracing::error!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "verdict not published");
        }
    }
}

/// Once the alarm window's video is in, its packets are remuxed into an MP4 kept with the record.
async fn keep_clip(shared: Arc<Shared>, alarm: Alarm, _waiting_ahead: Option<OwnedSemaphorePermit>) {
    let Some(camera) = shared.cameras.get(&alarm.camera) else {
        return;
    };
    let window = shared.verifier.window(&alarm);
    // The ring holds the window until clip.buffer_s after its start; wait for its end only.
    let wait = (window.to - Utc::now()).to_std().unwrap_or_default() + CLIP_SETTLE;
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        // At shutdown the window's end may not come; what is buffered is kept instead.
        _ = shared.stop_alarms.cancelled() => {}
    }
    let slice = match camera.slice(StreamKind::Main, window.from, window.to) {
        Ok(slice) => slice,
        Err(e) => {
            tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "no clip kept");
            return;
        }
    };
    let start = slice.units.first().map_or(window.from, |u| u.wall);
    let file = format!("{}.mp4", uuid::Uuid::new_v4().simple());
    let path = shared.store.clips_dir().join(&file);
    let written = tokio::task::spawn_blocking(move || clips::remux_to_mp4(&slice, &path).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, %error, "clip not kept");
            return;
        }
    };
    let recorded = off_runtime(|| shared.store.record_clip(&alarm.record_id, &file, bytes, start));
    if let Err(e) = recorded {
        tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "clip not recorded");
        let _ = std::fs::remove_file(shared.store.clips_dir().join(&file));
        return;
    }
    off_runtime(|| bound_clips(&shared));
}

/// Deletes the oldest clips while all of them together exceed `store.max_clips_mb`.
fn bound_clips(shared: &Shared) {
    match shared.store.bound_clips(shared.max_clip_bytes) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            deleted = n,
            max_mb = shared.max_clip_bytes / (1024 * 1024),
            "store.max_clips_mb reached: the oldest clips were deleted"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot bound the clips' disk use"),
    }
}

/// Lets the alarms in verification finish while the shutdown bound allows, then answers the rest
/// `unverifiable`, so that each still gets its verdict into the outbox.
pub(super) async fn answer_in_flight(shared: &Shared, bound: Instant) {
    shared.tasks.close();
    let give_up = bound.checked_sub(SHUTDOWN_RESERVE).unwrap_or(bound);
    if tokio::time::timeout_at(give_up, shared.tasks.wait()).await.is_ok() {
        return;
    }
    tracing::warn!(
        left = shared.tasks.len(),
        "shutdown bound: alarms still in verification are answered unverifiable"
    );
    shared.stop_alarms.cancel();
    let answered_by = bound.checked_sub(SHUTDOWN_LAST).unwrap_or(bound);
    if tokio::time::timeout_at(answered_by, shared.tasks.wait()).await.is_err() {
        tracing::error!(
            left = shared.tasks.len(),
            "alarms still in flight at shutdown; they are answered after the restart"
        );
    }
}

/// The alarms an earlier run recorded and never answered.
pub(super) fn interrupted_alarms(store: &Store) -> Vec<Unanswered> {
    store.unanswered().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot look for alarms interrupted by a restart");
        Vec::new()
    })
}

/// Alarms recorded by an earlier run that never got a verdict: their video is gone, so they are
/// answered `unverifiable` rather than left without an answer, except those that another box of
/// the share group says it took over (`taken`), which are recorded as handed over.
pub(super) fn answer_interrupted_alarms(shared: &Shared, unanswered: Vec<Unanswered>, taken: &HashSet<String>) {
    for u in unanswered {
        let alarm = Alarm {
            received: u.received,
            record_id: u.record_id,
            ..Alarm::new(u.alarm_id, &u.camera, u.time, "restart".into())
        };
        if taken.contains(&alarm.alarm_id) {
            record_handed_over(shared, &alarm);
            continue;
        }
        tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, "alarm interrupted by a restart");
        let finding = shared.verifier.unverifiable(
            &alarm,
            Cause::Interrupted,
            "the service restarted before this alarm was verified",
        );
        if let Err(e) = shared.outbox.submit(&finding.doc, None) {
            tracing::error!(alarm_id = %alarm.alarm_id, error = %e, "cannot store verdict for interrupted alarm");
        }
    }
}

/// The record of an alarm that another box answered: a verdict that is kept, not published.
fn record_handed_over(shared: &Shared, alarm: &Alarm) {
    tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, "interrupted alarm was answered by another box of the group");
    let finding = shared.verifier.unverifiable(
        alarm,
        Cause::Interrupted,
        "taken over by another box of the share group while this box was down; its verdict is in that box's records",
    );
    let kept = shared
        .store
        .record_verdict(&finding.doc, None)
        .and_then(|()| shared.store.mark_delivered(&alarm.record_id));
    if let Err(e) = kept {
        tracing::error!(alarm_id = %alarm.alarm_id, error = %e, "cannot record an alarm handed over");
    }
}
