//! The view check on a live camera: a real mosquitto broker, a test card served by the in-process
//! RTSP server whose view the test blacks out (as a hand over the lens would), the real model, and
//! the service binary as a child process.

mod common;

use std::time::{Duration, Instant};

use alarm_verifier::analysis::verdict::{Cause, VerdictKind};
use alarm_verifier::tools::demo::{Broker, Probe, RtspCameraServer};
use common::{Service, alarm_json, site_toml, topics, wait_camera_online, wait_pre_alarm_buffered};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_blacked_out_at_the_alarm_is_unverifiable_not_a_false_alarm() {
    let broker = Broker::start().expect("broker");
    let (server, view) = RtspCameraServer::start_test_card("door").expect("rtsp server");
    let t = topics();
    let mut probe = Probe::connect(broker.port(), &[t.verdict("+"), t.camera_state("+"), t.errors()])
        .await
        .expect("probe");
    let dir = tempfile::tempdir().expect("site dir");
    let config = site_toml(broker.port(), &[("door", server.url("door"))], "", dir.path());
    let service = Service::start(&config, dir.path());
    wait_camera_online(&mut probe, "door", &service).await;
    let mut states = Probe::connect(broker.port(), &[t.camera_state("+")])
        .await
        .expect("state probe");
    wait_pre_alarm_buffered(&mut states, &config, &service).await;

    // The control: the same view, left alone, is cleared as a false alarm.
    probe
        .publish(&t.alarm("door"), alarm_json("card-seen"))
        .await
        .expect("publish");
    let seen = common::wait_verdict(&mut probe, "card-seen", Duration::from_secs(20), &service).await;
    assert_eq!(seen.verdict, VerdictKind::FalseAlarm, "{seen:?}");
    assert_eq!(seen.cause, None, "{seen:?}");

    // A hand over the lens right after the alarm.
    probe
        .publish(&t.alarm("door"), alarm_json("card-covered"))
        .await
        .expect("publish");
    let raised = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(view.black_out(), "the camera's pipeline is not running");
    let covered = common::wait_verdict(&mut probe, "card-covered", Duration::from_secs(20), &service).await;
    let took = raised.elapsed();
    assert_eq!(covered.verdict, VerdictKind::Unverifiable, "{covered:?}");
    assert_eq!(covered.cause, Some(Cause::ViewBlocked), "{covered:?}");
    assert!(covered.reason.starts_with("view blocked from "), "{}", covered.reason);
    assert!(covered.reason.contains("dark"), "{}", covered.reason);
    // The usual deadline of a false alarm: its window (4 s after the alarm) and the analysis.
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    println!("blacked-out view answered in {took:?}: {}", covered.reason);
    view.restore();
    drop(server);
}

/// The state message's `view`, once it is `state`.
async fn wait_view_state(probe: &mut Probe, camera: &str, state: &str, service: &Service) -> serde_json::Value {
    let topic = topics().camera_state(camera);
    let matches = |payload: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(payload).is_ok_and(|v| v["view"]["state"] == state)
    };
    let msg = probe
        .next(|m| m.topic == topic && matches(&m.payload), Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("camera {camera}'s view never reported {state}; log:\n{}", service.log()));
    serde_json::from_slice(&msg.payload).expect("state JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_covered_while_idle_reports_the_tamper_and_its_alarms_are_unverifiable() {
    let broker = Broker::start().expect("broker");
    let (server, view) = RtspCameraServer::start_test_card("hall").expect("rtsp server");
    let t = topics();
    let mut probe = Probe::connect(broker.port(), &[t.verdict("+"), t.camera_state("+")])
        .await
        .expect("probe");
    let dir = tempfile::tempdir().expect("site dir");
    let url = server.url("hall");
    let config = site_toml(broker.port(), &[("hall", url.clone())], "", dir.path()).replace(
        &format!("url = \"{url}\"\n"),
        &format!("url = \"{url}\"\nview_check_s = 1\n"),
    );
    let service = Service::start(&config, dir.path());
    wait_camera_online(&mut probe, "hall", &service).await;
    wait_view_state(&mut probe, "hall", "ok", &service).await;

    let covered_at = Instant::now();
    assert!(view.black_out(), "the camera's pipeline is not running");
    let state = wait_view_state(&mut probe, "hall", "blocked", &service).await;
    println!(
        "tamper reported {:?} after the cover: {}",
        covered_at.elapsed(),
        state["view"]
    );
    let reason = state["view"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("view blocked from ") && reason.contains("dark"),
        "{state}"
    );
    let since: chrono::DateTime<chrono::Utc> = state["view"]["since"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no time in view.since: {state}"));

    // The tamper can be reported 2 s after the cover, less than `clip.pre_s` plus the video
    // still on its way: wait until the alarm's pre-alarm window begins after the lost view's
    // first frame, so that the whole window is black.
    let window_black = since + chrono::Duration::milliseconds((common::pre_alarm_s(&config) * 1000.0) as i64 + 200);
    if let Ok(wait) = (window_black - chrono::Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
    // The whole window is black: nobody could be seen, so it is not a false alarm.
    probe
        .publish(&t.alarm("hall"), alarm_json("hall-covered"))
        .await
        .expect("publish");
    let verdict = common::wait_verdict(&mut probe, "hall-covered", Duration::from_secs(20), &service).await;
    assert_eq!(verdict.verdict, VerdictKind::Unverifiable, "{verdict:?}");
    assert_eq!(verdict.cause, Some(Cause::ViewBlocked), "{verdict:?}");
    assert!(verdict.reason.contains("idle check"), "{}", verdict.reason);

    assert!(view.restore());
    wait_view_state(&mut probe, "hall", "ok", &service).await;
    drop(server);
}
