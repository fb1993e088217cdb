//! Camera ingest: each camera's RTSP stream is kept as encoded access units in a ring buffer.
//!
//! Nothing is decoded here. Keeping packets costs almost no CPU, so one box can hold many cameras
//! and spend CPU only on the alarms (see DESIGN.md, "Ingest keeps encoded video").

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{CameraConfig, RtspTransport, redact_url};

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

/// One complete encoded frame as it came off the wire.
#[derive(Clone)]
pub struct AccessUnit {
    pub buffer: gst::Buffer,
    /// When it arrived, which is how alarm times are matched to video.
    pub wall: DateTime<Utc>,
    pub keyframe: bool,
}

/// A run of access units that starts at a keyframe, with the caps needed to decode it.
pub struct EncodedSlice {
    pub caps: gst::Caps,
    pub units: Vec<AccessUnit>,
}

/// The encoded ring buffer: the last `window` of a camera's stream, always starting at a keyframe.
pub struct Ring {
    units: VecDeque<AccessUnit>,
    caps: Option<gst::Caps>,
    window: TimeDelta,
}

impl Ring {
    pub fn new(window: Duration) -> Self {
        Self {
            units: VecDeque::new(),
            caps: None,
            window: TimeDelta::from_std(window).unwrap_or(TimeDelta::seconds(10)),
        }
    }

    pub fn push(&mut self, unit: AccessUnit, caps: Option<&gst::CapsRef>) {
        if let Some(caps) = caps
            && self.caps.as_deref() != Some(caps)
        {
            // New stream parameters: old units cannot be decoded with the new caps.
            self.units.clear();
            self.caps = Some(caps.to_owned());
        }
        if self.units.is_empty() && !unit.keyframe {
            return; // a slice must start at a keyframe
        }
        let prune = unit.keyframe;
        let newest = unit.wall;
        self.units.push_back(unit);
        if prune {
            self.prune(newest);
        }
    }

    /// Drops whole GOPs that end before the window, keeping the keyframe that precedes it.
    fn prune(&mut self, newest: DateTime<Utc>) {
        let cutoff = newest - self.window;
        let keep_from = self
            .units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.keyframe && u.wall <= cutoff)
            .map(|(i, _)| i)
            .next_back();
        if let Some(i) = keep_from {
            self.units.drain(..i);
        }
    }

    /// Adds `continuation`, the rest of the last unit's picture (a later slice split off by
    /// repeated parameter sets), to that unit, from its first slice NAL on: one picture, one unit.
    pub fn extend_last(&mut self, continuation: &[u8]) {
        let h265 = self.caps.as_ref().and_then(|c| c.structure(0)).is_some_and(|s| s.name() == "video/x-h265");
        let Some(start) = first_slice_nal(continuation, h265) else {
            return;
        };
        let Some(last) = self.units.back_mut() else {
            return; // nothing to continue: its start was never stored
        };
        let mut merged = last.buffer.copy();
        merged.make_mut().append_memory(gst::Memory::from_mut_slice(continuation[start..].to_vec()));
        last.buffer = merged;
    }

    pub fn clear(&mut self) {
        self.units.clear();
    }

    pub fn newest(&self) -> Option<DateTime<Utc>> {
        self.units.back().map(|u| u.wall)
    }

    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        self.units.front().map(|u| u.wall)
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The units covering `[from, to]`, starting at the last keyframe at or before `from`
    /// (or the oldest buffered keyframe when `from` is older than the buffer).
    pub fn slice(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<EncodedSlice> {
        let caps = self.caps.clone()?;
        let start = self
            .units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.keyframe && u.wall <= from)
            .map(|(i, _)| i)
            .next_back()
            .unwrap_or(0);
        let units: Vec<AccessUnit> = self.units.iter().skip(start).take_while(|u| u.wall <= to).cloned().collect();
        if units.is_empty() || units.last().is_some_and(|u| u.wall < from) {
            return None;
        }
        Some(EncodedSlice { caps, units })
    }
}

