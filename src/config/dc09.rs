//! `[dc09]`, `[[dc09.panel]]`, `[dc09.arc]`, `[dc09.codes]` and `[camera.dc09]`: SIA DC-09 from
//! alarm panels, and verdicts out to an alarm receiving centre.

use std::net::SocketAddr;

use serde::Deserialize;

use super::ConfigError;
use super::secret::{Secret, check_one_source, resolve_secret};

/// The alarm events that raise an alarm when `dc09.alarm_codes` is not given: SIA burglary,
/// untyped zone, hold-up, panic and perimeter alarms, and their Contact ID counterparts (new
/// events, qualifier 1).
pub const DEFAULT_ALARM_CODES: &[&str] = &[
    "BA", "UA", "HA", "PA", "1130", "1131", "1132", "1133", "1134", "1137", "1120", "1121", "1122", "1123",
];

/// `[dc09]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dc09Config {
    /// `address:port`, served over TCP and UDP; empty (the default) turns the receiver off.
    pub listen: String,
    /// Panels that may report here.
    #[serde(rename = "panel")]
    pub panels: Vec<PanelConfig>,
    /// SIA codes (`BA`) and Contact ID events with their qualifier (`1130`) that raise an alarm.
    pub alarm_codes: Vec<String>,
    /// Verdicts out to an alarm receiving centre.
    pub arc: Option<ArcConfig>,
    pub codes: CodesConfig,
}

impl Default for Dc09Config {
    fn default() -> Self {
        Self {
            listen: String::new(),
            panels: Vec::new(),
            alarm_codes: DEFAULT_ALARM_CODES.iter().map(|c| (*c).to_owned()).collect(),
            arc: None,
            codes: CodesConfig::default(),
        }
    }
}

/// `[[dc09.panel]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelConfig {
    pub account: String,
    /// The AES key in hex (32, 48 or 64 digits); prefer `key_env`. Without a key, only plain
    /// messages are taken from this account.
    #[serde(default)]
    pub key: Secret,
    #[serde(default)]
    pub key_env: String,
}

/// `[dc09.arc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArcConfig {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: ArcProtocol,
    #[serde(default)]
    pub key: Secret,
    #[serde(default)]
    pub key_env: String,
    /// The receiver number (`R…`), when the ARC asks for one.
    #[serde(default)]
    pub receiver: Option<String>,
    /// The line prefix (`L…`); `0` when not given.
    #[serde(default)]
    pub line: Option<String>,
    #[serde(default)]
    pub format: ArcFormat,
    /// `host:port` of a second receiver, used while the first cannot be reached.
    #[serde(default)]
    pub backup: Option<String>,
    /// A `NULL` link test this often; 0 turns it off.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_s: f64,
    /// How long to wait for the ARC's answer before sending again.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_s: f64,
    /// The wait between attempts while the ARC cannot be reached.
    #[serde(default = "default_retry")]
    pub retry_s: f64,
}

fn default_heartbeat() -> f64 {
    60.0
}
fn default_ack_timeout() -> f64 {
    10.0
}
fn default_retry() -> f64 {
    5.0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArcProtocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArcFormat {
    #[default]
    SiaDcs,
    AdmCid,
}

/// `[dc09.codes]`: the event each verdict is sent as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodesConfig {
    pub verified: String,
    pub false_alarm: String,
    pub unverifiable: String,
}

impl Default for CodesConfig {
    fn default() -> Self {
        Self {
            verified: "BV".into(),
            false_alarm: "BG".into(),
            unverifiable: "BA".into(),
        }
    }
}

/// `[camera.dc09]`: which panel zones are this camera's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraDc09 {
    pub account: String,
    /// Zone numbers (compared as numbers: "3" is "003"), or `["*"]` for all.
    #[serde(default)]
    pub zones: Vec<String>,
}

