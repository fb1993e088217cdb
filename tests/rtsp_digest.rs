//! A camera behind RTSP Digest authentication (gst-rtsp-server's RTSPAuth, as most cameras ask):
//! with the right credentials in its URL it verifies; with a wrong password its state says 401,
//! and no password shows in the service's log or state. The whole service, a real mosquitto and
//! the model.

mod common;

use std::time::{Duration, Instant};

use alarm_verifier::analysis::verdict::VerdictKind;
use alarm_verifier::tools::demo::{Broker, Probe, RtspCameraServer, footage};
use common::{Service, topics};

const USER: &str = "viewer";
const PASSWORD: &str = "Rtsp-Pass9";
const WRONG: &str = "Wrong-Pass7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_credentials_verify_and_a_wrong_password_shows_401_without_showing_itself() {
    let file = footage("storm/people-360.mp4");
    let server =
        RtspCameraServer::start_with_digest(&[("gate", file.as_path()), ("yard", file.as_path())], USER, PASSWORD)
            .expect("rtsp server");
    let with = |password: &str, mount: &str| {
        server
            .url(mount)
            .replace("rtsp://", &format!("rtsp://{USER}:{password}@"))
    };
    let broker = Broker::start().expect("broker");
    let mut probe = Probe::connect(broker.port(), &[topics().verdict("+"), topics().camera_state("+")])
        .await
        .expect("probe");
    let dir = tempfile::tempdir().expect("site dir");
    let cameras = [("gate", with(PASSWORD, "gate")), ("yard", with(WRONG, "yard"))];
    let config = common::site_toml(broker.port(), &cameras, "", dir.path());
    let started = Instant::now();
    let service = Service::start(&config, dir.path());

    common::wait_camera_online(&mut probe, "gate", &service).await;
    println!(
        "Digest-protected camera online {} ms after start",
        started.elapsed().as_millis()
    );
    let yard_topic = topics().camera_state("yard");
    let refused = probe
        .next(
            |m| m.topic == yard_topic && String::from_utf8_lossy(&m.payload).contains("401"),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|| panic!("yard's state never said 401; log:\n{}", service.log()));
    let state: serde_json::Value = serde_json::from_slice(&refused.payload).expect("state JSON");
    assert_eq!(state["state"], "offline", "{state}");
    println!("wrong password: {}", state["last_error"]);
    let text = state.to_string();
    assert!(
        !text.contains(WRONG) && !text.contains(PASSWORD),
        "a password is in the state: {text}"
    );
    assert_eq!(
        state["url"],
        format!("rtsp://{USER}:***@127.0.0.1:{}/yard", server.port()),
        "{state}"
    );

    let mut states = Probe::connect(broker.port(), &[topics().camera_state("gate")])
        .await
        .expect("state probe");
    let gate_only = config.replace(
        &format!("[[camera]]\nid = \"yard\"\nurl = \"{}\"\n", with(WRONG, "yard")),
        "",
    );
    common::wait_pre_alarm_buffered(&mut states, &gate_only, &service).await;
    probe
        .publish(&topics().alarm("gate"), common::alarm_json("digest-1"))
        .await
        .expect("publish alarm");
    let verdict = common::wait_verdict(&mut probe, "digest-1", Duration::from_secs(30), &service).await;
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");

    let log = service.log();
    assert!(!log.contains(PASSWORD), "the password is in the log");
    assert!(!log.contains(WRONG), "the wrong password is in the log");
}
