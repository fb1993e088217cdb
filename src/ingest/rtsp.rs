//! RTSP over TCP with retina: a camera stream's session, from DESCRIBE to whole access units.
//!
//! This is the ingest path for `transport = "tcp"` (the default). It costs a fraction of the
//! GStreamer `rtspsrc` pipeline ([`super::pipeline`], still used over UDP, which retina supports
//! only without reordering): `rtspsrc` passes every RTP packet through two threads, a
//! jitterbuffer, a depayloader and a parser, which for a 1080p camera at 4 Mbit/s is some 360
//! packets a second. Here the interleaved TCP stream of all cameras is read by one small tokio
//! runtime, and each picture costs one copy into the ring. Frames come out in Annex B with the
//! SPS/PPS (and VPS) before every keyframe, as `h264parse config-interval=-1` gives them, so the
//! ring and the decoders see the same units from either path.

use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use gstreamer as gst;
use retina::client::{Credentials, PlayOptions, Session, SessionOptions, SetupOptions, TcpTransportOptions, Transport};
use retina::codec::{CodecItem, FrameFormat, ParametersRef, VideoFrame};

use crate::support::gst::VideoCodec;

/// How long DESCRIBE, SETUP and PLAY may take each, long enough for an NVR or test server setting up a hundred streams at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a session looks at the camera's stop flag and at its last picture's age.
const STOP_POLL: Duration = Duration::from_millis(200);

/// One picture of a camera stream, ready for the ring.
pub struct Picture {
    /// Flagged `DELTA_UNIT` unless it is a keyframe, as GStreamer's parsers flag theirs.
    pub buffer: gst::Buffer,
    /// Set on the first picture and whenever the stream's parameters change.
    pub caps: Option<gst::Caps>,
}

/// Why a session ended.
pub enum Ended {
    Stopped,
    Failed(SessionError),
}

/// Why a session failed. Retina's errors are shown in the text rather than as sources, so error
/// chains print them once.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot start the RTSP runtime: {0}")]
    Runtime(String),
    #[error("not a valid URL: {0}")]
    Url(url::ParseError),
    #[error("cannot take the user name out of the URL")]
    Username,
    #[error("cannot take the password out of the URL")]
    Password,
    /// DESCRIBE, SETUP or PLAY failed.
    #[error("RTSP {step}: {error}")]
    Request { step: &'static str, error: retina::Error },
    #[error("RTSP {step}: no answer within {} s", .limit.as_secs())]
    NoAnswer { step: &'static str, limit: Duration },
    #[error("the camera offers no video stream")]
    NoVideoStream,
    #[error("unsupported video encoding {0:?}; expected H264 or H265")]
    Encoding(Vec<String>),
    #[error("{0}")]
    Stream(retina::Error),
    #[error("stream ended")]
    StreamEnded,
    #[error("no video for {} s", .0.as_secs_f64())]
    Stalled(Duration),
    #[error("no video over tcp within {} s of PLAY", .0.as_secs_f64())]
    NoFirstVideo(Duration),
    #[error("the RTSP session ended without a word")]
    Vanished,
}

impl SessionError {
    /// Why this failure is TCP's own, for `transport = "auto"` to try UDP: a SETUP the camera
    /// refused or left unanswered (`461 Unsupported Transport` above all), or no video after
    /// PLAY. A camera that is unreachable, or refuses the credentials or the path, is down
    /// whichever the transport.
    pub fn tcp_refusal(&self) -> Option<String> {
        match self {
            SessionError::Request { step: "SETUP", error } => match error.status_code() {
                Some(401 | 403 | 404) => None,
                Some(status) => Some(format!("tcp refused: {status}")),
                None => Some("tcp refused: SETUP failed".into()),
            },
            SessionError::NoAnswer { step: "SETUP", .. } => Some("tcp refused: SETUP unanswered".into()),
            SessionError::NoFirstVideo(limit) => Some(format!("no video over tcp within {} s", limit.as_secs())),
            _ => None,
        }
    }
}

/// The runtime all TCP camera sessions run on. Two workers: reading the sockets of hundreds of
/// cameras is light, and a second worker keeps the streams flowing while the first waits for a
/// ring that analysis is reading.
fn runtime() -> Result<&'static tokio::runtime::Runtime, SessionError> {
    // The build error is kept as text: the runtime is built once, and every session reports it.
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("ingest-rtsp")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| SessionError::Runtime(e.clone()))
}

