//! NVR alarm e-mails: a small receiving SMTP server (the protocol by `mailin`, the message by
//! `mail-parser`). It relays nothing: every mail it takes ends here, as an alarm.
//!
//! A mail maps to cameras by its recipients' local parts (`gate@…` → camera `gate`), or else to the
//! camera whose `email_match` text is in the subject or the text body (the longest such text wins,
//! so "Camera 12" beats "Camera 1"). The first JPEG attachment is kept with the alarm as the NVR's
//! own picture. A mail that matches no camera gets 550, one over `smtp.max_message_bytes` gets 552;
//! both are reported on `{prefix}/errors`.
//!
//! Limits on what a client may do: 100 recipients per message (the 101st gets 452, RFC 5321
//! 4.5.3.1.8), `smtp.max_session_s` per session and [`IDLE_TIMEOUT`] per command (then 421 and
//! the connection closes), [`MAX_LINE`] bytes per line, [`MAX_CONNECTIONS`] sessions at once and
//! [`MAX_ERRORS`] bad commands per session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use mail_parser::{MessageParser, MimeHeaders};
use mailin::{Action, AuthMechanism, Handler, Response, SessionBuilder};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::alarm::Alarm;
use super::{AlarmSink, Arrival, Refused};
use crate::config::{CameraConfig, Secret, SmtpConfig};

/// RFC 5321 allows 1000; mailers that ignore it still stay far below this.
const MAX_LINE: u64 = 64 * 1024;
/// A client silent this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_CONNECTIONS: usize = 32;
/// A client that keeps sending bad commands is not an NVR; it is disconnected.
const MAX_ERRORS: u32 = 20;
/// RFC 5321 4.5.3.1.8: a server must take at least 100 recipients, and may refuse more with 452.
const MAX_RECIPIENTS: usize = 100;
/// Time to write the closing reply once the session's time is up, for a client that reads nothing.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How much of the text body is kept with the alarm's record.
const KEPT_TEXT: usize = 4096;

/// The SMTP intake, ready to serve.
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    hostname: String,
    login: Option<(String, Secret)>,
    max_message_bytes: usize,
    max_session: Duration,
    cameras: Vec<MailCamera>,
    sink: Arc<dyn AlarmSink>,
    connections: Arc<Semaphore>,
}

struct MailCamera {
    id: String,
    email_match: Option<String>,
}

impl Server {
    pub fn new(
        config: &SmtpConfig,
        password: Option<Secret>,
        cameras: &[CameraConfig],
        sink: Arc<dyn AlarmSink>,
    ) -> Self {
        let login = (!config.username.is_empty()).then(|| (config.username.clone(), password.unwrap_or_default()));
        Self {
            inner: Arc::new(Inner {
                hostname: config.hostname.clone(),
                login,
                max_message_bytes: config.max_message_bytes,
                // The config check keeps it finite and positive; the fallback is the default.
                max_session: Duration::try_from_secs_f64(config.max_session_s).unwrap_or(Duration::from_secs(300)),
                cameras: cameras
                    .iter()
                    .map(|c| MailCamera {
                        id: c.id.clone(),
                        email_match: c.email_match.clone(),
                    })
                    .collect(),
                sink,
                connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            }),
        }
    }

    /// Accepts connections until `stop` is cancelled; sessions still open then are closed with 421.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "SMTP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let inner = self.inner.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(_slot) = inner.connections.clone().try_acquire_owned() else {
                    let mut stream = stream;
                    let _ = stream
                        .write_all(b"421 4.3.2 too many connections, try again later\r\n")
                        .await;
                    return;
                };
                // The reads inside stop at the session's end; this also bounds a client that
                // stops reading our replies.
                let limit = inner.max_session + CLOSE_GRACE;
                match tokio::time::timeout(limit, converse(inner, stream, peer, stop)).await {
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "SMTP session ended"),
                    Err(_) => tracing::info!(%peer, "SMTP session cut: its client stopped reading"),
                    Ok(Ok(())) => {}
                }
            });
        }
    }
}

