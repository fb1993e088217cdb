//! Verdicts by e-mail (`[email_out]`), for the platforms that take alarms as mails with pictures
//! (Immix, SureView): one mail per verdict, with `key: value` lines a decoder can read, the link
//! to the record, and the evidence JPEG attached. Each mail is composed and stored before it is
//! sent, and sent until the server takes it; a mail the server refuses for good (5xx) three times
//! is parked and reported on `errors`.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::Notify;

use crate::analysis::verdict::{Cause, VerdictDocument};
use crate::config::{Config, ConfigError, EmailOutConfig, EmailTls, Secret, resolve_secret};
use crate::intake::AlarmSink;
use crate::store::Store;
use crate::store::mail::QueuedMail;
use crate::support::Backoff;

/// Refusals for good before a mail is parked.
const PERMANENT_TRIES: u32 = 3;
/// Waits between attempts while the server cannot be reached: from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// One SMTP conversation's time limit.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot compose the mail: {0}")]
    Compose(String),
    #[error("cannot store the mail: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Where verdict mails are queued; cheap to clone.
#[derive(Clone)]
pub struct MailOut {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    config: EmailOutConfig,
    password: Option<Secret>,
    from: Mailbox,
    to: Vec<Mailbox>,
    public_base: String,
    wake: Notify,
}

impl MailOut {
    /// The queue when `[email_out] host` is set.
    pub fn new(config: &Config, store: Arc<Store>) -> Result<Option<Self>, ConfigError> {
        let mail = &config.email_out;
        if !mail.enabled() {
            return Ok(None);
        }
        let invalid = |key: &str, expected: String| ConfigError::Invalid {
            path: "config".into(),
            key: key.into(),
            expected,
        };
        let password = resolve_secret(
            &mail.password,
            &mail.password_env,
            "email_out.password_env",
            "the mail password",
        )?;
        // Checked by Config::validate already; parsed again here to keep the typed addresses.
        let from: Mailbox = mail
            .from
            .parse()
            .map_err(|e| invalid("email_out.from", format!("an e-mail address: {e}")))?;
        let to = mail
            .to
            .iter()
            .map(|t| t.parse::<Mailbox>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("email_out.to", format!("e-mail addresses: {e}")))?;
        store
            .mail_prepare()
            .map_err(|e| invalid("store.path", format!("a store that can hold the mail queue: {e}")))?;
        Ok(Some(Self {
            inner: Arc::new(Inner {
                store,
                config: mail.clone(),
                password,
                from,
                to,
                public_base: config.http.public_base(),
                wake: Notify::new(),
            }),
        }))
    }

    /// Composes and stores the verdict's mail, if its kind is mailed; the sender takes it from the
    /// store.
    pub fn enqueue(&self, doc: &VerdictDocument, evidence: Option<&[u8]>) -> Result<(), MailError> {
        let inner = &self.inner;
        if !inner.config.verdicts.iter().any(|v| v == doc.verdict.as_str()) {
            return Ok(());
        }
        let message = compose(inner, doc, evidence)?;
        let recipients: Vec<String> = inner.to.iter().map(|m| m.email.to_string()).collect();
        inner.store.mail_enqueue(&doc.record_id, &recipients, &message)?;
        inner.wake.notify_one();
        Ok(())
    }

    /// Mails stored and not yet taken by the server.
    pub fn pending(&self) -> u64 {
        self.inner.store.mail_pending().unwrap_or(0)
    }

