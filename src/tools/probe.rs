//! `alarm-verifier probe`: what a technician on site learns about a camera before adding it. With
//! its ONVIF address: the device's clock offset, its video profiles and stream URIs, and whether
//! its event service offers motion; for its main stream (found there, or given as an RTSP URL):
//! whether RTSP over TCP and over UDP work, the frame rate and GOP measured over a few seconds,
//! and a snapshot. Then the `[[camera]]` block to paste into the site config.
//!
//! Each step that fails says which it was and why, and the steps after it that do not need it
//! still run: a camera whose UDP is blocked still gets its TCP figures and snapshot.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use serde::Serialize;

use crate::analysis::clip::{Decoders, FirstFrame, decode_slice};
use crate::config::{OnvifConfig, Secret, redact_url};
use crate::ingest::ring::{AccessUnit, EncodedSlice};
use crate::ingest::transport::Lower;
use crate::ingest::{pipeline, rtsp};
use crate::intake::onvif::{self, StreamProfile};
use crate::support::gst as gst_support;
use crate::support::lock;

/// Why the probe could not go on: the step, and why.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("ONVIF media service: {0}")]
    Media(#[from] onvif::MediaError),
    #[error("no H.264/H.265 profile among the camera's {0} video profiles: nothing to stream")]
    NoStream(usize),
    #[error("{0}: expected an rtsp:// URL")]
    NotRtsp(String),
    #[error("GStreamer cannot start: {0}")]
    Gstreamer(String),
    #[error("the snapshot cannot be written to {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
}

/// What to probe.
pub struct ProbeRequest {
    /// The ONVIF device service URL; None to probe `rtsp` alone.
    pub onvif: Option<String>,
    /// An RTSP URL to probe (credentials in it); with `onvif` too, it wins over the found one.
    pub rtsp: Option<String>,
    pub username: String,
    pub password: Option<Secret>,
    /// The environment variable the password came from, for the block to paste.
    pub password_env: Option<String>,
    pub snapshot: Option<PathBuf>,
    /// How long the stream is watched over TCP for its frame rate and GOP.
    pub measure: Duration,
}

/// What the probe found.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onvif: Option<OnvifFindings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamFindings>,
    /// The `[[camera]]` table to paste into the site config.
    pub camera_block: String,
}

