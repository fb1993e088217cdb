//! Shared by the integration tests: the service binary as a child process, its config, and the
//! bounded waits on what the service can be seen to do (no fixed sleeps).

#![allow(dead_code)] // each test file uses its own part of this

pub mod onvif_camera;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alarm_verifier::analysis::verdict::VerdictDocument;
use alarm_verifier::mqtt::Topics;
use alarm_verifier::tools::demo::Probe;

pub const PREFIX: &str = "alarm-verifier";

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn topics() -> Topics {
    Topics::new(PREFIX)
}

/// A site config in TOML, as a technician would write it. `extra` holds further tables
/// (e.g. `[clip]`); the store goes into `site_dir`.
pub fn site_toml(broker_port: u16, cameras: &[(&str, String)], extra: &str, site_dir: &Path) -> String {
    let mut text = format!(
        "site = \"test-site\"\n{extra}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\ntopic_prefix = \"{PREFIX}\"\n\
         [detector]\nmodel = \"{}\"\nonnxruntime = \"{}\"\n[store]\npath = \"{}\"\n",
        root().join("models/yolox_nano.onnx").display(),
        root()
            .join("third_party/onnxruntime/libonnxruntime.so.1.31.1")
            .display(),
        site_dir.join("alarm-verifier.db").display(),
    );
    // Tests run side by side: the HTTP server is off unless a test gives it a port of its own.
    if !extra.contains("[http]") {
        text.push_str("[http]\nlisten = \"\"\n");
    }
    for (id, url) in cameras {
        text.push_str(&format!("[[camera]]\nid = \"{id}\"\nurl = \"{url}\"\n"));
    }
    text
}

/// The service binary running `run --config`, killed when dropped. Its log goes to a file in the
/// site's folder (appended to across restarts).
pub struct Service {
    child: Child,
    dir: PathBuf,
}

impl Service {
    pub fn start(config_toml: &str, site_dir: &Path) -> Self {
        Self::start_with_env(config_toml, site_dir, &[])
    }

    pub fn start_with_env(config_toml: &str, site_dir: &Path, env: &[(&str, &str)]) -> Self {
        let config = site_dir.join("site.toml");
        std::fs::write(&config, config_toml).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(site_dir.join("service.log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the service binary");
        Self {
            child,
            dir: site_dir.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `what` a wait is for, with this service's log as it is if the wait fails.
    pub fn about<'a>(&'a self, what: &'a str) -> About<'a> {
        About { what, service: self }
    }

    /// The service's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("service.log")).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit; None if it did not exit within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        None
    }

    /// SIGKILL: no chance to clean up, as in a crash or power cut.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often the bounded waits look again: short next to anything a test waits for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `ready` every [`POLL_INTERVAL`] until it yields a value; panics with "timed out after N s
/// waiting for {what}" once `timeout` has passed. `what` is formatted only then, so it may read the
/// service's log at that moment (see [`Service::about`]).
pub async fn wait_for<T>(what: impl fmt::Display, timeout: Duration, mut ready: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {:.1} s waiting for {what}", timeout.as_secs_f64());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`wait_for`] a condition with nothing to return.
pub async fn wait_until(what: impl fmt::Display, timeout: Duration, mut ready: impl FnMut() -> bool) {
    wait_for(what, timeout, async || ready().then_some(())).await;
}

/// [`wait_until`] for code outside the async runtime: blocks the thread between looks.
pub fn wait_until_blocking(what: impl fmt::Display, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() >= deadline {
            panic!("timed out after {:.1} s waiting for {what}", timeout.as_secs_f64());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A bounded wait for something that must NOT happen, where no later positive marker shows it
/// would have happened by now: the test looks for `window` and then trusts the silence.
pub const QUIET_WINDOW: Duration = Duration::from_millis(300);

/// What a wait is for, followed by the service's log as it is when the wait fails.
pub struct About<'a> {
    what: &'a str,
    service: &'a Service,
}

impl fmt::Display for About<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; service log:\n{}", self.what, self.service.log())
    }
}

/// When `stream` (a state message, or its `detect` part) has been online since; None while it is not.
fn online_since(stream: &serde_json::Value) -> Option<chrono::DateTime<chrono::Utc>> {
    if stream["state"] != "online" {
        return None;
    }
    stream["since"].as_str()?.parse().ok()
}

/// The cameras in a site config and whether each has a detect stream, and the pre-alarm seconds.
fn buffering_needs(config_toml: &str) -> (Vec<(String, bool)>, f64) {
    let config: toml::Table = config_toml.parse().expect("the test's config is TOML");
    let pre_s = config
        .get("clip")
        .and_then(|c| c.get("pre_s"))
        .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
        .unwrap_or_else(|| alarm_verifier::config::ClipConfig::default().pre_s);
    let cameras = config
        .get("camera")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.get("id")?.as_str()?.to_owned(), c.get("detect_url").is_some())))
        .collect();
    (cameras, pre_s)
}

/// The pre-alarm seconds of `config_toml` (`clip.pre_s`, else its default).
pub fn pre_alarm_s(config_toml: &str) -> f64 {
    buffering_needs(config_toml).1
}

