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
//! A false→true change of a motion topic (or of a topic in `config.topics`) raises one alarm.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::{QName, ResolveResult};
use quick_xml::{NsReader, XmlVersion};
use reqwest::StatusCode;
use sha1::{Digest, Sha1};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::alarm::Alarm;
use super::{AlarmSink, Arrival, EventLink, EventLinkState};
use crate::config::{OnvifConfig, Secret};

/// Namespace URIs, as the ONVIF WSDLs and the standards they build on define them.
mod ns {
    pub const SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
    pub const WSA: &str = "http://www.w3.org/2005/08/addressing";
    pub const WSNT: &str = "http://docs.oasis-open.org/wsn/b-2";
    pub const TDS: &str = "http://www.onvif.org/ver10/device/wsdl";
    pub const TEV: &str = "http://www.onvif.org/ver10/events/wsdl";
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

/// Replies larger than this are refused: real ones are a few kilobytes.
const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// Asked for on subscribing and renewing; the camera may grant less, and is renewed at half of
/// what it grants.
const REQUESTED_TERMINATION: Duration = Duration::from_secs(60);
/// How long one PullMessages may wait for events at the camera.
const PULL_TIMEOUT: Duration = Duration::from_secs(10);
const MESSAGE_LIMIT: u32 = 100;
/// Added to the pull timeout for the HTTP request's own timeout, so that a camera answering at
/// the end of its wait is not cut off.
const PULL_GRACE: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Shutdown must not wait on a camera that does not answer.
const UNSUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Empty PullMessages replies closer together than this are spaced out (a long poll is longer).
const MIN_PULL_INTERVAL: Duration = Duration::from_secs(1);
/// Renewing more often than this would only load the camera.
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Deeper replies are refused: real ones nest about ten levels.
const MAX_XML_DEPTH: usize = 64;

/// Watches one camera's ONVIF events until `stop` is cancelled; motion raises alarms in `sink`.
pub async fn watch(
    camera: String,
    config: OnvifConfig,
    password: Option<Secret>,
    sink: Arc<dyn AlarmSink>,
    stop: CancellationToken,
) {
    let mut link = LinkReporter::new(camera.clone(), Arc::clone(&sink));
    link.set(
        EventLinkState::Connecting,
        Some(format!("connecting to {}", config.url)),
    );
    let watcher = match Watcher::new(camera, &config, password, sink) {
        Ok(watcher) => watcher,
        Err(e) => {
            link.set(EventLinkState::Failed, Some(e.to_string()));
            stop.cancelled().await;
            return;
        }
    };
    let mut backoff = Backoff::default();
    loop {
        let failure = match watcher.run_once(&mut link, &mut backoff, &stop).await {
            Ok(()) => return,
            Err(failure) => failure,
        };
        let delay = backoff.next_delay();
        tracing::warn!(
            camera = %watcher.camera,
            error = %failure,
            retry_in_s = delay.as_secs(),
            "ONVIF event subscription failed"
        );
        // While retrying the link stays failed with its reason; it shows subscribed again once
        // a subscription exists, so a camera that is down does not flap between states.
        link.set(EventLinkState::Failed, Some(failure.to_string()));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

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
    NotXml { op: Operation, detail: String },
    #[error("{op}: the camera's reply is larger than {limit} bytes")]
    TooLarge { op: Operation, limit: usize },
    #[error("{op}: the camera's reply has no {what}")]
    Missing { op: Operation, what: String },
    #[error("no event service in GetCapabilities/GetServices ({0})")]
    NoEventService(String),
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

impl OnvifError {
    /// A failure that asking another way (GetServices after GetCapabilities) would only repeat.
    fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::TimedOut { .. } | Self::Broken { .. } | Self::NotAuthorized { .. }
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
        }
    }

    /// The WS-Addressing action, from the device and event service WSDLs.
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

// ---------------------------------------------------------------------------------------------
// The subscription loop

/// The camera's ONVIF user. The password leaves only inside digests, and is never shown.
struct Credentials {
    username: String,
    password: Secret,
}

/// One camera's connection to its event service.
struct Watcher {
    camera: String,
    device_url: String,
    credentials: Option<Credentials>,
    rules: Vec<Rule>,
    client: reqwest::Client,
    sink: Arc<dyn AlarmSink>,
}

/// A pull point at the camera.
struct Subscription {
    address: String,
    /// WS-Addressing reference parameters the camera gave with the address, sent back as headers.
    reference_headers: String,
    renew_at: Instant,
    /// The camera's clock as measured when subscribing, for the credentials of every later call.
    clock: CameraClock,
}

impl Watcher {
    fn new(
        camera: String,
        config: &OnvifConfig,
        password: Option<Secret>,
        sink: Arc<dyn AlarmSink>,
    ) -> Result<Self, OnvifError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Cameras are on the site network; a proxy from the environment would not reach them.
            .no_proxy()
            .user_agent(concat!("alarm-verifier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OnvifError::Client(root_cause(&e)))?;
        let credentials = (!config.username.is_empty()).then(|| Credentials {
            username: config.username.clone(),
            password: password.unwrap_or_default(),
        });
        Ok(Self {
            camera,
            device_url: config.url.clone(),
            credentials,
            rules: Rule::all(&config.topics),
            client,
            sink,
        })
    }

    /// One subscription, from finding the event service until `stop` (Ok) or a failure.
    async fn run_once(
        &self,
        link: &mut LinkReporter,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Result<(), OnvifError> {
        let mut subscription = None;
        let outcome = tokio::select! {
            result = self.subscribe_and_pull(&mut subscription, link, backoff) => Some(result),
            () = stop.cancelled() => None,
        };
        // Let the pull point go on shutdown, and after a failure too: cameras have few of them,
        // and one left behind on each retry would use them up until they expire.
        if let Some(subscription) = subscription {
            self.unsubscribe(&subscription).await;
        }
        match outcome {
            None => Ok(()),
            Some(Err(failure)) => Err(failure),
            Some(Ok(never)) => match never {},
        }
    }

    async fn subscribe_and_pull(
        &self,
        slot: &mut Option<Subscription>,
        link: &mut LinkReporter,
        backoff: &mut Backoff,
    ) -> Result<Infallible, OnvifError> {
        // On every (re)subscribe: the camera's clock may have been set or drifted meanwhile.
        let clock = self.camera_clock().await?;
        let events_url = self.event_service(&clock).await?;
        let subscription = slot.insert(self.create_subscription(&events_url, &clock).await?);
        tracing::info!(
            camera = %self.camera,
            subscription = %subscription.address,
            clock_offset_s = clock.offset.num_seconds(),
            "ONVIF events subscribed"
        );
        link.set(EventLinkState::Subscribed, None);
        // A new pull point sends each property's current value as `Initialized` first.
        let mut events = EventState::default();
        loop {
            let now = Instant::now();
            let Some(timeout) = subscription.pull_timeout(now) else {
                self.renew(subscription).await?;
                continue;
            };
            let pulled = self.pull(subscription, timeout).await?;
            // The whole chain works: the next failure starts its backoff from the beginning.
            backoff.reset();
            if pulled.is_empty() {
                // Some cameras answer at once whatever the Timeout: do not poll them in a busy loop.
                tokio::time::sleep_until(now + MIN_PULL_INTERVAL).await;
            }
            for notification in pulled {
                self.handle(notification, &mut events);
            }
        }
    }

    /// The camera's clock against ours, from GetSystemDateAndTime.
    async fn camera_clock(&self) -> Result<CameraClock, OnvifError> {
        let op = Operation::GetSystemDateAndTime;
        let sent = Utc::now();
        let reply = self
            .call(
                op,
                &self.device_url,
                &CameraClock::default(),
                "",
                "<tds:GetSystemDateAndTime/>",
            )
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

    /// The event service's address: GetCapabilities (Events), else GetServices.
    async fn event_service(&self, clock: &CameraClock) -> Result<String, OnvifError> {
        let first = match self.events_from_capabilities(clock).await {
            Ok(url) => return Ok(url),
            Err(e) if e.is_final() => return Err(e),
            Err(e) => e,
        };
        tracing::debug!(camera = %self.camera, error = %first, "GetCapabilities gave no event service; trying GetServices");
        match self.events_from_services(clock).await {
            Ok(url) => Ok(url),
            Err(e) if e.is_final() => Err(e),
            Err(second) => Err(OnvifError::NoEventService(format!("{first}; {second}"))),
        }
    }

    async fn events_from_capabilities(&self, clock: &CameraClock) -> Result<String, OnvifError> {
        let op = Operation::GetCapabilities;
        let body = "<tds:GetCapabilities><tds:Category>Events</tds:Category></tds:GetCapabilities>";
        let reply = self.call(op, &self.device_url, clock, "", body).await?;
        parse_capabilities(&reply.payload)
    }

    async fn events_from_services(&self, clock: &CameraClock) -> Result<String, OnvifError> {
        let op = Operation::GetServices;
        let body = "<tds:GetServices><tds:IncludeCapability>false</tds:IncludeCapability></tds:GetServices>";
        let reply = self.call(op, &self.device_url, clock, "", body).await?;
        parse_services(&reply.payload)
    }

    async fn create_subscription(&self, events_url: &str, clock: &CameraClock) -> Result<Subscription, OnvifError> {
        let op = Operation::CreatePullPointSubscription;
        let body = format!(
            "<tev:CreatePullPointSubscription><tev:InitialTerminationTime>{}</tev:InitialTerminationTime></tev:CreatePullPointSubscription>",
            xml_duration(REQUESTED_TERMINATION)
        );
        let reply = self.call(op, events_url, clock, "", &body).await?;
        let received = Instant::now();
        let created = parse_subscription(&reply.payload)?;
        Ok(Subscription {
            address: created.address,
            reference_headers: created.reference_headers,
            renew_at: received + renew_interval(remaining(created.current, created.termination, clock)),
            clock: *clock,
        })
    }

    async fn renew(&self, subscription: &mut Subscription) -> Result<(), OnvifError> {
        let op = Operation::Renew;
        let body = format!(
            "<wsnt:Renew><wsnt:TerminationTime>{}</wsnt:TerminationTime></wsnt:Renew>",
            xml_duration(REQUESTED_TERMINATION)
        );
        let reply = self.call_subscription(op, subscription, &body, CALL_TIMEOUT).await?;
        let received = Instant::now();
        let renewed = parse_renew(&reply.payload)?;
        let remaining = remaining(renewed.current, Some(renewed.termination), &subscription.clock);
        subscription.renew_at = received + renew_interval(remaining);
        tracing::debug!(camera = %self.camera, granted_s = remaining.as_secs(), "ONVIF subscription renewed");
        Ok(())
    }

    async fn pull(&self, subscription: &mut Subscription, timeout: Duration) -> Result<Vec<Notification>, OnvifError> {
        let op = Operation::PullMessages;
        let body = format!(
            "<tev:PullMessages><tev:Timeout>{}</tev:Timeout><tev:MessageLimit>{MESSAGE_LIMIT}</tev:MessageLimit></tev:PullMessages>",
            xml_duration(timeout)
        );
        let reply = self
            .call_subscription(op, subscription, &body, timeout + PULL_GRACE)
            .await?;
        let received = Instant::now();
        let pulled = parse_pull(&reply.payload, &reply.text)?;
        // A camera may move the termination time on its own (earlier, or later on each pull):
        // renew no later than half of what is left.
        if let Some(termination) = pulled.termination {
            let remaining = remaining(pulled.current, Some(termination), &subscription.clock);
            subscription.renew_at = subscription.renew_at.min(received + remaining / 2);
        }
        for skipped in &pulled.skipped {
            tracing::warn!(camera = %self.camera, error = %skipped, "ONVIF notification skipped");
        }
        Ok(pulled.notifications)
    }

    /// Best effort, bounded: the camera may already be gone.
    async fn unsubscribe(&self, subscription: &Subscription) {
        let op = Operation::Unsubscribe;
        let call = self.call_subscription(op, subscription, "<wsnt:Unsubscribe/>", UNSUBSCRIBE_TIMEOUT);
        match tokio::time::timeout(UNSUBSCRIBE_TIMEOUT, call).await {
            Ok(Ok(_)) => tracing::info!(camera = %self.camera, "ONVIF events unsubscribed"),
            Ok(Err(e)) => tracing::debug!(camera = %self.camera, error = %e, "ONVIF unsubscribe failed"),
            Err(_) => tracing::debug!(camera = %self.camera, "ONVIF unsubscribe timed out"),
        }
    }

    /// Turns one notification into an alarm when it is a false→true change of a watched topic.
    fn handle(&self, notification: Notification, events: &mut EventState) {
        let Some(rule) = self.rules.iter().find(|r| r.topic.matches(&notification.topic)) else {
            tracing::trace!(camera = %self.camera, topic = %notification.topic, "ONVIF event not watched");
            return;
        };
        let topic = notification.topic.to_string();
        let Some(value) = rule.value(&notification) else {
            tracing::debug!(camera = %self.camera, topic = %topic, "ONVIF event without a boolean data item");
            return;
        };
        let key = notification.state_key(&topic);
        if events.observe(key, notification.operation, value) {
            self.raise(&topic, notification);
        } else {
            tracing::debug!(
                camera = %self.camera,
                topic = %topic,
                operation = ?notification.operation,
                value,
                "ONVIF event state"
            );
        }
    }

    fn raise(&self, topic: &str, notification: Notification) {
        // The receive time, not the camera's UtcTime: the video buffer runs on this box's clock.
        let alarm = Alarm::device_event(&self.camera, Utc::now(), format!("onvif:{topic}"));
        let camera_time = notification.utc_time.unwrap_or_default();
        let arrival = Arrival {
            alarm,
            origin: format!("onvif {} {topic}", self.camera),
            raw: notification.raw,
            snapshot: None,
        };
        match self.sink.accept(arrival) {
            Ok(accepted) => tracing::info!(
                camera = %self.camera,
                topic = %topic,
                camera_time = %camera_time,
                alarm_id = %accepted.alarm_id,
                joined = accepted.joined,
                "ONVIF event raised an alarm"
            ),
            Err(refused) => tracing::warn!(
                camera = %self.camera,
                topic = %topic,
                camera_time = %camera_time,
                error = %refused,
                "ONVIF event alarm refused"
            ),
        }
    }

    /// A call on the subscription's own address, with its reference parameters.
    async fn call_subscription(
        &self,
        op: Operation,
        subscription: &Subscription,
        body: &str,
        timeout: Duration,
    ) -> Result<Reply, OnvifError> {
        let (address, clock) = (&subscription.address, &subscription.clock);
        self.call_with(op, address, clock, &subscription.reference_headers, body, timeout)
            .await
    }

    async fn call(
        &self,
        op: Operation,
        url: &str,
        clock: &CameraClock,
        headers: &str,
        body: &str,
    ) -> Result<Reply, OnvifError> {
        self.call_with(op, url, clock, headers, body, CALL_TIMEOUT).await
    }

    /// One SOAP request and its reply; a SOAP fault, an HTTP error or a reply that is not a SOAP
    /// envelope is an error.
    async fn call_with(
        &self,
        op: Operation,
        url: &str,
        clock: &CameraClock,
        headers: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<Reply, OnvifError> {
        let security = match (&self.credentials, op.authenticated()) {
            (Some(credentials), true) => username_token(credentials, clock.now(), new_nonce()),
            _ => String::new(),
        };
        let request = envelope(op, url, &security, headers, body);
        let response = self
            .client
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("application/soap+xml; charset=utf-8; action=\"{}\"", op.action()),
            )
            .body(request)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| transport_error(op, url, timeout, &e))?;
        let status = response.status();
        let bytes = read_capped(op, url, timeout, response).await?;
        interpret_reply(op, status, bytes)
    }
}

/// The time left on a subscription, counted on the camera's clock (its CurrentTime when given).
fn remaining(current: Option<DateTime<Utc>>, termination: Option<DateTime<Utc>>, clock: &CameraClock) -> Duration {
    match termination {
        Some(termination) => (termination - current.unwrap_or_else(|| clock.now()))
            .to_std()
            .unwrap_or(Duration::ZERO),
        // No termination time: the camera granted what was asked.
        None => REQUESTED_TERMINATION,
    }
}

/// Renew at half the granted time: the other half leaves room for a slow or failed attempt.
fn renew_interval(granted: Duration) -> Duration {
    (granted / 2).max(MIN_RENEW_INTERVAL)
}

impl Subscription {
    /// How long the next PullMessages may wait, ending before the renewal is due; None when the
    /// renewal is due now.
    fn pull_timeout(&self, now: Instant) -> Option<Duration> {
        let until_renew = self.renew_at.saturating_duration_since(now);
        // Whole seconds: the timeout goes out as an xs:duration.
        let timeout = Duration::from_secs(until_renew.min(PULL_TIMEOUT).as_secs());
        (timeout >= Duration::from_secs(1)).then_some(timeout)
    }
}

/// Reports the link state to the sink when it changes, so that retries do not repeat it.
struct LinkReporter {
    camera: String,
    sink: Arc<dyn AlarmSink>,
    last: Option<(EventLinkState, Option<String>)>,
}

impl LinkReporter {
    fn new(camera: String, sink: Arc<dyn AlarmSink>) -> Self {
        Self {
            camera,
            sink,
            last: None,
        }
    }

    fn set(&mut self, state: EventLinkState, error: Option<String>) {
        let next = (state, error);
        if self.last.as_ref() == Some(&next) {
            return;
        }
        self.sink
            .event_link(&self.camera, EventLink::now(next.0, next.1.clone()));
        self.last = Some(next);
    }
}

/// Exponential backoff between attempts: 1 s doubling to 30 s.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_FIRST }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

// ---------------------------------------------------------------------------------------------
// SOAP requests

/// The camera's clock against ours: WS-Security `Created` times must be on the camera's clock,
/// which cameras check against a small window.
#[derive(Debug, Clone, Copy, Default)]
struct CameraClock {
    offset: TimeDelta,
}

impl CameraClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

fn envelope(op: Operation, to: &str, security: &str, headers: &str, body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<s:Envelope xmlns:s="{soap}" xmlns:wsa="{wsa}" xmlns:tds="{tds}" xmlns:tev="{tev}" xmlns:wsnt="{wsnt}">"#,
            r#"<s:Header><wsa:Action s:mustUnderstand="1">{action}</wsa:Action>"#,
            r#"<wsa:MessageID>urn:uuid:{id}</wsa:MessageID>"#,
            r#"<wsa:ReplyTo><wsa:Address>{anonymous}</wsa:Address></wsa:ReplyTo>"#,
            r#"<wsa:To s:mustUnderstand="1">{to}</wsa:To>{security}{headers}</s:Header>"#,
            r#"<s:Body>{body}</s:Body></s:Envelope>"#
        ),
        soap = ns::SOAP,
        wsa = ns::WSA,
        tds = ns::TDS,
        tev = ns::TEV,
        wsnt = ns::WSNT,
        action = op.action(),
        id = uuid::Uuid::new_v4(),
        anonymous = ns::ANONYMOUS,
        to = quick_xml::escape::escape(to),
        security = security,
        headers = headers,
        body = body,
    )
}

/// The WS-Security header with a UsernameToken (PasswordDigest), created at `created` on the
/// camera's clock.
fn username_token(credentials: &Credentials, created: DateTime<Utc>, nonce: [u8; 16]) -> String {
    let created = format_created(created);
    let digest = password_digest(&nonce, &created, credentials.password.expose());
    format!(
        concat!(
            r#"<wsse:Security s:mustUnderstand="1" xmlns:wsse="{wsse}" xmlns:wsu="{wsu}"><wsse:UsernameToken>"#,
            r#"<wsse:Username>{username}</wsse:Username>"#,
            r#"<wsse:Password Type="{digest_type}">{digest}</wsse:Password>"#,
            r#"<wsse:Nonce EncodingType="{base64}">{nonce}</wsse:Nonce>"#,
            r#"<wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>"#
        ),
        wsse = ns::WSSE,
        wsu = ns::WSU,
        username = quick_xml::escape::escape(credentials.username.as_str()),
        digest_type = ns::PASSWORD_DIGEST,
        digest = digest,
        base64 = ns::BASE64_BINARY,
        nonce = BASE64.encode(nonce),
        created = created,
    )
}

/// PasswordDigest = Base64(SHA-1(nonce + created + password)), WS-Security UsernameToken Profile.
fn password_digest(nonce: &[u8], created: &str, password: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(nonce);
    sha1.update(created.as_bytes());
    sha1.update(password.as_bytes());
    BASE64.encode(sha1.finalize())
}

fn format_created(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// 16 bytes from the system's secure random source (via UUID v4), fresh for every request.
fn new_nonce() -> [u8; 16] {
    uuid::Uuid::new_v4().into_bytes()
}

/// `PT10S`: an xs:duration in whole seconds.
fn xml_duration(duration: Duration) -> String {
    format!("PT{}S", duration.as_secs())
}

fn transport_error(op: Operation, url: &str, timeout: Duration, e: &reqwest::Error) -> OnvifError {
    if e.is_timeout() {
        OnvifError::TimedOut {
            op,
            url: url.to_owned(),
            secs: timeout.as_secs(),
        }
    } else if e.is_connect() {
        OnvifError::Unreachable {
            url: url.to_owned(),
            reason: root_cause(e),
        }
    } else {
        OnvifError::Broken {
            op,
            url: url.to_owned(),
            reason: root_cause(e),
        }
    }
}

/// The innermost cause of an error, in words: "connection refused" rather than reqwest's
/// "error sending request for url (...)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = e;
    let mut current = Some(e);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return describe_io(io);
        }
        innermost = error;
        current = error.source();
    }
    innermost.to_string()
}

fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        kind @ (ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | HostUnreachable
        | NetworkUnreachable | AddrNotAvailable | NotConnected | BrokenPipe | UnexpectedEof) => kind.to_string(),
        _ => e.to_string(),
    }
}

/// The body, refused once it passes [`MAX_REPLY_BYTES`].
async fn read_capped(
    op: Operation,
    url: &str,
    timeout: Duration,
    mut response: reqwest::Response,
) -> Result<Vec<u8>, OnvifError> {
    let too_large = OnvifError::TooLarge {
        op,
        limit: MAX_REPLY_BYTES,
    };
    if response
        .content_length()
        .is_some_and(|length| length > MAX_REPLY_BYTES as u64)
    {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(op, url, timeout, &e))?
    {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A SOAP reply: its text, and the element in its Body.
struct Reply {
    text: String,
    payload: Element,
}

/// Reads a reply: the Body's element, or the error the reply stands for. Faults come with HTTP
/// 400 or 500 (and sometimes 200), so the body is read before the status.
fn interpret_reply(op: Operation, status: StatusCode, bytes: Vec<u8>) -> Result<Reply, OnvifError> {
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) if !status.is_success() => return Err(http_error(op, status, "")),
        Err(e) => {
            return Err(OnvifError::NotXml {
                op,
                detail: format!("not UTF-8 text ({e})"),
            });
        }
    };
    match parse_envelope(&text) {
        Ok(Envelope::Fault(fault)) => Err(fault.into_error(op)),
        Ok(Envelope::Body(Some(payload))) if status.is_success() => Ok(Reply { text, payload }),
        Ok(Envelope::Body(None)) if status.is_success() => Err(OnvifError::missing(op, "element in its SOAP Body")),
        _ if !status.is_success() => Err(http_error(op, status, &text)),
        Ok(Envelope::Body(_)) => Err(OnvifError::missing(op, "element in its SOAP Body")),
        Err(detail) => Err(OnvifError::NotXml { op, detail }),
    }
}

