//! The whole path with real parts: RTSP cameras served from real footage, mosquitto, the service
//! binary, the YOLOX model, verdicts and evidence over MQTT.

mod common;

use std::time::Duration;

use alarm_verifier::demo::{Broker, Probe, RtspCameraServer, footage, free_port};
use alarm_verifier::verdict::{SCHEMA, VerdictKind};
use common::*;

/// Time for the ring buffer to hold the pre-alarm window after the camera comes online.
const FILL_PRE_WINDOW: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_verify_and_a_tree_in_wind_is_a_false_alarm() {
    let broker = Broker::start().expect("broker");
    let (vtest, tree) = (footage("vtest.mp4"), footage("tree.mp4"));
    let server = RtspCameraServer::start(&[("entrance", vtest.as_path()), ("garden", tree.as_path())]).expect("rtsp");
    let t = topics();
    let mut probe = Probe::connect(
        broker.port(),
        &[t.verdict("+"), t.evidence("+"), t.camera_state("+"), t.status()],
    )
    .await
    .expect("probe");
    let site = tempfile::tempdir().expect("site dir");
    let service = Service::start(
        &site_toml(
            broker.port(),
            &[("entrance", server.url("entrance")), ("garden", server.url("garden"))],
            "",
            site.path(),
        ),
        site.path(),
    );

    let status = probe.next(|m| m.topic == t.status(), Duration::from_secs(30)).await;
    assert_eq!(status.map(|m| m.payload), Some(b"online".to_vec()), "log:\n{}", service.log());
    wait_camera_online(&mut probe, "entrance", &service).await;
    wait_camera_online(&mut probe, "garden", &service).await;
    tokio::time::sleep(FILL_PRE_WINDOW).await;

    probe.publish(&t.alarm("entrance"), alarm_json("e2e-entrance")).await.expect("publish");
    probe.publish(&t.alarm("garden"), alarm_json("e2e-garden")).await.expect("publish");

    let entrance = wait_verdict(&mut probe, "e2e-entrance", Duration::from_secs(30), &service).await;
    assert_eq!(entrance.verdict, VerdictKind::Verified, "{entrance:?}");
    assert_eq!(entrance.schema, SCHEMA);
    assert_eq!(entrance.camera, "entrance");
    assert_eq!(entrance.site, "test-site");
    assert!(entrance.reason.contains("person"), "{}", entrance.reason);
    assert!(entrance.detections.iter().any(|d| d.label == "person" && d.score >= 0.5));
    for d in &entrance.detections {
        assert!(d.bbox.iter().all(|v| (0.0..=1.0).contains(v)), "box not normalised: {d:?}");
    }
    // 6 s of clip at 3 fps.
    assert!((15..=20).contains(&entrance.frames_analyzed), "{}", entrance.frames_analyzed);
    assert!(entrance.latency_ms > 0 && entrance.latency_ms < 15_000, "{}", entrance.latency_ms);
    let evidence_topic = entrance.evidence_topic.clone().expect("evidence topic");
    assert_eq!(evidence_topic, t.evidence("e2e-entrance"));

    let garden = wait_verdict(&mut probe, "e2e-garden", Duration::from_secs(30), &service).await;
    assert_eq!(garden.verdict, VerdictKind::FalseAlarm, "{garden:?}");
    assert!(garden.detections.is_empty(), "{garden:?}");
    assert!(garden.frames_analyzed > 0);

    // The evidence was published before the verdict, so it is already in the probe's queue.
    let jpeg = probe
        .next(|m| m.topic == evidence_topic, Duration::from_secs(5))
        .await
        .expect("evidence JPEG");
    let image = image::load_from_memory_with_format(&jpeg.payload, image::ImageFormat::Jpeg).expect("evidence decodes as JPEG");
    assert_eq!((image.width(), image.height()), (768, 576));
    println!(
        "latency_ms: entrance {} (verified), garden {} (false_alarm)",
        entrance.latency_ms, garden.latency_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_alarms_are_reported_and_the_next_good_alarm_is_answered() {
    let broker = Broker::start().expect("broker");
    let vtest = footage("vtest.mp4");
    let server = RtspCameraServer::start(&[("entrance", vtest.as_path())]).expect("rtsp");
    let t = topics();
    let mut probe = Probe::connect(broker.port(), &[t.verdict("+"), t.errors(), t.camera_state("+")])
        .await
        .expect("probe");
    let site = tempfile::tempdir().expect("site dir");
    let service = Service::start(&site_toml(broker.port(), &[("entrance", server.url("entrance"))], "", site.path()), site.path());
    wait_camera_online(&mut probe, "entrance", &service).await;

    let cases: [(&str, &[u8], &str); 4] = [
        ("nowhere", b"{\"alarm_id\":\"x1\"}", "unknown camera \\\"nowhere\\\""),
        ("entrance", b"{not json", "not JSON"),
        ("entrance", b"{\"time\": 42}", "field `time`"),
        ("entrance", b"{\"time\": \"2001-01-01T00:00:00Z\"}", "from this box's clock"),
    ];
    for (camera, payload, expected) in cases {
        probe.publish(&t.alarm(camera), payload.to_vec()).await.expect("publish");
        let report = probe
            .next(|m| m.topic == t.errors(), Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no error report for {camera} {payload:?}; log:\n{}", service.log()));
        let text = String::from_utf8_lossy(&report.payload).into_owned();
        let doc: serde_json::Value = serde_json::from_str(&text).expect("error report is JSON");
        assert_eq!(doc["topic"], t.alarm(camera), "{text}");
        assert_eq!(doc["payload"], String::from_utf8_lossy(payload).as_ref(), "{text}");
        assert!(text.contains(expected), "expected {expected:?} in {text}");
    }

    tokio::time::sleep(FILL_PRE_WINDOW).await;
    probe.publish(&t.alarm("entrance"), alarm_json("after-bad-input")).await.expect("publish");
    let verdict = wait_verdict(&mut probe, "after-bad-input", Duration::from_secs(30), &service).await;
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_on_a_camera_that_is_down_is_unverifiable_with_the_reason() {
    let broker = Broker::start().expect("broker");
    let t = topics();
    let mut probe = Probe::connect(broker.port(), &[t.verdict("+"), t.camera_state("+")]).await.expect("probe");
    // Nothing listens on this port: the camera is down from the start.
    let dead = format!("rtsp://admin:s3cret@127.0.0.1:{}/stream1", free_port().expect("port"));
    let site = tempfile::tempdir().expect("site dir");
    let service = Service::start(&site_toml(broker.port(), &[("loading-bay", dead)], "", site.path()), site.path());

    let state_topic = t.camera_state("loading-bay");
    let state = probe
        .next(|m| m.topic == state_topic, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no camera state; log:\n{}", service.log()));
    let state = String::from_utf8_lossy(&state.payload).into_owned();
    assert!(state.contains("\"state\":\"offline\""), "{state}");
    assert!(!state.contains("s3cret"), "password leaked in state: {state}");

    let sent = tokio::time::Instant::now();
    probe.publish(&t.alarm("loading-bay"), alarm_json("while-down")).await.expect("publish");
    let verdict = wait_verdict(&mut probe, "while-down", Duration::from_secs(20), &service).await;
    let waited = sent.elapsed();
    assert_eq!(verdict.verdict, VerdictKind::Unverifiable, "{verdict:?}");
    assert!(verdict.reason.contains("offline"), "{}", verdict.reason);
    assert!(waited < Duration::from_secs(15), "answered after {waited:?}, beyond the 15 s deadline");
    assert!(!service.log().contains("s3cret"), "password leaked in the log");
}
