//! One alarm through the pipeline: decoded frames → detector → policy → verdict and evidence.
//!
//! The live service and `verify-clip` both come through here; they differ only in where the
//! frames are decoded from.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{TimeDelta, Utc};

use crate::analysis::clip::{self, ClipError, Frame, Window};
use crate::analysis::detect::Detector;
use crate::analysis::evidence::{self, Annotations, Scaled};
use crate::analysis::policy::{Decision, FrameDetections, Outcome, Policy};
use crate::analysis::verdict::{VerdictDocument, rfc3339};
use crate::config::{ClipConfig, Config, EvidenceConfig};
use crate::intake::alarm::Alarm;

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
    /// The site policy, and each camera's where it overrides it.
    site_policy: Policy,
    camera_policies: HashMap<String, Policy>,
    clip: ClipConfig,
    evidence: EvidenceConfig,
    site: String,
}

impl Verifier {
    pub fn new(detector: Arc<Detector>, config: &Config) -> Self {
        Self {
            detector,
            site_policy: Policy::new(&config.policy),
            camera_policies: config
                .cameras
                .iter()
                .map(|c| (c.id.clone(), Policy::new(&config.camera_policy(c))))
                .collect(),
            clip: config.clip.clone(),
            evidence: config.evidence.clone(),
            site: config.site.clone(),
        }
    }

    pub fn model_name(&self) -> &str {
        self.detector.model_name()
    }

    fn policy_for(&self, camera: &str) -> &Policy {
        self.camera_policies.get(camera).unwrap_or(&self.site_policy)
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

    /// Runs `decode`, which feeds frames of the window to the callback it is given, and judges them
    /// by the policy of the alarm's camera. Blocking: decoding and inference run on this thread.
    pub fn analyze(
        &self,
        alarm: &Alarm,
        decode: impl FnOnce(&mut dyn FnMut(Frame) -> Result<(), String>) -> Result<usize, ClipError>,
    ) -> Result<Finding, VerifyError> {
        let policy = self.policy_for(&alarm.camera);
        let mut frames: Vec<FrameDetections> = Vec::new();
        // Kept at evidence size until the policy says which frame shows the cause best.
        let mut images: Vec<Scaled> = Vec::new();
        let mut size = (0, 0);
        let decoded = decode(&mut |frame: Frame| {
            let detections = self.detector.detect(&frame.image).map_err(|e| e.to_string())?;
            tracing::debug!(
                alarm_id = %alarm.alarm_id,
                frame_time = %rfc3339(frame.time),
                detections = ?detections.iter().map(|d| format!("{} {:.2} [{:.0} {:.0} {:.0} {:.0}]", d.label, d.score, d.bbox.x, d.bbox.y, d.bbox.w, d.bbox.h)).collect::<Vec<_>>(),
                "frame analysed"
            );
            size = frame.image.dimensions();
            images.push(evidence::fit(frame.image, self.evidence.max_size).map_err(|e| e.to_string())?);
            frames.push(FrameDetections {
                time: frame.time,
                detections,
            });
            Ok(())
        });
        if decoded.map_err(VerifyError::Clip)? == 0 {
            return Err(VerifyError::NoFrames);
        }
        let decision = policy.decide(&frames, alarm.time, size);
        let doc = VerdictDocument::decided(alarm, &self.site, self.model_name(), &decision, &frames, size);
        let evidence = decision.evidence_frame.and_then(|i| {
            self.render_evidence(alarm, policy, &decision, &frames[i], &images[i], i)
                .map_err(|e| tracing::warn!(alarm_id = %alarm.alarm_id, error = %e, "no evidence image"))
                .ok()
        });
        Ok(Finding { doc, evidence })
    }

    /// verify-clip's path: treats second `alarm_at` of a video file as an alarm on `camera` (whose
    /// policy applies) raised now, and judges the clip around it.
    pub fn verify_file(&self, file: &Path, alarm_at: f64, camera: &str) -> Result<Finding, VerifyError> {
        let now = Utc::now();
        let alarm = Alarm {
            alarm_id: format!("clip-{}", uuid::Uuid::new_v4().simple()),
            camera: camera.to_owned(),
            time: now,
            source: Some(file.display().to_string()),
            received: now,
            received_at: tokio::time::Instant::now(),
        };
        // The file's first frame is alarm_at seconds before the alarm.
        let base = now - TimeDelta::milliseconds((alarm_at * 1000.0) as i64);
        let window = self.window(&alarm);
        let mut finding = self.analyze(&alarm, |on_frame| clip::decode_file(file, base, window, on_frame))?;
        finding.doc.latency_ms = alarm.received_at.elapsed().as_millis() as u64;
        Ok(finding)
    }

    fn render_evidence(
        &self,
        alarm: &Alarm,
        policy: &Policy,
        decision: &Decision,
        frame: &FrameDetections,
        image: &Scaled,
        index: usize,
    ) -> Result<Vec<u8>, evidence::EvidenceError> {
        let detections: Vec<_> = frame
            .detections
            .iter()
            .cloned()
            .zip(decision.roles[index].iter().copied())
            .collect();
        let verdict = match decision.outcome {
            Outcome::Verified => "VERIFIED",
            Outcome::FalseAlarm => "FALSE ALARM",
        };
        let notes = Annotations {
            detections: &detections,
            zones: policy.zones(),
            masks: policy.masks(),
            header: format!("{} {}", alarm.camera, rfc3339(frame.time)),
            footer: format!("{verdict}: {}", decision.reason),
        };
        evidence::render(image, &notes, &self.evidence)
    }
}
