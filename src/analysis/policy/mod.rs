//! The site's rules: which objects across the clip make an alarm real.
//!
//! Per frame, a detection of a target class must pass the gates (score, size, shape, masks,
//! zones). Across frames, detections of the same object are associated into tracks. A track
//! verifies the alarm when it is in enough frames with a high enough median score, unless it is a
//! vehicle that was already parked there before the alarm and has not moved.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::config::{PolicyConfig, Zone};
use crate::analysis::detect::{BoxPx, Detection};

/// The labels the `vehicle` class stands for.
pub const VEHICLE_LABELS: [&str; 5] = ["car", "truck", "bus", "motorcycle", "bicycle"];
/// A track may miss this many analysed frames (occlusion, a low score) and continue.
const MAX_GAP: usize = 3;
/// Boxes of one target group overlapping this much in a frame are one object (a van seen as both
/// "truck" and "car"); only the strongest is followed.
const SAME_OBJECT_IOU: f32 = 0.6;
/// Items listed after "ignored:" at most.
const MAX_IGNORED_LISTED: usize = 6;

/// What the detector found in one analysed frame.
#[derive(Debug, Clone)]
pub struct FrameDetections {
    pub time: DateTime<Utc>,
    pub detections: Vec<Detection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Verified,
    FalseAlarm,
}

/// What the policy made of one detection; the evidence image colours boxes by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Part of an object that verified the alarm.
    Cause,
    /// A target class, ignored by a rule (score, size, mask, zone, unconfirmed, stationary).
    Ignored,
    /// Not a target class.
    Other,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Outcome,
    /// One line for the operator.
    pub reason: String,
    /// The detections that caused the verdict, with the frame they are in.
    pub causes: Vec<(usize, Detection)>,
    /// Zones the causes were in.
    pub zones: Vec<String>,
    /// The frame that best shows why.
    pub evidence_frame: Option<usize>,
    /// The role of each detection, frame by frame, in the order of `FrameDetections::detections`.
    pub roles: Vec<Vec<Role>>,
}

/// A class rule with every value resolved.
#[derive(Debug, Clone)]
struct Rule {
    min_score: f32,
    threshold: f32,
    min_frames: usize,
    min_area: f32,
    max_area: f32,
    min_ratio: f32,
    max_ratio: f32,
    ignore_stationary: bool,
}

#[derive(Debug, Clone)]
struct Target {
    name: String,
    labels: Vec<String>,
    rule: Rule,
}

#[derive(Debug, Clone)]
pub struct Policy {
    targets: Vec<Target>,
    zones: Vec<Zone>,
    masks: Vec<Zone>,
    stationary_iou: f32,
}

/// Why a target detection did not count in its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Gate {
    LowScore,
    Size,
    Shape,
    Masked,
    OutsideZones,
}

/// One object followed across frames: (frame, detection index) pairs.
#[derive(Debug, Clone)]
struct Track {
    target: usize,
    hits: Vec<(usize, usize)>,
    last: BoxPx,
    last_frame: usize,
}

impl Policy {
    pub fn new(config: &PolicyConfig) -> Self {
        let targets = config
            .classes
            .iter()
            .filter(|(_, r)| r.enabled != Some(false))
            .map(|(name, r)| Target {
                name: name.clone(),
                labels: if name == "vehicle" {
                    VEHICLE_LABELS.iter().map(|l| (*l).to_owned()).collect()
                } else {
                    vec![name.clone()]
                },
                rule: Rule {
                    min_score: r.min_score.unwrap_or(config.min_score),
                    threshold: r.threshold.unwrap_or(config.threshold),
                    min_frames: r.min_frames.unwrap_or(config.min_frames),
                    min_area: r.min_area.unwrap_or(config.min_area),
                    max_area: r.max_area.unwrap_or(config.max_area),
                    min_ratio: r.min_ratio.unwrap_or(config.min_ratio),
                    max_ratio: r.max_ratio.unwrap_or(config.max_ratio),
                    // People are never suppressed as stationary (the config refuses it too).
                    ignore_stationary: name != "person" && r.ignore_stationary.unwrap_or(false),
                },
            })
            .collect();
        Self {
            targets,
            zones: config.zones.clone(),
            masks: config.masks.clone(),
            stationary_iou: config.stationary_iou,
        }
    }

    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    pub fn masks(&self) -> &[Zone] {
        &self.masks
    }

