//! Outbound messages to the monitoring centre.
//!
//! Verdicts, evidence and error reports go through the durable [`Outbox`]: stored first, published
//! on a connection of their own one message at a time, and marked delivered only on the broker's
//! PUBACK. Camera state and status go out directly on the main connection ([`Publisher`]), retained
//! and republished after every reconnect.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};

use crate::analysis::evidence;
use crate::analysis::verdict::{VerdictDocument, rfc3339};
use crate::ingest::health::CameraHealth;
use crate::intake::EventLink;
use crate::mqtt::{Connection, LinkEvent, Topics};
use crate::store::{OutboxItem, PendingVerdict, Store, StoreError};
use crate::support::off_runtime;

/// How long the broker has to acknowledge one publish before it is sent again.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// A message after whose publish the broker closed the connection this many times in a row is
/// parked: the broker refuses it (a malformed topic, a packet over its limit), and sending it again
/// would hold up every later message for good.
const POISON_DROPS: u32 = 3;
/// A drop counts against the message only when it comes this soon after the publish: a broker
/// that refuses a packet closes at once, while an outage can come at any time.
const POISON_WINDOW: Duration = Duration::from_secs(3);
/// Bytes of an MQTT PUBLISH besides its topic and payload: fixed header, lengths, packet id.
const PACKET_OVERHEAD: usize = 16;
/// How often the outbox looks for work when nothing wakes it.
const IDLE_POLL: Duration = Duration::from_secs(1);
const MAX_ECHOED_PAYLOAD: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("cannot queue MQTT publish to {topic}: {reason}")]
pub struct PublishError {
    topic: String,
    reason: String,
}

/// Rejected input, or an alarm the sender should know about (a reused `alarm_id`), as sent on
/// `{prefix}/errors`.
#[derive(Debug, Serialize)]
pub struct ErrorReport<'a> {
    pub time: String,
    pub topic: &'a str,
    pub error: String,
    /// The original payload, as text where it is UTF-8 (cut to a few kilobytes).
    pub payload: String,
    /// For a duplicate or a reused id: the `alarm_id` as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_id: Option<String>,
    /// For a duplicate: the record that answered it; for a reused id: the new alarm's record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
}

impl<'a> ErrorReport<'a> {
    /// A report made now about `payload`, which came from `topic` (an MQTT topic, or e.g.
    /// `POST /api/alarms/gate`, `smtp from nvr@site`).
    pub fn new(topic: &'a str, error: &str, payload: &[u8]) -> Self {
        let cut = &payload[..payload.len().min(MAX_ECHOED_PAYLOAD)];
        Self {
            time: rfc3339(Utc::now()),
            topic,
            error: error.to_owned(),
            payload: String::from_utf8_lossy(cut).into_owned(),
            alarm_id: None,
            record_id: None,
        }
    }

