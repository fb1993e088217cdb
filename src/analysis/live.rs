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
//!
//! When alarms wait for workers (a storm), each analysis starts with a first look: the keyframe
//! nearest its alarm through the detector. An alarm where it sees a target is analysed before the
//! long windows of the others, so the real intrusions in a storm are answered first; the look
//! only orders the work, the verdict is still the full analysis's.

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
use crate::analysis::workers::{Booking, MIN_STEP, Overloaded, Permit, Urgency, Workers};
use crate::ingest::camera::{Camera, StreamKind};
use crate::ingest::ring::{AccessUnit, Cursor, ReadError};
use crate::intake::alarm::Alarm;
use crate::support::lock;

/// How often a waiting analysis looks for new video.
const POLL: Duration = Duration::from_millis(40);
/// The most video one step decodes (2 s at 15 fps; about 0.2-0.8 s of a worker at 1080p): a
/// step holds its worker to the end, so a likely intrusion that arrives meanwhile waits at most
/// that long, not for the whole window of an alarm that waited.
const MAX_STEP_UNITS: usize = 30;
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

    /// The last deadline among the alarms still waiting: past it, nobody waits for the analysis.
    fn last_deadline(&self) -> Option<Instant> {
        lock(&self.members).waiting.iter().map(|m| m.deadline).max()
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
    /// The worker time one unit of each kind of stream has cost (moving average over analyses).
    unit_costs: Mutex<HashMap<StreamKind, Duration>>,
    /// The worker time a verified analysis of each kind of stream has cost (moving average).
    verified_costs: Mutex<HashMap<StreamKind, Duration>>,
}

