//! `[http]`, `[smtp]` and `[camera.onvif]`: where alarms are heard besides MQTT, and the HTTP
//! server's token.

use std::net::SocketAddr;

use serde::Deserialize;

use super::ConfigError;
use super::secret::{Secret, resolve_secret};

/// `[http]`: the service's one HTTP server (alarm webhooks now; the console builds on it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `address:port`; empty turns the server off.
    pub listen: String,
    /// The token itself; prefer `token_env`.
    pub token: Secret,
    /// Name of an environment variable holding the token.
    pub token_env: String,
    /// Host names (optionally `name:port`) the server answers to, besides IP literals and
    /// `localhost`, which are always admitted; empty: the machine's host name. A request naming
    /// another host gets 403, which is what defeats DNS rebinding.
    pub hosts: Vec<String>,
    /// Seconds a client has to send a request's head, and to start the next one on a kept-alive
    /// connection (hyper counts that wait as header reading); past it the connection is closed.
    pub header_timeout_s: f64,
    /// Seconds from a request's head to its response (the body read included); past it, 408.
    pub request_timeout_s: f64,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// The address others reach this server at, for links sent out (DC-09 `[V…]`); empty: built
    /// from `listen`.
    pub public_url: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            token: Secret::default(),
            token_env: String::new(),
            hosts: Vec::new(),
            header_timeout_s: 10.0,
            request_timeout_s: 30.0,
            max_connections: 256,
            public_url: String::new(),
        }
    }
}

impl HttpConfig {
    /// Checks the keys of `[http]` beyond the listen address and the token: the key at fault and
    /// what was expected.
    pub fn check_limits(&self) -> Result<(), (String, String)> {
        for (key, value) in [
            ("http.header_timeout_s", self.header_timeout_s),
            ("http.request_timeout_s", self.request_timeout_s),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= 3600.0) {
                return Err((
                    key.into(),
                    format!("expected seconds above 0 and at most 3600, got {value}"),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(("http.max_connections".into(), "expected at least 1".into()));
        }
        for (i, host) in self.hosts.iter().enumerate() {
            check_host_entry(host).map_err(|e| (format!("http.hosts[{i}]"), e))?;
        }
        Ok(())
    }

    /// The base of links sent out: `public_url`, or `http://{listen}` (a wildcard address becomes
    /// the host's name).
    pub fn public_base(&self) -> String {
        if !self.public_url.trim().is_empty() {
            return self.public_url.trim().trim_end_matches('/').to_owned();
        }
        match self.address() {
            Ok(Some(addr)) if addr.ip().is_unspecified() => {
                let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                let host = host.trim();
                format!(
                    "http://{}:{}",
                    if host.is_empty() { "localhost" } else { host },
                    addr.port()
                )
            }
            Ok(Some(addr)) => format!("http://{addr}"),
            _ => String::new(),
        }
    }

    /// The address to bind, or None when the server is off.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        parse_listen(&self.listen)
    }

    pub fn has_token(&self) -> bool {
        !self.token.is_empty() || !self.token_env.is_empty()
    }

    /// The token from `token_env` or `token`, if any.
    pub fn resolve_token(&self) -> Result<Option<Secret>, ConfigError> {
        resolve_secret(&self.token, &self.token_env, "http.token_env", "the HTTP token")
    }
}

/// `[smtp]`: a receiving mail server for NVR alarm e-mails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// `address:port`; empty (the default) turns the server off.
    pub listen: String,
    /// With a username, clients must log in (AUTH PLAIN or LOGIN) before sending.
    pub username: String,
    pub password: Secret,
    pub password_env: String,
    /// Mails over this many bytes are refused with 552.
    pub max_message_bytes: usize,
    /// The name the server gives in its greeting.
    pub hostname: String,
    /// A session is closed with 421 after this many seconds, whatever the client is doing.
    pub max_session_s: f64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            username: String::new(),
            password: Secret::default(),
            password_env: String::new(),
            max_message_bytes: 10 * 1024 * 1024,
            hostname: "alarm-verifier".into(),
            max_session_s: 300.0,
        }
    }
}

