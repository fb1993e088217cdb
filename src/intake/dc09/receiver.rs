//! The DC-09 receiver: alarm panels report here over TCP and UDP as to a receiving centre. An
//! alarm event on a zone that a camera maps becomes an alarm through the one `AlarmSink::accept`;
//! the ACK goes out only once it is stored (or known already: a panel repeating a message whose
//! ACK was lost gets its ACK and no second verdict). NAK for an unknown account, a wrong key, a
//! stale or future timestamp, or an alarm that could not be stored; DUH for what is not
//! understood; silence for a bad CRC. Restores and cancels are recorded on the zone's last alarm.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::frame::{self, FrameError, Header, Key, MAX_FRAME_BYTES, Message, Token};
use crate::config::{CameraConfig, CameraDc09, Dc09Config};
use crate::intake::alarm::Alarm;
use crate::intake::{AlarmSink, Arrival, Refused};
use crate::store::Store;
use crate::support::lock;

/// A message time further in the past than this is stale: NAK.
const MAX_AGE: TimeDelta = TimeDelta::seconds(40);
/// A message time further ahead than this is from a wrong clock: NAK.
const MAX_AHEAD: TimeDelta = TimeDelta::seconds(20);
const MAX_CONNECTIONS: usize = 32;
/// A panel silent this long on an open connection is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A connection that sends this many frames in a row that get no ACK is not a panel.
const MAX_BAD_FRAMES: u32 = 20;

/// The receiver, ready to serve.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

struct Inner {
    /// Account (upper case) to its key; None: plain messages only.
    panels: HashMap<String, Option<Key>>,
    cameras: Vec<(String, CameraDc09)>,
    alarm_codes: HashSet<String>,
    sink: Arc<dyn AlarmSink>,
    store: Arc<Store>,
    /// The last alarm per account and zone number, which a restore is recorded on.
    last_alarm: Mutex<HashMap<(String, u32), String>>,
    /// When each panel was last heard (link tests included).
    last_seen: Mutex<HashMap<String, DateTime<Utc>>>,
    connections: Arc<Semaphore>,
}

/// One event of a message's data.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    code: String,
    zone: String,
}

/// What a message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Alarm,
    Restore,
    Other,
}

impl Receiver {
    /// `keys` holds each `[[dc09.panel]]`'s resolved key, in order.
    pub fn new(
        config: &Dc09Config,
        keys: Vec<Option<Key>>,
        cameras: &[CameraConfig],
        sink: Arc<dyn AlarmSink>,
        store: Arc<Store>,
    ) -> Self {
        let panels = config
            .panels
            .iter()
            .zip(keys.into_iter().chain(std::iter::repeat(None)))
            .map(|(p, k)| (p.account.to_ascii_uppercase(), k))
            .collect();
        Self {
            inner: Arc::new(Inner {
                panels,
                cameras: cameras
                    .iter()
                    .filter_map(|c| c.dc09.clone().map(|d| (c.id.clone(), d)))
                    .collect(),
                alarm_codes: config.alarm_codes.iter().cloned().collect(),
                sink,
                store,
                last_alarm: Mutex::new(HashMap::new()),
                last_seen: Mutex::new(HashMap::new()),
                connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            }),
        }
    }