/// Waits until every camera of `config_toml` holds the pre-alarm window (`clip.pre_s`) in its
/// rings: each of its streams online, by its latest retained state message, for at least that
/// long. The rings fill from the first frame, which is when a stream's `since` is stamped.
/// `states` must be freshly subscribed to the camera state topics, so it holds the retained ones.
pub async fn wait_pre_alarm_buffered(states: &mut Probe, config_toml: &str, service: &Service) {
    let (cameras, pre_s) = buffering_needs(config_toml);
    let pre_alarm = chrono::Duration::milliseconds((pre_s * 1000.0).ceil() as i64);
    let mut latest: std::collections::HashMap<String, serde_json::Value> = Default::default();
    let prefix = format!("{PREFIX}/cameras/");
    let what = format!("{pre_s} s of pre-alarm video from cameras {cameras:?}");
    wait_for(service.about(&what), Duration::from_secs(40), async || {
        states.pump(Duration::ZERO).await;
        while let Some(m) = states.backlog_take(|m| m.topic.starts_with(&prefix)) {
            let Some(camera) = m.topic.strip_prefix(&prefix).and_then(|t| t.strip_suffix("/state")) else {
                continue;
            };
            let state = serde_json::from_slice(&m.payload).unwrap_or_default();
            latest.insert(camera.to_owned(), state);
        }
        let buffered_from = |(id, detect): &(String, bool)| {
            let state = latest.get(id)?;
            let main = online_since(state)?;
            if *detect {
                Some(main.max(online_since(&state["detect"])?))
            } else {
                Some(main)
            }
        };
        let all_from = cameras.iter().map(buffered_from).collect::<Option<Vec<_>>>()?;
        all_from
            .into_iter()
            .all(|since| chrono::Utc::now() >= since + pre_alarm)
            .then_some(())
    })
    .await;
}

