//! Outbound messages to the monitoring centre: verdicts, evidence, camera state, errors, status.

use chrono::Utc;
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;

use crate::camera::CameraHealth;
use crate::mqtt::Topics;
use crate::verdict::{VerdictDocument, rfc3339};

#[derive(Debug, thiserror::Error)]
#[error("cannot queue MQTT publish to {topic}: {reason}")]
pub struct PublishError {
    topic: String,
    reason: String,
}

/// Rejected input, as sent on `{prefix}/errors`.
#[derive(Debug, Serialize)]
pub struct ErrorReport<'a> {
    pub time: String,
    pub topic: &'a str,
    pub error: String,
    /// The original payload, as text where it is UTF-8 (cut to a few kilobytes).
    pub payload: String,
}

const MAX_ECHOED_PAYLOAD: usize = 4096;

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
            .map_err(|e| PublishError { topic, reason: e.to_string() })
    }

    /// Evidence goes first so that it is there when a consumer follows `evidence_topic`.
    pub async fn verdict(&self, doc: &VerdictDocument, evidence: Option<Vec<u8>>) -> Result<(), PublishError> {
        if let Some(jpeg) = evidence {
            self.send(self.topics.evidence(&doc.alarm_id), false, jpeg).await?;
        }
        self.send(self.topics.verdict(&doc.camera), false, doc.to_json().into_bytes()).await
    }

    pub async fn camera_state(&self, health: &CameraHealth) -> Result<(), PublishError> {
        let body = serde_json::to_vec(health).unwrap_or_default();
        self.send(self.topics.camera_state(&health.camera), true, body).await
    }

    pub async fn rejected(&self, topic: &str, error: &str, payload: &[u8]) -> Result<(), PublishError> {
        let cut = &payload[..payload.len().min(MAX_ECHOED_PAYLOAD)];
        let report = ErrorReport {
            time: rfc3339(Utc::now()),
            topic,
            error: error.to_owned(),
            payload: String::from_utf8_lossy(cut).into_owned(),
        };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        self.send(self.topics.errors(), false, body).await
    }

    pub async fn status(&self, online: bool) -> Result<(), PublishError> {
        let body = if online { "online" } else { "offline" };
        self.send(self.topics.status(), true, body.into()).await
    }
}
