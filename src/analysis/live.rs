//! Streaming analysis of live cameras: an alarm's video is decoded from the ring as soon as the
//! alarm arrives, and then as its post-alarm video comes in, so that a verified alarm is answered
//! in about a second and a false one right after its window.
//!
//! Each alarm's analysis alternates between waiting for video (holding nothing) and analysing
//! what has arrived (holding a worker permit, see [`Workers`]). Alarms on one camera whose windows
//! overlap share one analysis: a PIR, a motion and a line-crossing alarm fired together cost one.
//! Each of them is still answered on its own window: the analysis runs on a task of its own, and
//! an alarm's verdict goes out as soon as the video past its window's end has been analysed (all
//! of them at once when a frame verifies the alarm), never waiting for a later alarm's window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::analysis::clip::{self, ClipError, Flow, Frame, FrameSink, LiveDecoder, SinkError, Window};
use crate::analysis::verdict::{Cause, VerdictKind, rfc3339};
use crate::analysis::verify::{Analysis, Finding, Verifier};
use crate::analysis::view::IdleViews;
use crate::analysis::workers::{Permit, Workers};
use crate::ingest::camera::{Camera, StreamKind};
use crate::ingest::ring::{AccessUnit, Cursor, ReadError};
use crate::intake::alarm::Alarm;
use crate::support::lock;

/// How often a waiting analysis looks for new video.
const POLL: Duration = Duration::from_millis(40);
/// How often an analysis waiting for a worker takes the video that came meanwhile out of the ring.
const KEEP_VIDEO_EVERY: Duration = Duration::from_millis(500);
/// After the window's end, how long to wait for its last video before concluding without it.
const LATE_VIDEO: Duration = Duration::from_secs(3);
/// An alarm joins a running analysis only if that analysis can still see the end of its window
/// this long before the analysis's own alarm must be answered; otherwise it starts its own.
const JOIN_MARGIN: Duration = Duration::from_secs(2);
/// How far joined alarms may stretch an analysis past its own alarm's window (the default
/// `clip.post_s`). Each alarm is answered at the end of its own window all the same.
const MAX_STRETCH: Duration = Duration::from_secs(4);

/// An alarm waiting for its verdict from a shared analysis.
struct Member {
    alarm: Alarm,
    /// The end of the alarm's own window: its verdict is due once the video past it is analysed.
    due: DateTime<Utc>,
    deadline: Instant,
    answer: oneshot::Sender<Finding>,
}

/// The shared analysis of one camera window: its reach (joined alarms extend it), the alarms
/// still waiting for their verdicts, and the lead alarm's verdict once made.
struct Job {
    window: Mutex<Window>,
    members: Mutex<Members>,
    /// The lead alarm's verdict, once made (a later alarm verified in its own window reuses it).
    result: watch::Sender<Option<Finding>>,
    lead: String,
    /// How far joined alarms may stretch the window: short of the lead alarm's deadline, and at
    /// most `MAX_STRETCH` past its own window.
    reach_limit: DateTime<Utc>,
}

/// The alarms a job answers.
struct Members {
    /// Alarms may still join: the analysis has not reached the end of its window.
    open: bool,
    /// Alarms not answered yet.
    waiting: Vec<Member>,
}

impl Job {
    /// Still running: an overlapping alarm can join it.
    fn is_open(&self) -> bool {
        lock(&self.members).open
    }

    /// No alarm joins any more (the analysis is about to conclude its whole window).
    fn stop_joining(&self) {
        lock(&self.members).open = false;
    }

    /// The most urgent deadline among the alarms still waiting.
    fn deadline(&self) -> Option<Instant> {
        lock(&self.members).waiting.iter().map(|m| m.deadline).min()
    }

    /// Takes out the waiting alarms that `is_due` picks.
    fn take_due(&self, is_due: impl Fn(&Member) -> bool) -> Vec<Member> {
        let mut members = lock(&self.members);
        let (due, waiting): (Vec<Member>, Vec<Member>) =
            std::mem::take(&mut members.waiting).into_iter().partition(is_due);
        members.waiting = waiting;
        due
    }

