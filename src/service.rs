//! `alarm-verifier run`: cameras, alarm intake, verification, the outbox and the publisher, wired
//! together.
//!
//! An alarm is recorded in the store before it is acknowledged to the broker, then verified in a
//! task of its own under the verdict deadline. Every path ends in a verdict in the outbox:
//! verified, false alarm, or unverifiable with the reason (camera offline, overloaded, restarted).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::analysis::clip::Decoders;
use crate::analysis::clip::{self as video, Flow, Frame, FrameSink};
use crate::analysis::detect::{DetectError, Detector};
use crate::analysis::evidence::{self, Annotations};
use crate::analysis::live::LiveAnalyser;
use crate::analysis::verdict::rfc3339;
use crate::analysis::verify::{Finding, Verifier};
use crate::analysis::workers::Workers;
use crate::config::{Config, ConfigError};
use crate::config::{EvidenceConfig, PolicyConfig};
use crate::delivery::clips;
use crate::delivery::in_flight::{self, InFlightBoard};
use crate::delivery::publish::{CameraState, ErrorReport, Outbox, Publisher};
use crate::store::records::{Feedback, parse_feedback};
use crate::store::{DUPLICATE_WINDOW, EarlierAlarm, Recorded, Store, StoreError, Unanswered};
use crate::ingest::camera::Camera;
use crate::ingest::camera::StreamKind;
use crate::ingest::health::{LOG_REMINDER, StateBoard};
use crate::intake::alarm::Alarm;
use crate::intake::peers::{BoxStatus, Peers};
use crate::intake::{self, Accepted, AlarmSink, Arrival, EventLink, EventLinkState, Refused};
use crate::mqtt::Inbound;
use crate::mqtt::{self, LinkEvent, MqttError, Session, Topics};
use crate::ops::metrics::Metrics;
use crate::ops::{self, CameraInfo, Components, Ops, SiteView};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Detector(#[from] DetectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("GStreamer cannot start: {0}")]
    Gstreamer(String),
    #[error("{0}")]
    Decoder(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {address} (key {key}): {source}")]
    Listen {
        key: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// After a reconnect, the outbox waits this long so that subscribers can resubscribe first.
const OUTBOX_SETTLE: Duration = Duration::from_secs(2);
/// Of the shutdown bound, what is kept for answering the alarms still in verification and
/// flushing the outbox, and what is kept after the flush for the last messages and the cameras.
const SHUTDOWN_RESERVE: Duration = Duration::from_secs(3);
const SHUTDOWN_LAST: Duration = Duration::from_secs(1);
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// At shutdown in a share group, alarms the broker handed over just before the unsubscribe are
/// taken this long, so that none is left unacknowledged on a session about to end.
const SHARE_DRAIN: Duration = Duration::from_millis(300);
/// After a restart in a share group, how long the box waits to hear which of its unanswered alarms
/// a survivor took over, before answering the rest itself.
const TAKEN_WAIT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the HTTP and SMTP servers and the ONVIF subscriptions to close.
const INTAKE_CLOSE: Duration = Duration::from_secs(3);
/// After the alarm window ends, its last packets are waited for this long before the clip is made.
const CLIP_SETTLE: Duration = Duration::from_millis(700);

struct Shared {
    verifier: Arc<Verifier>,
    live: LiveAnalyser,
    cameras: HashMap<String, Camera>,
    publisher: Publisher,
    /// The other boxes on the broker.
    peers: Arc<Peers>,
    /// In a share group: this box's alarms in flight, announced for a survivor.
    in_flight_board: Option<Arc<InFlightBoard>>,
    outbox: Outbox,
    store: Arc<Store>,
    deadline: Duration,
    /// Alarms accepted and not yet answered; when none is left, new alarms are answered "overloaded".
    in_flight: Arc<Semaphore>,
    /// The verification of every accepted alarm, waited for at shutdown.
    tasks: TaskTracker,
    /// False once shutdown has begun: new alarms are refused and left to the sender to repeat.
    accepting: AtomicBool,
    /// Per camera, the device alarm in verification that further device events join.
    open: Mutex<HashMap<String, String>>,
    /// Per camera, its ONVIF event subscription's state.
    links: Mutex<HashMap<String, EventLink>>,
    /// Cameras whose state message is to be published again.
    board: Arc<StateBoard>,
    /// Cancelled when shutdown can wait no longer: alarms still in verification are answered.
    stop_alarms: CancellationToken,
    metrics: Arc<Metrics>,
    mqtt_connected: AtomicBool,
    /// Each camera's policy, for the zones drawn on snapshots.
    policies: HashMap<String, PolicyConfig>,
    evidence: EvidenceConfig,
    /// Alarm clips together stay under this; 0: no clips.
    max_clip_bytes: u64,
    queue: usize,
    /// Recent camera snapshots: a console refreshed by several people decodes each camera once
    /// per `SNAPSHOT_FRESH`, not once per viewer.
    snapshots: Mutex<HashMap<String, (std::time::Instant, Vec<u8>)>>,
}

/// How long a decoded camera snapshot is served again.
const SNAPSHOT_FRESH: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the service until `shutdown` completes, then answers or finishes what is in flight.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
    let shutdown_timeout_s = config.shutdown_timeout_s;
    gstreamer::init().map_err(|e| ServiceError::Gstreamer(e.to_string()))?;
    let decoders = Decoders::choose(&config.clip.decoder).map_err(|e| ServiceError::Decoder(e.to_string()))?;
    let detector_config = config.detector.clone();
    let sessions = config.verdict.worker_count();
    let detector = tokio::task::spawn_blocking(move || Detector::load_sessions(&detector_config, sessions))
        .await
        .map_err(|e| ServiceError::Gstreamer(e.to_string()))??;
    tracing::info!(model = %config.detector.model.display(), "detector loaded");
    let store = Arc::new(Store::open(&config.store.path)?);

    let topics = Topics::new(&config.mqtt.topic_prefix);
    let box_id = config.mqtt.box_id(&config.site);
    let group = Some(config.mqtt.share_group.clone()).filter(|g| !g.is_empty());
    let camera_ids: Vec<String> = config.cameras.iter().map(|c| c.id.clone()).collect();
    let main_options = mqtt::options(&config.mqtt, &box_id)?;
    let outbox_options = mqtt::options(&config.mqtt, &format!("{box_id}-outbox"))?;
    let watch_options = mqtt::options(&config.mqtt, &format!("{box_id}-watch"))?;
    let share_options = match &group {
        Some(_) => Some(mqtt::options_v5(&config.mqtt, &format!("{box_id}-alarms"))?),
        None => None,
    };
    // The alarm session is persistent with manual acks: an alarm is acknowledged only once stored,
    // and the broker keeps alarms that arrive while the service restarts. It subscribes to this
    // box's own cameras only, so that the cameras of a site can be split between boxes; in a share
    // group the alarms come over the shared subscription instead.
    let mut subscriptions: Vec<String> = match &group {
        None => camera_ids.iter().map(|c| topics.alarm(c)).collect(),
        Some(_) => Vec::new(),
    };
    subscriptions.push(topics.feedback_filter());
    let mut stale = vec![topics.alarms_filter()];
    if group.is_some() {
        stale.extend(camera_ids.iter().map(|c| topics.alarm(c)));
    }
    let main = mqtt::connect(
        main_options,
        Session {
            birth: Some((topics.status(), b"online".to_vec())),
            will: Some((topics.status(), b"offline".to_vec())),
            persistent: true,
            manual_acks: true,
            stale,
            ..Session::new(subscriptions)
        },
    );
    let peers = Arc::new(Peers::new(
        box_id.clone(),
        group.clone(),
        camera_ids.clone(),
        topics.clone(),
        Duration::from_secs_f64(config.mqtt.keep_alive_s.max(5) as f64 * 1.5 + 2.0),
    ));
    let mut watch_subscriptions = vec![topics.alarms_filter(), topics.boxes_filter()];
    if group.is_some() {
        watch_subscriptions.push(topics.verdicts_filter());
    }
    let watch = mqtt::connect(
        watch_options,
        Session {
            birth: Some((topics.box_roster(&box_id), peers.roster(BoxStatus::Online))),
            will: Some((topics.box_roster(&box_id), peers.roster(BoxStatus::Offline))),
            ..Session::new(watch_subscriptions)
        },
    );
    let share = group.as_ref().zip(share_options).map(|(group, options)| {
        mqtt::connect_v5(
            options,
            Session {
                manual_acks: true,
                ..Session::new(camera_ids.iter().map(|c| topics.shared_alarm(group, c)).collect())
            },
        )
    });
    let in_flight_board = share.as_ref().map(|share| {
        Arc::new(InFlightBoard::new(
            share.client.clone(),
            topics.box_in_flight(&box_id),
            peers.instance().to_owned(),
        ))
    });
    tracing::info!(box_id = %box_id, share_group = ?group, "MQTT identity");
    let outbox = Outbox::new(store.clone());
    let (stop_outbox, outbox_stop_rx) = watch::channel(false);
    let outbox_task = tokio::spawn(outbox.clone().deliver(
        topics.clone(),
        mqtt::connect(outbox_options, Session::new(Vec::new())),
        OUTBOX_SETTLE,
        outbox_stop_rx,
    ));
    let publisher = Publisher::new(main.client.clone(), topics.clone());

    let board = Arc::new(StateBoard::default());
    let buffer = Duration::from_secs_f64(config.clip.buffer_s);
    let cameras = config
        .cameras
        .iter()
        .map(|c| (c.id.clone(), Camera::start(c, buffer, board.clone())))
        .collect::<HashMap<_, _>>();

    let verifier = Arc::new(Verifier::new(Arc::new(detector), &config, decoders));
    let workers = Workers::new(config.verdict.worker_count());
    tracing::info!(workers = config.verdict.worker_count(), "analysis workers");
    let shared = Arc::new(Shared {
        live: LiveAnalyser::new(verifier.clone(), workers),
        verifier,
        cameras,
        publisher: publisher.clone(),
        peers: peers.clone(),
        in_flight_board: in_flight_board.clone(),
        outbox,
        store: store.clone(),
        deadline: Duration::from_secs_f64(config.verdict.deadline_s),
        in_flight: Arc::new(Semaphore::new(config.verdict.queue)),
        tasks: TaskTracker::new(),
        accepting: AtomicBool::new(true),
        open: Mutex::new(HashMap::new()),
        links: Mutex::new(HashMap::new()),
        board,
        stop_alarms: CancellationToken::new(),
        metrics: Arc::new(Metrics::new()),
        mqtt_connected: AtomicBool::new(false),
        policies: config
            .cameras
            .iter()
            .map(|c| (c.id.clone(), config.camera_policy(c)))
            .collect(),
        evidence: config.evidence.clone(),
        max_clip_bytes: config.store.max_clips_mb.saturating_mul(1024 * 1024),
        queue: config.verdict.queue,
        snapshots: Mutex::new(HashMap::new()),
    });
    let state_task = tokio::spawn(publish_camera_states(shared.clone()));
    let sink: Arc<dyn AlarmSink> = Arc::new(ServiceSink(shared.clone()));
    let stop_intake = CancellationToken::new();
    let peers_task = tokio::spawn(peers.clone().run(
        sink.clone(),
        watch.client.clone(),
        watch.events,
        stop_intake.clone(),
    ));
    let interrupted = interrupted_alarms(&store);
    if group.is_some() {
        tokio::spawn(answer_interrupted_alarms_in_group(shared.clone(), interrupted));
    } else {
        answer_interrupted_alarms(&shared, interrupted, &HashSet::new());
    }
    let board_task = in_flight_board
        .clone()
        .map(|board| tokio::spawn(in_flight::withdraw_delivered_periodically(board, store.clone())));
    let (share_client, mut share_events) = match share {
        Some(share) => (Some(share.client), Some(share.events)),
        None => (None, None),
    };
    let ops = Ops {
        site_name: config.site.clone(),
        store: store.clone(),
        sink: sink.clone(),
        metrics: shared.metrics.clone(),
        site: Arc::new(ServiceSite(shared.clone())),
    };
    let intakes = start_intakes(&config, &sink, ops, &stop_intake).await?;
    let retention = TimeDelta::milliseconds((config.store.retention_days * 86_400_000.0) as i64);
    let purge_task = tokio::spawn(purge_periodically(store.clone(), retention));
    let reminder_task = tokio::spawn(remind_offline_cameras(shared.clone()));

    tracing::info!(cameras = shared.cameras.len(), "alarm-verifier running");
    let mut events = main.events;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = events.recv() => match event {
                Some(LinkEvent::Message(msg)) if topics.alarm_of_feedback(&msg.topic).is_some() => {
                    take_feedback(&shared, &topics, msg).await
                }
                // Alarms of cameras this box left behind, still in its persistent session: the
                // watch reports alarms that no box serves.
                Some(LinkEvent::Message(msg)) if topics.camera_of_alarm(&msg.topic).is_some_and(|c| !sink.knows_camera(c)) => {
                    let _ = msg.ack().await;
                }
                Some(LinkEvent::Message(msg)) => intake::mqtt::take(sink.as_ref(), &topics, msg).await,
                Some(LinkEvent::Connected) => {
                    shared.mqtt_connected.store(true, Ordering::SeqCst);
                    republish_camera_states(&shared)
                }
                Some(LinkEvent::Disconnected(_)) => shared.mqtt_connected.store(false, Ordering::SeqCst),
                Some(_) => {}
                None => break,
            },
            Some(event) = next_shared(&mut share_events) => match event {
                LinkEvent::Message(msg) => intake::mqtt::take(sink.as_ref(), &topics, msg).await,
                LinkEvent::Connected => tracing::info!(share_group = ?group, "joined the shared alarm subscriptions"),
                _ => {}
            },
        }
    }
    if let (Some(client), Some(group)) = (&share_client, &group) {
        leave_share_group(client, &mut share_events, group, &camera_ids, sink.as_ref(), &topics).await;
    }

    let bound = Instant::now() + Duration::from_secs_f64(shutdown_timeout_s);
    tracing::info!(
        in_flight = shared.tasks.len(),
        bound_s = shutdown_timeout_s,
        "shutting down: no new alarms; answering those in flight"
    );
    shared.accepting.store(false, Ordering::SeqCst);
    stop_intake.cancel();
    close_intakes(intakes, bound.checked_sub(SHUTDOWN_RESERVE).unwrap_or(bound)).await;
    answer_in_flight(&shared, bound).await;
    let _ = stop_outbox.send(true);
    let flush_until = bound.checked_sub(SHUTDOWN_LAST).unwrap_or(bound);
    if tokio::time::timeout_at(flush_until, outbox_task).await.is_err() {
        tracing::warn!(
            pending = shared.outbox.pending(),
            "outbox not empty at shutdown; delivery resumes after the restart"
        );
    }
    // Never waits on the client's queue: with the broker away, its Last Will says offline.
    let _ = publisher.status(false);
    let _ = main.client.try_disconnect();
    if let Some(board) = &in_flight_board {
        board.withdraw_delivered(&store);
    }
    // A clean disconnect sends no Last Will: the roster says offline itself, and a survivor of
    // the group answers what is still in flight.
    let _ = watch.client.try_publish(
        topics.box_roster(&box_id),
        rumqttc::QoS::AtLeastOnce,
        true,
        peers.roster(BoxStatus::Offline),
    );
    let _ = watch.client.try_disconnect();
    if let Some(client) = &share_client {
        let _ = client.try_disconnect();
    }
    let _ = tokio::time::timeout(SHUTDOWN_LAST / 2, watch.task).await;
    peers_task.abort();
    if let Some(task) = board_task {
        task.abort();
    }
    let _ = tokio::time::timeout(SHUTDOWN_LAST / 2, main.task).await;
    state_task.abort();
    purge_task.abort();
    reminder_task.abort();
    stop_cameras(&shared, bound).await;
    tracing::info!("stopped");
    Ok(())
}

