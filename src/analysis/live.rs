//! Streaming analysis of live cameras: an alarm's video is decoded from the ring as soon as the
//! alarm arrives, and then as its post-alarm video comes in, so that a verified alarm is answered
//! in about a second and a false one right after its window.
//!
//! Each alarm's analysis alternates between waiting for video (holding nothing) and analysing
//! what has arrived (holding a worker permit, see [`Workers`]). Alarms on one camera whose windows
//! overlap share one analysis: a PIR, a motion and a line-crossing alarm fired together cost one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::analysis::clip::{self, ClipError, Flow, Frame, FrameSink, LiveDecoder, SinkError, Window};
use crate::analysis::verdict::{Cause, VerdictKind, rfc3339};
use crate::analysis::verify::{Analysis, Finding, Verifier};
use crate::analysis::workers::{Permit, Workers};
use crate::ingest::camera::{Camera, StreamKind};
use crate::ingest::ring::ReadError;
use crate::intake::alarm::Alarm;
use crate::support::lock;

/// How often a waiting analysis looks for new video.
const POLL: Duration = Duration::from_millis(40);
/// After the window's end, how long to wait for its last video before concluding without it.
const LATE_VIDEO: Duration = Duration::from_secs(3);
/// An alarm joins a running analysis only if that analysis can still see the end of its window
/// this long before the analysis's own alarm must be answered; otherwise it starts its own.
const JOIN_MARGIN: Duration = Duration::from_secs(2);
/// How far joined alarms may stretch an analysis past its own alarm's window (the default
/// `clip.post_s`): the first alarm's answer waits for the stretched window.
const MAX_STRETCH: Duration = Duration::from_secs(4);

/// The shared analysis of one camera window: its reach (joined alarms extend it) and its result.
struct Job {
    window: Mutex<Window>,
    /// None while the analysis runs (alarms may join it), then its verdict.
    result: watch::Sender<Option<Finding>>,
    lead: String,
    /// How far joined alarms may stretch the window: short of the lead alarm's deadline, and at
    /// most `MAX_STRETCH` past its own window.
    reach_limit: DateTime<Utc>,
}

impl Job {
    /// Still running: an overlapping alarm can join it.
    fn is_open(&self) -> bool {
        self.result.borrow().is_none()
    }
}

/// What a joined alarm's verdict is made from.
enum Joined {
    Running(watch::Receiver<Option<Finding>>, String),
    Verified(Box<Finding>, String),
}

pub struct LiveAnalyser {
    verifier: Arc<Verifier>,
    workers: Arc<Workers>,
    jobs: Mutex<HashMap<String, Vec<Arc<Job>>>>,
}

