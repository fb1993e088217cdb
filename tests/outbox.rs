//! Delivery that a poison message cannot stop, with a real mosquitto that enforces its own limits:
//! a message the broker refuses is parked (reported once on `errors`, counted in `/healthz` and
//! `/metrics`, retryable through the API) and later verdicts go on; evidence over the broker's
//! packet limit is sent smaller, and the verdict always goes.

mod common;

use std::path::Path;
use std::time::Duration;

use alarm_verifier::analysis::verdict::{VerdictDocument, VerdictKind};
use alarm_verifier::intake::alarm::Alarm;
use alarm_verifier::store::Store;
use alarm_verifier::tools::demo::{Broker, Probe, RtspCameraServer, footage, free_port};
use common::*;

const FAST_CLIP: &str = "[clip]\npre_s = 1.0\npost_s = 1.0\nanalysis_fps = 2.0\n";

/// Seeds the store with an undelivered verdict whose record id holds a control character, as a
/// store written before the id rule could: its evidence topic is one mosquitto refuses.
fn seed_poison_verdict(db: &Path) {
    let store = Store::open(db).expect("store");
    let alarm = Alarm::new("old\u{1}id".into(), "entrance", chrono::Utc::now(), "test".into());
    store.record_alarm(&alarm, b"{}", None).expect("alarm");
    let mut doc = VerdictDocument::unverifiable(
        &alarm,
        "test-site",
        "model",
        alarm_verifier::analysis::verdict::Cause::NoVideo,
        "from before the id rule",
    );
    doc.record_id = alarm.alarm_id.clone();
    doc.evidence_topic = Some(topics().evidence(&doc.record_id));
    store
        .record_verdict(&doc, Some(b"\xff\xd8 not much of a jpeg"))
        .expect("verdict");
}

struct Running {
    _broker: Broker,
    _server: RtspCameraServer,
    probe: Probe,
    service: Service,
    http: String,
    _dir: tempfile::TempDir,
}

