//! One alarm through the analysis: decoded frames → detector → policy, frame by frame, → verdict
//! and evidence.
//!
//! [`Analysis`] is incremental: it samples coarsely until a candidate is in view and densely
//! after, asks the policy after every frame, and stops the decoder as soon as the alarm is
//! verified. A false alarm is only concluded at the end of the window. The live service
//! (`analysis::live`) and `verify-clip`/`eval` both come through here; they differ only in where
//! the frames are decoded from.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use image::RgbImage;

use crate::analysis::clip::{self, ClipError, Decoders, Flow, Frame, FrameSink, SinkError, Window};
use crate::analysis::detect::{BoxPx, Detection};
use crate::analysis::detect::{DetectError, Detector};
use crate::analysis::evidence::{self, Annotations};
use crate::analysis::policy::{Decision, FrameDetections, Outcome, Policy, Role};
use crate::analysis::regions::{self, Motion, Region};
use crate::analysis::verdict::{Cause, VerdictDocument, VerdictKind, rfc3339};
use crate::analysis::view::{self, Loss, LostView, ViewCheck};
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

impl VerifyError {
    pub fn cause(&self) -> Cause {
        match self {
            Self::Clip(_) => Cause::StreamBroken,
            Self::NoFrames => Cause::NoVideo,
        }
    }
}

/// A verdict with its evidence JPEG, when there is a frame to show.
#[derive(Clone)]
pub struct Finding {
    pub doc: VerdictDocument,
    pub evidence: Option<Vec<u8>>,
}

pub struct Verifier {
    detector: Arc<Detector>,
    /// The site policy, and each camera's where it overrides it.
    site_policy: Policy,
    camera_policies: HashMap<String, Policy>,
    /// The night rules (`[policy.night]`, `[camera.policy.night]`), where there are any.
    site_night: Option<Policy>,
    camera_nights: HashMap<String, Policy>,
    clip: ClipConfig,
    evidence: EvidenceConfig,
    site: String,
    decoders: Decoders,
    max_regions: usize,
    nms_iou: f32,
}

