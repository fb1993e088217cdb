//! Decoding the clip around an alarm into frames, only as many as analysis asks for.
//!
//! Three sources feed the same decode tail: a live camera's ring, fed to a [`LiveDecoder`] as its
//! units arrive (the service); a slice of a ring decoded at once (evidence from the main stream);
//! and a video file (`verify-clip`, `eval`). Frames go to a [`FrameSink`] one at a time: it says
//! which frames it wants (only those are converted to RGB) and when it has seen enough, so a long
//! or high-resolution clip never sits in memory decoded and a verified alarm stops the decoder.

use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use image::RgbImage;

use crate::analysis::detect::DetectError;
use crate::analysis::evidence::EvidenceError;
use crate::ingest::camera::{Camera, StreamKind};
use crate::ingest::ring::{AccessUnit, EncodedSlice};
use crate::support::gst::{self as gst_support, GstError, VideoCodec, clock_time, element_starts, pending_error};

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("GStreamer: {0}")]
    Gst(#[from] GstError),
    #[error("{path}: cannot open the video file: {reason}")]
    File { path: String, reason: String },
    #[error("cannot decode the clip: {0}")]
    Decode(String),
    #[error("unsupported stream {0:?}; expected H.264 or H.265")]
    Codec(String),
    /// The sink could not take a frame.
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{0}")]
    Decoder(String),
}

/// A decoder that produces nothing for this long is given up, so no thread waits forever.
const MAX_DECODE_TIME: std::time::Duration = std::time::Duration::from_secs(60);

/// The part of a clip to analyse and how densely.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub fps: f64,
}

/// One decoded frame, in RGB, with the wall-clock time it shows.
pub struct Frame {
    pub image: RgbImage,
    pub time: DateTime<Utc>,
}

/// A sink that takes the first decoded frame and stops: a snapshot.
#[derive(Default)]
pub struct FirstFrame(pub Option<Frame>);

impl FrameSink for FirstFrame {
    fn wants(&mut self, _time: DateTime<Utc>) -> bool {
        self.0.is_none()
    }
    fn frame(&mut self, frame: Frame) -> Result<Flow, SinkError> {
        self.0 = Some(frame);
        Ok(Flow::Stop)
    }
}

/// Whether decoding goes on after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The consumer has its answer: decode no further.
    Stop,
}

/// Why a [`FrameSink`] could not take a frame: the analysis behind it failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
}

/// Where decoded frames go.
pub trait FrameSink {
    /// Whether the frame showing `time` is wanted; only wanted frames are converted to RGB.
    fn wants(&mut self, time: DateTime<Utc>) -> bool;
    /// A wanted frame.
    fn frame(&mut self, frame: Frame) -> Result<Flow, SinkError>;
}

/// A sink taking frames at a fixed rate inside a window and handing them to a closure.
struct EveryFrame<F> {
    picker: FramePicker,
    on_frame: F,
}

impl<F: FnMut(Frame)> FrameSink for EveryFrame<F> {
    fn wants(&mut self, time: DateTime<Utc>) -> bool {
        self.picker.take(time)
    }

    fn frame(&mut self, frame: Frame) -> Result<Flow, SinkError> {
        (self.on_frame)(frame);
        Ok(Flow::Continue)
    }
}

/// The decoder elements for each codec, chosen once at start-up from `clip.decoder`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoders {
    pub h264: String,
    pub h265: String,
}

/// Hardware decoders tried by `auto`, best first: VA-API, NVDEC, V4L2 stateful, the older VA-API
/// plugin and Intel Media SDK.
const HARDWARE_H264: [&str; 5] = ["vah264dec", "nvh264dec", "v4l2h264dec", "vaapih264dec", "msdkh264dec"];
const HARDWARE_H265: [&str; 5] = ["vah265dec", "nvh265dec", "v4l2h265dec", "vaapih265dec", "msdkh265dec"];

impl Decoders {
    pub fn software() -> Self {
        Self {
            h264: "avdec_h264".into(),
            h265: "avdec_h265".into(),
        }
    }

