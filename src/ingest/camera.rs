//! A camera: the threads that keep its RTSP streams (main, and detect when configured) flowing into
//! their ring buffers, restarting them on errors and stalls, and the handle analysis reads from.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::health::{CameraHealth, LinkState, RateMeter, StateBoard, StreamHealth};
use super::locate::{FAILURES_BEFORE_REDISCOVERY, Located, StreamAddresses};
use super::pipeline;
use super::ring::{AccessUnit, Cursor, EncodedSlice, ReadError, Ring};
use super::rtsp;
use super::transport::{FIRST_VIDEO_OVER_TCP, Lower, TransportChoice};
use crate::config::CameraConfig;
use crate::support::gst::{self as gst_support, GstError, describe_bus_message};
use crate::support::{Backoff, OutageLog, OutageNote, lock};
use chrono::{DateTime, Utc};
use gstreamer as gst;
use gstreamer::prelude::*;

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How often a stream without an address (discovery pending or failed) looks again.
const LOCATE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("GStreamer: {0}")]
    Gst(#[from] GstError),
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

/// Which of a camera's streams: the main one (evidence, clips) or the detect substream (analysis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Main,
    Detect,
}

impl StreamKind {
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Main => "main stream",
            StreamKind::Detect => "detect stream",
        }
    }
}

struct StreamShared {
    ring: Mutex<Ring>,
    health: Mutex<StreamHealth>,
}

struct Shared {
    id: String,
    main: StreamShared,
    detect: Option<StreamShared>,
    stop: AtomicBool,
    board: Arc<StateBoard>,
    addresses: Arc<StreamAddresses>,
}

impl Shared {
    fn stream(&self, kind: StreamKind) -> Option<&StreamShared> {
        match kind {
            StreamKind::Main => Some(&self.main),
            StreamKind::Detect => self.detect.as_ref(),
        }
    }

    fn health(&self) -> CameraHealth {
        CameraHealth {
            camera: self.id.clone(),
            main: lock(&self.main.health).clone(),
            detect: self.detect_stream().map(|d| lock(&d.health).clone()),
        }
    }

    /// The detect stream, when the camera has one with an address now.
    fn detect_stream(&self) -> Option<&StreamShared> {
        self.detect.as_ref().filter(|_| self.addresses.has(StreamKind::Detect))
    }

    fn report(&self) {
        self.board.mark(&self.id);
    }
}

/// A running camera ingest: its main stream and, when configured, its detect stream, each in a
/// ring of its own. Dropping it stops the pipelines.
pub struct Camera {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Camera {
    /// Starts ingesting `config`'s streams, each into a ring of `buffer` in at most
    /// `max_ring_bytes`; health changes are marked on `board`. Streams whose address is to be
    /// found wait for it (see [`Camera::addresses`]).
    pub fn start(config: &CameraConfig, buffer: Duration, max_ring_bytes: usize, board: Arc<StateBoard>) -> Self {
        let addresses = StreamAddresses::new(config, board.clone());
        let stream = |kind: StreamKind| StreamShared {
            ring: Mutex::new(Ring::new(buffer, max_ring_bytes)),
            health: Mutex::new(StreamHealth::connecting(
                addresses.current(kind).map(|l| l.shown()).unwrap_or_default(),
            )),
        };
        let shared = Arc::new(Shared {
            id: config.id.clone(),
            main: stream(StreamKind::Main),
            detect: addresses
                .may_have(StreamKind::Detect)
                .then(|| stream(StreamKind::Detect)),
            stop: AtomicBool::new(false),
            board,
            addresses,
        });
        let mut streams = vec![StreamKind::Main];
        if shared.detect.is_some() {
            streams.push(StreamKind::Detect);
        }
        let threads = streams
            .into_iter()
            .filter_map(|kind| {
                let worker = Ingest {
                    shared: shared.clone(),
                    kind,
                    located: None,
                    failures_in_a_row: 0,
                    transport: TransportChoice::new(config.transport),
                    stall_timeout_s: config.stall_timeout_s,
                };
                let suffix = if kind == StreamKind::Detect { "-detect" } else { "" };
                std::thread::Builder::new()
                    .name(format!("camera-{}{suffix}", config.id))
                    .spawn(move || worker.supervise())
                    .ok()
            })
            .collect();
        Self { shared, threads }
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }

