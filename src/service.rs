//! `alarm-verifier run`: cameras, alarm intake, verification, the outbox and the publisher, wired
//! together.
//!
//! An alarm is recorded in the store before it is acknowledged to the broker, then verified in a
//! task of its own under the verdict deadline. Every path ends in a verdict in the outbox:
//! verified, false alarm, or unverifiable with the reason (camera offline, overloaded, restarted).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::analysis::clip::Decoders;
use crate::analysis::detect::{DetectError, Detector};
use crate::analysis::live::LiveAnalyser;
use crate::analysis::verify::{Finding, Verifier};
use crate::analysis::workers::Workers;
use crate::config::Config;
use crate::delivery::publish::{Outbox, Publisher};
use crate::delivery::store::{Store, StoreError};
use crate::ingest::camera::Camera;
use crate::ingest::health::CameraHealth;
use crate::intake::alarm::{self, Alarm};
use crate::mqtt::{self, Inbound, LinkEvent, MqttError, Session, Topics};

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
}

/// After a reconnect, the outbox waits this long so that subscribers can resubscribe first.
const OUTBOX_SETTLE: Duration = Duration::from_secs(2);
/// How long shutdown waits for the outbox to empty.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);
const PURGE_EVERY: Duration = Duration::from_secs(3600);

struct Shared {
    verifier: Arc<Verifier>,
    live: LiveAnalyser,
    cameras: HashMap<String, Camera>,
    mqtt: rumqttc::AsyncClient,
    publisher: Publisher,
    outbox: Outbox,
    store: Arc<Store>,
    deadline: Duration,
    /// Alarms accepted and not yet answered; when none is left, new alarms are answered "overloaded".
    in_flight: Arc<Semaphore>,
}

/// Runs the service until `shutdown` completes, then answers or finishes what is in flight.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
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
    let client_id = if config.mqtt.client_id.is_empty() {
        format!("alarm-verifier-{}", config.site)
    } else {
        config.mqtt.client_id.clone()
    };
    let main_options = mqtt::options(&config.mqtt, &client_id)?;
    let outbox_options = mqtt::options(&config.mqtt, &format!("{client_id}-outbox"))?;
    // The alarm session is persistent with manual acks: an alarm is acknowledged only once stored,
    // and the broker keeps alarms that arrive while the service restarts.
    let main = mqtt::connect(
        main_options,
        Session {
            birth: Some((topics.status(), b"online".to_vec())),
            will: Some((topics.status(), b"offline".to_vec())),
            persistent: true,
            manual_acks: true,
            ..Session::new(vec![topics.alarms_filter()])
        },
    );
    let outbox = Outbox::new(store.clone());
    let (stop_outbox, outbox_stop_rx) = watch::channel(false);
    let outbox_task = tokio::spawn(outbox.clone().deliver(
        topics.clone(),
        mqtt::connect(outbox_options, Session::new(Vec::new())),
        OUTBOX_SETTLE,
        outbox_stop_rx,
    ));
    let publisher = Publisher::new(main.client.clone(), topics.clone());

    let (health_tx, health_rx) = mpsc::unbounded_channel();
    let buffer = Duration::from_secs_f64(config.clip.buffer_s);
    let cameras = config
        .cameras
        .iter()
        .map(|c| (c.id.clone(), Camera::start(c, buffer, health_tx.clone())))
        .collect::<HashMap<_, _>>();
    drop(health_tx);
    let state_task = tokio::spawn(publish_camera_states(publisher.clone(), health_rx));

    let verifier = Arc::new(Verifier::new(Arc::new(detector), &config, decoders));
    let workers = Workers::new(config.verdict.worker_count());
    tracing::info!(workers = config.verdict.worker_count(), "analysis workers");
    let shared = Arc::new(Shared {
        live: LiveAnalyser::new(verifier.clone(), workers),
        verifier,
        cameras,
        mqtt: main.client.clone(),
        publisher: publisher.clone(),
        outbox,
        store: store.clone(),
        deadline: Duration::from_secs_f64(config.verdict.deadline_s),
        in_flight: Arc::new(Semaphore::new(config.verdict.queue)),
    });
    answer_interrupted_alarms(&shared);
    let retention = TimeDelta::milliseconds((config.store.retention_days * 86_400_000.0) as i64);
    let purge_task = tokio::spawn(purge_periodically(store.clone(), retention));

    tracing::info!(cameras = shared.cameras.len(), "alarm-verifier running");
    let mut alarms = JoinSet::new();
    let mut events = main.events;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = events.recv() => match event {
                Some(LinkEvent::Message(msg)) => intake(&shared, &mut alarms, msg).await,
                Some(LinkEvent::Connected) => republish_camera_states(&shared).await,
                Some(_) => {}
                None => break,
            },
            Some(_) = alarms.join_next(), if !alarms.is_empty() => {}
        }
    }

    tracing::info!(
        in_flight = alarms.len(),
        "shutting down: no new alarms; answering those in flight"
    );
    let drained = tokio::time::timeout(shared.deadline + Duration::from_secs(1), async {
        while alarms.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::error!(
            left = alarms.len(),
            "alarms still in flight at shutdown; they are answered after the restart"
        );
    }
    let _ = stop_outbox.send(true);
    if tokio::time::timeout(SHUTDOWN_FLUSH, outbox_task).await.is_err() {
        tracing::warn!(
            pending = shared.outbox.pending(),
            "outbox not empty at shutdown; delivery resumes after the restart"
        );
    }
    let _ = publisher.status(false).await;
    let _ = main.client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), main.task).await;
    state_task.abort();
    purge_task.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Parses, records and acknowledges an incoming alarm, then verifies it in a task of its own.
