//! Site configuration: TOML read into typed structs, then checked as a whole.
//!
//! Every key has a default (documented in the README) except the camera list itself.
//! Unknown keys are errors, so a typo never silently falls back to a default. Default file paths
//! follow the executable (`paths`); relative paths in a file are taken from the file's folder.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod camera;
mod clip;
mod dc09;
mod delivery;
mod detector;
mod email_out;
mod intake;
mod mqtt;
pub mod paths;
mod policy;
mod secret;

pub use camera::{CameraConfig, RtspTransport, redact_url};
pub use clip::{ClipConfig, MIN_RING_BYTES};
pub use dc09::{
    ArcConfig, ArcFormat, ArcProtocol, CameraDc09, CodesConfig, DEFAULT_ALARM_CODES, Dc09Config, PanelConfig,
};
pub use delivery::{EvidenceConfig, StoreConfig, VerdictConfig};
pub use detector::{ChannelOrder, DetectorConfig, Layout, Optimization, Provider, ResizeMode};
pub use email_out::{EmailOutConfig, EmailTls};
pub use intake::{HttpConfig, OnvifConfig, SmtpConfig};
pub use mqtt::MqttConfig;
pub use paths::Install;
pub use policy::{ClassRule, PolicyConfig, PolicyOverride, Zone};
pub use secret::{Secret, resolve_secret};

use camera::check_rtsp_url;
use intake::check_onvif_url;
use secret::check_one_source;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: key `{key}`: {expected}")]
    Invalid {
        path: String,
        key: String,
        expected: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the site, copied into every verdict.
    #[serde(default = "default_site")]
    pub site: String,
    /// SIGTERM ends the service within this many seconds, whatever the broker and cameras do.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_s: f64,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub detector: DetectorConfig,
    #[serde(default)]
    pub clip: ClipConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub verdict: VerdictConfig,
    #[serde(default)]
    pub evidence: EvidenceConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub dc09: Dc09Config,
    #[serde(default)]
    pub email_out: EmailOutConfig,
    #[serde(default, rename = "camera")]
    pub cameras: Vec<CameraConfig>,
}

fn default_site() -> String {
    "site".into()
}

fn default_shutdown_timeout() -> f64 {
    10.0
}

