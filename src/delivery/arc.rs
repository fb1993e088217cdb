//! Verdicts to the alarm receiving centre over SIA DC-09, beside MQTT: one event per verdict
//! (`BV` verified, `BG` false alarm, `BA` passed through when undecided; `[dc09.codes]`) with the
//! link to the record's clip (`[V…]`), the verdict and reason (`[I…]`) and the alarm's time
//! (`[H…]`). Each event is stored first (`store::arc`) and sent until the ARC ACKs it, with the
//! same sequence on every retry; a NAK sends it again with a fresh timestamp, a DUH parks it and
//! reports it on `errors`, and an unreachable receiver makes it switch to `backup`. A `NULL` link
//! test goes out every `heartbeat_s` while the queue is empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Notify;

use crate::analysis::verdict::VerdictKind;
use crate::config::{ArcConfig, ArcFormat, ArcProtocol, Config, ConfigError};
use crate::intake::AlarmSink;
use crate::intake::alarm::Alarm;
use crate::intake::dc09::frame::{self, Header, Key, Token};
use crate::store::Store;
use crate::store::arc::ArcEvent;
use crate::support::lock;

/// The longest `[I…]` text; longer reasons are cut.
pub const ALARM_TEXT_MAX: usize = 64;
/// The zone sent when neither the alarm nor the camera names one.
const NO_ZONE: &str = "000";
/// The longest an answer frame may be.
const MAX_ANSWER: usize = 1024;

/// Where verdicts are queued for the ARC; cheap to clone.
#[derive(Clone)]
pub struct ArcQueue {
    inner: Arc<Queue>,
}

struct Queue {
    store: Arc<Store>,
    config: ArcConfig,
    codes: crate::config::CodesConfig,
    /// `[camera.dc09]` account and first zone per camera.
    cameras: std::collections::HashMap<String, (String, String)>,
    public_base: String,
    key: Option<Key>,
    wake: Notify,
    state: std::sync::Mutex<LinkState>,
    up: AtomicBool,
}

/// The link as `/healthz` and the logs show it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LinkState {
    pub up: bool,
    /// `host:port` of the receiver in use.
    pub target: String,
    pub last_ack: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// What the ARC said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ack,
    Nak,
    Duh,
}

impl ArcQueue {
    /// The queue when `[dc09.arc]` is configured.
    pub fn new(config: &Config, store: Arc<Store>) -> Result<Option<Self>, ConfigError> {
        let Some(arc) = &config.dc09.arc else { return Ok(None) };
        let key = match arc.resolve_key()? {
            Some(secret) => Some(Key::from_hex(secret.expose()).map_err(|expected| ConfigError::Invalid {
                path: "environment".into(),
                key: "dc09.arc.key_env".into(),
                expected,
            })?),
            None => None,
        };
        store.arc_prepare().map_err(|e| ConfigError::Invalid {
            path: "store".into(),
            key: "store.path".into(),
            expected: format!("a store that can hold the ARC queue: {e}"),
        })?;
        let cameras = config
            .cameras
            .iter()
            .filter_map(|c| {
                let d = c.dc09.as_ref()?;
                let zone = d
                    .zones
                    .iter()
                    .find(|z| *z != "*")
                    .cloned()
                    .unwrap_or_else(|| NO_ZONE.into());
                Some((c.id.clone(), (d.account.clone(), zone)))
            })
            .collect();
        Ok(Some(Self {
            inner: Arc::new(Queue {
                store,
                config: arc.clone(),
                codes: config.dc09.codes.clone(),
                cameras,
                public_base: config.http.public_base(),
                key,
                wake: Notify::new(),
                state: std::sync::Mutex::new(LinkState::default()),
                up: AtomicBool::new(false),
            }),
        }))
    }

