//! The whole path with real parts: RTSP cameras served from real footage, mosquitto, the service
//! binary, the YOLOX model, verdicts and evidence over MQTT.

mod common;

use std::time::Duration;

use alarm_verifier::analysis::verdict::{SCHEMA, VerdictKind};
use alarm_verifier::tools::demo::{Broker, Probe, free_port};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_verify_and_a_tree_in_wind_is_a_false_alarm() {
    let mut site = Site::start(&[("entrance", "vtest.mp4"), ("garden", "tree.mp4")], "").await;
    let t = topics();
    let status = site.probe.next(|m| m.topic == t.status(), Duration::from_secs(5)).await;
    assert_eq!(
        status.map(|m| m.payload),
        Some(b"online".to_vec()),
        "log:\n{}",
        site.service.log()
    );
    site.let_buffers_fill().await;

    site.raise("entrance", "e2e-entrance").await;
    site.raise("garden", "e2e-garden").await;

    let entrance = site.verdict("e2e-entrance", Duration::from_secs(30)).await;
    assert_eq!(entrance.verdict, VerdictKind::Verified, "{entrance:?}");
    assert_eq!(entrance.schema, SCHEMA);
    assert_eq!(entrance.camera, "entrance");
    assert_eq!(entrance.site, "test-site");
    assert!(entrance.reason.starts_with("person in"), "{}", entrance.reason);
    // The site's parked vehicles are there in every frame, before the alarm too: if the live
    // decode broke pictures (as split multi-slice keyframes once did), they would seem to arrive.
    assert!(entrance.reason.contains("ignored: parked"), "{}", entrance.reason);
    assert!(
        !entrance.reason.contains("car in") && !entrance.reason.contains("truck in"),
        "{}",
        entrance.reason
    );
    assert!(
        entrance
            .detections
            .iter()
            .any(|d| d.label == "person" && d.score >= 0.5)
    );
    for d in &entrance.detections {
        assert!(
            d.bbox.iter().all(|v| (0.0..=1.0).contains(v)),
            "box not normalised: {d:?}"
        );
    }
    // Streaming analysis: people are in view from the first pre-alarm frames, so the verdict comes
    // from a few frames, long before the 4 s of post-alarm video have arrived.
    assert!(
        (2..=8).contains(&entrance.frames_analyzed),
        "{}",
        entrance.frames_analyzed
    );
    assert!(
        entrance.latency_ms > 0 && entrance.latency_ms < 3_000,
        "verified should not wait for the post-alarm window: {} ms",
        entrance.latency_ms
    );
    let evidence_topic = entrance.evidence_topic.clone().expect("evidence topic");
    assert_eq!(evidence_topic, t.evidence("e2e-entrance"));

    let garden = site.verdict("e2e-garden", Duration::from_secs(30)).await;
    assert_eq!(garden.verdict, VerdictKind::FalseAlarm, "{garden:?}");
    assert!(garden.detections.is_empty(), "{garden:?}");
    assert!(garden.frames_analyzed > 0);
    // A false alarm is only concluded once the whole window (4 s after the alarm) has been seen.
    assert!(
        garden.latency_ms >= 4_000 && garden.latency_ms < 15_000,
        "false alarm after {} ms",
        garden.latency_ms
    );

    // The evidence was published before the verdict, so it is already in the probe's backlog.
    let jpeg = site
        .probe
        .next(|m| m.topic == evidence_topic, Duration::from_secs(5))
        .await
        .expect("evidence JPEG");
    let image =
        image::load_from_memory_with_format(&jpeg.payload, image::ImageFormat::Jpeg).expect("evidence decodes as JPEG");
    assert_eq!((image.width(), image.height()), (768, 576));
    println!(
        "latency_ms: entrance {} (verified), garden {} (false_alarm)",
        entrance.latency_ms, garden.latency_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_alarms_are_reported_and_the_next_good_alarm_is_answered() {
    let mut site = Site::start(&[("entrance", "vtest.mp4")], "").await;
    let t = topics();
    let cases: [(&str, &[u8], &str); 4] = [
        ("nowhere", b"{\"alarm_id\":\"x1\"}", "unknown camera \\\"nowhere\\\""),
        ("entrance", b"{not json", "not JSON"),
        ("entrance", b"{\"time\": 42}", "field `time`"),
        (
            "entrance",
            b"{\"time\": \"2001-01-01T00:00:00Z\"}",
            "from this box's clock",
        ),
    ];
    for (camera, payload, expected) in cases {
        site.probe
            .publish(&t.alarm(camera), payload.to_vec())
            .await
            .expect("publish");
        let report = site
            .probe
            .next(|m| m.topic == t.errors(), Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no error report for {camera} {payload:?}; log:\n{}", site.service.log()));
        let text = String::from_utf8_lossy(&report.payload).into_owned();
        let doc: serde_json::Value = serde_json::from_str(&text).expect("error report is JSON");
        assert_eq!(doc["topic"], t.alarm(camera), "{text}");
        assert_eq!(doc["payload"], String::from_utf8_lossy(payload).as_ref(), "{text}");
        assert!(text.contains(expected), "expected {expected:?} in {text}");
    }

    site.let_buffers_fill().await;
    site.raise("entrance", "after-bad-input").await;
    let verdict = site.verdict("after-bad-input", Duration::from_secs(30)).await;
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_on_a_camera_that_is_down_is_unverifiable_with_the_reason() {
    let t = topics();
    // Nothing listens on this port: the camera is down from the start.
    let dead = format!("rtsp://admin:s3cret@127.0.0.1:{}/stream1", free_port().expect("port"));
    let (_broker, mut probe, _site, service) = site_without_video("loading-bay", dead).await;

    let state_topic = t.camera_state("loading-bay");
    let state = probe
        .next(|m| m.topic == state_topic, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no camera state; log:\n{}", service.log()));
    let state = String::from_utf8_lossy(&state.payload).into_owned();
    assert!(state.contains("\"state\":\"offline\""), "{state}");
    assert!(!state.contains("s3cret"), "password leaked in state: {state}");

    let sent = tokio::time::Instant::now();
    probe
        .publish(&t.alarm("loading-bay"), alarm_json("while-down"))
        .await
        .expect("publish");
    let verdict = wait_verdict(&mut probe, "while-down", Duration::from_secs(20), &service).await;
    let waited = sent.elapsed();
    assert_eq!(verdict.verdict, VerdictKind::Unverifiable, "{verdict:?}");
    assert!(verdict.reason.contains("offline"), "{}", verdict.reason);
    assert!(
        waited < Duration::from_secs(15),
        "answered after {waited:?}, beyond the 15 s deadline"
    );
    assert!(!service.log().contains("s3cret"), "password leaked in the log");
}

/// Cameras often send keyframes in several slices, some with SPS/PPS repeated before each slice.
/// The ring buffer and the decoder must keep such a picture whole: a broken one hides the parked
/// vehicles in the pre-alarm frames, and they then seem to arrive with the alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_slice_keyframes_decode_whole_pictures() {
    let mut site = Site::start(&[("entrance", "vtest_multislice.mp4")], "").await;
    site.let_buffers_fill().await;
    site.raise("entrance", "multi-slice").await;
    let verdict = site.verdict("multi-slice", Duration::from_secs(30)).await;
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");
    assert!(verdict.reason.contains("ignored: parked"), "{}", verdict.reason);
    assert!(
        !verdict.reason.contains("car in") && !verdict.reason.contains("truck in"),
        "{}",
        verdict.reason
    );
    assert!(verdict.frames_analyzed >= 2, "{}", verdict.frames_analyzed);
    // Over TCP (the default) retina reads the stream, on its own runtime, with no rtspsrc.
    let threads = thread_names(site.service.pid());
    assert!(
        threads.iter().any(|n| n.starts_with("ingest-rtsp")) && !threads.iter().any(|n| n == "rtpjitterbuffer"),
        "{threads:?}"
    );
}

/// Over UDP the stream goes through GStreamer's `rtspsrc` (retina has no reordering for UDP): the
/// same camera still verifies, with the slices the parser splits off merged back into their picture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_over_udp_is_ingested_by_rtspsrc_and_verifies() {
    let mut site = Site::start_configured(
        &[("entrance", "vtest_multislice.mp4", None)],
        "",
        &[("entrance", "transport = \"udp\"")],
    )
    .await;
    site.let_buffers_fill().await;
    site.raise("entrance", "over-udp").await;
    let verdict = site.verdict("over-udp", Duration::from_secs(30)).await;
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");
    assert!(verdict.frames_analyzed >= 2, "{}", verdict.frames_analyzed);
    assert!(
        thread_names(site.service.pid()).iter().any(|n| n == "rtpjitterbuffer"),
        "no rtspsrc jitterbuffer thread in the service: {:?}",
        thread_names(site.service.pid())
    );
}

/// The names of a process's threads, from /proc.
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// An H.265 camera: retina hands over its pictures with VPS/SPS/PPS before each keyframe, analysis
/// decodes them, and the camera's state names the codec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h265_camera_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("vtest-h265.mp4");
    encode_h265(&alarm_verifier::tools::demo::footage("vtest.avi"), &clip, 250);
    assert_eq!(
        alarm_verifier::tools::demo::mp4_video_codec(&clip).expect("read the clip"),
        Some("h265")
    );
    let clip = clip.to_str().expect("utf-8 path");
    let mut site = Site::start(&[("gate", clip)], "").await;
    site.let_buffers_fill().await;
    site.raise("gate", "h265-alarm").await;
    let verdict = site.verdict("h265-alarm", Duration::from_secs(30)).await;
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");
    assert!(verdict.frames_analyzed >= 2, "{}", verdict.frames_analyzed);
    // The retained state, as a new subscriber gets it.
    let state_topic = topics().camera_state("gate");
    let mut late = Probe::connect(site.broker.port(), std::slice::from_ref(&state_topic))
        .await
        .expect("probe");
    let state = late
        .next(|m| m.topic == state_topic, Duration::from_secs(10))
        .await
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .unwrap_or_default();
    assert!(state.contains("\"codec\":\"h265\""), "camera state: {state}");
}

/// `frames` frames of `source` as H.265 in MP4, one keyframe a second, no B-frames, as a camera
/// sends them.
fn encode_h265(source: &std::path::Path, dest: &std::path::Path, frames: u32) {
    use gstreamer::prelude::*;
    gstreamer::init().expect("gstreamer");
    let pipeline = gstreamer::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! identity eos-after={frames} ! videoconvert ! video/x-raw,format=I420 \
         ! x265enc speed-preset=ultrafast key-int-max=10 bitrate=1500 option-string=bframes=0 ! h265parse \
         ! mp4mux ! filesink location=\"{}\"",
        source.display(),
        dest.display()
    ))
    .expect("H.265 encoding pipeline");
    pipeline.set_state(gstreamer::State::Playing).expect("play");
    let bus = pipeline.bus().expect("bus");
    let msg = bus
        .timed_pop_filtered(
            gstreamer::ClockTime::from_seconds(120),
            &[gstreamer::MessageType::Eos, gstreamer::MessageType::Error],
        )
        .expect("the encoding finished");
    let _ = pipeline.set_state(gstreamer::State::Null);
    assert!(matches!(msg.view(), gstreamer::MessageView::Eos(_)), "{msg:?}");
}