    /// Serves TCP and UDP until `stop`.
    pub async fn serve(self, tcp: TcpListener, udp: UdpSocket, stop: CancellationToken) {
        let udp_task = tokio::spawn(self.clone().serve_udp(udp, stop.clone()));
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = tcp.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "DC-09 accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = self.inner.connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "DC-09: too many connections; closed");
                continue;
            };
            let receiver = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = receiver.converse(stream, peer, stop).await {
                    tracing::debug!(%peer, error = %e, "DC-09 connection ended");
                }
            });
        }
        let _ = udp_task.await;
    }

    async fn serve_udp(self, socket: UdpSocket, stop: CancellationToken) {
        let mut buf = vec![0u8; MAX_FRAME_BYTES + 64];
        loop {
            let (n, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                got = socket.recv_from(&mut buf) => match got {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::debug!(error = %e, "DC-09 UDP receive failed");
                        continue;
                    }
                },
            };
            let datagram = buf.get(..n).unwrap_or_default().to_vec();
            let inner = self.clone();
            let answer = tokio::task::spawn_blocking(move || inner.answer(&datagram, Utc::now()))
                .await
                .ok()
                .flatten();
            if let Some(answer) = answer
                && let Err(e) = socket.send_to(&answer, peer).await
            {
                tracing::debug!(%peer, error = %e, "DC-09 UDP answer not sent");
            }
        }
    }

    /// One panel's TCP connection: frames end with CR.
    async fn converse(&self, stream: TcpStream, peer: SocketAddr, stop: CancellationToken) -> std::io::Result<()> {
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::new(reader);
        let mut frame = Vec::new();
        let mut bad = 0;
        loop {
            frame.clear();
            let mut limited = (&mut reader).take(MAX_FRAME_BYTES as u64 + 2);
            let read = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                read = tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\r', &mut frame)) => read,
            };
            match read {
                Err(_) | Ok(Ok(0)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(_)) if !frame.ends_with(b"\r") => {
                    tracing::warn!(%peer, bytes = frame.len(), "DC-09 frame too long or cut; connection closed");
                    return Ok(());
                }
                Ok(Ok(_)) => {}
            }
            let this = self.clone();
            let raw = std::mem::take(&mut frame);
            let answer = tokio::task::spawn_blocking(move || this.answer(&raw, Utc::now()))
                .await
                .ok()
                .flatten();
            match answer {
                Some(answer) => {
                    if answer.get(9..13) == Some(&b"\"ACK"[..]) || answer.get(9..14) == Some(&b"\"*ACK"[..]) {
                        bad = 0;
                    } else {
                        bad += 1;
                    }
                    writer.write_all(&answer).await?;
                    writer.flush().await?;
                }
                None => bad += 1,
            }
            if bad >= MAX_BAD_FRAMES {
                tracing::warn!(%peer, "DC-09: too many frames without an ACK; connection closed");
                return Ok(());
            }
        }
    }

    /// The answer to one frame, or None for silence.
    pub fn answer(&self, raw: &[u8], now: DateTime<Utc>) -> Option<Vec<u8>> {
        let inner = &self.inner;
        let key_for = |account: &str| inner.panels.get(&account.to_ascii_uppercase()).cloned().flatten();
        let message = match frame::decode(raw, key_for) {
            Ok(message) => message,
            Err(e) => return self.refuse(e, now),
        };
        let header = &message.header;
        let Some(account) = header.account.as_deref().map(str::to_ascii_uppercase) else {
            return Some(frame::duh(Some(header)));
        };
        let Some(key) = inner.panels.get(&account) else {
            tracing::warn!(account, "DC-09 message from an unknown account: NAK");
            return Some(frame::nak(now));
        };
        if key.is_some() && !header.encrypted {
            tracing::warn!(account, "DC-09 plain message for an account with a key: NAK");
            return Some(frame::nak(now));
        }
        if let Some(t) = message.timestamp
            && (t < now - MAX_AGE || t > now + MAX_AHEAD)
        {
            tracing::warn!(account, time = %t, "DC-09 message time outside -40 s / +20 s: NAK");
            return Some(frame::nak(now));
        }
        lock(&inner.last_seen).insert(account.clone(), now);
        match header.token {
            Token::Null => {}
            Token::SiaDcs | Token::AdmCid => {
                if !self.take(&account, &message, raw, now) {
                    return Some(frame::nak(now));
                }
            }
            // A panel does not send answers; one that does is not understood.
            Token::Ack | Token::Nak | Token::Duh => return Some(frame::duh(Some(header))),
        }
        Some(frame::ack(header, key.as_ref(), now))
    }

    fn refuse(&self, error: FrameError, now: DateTime<Utc>) -> Option<Vec<u8>> {
        tracing::warn!(error = %error, "DC-09 frame refused");
        match error {
            FrameError::Crc { .. } | FrameError::TooLong(_) => None,
            FrameError::Malformed(_) => Some(frame::duh(None)),
            FrameError::Body { header, .. } => Some(frame::duh(Some(&header))),
            FrameError::NoKey(_) | FrameError::Decrypt(_) => Some(frame::nak(now)),
        }
    }

    /// Takes a message's events; false when an alarm could not be stored (the panel is NAKed and
    /// sends again).
    fn take(&self, account: &str, message: &Message, raw: &[u8], now: DateTime<Utc>) -> bool {
        let events = match message.header.token {
            Token::AdmCid => cid_events(&message.data),
            _ => sia_events(&message.data),
        };
        let mut stored = true;
        for event in events {
            match self.kind(&event) {
                Kind::Alarm => stored &= self.raise(account, &message.header, &event, message.timestamp, raw, now),
                Kind::Restore => self.record_restore(account, &event, raw),
                Kind::Other => {
                    tracing::info!(account, code = %event.code, zone = %event.zone, "DC-09 event: not an alarm")
                }
            }
        }
        stored
    }

    fn kind(&self, event: &Event) -> Kind {
        let code = event.code.as_str();
        if self.inner.alarm_codes.contains(code) {
            Kind::Alarm
        } else if code.len() == 4 && (code.starts_with('3') || code == "1406")
            || code.len() == 2 && (code.ends_with('R') || code == "BC")
        {
            Kind::Restore
        } else {
            Kind::Other
        }
    }

    /// An alarm on every camera that maps the zone.
    fn raise(
        &self,
        account: &str,
        header: &Header,
        event: &Event,
        panel_time: Option<DateTime<Utc>>,
        raw: &[u8],
        now: DateTime<Utc>,
    ) -> bool {
        let cameras: Vec<&String> = self
            .inner
            .cameras
            .iter()
            .filter(|(_, d)| d.account.eq_ignore_ascii_case(account) && d.has_zone(&event.zone))
            .map(|(id, _)| id)
            .collect();
        if cameras.is_empty() {
            tracing::info!(account, zone = %event.zone, code = %event.code, "DC-09 alarm on a zone no camera maps");
            return true;
        }
        let id_time = panel_time.map_or_else(|| "0".to_owned(), |t| t.format("%Y%m%dT%H%M%SZ").to_string());
        let alarm_id = format!("dc09-{account}-{}-{id_time}", header.seq);
        let source = format!("dc09:{account}");
        let mut stored = true;
        for camera in cameras {
            let alarm = Alarm::new(alarm_id.clone(), camera, panel_time.unwrap_or(now), source.clone());
            let arrival = Arrival {
                alarm,
                origin: source.clone(),
                raw: raw.to_vec(),
                snapshot: None,
            };
            match self.inner.sink.accept(arrival) {
                Ok(_) | Err(Refused::Duplicate(_)) => {
                    if let Ok(zone) = event.zone.parse::<u32>() {
                        lock(&self.inner.last_alarm).insert((account.to_owned(), zone), alarm_id.clone());
                    }
                }
                Err(e) => {
                    tracing::warn!(account, camera = %camera, alarm_id = %alarm_id, error = %e, "DC-09 alarm not taken: NAK");
                    stored = false;
                }
            }
        }
        stored
    }

    fn record_restore(&self, account: &str, event: &Event, raw: &[u8]) {
        let zone = event.zone.parse::<u32>().ok();
        let into = zone.and_then(|z| lock(&self.inner.last_alarm).get(&(account.to_owned(), z)).cloned());
        let Some(into) = into else {
            tracing::info!(account, code = %event.code, zone = %event.zone, "DC-09 restore with no alarm of its zone");
            return;
        };
        let source = format!("dc09:{account}:{}", event.code);
        let restore = Alarm::new(into.clone(), "", Utc::now(), source);
        match self.inner.store.record_joined_event(&into, &restore, raw) {
            Ok(()) => {
                tracing::info!(account, alarm_id = %into, code = %event.code, "DC-09 restore recorded on the alarm")
            }
            Err(e) => tracing::warn!(account, alarm_id = %into, error = %e, "DC-09 restore not recorded"),
        }
    }

    /// When each panel was last heard.
    pub fn last_seen(&self) -> HashMap<String, DateTime<Utc>> {
        lock(&self.inner.last_seen).clone()
    }
}

