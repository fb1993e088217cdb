//! The encoded ring buffer: the last seconds of one stream as complete access units, always
//! starting at a keyframe, so that any slice of it can be decoded on its own.
//!
//! Nothing is decoded here. Keeping packets costs almost no CPU, so one box can hold many cameras
//! and spend CPU only on the alarms (see DESIGN.md, "Ingest keeps encoded video").
//!
//! The window is pruned a whole GOP at a time, when a keyframe comes; a byte cap bounds the ring
//! when keyframes stop coming (or the bitrate is above what the cap was sized for). Past the cap
//! the oldest units go, then those up to the next keyframe, and the ring says it is degraded.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use gstreamer as gst;

use crate::support::gst::VideoCodec;

/// One complete encoded frame as it came off the wire.
#[derive(Clone)]
pub struct AccessUnit {
    pub buffer: gst::Buffer,
    /// When it arrived, which is how alarm times are matched to video.
    pub wall: DateTime<Utc>,
    pub keyframe: bool,
    /// Position in the stream, counting every unit pushed; readers continue from it.
    pub seq: u64,
}

/// A run of access units that starts at a keyframe, with the caps needed to decode it.
pub struct EncodedSlice {
    pub caps: gst::Caps,
    pub units: Vec<AccessUnit>,
}

/// Each unit counts against the byte cap as its bytes plus this, for the buffer around them: a
/// flood of tiny units is bounded too.
const UNIT_OVERHEAD: usize = 256;

/// The encoded ring buffer: the last `window` of a camera's stream, always starting at a keyframe,
/// and never over `max_bytes`.
pub struct Ring {
    units: VecDeque<AccessUnit>,
    caps: Option<gst::Caps>,
    window: TimeDelta,
    next_seq: u64,
    /// Changes whenever the stream breaks (cleared, new caps): a reader's position is then lost.
    generation: u64,
    max_bytes: usize,
    /// What the units held count against `max_bytes`.
    bytes: usize,
    last_keyframe: Option<DateTime<Utc>>,
    /// Set while the cap has dropped video within the last window.
    over_cap: Option<OverCap>,
}

/// The ring dropped video to stay under its byte cap: why, and when it last did.
struct OverCap {
    reason: String,
    last: DateTime<Utc>,
}

/// Why a reader cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The stream broke since the cursor was taken: cleared (offline) or new stream parameters.
    Broken,
    /// The units after the cursor have left the buffer: the reader fell too far behind.
    Gone,
}

/// Where a reader of the ring stands: the stream's generation and the last unit it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub generation: u64,
    pub seq: u64,
}

