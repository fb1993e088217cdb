//! The site's rules: which objects across the clip make an alarm real.
//!
//! Per frame, a detection of a target class must pass the gates (score, size, shape, masks,
//! zones). Across frames, detections of the same object are associated into tracks. A track
//! verifies the alarm when it is in enough frames with a high enough median score, unless it is a
//! vehicle that was already parked there before the alarm and has not moved.

use chrono::{DateTime, Utc};

mod decision;
mod rules;
mod tracking;

pub use decision::{Decision, Outcome, Role};
pub use rules::{Policy, VEHICLE_LABELS};

use crate::analysis::detect::Detection;

/// What the detector found in one analysed frame.
#[derive(Debug, Clone)]
pub struct FrameDetections {
    pub time: DateTime<Utc>,
    pub detections: Vec<Detection>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::detect::BoxPx;
    use crate::config::{PolicyConfig, Zone};
    use chrono::TimeDelta;
    use rules::inside;

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
        assert!(
            d.reason.contains("person in 1 of 3 frames (fewer than 2)"),
            "{}",
            d.reason
        );

        let weak = clip(vec![
            vec![person(0.51, 100.0)],
            vec![person(0.53, 110.0)],
            vec![person(0.9, 120.0)],
        ]);
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
        let loose = PolicyConfig {
            min_area: 0.0,
            ..PolicyConfig::default()
        };
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
        let config = PolicyConfig {
            zones: vec![lower_half()],
            ..PolicyConfig::default()
        };
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
        assert_eq!(
            d.reason,
            "no person or vehicle in zone 'yard' in 3 frames; ignored: person (outside zones)"
        );
    }

    #[test]
    fn masks_ignore_detections() {
        let config = PolicyConfig {
            masks: vec![lower_half()],
            ..PolicyConfig::default()
        };
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
        assert_eq!(
            d.reason,
            "no person or vehicle in 6 frames; ignored: parked car (stationary)"
        );
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
        assert_eq!(
            d.reason,
            "person in 6 of 6 frames (median 0.80); ignored: parked car (stationary)"
        );
    }

    #[test]
    fn one_vehicle_seen_as_truck_and_car_is_one_object() {
        // The truck boxes alone reach the threshold; split between two tracks they would not.
        let van = |i: usize, truck: f32, car_score: f32| {
            let x = 100.0 + 40.0 * i as f32;
            vec![
                det("truck", truck, x, 500.0, 200.0, 150.0),
                det("car", car_score, x + 4.0, 505.0, 196.0, 145.0),
            ]
        };
        let frames = clip(
            (0..6)
                .map(|i| if i % 2 == 0 { van(i, 0.7, 0.4) } else { van(i, 0.4, 0.7) })
                .collect(),
        );
        let d = decide(&PolicyConfig::default(), &frames);
        assert_eq!(d.outcome, Outcome::Verified, "{}", d.reason);
        assert!(d.reason.contains("in 6 of 6 frames (median 0.70)"), "{}", d.reason);
        // The weaker twin takes the role of the box it duplicates.
        assert!(
            d.roles.iter().all(|r| r == &vec![Role::Cause, Role::Cause]),
            "{:?}",
            d.roles
        );
    }

    #[test]
    fn parked_neighbours_stay_apart_when_one_is_missed() {
        // A van and a small car parked side by side (as on the vtest site); the detector misses
        // the van now and then. Its track must not jump onto the car and look as if it moved.
        let van = || det("truck", 0.75, 651.0, 42.0, 74.0, 57.0);
        let small = || det("car", 0.8, 732.0, 51.0, 35.0, 43.0);
        let frames = clip(
            (0..8)
                .map(|i| {
                    if i % 3 == 1 {
                        vec![small()]
                    } else {
                        vec![van(), small()]
                    }
                })
                .collect(),
        );
        let d = decide(&PolicyConfig::default(), &frames);
        assert_eq!(d.outcome, Outcome::FalseAlarm, "{}", d.reason);
        assert_eq!(
            d.reason,
            "no person or vehicle in 8 frames; ignored: parked car (stationary), parked truck (stationary)"
        );
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
        let frames = clip(vec![
            vec![det("bird", 0.6, 10.0, 10.0, 50.0, 50.0)],
            vec![det("dog", 0.7, 10.0, 10.0, 80.0, 50.0)],
        ]);
        let d = decide(&PolicyConfig::default(), &frames);
        assert_eq!(
            d.reason,
            "no person or vehicle in 2 frames; ignored: dog (0.70), bird (0.60)"
        );
        assert_eq!(d.roles, vec![vec![Role::Other], vec![Role::Other]]);
    }

    #[test]
    fn evidence_frame_shows_the_strongest_cause() {
        let frames = clip(vec![
            vec![person(0.7, 100.0)],
            vec![person(0.9, 120.0)],
            vec![person(0.8, 140.0)],
        ]);
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