impl LiveAnalyser {
    pub fn new(verifier: Arc<Verifier>, workers: Arc<Workers>) -> Self {
        Self {
            verifier,
            workers,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Verifies `alarm` on `camera`, answering by `deadline` (unverifiable when it cannot).
    pub async fn analyse(&self, camera: &Camera, alarm: &Alarm, deadline: Instant) -> Finding {
        let window = self.verifier.window(alarm);
        self.forget_old(&alarm.camera);
        if let Some(joined) = self.join(alarm, window) {
            return self.joined_verdict(alarm, joined).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let job = Arc::new(Job {
            window: Mutex::new(window),
            result: watch::channel(None).0,
            lead: alarm.alarm_id.clone(),
            reach_limit: (Utc::now() + TimeDelta::from_std(left.saturating_sub(JOIN_MARGIN)).unwrap_or_default())
                .min(window.to + TimeDelta::from_std(MAX_STRETCH).unwrap_or_default()),
        });
        lock(&self.jobs)
            .entry(alarm.camera.clone())
            .or_default()
            .push(job.clone());
        let _close = CloseOnDrop {
            job: &job,
            fallback: Some(self.verifier.unverifiable(
                alarm,
                Cause::Overloaded,
                "overloaded: the analysis was stopped before its window was seen",
            )),
        };
        let finding = self.run(camera, alarm, &job, deadline).await;
        job.result.send_replace(Some(finding.clone()));
        finding
    }

    /// An analysis on the same camera this alarm can share: one still running whose window
    /// overlaps (it is extended to cover this alarm's), or one verified by a frame inside this
    /// alarm's window.
    fn join(&self, alarm: &Alarm, window: Window) -> Option<Joined> {
        let jobs = lock(&self.jobs);
        for job in jobs.get(&alarm.camera)? {
            let mut reach = lock(&job.window);
            let overlaps = window.from <= reach.to && reach.from <= window.to;
            // A steady stream of alarms on one camera must not stretch one analysis past its
            // lead's deadline: then none of them would be answered in time.
            let in_time = window.to <= job.reach_limit;
            if job.is_open() && overlaps && in_time {
                reach.to = reach.to.max(window.to);
                return Some(Joined::Running(job.result.subscribe(), job.lead.clone()));
            }
            if let Some(done) = job.result.borrow().as_ref()
                && done.doc.verdict == VerdictKind::Verified
                && done
                    .doc
                    .detections
                    .first()
                    .and_then(|d| DateTime::parse_from_rfc3339(&d.frame_time).ok())
                    .is_some_and(|t| window.from <= t && t <= window.to)
            {
                return Some(Joined::Verified(Box::new(done.clone()), job.lead.clone()));
            }
        }
        None
    }

    async fn joined_verdict(&self, alarm: &Alarm, joined: Joined) -> Finding {
        let (finding, lead) = match joined {
            Joined::Verified(finding, lead) => (*finding, lead),
            Joined::Running(mut result, lead) => {
                let finding = match result.wait_for(Option::is_some).await {
                    Ok(done) => done.clone(),
                    Err(_) => None,
                };
                match finding {
                    Some(f) => (f, lead),
                    None => {
                        return self.verifier.unverifiable(
                            alarm,
                            Cause::Overloaded,
                            "the shared analysis ended without a verdict",
                        );
                    }
                }
            }
        };
        tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, with = %lead, "alarm answered by a shared analysis");
        let mut doc = finding.doc;
        doc.alarm_id = alarm.alarm_id.clone();
        doc.alarm_time = rfc3339(alarm.time);
        doc.reason = format!("{} (analysed with alarm {lead})", doc.reason);
        // The analysis was paid for once, by the alarm it was started for.
        doc.inferences = 0;
        Finding {
            doc,
            evidence: finding.evidence,
        }
    }

    /// Runs a new analysis of `alarm`'s window (as far as `job` reaches) and makes its verdict.
    async fn run(&self, camera: &Camera, alarm: &Alarm, job: &Job, deadline: Instant) -> Finding {
        let mut spent = Duration::ZERO;
        let mut kind = if camera.has_detect_stream() {
            StreamKind::Detect
        } else {
            StreamKind::Main
        };
        let mut note = None;
        let finding = loop {
            if let Some(offline) = camera.offline() {
                break self
                    .verifier
                    .unverifiable(alarm, Cause::CameraOffline, &offline.to_string());
            }
            if kind == StreamKind::Detect && !camera.stream_online(StreamKind::Detect) {
                let why = camera
                    .stream_health(StreamKind::Detect)
                    .and_then(|h| h.last_error)
                    .unwrap_or_else(|| "offline".into());
                note = Some(format!("detect stream offline ({why}): analysed on the main stream"));
                kind = StreamKind::Main;
            }
            let mut analysis = self.verifier.start(alarm, *lock(&job.window));
            analysis.set_stream(match kind {
                StreamKind::Main => "main",
                StreamKind::Detect => "detect",
            });
            if let Some(note) = &note {
                analysis.note(note.clone());
            }
            match self
                .stream_window(camera, kind, job, analysis, deadline, &mut spent)
                .await
            {
                Ok(analysis) => break self.conclude(camera, kind, analysis, deadline, &mut spent).await,
                Err(Broke::StreamLost) if kind == StreamKind::Detect && camera.offline().is_none() => {
                    tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, "detect stream lost during the alarm window; analysing the main stream");
                    note = Some("detect stream lost during the alarm window: analysed on the main stream".into());
                    kind = StreamKind::Main;
                }
                Err(Broke::StreamLost) => {
                    break self.verifier.unverifiable(
                        alarm,
                        Cause::StreamBroken,
                        "the camera's video broke off during the alarm window",
                    );
                }
                Err(Broke::Failed(cause, reason)) => break self.verifier.unverifiable(alarm, cause, &reason),
            }
        };
        self.workers.record_alarm_cost(spent);
        finding
    }

    /// Feeds the window's video to `analysis` as it arrives, one worker step per batch of units,
    /// until the alarm is verified or the window has been seen.
    async fn stream_window(
        &self,
        camera: &Camera,
        kind: StreamKind,
        job: &Job,
        analysis: Analysis,
        deadline: Instant,
        spent: &mut Duration,
    ) -> Result<Analysis, Broke> {
        let from = analysis.window().from;
        let no_video = || {
            Broke::Failed(
                Cause::NoVideo,
                format!("camera {} has no buffered video on its {}", camera.id(), kind.name()),
            )
        };
        let mut cursor = camera.cursor_before(kind, from).ok_or_else(no_video)?;
        let caps = camera.caps(kind).ok_or_else(no_video)?;
        let mut state = (analysis, None::<LiveDecoder>);
        loop {
            let to = lock(&job.window).to;
            let units = camera.read(kind, &mut cursor).map_err(|e| match e {
                ReadError::Broken => Broke::StreamLost,
                ReadError::Gone => Broke::Failed(
                    Cause::Overloaded,
                    "overloaded: the alarm's video left the camera's buffer before it could be analysed".into(),
                ),
            })?;
            let seen_end = units.last().is_some_and(|u| u.wall > to);
            let late = Utc::now() > to + TimeDelta::from_std(LATE_VIDEO).unwrap_or_default();
            if units.is_empty() && !late {
                tokio::time::sleep(POLL).await;
                continue;
            }
            let done = seen_end || late;
            let permit = self.permit(deadline, *spent).await?;
            let (mut analysis, decoder) = state;
            analysis.extend_to(to);
            let decoders = self.verifier.decoders().clone();
            let caps = caps.clone();
            let step = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let started = std::time::Instant::now();
                let mut decoder = decoder;
                let flow = feed(&mut decoder, &caps, &decoders, &units, done, &mut analysis);
                (analysis, decoder, flow, started.elapsed())
            });
            let (analysis, decoder, flow, took) = step
                .await
                .map_err(|e| Broke::Failed(Cause::StreamBroken, format!("analysis failed: {e}")))?;
            *spent += took;
            let flow = flow.map_err(|e| Broke::Failed(Cause::StreamBroken, format!("cannot analyse the clip: {e}")))?;
            if flow == Flow::Stop || done || analysis.is_verified() {
                return Ok(analysis);
            }
            state = (analysis, decoder);
        }
    }

    async fn permit(&self, deadline: Instant, spent: Duration) -> Result<Permit, Broke> {
        let need = self.workers.remaining_estimate(spent);
        self.workers
            .acquire(deadline, need)
            .await
            .map_err(|e| Broke::Failed(Cause::Overloaded, e.to_string()))
    }

    /// The verdict and its evidence; for a detect-stream analysis the evidence frame is decoded
    /// from the main stream at the same time, so the operator sees the full picture.
    async fn conclude(
        &self,
        camera: &Camera,
        kind: StreamKind,
        analysis: Analysis,
        deadline: Instant,
        spent: &mut Duration,
    ) -> Finding {
        let alarm = analysis.alarm().clone();
        let half_frame = camera
            .stream_health(StreamKind::Main)
            .and_then(|h| h.fps)
            .filter(|fps| *fps > 0.0)
            .map_or(TimeDelta::milliseconds(50), |fps| {
                TimeDelta::microseconds((500_000.0 / fps) as i64)
            });
        let main_slice = match (kind, analysis.evidence_time()) {
            (StreamKind::Detect, Some((t, boxes))) => {
                // Without boxes to place, the main stream's keyframe nearest that time will do, and
                // costs one decoded frame instead of up to a GOP.
                let t = if boxes {
                    t
                } else {
                    camera.keyframe_near(StreamKind::Main, t).unwrap_or(t)
                };
                camera
                    .slice(StreamKind::Main, t, t + half_frame * 2)
                    .map_err(|e| tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "evidence from the detect stream"))
                    .ok()
                    .map(|slice| (slice, t))
            }
            _ => None,
        };
        // Even an overloaded box finishes what it has analysed; only the main-stream frame is skipped.
        let permit = self.permit(deadline, *spent).await.ok();
        let main_slice = main_slice.filter(|_| permit.is_some());
        let decoders = self.verifier.decoders().clone();
        let done = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = std::time::Instant::now();
            let main_frame = main_slice.and_then(|(slice, t)| {
                let mut nearest = FrameAt {
                    time: t - half_frame,
                    frame: None,
                };
                clip::decode_slice(&slice, &decoders, &mut nearest)
                    .map_err(|e| tracing::warn!(error = %e, "cannot decode the main stream's evidence frame"))
                    .ok()?;
                nearest.frame
            });
            (analysis.finish(main_frame), started.elapsed())
        })
        .await;
        match done {
            Ok((Ok(finding), took)) => {
                *spent += took;
                finding
            }
            Ok((Err(e), _)) => self.verifier.unverifiable(&alarm, e.cause(), &e.to_string()),
            Err(e) => self
                .verifier
                .unverifiable(&alarm, Cause::StreamBroken, &format!("analysis failed: {e}")),
        }
    }

    /// Drops the camera's concluded analyses whose windows are well past: no later alarm can share them.
    fn forget_old(&self, camera: &str) {
        let mut jobs = lock(&self.jobs);
        if let Some(list) = jobs.get_mut(camera) {
            let horizon = Utc::now() - TimeDelta::seconds(5);
            list.retain(|j| j.is_open() || lock(&j.window).to > horizon);
            if list.is_empty() {
                jobs.remove(camera);
            }
        }
    }
}