impl Ring {
    /// A ring keeping `window` of video in at most `max_bytes`.
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        Self {
            units: VecDeque::new(),
            caps: None,
            window: TimeDelta::from_std(window).unwrap_or(TimeDelta::seconds(10)),
            next_seq: 0,
            generation: 0,
            max_bytes,
            bytes: 0,
            last_keyframe: None,
            over_cap: None,
        }
    }

    /// Adds a unit; its `seq` is assigned here.
    pub fn push(&mut self, mut unit: AccessUnit, caps: Option<&gst::CapsRef>) {
        if let Some(caps) = caps
            && self.caps.as_deref() != Some(caps)
        {
            // New stream parameters: old units cannot be decoded with the new caps.
            self.clear();
            self.caps = Some(caps.to_owned());
        }
        let newest = unit.wall;
        if self.units.is_empty() && !unit.keyframe {
            // A slice must start at a keyframe. Still waiting for one after the cap emptied the
            // ring: still degraded.
            if let Some(over) = &mut self.over_cap {
                over.last = newest;
            }
            return;
        }
        unit.seq = self.next_seq;
        self.next_seq += 1;
        let prune = unit.keyframe;
        if unit.keyframe {
            self.last_keyframe = Some(newest);
        }
        self.bytes += cost(&unit);
        self.units.push_back(unit);
        if prune {
            self.prune(newest);
        }
        if self.bytes > self.max_bytes {
            self.drop_over_cap(newest);
        }
        if self
            .over_cap
            .as_ref()
            .is_some_and(|over| newest - over.last > self.window)
        {
            self.over_cap = None;
        }
    }

    /// Drops whole GOPs that end before the window, keeping the keyframe that precedes it.
    fn prune(&mut self, newest: DateTime<Utc>) {
        let cutoff = newest - self.window;
        let keep_from = self
            .units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.keyframe && u.wall <= cutoff)
            .map(|(i, _)| i)
            .next_back();
        if let Some(i) = keep_from {
            self.drop_oldest(i);
        }
    }

    /// Drops the oldest units until the ring is under its cap, even mid-GOP, and then those that
    /// can no longer be decoded, up to the next keyframe (all of them when none is buffered).
    fn drop_over_cap(&mut self, newest: DateTime<Utc>) {
        let reason = match self.over_cap.take() {
            Some(over) => over.reason,
            None => self.over_cap_reason(newest),
        };
        let mut n = 0;
        let mut left = self.bytes;
        for unit in &self.units {
            if left <= self.max_bytes && unit.keyframe {
                break;
            }
            left -= cost(unit);
            n += 1;
        }
        self.drop_oldest(n);
        self.over_cap = Some(OverCap { reason, last: newest });
    }

    /// Why the cap was reached: one GOP fills it (the keyframes stopped), or the stream carries more
    /// than the cap holds for the window.
    fn over_cap_reason(&self, newest: DateTime<Utc>) -> String {
        let cap = self.max_bytes;
        let one_gop = self.units.iter().filter(|u| u.keyframe).count() <= 1;
        match self.last_keyframe {
            Some(_) if !one_gop => format!(
                "ring over its byte cap of {cap} bytes (clip.max_ring_bytes): the stream carries more than the \
                 cap holds for clip.buffer_s; the oldest video was dropped"
            ),
            Some(k) => format!(
                "ring over its byte cap of {cap} bytes (clip.max_ring_bytes): no keyframe for {} s; the oldest \
                 video was dropped",
                (newest - k).num_seconds()
            ),
            None => format!("ring over its byte cap of {cap} bytes (clip.max_ring_bytes): no keyframe yet"),
        }
    }

    fn drop_oldest(&mut self, n: usize) {
        for unit in self.units.drain(..n) {
            self.bytes = self.bytes.saturating_sub(cost(&unit));
        }
    }

    /// Why the stream is degraded: the byte cap dropped video within the last window.
    pub fn degraded(&self) -> Option<&str> {
        self.over_cap.as_ref().map(|over| over.reason.as_str())
    }

    /// What the buffered units count against the byte cap.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds `continuation`, the rest of the last unit's picture (a later slice split off by
    /// repeated parameter sets), to that unit, from its first slice NAL on: one picture, one unit.
    pub fn extend_last(&mut self, continuation: &[u8]) {
        let h265 = self.caps.as_ref().and_then(|c| VideoCodec::of_caps(c)) == Some(VideoCodec::H265);
        let Some(start) = first_slice_nal(continuation, h265) else {
            return;
        };
        let Some(last) = self.units.back_mut() else {
            return; // nothing to continue: its start was never stored
        };
        let mut merged = last.buffer.copy();
        merged
            .make_mut()
            .append_memory(gst::Memory::from_mut_slice(continuation[start..].to_vec()));
        last.buffer = merged;
        // Counted here, capped at the next push.
        self.bytes += continuation.len() - start;
    }

    pub fn clear(&mut self) {
        self.units.clear();
        self.bytes = 0;
        self.last_keyframe = None;
        self.over_cap = None;
        self.generation += 1;
    }

    /// Arrival time of the buffered keyframe nearest `time`.
    pub fn keyframe_near(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.units
            .iter()
            .filter(|u| u.keyframe)
            .min_by_key(|u| (u.wall - time).abs())
            .map(|u| u.wall)
    }

    pub fn caps(&self) -> Option<gst::Caps> {
        self.caps.clone()
    }

    /// A cursor just before the keyframe at or before `from` (or the oldest buffered one), for a
    /// reader that decodes from there; None while nothing is buffered.
    pub fn cursor_before(&self, from: DateTime<Utc>) -> Option<Cursor> {
        let start = self
            .units
            .iter()
            .rfind(|u| u.keyframe && u.wall <= from)
            .or_else(|| self.units.front())?;
        Some(Cursor {
            generation: self.generation,
            seq: start.seq.wrapping_sub(1),
        })
    }

    /// The units after `cursor`, except the newest one, which a split-off slice may still complete;
    /// the cursor moves past them.
    pub fn read(&self, cursor: &mut Cursor) -> Result<Vec<AccessUnit>, ReadError> {
        if cursor.generation != self.generation {
            return Err(ReadError::Broken);
        }
        let Some(first) = self.units.front().map(|u| u.seq) else {
            return Err(ReadError::Broken);
        };
        let wanted = cursor.seq.wrapping_add(1);
        if wanted < first {
            return Err(ReadError::Gone);
        }
        let units: Vec<AccessUnit> = self
            .units
            .iter()
            .skip((wanted - first) as usize)
            .take(self.units.len().saturating_sub(1 + (wanted - first) as usize))
            .cloned()
            .collect();
        if let Some(last) = units.last() {
            cursor.seq = last.seq;
        }
        Ok(units)
    }

    pub fn newest(&self) -> Option<DateTime<Utc>> {
        self.units.back().map(|u| u.wall)
    }

    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        self.units.front().map(|u| u.wall)
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The units covering `[from, to]`, starting at the last keyframe at or before `from`
    /// (or the oldest buffered keyframe when `from` is older than the buffer).
    pub fn slice(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<EncodedSlice> {
        let caps = self.caps.clone()?;
        let start = self
            .units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.keyframe && u.wall <= from)
            .map(|(i, _)| i)
            .next_back()
            .unwrap_or(0);
        let units: Vec<AccessUnit> = self
            .units
            .iter()
            .skip(start)
            .take_while(|u| u.wall <= to)
            .cloned()
            .collect();
        if units.is_empty() || units.last().is_some_and(|u| u.wall < from) {
            return None;
        }
        Some(EncodedSlice { caps, units })
    }
}

