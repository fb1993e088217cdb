//! One camera's ONVIF device, as the event watcher and the stream finder both use it: its clock
//! (GetSystemDateAndTime), where its services are (GetCapabilities, else GetServices), the rule
//! for which hosts the credentials may go to, and the calls themselves.

use std::time::Duration;

use chrono::{TimeDelta, Utc};

use super::messages::{parse_capability_address, parse_service_address, parse_system_date_and_time};
use super::soap::{CameraClock, Credentials, Reply, Transport};
use super::xml::excerpt;
use super::{OnvifError, Operation, ns};
use crate::config::{OnvifConfig, Secret};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The services looked up on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Service {
    Events,
    Media,
    /// Media2 (ver20), listed by GetServices only.
    Media2,
}

impl Service {
    /// The GetCapabilities category, which is also its element in the reply's `tds:Capabilities`.
    pub(super) fn category(self) -> &'static str {
        match self {
            Self::Events => "Events",
            Self::Media | Self::Media2 => "Media",
        }
    }

    /// The service's namespace in GetServices.
    pub(super) fn namespace(self) -> &'static str {
        match self {
            Self::Events => ns::TEV,
            Self::Media => ns::TRT,
            Self::Media2 => ns::TR2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Events => "event",
            Self::Media => "media",
            Self::Media2 => "media2",
        }
    }
}

/// A camera's device service, with the credentials its calls carry.
pub(super) struct Device {
    pub(super) camera: String,
    pub(super) url: String,
    /// For calls with headers or timeouts of their own (a subscription's).
    pub(super) transport: Transport,
    pub(super) hosts: HostRule,
}

impl Device {
    pub(super) fn new(camera: String, config: &OnvifConfig, password: Option<Secret>) -> Result<Self, OnvifError> {
        let credentials = (!config.username.is_empty()).then(|| Credentials {
            username: config.username.clone(),
            password: password.unwrap_or_default(),
        });
        Ok(Self {
            camera,
            url: config.url.clone(),
            transport: Transport::new(credentials)?,
            hosts: HostRule::new(config),
        })
    }

    /// The camera's clock against ours, from GetSystemDateAndTime.
    pub(super) async fn clock(&self) -> Result<CameraClock, OnvifError> {
        let op = Operation::GetSystemDateAndTime;
        let sent = Utc::now();
        let reply = self
            .call(op, &self.url, &CameraClock::default(), "<tds:GetSystemDateAndTime/>")
            .await;
        let received = Utc::now();
        let camera_time = reply.and_then(|reply| parse_system_date_and_time(&reply.payload));
        match camera_time {
            Ok(camera_time) => {
                // Our time when the camera read its clock: the middle of the round trip. The camera
                // tells whole seconds, so on average its clock was half a second further on.
                let ours = sent + (received - sent) / 2;
                let clock = CameraClock {
                    offset: camera_time + TimeDelta::milliseconds(500) - ours,
                };
                if clock.offset.abs() > TimeDelta::seconds(5) {
                    tracing::info!(
                        camera = %self.camera,
                        offset_s = clock.offset.num_seconds(),
                        "camera clock differs from ours; credentials follow the camera's"
                    );
                }
                Ok(clock)
            }
            // A camera that wants credentials even for its clock, or does not tell its UTC time:
            // go on with ours, which is right whenever the camera is set by NTP.
            Err(e @ (OnvifError::Fault { .. } | OnvifError::NotAuthorized { .. } | OnvifError::Missing { .. })) => {
                tracing::warn!(camera = %self.camera, error = %e, "camera clock unknown; using ours");
                Ok(CameraClock::default())
            }
            Err(e) => Err(e),
        }
    }

    /// A service's address: GetCapabilities (its category), else GetServices.
    pub(super) async fn service(&self, service: Service, clock: &CameraClock) -> Result<String, OnvifError> {
        if service == Service::Media2 {
            return self.ask_services(service, clock).await;
        }
        let first = match self.ask_capabilities(service, clock).await {
            Ok(url) => return Ok(url),
            Err(e) if e.is_final() => return Err(e),
            Err(e) => e,
        };
        tracing::debug!(camera = %self.camera, service = service.name(), error = %first, "GetCapabilities did not give the service; trying GetServices");
        match self.ask_services(service, clock).await {
            Ok(url) => Ok(url),
            Err(e) if e.is_final() => Err(e),
            Err(second) => Err(OnvifError::NoService {
                service: service.name(),
                detail: format!("{first}; {second}"),
            }),
        }
    }

    async fn ask_capabilities(&self, service: Service, clock: &CameraClock) -> Result<String, OnvifError> {
        let op = Operation::GetCapabilities;
        let category = service.category();
        let body = format!("<tds:GetCapabilities><tds:Category>{category}</tds:Category></tds:GetCapabilities>");
        let reply = self.call(op, &self.url, clock, &body).await?;
        let url = parse_capability_address(&reply.payload, service)?;
        self.hosts.check(op, service_address_name(service, false), &url)?;
        Ok(url)
    }