fn http_error(op: Operation, status: StatusCode, body: &str) -> OnvifError {
    let hint = if status == StatusCode::UNAUTHORIZED {
        ": the camera refused the request's credentials; check camera.onvif.username and password, and that \
         the camera accepts WS-Security (UsernameToken) authentication"
            .to_owned()
    } else {
        let excerpt = excerpt(body);
        if excerpt.is_empty() {
            String::new()
        } else {
            format!(": {excerpt}")
        }
    };
    OnvifError::Http {
        op,
        status: status.to_string(),
        hint,
    }
}

/// The start of a reply's text on one line, for error messages.
fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 120;
    let words: Vec<&str> = text.split_whitespace().collect();
    let line: String = words.join(" ").chars().filter(|c| !c.is_control()).collect();
    if line.chars().count() > MAX_CHARS {
        format!("{}...", line.chars().take(MAX_CHARS).collect::<String>())
    } else {
        line
    }
}

// ---------------------------------------------------------------------------------------------
// SOAP replies

enum Envelope {
    /// The first element in the Body, if any.
    Body(Option<Element>),
    Fault(Fault),
}

/// A SOAP 1.2 fault: `env:Code` (with its `env:Subcode`s) and `env:Reason`.
#[derive(Debug, Clone, PartialEq)]
struct Fault {
    /// The code and subcodes, outermost first, e.g. `env:Sender`, `ter:NotAuthorized`.
    codes: Vec<QualifiedValue>,
    reason: String,
}

/// A QName value from a reply, its prefix resolved.
#[derive(Debug, Clone, PartialEq)]
struct QualifiedValue {
    ns: Option<String>,
    local: String,
    text: String,
}

impl Fault {
    fn into_error(self, op: Operation) -> OnvifError {
        let code = self.code_text();
        if self.is_not_authorized() {
            OnvifError::NotAuthorized { op, code }
        } else {
            let reason = if self.reason.is_empty() {
                "no reason given".to_owned()
            } else {
                excerpt(&self.reason)
            };
            OnvifError::Fault { op, code, reason }
        }
    }