/// Lets the alarms in verification finish while the shutdown bound allows, then answers the rest
/// `unverifiable`, so that each still gets its verdict into the outbox.
async fn answer_in_flight(shared: &Shared, bound: Instant) {
    shared.tasks.close();
    let give_up = bound.checked_sub(SHUTDOWN_RESERVE).unwrap_or(bound);
    if tokio::time::timeout_at(give_up, shared.tasks.wait()).await.is_ok() {
        return;
    }
    tracing::warn!(
        left = shared.tasks.len(),
        "shutdown bound: alarms still in verification are answered unverifiable"
    );
    shared.stop_alarms.cancel();
    let answered_by = bound.checked_sub(SHUTDOWN_LAST).unwrap_or(bound);
    if tokio::time::timeout_at(answered_by, shared.tasks.wait()).await.is_err() {
        tracing::error!(
            left = shared.tasks.len(),
            "alarms still in flight at shutdown; they are answered after the restart"
        );
    }
}

/// Stops every camera pipeline; those that do not stop by the bound are left to the process's end.
async fn stop_cameras(shared: &Shared, bound: Instant) {
    for camera in shared.cameras.values() {
        camera.stop();
    }
    while Instant::now() < bound && !shared.cameras.values().all(Camera::stopped) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running = shared.cameras.values().filter(|c| !c.stopped()).count();
    if running > 0 {
        tracing::warn!(
            running,
            "camera pipelines still stopping at the shutdown bound; left behind"
        );
    }
}

