//! A test double of an ONVIF camera's device, event and media services, because no real camera
//! can run here. It follows the ONVIF Core (device service, WS-Security), Event Service and Media
//! Service (ver10) specifications for exactly the messages the service uses: GetSystemDateAndTime,
//! GetCapabilities, GetServices, CreatePullPointSubscription, PullMessages (long-polled), Renew,
//! Unsubscribe, GetProfiles and GetStreamUri, as SOAP 1.2 with WS-Addressing, on a free loopback
//! port. Its media profiles are set by the test ([`OnvifCamera::set_profiles`]), pointing at real
//! RTSP mounts; setting them again is a reboot that moved the streams.
//!
//! Like a strict camera it checks the UsernameToken PasswordDigest of every call but
//! GetSystemDateAndTime, refuses a `Created` more than 5 s from its own clock (which runs an hour
//! ahead of real time, so a client that does not correct for it fails), refuses a nonce used
//! twice, wants `wsa:Action` on every call and `wsa:To` on the subscription's address, and lets a
//! subscription that is not renewed expire. Tests drive it: [`OnvifCamera::emit_motion`], counters,
//! [`OnvifCamera::stop`] and [`OnvifCamera::restart`] on the same port, and
//! [`OnvifCamera::misbehave`] for broken replies.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, TimeDelta, Timelike, Utc};
use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use sha1::{Digest, Sha1};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
const WSA: &str = "http://www.w3.org/2005/08/addressing";
const WSNT: &str = "http://docs.oasis-open.org/wsn/b-2";
const TDS: &str = "http://www.onvif.org/ver10/device/wsdl";
const TEV: &str = "http://www.onvif.org/ver10/events/wsdl";
const TRT: &str = "http://www.onvif.org/ver10/media/wsdl";
const TR2: &str = "http://www.onvif.org/ver20/media/wsdl";
const TT: &str = "http://www.onvif.org/ver10/schema";
const WSSE: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const WSU: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
const PASSWORD_DIGEST: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest";
const NAMESPACES: &str = concat!(
    r#"xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://www.w3.org/2005/08/addressing" "#,
    r#"xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2" xmlns:tev="http://www.onvif.org/ver10/events/wsdl" "#,
    r#"xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema" "#,
    r#"xmlns:tns1="http://www.onvif.org/ver10/topics" xmlns:ter="http://www.onvif.org/ver10/error" "#,
    r#"xmlns:wsrf-rw="http://docs.oasis-open.org/wsrf/rw-2" xmlns:trt="http://www.onvif.org/ver10/media/wsdl" xmlns:tr2="http://www.onvif.org/ver20/media/wsdl""#
);
const DEVICE_PATH: &str = "/onvif/device_service";
const EVENTS_PATH: &str = "/onvif/events";
const SUBSCRIPTION_PATH: &str = "/onvif/subscription/";
const MEDIA_PATH: &str = "/onvif/media_service";
const MEDIA2_PATH: &str = "/onvif/media2_service";

/// A media profile: a video encoder configuration and where its stream is.
#[derive(Debug, Clone)]
pub struct MediaProfile {
    pub token: String,
    pub name: String,
    /// `H264`, `JPEG`...
    pub encoding: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    /// What GetStreamUri answers for this profile.
    pub uri: String,
}

impl MediaProfile {
    pub fn h264(token: &str, width: u32, height: u32, uri: &str) -> Self {
        Self {
            token: token.into(),
            name: format!("{token}Stream"),
            encoding: "H264".into(),
            width,
            height,
            fps: 25,
            bitrate_kbps: if width >= 1280 { 4096 } else { 512 },
            uri: uri.into(),
        }
    }
}

/// How the double behaves; [`Default`] is a strict camera whose clock runs an hour ahead.
#[derive(Debug, Clone)]
pub struct CameraOptions {
    pub username: String,
    pub password: String,
    /// The camera's clock minus real time.
    pub clock_skew: TimeDelta,
    /// The longest termination time granted on subscribing or renewing, whatever is asked.
    pub granted: Duration,
    /// `Created` times further than this from the camera's clock are refused.
    pub max_created_skew: TimeDelta,
    /// The host the camera names in its event service address (XAddr); the double serves on
    /// 127.0.0.1 whatever this says, so `localhost` reaches it under another name.
    pub events_host: String,
    /// The host the camera names in its subscription addresses (wsa:Address).
    pub subscription_host: String,
}

impl Default for CameraOptions {
    fn default() -> Self {
        Self {
            username: "admin".into(),
            password: "Camera-Pass1".into(),
            clock_skew: TimeDelta::hours(1),
            granted: Duration::from_secs(6),
            max_created_skew: TimeDelta::seconds(5),
            events_host: "127.0.0.1".into(),
            subscription_host: "127.0.0.1".into(),
        }
    }
}

/// Broken replies, for the client's error handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Bytes that are not XML.
    Garbage,
    /// The first half of the right reply.
    Truncated,
    /// A reply of 2 MiB.
    Huge,
    /// HTTP 500 with an HTML page, as a web server in front of a crashed ONVIF service sends.
    HtmlError,
    /// HTTP 307 to the device service path on this port of 127.0.0.1: a redirect that a client
    /// following it would answer by sending the same request, credentials and all, there.
    RedirectTo(u16),
}

/// What happened so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub subscriptions: usize,
    pub renews: usize,
    pub unsubscribes: usize,
    pub pulls: usize,
    pub get_capabilities: usize,
    pub get_services: usize,
    pub get_profiles: usize,
    pub get_stream_uris: usize,
    /// Notification messages handed out by PullMessages.
    pub delivered: usize,
    /// Calls refused with ter:NotAuthorized.
    pub refused: usize,
}

struct Subscription {
    termination: DateTime<Utc>,
    queue: VecDeque<String>,
}

