//! A self-contained site for the demo and the tests: RTSP cameras serving real footage
//! (in-process, gstreamer-rtsp-server), a mosquitto broker on a free loopback port, and an MQTT
//! probe that plays the monitoring centre.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gstreamer::glib;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use rumqttc::QoS;
use tokio::time::Instant;

use crate::analysis::verdict::VerdictDocument;
use crate::config::{CameraConfig, Config, RtspTransport};
use crate::mqtt::{self, Inbound, LinkEvent, Session, Topics};
use crate::support::gst as gst_support;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Setup(String),
    #[error("footage {0} is missing; run scripts/setup.sh first")]
    Footage(PathBuf),
    #[error("mosquitto: {0}")]
    Broker(String),
    #[error("RTSP server: {0}")]
    Rtsp(String),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

/// The footage the setup script builds, relative to the project root.
pub fn footage(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

/// The video codec of an MP4 file, `h264` or `h265`, read from its `moov` box (the sample entry
/// `avc1`/`avc3` or `hvc1`/`hev1`); the media data before it is skipped, not read.
pub fn mp4_video_codec(path: &Path) -> std::io::Result<Option<&'static str>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut at = 0u64;
    while at + 8 <= len {
        let mut head = [0u8; 16];
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut head[..8])?;
        let mut size = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        let mut header = 8u64;
        if size == 1 {
            file.read_exact(&mut head[8..16])?;
            let mut large = [0u8; 8];
            large.copy_from_slice(&head[8..16]);
            size = u64::from_be_bytes(large);
            header = 16;
        } else if size == 0 {
            size = len - at; // the last box runs to the end of the file
        }
        if size < header {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an MP4 file"));
        }
        if &head[4..8] == b"moov" {
            let body = usize::try_from(size - header).unwrap_or(usize::MAX).min(64 << 20);
            let mut moov = vec![0u8; body];
            file.read_exact(&mut moov)?;
            let has = |tag: &[u8]| moov.windows(4).any(|w| w == tag);
            return Ok(if has(b"hvc1") || has(b"hev1") {
                Some("h265")
            } else if has(b"avc1") || has(b"avc3") {
                Some("h264")
            } else {
                None
            });
        }
        at += size;
    }
    Ok(None)
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16, DemoError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DemoError::Setup(format!("no free port: {e}")))
}

/// A mosquitto broker on a free loopback port, stopped when dropped.
pub struct Broker {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Listener options added to the config, e.g. TLS files and a password file.
    listener_options: String,
}

impl Broker {
    pub fn start() -> Result<Self, DemoError> {
        Self::start_with("allow_anonymous true")
    }