    fn target_of(&self, d: &Detection) -> Option<usize> {
        self.targets.iter().position(|t| t.labels.iter().any(|l| *l == d.label))
    }

    /// Per-frame gates other than the score: the zones a target detection is in, or why it does not count.
    fn gate(&self, d: &Detection, rule: &Rule, (w, h): (u32, u32)) -> Result<Vec<String>, Gate> {
        let (fw, fh) = (w.max(1) as f32, h.max(1) as f32);
        let area = d.bbox.area() / (fw * fh);
        if area < rule.min_area || area > rule.max_area {
            return Err(Gate::Size);
        }
        let ratio = d.bbox.w / d.bbox.h.max(1e-6);
        if ratio < rule.min_ratio || ratio > rule.max_ratio {
            return Err(Gate::Shape);
        }
        // Where the object stands: the bottom centre of its box.
        let foot = [(d.bbox.x + d.bbox.w / 2.0) / fw, (d.bbox.y + d.bbox.h) / fh];
        if self.masks.iter().any(|m| inside(&m.points, foot)) {
            return Err(Gate::Masked);
        }
        if self.zones.is_empty() {
            return Ok(Vec::new());
        }
        let zones: Vec<String> = self.zones.iter().filter(|z| inside(&z.points, foot)).map(|z| z.name.clone()).collect();
        if zones.is_empty() { Err(Gate::OutsideZones) } else { Ok(zones) }
    }

