//! Where a camera's streams are: fixed by its config, or found by asking the camera (its ONVIF
//! media service, by a finder outside ingest) and found again when a stream keeps failing, as
//! cameras hand out new addresses after a reboot or a firmware change.
//!
//! Ingest threads read the address before each session and say when a stream keeps failing; the
//! finder waits for that and hands in what it found (or why it found nothing).

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::camera::StreamKind;
use super::health::StateBoard;
use crate::config::{CameraConfig, redact_url};
use crate::support::lock;

/// Sessions in a row that end without video before the camera is asked again.
pub const FAILURES_BEFORE_REDISCOVERY: u32 = 3;

/// A stream's address, and where it came from when it was found rather than configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The URL, credentials included: never logged or shown as it is.
    pub url: String,
    /// How it was found, for the state message: `onvif profile "Main" 1920x1080 H264`.
    pub found: Option<String>,
}

impl Located {
    pub fn configured(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            found: None,
        }
    }

    /// The URL without its password, for logs and the state.
    pub fn shown(&self) -> String {
        redact_url(&self.url)
    }
}

/// What a finder found: the main stream and, when the camera has a fitting second one, the
/// detect stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub main: Located,
    pub detect: Option<Located>,
}

/// One of a camera's stream addresses.
#[derive(Debug, Clone)]
enum Slot {
    /// From the config; never changes.
    Configured(Located),
    /// To be found; None until it is (or when the camera has no such stream).
    Found(Option<Located>),
    /// The camera has no such stream.
    None,
}

struct State {
    main: Slot,
    detect: Slot,
    /// Why the last search found nothing; None once it found the streams.
    error: Option<String>,
    /// Whether a search has finished (found or failed) since the start.
    searched: bool,
}

/// A camera's stream addresses, shared by its ingest threads and its finder.
pub struct StreamAddresses {
    camera: String,
    state: Mutex<State>,
    /// Woken when a stream keeps failing and the camera is to be asked again.
    wanted: Notify,
    board: Arc<StateBoard>,
}

impl StreamAddresses {
    /// The addresses of `config`'s camera: its `url` and `detect_url`; without `url` and with an
    /// ONVIF table, those not configured are left to a finder.
    pub fn new(config: &CameraConfig, board: Arc<StateBoard>) -> Arc<Self> {
        let discovers = config.discovers_streams();
        let slot = |url: &Option<String>| match (url, discovers) {
            (Some(url), _) => Slot::Configured(Located::configured(url)),
            (None, true) => Slot::Found(None),
            (None, false) => Slot::None,
        };
        Arc::new(Self {
            camera: config.id.clone(),
            state: Mutex::new(State {
                main: slot(&config.url),
                detect: slot(&config.detect_url),
                error: None,
                searched: false,
            }),
            wanted: Notify::new(),
            board,
        })
    }

    /// Whether a finder is to look for some of the streams.
    pub fn to_find(&self) -> bool {
        let state = lock(&self.state);
        matches!(state.main, Slot::Found(_)) || matches!(state.detect, Slot::Found(_))
    }

    /// Whether the camera may have a stream of `kind` (configured, or to be found).
    pub fn may_have(&self, kind: StreamKind) -> bool {
        !matches!(self.slot(kind), Slot::None)
    }

    /// Whether the camera has a stream of `kind` with a known address now.
    pub fn has(&self, kind: StreamKind) -> bool {
        self.current(kind).is_ok()
    }

    /// The address of `kind` now, or why there is none.
    pub fn current(&self, kind: StreamKind) -> Result<Located, String> {
        let state = lock(&self.state);
        let slot = match kind {
            StreamKind::Main => &state.main,
            StreamKind::Detect => &state.detect,
        };
        match slot {
            Slot::Configured(located) | Slot::Found(Some(located)) => Ok(located.clone()),
            Slot::None => Err(format!("no {} configured", kind.name())),
            Slot::Found(None) => Err(match (&state.error, state.searched) {
                (Some(error), _) => format!("ONVIF stream discovery failed: {error}"),
                (None, false) => "waiting for ONVIF stream discovery".to_owned(),
                (None, true) => format!("the camera's ONVIF profiles offer no {}", kind.name()),
            }),
        }
    }

