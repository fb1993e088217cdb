//! The site's cameras as the running service holds them: their pipelines, their ONVIF event links,
//! their state messages on the broker, the offline reminder, and the console's view (the camera
//! list and decoded snapshots).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Shared, streams};
use crate::analysis::clip as video;
use crate::analysis::evidence::{self, Annotations};
use crate::analysis::view::{IdleViews, ViewStats};
use crate::config::{Config, EvidenceConfig, PolicyConfig};
use crate::delivery::publish::CameraState;
use crate::ingest::camera::{Camera, StreamKind};
use crate::ingest::health::StateBoard;
use crate::intake::EventLink;
use crate::ops::{ArcStatus, CameraInfo, Components, SiteView};
use crate::support::LOG_REMINDER;
use crate::support::lock;

/// How long a decoded camera snapshot is served again.
const SNAPSHOT_FRESH: Duration = Duration::from_secs(10);

/// Every camera of this box, with what the service knows of it beside its pipeline.
pub(super) struct Cameras {
    pipelines: HashMap<String, Arc<Camera>>,
    /// Per camera, its ONVIF event subscription's state.
    links: Mutex<HashMap<String, EventLink>>,
    /// Cameras whose state message is to be published again.
    board: Arc<StateBoard>,
    /// Each camera's policy, for the zones drawn on snapshots.
    policies: HashMap<String, PolicyConfig>,
    evidence: EvidenceConfig,
    /// Recent camera snapshots: a console refreshed by several people decodes each camera once
    /// per `SNAPSHOT_FRESH`, not once per viewer.
    snapshots: Mutex<HashMap<String, (std::time::Instant, Vec<u8>)>>,
    /// What the idle view checks see of each camera's view.
    views: Arc<IdleViews>,
    /// Stops the finders of cameras whose streams are found through ONVIF.
    finders: CancellationToken,
}

impl Cameras {
    /// Starts every camera's pipeline, and the finders of streams to be found through ONVIF.
    pub(super) fn start(config: &Config) -> Self {
        let board = Arc::new(StateBoard::default());
        let buffer = Duration::from_secs_f64(config.clip.buffer_s);
        let finders = CancellationToken::new();
        let pipelines = config
            .cameras
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let camera = Camera::start(c, buffer, config.clip.ring_byte_cap(), board.clone());
                streams::start_finder(c, i, camera.addresses(), finders.clone());
                (c.id.clone(), Arc::new(camera))
            })
            .collect();
        let policies = config
            .cameras
            .iter()
            .map(|c| (c.id.clone(), config.camera_policy(c)))
            .collect();
        Self {
            pipelines,
            links: Mutex::new(HashMap::new()),
            board,
            policies,
            evidence: config.evidence.clone(),
            snapshots: Mutex::new(HashMap::new()),
            views: Arc::new(IdleViews::default()),
            finders,
        }
    }

    pub(super) fn get(&self, camera: &str) -> Option<&Arc<Camera>> {
        self.pipelines.get(camera)
    }

    pub(super) fn idle_views(&self) -> Arc<IdleViews> {
        self.views.clone()
    }

    /// A check of `camera`'s view; its state message goes again when what it sees changed.
    pub(super) fn view_checked(&self, camera: &str, stats: ViewStats) {
        if self.views.check(camera, stats) {
            match self.views.lost(camera) {
                Some(lost) => {
                    tracing::warn!(camera = %camera, reason = %lost.reason, "camera view lost while idle (tamper)");
                }
                None => tracing::info!(camera = %camera, "camera view fine"),
            }
            self.board.mark(camera);
        }
    }

    pub(super) fn contains(&self, camera: &str) -> bool {
        self.pipelines.contains_key(camera)
    }

    pub(super) fn len(&self) -> usize {
        self.pipelines.len()
    }

    fn online(&self) -> usize {
        self.pipelines
            .values()
            .filter(|c| c.stream_online(StreamKind::Main))
            .count()
    }

    /// A camera's event subscription changed state: kept for its state message.
    pub(super) fn set_event_link(&self, camera: &str, link: EventLink) {
        lock(&self.links).insert(camera.to_owned(), link);
        self.board.mark(camera);
    }

    /// Retained state may have been lost with a broker restart; it is sent again on every connect.
    pub(super) fn republish_states(&self) {
        for camera in self.pipelines.keys() {
            self.board.mark(camera);
        }
    }

    fn info(&self) -> Vec<CameraInfo> {
        let links = lock(&self.links).clone();
        let mut cameras: Vec<CameraInfo> = self
            .pipelines
            .values()
            .map(|c| CameraInfo {
                health: c.health(),
                onvif: links.get(c.id()).cloned(),
                zones: self
                    .policies
                    .get(c.id())
                    .map_or_else(Vec::new, |p| p.zones.iter().map(|z| z.name.clone()).collect()),
            })
            .collect();
        cameras.sort_by(|a, b| a.health.camera.cmp(&b.health.camera));
        cameras
    }

    /// Stops every camera pipeline; those that do not stop by the bound are left to the process's end.
    pub(super) async fn stop(&self, bound: Instant) {
        self.finders.cancel();
        for camera in self.pipelines.values() {
            camera.stop();
        }
        while Instant::now() < bound && !self.pipelines.values().all(|c| c.stopped()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let running = self.pipelines.values().filter(|c| !c.stopped()).count();
        if running > 0 {
            tracing::warn!(
                running,
                "camera pipelines still stopping at the shutdown bound; left behind"
            );
        }
    }
}

