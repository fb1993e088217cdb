//! A camera's health as the monitoring centre sees it on `{prefix}/cameras/{camera}/state`, the
//! board of cameras whose state changed, and the frame-rate meter behind `fps`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;

use crate::support::lock;

/// Which cameras' state changed since it was last published. A set, never a queue: however long
/// the broker is away and however often cameras flap, it holds at most one entry per camera, and
/// the publisher reads each camera's newest state when it gets to it.
#[derive(Default)]
pub struct StateBoard {
    dirty: Mutex<BTreeSet<String>>,
    notify: Notify,
}

impl StateBoard {
    /// `camera`'s state changed; the publisher is woken.
    pub fn mark(&self, camera: &str) {
        self.set_dirty(camera);
        self.notify.notify_one();
    }

    /// `camera` still needs publishing, at the next wake-up (a reconnect marks every camera).
    pub fn set_dirty(&self, camera: &str) {
        lock(&self.dirty).insert(camera.to_owned());
    }

    /// The cameras marked since the last call, in order of id.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.dirty)).into_iter().collect()
    }

    /// Waits until a camera is marked (at once when one was marked since the last wait).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

/// What the monitoring centre sees on `{prefix}/cameras/{camera}/state`: the main stream's link,
/// and the detect stream's when the camera has one.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CameraHealth {
    pub camera: String,
    #[serde(flatten)]
    pub main: StreamHealth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect: Option<StreamHealth>,
}

/// One stream's link: whether video flows, since when, what it is, and why not.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamHealth {
    pub state: LinkState,
    pub since: DateTime<Utc>,
    pub fps: Option<f64>,
    pub resolution: Option<String>,
    pub codec: Option<String>,
    /// The stream's address, without its password.
    pub url: String,
    /// How the address was found, when it was not configured: `onvif profile "Main" 1920x1080 H264`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    pub last_error: Option<String>,
    /// The RTSP transport in use and why: `tcp`, `udp (tcp refused: 461)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Video flows but is not all kept: why (the ring over its byte cap, see `ingest::ring`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

impl StreamHealth {
    /// A stream not connected yet.
    pub fn connecting(url: String) -> Self {
        Self {
            state: LinkState::Offline,
            since: Utc::now(),
            fps: None,
            resolution: None,
            codec: None,
            url,
            found: None,
            last_error: Some("connecting".into()),
            transport: None,
            degraded: None,
        }
    }

    /// Width and height from `resolution`, once known.
    pub fn size(&self) -> Option<(u32, u32)> {
        let (w, h) = self.resolution.as_deref()?.split_once('x')?;
        Some((w.parse().ok()?, h.parse().ok()?))
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Online,
    Offline,
}

/// Frames per second over the last few seconds of arrivals.
#[derive(Default)]
pub struct RateMeter {
    window_start: Option<DateTime<Utc>>,
    count: u32,
    last: Option<f64>,
}

impl RateMeter {
    pub fn tick(&mut self, now: DateTime<Utc>) -> Option<f64> {
        let start = *self.window_start.get_or_insert(now);
        self.count += 1;
        let elapsed = (now - start).as_seconds_f64();
        if elapsed >= 2.0 {
            self.last = Some(((self.count - 1) as f64 / elapsed * 10.0).round() / 10.0);
            self.window_start = Some(now);
            self.count = 1;
        }
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_holds_one_entry_per_camera_however_often_it_changes() {
        let board = StateBoard::default();
        for _ in 0..1000 {
            board.mark("gate");
            board.mark("yard");
        }
        assert_eq!(board.take(), ["gate", "yard"]);
        assert!(board.take().is_empty());
        board.set_dirty("gate");
        assert_eq!(board.take(), ["gate"]);
    }
}