async fn intake(shared: &Arc<Shared>, alarms: &mut JoinSet<()>, msg: Inbound) {
    let topics = shared.publisher.topics();
    let Some(camera) = topics.camera_of_alarm(&msg.topic) else {
        acknowledge(shared, &msg).await;
        return;
    };
    let parsed = alarm::parse("mqtt", camera, &msg.payload, |c| shared.cameras.contains_key(c), Utc::now());
    let alarm = match parsed {
        Ok(alarm) => alarm,
        Err(e) => {
            reject(shared, &msg, &e.to_string()).await;
            acknowledge(shared, &msg).await;
            return;
        }
    };
    match shared.store.record_alarm(&alarm, &msg.payload) {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, "duplicate alarm ignored");
            let reason = format!(
                "duplicate alarm_id {:?}: already received; no second verdict",
                alarm.alarm_id
            );
            reject(shared, &msg, &reason).await;
            acknowledge(shared, &msg).await;
            return;
        }
        // Still verified and answered: an answer matters more than the audit record.
        Err(e) => tracing::error!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "alarm not recorded"),
    }
    acknowledge(shared, &msg).await;
    tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, time = %alarm.time, "alarm received");
    match shared.in_flight.clone().try_acquire_owned() {
        Ok(permit) => {
            alarms.spawn(handle_alarm(shared.clone(), alarm, permit));
        }
        Err(_) => {
            let finding = shared
                .verifier
                .unverifiable(&alarm, "overloaded: too many alarms in verification");
            deliver(shared, &alarm, finding).await;
        }
    }
}

async fn acknowledge(shared: &Shared, msg: &Inbound) {
    if let Err(e) = shared.mqtt.ack(&msg.packet).await {
        tracing::warn!(topic = %msg.topic, error = %e, "cannot acknowledge alarm message");
    }
}

async fn reject(shared: &Shared, msg: &Inbound, error: &str) {
    tracing::warn!(topic = %msg.topic, %error, "alarm rejected");
    if let Err(e) = shared.publisher.rejected(&msg.topic, error, &msg.payload).await {
        tracing::error!(error = %e, "cannot report rejected alarm");
    }
}

async fn handle_alarm(shared: Arc<Shared>, alarm: Alarm, _in_flight: OwnedSemaphorePermit) {
    let deadline = alarm.received_at + shared.deadline;
    let finding = match tokio::time::timeout_at(deadline, verify_alarm(&shared, &alarm, deadline)).await {
        Ok(finding) => finding,
        Err(_) => shared.verifier.unverifiable(
            &alarm,
            &format!(
                "overloaded: not verified within the {} s deadline",
                shared.deadline.as_secs_f64()
            ),
        ),
    };
    deliver(&shared, &alarm, finding).await;
}

async fn verify_alarm(shared: &Arc<Shared>, alarm: &Alarm, deadline: Instant) -> Finding {
    let Some(camera) = shared.cameras.get(&alarm.camera) else {
        return shared.verifier.unverifiable(alarm, "unknown camera");
    };
    shared.live.analyse(camera, alarm, deadline).await
}

/// Hands a verdict to the outbox; if the store fails, publishes it directly so the alarm is answered.
async fn deliver(shared: &Shared, alarm: &Alarm, mut finding: Finding) {
    if finding.evidence.is_some() {
        finding.doc.evidence_topic = Some(shared.publisher.topics().evidence(&alarm.alarm_id));
    }
    finding.doc.latency_ms = alarm.received_at.elapsed().as_millis() as u64;
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
/// answered `unverifiable` rather than left without an answer.
fn answer_interrupted_alarms(shared: &Shared) {
    let unanswered = match shared.store.unanswered() {
        Ok(list) => list,
        Err(e) => {
            tracing::error!(error = %e, "cannot look for alarms interrupted by a restart");
            return;
        }
    };
    for u in unanswered {
        let alarm = Alarm {
            received: u.received,
            ..Alarm::new(u.alarm_id, &u.camera, u.time, "restart".into())
        };
        tracing::warn!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, "alarm interrupted by a restart");
        let finding = shared
            .verifier
            .unverifiable(&alarm, "the service restarted before this alarm was verified");
        if let Err(e) = shared.outbox.submit(&finding.doc, None) {
            tracing::error!(alarm_id = %alarm.alarm_id, error = %e, "cannot store verdict for interrupted alarm");
        }
    }
}

/// Retained state may have been lost with a broker restart; it is sent again on every connect.
async fn republish_camera_states(shared: &Shared) {
    for camera in shared.cameras.values() {
        if let Err(e) = shared.publisher.camera_state(&camera.health()).await {
            tracing::warn!(camera = %camera.id(), error = %e, "camera state not published");
        }
    }
}

async fn publish_camera_states(publisher: Publisher, mut health: mpsc::UnboundedReceiver<CameraHealth>) {
    while let Some(h) = health.recv().await {
        tracing::info!(camera = %h.camera, state = ?h.main.state, error = ?h.main.last_error, detect_stream = ?h.detect.as_ref().map(|d| d.state), "camera state");
        if let Err(e) = publisher.camera_state(&h).await {
            tracing::warn!(camera = %h.camera, error = %e, "camera state not published");
        }
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