    /// A broker whose listener takes `listener_options` (mosquitto.conf lines).
    pub fn start_with(listener_options: &str) -> Result<Self, DemoError> {
        let dir = tempfile::tempdir().map_err(|e| DemoError::Broker(e.to_string()))?;
        let mut broker = Self {
            port: free_port()?,
            child: None,
            dir,
            listener_options: listener_options.to_owned(),
        };
        broker.restart()?;
        Ok(broker)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the broker, as a crash or power cut would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port, with no memory of earlier sessions.
    pub fn restart(&mut self) -> Result<(), DemoError> {
        self.kill();
        let conf = self.dir.path().join("mosquitto.conf");
        let text = format!(
            "persistence false\nlistener {} 127.0.0.1\n{}\n",
            self.port, self.listener_options
        );
        std::fs::write(&conf, text).map_err(|e| DemoError::Broker(e.to_string()))?;
        let binary = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("mosquitto"));
        let log_path = self.dir.path().join("mosquitto.log");
        let log = std::fs::File::create(&log_path).map_err(|e| DemoError::Broker(e.to_string()))?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| DemoError::Broker(format!("cannot start {} ({e}); run scripts/setup.sh", binary.display())))?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(DemoError::Broker(format!(
                    "not listening on port {} after 10 s: {}",
                    self.port,
                    log.trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// RTSP cameras served in-process from H.264 files, one mount per camera.
pub struct RtspCameraServer {
    port: u16,
    server: rtsp::RTSPServer,
    context: glib::MainContext,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
    source: Option<glib::SourceId>,
}

impl RtspCameraServer {
    /// Serves each `(name, file)` at `rtsp://127.0.0.1:{port}/{name}`; files are MP4 with H.264.
    pub fn start(mounts: &[(&str, &Path)]) -> Result<Self, DemoError> {
        Self::start_on(mounts, 0)
    }

    /// As [`start`](Self::start), on a given loopback port (0: any free one).
    pub fn start_on(mounts: &[(&str, &Path)], port: u16) -> Result<Self, DemoError> {
        Self::serve(mounts, port, None, None)
    }

    /// As [`start`](Self::start), asking clients for RTSP Digest authentication as `username`
    /// with `password` (gst-rtsp-server's RTSPAuth), as most cameras do: others get 401.
    pub fn start_with_digest(mounts: &[(&str, &Path)], username: &str, password: &str) -> Result<Self, DemoError> {
        Self::serve(mounts, 0, None, Some((username, password)))
    }

    /// As [`start`](Self::start), refusing RTP over TCP (`461 Unsupported Transport`) as many
    /// older cameras and encoders do.
    pub fn start_udp_only(mounts: &[(&str, &Path)]) -> Result<Self, DemoError> {
        Self::serve(
            mounts,
            0,
            Some(gstreamer_rtsp_server::gst_rtsp::RTSPLowerTrans::UDP),
            None,
        )
    }

    fn serve(
        mounts: &[(&str, &Path)],
        port: u16,
        protocols: Option<gstreamer_rtsp_server::gst_rtsp::RTSPLowerTrans>,
        digest: Option<(&str, &str)>,
    ) -> Result<Self, DemoError> {
        let mut launches = Vec::new();
        for (name, file) in mounts {
            if !file.is_file() {
                return Err(DemoError::Footage(file.to_path_buf()));
            }
            let location = file.display().to_string().replace('"', "\\\"");
            let codec = match mp4_video_codec(file) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    return Err(DemoError::Rtsp(format!(
                        "{}: no H.264 or H.265 video in it",
                        file.display()
                    )));
                }
                Err(e) => return Err(DemoError::Rtsp(format!("{}: {e}", file.display()))),
            };
            launches.push((
                (*name).to_owned(),
                format!(
                    "( filesrc location=\"{location}\" ! qtdemux ! {codec}parse ! rtp{codec}pay name=pay0 pt=96 config-interval=-1 )"
                ),
            ));
        }
        Self::serve_launches(&launches, port, protocols, None, digest)
    }

    /// A live camera at `rtsp://127.0.0.1:{port}/{name}` showing a test card (640x360, 15 fps),
    /// whose view a test can black out and bring back, as a hand over the lens would.
    pub fn start_test_card(name: &str) -> Result<(Self, ViewSwitch), DemoError> {
        let switch = ViewSwitch::default();
        let launch = "( videotestsrc is-live=true pattern=smpte ! video/x-raw,width=640,height=360,framerate=15/1 \
             ! videobalance name=view ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bframes=0 threads=1 \
             ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )";
        let server = Self::serve_launches(&[(name.to_owned(), launch.to_owned())], 0, None, Some(&switch), None)?;
        Ok((server, switch))
    }

    fn serve_launches(
        launches: &[(String, String)],
        port: u16,
        protocols: Option<gstreamer_rtsp_server::gst_rtsp::RTSPLowerTrans>,
        switch: Option<&ViewSwitch>,
        digest: Option<(&str, &str)>,
    ) -> Result<Self, DemoError> {
        gst_support::init().map_err(|e| DemoError::Rtsp(e.to_string()))?;
        let context = glib::MainContext::new();
        let server = rtsp::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());
        if let Some((username, password)) = digest {
            server.set_auth(Some(&digest_auth(username, password)));
        }
        let mount_points = server
            .mount_points()
            .ok_or_else(|| DemoError::Rtsp("no mount points".into()))?;
        for (name, launch) in launches {
            let factory = rtsp::RTSPMediaFactory::new();
            factory.set_launch(launch);
            // One pipeline for all viewers, as a real camera has.
            factory.set_shared(true);
            if let Some(protocols) = protocols {
                factory.set_protocols(protocols);
            }
            if digest.is_some() {
                factory.add_role_from_structure(&viewer_role());
            }
            if let Some(switch) = switch {
                let slot = switch.balance.clone();
                factory.connect_media_configure(move |_, media| {
                    let found = media
                        .element()
                        .downcast::<gstreamer::Bin>()
                        .ok()
                        .and_then(|bin| bin.by_name("view"));
                    if let Ok(mut slot) = slot.lock() {
                        *slot = found;
                    }
                });
            }
            mount_points.add_factory(&format!("/{name}"), factory);
        }
        let source = server
            .attach(Some(&context))
            .map_err(|e| DemoError::Rtsp(e.to_string()))?;
        let port = u16::try_from(server.bound_port()).map_err(|_| DemoError::Rtsp("not bound to a port".into()))?;
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let loop_clone = main_loop.clone();
        let loop_context = context.clone();
        let thread = std::thread::Builder::new()
            .name("rtsp-server".into())
            .spawn(move || {
                let _ = loop_context.with_thread_default(|| loop_clone.run());
            })
            .map_err(|e| DemoError::Rtsp(e.to_string()))?;
        Ok(Self {
            port,
            server,
            context,
            main_loop,
            thread: Some(thread),
            source: Some(source),
        })
    }

    pub fn url(&self, name: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RtspCameraServer {
    /// Stops listening and drops every client, as a camera that loses power would.
    fn drop(&mut self) {
        self.server
            .client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
        // The listening source lives in our own context; SourceId::remove would look in the default one.
        if let Some(source) = self.source.take().and_then(|id| self.context.find_source_by_id(&id)) {
            source.destroy();
        }
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The role given to a client that authenticated, and the authentication giving it.
const VIEWER_ROLE: &str = "viewer";

fn digest_auth(username: &str, password: &str) -> rtsp::RTSPAuth {
    let auth = rtsp::RTSPAuth::new();
    auth.set_supported_methods(gstreamer_rtsp_server::gst_rtsp::RTSPAuthMethod::Digest);
    let token = rtsp::RTSPToken::builder()
        .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, VIEWER_ROLE)
        .build();
    auth.add_digest(username, password, &token);
    auth
}

/// What the viewer role may do with a mount: see it, and have its media made.
fn viewer_role() -> gstreamer::Structure {
    gstreamer::Structure::builder(VIEWER_ROLE)
        .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS.as_str(), true)
        .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT.as_str(), true)
        .build()
}

/// Blacks out a test card camera's view ([`RtspCameraServer::start_test_card`]) and brings it back.
#[derive(Clone, Default)]
pub struct ViewSwitch {
    balance: std::sync::Arc<std::sync::Mutex<Option<gstreamer::Element>>>,
}

impl ViewSwitch {
    /// Black from now on: no light, no contrast. False until a client has started the camera.
    pub fn black_out(&self) -> bool {
        self.set(-1.0, 0.0, 0.0)
    }

    /// The test card again.
    pub fn restore(&self) -> bool {
        self.set(0.0, 1.0, 1.0)
    }

    fn set(&self, brightness: f64, contrast: f64, saturation: f64) -> bool {
        let Ok(slot) = self.balance.lock() else { return false };
        let Some(balance) = slot.as_ref() else { return false };
        balance.set_property("brightness", brightness);
        balance.set_property("contrast", contrast);
        balance.set_property("saturation", saturation);
        true
    }
}

/// An MQTT client playing the monitoring centre: it raises alarms and collects what comes back.
pub struct Probe {
    client: rumqttc::AsyncClient,
    events: tokio::sync::mpsc::Receiver<LinkEvent>,
    /// Messages received but not asked for yet, oldest first.
    backlog: std::collections::VecDeque<Inbound>,
    sync_topic: String,
}

impl Probe {
    /// Connects to a plain, anonymous broker on `port` and returns once all `filters` are subscribed.
    pub async fn connect(port: u16, filters: &[String]) -> Result<Self, DemoError> {
        let config = crate::config::MqttConfig {
            port,
            ..Default::default()
        };
        Self::connect_with(&config, filters).await
    }

    /// As [`connect`](Self::connect), with TLS and credentials from `config`.
    pub async fn connect_with(config: &crate::config::MqttConfig, filters: &[String]) -> Result<Self, DemoError> {
        let id = format!("probe-{}", uuid::Uuid::new_v4().simple());
        let sync_topic = format!("probe-sync/{id}");
        let mut subscriptions = filters.to_vec();
        // Subscribed last: when a message on it comes back, the broker has taken all the others.
        subscriptions.push(sync_topic.clone());
        let options = mqtt::options(config, &id).map_err(|e| DemoError::Mqtt(e.to_string()))?;
        // A monitoring centre resubscribes quickly after its broker comes back.
        let connection = mqtt::connect(
            options,
            Session {
                reconnect_first: Duration::from_millis(100),
                reconnect_max: Duration::from_millis(250),
                ..Session::new(subscriptions)
            },
        );
        let mut probe = Self {
            client: connection.client,
            events: connection.events,
            backlog: Default::default(),
            sync_topic,
        };
        probe.sync().await?;
        Ok(probe)
    }

    /// Returns once the broker has all the probe's subscriptions (again, after a broker restart).
    pub async fn sync(&mut self) -> Result<(), DemoError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let topic = self.sync_topic.clone();
        while Instant::now() < deadline {
            self.publish(&topic, b"sync".to_vec()).await?;
            if self
                .next(|m| m.topic == topic, Duration::from_millis(500))
                .await
                .is_some()
            {
                return Ok(());
            }
        }
        Err(DemoError::Timeout("the probe's MQTT subscriptions".into()))
    }

    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), DemoError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| DemoError::Mqtt(e.to_string()))
    }

    /// Receives for `duration`, keeping every message in the backlog.
    pub async fn pump(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if let LinkEvent::Message(msg) = event {
                self.backlog.push_back(msg);
            }
        }
    }

    /// Takes the oldest message of the backlog that satisfies `wanted`, without waiting.
    pub fn backlog_take(&mut self, wanted: impl Fn(&Inbound) -> bool) -> Option<Inbound> {
        let i = self.backlog.iter().position(wanted)?;
        self.backlog.remove(i)
    }

    /// The oldest message that satisfies `wanted`, or None after `timeout`.
    /// Other messages stay in the backlog for later calls.
    pub async fn next(&mut self, wanted: impl Fn(&Inbound) -> bool, timeout: Duration) -> Option<Inbound> {
        if let Some(i) = self.backlog.iter().position(&wanted) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(LinkEvent::Message(msg))) if wanted(&msg) => return Some(msg),
                Ok(Some(LinkEvent::Message(msg))) => self.backlog.push_back(msg),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }
}