/// Publishes the state message of each camera marked on the board: its newest state, read when it
/// is published. While the broker is away nothing is queued; a reconnect marks every camera.
pub(super) async fn publish_camera_states(shared: Arc<Shared>) {
    let cameras = &shared.cameras;
    loop {
        cameras.board.changed().await;
        if !shared.mqtt_connected.load(Ordering::SeqCst) {
            continue;
        }
        for camera in cameras.board.take() {
            let Some(health) = cameras.get(&camera).map(|c| c.health()) else {
                continue;
            };
            let link = lock(&cameras.links).get(&camera).cloned();
            let state = CameraState {
                health: &health,
                onvif: link.as_ref(),
                view: cameras.views.state(&camera),
            };
            if let Err(e) = shared.publisher.camera_state(&state) {
                tracing::debug!(camera = %camera, error = %e, "camera state not published; kept for the reconnect");
                cameras.board.set_dirty(&camera);
            }
        }
    }
}

/// Every few minutes, one line naming the cameras still offline (instead of a line per camera per
/// attempt): a site that lost a switch stays readable.
pub(super) async fn remind_offline_cameras(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(LOG_REMINDER).await;
        let cameras = &shared.cameras;
        let mut offline: Vec<&str> = cameras
            .pipelines
            .values()
            .filter(|c| c.offline().is_some())
            .map(|c| c.id())
            .collect();
        if offline.is_empty() {
            continue;
        }
        offline.sort_unstable();
        tracing::warn!(
            count = offline.len(),
            of = cameras.len(),
            cameras = %name_some(&offline, 10),
            "cameras still offline"
        );
    }
}

/// `a, b, c (+7 more)`: the first `max` names and how many more.
fn name_some(names: &[&str], max: usize) -> String {
    let shown = names.iter().take(max).copied().collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(max) {
        0 => shown,
        more => format!("{shown} (+{more} more)"),
    }
}

/// The running service as ops sees it.
pub(super) struct ServiceSite(pub(super) Arc<Shared>);

impl SiteView for ServiceSite {
    fn cameras(&self) -> Vec<CameraInfo> {
        self.0.cameras.info()
    }

    fn snapshot(&self, camera: &str) -> Result<Vec<u8>, String> {
        let cameras = &self.0.cameras;
        if let Some((made, jpeg)) = lock(&cameras.snapshots).get(camera)
            && made.elapsed() < SNAPSHOT_FRESH
        {
            return Ok(jpeg.clone());
        }
        let jpeg = self.decode_snapshot(camera)?;
        lock(&cameras.snapshots).insert(camera.to_owned(), (std::time::Instant::now(), jpeg.clone()));
        Ok(jpeg)
    }

    fn components(&self) -> Components {
        let shared = &self.0;
        Components {
            mqtt_connected: shared.mqtt_connected.load(Ordering::SeqCst),
            model: shared.verifier.model_name().to_owned(),
            cameras: shared.cameras.len(),
            cameras_online: shared.cameras.online(),
            queue_depth: shared.queue - shared.in_flight.available_permits(),
            outbox_pending: shared.outbox.pending(),
            outbox_parked: shared.outbox.parked(),
            outbox_oldest_s: shared
                .store
                .oldest_undelivered()
                .ok()
                .flatten()
                .map(|t| (Utc::now() - t).as_seconds_f64().max(0.0)),
            inference_totals: shared.verifier.detector().inference_totals(),
            arc: shared.arc.as_ref().map(|arc| {
                let link = arc.state();
                ArcStatus {
                    up: link.up,
                    target: link.target,
                    last_ack: link.last_ack.map(crate::analysis::verdict::rfc3339),
                    error: link.error,
                    pending: arc.pending(),
                }
            }),
        }
    }
}

impl ServiceSite {
    /// The newest keyframe of `camera`'s main stream, decoded, outlined and encoded now.
    fn decode_snapshot(&self, camera: &str) -> Result<Vec<u8>, String> {
        let cameras = &self.0.cameras;
        let cam = cameras
            .get(camera)
            .ok_or_else(|| format!("unknown camera {camera:?}"))?;
        let frame = video::newest_keyframe(cam, StreamKind::Main, self.0.verifier.decoders())?;
        let scaled = evidence::fit(frame.image, cameras.evidence.max_size).map_err(|e| e.to_string())?;
        let policy = cameras.policies.get(camera);
        let notes = Annotations {
            detections: &[],
            regions: &[],
            zones: policy.map_or(&[], |p| p.zones.as_slice()),
            masks: policy.map_or(&[], |p| p.masks.as_slice()),
            header: format!("{camera}  {}", frame.time.format("%Y-%m-%d %H:%M:%S UTC")),
            footer: "snapshot: zones and masks outlined".into(),
        };
        evidence::render(&scaled, &notes, &cameras.evidence).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_of_names_is_cut_with_a_count() {
        assert_eq!(name_some(&["a", "b"], 10), "a, b");
        let many: Vec<String> = (0..100).map(|i| format!("cam{i:03}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(name_some(&refs, 3), "cam000, cam001, cam002 (+97 more)");
    }
}