    /// Queues the event for `alarm`'s verdict; it is stored before this returns.
    pub fn enqueue(&self, alarm: &Alarm, verdict: VerdictKind, reason: &str) {
        let q = &self.inner;
        let (account, zone) = self.account_and_zone(alarm);
        let code = match verdict {
            VerdictKind::Verified => &q.codes.verified,
            VerdictKind::FalseAlarm => &q.codes.false_alarm,
            VerdictKind::Unverifiable => &q.codes.unverifiable,
        };
        let data = event_data(q.config.format, code, &zone);
        let link = format!(
            "{}/api/alarms/{}/clip.mp4",
            q.public_base,
            crate::support::ids::path_segment(&alarm.record_id)
        );
        let xdata = vec![
            format!("V{}", field_text(&link, 256)),
            format!(
                "I{}",
                field_text(&format!("{}: {reason}", verdict.as_str()), ALARM_TEXT_MAX)
            ),
            format!("H{}", alarm.time.format("%H:%M:%S,%m-%d-%Y")),
        ];
        match q.store.arc_enqueue(&alarm.record_id, &account, &data, &xdata) {
            Ok(_) => q.wake.notify_one(),
            Err(e) => {
                tracing::error!(camera = %alarm.camera, alarm_id = %alarm.alarm_id, error = %e, "ARC event not stored")
            }
        }
    }

    /// The account and zone the alarm came in on (a DC-09 alarm), else the camera's.
    fn account_and_zone(&self, alarm: &Alarm) -> (String, String) {
        let camera = self.inner.cameras.get(&alarm.camera).cloned();
        let from_panel = alarm.source.strip_prefix("dc09:").map(|a| a.to_owned());
        match (from_panel, camera) {
            (Some(account), Some((camera_account, zone))) if camera_account.eq_ignore_ascii_case(&account) => {
                (account, zone)
            }
            (Some(account), _) => (account, NO_ZONE.into()),
            (None, Some(pair)) => pair,
            (None, None) => ("0000".into(), NO_ZONE.into()),
        }
    }

    /// The link's state.
    pub fn state(&self) -> LinkState {
        lock(&self.inner.state).clone()
    }

    /// Events waiting for the ARC's ACK.
    pub fn pending(&self) -> u64 {
        self.inner.store.arc_pending().unwrap_or(0)
    }

