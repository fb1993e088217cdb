//! `[[camera]]`: each camera's stream and its own policy overrides; checking and redacting URLs.

use serde::Deserialize;

use super::secret::{Secret, resolve_secret};
use super::{CameraDc09, ConfigError, OnvifConfig, PolicyOverride};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub id: String,
    /// The main stream: evidence images and clips come from it. Without it, the camera's ONVIF
    /// media service (`[camera.onvif]`) is asked for its profiles and the largest one is used.
    #[serde(default)]
    pub url: Option<String>,
    /// The camera's substream (e.g. 640x360), analysed instead of the main stream when set.
    /// Without it and without `url`, the smallest H.264/H.265 ONVIF profile at least 320 px wide.
    #[serde(default)]
    pub detect_url: Option<String>,
    /// The RTSP user put into stream URLs found through ONVIF; empty: the ONVIF user.
    #[serde(default)]
    pub rtsp_username: String,
    /// The RTSP password for those URLs; prefer `rtsp_password_env`. Empty (and no env): the
    /// ONVIF password.
    #[serde(default)]
    pub rtsp_password: Secret,
    #[serde(default)]
    pub rtsp_password_env: String,
    /// RTSP lower transport: `auto` (default: TCP, falling back to UDP when the camera refuses TCP
    /// or sends nothing over it), `tcp` (survives lossy links) or `udp`.
    #[serde(default)]
    pub transport: RtspTransport,
    /// Seconds without video after which the stream is restarted.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout_s: f64,
    /// Seconds between checks of the camera's view on its newest keyframe while idle (a covered
    /// or blinded camera shows in its state); 0 turns the check off.
    #[serde(default = "default_view_check")]
    pub view_check_s: f64,
    /// Text found in the subject or body of this camera's alarm e-mails (e.g. "Camera 02").
    #[serde(default)]
    pub email_match: Option<String>,
    /// The camera's own ONVIF events raise alarms.
    #[serde(default)]
    pub onvif: Option<OnvifConfig>,
    /// The alarm panel zones that are this camera's (SIA DC-09).
    #[serde(default)]
    pub dc09: Option<CameraDc09>,
    /// This camera's changes to the site policy.
    #[serde(default)]
    pub policy: PolicyOverride,
}

impl CameraConfig {
    /// Whether the streams' addresses are to be found through ONVIF (no `url`, an ONVIF table).
    pub fn discovers_streams(&self) -> bool {
        self.url.is_none() && self.onvif.is_some()
    }

    /// The user and password that go into stream URLs found through ONVIF: `rtsp_username` and
    /// `rtsp_password(_env)` when given, else the ONVIF ones. `camera_key` names keys in errors.
    pub fn rtsp_credentials(&self, camera_key: &str) -> Result<Option<(String, Secret)>, ConfigError> {
        let own = resolve_secret(
            &self.rtsp_password,
            &self.rtsp_password_env,
            &format!("{camera_key}.rtsp_password_env"),
            "the camera's RTSP password",
        )?;
        if !self.rtsp_username.is_empty() || own.is_some() {
            return Ok(Some((self.rtsp_username.clone(), own.unwrap_or_default())));
        }
        let Some(onvif) = &self.onvif else { return Ok(None) };
        if onvif.username.is_empty() {
            return Ok(None);
        }
        let password = onvif.resolve_password(camera_key)?.unwrap_or_default();
        Ok(Some((onvif.username.clone(), password)))
    }
}

fn default_stall_timeout() -> f64 {
    10.0
}

fn default_view_check() -> f64 {
    60.0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    #[default]
    Auto,
    Tcp,
    Udp,
}

pub(super) fn check_rtsp_url(value: &str) -> Result<(), String> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "rtsp" | "rtsps" | "rtspt") && u.host_str().is_some_and(|h| !h.is_empty()) => {
            Ok(())
        }
        Ok(u) => Err(format!(
            "expected an rtsp:// URL with a host, got scheme {:?} in {}",
            u.scheme(),
            redact_url(value)
        )),
        Err(e) => Err(format!("expected an rtsp:// URL, got {} ({e})", redact_url(value))),
    }
}

/// Hides the password of a camera URL, for logs, errors and state messages.
pub fn redact_url(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        // Not a URL: hide whatever sits between "://" and "@", where credentials would be.
        Err(_) => match (value.find("://"), value.rfind('@')) {
            (Some(s), Some(at)) if at > s + 3 => format!("{}***{}", &value[..s + 3], &value[at..]),
            _ => value.to_owned(),
        },
    }
}