    /// Resolves `clip.decoder`: `auto` takes a hardware decoder that starts here, else software
    /// (with a log line); `software` the libav decoders; anything else must be an installed
    /// GStreamer decoder element, used for the codec it takes (software for the other).
    pub fn choose(setting: &str) -> Result<Self, ClipError> {
        gst_support::init()?;
        let software = Self::software();
        match setting {
            "software" => Ok(software),
            "auto" => {
                let pick = |candidates: &[&str], fallback: &str| {
                    candidates
                        .iter()
                        .find(|name| element_starts(name))
                        .map(|name| (*name).to_owned())
                        .unwrap_or_else(|| fallback.to_owned())
                };
                let chosen = Self {
                    h264: pick(&HARDWARE_H264, &software.h264),
                    h265: pick(&HARDWARE_H265, &software.h265),
                };
                if chosen == software {
                    tracing::info!(decoder = %software.h264, "no hardware video decoder works here; decoding in software");
                } else {
                    tracing::info!(h264 = %chosen.h264, h265 = %chosen.h265, "video decoders chosen");
                }
                Ok(chosen)
            }
            name => {
                let factory = gst::ElementFactory::find(name).ok_or_else(|| {
                    ClipError::Decoder(format!(
                        "clip.decoder: no GStreamer element named {name:?} (is its plugin installed? see `gst-inspect-1.0 {name}`)"
                    ))
                })?;
                if !factory.klass().contains("Decoder") {
                    return Err(ClipError::Decoder(format!(
                        "clip.decoder: {name:?} is a {:?}, expected a video decoder",
                        factory.klass()
                    )));
                }
                let takes = |codec: &str| {
                    factory
                        .static_pad_templates()
                        .iter()
                        .any(|t| t.direction() == gst::PadDirection::Sink && t.caps().iter().any(|s| s.name() == codec))
                };
                match (takes("video/x-h264"), takes("video/x-h265")) {
                    (false, false) => Err(ClipError::Decoder(format!(
                        "clip.decoder: {name:?} decodes neither H.264 nor H.265"
                    ))),
                    (h264, h265) => Ok(Self {
                        h264: if h264 { name.to_owned() } else { software.h264 },
                        h265: if h265 { name.to_owned() } else { software.h265 },
                    }),
                }
            }
        }
    }

    /// `parse ! decoder` for a stream with these caps. Software decoders run on one thread: the
    /// service runs one analysis per core, and threads inside each would only contend.
    fn tail_for(&self, caps: &gst::Caps) -> Result<String, ClipError> {
        let media_type = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
        let codec = VideoCodec::from_media_type(&media_type).ok_or(ClipError::Codec(media_type))?;
        let decoder = match codec {
            VideoCodec::H264 => self.h264.as_str(),
            VideoCodec::H265 => self.h265.as_str(),
        };
        let parse = codec.parser();
        let threads = if decoder.starts_with("avdec_") {
            " max-threads=1"
        } else {
            ""
        };
        Ok(format!("{parse} ! {decoder}{threads}"))
    }
}

/// Decodes a camera slice at once, handing frames to `sink`. Returns the number of frames it took.
pub fn decode_slice(slice: &EncodedSlice, decoders: &Decoders, sink: &mut dyn FrameSink) -> Result<usize, ClipError> {
    let mut decoder = LiveDecoder::new(&slice.caps, decoders)?;
    let taken = match decoder.feed(&slice.units, sink)? {
        (n, Flow::Stop) => return Ok(n),
        (n, Flow::Continue) => n,
    };
    Ok(taken + decoder.finish(sink)?)
}

/// The newest keyframe of `camera`'s `kind` stream, decoded.
pub fn newest_keyframe(camera: &Camera, kind: StreamKind, decoders: &Decoders) -> Result<Frame, String> {
    let newest = camera
        .newest(kind)
        .ok_or_else(|| format!("no video from {} yet", camera.id()))?;
    keyframe_near(camera, kind, newest, decoders)
}