impl Config {
    /// Reads and checks a config file. Relative paths in it are taken from the file's folder, so
    /// the file means the same from any working directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        config.resolve_paths(path.parent().unwrap_or(Path::new("")));
        Ok(config)
    }

    /// Parses and checks config text; `origin` names it in errors. Relative paths stay relative
    /// (to the working directory); defaults are where `paths::Install` puts them.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// The defaults, with no cameras: what `verify-clip` uses without `--config`.
    pub fn offline_default() -> Self {
        Self {
            site: default_site(),
            shutdown_timeout_s: default_shutdown_timeout(),
            mqtt: MqttConfig::default(),
            detector: DetectorConfig::default(),
            clip: ClipConfig::default(),
            policy: PolicyConfig::default(),
            verdict: VerdictConfig::default(),
            evidence: EvidenceConfig::default(),
            store: StoreConfig::default(),
            http: HttpConfig::default(),
            smtp: SmtpConfig::default(),
            dc09: Dc09Config::default(),
            email_out: EmailOutConfig::default(),
            cameras: Vec::new(),
        }
    }

    /// Every file path of the config, relative ones taken from `base` (the config file's folder).
    /// Defaults are absolute already, except without a working directory.
    fn resolve_paths(&mut self, base: &Path) {
        let detector = &mut self.detector;
        let mqtt = &mut self.mqtt;
        let paths = [&mut detector.model, &mut detector.onnxruntime, &mut self.store.path]
            .into_iter()
            .chain(detector.labels.as_mut())
            .chain(mqtt.ca_file.as_mut())
            .chain(mqtt.client_cert.as_mut())
            .chain(mqtt.client_key.as_mut());
        for path in paths {
            paths::resolve_relative(base, path);
        }
    }

    /// That the detector's files exist, for check-config (the service's start reads them anyway);
    /// `origin` names the config in errors.
    pub fn check_files(&self, origin: &str) -> Result<(), ConfigError> {
        let files = [
            ("detector.model", Some(&self.detector.model), "the ONNX model"),
            (
                "detector.onnxruntime",
                Some(&self.detector.onnxruntime),
                "the ONNX Runtime library",
            ),
            ("detector.labels", self.detector.labels.as_ref(), "the labels file"),
        ];
        for (key, path, what) in files {
            if let Some(path) = path.filter(|p| !p.is_file()) {
                return Err(ConfigError::Invalid {
                    path: origin.to_owned(),
                    key: key.to_owned(),
                    expected: format!("expected {what}, but {} is not a file", path.display()),
                });
            }
        }
        Ok(())
    }

    pub fn camera(&self, id: &str) -> Option<&CameraConfig> {
        self.cameras.iter().find(|c| c.id == id)
    }

    /// The policy that applies to `camera`: the site's, with the camera's overrides.
    pub fn camera_policy(&self, camera: &CameraConfig) -> PolicyConfig {
        self.policy.with_override(&camera.policy)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, expected: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key: key.to_owned(),
            expected,
        };
        check_topic_level(&self.site).map_err(|e| invalid("site", e))?;
        if !(self.shutdown_timeout_s.is_finite() && self.shutdown_timeout_s >= 4.0) {
            return Err(invalid(
                "shutdown_timeout_s",
                format!(
                    "expected at least 4 seconds (3 are kept for answering and flushing), got {}",
                    self.shutdown_timeout_s
                ),
            ));
        }
        if self.mqtt.host.trim().is_empty() {
            return Err(invalid("mqtt.host", "expected a host name or address".into()));
        }
        if self.mqtt.port == 0 {
            return Err(invalid("mqtt.port", "expected a port from 1 to 65535".into()));
        }
        check_topic_prefix(&self.mqtt.topic_prefix).map_err(|e| invalid("mqtt.topic_prefix", e))?;
        for (key, value) in [
            ("mqtt.share_group", &self.mqtt.share_group),
            ("mqtt.client_id", &self.mqtt.client_id),
        ] {
            if !value.is_empty() {
                check_topic_level(value).map_err(|e| invalid(key, e))?;
            }
        }
        if self.detector.threads == 0 {
            return Err(invalid("detector.threads", "expected at least 1".into()));
        }
        if let Some(size) = self.detector.input_size
            && !(16..=4096).contains(&size)
        {
            return Err(invalid(
                "detector.input_size",
                format!("expected 16 to 4096 pixels, got {size}"),
            ));
        }
        if self.detector.scale.is_some_and(|s| !s.is_finite() || s == 0.0) {
            return Err(invalid("detector.scale", "expected a finite, non-zero number".into()));
        }
        if self
            .detector
            .std
            .is_some_and(|s| s.iter().any(|v| !v.is_finite() || *v == 0.0))
        {
            return Err(invalid(
                "detector.std",
                "expected three finite, non-zero numbers".into(),
            ));
        }
        check_fraction(self.detector.score_threshold).map_err(|e| invalid("detector.score_threshold", e))?;
        check_fraction(self.detector.nms_iou).map_err(|e| invalid("detector.nms_iou", e))?;
        self.policy.validate("policy").map_err(|(k, e)| invalid(&k, e))?;
        check_positive(self.clip.pre_s, true).map_err(|e| invalid("clip.pre_s", e))?;
        check_positive(self.clip.post_s, true).map_err(|e| invalid("clip.post_s", e))?;
        check_positive(self.clip.analysis_fps, false).map_err(|e| invalid("clip.analysis_fps", e))?;
        check_positive(self.clip.coarse_fps, false).map_err(|e| invalid("clip.coarse_fps", e))?;
        if self.clip.coarse_fps > self.clip.analysis_fps {
            return Err(invalid(
                "clip.coarse_fps",
                format!(
                    "expected at most clip.analysis_fps ({}), got {}",
                    self.clip.analysis_fps, self.clip.coarse_fps
                ),
            ));
        }
        if self.clip.decoder.trim().is_empty() || self.clip.decoder.contains(|c: char| c.is_whitespace() || c == '!') {
            return Err(invalid(
                "clip.decoder",
                format!(
                    "expected \"auto\", \"software\" or a GStreamer element name, got {:?}",
                    self.clip.decoder
                ),
            ));
        }
        check_positive(self.clip.buffer_s, false).map_err(|e| invalid("clip.buffer_s", e))?;
        if self.clip.buffer_s < self.clip.pre_s {
            return Err(invalid(
                "clip.buffer_s",
                format!(
                    "expected at least clip.pre_s ({} s) so the pre-alarm video is still buffered, got {}",
                    self.clip.pre_s, self.clip.buffer_s
                ),
            ));
        }
        if let Some(bytes) = self.clip.max_ring_bytes
            && bytes < MIN_RING_BYTES
        {
            return Err(invalid(
                "clip.max_ring_bytes",
                format!("expected at least {MIN_RING_BYTES} bytes (1 MiB), got {bytes}"),
            ));
        }
        check_positive(self.verdict.deadline_s, false).map_err(|e| invalid("verdict.deadline_s", e))?;
        if self.verdict.queue == 0 {
            return Err(invalid("verdict.queue", "expected at least 1".into()));
        }
        if self.verdict.workers == Some(0) {
            return Err(invalid("verdict.workers", "expected at least 1".into()));
        }
        if !(1..=100).contains(&self.evidence.quality) {
            return Err(invalid(
                "evidence.quality",
                format!("expected 1 to 100, got {}", self.evidence.quality),
            ));
        }
        check_positive(self.store.retention_days, false).map_err(|e| invalid("store.retention_days", e))?;
        if self.mqtt.client_cert.is_some() != self.mqtt.client_key.is_some() {
            return Err(invalid(
                "mqtt.client_cert",
                "expected mqtt.client_cert and mqtt.client_key together".into(),
            ));
        }
        if self.mqtt.client_cert.is_some() && self.mqtt.ca_file.is_none() {
            return Err(invalid(
                "mqtt.ca_file",
                "expected a CA file: client certificates need TLS".into(),
            ));
        }
        check_one_source(&self.mqtt.password, &self.mqtt.password_env, "mqtt.password")
            .map_err(|e| invalid("mqtt.password", e))?;
        if self.mqtt.max_packet_bytes < mqtt::MIN_MAX_PACKET_BYTES {
            return Err(invalid(
                "mqtt.max_packet_bytes",
                format!(
                    "expected at least {} (a verdict document must fit), got {}",
                    mqtt::MIN_MAX_PACKET_BYTES,
                    self.mqtt.max_packet_bytes
                ),
            ));
        }
        if self.evidence.max_size < 64 {
            return Err(invalid(
                "evidence.max_size",
                format!("expected at least 64, got {}", self.evidence.max_size),
            ));
        }
        self.validate_intake(origin)?;
        self.dc09.validate().map_err(|(k, e)| invalid(&k, e))?;
        self.email_out.validate().map_err(|(k, e)| invalid(&k, e))?;
        let mut seen = HashSet::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            check_topic_level(&camera.id).map_err(|e| invalid(&format!("camera[{i}].id"), e))?;
            if !seen.insert(camera.id.as_str()) {
                return Err(invalid(
                    &format!("camera[{i}].id"),
                    format!("expected a unique camera id, {:?} is used twice", camera.id),
                ));
            }
            match (&camera.url, &camera.onvif) {
                (Some(url), _) => check_rtsp_url(url).map_err(|e| invalid(&format!("camera[{i}].url"), e))?,
                (None, Some(_)) => {}
                (None, None) => {
                    return Err(invalid(
                        &format!("camera[{i}].url"),
                        "expected an rtsp:// URL, or a [camera.onvif] table to find the streams through".into(),
                    ));
                }
            }
            let key = format!("camera[{i}].rtsp_password");
            check_one_source(&camera.rtsp_password, &camera.rtsp_password_env, &key).map_err(|e| invalid(&key, e))?;
            if let Some(detect_url) = &camera.detect_url {
                check_rtsp_url(detect_url).map_err(|e| invalid(&format!("camera[{i}].detect_url"), e))?;
            }
            if let Some(onvif) = &camera.onvif {
                check_onvif_url(&onvif.url).map_err(|e| invalid(&format!("camera[{i}].onvif.url"), e))?;
                let key = format!("camera[{i}].onvif.password");
                check_one_source(&onvif.password, &onvif.password_env, &key).map_err(|e| invalid(&key, e))?;
            }
            if camera.email_match.as_deref().is_some_and(|m| m.trim().is_empty()) {
                return Err(invalid(
                    &format!("camera[{i}].email_match"),
                    "expected a non-empty text found in the camera's alarm e-mails".into(),
                ));
            }
            if let Some(dc09) = &camera.dc09 {
                dc09.validate()
                    .map_err(|(k, e)| invalid(&format!("camera[{i}].dc09.{k}"), e))?;
            }
            check_positive(camera.stall_timeout_s, false)
                .map_err(|e| invalid(&format!("camera[{i}].stall_timeout_s"), e))?;
            if !(camera.view_check_s == 0.0 || (camera.view_check_s.is_finite() && camera.view_check_s >= 1.0)) {
                return Err(invalid(
                    &format!("camera[{i}].view_check_s"),
                    format!("expected 0 (off) or at least 1 second, got {}", camera.view_check_s),
                ));
            }
            if camera.policy.night.as_ref().is_some_and(|n| n.night.is_some()) {
                return Err(invalid(
                    &format!("camera[{i}].policy.night.night"),
                    "expected no night table inside the night rules".into(),
                ));
            }
            self.camera_policy(camera)
                .validate(&format!("camera[{i}].policy"))
                .map_err(|(k, e)| invalid(&k, e))?;
        }
        Ok(())
    }
}

