//! The GStreamer helpers that ingest, analysis, delivery and the tools share: starting GStreamer,
//! pipelines from a launch line and their app elements, starting and stopping them, waiting for
//! the end of a stream, bus errors in one line without passwords, and the elements and caps of
//! each video codec the service handles. What a stage builds with them stays in the stage.

use chrono::TimeDelta;
use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::config::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum GstError {
    /// GStreamer's own word: an element, a launch line, a state change or the stream failed.
    #[error("{0}")]
    Failed(String),
    #[error("not a pipeline")]
    NotAPipeline,
    /// A named element the pipeline should hold, by kind: "appsrc missing".
    #[error("{0} missing")]
    Missing(&'static str),
    #[error("no bus")]
    NoBus,
    #[error("timed out")]
    TimedOut,
    #[error("unexpected message")]
    Unexpected,
}

impl From<glib::Error> for GstError {
    fn from(e: glib::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<glib::BoolError> for GstError {
    fn from(e: glib::BoolError) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<gst::StateChangeError> for GstError {
    fn from(e: gst::StateChangeError) -> Self {
        Self::Failed(e.to_string())
    }
}

/// Starts GStreamer (again at no cost once it runs).
pub fn init() -> Result<(), GstError> {
    Ok(gst::init()?)
}

/// A pipeline from a `gst-launch` line.
pub fn launch(description: &str) -> Result<gst::Pipeline, GstError> {
    gst::parse::launch(description)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| GstError::NotAPipeline)
}

/// A new element of factory `name`.
pub fn make(name: &str) -> Result<gst::Element, GstError> {
    Ok(gst::ElementFactory::make(name).build()?)
}

/// Whether an element exists and can be brought up (a hardware one needs its device).
pub fn element_starts(name: &str) -> bool {
    let Ok(element) = make(name) else {
        return false;
    };
    let ok = element.set_state(gst::State::Ready).is_ok();
    let _ = element.set_state(gst::State::Null);
    ok
}

/// The appsrc called `name` in `pipeline`.
pub fn app_src(pipeline: &gst::Pipeline, name: &str) -> Result<gst_app::AppSrc, GstError> {
    pipeline
        .by_name(name)
        .and_downcast::<gst_app::AppSrc>()
        .ok_or(GstError::Missing("appsrc"))
}

/// The appsink called `name` in `pipeline`.
pub fn app_sink(pipeline: &gst::Pipeline, name: &str) -> Result<gst_app::AppSink, GstError> {
    pipeline
        .by_name(name)
        .and_downcast::<gst_app::AppSink>()
        .ok_or(GstError::Missing("appsink"))
}

/// Sets `pipeline` playing.
pub fn play(pipeline: &gst::Pipeline) -> Result<(), GstError> {
    pipeline.set_state(gst::State::Playing)?;
    Ok(())
}

/// Stops `pipeline` and frees its resources; a failure on the way down leaves nothing to do.
pub fn stop(pipeline: &gst::Pipeline) {
    let _ = pipeline.set_state(gst::State::Null);
}

/// Waits up to `timeout` for `pipeline`'s stream to end: Ok at end-of-stream, else the stream's
/// error, or [`GstError::TimedOut`].
pub fn wait_for_eos(pipeline: &gst::Pipeline, timeout: gst::ClockTime) -> Result<(), GstError> {
    let bus = pipeline.bus().ok_or(GstError::NoBus)?;
    let Some(msg) = bus.timed_pop_filtered(timeout, &[gst::MessageType::Eos, gst::MessageType::Error]) else {
        return Err(GstError::TimedOut);
    };
    match msg.view() {
        gst::MessageView::Eos(_) => Ok(()),
        gst::MessageView::Error(e) => Err(GstError::Failed(e.error().to_string())),
        _ => Err(GstError::Unexpected),
    }
}

/// The error `pipeline` has posted, if any, as one line.
pub fn pending_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    bus.pop_filtered(&[gst::MessageType::Error])
        .map(|m| describe_bus_message(&m))
}

/// One line from an error or end-of-stream message, with a camera URL's password hidden.
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

/// A span of time as a stream time; negative spans are zero.
pub fn clock_time(d: TimeDelta) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(d.num_nanoseconds().unwrap_or(0).max(0) as u64)
}

/// The video codecs the service takes from cameras, and GStreamer's names for their parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    H265,
}

impl VideoCodec {
    /// From an encoding name as RTSP and SDP give it, in any case: `H264`, `h265`.
    pub fn from_encoding(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("h264") {
            Some(Self::H264)
        } else if name.eq_ignore_ascii_case("h265") {
            Some(Self::H265)
        } else {
            None
        }
    }

    /// From a caps media type: `video/x-h264`.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        [Self::H264, Self::H265]
            .into_iter()
            .find(|c| c.media_type() == media_type)
    }

    /// The codec of the first structure of `caps`.
    pub fn of_caps(caps: &gst::CapsRef) -> Option<Self> {
        Self::from_media_type(caps.structure(0)?.name().as_str())
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Self::H264 => "video/x-h264",
            Self::H265 => "video/x-h265",
        }
    }

    pub fn parser(self) -> &'static str {
        match self {
            Self::H264 => "h264parse",
            Self::H265 => "h265parse",
        }
    }

    pub fn depayloader(self) -> &'static str {
        match self {
            Self::H264 => "rtph264depay",
            Self::H265 => "rtph265depay",
        }
    }

    /// Caps of whole access units in Annex B, as the ring stores them and the decoders take them;
    /// fields may be added before `build()`.
    pub fn access_unit_caps(self) -> gst::caps::Builder<gst::caps::NoFeature> {
        gst::Caps::builder(self.media_type())
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_gstreamer_text_are_hidden() {
        let s = redact_in_text("Could not open resource rtsp://u:hunter2@cam/s for reading");
        assert!(!s.contains("hunter2") && s.contains("cam/s"), "{s}");
    }

    #[test]
    fn codecs_are_known_by_encoding_and_media_type() {
        assert_eq!(VideoCodec::from_encoding("H265"), Some(VideoCodec::H265));
        assert_eq!(VideoCodec::from_encoding("h264"), Some(VideoCodec::H264));
        assert_eq!(VideoCodec::from_encoding("MP4V-ES"), None);
        assert_eq!(VideoCodec::from_media_type("video/x-h264"), Some(VideoCodec::H264));
        assert_eq!(VideoCodec::from_media_type("video/x-vp8"), None);
    }
}