/// What a unit counts against the ring's byte cap.
fn cost(unit: &AccessUnit) -> usize {
    unit.buffer.size() + UNIT_OVERHEAD
}

/// Offset of the start code of the first coded-slice NAL in an Annex B byte stream (H.264 types
/// 1-5, H.265 types 0-31): what comes before it (AUD, SPS, PPS, SEI) describes the picture and is
/// already in the unit being continued.
fn first_slice_nal(data: &[u8], h265: bool) -> Option<usize> {
    let mut i = 0;
    while i + 3 < data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            let header = data[i + 3];
            let is_slice = if h265 {
                (header >> 1) & 0x3f <= 31
            } else {
                (1..=5).contains(&(header & 0x1f))
            };
            if is_slice {
                // Keep a four-byte start code whole.
                return Some(if i > 0 && data[i - 1] == 0 { i - 1 } else { i });
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(t: i64, keyframe: bool) -> AccessUnit {
        AccessUnit {
            buffer: gst::Buffer::new(),
            wall: DateTime::from_timestamp(t, 0).unwrap_or_default(),
            keyframe,
            seq: 0,
        }
    }

    fn ts(t: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(t, 0).unwrap_or_default()
    }

    fn ring_with(window_s: u64, seq: &[(i64, bool)]) -> Ring {
        let _ = gst::init();
        let caps = gst::Caps::builder("video/x-h264").build();
        let mut ring = Ring::new(Duration::from_secs(window_s), usize::MAX);
        for &(t, k) in seq {
            ring.push(unit(t, k), Some(caps.as_ref()));
        }
        ring
    }

    #[test]
    fn ring_starts_at_keyframe_and_keeps_window() {
        // Keyframe every 3 s, one unit a second.
        let seq: Vec<(i64, bool)> = (0..30).map(|t| (t, t % 3 == 0)).collect();
        let ring = ring_with(10, &seq);
        let oldest = ring.oldest().unwrap_or_default();
        assert!(oldest <= ts(29 - 10), "window not covered: oldest {oldest}");
        // Pruning happens when a keyframe arrives, so up to two GOPs beyond the window may remain.
        assert!(
            oldest > ts(29 - 10 - 2 * 3),
            "kept more than two GOPs beyond the window: {oldest}"
        );
        assert!(ring.units.front().is_some_and(|u| u.keyframe));
    }

    fn sized_unit(t_ms: i64, keyframe: bool, bytes: usize) -> AccessUnit {
        AccessUnit {
            buffer: gst::Buffer::from_mut_slice(vec![0u8; bytes]),
            wall: DateTime::from_timestamp_millis(t_ms).unwrap_or_default(),
            keyframe,
            seq: 0,
        }
    }

    #[test]
    fn a_ring_fed_no_keyframe_stays_under_its_cap_and_works_again_when_keyframes_come() {
        let _ = gst::init();
        let caps = gst::Caps::builder("video/x-h264").build();
        let cap = 200_000;
        let mut ring = Ring::new(Duration::from_secs(10), cap);
        // One keyframe, then 60 s of delta units only: 25 fps of 4 kB, 100 kB/s, 6 MB in all.
        ring.push(sized_unit(0, true, 20_000), Some(caps.as_ref()));
        let mut most = 0;
        for i in 1..1500 {
            ring.push(sized_unit(i * 40, false, 4_000), Some(caps.as_ref()));
            most = most.max(ring.bytes());
            assert!(ring.bytes() <= cap, "over its cap at unit {i}: {} bytes", ring.bytes());
            assert!(
                ring.units.front().is_none_or(|u| u.keyframe),
                "a ring starts at a keyframe"
            );
        }
        assert!(
            most > cap / 2,
            "the ring filled up to its cap first: {most} bytes at most"
        );
        let reason = ring.degraded().expect("degraded while over its cap").to_owned();
        assert!(reason.contains("no keyframe for"), "{reason}");
        // Keyframes again, every second: the ring buffers and slices as before.
        for i in 0..150 {
            let t = 60_000 + i * 40;
            ring.push(sized_unit(t, i % 25 == 0, 200), Some(caps.as_ref()));
        }
        assert!(ring.units.front().is_some_and(|u| u.keyframe));
        let slice = ring.slice(ts(62), ts(64)).expect("the new video is buffered");
        assert!(slice.units[0].keyframe && slice.units[0].wall <= ts(62));
        assert!(ring.bytes() <= cap);
        // A window later without reaching the cap, it is no longer degraded.
        for i in 150..450 {
            ring.push(sized_unit(60_000 + i * 40, i % 25 == 0, 200), Some(caps.as_ref()));
        }
        assert_eq!(ring.degraded(), None);
    }

    #[test]
    fn past_its_cap_mid_gop_a_ring_drops_up_to_the_next_keyframe() {
        let _ = gst::init();
        let caps = gst::Caps::builder("video/x-h264").build();
        // Keyframe every 10 units of 10 kB: GOPs of about 100 kB, in a 250 kB cap.
        let mut ring = Ring::new(Duration::from_secs(3600), 250_000);
        for i in 0..100 {
            ring.push(sized_unit(i * 100, i % 10 == 0, 10_000), Some(caps.as_ref()));
            assert!(ring.bytes() <= 250_000);
            assert!(ring.units.front().is_some_and(|u| u.keyframe));
        }
        // The window (an hour) never pruned it; the cap did, GOP by GOP from the oldest.
        assert_eq!(ring.oldest(), DateTime::from_timestamp_millis(8_000));
        assert!(
            ring.degraded()
                .is_some_and(|r| r.contains("carries more than the cap holds"))
        );
        let mut cursor = ring.cursor_before(ts(9)).expect("buffered");
        let units = ring.read(&mut cursor).expect("readable");
        assert!(units[0].keyframe);
    }

    #[test]
    fn ring_ignores_units_before_first_keyframe() {
        let ring = ring_with(10, &[(0, false), (1, false), (2, true), (3, false)]);
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.oldest(), Some(ts(2)));
    }

    #[test]
    fn slice_starts_at_keyframe_before_from() {
        let seq: Vec<(i64, bool)> = (0..20).map(|t| (t, t % 4 == 0)).collect();
        let ring = ring_with(30, &seq);
        let slice = ring.slice(ts(10), ts(14)).expect("covered");
        assert_eq!(slice.units.first().map(|u| u.wall), Some(ts(8)));
        assert!(slice.units[0].keyframe);
        assert_eq!(slice.units.last().map(|u| u.wall), Some(ts(14)));
    }

    #[test]
    fn a_reader_gets_each_unit_once_from_the_keyframe_and_never_the_newest() {
        let seq: Vec<(i64, bool)> = (0..10).map(|t| (t, t % 4 == 0)).collect();
        let mut ring = ring_with(30, &seq);
        let mut cursor = ring.cursor_before(ts(6)).expect("buffered");
        let first = ring.read(&mut cursor).expect("readable");
        let walls: Vec<DateTime<Utc>> = first.iter().map(|u| u.wall).collect();
        assert_eq!(
            walls,
            (4..9).map(ts).collect::<Vec<_>>(),
            "from the keyframe at 4, without 9"
        );
        assert!(ring.read(&mut cursor).expect("readable").is_empty());
        let caps = gst::Caps::builder("video/x-h264").build();
        ring.push(unit(10, false), Some(caps.as_ref()));
        let next: Vec<DateTime<Utc>> = ring
            .read(&mut cursor)
            .expect("readable")
            .iter()
            .map(|u| u.wall)
            .collect();
        assert_eq!(next, vec![ts(9)]);
        ring.clear();
        assert!(
            ring.read(&mut cursor).err() == Some(ReadError::Broken),
            "a broken stream is reported, not read on"
        );
    }

    #[test]
    fn slice_outside_buffer_is_none() {
        let seq: Vec<(i64, bool)> = (0..10).map(|t| (t, t % 2 == 0)).collect();
        let ring = ring_with(30, &seq);
        assert!(ring.slice(ts(20), ts(25)).is_none());
    }

    #[test]
    fn a_split_off_slice_joins_its_picture_without_the_repeated_headers() {
        let mut ring = ring_with(10, &[(0, true)]);
        // AUD, SPS, PPS, then the second IDR slice.
        let continuation = [
            0, 0, 0, 1, 9, 0xf0, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 0xaa, 0xbb,
        ];
        ring.extend_last(&continuation);
        let last = ring
            .units
            .back()
            .map(|u| u.buffer.map_readable().map(|m| m.to_vec()).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(last, vec![0, 0, 0, 1, 0x65, 0xaa, 0xbb]);
        assert_eq!(ring.len(), 1);
    }
}
