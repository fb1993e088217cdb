//! `[clip]`: the window of video analysed around an alarm, and how much each camera buffers.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClipConfig {
    /// Seconds of video analysed before the alarm time.
    pub pre_s: f64,
    /// Seconds of video analysed after the alarm time.
    pub post_s: f64,
    /// Frames per second analysed once a target candidate is in view.
    pub analysis_fps: f64,
    /// Frames per second analysed while nothing is in view: most alarms are false, and have nothing
    /// to confirm.
    pub coarse_fps: f64,
    /// `auto` (a hardware decoder when one works, else software), `software`, or a GStreamer
    /// decoder element's name.
    pub decoder: String,
    /// Seconds of encoded video each camera keeps in memory.
    pub buffer_s: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            pre_s: 2.0,
            post_s: 4.0,
            analysis_fps: 3.0,
            coarse_fps: 1.0,
            decoder: "auto".into(),
            buffer_s: 10.0,
        }
    }
}
