//! SOAP 1.2 over HTTP to a camera: request envelopes with WS-Addressing headers, the WS-Security
//! UsernameToken (PasswordDigest) on the camera's clock, the HTTP transport, and reading a reply
//! into its Body's element or the error it stands for (SOAP fault, HTTP error, not a SOAP
//! envelope, transport failure).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::StatusCode;
use sha1::{Digest, Sha1};

use super::xml::{Element, XmlError, excerpt, parse_xml};
use super::{OnvifError, Operation, ns};
use crate::config::Secret;

/// Replies larger than this are refused: real ones are a few kilobytes.
const MAX_REPLY_BYTES: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a reply is not a SOAP 1.2 envelope this intake can read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum EnvelopeError {
    #[error("not UTF-8 text ({0})")]
    NotUtf8(String),
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("expected a SOAP 1.2 envelope, got {what}")]
    NotSoap12 { what: String },
    #[error("the SOAP envelope has no Body")]
    NoBody,
}

/// The camera's ONVIF user. The password leaves only inside digests, and is never shown.
pub(super) struct Credentials {
    pub(super) username: String,
    pub(super) password: Secret,
}

/// The camera's clock against ours: WS-Security `Created` times must be on the camera's clock,
/// which cameras check against a small window.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CameraClock {
    pub(super) offset: TimeDelta,
}

impl CameraClock {
    pub(super) fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

/// The HTTP client and the credentials every authenticated call carries.
pub(super) struct Transport {
    client: reqwest::Client,
    credentials: Option<Credentials>,
}

impl Transport {
    pub(super) fn new(credentials: Option<Credentials>) -> Result<Self, OnvifError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Cameras are on the site network; a proxy from the environment would not reach them.
            .no_proxy()
            // A redirect would re-send the request, WS-Security header and all, wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("alarm-verifier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OnvifError::Client(root_cause(&e)))?;
        Ok(Self { client, credentials })
    }

    /// One SOAP request and its reply; a SOAP fault, an HTTP error or a reply that is not a SOAP
    /// envelope is an error.
    pub(super) async fn call(
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
        if status.is_redirection() {
            return Err(redirected(op, &response));
        }
        let bytes = read_capped(op, url, timeout, response).await?;
        interpret_reply(op, status, bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

fn envelope(op: Operation, to: &str, security: &str, headers: &str, body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<s:Envelope xmlns:s="{soap}" xmlns:wsa="{wsa}" xmlns:tds="{tds}" xmlns:tev="{tev}" xmlns:wsnt="{wsnt}" xmlns:trt="{trt}" xmlns:tr2="{tr2}" xmlns:tt="{tt}">"#,
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
        trt = ns::TRT,
        tr2 = ns::TR2,
        tt = ns::TT,
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

// ---------------------------------------------------------------------------------------------
// Transport

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

fn redirected(op: Operation, response: &reqwest::Response) -> OnvifError {
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|l| excerpt(&String::from_utf8_lossy(l.as_bytes())))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "nowhere given".to_owned());
    OnvifError::Redirected {
        op,
        status: response.status().to_string(),
        location,
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

// ---------------------------------------------------------------------------------------------
// Replies

/// A SOAP reply: its text, and the element in its Body.
pub(super) struct Reply {
    pub(super) text: String,
    pub(super) payload: Element,
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
                detail: EnvelopeError::NotUtf8(e.to_string()),
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

pub(super) enum Envelope {
    /// The first element in the Body, if any.
    Body(Option<Element>),
    Fault(Fault),
}

/// A SOAP 1.2 fault: `env:Code` (with its `env:Subcode`s) and `env:Reason`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Fault {
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

pub(super) fn parse_envelope(text: &str) -> Result<Envelope, EnvelopeError> {
    let root = parse_xml(text)?;
    if !root.is(ns::SOAP, "Envelope") {
        let what = if root.name == "Envelope" {
            format!("a SOAP envelope of namespace {:?}, not SOAP 1.2", root.ns)
        } else {
            format!("<{}>", root.name)
        };
        return Err(EnvelopeError::NotSoap12 { what });
    }
    let mut root = root;
    let Some(body) = root.take_child(ns::SOAP, "Body") else {
        return Err(EnvelopeError::NoBody);
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

#[cfg(test)]
mod tests {
    use super::super::messages::tests::PULL_RESPONSE;
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
    }
}