    pub fn health(&self) -> CameraHealth {
        self.shared.health()
    }

    pub fn has_detect_stream(&self) -> bool {
        self.shared.detect_stream().is_some()
    }

    /// Where the camera's streams are; a finder hands in those it finds there.
    pub fn addresses(&self) -> Arc<StreamAddresses> {
        self.shared.addresses.clone()
    }

    /// Why the camera cannot be analysed now: its main stream is offline.
    pub fn offline(&self) -> Option<CameraError> {
        let health = lock(&self.shared.main.health).clone();
        (health.state == LinkState::Offline).then(|| CameraError::Offline {
            camera: self.shared.id.clone(),
            since: health.since,
            reason: health.last_error.unwrap_or_else(|| "no video".into()),
        })
    }

    /// The link of one stream; None for a detect stream the camera does not have.
    pub fn stream_health(&self, kind: StreamKind) -> Option<StreamHealth> {
        self.shared.stream(kind).map(|s| lock(&s.health).clone())
    }

    pub fn stream_online(&self, kind: StreamKind) -> bool {
        self.stream_health(kind).is_some_and(|h| h.state == LinkState::Online)
    }

    /// The caps to decode `kind`'s units with.
    pub fn caps(&self, kind: StreamKind) -> Option<gst::Caps> {
        self.shared.stream(kind).and_then(|s| lock(&s.ring).caps())
    }

    /// Arrival time of the newest unit of `kind`.
    pub fn newest(&self, kind: StreamKind) -> Option<DateTime<Utc>> {
        self.shared.stream(kind).and_then(|s| lock(&s.ring).newest())
    }

    /// Arrival time of the keyframe of `kind` nearest `time`.
    pub fn keyframe_near(&self, kind: StreamKind, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.shared.stream(kind).and_then(|s| lock(&s.ring).keyframe_near(time))
    }

    /// A reader's start on `kind`: just before the keyframe at or before `from`.
    pub fn cursor_before(&self, kind: StreamKind, from: DateTime<Utc>) -> Option<Cursor> {
        self.shared.stream(kind).and_then(|s| lock(&s.ring).cursor_before(from))
    }

    /// The units of `kind` after `cursor` (see [`Ring::read`]).
    pub fn read(&self, kind: StreamKind, cursor: &mut Cursor) -> Result<Vec<AccessUnit>, ReadError> {
        match self.shared.stream(kind) {
            Some(s) => lock(&s.ring).read(cursor),
            None => Err(ReadError::Broken),
        }
    }