/// A broker with `broker_options`, one camera, and the service with `extra` config tables and
/// `mqtt_keys` in its `[mqtt]`; `seed` writes into the store before the service starts.
async fn start(broker_options: &str, extra: &str, mqtt_keys: &str, seed: impl FnOnce(&Path)) -> Running {
    let broker = Broker::start_with(broker_options).expect("broker");
    let server = RtspCameraServer::start(&[("entrance", footage("vtest.mp4").as_path())]).expect("rtsp");
    let t = topics();
    let probe = Probe::connect(
        broker.port(),
        &[t.verdict("+"), t.evidence("+"), t.camera_state("+"), t.errors()],
    )
    .await
    .expect("probe");
    let dir = tempfile::tempdir().expect("dir");
    seed(&dir.path().join("alarm-verifier.db"));
    let port = free_port().expect("port");
    let extra = format!("{FAST_CLIP}{extra}[http]\nlisten = \"127.0.0.1:{port}\"\n");
    let config = site_toml(
        broker.port(),
        &[("entrance", server.url("entrance"))],
        &extra,
        dir.path(),
    )
    .replace("[mqtt]\n", &format!("[mqtt]\n{mqtt_keys}"));
    let service = Service::start(&config, dir.path());
    let mut running = Running {
        _broker: broker,
        _server: server,
        probe,
        service,
        http: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    wait_camera_online(&mut running.probe, "entrance", &running.service).await;
    wait_pre_alarm_buffered(&mut running.probe, &config, &running.service).await;
    running
}

async fn get_json(url: &str) -> serde_json::Value {
    let text = reqwest::get(url).await.expect("GET").text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_refuses_is_parked_and_later_verdicts_go_on() {
    let mut site = start("allow_anonymous true", "", "", seed_poison_verdict).await;

    // The broker drops the outbox's connection at each publish of the poison; after three, it is
    // set aside and said once on `errors`.
    let errors = topics().errors();
    let report = site
        .probe
        .next(
            |m| m.topic == errors && String::from_utf8_lossy(&m.payload).contains("parked"),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|| panic!("no report of the parked message; log:\n{}", site.service.log()));
    let report: serde_json::Value = serde_json::from_slice(&report.payload).expect("JSON report");
    assert_eq!(report["alarm_id"], "old\u{1}id", "{report}");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("closed the connection") && e.contains("POST /api/outbox/retry")),
        "{report}"
    );

    // A good alarm after it is answered in the usual time.
    site.probe
        .publish(&topics().alarm("entrance"), alarm_json("after-poison"))
        .await
        .expect("alarm");
    let doc = wait_verdict(&mut site.probe, "after-poison", Duration::from_secs(15), &site.service).await;
    assert_eq!(doc.verdict, VerdictKind::Verified, "{doc:?}");

    let health = get_json(&format!("{}/healthz", site.http)).await;
    assert_eq!(health["outbox"]["parked"], 1, "{health}");
    assert_eq!(health["outbox"]["pending"], 0, "{health}");
    let metrics = reqwest::get(format!("{}/metrics", site.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("outbox_parked 1"), "{metrics}");
    let listed = get_json(&format!("{}/api/outbox", site.http)).await;
    assert_eq!(listed["parked"][0]["key"], "old\u{1}id", "{listed}");
    assert_eq!(listed["parked"][0]["kind"], "verdict", "{listed}");

    // An operator's retry puts it back; the broker still refuses it, so it is parked again and
    // reported again, while the rest goes on.
    let client = reqwest::Client::new();
    let bad = client
        .post(format!("{}/api/outbox/retry?record_id=x&report=1", site.http))
        .send()
        .await
        .expect("POST");
    assert_eq!(bad.status(), 400);
    let retried: serde_json::Value = client
        .post(format!("{}/api/outbox/retry", site.http))
        .send()
        .await
        .expect("POST")
        .text()
        .await
        .map(|t| serde_json::from_str(&t).expect("JSON"))
        .expect("body");
    assert_eq!(retried["retried"], 1, "{retried}");
    site.probe
        .next(
            |m| m.topic == errors && String::from_utf8_lossy(&m.payload).contains("parked"),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|| panic!("no second report after the retry; log:\n{}", site.service.log()));
    site.probe
        .publish(&topics().alarm("entrance"), alarm_json("after-retry"))
        .await
        .expect("alarm");
    wait_verdict(&mut site.probe, "after-retry", Duration::from_secs(15), &site.service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_over_the_brokers_packet_limit_is_sent_smaller() {
    const LIMIT: usize = 40_000;
    // Quality 100 at full size makes evidence of vtest's 768x576 frames far over 40 kB.
    let mut site = start(
        &format!("allow_anonymous true\nmax_packet_size {LIMIT}"),
        "[evidence]\nmax_size = 1920\nquality = 100\n",
        &format!("max_packet_bytes = {LIMIT}\n"),
        |_| {},
    )
    .await;

    site.probe
        .publish(&topics().alarm("entrance"), alarm_json("big-evidence"))
        .await
        .expect("alarm");
    let doc = wait_verdict(&mut site.probe, "big-evidence", Duration::from_secs(15), &site.service).await;
    assert_eq!(doc.verdict, VerdictKind::Verified, "{doc:?}");
    let evidence_topic = doc.evidence_topic.clone().expect("an evidence topic");
    let evidence = site
        .probe
        .next(|m| m.topic == evidence_topic, Duration::from_secs(5))
        .await
        .expect("the evidence, smaller");
    assert!(evidence.payload.len() <= LIMIT, "{} bytes", evidence.payload.len());
    let image = image::load_from_memory(&evidence.payload).expect("a JPEG");
    assert!(image.width() >= 320, "{}x{}", image.width(), image.height());
    // The record keeps the original, larger image.
    let stored = reqwest::get(format!("{}/api/alarms/big-evidence/evidence.jpg", site.http))
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("bytes");
    assert!(stored.len() > LIMIT, "the stored evidence is {} bytes", stored.len());
    assert!(site.service.log().contains("sent smaller"));
}