impl LiveAnalyser {
    pub fn new(verifier: Arc<Verifier>, workers: Arc<Workers>, idle: Arc<IdleViews>) -> Arc<Self> {
        Arc::new(Self {
            verifier,
            workers,
            idle,
            jobs: Mutex::new(HashMap::new()),
            unit_costs: Mutex::new(HashMap::new()),
            verified_costs: Mutex::new(HashMap::new()),
        })
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Whether alarms are waiting for the analysis workers, or all of them are taken.
    pub fn is_busy(&self) -> bool {
        self.workers.is_contended()
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
    async fn drive(&self, camera: &Arc<Camera>, lead: &Alarm, job: &Job) {
        let mut kind = if camera.has_detect_stream() {
            StreamKind::Detect
        } else {
            StreamKind::Main
        };
        let mut pace = Pace::new(
            lock(&self.unit_costs).get(&kind).copied(),
            lock(&self.verified_costs).get(&kind).copied(),
        );
        self.first_look(camera, kind, lead, job, &mut pace).await;
        if let Err(overloaded) = self.book(camera, kind, job, &mut pace) {
            tracing::warn!(camera = %lead.camera, alarm_id = %lead.alarm_id, "{overloaded}");
            for member in job.close() {
                let finding = self
                    .verifier
                    .unverifiable(&member.alarm, Cause::Overloaded, &overloaded.to_string());
                self.answer(job, member, finding);
            }
            return;
        }
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
            match self.stream_window(camera, kind, job, analysis, &mut pace).await {
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
        self.workers.record_alarm_cost(pace.spent);
        tracing::debug!(alarm_id = %job.lead, spent_ms = pace.spent.as_millis(), units = pace.units_fed, "analysis cost");
        if failure.is_none() && !pace.verified {
            self.learn_unit_cost(kind, pace.units_fed, pace.spent);
        }
        if failure.is_none() && pace.verified {
            learn_average(&self.verified_costs, kind, pace.spent);
        }
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
        pace: &mut Pace,
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
        // Video read but left for the next step (a step takes at most `MAX_STEP_UNITS`).
        let mut held = Vec::new();
        loop {
            if job.all_answered() {
                // Every alarm was answered or gave up on its deadline: nothing to go on for.
                return Ok(());
            }
            let mut units = std::mem::take(&mut held);
            units.extend(read(camera, kind, &mut cursor)?);
            trim_to_window(job, &mut units);
            let to = lock(&job.window).to;
            if units.is_empty() && !reached(&units, to) {
                tokio::time::sleep(POLL).await;
                continue;
            }
            let deadline = job.deadline().unwrap_or_else(Instant::now);
            let left = units_to_come(camera, kind, &units, to);
            let permit = self
                .permit_keeping_video(deadline, pace, left, job, camera, kind, &mut cursor, &mut units)
                .await?;
            if units.len() > MAX_STEP_UNITS {
                held = units.split_off(MAX_STEP_UNITS);
            }
            if let Some(last) = units.last() {
                seen_until = seen_until.max(last.wall);
            }
            // With video still held, the window's end has not been fed, however late it is.
            let reached_end = |to| held.is_empty() && reached(&units, to);
            let mut done = reached_end(to);
            if done {
                // Before the decoder is drained: an alarm that joined since `to` was read reaches
                // further, and none may join after.
                job.stop_joining();
                done = reached_end(lock(&job.window).to);
            }
            let (mut analysis, decoder) = state;
            analysis.extend_to(lock(&job.window).to);
            let decoders = self.verifier.decoders().clone();
            let caps = caps.clone();
            let fed = units.len();
            let give_up = job.last_deadline().map(Instant::into_std);
            let step = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let started = std::time::Instant::now();
                let mut decoder = decoder;
                let mut sink = UntilDeadline {
                    analysis: &mut analysis,
                    give_up,
                    passed: false,
                };
                let flow = feed(&mut decoder, &caps, &decoders, &units, done, &mut sink);
                let passed = sink.passed;
                (analysis, decoder, flow, passed, started.elapsed())
            });
            let (analysis, decoder, flow, passed, took) = step
                .await
                .map_err(|e| Broke::Failed(Cause::StreamBroken, format!("analysis failed: {e}")))?;
            pace.fed(fed, took);
            if passed {
                // Every alarm of the job has been answered on its deadline: decoding on would
                // only take a worker from alarms that can still be answered.
                return Err(Broke::Failed(
                    Cause::Overloaded,
                    "not analysed before the deadline".to_owned(),
                ));
            }
            let flow = flow.map_err(|e| Broke::Failed(Cause::StreamBroken, format!("cannot analyse the clip: {e}")))?;
            let finished = flow == Flow::Stop || done || analysis.is_verified();
            if finished {
                // Every alarm that waits is answered now; one joining later starts anew.
                job.stop_joining();
            }
            let now = Utc::now();
            let verified = analysis.is_verified();
            pace.verified |= verified;
            if !verified && pace.urgency == Urgency::Normal {
                // A step that found nobody decodes as most of a false alarm's window does.
                self.learn_unit_cost(kind, fed, took);
            }
            // Video that never came is waited for `LATE_VIDEO`; video held for the next step
            // has come, and must be seen before an alarm whose window it covers is answered.
            let late =
                |m: &Member| held.is_empty() && now > m.due + TimeDelta::from_std(LATE_VIDEO).unwrap_or_default();
            let due = job.take_due(|m| finished || verified || seen_until > m.due || late(m));
            let analysis = self.answer_due(camera, kind, job, analysis, due, pace).await;
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
        pace: &mut Pace,
    ) -> Analysis {
        for member in due {
            if member.answer.is_closed() {
                continue;
            }
            let (back, finding) = self.conclude(camera, kind, analysis, &member, pace).await;
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
    #[allow(clippy::too_many_arguments)]
    async fn permit_keeping_video(
        &self,
        deadline: Instant,
        pace: &Pace,
        units_left: Option<usize>,
        job: &Job,
        camera: &Camera,
        kind: StreamKind,
        cursor: &mut Cursor,
        units: &mut Vec<AccessUnit>,
    ) -> Result<Permit, Broke> {
        let acquire = self.permit(deadline, pace, units_left);
        tokio::pin!(acquire);
        loop {
            tokio::select! {
                permit = &mut acquire => return permit,
                () = tokio::time::sleep(KEEP_VIDEO_EVERY) => {
                    units.extend(read(camera, kind, cursor)?);
                    trim_to_window(job, units);
                }
            }
        }
    }

    /// A worker for the next step of an analysis at `pace`, with `units_left` still to decode
    /// (unknown: the pool's estimate).
    async fn permit(&self, deadline: Instant, pace: &Pace, units_left: Option<usize>) -> Result<Permit, Broke> {
        let need = pace.need(&self.workers, units_left);
        if let Some(booking) = &pace.booking {
            booking
                .update(need, pace.urgency)
                .map_err(|e| Broke::Failed(Cause::Overloaded, e.to_string()))?;
        }
        self.workers
            .acquire(deadline, need, pace.urgency)
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
        pace: &mut Pace,
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
        let permit = self.permit(member.deadline, pace, Some(0)).await.ok();
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
                pace.spent += took;
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

    /// While alarms wait for workers, looks at the keyframe nearest the alarm: one decoded frame
    /// and one pass of the detector. A target seen there makes the analysis `Likely`, so that it
    /// goes before the full windows of alarms that are probably false.
    async fn first_look(&self, camera: &Arc<Camera>, kind: StreamKind, alarm: &Alarm, job: &Job, pace: &mut Pace) {
        if !self.workers.is_contended() {
            return;
        }
        let deadline = job.deadline().unwrap_or_else(Instant::now);
        let Ok(permit) = self.workers.acquire(deadline, MIN_STEP, Urgency::Likely).await else {
            return;
        };
        let (verifier, camera_arc, time) = (self.verifier.clone(), camera.clone(), alarm.time);
        let looked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = std::time::Instant::now();
            let seen = clip::keyframe_near(&camera_arc, kind, time, verifier.decoders()).and_then(|frame| {
                verifier
                    .glimpse(camera_arc.id(), &frame.image)
                    .map_err(|e| e.to_string())
            });
            (seen, started.elapsed())
        })
        .await;
        match looked {
            Ok((seen, took)) => {
                pace.spent += took;
                match seen {
                    Ok(true) => pace.urgency = Urgency::Likely,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "no first look")
                    }
                }
                tracing::debug!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, urgency = ?pace.urgency, took_ms = took.as_millis(), "first look");
            }
            Err(e) => {
                tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "first look failed")
            }
        }
    }

    /// Books the worker time the whole window is expected to need; refused when it cannot be done
    /// before the deadline behind the work booked ahead of it.
    fn book(&self, camera: &Camera, kind: StreamKind, job: &Job, pace: &mut Pace) -> Result<(), Overloaded> {
        let window = *lock(&job.window);
        let deadline = job.deadline().unwrap_or_else(Instant::now);
        // The window, and about half a GOP before it that is decoded to reach its first frame.
        let seconds = (window.to - window.from).as_seconds_f64() + 1.0;
        let units = stream_fps(camera, kind).map(|fps| (seconds * fps).ceil() as usize);
        let need = pace.need(&self.workers, units);
        tracing::debug!(alarm_id = %job.lead, need_ms = need.as_millis(), units, urgency = ?pace.urgency, "booking");
        pace.booking = Some(self.workers.book(deadline, need, pace.urgency)?);
        Ok(())
    }

    /// Learns what a unit of `kind` costs from a step that found nobody, or from an analysis that
    /// saw its whole window (`units` in `took`, all its steps and its conclusion together): the
    /// alarms that come next are booked by it. Verified analyses are left out: they stop early,
    /// after the dense frames that cost most, and are not what the booking has to foresee.
    fn learn_unit_cost(&self, kind: StreamKind, units: usize, took: Duration) {
        let Some(per_unit) = unit_cost(units, took) else {
            return;
        };
        learn_average(&self.unit_costs, kind, per_unit);
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

/// What an analysis has cost so far, what its video costs to decode, how urgent it is, and the
/// worker time it has booked.
struct Pace {
    /// Worker time spent, all steps together.
    spent: Duration,
    /// Units fed to the decoder in the streaming steps (a verified step stops decoding a few
    /// past its verifying frame), and the worker time those steps took.
    units_fed: usize,
    feeding: Duration,
    /// What a unit of this kind of stream cost earlier analyses, until this one has measured its own.
    prior_unit_cost: Option<Duration>,
    /// What a whole verified analysis of this kind of stream cost earlier ones.
    prior_verified_cost: Option<Duration>,
    urgency: Urgency,
    booking: Option<Booking>,
    /// A frame verified the alarm (the analysis stopped short of its window's end).
    verified: bool,
}

/// Fewer units than this say little of what a unit costs (the decoder's start weighs too much).
const UNITS_TO_LEARN_FROM: usize = 10;

impl Pace {
    fn new(prior_unit_cost: Option<Duration>, prior_verified_cost: Option<Duration>) -> Self {
        Self {
            spent: Duration::ZERO,
            units_fed: 0,
            feeding: Duration::ZERO,
            prior_unit_cost,
            prior_verified_cost,
            urgency: Urgency::Normal,
            booking: None,
            verified: false,
        }
    }

    fn measured_unit_cost(&self) -> Option<Duration> {
        unit_cost(self.units_fed, self.feeding)
    }

    /// Records a streaming step that decoded `units` in `took`.
    fn fed(&mut self, units: usize, took: Duration) {
        self.spent += took;
        self.units_fed += units;
        self.feeding += took;
    }

    /// The worker time the rest is expected to need: `units_left` at the cost per unit measured
    /// on this stream so far (or by earlier analyses), else the pool's estimate for an alarm. A
    /// likely intrusion is expected to stop early, as verified analyses before it did: booking it
    /// for its whole window would refuse false alarms that fit.
    fn need(&self, workers: &Workers, units_left: Option<usize>) -> Duration {
        let per_unit = self.measured_unit_cost().or(self.prior_unit_cost);
        let whole_window = match (units_left, per_unit) {
            (Some(left), Some(per_unit)) => per_unit
                .saturating_mul(u32::try_from(left).unwrap_or(u32::MAX))
                .max(MIN_STEP),
            _ => workers.remaining_estimate(self.spent),
        };
        match (self.urgency, self.prior_verified_cost) {
            (Urgency::Likely, Some(verified)) => whole_window.min(verified.saturating_sub(self.spent).max(MIN_STEP)),
            _ => whole_window,
        }
    }
}

/// Moves the moving average of `kind` in `averages` a quarter of the way to `sample`.
fn learn_average(averages: &Mutex<HashMap<StreamKind, Duration>>, kind: StreamKind, sample: Duration) {
    let mut averages = lock(averages);
    let average = averages.entry(kind).or_insert(sample);
    *average = (*average * 3 + sample) / 4;
}

/// What a unit cost in steps that decoded `units` in `took`, when they are enough to tell.
fn unit_cost(units: usize, took: Duration) -> Option<Duration> {
    let units_n = u32::try_from(units).ok()?;
    (units >= UNITS_TO_LEARN_FROM).then(|| took / units_n)
}

/// How many units of `kind` the analysis still has to decode to reach `to`: those `held`, and
/// those still to arrive at the stream's rate. None when the rate is not known yet.
fn units_to_come(camera: &Camera, kind: StreamKind, held: &[AccessUnit], to: DateTime<Utc>) -> Option<usize> {
    let fps = stream_fps(camera, kind)?;
    let last = held.last()?.wall;
    let seconds = (to - last).as_seconds_f64().max(0.0);
    Some(held.len() + (seconds * fps).ceil() as usize)
}

/// The frame rate measured on the camera's `kind` stream.
fn stream_fps(camera: &Camera, kind: StreamKind) -> Option<f64> {
    camera.stream_health(kind)?.fps.filter(|f| *f > 0.0)
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

/// Drops the video past the end of `job`'s window but the first unit (it shows the window has been
/// seen): decoding it would cost and show nothing, and an analysis waiting for a worker would
/// otherwise decode all that came while it waited. Once its video is past the end, no alarm joins
/// the job, so the window stays where it is.
fn trim_to_window(job: &Job, units: &mut Vec<AccessUnit>) {
    let past = |to: DateTime<Utc>| units.iter().position(|u| u.wall > to);
    if past(lock(&job.window).to).is_none() {
        return;
    }
    job.stop_joining();
    // An alarm that joined just before may have stretched the window.
    if let Some(first_past) = past(lock(&job.window).to) {
        units.truncate(first_past + 1);
    }
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
    analysis: &mut dyn FrameSink,
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

/// An analysis's frames until `give_up`, the last deadline of its alarms (none: no limit); then it
/// stops, `passed`.
struct UntilDeadline<'a> {
    analysis: &'a mut Analysis,
    give_up: Option<std::time::Instant>,
    passed: bool,
}

impl FrameSink for UntilDeadline<'_> {
    fn wants(&mut self, time: DateTime<Utc>) -> bool {
        self.analysis.wants(time)
    }

    fn frame(&mut self, frame: Frame) -> Result<Flow, SinkError> {
        if self.give_up.is_some_and(|at| std::time::Instant::now() > at) {
            self.passed = true;
            return Ok(Flow::Stop);
        }
        self.analysis.frame(frame)
    }
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
