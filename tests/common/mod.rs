//! Shared by the integration tests: the service binary as a child process, and its config.

#![allow(dead_code)] // each test file uses its own part of this

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use alarm_verifier::demo::Probe;
use alarm_verifier::mqtt::Topics;
use alarm_verifier::verdict::VerdictDocument;

pub const PREFIX: &str = "alarm-verifier";

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn topics() -> Topics {
    Topics::new(PREFIX)
}

/// A site config in TOML, as a technician would write it.
pub fn site_toml(broker_port: u16, cameras: &[(&str, String)], extra: &str) -> String {
    let mut text = format!(
        "site = \"test-site\"\n{extra}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\ntopic_prefix = \"{PREFIX}\"\n\
         [detector]\nmodel = \"{}\"\nonnxruntime = \"{}\"\n",
        root().join("models/yolox_nano.onnx").display(),
        root().join("third_party/onnxruntime/libonnxruntime.so.1.31.1").display(),
    );
    for (id, url) in cameras {
        text.push_str(&format!("[[camera]]\nid = \"{id}\"\nurl = \"{url}\"\n"));
    }
    text
}

/// The service binary running `run --config`, killed when dropped. Its log goes to a file.
pub struct Service {
    child: Child,
    dir: tempfile::TempDir,
}

impl Service {
    pub fn start(config_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("site.toml");
        std::fs::write(&config, config_toml).expect("write config");
        let log = std::fs::File::create(dir.path().join("service.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the service binary");
        Self { child, dir }
    }

    /// The service's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("service.log")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    assert!(online.is_some(), "camera {camera} never came online; service log:\n{}", service.log());
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
    let msg = msg.unwrap_or_else(|| panic!("no verdict for {alarm_id} within {timeout:?}; service log:\n{}", service.log()));
    serde_json::from_slice(&msg.payload).unwrap_or_else(|e| panic!("verdict is not a v1 document: {e}"))
}

pub fn alarm_json(alarm_id: &str) -> Vec<u8> {
    serde_json::json!({"alarm_id": alarm_id, "source": "test"}).to_string().into_bytes()
}
