//! MQTT connections: options (TLS, credentials), the event loops (MQTT 3.1.1, and MQTT v5 for the
//! shared alarm subscription of a redundant pair), the topic names of the contract.

use std::future::Future;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as v5bytes;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, MqttConfig};
use crate::support::{Backoff, OutageLog, OutageNote};

/// Incoming packets allowed. Alarm payloads over the alarm parser's own limit are rejected with a
/// message on `errors`, which needs them to arrive rather than break the connection.
const MAX_INCOMING_PACKET: usize = 8 * 1024 * 1024;
/// Evidence JPEGs are the largest messages sent.
const MAX_OUTGOING_PACKET: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: cannot read (key {key}): {source}")]
    File {
        path: String,
        key: &'static str,
        source: std::io::Error,
    },
}

/// Topic names of the contract in DESIGN.md, under the configured prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }
    pub fn alarms_filter(&self) -> String {
        format!("{}/alarms/+", self.prefix)
    }
    /// The MQTT v5 shared subscription to one camera's alarms: the broker hands each alarm to one
    /// member of `group`.
    pub fn shared_alarm(&self, group: &str, camera: &str) -> String {
        format!("$share/{group}/{}", self.alarm(camera))
    }
    pub fn alarm(&self, camera: &str) -> String {
        format!("{}/alarms/{camera}", self.prefix)
    }
    /// The camera an alarm topic is for, if it is one.
    pub fn camera_of_alarm<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(&self.prefix)?
            .strip_prefix("/alarms/")
            .filter(|c| !c.contains('/'))
    }
    pub fn feedback_filter(&self) -> String {
        format!("{}/feedback/+", self.prefix)
    }
    pub fn feedback(&self, alarm_id: &str) -> String {
        format!("{}/feedback/{alarm_id}", self.prefix)
    }
    /// The alarm a feedback topic is about, if it is one.
    pub fn alarm_of_feedback<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(&self.prefix)?
            .strip_prefix("/feedback/")
            .filter(|c| !c.contains('/'))
    }
    pub fn verdict(&self, camera: &str) -> String {
        format!("{}/verdicts/{camera}", self.prefix)
    }
    pub fn evidence(&self, alarm_id: &str) -> String {
        format!("{}/evidence/{alarm_id}", self.prefix)
    }
    pub fn camera_state(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/state", self.prefix)
    }
    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }
    pub fn errors(&self) -> String {
        format!("{}/errors", self.prefix)
    }
    pub fn verdicts_filter(&self) -> String {
        format!("{}/verdicts/+", self.prefix)
    }
    /// Every box's roster, alarms in flight and alarms taken over.
    pub fn boxes_filter(&self) -> String {
        format!("{}/boxes/#", self.prefix)
    }
    /// A box's roster (retained; its Last Will says offline).
    pub fn box_roster(&self, box_id: &str) -> String {
        format!("{}/boxes/{box_id}", self.prefix)
    }
    /// The alarms a box has accepted and not yet answered (retained).
    pub fn box_in_flight(&self, box_id: &str) -> String {
        format!("{}/boxes/{box_id}/in_flight", self.prefix)
    }
    /// The alarms of a box that another box answered after it went away (retained).
    pub fn box_taken(&self, box_id: &str) -> String {
        format!("{}/boxes/{box_id}/taken", self.prefix)
    }
    /// What a topic under `{prefix}/boxes/` is about.
    pub fn box_topic<'t>(&self, topic: &'t str) -> Option<BoxTopic<'t>> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/boxes/")?;
        match rest.split_once('/') {
            None => Some(BoxTopic::Roster(rest)),
            Some((id, "in_flight")) => Some(BoxTopic::InFlight(id)),
            Some((id, "taken")) => Some(BoxTopic::Taken(id)),
            Some(_) => None,
        }
    }
    /// The camera a verdict topic is for, if it is one.
    pub fn camera_of_verdict<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(&self.prefix)?
            .strip_prefix("/verdicts/")
            .filter(|c| !c.contains('/'))
    }
}

