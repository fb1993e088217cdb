//! The encoded ring buffer: the last seconds of one stream as complete access units, always
//! starting at a keyframe, so that any slice of it can be decoded on its own.
//!
//! Nothing is decoded here. Keeping packets costs almost no CPU, so one box can hold many cameras
//! and spend CPU only on the alarms (see DESIGN.md, "Ingest keeps encoded video").

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

/// The encoded ring buffer: the last `window` of a camera's stream, always starting at a keyframe.
pub struct Ring {
    units: VecDeque<AccessUnit>,
    caps: Option<gst::Caps>,
    window: TimeDelta,
    next_seq: u64,
    /// Changes whenever the stream breaks (cleared, new caps): a reader's position is then lost.
    generation: u64,
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
    pub fn new(window: Duration) -> Self {
        Self {
            units: VecDeque::new(),
            caps: None,
            window: TimeDelta::from_std(window).unwrap_or(TimeDelta::seconds(10)),
            next_seq: 0,
            generation: 0,
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
        if self.units.is_empty() && !unit.keyframe {
            return; // a slice must start at a keyframe
        }
        unit.seq = self.next_seq;
        self.next_seq += 1;
        let prune = unit.keyframe;
        let newest = unit.wall;
        self.units.push_back(unit);
        if prune {
            self.prune(newest);
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
            self.units.drain(..i);
        }
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
    }

    pub fn clear(&mut self) {
        self.units.clear();
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
        let mut ring = Ring::new(Duration::from_secs(window_s));
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
