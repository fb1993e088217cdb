//! The GStreamer side of ingest: an RTSP source whose video is depayloaded and parsed into whole
//! access units for the ring.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::camera::CameraError;
use super::transport::Lower;
use crate::support::gst::{self as gst_support, GstError, VideoCodec};

/// Builds and starts `config`'s RTSP pipeline; `on_sample` gets each access unit as it arrives,
/// on GStreamer's streaming thread.
pub fn rtsp(
    name: &str,
    url: &str,
    transport: Lower,
    mut on_sample: impl FnMut(gst::Sample) + Send + 'static,
) -> Result<gst::Pipeline, CameraError> {
    let pipeline = gst::Pipeline::with_name(&format!("ingest-{name}"));
    // Over TCP nothing arrives out of order, so the jitterbuffer need not hold packets back; over
    // UDP it reorders within 200 ms.
    let (protocols, latency_ms) = match transport {
        Lower::Tcp => ("tcp", 0u32),
        Lower::Udp => ("udp", 200u32),
    };
    let src = gst::ElementFactory::make("rtspsrc")
        .property("location", url)
        .property("latency", latency_ms)
        .property_from_str("buffer-mode", if latency_ms == 0 { "none" } else { "auto" })
        .property("timeout", 5_000_000u64)
        .property("tcp-timeout", 5_000_000u64)
        .property_from_str("protocols", protocols)
        .build()
        .map_err(GstError::from)?;
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .max_buffers(64)
        .drop(true)
        .build();
    pipeline.add_many([&src, sink.upcast_ref()]).map_err(GstError::from)?;

    let pipeline_weak = pipeline.downgrade();
    let sink_weak = sink.downgrade();
    let camera = name.to_owned();
    src.connect_pad_added(move |_, pad| {
        let (Some(pipeline), Some(sink)) = (pipeline_weak.upgrade(), sink_weak.upgrade()) else {
            return;
        };
        if let Err(e) = link_depayloader(&pipeline, pad, &sink) {
            tracing::warn!(%camera, error = %e, "cannot use this RTSP stream");
        }
    });
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                on_sample(sample);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    gst_support::play(&pipeline)?;
    Ok(pipeline)
}

/// Links a new rtspsrc pad through the depayloader and parser for its codec, into the appsink.
fn link_depayloader(pipeline: &gst::Pipeline, pad: &gst::Pad, sink: &gst_app::AppSink) -> Result<(), CameraError> {
    let fail = |message: &str| CameraError::Gst(GstError::Failed(message.into()));
    let caps = pad.current_caps().ok_or_else(|| fail("RTSP pad without caps"))?;
    let s = caps.structure(0).ok_or_else(|| fail("RTSP pad with empty caps"))?;
    if s.get::<&str>("media").ok() != Some("video") {
        return Ok(()); // audio and metadata streams are not needed
    }
    let encoding = s.get::<&str>("encoding-name").unwrap_or("").to_ascii_uppercase();
    let Some(codec) = VideoCodec::from_encoding(&encoding) else {
        return Err(fail(&format!(
            "unsupported video encoding {encoding:?}; expected H264 or H265"
        )));
    };
    if sink.static_pad("sink").is_some_and(|p| p.is_linked()) {
        return Ok(()); // only the first video stream is kept
    }
    let depay = gst_support::make(codec.depayloader())?;
    let parse = gst_support::make(codec.parser())?;
    // Without config-interval=-1 stored keyframes may lack SPS/PPS and could not be decoded later.
    parse.set_property("config-interval", -1i32);
    let filter = gst_support::make("capsfilter")?;
    filter.set_property("caps", codec.access_unit_caps().build());
    pipeline.add_many([&depay, &parse, &filter]).map_err(GstError::from)?;
    gst::Element::link_many([&depay, &parse, &filter, sink.upcast_ref()]).map_err(GstError::from)?;
    for e in [&depay, &parse, &filter] {
        e.sync_state_with_parent().map_err(GstError::from)?;
    }
    let sinkpad = depay
        .static_pad("sink")
        .ok_or_else(|| fail("depayloader without sink pad"))?;
    pad.link(&sinkpad)
        .map_err(|e| fail(&format!("cannot link RTSP pad: {e:?}")))?;
    Ok(())
}
