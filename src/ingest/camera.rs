//! A camera: the thread that keeps its RTSP stream flowing into the ring buffer, restarting it on
//! errors and stalls, and the handle the service asks for clips and health.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use gstreamer as gst;
use gstreamer::prelude::*;
use tokio::sync::mpsc;

use super::health::{CameraHealth, LinkState, RateMeter};
use super::pipeline::{self, describe_bus_message};
use super::ring::{AccessUnit, EncodedSlice, Ring};
use crate::config::{CameraConfig, redact_url};

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("camera {camera} is offline since {since}: {reason}")]
    Offline {
        camera: String,
        since: DateTime<Utc>,
        reason: String,
    },
    #[error("camera {camera} has no video for {from} .. {to} (buffered: {buffered})")]
    NotBuffered {
        camera: String,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        buffered: String,
    },
}

struct Shared {
    ring: Mutex<Ring>,
    health: Mutex<CameraHealth>,
    stop: AtomicBool,
}

/// A running camera ingest. Dropping it stops the pipeline.
pub struct Camera {
    id: String,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Camera {
    /// Starts ingesting `config`'s stream; health changes are sent on `health_tx`.
    pub fn start(config: &CameraConfig, buffer: Duration, health_tx: mpsc::UnboundedSender<CameraHealth>) -> Self {
        let health = CameraHealth {
            camera: config.id.clone(),
            state: LinkState::Offline,
            since: Utc::now(),
            fps: None,
            resolution: None,
            codec: None,
            url: redact_url(&config.url),
            last_error: Some("connecting".into()),
        };
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring::new(buffer)),
            health: Mutex::new(health),
            stop: AtomicBool::new(false),
        });
        let worker = Ingest {
            config: config.clone(),
            shared: shared.clone(),
            health_tx,
        };
        let thread = std::thread::Builder::new()
            .name(format!("camera-{}", config.id))
            .spawn(move || worker.supervise())
            .ok();
        Self {
            id: config.id.clone(),
            shared,
            thread,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn health(&self) -> CameraHealth {
        lock(&self.shared.health).clone()
    }

    /// Waits until the buffer covers `to` (or `give_up` passes), then returns the slice `[from, to]`.
    /// Returns as soon as the camera is known to be offline.
    pub async fn clip(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        give_up: tokio::time::Instant,
    ) -> Result<EncodedSlice, CameraError> {
        loop {
            let health = self.health();
            if health.state == LinkState::Offline {
                return Err(CameraError::Offline {
                    camera: self.id.clone(),
                    since: health.since,
                    reason: health.last_error.unwrap_or_else(|| "no video".into()),
                });
            }
            let covered = lock(&self.shared.ring).newest().is_some_and(|n| n >= to);
            if covered || tokio::time::Instant::now() >= give_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ring = lock(&self.shared.ring);
        ring.slice(from, to).ok_or_else(|| CameraError::NotBuffered {
            camera: self.id.clone(),
            from,
            to,
            buffered: match (ring.oldest(), ring.newest()) {
                (Some(a), Some(b)) => format!("{a} .. {b}"),
                _ => "nothing".into(),
            },
        })
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread that keeps one camera's pipeline running, restarting it on errors and stalls.
struct Ingest {
    config: CameraConfig,
    shared: Arc<Shared>,
    health_tx: mpsc::UnboundedSender<CameraHealth>,
}

enum SessionEnd {
    Stopped,
    Failed(String),
}

impl Ingest {
    fn supervise(self) {
        let mut backoff = RETRY_FIRST;
        while !self.stopping() {
            let started = std::time::Instant::now();
            let end = match self.build_pipeline() {
                Ok(pipeline) => {
                    let end = self.watch(&pipeline);
                    let _ = pipeline.set_state(gst::State::Null);
                    end
                }
                Err(e) => SessionEnd::Failed(e.to_string()),
            };
            match end {
                SessionEnd::Stopped => break,
                SessionEnd::Failed(reason) => {
                    tracing::warn!(camera = %self.config.id, url = %redact_url(&self.config.url), %reason, "camera stream lost; reconnecting");
                    self.set_offline(&reason);
                }
            }
            if started.elapsed() > self.stall_timeout() * 3 {
                backoff = RETRY_FIRST; // it had been up for a while: retry quickly
            }
            self.sleep(backoff);
            backoff = (backoff * 2).min(RETRY_MAX);
        }
        self.set_offline("stopped");
    }

    /// How long the camera may go without delivering video before its pipeline is restarted.
    fn stall_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.config.stall_timeout_s).unwrap_or(Duration::from_secs(10))
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    fn sleep(&self, total: Duration) {
        let deadline = std::time::Instant::now() + total;
        while !self.stopping() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn build_pipeline(&self) -> Result<gst::Pipeline, CameraError> {
        let shared = self.shared.clone();
        let health_tx = self.health_tx.clone();
        let mut rate = RateMeter::default();
        pipeline::rtsp(&self.config, move |sample| {
            let Some(buffer) = sample.buffer_owned() else {
                return;
            };
            let now = Utc::now();
            // A unit without a timestamp continues the picture before it: a later slice of
            // a multi-slice keyframe, split off because the camera repeats SPS/PPS before
            // each slice. Kept apart, a decoder would see two broken half pictures.
            if buffer.pts().is_none() {
                if let Ok(map) = buffer.map_readable() {
                    lock(&shared.ring).extend_last(map.as_slice());
                }
                return;
            }
            let unit = AccessUnit {
                keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
                buffer,
                wall: now,
            };
            lock(&shared.ring).push(unit, sample.caps());
            let fps = rate.tick(now);
            update_online(&shared, &health_tx, sample.caps(), fps, now);
        })
    }

    /// Runs until the pipeline fails, stalls, or the camera is stopped.
    fn watch(&self, pipeline: &gst::Pipeline) -> SessionEnd {
        let Some(bus) = pipeline.bus() else {
            return SessionEnd::Failed("pipeline has no bus".into());
        };
        let mut last_seen = (None, std::time::Instant::now());
        loop {
            if self.stopping() {
                return SessionEnd::Stopped;
            }
            if let Some(msg) = bus.timed_pop_filtered(
                gst::ClockTime::from_mseconds(200),
                &[gst::MessageType::Error, gst::MessageType::Eos],
            ) {
                return SessionEnd::Failed(describe_bus_message(&msg));
            }
            // A newest unit that does not change means a stalled camera.
            let progress = lock(&self.shared.ring).newest();
            if progress != last_seen.0 {
                last_seen = (progress, std::time::Instant::now());
            } else if last_seen.1.elapsed() > self.stall_timeout() {
                return SessionEnd::Failed(format!("no video for {} s", self.config.stall_timeout_s));
            }
        }
    }

    fn set_offline(&self, reason: &str) {
        lock(&self.shared.ring).clear();
        let mut health = lock(&self.shared.health);
        let changed = health.state != LinkState::Offline || health.last_error.as_deref() != Some(reason);
        if health.state != LinkState::Offline {
            health.since = Utc::now();
        }
        health.state = LinkState::Offline;
        health.fps = None;
        health.last_error = Some(reason.to_owned());
        if changed {
            let _ = self.health_tx.send(health.clone());
        }
    }
}

fn update_online(
    shared: &Shared,
    health_tx: &mpsc::UnboundedSender<CameraHealth>,
    caps: Option<&gst::CapsRef>,
    fps: Option<f64>,
    now: DateTime<Utc>,
) {
    let mut health = lock(&shared.health);
    let mut changed = false;
    if health.state != LinkState::Online {
        health.state = LinkState::Online;
        health.since = now;
        health.last_error = None;
        changed = true;
    }
    if let Some(s) = caps.and_then(|c| c.structure(0)) {
        let resolution = match (s.get::<i32>("width"), s.get::<i32>("height")) {
            (Ok(w), Ok(h)) => Some(format!("{w}x{h}")),
            _ => None,
        };
        let codec = Some(s.name().trim_start_matches("video/x-").to_owned());
        if resolution != health.resolution || codec != health.codec {
            health.resolution = resolution;
            health.codec = codec;
            changed = true;
        }
    }
    // fps is reported when it first becomes known; it is not worth a message on every wobble.
    if health.fps.is_none() && fps.is_some() {
        changed = true;
    }
    if fps.is_some() {
        health.fps = fps;
    }
    if changed {
        let _ = health_tx.send(health.clone());
    }
}