/// The service as the intakes see it: the one place where an alarm is accepted.
struct ServiceSink(Arc<Shared>);

impl AlarmSink for ServiceSink {
    fn knows_camera(&self, camera: &str) -> bool {
        self.0.cameras.contains_key(camera)
    }

    fn knows_alarm(&self, alarm_id: &str) -> bool {
        self.0.store.knows_alarm(alarm_id).unwrap_or(false)
    }

    fn accept(&self, arrival: Arrival) -> Result<Accepted, Refused> {
        let shared = &self.0;
        if !shared.accepting.load(Ordering::SeqCst) {
            return Err(Refused::ShuttingDown);
        }
        let Arrival {
            mut alarm,
            origin,
            raw,
            snapshot,
        } = arrival;
        // One lock over look-up, record and registration, so that two events of a camera arriving
        // together make one alarm.
        let mut open = lock(&shared.open);
        if alarm.joinable
            && let Some(into) = open.get(&alarm.camera)
        {
            if let Err(e) = shared.store.record_joined_event(into, &alarm, &raw) {
                tracing::error!(camera = %alarm.camera, alarm_id = %into, error = %e, "joined event not recorded");
            }
            tracing::info!(camera = %alarm.camera, alarm_id = %into, source = %alarm.source, "event joined the alarm in verification");
            return Ok(Accepted {
                alarm_id: into.clone(),
                joined: true,
            });
        }
        match shared.store.record_alarm(&alarm, &raw, snapshot.as_deref()) {
            Ok(Recorded::New { record_id, reuses }) => {
                alarm.record_id = record_id;
                if let Some(earlier) = reuses {
                    self.report_reused_id(&origin, &alarm, &earlier, &raw);
                }
            }
            Ok(Recorded::Duplicate(earlier)) => return Err(self.refuse_duplicate(&origin, &alarm, &earlier, &raw)),
            // Still verified and answered: an answer matters more than the audit record.
            Err(e) => {
                tracing::error!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "alarm not recorded")
            }
        }
        if alarm.joinable {
            open.insert(alarm.camera.clone(), alarm.alarm_id.clone());
        }
        drop(open);
        if let Some(board) = &shared.in_flight_board {
            board.accepted(&alarm);
        }
        tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, record_id = %alarm.record_id, time = %alarm.time, source = %alarm.source, "alarm received");
        shared.metrics.alarm(&alarm.source);
        let accepted = Accepted {
            alarm_id: alarm.alarm_id.clone(),
            joined: false,
        };
        match shared.in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                shared.tasks.spawn(handle_alarm(shared.clone(), alarm, permit));
            }
            Err(_) => {
                let shared = shared.clone();
                shared.tasks.clone().spawn(async move {
                    let finding = shared
                        .verifier
                        .unverifiable(&alarm, "overloaded: too many alarms in verification");
                    close_device_alarm(&shared, &alarm);
                    deliver(&shared, &alarm, finding).await;
                });
            }
        }
        Ok(accepted)
    }

    fn report(&self, origin: &str, error: &str, payload: &[u8]) {
        tracing::warn!(origin, %error, "alarm rejected");
        self.send_report(ErrorReport::new(origin, error, payload));
    }

    fn event_link(&self, camera: &str, link: EventLink) {
        tracing::info!(camera, state = ?link.state, error = ?link.error, "camera event subscription");
        lock(&self.0.links).insert(camera.to_owned(), link);
        self.0.board.mark(camera);
    }
}