/// A topic under `{prefix}/boxes/`, with the box it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxTopic<'t> {
    Roster(&'t str),
    InFlight(&'t str),
    Taken(&'t str),
}

/// A message that arrived on a subscribed topic.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
    /// A retained message, sent because of the subscription rather than just published.
    pub retained: bool,
    /// Boxed: the packet is large beside the other link events.
    ack: Box<Ack>,
}

/// What acknowledges a message on a session with manual acks: the client it came on and the packet.
#[derive(Debug, Clone)]
enum Ack {
    V311(AsyncClient, Publish),
    V5(rumqttc::v5::AsyncClient, v5bytes::Publish),
}

impl Inbound {
    /// Acknowledges the message to the broker (a no-op for QoS 0).
    pub async fn ack(&self) -> Result<(), String> {
        match self.ack.as_ref() {
            Ack::V311(client, packet) => client.ack(packet).await.map_err(|e| e.to_string()),
            Ack::V5(client, packet) => client.ack(packet).await.map_err(|e| e.to_string()),
        }
    }
}

/// What happens on a connection, in order.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    Connected,
    Disconnected(String),
    Message(Inbound),
    /// A QoS 1 publish went out with this packet id.
    Sent(u16),
    /// The broker acknowledged the publish with this packet id.
    Acked(u16),
}

/// How a connection behaves.
#[derive(Debug, Clone)]
pub struct Session {
    pub subscriptions: Vec<String>,
    /// Filters a persistent session may still hold from an earlier configuration: unsubscribed on
    /// every connect.
    pub stale: Vec<String>,
    /// Retained message published after every connect (the `online` status).
    pub birth: Option<(String, Vec<u8>)>,
    /// Retained message the broker publishes if the connection is lost (the `offline` status).
    pub will: Option<(String, Vec<u8>)>,
    /// Keep the session (subscriptions, unacknowledged QoS 1 messages) at the broker across reconnects.
    pub persistent: bool,
    /// Incoming QoS 1 messages are acknowledged by the caller, once it has stored them.
    pub manual_acks: bool,
    pub reconnect_first: Duration,
    pub reconnect_max: Duration,
}

impl Session {
    pub fn new(subscriptions: Vec<String>) -> Self {
        Self {
            subscriptions,
            stale: Vec::new(),
            birth: None,
            will: None,
            persistent: false,
            manual_acks: false,
            reconnect_first: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

pub struct Connection {
    pub client: AsyncClient,
    pub events: mpsc::Receiver<LinkEvent>,
    pub task: JoinHandle<()>,
}

/// Builds the client options from config: credentials and TLS files are read here, so a missing
/// file is a start-up error naming its key.
pub fn options(config: &MqttConfig, client_id: &str) -> Result<MqttOptions, MqttError> {
    let mut options = MqttOptions::new(client_id, config.host.clone(), config.port);
    options
        .set_keep_alive(Duration::from_secs(config.keep_alive_s.max(5)))
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
    if let Some((username, password)) = credentials(config)? {
        options.set_credentials(username, password);
    }
    if let Some(transport) = tls(config)? {
        options.set_transport(transport);
    }
    Ok(options)
}

/// The same options for an MQTT v5 connection (shared subscriptions are a v5 feature).
pub fn options_v5(config: &MqttConfig, client_id: &str) -> Result<rumqttc::v5::MqttOptions, MqttError> {
    let mut options = rumqttc::v5::MqttOptions::new(client_id, config.host.clone(), config.port);
    options
        .set_keep_alive(Duration::from_secs(config.keep_alive_s.max(5)))
        .set_max_packet_size(Some(MAX_INCOMING_PACKET as u32));
    if let Some((username, password)) = credentials(config)? {
        options.set_credentials(username, password);
    }
    if let Some(transport) = tls(config)? {
        options.set_transport(transport);
    }
    Ok(options)
}

fn credentials(config: &MqttConfig) -> Result<Option<(String, String)>, MqttError> {
    Ok(match config.resolve_password()? {
        Some(password) => Some((config.username.clone(), password)),
        None if !config.username.is_empty() => Some((config.username.clone(), String::new())),
        None => None,
    })
}

fn tls(config: &MqttConfig) -> Result<Option<Transport>, MqttError> {
    let Some(ca_file) = &config.ca_file else {
        return Ok(None);
    };
    let read = |path: &std::path::Path, key: &'static str| {
        std::fs::read(path).map_err(|source| MqttError::File {
            path: path.display().to_string(),
            key,
            source,
        })
    };
    let ca = read(ca_file, "mqtt.ca_file")?;
    let client_auth = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => Some((read(cert, "mqtt.client_cert")?, read(key, "mqtt.client_key")?)),
        _ => None,
    };
    // rustls needs a process-wide crypto provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(Some(Transport::Tls(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    })))
}

/// Connects, and keeps reconnecting, with `options`; everything that happens arrives on `events`.
pub fn connect(mut options: MqttOptions, session: Session) -> Connection {
    options
        .set_clean_session(!session.persistent)
        .set_manual_acks(session.manual_acks);
    if let Some((topic, payload)) = &session.will {
        options.set_last_will(LastWill::new(topic, payload.clone(), QoS::AtLeastOnce, true));
    }
    let endpoint = format!("{}:{}", options.broker_address().0, options.broker_address().1);
    let (client, eventloop) = AsyncClient::new(options, 256);
    let link = V311 {
        client: client.clone(),
        eventloop,
    };
    let (events, task) = drive(link, endpoint, session);
    Connection { client, events, task }
}

/// An MQTT v5 connection, for the shared alarm subscription.
pub struct ConnectionV5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: mpsc::Receiver<LinkEvent>,
    pub task: JoinHandle<()>,
}

