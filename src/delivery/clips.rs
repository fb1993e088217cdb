//! Alarm clips: the alarm window's stored packets remuxed to MP4 (`mp4mux`) without re-encoding,
//! kept as files in the store's `clips/` folder.

use std::path::Path;

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::ingest::ring::EncodedSlice;
use crate::support::gst::{self as gst_support, GstError, VideoCodec};

/// How long muxing a clip may take; a few seconds of packets take milliseconds.
const MUX_TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(20);

#[derive(Debug, thiserror::Error)]
#[error("clip {path}: {message}")]
pub struct ClipError {
    path: String,
    message: String,
}

/// Writes `slice` as an MP4 file at `path`; returns its size in bytes.
pub fn remux_to_mp4(slice: &EncodedSlice, path: &Path) -> Result<u64, ClipError> {
    let fail = |message: String| ClipError {
        path: path.display().to_string(),
        message,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create the folder: {e}")))?;
    }
    let media_type = slice.caps.structure(0).map(|s| s.name().as_str());
    let Some(codec) = media_type.and_then(VideoCodec::from_media_type) else {
        return Err(fail(format!("cannot mux {media_type:?} video")));
    };
    let pipeline = gst_support::launch(&format!(
        "appsrc name=src format=time is-live=false ! {} ! mp4mux ! filesink name=out",
        codec.parser()
    ))
    .map_err(|e| fail(e.to_string()))?;
    let result = run_mux(&pipeline, slice, path).map_err(fail);
    gst_support::stop(&pipeline);
    result?;
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| fail(format!("not written: {e}")))
}

fn run_mux(pipeline: &gst::Pipeline, slice: &EncodedSlice, path: &Path) -> Result<(), String> {
    let src = gst_support::app_src(pipeline, "src").map_err(|e| e.to_string())?;
    let out = pipeline.by_name("out").ok_or("filesink missing")?;
    out.set_property("location", path.display().to_string());
    src.set_caps(Some(&slice.caps));
    gst_support::play(pipeline).map_err(|e| e.to_string())?;
    let Some(first) = slice.units.first() else {
        return Err("no video in the window".into());
    };
    // Arrival times become the timeline: the camera's own timestamps are not kept in the ring.
    for unit in &slice.units {
        let offset = (unit.wall - first.wall).num_microseconds().unwrap_or(0).max(0) as u64;
        let mut buffer = unit.buffer.copy();
        let b = buffer.make_mut();
        b.set_pts(gst::ClockTime::from_useconds(offset));
        b.set_dts(gst::ClockTime::from_useconds(offset));
        b.set_duration(gst::ClockTime::NONE);
        src.push_buffer(buffer)
            .map_err(|e| format!("mux refused a packet: {e:?}"))?;
    }
    src.end_of_stream().map_err(|e| e.to_string())?;
    gst_support::wait_for_eos(pipeline, MUX_TIMEOUT).map_err(|e| match e {
        GstError::TimedOut => "muxing timed out".into(),
        other => other.to_string(),
    })
}
