//! `[mqtt]`: the broker, the topic prefix, TLS and credentials.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use super::secret::{Secret, resolve_secret};

/// `mqtt.max_packet_bytes` by default: 256 KiB, which a verdict and a 1280-pixel evidence image fit.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 256 * 1024;
/// The smallest packet limit that still takes any verdict document.
pub const MIN_MAX_PACKET_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub topic_prefix: String,
    /// MQTT client id, also this box's name among the boxes on the broker; empty means
    /// `alarm-verifier-{site}`, or `alarm-verifier-{site}-{hostname}` with a `share_group`.
    pub client_id: String,
    /// When set, the box takes its cameras' alarms through the MQTT v5 shared subscription
    /// `$share/{share_group}/{prefix}/alarms/{camera}`: boxes in the same group verify each alarm
    /// once, and a survivor answers what a box that died had accepted.
    pub share_group: String,
    pub keep_alive_s: u64,
    pub username: String,
    /// The password itself; prefer `password_env` so it stays out of the file.
    pub password: Secret,
    /// Name of an environment variable holding the password.
    pub password_env: String,
    /// CA certificate (PEM) of the broker; setting it turns TLS on.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that authenticate clients by certificate.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The broker's packet limit (mosquitto's `max_packet_size`). Evidence over it is sent smaller
    /// or left out of MQTT (the API still serves it); the verdict document itself always goes.
    pub max_packet_bytes: usize,
}

impl MqttConfig {
    /// This box's client id (and name among the boxes on the broker).
    pub fn box_id(&self, site: &str) -> String {
        match (self.client_id.is_empty(), self.share_group.is_empty()) {
            (false, _) => self.client_id.clone(),
            (true, true) => format!("alarm-verifier-{site}"),
            // Two boxes of a pair share a site name; the host tells them apart.
            (true, false) => format!("alarm-verifier-{site}-{}", hostname()),
        }
    }

    /// The password from `password_env` or `password`, if any.
    pub fn resolve_password(&self) -> Result<Option<String>, ConfigError> {
        Ok(resolve_secret(
            &self.password,
            &self.password_env,
            "mqtt.password_env",
            "the MQTT password",
        )?
        .map(|s| s.expose().to_owned()))
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            topic_prefix: "alarm-verifier".into(),
            client_id: String::new(),
            share_group: String::new(),
            keep_alive_s: 10,
            username: String::new(),
            password: Secret::default(),
            password_env: String::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
        }
    }
}

/// The machine's host name, or `host` when it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}