#[derive(Debug, Serialize)]
pub struct OnvifFindings {
    pub device: String,
    /// The camera's clock minus ours.
    pub clock_offset_s: f64,
    pub profiles: Vec<StreamProfile>,
    /// The profiles the service would use as `url` and `detect_url`.
    pub main_profile: Option<String>,
    pub detect_profile: Option<String>,
    /// Whether GetEventProperties lists a motion topic; None when it could not be asked.
    pub motion_events: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StreamFindings {
    /// The stream probed, without its password.
    pub url: String,
    pub tcp: Check,
    pub udp: Check,
    pub codec: Option<String>,
    pub resolution: Option<String>,
    /// Frames per second over TCP across the measured time.
    pub fps: Option<f64>,
    /// Frames from one keyframe to the next, on average.
    pub gop: Option<f64>,
    pub measured_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_error: Option<String>,
}

/// One transport's outcome.
#[derive(Debug, Serialize)]
pub struct Check {
    pub works: bool,
    pub detail: String,
}

/// Probes the camera of `request`.
pub async fn probe(request: ProbeRequest) -> Result<ProbeReport, ProbeError> {
    let onvif = match &request.onvif {
        Some(url) => Some(probe_onvif(&request, url).await?),
        None => None,
    };
    let stream_url = match (&request.rtsp, &onvif) {
        (Some(url), _) => Some(url.clone()),
        (None, Some((_, main_url))) => main_url.clone(),
        (None, None) => None,
    };
    let stream = match stream_url {
        Some(url) => {
            let snapshot = request.snapshot.clone();
            let measure = request.measure;
            let task = tokio::task::spawn_blocking(move || probe_stream(&url, measure, snapshot.as_deref()));
            Some(task.await.map_err(|e| ProbeError::Gstreamer(e.to_string()))??)
        }
        None => None,
    };
    let onvif = onvif.map(|(findings, _)| findings);
    let camera_block = camera_block(&request, onvif.as_ref(), stream.as_ref());
    Ok(ProbeReport {
        onvif,
        stream,
        camera_block,
    })
}

/// The ONVIF findings and the main stream's URL with the credentials in it.
async fn probe_onvif(request: &ProbeRequest, url: &str) -> Result<(OnvifFindings, Option<String>), ProbeError> {
    let config = OnvifConfig {
        url: url.to_owned(),
        username: request.username.clone(),
        password: Secret::default(),
        password_env: String::new(),
        topics: Vec::new(),
        allow_other_hosts: false,
    };
    let report = onvif::find_streams("probe", &config, request.password.clone()).await?;
    let (main, detect) = onvif::choose_streams(&report.profiles).ok_or(ProbeError::NoStream(report.profiles.len()))?;
    let password = request.password.clone().unwrap_or_default();
    let main_url = if request.username.is_empty() {
        Some(main.uri.clone())
    } else {
        onvif::with_credentials(&main.uri, &request.username, &password)
    };
    let (motion_events, events_error) = match onvif::offers_motion("probe", &config, request.password.clone()).await {
        Ok(offered) => (Some(offered), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let findings = OnvifFindings {
        device: url.to_owned(),
        clock_offset_s: report.clock_offset_s,
        main_profile: Some(main.token.clone()),
        detect_profile: detect.map(|d| d.token.clone()),
        profiles: report.profiles.clone(),
        motion_events,
        events_error,
    };
    Ok((findings, main_url))
}

/// TCP (with the frame rate, GOP and snapshot), then UDP, on `url`; blocks.
fn probe_stream(url: &str, measure: Duration, snapshot: Option<&Path>) -> Result<StreamFindings, ProbeError> {
    if !url.starts_with("rtsp://") && !url.starts_with("rtsps://") {
        return Err(ProbeError::NotRtsp(redact_url(url)));
    }
    gst_support::init().map_err(|e| ProbeError::Gstreamer(e.to_string()))?;
    let watched = watch_over_tcp(url, measure);
    let udp = check_udp(url, measure);
    let (snapshot_path, snapshot_error) = match (snapshot, &watched.first_keyframe) {
        (None, _) => (None, None),
        (Some(path), Some(slice)) => match write_snapshot(slice, path) {
            Ok(()) => (Some(path.display().to_string()), None),
            Err(e) => (None, Some(e.to_string())),
        },
        (Some(_), None) => (None, Some("no keyframe arrived over TCP".to_owned())),
    };
    Ok(StreamFindings {
        url: redact_url(url),
        tcp: watched.check,
        udp,
        codec: watched.codec,
        resolution: watched.resolution,
        fps: watched.fps,
        gop: watched.gop,
        measured_s: watched.measured_s,
        snapshot: snapshot_path,
        snapshot_error,
    })
}

/// What watching the stream over TCP showed.
struct Watched {
    check: Check,
    codec: Option<String>,
    resolution: Option<String>,
    fps: Option<f64>,
    gop: Option<f64>,
    measured_s: f64,
    first_keyframe: Option<EncodedSlice>,
}

/// Counts of what arrived: every picture, and where keyframes were.
#[derive(Default)]
struct Tally {
    pictures: usize,
    keyframes_at: Vec<usize>,
    caps: Option<gst::Caps>,
    first_keyframe: Option<gst::Buffer>,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

fn watch_over_tcp(url: &str, measure: Duration) -> Watched {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let sink = tally.clone();
    let ended = rtsp::run_blocking(
        url,
        measure,
        Some(measure),
        move || started.elapsed() >= measure,
        move |picture| count_picture(&mut lock(&sink), picture),
    );
    let tally = std::mem::take(&mut *lock(&tally));
    let check = match ended {
        rtsp::Ended::Failed(e) if tally.pictures == 0 => Check {
            works: false,
            detail: e.to_string(),
        },
        _ if tally.pictures == 0 => Check {
            works: false,
            detail: format!("no video within {} s", measure.as_secs()),
        },
        _ => Check {
            works: true,
            detail: format!(
                "{} pictures in {:.1} s",
                tally.pictures,
                started.elapsed().as_secs_f64()
            ),
        },
    };
    summarise(tally, check)
}

fn count_picture(tally: &mut Tally, picture: rtsp::Picture) {
    let now = Instant::now();
    tally.first_at.get_or_insert(now);
    tally.last_at = Some(now);
    if let Some(caps) = picture.caps {
        tally.caps = Some(caps);
    }
    if !picture.buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
        tally.keyframes_at.push(tally.pictures);
        if tally.first_keyframe.is_none() {
            tally.first_keyframe = Some(picture.buffer);
        }
    }
    tally.pictures += 1;
}

fn summarise(tally: Tally, check: Check) -> Watched {
    let measured = match (tally.first_at, tally.last_at) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let fps = (measured > 0.5).then(|| round1((tally.pictures.saturating_sub(1)) as f64 / measured));
    let gop = match tally.keyframes_at.as_slice() {
        [first, .., last] => Some(round1((last - first) as f64 / (tally.keyframes_at.len() - 1) as f64)),
        _ => None,
    };
    let structure = tally.caps.as_ref().and_then(|c| c.structure(0));
    let resolution = structure.and_then(|s| match (s.get::<i32>("width"), s.get::<i32>("height")) {
        (Ok(w), Ok(h)) => Some(format!("{w}x{h}")),
        _ => None,
    });
    let codec = structure.map(|s| s.name().trim_start_matches("video/x-").to_owned());
    let first_keyframe = match (tally.caps, tally.first_keyframe) {
        (Some(caps), Some(buffer)) => Some(EncodedSlice {
            caps,
            units: vec![AccessUnit {
                keyframe: true,
                buffer,
                wall: chrono::Utc::now(),
                seq: 0,
            }],
        }),
        _ => None,
    };
    Watched {
        check,
        codec,
        resolution,
        fps,
        gop,
        measured_s: round1(measured),
        first_keyframe,
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Whether video arrives over UDP (rtspsrc) within `within`.
fn check_udp(url: &str, within: Duration) -> Check {
    let arrived = Arc::new(AtomicUsize::new(0));
    let counter = arrived.clone();
    let pipeline = match pipeline::rtsp("probe", url, Lower::Udp, move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    }) {
        Ok(pipeline) => pipeline,
        Err(e) => {
            return Check {
                works: false,
                detail: e.to_string(),
            };
        }
    };
    let deadline = Instant::now() + within;
    let mut failure = None;
    if let Some(bus) = gst::prelude::ElementExt::bus(&pipeline) {
        while Instant::now() < deadline && arrived.load(Ordering::Relaxed) == 0 && failure.is_none() {
            failure = bus
                .timed_pop_filtered(gst::ClockTime::from_mseconds(100), &[gst::MessageType::Error])
                .map(|m| gst_support::describe_bus_message(&m));
        }
    }
    gst_support::stop(&pipeline);
    match (arrived.load(Ordering::Relaxed), failure) {
        (0, Some(why)) => Check {
            works: false,
            detail: why,
        },
        (0, None) => Check {
            works: false,
            detail: format!("no video within {} s", within.as_secs()),
        },
        (n, _) => Check {
            works: true,
            detail: format!("{n} pictures"),
        },
    }
}

/// Decodes the keyframe and writes it as a JPEG.
fn write_snapshot(slice: &EncodedSlice, path: &Path) -> Result<(), ProbeError> {
    let failed = |reason: String| ProbeError::Snapshot {
        path: path.to_owned(),
        reason,
    };
    let mut first = FirstFrame::default();
    decode_slice(slice, &Decoders::software(), &mut first).map_err(|e| failed(e.to_string()))?;
    let frame = first.0.ok_or_else(|| failed("the keyframe did not decode".into()))?;
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&frame.image)
        .map_err(|e| failed(e.to_string()))?;
    std::fs::write(path, jpeg).map_err(|e| failed(e.to_string()))
}

/// The `[[camera]]` table: for an ONVIF camera, its address alone (the service finds the streams
/// on every start); for an RTSP URL, the URL with the password left for the technician to fill.
fn camera_block(request: &ProbeRequest, onvif: Option<&OnvifFindings>, stream: Option<&StreamFindings>) -> String {
    let mut block = String::from("[[camera]]\nid = \"camera-1\"\n");
    match (&request.onvif, request.rtsp.as_deref()) {
        (Some(device), rtsp) => {
            if let Some(url) = rtsp {
                block.push_str(&format!("url = \"{}\"\n", redact_url(url)));
            }
            if let Some(findings) = onvif {
                let shown = |token: &Option<String>| {
                    token
                        .as_ref()
                        .and_then(|t| findings.profiles.iter().find(|p| &p.token == t))
                        .map(|p| format!("{} {}x{}", p.token, p.width, p.height))
                        .unwrap_or_else(|| "none".into())
                };
                block.push_str(&format!(
                    "# streams found through ONVIF on every start: main {}, detect {}\n",
                    shown(&findings.main_profile),
                    shown(&findings.detect_profile)
                ));
            }
            if stream.is_some_and(|s| !s.tcp.works && s.udp.works) {
                block.push_str("transport = \"udp\"\n");
            }
            block.push_str(&format!("[camera.onvif]\nurl = \"{device}\"\n"));
            if !request.username.is_empty() {
                block.push_str(&format!("username = \"{}\"\n", request.username));
                let env = request.password_env.as_deref().unwrap_or("CAMERA_1_PASSWORD");
                block.push_str(&format!("password_env = \"{env}\"\n"));
            }
        }
        (None, Some(url)) => {
            block.push_str(&format!("url = \"{}\"\n", redact_url(url)));
            if stream.is_some_and(|s| !s.tcp.works && s.udp.works) {
                block.push_str("transport = \"udp\"\n");
            }
        }
        (None, None) => {}
    }
    block
}

impl ProbeReport {
    /// The report as a technician reads it.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some(onvif) = &self.onvif {
            render_onvif(onvif, &mut text);
        }
        if let Some(stream) = &self.stream {
            render_stream(stream, &mut text);
        }
        text.push_str("\nPaste into the site config:\n\n");
        text.push_str(&self.camera_block);
        text
    }
}

fn render_onvif(onvif: &OnvifFindings, text: &mut String) {
    text.push_str(&format!("ONVIF device   {}\n", onvif.device));
    text.push_str(&format!(
        "clock offset   {:+.1} s (camera minus this machine)\n",
        onvif.clock_offset_s
    ));
    let motion = match (onvif.motion_events, &onvif.events_error) {
        (Some(true), _) => "offered".to_owned(),
        (Some(false), _) => "not offered (no motion topic in GetEventProperties)".to_owned(),
        (None, Some(e)) => format!("unknown: {e}"),
        (None, None) => "unknown".to_owned(),
    };
    text.push_str(&format!("motion events  {motion}\n\n"));
    text.push_str(&format!(
        "{:<14} {:<16} {:<10} {:<7} {:>6} {:>9}  {}\n",
        "PROFILE", "NAME", "SIZE", "CODEC", "FPS", "KBIT/S", "STREAM URI"
    ));
    for p in &onvif.profiles {
        let role = if onvif.main_profile.as_ref() == Some(&p.token) {
            " (main)"
        } else if onvif.detect_profile.as_ref() == Some(&p.token) {
            " (detect)"
        } else {
            ""
        };
        text.push_str(&format!(
            "{:<14} {:<16} {:<10} {:<7} {:>6} {:>9}  {}{role}\n",
            p.token,
            p.name,
            format!("{}x{}", p.width, p.height),
            p.encoding,
            p.fps.map_or("?".into(), |f| format!("{f:.0}")),
            p.bitrate_kbps.map_or("?".into(), |b| b.to_string()),
            redact_url(&p.uri)
        ));
    }
}

fn render_stream(stream: &StreamFindings, text: &mut String) {
    let check = |c: &Check| format!("{} ({})", if c.works { "works" } else { "FAILS" }, c.detail);
    text.push_str(&format!("\nstream         {}\n", stream.url));
    text.push_str(&format!("RTSP over TCP  {}\n", check(&stream.tcp)));
    text.push_str(&format!("RTSP over UDP  {}\n", check(&stream.udp)));
    text.push_str(&format!(
        "video          {} {}, {} fps, GOP {} frames (over {:.1} s)\n",
        stream.codec.as_deref().unwrap_or("?"),
        stream.resolution.as_deref().unwrap_or("?"),
        stream.fps.map_or("?".into(), |f| format!("{f:.1}")),
        stream.gop.map_or("?".into(), |g| format!("{g:.0}")),
        stream.measured_s
    ));
    match (&stream.snapshot, &stream.snapshot_error) {
        (Some(path), _) => text.push_str(&format!("snapshot       {path}\n")),
        (None, Some(e)) => text.push_str(&format!("snapshot       FAILED: {e}\n")),
        (None, None) => {}
    }
}