    /// The same report, naming the alarm it is about.
    pub fn about(self, alarm_id: &str, record_id: &str) -> Self {
        Self {
            alarm_id: Some(alarm_id.to_owned()),
            record_id: Some(record_id.to_owned()),
            ..self
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A camera's state message: its streams, and its event subscription when it has one.
#[derive(Debug, Serialize)]
pub struct CameraState<'a> {
    #[serde(flatten)]
    pub health: &'a CameraHealth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onvif: Option<&'a EventLink>,
    /// What the idle check sees of the camera's view (`ok`, `blocked`, `blinded`, `defocused`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<crate::analysis::view::ViewState>,
}

/// Direct, best-effort publishing on the main connection.
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    topics: Topics,
}

impl Publisher {
    pub fn new(client: AsyncClient, topics: Topics) -> Self {
        Self { client, topics }
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    async fn send(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), PublishError> {
        self.client
            .publish(topic.clone(), QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| PublishError {
                topic,
                reason: e.to_string(),
            })
    }

    /// Queues a publish without waiting: when the client's queue is full (the broker has been away
    /// a while), it fails at once instead of blocking the caller.
    fn try_send(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), PublishError> {
        self.client
            .try_publish(topic.clone(), QoS::AtLeastOnce, retain, payload)
            .map_err(|e| PublishError {
                topic,
                reason: e.to_string(),
            })
    }

    /// Never waits: the caller keeps the state to send again after the next reconnect.
    pub fn camera_state(&self, state: &CameraState<'_>) -> Result<(), PublishError> {
        let body = serde_json::to_vec(state).unwrap_or_default();
        self.try_send(self.topics.camera_state(&state.health.camera), true, body)
    }

    /// Publishes an error report without the outbox: only for when the store itself has failed.
    /// Never waits; a report that finds the queue full is lost.
    pub fn error_unstored(&self, report: &ErrorReport<'_>) -> Result<(), PublishError> {
        self.try_send(self.topics.errors(), false, report.to_json().into_bytes())
    }

    /// Never waits: at shutdown with the broker away, the Last Will says `offline` instead.
    pub fn status(&self, online: bool) -> Result<(), PublishError> {
        let body = if online { "online" } else { "offline" };
        self.try_send(self.topics.status(), true, body.into())
    }

    /// Publishes a verdict without the outbox: only for when the store itself has failed, so that
    /// the alarm is still answered.
    pub async fn verdict_unstored(&self, doc: &VerdictDocument, evidence: Option<Vec<u8>>) -> Result<(), PublishError> {
        if let Some(jpeg) = evidence {
            self.send(self.topics.evidence(&doc.record_id), false, jpeg).await?;
        }
        self.send(self.topics.verdict(&doc.camera), false, doc.to_json().into_bytes())
            .await
    }
}

/// The durable outbox: verdicts and error reports are stored here and delivered by
/// [`Outbox::deliver`], in the order they were stored.
#[derive(Clone)]
pub struct Outbox {
    store: Arc<Store>,
    wake: Arc<Notify>,
    /// The broker's packet limit (`mqtt.max_packet_bytes`): evidence over it is left out of MQTT.
    max_packet_bytes: usize,
}

/// Why a delivery attempt stopped short.
enum Interrupted {
    /// The connection dropped while the broker had the message.
    Disconnected,
    NoAck,
    Closed,
    /// The message can never go as it is.
    Unsendable(String),
}

/// Consecutive drops of the connection right after publishing one message.
#[derive(Default)]
struct Drops {
    key: String,
    count: u32,
}

impl Drops {
    /// Counts a drop after `item`'s publish at `sent`; true once it is poison.
    fn poison(&mut self, item: &OutboxItem, sent: tokio::time::Instant) -> bool {
        if sent.elapsed() > POISON_WINDOW {
            self.count = 0;
            return false;
        }
        let key = describe(item);
        if key != self.key {
            self.key = key;
            self.count = 0;
        }
        self.count += 1;
        self.count >= POISON_DROPS
    }
}

impl Outbox {
    pub fn new(store: Arc<Store>, max_packet_bytes: usize) -> Self {
        Self {
            store,
            wake: Arc::new(Notify::new()),
            max_packet_bytes,
        }
    }

    /// Stores a verdict for delivery and wakes the delivery task.
    pub fn submit(&self, doc: &VerdictDocument, evidence: Option<&[u8]>) -> Result<(), StoreError> {
        off_runtime(|| self.store.record_verdict(doc, evidence))?;
        self.wake.notify_one();
        Ok(())
    }

