//! Cameras as they are: RTSP servers this project did not write. VLC's RTSP server (Debian's
//! `vlc-bin`) refuses RTP over TCP with `461 Unsupported Transport`, as many older cameras and
//! encoders do; gst-rtsp-server can be told to do the same. With no `transport` key (`auto`), the
//! service falls back to UDP, says so in the camera's state, and verifies.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alarm_verifier::analysis::verdict::VerdictKind;
use alarm_verifier::tools::demo::{Broker, Probe, RtspCameraServer, footage, free_port};
use common::*;

const FAST_CLIP: &str = "[clip]\npre_s = 1.0\npost_s = 1.0\nanalysis_fps = 2.0\n";

/// VLC serving a file at `rtsp://127.0.0.1:{port}/cam`, killed when dropped. VLC will not run as
/// root, so it runs as `nobody` on a copy of the footage it can read.
struct Vlc {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Vlc {
    fn serve(file: &Path) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let copy = dir.path().join("cam.mp4");
        std::fs::copy(file, &copy).expect("copy footage");
        let port = free_port().expect("port");
        let mut command = if rustix_is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "cvlc"]);
            c
        } else {
            Command::new("cvlc")
        };
        let child = command
            .args(["-q", "--no-audio", "--loop"])
            .arg(&copy)
            .arg("--sout")
            .arg(format!("#rtp{{sdp=rtsp://127.0.0.1:{port}/cam}}"))
            .env("HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cvlc (setup installs vlc-bin)");
        Self { child, port, _dir: dir }
    }

    fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }
}

impl Drop for Vlc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Starts the service on one camera at `url` and returns how long it took to come online, with
/// the state that says so.
async fn online_after(
    url: &str,
) -> (
    Broker,
    Probe,
    Service,
    tempfile::TempDir,
    String,
    Duration,
    serde_json::Value,
) {
    let broker = Broker::start().expect("broker");
    let t = topics();
    let mut probe = Probe::connect(broker.port(), &[t.verdict("+"), t.camera_state("+")])
        .await
        .expect("probe");
    let dir = tempfile::tempdir().expect("dir");
    let config = site_toml(broker.port(), &[("cam", url.to_owned())], FAST_CLIP, dir.path());
    let started = Instant::now();
    let service = Service::start(&config, dir.path());
    let topic = t.camera_state("cam");
    let state = wait_for(
        service.about("the camera online"),
        Duration::from_secs(40),
        async || {
            let msg = probe.next(|m| m.topic == topic, Duration::from_millis(500)).await?;
            let state: serde_json::Value = serde_json::from_slice(&msg.payload).ok()?;
            (state["state"] == "online").then_some(state)
        },
    )
    .await;
    let took = started.elapsed();
    (broker, probe, service, dir, config, took, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vlc_served_camera_with_no_transport_key_falls_back_to_udp_and_verifies() {
    let vlc = Vlc::serve(&footage("vtest.mp4"));
    let (broker, mut probe, service, _dir, config, took, state) = online_after(&vlc.url()).await;
    assert_eq!(state["transport"], "udp (tcp refused: 461)", "{state}");
    println!(
        "VLC's RTSP server: online over UDP {:.1} s after start",
        took.as_secs_f64()
    );

    let mut states = Probe::connect(broker.port(), &[topics().camera_state("+")])
        .await
        .expect("state probe");
    wait_pre_alarm_buffered(&mut states, &config, &service).await;
    probe
        .publish(&topics().alarm("cam"), alarm_json("vlc-1"))
        .await
        .expect("alarm");
    let doc = wait_verdict(&mut probe, "vlc-1", Duration::from_secs(15), &service).await;
    assert_eq!(doc.verdict, VerdictKind::Verified, "{doc:?}");
    assert!(service.log().contains("trying UDP"), "the fallback is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gst_rtsp_server_refusing_tcp_is_used_over_udp_and_one_allowing_it_over_tcp() {
    let file = footage("vtest.mp4");
    let udp_only = RtspCameraServer::start_udp_only(&[("cam", file.as_path())]).expect("server");
    let (_broker, _probe, _service, _dir, _config, took, state) = online_after(&udp_only.url("cam")).await;
    assert_eq!(state["transport"], "udp (tcp refused: 461)", "{state}");
    println!(
        "gst-rtsp-server, UDP only: online {:.1} s after start",
        took.as_secs_f64()
    );

    let both = RtspCameraServer::start(&[("cam", file.as_path())]).expect("server");
    let (_broker, _probe, _service, _dir, _config, took, state) = online_after(&both.url("cam")).await;
    assert_eq!(state["transport"], "tcp", "{state}");
    println!("gst-rtsp-server, TCP: online {:.1} s after start", took.as_secs_f64());
}