    /// Whether every alarm that waited has gone (answered, or gave up on its deadline).
    fn all_answered(&self) -> bool {
        lock(&self.members).waiting.iter().all(|m| m.answer.is_closed())
    }

    /// Ends the job: no alarm joins; returns those still waiting.
    fn close(&self) -> Vec<Member> {
        let mut members = lock(&self.members);
        members.open = false;
        std::mem::take(&mut members.waiting)
    }
}

pub struct LiveAnalyser {
    verifier: Arc<Verifier>,
    workers: Arc<Workers>,
    /// The cameras' idle view checks: a view lost before the alarm window.
    idle: Arc<IdleViews>,
    jobs: Mutex<HashMap<String, Vec<Arc<Job>>>>,
}

impl LiveAnalyser {
    pub fn new(verifier: Arc<Verifier>, workers: Arc<Workers>, idle: Arc<IdleViews>) -> Arc<Self> {
        Arc::new(Self {
            verifier,
            workers,
            idle,
            jobs: Mutex::new(HashMap::new()),
        })
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Verifies `alarm` on `camera`, answering by `deadline` (unverifiable when it cannot).
    pub async fn analyse(self: &Arc<Self>, camera: &Arc<Camera>, alarm: &Alarm, deadline: Instant) -> Finding {
        let window = self.verifier.window(alarm);
        self.forget_old(&alarm.camera);
        let (answer, verdict) = oneshot::channel();
        let member = Member {
            alarm: alarm.clone(),
            due: window.to,
            deadline,
            answer,
        };
        match self.join(member, window) {
            Joined::Waiting(lead) => return self.joined_verdict(alarm, verdict, &lead).await,
            Joined::Verified(finding, lead) => return relabel(*finding, alarm, &lead),
            Joined::No(member) => self.start_job(camera, member, window),
        }
        verdict.await.unwrap_or_else(|_| {
            self.verifier.unverifiable(
                alarm,
                Cause::Overloaded,
                "overloaded: the analysis was stopped before its window was seen",
            )
        })
    }

    /// Starts a new analysis led by `member`'s alarm, on a task of its own: it goes on after the
    /// lead is answered for the alarms that joined it.
    fn start_job(self: &Arc<Self>, camera: &Arc<Camera>, member: Member, window: Window) {
        let left = member.deadline.saturating_duration_since(Instant::now());
        let job = Arc::new(Job {
            window: Mutex::new(window),
            lead: member.alarm.alarm_id.clone(),
            result: watch::channel(None).0,
            reach_limit: (Utc::now() + TimeDelta::from_std(left.saturating_sub(JOIN_MARGIN)).unwrap_or_default())
                .min(window.to + TimeDelta::from_std(MAX_STRETCH).unwrap_or_default()),
            members: Mutex::new(Members {
                open: true,
                waiting: Vec::new(),
            }),
        });
        let lead = member.alarm.clone();
        lock(&job.members).waiting.push(member);
        lock(&self.jobs)
            .entry(lead.camera.clone())
            .or_default()
            .push(job.clone());
        let this = self.clone();
        let camera = camera.clone();
        tokio::spawn(async move { this.drive(&camera, &lead, &job).await });
    }

    /// An analysis on the same camera this alarm can share: one still running whose window
    /// overlaps (it is extended to cover this alarm's), or one verified by a frame inside this
    /// alarm's window.
    fn join(&self, member: Member, window: Window) -> Joined {
        let jobs = lock(&self.jobs);
        let Some(list) = jobs.get(&member.alarm.camera) else {
            return Joined::No(member);
        };
        for job in list {
            let mut reach = lock(&job.window);
            let overlaps = window.from <= reach.to && reach.from <= window.to;
            // A steady stream of alarms on one camera must not stretch one analysis past its
            // lead's deadline: then none of them would be answered in time.
            let in_time = window.to <= job.reach_limit;
            let mut members = lock(&job.members);
            if members.open && overlaps && in_time {
                reach.to = reach.to.max(window.to);
                members.waiting.push(member);
                return Joined::Waiting(job.lead.clone());
            }
            drop(members);
            if let Some(done) = job.result.borrow().as_ref()
                && done.doc.verdict == VerdictKind::Verified
                && done
                    .doc
                    .detections
                    .first()
                    .and_then(|d| DateTime::parse_from_rfc3339(&d.frame_time).ok())
                    .is_some_and(|t| window.from <= t && t <= window.to)
            {
                return Joined::Verified(Box::new(done.clone()), job.lead.clone());
            }
        }
        Joined::No(member)
    }

    async fn joined_verdict(&self, alarm: &Alarm, verdict: oneshot::Receiver<Finding>, lead: &str) -> Finding {
        tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, with = %lead, "alarm joins a running analysis");
        match verdict.await {
            Ok(finding) => finding,
            Err(_) => {
                self.verifier
                    .unverifiable(alarm, Cause::Overloaded, "the shared analysis ended without a verdict")
            }
        }
    }

