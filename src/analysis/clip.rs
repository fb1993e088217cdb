//! Decoding the clip around an alarm into frames at the analysis rate.
//!
//! Two sources feed the same decode tail: a slice of a camera's encoded ring buffer (live service)
//! and a video file (`verify-clip`). Frames are handed to a callback one at a time so that a long
//! or high-resolution clip never has to sit in memory decoded.

use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use image::RgbImage;

use crate::ingest::pipeline::describe_bus_message;
use crate::ingest::ring::EncodedSlice;

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("GStreamer: {0}")]
    Gst(String),
    #[error("{path}: cannot open the video file: {reason}")]
    File { path: String, reason: String },
    #[error("cannot decode the clip: {0}")]
    Decode(String),
    #[error("unsupported stream {0:?}; expected H.264 or H.265")]
    Codec(String),
    #[error("{0}")]
    Consumer(String),
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

/// Decodes a camera slice, calling `on_frame` for each frame in the window at the analysis rate.
/// Returns the number of frames delivered.
pub fn decode_slice(
    slice: &EncodedSlice,
    window: Window,
    on_frame: impl FnMut(Frame) -> Result<(), String>,
) -> Result<usize, ClipError> {
    let codec = slice
        .caps
        .structure(0)
        .map(|s| s.name().to_string())
        .unwrap_or_default();
    let (parse, decoder) = match codec.as_str() {
        "video/x-h264" => ("h264parse", "avdec_h264"),
        "video/x-h265" => ("h265parse", "avdec_h265"),
        _ => return Err(ClipError::Codec(codec)),
    };
    let head = format!("appsrc name=src format=time is-live=false ! {parse} ! {decoder}");
    let pipeline = build_decoder(&head)?;
    let src = pipeline
        .by_name("src")
        .and_downcast::<gst_app::AppSrc>()
        .ok_or_else(|| ClipError::Gst("appsrc missing".into()))?;
    src.set_caps(Some(&slice.caps));

    let Some(first) = slice.units.first() else {
        return Ok(0);
    };
    let base_wall = first.wall;
    let base_pts = first.buffer.pts();
    // Timestamps are rebased to zero; the wall time of a frame is base_wall + its PTS.
    let buffers: Vec<gst::Buffer> = slice
        .units
        .iter()
        .map(|u| {
            let offset = match (u.buffer.pts(), base_pts) {
                (Some(p), Some(b)) if p >= b => p - b,
                _ => clock_time(u.wall - base_wall),
            };
            let mut b = u.buffer.copy();
            let bm = b.make_mut();
            bm.set_pts(offset);
            bm.set_dts(gst::ClockTime::NONE);
            b
        })
        .collect();

    std::thread::scope(|scope| {
        let feeder = scope.spawn(|| {
            for b in buffers {
                if src.push_buffer(b).is_err() {
                    break; // the pipeline stopped; the pull side reports why
                }
            }
            let _ = src.end_of_stream();
        });
        let result = pull_frames(&pipeline, window, base_wall, on_frame);
        let _ = pipeline.set_state(gst::State::Null);
        let _ = feeder.join();
        result
    })
}

/// Decodes a video file, treating second `alarm_at` of the file as the alarm time `window` is
/// built around. `base_wall` is the wall time given to the file's first frame.
pub fn decode_file(
    path: &Path,
    base_wall: DateTime<Utc>,
    window: Window,
    on_frame: impl FnMut(Frame) -> Result<(), String>,
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
    let result = pull_frames(&pipeline, window, base_wall, on_frame);
    let _ = pipeline.set_state(gst::State::Null);
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
        Ok(())
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
    gst::parse::launch(&desc)
        .map_err(|e| ClipError::Gst(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| ClipError::Gst("not a pipeline".into()))
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

fn pull_frames(
    pipeline: &gst::Pipeline,
    window: Window,
    base_wall: DateTime<Utc>,
    mut on_frame: impl FnMut(Frame) -> Result<(), String>,
) -> Result<usize, ClipError> {
    let sink = pipeline
        .by_name("sink")
        .and_downcast::<gst_app::AppSink>()
        .ok_or_else(|| ClipError::Gst("appsink missing".into()))?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| ClipError::Gst(e.to_string()))?;
    let mut picker = FramePicker::new(window);
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
        let Some(buffer) = sample.buffer() else { continue };
        let time = base_wall
            + buffer
                .pts()
                .map(|p| TimeDelta::nanoseconds(p.nseconds() as i64))
                .unwrap_or_default();
        if time > window.to {
            break;
        }
        if !picker.take(time) {
            continue;
        }
        let image = converter.convert(&sample)?;
        on_frame(Frame { image, time }).map_err(ClipError::Consumer)?;
        delivered += 1;
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

fn pending_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    bus.pop_filtered(&[gst::MessageType::Error])
        .map(|m| describe_bus_message(&m))
}

fn clock_time(d: TimeDelta) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(d.num_nanoseconds().unwrap_or(0).max(0) as u64)
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