    async fn ask_services(&self, service: Service, clock: &CameraClock) -> Result<String, OnvifError> {
        let op = Operation::GetServices;
        let body = "<tds:GetServices><tds:IncludeCapability>false</tds:IncludeCapability></tds:GetServices>";
        let reply = self.call(op, &self.url, clock, body).await?;
        let url = parse_service_address(&reply.payload, service)?;
        self.hosts.check(op, service_address_name(service, true), &url)?;
        Ok(url)
    }

    /// A call on a service of the device, with the usual timeout and no further headers.
    pub(super) async fn call(
        &self,
        op: Operation,
        url: &str,
        clock: &CameraClock,
        body: &str,
    ) -> Result<Reply, OnvifError> {
        self.transport.call(op, url, clock, "", body, CALL_TIMEOUT).await
    }
}

/// How an address a reply gave is named in errors.
fn service_address_name(service: Service, from_services: bool) -> &'static str {
    match (service, from_services) {
        (Service::Events, false) => "the event service address (tt:XAddr)",
        (Service::Events, true) => "the event service address (tds:XAddr)",
        (Service::Media, false) => "the media service address (tt:XAddr)",
        (Service::Media, true) => "the media service address (tds:XAddr)",
        (Service::Media2, _) => "the media2 service address (tds:XAddr)",
    }
}

/// Where the camera may send the client, with its credentials: the host of `camera.onvif.url` (on
/// any port, as cameras serve events and streams on ports of their own), unless
/// `allow_other_hosts`.
#[derive(Debug)]
pub(super) enum HostRule {
    Any,
    /// The configured host; None (a URL without one) matches nothing.
    Only(Option<url::Host<String>>),
}

impl HostRule {
    pub(super) fn new(config: &OnvifConfig) -> Self {
        if config.allow_other_hosts {
            return Self::Any;
        }
        Self::Only(host_of(&config.url))
    }

    pub(super) fn check(&self, op: Operation, what: &'static str, address: &str) -> Result<(), OnvifError> {
        let Self::Only(host) = self else { return Ok(()) };
        match (host, host_of(address)) {
            (Some(host), Some(given)) if *host == given => Ok(()),
            _ => Err(OnvifError::OtherHost {
                op,
                what,
                address: excerpt(&crate::config::redact_url(address)),
                host: host.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string),
            }),
        }
    }
}

/// The host of a URL, normalised (lower-case names, canonical addresses) so equal hosts compare
/// equal. For schemes the URL standard does not know (rtsp://) the host comes as an opaque name,
/// so an address there is read as one, and a name lower-cased.
fn host_of(url: &str) -> Option<url::Host<String>> {
    match url::Url::parse(url).ok()?.host()? {
        url::Host::Domain(name) => Some(match name.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => url::Host::Ipv4(ip),
            Ok(std::net::IpAddr::V6(ip)) => url::Host::Ipv6(ip),
            Err(_) => url::Host::Domain(name.to_ascii_lowercase()),
        }),
        host => Some(host.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_addresses_must_be_on_the_configured_host_unless_allowed() {
        let config = |url: &str, allow: bool| OnvifConfig {
            url: url.into(),
            username: String::new(),
            password: Secret::default(),
            password_env: String::new(),
            topics: Vec::new(),
            allow_other_hosts: allow,
        };
        let op = Operation::CreatePullPointSubscription;
        let rule = HostRule::new(&config("http://Camera.Local/onvif/device_service", false));
        for same in [
            "http://camera.local/onvif/Subscription?Idx=0",
            "http://CAMERA.local:8899/events",
            "https://camera.local/x",
            "rtsp://camera.local:554/Streaming/Channels/101",
            "rtsp://CAMERA.LOCAL/s",
        ] {
            assert!(rule.check(op, "the subscription address", same).is_ok(), "{same}");
        }
        for other in [
            "http://10.0.0.9/onvif/Subscription?Idx=0",
            "http://camera.local.evil.example/x",
            "http://evil.example/?camera.local",
            "http://camera.local@evil.example/x",
            "rtsp://evil.example/stream",
            "not a url",
        ] {
            let error = rule
                .check(op, "the subscription address", other)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.contains("the subscription address") && error.contains("allow_other_hosts"),
                "{other}: {error}"
            );
        }
        let ip = HostRule::new(&config("http://10.0.0.5/onvif/device_service", false));
        assert!(ip.check(op, "x", "http://10.0.0.5:8080/e").is_ok());
        assert!(ip.check(op, "x", "http://10.0.0.50/e").is_err());
        assert!(ip.check(op, "x", "rtsp://10.0.0.5:554/s").is_ok());
        assert!(ip.check(op, "x", "rtsp://10.0.0.50:554/s").is_err());
        let v6 = HostRule::new(&config("http://[fe80::1]/onvif/device_service", false));
        assert!(v6.check(op, "x", "rtsp://[FE80::1]:554/s").is_ok());
        let any = HostRule::new(&config("http://10.0.0.5/onvif/device_service", true));
        assert!(any.check(op, "x", "http://192.168.1.2/e").is_ok());
        let broken = HostRule::new(&config("not a url", false));
        assert!(broken.check(op, "x", "http://10.0.0.5/e").is_err());
    }
}