    /// Stores a report for `{prefix}/errors` for delivery and wakes the delivery task.
    pub fn submit_error(&self, report: &ErrorReport<'_>) -> Result<(), StoreError> {
        let dropped = off_runtime(|| self.store.record_error(&report.to_json()))?;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                kept = crate::store::MAX_ERROR_REPORTS,
                "too many error reports stored; the oldest undelivered were dropped"
            );
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Delivers stored verdicts and error reports over `connection` until `stop` turns true and
    /// nothing is left (or the connection's owner goes away). After each (re)connect it waits
    /// `settle`, so that subscribers who lost their session with the broker have resubscribed
    /// before the backlog goes.
    pub async fn deliver(
        self,
        topics: Topics,
        connection: Connection,
        settle: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let Connection { client, mut events, .. } = connection;
        let mut connected = false;
        let mut drops = Drops::default();
        loop {
            if !connected {
                // Stopping without a broker: what is stored goes out after the next start.
                if *stop.borrow() {
                    return;
                }
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(LinkEvent::Connected) => {
                            tokio::time::sleep(settle).await;
                            connected = true;
                        }
                        Some(_) => {}
                        None => return,
                    },
                    changed = stop.changed() => if changed.is_err() { return },
                }
                continue;
            }
            let item = match off_runtime(|| self.store.next_undelivered()) {
                Ok(item) => item,
                Err(e) => {
                    tracing::error!(error = %e, "outbox: cannot read the store");
                    tokio::time::sleep(IDLE_POLL).await;
                    continue;
                }
            };
            let Some(item) = item else {
                if *stop.borrow() {
                    return;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    ev = events.recv() => match ev {
                        Some(LinkEvent::Disconnected(_)) => connected = false,
                        None => return,
                        _ => {}
                    },
                }
                continue;
            };
            let _ = off_runtime(|| self.store.count_attempt(&item));
            let publishing = tokio::time::Instant::now();
            let sent = match &item {
                OutboxItem::Verdict(verdict) => {
                    let verdict = self.fit_evidence(verdict, &topics);
                    send_verdict(&client, &mut events, &topics, &verdict, self.max_packet_bytes).await
                }
                OutboxItem::Error(report) => {
                    send_acked(
                        &client,
                        &mut events,
                        topics.errors(),
                        report.document.clone().into_bytes(),
                    )
                    .await
                }
            };
            match sent {
                Ok(()) => {
                    drops = Drops::default();
                    log_delivered(&item);
                    if let Err(e) = off_runtime(|| self.store.mark_sent(&item)) {
                        tracing::error!(item = %describe(&item), error = %e, "outbox: delivered but not marked; it will be sent again");
                    }
                }
                Err(Interrupted::Disconnected) => {
                    connected = false;
                    if drops.poison(&item, publishing) {
                        self.park(
                            &item,
                            &format!(
                                "the broker closed the connection right after each of {POISON_DROPS} publishes of it: \
                                 it refuses the message (a topic or packet over its limits?)"
                            ),
                        );
                        drops = Drops::default();
                    }
                }
                Err(Interrupted::Unsendable(reason)) => self.park(&item, &reason),
                Err(Interrupted::NoAck) => {
                    tracing::warn!(item = %describe(&item), "outbox: no PUBACK in time; sending again");
                }
                Err(Interrupted::Closed) => return,
            }
        }
    }

    pub fn pending(&self) -> u64 {
        off_runtime(|| self.store.undelivered_count().unwrap_or(0))
    }

    /// Messages set aside because the broker refuses them.
    pub fn parked(&self) -> u64 {
        off_runtime(|| self.store.parked_count().unwrap_or(0))
    }

    /// Sets a message the broker refuses aside, and says so once on `errors` (a short report of
    /// its own, which the broker takes).
    fn park(&self, item: &OutboxItem, reason: &str) {
        tracing::error!(item = %describe(item), reason, "outbox: message parked; later messages go on");
        if let Err(e) = off_runtime(|| self.store.park(item, reason)) {
            tracing::error!(item = %describe(item), error = %e, "outbox: cannot park the message");
            return;
        }
        let (what, alarm) = match item {
            OutboxItem::Verdict(v) => (format!("verdict of record {}", v.record_id), Some(v)),
            OutboxItem::Error(e) => (format!("errors report {}", e.id), None),
        };
        let error = format!("{what} parked: {reason}; send it again with POST /api/outbox/retry");
        let report = ErrorReport::new("outbox", &error, b"");
        let report = match alarm {
            Some(v) => report.about(&v.doc.alarm_id, &v.record_id),
            None => report,
        };
        if let Err(e) = self.submit_error(&report) {
            tracing::error!(error = %e, "outbox: cannot report the parked message");
        }
    }

