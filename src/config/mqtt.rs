//! `[mqtt]`: the broker, the topic prefix, TLS and credentials.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use super::secret::{Secret, resolve_secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub topic_prefix: String,
    /// MQTT client id; empty means `alarm-verifier-{site}`.
    pub client_id: String,
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
}

impl MqttConfig {
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
            keep_alive_s: 10,
            username: String::new(),
            password: Secret::default(),
            password_env: String::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }
}
