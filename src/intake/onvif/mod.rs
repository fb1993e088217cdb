//! ONVIF camera events: a pull-point subscription per camera with `[camera.onvif]`, whose motion
//! events become alarms.
//!
//! Per the ONVIF Core and Event Service specifications: GetSystemDateAndTime (the camera's clock),
//! GetCapabilities or GetServices (where the event service is), CreatePullPointSubscription,
//! long-polled PullMessages, Renew at half the granted time and Unsubscribe on shutdown, all SOAP
//! 1.2 with WS-Addressing headers. Every call but GetSystemDateAndTime carries a WS-Security
//! UsernameToken with a PasswordDigest whose `Created` time is on the camera's clock. Any failure
//! shows in the camera's event link state, and the subscription is made again with backoff.
//!
//! The credentials go only where the config says: redirects are not followed (a 3xx is an error
//! naming it), and the event service and subscription addresses the camera gives must be on the
//! host of `camera.onvif.url` (any port) unless `allow_other_hosts` is set.
//!
//! A false→true change of a motion topic (or of a topic in `config.topics`) raises one alarm.
//!
//! This module owns the public entry point, the operations called and the errors they end in.
//! The session is in [`watch`]; below it, grammar only: [`soap`] (envelopes, WS-Security, the
//! HTTP transport), [`messages`] (what the replies say), [`topics`] (which events count) and
//! [`xml`] (the document tree the replies are read into).

mod device;
#[doc(hidden)]
pub mod fuzz;
mod media;
mod messages;
mod soap;
mod topics;
mod watch;
mod xml;

use std::fmt;

pub use media::{
    MediaError, MediaReport, StreamProfile, choose_streams, find_streams, offers_motion, with_credentials,
};
pub use watch::watch;

/// Namespace URIs, as the ONVIF WSDLs and the standards they build on define them.
mod ns {
    pub const SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
    pub const WSA: &str = "http://www.w3.org/2005/08/addressing";
    pub const WSNT: &str = "http://docs.oasis-open.org/wsn/b-2";
    pub const WSTOP: &str = "http://docs.oasis-open.org/wsn/t-1";
    pub const TDS: &str = "http://www.onvif.org/ver10/device/wsdl";
    pub const TEV: &str = "http://www.onvif.org/ver10/events/wsdl";
    pub const TRT: &str = "http://www.onvif.org/ver10/media/wsdl";
    pub const TR2: &str = "http://www.onvif.org/ver20/media/wsdl";
    pub const TT: &str = "http://www.onvif.org/ver10/schema";
    pub const TOPICS: &str = "http://www.onvif.org/ver10/topics";
    pub const TER: &str = "http://www.onvif.org/ver10/error";
    pub const WSSE: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
    pub const WSU: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
    pub const PASSWORD_DIGEST: &str =
        "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest";
    pub const BASE64_BINARY: &str =
        "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary";
    pub const ANONYMOUS: &str = "http://www.w3.org/2005/08/addressing/anonymous";
}

