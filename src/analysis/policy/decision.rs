//! The decision: tracks confirmed by the median of their scores over enough frames, parked vehicles
//! set aside, the one-line reason for the operator, and the frame that best shows why.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::FrameDetections;
use super::rules::{Gate, Policy};
use super::tracking::{Track, associate, drop_twins, majority_label};
use crate::analysis::detect::Detection;

/// Per label of a confirmed target: its best track's frames, median and zones, and how many tracks.
type CauseLine = (usize, f32, Vec<String>, usize);

/// Items listed after "ignored:" at most.
const MAX_IGNORED_LISTED: usize = 6;

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

impl Policy {
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
        let strong =
            |t: &Track, f: usize, d: usize| frames[f].detections[d].score >= self.targets[t.target].rule.min_score;

        let mut causes = Vec::new();
        let mut cause_lines: BTreeMap<String, CauseLine> = BTreeMap::new();
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
                let best = track
                    .hits
                    .iter()
                    .map(|&(f, d)| frames[f].detections[d].score)
                    .fold(0.0, f32::max);
                bump(&mut gated, (label, Gate::LowScore), best);
                continue;
            }
            if n < target.rule.min_frames {
                ignored_tracks.push(format!(
                    "{label} in {n} of {total} frames (fewer than {})",
                    target.rule.min_frames
                ));
                continue;
            }
            if median < target.rule.threshold {
                ignored_tracks.push(format!(
                    "{label} (median {median:.2}, below {:.2})",
                    target.rule.threshold
                ));
                continue;
            }
            let mut zones: Vec<String> = track
                .hits
                .iter()
                .flat_map(|h| zones_of.get(h).cloned().unwrap_or_default())
                .collect();
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
        let evidence_frame = self.evidence_frame(frames, &roles, alarm_time);
        if !cause_lines.is_empty() {
            let mut lines: Vec<(String, CauseLine)> = cause_lines.into_iter().collect();
            // People first: they are what an operator must see.
            lines.sort_by(|a, b| (b.0 == "person").cmp(&(a.0 == "person")).then(b.1.1.total_cmp(&a.1.1)));
            let mut reason = lines
                .iter()
                .map(|(label, (n, median, zones, count))| {
                    let tracked = if *count > 1 {
                        format!("; {count} tracked")
                    } else {
                        String::new()
                    };
                    format!(
                        "{label}{} in {n} of {total} frames (median {median:.2}{tracked})",
                        zone_text(zones)
                    )
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
        track
            .hits
            .iter()
            .all(|&(f, d)| frames[f].detections[d].bbox.iou(&first) >= self.stationary_iou)
    }

    /// The frame with the best cause, or else the best ignored target, or else the best detection,
    /// or else the one nearest the alarm: what the camera saw when it fired.
    fn evidence_frame(
        &self,
        frames: &[FrameDetections],
        roles: &[Vec<Role>],
        alarm_time: DateTime<Utc>,
    ) -> Option<usize> {
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
            .or_else(|| {
                frames
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, f)| (f.time - alarm_time).abs())
                    .map(|(i, _)| i)
            })
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
        many => format!(
            " in zones {}",
            many.iter().map(|z| format!("'{z}'")).collect::<Vec<_>>().join(", ")
        ),
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
