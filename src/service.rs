//! `alarm-verifier run`: cameras, alarm intake, the verifier queue and the publisher, wired together.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use crate::alarm::{self, Alarm, AlarmError};
use crate::camera::{Camera, CameraHealth};
use crate::clip;
use crate::config::Config;
use crate::detect::{DetectError, Detector};
use crate::mqtt::{self, Inbound, Session, Topics};
use crate::publish::Publisher;
use crate::verify::{Finding, Verifier};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Detector(#[from] DetectError),
    #[error("GStreamer cannot start: {0}")]
    Gstreamer(String),
}

/// Part of the deadline kept back for decoding and inference after the post-alarm video is in.
const ANALYSIS_RESERVE: Duration = Duration::from_secs(4);

struct Shared {
    verifier: Verifier,
    cameras: HashMap<String, Camera>,
    publisher: Publisher,
    deadline: Duration,
}

/// Runs the service until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
    gstreamer::init().map_err(|e| ServiceError::Gstreamer(e.to_string()))?;
    let detector_config = config.detector.clone();
    let detector = tokio::task::spawn_blocking(move || Detector::load(&detector_config))
        .await
        .map_err(|e| ServiceError::Gstreamer(e.to_string()))??;
    tracing::info!(model = %config.detector.model.display(), "detector loaded");

    let topics = Topics::new(&config.mqtt.topic_prefix);
    let client_id = if config.mqtt.client_id.is_empty() {
        format!("alarm-verifier-{}", config.site)
    } else {
        config.mqtt.client_id.clone()
    };
    let connection = mqtt::connect(
        &config.mqtt,
        &client_id,
        Session {
            subscriptions: vec![topics.alarms_filter()],
            birth: Some((topics.status(), b"online".to_vec())),
            will: Some((topics.status(), b"offline".to_vec())),
        },
    );
    let publisher = Publisher::new(connection.client.clone(), topics.clone());

    let (health_tx, health_rx) = mpsc::unbounded_channel();
    let buffer = Duration::from_secs_f64(config.clip.buffer_s);
    let cameras = config
        .cameras
        .iter()
        .map(|c| (c.id.clone(), Camera::start(c, buffer, health_tx.clone())))
        .collect::<HashMap<_, _>>();
    drop(health_tx);
    let state_task = tokio::spawn(publish_camera_states(publisher.clone(), health_rx));

    let shared = Arc::new(Shared {
        verifier: Verifier::new(Arc::new(detector), &config),
        cameras,
        publisher: publisher.clone(),
        deadline: Duration::from_secs_f64(config.verdict.deadline_s),
    });
    let (queue_tx, queue_rx) = mpsc::channel::<Alarm>(config.verdict.queue);
    let queue_rx = Arc::new(Mutex::new(queue_rx));
    let workers: Vec<_> = (0..config.verdict.workers)
        .map(|_| tokio::spawn(verify_worker(shared.clone(), queue_rx.clone())))
        .collect();

    tracing::info!(cameras = shared.cameras.len(), "alarm-verifier running");
    let mut inbound = connection.inbound;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            msg = inbound.recv() => match msg {
                Some(msg) => intake(&shared, &queue_tx, msg).await,
                None => break,
            },
        }
    }

    tracing::info!("shutting down");
    drop(queue_tx);
    for w in workers {
        let _ = tokio::time::timeout(shared.deadline, w).await;
    }
    let _ = publisher.status(false).await;
    let _ = connection.client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.task).await;
    state_task.abort();
    Ok(())
}

/// Parses an incoming alarm and queues it; bad input goes to `errors`, overload gets an answer at once.
async fn intake(shared: &Shared, queue: &mpsc::Sender<Alarm>, msg: Inbound) {
    let topics = shared.publisher.topics();
    let Some(camera) = topics.camera_of_alarm(&msg.topic) else {
        return;
    };
    let parsed = alarm::parse(camera, &msg.payload, |c| shared.cameras.contains_key(c), Utc::now());
    let alarm = match parsed {
        Ok(alarm) => alarm,
        Err(e) => {
            reject(shared, &msg, &e).await;
            return;
        }
    };
    tracing::info!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, time = %alarm.time, "alarm received");
    if let Err(mpsc::error::TrySendError::Full(alarm) | mpsc::error::TrySendError::Closed(alarm)) = queue.try_send(alarm) {
        let finding = shared.verifier.unverifiable(&alarm, "overloaded: too many alarms waiting for verification");
        deliver(shared, &alarm, finding).await;
    }
}

async fn reject(shared: &Shared, msg: &Inbound, error: &AlarmError) {
    tracing::warn!(topic = %msg.topic, %error, "alarm rejected");
    if let Err(e) = shared.publisher.rejected(&msg.topic, &error.to_string(), &msg.payload).await {
        tracing::error!(error = %e, "cannot report rejected alarm");
    }
}

async fn verify_worker(shared: Arc<Shared>, queue: Arc<Mutex<mpsc::Receiver<Alarm>>>) {
    loop {
        let Some(alarm) = queue.lock().await.recv().await else {
            break;
        };
        let deadline = alarm.received_at + shared.deadline;
        let finding = if Instant::now() >= deadline {
            shared.verifier.unverifiable(&alarm, "overloaded: the verdict deadline passed while the alarm was queued")
        } else {
            match tokio::time::timeout_at(deadline, verify_alarm(&shared, &alarm, deadline)).await {
                Ok(finding) => finding,
                Err(_) => shared.verifier.unverifiable(
                    &alarm,
                    &format!("overloaded: not verified within the {} s deadline", shared.deadline.as_secs_f64()),
                ),
            }
        };
        deliver(&shared, &alarm, finding).await;
    }
}

async fn verify_alarm(shared: &Arc<Shared>, alarm: &Alarm, deadline: Instant) -> Finding {
    let Some(camera) = shared.cameras.get(&alarm.camera) else {
        return shared.verifier.unverifiable(alarm, "unknown camera");
    };
    let window = shared.verifier.window(alarm);
    let give_up = deadline.checked_sub(ANALYSIS_RESERVE).unwrap_or(deadline);
    let slice = match camera.clip(window.from, window.to, give_up).await {
        Ok(slice) => slice,
        Err(e) => return shared.verifier.unverifiable(alarm, &e.to_string()),
    };
    let task_shared = shared.clone();
    let task_alarm = alarm.clone();
    let analysis = tokio::task::spawn_blocking(move || {
        task_shared
            .verifier
            .analyze(&task_alarm, |on_frame| clip::decode_slice(&slice, window, on_frame))
    });
    match analysis.await {
        Ok(Ok(finding)) => finding,
        Ok(Err(e)) => shared.verifier.unverifiable(alarm, &e.to_string()),
        Err(e) => shared.verifier.unverifiable(alarm, &format!("analysis failed: {e}")),
    }
}

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
        latency_ms = finding.doc.latency_ms,
        "verdict"
    );
    if let Err(e) = shared.publisher.verdict(&finding.doc, finding.evidence).await {
        tracing::error!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "verdict not published");
    }
}

async fn publish_camera_states(publisher: Publisher, mut health: mpsc::UnboundedReceiver<CameraHealth>) {
    while let Some(h) = health.recv().await {
        tracing::info!(camera = %h.camera, state = ?h.state, error = ?h.last_error, "camera state");
        if let Err(e) = publisher.camera_state(&h).await {
            tracing::warn!(camera = %h.camera, error = %e, "camera state not published");
        }
    }
}
