//! `[[camera]]`: each camera's stream and its own policy overrides; checking and redacting URLs.

use serde::Deserialize;

use super::{CameraDc09, OnvifConfig, PolicyOverride};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub id: String,
    /// The main stream: evidence images and clips come from it.
    pub url: String,
    /// The camera's substream (e.g. 640x360), analysed instead of the main stream when set.
    #[serde(default)]
    pub detect_url: Option<String>,
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