impl ServiceSink {
    /// Stores a report for `errors` in the outbox; if the store fails, publishes it directly.
    fn send_report(&self, report: ErrorReport<'_>) {
        if let Err(e) = self.0.outbox.submit_error(&report) {
            tracing::error!(error = %e, "error report not stored; publishing directly");
            if let Err(e) = self.0.publisher.error_unstored(&report) {
                tracing::warn!(error = %e, "error report not published");
            }
        }
    }

    /// The same alarm sent again (a redelivery, a device's retry): refused, and reported with the
    /// record that answers it.
    fn refuse_duplicate(&self, origin: &str, alarm: &Alarm, earlier: &EarlierAlarm, payload: &[u8]) -> Refused {
        let refused = Refused::Duplicate(alarm.alarm_id.clone());
        tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, record_id = %earlier.record_id, "duplicate alarm ignored");
        let error = format!(
            "{refused} (same camera, alarm time within {} s of the alarm at {}, answered as record {})",
            DUPLICATE_WINDOW.num_seconds(),
            rfc3339(earlier.time),
            earlier.record_id
        );
        self.send_report(ErrorReport::new(origin, &error, payload).about(&alarm.alarm_id, &earlier.record_id));
        refused
    }

    /// A new alarm with an id the sender used before: it is verified and answered, and the sender
    /// hears of the reuse (a device that restarted its counter may be confusing its alarms).
    fn report_reused_id(&self, origin: &str, alarm: &Alarm, earlier: &EarlierAlarm, payload: &[u8]) {
        tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, record_id = %alarm.record_id, earlier_record = %earlier.record_id, earlier_time = %earlier.time, "alarm_id reused: a new alarm");
        let error = format!(
            "alarm_id {:?} reused: an earlier alarm with this id on {} at {} (record {}); this one on {} at {} \
             is a new alarm, verified and answered as record {}",
            alarm.alarm_id,
            earlier.camera,
            rfc3339(earlier.time),
            earlier.record_id,
            alarm.camera,
            rfc3339(alarm.time),
            alarm.record_id
        );
        self.send_report(ErrorReport::new(origin, &error, payload).about(&alarm.alarm_id, &alarm.record_id));
    }
}