/// A camera that takes the connection and then says nothing (a hung RTSP server) is not waited for
/// forever: the request times out, the camera is reported offline with that reason, and its
/// alarms are answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_never_answers_is_reported_offline_with_the_reason() {
    let t = topics();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = silent.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn); // kept open, never answered
        }
    });
    let url = format!("rtsp://admin:s3cret@127.0.0.1:{port}/stream1");
    let (_broker, mut probe, _site, mut service) = site_without_video("hung", url).await;

    let state_topic = t.camera_state("hung");
    let state = probe
        .next(
            |m| m.topic == state_topic && String::from_utf8_lossy(&m.payload).contains("DESCRIBE"),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|| panic!("no offline state naming the request; log:\n{}", service.log()));
    let state = String::from_utf8_lossy(&state.payload).into_owned();
    assert!(state.contains("\"state\":\"offline\""), "{state}");
    assert!(state.contains("no answer within 10 s"), "{state}");
    assert!(!state.contains("s3cret"), "password leaked in state: {state}");

    probe
        .publish(&t.alarm("hung"), alarm_json("while-hung"))
        .await
        .expect("publish");
    let verdict = wait_verdict(&mut probe, "while-hung", Duration::from_secs(20), &service).await;
    assert_eq!(verdict.verdict, VerdictKind::Unverifiable, "{verdict:?}");
    assert!(verdict.reason.contains("offline"), "{}", verdict.reason);

    // A stop does not wait for the hung request (it had been retried by now).
    let asked = std::time::Instant::now();
    let exit = service.terminate(Duration::from_secs(20));
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}; log:\n{}", service.log());
    assert!(!service.log().contains("left behind"), "{}", service.log());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        asked.elapsed()
    );
}

/// The service with one camera at `url`, which serves no video, and a probe on verdicts and camera
/// states.
async fn site_without_video(camera: &str, url: String) -> (Broker, Probe, tempfile::TempDir, Service) {
    let broker = Broker::start().expect("broker");
    let t = topics();
    let probe = Probe::connect(broker.port(), &[t.verdict("+"), t.camera_state("+")])
        .await
        .expect("probe");
    let site = tempfile::tempdir().expect("site dir");
    let service = Service::start(
        &site_toml(broker.port(), &[(camera, url)], "", site.path()),
        site.path(),
    );
    (broker, probe, site, service)
}