    /// Runs the analysis of `job`'s window, answering each alarm of it when its own window has
    /// been seen (all at once when verified), until none waits.
    async fn drive(&self, camera: &Camera, lead: &Alarm, job: &Job) {
        let mut spent = Duration::ZERO;
        let mut kind = if camera.has_detect_stream() {
            StreamKind::Detect
        } else {
            StreamKind::Main
        };
        let mut note = None;
        let failure = loop {
            if let Some(offline) = camera.offline() {
                break Some((Cause::CameraOffline, offline.to_string()));
            }
            if kind == StreamKind::Detect && !camera.stream_online(StreamKind::Detect) {
                let why = camera
                    .stream_health(StreamKind::Detect)
                    .and_then(|h| h.last_error)
                    .unwrap_or_else(|| "offline".into());
                note = Some(format!("detect stream offline ({why}): analysed on the main stream"));
                kind = StreamKind::Main;
            }
            let mut analysis = self.verifier.start(lead, *lock(&job.window));
            analysis.set_stream(match kind {
                StreamKind::Main => "main",
                StreamKind::Detect => "detect",
            });
            if let Some(note) = &note {
                analysis.note(note.clone());
            }
            match self.stream_window(camera, kind, job, analysis, &mut spent).await {
                Ok(()) => break None,
                Err(Broke::StreamLost) if kind == StreamKind::Detect && camera.offline().is_none() => {
                    tracing::warn!(camera = %lead.camera, alarm_id = %lead.alarm_id, "detect stream lost during the alarm window; analysing the main stream");
                    note = Some("detect stream lost during the alarm window: analysed on the main stream".into());
                    kind = StreamKind::Main;
                }
                Err(Broke::StreamLost) => {
                    break Some((
                        Cause::StreamBroken,
                        "the camera's video broke off during the alarm window".to_owned(),
                    ));
                }
                Err(Broke::Failed(cause, reason)) => break Some((cause, reason)),
            }
        };
        self.workers.record_alarm_cost(spent);
        for member in job.close() {
            let finding = match &failure {
                Some((cause, reason)) => self.verifier.unverifiable(&member.alarm, *cause, reason),
                None => self.verifier.unverifiable(
                    &member.alarm,
                    Cause::Overloaded,
                    "overloaded: the analysis was stopped before its window was seen",
                ),
            };
            self.answer(job, member, finding);
        }
    }