    /// `ter:NotAuthorized` (ONVIF), or WS-Security's own failure codes that some cameras send.
    fn is_not_authorized(&self) -> bool {
        self.codes.iter().any(|code| {
            matches!(
                code.local.as_str(),
                "NotAuthorized" | "FailedAuthentication" | "InvalidSecurityToken"
            )
        })
    }

    /// The most specific code, with the prefixes ONVIF documents use: `ter:NotAuthorized`.
    fn code_text(&self) -> String {
        let shown: Vec<String> = self.codes.iter().map(QualifiedValue::shown).collect();
        shown.join("/")
    }
}

impl QualifiedValue {
    fn shown(&self) -> String {
        match self.ns.as_deref() {
            Some(ns::SOAP) => format!("env:{}", self.local),
            Some(ns::TER) => format!("ter:{}", self.local),
            _ => self.text.clone(),
        }
    }

    /// `prefix:local` resolved with the prefixes in scope at `element`.
    fn of(element: &Element) -> Self {
        let text = element.text().to_owned();
        let (prefix, local) = match text.split_once(':') {
            Some((prefix, local)) => (Some(prefix), local.to_owned()),
            None => (None, text.clone()),
        };
        Self {
            ns: prefix.and_then(|p| element.namespace_of(p)).map(str::to_owned),
            local,
            text,
        }
    }
}

fn parse_envelope(text: &str) -> Result<Envelope, String> {
    let root = parse_xml(text)?;
    if !root.is(ns::SOAP, "Envelope") {
        let what = if root.name == "Envelope" {
            format!("a SOAP envelope of namespace {:?}, not SOAP 1.2", root.ns)
        } else {
            format!("<{}>", root.name)
        };
        return Err(format!("expected a SOAP 1.2 envelope, got {what}"));
    }
    let mut root = root;
    let Some(body) = root.take_child(ns::SOAP, "Body") else {
        return Err("the SOAP envelope has no Body".into());
    };
    if let Some(fault) = body.child(ns::SOAP, "Fault") {
        return Ok(Envelope::Fault(parse_fault(fault)));
    }
    Ok(Envelope::Body(body.children.into_iter().next()))
}

fn parse_fault(fault: &Element) -> Fault {
    let mut codes = Vec::new();
    let mut level = fault.child(ns::SOAP, "Code");
    while let Some(code) = level {
        if let Some(value) = code.child(ns::SOAP, "Value") {
            codes.push(QualifiedValue::of(value));
        }
        level = code.child(ns::SOAP, "Subcode");
    }
    let reason = fault
        .child(ns::SOAP, "Reason")
        .map(|reason| {
            let texts: Vec<&str> = reason.children_named(ns::SOAP, "Text").map(Element::text).collect();
            texts.join("; ")
        })
        .unwrap_or_default();
    Fault { codes, reason }
}

fn parse_system_date_and_time(payload: &Element) -> Result<DateTime<Utc>, OnvifError> {
    let op = Operation::GetSystemDateAndTime;
    let utc = payload
        .path(&[(ns::TDS, "SystemDateAndTime"), (ns::TT, "UTCDateTime")])
        .ok_or_else(|| OnvifError::missing(op, "tt:UTCDateTime"))?;
    let number = |path: &[(&str, &str)], what: &str| -> Result<u32, OnvifError> {
        utc.path(path)
            .and_then(|e| e.text().parse::<u32>().ok())
            .ok_or_else(|| OnvifError::missing(op, format!("number in tt:UTCDateTime/{what}")))
    };
    let date = NaiveDate::from_ymd_opt(
        number(&[(ns::TT, "Date"), (ns::TT, "Year")], "Date/Year")?
            .try_into()
            .unwrap_or(i32::MAX),
        number(&[(ns::TT, "Date"), (ns::TT, "Month")], "Date/Month")?,
        number(&[(ns::TT, "Date"), (ns::TT, "Day")], "Date/Day")?,
    );
    let time = date.and_then(|d| {
        d.and_hms_opt(
            number(&[(ns::TT, "Time"), (ns::TT, "Hour")], "Time/Hour").ok()?,
            number(&[(ns::TT, "Time"), (ns::TT, "Minute")], "Time/Minute").ok()?,
            number(&[(ns::TT, "Time"), (ns::TT, "Second")], "Time/Second").ok()?,
        )
    });
    time.map(|t| t.and_utc())
        .ok_or_else(|| OnvifError::missing(op, "valid date and time in tt:UTCDateTime"))
}

fn parse_capabilities(payload: &Element) -> Result<String, OnvifError> {
    let op = Operation::GetCapabilities;
    let xaddr = payload
        .path(&[(ns::TDS, "Capabilities"), (ns::TT, "Events"), (ns::TT, "XAddr")])
        .ok_or_else(|| OnvifError::missing(op, "tt:Events/tt:XAddr"))?;
    http_url(op, xaddr.text(), "tt:Events/tt:XAddr")
}

fn parse_services(payload: &Element) -> Result<String, OnvifError> {
    let op = Operation::GetServices;
    let events = payload
        .children_named(ns::TDS, "Service")
        .find(|s| s.child(ns::TDS, "Namespace").is_some_and(|n| n.text() == ns::TEV))
        .ok_or_else(|| OnvifError::missing(op, format!("service of namespace {}", ns::TEV)))?;
    let xaddr = events
        .child(ns::TDS, "XAddr")
        .ok_or_else(|| OnvifError::missing(op, "tds:XAddr of the event service"))?;
    http_url(op, xaddr.text(), "tds:XAddr of the event service")
}

/// An address the camera gave, checked to be an http(s) URL.
fn http_url(op: Operation, text: &str, what: &str) -> Result<String, OnvifError> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(text.to_owned()),
        _ => Err(OnvifError::missing(
            op,
            format!("http URL in {what} (got {:?})", excerpt(text)),
        )),
    }
}

struct CreatedSubscription {
    address: String,
    reference_headers: String,
    current: Option<DateTime<Utc>>,
    termination: Option<DateTime<Utc>>,
}

fn parse_subscription(payload: &Element) -> Result<CreatedSubscription, OnvifError> {
    let op = Operation::CreatePullPointSubscription;
    if !payload.is(ns::TEV, "CreatePullPointSubscriptionResponse") {
        return Err(OnvifError::missing(op, "tev:CreatePullPointSubscriptionResponse"));
    }
    let reference = payload
        .child(ns::TEV, "SubscriptionReference")
        .ok_or_else(|| OnvifError::missing(op, "tev:SubscriptionReference"))?;
    let address = reference
        .child(ns::WSA, "Address")
        .ok_or_else(|| OnvifError::missing(op, "wsa:Address in tev:SubscriptionReference"))?;
    let address = http_url(op, address.text(), "wsa:Address of the subscription")?;
    let reference_headers = reference
        .child(ns::WSA, "ReferenceParameters")
        .map(|parameters| parameters.children.iter().map(reference_header).collect())
        .unwrap_or_default();
    Ok(CreatedSubscription {
        address,
        reference_headers,
        current: time_of(payload.child(ns::WSNT, "CurrentTime")),
        termination: time_of(payload.child(ns::WSNT, "TerminationTime")),
    })
}

struct Renewed {
    current: Option<DateTime<Utc>>,
    termination: DateTime<Utc>,
}

fn parse_renew(payload: &Element) -> Result<Renewed, OnvifError> {
    let op = Operation::Renew;
    if !payload.is(ns::WSNT, "RenewResponse") {
        return Err(OnvifError::missing(op, "wsnt:RenewResponse"));
    }
    let termination = time_of(payload.child(ns::WSNT, "TerminationTime"))
        .ok_or_else(|| OnvifError::missing(op, "valid wsnt:TerminationTime"))?;
    Ok(Renewed {
        current: time_of(payload.child(ns::WSNT, "CurrentTime")),
        termination,
    })
}

struct Pulled {
    current: Option<DateTime<Utc>>,
    termination: Option<DateTime<Utc>>,
    notifications: Vec<Notification>,
    /// Why some notifications could not be read; the others are used.
    skipped: Vec<String>,
}

