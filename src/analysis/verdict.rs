//! The verdict document sent to the monitoring centre (schema `alarm-verifier/verdict/v1`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::analysis::detect::Detection;
use crate::analysis::policy::{Decision, FrameDetections, Outcome};
use crate::intake::alarm::Alarm;

pub const SCHEMA: &str = "alarm-verifier/verdict/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Verified,
    FalseAlarm,
    Unverifiable,
}

impl VerdictKind {
    /// The name in the verdict document (`verified`, `false_alarm`, `unverifiable`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::FalseAlarm => "false_alarm",
            Self::Unverifiable => "unverifiable",
        }
    }
}

impl From<Outcome> for VerdictKind {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Verified => Self::Verified,
            Outcome::FalseAlarm => Self::FalseAlarm,
        }
    }
}

/// Why an alarm is `unverifiable`, for machines (the reason line says it for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The camera was offline (or unknown) when the alarm came.
    CameraOffline,
    /// The camera's video broke off, or could not be decoded, during the window.
    StreamBroken,
    /// The box could not analyse it in time (queue full, deadline, video left the buffer).
    Overloaded,
    /// There was no video of the window to analyse.
    NoVideo,
    /// The view became dark or flat (covered, painted over, lights cut) around the alarm.
    ViewBlocked,
    /// The view became saturated (a torch or lamp shone into the lens) around the alarm.
    ViewBlinded,
    /// The view lost its edges (sprayed, smeared or knocked out of focus) around the alarm.
    ViewDefocused,
    /// The service stopped or restarted before the alarm was analysed.
    Interrupted,
}

impl Cause {
    pub const ALL: [Cause; 8] = [
        Self::CameraOffline,
        Self::StreamBroken,
        Self::Overloaded,
        Self::NoVideo,
        Self::ViewBlocked,
        Self::ViewBlinded,
        Self::ViewDefocused,
        Self::Interrupted,
    ];

    /// The name in the verdict document.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CameraOffline => "camera_offline",
            Self::StreamBroken => "stream_broken",
            Self::Overloaded => "overloaded",
            Self::NoVideo => "no_video",
            Self::ViewBlocked => "view_blocked",
            Self::ViewBlinded => "view_blinded",
            Self::ViewDefocused => "view_defocused",
            Self::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportedDetection {
    pub label: String,
    pub score: f32,
    /// x, y, w, h as fractions of the frame.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub frame_time: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictDocument {
    pub schema: String,
    /// The id as the sender sent it (or as generated here when it sent none).
    pub alarm_id: String,
    /// This alarm's own key: `alarm_id`, or `{alarm_id}~{n}` when the sender used the id before for
    /// another alarm. It names the record (API, feedback topic) and the evidence topic. Documents
    /// stored before the field existed read as empty; the store fills it in.
    #[serde(default)]
    pub record_id: String,
    pub camera: String,
    pub site: String,
    pub alarm_time: String,
    pub verdict: VerdictKind,
    /// For `unverifiable`: why, as a machine-readable cause. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    pub reason: String,
    pub detections: Vec<ReportedDetection>,
    pub frames_analyzed: usize,
    /// Detector runs spent on this alarm.
    #[serde(default)]
    pub inferences: usize,
    /// Which of the camera's streams was analysed: `detect` or `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Most analysed frames were grey (an IR camera at night); the policy's night rules applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub night: bool,
    pub model: String,
    pub latency_ms: u64,
    pub evidence_topic: Option<String>,
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl VerdictDocument {
    /// A verdict the policy reached on analysed frames of `width` x `height`. The detections listed
    /// are the causes in the evidence frame, so the document and the evidence image agree; the reason
    /// line summarises the whole clip.
    pub fn decided(
        alarm: &Alarm,
        site: &str,
        model: &str,
        decision: &Decision,
        frames: &[FrameDetections],
        size: (u32, u32),
    ) -> Self {
        let detections = decision
            .causes
            .iter()
            .filter(|(i, _)| Some(*i) == decision.evidence_frame)
            .filter_map(|(i, d)| frames.get(*i).map(|f| report(d, f.time, size)))
            .collect();
        Self {
            verdict: decision.outcome.into(),
            reason: decision.reason.clone(),
            detections,
            frames_analyzed: frames.len(),
            inferences: frames.len(),
            cause: None,
            ..Self::unverifiable(alarm, site, model, Cause::NoVideo, "")
        }
    }

    /// A verdict for an alarm that could not be checked, with why.
    pub fn unverifiable(alarm: &Alarm, site: &str, model: &str, cause: Cause, reason: &str) -> Self {
        Self {
            schema: SCHEMA.into(),
            alarm_id: alarm.alarm_id.clone(),
            record_id: alarm.record_id.clone(),
            camera: alarm.camera.clone(),
            site: site.into(),
            alarm_time: rfc3339(alarm.time),
            verdict: VerdictKind::Unverifiable,
            cause: Some(cause),
            reason: reason.into(),
            detections: Vec::new(),
            frames_analyzed: 0,
            inferences: 0,
            stream: None,
            night: false,
            model: model.into(),
            latency_ms: 0,
            evidence_topic: None,
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn report(d: &Detection, time: DateTime<Utc>, (w, h): (u32, u32)) -> ReportedDetection {
    let (w, h) = (w.max(1) as f32, h.max(1) as f32);
    let round = |v: f32| (v * 10_000.0).round() / 10_000.0;
    ReportedDetection {
        label: d.label.clone(),
        score: round(d.score),
        bbox: [
            round(d.bbox.x / w),
            round(d.bbox.y / h),
            round(d.bbox.w / w),
            round(d.bbox.h / h),
        ],
        frame_time: rfc3339(time),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_names_match_the_document() {
        for kind in [
            VerdictKind::Verified,
            VerdictKind::FalseAlarm,
            VerdictKind::Unverifiable,
        ] {
            assert_eq!(serde_json::to_value(kind).ok(), Some(serde_json::json!(kind.as_str())));
        }
    }

    #[test]
    fn cause_names_match_the_document() {
        for cause in Cause::ALL {
            assert_eq!(
                serde_json::to_value(cause).ok(),
                Some(serde_json::json!(cause.as_str()))
            );
        }
    }
}
