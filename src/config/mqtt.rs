//! `[mqtt]`: the broker, the topic prefix, TLS and credentials; and [`Secret`], a password that
//! never shows in logs.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

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

/// A password: deserialised like a string, never shown by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl MqttConfig {
    /// The password from `password_env` or `password`, if any.
    pub fn resolve_password(&self) -> Result<Option<String>, ConfigError> {
        if !self.password_env.is_empty() {
            return std::env::var(&self.password_env)
                .map(Some)
                .map_err(|_| ConfigError::Invalid {
                    path: "environment".into(),
                    key: "mqtt.password_env".into(),
                    expected: format!(
                        "expected the environment variable {} to hold the MQTT password",
                        self.password_env
                    ),
                });
        }
        Ok((!self.password.is_empty()).then(|| self.password.expose().to_owned()))
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