/// SIA-DCS data: `Nri1/BA003`, `Nri1/BA003/BA004`, `NBA003^text^`: each two-letter code with
/// the zone digits after it; `ri`, `id`, `ti`, `pi` fields are modifiers.
fn sia_events(data: &str) -> Vec<Event> {
    let data = data.split(['|', '^']).next().unwrap_or_default();
    let data = data.strip_prefix('N').unwrap_or(data);
    data.split('/')
        .filter(|s| !["ri", "id", "ti", "pi"].iter().any(|m| s.starts_with(m)))
        .filter_map(|segment| {
            let code = segment.get(..2).filter(|c| c.bytes().all(|b| b.is_ascii_uppercase()))?;
            let zone: String = segment[2..].chars().take_while(char::is_ascii_digit).collect();
            Some(Event {
                code: code.to_owned(),
                zone,
            })
        })
        .collect()
}

/// ADM-CID data: `1130 01 003`: qualifier and event, partition, zone.
fn cid_events(data: &str) -> Vec<Event> {
    let mut fields = data.split_whitespace();
    match (fields.next(), fields.next(), fields.next()) {
        (Some(code), Some(_partition), Some(zone)) if code.len() == 4 && code.bytes().all(|b| b.is_ascii_digit()) => {
            vec![Event {
                code: code.to_owned(),
                zone: zone.to_owned(),
            }]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sia_data_gives_codes_and_zones() {
        let e = |code: &str, zone: &str| Event {
            code: code.into(),
            zone: zone.into(),
        };
        assert_eq!(sia_events("Nri1/BA003"), vec![e("BA", "003")]);
        assert_eq!(sia_events("Nri1/BA003/BR004"), vec![e("BA", "003"), e("BR", "004")]);
        assert_eq!(sia_events("NBA12^Hall^"), vec![e("BA", "12")]);
        assert_eq!(sia_events("Nid5/ri2/CL501"), vec![e("CL", "501")]);
        assert!(sia_events("").is_empty() && sia_events("N/x/éé/1").is_empty());
        assert_eq!(cid_events("1130 01 003"), vec![e("1130", "003")]);
        assert!(cid_events("11x0 01 003").is_empty() && cid_events("1130").is_empty());
    }
}
