//! `alarm-verifier run`: the stages wired together, in named start steps, and the shutdown that
//! answers or finishes what is in flight.
//!
//! An alarm is accepted in one place ([`accept`]), recorded in the store before it is acknowledged,
//! then lives its life in [`alarm`]: verified in a task of its own under the verdict deadline, its
//! verdict completed and put in the outbox. Every path ends in a verdict in the outbox: verified,
//! false alarm, or unverifiable with the reason (camera offline, overloaded, restarted).
//! [`cameras`] holds the cameras and the console's view of them, [`redundancy`] the other boxes on
//! the broker.

mod accept;
mod alarm;
mod cameras;
pub mod redundancy;
mod streams;
mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::TimeDelta;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::analysis::clip::{ClipError, Decoders};
use crate::analysis::detect::{DetectError, Detector};
use crate::analysis::live::LiveAnalyser;
use crate::analysis::verify::Verifier;
use crate::analysis::workers::Workers;
use crate::config::{Config, ConfigError};
use crate::delivery::arc::ArcQueue;
use crate::delivery::mail::MailOut;
use crate::delivery::publish::{Outbox, Publisher};
use crate::intake::{self, AlarmSink, EventLink, EventLinkState};
use crate::mqtt::{self, Connection, LinkEvent, MqttError, Session, Topics};
use crate::ops::metrics::Metrics;
use crate::ops::{self, Ops};
use crate::store::{Store, StoreError};
use accept::ServiceSink;
use cameras::{Cameras, ServiceSite};
use redundancy::Redundancy;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Detector(#[from] DetectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("GStreamer cannot start: {0}")]
    Gstreamer(#[source] gstreamer::glib::Error),
    #[error(transparent)]
    Decoder(#[from] ClipError),
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
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How long shutdown waits for the HTTP and SMTP servers and the ONVIF subscriptions to close.
const INTAKE_CLOSE: Duration = Duration::from_secs(3);

/// What the running service's parts share.
struct Shared {
    verifier: Arc<Verifier>,
    live: Arc<LiveAnalyser>,
    cameras: Cameras,
    publisher: Publisher,
    redundancy: Redundancy,
    outbox: Outbox,
    store: Arc<Store>,
    deadline: Duration,
    /// Alarms accepted and not yet answered; when none is left, new alarms are answered "overloaded".
    in_flight: Arc<Semaphore>,
    queue: usize,
    /// The verification of every accepted alarm, waited for at shutdown.
    tasks: TaskTracker,
    /// False once shutdown has begun: new alarms are refused and left to the sender to repeat.
    accepting: AtomicBool,
    /// Per camera, the device alarm in verification that further device events join.
    open: Mutex<std::collections::HashMap<String, String>>,
    /// Cancelled when shutdown can wait no longer: alarms still in verification are answered.
    stop_alarms: CancellationToken,
    metrics: Arc<Metrics>,
    mqtt_connected: AtomicBool,
    /// Alarm clips together stay under this; 0: no clips.
    max_clip_bytes: u64,
    /// Places for alarms dated ahead of this box's clock, each held until its alarm's life ends.
    waiting_ahead: Arc<Semaphore>,
    /// Verdicts for the alarm receiving centre over DC-09, when `[dc09.arc]` is set.
    arc: Option<ArcQueue>,
    /// Verdicts by e-mail, when `[email_out]` is set.
    mail: Option<MailOut>,
}

/// The outputs beside MQTT, each with a durable queue of its own.
struct Outputs {
    arc: Option<ArcQueue>,
    mail: Option<MailOut>,
}

/// The outbox's delivery task and how to stop it.
struct OutboxRun {
    outbox: Outbox,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Background tasks stopped at the end.
struct Housekeeping {
    states: JoinHandle<()>,
    purge: JoinHandle<()>,
    reminder: JoinHandle<()>,
    views: JoinHandle<()>,
}

/// Runs the service until `shutdown` completes, then answers or finishes what is in flight.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
    let decoders = start_media(&config)?;
    let detector = load_detector(&config).await?;
    let store = Arc::new(Store::open(&config.store.path)?);
    let topics = Topics::new(&config.mqtt.topic_prefix);
    let box_id = config.mqtt.box_id(&config.site);
    let group = Some(config.mqtt.share_group.clone()).filter(|g| !g.is_empty());
    let camera_ids: Vec<String> = config.cameras.iter().map(|c| c.id.clone()).collect();
    let main = connect_alarm_session(&config, &topics, &box_id, group.is_some(), &camera_ids)?;
    let (redundancy, mut links) = Redundancy::connect(&config.mqtt, &topics, &box_id, group, &camera_ids)?;
    let outbox = start_outbox(&config, &topics, &box_id, &store)?;
    let publisher = Publisher::new(main.client.clone(), topics.clone());
    let outputs = Outputs {
        arc: ArcQueue::new(&config, store.clone())?,
        mail: MailOut::new(&config, store.clone())?,
    };
    let shared = share(
        &config,
        detector,
        decoders,
        &store,
        publisher.clone(),
        redundancy,
        &outbox,
        outputs,
    );
    let housekeeping = start_housekeeping(&config, &shared);
    let sink: Arc<dyn AlarmSink> = Arc::new(ServiceSink(shared.clone()));
    if let Some(arc) = &shared.arc {
        // Stored events outlive the process: what is not ACKed at shutdown goes after the restart.
        tokio::spawn(arc.clone().deliver(sink.clone()));
    }
    if let Some(mail) = &shared.mail {
        // Stored mails outlive the process too.
        tokio::spawn(mail.clone().deliver(sink.clone()));
    }
    let stop_intake = CancellationToken::new();
    let redundancy_tasks = shared
        .redundancy
        .start(&mut links, sink.clone(), store.clone(), stop_intake.clone());
    redundancy::answer_interrupted(&shared, alarm::interrupted_alarms(&store));
    let intakes = start_intakes(&config, &sink, ops_of(&config, &shared, &sink), &stop_intake).await?;

    tracing::info!(cameras = shared.cameras.len(), "alarm-verifier running");
    let Connection {
        client: main_client,
        events: main_events,
        task: main_task,
    } = main;
    serve_until(shutdown, &shared, &sink, &topics, main_events, &mut links).await;
    shared.redundancy.leave_share_group(&mut links, &sink).await;

    let bound = Instant::now() + Duration::from_secs_f64(config.shutdown_timeout_s);
    tracing::info!(
        in_flight = shared.tasks.len(),
        bound_s = config.shutdown_timeout_s,
        "shutting down: no new alarms; answering those in flight"
    );
    shared.accepting.store(false, Ordering::SeqCst);
    stop_intake.cancel();
    close_intakes(intakes, bound.checked_sub(alarm::SHUTDOWN_RESERVE).unwrap_or(bound)).await;
    alarm::answer_in_flight(&shared, bound).await;
    flush_outbox(outbox, bound).await;
    // Never waits on the client's queue: with the broker away, its Last Will says offline.
    let _ = publisher.status(false);
    let _ = main_client.try_disconnect();
    let last = alarm::SHUTDOWN_LAST / 2;
    shared.redundancy.close(links, redundancy_tasks, &store, last).await;
    let _ = tokio::time::timeout(last, main_task).await;
    housekeeping.states.abort();
    housekeeping.purge.abort();
    housekeeping.reminder.abort();
    housekeeping.views.abort();
    shared.cameras.stop(bound).await;
    tracing::info!("stopped");
    Ok(())
}

/// GStreamer, and the decoders `clip.decoder` chooses.
fn start_media(config: &Config) -> Result<Decoders, ServiceError> {
    gstreamer::init().map_err(ServiceError::Gstreamer)?;
    Ok(Decoders::choose(&config.clip.decoder)?)
}

/// Loads the detector's model with a session per analysis worker (off the async workers: it
/// takes a second or more).
async fn load_detector(config: &Config) -> Result<Detector, ServiceError> {
    let detector_config = config.detector.clone();
    let sessions = config.verdict.worker_count();
    let detector = tokio::task::spawn_blocking(move || Detector::load_sessions(&detector_config, sessions))
        .await
        .map_err(DetectError::Loader)??;
    tracing::info!(model = %config.detector.model.display(), "detector loaded");
    Ok(detector)
}

/// The alarm session is persistent with manual acks: an alarm is acknowledged only once stored,
/// and the broker keeps alarms that arrive while the service restarts. It subscribes to this box's
/// own cameras only, so that the cameras of a site can be split between boxes; in a share group
/// the alarms come over the shared subscription instead.
fn connect_alarm_session(
    config: &Config,
    topics: &Topics,
    box_id: &str,
    in_group: bool,
    camera_ids: &[String],
) -> Result<Connection, MqttError> {
    let options = mqtt::options(&config.mqtt, box_id)?;
    let mut subscriptions: Vec<String> = if in_group {
        Vec::new()
    } else {
        camera_ids.iter().map(|c| topics.alarm(c)).collect()
    };
    subscriptions.push(topics.feedback_filter());
    // A persistent session keeps the subscriptions of an earlier configuration.
    let mut stale = vec![topics.alarms_filter()];
    if in_group {
        stale.extend(camera_ids.iter().map(|c| topics.alarm(c)));
    }
    Ok(mqtt::connect(
        options,
        Session {
            birth: Some((topics.status(), b"online".to_vec())),
            will: Some((topics.status(), b"offline".to_vec())),
            persistent: true,
            manual_acks: true,
            stale,
            ..Session::new(subscriptions)
        },
    ))
}

/// The outbox's own connection and its delivery task.
fn start_outbox(config: &Config, topics: &Topics, box_id: &str, store: &Arc<Store>) -> Result<OutboxRun, MqttError> {
    let options = mqtt::options(&config.mqtt, &format!("{box_id}-outbox"))?;
    let outbox = Outbox::new(store.clone(), config.mqtt.max_packet_bytes);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(outbox.clone().deliver(
        topics.clone(),
        mqtt::connect(options, Session::new(Vec::new())),
        OUTBOX_SETTLE,
        stop_rx,
    ));
    Ok(OutboxRun { outbox, stop, task })
}

/// Starts the cameras and the analysis workers, and gathers what the service's parts share.
#[allow(clippy::too_many_arguments)] // each is one part the service starts with
fn share(
    config: &Config,
    detector: Detector,
    decoders: Decoders,
    store: &Arc<Store>,
    publisher: Publisher,
    redundancy: Redundancy,
    outbox: &OutboxRun,
    outputs: Outputs,
) -> Arc<Shared> {
    let cameras = Cameras::start(config);
    let verifier = Arc::new(Verifier::new(Arc::new(detector), config, decoders));
    let workers = Workers::new(config.verdict.worker_count());
    tracing::info!(workers = config.verdict.worker_count(), "analysis workers");
    Arc::new(Shared {
        live: LiveAnalyser::new(verifier.clone(), workers, cameras.idle_views()),
        verifier,
        cameras,
        publisher,
        redundancy,
        outbox: outbox.outbox.clone(),
        store: store.clone(),
        deadline: Duration::from_secs_f64(config.verdict.deadline_s),
        in_flight: Arc::new(Semaphore::new(config.verdict.queue)),
        queue: config.verdict.queue,
        tasks: TaskTracker::new(),
        accepting: AtomicBool::new(true),
        open: Mutex::new(std::collections::HashMap::new()),
        stop_alarms: CancellationToken::new(),
        metrics: Arc::new(Metrics::new()),
        mqtt_connected: AtomicBool::new(false),
        max_clip_bytes: config.store.max_clips_mb.saturating_mul(1024 * 1024),
        waiting_ahead: Arc::new(Semaphore::new(accept::MAX_WAITING_AHEAD)),
        arc: outputs.arc,
        mail: outputs.mail,
    })
}

/// What the HTTP routes of ops work with.
fn ops_of(config: &Config, shared: &Arc<Shared>, sink: &Arc<dyn AlarmSink>) -> Ops {
    Ops {
        site_name: config.site.clone(),
        store: shared.store.clone(),
        sink: sink.clone(),
        metrics: shared.metrics.clone(),
        site: Arc::new(ServiceSite(shared.clone())),
    }
}

/// Camera state messages, the purge of old records, the offline reminder and the idle view checks.
fn start_housekeeping(config: &Config, shared: &Arc<Shared>) -> Housekeeping {
    let retention = TimeDelta::milliseconds((config.store.retention_days * 86_400_000.0) as i64);
    Housekeeping {
        states: tokio::spawn(cameras::publish_camera_states(shared.clone())),
        purge: tokio::spawn(purge_periodically(shared.store.clone(), retention)),
        reminder: tokio::spawn(cameras::remind_offline_cameras(shared.clone())),
        views: tokio::spawn(views::check_views(shared.clone(), views::intervals(config))),
    }
}

/// Takes the broker's messages until `shutdown`: the alarm session's (routed by the MQTT intake)
/// and, in a share group, the shared subscription's.
async fn serve_until(
    shutdown: impl Future<Output = ()>,
    shared: &Shared,
    sink: &Arc<dyn AlarmSink>,
    topics: &Topics,
    mut events: tokio::sync::mpsc::Receiver<LinkEvent>,
    links: &mut redundancy::Links,
) {
    let others_online = || shared.redundancy.others_online();
    let router = intake::mqtt::Router {
        sink,
        topics,
        store: &shared.store,
        others_online: &others_online,
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = events.recv() => match event {
                Some(LinkEvent::Message(msg)) => router.route(msg).await,
                Some(LinkEvent::Connected) => {
                    shared.mqtt_connected.store(true, Ordering::SeqCst);
                    shared.cameras.republish_states()
                }
                Some(LinkEvent::Disconnected(_)) => shared.mqtt_connected.store(false, Ordering::SeqCst),
                Some(_) => {}
                None => break,
            },
            Some(event) = links.next_shared() => match event {
                LinkEvent::Message(msg) => intake::mqtt::take(sink, topics, msg).await,
                LinkEvent::Connected => tracing::info!("joined the shared alarm subscriptions"),
                _ => {}
            },
        }
    }
}

/// Stops the outbox once it has delivered what it holds, or at the bound.
async fn flush_outbox(outbox: OutboxRun, bound: Instant) {
    let _ = outbox.stop.send(true);
    let flush_until = bound.checked_sub(alarm::SHUTDOWN_LAST).unwrap_or(bound);
    if tokio::time::timeout_at(flush_until, outbox.task).await.is_err() {
        tracing::warn!(
            pending = outbox.outbox.pending(),
            "outbox not empty at shutdown; delivery resumes after the restart"
        );
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
            .merge(ops::console::routes(ops.clone()));
        let rules = ops::http::ServerRules::from_config(&config.http, token);
        intakes.spawn(ops::http::serve(listener, rules, routes, stop.clone()));
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
    if let Some(address) = config.dc09.address().map_err(|expected| ConfigError::Invalid {
        path: "config".into(),
        key: "dc09.listen".into(),
        expected,
    })? {
        intakes.spawn(intake::dc09::start(config, address, sink.clone(), ops.store.clone(), stop.clone()).await?);
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

async fn purge_periodically(store: Arc<Store>, retention: TimeDelta) {
    loop {
        match crate::support::off_runtime(|| store.purge(retention)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old delivered verdicts purged"),
            Err(e) => tracing::warn!(error = %e, "cannot purge old records"),
        }
        tokio::time::sleep(PURGE_EVERY).await;
    }
}