impl SmtpConfig {
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        parse_listen(&self.listen)
    }

    pub fn resolve_password(&self) -> Result<Option<Secret>, ConfigError> {
        resolve_secret(
            &self.password,
            &self.password_env,
            "smtp.password_env",
            "the SMTP password",
        )
    }
}

/// `[camera.onvif]`: the camera's own events, over an ONVIF pull-point subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnvifConfig {
    /// The device service, e.g. `http://10.0.0.5/onvif/device_service`.
    pub url: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Secret,
    #[serde(default)]
    pub password_env: String,
    /// Further event topics that raise an alarm on a false→true change of their first boolean
    /// data item, e.g. `tns1:RuleEngine/FieldDetector/ObjectsInside`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Whether the event service and subscription addresses the camera gives may be on another
    /// host than `url`'s. Off, such an address is refused: the credentials would go there.
    #[serde(default)]
    pub allow_other_hosts: bool,
}

impl OnvifConfig {
    /// The password from `password_env` or `password`; `camera` names the key in errors.
    pub fn resolve_password(&self, camera_key: &str) -> Result<Option<Secret>, ConfigError> {
        resolve_secret(
            &self.password,
            &self.password_env,
            &format!("{camera_key}.onvif.password_env"),
            "the camera's ONVIF password",
        )
    }
}

/// An `address:port` to listen on, or None when empty.
fn parse_listen(listen: &str) -> Result<Option<SocketAddr>, String> {
    if listen.trim().is_empty() {
        return Ok(None);
    }
    listen.trim().parse::<SocketAddr>().map(Some).map_err(|e| {
        format!("expected an address and port such as \"127.0.0.1:8080\" or \"0.0.0.0:8080\" (or \"\" for off), got {listen:?} ({e})")
    })
}

/// A `http.hosts` entry: a host name or address with an optional port, as a `Host` header has it.
fn check_host_entry(entry: &str) -> Result<(), String> {
    let bad = entry.is_empty()
        || entry.contains("://")
        || entry
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '@' | '?' | '#'));
    if bad {
        return Err(format!(
            "expected a host name or address with an optional port, such as \"nvr-gw.site.example\" or \"alarms.local:8080\", got {entry:?}"
        ));
    }
    Ok(())
}

pub(super) fn check_onvif_url(value: &str) -> Result<(), String> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()) => {
            if u.password().is_some() {
                return Err("expected the password in onvif.password_env or onvif.password, not in the URL".into());
            }
            Ok(())
        }
        Ok(u) => Err(format!(
            "expected an http:// URL of the device service, got scheme {:?}",
            u.scheme()
        )),
        Err(e) => Err(format!(
            "expected an http:// URL of the device service such as http://10.0.0.5/onvif/device_service ({e})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(text: &str) -> HttpConfig {
        toml::from_str(text).expect("an [http] table")
    }

    #[test]
    fn http_limits_default_and_bad_ones_name_the_key() {
        let c = http("");
        assert_eq!(
            (c.header_timeout_s, c.request_timeout_s, c.max_connections),
            (10.0, 30.0, 256)
        );
        assert!(c.hosts.is_empty());
        assert_eq!(c.check_limits(), Ok(()));
        assert_eq!(
            http("hosts = [\"alarms.site.example\", \"gw:8443\", \"*\"]\nheader_timeout_s = 1.5").check_limits(),
            Ok(())
        );
        for (text, key) in [
            ("header_timeout_s = 0", "http.header_timeout_s"),
            ("request_timeout_s = -1", "http.request_timeout_s"),
            ("request_timeout_s = inf", "http.request_timeout_s"),
            ("max_connections = 0", "http.max_connections"),
            ("hosts = [\"ok.example\", \"http://evil.example\"]", "http.hosts[1]"),
            ("hosts = [\"\"]", "http.hosts[0]"),
            ("hosts = [\"a b\"]", "http.hosts[0]"),
            ("hosts = [\"x/y\"]", "http.hosts[0]"),
        ] {
            let err = http(text).check_limits().expect_err(text);
            assert_eq!(err.0, key, "{text}: {}", err.1);
        }
    }
}
