//! Operations: the service's HTTP server, the API over the alarm records and the cameras, the
//! metrics, the health check and the console.
//!
//! What ops needs of the running service comes through [`Ops`]: the store, the one alarm sink (for
//! the console's test alarms), the metrics, and a [`SiteView`] onto the cameras and components.

use std::sync::Arc;

use serde::Serialize;

use crate::ingest::health::CameraHealth;
use crate::intake::{AlarmSink, EventLink};
use crate::store::Store;

pub mod api;
pub mod console;
pub mod guard;
pub mod http;
pub mod metrics;

/// Everything the HTTP routes of ops work with.
#[derive(Clone)]
pub struct Ops {
    pub site_name: String,
    pub store: Arc<Store>,
    pub sink: Arc<dyn AlarmSink>,
    pub metrics: Arc<metrics::Metrics>,
    pub site: Arc<dyn SiteView>,
}

/// The running service as ops sees it.
pub trait SiteView: Send + Sync + 'static {
    fn cameras(&self) -> Vec<CameraInfo>;
    /// The newest keyframe of a camera's main stream, decoded, with its zones and masks drawn, as
    /// JPEG. Blocking: decodes video.
    fn snapshot(&self, camera: &str) -> Result<Vec<u8>, String>;
    fn components(&self) -> Components;
}

/// A camera as the API and the console show it: the state message's content.
#[derive(Debug, Clone, Serialize)]
pub struct CameraInfo {
    #[serde(flatten)]
    pub health: CameraHealth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onvif: Option<EventLink>,
    /// Zones of its policy, by name (drawn on the snapshot).
    pub zones: Vec<String>,
}

/// The state of each part of the service, for `/healthz`, `/metrics` and the console.
#[derive(Debug, Clone, Serialize)]
pub struct Components {
    pub mqtt_connected: bool,
    pub model: String,
    pub cameras: usize,
    pub cameras_online: usize,
    pub queue_depth: usize,
    pub outbox_pending: u64,
    pub outbox_oldest_s: Option<f64>,
    /// Messages the broker refused, set aside until an operator retries them.
    pub outbox_parked: u64,
    /// Detector runs since start and their total seconds.
    #[serde(skip)]
    pub inference_totals: (u64, f64),
    /// The DC-09 link to the alarm receiving centre, when `[dc09.arc]` is set.
    pub arc: Option<ArcStatus>,
}

/// The DC-09 link to the alarm receiving centre as ops shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArcStatus {
    /// The last attempt was answered (ACK, NAK or DUH).
    pub up: bool,
    /// `host:port` of the receiver in use.
    pub target: String,
    pub last_ack: Option<String>,
    pub error: Option<String>,
    /// Verdicts stored for the ARC and not yet acknowledged by it.
    pub pending: u64,
}

impl Components {
    /// Why the service cannot do its job now, if it cannot.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.mqtt_connected {
            problems.push("not connected to the MQTT broker: alarms and verdicts cannot flow".to_owned());
        }
        if self.cameras > 0 && self.cameras_online == 0 {
            problems.push("no camera is online: every alarm would be unverifiable".to_owned());
        }
        if let Some(arc) = self.arc.as_ref().filter(|a| !a.up && a.pending > 0) {
            problems.push(format!(
                "the alarm receiving centre ({}) is unreachable: {} verdicts wait for it{}",
                arc.target,
                arc.pending,
                arc.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
        problems
    }
}
