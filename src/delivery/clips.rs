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
#[error("clip {path}: {failure}")]
pub struct ClipError {
    path: String,
    failure: MuxError,
}

impl ClipError {
    /// What went wrong, without the clip's path.
    pub fn failure(&self) -> &MuxError {
        &self.failure
    }
}

/// What went wrong in writing a clip.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("cannot create the folder: {0}")]
    Folder(std::io::Error),
    /// The codec named by the slice's caps (None: no caps structure) is neither H.264 nor H.265.
    #[error("cannot mux {0:?} video")]
    Codec(Option<String>),
    #[error("{0}")]
    Launch(GstError),
    #[error("{0}")]
    Pipeline(&'static str),
    #[error("{0}")]
    State(GstError),
    #[error("no video in the window")]
    NoVideo,
    #[error("mux refused a packet: {0:?}")]
    Refused(gst::FlowError),
    #[error("{0}")]
    EndOfStream(gst::FlowError),
    #[error("{0}")]
    Muxer(GstError),
    #[error("muxing timed out")]
    Timeout,
    #[error("not written: {0}")]
    NotWritten(std::io::Error),
}

/// Writes `slice` as an MP4 file at `path`; returns its size in bytes.
pub fn remux_to_mp4(slice: &EncodedSlice, path: &Path) -> Result<u64, ClipError> {
    let fail = |failure: MuxError| ClipError {
        path: path.display().to_string(),
        failure,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(MuxError::Folder(e)))?;
    }
    let media_type = slice.caps.structure(0).map(|s| s.name().as_str());
    let Some(codec) = media_type.and_then(VideoCodec::from_media_type) else {
        return Err(fail(MuxError::Codec(media_type.map(str::to_owned))));
    };
    let pipeline = gst_support::launch(&format!(
        "appsrc name=src format=time is-live=false ! {} ! mp4mux ! filesink name=out",
        codec.parser()
    ))
    .map_err(|e| fail(MuxError::Launch(e)))?;
    let result = run_mux(&pipeline, slice, path).map_err(fail);
    gst_support::stop(&pipeline);
    result?;
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| fail(MuxError::NotWritten(e)))
}

fn run_mux(pipeline: &gst::Pipeline, slice: &EncodedSlice, path: &Path) -> Result<(), MuxError> {
    let src = gst_support::app_src(pipeline, "src").map_err(MuxError::Launch)?;
    let out = pipeline.by_name("out").ok_or(MuxError::Pipeline("filesink missing"))?;
    out.set_property("location", path.display().to_string());
    src.set_caps(Some(&slice.caps));
    gst_support::play(pipeline).map_err(MuxError::State)?;
    let Some(first) = slice.units.first() else {
        return Err(MuxError::NoVideo);
    };
    // Arrival times become the timeline: the camera's own timestamps are not kept in the ring.
    for unit in &slice.units {
        let offset = (unit.wall - first.wall).num_microseconds().unwrap_or(0).max(0) as u64;
        let mut buffer = unit.buffer.copy();
        let b = buffer.make_mut();
        b.set_pts(gst::ClockTime::from_useconds(offset));
        b.set_dts(gst::ClockTime::from_useconds(offset));
        b.set_duration(gst::ClockTime::NONE);
        src.push_buffer(buffer).map_err(MuxError::Refused)?;
    }
    src.end_of_stream().map_err(MuxError::EndOfStream)?;
    gst_support::wait_for_eos(pipeline, MUX_TIMEOUT).map_err(|e| match e {
        GstError::TimedOut => MuxError::Timeout,
        other => MuxError::Muxer(other),
    })
}
