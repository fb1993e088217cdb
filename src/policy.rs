//! The site's rules: which detections across the clip make an alarm real.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::config::PolicyConfig;
use crate::detect::Detection;

/// The labels the `vehicle` class stands for.
pub const VEHICLE_LABELS: [&str; 5] = ["car", "truck", "bus", "motorcycle", "bicycle"];

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

#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Outcome,
    /// One line for the operator.
    pub reason: String,
    /// The detections that caused the verdict, with the frame they are in.
    pub causes: Vec<(usize, Detection)>,
}

/// A configured target: a name as the operator reads it and the detector labels it covers.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    labels: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    targets: Vec<Target>,
    min_score: f32,
    min_frames: usize,
}

impl Policy {
    pub fn new(config: &PolicyConfig) -> Self {
        let targets = config
            .classes
            .iter()
            .map(|name| Target {
                name: name.clone(),
                labels: if name == "vehicle" {
                    VEHICLE_LABELS.iter().map(|l| (*l).to_owned()).collect()
                } else {
                    vec![name.clone()]
                },
            })
            .collect();
        Self {
            targets,
            min_score: config.min_score,
            min_frames: config.min_frames,
        }
    }

    fn target_of(&self, d: &Detection) -> Option<&Target> {
        self.targets.iter().find(|t| t.labels.iter().any(|l| *l == d.label))
    }

    /// A detection that counts towards verifying the alarm in its frame.
    pub fn is_cause(&self, d: &Detection) -> bool {
        d.score >= self.min_score && self.target_of(d).is_some()
    }

    /// How well a frame shows the cause of an alarm: the evidence image is the frame ranked highest.
    pub fn frame_rank(&self, detections: &[Detection]) -> (bool, f32) {
        let best_cause = detections.iter().filter(|d| self.is_cause(d)).map(|d| d.score).fold(None, max_opt);
        match best_cause {
            Some(score) => (true, score),
            None => (false, detections.iter().map(|d| d.score).fold(0.0, f32::max)),
        }
    }

    pub fn decide(&self, frames: &[FrameDetections]) -> Decision {
        let total = frames.len();
        let mut confirmed = Vec::new();
        let mut unconfirmed = Vec::new();
        let mut causes = Vec::new();
        for target in &self.targets {
            let hits: Vec<(usize, &Detection)> = frames
                .iter()
                .enumerate()
                .flat_map(|(i, f)| f.detections.iter().map(move |d| (i, d)))
                .filter(|(_, d)| self.is_cause(d) && self.target_of(d).is_some_and(|t| t.name == target.name))
                .collect();
            let mut frames_hit: Vec<usize> = hits.iter().map(|(i, _)| *i).collect();
            frames_hit.dedup();
            if frames_hit.is_empty() {
                continue;
            }
            let best = hits.iter().map(|(_, d)| d.score).fold(0.0, f32::max);
            let summary = format!("{} in {} of {total} frames (best {best:.2})", target.name, frames_hit.len());
            if frames_hit.len() >= self.min_frames {
                confirmed.push(summary);
                causes.extend(hits.into_iter().map(|(i, d)| (i, d.clone())));
            } else {
                unconfirmed.push(format!("{summary}, fewer than {} frames", self.min_frames));
            }
        }
        if !confirmed.is_empty() {
            return Decision {
                outcome: Outcome::Verified,
                reason: confirmed.join("; "),
                causes,
            };
        }
        let mut reason = format!("no {} in {total} frames", self.target_names());
        let mut notes = unconfirmed;
        notes.extend(self.other_objects(frames));
        if !notes.is_empty() {
            reason.push_str("; ignored: ");
            reason.push_str(&notes.join(", "));
        }
        Decision {
            outcome: Outcome::FalseAlarm,
            reason,
            causes: Vec::new(),
        }
    }

    fn target_names(&self) -> String {
        let names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        match names.as_slice() {
            [] => String::new(),
            [one] => (*one).to_owned(),
            [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        }
    }

    /// Objects seen that are not causes: other classes, or targets below the score gate.
    fn other_objects(&self, frames: &[FrameDetections]) -> Vec<String> {
        let mut best: BTreeMap<&str, f32> = BTreeMap::new();
        for d in frames.iter().flat_map(|f| &f.detections) {
            if self.target_of(d).is_some() && d.score >= self.min_score {
                continue;
            }
            let entry = best.entry(d.label.as_str()).or_insert(0.0);
            *entry = entry.max(d.score);
        }
        let mut seen: Vec<(&str, f32)> = best.into_iter().collect();
        seen.sort_by(|a, b| b.1.total_cmp(&a.1));
        seen.into_iter().take(5).map(|(label, score)| format!("{label} ({score:.2})")).collect()
    }
}

fn max_opt(acc: Option<f32>, v: f32) -> Option<f32> {
    Some(acc.map_or(v, |a| a.max(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::BoxPx;

    fn det(label: &str, score: f32) -> Detection {
        Detection {
            class_id: 0,
            label: label.into(),
            score,
            bbox: BoxPx { x: 0.0, y: 0.0, w: 10.0, h: 20.0 },
        }
    }

    fn frames(per_frame: &[&[(&str, f32)]]) -> Vec<FrameDetections> {
        per_frame
            .iter()
            .map(|ds| FrameDetections {
                time: Utc::now(),
                detections: ds.iter().map(|(l, s)| det(l, *s)).collect(),
            })
            .collect()
    }

    fn policy() -> Policy {
        Policy::new(&PolicyConfig::default())
    }

    #[test]
    fn person_in_enough_frames_verifies() {
        let d = policy().decide(&frames(&[&[("person", 0.8)], &[], &[("person", 0.9)]]));
        assert_eq!(d.outcome, Outcome::Verified);
        assert_eq!(d.reason, "person in 2 of 3 frames (best 0.90)");
        assert_eq!(d.causes.len(), 2);
    }

    #[test]
    fn single_frame_is_not_enough() {
        let d = policy().decide(&frames(&[&[("person", 0.95)], &[], &[]]));
        assert_eq!(d.outcome, Outcome::FalseAlarm);
        assert!(d.reason.contains("fewer than 2 frames"), "{}", d.reason);
    }

    #[test]
    fn vehicle_group_covers_cars_and_trucks() {
        let d = policy().decide(&frames(&[&[("car", 0.7)], &[("truck", 0.6)]]));
        assert_eq!(d.outcome, Outcome::Verified);
        assert!(d.reason.starts_with("vehicle in 2 of 2"), "{}", d.reason);
    }

    #[test]
    fn low_scores_and_other_classes_are_false_alarms_with_reason() {
        let d = policy().decide(&frames(&[&[("person", 0.3), ("bird", 0.6)], &[("person", 0.4)]]));
        assert_eq!(d.outcome, Outcome::FalseAlarm);
        assert_eq!(d.reason, "no person or vehicle in 2 frames; ignored: bird (0.60), person (0.40)");
    }

    #[test]
    fn empty_clip_is_a_false_alarm() {
        let d = policy().decide(&[]);
        assert_eq!(d.outcome, Outcome::FalseAlarm);
    }

    #[test]
    fn frames_with_causes_rank_above_others() {
        let p = policy();
        assert!(p.frame_rank(&[det("person", 0.6)]) > p.frame_rank(&[det("bird", 0.99)]));
        assert!(p.frame_rank(&[det("person", 0.9)]) > p.frame_rank(&[det("person", 0.6)]));
    }
}