    /// Feeds the window's video to `analysis` as it arrives, one worker step per batch of units,
    /// answering the alarms whose windows have been seen, until none waits.
    async fn stream_window(
        &self,
        camera: &Camera,
        kind: StreamKind,
        job: &Job,
        analysis: Analysis,
        spent: &mut Duration,
    ) -> Result<(), Broke> {
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
        let mut seen_until = from;
        loop {
            if job.all_answered() {
                // Every alarm was answered or gave up on its deadline: nothing to go on for.
                return Ok(());
            }
            let to = lock(&job.window).to;
            let mut units = read(camera, kind, &mut cursor)?;
            if units.is_empty() && !reached(&units, to) {
                tokio::time::sleep(POLL).await;
                continue;
            }
            let deadline = job.deadline().unwrap_or_else(Instant::now);
            let permit = self
                .permit_keeping_video(deadline, *spent, camera, kind, &mut cursor, &mut units)
                .await?;
            if let Some(last) = units.last() {
                seen_until = seen_until.max(last.wall);
            }
            let mut done = reached(&units, to);
            if done {
                // Before the decoder is drained: an alarm that joined since `to` was read reaches
                // further, and none may join after.
                job.stop_joining();
                done = reached(&units, lock(&job.window).to);
            }
            let (mut analysis, decoder) = state;
            analysis.extend_to(lock(&job.window).to);
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
            let finished = flow == Flow::Stop || done || analysis.is_verified();
            if finished {
                // Every alarm that waits is answered now; one joining later starts anew.
                job.stop_joining();
            }
            let now = Utc::now();
            let verified = analysis.is_verified();
            let due = job.take_due(|m| {
                finished
                    || verified
                    || seen_until > m.due
                    || now > m.due + TimeDelta::from_std(LATE_VIDEO).unwrap_or_default()
            });
            let analysis = self.answer_due(camera, kind, job, analysis, due, spent).await;
            if finished {
                return Ok(());
            }
            state = (analysis, decoder);
        }
    }

    /// Makes the verdicts of the alarms now due, each on its own alarm time; an alarm that
    /// joined a verified analysis but would not be verified on its own time is answered with the
    /// lead's verdict.
    async fn answer_due(
        &self,
        camera: &Camera,
        kind: StreamKind,
        job: &Job,
        mut analysis: Analysis,
        due: Vec<Member>,
        spent: &mut Duration,
    ) -> Analysis {
        for member in due {
            if member.answer.is_closed() {
                continue;
            }
            let (back, finding) = self.conclude(camera, kind, analysis, &member, spent).await;
            analysis = back;
            let lead_verdict = job.result.borrow().clone();
            let finding = match lead_verdict {
                Some(lead)
                    if lead.doc.verdict == VerdictKind::Verified && finding.doc.verdict != VerdictKind::Verified =>
                {
                    relabel(lead, &member.alarm, &job.lead)
                }
                _ if member.alarm.alarm_id != job.lead => {
                    let mut finding = finding;
                    finding.doc.reason = format!("{} (analysed with alarm {})", finding.doc.reason, job.lead);
                    // The analysis was paid for once, by the alarm it was started for.
                    finding.doc.inferences = 0;
                    finding
                }
                _ => finding,
            };
            self.answer(job, member, finding);
        }
        analysis
    }

    /// Sends a member its verdict, and keeps the lead's for alarms that come later.
    fn answer(&self, job: &Job, member: Member, finding: Finding) {
        if member.alarm.alarm_id == job.lead {
            job.result.send_replace(Some(finding.clone()));
        }
        if member.answer.send(finding).is_err() {
            tracing::debug!(alarm_id = %member.alarm.alarm_id, "verdict made after its alarm gave up");
        }
    }

    /// Waits for a permit as [`permit`](Self::permit) does, reading the video that arrives
    /// meanwhile into `units`: held there, it cannot leave the camera's buffer while the alarm
    /// waits for a worker (the ring keeps `clip.buffer_s`, less than the deadline).
    async fn permit_keeping_video(
        &self,
        deadline: Instant,
        spent: Duration,
        camera: &Camera,
        kind: StreamKind,
        cursor: &mut Cursor,
        units: &mut Vec<AccessUnit>,
    ) -> Result<Permit, Broke> {
        let acquire = self.permit(deadline, spent);
        tokio::pin!(acquire);
        loop {
            tokio::select! {
                permit = &mut acquire => return permit,
                () = tokio::time::sleep(KEEP_VIDEO_EVERY) => units.extend(read(camera, kind, cursor)?),
            }
        }
    }

    async fn permit(&self, deadline: Instant, spent: Duration) -> Result<Permit, Broke> {
        let need = self.workers.remaining_estimate(spent);
        self.workers
            .acquire(deadline, need)
            .await
            .map_err(|e| Broke::Failed(Cause::Overloaded, e.to_string()))
    }

