//! MQTT connections: options (TLS, credentials), the event loop, the topic names of the contract.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, MqttConfig};
use crate::ingest::health::{OutageLog, OutageNote};

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
}

/// A message that arrived on a subscribed topic.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The packet, for acknowledging it when the session uses manual acks.
    pub packet: Publish,
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
    if let Some(password) = config.resolve_password()? {
        options.set_credentials(config.username.clone(), password);
    } else if !config.username.is_empty() {
        options.set_credentials(config.username.clone(), String::new());
    }
    if let Some(ca_file) = &config.ca_file {
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
        options.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(options)
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
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let (tx, events) = mpsc::channel(1024);
    let task_client = client.clone();
    let task = tokio::spawn(async move {
        let mut backoff = session.reconnect_first;
        let mut outage = OutageLog::default();
        loop {
            let event = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    match outage.recovered() {
                        Some((down_for_s, attempts)) => {
                            tracing::info!(broker = %endpoint, down_for_s, attempts, "reconnected to MQTT broker")
                        }
                        None => tracing::info!(broker = %endpoint, "connected to MQTT broker"),
                    }
                    backoff = session.reconnect_first;
                    // try_* never waits on this very event loop, which would deadlock.
                    for filter in &session.subscriptions {
                        let _ = task_client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    if let Some((topic, payload)) = &session.birth {
                        let _ = task_client.try_publish(topic.clone(), QoS::AtLeastOnce, true, payload.clone());
                    }
                    LinkEvent::Connected
                }
                Ok(Event::Incoming(Packet::Publish(p))) => LinkEvent::Message(Inbound {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                    packet: p,
                }),
                Ok(Event::Incoming(Packet::PubAck(ack))) => LinkEvent::Acked(ack.pkid),
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => LinkEvent::Sent(pkid),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(broker = %endpoint, error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection attempt failed");
                    match outage.failed() {
                        OutageNote::Down => {
                            tracing::warn!(broker = %endpoint, error = %e, "MQTT connection lost; reconnecting")
                        }
                        OutageNote::StillDown { attempts, down_for_s } => {
                            tracing::warn!(broker = %endpoint, error = %e, attempts, down_for_s, "MQTT broker still unreachable")
                        }
                        OutageNote::Quiet => {}
                    }
                    let _ = tx.send(LinkEvent::Disconnected(e.to_string())).await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(session.reconnect_max);
                    continue;
                }
            };
            if tx.send(event).await.is_err() {
                break; // nobody listens any more: the owner is stopping
            }
        }
    });
    Connection { client, events, task }
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
