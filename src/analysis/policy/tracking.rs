//! Following objects across frames: twin boxes of one object merged, detections associated into
//! tracks by overlap or a short move, as ByteTrack does with low-score detections kept.

use std::collections::BTreeMap;

use super::FrameDetections;
use crate::analysis::detect::BoxPx;

/// A track may miss this many analysed frames (occlusion, a low score) and continue.
const MAX_GAP: usize = 3;
/// Boxes of one target group overlapping this much in a frame are one object (a van seen as both
/// "truck" and "car"); only the strongest is followed.
const SAME_OBJECT_IOU: f32 = 0.6;

/// One object followed across frames: (frame, detection index) pairs.
#[derive(Debug, Clone)]
pub(super) struct Track {
    pub(super) target: usize,
    pub(super) hits: Vec<(usize, usize)>,
    pub(super) last: BoxPx,
    pub(super) last_frame: usize,
}

/// The label a track carries most often (a van may be "car" in one frame and "truck" in the next).
pub(super) fn majority_label(frames: &[FrameDetections], track: &Track) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for &(f, d) in &track.hits {
        *counts.entry(frames[f].detections[d].label.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(l, _)| l.to_owned())
        .unwrap_or_default()
}

/// How likely two boxes in nearby frames are the same object: overlap, or else a short move
/// (people walk more than their own width between frames at 2-5 fps) between boxes of similar size.
fn similarity(a: &BoxPx, b: &BoxPx) -> Option<f32> {
    let iou = a.iou(b);
    if iou >= 0.1 {
        return Some(1.0 + iou);
    }
    let size_ratio = a.area().max(1e-6) / b.area().max(1e-6);
    if !(1.0 / 3.0..=3.0).contains(&size_ratio) {
        return None;
    }
    let (acx, acy) = (a.x + a.w / 2.0, a.y + a.h / 2.0);
    let (bcx, bcy) = (b.x + b.w / 2.0, b.y + b.h / 2.0);
    let distance = ((acx - bcx).powi(2) + (acy - bcy).powi(2)).sqrt();
    let reach = a.w.max(a.h).max(b.w.max(b.h));
    let d = distance / reach.max(1e-6);
    (d <= 1.0).then_some(1.0 - d)
}

/// Removes, frame by frame, candidates that overlap a stronger one of the same target; returns each
/// removed one with the one it duplicates.
pub(super) fn drop_twins(
    frames: &[FrameDetections],
    candidates: &mut [Vec<(usize, usize)>],
) -> Vec<((usize, usize), (usize, usize))> {
    let mut twins = Vec::new();
    for (f, cands) in candidates.iter_mut().enumerate() {
        let dets = &frames[f].detections;
        cands.sort_by(|a, b| dets[b.1].score.total_cmp(&dets[a.1].score));
        let mut kept: Vec<(usize, usize)> = Vec::with_capacity(cands.len());
        for &(t, d) in cands.iter() {
            match kept
                .iter()
                .find(|&&(kt, kd)| kt == t && dets[kd].bbox.iou(&dets[d].bbox) > SAME_OBJECT_IOU)
            {
                Some(&(_, kd)) => twins.push(((f, d), (f, kd))),
                None => kept.push((t, d)),
            }
        }
        *cands = kept;
    }
    twins
}

/// Greedy association of gated detections into tracks, frame by frame, strongest first.
pub(super) fn associate(frames: &[FrameDetections], candidates: &[Vec<(usize, usize)>]) -> Vec<Track> {
    let mut tracks: Vec<Track> = Vec::new();
    for (f, cands) in candidates.iter().enumerate() {
        let mut order = cands.clone();
        order.sort_by(|a, b| {
            frames[f].detections[b.1]
                .score
                .total_cmp(&frames[f].detections[a.1].score)
        });
        for (t, d) in order {
            let bbox = frames[f].detections[d].bbox;
            let best = tracks
                .iter()
                .enumerate()
                .filter(|(_, tr)| tr.target == t && tr.last_frame < f && f - tr.last_frame <= MAX_GAP)
                .filter_map(|(i, tr)| similarity(&tr.last, &bbox).map(|s| (i, s)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i);
            match best {
                Some(i) => {
                    let tr = &mut tracks[i];
                    tr.hits.push((f, d));
                    tr.last = bbox;
                    tr.last_frame = f;
                }
                None => tracks.push(Track {
                    target: t,
                    hits: vec![(f, d)],
                    last: bbox,
                    last_frame: f,
                }),
            }
        }
    }
    tracks
}