/// Closes a job whose analysis ended without a verdict (its alarm's deadline passed, or the
/// service stopped): the alarms that joined it get the fallback instead of waiting on it, and no
/// later alarm joins it.
struct CloseOnDrop<'a> {
    job: &'a Job,
    fallback: Option<Finding>,
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if self.job.is_open()
            && let Some(fallback) = self.fallback.take()
        {
            self.job.result.send_replace(Some(fallback));
        }
    }
}

/// Why a streaming analysis could not go on.
enum Broke {
    /// The analysed stream's ring was cleared or broke off (offline, new stream parameters).
    StreamLost,
    Failed(Cause, String),
}

/// One worker step: decodes `units` into `analysis`, starting the decoder on the first, and drains
/// it when the window has been seen.
fn feed(
    decoder: &mut Option<LiveDecoder>,
    caps: &gstreamer::Caps,
    decoders: &clip::Decoders,
    units: &[crate::ingest::ring::AccessUnit],
    done: bool,
    analysis: &mut Analysis,
) -> Result<Flow, ClipError> {
    let decoder = match decoder {
        Some(d) => d,
        None => decoder.insert(LiveDecoder::new(caps, decoders)?),
    };
    let (_, flow) = decoder.feed(units, analysis)?;
    if flow == Flow::Continue && done {
        decoder.finish(analysis)?;
    }
    Ok(flow)
}

/// Takes the first frame at or after `time` and stops.
struct FrameAt {
    time: DateTime<Utc>,
    frame: Option<Frame>,
}

impl FrameSink for FrameAt {
    fn wants(&mut self, time: DateTime<Utc>) -> bool {
        self.frame.is_none() && time >= self.time
    }

    fn frame(&mut self, frame: Frame) -> Result<Flow, SinkError> {
        self.frame = Some(frame);
        Ok(Flow::Stop)
    }
}