/// Runs one session on `url` until it fails, sends no video for `stall` (for `first_video`, when
/// given, before the first picture), or `stopping` says so; `on_picture` gets every picture.
/// Blocks the calling thread (the camera's supervisor).
pub fn run_blocking(
    url: &str,
    stall: Duration,
    first_video: Option<Duration>,
    stopping: impl Fn() -> bool + Send + 'static,
    on_picture: impl FnMut(Picture) + Send + 'static,
) -> Ended {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => return Ended::Failed(e),
    };
    let (url, creds) = match split_credentials(url) {
        Ok(split) => split,
        Err(e) => return Ended::Failed(e),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        // Raced against the whole session, so that a camera hanging in a request does not hold
        // up the service's shutdown.
        let stopped = async move {
            while !stopping() {
                tokio::time::sleep(STOP_POLL).await;
            }
        };
        let ended = tokio::select! {
            reason = play(url, creds, stall, first_video, on_picture) => Ended::Failed(reason),
            () = stopped => Ended::Stopped,
        };
        let _ = tx.send(ended);
    });
    rx.recv().unwrap_or(Ended::Failed(SessionError::Vanished))
}

/// Retina refuses URLs with credentials: they go in [`Credentials`], percent-decoded.
fn split_credentials(raw: &str) -> Result<(url::Url, Option<Credentials>), SessionError> {
    let mut url = url::Url::parse(raw).map_err(SessionError::Url)?;
    if url.username().is_empty() && url.password().is_none() {
        return Ok((url, None));
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let creds = Credentials {
        username: decode(url.username()),
        password: decode(url.password().unwrap_or("")),
    };
    url.set_username("").map_err(|()| SessionError::Username)?;
    url.set_password(None).map_err(|()| SessionError::Password)?;
    Ok((url, Some(creds)))
}

/// The session itself: DESCRIBE, SETUP of the first H.264/H.265 video stream, PLAY, then pictures
/// until it fails or stalls; returns why it ended.
async fn play(
    url: url::Url,
    creds: Option<Credentials>,
    stall: Duration,
    first_video: Option<Duration>,
    mut on_picture: impl FnMut(Picture),
) -> SessionError {
    let options = SessionOptions::default()
        .creds(creds)
        .user_agent(format!("alarm-verifier/{}", env!("CARGO_PKG_VERSION")));
    let (mut demuxed, codec) = match start(url, options).await {
        Ok(started) => started,
        Err(reason) => return reason,
    };

    let mut poll = tokio::time::interval(STOP_POLL);
    let mut last_video = tokio::time::Instant::now();
    let mut caps: Option<gst::Caps> = None;
    let mut pictures = 0u64;
    loop {
        tokio::select! {
            item = demuxed.next() => match item {
                Some(Ok(CodecItem::VideoFrame(frame))) => {
                    let params = demuxed.streams().get(frame.stream_id()).and_then(|s| s.parameters());
                    let new_caps = match params {
                        Some(ParametersRef::Video(v)) if frame.has_new_parameters() || caps.is_none() => {
                            let c = caps_of(codec, v.pixel_dimensions());
                            caps = Some(c.clone());
                            Some(c)
                        }
                        _ => None,
                    };
                    // Pictures before the stream's parameters are known cannot be decoded; a
                    // stream that never sends them counts as stalled.
                    if caps.is_some() {
                        last_video = tokio::time::Instant::now();
                        pictures += 1;
                        on_picture(picture(frame, new_caps));
                    }
                }
                Some(Ok(_)) => {} // RTCP reports
                Some(Err(e)) => return SessionError::Stream(e),
                None => return SessionError::StreamEnded,
            },
            _ = poll.tick() => {
                if let Some(first) = first_video.filter(|_| pictures == 0)
                    && last_video.elapsed() > first
                {
                    return SessionError::NoFirstVideo(first);
                }
                if last_video.elapsed() > stall {
                    return SessionError::Stalled(stall);
                }
            }
        }
    }
}

/// DESCRIBE, SETUP and PLAY: the playing session's pictures, and its codec.
async fn start(url: url::Url, options: SessionOptions) -> Result<(retina::client::Demuxed, VideoCodec), SessionError> {
    let mut session = within(REQUEST_TIMEOUT, "DESCRIBE", Session::describe(url, options)).await?;
    let (index, codec) = video_stream(&session)?;
    let setup = SetupOptions::default()
        .transport(Transport::Tcp(TcpTransportOptions::default()))
        .frame_format(FrameFormat::SIMPLE);
    within(REQUEST_TIMEOUT, "SETUP", session.setup(index, setup)).await?;
    let playing = within(REQUEST_TIMEOUT, "PLAY", session.play(PlayOptions::default())).await?;
    let demuxed = playing.demuxed().map_err(SessionError::Stream)?;
    Ok((demuxed, codec))
}

async fn within<T>(
    limit: Duration,
    step: &'static str,
    request: impl std::future::Future<Output = Result<T, retina::Error>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(error)) => Err(SessionError::Request { step, error }),
        Err(_) => Err(SessionError::NoAnswer { step, limit }),
    }
}