impl Config {
    fn validate_intake(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, expected: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key: key.to_owned(),
            expected,
        };
        let http = self.http.address().map_err(|e| invalid("http.listen", e))?;
        if let Some(addr) = http
            && !addr.ip().is_loopback()
            && !self.http.has_token()
        {
            return Err(invalid(
                "http.token_env",
                format!(
                    "expected a token (http.token_env or http.token): http.listen {addr} is reachable from the network"
                ),
            ));
        }
        check_one_source(&self.http.token, &self.http.token_env, "http.token").map_err(|e| invalid("http.token", e))?;
        self.http.check_limits().map_err(|(key, e)| invalid(&key, e))?;
        let smtp = self.smtp.address().map_err(|e| invalid("smtp.listen", e))?;
        check_one_source(&self.smtp.password, &self.smtp.password_env, "smtp.password")
            .map_err(|e| invalid("smtp.password", e))?;
        let has_password = !(self.smtp.password.is_empty() && self.smtp.password_env.is_empty());
        if self.smtp.username.is_empty() && has_password {
            return Err(invalid(
                "smtp.username",
                "expected a username with smtp.password or smtp.password_env".into(),
            ));
        }
        // As HTTP needs a token off loopback: anyone on the network could otherwise raise alarms.
        if let Some(addr) = smtp
            && !addr.ip().is_loopback()
            && self.smtp.username.is_empty()
        {
            return Err(invalid(
                "smtp.username",
                format!(
                    "expected a username and password (smtp.username with smtp.password_env or smtp.password): \
                     smtp.listen {addr} is reachable from the network"
                ),
            ));
        }
        // A username with no password would let anyone log in with an empty one.
        if !self.smtp.username.is_empty() && !has_password {
            return Err(invalid(
                "smtp.password",
                "expected a password for smtp.username (smtp.password_env or smtp.password), not an empty one".into(),
            ));
        }
        if self.smtp.max_message_bytes < 1024 {
            return Err(invalid("smtp.max_message_bytes", "expected at least 1024".into()));
        }
        if !(self.smtp.max_session_s.is_finite()
            && self.smtp.max_session_s > 0.0
            && self.smtp.max_session_s <= 86_400.0)
        {
            return Err(invalid(
                "smtp.max_session_s",
                format!(
                    "expected a number of seconds greater than 0 and at most 86400, got {}",
                    self.smtp.max_session_s
                ),
            ));
        }
        Ok(())
    }
}