impl Verifier {
    pub fn new(detector: Arc<Detector>, config: &Config, decoders: Decoders) -> Self {
        Self {
            detector,
            site_policy: Policy::new(&config.policy),
            camera_policies: config
                .cameras
                .iter()
                .map(|c| (c.id.clone(), Policy::new(&config.camera_policy(c))))
                .collect(),
            site_night: config.policy.night_policy().map(|p| Policy::new(&p)),
            camera_nights: config
                .cameras
                .iter()
                .filter_map(|c| Some((c.id.clone(), Policy::new(&config.camera_policy(c).night_policy()?))))
                .collect(),
            clip: config.clip.clone(),
            evidence: config.evidence.clone(),
            site: config.site.clone(),
            decoders,
            max_regions: config.detector.max_regions,
            nms_iou: config.detector.nms_iou,
        }
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    pub fn model_name(&self) -> &str {
        self.detector.model_name()
    }

    pub fn decoders(&self) -> &Decoders {
        &self.decoders
    }

    /// The camera's rules; at `night`, its night rules where it has any.
    fn policy_for(&self, camera: &str, night: bool) -> &Policy {
        let day = || self.camera_policies.get(camera).unwrap_or(&self.site_policy);
        if !night {
            return day();
        }
        match self.camera_policies.get(camera) {
            Some(_) => self.camera_nights.get(camera).unwrap_or_else(day),
            None => self.site_night.as_ref().unwrap_or_else(day),
        }
    }

    /// Whether the whole-frame pass sees in `image` a target that `camera`'s rules would take as a
    /// candidate: a first look that orders the work, never a verdict.
    pub fn glimpse(&self, camera: &str, image: &RgbImage) -> Result<bool, DetectError> {
        let night = view::measure(image, Utc::now()).grey;
        let policy = self.policy_for(camera, night);
        let size = image.dimensions();
        Ok(self
            .detector
            .detect(image)?
            .iter()
            .any(|d| policy.is_candidate(d, size)))
    }

    /// The part of the clip analysed for an alarm at `time`.
    pub fn window_at(&self, time: DateTime<Utc>) -> Window {
        let ms = |s: f64| TimeDelta::milliseconds((s * 1000.0) as i64);
        Window {
            from: time - ms(self.clip.pre_s),
            to: time + ms(self.clip.post_s),
            fps: self.clip.analysis_fps,
        }
    }

    pub fn window(&self, alarm: &Alarm) -> Window {
        self.window_at(alarm.time)
    }

    pub fn unverifiable(&self, alarm: &Alarm, cause: Cause, reason: &str) -> Finding {
        Finding {
            doc: VerdictDocument::unverifiable(alarm, &self.site, self.model_name(), cause, reason),
            evidence: None,
        }
    }

    /// Starts the analysis of `alarm` over `window` (which may reach beyond the alarm's own, when
    /// alarms on one camera share an analysis).
    pub fn start(self: &Arc<Self>, alarm: &Alarm, window: Window) -> Analysis {
        Analysis {
            verifier: self.clone(),
            alarm: alarm.clone(),
            window,
            sampler: Sampler::new(window.from, self.clip.coarse_fps, self.clip.analysis_fps),
            frames: Vec::new(),
            images: Vec::new(),
            size: (0, 0),
            decision: None,
            notes: Vec::new(),
            stream: None,
            motion: Motion::default(),
            view: ViewCheck::default(),
            lost_image: None,
            passes: Vec::new(),
            inferences: 0,
        }
    }

    /// verify-clip's path: treats second `alarm_at` of a video file as an alarm on `camera` (whose
    /// policy applies) raised now, and judges the clip around it.
    pub fn verify_file(self: &Arc<Self>, file: &Path, alarm_at: f64, camera: &str) -> Result<Finding, VerifyError> {
        let now = Utc::now();
        let alarm = Alarm {
            received: now,
            ..Alarm::new(
                format!("clip-{}", uuid::Uuid::new_v4().simple()),
                camera,
                now,
                format!("file:{}", file.display()),
            )
        };
        // The file's first frame is alarm_at seconds before the alarm.
        let base = now - TimeDelta::milliseconds((alarm_at * 1000.0) as i64);
        let window = self.window(&alarm);
        let mut analysis = self.start(&alarm, window);
        clip::decode_file_into(file, base, window.to, &mut analysis).map_err(VerifyError::Clip)?;
        let mut finding = analysis.finish(None)?;
        finding.doc.latency_ms = alarm.received_at.elapsed().as_millis() as u64;
        Ok(finding)
    }
}

fn cause_of(loss: Loss) -> Cause {
    match loss {
        Loss::Blocked => Cause::ViewBlocked,
        Loss::Blinded => Cause::ViewBlinded,
        Loss::Defocused => Cause::ViewDefocused,
    }
}

/// Picks frames on a grid of `1 / fps` from the window's start: the first frame in each slot. The
/// rate starts coarse and turns dense for good once a candidate is in view.
struct Sampler {
    from: DateTime<Utc>,
    fps: f64,
    dense_fps: f64,
    last: Option<DateTime<Utc>>,
}

impl Sampler {
    fn new(from: DateTime<Utc>, coarse_fps: f64, dense_fps: f64) -> Self {
        Self {
            from,
            fps: coarse_fps,
            dense_fps,
            last: None,
        }
    }

    fn slot(&self, time: DateTime<Utc>) -> i64 {
        ((time - self.from).as_seconds_f64() * self.fps).round() as i64
    }

    fn take(&mut self, time: DateTime<Utc>) -> bool {
        if time < self.from || self.last.is_some_and(|l| self.slot(l) == self.slot(time)) {
            return false;
        }
        self.last = Some(time);
        true
    }

    fn densify(&mut self) {
        self.fps = self.dense_fps;
    }
}

/// An alarm being analysed, frame by frame. Feed it frames (it is a [`FrameSink`]), then
/// [`finish`](Self::finish) it.
pub struct Analysis {
    verifier: Arc<Verifier>,
    alarm: Alarm,
    window: Window,
    sampler: Sampler,
    frames: Vec<FrameDetections>,
    /// Frames that may become the evidence, at evidence size: those with detections, and the one
    /// nearest the alarm (shown when nothing was detected).
    images: Vec<Option<RgbImage>>,
    size: (u32, u32),
    /// The policy's decision on the frames so far (it changes only when a frame is added).
    decision: Option<Decision>,
    notes: Vec<String>,
    stream: Option<String>,
    motion: Motion,
    /// What the camera could see in each analysed frame.
    view: ViewCheck,
    /// The first frame whose view was lost (its index and image at evidence size): the evidence of
    /// an alarm that is unverifiable for it.
    lost_image: Option<(usize, RgbImage)>,
    /// Per analysed frame: the regions detected in, and for each detection the region it came from
    /// (None: the whole-frame pass).
    passes: Vec<(Vec<Region>, Vec<Option<usize>>)>,
    inferences: usize,
}

impl FrameSink for Analysis {
    fn wants(&mut self, time: DateTime<Utc>) -> bool {
        !self.is_verified() && time <= self.window.to && self.sampler.take(time)
    }