    /// Sends the queue to the ARC, forever; `sink` reports DUHs on `errors`.
    pub async fn deliver(self, sink: Arc<dyn AlarmSink>) {
        let mut link = Link::new(&self.inner.config);
        let heartbeat =
            (self.inner.config.heartbeat_s > 0.0).then(|| Duration::from_secs_f64(self.inner.config.heartbeat_s));
        let retry = Duration::from_secs_f64(self.inner.config.retry_s);
        let mut last_sent = tokio::time::Instant::now();
        loop {
            let next = match self.inner.store.arc_next() {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "ARC queue unreadable");
                    tokio::time::sleep(retry).await;
                    continue;
                }
            };
            let Some(event) = next else {
                let idle = heartbeat.map_or(Duration::from_secs(3600), |h| h.saturating_sub(last_sent.elapsed()));
                if tokio::time::timeout(idle, self.inner.wake.notified()).await.is_err() && heartbeat.is_some() {
                    self.link_test(&mut link).await;
                    last_sent = tokio::time::Instant::now();
                }
                continue;
            };
            let _ = self.inner.store.arc_attempted(event.id);
            match self.send_event(&mut link, &event).await {
                Ok(Answer::Ack) => {
                    last_sent = tokio::time::Instant::now();
                    if let Err(e) = self.inner.store.arc_delivered(event.id) {
                        tracing::error!(error = %e, "ARC delivery not recorded; it will be sent again");
                    }
                    tracing::info!(record_id = %event.record_id, seq = %event.seq(), target = %link.target(), "ARC acknowledged the verdict");
                }
                Ok(Answer::Nak) => {
                    tracing::warn!(record_id = %event.record_id, seq = %event.seq(), "ARC answered NAK; sending again with a fresh timestamp");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(Answer::Duh) => {
                    let reason = format!(
                        "the ARC at {} did not understand the event (DUH); parked",
                        link.target()
                    );
                    tracing::error!(record_id = %event.record_id, "{reason}");
                    let _ = self.inner.store.arc_park(event.id, &reason);
                    sink.report("dc09.arc", &reason, event.data.as_bytes());
                }
                Err(e) => {
                    self.set_down(&link, &e.to_string());
                    tracing::warn!(record_id = %event.record_id, target = %link.target(), error = %e, "ARC unreachable; trying the other receiver");
                    link.switch();
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    async fn link_test(&self, link: &mut Link) {
        let header = self.header(Token::Null, "0000", "0000".into());
        let frame = frame::encode(&header, "", &[], Utc::now(), self.inner.key.as_ref());
        match link.exchange(&frame, "0000").await {
            Ok(_) => self.set_up(link),
            Err(e) => {
                self.set_down(link, &e.to_string());
                link.switch();
            }
        }
    }

    fn header(&self, token: Token, seq: &str, account: String) -> Header {
        let c = &self.inner.config;
        Header {
            token,
            encrypted: self.inner.key.is_some(),
            seq: seq.to_owned(),
            receiver: c.receiver.clone(),
            line: Some(c.line.clone().unwrap_or_else(|| "0".into())),
            account: Some(account),
        }
    }

    async fn send_event(&self, link: &mut Link, event: &ArcEvent) -> Result<Answer, SendError> {
        let token = match self.inner.config.format {
            ArcFormat::SiaDcs => Token::SiaDcs,
            ArcFormat::AdmCid => Token::AdmCid,
        };
        let seq = event.seq();
        let header = self.header(token, &seq, event.account.clone());
        // A fresh timestamp on every attempt: the ARC NAKs a stale one.
        let frame = frame::encode(&header, &event.data, &event.xdata, Utc::now(), self.inner.key.as_ref());
        let answer = link.exchange(&frame, &seq).await?;
        self.set_up(link);
        Ok(answer)
    }

    fn set_up(&self, link: &Link) {
        self.inner.up.store(true, Ordering::SeqCst);
        let mut s = lock(&self.inner.state);
        s.up = true;
        s.target = link.target();
        s.last_ack = Some(Utc::now());
        s.error = None;
    }

    fn set_down(&self, link: &Link, error: &str) {
        self.inner.up.store(false, Ordering::SeqCst);
        let mut s = lock(&self.inner.state);
        s.up = false;
        s.target = link.target();
        s.error = Some(error.to_owned());
    }
}

/// The connection to the ARC: primary or backup, TCP kept open or UDP.
struct Link {
    targets: Vec<String>,
    current: usize,
    protocol: ArcProtocol,
    timeout: Duration,
    tcp: Option<BufReader<TcpStream>>,
}

impl Link {
    fn new(config: &ArcConfig) -> Self {
        let mut targets = vec![format!("{}:{}", config.host, config.port)];
        targets.extend(config.backup.clone());
        Self {
            targets,
            current: 0,
            protocol: config.protocol,
            timeout: Duration::from_secs_f64(config.ack_timeout_s),
            tcp: None,
        }
    }

    fn target(&self) -> String {
        self.targets.get(self.current).cloned().unwrap_or_default()
    }

    fn switch(&mut self) {
        self.tcp = None;
        self.current = (self.current + 1) % self.targets.len().max(1);
    }

    /// Sends `frame` and waits for the answer to `seq` (a NAK carries 0000).
    async fn exchange(&mut self, frame: &[u8], seq: &str) -> Result<Answer, SendError> {
        let result = tokio::time::timeout(self.timeout, self.exchange_inner(frame, seq)).await;
        match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.tcp = None;
                Err(e)
            }
            Err(_) => {
                self.tcp = None;
                Err(SendError::Timeout(self.timeout))
            }
        }
    }

    async fn exchange_inner(&mut self, frame: &[u8], seq: &str) -> Result<Answer, SendError> {
        let target = self.target();
        match self.protocol {
            ArcProtocol::Udp => {
                let socket = UdpSocket::bind("0.0.0.0:0").await?;
                socket.connect(&target).await?;
                socket.send(frame).await?;
                let mut buf = vec![0u8; MAX_ANSWER];
                loop {
                    let n = socket.recv(&mut buf).await?;
                    if let Some(answer) = read_answer(buf.get(..n).unwrap_or_default(), seq) {
                        return Ok(answer);
                    }
                }
            }
            ArcProtocol::Tcp => {
                if self.tcp.is_none() {
                    self.tcp = Some(BufReader::new(TcpStream::connect(&target).await?));
                }
                let Some(stream) = self.tcp.as_mut() else {
                    return Err(SendError::Io(std::io::ErrorKind::NotConnected.into()));
                };
                stream.get_mut().write_all(frame).await?;
                loop {
                    let mut buf = Vec::new();
                    let n = stream.read_until(b'\r', &mut buf).await?;
                    if n == 0 {
                        return Err(SendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    if buf.len() > MAX_ANSWER {
                        continue;
                    }
                    if let Some(answer) = read_answer(&buf, seq) {
                        return Ok(answer);
                    }
                }
            }
        }
    }
}

/// The ARC's answer to `seq`, as far as its CRC proves it: the ID token and the sequence. The rest
/// is not read, as receivers write it variously (pysiaalarm writes `None` for a missing receiver
/// number). None for a frame that is not an answer to this message.
fn read_answer(raw: &[u8], seq: &str) -> Option<Answer> {
    let text = std::str::from_utf8(raw).ok()?;
    let text = text.trim_matches(|c| c == '\n' || c == '\r' || c == '\0');
    // A bare `"NAK"` or `"DUH"` without a frame, as some receivers send for an unknown account.
    match text {
        "\"NAK\"" => return Some(Answer::Nak),
        "\"DUH\"" => return Some(Answer::Duh),
        _ => {}
    }
    let (crc, span) = (text.get(..4)?, text.get(8..)?);
    if !crc.eq_ignore_ascii_case(&frame::crc_hex(span.as_bytes())) {
        return None;
    }
    let rest = span.strip_prefix('"')?;
    let (token, rest) = rest.split_once('"')?;
    let answered = rest.get(..4)?;
    match token.trim_start_matches('*') {
        "ACK" if answered == seq => Some(Answer::Ack),
        "NAK" => Some(Answer::Nak),
        "DUH" if answered == seq || answered == "0000" => Some(Answer::Duh),
        _ => None,
    }
}

/// `NBV003`, or Contact ID `1139 00 003` (a two-letter code in Contact ID: BV is 1139, BG the
/// verifier's cancel 3139, others a burglary 1130).
fn event_data(format: ArcFormat, code: &str, zone: &str) -> String {
    let zone_number = zone.parse::<u32>().unwrap_or(0);
    match format {
        ArcFormat::SiaDcs => format!("N{code}{zone_number:03}"),
        ArcFormat::AdmCid => {
            let cid = match code {
                c if c.len() == 4 => c,
                "BV" => "1139",
                "BG" => "3139",
                _ => "1130",
            };
            format!("{cid} 00 {:03}", zone_number.min(999))
        }
    }
}

/// Printable ASCII without the frame's delimiters, cut to `max` characters.
fn field_text(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .filter(|c| !matches!(c, '[' | ']' | '|' | '^'))
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_in_both_formats() {
        assert_eq!(event_data(ArcFormat::SiaDcs, "BV", "3"), "NBV003");
        assert_eq!(event_data(ArcFormat::AdmCid, "BV", "003"), "1139 00 003");
        assert_eq!(event_data(ArcFormat::AdmCid, "BG", "7"), "3139 00 007");
        assert_eq!(event_data(ArcFormat::AdmCid, "1130", "12"), "1130 00 012");
    }

    #[test]
    fn answers_count_as_far_as_their_crc_goes() {
        // pysiaalarm's ACK without a receiver number, and the standard's NAK.
        let span = "\"*ACK\"0002NoneL0#4711[00112233";
        let ack = format!("\n{}{:04X}{span}\r", frame::crc_hex(span.as_bytes()), span.len());
        assert_eq!(read_answer(ack.as_bytes(), "0002"), Some(Answer::Ack));
        assert_eq!(read_answer(ack.as_bytes(), "0003"), None);
        let bad = ack.replacen("*ACK", "*ACL", 1);
        assert_eq!(read_answer(bad.as_bytes(), "0002"), None);
        let nak = frame::nak(Utc::now());
        assert_eq!(read_answer(&nak, "0002"), Some(Answer::Nak));
        assert_eq!(read_answer(b"\"DUH\"", "0002"), Some(Answer::Duh));
    }

    #[test]
    fn field_text_is_cut_and_cleaned() {
        assert_eq!(field_text("a[b]c|d^é", 64), "abcd?");
        assert_eq!(field_text(&"x".repeat(100), ALARM_TEXT_MAX).len(), ALARM_TEXT_MAX);
    }
}