    /// Judges the analysed frames of a clip whose alarm fired at `alarm_time`; frames are `size` pixels.
    pub fn decide(&self, frames: &[FrameDetections], alarm_time: DateTime<Utc>, size: (u32, u32)) -> Decision {
        let total = frames.len();
        let mut roles: Vec<Vec<Role>> = frames.iter().map(|f| vec![Role::Other; f.detections.len()]).collect();
        let mut gated: BTreeMap<(String, Gate), f32> = BTreeMap::new();
        let mut others: BTreeMap<String, f32> = BTreeMap::new();
        let mut zones_of: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
        let mut candidates: Vec<Vec<(usize, usize)>> = vec![Vec::new(); total];
        for (fi, frame) in frames.iter().enumerate() {
            for (di, d) in frame.detections.iter().enumerate() {
                let Some(t) = self.target_of(d) else {
                    bump(&mut others, d.label.clone(), d.score);
                    continue;
                };
                roles[fi][di] = Role::Ignored;
                match self.gate(d, &self.targets[t].rule, size) {
                    Ok(zones) => {
                        zones_of.insert((fi, di), zones);
                        candidates[fi].push((t, di));
                    }
                    Err(g) => bump(&mut gated, (d.label.clone(), g), d.score),
                }
            }
        }
        let twins = drop_twins(frames, &mut candidates);
        let tracks = associate(frames, &candidates);
        let strong = |t: &Track, f: usize, d: usize| frames[f].detections[d].score >= self.targets[t.target].rule.min_score;

        let mut causes = Vec::new();
        let mut cause_lines: BTreeMap<String, (usize, f32, Vec<String>, usize)> = BTreeMap::new();
        let mut ignored_tracks: Vec<String> = Vec::new();
        let mut stationary: BTreeMap<String, usize> = BTreeMap::new();
        for track in &tracks {
            let target = &self.targets[track.target];
            let label = majority_label(frames, track);
            // Low-score detections keep a track together; only those at min_score or above confirm it.
            let scores: Vec<f32> = track
                .hits
                .iter()
                .filter(|&&(f, d)| strong(track, f, d))
                .map(|&(f, d)| frames[f].detections[d].score)
                .collect();
            let median = median(&scores);
            let n = scores.len();
            if target.rule.ignore_stationary && self.is_stationary(frames, track, alarm_time) {
                *stationary.entry(label).or_default() += 1;
                continue;
            }
            if n == 0 {
                let best = track.hits.iter().map(|&(f, d)| frames[f].detections[d].score).fold(0.0, f32::max);
                bump(&mut gated, (label, Gate::LowScore), best);
                continue;
            }
            if n < target.rule.min_frames {
                ignored_tracks.push(format!("{label} in {n} of {total} frames (fewer than {})", target.rule.min_frames));
                continue;
            }
            if median < target.rule.threshold {
                ignored_tracks.push(format!("{label} (median {median:.2}, below {:.2})", target.rule.threshold));
                continue;
            }
            let mut zones: Vec<String> = track.hits.iter().flat_map(|h| zones_of.get(h).cloned().unwrap_or_default()).collect();
            zones.sort();
            zones.dedup();
            for &(f, d) in &track.hits {
                roles[f][d] = Role::Cause;
                causes.push((f, frames[f].detections[d].clone()));
            }
            let entry = cause_lines.entry(label).or_insert((0, 0.0, Vec::new(), 0));
            if (n, median) > (entry.0, entry.1) {
                *entry = (n, median, zones, entry.3 + 1);
            } else {
                entry.3 += 1;
            }
        }

        let mut ignored: Vec<String> = stationary
            .iter()
            .map(|(label, count)| match count {
                1 => format!("parked {label} (stationary)"),
                n => format!("{n} parked {label}s (stationary)"),
            })
            .collect();
        for ((f, d), (tf, td)) in &twins {
            roles[*f][*d] = roles[*tf][*td];
        }
        let all_zones: Vec<String> = cause_lines.values().flat_map(|c| c.2.clone()).collect();
        let evidence_frame = self.evidence_frame(frames, &roles);
        if !cause_lines.is_empty() {
            let mut lines: Vec<(String, (usize, f32, Vec<String>, usize))> = cause_lines.into_iter().collect();
            // People first: they are what an operator must see.
            lines.sort_by(|a, b| (b.0 == "person").cmp(&(a.0 == "person")).then(b.1.1.total_cmp(&a.1.1)));
            let mut reason = lines
                .iter()
                .map(|(label, (n, median, zones, count))| {
                    let tracked = if *count > 1 { format!("; {count} tracked") } else { String::new() };
                    format!("{label}{} in {n} of {total} frames (median {median:.2}{tracked})", zone_text(zones))
                })
                .collect::<Vec<_>>()
                .join("; ");
            if !ignored.is_empty() {
                reason.push_str("; ignored: ");
                reason.push_str(&ignored.join(", "));
            }
            let mut zones = all_zones;
            zones.sort();
            zones.dedup();
            return Decision {
                outcome: Outcome::Verified,
                reason,
                causes,
                zones,
                evidence_frame,
                roles,
            };
        }

        ignored.extend(ignored_tracks);
        ignored.extend(gated.iter().map(|((label, gate), best)| match gate {
            Gate::LowScore => format!("{label} ({best:.2})"),
            Gate::Size => format!("{label} (size)"),
            Gate::Shape => format!("{label} (shape)"),
            Gate::Masked => format!("{label} (masked)"),
            Gate::OutsideZones => format!("{label} (outside zones)"),
        }));
        let mut rest: Vec<(&String, &f32)> = others.iter().collect();
        rest.sort_by(|a, b| b.1.total_cmp(a.1));
        ignored.extend(rest.into_iter().map(|(label, best)| format!("{label} ({best:.2})")));
        ignored.dedup();
        let mut reason = format!("no {}{} in {total} frames", self.target_names(), self.zone_scope());
        if !ignored.is_empty() {
            let extra = ignored.len().saturating_sub(MAX_IGNORED_LISTED);
            ignored.truncate(MAX_IGNORED_LISTED);
            reason.push_str("; ignored: ");
            reason.push_str(&ignored.join(", "));
            if extra > 0 {
                reason.push_str(&format!(" and {extra} more"));
            }
        }
        Decision {
            outcome: Outcome::FalseAlarm,
            reason,
            causes: Vec::new(),
            zones: Vec::new(),
            evidence_frame,
            roles,
        }
    }