    /// The buffered units of `kind` covering `[from, to]`, from the keyframe at or before `from`.
    pub fn slice(&self, kind: StreamKind, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<EncodedSlice, CameraError> {
        let stream = self.shared.stream(kind).unwrap_or(&self.shared.main);
        let ring = lock(&stream.ring);
        ring.slice(from, to).ok_or_else(|| CameraError::NotBuffered {
            camera: self.shared.id.clone(),
            from,
            to,
            buffered: match (ring.oldest(), ring.newest()) {
                (Some(a), Some(b)) => format!("{a} .. {b}"),
                _ => "nothing".into(),
            },
        })
    }
}

impl Camera {
    /// Asks the camera's threads to stop their pipelines; they finish on their own.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Whether every thread of the camera has finished.
    pub fn stopped(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }
}

/// Dropping a camera asks its threads to stop and does not wait: the service waits for all its
/// cameras together, within its shutdown bound (a wait here would add up camera by camera), and
/// a pipeline stuck connecting to a dead camera is left to the end of the process.
impl Drop for Camera {
    fn drop(&mut self) {
        self.stop();
        for t in self.threads.drain(..).filter(|t| t.is_finished()) {
            let _ = t.join();
        }
    }
}

/// The thread that keeps one of a camera's streams running, restarting it on errors and stalls.
struct Ingest {
    shared: Arc<Shared>,
    kind: StreamKind,
    /// The address of the last session; None before the first.
    located: Option<Located>,
    /// Sessions in a row that ended without video, for asking the camera again.
    failures_in_a_row: u32,
    transport: TransportChoice,
    stall_timeout_s: f64,
}

enum SessionEnd {
    Stopped,
    /// Why, and why TCP in particular, when `auto` should try UDP.
    Failed {
        reason: String,
        tcp_refusal: Option<String>,
    },
}

impl SessionEnd {
    fn failed(reason: impl Into<String>) -> Self {
        SessionEnd::Failed {
            reason: reason.into(),
            tcp_refusal: None,
        }
    }
}

impl Ingest {
    fn supervise(mut self) {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        let mut outage = OutageLog::default();
        while !self.stopping() {
            if !self.locate() {
                self.sleep(LOCATE_RETRY);
                continue;
            }
            let started = std::time::Instant::now();
            let lower = self.transport.next();
            self.show_transport();
            let end = match lower {
                Lower::Tcp => self.run_tcp_session(),
                Lower::Udp => self.run_udp_pipeline(),
            };
            match end {
                SessionEnd::Stopped => break,
                SessionEnd::Failed { reason, tcp_refusal } => {
                    if self.delivered_video() {
                        // It had come back (logged when its video arrived): this is a new outage.
                        outage.recovered();
                        self.transport.worked(lower);
                        self.failures_in_a_row = 0;
                    } else {
                        self.fall_back_if_refused(lower, tcp_refusal);
                        self.count_failure();
                    }
                    self.log_failure(&mut outage, &reason);
                    self.set_offline(&reason);
                }
            }
            if started.elapsed() > self.stall_timeout() * 3 {
                backoff.reset(); // it had been up for a while: retry quickly
            }
            if lower == Lower::Tcp && self.transport.next() == Lower::Udp {
                continue; // UDP is tried at once after TCP was refused
            }
            self.sleep(backoff.next_delay());
        }
        self.set_offline("stopped");
    }

    /// Takes the stream's address now; false (and the stream offline, saying why) when there is
    /// none yet. A new address is shown in the state and starts the failure count again.
    fn locate(&mut self) -> bool {
        match self.shared.addresses.current(self.kind) {
            Ok(located) => {
                if self.located.as_ref() != Some(&located) {
                    self.show_address(&located);
                    self.located = Some(located);
                    self.failures_in_a_row = 0;
                }
                true
            }
            Err(why) => {
                self.set_offline(&why);
                false
            }
        }
    }

    fn show_address(&self, located: &Located) {
        if let Some(found) = &located.found {
            tracing::info!(camera = %self.shared.id, stream = self.kind.name(), url = %located.shown(), found = %found, "stream address found");
        }
        let mut health = lock(&self.stream().health);
        health.url = located.shown();
        health.found = located.found.clone();
        drop(health);
        self.shared.report();
    }

    /// A session ended without video; after a few in a row the camera is asked for its streams
    /// again (when they were found there).
    fn count_failure(&mut self) {
        self.failures_in_a_row += 1;
        if self.failures_in_a_row >= FAILURES_BEFORE_REDISCOVERY {
            self.failures_in_a_row = 0;
            self.shared.addresses.keeps_failing(self.kind);
        }
    }

    fn url(&self) -> &str {
        self.located.as_ref().map_or("", |l| l.url.as_str())
    }

    /// Under `auto`, a camera that refused TCP is tried over UDP next, and the change is logged.
    fn fall_back_if_refused(&mut self, lower: Lower, tcp_refusal: Option<String>) {
        let refusal = tcp_refusal.clone();
        self.transport.failed(lower, tcp_refusal);
        if let (Some(why), Lower::Udp) = (refusal, self.transport.next()) {
            tracing::info!(camera = %self.shared.id, stream = self.kind.name(), why, "RTSP over TCP does not work with this camera; trying UDP");
        }
    }

