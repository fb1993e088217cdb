//! The per-frame rules: which labels each target class stands for, the class rules resolved over
//! the site's, and the gates a detection must pass (size, shape, masks and zones at its foot).

use crate::analysis::detect::Detection;
use crate::config::{PolicyConfig, Zone};

/// The labels the `vehicle` class stands for.
pub const VEHICLE_LABELS: [&str; 5] = ["car", "truck", "bus", "motorcycle", "bicycle"];

/// A class rule with every value resolved.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) min_score: f32,
    pub(super) threshold: f32,
    pub(super) min_frames: usize,
    pub(super) min_area: f32,
    pub(super) max_area: f32,
    pub(super) min_ratio: f32,
    pub(super) max_ratio: f32,
    pub(super) ignore_stationary: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) name: String,
    pub(super) labels: Vec<String>,
    pub(super) rule: Rule,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub(super) targets: Vec<Target>,
    pub(super) zones: Vec<Zone>,
    pub(super) masks: Vec<Zone>,
    pub(super) stationary_iou: f32,
}

/// Why a target detection did not count in its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Gate {
    LowScore,
    Size,
    Shape,
    Masked,
    OutsideZones,
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

    /// Whether a detection is of a target class, whatever its score and place.
    pub fn is_target(&self, d: &Detection) -> bool {
        self.target_of(d).is_some()
    }

    /// Whether a detection could become a cause: a target class at its minimum score that passes
    /// the gates. Analysis samples more densely once one is in view.
    pub fn is_candidate(&self, d: &Detection, size: (u32, u32)) -> bool {
        self.target_of(d).is_some_and(|t| {
            let rule = &self.targets[t].rule;
            d.score >= rule.min_score && self.gate(d, rule, size).is_ok()
        })
    }

    pub(super) fn target_of(&self, d: &Detection) -> Option<usize> {
        self.targets.iter().position(|t| t.labels.contains(&d.label))
    }

    /// Per-frame gates other than the score: the zones a target detection is in, or why it does not count.
    pub(super) fn gate(&self, d: &Detection, rule: &Rule, (w, h): (u32, u32)) -> Result<Vec<String>, Gate> {
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
        let zones: Vec<String> = self
            .zones
            .iter()
            .filter(|z| inside(&z.points, foot))
            .map(|z| z.name.clone())
            .collect();
        if zones.is_empty() {
            Err(Gate::OutsideZones)
        } else {
            Ok(zones)
        }
    }
}

/// Whether `p` lies inside the polygon (even-odd rule).
pub(super) fn inside(polygon: &[[f32; 2]], p: [f32; 2]) -> bool {
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