    /// A track already there before the alarm whose boxes all stay on its first one.
    fn is_stationary(&self, frames: &[FrameDetections], track: &Track, alarm_time: DateTime<Utc>) -> bool {
        let Some(&(f0, d0)) = track.hits.first() else {
            return false;
        };
        if frames[f0].time >= alarm_time {
            return false; // it arrived with the alarm
        }
        let first = frames[f0].detections[d0].bbox;
        track.hits.iter().all(|&(f, d)| frames[f].detections[d].bbox.iou(&first) >= self.stationary_iou)
    }

    /// The frame with the best cause, or else the best ignored target, or else the best detection.
    fn evidence_frame(&self, frames: &[FrameDetections], roles: &[Vec<Role>]) -> Option<usize> {
        let best_with = |role: Role| {
            frames
                .iter()
                .enumerate()
                .flat_map(|(f, fr)| fr.detections.iter().enumerate().map(move |(d, det)| (f, d, det.score)))
                .filter(|&(f, d, _)| roles[f][d] == role)
                .max_by(|a, b| a.2.total_cmp(&b.2))
                .map(|(f, _, _)| f)
        };
        best_with(Role::Cause)
            .or_else(|| best_with(Role::Ignored))
            .or_else(|| best_with(Role::Other))
            .or_else(|| (!frames.is_empty()).then(|| frames.len() / 2))
    }