    fn frame(&mut self, frame: Frame) -> Result<Flow, SinkError> {
        self.view.observe(view::measure(&frame.image, frame.time));
        let (detections, regions, origins) = self.detect(&frame.image)?;
        tracing::debug!(
            alarm_id = %self.alarm.alarm_id,
            frame_time = %rfc3339(frame.time),
            detections = ?detections.iter().map(|d| format!("{} {:.2} [{:.0} {:.0} {:.0} {:.0}]", d.label, d.score, d.bbox.x, d.bbox.y, d.bbox.w, d.bbox.h)).collect::<Vec<_>>(),
            "frame analysed"
        );
        self.size = frame.image.dimensions();
        let verifier = self.verifier.clone();
        let policy = verifier.policy_for(&self.alarm.camera, self.view.is_night());
        if detections.iter().any(|d| policy.is_candidate(d, self.size)) {
            self.sampler.densify();
        }
        if self.lost_image.is_none() && self.view.last_is_lost() {
            let fitted = evidence::fit(frame.image.clone(), self.verifier.evidence.max_size)?;
            self.lost_image = Some((self.frames.len(), fitted.image));
        }
        self.keep_image(frame.image, frame.time, !detections.is_empty())?;
        self.passes.push((regions, origins));
        self.frames.push(FrameDetections {
            time: frame.time,
            detections,
        });
        let decision = self
            .decision
            .insert(policy.decide(&self.frames, self.alarm.time, self.size));
        Ok(if decision.outcome == Outcome::Verified {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

impl Analysis {
    /// The whole-frame pass, and on large frames the region passes: where the picture changed and
    /// where targets were seen in the previous frame. Returns the merged detections, the regions,
    /// and the region each detection came from.
    #[allow(clippy::type_complexity)]
    fn detect(&mut self, image: &RgbImage) -> Result<(Vec<Detection>, Vec<Region>, Vec<Option<usize>>), DetectError> {
        let detector = self.verifier.detector.clone();
        let whole = detector.detect(image)?;
        self.inferences += 1;
        let size = image.dimensions();
        let (side, _) = detector.input_size();
        if self.verifier.max_regions == 0 || !regions::worth_regions(size, side) {
            let origins = vec![None; whole.len()];
            return Ok((whole, Vec::new(), origins));
        }
        let changes = self.motion.changes(image);
        let policy = self.verifier.policy_for(&self.alarm.camera, self.view.is_night());
        let mut areas: Vec<BoxPx> = self
            .frames
            .last()
            .map(|f| {
                f.detections
                    .iter()
                    // Only small ones: a large target is seen well enough by the whole-frame pass.
                    .filter(|d| policy.is_target(d) && d.bbox.w.max(d.bbox.h) < side as f32 / 2.0)
                    .map(|d| d.bbox)
                    .collect()
            })
            .unwrap_or_default();
        areas.extend(changes);
        let planned = regions::build(&areas, side, size, self.verifier.max_regions);
        let mut passes: Vec<(Option<usize>, Detection)> = whole.into_iter().map(|d| (None, d)).collect();
        for (i, region) in planned.iter().enumerate() {
            let crop = image::imageops::crop_imm(image, region.x, region.y, region.side, region.side).to_image();
            let found = detector.detect(&crop)?;
            self.inferences += 1;
            passes.extend(regions::to_frame(region, found, size).into_iter().map(|d| (Some(i), d)));
        }
        let (origins, detections) = regions::merge(passes, self.verifier.nms_iou).into_iter().unzip();
        Ok((detections, planned, origins))
    }

    pub fn alarm(&self) -> &Alarm {
        &self.alarm
    }

    pub fn window(&self) -> Window {
        self.window
    }

    /// Lets the window reach further, for a later alarm on the same camera that shares this analysis.
    pub fn extend_to(&mut self, to: DateTime<Utc>) {
        self.window.to = self.window.to.max(to);
    }

    pub fn is_verified(&self) -> bool {
        self.decision.as_ref().is_some_and(|d| d.outcome == Outcome::Verified)
    }

    pub fn frames_analysed(&self) -> usize {
        self.frames.len()
    }

    /// A line added to the verdict's reason (e.g. which stream was analysed, and why).
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Names the stream analysed, for the verdict document.
    pub fn set_stream(&mut self, stream: &str) {
        self.stream = Some(stream.to_owned());
    }

    /// The time of the frame `alarm`'s evidence will show, and whether boxes are drawn on it (when
    /// not, any frame near that time will do).
    pub fn evidence_time_for(&self, alarm: &Alarm) -> Option<(DateTime<Utc>, bool)> {
        self.decision_for(alarm)?
            .evidence_frame
            .and_then(|i| self.frames.get(i))
            .map(|f| (f.time, !f.detections.is_empty()))
    }

    /// The policy's decision on the frames so far, for `alarm` (the lead or one that joined).
    fn decision_for(&self, alarm: &Alarm) -> Option<Decision> {
        if alarm.alarm_id == self.alarm.alarm_id {
            return self.decision.clone();
        }
        self.decision.as_ref()?;
        let policy = self.verifier.policy_for(&alarm.camera, self.view.is_night());
        Some(policy.decide(&self.frames, alarm.time, self.size))
    }

    fn keep_image(
        &mut self,
        image: RgbImage,
        time: DateTime<Utc>,
        detected: bool,
    ) -> Result<(), evidence::EvidenceError> {
        let nearest_so_far = self
            .frames
            .iter()
            .zip(&self.images)
            .filter(|(f, i)| i.is_some() && f.detections.is_empty())
            .all(|(f, _)| (time - self.alarm.time).abs() < (f.time - self.alarm.time).abs());
        if !detected && !nearest_so_far {
            self.images.push(None);
            return Ok(());
        }
        if !detected {
            // Only one frame without detections is kept: the one nearest the alarm.
            for (f, i) in self.frames.iter().zip(self.images.iter_mut()) {
                if f.detections.is_empty() {
                    *i = None;
                }
            }
        }
        let fitted = evidence::fit(image, self.verifier.evidence.max_size)?;
        self.images.push(Some(fitted.image));
        Ok(())
    }

    /// The verdict and its evidence. `main_frame` is the main stream's frame at
    /// [`evidence_time`](Self::evidence_time), when the analysed stream was the detect stream: the
    /// evidence then shows it, with the boxes scaled to it.
    pub fn finish(self, main_frame: Option<Frame>) -> Result<Finding, VerifyError> {
        self.finish_for(&self.alarm, main_frame)
    }

    /// [`finish`](Self::finish) for `alarm`: the lead, or an alarm on the same camera that joined
    /// the analysis, judged on its own alarm time. The analysis can go on after.
    pub fn finish_for(&self, alarm: &Alarm, main_frame: Option<Frame>) -> Result<Finding, VerifyError> {
        // A decision exists once a frame has been analysed.
        let Some(mut decision) = self.decision_for(alarm) else {
            return Err(VerifyError::NoFrames);
        };
        let policy = self.verifier.policy_for(&alarm.camera, self.view.is_night());
        for note in &self.notes {
            decision.reason.push_str("; ");
            decision.reason.push_str(note);
        }
        let mut doc = VerdictDocument::decided(
            alarm,
            &self.verifier.site,
            self.verifier.model_name(),
            &decision,
            &self.frames,
            self.size,
        );
        doc.stream = self.stream.clone();
        doc.inferences = self.inferences;
        doc.night = self.view.is_night();
        // Nobody seen is only "nobody there" if the camera could see: detections still win.
        let mut lost_evidence = None;
        if decision.outcome == Outcome::FalseAlarm
            && let Some(lost) = self.view.lost(alarm.time - TimeDelta::seconds(1))
        {
            tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, reason = %lost.reason, "view lost at the alarm");
            doc.verdict = VerdictKind::Unverifiable;
            doc.cause = Some(cause_of(lost.loss));
            doc.reason = format!("{}; nobody seen before it", lost.reason);
            for note in &self.notes {
                doc.reason.push_str("; ");
                doc.reason.push_str(note);
            }
            decision.reason = doc.reason.clone();
            lost_evidence = self.lost_image.clone();
        }
        let verdict = doc.verdict;
        let evidence = decision.evidence_frame.and_then(|i| {
            let (i, image, time) = match (lost_evidence, main_frame) {
                // The lost view itself, so the operator sees what the camera saw.
                (Some((lost, image)), _) => (lost, image, self.frames.get(lost)?.time),
                (None, Some(main)) => (i, main.image, main.time),
                (None, None) => {
                    let i = self.kept_image_near(i)?;
                    (i, self.images.get(i).cloned().flatten()?, self.frames.get(i)?.time)
                }
            };
            self.render_evidence(policy, &decision, verdict, i, image, time)
                .map_err(|e| tracing::warn!(alarm_id = %alarm.alarm_id, error = %e, "no evidence image"))
                .ok()
        });
        Ok(Finding { doc, evidence })
    }

    /// A false alarm concluded on frames none of which showed a view, on a camera whose idle check
    /// had seen its view lost before the alarm: nobody could be seen, so it is unverifiable.
    pub fn apply_idle_loss(&self, finding: &mut Finding, lost: &LostView) {
        if finding.doc.verdict != VerdictKind::FalseAlarm || self.view.saw_a_view() {
            return;
        }
        finding.doc.verdict = VerdictKind::Unverifiable;
        finding.doc.cause = Some(cause_of(lost.loss));
        finding.doc.reason = format!(
            "{} (the camera's idle check); nothing seen in the alarm window",
            lost.reason
        );
    }

    /// Frame `index` if its image was kept, or else the kept frame without detections nearest
    /// it in time (an alarm that joined the analysis is shown the empty view nearest the lead's).
    fn kept_image_near(&self, index: usize) -> Option<usize> {
        if self.images.get(index).is_some_and(Option::is_some) {
            return Some(index);
        }
        let time = self.frames.get(index)?.time;
        self.frames
            .iter()
            .zip(&self.images)
            .enumerate()
            .filter(|(_, (f, image))| image.is_some() && f.detections.is_empty())
            .min_by_key(|(_, (f, _))| (f.time - time).abs())
            .map(|(i, _)| i)
    }

    /// Draws frame `index`'s detections, scaled from the analysed frames to `image`.
    fn render_evidence(
        &self,
        policy: &Policy,
        decision: &Decision,
        verdict: VerdictKind,
        index: usize,
        image: RgbImage,
        shown: DateTime<Utc>,
    ) -> Result<Vec<u8>, evidence::EvidenceError> {
        let frame = &self.frames[index];
        let (w, h) = image.dimensions();
        let (sx, sy) = (
            w as f32 / self.size.0.max(1) as f32,
            h as f32 / self.size.1.max(1) as f32,
        );
        let detections: Vec<_> = frame
            .detections
            .iter()
            .cloned()
            .map(|mut d| {
                d.bbox.x *= sx;
                d.bbox.w *= sx;
                d.bbox.y *= sy;
                d.bbox.h *= sy;
                d
            })
            .zip(decision.roles[index].iter().copied())
            .collect();
        let verdict = match verdict {
            VerdictKind::Verified => "VERIFIED",
            VerdictKind::FalseAlarm => "FALSE ALARM",
            VerdictKind::Unverifiable => "UNVERIFIABLE",
        };
        // The regions the causes were found in, scaled like the boxes.
        let regions: Vec<BoxPx> = self
            .passes
            .get(index)
            .map(|(regions, origins)| {
                let mut used: Vec<usize> = origins
                    .iter()
                    .zip(&decision.roles[index])
                    .filter(|(_, role)| **role == Role::Cause)
                    .filter_map(|(origin, _)| *origin)
                    .collect();
                used.sort_unstable();
                used.dedup();
                used.iter()
                    .filter_map(|i| regions.get(*i))
                    .map(|r| {
                        let b = r.as_box();
                        BoxPx {
                            x: b.x * sx,
                            y: b.y * sy,
                            w: b.w * sx,
                            h: b.h * sy,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let notes = Annotations {
            regions: &regions,
            detections: &detections,
            zones: policy.zones(),
            masks: policy.masks(),
            header: format!("{} {}", self.alarm.camera, rfc3339(shown)),
            footer: format!("{verdict}: {}", decision.reason),
        };
        let scaled = evidence::fit(image, self.verifier.evidence.max_size)?;
        evidence::render(&scaled, &notes, &self.verifier.evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(sampler: &mut Sampler, from: DateTime<Utc>, source_fps: f64, seconds: f64) -> usize {
        (0..(seconds * source_fps) as i64)
            .map(|i| from + TimeDelta::microseconds((i as f64 * 1e6 / source_fps) as i64))
            .filter(|t| sampler.take(*t))
            .count()
    }

    #[test]
    fn the_sampler_is_coarse_until_a_candidate_then_dense() {
        let from = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        let mut sampler = Sampler::new(from, 1.5, 3.0);
        let coarse = taken(&mut sampler, from, 15.0, 4.0);
        assert!((5..=7).contains(&coarse), "{coarse} frames in 4 s at 1.5 fps");
        sampler.densify();
        let dense = taken(&mut sampler, from + TimeDelta::seconds(4), 15.0, 4.0);
        assert!((11..=13).contains(&dense), "{dense} frames in 4 s at 3 fps");
    }

    #[test]
    fn the_sampler_skips_frames_before_the_window() {
        let from = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        let mut sampler = Sampler::new(from, 1.5, 3.0);
        assert!(!sampler.take(from - TimeDelta::milliseconds(10)));
        assert!(sampler.take(from));
    }
}