/// `log` without its ANSI colour codes, so that lines read as `time LEVEL target: message key=value`.
pub fn without_colours(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// When the service last logged `camera`'s main stream online: the time its ring began to fill.
fn logged_online_at(log: &str, camera: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let wanted = format!("camera={camera} ");
    log.lines()
        .filter(|l| l.contains("camera stream online") && l.contains(&wanted) && l.contains("stream=\"main stream\""))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .next_back()
}

/// As [`wait_pre_alarm_buffered`], for services that share camera state topics (boxes of a pair):
/// each of `cameras`' main streams logged online at least `clip.pre_s` of `config_toml` ago.
pub async fn wait_pre_alarm_logged(service: &Service, cameras: &[&str], config_toml: &str) {
    let (_, pre_s) = buffering_needs(config_toml);
    let pre_alarm = chrono::Duration::milliseconds((pre_s * 1000.0).ceil() as i64);
    let what = format!("{pre_s} s of pre-alarm video from cameras {cameras:?}");
    wait_until(service.about(&what), Duration::from_secs(40), || {
        let log = without_colours(&service.log());
        cameras
            .iter()
            .all(|camera| logged_online_at(&log, camera).is_some_and(|since| chrono::Utc::now() >= since + pre_alarm))
    })
    .await;
}

/// Waits until the service reports `camera` online on its retained state topic.
pub async fn wait_camera_online(probe: &mut Probe, camera: &str, service: &Service) {
    let topic = topics().camera_state(camera);
    let online = probe
        .next(
            |m| m.topic == topic && String::from_utf8_lossy(&m.payload).contains("\"state\":\"online\""),
            Duration::from_secs(40),
        )
        .await;
    assert!(
        online.is_some(),
        "camera {camera} never came online; service log:\n{}",
        service.log()
    );
}

/// Waits for the verdict for `alarm_id`.
pub async fn wait_verdict(probe: &mut Probe, alarm_id: &str, timeout: Duration, service: &Service) -> VerdictDocument {
    let verdicts = format!("{PREFIX}/verdicts/");
    let wanted = format!("\"alarm_id\":\"{alarm_id}\"");
    let msg = probe
        .next(
            |m| m.topic.starts_with(&verdicts) && String::from_utf8_lossy(&m.payload).contains(&wanted),
            timeout,
        )
        .await;
    let msg = msg.unwrap_or_else(|| {
        panic!(
            "no verdict for {alarm_id} within {timeout:?}; service log:\n{}",
            service.log()
        )
    });
    serde_json::from_slice(&msg.payload).unwrap_or_else(|e| panic!("verdict is not a v1 document: {e}"))
}

pub fn alarm_json(alarm_id: &str) -> Vec<u8> {
    serde_json::json!({"alarm_id": alarm_id, "source": "test"})
        .to_string()
        .into_bytes()
}

/// A whole test site: a broker, RTSP cameras serving footage, a probe subscribed to everything
/// the service publishes, and the service itself, with its cameras online.
pub struct Site {
    pub broker: alarm_verifier::tools::demo::Broker,
    pub server: Option<alarm_verifier::tools::demo::RtspCameraServer>,
    /// The cameras' detect streams, on a server of their own so a test can stop them alone.
    pub detect_server: Option<alarm_verifier::tools::demo::RtspCameraServer>,
    pub probe: Probe,
    pub service: Service,
    /// The config the service runs with, to start it again after a crash.
    pub config: String,
    pub dir: tempfile::TempDir,
}

impl Site {
    /// `cameras` pairs a camera id with a footage file (see `demo::footage`); `extra` holds config tables.
    pub async fn start(cameras: &[(&str, &str)], extra: &str) -> Self {
        let streams: Vec<(&str, &str, Option<&str>)> = cameras.iter().map(|(id, f)| (*id, *f, None)).collect();
        Self::start_streams(&streams, extra).await
    }

    /// As [`start`](Self::start), each camera with a main stream file and, optionally, a detect
    /// stream file (served as `{id}-detect` and configured as its `detect_url`).
    pub async fn start_streams(cameras: &[(&str, &str, Option<&str>)], extra: &str) -> Self {
        Self::start_configured(cameras, extra, &[]).await
    }

    /// As [`start_streams`](Self::start_streams), with further keys for some cameras' `[[camera]]`
    /// tables (`camera_keys` pairs a camera id with TOML lines, e.g. `email_match = "Camera 02"`).
    pub async fn start_configured(
        cameras: &[(&str, &str, Option<&str>)],
        extra: &str,
        camera_keys: &[(&str, &str)],
    ) -> Self {
        let broker = alarm_verifier::tools::demo::Broker::start().expect("broker");
        let detect_files: Vec<(String, PathBuf)> = cameras
            .iter()
            .filter_map(|(id, _, d)| d.map(|d| (format!("{id}-detect"), alarm_verifier::tools::demo::footage(d))))
            .collect();
        let detect_mounts: Vec<(&str, &Path)> = detect_files.iter().map(|(id, f)| (id.as_str(), f.as_path())).collect();
        let detect_server = (!detect_mounts.is_empty())
            .then(|| alarm_verifier::tools::demo::RtspCameraServer::start(&detect_mounts).expect("rtsp server"));
        let cameras: Vec<(&str, &str)> = cameras.iter().map(|(id, f, _)| (*id, *f)).collect();
        let cameras = cameras.as_slice();
        let files: Vec<(&str, PathBuf)> = cameras
            .iter()
            .map(|(id, f)| (*id, alarm_verifier::tools::demo::footage(f)))
            .collect();
        let mounts: Vec<(&str, &Path)> = files.iter().map(|(id, f)| (*id, f.as_path())).collect();
        let server = alarm_verifier::tools::demo::RtspCameraServer::start(&mounts).expect("rtsp server");
        let t = topics();
        let probe = Probe::connect(
            broker.port(),
            &[
                t.verdict("+"),
                t.evidence("+"),
                t.camera_state("+"),
                t.status(),
                t.errors(),
            ],
        )
        .await
        .expect("probe");
        let dir = tempfile::tempdir().expect("site dir");
        let urls: Vec<(&str, String)> = cameras.iter().map(|(id, _)| (*id, server.url(id))).collect();
        let mut config = site_toml(broker.port(), &urls, extra, dir.path());
        if let Some(detect) = &detect_server {
            for (id, url) in &urls {
                let detect_url = detect.url(&format!("{id}-detect"));
                if detect_files.iter().any(|(d, _)| *d == format!("{id}-detect")) {
                    let line = format!("url = \"{url}\"\n");
                    config = config.replace(&line, &format!("{line}detect_url = \"{detect_url}\"\n"));
                }
            }
        }
        for (id, keys) in camera_keys {
            let table = format!("[[camera]]\nid = \"{id}\"\n");
            let Some(at) = config.find(&table) else { continue };
            // At the end of this camera's table, so that sub-tables such as [camera.onvif] fit.
            let end = config[at + 1..].find("[[camera]]").map_or(config.len(), |n| at + 1 + n);
            config.insert_str(end, &format!("{}\n", keys.trim_end()));
        }
        let service = Service::start(&config, dir.path());
        let mut site = Self {
            broker,
            server: Some(server),
            detect_server,
            probe,
            service,
            config,
            dir,
        };
        for (id, _) in cameras {
            wait_camera_online(&mut site.probe, id, &site.service).await;
        }
        site
    }

    /// Waits until the ring buffers hold the pre-alarm window (see [`wait_pre_alarm_buffered`]).
    pub async fn let_buffers_fill(&self) {
        let mut states = Probe::connect(self.broker.port(), &[topics().camera_state("+")])
            .await
            .expect("state probe");
        wait_pre_alarm_buffered(&mut states, &self.config, &self.service).await;
    }

    pub async fn raise(&self, camera: &str, alarm_id: &str) {
        self.probe
            .publish(&topics().alarm(camera), alarm_json(alarm_id))
            .await
            .expect("publish alarm");
    }

    pub async fn verdict(&mut self, alarm_id: &str, timeout: Duration) -> VerdictDocument {
        wait_verdict(&mut self.probe, alarm_id, timeout, &self.service).await
    }
}