    /// Sends the queue, forever; `sink` reports parked mails on `errors`.
    pub async fn deliver(self, sink: Arc<dyn AlarmSink>) {
        let transport = match self.transport() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, host = %self.inner.config.host, "e-mail out cannot start; verdict mails stay queued");
                return;
            }
        };
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            let next = match self.inner.store.mail_next() {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "mail queue unreadable");
                    tokio::time::sleep(RETRY_MAX).await;
                    continue;
                }
            };
            let Some(mail) = next else {
                self.inner.wake.notified().await;
                continue;
            };
            if self.send(&transport, &mail, sink.as_ref()).await {
                backoff.reset();
            } else {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }

    /// One attempt at `mail`; false when it should be tried again later.
    async fn send(
        &self,
        transport: &AsyncSmtpTransport<Tokio1Executor>,
        mail: &QueuedMail,
        sink: &dyn AlarmSink,
    ) -> bool {
        let store = &self.inner.store;
        let envelope = match envelope(&self.inner.from, &mail.recipients) {
            Ok(e) => e,
            Err(e) => {
                let _ = store.mail_attempted(mail.id, false, Some(&e));
                sink.report("email_out", &e, mail.record_id.as_bytes());
                return true;
            }
        };
        match transport.send_raw(&envelope, &mail.message).await {
            Ok(_) => {
                tracing::info!(record_id = %mail.record_id, host = %self.inner.config.host, "verdict mail taken by the server");
                if let Err(e) = store.mail_attempted(mail.id, true, None) {
                    tracing::error!(error = %e, "mail delivery not recorded; it will be sent again");
                }
                true
            }
            Err(e) if e.is_permanent() && mail.attempts + 1 >= PERMANENT_TRIES => {
                let reason = format!(
                    "the mail server {} refused the verdict mail for good: {e}; parked",
                    self.inner.config.host
                );
                tracing::error!(record_id = %mail.record_id, "{reason}");
                let _ = store.mail_attempted(mail.id, false, Some(&reason));
                sink.report("email_out", &reason, mail.record_id.as_bytes());
                true
            }
            Err(e) => {
                tracing::warn!(record_id = %mail.record_id, host = %self.inner.config.host, error = %e, "verdict mail not sent; trying again");
                let _ = store.mail_attempted(mail.id, false, None);
                false
            }
        }
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, lettre::transport::smtp::Error> {
        let config = &self.inner.config;
        let host = config.host.trim();
        let tls = match config.tls {
            EmailTls::None => Tls::None,
            EmailTls::Starttls => Tls::Required(TlsParameters::new(host.to_owned())?),
            EmailTls::Tls => Tls::Wrapper(TlsParameters::new(host.to_owned())?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(config.port())
            .tls(tls)
            .timeout(Some(SEND_TIMEOUT));
        if let Some(password) = &self.inner.password {
            builder = builder.credentials(Credentials::new(config.username.clone(), password.expose().to_owned()));
        }
        Ok(builder.build())
    }
}

fn envelope(from: &Mailbox, recipients: &[String]) -> Result<lettre::address::Envelope, String> {
    let to = recipients
        .iter()
        .map(|r| r.parse::<lettre::Address>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a stored recipient is not an address: {e}"))?;
    lettre::address::Envelope::new(Some(from.email.clone()), to).map_err(|e| e.to_string())
}

/// The mail for `doc`: the subject from the template, the body's `key: value` lines, the JPEG.
fn compose(inner: &Inner, doc: &VerdictDocument, evidence: Option<&[u8]>) -> Result<Vec<u8>, MailError> {
    let compose_err = |e: String| MailError::Compose(e);
    let link = format!(
        "{}/api/alarms/{}",
        inner.public_base,
        crate::support::ids::path_segment(&doc.record_id)
    );
    let mut builder = lettre::Message::builder()
        .from(inner.from.clone())
        .subject(subject(&inner.config.subject, doc));
    for to in &inner.to {
        builder = builder.to(to.clone());
    }
    let text = SinglePart::plain(body(doc, &link, evidence.is_some()));
    let message = match evidence {
        Some(jpeg) => {
            let content_type = ContentType::parse("image/jpeg").map_err(|e| compose_err(e.to_string()))?;
            let attachment = Attachment::new("evidence.jpg".into()).body(jpeg.to_vec(), content_type);
            builder.multipart(MultiPart::mixed().singlepart(text).singlepart(attachment))
        }
        None => builder.singlepart(text),
    }
    .map_err(|e| compose_err(e.to_string()))?;
    Ok(message.formatted())
}

/// The subject template with the verdict's values; line breaks never reach a header.
fn subject(template: &str, doc: &VerdictDocument) -> String {
    let one_line = |s: &str| s.replace(['\r', '\n'], " ");
    template
        .replace("{verdict}", doc.verdict.as_str())
        .replace("{camera}", &one_line(&doc.camera))
        .replace("{alarm_id}", &one_line(&doc.alarm_id))
        .replace("{site}", &one_line(&doc.site))
        .replace("{reason}", &one_line(&doc.reason))
}

/// `key: value` lines, one per field, in a fixed order a decoder's regular expressions can rely on.
fn body(doc: &VerdictDocument, link: &str, has_evidence: bool) -> String {
    let one_line = |s: &str| s.replace(['\r', '\n'], " ");
    let mut lines = vec![
        format!("verdict: {}", doc.verdict.as_str()),
        format!("camera: {}", one_line(&doc.camera)),
        format!("site: {}", one_line(&doc.site)),
        format!("alarm_id: {}", one_line(&doc.alarm_id)),
        format!("record_id: {}", one_line(&doc.record_id)),
        format!("alarm_time: {}", doc.alarm_time),
    ];
    if let Some(cause) = doc.cause {
        lines.push(format!("cause: {}", Cause::as_str(cause)));
    }
    lines.push(format!("reason: {}", one_line(&doc.reason)));
    lines.push(format!("latency_ms: {}", doc.latency_ms));
    lines.push(format!(
        "evidence: {}",
        if has_evidence {
            "evidence.jpg (attached)"
        } else {
            "none"
        }
    ));
    lines.push(format!("link: {link}"));
    lines.join("\r\n") + "\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::alarm::Alarm;

    fn doc() -> VerdictDocument {
        let alarm = Alarm::new("a-1\r\nBcc: x@evil".into(), "gate", chrono::Utc::now(), "test".into());
        let mut doc = VerdictDocument::unverifiable(&alarm, "site", "model", Cause::ViewBlocked, "view blocked");
        doc.record_id = "a-1".into();
        doc
    }

    #[test]
    fn the_subject_and_body_keep_to_their_lines() {
        let d = doc();
        let s = subject("{verdict}: {camera} alarm {alarm_id}", &d);
        assert_eq!(s, "unverifiable: gate alarm a-1  Bcc: x@evil");
        let b = body(&d, "http://box/api/alarms/a-1", false);
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(lines[0], "verdict: unverifiable");
        assert!(lines.contains(&"cause: view_blocked"), "{b}");
        assert!(lines.contains(&"link: http://box/api/alarms/a-1"), "{b}");
        assert!(lines.iter().all(|l| !l.starts_with("Bcc")), "{b}");
    }
}