    /// `member`'s verdict and its evidence; for a detect-stream analysis the evidence frame is
    /// decoded from the main stream at the same time, so the operator sees the full picture.
    /// Gives the analysis back, for the alarms still waiting on it.
    async fn conclude(
        &self,
        camera: &Camera,
        kind: StreamKind,
        analysis: Analysis,
        member: &Member,
        spent: &mut Duration,
    ) -> (Analysis, Finding) {
        let alarm = member.alarm.clone();
        let half_frame = camera
            .stream_health(StreamKind::Main)
            .and_then(|h| h.fps)
            .filter(|fps| *fps > 0.0)
            .map_or(TimeDelta::milliseconds(50), |fps| {
                TimeDelta::microseconds((500_000.0 / fps) as i64)
            });
        let main_slice = match (kind, analysis.evidence_time_for(&alarm)) {
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
        let permit = self.permit(member.deadline, *spent).await.ok();
        let main_slice = main_slice.filter(|_| permit.is_some());
        let decoders = self.verifier.decoders().clone();
        let idle_loss = self.idle.lost(&alarm.camera);
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
            let mut finding = analysis.finish_for(&alarm, main_frame);
            if let (Ok(finding), Some(lost)) = (&mut finding, &idle_loss) {
                analysis.apply_idle_loss(finding, lost);
            }
            (analysis, finding, started.elapsed())
        })
        .await;
        match done {
            Ok((analysis, finding, took)) => {
                *spent += took;
                let finding =
                    finding.unwrap_or_else(|e| self.verifier.unverifiable(&member.alarm, e.cause(), &e.to_string()));
                (analysis, finding)
            }
            // The analysis went down with the task; the alarms still waiting get the fallback.
            Err(e) => {
                let finding =
                    self.verifier
                        .unverifiable(&member.alarm, Cause::StreamBroken, &format!("analysis failed: {e}"));
                (
                    self.verifier.start(&member.alarm, self.verifier.window(&member.alarm)),
                    finding,
                )
            }
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

/// What an alarm's verdict is made from, when it can share an analysis.
enum Joined {
    /// It waits in a running analysis (led by the alarm named).
    Waiting(String),
    /// A finished analysis verified it already.
    Verified(Box<Finding>, String),
    /// Nothing to share: it starts its own.
    No(Member),
}

/// Another alarm's verdict, as this alarm's.
fn relabel(finding: Finding, alarm: &Alarm, lead: &str) -> Finding {
    tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, with = %lead, "alarm answered by a shared analysis");
    let mut doc = finding.doc;
    doc.alarm_id = alarm.alarm_id.clone();
    doc.record_id = alarm.record_id.clone();
    doc.alarm_time = rfc3339(alarm.time);
    doc.reason = format!("{} (analysed with alarm {lead})", doc.reason);
    doc.inferences = 0;
    Finding {
        doc,
        evidence: finding.evidence,
    }
}

/// Why a streaming analysis could not go on.
enum Broke {
    /// The analysed stream's ring was cleared or broke off (offline, new stream parameters).
    StreamLost,
    Failed(Cause, String),
}

/// The camera's video after `cursor`, moving it on.
fn read(camera: &Camera, kind: StreamKind, cursor: &mut Cursor) -> Result<Vec<AccessUnit>, Broke> {
    camera.read(kind, cursor).map_err(|e| match e {
        ReadError::Broken => Broke::StreamLost,
        ReadError::Gone => Broke::Failed(
            Cause::Overloaded,
            "overloaded: the alarm's video left the camera's buffer before it could be analysed".into(),
        ),
    })
}

/// Whether `units` reach past `to`, or its video is too late to wait for.
fn reached(units: &[AccessUnit], to: DateTime<Utc>) -> bool {
    units.last().is_some_and(|u| u.wall > to) || Utc::now() > to + TimeDelta::from_std(LATE_VIDEO).unwrap_or_default()
}

/// One worker step: decodes `units` into `analysis`, starting the decoder on the first, and drains
/// it when the window has been seen.
fn feed(
    decoder: &mut Option<LiveDecoder>,
    caps: &gstreamer::Caps,
    decoders: &clip::Decoders,
    units: &[AccessUnit],
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
