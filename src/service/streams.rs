//! Finding the streams of cameras configured by their ONVIF address alone: each such camera's
//! media service is asked at start, again whenever one of its streams keeps failing (cameras
//! hand out new URIs after a reboot or a firmware change), and with backoff while it does not
//! answer. What is found goes to the camera's [`StreamAddresses`], credentials included.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{CameraConfig, Secret};
use crate::ingest::locate::{Found, Located, StreamAddresses};
use crate::intake::onvif::{self, StreamProfile};
use crate::support::Backoff;

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why a camera's streams were not found.
#[derive(Debug, thiserror::Error)]
enum FindError {
    #[error(transparent)]
    Media(#[from] onvif::MediaError),
    #[error("none of the camera's {count} video profiles is H.264 or H.265 ({encodings})")]
    NoUsableProfile { count: usize, encodings: String },
    #[error("the stream URI of {profile} cannot hold credentials")]
    NoCredentials { profile: String },
}

/// The user and password that go into the stream URLs found.
type RtspCredentials = Option<(String, Secret)>;

/// Starts a finder for `camera` (the `index`th in the config) when some of its streams are to be
/// found; it runs until `stop`.
pub(super) fn start_finder(
    camera: &CameraConfig,
    index: usize,
    addresses: Arc<StreamAddresses>,
    stop: CancellationToken,
) {
    let Some(onvif) = camera.onvif.clone().filter(|_| addresses.to_find()) else {
        return;
    };
    let key = format!("camera[{index}]");
    let secrets = onvif
        .resolve_password(&key)
        .and_then(|password| Ok((password, camera.rtsp_credentials(&key)?)));
    let (password, credentials) = match secrets {
        Ok(secrets) => secrets,
        Err(e) => {
            addresses.failed(e.to_string());
            return;
        }
    };
    let finder = Finder {
        camera: camera.id.clone(),
        onvif,
        password,
        credentials,
        addresses,
    };
    tokio::spawn(async move {
        tokio::select! {
            () = finder.run() => {}
            () = stop.cancelled() => {}
        }
    });
}

struct Finder {
    camera: String,
    onvif: crate::config::OnvifConfig,
    password: Option<Secret>,
    credentials: RtspCredentials,
    addresses: Arc<StreamAddresses>,
}

impl Finder {
    /// Searches, then waits for a stream to ask again; retries with backoff while it fails.
    async fn run(self) {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            let started = std::time::Instant::now();
            match self.search().await {
                Ok(found) => {
                    tracing::info!(
                        camera = %self.camera,
                        main = %found.main.shown(),
                        detect = %found.detect.as_ref().map(Located::shown).unwrap_or_default(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "camera streams found through ONVIF"
                    );
                    self.addresses.found(found);
                    backoff.reset();
                    self.addresses.wanted().await;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(camera = %self.camera, error = %e, retry_in_s = delay.as_secs(), "ONVIF stream discovery failed");
                    self.addresses.failed(e.to_string());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn search(&self) -> Result<Found, FindError> {
        let report = onvif::find_streams(&self.camera, &self.onvif, self.password.clone()).await?;
        let Some((main, detect)) = onvif::choose_streams(&report.profiles) else {
            let encodings: Vec<&str> = report.profiles.iter().map(|p| p.encoding.as_str()).collect();
            return Err(FindError::NoUsableProfile {
                count: report.profiles.len(),
                encodings: encodings.join(", "),
            });
        };
        Ok(Found {
            main: self.located(main)?,
            detect: detect.map(|d| self.located(d)).transpose()?,
        })
    }

    fn located(&self, profile: &StreamProfile) -> Result<Located, FindError> {
        let url = match &self.credentials {
            Some((username, password)) => {
                onvif::with_credentials(&profile.uri, username, password).ok_or_else(|| FindError::NoCredentials {
                    profile: profile.describe(),
                })?
            }
            None => profile.uri.clone(),
        };
        Ok(Located {
            url,
            found: Some(profile.describe()),
        })
    }
}