/// Camera ids and the site name become MQTT topic levels.
/// Names that become MQTT topic levels (the site, box and camera ids) follow the one id rule.
fn check_topic_level(value: &str) -> Result<(), String> {
    crate::support::ids::check_id(value).map_err(|e| format!("{e} (the name is an MQTT topic level)"))
}

/// The longest topic prefix, in bytes: with it and the longest ids, every topic stays far below
/// MQTT's 65,535 bytes.
const MAX_TOPIC_PREFIX_BYTES: usize = 1024;

/// The prefix is '/'-separated topic levels, each following the one id rule, so no topic built on
/// it carries a wildcard, a control character or an empty level (found by tests/fuzz.rs: a prefix
/// with a NUL was accepted, and the broker refuses every topic built on it).
fn check_topic_prefix(prefix: &str) -> Result<(), String> {
    let expected = "expected a topic prefix of '/'-separated levels, each printable, without wildcards";
    if prefix.len() > MAX_TOPIC_PREFIX_BYTES {
        return Err(format!(
            "{expected}, of at most {MAX_TOPIC_PREFIX_BYTES} bytes, got {} bytes",
            prefix.len()
        ));
    }
    if prefix.starts_with('$') {
        return Err(format!(
            "{expected}, not starting with '$' (the broker's own topics), got {prefix:?}"
        ));
    }
    for level in prefix.split('/') {
        crate::support::ids::check_id(level).map_err(|e| format!("{expected}; level {level:?}: {e}"))?;
    }
    Ok(())
}