    /// Puts the transport the next session uses, and why, in the stream's state.
    fn show_transport(&self) {
        let described = Some(self.transport.describe());
        let mut health = lock(&self.stream().health);
        if health.transport != described {
            health.transport = described;
            drop(health);
            self.shared.report();
        }
    }

    /// Whether the ring holds video, that is the session that just ended had delivered some.
    fn delivered_video(&self) -> bool {
        !lock(&self.stream().ring).is_empty()
    }

    /// A stream that goes down is logged once with the short reason, and each attempt (with
    /// GStreamer's whole text) at debug level.
    fn log_failure(&self, outage: &mut OutageLog, reason: &str) {
        let (camera, stream) = (&self.shared.id, self.kind.name());
        tracing::debug!(camera = %camera, stream, %reason, "camera stream attempt failed");
        match outage.failed() {
            OutageNote::Down => {
                tracing::warn!(camera = %camera, stream, url = %self.located.as_ref().map(Located::shown).unwrap_or_default(), reason = short_reason(reason), "camera stream offline; reconnecting")
            }
            // The service reminds of all offline cameras in one line (a site may lose a hundred).
            OutageNote::StillDown { .. } | OutageNote::Quiet => {}
        }
    }

    /// How long the camera may go without delivering video before its pipeline is restarted.
    fn stall_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.stall_timeout_s).unwrap_or(Duration::from_secs(10))
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Waits `total`, or less when the camera stops or the stream's address changes (found anew
    /// after a reboot: no reason to wait out the backoff of the old one).
    fn sleep(&self, total: Duration) {
        let deadline = std::time::Instant::now() + total;
        while !self.stopping() && std::time::Instant::now() < deadline && !self.moved() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the stream has an address now that differs from the last session's.
    fn moved(&self) -> bool {
        self.located
            .as_ref()
            .is_some_and(|last| self.shared.addresses.current(self.kind).is_ok_and(|now| now != *last))
    }

    fn stream(&self) -> &StreamShared {
        self.shared.stream(self.kind).unwrap_or(&self.shared.main)
    }

    /// Over TCP: a retina session ([`rtsp`]), whose pictures go straight into the ring.
    fn run_tcp_session(&self) -> SessionEnd {
        let stopper = self.shared.clone();
        let mut arrivals = Arrivals::new(self.shared.clone(), self.kind);
        let first_video = self.transport.probing_tcp().then_some(FIRST_VIDEO_OVER_TCP);
        let ended = rtsp::run_blocking(
            self.url(),
            self.stall_timeout(),
            first_video,
            move || stopper.stop.load(Ordering::SeqCst),
            move |picture| arrivals.take(picture.buffer, picture.caps.as_deref()),
        );
        match ended {
            rtsp::Ended::Stopped => SessionEnd::Stopped,
            rtsp::Ended::Failed(error) => SessionEnd::Failed {
                reason: error.to_string(),
                tcp_refusal: error.tcp_refusal(),
            },
        }
    }

    /// Over UDP: GStreamer's `rtspsrc`, which reorders packets in its jitterbuffer.
    fn run_udp_pipeline(&self) -> SessionEnd {
        match self.build_pipeline() {
            Ok(pipeline) => {
                let end = self.watch(&pipeline);
                gst_support::stop(&pipeline);
                end
            }
            Err(e) => SessionEnd::failed(e.to_string()),
        }
    }

    fn build_pipeline(&self) -> Result<gst::Pipeline, CameraError> {
        let mut arrivals = Arrivals::new(self.shared.clone(), self.kind);
        let name = match self.kind {
            StreamKind::Main => self.shared.id.clone(),
            StreamKind::Detect => format!("{}-detect", self.shared.id),
        };
        pipeline::rtsp(&name, self.url(), Lower::Udp, move |sample| {
            let Some(buffer) = sample.buffer_owned() else {
                return;
            };
            // A unit without a timestamp continues the picture before it: a later slice of
            // a multi-slice keyframe, split off because the camera repeats SPS/PPS before
            // each slice. Kept apart, a decoder would see two broken half pictures.
            if buffer.pts().is_none() {
                if let Ok(map) = buffer.map_readable() {
                    arrivals.extend_last(map.as_slice());
                }
                return;
            }
            arrivals.take(buffer, sample.caps());
        })
    }

    /// Runs until the pipeline fails, stalls, or the camera is stopped.
    fn watch(&self, pipeline: &gst::Pipeline) -> SessionEnd {
        let Some(bus) = pipeline.bus() else {
            return SessionEnd::failed("pipeline has no bus");
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
                return SessionEnd::failed(describe_bus_message(&msg));
            }
            // A newest unit that does not change means a stalled camera.
            let progress = lock(&self.stream().ring).newest();
            if progress != last_seen.0 {
                last_seen = (progress, std::time::Instant::now());
            } else if last_seen.1.elapsed() > self.stall_timeout() {
                return SessionEnd::failed(format!("no video for {} s", self.stall_timeout_s));
            }
        }
    }