impl Dc09Config {
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        if self.listen.trim().is_empty() {
            return Ok(None);
        }
        self.listen.trim().parse().map(Some).map_err(|e| {
            format!(
                "expected an address and port such as \"0.0.0.0:12300\" (or \"\" for off), got {:?} ({e})",
                self.listen
            )
        })
    }

    /// Checks the section; errors are (key, expected).
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        self.address().map_err(|e| ("dc09.listen".into(), e))?;
        for (i, panel) in self.panels.iter().enumerate() {
            let key = format!("dc09.panel[{i}]");
            check_account(&panel.account).map_err(|e| (format!("{key}.account"), e))?;
            check_one_source(&panel.key, &panel.key_env, &format!("{key}.key"))
                .map_err(|e| (format!("{key}.key"), e))?;
            if !panel.key.is_empty() {
                crate::intake::dc09::frame::Key::from_hex(panel.key.expose()).map_err(|e| (format!("{key}.key"), e))?;
            }
        }
        for code in &self.alarm_codes {
            let sia = code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase());
            let cid = code.len() == 4 && code.bytes().all(|b| b.is_ascii_digit());
            if !(sia || cid) {
                return Err((
                    "dc09.alarm_codes".into(),
                    format!("expected SIA codes such as \"BA\" or Contact ID events such as \"1130\", got {code:?}"),
                ));
            }
        }
        for (key, code) in [
            ("dc09.codes.verified", &self.codes.verified),
            ("dc09.codes.false_alarm", &self.codes.false_alarm),
            ("dc09.codes.unverifiable", &self.codes.unverifiable),
        ] {
            let sia = code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase());
            let cid = code.len() == 4 && code.bytes().all(|b| b.is_ascii_digit());
            if !(sia || cid) {
                return Err((
                    key.into(),
                    format!("expected a SIA code such as \"BV\" or a Contact ID event such as \"1139\", got {code:?}"),
                ));
            }
        }
        if let Some(arc) = &self.arc {
            arc.validate().map_err(|(k, e)| (format!("dc09.arc.{k}"), e))?;
        }
        Ok(())
    }
}

impl ArcConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        if self.host.trim().is_empty() {
            return Err(("host".into(), "expected the ARC receiver's host name or address".into()));
        }
        if self.port == 0 {
            return Err(("port".into(), "expected a port from 1 to 65535".into()));
        }
        check_one_source(&self.key, &self.key_env, "dc09.arc.key").map_err(|e| ("key".into(), e))?;
        if !self.key.is_empty() {
            crate::intake::dc09::frame::Key::from_hex(self.key.expose()).map_err(|e| ("key".into(), e))?;
        }
        for (key, value) in [("receiver", &self.receiver), ("line", &self.line)] {
            let bad = value
                .as_ref()
                .is_some_and(|v| !(1..=6).contains(&v.len()) || !v.bytes().all(|b| b.is_ascii_hexdigit()));
            if bad {
                return Err((key.into(), format!("expected 1 to 6 hex digits, got {value:?}")));
            }
        }
        if let Some(backup) = &self.backup
            && backup
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(("backup".into(), format!("expected \"host:port\", got {backup:?}")));
        }
        for (key, value) in [("ack_timeout_s", self.ack_timeout_s), ("retry_s", self.retry_s)] {
            if !(value.is_finite() && value > 0.0) {
                return Err((
                    key.into(),
                    format!("expected a number of seconds greater than 0, got {value}"),
                ));
            }
        }
        if !(self.heartbeat_s.is_finite() && self.heartbeat_s >= 0.0) {
            return Err((
                "heartbeat_s".into(),
                format!(
                    "expected a number of seconds, 0 (off) or more, got {}",
                    self.heartbeat_s
                ),
            ));
        }
        Ok(())
    }

    /// The key from `key_env` or `key`, if any.
    pub fn resolve_key(&self) -> Result<Option<Secret>, ConfigError> {
        resolve_secret(&self.key, &self.key_env, "dc09.arc.key_env", "the ARC's AES key in hex")
    }
}

impl PanelConfig {
    /// The key from `key_env` or `key`, if any; `index` names the panel in errors.
    pub fn resolve_key(&self, index: usize) -> Result<Option<Secret>, ConfigError> {
        resolve_secret(
            &self.key,
            &self.key_env,
            &format!("dc09.panel[{index}].key_env"),
            "the panel's AES key in hex",
        )
    }
}

impl CameraDc09 {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        check_account(&self.account).map_err(|e| ("account".to_owned(), e))?;
        for zone in &self.zones {
            if zone != "*" && zone.parse::<u32>().is_err() {
                return Err(("zones".into(), format!("expected zone numbers or \"*\", got {zone:?}")));
            }
        }
        Ok(())
    }

    /// Whether the panel's `zone` is this camera's; zones compare as numbers.
    pub fn has_zone(&self, zone: &str) -> bool {
        let number = zone.parse::<u32>().ok();
        self.zones
            .iter()
            .any(|z| z == "*" || (number.is_some() && z.parse::<u32>().ok() == number))
    }
}

/// DC-09 accounts are 3 to 16 hex digits; they become part of alarm ids.
fn check_account(account: &str) -> Result<(), String> {
    if (3..=16).contains(&account.len()) && account.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!("expected an account of 3 to 16 hex digits, got {account:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_compare_as_numbers() {
        let camera = CameraDc09 {
            account: "4711".into(),
            zones: vec!["003".into(), "12".into()],
        };
        assert!(camera.has_zone("3") && camera.has_zone("003") && camera.has_zone("0012"));
        assert!(!camera.has_zone("4") && !camera.has_zone("x"));
        let all = CameraDc09 {
            account: "4711".into(),
            zones: vec!["*".into()],
        };
        assert!(all.has_zone("999"));
    }
}