#[derive(Default)]
struct CameraState {
    motion: bool,
    next_subscription: u64,
    subscriptions: HashMap<u64, Subscription>,
    nonces: HashSet<String>,
    counters: Counters,
    last_refusal: Option<String>,
    /// Operation name (`*` for all) and how it misbehaves.
    misbehaviour: Option<(String, Misbehaviour)>,
    no_capabilities: bool,
    profiles: Vec<MediaProfile>,
    /// Only Media2 (ver20): no Media ver10 in GetCapabilities or GetServices.
    media2_only: bool,
}

struct Shared {
    options: CameraOptions,
    port: u16,
    state: Mutex<CameraState>,
    /// Bumped when events are queued or subscriptions change, to wake held PullMessages.
    changed: watch::Sender<u64>,
    /// Cancelled when the server stops, to end held PullMessages.
    kill: Mutex<CancellationToken>,
}

/// The running server: its accept loop and the sockets of its connections.
struct Server {
    task: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

/// An ONVIF camera on `127.0.0.1:{port}`.
pub struct OnvifCamera {
    shared: Arc<Shared>,
    server: Option<Server>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl OnvifCamera {
    pub async fn start(options: CameraOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        let shared = Arc::new(Shared {
            options,
            port,
            state: Mutex::new(CameraState::default()),
            changed: watch::channel(0).0,
            kill: Mutex::new(CancellationToken::new()),
        });
        let server = Some(serve(listener, Arc::clone(&shared)));
        Self { shared, server }
    }

    /// The device service address, for `[camera.onvif] url`.
    pub fn url(&self) -> String {
        self.url_on("127.0.0.1")
    }

    /// The device service address with another name for this machine, e.g. `localhost`.
    pub fn url_on(&self, host: &str) -> String {
        format!("http://{host}:{}{DEVICE_PATH}", self.shared.port)
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// Queues a `Changed` IsMotion event on every live subscription.
    pub fn emit_motion(&self, motion: bool) {
        let now = self.shared.camera_now();
        {
            let mut state = lock(&self.shared.state);
            state.motion = motion;
            let message = motion_message("Changed", motion, now);
            for subscription in state.subscriptions.values_mut() {
                subscription.queue.push_back(message.clone());
            }
        }
        self.shared.changed.send_modify(|n| *n += 1);
    }

    pub fn counters(&self) -> Counters {
        lock(&self.shared.state).counters
    }

    /// Why the last call was refused with ter:NotAuthorized.
    pub fn last_refusal(&self) -> Option<String> {
        lock(&self.shared.state).last_refusal.clone()
    }

    /// Makes `operation` (e.g. `PullMessages`, or `*` for all) reply badly; None makes it well again.
    pub fn misbehave(&self, operation: &str, how: Option<Misbehaviour>) {
        lock(&self.shared.state).misbehaviour = how.map(|how| (operation.to_owned(), how));
    }

    /// GetCapabilities answers ter:ActionNotSupported, as on cameras that only have GetServices.
    pub fn without_get_capabilities(&self) {
        lock(&self.shared.state).no_capabilities = true;
    }

    /// The media profiles GetProfiles and GetStreamUri tell from now on.
    pub fn set_profiles(&self, profiles: Vec<MediaProfile>) {
        lock(&self.shared.state).profiles = profiles;
    }

    /// The camera offers its media only through Media2 (ver20), as some newer cameras do.
    pub fn media2_only(&self) {
        lock(&self.shared.state).media2_only = true;
    }

    /// Every subscription's termination time passes now, as if it had not been renewed.
    pub fn expire_subscriptions(&self) {
        let past = self.shared.camera_now() - TimeDelta::seconds(1);
        for subscription in lock(&self.shared.state).subscriptions.values_mut() {
            subscription.termination = past;
        }
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// The camera goes away: the port closes and open connections are cut, held requests too.
    pub async fn stop(&mut self) {
        let Some(server) = self.server.take() else { return };
        // No new connections, then the open ones cut (clients see them close, as when a camera
        // loses power), then the held requests ended.
        server.task.abort();
        let _ = server.task.await;
        for connection in lock(&server.connections).drain(..) {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
        lock(&self.shared.kill).cancel();
    }

    /// The camera comes back on the same port, rebooted: its subscriptions are gone.
    pub async fn restart(&mut self) {
        self.stop().await;
        lock(&self.shared.state).subscriptions.clear();
        *lock(&self.shared.kill) = CancellationToken::new();
        let address = SocketAddr::from(([127, 0, 0, 1], self.shared.port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(address).await {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("rebinding {address}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot listen on {address} again: {e}"),
            }
        };
        self.server = Some(serve(listener, Arc::clone(&self.shared)));
    }
}

impl Drop for OnvifCamera {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            lock(&self.shared.kill).cancel();
            server.task.abort();
            for connection in lock(&server.connections).drain(..) {
                let _ = connection.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Accepts connections, keeping a handle on each socket so that [`OnvifCamera::stop`] can cut it.
struct TrackedListener {
    inner: TcpListener,
    connections: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl axum::serve::Listener for TrackedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Ok((stream, peer)) = self.inner.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(stream) = stream.into_std() else { continue };
            if let Ok(handle) = stream.try_clone() {
                lock(&self.connections).push(handle);
            }
            if let Ok(stream) = TcpStream::from_std(stream) {
                return (stream, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn serve(listener: TcpListener, shared: Arc<Shared>) -> Server {
    let connections = Arc::new(Mutex::new(Vec::new()));
    let listener = TrackedListener {
        inner: listener,
        connections: Arc::clone(&connections),
    };
    let app = axum::Router::new().fallback(handle).with_state(shared);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { task, connections }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// An element of a request, flattened: its namespace, name, parent, attributes and text.
struct Node {
    ns: String,
    name: String,
    parent: Option<usize>,
    attributes: Vec<(String, String)>,
    text: String,
}

/// A parsed SOAP request.
struct Request {
    nodes: Vec<Node>,
}

impl Request {
    fn parse(text: &str) -> Result<Self, String> {
        let mut reader = NsReader::from_str(text);
        let mut nodes: Vec<Node> = Vec::new();
        let mut open: Vec<usize> = Vec::new();
        loop {
            match reader.read_event().map_err(|e| e.to_string())? {
                Event::Start(tag) => {
                    let node = node(&reader, &tag, open.last().copied())?;
                    open.push(nodes.len());
                    nodes.push(node);
                }
                Event::Empty(tag) => {
                    let node = node(&reader, &tag, open.last().copied())?;
                    nodes.push(node);
                }
                Event::End(_) => {
                    open.pop();
                }
                Event::Text(text) => {
                    if let Some(&i) = open.last() {
                        nodes[i].text.push_str(&text.xml10_content());
                    }
                }
                Event::GeneralRef(reference) => {
                    let resolved = match reference.resolve_char_ref().map_err(|e| e.to_string())? {
                        Some(c) => c.to_string(),
                        None => quick_xml::escape::resolve_predefined_entity(&reference.clone().into_inner())
                            .ok_or("unknown entity")?
                            .to_owned(),
                    };
                    if let Some(&i) = open.last() {
                        nodes[i].text.push_str(&resolved);
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if !open.is_empty() {
            return Err("truncated request".into());
        }
        Ok(Self { nodes })
    }

    fn index_of(&self, ns: &str, name: &str, parent: Option<usize>) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.ns == ns && n.name == name && n.parent == parent)
    }

    fn child(&self, parent: usize, ns: &str, name: &str) -> Option<&Node> {
        self.index_of(ns, name, Some(parent)).map(|i| &self.nodes[i])
    }

    fn header_index(&self, ns: &str, name: &str) -> Option<usize> {
        let envelope = self.index_of(SOAP, "Envelope", None)?;
        let header = self.index_of(SOAP, "Header", Some(envelope))?;
        self.index_of(ns, name, Some(header))
    }

    fn header(&self, ns: &str, name: &str) -> Option<&Node> {
        self.header_index(ns, name).map(|i| &self.nodes[i])
    }

    /// The operation: the first element in the Body.
    fn operation(&self) -> Option<usize> {
        let envelope = self.index_of(SOAP, "Envelope", None)?;
        let body = self.index_of(SOAP, "Body", Some(envelope))?;
        self.nodes.iter().position(|n| n.parent == Some(body))
    }

    /// The text of a child of the operation element.
    fn argument(&self, ns: &str, name: &str) -> Option<String> {
        let operation = self.operation()?;
        self.child(operation, ns, name).map(|n| n.text.trim().to_owned())
    }

    /// The UsernameToken in the WS-Security header.
    fn token(&self) -> Option<usize> {
        let security = self.header_index(WSSE, "Security")?;
        self.index_of(WSSE, "UsernameToken", Some(security))
    }
}

fn node(reader: &NsReader<&[u8]>, tag: &BytesStart, parent: Option<usize>) -> Result<Node, String> {
    let (ns, name) = reader.resolver().resolve_element(tag.name());
    let ns = match ns {
        ResolveResult::Bound(ns) => ns.into_inner().to_owned(),
        ResolveResult::Unbound => String::new(),
        ResolveResult::Unknown(prefix) => return Err(format!("undeclared prefix {prefix}")),
    };
    let mut attributes = Vec::new();
    for attribute in tag.attributes() {
        let attribute = attribute.map_err(|e| e.to_string())?;
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| e.to_string())?;
        attributes.push((attribute.key.local_name().into_inner().to_owned(), value.into_owned()));
    }
    Ok(Node {
        ns,
        name: name.into_inner().to_owned(),
        parent,
        attributes,
        text: String::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// The services

impl Shared {
    fn camera_now(&self) -> DateTime<Utc> {
        Utc::now() + self.options.clock_skew
    }

    fn address(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    fn events_address(&self, path: &str) -> String {
        self.address(&self.options.events_host, path)
    }

    fn subscription_address(&self, path: &str) -> String {
        self.address(&self.options.subscription_host, path)
    }

    /// Checks the UsernameToken as ONVIF Core 5.12 asks: digest, clock window, fresh nonce.
    fn check_credentials(&self, request: &Request) -> Result<(), String> {
        let token = request.token().ok_or("no wsse:UsernameToken")?;
        let field = |ns: &str, name: &str| request.child(token, ns, name);
        let username = field(WSSE, "Username")
            .ok_or("no wsse:Username")?
            .text
            .trim()
            .to_owned();
        let password = field(WSSE, "Password").ok_or("no wsse:Password")?;
        let nonce = field(WSSE, "Nonce").ok_or("no wsse:Nonce")?.text.trim().to_owned();
        let created = field(WSU, "Created").ok_or("no wsu:Created")?.text.trim().to_owned();
        if !password
            .attributes
            .iter()
            .any(|(k, v)| k == "Type" && v == PASSWORD_DIGEST)
        {
            return Err("the password is not a PasswordDigest".into());
        }
        if username != self.options.username {
            return Err(format!("unknown user {username:?}"));
        }
        let created_time = DateTime::parse_from_rfc3339(&created)
            .map_err(|e| format!("Created {created:?} is not a time: {e}"))?
            .with_timezone(&Utc);
        let off = created_time - self.camera_now();
        if off.abs() > self.options.max_created_skew {
            return Err(format!(
                "Created {created} is {} ms off the camera's clock",
                off.num_milliseconds()
            ));
        }
        let nonce_bytes = BASE64.decode(&nonce).map_err(|e| format!("nonce is not base64: {e}"))?;
        let mut sha1 = Sha1::new();
        sha1.update(&nonce_bytes);
        sha1.update(created.as_bytes());
        sha1.update(self.options.password.as_bytes());
        if BASE64.encode(sha1.finalize()) != password.text.trim() {
            return Err("wrong password digest".into());
        }
        if !lock(&self.state).nonces.insert(nonce) {
            return Err("nonce used before".into());
        }
        Ok(())
    }
}

/// One SOAP reply: HTTP status and body.
struct Reply {
    status: StatusCode,
    body: String,
}

impl Reply {
    fn ok(action: &str, body: &str) -> Self {
        Self {
            status: StatusCode::OK,
            body: envelope(action, body),
        }
    }

    /// A SOAP 1.2 fault; `code` is `Sender` or `Receiver`, `subcode` a QName with a prefix
    /// declared on the envelope.
    /// A fault; `subcode` may name nested subcodes, outermost first: `ter:InvalidArgVal/ter:NoProfile`.
    fn fault(status: StatusCode, code: &str, subcode: &str, reason: &str) -> Self {
        let levels: Vec<&str> = subcode.split('/').collect();
        let opened: String = levels
            .iter()
            .map(|v| format!("<s:Subcode><s:Value>{v}</s:Value>"))
            .collect();
        let closed = "</s:Subcode>".repeat(levels.len());
        let body = format!(
            "<s:Fault><s:Code><s:Value>s:{code}</s:Value>{opened}{closed}</s:Code>\
             <s:Reason><s:Text xml:lang=\"en\">{}</s:Text></s:Reason></s:Fault>",
            quick_xml::escape::escape(reason)
        );
        Self {
            status,
            body: envelope("http://www.w3.org/2005/08/addressing/soap/fault", &body),
        }
    }

    fn not_authorized() -> Self {
        Self::fault(
            StatusCode::BAD_REQUEST,
            "Sender",
            "ter:NotAuthorized",
            "Sender not Authorized",
        )
    }
}

fn envelope(action: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<s:Envelope {NAMESPACES}><s:Header><wsa:Action>{action}</wsa:Action>\
         </s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A CellMotionDetector notification as cameras send it.
fn motion_message(operation: &str, motion: bool, now: DateTime<Utc>) -> String {
    format!(
        "<wsnt:NotificationMessage><wsnt:Topic Dialect=\"http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet\">\
         tns1:RuleEngine/CellMotionDetector/Motion</wsnt:Topic><wsnt:Message>\
         <tt:Message UtcTime=\"{}\" PropertyOperation=\"{operation}\"><tt:Source>\
         <tt:SimpleItem Name=\"VideoSourceConfigurationToken\" Value=\"VideoSourceConfig_1\"/>\
         <tt:SimpleItem Name=\"VideoAnalyticsConfigurationToken\" Value=\"VideoAnalyticsConfig_1\"/>\
         <tt:SimpleItem Name=\"Rule\" Value=\"MyMotionDetectorRule\"/></tt:Source>\
         <tt:Data><tt:SimpleItem Name=\"IsMotion\" Value=\"{motion}\"/></tt:Data></tt:Message>\
         </wsnt:Message></wsnt:NotificationMessage>",
        now.to_rfc3339_opts(SecondsFormat::Millis, true)
    )
}

/// `PT60S`, `PT1M30S`, `PT1H` (the forms of xs:duration a client sends for a termination time).
fn parse_duration(text: &str) -> Option<Duration> {
    let rest = text.strip_prefix("PT")?;
    let mut seconds = 0.0;
    let mut number = String::new();
    for c in rest.chars() {
        match c {
            '0'..='9' | '.' => number.push(c),
            'H' | 'M' | 'S' => {
                let value: f64 = number.parse().ok()?;
                seconds += value
                    * match c {
                        'H' => 3600.0,
                        'M' => 60.0,
                        _ => 1.0,
                    };
                number.clear();
            }
            _ => return None,
        }
    }
    number.is_empty().then(|| Duration::from_secs_f64(seconds))
}

/// A termination time as asked (a duration or a time), capped at what the camera grants.
fn termination(shared: &Shared, asked: Option<&str>) -> DateTime<Utc> {
    let now = shared.camera_now();
    let asked = asked.and_then(|a| {
        parse_duration(a).or_else(|| {
            DateTime::parse_from_rfc3339(a)
                .ok()
                .and_then(|t| (t.with_timezone(&Utc) - now).to_std().ok())
        })
    });
    let granted = asked.unwrap_or(shared.options.granted).min(shared.options.granted);
    now + TimeDelta::from_std(granted).unwrap_or_default()
}

async fn handle(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/soap+xml") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "SOAP 1.2 expected").into_response();
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let (reply, operation) = match Request::parse(&text) {
        Ok(request) => {
            let operation = request.operation().map(|i| request.nodes[i].name.clone());
            (
                answer(&shared, uri.path(), &request).await,
                operation.unwrap_or_default(),
            )
        }
        Err(e) => (
            Reply::fault(StatusCode::BAD_REQUEST, "Sender", "ter:WellFormed", &e),
            String::new(),
        ),
    };
    let misbehaviour = lock(&shared.state)
        .misbehaviour
        .clone()
        .filter(|(op, _)| op == "*" || *op == operation)
        .map(|(_, how)| how);
    match misbehaviour {
        None => soap_response(reply.status, reply.body),
        Some(Misbehaviour::Garbage) => soap_response(StatusCode::OK, "\u{1}\u{2}garbage{{{ not < xml &&".into()),
        Some(Misbehaviour::Truncated) => {
            let cut = reply.body.len() / 2;
            soap_response(StatusCode::OK, reply.body.get(..cut).unwrap_or_default().to_owned())
        }
        Some(Misbehaviour::Huge) => {
            let padding = " ".repeat(2 * 1024 * 1024);
            soap_response(
                StatusCode::OK,
                format!("<s:Envelope {NAMESPACES}><s:Body>{padding}</s:Body></s:Envelope>"),
            )
        }
        Some(Misbehaviour::HtmlError) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><head><title>500 Internal Server Error</title></head><body><h1>500 Internal Server Error</h1>\
             <hr>nginx</body></html>",
        )
            .into_response(),
        Some(Misbehaviour::RedirectTo(port)) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("http://127.0.0.1:{port}{DEVICE_PATH}"))],
        )
            .into_response(),
    }
}

fn soap_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/soap+xml; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Checks addressing and credentials, then runs the operation.
async fn answer(shared: &Arc<Shared>, path: &str, request: &Request) -> Reply {
    let Some(operation) = request.operation() else {
        return Reply::fault(
            StatusCode::BAD_REQUEST,
            "Sender",
            "ter:InvalidArgVal",
            "no operation in the Body",
        );
    };
    let op = &request.nodes[operation];
    let (ns, name) = (op.ns.as_str(), op.name.as_str());
    let expected_action = match (ns, name) {
        (TDS, _) => format!("{TDS}/{name}"),
        (TRT, _) => format!("{TRT}/{name}"),
        (TR2, _) => format!("{TR2}/{name}"),
        (TEV, "CreatePullPointSubscription") => format!("{TEV}/EventPortType/CreatePullPointSubscriptionRequest"),
        (TEV, "PullMessages") => format!("{TEV}/PullPointSubscription/PullMessagesRequest"),
        (TEV, "GetEventProperties") => format!("{TEV}/EventPortType/GetEventPropertiesRequest"),
        (WSNT, "Renew" | "Unsubscribe") => {
            format!("http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/{name}Request")
        }
        _ => String::new(),
    };
    let action = request.header(WSA, "Action").map(|a| a.text.trim().to_owned());
    if action.as_deref() != Some(expected_action.as_str()) {
        return Reply::fault(
            StatusCode::BAD_REQUEST,
            "Sender",
            "wsa:ActionNotSupported",
            &format!("action {action:?} for {name}; expected {expected_action}"),
        );
    }
    if name != "GetSystemDateAndTime"
        && let Err(why) = shared.check_credentials(request)
    {
        let mut state = lock(&shared.state);
        state.counters.refused += 1;
        state.last_refusal = Some(why);
        return Reply::not_authorized();
    }
    let subscription = path
        .strip_prefix(SUBSCRIPTION_PATH)
        .and_then(|id| id.parse::<u64>().ok());
    if let Some(id) = subscription {
        let to = request.header(WSA, "To").map(|t| t.text.trim().to_owned());
        let expected = shared.subscription_address(path);
        if to.as_deref() != Some(expected.as_str()) {
            return Reply::fault(
                StatusCode::BAD_REQUEST,
                "Sender",
                "wsa:MessageAddressingHeaderRequired",
                &format!("wsa:To {to:?}; expected {expected}"),
            );
        }
        return match name {
            "PullMessages" => pull_messages(shared, id, request).await,
            "Renew" => renew(shared, id, request),
            "Unsubscribe" => unsubscribe(shared, id),
            _ => not_supported(name),
        };
    }
    match (path, name) {
        (DEVICE_PATH, "GetSystemDateAndTime") => system_date_and_time(shared),
        (DEVICE_PATH, "GetCapabilities") => capabilities(shared, request),
        (DEVICE_PATH, "GetServices") => services(shared),
        (EVENTS_PATH, "CreatePullPointSubscription") => create_subscription(shared, request),
        (EVENTS_PATH, "GetEventProperties") => event_properties(),
        (MEDIA_PATH, "GetProfiles") => profiles(shared),
        (MEDIA_PATH, "GetStreamUri") => stream_uri(shared, request),
        (MEDIA2_PATH, "GetProfiles") => profiles2(shared),
        (MEDIA2_PATH, "GetStreamUri") => stream_uri2(shared, request),
        _ => not_supported(name),
    }
}

fn not_supported(name: &str) -> Reply {
    Reply::fault(
        StatusCode::BAD_REQUEST,
        "Receiver",
        "ter:ActionNotSupported",
        &format!("{name} is not supported here"),
    )
}

fn system_date_and_time(shared: &Shared) -> Reply {
    let now = shared.camera_now();
    let body = format!(
        "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType>\
         <tt:DaylightSavings>false</tt:DaylightSavings><tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>\
         <tt:UTCDateTime><tt:Time><tt:Hour>{}</tt:Hour><tt:Minute>{}</tt:Minute><tt:Second>{}</tt:Second></tt:Time>\
         <tt:Date><tt:Year>{}</tt:Year><tt:Month>{}</tt:Month><tt:Day>{}</tt:Day></tt:Date></tt:UTCDateTime>\
         </tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>",
        now.hour(),
        now.minute(),
        now.second(),
        now.format("%Y"),
        now.format("%-m"),
        now.format("%-d"),
    );
    Reply::ok(&format!("{TDS}/GetSystemDateAndTimeResponse"), &body)
}

/// The capabilities of the categories asked for (all without a `tds:Category`), in the order
/// of `tt:Capabilities`: Events, then Media.
fn capabilities(shared: &Shared, request: &Request) -> Reply {
    let refuse = {
        let mut state = lock(&shared.state);
        state.counters.get_capabilities += 1;
        state.no_capabilities
    };
    if refuse {
        return not_supported("GetCapabilities");
    }
    let categories: Vec<String> = request
        .operation()
        .map(|op| {
            request
                .nodes
                .iter()
                .filter(|n| n.parent == Some(op) && n.ns == TDS && n.name == "Category")
                .map(|n| n.text.trim().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let wants = |category: &str| categories.is_empty() || categories.iter().any(|c| c == "All" || c == category);
    let mut capabilities = String::new();
    if wants("Events") {
        capabilities.push_str(&format!(
            "<tt:Events><tt:XAddr>{}</tt:XAddr>\
             <tt:WSSubscriptionPolicySupport>false</tt:WSSubscriptionPolicySupport>\
             <tt:WSPullPointSupport>true</tt:WSPullPointSupport>\
             <tt:WSPausableSubscriptionManagerInterfaceSupport>false</tt:WSPausableSubscriptionManagerInterfaceSupport>\
             </tt:Events>",
            shared.events_address(EVENTS_PATH)
        ));
    }
    if wants("Media") && !lock(&shared.state).media2_only {
        capabilities.push_str(&format!(
            "<tt:Media><tt:XAddr>{}</tt:XAddr><tt:StreamingCapabilities><tt:RTPMulticast>false</tt:RTPMulticast>\
             <tt:RTP_TCP>true</tt:RTP_TCP><tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP></tt:StreamingCapabilities></tt:Media>",
            shared.events_address(MEDIA_PATH)
        ));
    }
    if capabilities.is_empty() {
        return Reply::fault(
            StatusCode::BAD_REQUEST,
            "Receiver",
            "ter:ActionNotSupported/ter:NoSuchService",
            &format!("no capabilities in {categories:?}"),
        );
    }
    let body = format!(
        "<tds:GetCapabilitiesResponse><tds:Capabilities>{capabilities}</tds:Capabilities></tds:GetCapabilitiesResponse>"
    );
    Reply::ok(&format!("{TDS}/GetCapabilitiesResponse"), &body)
}

/// GetEventProperties (Event Service): the topic set, with the cell motion detector's topic.
fn event_properties() -> Reply {
    let body = "<tev:GetEventPropertiesResponse>\
        <tev:TopicNamespaceLocation>http://www.onvif.org/onvif/ver10/topics/topicns.xml</tev:TopicNamespaceLocation>\
        <wsnt:FixedTopicSet>true</wsnt:FixedTopicSet>\
        <wstop:TopicSet xmlns:wstop=\"http://docs.oasis-open.org/wsn/t-1\"><tns1:RuleEngine wstop:topic=\"false\">\
        <CellMotionDetector wstop:topic=\"false\"><Motion wstop:topic=\"true\">\
        <tt:MessageDescription IsProperty=\"true\"><tt:Source>\
        <tt:SimpleItemDescription Name=\"VideoSourceConfigurationToken\" Type=\"tt:ReferenceToken\"/>\
        <tt:SimpleItemDescription Name=\"Rule\" Type=\"xs:string\"/></tt:Source>\
        <tt:Data><tt:SimpleItemDescription Name=\"IsMotion\" Type=\"xs:boolean\"/></tt:Data>\
        </tt:MessageDescription></Motion></CellMotionDetector></tns1:RuleEngine></wstop:TopicSet>\
        <wsnt:TopicExpressionDialect>http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet</wsnt:TopicExpressionDialect>\
        <tev:MessageContentFilterDialect>http://www.onvif.org/ver10/tev/messageContentFilter/ItemFilter</tev:MessageContentFilterDialect>\
        <tev:MessageContentSchemaLocation>http://www.onvif.org/onvif/ver10/schema/onvif.xsd</tev:MessageContentSchemaLocation>\
        </tev:GetEventPropertiesResponse>";
    Reply::ok(&format!("{TEV}/EventPortType/GetEventPropertiesResponse"), body)
}

/// GetProfiles (Media ver10): each profile with its video encoder configuration.
fn profiles(shared: &Shared) -> Reply {
    let listed = listed_profiles(shared, PROFILE_VER10);
    let body = format!("<trt:GetProfilesResponse>{listed}</trt:GetProfilesResponse>");
    Reply::ok(&format!("{TRT}/GetProfilesResponse"), &body)
}

/// GetProfiles (Media2): each profile with its `tr2:VideoEncoder` configuration.
fn profiles2(shared: &Shared) -> Reply {
    let listed = listed_profiles(shared, PROFILE_VER20);
    let body = format!("<tr2:GetProfilesResponse>{listed}</tr2:GetProfilesResponse>");
    Reply::ok(&format!("{TR2}/GetProfilesResponse"), &body)
}

/// A Media (ver10) `trt:Profiles`; `{name}`s are filled in by [`listed_profiles`].
const PROFILE_VER10: &str = "<trt:Profiles token=\"{token}\" fixed=\"true\"><tt:Name>{name}</tt:Name>\
                 <tt:VideoSourceConfiguration token=\"VideoSourceToken\"><tt:Name>VideoSourceConfig</tt:Name>\
                 <tt:UseCount>{count}</tt:UseCount><tt:SourceToken>VideoSource_1</tt:SourceToken>\
                 <tt:Bounds x=\"0\" y=\"0\" width=\"1920\" height=\"1080\"/></tt:VideoSourceConfiguration>\
                 <tt:VideoEncoderConfiguration token=\"VideoEncoderToken_{n}\"><tt:Name>VideoEncoder_{n}</tt:Name>\
                 <tt:UseCount>1</tt:UseCount><tt:Encoding>{encoding}</tt:Encoding><tt:Resolution><tt:Width>{width}</tt:Width>\
                 <tt:Height>{height}</tt:Height></tt:Resolution><tt:Quality>5</tt:Quality><tt:RateControl>\
                 <tt:FrameRateLimit>{fps}</tt:FrameRateLimit><tt:EncodingInterval>1</tt:EncodingInterval>\
                 <tt:BitrateLimit>{bitrate}</tt:BitrateLimit></tt:RateControl><tt:H264><tt:GovLength>{gov}</tt:GovLength>\
                 <tt:H264Profile>Main</tt:H264Profile></tt:H264><tt:Multicast><tt:Address><tt:Type>IPv4</tt:Type>\
                 <tt:IPv4Address>0.0.0.0</tt:IPv4Address></tt:Address><tt:Port>0</tt:Port><tt:TTL>5</tt:TTL>\
                 <tt:AutoStart>false</tt:AutoStart></tt:Multicast><tt:SessionTimeout>PT60S</tt:SessionTimeout>\
                 </tt:VideoEncoderConfiguration></trt:Profiles>";

/// A Media2 `tr2:Profiles`.
const PROFILE_VER20: &str = "<tr2:Profiles token=\"{token}\" fixed=\"true\"><tr2:Name>{name}</tr2:Name><tr2:Configurations>\
                 <tr2:VideoEncoder token=\"VideoEncoder_{n}\" GovLength=\"{gov}\" Profile=\"Main\">\
                 <tt:Name>VideoEncoder_{n}</tt:Name><tt:UseCount>1</tt:UseCount><tt:Encoding>{encoding}</tt:Encoding>\
                 <tt:Resolution><tt:Width>{width}</tt:Width><tt:Height>{height}</tt:Height></tt:Resolution>\
                 <tt:RateControl ConstantBitRate=\"false\"><tt:FrameRateLimit>{fps}</tt:FrameRateLimit>\
                 <tt:BitrateLimit>{bitrate}</tt:BitrateLimit></tt:RateControl><tt:Quality>5</tt:Quality>\
                 </tr2:VideoEncoder></tr2:Configurations></tr2:Profiles>";

/// Every profile written by `template`, counting the GetProfiles that asked.
fn listed_profiles(shared: &Shared, template: &str) -> String {
    let profiles = {
        let mut state = lock(&shared.state);
        state.counters.get_profiles += 1;
        state.profiles.clone()
    };
    let escape = |text: &str| quick_xml::escape::escape(text).into_owned();
    profiles
        .iter()
        .enumerate()
        .map(|(i, p)| {
            [
                ("{token}", escape(&p.token)),
                ("{name}", escape(&p.name)),
                ("{encoding}", escape(&p.encoding)),
                ("{count}", profiles.len().to_string()),
                ("{n}", (i + 1).to_string()),
                ("{width}", p.width.to_string()),
                ("{height}", p.height.to_string()),
                ("{fps}", p.fps.to_string()),
                ("{bitrate}", p.bitrate_kbps.to_string()),
                ("{gov}", (p.fps * 2).to_string()),
            ]
            .iter()
            .fold(template.to_owned(), |text, (key, value)| text.replace(key, value))
        })
        .collect()
}

/// The URI of the profile `token`, or the fault a camera answers for an unknown one.
fn uri_of(shared: &Shared, token: &str) -> Result<String, Reply> {
    let uri = lock(&shared.state)
        .profiles
        .iter()
        .find(|p| p.token == token)
        .map(|p| p.uri.clone());
    uri.ok_or_else(|| {
        Reply::fault(
            StatusCode::BAD_REQUEST,
            "Sender",
            "ter:InvalidArgVal/ter:NoProfile",
            &format!("no profile {token:?}"),
        )
    })
}

fn invalid_setup(detail: &str) -> Reply {
    Reply::fault(
        StatusCode::BAD_REQUEST,
        "Sender",
        "ter:InvalidArgVal/ter:InvalidStreamSetup",
        detail,
    )
}

/// GetStreamUri (Media2): `RtspUnicast` only.
fn stream_uri2(shared: &Shared, request: &Request) -> Reply {
    lock(&shared.state).counters.get_stream_uris += 1;
    let protocol = request.argument(TR2, "Protocol").unwrap_or_default();
    if protocol != "RtspUnicast" {
        return invalid_setup(&format!("protocol {protocol:?} is not offered"));
    }
    let token = request.argument(TR2, "ProfileToken").unwrap_or_default();
    let uri = match uri_of(shared, &token) {
        Ok(uri) => uri,
        Err(fault) => return fault,
    };
    let body = format!(
        "<tr2:GetStreamUriResponse><tr2:Uri>{}</tr2:Uri></tr2:GetStreamUriResponse>",
        quick_xml::escape::escape(uri.as_str())
    );
    Reply::ok(&format!("{TR2}/GetStreamUriResponse"), &body)
}

/// GetStreamUri (Media ver10): RTP-Unicast over RTSP only, as the double's streams are.
fn stream_uri(shared: &Shared, request: &Request) -> Reply {
    lock(&shared.state).counters.get_stream_uris += 1;
    let setup = request
        .operation()
        .and_then(|op| request.index_of(TRT, "StreamSetup", Some(op)));
    let stream = setup
        .and_then(|s| request.child(s, TT, "Stream"))
        .map(|n| n.text.trim());
    let protocol = setup
        .and_then(|s| request.index_of(TT, "Transport", Some(s)))
        .and_then(|t| request.child(t, TT, "Protocol"))
        .map(|n| n.text.trim());
    if stream != Some("RTP-Unicast") || !matches!(protocol, Some("RTSP" | "UDP" | "TCP")) {
        return invalid_setup(&format!("stream {stream:?} over {protocol:?} is not offered"));
    }
    let token = request.argument(TRT, "ProfileToken").unwrap_or_default();
    let uri = match uri_of(shared, &token) {
        Ok(uri) => uri,
        Err(fault) => return fault,
    };
    let body = format!(
        "<trt:GetStreamUriResponse><trt:MediaUri><tt:Uri>{}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>\
         <tt:InvalidAfterReboot>true</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri>\
         </trt:GetStreamUriResponse>",
        quick_xml::escape::escape(uri.as_str())
    );
    Reply::ok(&format!("{TRT}/GetStreamUriResponse"), &body)
}

fn services(shared: &Shared) -> Reply {
    lock(&shared.state).counters.get_services += 1;
    let service = |namespace: &str, path: &str| {
        format!(
            "<tds:Service><tds:Namespace>{namespace}</tds:Namespace><tds:XAddr>{}</tds:XAddr>\
             <tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version></tds:Service>",
            shared.events_address(path)
        )
    };
    let body = format!(
        "<tds:GetServicesResponse>{}{}{}</tds:GetServicesResponse>",
        service(TDS, DEVICE_PATH),
        service(TEV, EVENTS_PATH),
        if lock(&shared.state).media2_only {
            service(TR2, MEDIA2_PATH)
        } else {
            service(TRT, MEDIA_PATH)
        }
    );
    Reply::ok(&format!("{TDS}/GetServicesResponse"), &body)
}

fn create_subscription(shared: &Shared, request: &Request) -> Reply {
    let now = shared.camera_now();
    let termination = termination(shared, request.argument(TEV, "InitialTerminationTime").as_deref());
    let id = {
        let mut state = lock(&shared.state);
        state.counters.subscriptions += 1;
        state.next_subscription += 1;
        let id = state.next_subscription;
        // A new pull point first tells each property's current value.
        let initialized = motion_message("Initialized", state.motion, now);
        state.subscriptions.insert(
            id,
            Subscription {
                termination,
                queue: VecDeque::from([initialized]),
            },
        );
        id
    };
    let body = format!(
        "<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference><wsa:Address>{}</wsa:Address>\
         </tev:SubscriptionReference><wsnt:CurrentTime>{}</wsnt:CurrentTime>\
         <wsnt:TerminationTime>{}</wsnt:TerminationTime></tev:CreatePullPointSubscriptionResponse>",
        shared.subscription_address(&format!("{SUBSCRIPTION_PATH}{id}")),
        time(now),
        time(termination)
    );
    Reply::ok(
        &format!("{TEV}/EventPortType/CreatePullPointSubscriptionResponse"),
        &body,
    )
}

fn unknown_subscription() -> Reply {
    Reply::fault(
        StatusCode::BAD_REQUEST,
        "Sender",
        "wsrf-rw:ResourceUnknownFault",
        "the subscription has expired or does not exist",
    )
}

/// Holds the request until an event is queued, the Timeout passes or the server stops.
async fn pull_messages(shared: &Arc<Shared>, id: u64, request: &Request) -> Reply {
    lock(&shared.state).counters.pulls += 1;
    let timeout = request
        .argument(TEV, "Timeout")
        .and_then(|t| parse_duration(&t))
        .unwrap_or(Duration::from_secs(10));
    let limit = request
        .argument(TEV, "MessageLimit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(1);
    let deadline = tokio::time::Instant::now() + timeout;
    let kill = lock(&shared.kill).clone();
    let mut changed = shared.changed.subscribe();
    let (messages, termination) = loop {
        {
            let now = shared.camera_now();
            let mut state = lock(&shared.state);
            let live = state.subscriptions.get(&id).is_some_and(|s| s.termination > now);
            if !live {
                state.subscriptions.remove(&id);
                return unknown_subscription();
            }
            let Some(subscription) = state.subscriptions.get_mut(&id) else {
                return unknown_subscription();
            };
            let timed_out = tokio::time::Instant::now() >= deadline;
            if !subscription.queue.is_empty() || timed_out {
                let take = subscription.queue.len().min(limit.max(1));
                let messages: Vec<String> = subscription.queue.drain(..take).collect();
                let termination = subscription.termination;
                state.counters.delivered += messages.len();
                break (messages, termination);
            }
        }
        tokio::select! {
            _ = changed.changed() => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = kill.cancelled() => {
                return Reply::fault(StatusCode::SERVICE_UNAVAILABLE, "Receiver", "ter:Action", "shutting down");
            }
        }
    };
    let body = format!(
        "<tev:PullMessagesResponse><tev:CurrentTime>{}</tev:CurrentTime><tev:TerminationTime>{}</tev:TerminationTime>\
         {}</tev:PullMessagesResponse>",
        time(shared.camera_now()),
        time(termination),
        messages.concat()
    );
    Reply::ok(&format!("{TEV}/PullPointSubscription/PullMessagesResponse"), &body)
}

fn renew(shared: &Shared, id: u64, request: &Request) -> Reply {
    let now = shared.camera_now();
    let termination = termination(shared, request.argument(WSNT, "TerminationTime").as_deref());
    {
        let mut state = lock(&shared.state);
        match state.subscriptions.get_mut(&id) {
            Some(subscription) if subscription.termination > now => subscription.termination = termination,
            _ => return unknown_subscription(),
        }
        state.counters.renews += 1;
    }
    let body = format!(
        "<wsnt:RenewResponse><wsnt:TerminationTime>{}</wsnt:TerminationTime><wsnt:CurrentTime>{}</wsnt:CurrentTime>\
         </wsnt:RenewResponse>",
        time(termination),
        time(now)
    );
    Reply::ok(
        "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/RenewResponse",
        &body,
    )
}

fn unsubscribe(shared: &Shared, id: u64) -> Reply {
    {
        let mut state = lock(&shared.state);
        if state.subscriptions.remove(&id).is_none() {
            return unknown_subscription();
        }
        state.counters.unsubscribes += 1;
    }
    shared.changed.send_modify(|n| *n += 1);
    Reply::ok(
        "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/UnsubscribeResponse",
        "<wsnt:UnsubscribeResponse/>",
    )
}