/// A PullMessagesResponse; `text` is the whole reply, whose spans are each notification's raw XML.
fn parse_pull(payload: &Element, text: &str) -> Result<Pulled, OnvifError> {
    let op = Operation::PullMessages;
    if !payload.is(ns::TEV, "PullMessagesResponse") {
        return Err(OnvifError::missing(op, "tev:PullMessagesResponse"));
    }
    let mut notifications = Vec::new();
    let mut skipped = Vec::new();
    for message in payload.children_named(ns::WSNT, "NotificationMessage") {
        match parse_notification(message, text) {
            Ok(notification) => notifications.push(notification),
            Err(e) => skipped.push(e),
        }
    }
    Ok(Pulled {
        current: time_of(payload.child(ns::TEV, "CurrentTime")),
        termination: time_of(payload.child(ns::TEV, "TerminationTime")),
        notifications,
        skipped,
    })
}

/// An xs:dateTime; without a zone it is taken as UTC, as cameras that omit it mean.
fn parse_xml_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

fn time_of(element: Option<&Element>) -> Option<DateTime<Utc>> {
    element.and_then(|e| parse_xml_time(e.text()))
}

/// A reference parameter as a SOAP header block (WS-Addressing SOAP Binding, 2.3).
fn reference_header(parameter: &Element) -> String {
    let mut xml = String::new();
    write_element(parameter, &mut xml, true);
    xml
}

/// Writes `element` with a namespace declaration of its own, so that it stands anywhere.
fn write_element(element: &Element, xml: &mut String, is_reference_parameter: bool) {
    use quick_xml::escape::escape;
    let name = if element.ns.is_empty() {
        element.name.clone()
    } else {
        format!("rp:{}", element.name)
    };
    xml.push('<');
    xml.push_str(&name);
    if !element.ns.is_empty() {
        xml.push_str(&format!(" xmlns:rp=\"{}\"", escape(element.ns.as_str())));
    }
    if is_reference_parameter {
        xml.push_str(&format!(" xmlns:wsa=\"{}\" wsa:IsReferenceParameter=\"true\"", ns::WSA));
    }
    for attribute in element.attributes.iter().filter(|a| a.ns.is_empty()) {
        xml.push_str(&format!(" {}=\"{}\"", attribute.name, escape(attribute.value.as_str())));
    }
    xml.push('>');
    xml.push_str(&escape(element.text.as_str()));
    for child in &element.children {
        write_element(child, xml, false);
    }
    xml.push_str(&format!("</{name}>"));
}

// ---------------------------------------------------------------------------------------------
// Events

/// `PropertyOperation` of a `tt:Message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PropertyOperation {
    /// The property's value when the subscription starts: no change, no alarm.
    Initialized,
    /// A change; also messages without a PropertyOperation (plain events).
    Changed,
    /// The property is gone.
    Deleted,
}

/// A `wsnt:NotificationMessage`.
#[derive(Debug, Clone)]
struct Notification {
    topic: Topic,
    operation: PropertyOperation,
    /// The camera's own time of the event, for the log.
    utc_time: Option<String>,
    /// `tt:Source/tt:SimpleItem`s: which video source, rule, input.
    source: Vec<(String, String)>,
    /// `tt:Data/tt:SimpleItem`s.
    data: Vec<(String, String)>,
    /// The NotificationMessage as received.
    raw: Vec<u8>,
}

impl Notification {
    /// Per topic and source: one camera has a motion state per video source and rule.
    fn state_key(&self, topic: &str) -> String {
        let mut source: Vec<String> = self.source.iter().map(|(n, v)| format!("{n}={v}")).collect();
        source.sort();
        format!("{topic}|{}", source.join(","))
    }

