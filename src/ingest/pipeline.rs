//! The GStreamer side of ingest: an RTSP source whose video is depayloaded and parsed into whole
//! access units for the ring, and bus messages turned into one line without passwords.

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::camera::CameraError;
use crate::config::{RtspTransport, redact_url};

/// Builds and starts `config`'s RTSP pipeline; `on_sample` gets each access unit as it arrives,
/// on GStreamer's streaming thread.
pub fn rtsp(
    name: &str,
    url: &str,
    transport: RtspTransport,
    mut on_sample: impl FnMut(gst::Sample) + Send + 'static,
) -> Result<gst::Pipeline, CameraError> {
    let gst_err = |e: &dyn std::fmt::Display| CameraError::Gst(e.to_string());
    let pipeline = gst::Pipeline::with_name(&format!("ingest-{name}"));
    // Over TCP nothing arrives out of order, so the jitterbuffer need not hold packets back; over
    // UDP it reorders within 200 ms.
    let (protocols, latency_ms) = match transport {
        RtspTransport::Tcp => ("tcp", 0u32),
        RtspTransport::Udp => ("udp", 200u32),
    };
    let src = gst::ElementFactory::make("rtspsrc")
        .property("location", url)
        .property("latency", latency_ms)
        .property_from_str("buffer-mode", if latency_ms == 0 { "none" } else { "auto" })
        .property("timeout", 5_000_000u64)
        .property("tcp-timeout", 5_000_000u64)
        .property_from_str("protocols", protocols)
        .build()
        .map_err(|e| gst_err(&e))?;
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .max_buffers(64)
        .drop(true)
        .build();
    pipeline.add_many([&src, sink.upcast_ref()]).map_err(|e| gst_err(&e))?;

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
    pipeline.set_state(gst::State::Playing).map_err(|e| gst_err(&e))?;
    Ok(pipeline)
}

/// Links a new rtspsrc pad through the depayloader and parser for its codec, into the appsink.
fn link_depayloader(pipeline: &gst::Pipeline, pad: &gst::Pad, sink: &gst_app::AppSink) -> Result<(), CameraError> {
    let caps = pad
        .current_caps()
        .ok_or_else(|| CameraError::Gst("RTSP pad without caps".into()))?;
    let s = caps
        .structure(0)
        .ok_or_else(|| CameraError::Gst("RTSP pad with empty caps".into()))?;
    if s.get::<&str>("media").ok() != Some("video") {
        return Ok(()); // audio and metadata streams are not needed
    }
    let encoding = s.get::<&str>("encoding-name").unwrap_or("").to_ascii_uppercase();
    let (depay, parse, caps) = match encoding.as_str() {
        "H264" => (
            "rtph264depay",
            "h264parse",
            "video/x-h264,stream-format=byte-stream,alignment=au",
        ),
        "H265" => (
            "rtph265depay",
            "h265parse",
            "video/x-h265,stream-format=byte-stream,alignment=au",
        ),
        other => {
            return Err(CameraError::Gst(format!(
                "unsupported video encoding {other:?}; expected H264 or H265"
            )));
        }
    };
    if sink.static_pad("sink").is_some_and(|p| p.is_linked()) {
        return Ok(()); // only the first video stream is kept
    }
    let make = |name: &str| {
        gst::ElementFactory::make(name)
            .build()
            .map_err(|e| CameraError::Gst(e.to_string()))
    };
    let depay = make(depay)?;
    let parse = make(parse)?;
    // Without config-interval=-1 stored keyframes may lack SPS/PPS and could not be decoded later.
    parse.set_property("config-interval", -1i32);
    let caps: gst::Caps = caps
        .parse()
        .map_err(|e: glib::BoolError| CameraError::Gst(e.to_string()))?;
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", caps)
        .build()
        .map_err(|e| CameraError::Gst(e.to_string()))?;
    pipeline
        .add_many([&depay, &parse, &filter])
        .map_err(|e| CameraError::Gst(e.to_string()))?;
    gst::Element::link_many([&depay, &parse, &filter, sink.upcast_ref()])
        .map_err(|e| CameraError::Gst(e.to_string()))?;
    for e in [&depay, &parse, &filter] {
        e.sync_state_with_parent()
            .map_err(|e| CameraError::Gst(e.to_string()))?;
    }
    let sinkpad = depay
        .static_pad("sink")
        .ok_or_else(|| CameraError::Gst("depayloader without sink pad".into()))?;
    pad.link(&sinkpad)
        .map_err(|e| CameraError::Gst(format!("cannot link RTSP pad: {e:?}")))?;
    Ok(())
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

    #[test]
    fn passwords_in_gstreamer_text_are_hidden() {
        let s = redact_in_text("Could not open resource rtsp://u:hunter2@cam/s for reading");
        assert!(!s.contains("hunter2") && s.contains("cam/s"), "{s}");
    }
}