    /// The verdict as it can go over MQTT: evidence over the broker's packet limit is sent
    /// smaller, or left out when even the smallest is over (the record keeps it and the API serves
    /// it). The verdict itself always goes.
    fn fit_evidence<'v>(&self, verdict: &'v PendingVerdict, topics: &Topics) -> Cow<'v, PendingVerdict> {
        let Some(jpeg) = &verdict.evidence else {
            return Cow::Borrowed(verdict);
        };
        let room = self
            .max_packet_bytes
            .saturating_sub(topics.evidence(&verdict.record_id).len() + PACKET_OVERHEAD);
        if jpeg.len() <= room {
            return Cow::Borrowed(verdict);
        }
        let mut fitted = verdict.clone();
        match evidence::shrink(jpeg, room) {
            Ok(Some(smaller)) => {
                tracing::info!(record_id = %verdict.record_id, bytes = jpeg.len(), sent = smaller.len(), max_packet_bytes = self.max_packet_bytes, "evidence over the broker's packet limit: sent smaller");
                fitted.evidence = Some(smaller);
            }
            outcome => {
                let why = match outcome {
                    Err(e) => e.to_string(),
                    _ => "even the smallest size is over it".into(),
                };
                tracing::warn!(record_id = %verdict.record_id, bytes = jpeg.len(), max_packet_bytes = self.max_packet_bytes, why, "evidence left out of MQTT; the verdict goes without it");
                fitted.evidence = None;
                fitted.doc.evidence_topic = None;
            }
        }
        Cow::Owned(fitted)
    }
}

/// What a log line says an outbox message is: the verdict's record, or `errors report N`.
fn describe(item: &OutboxItem) -> String {
    match item {
        OutboxItem::Verdict(v) => v.record_id.clone(),
        OutboxItem::Error(e) => format!("errors report {}", e.id),
    }
}

fn log_delivered(item: &OutboxItem) {
    match item {
        OutboxItem::Verdict(v) => {
            tracing::info!(alarm_id = %v.doc.alarm_id, record_id = %v.record_id, camera = %v.doc.camera, attempts = v.attempts + 1, "verdict delivered")
        }
        OutboxItem::Error(e) => tracing::debug!(report = e.id, attempts = e.attempts + 1, "error report delivered"),
    }
}

/// Publishes the evidence (if any) and then the verdict, each acknowledged before the next.
async fn send_verdict(
    client: &AsyncClient,
    events: &mut mpsc::Receiver<LinkEvent>,
    topics: &Topics,
    item: &PendingVerdict,
    max_packet_bytes: usize,
) -> Result<(), Interrupted> {
    let mut doc = item.doc.clone();
    // Latency runs to the moment of publishing, including any wait for the broker.
    doc.latency_ms = (Utc::now() - item.received).num_milliseconds().max(0) as u64;
    let topic = topics.verdict(&doc.camera);
    let json = doc.to_json().into_bytes();
    if json.len() + topic.len() + PACKET_OVERHEAD > max_packet_bytes {
        return Err(Interrupted::Unsendable(format!(
            "the verdict document of {} bytes is over mqtt.max_packet_bytes ({max_packet_bytes})",
            json.len()
        )));
    }
    if let Some(jpeg) = &item.evidence {
        send_acked(client, events, topics.evidence(&doc.record_id), jpeg.clone()).await?;
    }
    send_acked(client, events, topic, json).await
}

/// Publishes one message (QoS 1) and waits for the broker's PUBACK of it.
async fn send_acked(
    client: &AsyncClient,
    events: &mut mpsc::Receiver<LinkEvent>,
    topic: String,
    payload: Vec<u8>,
) -> Result<(), Interrupted> {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .map_err(|_| Interrupted::Closed)?;
    wait_for_ack(events).await
}

/// Waits for the packet id of the publish just queued, then for the broker's PUBACK of that id.
async fn wait_for_ack(events: &mut mpsc::Receiver<LinkEvent>) -> Result<(), Interrupted> {
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    let mut pkid = None;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| Interrupted::NoAck)?;
        match (event, pkid) {
            (None, _) => return Err(Interrupted::Closed),
            (Some(LinkEvent::Disconnected(_)), _) => return Err(Interrupted::Disconnected),
            (Some(LinkEvent::Sent(id)), None) => pkid = Some(id),
            (Some(LinkEvent::Acked(id)), Some(sent)) if id == sent => return Ok(()),
            _ => {} // acks of earlier, abandoned attempts
        }
    }
}