    fn data_item(&self, name: &str) -> Option<&str> {
        self.data.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn parse_notification(message: &Element, text: &str) -> Result<Notification, String> {
    let topic = message
        .child(ns::WSNT, "Topic")
        .ok_or("a NotificationMessage without wsnt:Topic")?;
    let topic = Topic::from_message(topic);
    let inner = message
        .path(&[(ns::WSNT, "Message"), (ns::TT, "Message")])
        .ok_or_else(|| format!("a NotificationMessage of {topic} without wsnt:Message/tt:Message"))?;
    let operation = match inner.attr("PropertyOperation") {
        Some("Initialized") => PropertyOperation::Initialized,
        Some("Deleted") => PropertyOperation::Deleted,
        _ => PropertyOperation::Changed,
    };
    let items = |name: &str| -> Vec<(String, String)> {
        inner
            .child(ns::TT, name)
            .map(|list| {
                list.children_named(ns::TT, "SimpleItem")
                    .filter_map(|item| Some((item.attr("Name")?.to_owned(), item.attr("Value")?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let raw = text.get(message.span.clone()).unwrap_or_default().as_bytes().to_vec();
    Ok(Notification {
        topic,
        operation,
        utc_time: inner.attr("UtcTime").map(str::to_owned),
        source: items("Source"),
        data: items("Data"),
        raw,
    })
}

/// An xs:boolean: `true`, `false`, `1` or `0`.
fn parse_bool(text: &str) -> Option<bool> {
    match text.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        other if other.eq_ignore_ascii_case("true") => Some(true),
        other if other.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// A topic path such as `tns1:RuleEngine/CellMotionDetector/Motion`, each step's prefix resolved
/// where it can be.
#[derive(Debug, Clone, PartialEq)]
struct Topic {
    steps: Vec<TopicStep>,
}

#[derive(Debug, Clone, PartialEq)]
struct TopicStep {
    /// None when the step has no prefix, or one the document did not declare.
    ns: Option<String>,
    local: String,
    /// As written, prefix included.
    text: String,
}

impl Topic {
    /// A topic from the configuration: `tns1` means the ONVIF topic namespace, as in the
    /// ONVIF documents; other prefixes are unknown here and only the names are compared.
    fn from_config(text: &str) -> Self {
        Self::parse(text, |prefix| (prefix == "tns1").then(|| ns::TOPICS.to_owned()))
    }

    /// The topic of a `wsnt:Topic` element, its prefixes resolved with the element's bindings.
    fn from_message(element: &Element) -> Self {
        Self::parse(element.text(), |prefix| element.namespace_of(prefix).map(str::to_owned))
    }

    fn parse(text: &str, resolve: impl Fn(&str) -> Option<String>) -> Self {
        let steps = text
            .trim()
            .split('/')
            .filter(|step| !step.is_empty())
            .map(|step| match step.split_once(':') {
                Some((prefix, local)) => TopicStep {
                    ns: resolve(prefix),
                    local: local.to_owned(),
                    text: step.to_owned(),
                },
                None => TopicStep {
                    ns: None,
                    local: step.to_owned(),
                    text: step.to_owned(),
                },
            })
            .collect();
        Self { steps }
    }

    /// Same names step by step, and the same namespaces where both sides know theirs: cameras
    /// bind the ONVIF topic namespace to `tns1` mostly, but not always.
    fn matches(&self, other: &Topic) -> bool {
        self.steps.len() == other.steps.len()
            && self.steps.iter().zip(&other.steps).all(|(a, b)| {
                a.local == b.local
                    && match (&a.ns, &b.ns) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            })
    }
}

impl fmt::Display for Topic {
    /// With the ONVIF topic namespace written `tns1:` whatever prefix the camera used.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            match step.ns.as_deref() {
                Some(ns::TOPICS) => write!(f, "tns1:{}", step.local)?,
                _ => f.write_str(&step.text)?,
            }
        }
        Ok(())
    }
}

/// A watched topic and the data item whose false→true change raises an alarm.
struct Rule {
    topic: Topic,
    /// The named item; None (or when it is missing) takes the first boolean item.
    item: Option<&'static str>,
}

impl Rule {
    /// Motion (ONVIF's cell motion detector and video source motion alarm), and the configured
    /// topics.
    fn all(configured: &[String]) -> Vec<Rule> {
        let mut rules = vec![
            Rule {
                topic: Topic::from_config("tns1:RuleEngine/CellMotionDetector/Motion"),
                item: Some("IsMotion"),
            },
            Rule {
                topic: Topic::from_config("tns1:VideoSource/MotionAlarm"),
                item: Some("State"),
            },
        ];
        rules.extend(configured.iter().map(|topic| Rule {
            topic: Topic::from_config(topic),
            item: None,
        }));
        rules
    }

    fn value(&self, notification: &Notification) -> Option<bool> {
        self.item
            .and_then(|name| notification.data_item(name))
            .and_then(parse_bool)
            .or_else(|| notification.data.iter().find_map(|(_, value)| parse_bool(value)))
    }
}

/// The last known value of each watched property, for telling changes from repeats.
#[derive(Default)]
struct EventState {
    values: HashMap<String, bool>,
}

impl EventState {
    /// Records a message; true when it raises an alarm: a change to true from false or unknown.
    fn observe(&mut self, key: String, operation: PropertyOperation, value: bool) -> bool {
        match operation {
            PropertyOperation::Initialized => {
                self.values.insert(key, value);
                false
            }
            PropertyOperation::Changed => {
                let before = self.values.insert(key, value);
                value && before != Some(true)
            }
            PropertyOperation::Deleted => {
                self.values.remove(&key);
                false
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// XML

/// An element of a parsed reply, with resolved namespaces.
#[derive(Debug, Default)]
struct Element {
    /// The namespace URI; empty for none.
    ns: String,
    name: String,
    attributes: Vec<Attribute>,
    /// The element's own text, entities resolved.
    text: String,
    children: Vec<Element>,
    /// Where the element is in the document, tags included.
    span: Range<usize>,
    /// The namespaces of prefixes used in the text, for QName values (topics, fault codes).
    text_prefixes: Vec<(String, String)>,
}

#[derive(Debug)]
struct Attribute {
    ns: String,
    name: String,
    value: String,
}

impl Element {
    fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    fn take_child(&mut self, ns: &str, name: &str) -> Option<Element> {
        let index = self.children.iter().position(|c| c.is(ns, name))?;
        Some(self.children.swap_remove(index))
    }

    fn children_named<'a>(&'a self, ns: &'a str, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, name))
    }

    /// The element reached by following `steps` (namespace, name) down from this one.
    fn path(&self, steps: &[(&str, &str)]) -> Option<&Element> {
        steps
            .iter()
            .try_fold(self, |element, (ns, name)| element.child(ns, name))
    }

    /// An unqualified attribute's value.
    fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.ns.is_empty() && a.name == name)
            .map(|a| a.value.as_str())
    }

    fn text(&self) -> &str {
        self.text.trim()
    }

    fn namespace_of(&self, prefix: &str) -> Option<&str> {
        self.text_prefixes
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, ns)| ns.as_str())
    }
}

/// Parses a whole document. Truncated documents (elements left open at the end), text outside
/// the root, undeclared prefixes and unknown entities are errors.
fn parse_xml(text: &str) -> Result<Element, String> {
    let mut reader = NsReader::from_str(text);
    let mut open: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let start = position(reader.buffer_position(), text);
        let event = reader.read_event().map_err(|e| describe_xml_error(&e, &reader, text))?;
        let end = position(reader.buffer_position(), text);
        match event {
            Event::Start(tag) => {
                if open.len() >= MAX_XML_DEPTH {
                    return Err(format!("elements nested deeper than {MAX_XML_DEPTH} levels"));
                }
                open.push(open_element(&reader, &tag, start)?);
            }
            Event::Empty(tag) => {
                let mut element = open_element(&reader, &tag, start)?;
                element.span.end = end;
                close_element(element, &mut open, &mut root)?;
            }
            Event::End(_) => {
                let mut element = open.pop().ok_or("an end tag without a start tag")?;
                element.span.end = end;
                element.text_prefixes = text_prefixes(&reader, &element.text);
                close_element(element, &mut open, &mut root)?;
            }
            Event::Text(content) => append_text(&mut open, &content.xml10_content())?,
            Event::CData(content) => append_text(&mut open, &content.xml10_content())?,
            Event::GeneralRef(reference) => append_text(&mut open, &resolve_reference(&reference)?)?,
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
    if let Some(element) = open.last() {
        return Err(format!("the document ends inside <{}> (truncated)", element.name));
    }
    root.ok_or_else(|| "no XML element in it".to_owned())
}

/// The parser's error, saying so when the document broke off (a reply cut short).
fn describe_xml_error(e: &quick_xml::Error, reader: &NsReader<&[u8]>, text: &str) -> String {
    if position(reader.buffer_position(), text) >= text.len() {
        format!("{e}: the document ends early (truncated)")
    } else {
        format!("{e} (at byte {})", reader.error_position())
    }
}

fn position(offset: u64, text: &str) -> usize {
    usize::try_from(offset).unwrap_or(usize::MAX).min(text.len())
}

fn open_element(reader: &NsReader<&[u8]>, tag: &BytesStart, start: usize) -> Result<Element, String> {
    let resolver = reader.resolver();
    let (ns, name) = resolver.resolve_element(tag.name());
    let mut attributes = Vec::new();
    for attribute in tag.attributes() {
        let attribute = attribute.map_err(|e| format!("bad attribute in <{}>: {e}", tag.name().into_inner()))?;
        if attribute.key.as_namespace_binding().is_some() {
            continue;
        }
        let (ns, name) = resolver.resolve_attribute(attribute.key);
        let value = attribute
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| format!("bad attribute value in <{}>: {e}", tag.name().into_inner()))?;
        attributes.push(Attribute {
            ns: namespace_uri(ns)?,
            name: name.into_inner().to_owned(),
            value: value.into_owned(),
        });
    }
    Ok(Element {
        ns: namespace_uri(ns)?,
        name: name.into_inner().to_owned(),
        attributes,
        span: start..start,
        ..Element::default()
    })
}

fn namespace_uri(result: ResolveResult<'_>) -> Result<String, String> {
    match result {
        ResolveResult::Bound(ns) => Ok(ns.into_inner().to_owned()),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(prefix) => Err(format!("the namespace prefix {prefix:?} is not declared")),
    }
}

fn close_element(element: Element, open: &mut [Element], root: &mut Option<Element>) -> Result<(), String> {
    match open.last_mut() {
        Some(parent) => parent.children.push(element),
        None if root.is_some() => return Err("more than one root element".into()),
        None => *root = Some(element),
    }
    Ok(())
}

fn append_text(open: &mut [Element], text: &str) -> Result<(), String> {
    match open.last_mut() {
        Some(element) => element.text.push_str(text),
        None if text.trim().is_empty() => {}
        None => return Err(format!("text outside the root element: {:?}", excerpt(text))),
    }
    Ok(())
}

fn resolve_reference(reference: &BytesRef) -> Result<String, String> {
    if let Some(c) = reference.resolve_char_ref().map_err(|e| e.to_string())? {
        return Ok(c.to_string());
    }
    let name = reference.clone().into_inner();
    quick_xml::escape::resolve_predefined_entity(&name)
        .map(str::to_owned)
        .ok_or_else(|| format!("unknown entity &{name};"))
}

/// The namespaces of the prefixes in a text that holds QNames (`tns1:A/tns1:B`, `ter:X`).
fn text_prefixes(reader: &NsReader<&[u8]>, text: &str) -> Vec<(String, String)> {
    const MAX_QNAME_TEXT: usize = 1024;
    let text = text.trim();
    if text.len() > MAX_QNAME_TEXT || !text.contains(':') {
        return Vec::new();
    }
    let mut prefixes: Vec<(String, String)> = Vec::new();
    for step in text.split(['/', '|', ' ']) {
        let Some((prefix, _)) = step.split_once(':') else {
            continue;
        };
        if prefix.is_empty() || prefixes.iter().any(|(p, _)| p == prefix) {
            continue;
        }
        let (resolved, _) = reader.resolver().resolve_element(QName(step));
        if let ResolveResult::Bound(ns) = resolved {
            prefixes.push((prefix.to_owned(), ns.into_inner().to_owned()));
        }
    }
    prefixes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_digest_matches_vectors_computed_elsewhere() {
        // Python: base64(sha1(nonce + created + password)) with hashlib.
        let nonce: Vec<u8> = (0u8..16).collect();
        assert_eq!(BASE64.encode(&nonce), "AAECAwQFBgcICQoLDA0ODw==");
        assert_eq!(
            password_digest(&nonce, "2026-11-21T10:15:00.000Z", "Camera-Pass1"),
            "bd4D7Fp2+Q2BAHtaZodQZ07L9WY="
        );
        // The ONVIF Core specification's example (5.12.2.1).
        let nonce = BASE64.decode("LKqI6G/AikKCQrN0zqZFlg==").expect("base64");
        assert_eq!(
            password_digest(&nonce, "2010-09-16T07:50:45Z", "userpassword"),
            "tuOSpGlFlIXsozq4HFNeeGeFLEI="
        );
    }

    #[test]
    fn the_security_header_is_on_the_cameras_clock_and_hides_the_password() {
        let credentials = Credentials {
            username: "admin".into(),
            password: Secret::new("Camera-Pass1"),
        };
        let created = DateTime::parse_from_rfc3339("2026-11-21T10:15:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let nonce: [u8; 16] = std::array::from_fn(|i| i as u8);
        let header = username_token(&credentials, created, nonce);
        assert!(
            header.contains("<wsu:Created>2026-11-21T10:15:00.000Z</wsu:Created>"),
            "{header}"
        );
        assert!(
            header.contains(">bd4D7Fp2+Q2BAHtaZodQZ07L9WY=</wsse:Password>"),
            "{header}"
        );
        assert!(header.contains(">AAECAwQFBgcICQoLDA0ODw==</wsse:Nonce>"), "{header}");
        assert!(!header.contains("Camera-Pass1"));
        let clock = CameraClock {
            offset: TimeDelta::hours(1),
        };
        assert!((clock.now() - Utc::now() - TimeDelta::hours(1)).abs() < TimeDelta::seconds(1));
    }

    #[test]
    fn the_request_is_a_soap_12_envelope_with_addressing_headers() {
        let request = envelope(
            Operation::PullMessages,
            "http://10.0.0.5/onvif/Subscription?Idx=1&x=2",
            "",
            "",
            "<tev:PullMessages/>",
        );
        let root = parse_xml(&request).expect("well-formed");
        assert!(root.is(ns::SOAP, "Envelope"));
        let header = root.child(ns::SOAP, "Header").expect("header");
        assert_eq!(
            header.child(ns::WSA, "Action").map(Element::text),
            Some("http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/PullMessagesRequest")
        );
        assert_eq!(
            header.child(ns::WSA, "To").map(Element::text),
            Some("http://10.0.0.5/onvif/Subscription?Idx=1&x=2")
        );
        assert!(
            header
                .child(ns::WSA, "MessageID")
                .is_some_and(|m| m.text().starts_with("urn:uuid:"))
        );
    }

    const PULL_RESPONSE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope"
    xmlns:wsa="http://www.w3.org/2005/08/addressing" xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2"
    xmlns:tev="http://www.onvif.org/ver10/events/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema"
    xmlns:tns1="http://www.onvif.org/ver10/topics">
  <SOAP-ENV:Header>
    <wsa:Action>http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/PullMessagesResponse</wsa:Action>
  </SOAP-ENV:Header>
  <SOAP-ENV:Body>
    <tev:PullMessagesResponse>
      <tev:CurrentTime>2026-11-21T10:15:00Z</tev:CurrentTime>
      <tev:TerminationTime>2026-11-21T10:15:08Z</tev:TerminationTime>
      <wsnt:NotificationMessage>
        <wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">tns1:RuleEngine/CellMotionDetector/Motion</wsnt:Topic>
        <wsnt:Message>
          <tt:Message UtcTime="2026-11-21T10:14:58Z" PropertyOperation="Initialized">
            <tt:Source>
              <tt:SimpleItem Name="VideoSourceConfigurationToken" Value="VideoSourceToken"/>
              <tt:SimpleItem Name="VideoAnalyticsConfigurationToken" Value="VideoAnalyticsToken"/>
              <tt:SimpleItem Name="Rule" Value="MyMotionDetectorRule"/>
            </tt:Source>
            <tt:Data><tt:SimpleItem Name="IsMotion" Value="false"/></tt:Data>
          </tt:Message>
        </wsnt:Message>
      </wsnt:NotificationMessage>
      <wsnt:NotificationMessage xmlns:ons="http://www.onvif.org/ver10/topics">
        <wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">ons:RuleEngine/CellMotionDetector/Motion</wsnt:Topic>
        <wsnt:Message>
          <tt:Message UtcTime="2026-11-21T10:15:00.250Z" PropertyOperation="Changed">
            <tt:Source>
              <tt:SimpleItem Name="Rule" Value="MyMotionDetectorRule"/>
              <tt:SimpleItem Name="VideoAnalyticsConfigurationToken" Value="VideoAnalyticsToken"/>
              <tt:SimpleItem Name="VideoSourceConfigurationToken" Value="VideoSourceToken"/>
            </tt:Source>
            <tt:Data><tt:SimpleItem Name="IsMotion" Value="true"/></tt:Data>
          </tt:Message>
        </wsnt:Message>
      </wsnt:NotificationMessage>
      <wsnt:NotificationMessage>
        <wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">tns1:Device/Trigger/DigitalInput</wsnt:Topic>
        <wsnt:Message>
          <tt:Message UtcTime="2026-11-21T10:15:00Z" PropertyOperation="Changed">
            <tt:Source><tt:SimpleItem Name="InputToken" Value="DI_0"/></tt:Source>
            <tt:Data><tt:SimpleItem Name="LogicalState" Value="true"/></tt:Data>
          </tt:Message>
        </wsnt:Message>
      </wsnt:NotificationMessage>
    </tev:PullMessagesResponse>
  </SOAP-ENV:Body>
</SOAP-ENV:Envelope>"#;

    fn body_of(text: &str) -> Element {
        match parse_envelope(text) {
            Ok(Envelope::Body(Some(payload))) => payload,
            Ok(Envelope::Body(None)) => panic!("empty body"),
            Ok(Envelope::Fault(f)) => panic!("fault {f:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_pull_response_gives_its_notifications_whatever_the_topic_prefix() {
        let payload = body_of(PULL_RESPONSE);
        let pulled = parse_pull(&payload, PULL_RESPONSE).expect("pull response");
        assert!(pulled.skipped.is_empty(), "{:?}", pulled.skipped);
        assert_eq!(
            pulled.termination.map(|t| t - pulled.current.unwrap_or_default()),
            Some(TimeDelta::seconds(8))
        );
        let [initialized, changed, input] = pulled.notifications.as_slice() else {
            panic!("{:?}", pulled.notifications);
        };
        assert_eq!(initialized.operation, PropertyOperation::Initialized);
        assert_eq!(changed.operation, PropertyOperation::Changed);
        assert_eq!(
            initialized.topic.to_string(),
            "tns1:RuleEngine/CellMotionDetector/Motion"
        );
        assert_eq!(changed.topic.to_string(), "tns1:RuleEngine/CellMotionDetector/Motion");
        assert_eq!(changed.utc_time.as_deref(), Some("2026-11-21T10:15:00.250Z"));
        assert_eq!(changed.data_item("IsMotion"), Some("true"));
        // The same source, listed in another order.
        assert_eq!(initialized.state_key("t"), changed.state_key("t"));
        let raw = String::from_utf8(changed.raw.clone()).expect("utf-8");
        assert!(raw.starts_with("<wsnt:NotificationMessage xmlns:ons="), "{raw}");
        assert!(raw.ends_with("</wsnt:NotificationMessage>"), "{raw}");
        assert!(raw.contains(r#"Name="IsMotion" Value="true""#), "{raw}");
        assert_eq!(input.topic.to_string(), "tns1:Device/Trigger/DigitalInput");
    }

    #[test]
    fn initialized_sets_the_state_and_only_a_change_to_true_raises() {
        let payload = body_of(PULL_RESPONSE);
        let pulled = parse_pull(&payload, PULL_RESPONSE).expect("pull response");
        let rules = Rule::all(&[]);
        let mut state = EventState::default();
        let mut raised = Vec::new();
        for n in &pulled.notifications {
            let Some(rule) = rules.iter().find(|r| r.topic.matches(&n.topic)) else {
                continue;
            };
            let value = rule.value(n).expect("boolean");
            let topic = n.topic.to_string();
            if state.observe(n.state_key(&topic), n.operation, value) {
                raised.push(topic);
            }
        }
        assert_eq!(raised, ["tns1:RuleEngine/CellMotionDetector/Motion"]);

        let mut state = EventState::default();
        let key = || "k".to_owned();
        assert!(!state.observe(key(), PropertyOperation::Initialized, true));
        assert!(!state.observe(key(), PropertyOperation::Changed, true), "true→true");
        assert!(!state.observe(key(), PropertyOperation::Changed, false));
        assert!(state.observe(key(), PropertyOperation::Changed, true), "false→true");
        assert!(!state.observe(key(), PropertyOperation::Deleted, false));
        assert!(state.observe(key(), PropertyOperation::Changed, true), "unknown→true");
    }

    #[test]
    fn configured_topics_match_by_path_and_use_the_first_boolean() {
        let rules = Rule::all(&["tns1:RuleEngine/FieldDetector/ObjectsInside".to_owned()]);
        let text = r#"<wsnt:NotificationMessage xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2"
            xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:x="http://www.onvif.org/ver10/topics">
            <wsnt:Topic>x:RuleEngine/FieldDetector/ObjectsInside</wsnt:Topic>
            <wsnt:Message><tt:Message UtcTime="2026-11-21T10:15:00Z" PropertyOperation="Changed">
              <tt:Data><tt:SimpleItem Name="Count" Value="3"/><tt:SimpleItem Name="IsInside" Value="1"/></tt:Data>
            </tt:Message></wsnt:Message></wsnt:NotificationMessage>"#;
        let element = parse_xml(text).expect("xml");
        let n = parse_notification(&element, text).expect("notification");
        let rule = rules
            .iter()
            .find(|r| r.topic.matches(&n.topic))
            .expect("configured topic matches");
        assert!(rule.item.is_none());
        assert_eq!(rule.value(&n), Some(true));
        assert_eq!(n.topic.to_string(), "tns1:RuleEngine/FieldDetector/ObjectsInside");

        // Another namespace under the same names is another topic.
        let other =
            parse_xml(r#"<t xmlns:v="http://vendor.example/topics">v:RuleEngine/FieldDetector/ObjectsInside</t>"#)
                .expect("xml");
        assert!(!rules[2].topic.matches(&Topic::from_message(&other)));
        // An undeclared prefix is compared by names alone.
        let unbound = parse_xml("<t>acme:VideoSource/MotionAlarm</t>").expect("xml");
        assert!(rules[1].topic.matches(&Topic::from_message(&unbound)));
    }

    #[test]
    fn a_soap_fault_gives_its_codes_and_reason() {
        let text = r#"<?xml version="1.0"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:ter="http://www.onvif.org/ver10/error">
  <env:Body><env:Fault>
    <env:Code><env:Value>env:Sender</env:Value>
      <env:Subcode><env:Value>ter:NotAuthorized</env:Value></env:Subcode></env:Code>
    <env:Reason><env:Text xml:lang="en">Sender not authorized &amp; refused</env:Text></env:Reason>
  </env:Fault></env:Body>
</env:Envelope>"#;
        let Ok(Envelope::Fault(fault)) = parse_envelope(text) else {
            panic!("expected a fault");
        };
        assert_eq!(fault.code_text(), "env:Sender/ter:NotAuthorized");
        assert_eq!(fault.reason, "Sender not authorized & refused");
        let error = fault.into_error(Operation::GetCapabilities).to_string();
        assert_eq!(
            error,
            "GetCapabilities: the camera refused the credentials (env:Sender/ter:NotAuthorized): check \
             camera.onvif.username and password"
        );

        let other = text
            .replace("ter:NotAuthorized", "ter:InvalidArgVal")
            .replace("Sender not authorized &amp; refused", "No such subscription");
        let error = interpret_reply(Operation::PullMessages, StatusCode::BAD_REQUEST, other.into_bytes())
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "PullMessages: the camera answered with a SOAP fault (env:Sender/ter:InvalidArgVal): No such \
                 subscription"
            )
        );
    }

    #[test]
    fn bad_replies_are_errors_not_panics() {
        let op = Operation::PullMessages;
        let cut = &PULL_RESPONSE[..PULL_RESPONSE.len() / 2];
        let error = interpret_reply(op, StatusCode::OK, cut.as_bytes().to_vec())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.starts_with("PullMessages: the camera's reply is not valid XML"),
            "{error}"
        );
        // Every cut of a real reply is handled.
        for end in 0..PULL_RESPONSE.len() {
            if let Some(cut) = PULL_RESPONSE.get(..end) {
                assert!(interpret_reply(op, StatusCode::OK, cut.as_bytes().to_vec()).is_err());
            }
        }
        let html = "<html><head><title>500 Internal Server Error</title></head><body><h1>Oops</h1></body></html>";
        let error = interpret_reply(op, StatusCode::INTERNAL_SERVER_ERROR, html.as_bytes().to_vec())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("HTTP 500 Internal Server Error"), "{error}");
        let error = interpret_reply(op, StatusCode::OK, html.as_bytes().to_vec())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("expected a SOAP 1.2 envelope, got <html>"), "{error}");
        let error = interpret_reply(op, StatusCode::UNAUTHORIZED, Vec::new())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("HTTP 401 Unauthorized") && error.contains("username"),
            "{error}"
        );
        for garbage in [
            &b"\xff\xfe\x00garbage"[..],
            b"hello",
            b"<a><b></a>",
            b"<a>&bogus;</a>",
            b"<x:a/>",
        ] {
            assert!(interpret_reply(op, StatusCode::OK, garbage.to_vec()).is_err());
        }
        let deep = "<a>".repeat(10_000);
        assert!(parse_xml(&deep).is_err_and(|e| e.contains("deeper")));
    }

    #[test]
    fn device_replies_give_the_clock_the_event_service_and_the_subscription() {
        let clock = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
            xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema"><s:Body>
            <tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>
              <tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>
              <tt:UTCDateTime><tt:Time><tt:Hour>11</tt:Hour><tt:Minute>15</tt:Minute><tt:Second>7</tt:Second></tt:Time>
                <tt:Date><tt:Year>2026</tt:Year><tt:Month>11</tt:Month><tt:Day>21</tt:Day></tt:Date></tt:UTCDateTime>
            </tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse></s:Body></s:Envelope>"#;
        assert_eq!(
            parse_system_date_and_time(&body_of(clock)).ok(),
            parse_xml_time("2026-11-21T11:15:07Z")
        );
        let capabilities = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
            xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema"><s:Body>
            <tds:GetCapabilitiesResponse><tds:Capabilities><tt:Events>
              <tt:XAddr>http://10.0.0.5/onvif/Events</tt:XAddr><tt:WSPullPointSupport>true</tt:WSPullPointSupport>
            </tt:Events></tds:Capabilities></tds:GetCapabilitiesResponse></s:Body></s:Envelope>"#;
        assert_eq!(
            parse_capabilities(&body_of(capabilities)).ok().as_deref(),
            Some("http://10.0.0.5/onvif/Events")
        );
        let services = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
            xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><s:Body><tds:GetServicesResponse>
            <tds:Service><tds:Namespace>http://www.onvif.org/ver10/device/wsdl</tds:Namespace>
              <tds:XAddr>http://10.0.0.5/onvif/device_service</tds:XAddr></tds:Service>
            <tds:Service><tds:Namespace>http://www.onvif.org/ver10/events/wsdl</tds:Namespace>
              <tds:XAddr>http://10.0.0.5/onvif/event_service</tds:XAddr></tds:Service>
            </tds:GetServicesResponse></s:Body></s:Envelope>"#;
        assert_eq!(
            parse_services(&body_of(services)).ok().as_deref(),
            Some("http://10.0.0.5/onvif/event_service")
        );
        let subscription = r#"<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope"
            xmlns:wsa="http://www.w3.org/2005/08/addressing" xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2"
            xmlns:tet="http://www.onvif.org/ver10/events/wsdl"><SOAP-ENV:Body>
            <tet:CreatePullPointSubscriptionResponse><tet:SubscriptionReference>
              <wsa:Address>http://160.10.64.10/Subscription?Idx=0</wsa:Address>
              <wsa:ReferenceParameters><dom0:SubscriptionId xmlns:dom0="http://www.axis.com/2009/event">7</dom0:SubscriptionId></wsa:ReferenceParameters>
            </tet:SubscriptionReference>
            <wsnt:CurrentTime>2008-10-09T13:52:59</wsnt:CurrentTime>
            <wsnt:TerminationTime>2008-10-09T13:53:59</wsnt:TerminationTime>
            </tet:CreatePullPointSubscriptionResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>"#;
        let created = parse_subscription(&body_of(subscription)).expect("subscription");
        assert_eq!(created.address, "http://160.10.64.10/Subscription?Idx=0");
        assert_eq!(
            created.reference_headers,
            r#"<rp:SubscriptionId xmlns:rp="http://www.axis.com/2009/event" xmlns:wsa="http://www.w3.org/2005/08/addressing" wsa:IsReferenceParameter="true">7</rp:SubscriptionId>"#
        );
        let granted = remaining(created.current, created.termination, &CameraClock::default());
        assert_eq!(granted, Duration::from_secs(60));
        assert_eq!(renew_interval(granted), Duration::from_secs(30));
        assert_eq!(renew_interval(Duration::ZERO), MIN_RENEW_INTERVAL);
    }

    #[test]
    fn pulls_end_before_the_renewal_is_due() {
        let now = Instant::now();
        let subscription = |renew_in: Duration| Subscription {
            address: String::new(),
            reference_headers: String::new(),
            renew_at: now + renew_in,
            clock: CameraClock::default(),
        };
        assert_eq!(
            subscription(Duration::from_secs(30)).pull_timeout(now),
            Some(PULL_TIMEOUT)
        );
        assert_eq!(
            subscription(Duration::from_millis(4_500)).pull_timeout(now),
            Some(Duration::from_secs(4))
        );
        assert_eq!(subscription(Duration::from_millis(900)).pull_timeout(now), None);
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..7).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), BACKOFF_FIRST);
    }
}