    fn set_offline(&self, reason: &str) {
        let stream = self.stream();
        lock(&stream.ring).clear();
        let changed = {
            let mut health = lock(&stream.health);
            let changed = health.state != LinkState::Offline || health.last_error.as_deref() != Some(reason);
            if health.state != LinkState::Offline {
                health.since = Utc::now();
            }
            health.state = LinkState::Offline;
            health.fps = None;
            health.degraded = None;
            health.last_error = Some(reason.to_owned());
            changed
        };
        if changed {
            self.shared.report();
        }
    }
}

/// Where a stream's access units arrive, from either transport: into the ring, with the stream's
/// health kept up to date.
struct Arrivals {
    shared: Arc<Shared>,
    kind: StreamKind,
    rate: RateMeter,
}

impl Arrivals {
    fn new(shared: Arc<Shared>, kind: StreamKind) -> Self {
        Self {
            shared,
            kind,
            rate: RateMeter::default(),
        }
    }

    fn extend_last(&self, bytes: &[u8]) {
        if let Some(stream) = self.shared.stream(self.kind) {
            lock(&stream.ring).extend_last(bytes);
        }
    }

    /// Stores a whole access unit; a buffer without the delta-unit flag is a keyframe.
    fn take(&mut self, buffer: gst::Buffer, caps: Option<&gst::CapsRef>) {
        let Some(stream) = self.shared.stream(self.kind) else {
            return;
        };
        let now = Utc::now();
        let unit = AccessUnit {
            keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
            buffer,
            wall: now,
            seq: 0,
        };
        let degraded = {
            let mut ring = lock(&stream.ring);
            ring.push(unit, caps);
            ring.degraded().map(str::to_owned)
        };
        let fps = self.rate.tick(now);
        let mut health = lock(&stream.health);
        if health.state != LinkState::Online {
            tracing::info!(camera = %self.shared.id, stream = self.kind.name(), "camera stream online");
        }
        let changed = update_online(&mut health, caps, fps, now) | self.update_degraded(&mut health, degraded);
        drop(health);
        if changed {
            self.shared.report();
        }
    }
}

impl Arrivals {
    /// Notes whether the stream is degraded (see [`Ring::degraded`]); true when that changed.
    fn update_degraded(&self, health: &mut StreamHealth, degraded: Option<String>) -> bool {
        if health.degraded == degraded {
            return false;
        }
        match &degraded {
            Some(reason) => {
                tracing::warn!(camera = %self.shared.id, stream = self.kind.name(), %reason, "camera stream degraded")
            }
            None => {
                tracing::info!(camera = %self.shared.id, stream = self.kind.name(), "camera stream no longer degraded")
            }
        }
        health.degraded = degraded;
        true
    }
}

/// GStreamer's error without its debug text: "Could not open resource for reading and writing."
/// rather than the element path and source line that follow in parentheses.
fn short_reason(reason: &str) -> &str {
    reason.split_once(" (").map_or(reason, |(head, _)| head)
}

/// Marks a stream online with what its caps say; true when that is news worth reporting.
fn update_online(health: &mut StreamHealth, caps: Option<&gst::CapsRef>, fps: Option<f64>, now: DateTime<Utc>) -> bool {
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
    changed
}
