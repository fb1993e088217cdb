//! The idle view check: every `camera.view_check_s`, each camera's newest keyframe is measured
//! (the detect stream's when it has one: cheaper, and the same view), so that a camera covered,
//! blinded or knocked out of focus while nothing happens shows in its state message, and an alarm
//! on it whose window shows no view at all is `unverifiable`, not a false alarm. The checks wait
//! while alarms wait for the analysis workers: in a storm every core goes to the alarms, and an
//! alarm's own analysis checks its camera's view anyway.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use crate::analysis::clip::newest_keyframe;
use crate::analysis::view;
use crate::config::Config;
use crate::ingest::camera::StreamKind;

/// How often the task looks for cameras due a check.
const TICK: Duration = Duration::from_secs(1);

/// Each checked camera's interval (cameras with `view_check_s = 0` are left out).
pub(super) fn intervals(config: &Config) -> HashMap<String, Duration> {
    config
        .cameras
        .iter()
        .filter(|c| c.view_check_s > 0.0)
        .map(|c| (c.id.clone(), Duration::from_secs_f64(c.view_check_s)))
        .collect()
}

/// Checks each camera when it is due, spread over its interval so that a site's cameras are not
/// all decoded in the same second.
pub(super) async fn check_views(shared: Arc<Shared>, intervals: HashMap<String, Duration>) {
    let start = Instant::now();
    let count = intervals.len().max(1) as u32;
    let mut due: HashMap<String, Instant> = intervals
        .iter()
        .enumerate()
        .map(|(i, (camera, every))| (camera.clone(), start + *every * i as u32 / count))
        .collect();
    loop {
        tokio::time::sleep(TICK).await;
        if shared.live.is_busy() {
            continue;
        }
        let now = Instant::now();
        for (camera, every) in &intervals {
            if due.get(camera).is_some_and(|d| *d > now) {
                continue;
            }
            due.insert(camera.clone(), now + *every);
            check_one(&shared, camera).await;
        }
    }
}

async fn check_one(shared: &Arc<Shared>, camera: &str) {
    let Some(cam) = shared.cameras.get(camera).cloned() else {
        return;
    };
    let kind = if cam.stream_online(StreamKind::Detect) {
        StreamKind::Detect
    } else if cam.stream_online(StreamKind::Main) {
        StreamKind::Main
    } else {
        // An offline camera is reported as offline; its view is not known.
        return;
    };
    let decoders = shared.verifier.decoders().clone();
    let measured = tokio::task::spawn_blocking(move || {
        newest_keyframe(&cam, kind, &decoders).map(|frame| view::measure(&frame.image, frame.time))
    })
    .await;
    match measured {
        Ok(Ok(stats)) => shared.cameras.view_checked(camera, stats),
        Ok(Err(e)) => tracing::debug!(camera = %camera, error = %e, "view check skipped"),
        Err(e) => tracing::warn!(camera = %camera, error = %e, "view check failed"),
    }
}