    fn target_names(&self) -> String {
        let names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        match names.as_slice() {
            [] => String::new(),
            [one] => (*one).to_owned(),
            [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        }
    }

    fn zone_scope(&self) -> String {
        let names: Vec<String> = self.zones.iter().map(|z| z.name.clone()).collect();
        zone_text(&names)
    }
}

fn zone_text(zones: &[String]) -> String {
    match zones {
        [] => String::new(),
        [one] => format!(" in zone '{one}'"),
        many => format!(" in zones {}", many.iter().map(|z| format!("'{z}'")).collect::<Vec<_>>().join(", ")),
    }
}

fn bump<K: Ord>(map: &mut BTreeMap<K, f32>, key: K, score: f32) {
    let e = map.entry(key).or_insert(0.0);
    *e = e.max(score);
}

fn median(v: &[f32]) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The label a track carries most often (a van may be "car" in one frame and "truck" in the next).
fn majority_label(frames: &[FrameDetections], track: &Track) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for &(f, d) in &track.hits {
        *counts.entry(frames[f].detections[d].label.as_str()).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l.to_owned()).unwrap_or_default()
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
fn drop_twins(frames: &[FrameDetections], candidates: &mut [Vec<(usize, usize)>]) -> Vec<((usize, usize), (usize, usize))> {
    let mut twins = Vec::new();
    for (f, cands) in candidates.iter_mut().enumerate() {
        let dets = &frames[f].detections;
        cands.sort_by(|a, b| dets[b.1].score.total_cmp(&dets[a.1].score));
        let mut kept: Vec<(usize, usize)> = Vec::with_capacity(cands.len());
        for &(t, d) in cands.iter() {
            match kept.iter().find(|&&(kt, kd)| kt == t && dets[kd].bbox.iou(&dets[d].bbox) > SAME_OBJECT_IOU) {
                Some(&(_, kd)) => twins.push(((f, d), (f, kd))),
                None => kept.push((t, d)),
            }
        }
        *cands = kept;
    }
    twins
}

/// Greedy association of gated detections into tracks, frame by frame, strongest first.
fn associate(frames: &[FrameDetections], candidates: &[Vec<(usize, usize)>]) -> Vec<Track> {
    let mut tracks: Vec<Track> = Vec::new();
    for (f, cands) in candidates.iter().enumerate() {
        let mut order = cands.clone();
        order.sort_by(|a, b| frames[f].detections[b.1].score.total_cmp(&frames[f].detections[a.1].score));
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

/// Whether `p` lies inside the polygon (even-odd rule).
fn inside(polygon: &[[f32; 2]], p: [f32; 2]) -> bool {
    let mut inside = false;
    let mut j = polygon.len().wrapping_sub(1);
    for (i, a) in polygon.iter().enumerate() {
        let b = polygon[j];
        if (a[1] > p[1]) != (b[1] > p[1]) && p[0] < (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0] {
            inside = !inside;
        }
        j = i;
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    const W: u32 = 1000;
    const H: u32 = 1000;

    fn det(label: &str, score: f32, x: f32, y: f32, w: f32, h: f32) -> Detection {
        Detection {
            class_id: 0,
            label: label.into(),
            score,
            bbox: BoxPx { x, y, w, h },
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    /// Frames half a second apart, the alarm at the start of frame `alarm_at`.
    fn clip(per_frame: Vec<Vec<Detection>>) -> Vec<FrameDetections> {
        per_frame
            .into_iter()
            .enumerate()
            .map(|(i, detections)| FrameDetections {
                time: t0() + TimeDelta::milliseconds(500 * i as i64),
                detections,
            })
            .collect()
    }

    fn alarm_at(frame: i64) -> DateTime<Utc> {
        t0() + TimeDelta::milliseconds(500 * frame)
    }

    fn person(score: f32, x: f32) -> Detection {
        det("person", score, x, 400.0, 60.0, 160.0)
    }

    fn decide(config: &PolicyConfig, frames: &[FrameDetections]) -> Decision {
        Policy::new(config).decide(frames, alarm_at(2), (W, H))
    }

    #[test]
    fn a_walking_person_is_tracked_and_verifies() {
        // 70 px a frame: more than the box's width, so IoU alone would lose the track.
        let frames = clip((0..6).map(|i| vec![person(0.8, 100.0 + 70.0 * i as f32)]).collect());
        let d = decide(&PolicyConfig::default(), &frames);
        assert_eq!(d.outcome, Outcome::Verified);
        assert_eq!(d.reason, "person in 6 of 6 frames (median 0.80)");
        assert_eq!(d.causes.len(), 6);
    }

    #[test]
    fn min_frames_and_median_threshold_confirm() {
        let once = clip(vec![vec![person(0.95, 100.0)], vec![], vec![]]);
        let d = decide(&PolicyConfig::default(), &once);
        assert_eq!(d.outcome, Outcome::FalseAlarm);
        assert!(d.reason.contains("person in 1 of 3 frames (fewer than 2)"), "{}", d.reason);

        let weak = clip(vec![vec![person(0.51, 100.0)], vec![person(0.53, 110.0)], vec![person(0.9, 120.0)]]);
        let d = decide(&PolicyConfig::default(), &weak);
        assert_eq!(d.outcome, Outcome::FalseAlarm, "median 0.53 is below 0.55");
        assert!(d.reason.contains("median 0.53, below 0.55"), "{}", d.reason);
    }

    #[test]
    fn min_score_gates_each_frame() {
        let frames = clip(vec![vec![person(0.3, 100.0)], vec![person(0.4, 110.0)]]);
        let d = decide(&PolicyConfig::default(), &frames);
        assert_eq!(d.outcome, Outcome::FalseAlarm);
        assert_eq!(d.reason, "no person or vehicle in 2 frames; ignored: person (0.40)");
    }

    #[test]
    fn area_and_ratio_gates() {
        // 10x10 px is 0.0001 of the frame: below min_area 0.0005.
        let tiny = clip(vec![vec![det("person", 0.9, 0.0, 0.0, 10.0, 10.0)]; 3]);
        let d = decide(&PolicyConfig::default(), &tiny);
        assert_eq!(d.outcome, Outcome::FalseAlarm);
        assert!(d.reason.contains("person (size)"), "{}", d.reason);
        // 500 x 10: ratio 50, over max_ratio 20.
        let flat = clip(vec![vec![det("person", 0.9, 0.0, 0.0, 500.0, 10.0)]; 3]);
        let d = decide(&PolicyConfig::default(), &flat);
        assert!(d.reason.contains("person (shape)"), "{}", d.reason);
        let mut loose = PolicyConfig::default();
        loose.min_area = 0.0;
        assert_eq!(decide(&loose, &tiny).outcome, Outcome::Verified);
    }

    fn lower_half() -> Zone {
        Zone {
            name: "yard".into(),
            points: vec![[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]],
        }
    }

    #[test]
    fn zones_use_the_bottom_centre_and_are_named() {
        let mut config = PolicyConfig::default();
        config.zones = vec![lower_half()];
        // Box from y 400 to 560: its foot (y 0.56) is in the lower half although most of it is not.
        let frames = clip(vec![vec![person(0.8, 100.0)]; 3]);
        let d = decide(&config, &frames);
        assert_eq!(d.outcome, Outcome::Verified);
        assert_eq!(d.reason, "person in zone 'yard' in 3 of 3 frames (median 0.80)");
        assert_eq!(d.zones, vec!["yard".to_owned()]);
        // Feet at y 0.3: outside the zone.
        let high = clip(vec![vec![det("person", 0.8, 100.0, 140.0, 60.0, 160.0)]; 3]);
        let d = decide(&config, &high);
        assert_eq!(d.outcome, Outcome::FalseAlarm);
        assert_eq!(d.reason, "no person or vehicle in zone 'yard' in 3 frames; ignored: person (outside zones)");
    }

    #[test]
    fn masks_ignore_detections() {
        let mut config = PolicyConfig::default();
        config.masks = vec![lower_half()];
        let frames = clip(vec![vec![person(0.9, 100.0)]; 3]);
        let d = decide(&config, &frames);
        assert_eq!(d.outcome, Outcome::FalseAlarm);
        assert!(d.reason.contains("person (masked)"), "{}", d.reason);
    }

    fn car(x: f32) -> Detection {
        det("car", 0.85, x, 600.0, 200.0, 100.0)
    }

    #[test]
    fn a_parked_vehicle_is_ignored_as_stationary() {
        let frames = clip(vec![vec![car(300.0)]; 6]);
        let d = decide(&PolicyConfig::default(), &frames);
        assert_eq!(d.outcome, Outcome::FalseAlarm);
        assert_eq!(d.reason, "no person or vehicle in 6 frames; ignored: parked car (stationary)");
    }

    #[test]
    fn a_vehicle_that_moves_or_arrives_is_a_cause() {
        let moving = clip((0..6).map(|i| vec![car(100.0 + 60.0 * i as f32)]).collect());
        assert_eq!(decide(&PolicyConfig::default(), &moving).outcome, Outcome::Verified);
        // Parked, but only from the alarm on: it arrived.
        let arriving = clip((0..6).map(|i| if i >= 2 { vec![car(300.0)] } else { vec![] }).collect());
        let d = decide(&PolicyConfig::default(), &arriving);
        assert_eq!(d.outcome, Outcome::Verified);
        assert_eq!(d.reason, "car in 4 of 6 frames (median 0.85)");
    }

    #[test]
    fn a_person_is_never_suppressed_as_stationary() {
        let mut config = PolicyConfig::default();
        // Even if a config sneaks it in (check-config refuses it), a person is reported.
        if let Some(p) = config.classes.get_mut("person") {
            p.ignore_stationary = Some(true);
        }
        let frames = clip(vec![vec![person(0.8, 300.0), car(600.0)]; 6]);
        let d = decide(&config, &frames);
        assert_eq!(d.outcome, Outcome::Verified);
        assert_eq!(d.reason, "person in 6 of 6 frames (median 0.80); ignored: parked car (stationary)");
    }

    #[test]
    fn one_vehicle_seen_as_truck_and_car_is_one_object() {
        // The truck boxes alone reach the threshold; split between two tracks they would not.
        let van = |i: usize, truck: f32, car_score: f32| {
            let x = 100.0 + 40.0 * i as f32;
            vec![det("truck", truck, x, 500.0, 200.0, 150.0), det("car", car_score, x + 4.0, 505.0, 196.0, 145.0)]
        };
        let frames = clip((0..6).map(|i| if i % 2 == 0 { van(i, 0.7, 0.4) } else { van(i, 0.4, 0.7) }).collect());
        let d = decide(&PolicyConfig::default(), &frames);
        assert_eq!(d.outcome, Outcome::Verified, "{}", d.reason);
        assert!(d.reason.contains("in 6 of 6 frames (median 0.70)"), "{}", d.reason);
        // The weaker twin takes the role of the box it duplicates.
        assert!(d.roles.iter().all(|r| r == &vec![Role::Cause, Role::Cause]), "{:?}", d.roles);
    }

    #[test]
    fn parked_neighbours_stay_apart_when_one_is_missed() {
        // A van and a small car parked side by side (as on the vtest site); the detector misses
        // the van now and then. Its track must not jump onto the car and look as if it moved.
        let van = || det("truck", 0.75, 651.0, 42.0, 74.0, 57.0);
        let small = || det("car", 0.8, 732.0, 51.0, 35.0, 43.0);
        let frames = clip((0..8).map(|i| if i % 3 == 1 { vec![small()] } else { vec![van(), small()] }).collect());
        let d = decide(&PolicyConfig::default(), &frames);
        assert_eq!(d.outcome, Outcome::FalseAlarm, "{}", d.reason);
        assert_eq!(d.reason, "no person or vehicle in 8 frames; ignored: parked car (stationary), parked truck (stationary)");
    }

    #[test]
    fn per_class_rules_override_the_policy() {
        let mut config = PolicyConfig::default();
        if let Some(v) = config.classes.get_mut("vehicle") {
            v.threshold = Some(0.9);
        }
        let moving = clip((0..4).map(|i| vec![car(100.0 + 60.0 * i as f32)]).collect());
        let d = decide(&config, &moving);
        assert_eq!(d.outcome, Outcome::FalseAlarm);
        assert!(d.reason.contains("car (median 0.85, below 0.90)"), "{}", d.reason);
    }

    #[test]
    fn other_classes_are_listed_as_ignored() {
        let frames = clip(vec![vec![det("bird", 0.6, 10.0, 10.0, 50.0, 50.0)], vec![det("dog", 0.7, 10.0, 10.0, 80.0, 50.0)]]);
        let d = decide(&PolicyConfig::default(), &frames);
        assert_eq!(d.reason, "no person or vehicle in 2 frames; ignored: dog (0.70), bird (0.60)");
        assert_eq!(d.roles, vec![vec![Role::Other], vec![Role::Other]]);
    }

    #[test]
    fn evidence_frame_shows_the_strongest_cause() {
        let frames = clip(vec![vec![person(0.7, 100.0)], vec![person(0.9, 120.0)], vec![person(0.8, 140.0)]]);
        let d = decide(&PolicyConfig::default(), &frames);
        assert_eq!(d.evidence_frame, Some(1));
        assert!(d.roles.iter().all(|r| r == &vec![Role::Cause]));
    }

    #[test]
    fn point_in_polygon() {
        let square = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]];
        assert!(inside(&square, [0.5, 0.5]));
        assert!(!inside(&square, [1.5, 0.5]));
        let l_shape = [[0.0, 0.0], [1.0, 0.0], [1.0, 0.4], [0.4, 0.4], [0.4, 1.0], [0.0, 1.0]];
        assert!(inside(&l_shape, [0.2, 0.8]));
        assert!(!inside(&l_shape, [0.8, 0.8]));
    }
}
