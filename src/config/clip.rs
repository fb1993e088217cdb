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
    /// Bytes each of a camera's streams may hold in memory; unset: sized from `buffer_s` (see
    /// [`ClipConfig::ring_byte_cap`]). Past it the oldest video goes and the stream is degraded.
    pub max_ring_bytes: Option<u64>,
}

/// The bitrate the default ring cap is sized for: a main stream at 8 Mbit/s (4K H.265, 1080p H.264
/// at high quality).
const RING_SIZING_BITS_PER_S: f64 = 8_000_000.0;
/// Headroom over `buffer_s` at that bitrate: the window is pruned a GOP at a time, so a ring holds
/// up to a GOP beyond it.
const RING_HEADROOM: f64 = 2.0;
/// A configured cap below this is a config error: a ring this small holds no useful video.
pub const MIN_RING_BYTES: u64 = 1024 * 1024;
/// The default cap is never below this.
const RING_MIN_BYTES: u64 = 16 * 1024 * 1024;

impl ClipConfig {
    /// The byte cap of each ring: `max_ring_bytes`, or 8 Mbit/s for `buffer_s`, twice over, and at
    /// least 16 MiB (20 MB for the default 10 s).
    pub fn ring_byte_cap(&self) -> usize {
        let sized = (RING_SIZING_BITS_PER_S / 8.0 * self.buffer_s * RING_HEADROOM) as u64;
        let cap = self.max_ring_bytes.unwrap_or(sized.max(RING_MIN_BYTES));
        usize::try_from(cap).unwrap_or(usize::MAX)
    }
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
            max_ring_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_cap_is_sized_from_the_buffer_unless_set() {
        let mut clip = ClipConfig::default();
        assert_eq!(clip.ring_byte_cap(), 20_000_000, "8 Mbit/s x 10 s x 2");
        clip.buffer_s = 3.0;
        assert_eq!(clip.ring_byte_cap(), 16 * 1024 * 1024, "never below 16 MiB by default");
        clip.max_ring_bytes = Some(5_000_000);
        assert_eq!(clip.ring_byte_cap(), 5_000_000);
    }
}