/// Why a subscription could not be made or kept. Each message says what a technician can check.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum OnvifError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{op}: no reply from {url} within {secs} s")]
    TimedOut { op: Operation, url: String, secs: u64 },
    #[error("{op}: the connection to {url} failed: {reason}")]
    Broken { op: Operation, url: String, reason: String },
    #[error("{op}: the camera refused the credentials ({code}): check camera.onvif.username and password")]
    NotAuthorized { op: Operation, code: String },
    #[error("{op}: the camera answered with a SOAP fault ({code}): {reason}")]
    Fault {
        op: Operation,
        code: String,
        reason: String,
    },
    #[error("{op}: the camera answered HTTP {status}{hint}")]
    Http {
        op: Operation,
        status: String,
        hint: String,
    },
    #[error("{op}: the camera's reply is not valid XML: {detail}")]
    NotXml { op: Operation, detail: soap::EnvelopeError },
    #[error("{op}: the camera's reply is larger than {limit} bytes")]
    TooLarge { op: Operation, limit: usize },
    #[error("{op}: the camera's reply has no {what}")]
    Missing { op: Operation, what: String },
    #[error(
        "{op}: the camera answered HTTP {status}, a redirect to {location}; redirects are not followed, as they \
         would carry the credentials on: set camera.onvif.url to the camera's own address"
    )]
    Redirected {
        op: Operation,
        status: String,
        location: String,
    },
    #[error(
        "{op}: refused {what} {address}: it is not on the host of camera.onvif.url ({host}), and the credentials \
         would go there; set camera.onvif.allow_other_hosts = true if the camera's services really are there"
    )]
    OtherHost {
        op: Operation,
        what: &'static str,
        address: String,
        host: String,
    },
    #[error("no {service} service in GetCapabilities/GetServices ({detail})")]
    NoService { service: &'static str, detail: String },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

impl OnvifError {
    /// A failure that asking another way (GetServices after GetCapabilities) would only repeat.
    fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::TimedOut { .. }
                | Self::Broken { .. }
                | Self::NotAuthorized { .. }
                | Self::Redirected { .. }
                | Self::OtherHost { .. }
        )
    }

    fn missing(op: Operation, what: impl Into<String>) -> Self {
        Self::Missing { op, what: what.into() }
    }
}

/// The ONVIF operations this intake calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    GetSystemDateAndTime,
    GetCapabilities,
    GetServices,
    CreatePullPointSubscription,
    PullMessages,
    Renew,
    Unsubscribe,
    GetProfiles,
    GetStreamUri,
    GetEventProperties,
    /// Media2's GetProfiles and GetStreamUri.
    GetProfiles2,
    GetStreamUri2,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Self::GetSystemDateAndTime => "GetSystemDateAndTime",
            Self::GetCapabilities => "GetCapabilities",
            Self::GetServices => "GetServices",
            Self::CreatePullPointSubscription => "CreatePullPointSubscription",
            Self::PullMessages => "PullMessages",
            Self::Renew => "Renew",
            Self::Unsubscribe => "Unsubscribe",
            Self::GetProfiles => "GetProfiles",
            Self::GetStreamUri => "GetStreamUri",
            Self::GetEventProperties => "GetEventProperties",
            Self::GetProfiles2 => "GetProfiles (Media2)",
            Self::GetStreamUri2 => "GetStreamUri (Media2)",
        }
    }

    /// The WS-Addressing action, from the device, event and media service WSDLs.
    fn action(self) -> &'static str {
        match self {
            Self::GetSystemDateAndTime => "http://www.onvif.org/ver10/device/wsdl/GetSystemDateAndTime",
            Self::GetCapabilities => "http://www.onvif.org/ver10/device/wsdl/GetCapabilities",
            Self::GetServices => "http://www.onvif.org/ver10/device/wsdl/GetServices",
            Self::CreatePullPointSubscription => {
                "http://www.onvif.org/ver10/events/wsdl/EventPortType/CreatePullPointSubscriptionRequest"
            }
            Self::PullMessages => "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/PullMessagesRequest",
            Self::Renew => "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/RenewRequest",
            Self::Unsubscribe => "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/UnsubscribeRequest",
            Self::GetProfiles => "http://www.onvif.org/ver10/media/wsdl/GetProfiles",
            Self::GetStreamUri => "http://www.onvif.org/ver10/media/wsdl/GetStreamUri",
            Self::GetEventProperties => {
                "http://www.onvif.org/ver10/events/wsdl/EventPortType/GetEventPropertiesRequest"
            }
            Self::GetProfiles2 => "http://www.onvif.org/ver20/media/wsdl/GetProfiles",
            Self::GetStreamUri2 => "http://www.onvif.org/ver20/media/wsdl/GetStreamUri",
        }
    }

    /// GetSystemDateAndTime is answered without credentials (ONVIF Core, access classes): it is
    /// how a client learns the clock its credentials must follow.
    fn authenticated(self) -> bool {
        self != Self::GetSystemDateAndTime
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