/// The keyframe of `camera`'s `kind` stream nearest `time`, decoded: one picture, at the cost of
/// one frame instead of the GOP before it.
pub fn keyframe_near(
    camera: &Camera,
    kind: StreamKind,
    time: DateTime<Utc>,
    decoders: &Decoders,
) -> Result<Frame, String> {
    let id = camera.id();
    let key = camera
        .keyframe_near(kind, time)
        .ok_or_else(|| format!("no keyframe from {id} yet"))?;
    let slice = camera.slice(kind, key, key).map_err(|e| e.to_string())?;
    let mut first = FirstFrame(None);
    decode_slice(&slice, decoders, &mut first).map_err(|e| e.to_string())?;
    first
        .0
        .ok_or_else(|| format!("the keyframe of {id} at {} did not decode", key.format("%H:%M:%S%.3f")))
}

/// A decoder fed access units as they arrive from a camera, handing over decoded frames as it goes.
/// Times are the units' arrival times: frame time = first unit's arrival + (PTS - first PTS).
pub struct LiveDecoder {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    sink: gst_app::AppSink,
    base: Option<(DateTime<Utc>, Option<gst::ClockTime>)>,
    converter: RgbConverter,
    pushed: usize,
    pulled: usize,
    /// Frames the decoder holds back (reordering); learnt when it stops giving frames.
    lag: usize,
    ended: bool,
}

/// How many units the decoder may hold beyond the frames taken: enough to keep it busy while a
/// frame is analysed, few enough that little is decoded past the frame that verifies an alarm.
const LOOKAHEAD: usize = 4;

/// How far [`LiveDecoder::drain`] takes the frames of what was pushed.
#[derive(Clone, Copy)]
enum Drain {
    /// Until at most this many units (beyond those the decoder holds back) are still inside.
    Ahead(usize),
    /// Every frame the decoder gives for what was pushed, short of those it holds back.
    Fed,
    /// Every frame, to the end of the stream.
    End,
}

/// How long to wait for the decoder to give the next frame of what was pushed.
const FRAME_WAIT: gst::ClockTime = gst::ClockTime::from_mseconds(200);

impl LiveDecoder {
    pub fn new(caps: &gst::Caps, decoders: &Decoders) -> Result<Self, ClipError> {
        let tail = decoders.tail_for(caps)?;
        let pipeline = build_decoder(&format!("appsrc name=src format=time is-live=false ! {tail}"))?;
        let src = gst_support::app_src(&pipeline, "src")?;
        src.set_caps(Some(caps));
        let sink = play(&pipeline)?;
        Ok(Self {
            pipeline,
            src,
            sink,
            base: None,
            converter: RgbConverter::default(),
            pushed: 0,
            pulled: 0,
            lag: 0,
            ended: false,
        })
    }

    /// Decodes `units` and hands the frames they give to `sink`. Returns how many frames the sink
    /// took, and whether it wants more.
    pub fn feed(&mut self, units: &[AccessUnit], sink: &mut dyn FrameSink) -> Result<(usize, Flow), ClipError> {
        let mut taken = 0;
        for unit in units {
            self.push(unit)?;
            // Frames are taken as the units go in, so that a verified alarm stops the decoding
            // a few units after the frame that verified it, not at the end of what was fed.
            let (n, flow) = self.drain(sink, Drain::Ahead(LOOKAHEAD))?;
            taken += n;
            if flow == Flow::Stop {
                return Ok((taken, flow));
            }
        }
        let (n, flow) = self.drain(sink, Drain::Fed)?;
        Ok((taken + n, flow))
    }

    fn push(&mut self, unit: &AccessUnit) -> Result<(), ClipError> {
        let (base_wall, base_pts) = *self.base.get_or_insert((unit.wall, unit.buffer.pts()));
        let offset = match (unit.buffer.pts(), base_pts) {
            (Some(p), Some(b)) if p >= b => p - b,
            _ => clock_time(unit.wall - base_wall),
        };
        let mut b = unit.buffer.copy();
        let bm = b.make_mut();
        bm.set_pts(offset);
        bm.set_dts(gst::ClockTime::NONE);
        self.src
            .push_buffer(b)
            .map_err(|e| ClipError::Decode(format!("the decoder refused video: {e:?}")))?;
        self.pushed += 1;
        Ok(())
    }