/// One SMTP session, line by line through mailin's state machine.
async fn converse(
    inner: Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = SessionBuilder::new(inner.hostname.clone());
    if inner.login.is_some() {
        // No STARTTLS here: the NVR and this box share the site's LAN.
        builder
            .enable_auth(AuthMechanism::Plain)
            .enable_auth(AuthMechanism::Login)
            .insecure_enable_plaintext_auth();
    }
    let failed_data = Arc::new(AtomicBool::new(false));
    let mut session = builder.build(peer.ip(), Mail::new(inner.clone(), peer.ip(), failed_data.clone()));
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    tracing::trace!(%peer, "SMTP session opened");
    let ends_at = tokio::time::Instant::now() + inner.max_session;
    write_response(&mut writer, &session.greeting()).await?;
    let mut errors = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE);
        let read = tokio::select! {
            _ = stop.cancelled() => {
                writer.write_all(b"421 4.3.2 service shutting down\r\n").await?;
                return Ok(());
            }
            () = tokio::time::sleep_until(ends_at) => {
                tracing::info!(%peer, limit_s = inner.max_session.as_secs_f64(), "SMTP session too long; closed");
                writer
                    .write_all(b"421 4.4.2 session too long (smtp.max_session_s), closing\r\n")
                    .await?;
                return Ok(());
            }
            read = tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line)) => read,
        };
        match read {
            Err(_) => {
                writer.write_all(b"421 4.4.2 idle for too long, closing\r\n").await?;
                return Ok(());
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) if !line.ends_with(b"\n") => {
                if line.len() as u64 >= MAX_LINE {
                    writer.write_all(b"500 5.5.2 line too long, closing\r\n").await?;
                }
                return Ok(());
            }
            Ok(Ok(_)) => {}
        }
        // Some mailers end lines with a bare LF; the state machine expects CRLF.
        if !line.ends_with(b"\r\n") {
            line.pop();
            line.extend_from_slice(b"\r\n");
        }
        let response = session.process(&line);
        if failed_data.swap(false, Ordering::SeqCst) {
            // mailin stays in its DATA state after a refused message; a second end of data, which
            // the handler now answers OK, brings it back to where the client may send MAIL again.
            let _ = session.process(b".\r\n");
        }
        if response.is_error {
            errors += 1;
            if errors >= MAX_ERRORS {
                write_response(&mut writer, &response).await?;
                writer.write_all(b"421 4.7.0 too many errors, closing\r\n").await?;
                return Ok(());
            }
        }
        match response.action {
            Action::NoReply => {}
            Action::Close => {
                write_response(&mut writer, &response).await?;
                return Ok(());
            }
            Action::Reply | Action::UpgradeTls => write_response(&mut writer, &response).await?,
        }
    }
}

async fn write_response(writer: &mut tokio::net::tcp::OwnedWriteHalf, response: &Response) -> std::io::Result<()> {
    let bytes = response.buffer()?;
    writer.write_all(&bytes).await?;
    writer.flush().await
}

/// One session's mail transaction, as mailin's handler.
struct Mail {
    inner: Arc<Inner>,
    peer: IpAddr,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
    too_large: bool,
    /// Set when a message was refused at its end; see `converse`.
    failed_data: Arc<AtomicBool>,
    resetting: bool,
}

