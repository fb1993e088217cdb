//! Cameras set up by their ONVIF address alone: the whole service (mosquitto, the model, the
//! binary) asks the ONVIF camera double (tests/common/onvif_camera.rs) for its media profiles and
//! stream URIs, and ingests the streams they point at, served by gst-rtsp-server in this process;
//! and `alarm-verifier probe` against the same double.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use alarm_verifier::analysis::verdict::VerdictKind;
use alarm_verifier::tools::demo::{Broker, Probe, RtspCameraServer, footage};
use common::onvif_camera::{CameraOptions, MediaProfile, OnvifCamera};
use common::{Service, topics};

const CAMERA: &str = "entrance";

/// A site whose one camera is configured by its ONVIF address alone.
struct OnvifSite {
    _broker: Broker,
    probe: Probe,
    service: Service,
    _dir: tempfile::TempDir,
}

impl OnvifSite {
    async fn start(double: &OnvifCamera) -> Self {
        let broker = Broker::start().expect("broker");
        let t = topics();
        let probe = Probe::connect(broker.port(), &[t.verdict("+"), t.camera_state("+")])
            .await
            .expect("probe");
        let dir = tempfile::tempdir().expect("site dir");
        let mut config = common::site_toml(broker.port(), &[], "", dir.path());
        config.push_str(&format!(
            "[[camera]]\nid = \"{CAMERA}\"\n[camera.onvif]\nurl = \"{}\"\nusername = \"admin\"\npassword_env = \"CAMERA_PASSWORD\"\n",
            double.url()
        ));
        let password = CameraOptions::default().password;
        let service = Service::start_with_env(&config, dir.path(), &[("CAMERA_PASSWORD", password.as_str())]);
        Self {
            _broker: broker,
            probe,
            service,
            _dir: dir,
        }
    }

    /// The next state message of the camera that satisfies `wanted`.
    async fn state(&mut self, what: &str, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let topic = topics().camera_state(CAMERA);
        let matches = |payload: &[u8]| serde_json::from_slice::<serde_json::Value>(payload).is_ok_and(|v| wanted(&v));
        let msg = self
            .probe
            .next(|m| m.topic == topic && matches(&m.payload), Duration::from_secs(40))
            .await
            .unwrap_or_else(|| panic!("the camera's state never showed {what}; log:\n{}", self.service.log()));
        serde_json::from_slice(&msg.payload).expect("state JSON")
    }
}

fn storm(name: &str) -> PathBuf {
    footage(&format!("storm/{name}"))
}

/// The double's two profiles: a main 1920x1080 and a sub 640x360 stream, at `main` and `sub`.
fn main_and_sub(main: &str, sub: &str) -> Vec<MediaProfile> {
    vec![
        MediaProfile::h264("Profile_1", 1920, 1080, main),
        MediaProfile::h264("Profile_2", 640, 360, sub),
    ]
}

fn both_online_on(state: &serde_json::Value, main: &str, sub: &str) -> bool {
    let on = |stream: &serde_json::Value, path: &str| {
        stream["state"] == "online" && stream["url"].as_str().is_some_and(|u| u.ends_with(path))
    };
    on(state, main) && on(&state["detect"], sub)
}

fn online_since(stream: &serde_json::Value) -> Option<chrono::DateTime<chrono::Utc>> {
    (stream["state"] == "online")
        .then(|| stream["since"].as_str())
        .flatten()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.to_utc())
}