    /// Ends the stream and hands over the frames still inside the decoder.
    pub fn finish(&mut self, sink: &mut dyn FrameSink) -> Result<usize, ClipError> {
        if !self.ended {
            let _ = self.src.end_of_stream();
            self.ended = true;
        }
        self.drain(sink, Drain::End).map(|(n, _)| n)
    }

    fn drain(&mut self, sink: &mut dyn FrameSink, until: Drain) -> Result<(usize, Flow), ClipError> {
        let (to_end, ahead) = match until {
            Drain::Ahead(n) => (false, n),
            Drain::Fed => (false, 0),
            Drain::End => (true, 0),
        };
        let started = std::time::Instant::now();
        let mut taken = 0;
        loop {
            if let Some(err) = pending_error(&self.pipeline) {
                return Err(ClipError::Decode(err));
            }
            if started.elapsed() > MAX_DECODE_TIME {
                return Err(ClipError::Decode(format!(
                    "decoding took over {} s",
                    MAX_DECODE_TIME.as_secs()
                )));
            }
            let outstanding = self.pushed.saturating_sub(self.pulled);
            if !to_end && outstanding <= self.lag + ahead {
                return Ok((taken, Flow::Continue));
            }
            let Some(sample) = self.sink.try_pull_sample(FRAME_WAIT) else {
                if self.sink.is_eos() {
                    return Ok((taken, Flow::Continue));
                }
                if !to_end {
                    // The decoder holds these back until more video comes.
                    self.lag = self.lag.max(outstanding.saturating_sub(ahead));
                    return Ok((taken, Flow::Continue));
                }
                continue;
            };
            self.pulled += 1;
            let Some(time) = self.base.and_then(|(base_wall, _)| frame_time(&sample, base_wall)) else {
                continue;
            };
            match self.converter.hand_over(&sample, time, sink)? {
                None => {}
                Some(flow) => {
                    taken += 1;
                    if flow == Flow::Stop {
                        return Ok((taken, Flow::Stop));
                    }
                }
            }
        }
    }
}

impl Drop for LiveDecoder {
    fn drop(&mut self) {
        gst_support::stop(&self.pipeline);
    }
}

/// Decodes a video file, treating second `alarm_at` of the file as the alarm time `window` is
/// built around. `base_wall` is the wall time given to the file's first frame.
pub fn decode_file(
    path: &Path,
    base_wall: DateTime<Utc>,
    window: Window,
    on_frame: impl FnMut(Frame),
) -> Result<usize, ClipError> {
    let mut sink = EveryFrame {
        picker: FramePicker::new(window),
        on_frame,
    };
    decode_file_into(path, base_wall, window.to, &mut sink)
}