fn check_fraction(v: f32) -> Result<(), String> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("expected a number from 0 to 1, got {v}"))
    }
}

fn check_positive(v: f64, zero_ok: bool) -> Result<(), String> {
    if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) {
        Ok(())
    } else if zero_ok {
        Err(format!("expected a number of seconds, 0 or more, got {v}"))
    } else {
        Err(format!("expected a number greater than 0, got {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[mqtt]
host = "127.0.0.1"
port = 1883
topic_prefix = "alarm-verifier"
[detector]
model = "models/yolox_nano.onnx"
[[camera]]
id = "gate"
url = "rtsp://user:pass@10.0.0.5:554/stream1"
"#;

    #[test]
    fn a_camera_without_url_needs_onvif_and_rtsp_credentials_come_from_one_place() {
        let no_url = MINIMAL.replace("url = \"rtsp://user:pass@10.0.0.5:554/stream1\"\n", "");
        let err = Config::parse(&no_url, "site.toml").unwrap_err().to_string();
        assert!(err.contains("camera[0].url") && err.contains("[camera.onvif]"), "{err}");
        let onvif = format!(
            "{no_url}rtsp_username = \"viewer\"\nrtsp_password = \"pw\"\n[camera.onvif]\nurl = \"http://10.0.0.5/onvif/device_service\"\n\
             username = \"admin\"\npassword = \"onvif-pw\"\n"
        );
        let c = Config::parse(&onvif, "site.toml").expect("valid");
        assert!(c.cameras[0].discovers_streams());
        let (user, password) = c.cameras[0]
            .rtsp_credentials("camera[0]")
            .ok()
            .flatten()
            .expect("credentials");
        assert_eq!((user.as_str(), password.expose()), ("viewer", "pw"));
        let onvif_only = onvif.replace("rtsp_username = \"viewer\"\nrtsp_password = \"pw\"\n", "");
        let c = Config::parse(&onvif_only, "site.toml").expect("valid");
        let (user, password) = c.cameras[0]
            .rtsp_credentials("camera[0]")
            .ok()
            .flatten()
            .expect("credentials");
        assert_eq!((user.as_str(), password.expose()), ("admin", "onvif-pw"));
        let both = onvif.replace(
            "rtsp_password = \"pw\"\n",
            "rtsp_password = \"pw\"\nrtsp_password_env = \"X\"\n",
        );
        let err = Config::parse(&both, "site.toml").unwrap_err().to_string();
        assert!(err.contains("camera[0].rtsp_password"), "{err}");
    }

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = Config::parse(MINIMAL, "site.toml").expect("valid config");
        assert_eq!(c.cameras.len(), 1);
        assert_eq!(c.cameras[0].id, "gate");
        assert_eq!(c.cameras[0].transport, RtspTransport::Auto);
        assert_eq!(c.clip.buffer_s, 10.0);
        assert_eq!(c.detector.threads, 1);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("port = 1883", "port = 1883\nprot = 1");
        let err = Config::parse(&text, "site.toml").unwrap_err().to_string();
        assert!(err.contains("site.toml") && err.contains("prot"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_expectation() {
        let text = MINIMAL.replace("port = 1883", "port = \"x\"");
        let err = Config::parse(&text, "site.toml").unwrap_err().to_string();
        assert!(err.contains("port") && err.contains("u16"), "{err}");
    }

    #[test]
    fn bad_camera_url_is_named_and_redacted() {
        let text = MINIMAL.replace("rtsp://user:pass@10.0.0.5:554/stream1", "http://user:secret@cam/x");
        let err = Config::parse(&text, "site.toml").unwrap_err().to_string();
        assert!(err.contains("camera[0].url") && err.contains("rtsp://"), "{err}");
        assert!(!err.contains("secret"), "password leaked: {err}");
    }

    #[test]
    fn a_ring_cap_too_small_to_hold_video_is_named() {
        let text = format!("[clip]\nmax_ring_bytes = 1000\n{MINIMAL}");
        let err = Config::parse(&text, "site.toml").unwrap_err().to_string();
        assert!(err.contains("clip.max_ring_bytes") && err.contains("1 MiB"), "{err}");
        let text = format!("[clip]\nmax_ring_bytes = 50000000\n{MINIMAL}");
        let c = Config::parse(&text, "site.toml").expect("valid config");
        assert_eq!(c.clip.ring_byte_cap(), 50_000_000);
    }

    #[test]
    fn duplicate_camera_id_is_rejected() {
        let text = format!("{MINIMAL}\n[[camera]]\nid = \"gate\"\nurl = \"rtsp://10.0.0.6/s\"\n");
        let err = Config::parse(&text, "site.toml").unwrap_err().to_string();
        assert!(err.contains("camera[1].id") && err.contains("twice"), "{err}");
    }

    #[test]
    fn camera_policy_overrides_the_site_rule_by_rule() {
        // The camera tables follow MINIMAL's [[camera]], so they belong to that camera.
        let text = format!(
            "[policy]\nthreshold = 0.7\n[policy.classes.person]\nmin_score = 0.4\n{MINIMAL}\n[camera.policy]\nmin_frames = 3\n\
             [camera.policy.classes.person]\nthreshold = 0.8\n[camera.policy.classes.vehicle]\nenabled = false\n\
             [[camera.policy.zone]]\nname = \"yard\"\npoints = [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]\n"
        );
        let c = Config::parse(&text, "site.toml").expect("valid");
        let p = c.camera_policy(&c.cameras[0]);
        assert_eq!(p.threshold, 0.7);
        assert_eq!(p.min_frames, 3);
        let person = &p.classes["person"];
        assert_eq!((person.min_score, person.threshold), (Some(0.4), Some(0.8)));
        assert_eq!(p.classes["vehicle"].enabled, Some(false));
        assert_eq!(p.classes["vehicle"].ignore_stationary, Some(true));
        assert_eq!(p.zones.len(), 1);
        assert!(c.policy.zones.is_empty());
    }

    #[test]
    fn a_cameras_night_rules_merge_over_the_sites() {
        let text = format!(
            "[policy.night]\nthreshold = 0.7\nmin_frames = 3\n{MINIMAL}\n[camera.policy.night]\nmin_frames = 4\n"
        );
        let c = Config::parse(&text, "site.toml").expect("valid");
        let camera = c.camera_policy(&c.cameras[0]);
        let night = camera.night_policy().expect("night rules");
        assert_eq!((night.threshold, night.min_frames), (0.7, 4));
        assert_eq!((camera.threshold, camera.min_frames), (0.55, 2), "day rules unchanged");
        let site = c.policy.night_policy().expect("site night");
        assert_eq!((site.threshold, site.min_frames), (0.7, 3));
    }

    #[test]
    fn policy_errors_name_the_key() {
        let cases = [
            (
                "[policy.classes.person]\nignore_stationary = true\n",
                "policy.classes.person.ignore_stationary",
            ),
            (
                "[[policy.zone]]\nname = \"a\"\npoints = [[0, 0], [1, 0]]\n",
                "policy.zone[0]",
            ),
            (
                "[[policy.zone]]\nname = \"a\"\npoints = [[0, 0], [2, 0], [1, 1]]\n",
                "policy.zone[0]",
            ),
            ("[policy]\nthreshold = 1.5\n", "policy.threshold"),
            ("[policy.night]\nthreshold = 1.5\n", "policy.night.threshold"),
            ("[policy.night.night]\nthreshold = 0.5\n", "policy.night.night"),
        ];
        for (snippet, key) in cases {
            let err = Config::parse(snippet, "site.toml").unwrap_err().to_string();
            assert!(err.contains(key), "{snippet}: {err}");
        }
    }

    #[test]
    fn mqtt_password_never_shows_in_debug() {
        let text = MINIMAL.replace("port = 1883", "port = 1883\nusername = \"u\"\npassword = \"hunter2\"");
        let c = Config::parse(&text, "site.toml").expect("valid");
        assert_eq!(c.mqtt.resolve_password().expect("password").as_deref(), Some("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn missing_password_env_names_the_variable() {
        let text = MINIMAL.replace("port = 1883", "port = 1883\npassword_env = \"AV_TEST_UNSET_PASSWORD\"");
        let c = Config::parse(&text, "site.toml").expect("valid");
        let err = c.mqtt.resolve_password().unwrap_err().to_string();
        assert!(
            err.contains("mqtt.password_env") && err.contains("AV_TEST_UNSET_PASSWORD"),
            "{err}"
        );
    }

    #[test]
    fn intakes_default_to_http_on_loopback_and_no_smtp() {
        let c = Config::parse(MINIMAL, "site.toml").expect("valid");
        assert_eq!(
            c.http.address().ok().flatten().map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(c.smtp.address().ok().flatten(), None);
        assert!(c.cameras[0].onvif.is_none() && c.cameras[0].email_match.is_none());
    }

    #[test]
    fn http_on_the_network_needs_a_token() {
        let open = format!("[http]\nlisten = \"0.0.0.0:8080\"\n{MINIMAL}");
        let err = Config::parse(&open, "site.toml").unwrap_err().to_string();
        assert!(err.contains("http.token_env") && err.contains("0.0.0.0:8080"), "{err}");
        let with_token = format!("[http]\nlisten = \"0.0.0.0:8080\"\ntoken_env = \"AV_TOKEN\"\n{MINIMAL}");
        assert!(Config::parse(&with_token, "site.toml").is_ok());
        let off = format!("[http]\nlisten = \"\"\n{MINIMAL}");
        assert_eq!(
            Config::parse(&off, "site.toml").expect("valid").http.address(),
            Ok(None)
        );
        let bad = format!("[http]\nlisten = \"localhost\"\n{MINIMAL}");
        let err = Config::parse(&bad, "site.toml").unwrap_err().to_string();
        assert!(err.contains("http.listen") && err.contains("address and port"), "{err}");
    }

    #[test]
    fn intake_errors_name_the_key() {
        let cases = [
            ("[smtp]\nlisten = \"127.0.0.1:25x\"\n", "smtp.listen"),
            ("[smtp]\npassword = \"p\"\n", "smtp.username"),
            ("[smtp]\nlisten = \"0.0.0.0:2525\"\n", "smtp.username"),
            ("[smtp]\nusername = \"nvr\"\n", "smtp.password"),
            ("[smtp]\nusername = \"nvr\"\npassword = \"\"\n", "smtp.password"),
            ("[smtp]\nmax_session_s = 0\n", "smtp.max_session_s"),
            ("[smtp]\nmax_session_s = 1e300\n", "smtp.max_session_s"),
            ("[http]\ntoken = \"a\"\ntoken_env = \"B\"\n", "http.token"),
        ];
        for (snippet, key) in cases {
            let err = Config::parse(&format!("{snippet}{MINIMAL}"), "site.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{snippet}: {err}");
        }
        let camera_cases = [
            ("[camera.onvif]\nurl = \"rtsp://10.0.0.5/\"\n", "camera[0].onvif.url"),
            (
                "[camera.onvif]\nurl = \"http://admin:pw@10.0.0.5/onvif/device_service\"\n",
                "camera[0].onvif.url",
            ),
            ("email_match = \" \"\n", "camera[0].email_match"),
        ];
        for (snippet, key) in camera_cases {
            let err = Config::parse(&format!("{MINIMAL}{snippet}"), "site.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{snippet}: {err}");
            assert!(!err.contains("pw@"), "password leaked: {err}");
        }
        let good = format!(
            "{MINIMAL}email_match = \"Camera 02\"\n[camera.onvif]\nurl = \"http://10.0.0.5/onvif/device_service\"\n\
             username = \"admin\"\npassword = \"secret\"\ntopics = [\"tns1:RuleEngine/FieldDetector/ObjectsInside\"]\n"
        );
        let c = Config::parse(&good, "site.toml").expect("valid");
        let onvif = c.cameras[0].onvif.as_ref().expect("onvif");
        assert_eq!(
            onvif
                .resolve_password("camera[0]")
                .ok()
                .flatten()
                .map(|s| s.expose().to_owned())
                .as_deref(),
            Some("secret")
        );
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn load_takes_relative_paths_from_the_config_folder_and_defaults_from_the_install() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("site.toml");
        let text = "[detector]\nmodel = \"models/custom.onnx\"\nlabels = \"/srv/labels.txt\"\n\
                    [mqtt]\nca_file = \"ca.pem\"\n[store]\npath = \"db/site.db\"\n";
        std::fs::write(&file, text).expect("write");
        let c = Config::load(&file).expect("valid");
        assert_eq!(c.detector.model, dir.path().join("models/custom.onnx"));
        assert_eq!(c.detector.labels.as_deref(), Some(Path::new("/srv/labels.txt")));
        assert_eq!(c.mqtt.ca_file.as_deref(), Some(dir.path().join("ca.pem").as_path()));
        assert_eq!(c.store.path, dir.path().join("db/site.db"));
        // Not in the file: where this binary's layout puts it, whatever the config's folder.
        assert_eq!(c.detector.onnxruntime, Install::current().onnxruntime());
        assert!(
            c.detector.onnxruntime.is_absolute(),
            "{}",
            c.detector.onnxruntime.display()
        );
        // parse() has no folder: the path stays as written.
        let parsed = Config::parse(text, "site.toml").expect("valid");
        assert_eq!(parsed.detector.model, Path::new("models/custom.onnx"));
    }

    #[test]
    fn check_files_names_the_key_and_the_missing_file() {
        let mut c = Config::offline_default();
        c.detector.model = "/nonexistent/model.onnx".into();
        let err = c.check_files("site.toml").unwrap_err().to_string();
        assert!(
            err.contains("site.toml") && err.contains("detector.model") && err.contains("/nonexistent/model.onnx"),
            "{err}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["model.onnx", "libonnxruntime.so"] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        c.detector.model = dir.path().join("model.onnx");
        c.detector.onnxruntime = dir.path().join("libonnxruntime.so");
        assert!(c.check_files("site.toml").is_ok());
        c.detector.labels = Some("/nonexistent/labels.txt".into());
        let err = c.check_files("site.toml").unwrap_err().to_string();
        assert!(err.contains("detector.labels"), "{err}");
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(redact_url("rtsp://u:p@h:554/s"), "rtsp://u:***@h:554/s");
        assert_eq!(redact_url("rtsp://h/s"), "rtsp://h/s");
        assert!(!redact_url("rtsp://u:p w@[bad/s").contains("p w"));
    }
}