/// Device events of the camera no longer join this alarm: its verdict is made.
fn close_device_alarm(shared: &Shared, alarm: &Alarm) {
    if alarm.joinable {
        let mut open = lock(&shared.open);
        if open.get(&alarm.camera) == Some(&alarm.alarm_id) {
            open.remove(&alarm.camera);
        }
    }
}

/// The HTTP and SMTP servers and the ONVIF subscriptions, running until `stop`.
async fn start_intakes(
    config: &Config,
    sink: &Arc<dyn AlarmSink>,
    ops: Ops,
    stop: &CancellationToken,
) -> Result<JoinSet<()>, ServiceError> {
    let mut intakes = JoinSet::new();
    if let Some(address) = config.http.address().map_err(|expected| ConfigError::Invalid {
        path: "config".into(),
        key: "http.listen".into(),
        expected,
    })? {
        let token = config.http.resolve_token()?;
        let listener = bind("http.listen", address).await?;
        let routes = intake::http::routes(sink.clone())
            .merge(ops::api::routes(ops.clone()))
            .merge(ops::console::routes(ops));
        intakes.spawn(ops::http::serve(listener, token, routes, stop.clone()));
    }
    if let Some(address) = config.smtp.address().map_err(|expected| ConfigError::Invalid {
        path: "config".into(),
        key: "smtp.listen".into(),
        expected,
    })? {
        let password = config.smtp.resolve_password()?;
        let listener = bind("smtp.listen", address).await?;
        let server = intake::smtp::Server::new(&config.smtp, password, &config.cameras, sink.clone());
        intakes.spawn(server.serve(listener, stop.clone()));
    }
    for (i, camera) in config.cameras.iter().enumerate() {
        let Some(onvif) = &camera.onvif else { continue };
        match onvif.resolve_password(&format!("camera[{i}]")) {
            Ok(password) => {
                intakes.spawn(intake::onvif::watch(
                    camera.id.clone(),
                    onvif.clone(),
                    password,
                    sink.clone(),
                    stop.clone(),
                ));
            }
            Err(e) => sink.event_link(&camera.id, EventLink::now(EventLinkState::Failed, Some(e.to_string()))),
        }
    }
    Ok(intakes)
}

async fn bind(key: &'static str, address: SocketAddr) -> Result<tokio::net::TcpListener, ServiceError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServiceError::Listen { key, address, source })?;
    tracing::info!(key, %address, "listening");
    Ok(listener)
}

async fn close_intakes(mut intakes: JoinSet<()>, by: Instant) {
    let by = by.min(Instant::now() + INTAKE_CLOSE);
    let closed = tokio::time::timeout_at(by, async { while intakes.join_next().await.is_some() {} }).await;
    if closed.is_err() {
        tracing::warn!(left = intakes.len(), "intakes did not close in time; stopped");
        intakes.abort_all();
    }
}

