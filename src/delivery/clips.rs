//! Alarm clips: the alarm window's stored packets remuxed to MP4 (`mp4mux`) without re-encoding,
//! kept as files in the store's `clips/` folder.

use std::path::Path;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::ingest::ring::EncodedSlice;

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
    let parser = match slice.caps.structure(0).map(|s| s.name().as_str()) {
        Some("video/x-h264") => "h264parse",
        Some("video/x-h265") => "h265parse",
        other => return Err(fail(format!("cannot mux {other:?} video"))),
    };
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time is-live=false ! {parser} ! mp4mux ! filesink name=out"
    ))
    .map_err(|e| fail(e.to_string()))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| fail("not a pipeline".into()))?;
    let result = run_mux(&pipeline, slice, path).map_err(fail);
    let _ = pipeline.set_state(gst::State::Null);
    result?;
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| fail(format!("not written: {e}")))
}

fn run_mux(pipeline: &gst::Pipeline, slice: &EncodedSlice, path: &Path) -> Result<(), String> {
    let src = pipeline
        .by_name("src")
        .and_downcast::<gst_app::AppSrc>()
        .ok_or("appsrc missing")?;
    let out = pipeline.by_name("out").ok_or("filesink missing")?;
    out.set_property("location", path.display().to_string());
    src.set_caps(Some(&slice.caps));
    pipeline.set_state(gst::State::Playing).map_err(|e| e.to_string())?;
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
    let bus = pipeline.bus().ok_or("no bus")?;
    match bus.timed_pop_filtered(MUX_TIMEOUT, &[gst::MessageType::Eos, gst::MessageType::Error]) {
        Some(msg) => match msg.view() {
            gst::MessageView::Eos(_) => Ok(()),
            gst::MessageView::Error(e) => Err(e.error().to_string()),
            _ => Err("unexpected message".into()),
        },
        None => Err("muxing timed out".into()),
    }
}
