//! The MQTT connection: one client, its event loop, the topic names of the contract.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::MqttConfig;

/// Incoming packets allowed; oversized alarm payloads are rejected by the alarm parser with a
/// message on `errors`, which needs them to arrive rather than break the connection.
const MAX_INCOMING_PACKET: usize = 1024 * 1024;
/// Evidence JPEGs are the largest messages sent.
const MAX_OUTGOING_PACKET: usize = 16 * 1024 * 1024;
const RECONNECT_FIRST: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Topic names of the contract in DESIGN.md, under the configured prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }
    pub fn alarms_filter(&self) -> String {
        format!("{}/alarms/+", self.prefix)
    }
    pub fn alarm(&self, camera: &str) -> String {
        format!("{}/alarms/{camera}", self.prefix)
    }
    /// The camera an alarm topic is for, if it is one.
    pub fn camera_of_alarm<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic.strip_prefix(&self.prefix)?.strip_prefix("/alarms/").filter(|c| !c.contains('/'))
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
}

/// What to do each time the connection (re)opens.
#[derive(Debug, Clone)]
pub struct Session {
    pub subscriptions: Vec<String>,
    /// Retained message published after every connect (the `online` status).
    pub birth: Option<(String, Vec<u8>)>,
    /// Retained message the broker publishes if the connection is lost (the `offline` status).
    pub will: Option<(String, Vec<u8>)>,
}

pub struct Connection {
    pub client: AsyncClient,
    pub inbound: mpsc::Receiver<Inbound>,
    pub task: JoinHandle<()>,
}

/// Connects (and keeps reconnecting) to the broker in `config`.
pub fn connect(config: &MqttConfig, client_id: &str, session: Session) -> Connection {
    let mut options = MqttOptions::new(client_id, config.host.clone(), config.port);
    options
        .set_keep_alive(Duration::from_secs(config.keep_alive_s.max(5)))
        .set_clean_session(true)
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
    if let Some((topic, payload)) = &session.will {
        options.set_last_will(LastWill::new(topic, payload.clone(), QoS::AtLeastOnce, true));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let (tx, inbound) = mpsc::channel(1024);
    let task_client = client.clone();
    let endpoint = format!("{}:{}", config.host, config.port);
    let task = tokio::spawn(async move {
        let mut backoff = RECONNECT_FIRST;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(broker = %endpoint, "connected to MQTT broker");
                    backoff = RECONNECT_FIRST;
                    // try_* never waits on this very event loop, which would deadlock.
                    for filter in &session.subscriptions {
                        let _ = task_client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    if let Some((topic, payload)) = &session.birth {
                        let _ = task_client.try_publish(topic.clone(), QoS::AtLeastOnce, true, payload.clone());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let msg = Inbound {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                    };
                    if tx.send(msg).await.is_err() {
                        break; // nobody listens any more: the service is stopping
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(broker = %endpoint, error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    });
    Connection { client, inbound, task }
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
}