async fn handle_alarm(shared: Arc<Shared>, alarm: Alarm, _in_flight: OwnedSemaphorePermit) {
    let deadline = alarm.received_at + shared.deadline;
    let verified = tokio::select! {
        verified = tokio::time::timeout_at(deadline, verify_alarm(&shared, &alarm, deadline)) => verified.ok(),
        _ = shared.stop_alarms.cancelled() => Some(shared.verifier.unverifiable(
            &alarm,
            "the service was stopped before this alarm was verified",
        )),
    };
    let finding = match verified {
        Some(finding) => finding,
        None => shared.verifier.unverifiable(
            &alarm,
            &format!(
                "overloaded: not verified within the {} s deadline",
                shared.deadline.as_secs_f64()
            ),
        ),
    };
    close_device_alarm(&shared, &alarm);
    deliver(&shared, &alarm, finding).await;
    if shared.max_clip_bytes > 0 {
        shared.tasks.spawn(keep_clip(shared.clone(), alarm));
    }
}

/// Once the alarm window's video is in, its packets are remuxed into an MP4 kept with the record.
async fn keep_clip(shared: Arc<Shared>, alarm: Alarm) {
    let Some(camera) = shared.cameras.get(&alarm.camera) else {
        return;
    };
    let window = shared.verifier.window(&alarm);
    // The ring holds the window until clip.buffer_s after its start; wait for its end only.
    let wait = (window.to - Utc::now()).to_std().unwrap_or_default() + CLIP_SETTLE;
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        // At shutdown the window's end may not come; what is buffered is kept instead.
        _ = shared.stop_alarms.cancelled() => {}
    }
    let slice = match camera.slice(StreamKind::Main, window.from, window.to) {
        Ok(slice) => slice,
        Err(e) => {
            tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "no clip kept");
            return;
        }
    };
    let start = slice.units.first().map_or(window.from, |u| u.wall);
    let file = format!("{}.mp4", uuid::Uuid::new_v4().simple());
    let path = shared.store.clips_dir().join(&file);
    let written = tokio::task::spawn_blocking(move || clips::remux_to_mp4(&slice, &path).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, %error, "clip not kept");
            return;
        }
    };
    if let Err(e) = shared.store.record_clip(&alarm.record_id, &file, bytes, start) {
        tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "clip not recorded");
        let _ = std::fs::remove_file(shared.store.clips_dir().join(&file));
        return;
    }
    match shared.store.bound_clips(shared.max_clip_bytes) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            deleted = n,
            max_mb = shared.max_clip_bytes / (1024 * 1024),
            "store.max_clips_mb reached: the oldest clips were deleted"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot bound the clips' disk use"),
    }
}

/// Operator feedback on `{prefix}/feedback/{alarm_id}`: stored, or reported on `errors`.
async fn take_feedback(shared: &Arc<Shared>, topics: &Topics, msg: Inbound) {
    if let Some(alarm_id) = topics.alarm_of_feedback(&msg.topic) {
        let stored = parse_feedback(&msg.payload).map_err(|e| e.to_string()).and_then(|f| {
            shared
                .store
                .record_feedback(alarm_id, &f)
                .map(|known| known.then_some(f))
                .map_err(|e| e.to_string())
        });
        match stored {
            Ok(Some(feedback)) => ServiceSite(shared.clone()).feedback_stored(alarm_id, &feedback),
            // Another box on the broker may have verified it; feedback goes to every box.
            Ok(None) if shared.peers.others_online() > 0 => {
                tracing::debug!(alarm_id, "feedback for an alarm of another box")
            }
            Ok(None) => {
                ServiceSink(shared.clone()).report(&msg.topic, &format!("unknown alarm {alarm_id:?}"), &msg.payload)
            }
            Err(error) => ServiceSink(shared.clone()).report(&msg.topic, &error, &msg.payload),
        }
    }
    if let Err(e) = msg.ack().await {
        tracing::warn!(topic = %msg.topic, error = %e, "cannot acknowledge feedback message");
    }
}

/// The running service as ops sees it.
struct ServiceSite(Arc<Shared>);

impl SiteView for ServiceSite {
    fn cameras(&self) -> Vec<CameraInfo> {
        let links = lock(&self.0.links).clone();
        let mut cameras: Vec<CameraInfo> = self
            .0
            .cameras
            .values()
            .map(|c| CameraInfo {
                health: c.health(),
                onvif: links.get(c.id()).cloned(),
                zones: self
                    .0
                    .policies
                    .get(c.id())
                    .map_or_else(Vec::new, |p| p.zones.iter().map(|z| z.name.clone()).collect()),
            })
            .collect();
        cameras.sort_by(|a, b| a.health.camera.cmp(&b.health.camera));
        cameras
    }

    fn snapshot(&self, camera: &str) -> Result<Vec<u8>, String> {
        if let Some((made, jpeg)) = lock(&self.0.snapshots).get(camera)
            && made.elapsed() < SNAPSHOT_FRESH
        {
            return Ok(jpeg.clone());
        }
        let jpeg = self.decode_snapshot(camera)?;
        lock(&self.0.snapshots).insert(camera.to_owned(), (std::time::Instant::now(), jpeg.clone()));
        Ok(jpeg)
    }

