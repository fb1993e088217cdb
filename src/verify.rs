//! One alarm through the pipeline: decoded frames → detector → policy → verdict and evidence.
//!
//! The live service and `verify-clip` both come through here; they differ only in where the
//! frames are decoded from.

use std::sync::Arc;

use chrono::TimeDelta;
use image::RgbImage;

use crate::alarm::Alarm;
use crate::clip::{ClipError, Frame, Window};
use crate::config::{ClipConfig, Config, EvidenceConfig};
use crate::detect::{Detection, Detector};
use crate::evidence;
use crate::policy::{FrameDetections, Policy};
use crate::verdict::VerdictDocument;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    // Not #[from]: a source would make error chains print the clip error twice.
    #[error("cannot analyse the clip: {0}")]
    Clip(ClipError),
    #[error("no video frames in the alarm window")]
    NoFrames,
}

/// A verdict with its evidence JPEG, when there is a frame to show.
pub struct Finding {
    pub doc: VerdictDocument,
    pub evidence: Option<Vec<u8>>,
}

pub struct Verifier {
    detector: Arc<Detector>,
    policy: Policy,
    clip: ClipConfig,
    evidence: EvidenceConfig,
    site: String,
}

/// The frame shown as evidence, kept while the clip is being analysed.
struct Best {
    rank: (bool, f32),
    index: usize,
    image: RgbImage,
    detections: Vec<Detection>,
}

impl Verifier {
    pub fn new(detector: Arc<Detector>, config: &Config) -> Self {
        Self {
            detector,
            policy: Policy::new(&config.policy),
            clip: config.clip.clone(),
            evidence: config.evidence.clone(),
            site: config.site.clone(),
        }
    }

    pub fn model_name(&self) -> &str {
        self.detector.model_name()
    }

    /// The part of the clip analysed for `alarm`.
    pub fn window(&self, alarm: &Alarm) -> Window {
        let ms = |s: f64| TimeDelta::milliseconds((s * 1000.0) as i64);
        Window {
            from: alarm.time - ms(self.clip.pre_s),
            to: alarm.time + ms(self.clip.post_s),
            fps: self.clip.analysis_fps,
        }
    }

    pub fn unverifiable(&self, alarm: &Alarm, reason: &str) -> Finding {
        Finding {
            doc: VerdictDocument::unverifiable(alarm, &self.site, self.model_name(), reason),
            evidence: None,
        }
    }

    /// Runs `decode`, which feeds frames of the window to the callback it is given, and judges them.
    /// Blocking: decoding and inference run on the calling thread.
    pub fn analyze(
        &self,
        alarm: &Alarm,
        decode: impl FnOnce(&mut dyn FnMut(Frame) -> Result<(), String>) -> Result<usize, ClipError>,
    ) -> Result<Finding, VerifyError> {
        let mut frames: Vec<FrameDetections> = Vec::new();
        let mut best: Option<Best> = None;
        let mut size = (0, 0);
        let decoded = decode(&mut |frame: Frame| {
            let detections = self.detector.detect(&frame.image).map_err(|e| e.to_string())?;
            size = frame.image.dimensions();
            let rank = self.policy.frame_rank(&detections);
            if best.as_ref().is_none_or(|b| rank > b.rank) {
                best = Some(Best {
                    rank,
                    index: frames.len(),
                    image: frame.image,
                    detections: detections.clone(),
                });
            }
            frames.push(FrameDetections {
                time: frame.time,
                detections,
            });
            Ok(())
        });
        if decoded.map_err(VerifyError::Clip)? == 0 {
            return Err(VerifyError::NoFrames);
        }
        let decision = self.policy.decide(&frames);
        let evidence_frame = best.as_ref().map(|b| b.index);
        let doc = VerdictDocument::decided(alarm, &self.site, self.model_name(), &decision, &frames, evidence_frame, size);
        let evidence = best.and_then(|b| {
            evidence::render(&b.image, &b.detections, |d| self.policy.is_cause(d), &self.evidence)
                .map_err(|e| tracing::warn!(alarm_id = %alarm.alarm_id, error = %e, "no evidence image"))
                .ok()
        });
        Ok(Finding { doc, evidence })
    }
}
