//! A camera's health as the monitoring centre sees it on `{prefix}/cameras/{camera}/state`, the
//! board of cameras whose state changed, and the frame-rate meter behind `fps`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;

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
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(camera.to_owned());
    }

    /// The cameras marked since the last call, in order of id.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .collect()
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

/// How long a stream or connection may stay down before its log line is repeated as a reminder.
pub const LOG_REMINDER: std::time::Duration = std::time::Duration::from_secs(300);

/// Logging of an outage for people: the change of state once, a reminder at a low rate while it
/// lasts (with the number of failed attempts), and each attempt only at debug level.
#[derive(Debug, Default)]
pub struct OutageLog {
    down_since: Option<std::time::Instant>,
    last_reminder: Option<std::time::Instant>,
    attempts: u64,
}

/// What to log about a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum OutageNote {
    /// It just went down.
    Down,
    /// Still down; time for a reminder.
    StillDown { attempts: u64, down_for_s: u64 },
    /// Still down; nothing to say above debug level.
    Quiet,
}

impl OutageLog {
    pub fn failed(&mut self) -> OutageNote {
        let now = std::time::Instant::now();
        self.attempts += 1;
        let Some(since) = self.down_since else {
            self.down_since = Some(now);
            self.last_reminder = Some(now);
            return OutageNote::Down;
        };
        if self
            .last_reminder
            .is_some_and(|r| now.duration_since(r) >= LOG_REMINDER)
        {
            self.last_reminder = Some(now);
            return OutageNote::StillDown {
                attempts: self.attempts,
                down_for_s: now.duration_since(since).as_secs(),
            };
        }
        OutageNote::Quiet
    }

    /// It is back; returns how long it was down and after how many failed attempts, if it was.
    pub fn recovered(&mut self) -> Option<(u64, u64)> {
        let since = self.down_since.take()?;
        let attempts = std::mem::take(&mut self.attempts);
        self.last_reminder = None;
        Some((since.elapsed().as_secs(), attempts))
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

    #[test]
    fn an_outage_is_logged_once_then_quietly_until_it_recovers() {
        let mut log = OutageLog::default();
        assert_eq!(log.failed(), OutageNote::Down);
        for _ in 0..100 {
            assert_eq!(log.failed(), OutageNote::Quiet);
        }
        assert_eq!(log.recovered().map(|(_, attempts)| attempts), Some(101));
        assert_eq!(log.recovered(), None);
        assert_eq!(log.failed(), OutageNote::Down, "a new outage is news again");
    }
}