/// A service config for cameras on `server` and the broker on `broker_port`.
pub fn site_config(broker_port: u16, server: &RtspCameraServer, cameras: &[&str]) -> Config {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = Config::offline_default();
    config.site = "demo".into();
    config.mqtt.port = broker_port;
    config.detector.model = root.join(&config.detector.model);
    config.detector.onnxruntime = root.join(&config.detector.onnxruntime);
    config.store.path = std::env::temp_dir().join(format!("alarm-verifier-demo-{}.db", uuid::Uuid::new_v4().simple()));
    config.cameras = cameras
        .iter()
        .map(|id| CameraConfig {
            id: (*id).to_owned(),
            url: Some(server.url(id)),
            detect_url: None,
            rtsp_username: String::new(),
            rtsp_password: Default::default(),
            rtsp_password_env: String::new(),
            transport: RtspTransport::Auto,
            stall_timeout_s: 10.0,
            view_check_s: 60.0,
            email_match: None,
            onvif: None,
            dc09: None,
            policy: Default::default(),
        })
        .collect();
    // Several demos and tests run side by side; none of them needs the fixed HTTP port.
    config.http.listen = String::new();
    config
}

/// The README's first command: a camera, a broker, the service, one alarm, and its verdict.
pub async fn run_demo() -> Result<String, DemoError> {
    let broker = Broker::start()?;
    let vtest = footage("vtest.mp4");
    let cameras = RtspCameraServer::start(&[("entrance", vtest.as_path())])?;
    let config = site_config(broker.port(), &cameras, &["entrance"]);
    let topics = Topics::new(&config.mqtt.topic_prefix);
    let mut probe = Probe::connect(
        broker.port(),
        &[topics.verdict("+"), topics.camera_state("+"), topics.errors()],
    )
    .await?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pre_s = config.clip.pre_s;
    let service = tokio::spawn(crate::service::run(config, async {
        let _ = stop_rx.await;
    }));

    println!(
        "demo: camera 'entrance' serves {} at {}",
        vtest.display(),
        cameras.url("entrance")
    );
    println!(
        "demo: mosquitto on 127.0.0.1:{}; waiting for the camera to come online",
        broker.port()
    );
    let state_topic = topics.camera_state("entrance");
    let online = probe
        .next(
            |m| m.topic == state_topic && String::from_utf8_lossy(&m.payload).contains("\"online\""),
            Duration::from_secs(30),
        )
        .await;
    if online.is_none() {
        return Err(service_failure(service, stop_tx, "the camera to come online").await);
    }
    // Let the ring buffer fill the pre-alarm window.
    tokio::time::sleep(Duration::from_secs_f64(pre_s + 1.0)).await;
    let alarm = serde_json::json!({"alarm_id": format!("demo-{}", uuid::Uuid::new_v4().simple()), "source": "demo"});
    println!("demo: raising alarm {alarm} on {}", topics.alarm("entrance"));
    probe
        .publish(&topics.alarm("entrance"), alarm.to_string().into_bytes())
        .await?;
    let verdict_topic = topics.verdict("entrance");
    let Some(verdict) = probe.next(|m| m.topic == verdict_topic, Duration::from_secs(30)).await else {
        return Err(service_failure(service, stop_tx, "the verdict").await);
    };
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), service).await;
    let doc: VerdictDocument = serde_json::from_slice(&verdict.payload).map_err(|e| {
        DemoError::Mqtt(format!(
            "verdict does not follow {}: {e}",
            crate::analysis::verdict::SCHEMA
        ))
    })?;
    Ok(serde_json::to_string_pretty(&doc).unwrap_or_default())
}

/// Stops the service and explains what was being waited for, with the service's own error if it failed.
async fn service_failure(
    service: tokio::task::JoinHandle<Result<(), crate::service::ServiceError>>,
    stop: tokio::sync::oneshot::Sender<()>,
    waiting_for: &str,
) -> DemoError {
    if service.is_finished()
        && let Ok(Err(e)) = service.await
    {
        return DemoError::Setup(format!("the service stopped: {e}"));
    }
    let _ = stop.send(());
    DemoError::Timeout(waiting_for.into())
}