/// The password is nowhere in what the service published or logged.
fn assert_no_password(state: &serde_json::Value, site: &OnvifSite) {
    let password = CameraOptions::default().password;
    let text = state.to_string();
    assert!(!text.contains(&password), "the password is in the state: {text}");
    assert!(!site.service.log().contains(&password), "the password is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onvif_only_camera_streams_its_largest_profile_and_analyses_its_sub_profile() {
    let (main_file, sub_file) = (storm("people-1080.mp4"), storm("people-360.mp4"));
    let server = RtspCameraServer::start(&[("main", main_file.as_path()), ("sub", sub_file.as_path())]).expect("rtsp");
    let double = OnvifCamera::start(CameraOptions::default()).await;
    // The sub profile first: the order the camera lists them in does not matter.
    let mut profiles = main_and_sub(&server.url("main"), &server.url("sub"));
    profiles.reverse();
    double.set_profiles(profiles);

    let started = Instant::now();
    let mut site = OnvifSite::start(&double).await;
    // Both found streams online and the event subscription made: the latest state shows all three.
    let state = site
        .state("both found streams online and the events subscribed", |s| {
            both_online_on(s, "/main", "/sub") && s["onvif"]["state"] == "subscribed"
        })
        .await;
    println!(
        "ONVIF-only camera: online on both found streams {} ms after start",
        started.elapsed().as_millis()
    );
    let port = server.port();
    assert_eq!(
        state["url"],
        format!("rtsp://admin:***@127.0.0.1:{port}/main"),
        "{state}"
    );
    assert_eq!(
        state["detect"]["url"],
        format!("rtsp://admin:***@127.0.0.1:{port}/sub"),
        "{state}"
    );
    assert_eq!(
        state["found"], "onvif profile \"Profile_1Stream\" 1920x1080 H264",
        "{state}"
    );
    assert_eq!(
        state["detect"]["found"], "onvif profile \"Profile_2Stream\" 640x360 H264",
        "{state}"
    );
    assert_eq!(state["detect"]["resolution"], "640x360", "{state}");
    assert_no_password(&state, &site);
    let counters = double.counters();
    assert!(
        counters.get_profiles >= 1 && counters.get_stream_uris >= 2,
        "{counters:?}"
    );
    let log = common::without_colours(&site.service.log());
    let took = log
        .lines()
        .find(|l| l.contains("camera streams found through ONVIF"))
        .and_then(|l| l.split("took_ms=").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or("?");
    println!("ONVIF stream discovery took {took} ms");

    // The pre-alarm window (clip.pre_s, 2 s) in both rings.
    let buffered_from = online_since(&state)
        .max(online_since(&state["detect"]))
        .expect("online since");
    let wait = (buffered_from + chrono::Duration::seconds(2) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait).await;

    double.emit_motion(true);
    let verdicts = format!("{}/verdicts/", common::PREFIX);
    let msg = site
        .probe
        .next(|m| m.topic.starts_with(&verdicts), Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no verdict; log:\n{}", site.service.log()));
    let verdict: alarm_verifier::analysis::verdict::VerdictDocument =
        serde_json::from_slice(&msg.payload).expect("v1 verdict");
    assert_eq!(verdict.camera, CAMERA);
    assert_eq!(verdict.stream.as_deref(), Some("detect"), "{verdict:?}");
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");
    assert_no_password(&state, &site);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_follows_the_streams_to_their_new_uris_after_a_reboot() {
    let file = storm("empty-360.mp4");
    let before = RtspCameraServer::start(&[("live/ch0", file.as_path()), ("live/ch1", file.as_path())]).expect("rtsp");
    let mut double = OnvifCamera::start(CameraOptions::default()).await;
    double.set_profiles(main_and_sub(&before.url("live/ch0"), &before.url("live/ch1")));
    let mut site = OnvifSite::start(&double).await;
    site.state("the first streams online", |s| {
        both_online_on(s, "/live/ch0", "/live/ch1")
    })
    .await;
    let asked_before = double.counters().get_profiles;

    // The camera reboots with new firmware: new stream paths on another port, the old ones gone.
    let after =
        RtspCameraServer::start(&[("Streaming/101", file.as_path()), ("Streaming/102", file.as_path())]).expect("rtsp");
    double.set_profiles(main_and_sub(&after.url("Streaming/101"), &after.url("Streaming/102")));
    double.restart().await;
    let rebooted = Instant::now();
    drop(before);
    site.state("the main stream lost", |s| s["state"] == "offline").await;
    let state = site
        .state("both streams online on their new URIs", |s| {
            both_online_on(s, "/Streaming/101", "/Streaming/102")
        })
        .await;
    println!(
        "streams online on their new URIs {} ms after the reboot",
        rebooted.elapsed().as_millis()
    );
    assert!(
        state["url"]
            .as_str()
            .is_some_and(|u| u.contains(&format!(":{}/", after.port()))),
        "{state}"
    );
    assert!(double.counters().get_profiles > asked_before, "{:?}", double.counters());
    assert_no_password(&state, &site);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_with_media2_only_is_found_through_media2() {
    let file = storm("empty-360.mp4");
    let server = RtspCameraServer::start(&[("h264/main", file.as_path()), ("h264/sub", file.as_path())]).expect("rtsp");
    let double = OnvifCamera::start(CameraOptions::default()).await;
    double.media2_only();
    double.set_profiles(main_and_sub(&server.url("h264/main"), &server.url("h264/sub")));
    let mut site = OnvifSite::start(&double).await;
    let state = site
        .state("both streams found through Media2 online", |s| {
            both_online_on(s, "/h264/main", "/h264/sub")
        })
        .await;
    assert_eq!(
        state["found"], "onvif profile \"Profile_1Stream\" 1920x1080 H264",
        "{state}"
    );
    assert!(double.counters().get_profiles >= 1, "{:?}", double.counters());
    assert_no_password(&state, &site);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_prints_both_profiles_and_saves_a_snapshot_that_decodes() {
    let (main_file, sub_file) = (storm("people-1080.mp4"), storm("people-360.mp4"));
    let server = RtspCameraServer::start(&[("main", main_file.as_path()), ("sub", sub_file.as_path())]).expect("rtsp");
    let double = OnvifCamera::start(CameraOptions::default()).await;
    double.set_profiles(main_and_sub(&server.url("main"), &server.url("sub")));
    let dir = tempfile::tempdir().expect("dir");
    let snapshot = dir.path().join("snapshot.jpg");
    let password = CameraOptions::default().password;
    let command = |json: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_alarm-verifier"));
        command
            .args([
                "probe",
                "--onvif",
                &double.url(),
                "--username",
                "admin",
                "--password-env",
                "CAMERA_PASSWORD",
            ])
            .args(["--seconds", "3", "--snapshot"])
            .arg(&snapshot)
            .env("CAMERA_PASSWORD", &password)
            .env("RUST_LOG", "warn");
        if json {
            command.arg("--json");
        }
        command
    };
    // The table as a technician reads it, for the README's sample.
    let mut table = command(false);
    let printed = tokio::task::spawn_blocking(move || table.output())
        .await
        .expect("join")
        .expect("probe runs");
    let table = String::from_utf8_lossy(&printed.stdout).into_owned();
    println!("{table}");
    assert!(
        table.contains("Profile_1") && table.contains("Profile_2") && table.contains("[camera.onvif]"),
        "{table}"
    );
    let mut json = command(true);
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || json.output())
        .await
        .expect("join")
        .expect("probe runs");
    println!("probe took {} ms", started.elapsed().as_millis());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains(&password) && !stderr.contains(&password),
        "the password shows:\n{stdout}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let profiles = report["onvif"]["profiles"].as_array().expect("profiles");
    let sizes: Vec<(u64, u64)> = profiles
        .iter()
        .map(|p| (p["width"].as_u64().unwrap_or(0), p["height"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(sizes, [(1920, 1080), (640, 360)], "{report:#}");
    assert_eq!(report["onvif"]["main_profile"], "Profile_1", "{report:#}");
    assert_eq!(report["onvif"]["detect_profile"], "Profile_2", "{report:#}");
    assert_eq!(report["onvif"]["motion_events"], true, "{report:#}");
    let offset = report["onvif"]["clock_offset_s"].as_f64().unwrap_or(0.0);
    assert!(
        (offset - 3600.0).abs() < 5.0,
        "the double's clock runs an hour ahead: {offset}"
    );
    assert_eq!(report["stream"]["tcp"]["works"], true, "{report:#}");
    assert_eq!(report["stream"]["udp"]["works"], true, "{report:#}");
    assert_eq!(report["stream"]["resolution"], "1920x1080", "{report:#}");
    assert!(report["stream"]["fps"].as_f64().is_some_and(|f| f > 5.0), "{report:#}");
    assert!(
        report["camera_block"]
            .as_str()
            .is_some_and(|b| b.contains("[camera.onvif]")),
        "{report:#}"
    );
    let jpeg = std::fs::read(&snapshot).expect("snapshot written");
    let image = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).expect("a JPEG");
    assert_eq!((image.width(), image.height()), (1920, 1080));
    println!("{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_uri_on_another_host_is_refused_and_the_state_says_why() {
    let double = OnvifCamera::start(CameraOptions::default()).await;
    // The device is configured as 127.0.0.1; a URI naming another host would get the credentials.
    double.set_profiles(main_and_sub("rtsp://localhost:554/main", "rtsp://localhost:554/sub"));
    let mut site = OnvifSite::start(&double).await;
    let state = site
        .state("the refused stream URI", |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused the stream URI"))
        })
        .await;
    let error = state["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("ONVIF stream discovery failed: GetStreamUri: refused the stream URI")
            && error.contains("allow_other_hosts"),
        "{state}"
    );
    assert_eq!(state["state"], "offline", "{state}");
    assert_no_password(&state, &site);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_of_an_rtsp_url_that_refuses_tcp_suggests_udp() {
    let file = storm("empty-360.mp4");
    let server = RtspCameraServer::start_udp_only(&[("cam", file.as_path())]).expect("rtsp");
    let url = server.url("cam").replace("rtsp://", "rtsp://admin:Secret-9@");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_alarm-verifier"));
    command
        .args(["probe", &url, "--seconds", "2", "--json"])
        .env("RUST_LOG", "warn");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("probe runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("Secret-9"), "the password shows: {stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["stream"]["tcp"]["works"], false, "{report:#}");
    assert!(
        report["stream"]["tcp"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("461")),
        "{report:#}"
    );
    assert_eq!(report["stream"]["udp"]["works"], true, "{report:#}");
    let block = report["camera_block"].as_str().unwrap_or_default();
    assert!(
        block.contains("transport = \"udp\"") && block.contains("admin:***@"),
        "{block}"
    );
}
