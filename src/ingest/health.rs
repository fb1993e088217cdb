//! A camera's health as the monitoring centre sees it on `{prefix}/cameras/{camera}/state`, and the
//! frame-rate meter behind its `fps`.

use chrono::{DateTime, Utc};
use serde::Serialize;

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
    pub url: String,
    pub last_error: Option<String>,
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
            last_error: Some("connecting".into()),
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