/// Decodes a video file into `sink` up to the frame showing `to`, or until the sink stops it.
/// `base_wall` is the wall time given to the file's first frame.
pub fn decode_file_into(
    path: &Path,
    base_wall: DateTime<Utc>,
    to: DateTime<Utc>,
    sink: &mut dyn FrameSink,
) -> Result<usize, ClipError> {
    if !path.is_file() {
        return Err(ClipError::File {
            path: path.display().to_string(),
            reason: "no such file".into(),
        });
    }
    let location = path.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    let head = format!("filesrc location=\"{location}\" ! decodebin");
    let pipeline = build_decoder(&head)?;
    let result = pull_frames(&pipeline, to, base_wall, sink);
    gst_support::stop(&pipeline);
    result.map_err(|e| match e {
        ClipError::Decode(reason) => ClipError::File {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    })
}

/// The first frame of a video file, decoded as the service decodes.
pub fn first_frame(path: &Path) -> Result<RgbImage, ClipError> {
    let base = Utc::now();
    let window = Window {
        from: base,
        to: base + TimeDelta::milliseconds(50),
        fps: 1.0,
    };
    let mut frame = None;
    decode_file(path, base, window, |f| {
        frame.get_or_insert(f.image);
    })?;
    frame.ok_or_else(|| ClipError::File {
        path: path.display().to_string(),
        reason: "no frames".into(),
    })
}

/// The shared decode tail: decoded frames in whatever raw format the decoder gives. Frames are
/// chosen in Rust ([`FramePicker`]) and only the chosen ones converted to RGB ([`RgbConverter`]).
/// (No videorate: it aborts the process on streams without a frame rate, such as a still image.)
fn build_decoder(head: &str) -> Result<gst::Pipeline, ClipError> {
    let desc = format!("{head} ! appsink name=sink sync=false max-buffers=4 caps=video/x-raw");
    Ok(gst_support::launch(&desc)?)
}

/// Converts decoded frames to RGB, reusing one converter while the stream's format stays the same.
#[derive(Default)]
struct RgbConverter {
    current: Option<(
        gst::Caps,
        gst_video::VideoConverter,
        gst_video::VideoInfo,
        gst_video::VideoInfo,
    )>,
}

impl RgbConverter {
    /// Hands the frame in `sample` to `sink` if it wants it (converting only then): None when it
    /// did not, else whether it wants more.
    fn hand_over(
        &mut self,
        sample: &gst::Sample,
        time: DateTime<Utc>,
        sink: &mut dyn FrameSink,
    ) -> Result<Option<Flow>, ClipError> {
        if !sink.wants(time) {
            return Ok(None);
        }
        let image = self.convert(sample)?;
        Ok(Some(sink.frame(Frame { image, time })?))
    }

    fn convert(&mut self, sample: &gst::Sample) -> Result<RgbImage, ClipError> {
        let err = |e: &dyn std::fmt::Display| ClipError::Decode(e.to_string());
        let caps = sample
            .caps()
            .ok_or_else(|| ClipError::Decode("frame without caps".into()))?;
        if self.current.as_ref().is_none_or(|(c, ..)| c.as_ref() != caps) {
            let in_info = gst_video::VideoInfo::from_caps(caps).map_err(|e| err(&e))?;
            let out_info =
                gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, in_info.width(), in_info.height())
                    .fps(in_info.fps())
                    .par(in_info.par())
                    .interlace_mode(in_info.interlace_mode())
                    .build()
                    .map_err(|e| err(&e))?;
            let converter = gst_video::VideoConverter::new(&in_info, &out_info, None).map_err(|e| err(&e))?;
            self.current = Some((caps.to_owned(), converter, in_info, out_info));
        }
        let Some((_, converter, in_info, out_info)) = self.current.as_ref() else {
            return Err(ClipError::Decode("no converter".into()));
        };
        let buffer = sample
            .buffer()
            .ok_or_else(|| ClipError::Decode("sample without buffer".into()))?;
        let input = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, in_info).map_err(|e| err(&e))?;
        let mut out = gst::Buffer::with_size(out_info.size()).map_err(|e| err(&e))?;
        {
            let out_ref = out
                .get_mut()
                .ok_or_else(|| ClipError::Decode("output buffer not writable".into()))?;
            let mut output =
                gst_video::VideoFrameRef::from_buffer_ref_writable(out_ref, out_info).map_err(|e| err(&e))?;
            converter.frame_ref(&input, &mut output);
        }
        rgb_image(&out, out_info)
    }
}

/// Copies an RGB buffer into an image, dropping GStreamer's row padding.
fn rgb_image(buffer: &gst::Buffer, info: &gst_video::VideoInfo) -> Result<RgbImage, ClipError> {
    let map = buffer.map_readable().map_err(|e| ClipError::Decode(e.to_string()))?;
    let (w, h) = (info.width() as usize, info.height() as usize);
    let stride = info.stride()[0] as usize;
    let row = w * 3;
    if stride < row || map.len() < stride * (h.saturating_sub(1)) + row {
        return Err(ClipError::Decode(format!("frame buffer too small for {w}x{h}")));
    }
    let mut pixels = Vec::with_capacity(row * h);
    for y in 0..h {
        pixels.extend_from_slice(&map[y * stride..y * stride + row]);
    }
    RgbImage::from_raw(w as u32, h as u32, pixels).ok_or_else(|| ClipError::Decode("bad frame size".into()))
}