    fn components(&self) -> Components {
        let shared = &self.0;
        Components {
            mqtt_connected: shared.mqtt_connected.load(Ordering::SeqCst),
            model: shared.verifier.model_name().to_owned(),
            cameras: shared.cameras.len(),
            cameras_online: shared
                .cameras
                .values()
                .filter(|c| c.stream_online(StreamKind::Main))
                .count(),
            queue_depth: shared.queue - shared.in_flight.available_permits(),
            outbox_pending: shared.outbox.pending(),
            outbox_oldest_s: shared
                .store
                .oldest_undelivered()
                .ok()
                .flatten()
                .map(|t| (Utc::now() - t).as_seconds_f64().max(0.0)),
            inference_totals: shared.verifier.detector().inference_totals(),
        }
    }

    fn feedback_stored(&self, alarm_id: &str, feedback: &Feedback) {
        tracing::info!(alarm_id, outcome = feedback.outcome.as_str(), operator = %feedback.operator, "operator feedback");
    }
}

impl ServiceSite {
    /// The newest keyframe of `camera`'s main stream, decoded, outlined and encoded now.
    fn decode_snapshot(&self, camera: &str) -> Result<Vec<u8>, String> {
        let cam = self
            .0
            .cameras
            .get(camera)
            .ok_or_else(|| format!("unknown camera {camera:?}"))?;
        let newest = cam
            .newest(StreamKind::Main)
            .ok_or_else(|| format!("no video from {camera} yet"))?;
        let key = cam
            .keyframe_near(StreamKind::Main, newest)
            .ok_or_else(|| format!("no keyframe from {camera} yet"))?;
        let slice = cam.slice(StreamKind::Main, key, key).map_err(|e| e.to_string())?;
        let mut first = FirstFrame(None);
        video::decode_slice(&slice, self.0.verifier.decoders(), &mut first).map_err(|e| e.to_string())?;
        let frame = first
            .0
            .ok_or_else(|| format!("the newest keyframe of {camera} did not decode"))?;
        let scaled = evidence::fit(frame.image, self.0.evidence.max_size).map_err(|e| e.to_string())?;
        let policy = self.0.policies.get(camera);
        let notes = Annotations {
            detections: &[],
            regions: &[],
            zones: policy.map_or(&[], |p| p.zones.as_slice()),
            masks: policy.map_or(&[], |p| p.masks.as_slice()),
            header: format!("{camera}  {}", frame.time.format("%Y-%m-%d %H:%M:%S UTC")),
            footer: "snapshot: zones and masks outlined".into(),
        };
        evidence::render(&scaled, &notes, &self.0.evidence).map_err(|e| e.to_string())
    }
}

/// Takes the first decoded frame.
struct FirstFrame(Option<Frame>);

impl FrameSink for FirstFrame {
    fn wants(&mut self, _time: chrono::DateTime<Utc>) -> bool {
        self.0.is_none()
    }
    fn frame(&mut self, frame: Frame) -> Result<Flow, String> {
        self.0 = Some(frame);
        Ok(Flow::Stop)
    }
}

async fn verify_alarm(shared: &Arc<Shared>, alarm: &Alarm, deadline: Instant) -> Finding {
    let Some(camera) = shared.cameras.get(&alarm.camera) else {
        return shared.verifier.unverifiable(alarm, "unknown camera");
    };
    shared.live.analyse(camera, alarm, deadline).await
}

/// Hands a verdict to the outbox; if the store fails, publishes it directly so the alarm is answered.
async fn deliver(shared: &Shared, alarm: &Alarm, mut finding: Finding) {
    // A shared analysis hands over the lead alarm's document: the record is this alarm's own.
    finding.doc.record_id = alarm.record_id.clone();
    if finding.evidence.is_some() {
        finding.doc.evidence_topic = Some(shared.publisher.topics().evidence(&alarm.record_id));
    }
    finding.doc.latency_ms = alarm.received_at.elapsed().as_millis() as u64;
    shared.metrics.verdict(
        &alarm.camera,
        finding.doc.verdict.as_str(),
        alarm.received_at.elapsed().as_secs_f64(),
    );
    tracing::info!(
        camera = %alarm.camera,
        alarm_id = %alarm.alarm_id,
        verdict = ?finding.doc.verdict,
        reason = %finding.doc.reason,
        elapsed_ms = finding.doc.latency_ms,
        "verdict"
    );
    if let Err(e) = shared.outbox.submit(&finding.doc, finding.evidence.as_deref()) {
        tracing::error!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "verdict not stored; publishing directly");
        if let Err(e) = shared.publisher.verdict_unstored(&finding.doc, finding.evidence).await {
            tracing::error!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "verdict not published");
        }
    }
}

/// Alarms recorded by an earlier run that never got a verdict: their video is gone, so they are
/// answered `unverifiable` rather than left without an answer, except those that another box of
/// the share group says it took over (`taken`), which are recorded as handed over.
fn answer_interrupted_alarms(shared: &Shared, unanswered: Vec<Unanswered>, taken: &HashSet<String>) {
    for u in unanswered {
        let alarm = Alarm {
            received: u.received,
            record_id: u.record_id,
            ..Alarm::new(u.alarm_id, &u.camera, u.time, "restart".into())
        };
        if taken.contains(&alarm.alarm_id) {
            record_handed_over(shared, &alarm);
            continue;
        }
        tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, "alarm interrupted by a restart");
        let finding = shared
            .verifier
            .unverifiable(&alarm, "the service restarted before this alarm was verified");
        if let Err(e) = shared.outbox.submit(&finding.doc, None) {
            tracing::error!(alarm_id = %alarm.alarm_id, error = %e, "cannot store verdict for interrupted alarm");
        }
    }
}