/// Connects over MQTT v5 with a clean start and a session that ends with the connection: a member
/// of a shared subscription that keeps its session after dying keeps receiving its share of the
/// alarms into an offline queue (mosquitto 2.0.11), where nobody answers them.
pub fn connect_v5(mut options: rumqttc::v5::MqttOptions, session: Session) -> ConnectionV5 {
    options
        .set_clean_start(true)
        .set_session_expiry_interval(None)
        .set_manual_acks(session.manual_acks);
    if let Some((topic, payload)) = &session.will {
        options.set_last_will(v5bytes::LastWill::new(
            topic,
            payload.clone(),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            None,
        ));
    }
    let endpoint = format!("{}:{}", options.broker_address().0, options.broker_address().1);
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, 256);
    let link = V5 {
        client: client.clone(),
        eventloop,
    };
    let (events, task) = drive(link, endpoint, session);
    ConnectionV5 { client, events, task }
}

/// What one poll of an event loop gave, whatever the protocol version.
enum Polled {
    Connected,
    Event(LinkEvent),
    Closed,
    Skip,
    Failed(String),
}

/// One protocol version's client and event loop, as [`drive`] uses them.
trait Link: Send + 'static {
    fn poll(&mut self) -> impl Future<Output = Polled> + Send;
    /// Subscribes and publishes the birth message after a connect, without waiting: waiting would
    /// wait on this very event loop.
    fn on_connect(&self, session: &Session);
}

struct V311 {
    client: AsyncClient,
    eventloop: rumqttc::EventLoop,
}

impl Link for V311 {
    async fn poll(&mut self) -> Polled {
        match self.eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Polled::Connected,
            Ok(Event::Incoming(Packet::Publish(p))) => Polled::Event(LinkEvent::Message(Inbound {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
                retained: p.retain,
                ack: Box::new(Ack::V311(self.client.clone(), p)),
            })),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Polled::Event(LinkEvent::Acked(ack.pkid)),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => Polled::Event(LinkEvent::Sent(pkid)),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Polled::Closed,
            Ok(_) => Polled::Skip,
            Err(e) => Polled::Failed(e.to_string()),
        }
    }

    fn on_connect(&self, session: &Session) {
        for filter in &session.stale {
            let _ = self.client.try_unsubscribe(filter.clone());
        }
        for filter in &session.subscriptions {
            let _ = self.client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
        }
        if let Some((topic, payload)) = &session.birth {
            let _ = self
                .client
                .try_publish(topic.clone(), QoS::AtLeastOnce, true, payload.clone());
        }
    }
}