/// The wall time a decoded sample shows: `base_wall` plus its PTS.
fn frame_time(sample: &gst::Sample, base_wall: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let pts = sample
        .buffer()?
        .pts()
        .map(|p| TimeDelta::nanoseconds(p.nseconds() as i64));
    Some(base_wall + pts.unwrap_or_default())
}

/// Starts a decode pipeline made by [`build_decoder`] and returns its appsink.
fn play(pipeline: &gst::Pipeline) -> Result<gst_app::AppSink, ClipError> {
    let sink = gst_support::app_sink(pipeline, "sink")?;
    gst_support::play(pipeline)?;
    Ok(sink)
}

fn pull_frames(
    pipeline: &gst::Pipeline,
    to: DateTime<Utc>,
    base_wall: DateTime<Utc>,
    frames: &mut dyn FrameSink,
) -> Result<usize, ClipError> {
    let sink = play(pipeline)?;
    let mut converter = RgbConverter::default();
    let mut delivered = 0usize;
    let started = std::time::Instant::now();
    loop {
        if started.elapsed() > MAX_DECODE_TIME {
            return Err(ClipError::Decode(format!(
                "decoding took over {} s",
                MAX_DECODE_TIME.as_secs()
            )));
        }
        if let Some(err) = pending_error(pipeline) {
            return Err(ClipError::Decode(err));
        }
        let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) else {
            if sink.is_eos() {
                break;
            }
            continue;
        };
        let Some(time) = frame_time(&sample, base_wall) else {
            continue;
        };
        if time > to {
            break;
        }
        match converter.hand_over(&sample, time, frames)? {
            None => {}
            Some(flow) => {
                delivered += 1;
                if flow == Flow::Stop {
                    return Ok(delivered);
                }
            }
        }
    }
    if let Some(err) = pending_error(pipeline) {
        return Err(ClipError::Decode(err));
    }
    Ok(delivered)
}

/// Chooses frames about `1 / fps` apart inside the window from whatever frame times the source has:
/// the window is cut into slots of `1 / fps` centred on the grid, and the first frame in each slot is taken.
/// A source slower than the analysis rate gives every frame.
struct FramePicker {
    from: DateTime<Utc>,
    fps: f64,
    last_slot: Option<i64>,
}

impl FramePicker {
    fn new(window: Window) -> Self {
        Self {
            from: window.from,
            fps: window.fps,
            last_slot: None,
        }
    }

    fn take(&mut self, time: DateTime<Utc>) -> bool {
        if time < self.from {
            return false;
        }
        let slot = ((time - self.from).as_seconds_f64() * self.fps).round() as i64;
        if self.last_slot == Some(slot) {
            return false;
        }
        self.last_slot = Some(slot);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picked(source_fps: f64, analysis_fps: f64, seconds: f64) -> usize {
        let from = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        let to = from + TimeDelta::milliseconds((seconds * 1000.0) as i64);
        let mut picker = FramePicker::new(Window {
            from,
            to,
            fps: analysis_fps,
        });
        let start = from - TimeDelta::seconds(1);
        (0..=((seconds + 1.0) * source_fps) as i64)
            .map(|i| start + TimeDelta::microseconds((i as f64 * 1e6 / source_fps) as i64))
            .filter(|t| *t <= to && picker.take(*t))
            .count()
    }

    #[test]
    fn picker_yields_the_analysis_rate() {
        // 6 s at 3 fps is 18 frames (19 counting both ends), whatever the source rate.
        for source in [6.0, 10.0, 25.0, 30.0] {
            let n = picked(source, 3.0, 6.0);
            assert!((18..=19).contains(&n), "{n} frames from a {source} fps source");
        }
    }

    #[test]
    fn picker_takes_every_frame_of_a_slow_source() {
        assert_eq!(picked(2.0, 3.0, 6.0), 13);
    }
}