/// In a share group, a survivor may have answered this box's interrupted alarms while it was
/// away: it waits a few seconds to hear which, so that the monitoring centre does not get an
/// `unverifiable` after the survivor's real verdict.
async fn answer_interrupted_alarms_in_group(shared: Arc<Shared>, unanswered: Vec<Unanswered>) {
    if unanswered.is_empty() {
        return;
    }
    let ids: Vec<String> = unanswered.iter().map(|u| u.alarm_id.clone()).collect();
    let taken = shared.peers.taken_from_me(&ids, TAKEN_WAIT).await;
    answer_interrupted_alarms(&shared, unanswered, &taken);
}

/// The alarms an earlier run recorded and never answered.
fn interrupted_alarms(store: &Store) -> Vec<Unanswered> {
    store.unanswered().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot look for alarms interrupted by a restart");
        Vec::new()
    })
}

/// The record of an alarm that another box answered: a verdict that is kept, not published.
fn record_handed_over(shared: &Shared, alarm: &Alarm) {
    tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, "interrupted alarm was answered by another box of the group");
    let finding = shared.verifier.unverifiable(
        alarm,
        "taken over by another box of the share group while this box was down; its verdict is in that box's records",
    );
    let kept = shared
        .store
        .record_verdict(&finding.doc, None)
        .and_then(|()| shared.store.mark_delivered(&alarm.record_id));
    if let Err(e) = kept {
        tracing::error!(alarm_id = %alarm.alarm_id, error = %e, "cannot record an alarm handed over");
    }
}

/// The next event of the shared alarm connection, or never when there is none.
async fn next_shared(events: &mut Option<tokio::sync::mpsc::Receiver<LinkEvent>>) -> Option<LinkEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// Leaves the share group before the box stops taking alarms: the broker stops handing this box
/// alarms, and those already on their way are still recorded and acknowledged, since a clean
/// session's unacknowledged messages end with it.
async fn leave_share_group(
    client: &rumqttc::v5::AsyncClient,
    events: &mut Option<tokio::sync::mpsc::Receiver<LinkEvent>>,
    group: &str,
    cameras: &[String],
    sink: &dyn AlarmSink,
    topics: &Topics,
) {
    for camera in cameras {
        let _ = client.try_unsubscribe(topics.shared_alarm(group, camera));
    }
    let until = Instant::now() + SHARE_DRAIN;
    while let Ok(Some(event)) = tokio::time::timeout_at(until, next_shared(events)).await {
        if let LinkEvent::Message(msg) = event {
            intake::mqtt::take(sink, topics, msg).await;
        }
    }
}

/// Retained state may have been lost with a broker restart; it is sent again on every connect.
fn republish_camera_states(shared: &Shared) {
    for camera in shared.cameras.keys() {
        shared.board.mark(camera);
    }
}

/// Publishes the state message of each camera marked on the board: its newest state, read when it
/// is published. While the broker is away nothing is queued; a reconnect marks every camera.
async fn publish_camera_states(shared: Arc<Shared>) {
    loop {
        shared.board.changed().await;
        if !shared.mqtt_connected.load(Ordering::SeqCst) {
            continue;
        }
        for camera in shared.board.take() {
            let Some(health) = shared.cameras.get(&camera).map(Camera::health) else {
                continue;
            };
            let link = lock(&shared.links).get(&camera).cloned();
            let state = CameraState {
                health: &health,
                onvif: link.as_ref(),
            };
            if let Err(e) = shared.publisher.camera_state(&state) {
                tracing::debug!(camera = %camera, error = %e, "camera state not published; kept for the reconnect");
                shared.board.set_dirty(&camera);
            }
        }
    }
}

/// Every few minutes, one line naming the cameras still offline (instead of a line per camera per
/// attempt): a site that lost a switch stays readable.
async fn remind_offline_cameras(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(LOG_REMINDER).await;
        let mut offline: Vec<&str> = shared
            .cameras
            .values()
            .filter(|c| c.offline().is_some())
            .map(Camera::id)
            .collect();
        if offline.is_empty() {
            continue;
        }
        offline.sort_unstable();
        tracing::warn!(
            count = offline.len(),
            of = shared.cameras.len(),
            cameras = %name_some(&offline, 10),
            "cameras still offline"
        );
    }
}

/// `a, b, c (+7 more)`: the first `max` names and how many more.
fn name_some(names: &[&str], max: usize) -> String {
    let shown = names.iter().take(max).copied().collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(max) {
        0 => shown,
        more => format!("{shown} (+{more} more)"),
    }
}

async fn purge_periodically(store: Arc<Store>, retention: TimeDelta) {
    loop {
        match store.purge(retention) {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old delivered verdicts purged"),
            Err(e) => tracing::warn!(error = %e, "cannot purge old records"),
        }
        tokio::time::sleep(PURGE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_of_names_is_cut_with_a_count() {
        assert_eq!(name_some(&["a", "b"], 10), "a, b");
        let many: Vec<String> = (0..100).map(|i| format!("cam{i:03}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(name_some(&refs, 3), "cam000, cam001, cam002 (+97 more)");
    }
}