impl Mail {
    fn new(inner: Arc<Inner>, peer: IpAddr, failed_data: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            peer,
            from: String::new(),
            to: Vec::new(),
            data: Vec::new(),
            too_large: false,
            failed_data,
            resetting: false,
        }
    }

    /// The reply at the end of a message; a refusal is flagged for `converse`.
    fn end_of_message(&mut self) -> Response {
        let response = if self.too_large {
            let error = format!(
                "mail over the limit of {} bytes (smtp.max_message_bytes)",
                self.inner.max_message_bytes
            );
            self.inner
                .sink
                .report(&format!("smtp from <{}>", self.from), &error, b"");
            Response::custom(552, format!("5.3.4 {error}"))
        } else {
            self.deliver()
        };
        if response.is_error {
            self.resetting = true;
            self.failed_data.store(true, Ordering::SeqCst);
        }
        response
    }

    fn check_login(&self, username: &str, password: &str) -> Response {
        let Some((user, secret)) = &self.inner.login else {
            return mailin::response::INVALID_CREDENTIALS;
        };
        // An empty secret matches nothing: the config check refuses it, and this holds regardless.
        if username == user && !secret.is_empty() && secret.matches(password) {
            mailin::response::AUTH_OK
        } else {
            tracing::warn!(peer = %self.peer, username, "SMTP login refused");
            mailin::response::INVALID_CREDENTIALS
        }
    }

    /// Turns the received mail into alarms on the cameras it names.
    fn deliver(&mut self) -> Response {
        let origin = format!("smtp from <{}>", self.from);
        let data = std::mem::take(&mut self.data);
        let Some(message) = MessageParser::default().parse(&data) else {
            let error = "the mail cannot be parsed as an RFC 5322 message";
            self.inner.sink.report(&origin, error, &data);
            return Response::custom(554, format!("5.6.0 {error}"));
        };
        let subject = message.subject().unwrap_or_default().to_owned();
        let text = message.body_text(0).map(|t| t.into_owned()).unwrap_or_default();
        let snapshot = message
            .attachments()
            .find(|part| {
                is_jpeg(
                    part.content_type().map(|c| (c.ctype(), c.subtype())),
                    part.attachment_name(),
                )
            })
            .map(|part| part.contents().to_vec());
        let raw = serde_json::to_vec(&serde_json::json!({
            "from": self.from,
            "to": self.to,
            "subject": subject,
            "text": cut(&text, KEPT_TEXT),
            "snapshot_bytes": snapshot.as_ref().map(Vec::len),
        }))
        .unwrap_or_default();
        let cameras = self.cameras_named(&subject, &text);
        if cameras.is_empty() {
            let error = "no camera matches this mail: address it to <camera id>@… or set the camera's email_match \
                         to a text of its subject or body";
            self.inner.sink.report(&origin, error, &raw);
            return Response::custom(550, format!("5.1.1 {error}"));
        }
        let mut accepted = Vec::new();
        for camera in cameras {
            let arrival = Arrival {
                alarm: Alarm::device_event(&camera, Utc::now(), format!("smtp:{}", self.from)),
                origin: origin.clone(),
                raw: raw.clone(),
                snapshot: snapshot.clone(),
            };
            match self.inner.sink.accept(arrival) {
                Ok(a) => accepted.push(format!("{camera}: {}", a.alarm_id)),
                Err(Refused::ShuttingDown) => {
                    return Response::custom(421, "4.3.2 service shutting down, send it again".into());
                }
                // The sender tries again later; alarms of other cameras it named come again too.
                Err(Refused::Unstored(_)) => {
                    return Response::custom(451, "4.3.0 the alarm could not be stored, send it again".into());
                }
                Err(refused) => tracing::warn!(camera, error = %refused, "mail alarm refused"),
            }
        }
        Response::custom(250, format!("2.0.0 alarm accepted ({})", accepted.join(", ")))
    }

    /// Cameras named by the recipients' local parts, or else the one whose `email_match` is found.
    fn cameras_named(&self, subject: &str, text: &str) -> Vec<String> {
        let mut by_recipient: Vec<String> = Vec::new();
        for to in &self.to {
            let local = to.rsplit_once('@').map_or(to.as_str(), |(l, _)| l);
            if let Some(c) = self.inner.cameras.iter().find(|c| c.id.eq_ignore_ascii_case(local))
                && !by_recipient.contains(&c.id)
            {
                by_recipient.push(c.id.clone());
            }
        }
        if !by_recipient.is_empty() {
            return by_recipient;
        }
        let (subject, text) = (subject.to_lowercase(), text.to_lowercase());
        self.inner
            .cameras
            .iter()
            .filter_map(|c| Some((c, c.email_match.as_deref()?.to_lowercase())))
            .filter(|(_, m)| subject.contains(m.as_str()) || text.contains(m.as_str()))
            .max_by_key(|(_, m)| m.len())
            .map(|(c, _)| vec![c.id.clone()])
            .unwrap_or_default()
    }
}

impl Handler for Mail {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, from: &str) -> Response {
        self.from = from.to_owned();
        self.to.clear();
        self.data.clear();
        self.too_large = false;
        mailin::response::OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        // Source routes and %-hacks ask a server to pass the mail on; this one passes nothing on.
        if to.starts_with('@') || to.contains(['%', '!']) || to.matches('@').count() > 1 {
            return Response::custom(
                550,
                "5.7.1 relaying is not allowed: this server takes alarm mails for its cameras only".into(),
            );
        }
        if self.to.len() >= MAX_RECIPIENTS {
            return Response::custom(
                452,
                format!("4.5.3 too many recipients: at most {MAX_RECIPIENTS} per message"),
            );
        }
        self.to.push(to.to_owned());
        mailin::response::OK
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, _to: &[String]) -> Response {
        self.data.clear();
        self.too_large = false;
        mailin::response::START_DATA
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // Past the limit the rest is read and dropped, so the client gets a clean 552 at the end.
        if self.data.len() + buf.len() > self.inner.max_message_bytes {
            self.too_large = true;
            self.data.clear();
        } else if !self.too_large {
            self.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if std::mem::take(&mut self.resetting) {
            return mailin::response::OK;
        }
        self.end_of_message()
    }

    fn auth_plain(&mut self, _authorization_id: &str, authentication_id: &str, password: &str) -> Response {
        self.check_login(authentication_id, password)
    }

    fn auth_login(&mut self, username: &str, password: &str) -> Response {
        self.check_login(username, password)
    }
}

fn is_jpeg(content_type: Option<(&str, Option<&str>)>, name: Option<&str>) -> bool {
    let by_type = content_type.is_some_and(|(t, s)| {
        t.eq_ignore_ascii_case("image")
            && s.is_some_and(|s| s.eq_ignore_ascii_case("jpeg") || s.eq_ignore_ascii_case("jpg"))
    });
    let by_name = name.is_some_and(|n| {
        let n = n.to_ascii_lowercase();
        n.ends_with(".jpg") || n.ends_with(".jpeg")
    });
    by_type || by_name
}

fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