    /// A stream of `kind` keeps failing: if it was found, the finder looks again.
    pub fn keeps_failing(&self, kind: StreamKind) {
        if matches!(self.slot(kind), Slot::Found(_)) {
            tracing::info!(camera = %self.camera, stream = kind.name(), "stream keeps failing; asking the camera for its streams again");
            self.wanted.notify_one();
        }
    }

    /// Waits until a stream asks for a new search.
    pub async fn wanted(&self) {
        self.wanted.notified().await;
    }

    /// The finder found the streams: those not configured take the new addresses.
    pub fn found(&self, found: Found) {
        let mut state = lock(&self.state);
        if matches!(state.main, Slot::Found(_)) {
            state.main = Slot::Found(Some(found.main));
        }
        if matches!(state.detect, Slot::Found(_)) {
            state.detect = Slot::Found(found.detect);
        }
        state.error = None;
        state.searched = true;
        drop(state);
        self.board.mark(&self.camera);
    }

    /// The finder found nothing: the addresses found before stay (the camera may only be busy).
    pub fn failed(&self, error: String) {
        let mut state = lock(&self.state);
        state.error = Some(error);
        state.searched = true;
        drop(state);
        self.board.mark(&self.camera);
    }

    fn slot(&self, kind: StreamKind) -> Slot {
        let state = lock(&self.state);
        match kind {
            StreamKind::Main => state.main.clone(),
            StreamKind::Detect => state.detect.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn camera(text: &str) -> CameraConfig {
        toml::from_str(&format!("id = \"gate\"\n{text}")).expect("camera table")
    }

    const ONVIF: &str = "[onvif]\nurl = \"http://10.0.0.5/onvif/device_service\"\n";

    #[test]
    fn configured_urls_win_and_the_rest_is_found() {
        let board = Arc::new(StateBoard::default());
        let fixed = StreamAddresses::new(&camera(&format!("url = \"rtsp://h/main\"\n{ONVIF}")), board.clone());
        assert!(!fixed.to_find());
        assert_eq!(
            fixed.current(StreamKind::Main).map(|l| l.url).ok().as_deref(),
            Some("rtsp://h/main")
        );
        assert!(!fixed.may_have(StreamKind::Detect));

        let found = StreamAddresses::new(
            &camera(&format!("detect_url = \"rtsp://h/sub\"\n{ONVIF}")),
            board.clone(),
        );
        assert!(found.to_find());
        assert!(found.current(StreamKind::Main).is_err_and(|e| e.contains("waiting")));
        found.failed("GetProfiles: refused".into());
        assert!(
            found
                .current(StreamKind::Main)
                .is_err_and(|e| e.contains("GetProfiles"))
        );
        let located = |url: &str| Located {
            url: url.into(),
            found: Some("onvif".into()),
        };
        found.found(Found {
            main: located("rtsp://u:p@h/a"),
            detect: Some(located("rtsp://u:p@h/b")),
        });
        assert_eq!(
            found.current(StreamKind::Main).map(|l| l.shown()).ok().as_deref(),
            Some("rtsp://u:***@h/a")
        );
        // The configured detect stream is kept.
        assert_eq!(
            found.current(StreamKind::Detect).map(|l| l.url).ok().as_deref(),
            Some("rtsp://h/sub")
        );

        let single = StreamAddresses::new(&camera(ONVIF), board);
        single.found(Found {
            main: located("rtsp://h/a"),
            detect: None,
        });
        assert!(single.may_have(StreamKind::Detect) && !single.has(StreamKind::Detect));
        assert!(
            single
                .current(StreamKind::Detect)
                .is_err_and(|e| e.contains("offer no detect stream"))
        );
    }
}