struct V5 {
    client: rumqttc::v5::AsyncClient,
    eventloop: rumqttc::v5::EventLoop,
}

impl Link for V5 {
    async fn poll(&mut self) -> Polled {
        use v5bytes::Packet as P5;
        match self.eventloop.poll().await {
            Ok(rumqttc::v5::Event::Incoming(P5::ConnAck(_))) => Polled::Connected,
            Ok(rumqttc::v5::Event::Incoming(P5::Publish(p))) => Polled::Event(LinkEvent::Message(Inbound {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload.to_vec(),
                retained: p.retain,
                ack: Box::new(Ack::V5(self.client.clone(), p)),
            })),
            Ok(rumqttc::v5::Event::Incoming(P5::PubAck(ack))) => Polled::Event(LinkEvent::Acked(ack.pkid)),
            Ok(rumqttc::v5::Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                Polled::Event(LinkEvent::Sent(pkid))
            }
            Ok(rumqttc::v5::Event::Outgoing(Outgoing::Disconnect)) => Polled::Closed,
            Ok(_) => Polled::Skip,
            Err(e) => Polled::Failed(e.to_string()),
        }
    }

    fn on_connect(&self, session: &Session) {
        let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
        for filter in &session.subscriptions {
            let _ = self.client.try_subscribe(filter.clone(), qos);
        }
        if let Some((topic, payload)) = &session.birth {
            let _ = self.client.try_publish(topic.clone(), qos, true, payload.clone());
        }
    }
}

/// Polls `link` in a task of its own, reconnecting with backoff, and sends what happens on the
/// returned channel.
fn drive(mut link: impl Link, endpoint: String, session: Session) -> (mpsc::Receiver<LinkEvent>, JoinHandle<()>) {
    let (tx, events) = mpsc::channel(1024);
    let task = tokio::spawn(async move {
        let mut backoff = Backoff::new(session.reconnect_first, session.reconnect_max);
        let mut outage = OutageLog::default();
        loop {
            let event = match link.poll().await {
                Polled::Connected => {
                    match outage.recovered() {
                        Some((down_for_s, attempts)) => {
                            tracing::info!(broker = %endpoint, down_for_s, attempts, "reconnected to MQTT broker")
                        }
                        None => tracing::info!(broker = %endpoint, "connected to MQTT broker"),
                    }
                    backoff.reset();
                    link.on_connect(&session);
                    LinkEvent::Connected
                }
                Polled::Event(event) => event,
                Polled::Closed => break,
                Polled::Skip => continue,
                Polled::Failed(e) => {
                    let delay = backoff.next_delay();
                    tracing::debug!(broker = %endpoint, error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT connection attempt failed");
                    match outage.failed() {
                        OutageNote::Down => {
                            tracing::warn!(broker = %endpoint, error = %e, "MQTT connection lost; reconnecting")
                        }
                        OutageNote::StillDown { attempts, down_for_s } => {
                            tracing::warn!(broker = %endpoint, error = %e, attempts, down_for_s, "MQTT broker still unreachable")
                        }
                        OutageNote::Quiet => {}
                    }
                    let _ = tx.send(LinkEvent::Disconnected(e)).await;
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            if tx.send(event).await.is_err() {
                break; // nobody listens any more: the owner is stopping
            }
        }
    });
    (events, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_topics_round_trip() {
        let t = Topics::new("av/site1");
        assert_eq!(t.camera_of_alarm(&t.alarm("gate")), Some("gate"));
        assert_eq!(t.camera_of_alarm("av/site1/alarms/gate/x"), None);
        assert_eq!(t.camera_of_alarm("other/alarms/gate"), None);
        assert_eq!(t.alarms_filter(), "av/site1/alarms/+");
    }

    #[test]
    fn missing_ca_file_names_the_key() {
        let config = MqttConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = options(&config, "x").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("/nonexistent/ca.pem") && err.contains("mqtt.ca_file"),
            "{err}"
        );
    }
}