/// The first video stream retina can depacketize, and its codec.
fn video_stream<S: retina::client::State>(session: &Session<S>) -> Result<(usize, VideoCodec), SessionError> {
    let mut seen = Vec::new();
    for (i, s) in session.streams().iter().enumerate() {
        if s.media() != "video" {
            continue;
        }
        match VideoCodec::from_encoding(s.encoding_name()) {
            Some(codec) => return Ok((i, codec)),
            None => seen.push(s.encoding_name().to_ascii_lowercase()),
        }
    }
    Err(if seen.is_empty() {
        SessionError::NoVideoStream
    } else {
        SessionError::Encoding(seen)
    })
}

/// The caps the decoders need: byte-stream, whole pictures, and the picture size for the health
/// report.
fn caps_of(codec: VideoCodec, (width, height): (u32, u32)) -> gst::Caps {
    codec
        .access_unit_caps()
        .field("width", i32::try_from(width).unwrap_or(i32::MAX))
        .field("height", i32::try_from(height).unwrap_or(i32::MAX))
        .build()
}

/// A picture with its RTP time as the buffer's timestamp, which the decoders use for spacing.
fn picture(frame: VideoFrame, caps: Option<gst::Caps>) -> Picture {
    let ts = frame.timestamp();
    let nanos = i128::from(ts.elapsed().max(0)) * 1_000_000_000 / i128::from(ts.clock_rate().get());
    let keyframe = frame.is_random_access_point();
    let mut buffer = gst::Buffer::from_mut_slice(frame.into_data());
    if let Some(b) = buffer.get_mut() {
        b.set_pts(gst::ClockTime::from_nseconds(u64::try_from(nanos).unwrap_or(0)));
        if !keyframe {
            b.set_flags(gst::BufferFlags::DELTA_UNIT);
        }
    }
    Picture { buffer, caps }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_decoded() {
        let (url, creds) = split_credentials("rtsp://admin:p%40ss@cam.local:554/s1").unwrap();
        assert_eq!(url.as_str(), "rtsp://cam.local:554/s1");
        let creds = creds.unwrap();
        assert_eq!((creds.username.as_str(), creds.password.as_str()), ("admin", "p@ss"));
        assert!(split_credentials("rtsp://cam/s1").unwrap().1.is_none());
    }
}