/// What the monitoring centre sees on `{prefix}/cameras/{camera}/state`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CameraHealth {
    pub camera: String,
    pub state: LinkState,
    pub since: DateTime<Utc>,
    pub fps: Option<f64>,
    pub resolution: Option<String>,
    pub codec: Option<String>,
    pub url: String,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Online,
    Offline,
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
        let gst_err = |e: &dyn std::fmt::Display| CameraError::Gst(e.to_string());
        let pipeline = gst::Pipeline::with_name(&format!("ingest-{}", self.config.id));
        let protocols = match self.config.transport {
            RtspTransport::Tcp => "tcp",
            RtspTransport::Udp => "udp",
        };
        let src = gst::ElementFactory::make("rtspsrc")
            .property("location", &self.config.url)
            .property("latency", 200u32)
            .property("timeout", 5_000_000u64)
            .property("tcp-timeout", 5_000_000u64)
            .property_from_str("protocols", protocols)
            .build()
            .map_err(|e| gst_err(&e))?;
        let sink = gst_app::AppSink::builder().sync(false).max_buffers(64).drop(true).build();
        pipeline.add_many([&src, sink.upcast_ref()]).map_err(|e| gst_err(&e))?;

        let pipeline_weak = pipeline.downgrade();
        let sink_weak = sink.downgrade();
        let camera = self.config.id.clone();
        src.connect_pad_added(move |_, pad| {
            let (Some(pipeline), Some(sink)) = (pipeline_weak.upgrade(), sink_weak.upgrade()) else {
                return;
            };
            if let Err(e) = link_depayloader(&pipeline, pad, &sink) {
                tracing::warn!(%camera, error = %e, "cannot use this RTSP stream");
            }
        });

        let shared = self.shared.clone();
        let health_tx = self.health_tx.clone();
        let mut rate = RateMeter::default();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buffer) = sample.buffer_owned() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let now = Utc::now();
                    // A unit without a timestamp continues the picture before it: a later slice of
                    // a multi-slice keyframe, split off because the camera repeats SPS/PPS before
                    // each slice. Kept apart, a decoder would see two broken half pictures.
                    if buffer.pts().is_none() {
                        if let Ok(map) = buffer.map_readable() {
                            lock(&shared.ring).extend_last(map.as_slice());
                        }
                        return Ok(gst::FlowSuccess::Ok);
                    }
                    let unit = AccessUnit {
                        keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
                        buffer,
                        wall: now,
                    };
                    lock(&shared.ring).push(unit, sample.caps());
                    let fps = rate.tick(now);
                    update_online(&shared, &health_tx, sample.caps(), fps, now);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline.set_state(gst::State::Playing).map_err(|e| gst_err(&e))?;
        Ok(pipeline)
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

/// Frames per second over the last few seconds of arrivals.
#[derive(Default)]
struct RateMeter {
    window_start: Option<DateTime<Utc>>,
    count: u32,
    last: Option<f64>,
}

impl RateMeter {
    fn tick(&mut self, now: DateTime<Utc>) -> Option<f64> {
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

/// Links a new rtspsrc pad through the depayloader and parser for its codec, into the appsink.
fn link_depayloader(pipeline: &gst::Pipeline, pad: &gst::Pad, sink: &gst_app::AppSink) -> Result<(), CameraError> {
    let caps = pad.current_caps().ok_or_else(|| CameraError::Gst("RTSP pad without caps".into()))?;
    let s = caps.structure(0).ok_or_else(|| CameraError::Gst("RTSP pad with empty caps".into()))?;
    if s.get::<&str>("media").ok() != Some("video") {
        return Ok(()); // audio and metadata streams are not needed
    }
    let encoding = s.get::<&str>("encoding-name").unwrap_or("").to_ascii_uppercase();
    let (depay, parse, caps) = match encoding.as_str() {
        "H264" => ("rtph264depay", "h264parse", "video/x-h264,stream-format=byte-stream,alignment=au"),
        "H265" => ("rtph265depay", "h265parse", "video/x-h265,stream-format=byte-stream,alignment=au"),
        other => return Err(CameraError::Gst(format!("unsupported video encoding {other:?}; expected H264 or H265"))),
    };
    if sink.static_pad("sink").is_some_and(|p| p.is_linked()) {
        return Ok(()); // only the first video stream is kept
    }
    let make = |name: &str| gst::ElementFactory::make(name).build().map_err(|e| CameraError::Gst(e.to_string()));
    let depay = make(depay)?;
    let parse = make(parse)?;
    // Without config-interval=-1 stored keyframes may lack SPS/PPS and could not be decoded later.
    parse.set_property("config-interval", -1i32);
    let caps: gst::Caps = caps.parse().map_err(|e: glib::BoolError| CameraError::Gst(e.to_string()))?;
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", caps)
        .build()
        .map_err(|e| CameraError::Gst(e.to_string()))?;
    pipeline.add_many([&depay, &parse, &filter]).map_err(|e| CameraError::Gst(e.to_string()))?;
    gst::Element::link_many([&depay, &parse, &filter, sink.upcast_ref()]).map_err(|e| CameraError::Gst(e.to_string()))?;
    for e in [&depay, &parse, &filter] {
        e.sync_state_with_parent().map_err(|e| CameraError::Gst(e.to_string()))?;
    }
    let sinkpad = depay.static_pad("sink").ok_or_else(|| CameraError::Gst("depayloader without sink pad".into()))?;
    pad.link(&sinkpad).map_err(|e| CameraError::Gst(format!("cannot link RTSP pad: {e:?}")))?;
    Ok(())
}

/// Offset of the start code of the first coded-slice NAL in an Annex B byte stream (H.264 types
/// 1-5, H.265 types 0-31): what comes before it (AUD, SPS, PPS, SEI) describes the picture and is
/// already in the unit being continued.
fn first_slice_nal(data: &[u8], h265: bool) -> Option<usize> {
    let mut i = 0;
    while i + 3 < data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            let header = data[i + 3];
            let is_slice = if h265 { (header >> 1) & 0x3f <= 31 } else { (1..=5).contains(&(header & 0x1f)) };
            if is_slice {
                // Keep a four-byte start code whole.
                return Some(if i > 0 && data[i - 1] == 0 { i - 1 } else { i });
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    None
}

/// One line from an error or end-of-stream message, with the camera URL's password hidden.
pub fn describe_bus_message(msg: &gst::Message) -> String {
    match msg.view() {
        gst::MessageView::Error(e) => {
            let text = e.error().to_string();
            match e.debug() {
                Some(d) => redact_in_text(&format!("{text} ({d})")),
                None => redact_in_text(&text),
            }
        }
        gst::MessageView::Eos(_) => "stream ended".into(),
        _ => format!("{:?}", msg.type_()),
    }
}

/// GStreamer's messages may quote the camera URL, password included.
fn redact_in_text(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|word| {
            if word.contains("://") && word.contains('@') {
                let trimmed = word.trim_end();
                format!("{}{}", redact_url(trimmed), &word[trimmed.len()..])
            } else {
                word.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(t: i64, keyframe: bool) -> AccessUnit {
        AccessUnit {
            buffer: gst::Buffer::new(),
            wall: DateTime::from_timestamp(t, 0).unwrap_or_default(),
            keyframe,
        }
    }

    fn ts(t: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(t, 0).unwrap_or_default()
    }

    fn ring_with(window_s: u64, seq: &[(i64, bool)]) -> Ring {
        let _ = gst::init();
        let caps = gst::Caps::builder("video/x-h264").build();
        let mut ring = Ring::new(Duration::from_secs(window_s));
        for &(t, k) in seq {
            ring.push(unit(t, k), Some(caps.as_ref()));
        }
        ring
    }

    #[test]
    fn ring_starts_at_keyframe_and_keeps_window() {
        // Keyframe every 3 s, one unit a second.
        let seq: Vec<(i64, bool)> = (0..30).map(|t| (t, t % 3 == 0)).collect();
        let ring = ring_with(10, &seq);
        let oldest = ring.oldest().unwrap_or_default();
        assert!(oldest <= ts(29 - 10), "window not covered: oldest {oldest}");
        // Pruning happens when a keyframe arrives, so up to two GOPs beyond the window may remain.
        assert!(oldest > ts(29 - 10 - 2 * 3), "kept more than two GOPs beyond the window: {oldest}");
        assert!(ring.units.front().is_some_and(|u| u.keyframe));
    }

    #[test]
    fn ring_ignores_units_before_first_keyframe() {
        let ring = ring_with(10, &[(0, false), (1, false), (2, true), (3, false)]);
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.oldest(), Some(ts(2)));
    }

    #[test]
    fn slice_starts_at_keyframe_before_from() {
        let seq: Vec<(i64, bool)> = (0..20).map(|t| (t, t % 4 == 0)).collect();
        let ring = ring_with(30, &seq);
        let slice = ring.slice(ts(10), ts(14)).expect("covered");
        assert_eq!(slice.units.first().map(|u| u.wall), Some(ts(8)));
        assert!(slice.units[0].keyframe);
        assert_eq!(slice.units.last().map(|u| u.wall), Some(ts(14)));
    }

    #[test]
    fn slice_outside_buffer_is_none() {
        let seq: Vec<(i64, bool)> = (0..10).map(|t| (t, t % 2 == 0)).collect();
        let ring = ring_with(30, &seq);
        assert!(ring.slice(ts(20), ts(25)).is_none());
    }

    #[test]
    fn a_split_off_slice_joins_its_picture_without_the_repeated_headers() {
        let mut ring = ring_with(10, &[(0, true)]);
        // AUD, SPS, PPS, then the second IDR slice.
        let continuation = [0, 0, 0, 1, 9, 0xf0, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 0xaa, 0xbb];
        ring.extend_last(&continuation);
        let last = ring.units.back().map(|u| u.buffer.map_readable().map(|m| m.to_vec()).unwrap_or_default()).unwrap_or_default();
        assert_eq!(last, vec![0, 0, 0, 1, 0x65, 0xaa, 0xbb]);
        assert_eq!(ring.len(), 1);
    }

    #[test]
    fn passwords_in_gstreamer_text_are_hidden() {
        let s = redact_in_text("Could not open resource rtsp://u:hunter2@cam/s for reading");
        assert!(!s.contains("hunter2") && s.contains("cam/s"), "{s}");
    }
}
