//! Fault injection with the real broker, the real RTSP server and the service binary: broker
//! outages, crashes, cameras that go away, bursts, bad input, shutdown. Every alarm must be answered.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use alarm_verifier::analysis::verdict::{VerdictDocument, VerdictKind};
use alarm_verifier::store::Store;
use alarm_verifier::tools::demo::{Probe, RtspCameraServer, footage};
use common::*;

/// A short clip keeps verification quick, so faults rather than analysis dominate the timing.
const FAST_CLIP: &str = "[clip]\npre_s = 1.0\npost_s = 1.0\nanalysis_fps = 2.0\n";

/// Collects verdicts until every id in `ids` has one (or `timeout`), then `linger` more for duplicates.
async fn collect_verdicts(
    probe: &mut Probe,
    ids: &[String],
    timeout: Duration,
    linger: Duration,
) -> HashMap<String, Vec<VerdictDocument>> {
    let prefix = format!("{PREFIX}/verdicts/");
    let mut seen: HashMap<String, Vec<VerdictDocument>> = HashMap::new();
    let deadline = Instant::now() + timeout;
    let mut all_by: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let until = all_by.map_or(deadline, |t| t + linger);
        if now >= until {
            break;
        }
        let Some(msg) = probe.next(|m| m.topic.starts_with(&prefix), until - now).await else {
            continue;
        };
        let doc: VerdictDocument = serde_json::from_slice(&msg.payload).expect("v1 verdict");
        seen.entry(doc.alarm_id.clone()).or_default().push(doc);
        if all_by.is_none() && ids.iter().all(|id| seen.contains_key(id)) {
            all_by = Some(Instant::now());
        }
    }
    seen
}

async fn wait_status(probe: &mut Probe, want: &str, timeout: Duration) -> bool {
    let topic = topics().status();
    probe
        .next(|m| m.topic == topic && m.payload == want.as_bytes(), timeout)
        .await
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_run_every_verdict_still_arrives() {
    let mut site = Site::start(&[("entrance", "vtest.mp4"), ("garden", "tree.mp4")], FAST_CLIP).await;
    site.let_buffers_fill().await;

    let ids: Vec<String> = (0..50).map(|i| format!("outage-{i:02}")).collect();
    let camera_of = |i: usize| if i.is_multiple_of(2) { "entrance" } else { "garden" };
    let store = Store::open(&site.dir.path().join("alarm-verifier.db")).expect("open the service's store");
    for (i, id) in ids.iter().enumerate().take(25) {
        site.raise(camera_of(i), id).await;
        // Pacing is the scenario: alarms keep coming in while verdicts are being made.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The service has taken the alarms from the broker; then the broker dies with verdicts still owed.
    let taken = |id: &String| store.knows_alarm(id).unwrap_or(false);
    wait_until(
        site.service.about("the first 25 alarms recorded"),
        Duration::from_secs(20),
        || ids[..25].iter().all(taken),
    )
    .await;
    site.broker.kill();
    // The outage itself is the scenario: the broker stays down this long.
    tokio::time::sleep(Duration::from_secs(3)).await;
    site.broker.restart().expect("broker restart");
    let restarted = Instant::now();
    site.probe.sync().await.expect("probe back");
    assert!(
        wait_status(&mut site.probe, "online", Duration::from_secs(30)).await,
        "service did not reconnect:\n{}",
        site.service.log()
    );
    let service_back = restarted.elapsed();
    for (i, id) in ids.iter().enumerate().skip(25) {
        site.raise(camera_of(i), id).await;
        // Pacing is the scenario, as before the outage.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let seen = collect_verdicts(&mut site.probe, &ids, Duration::from_secs(90), Duration::from_secs(3)).await;
    let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "no verdict for {missing:?}; log:\n{}",
        site.service.log()
    );
    let duplicates: usize = seen.values().map(|v| v.len() - 1).sum();
    for (id, docs) in &seen {
        assert!(
            docs.iter().all(|d| d.verdict == docs[0].verdict),
            "{id} got different verdicts: {docs:?}"
        );
    }
    let count = |kind: VerdictKind| seen.values().filter(|d| d[0].verdict == kind).count();
    println!(
        "broker outage: alarms sent 50, verdicts received {} ({} verified, {} false_alarm, {} unverifiable), \
         duplicates {duplicates}, service reconnected {:.1} s after the broker restart",
        seen.values().map(Vec::len).sum::<usize>(),
        count(VerdictKind::Verified),
        count(VerdictKind::FalseAlarm),
        count(VerdictKind::Unverifiable),
        service_back.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_undelivered_at_a_crash_are_delivered_after_restart() {
    let mut site = Site::start(&[("entrance", "vtest.mp4")], FAST_CLIP).await;
    site.let_buffers_fill().await;

    let ids: Vec<String> = (0..5).map(|i| format!("crash-{i}")).collect();
    for id in &ids {
        site.raise("entrance", id).await;
    }
    let store = Store::open(&site.dir.path().join("alarm-verifier.db")).expect("open the service's store");
    wait_until(
        site.service.about("the alarms recorded"),
        Duration::from_secs(10),
        || store.unanswered().map(|u| u.len() == 5).unwrap_or(false),
    )
    .await;
    site.broker.kill();
    wait_until(
        site.service.about("the verdicts stored as undelivered"),
        Duration::from_secs(15),
        || store.undelivered_count().unwrap_or(0) == 5,
    )
    .await;
    site.service.kill();

    site.broker.restart().expect("broker restart");
    site.probe.sync().await.expect("probe back");
    let restarted = Instant::now();
    site.service = Service::start(&site.config, site.dir.path());
    let seen = collect_verdicts(&mut site.probe, &ids, Duration::from_secs(40), Duration::from_secs(2)).await;
    let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "lost across the crash: {missing:?}; log:\n{}",
        site.service.log()
    );
    for docs in seen.values() {
        assert_eq!(docs[0].verdict, VerdictKind::Verified, "{docs:?}");
    }
    assert_eq!(store.undelivered_count().expect("count"), 0);
    println!(
        "crash: 5 verdicts undelivered at SIGKILL, {} delivered after restart within {:.1} s",
        seen.len(),
        restarted.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_lost_gives_unverifiable_in_time_and_verifies_again_when_back() {
    let mut site = Site::start(&[("entrance", "vtest.mp4")], FAST_CLIP).await;
    let port = site.server.as_ref().map(|s| s.port()).expect("server");
    let t = topics();

    drop(site.server.take());
    let lost = Instant::now();
    let state_topic = t.camera_state("entrance");
    let offline = site
        .probe
        .next(
            |m| m.topic == state_topic && String::from_utf8_lossy(&m.payload).contains("\"offline\""),
            Duration::from_secs(30),
        )
        .await;
    assert!(
        offline.is_some(),
        "camera loss not noticed; log:\n{}",
        site.service.log()
    );
    let noticed = lost.elapsed();

    let sent = Instant::now();
    site.raise("entrance", "camera-gone").await;
    let verdict = site.verdict("camera-gone", Duration::from_secs(20)).await;
    let answered = sent.elapsed();
    assert_eq!(verdict.verdict, VerdictKind::Unverifiable, "{verdict:?}");
    assert!(verdict.reason.contains("offline since"), "{}", verdict.reason);
    assert!(answered < Duration::from_secs(15), "answered after {answered:?}");

    let vtest = footage("vtest.mp4");
    site.server = Some(RtspCameraServer::start_on(&[("entrance", vtest.as_path())], port).expect("rtsp back"));
    let back = Instant::now();
    wait_camera_online(&mut site.probe, "entrance", &site.service).await;
    let recovered = back.elapsed();
    site.let_buffers_fill().await;
    site.raise("entrance", "camera-back").await;
    let verdict = site.verdict("camera-back", Duration::from_secs(20)).await;
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");
    println!(
        "camera loss: noticed in {:.1} s, alarm answered unverifiable in {:.1} s, online again {:.1} s after the camera returned",
        noticed.as_secs_f64(),
        answered.as_secs_f64(),
        recovered.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_alarms_gets_exactly_one_verdict_each() {
    let mut site = Site::start(
        &[("entrance", "vtest.mp4")],
        &format!("{FAST_CLIP}[verdict]\nqueue = 4\nworkers = 1\n"),
    )
    .await;
    site.let_buffers_fill().await;

    let ids: Vec<String> = (0..200).map(|i| format!("burst-{i:03}")).collect();
    let sent = Instant::now();
    for id in &ids {
        site.raise("entrance", id).await;
    }
    let seen = collect_verdicts(&mut site.probe, &ids, Duration::from_secs(60), Duration::from_secs(3)).await;
    let all_in = sent.elapsed();
    let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} alarms unanswered: {missing:?}; log:\n{}",
        missing.len(),
        site.service.log()
    );
    let repeated: Vec<(&String, usize)> = seen
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, v)| (k, v.len()))
        .collect();
    assert!(repeated.is_empty(), "more than one verdict: {repeated:?}");
    let overloaded = seen
        .values()
        .filter(|d| d[0].verdict == VerdictKind::Unverifiable && d[0].reason.starts_with("overloaded"))
        .count();
    let verified = seen.values().filter(|d| d[0].verdict == VerdictKind::Verified).count();
    assert!(overloaded > 0, "a queue of 4 cannot take 200 alarms at once");
    assert!(verified > 0, "the alarms that fit must be verified");
    assert_eq!(overloaded + verified, 200, "every verdict is verified or overloaded");
    println!(
        "burst: 200 alarms, 200 verdicts ({verified} verified, {overloaded} unverifiable: overloaded) in {:.1} s",
        all_in.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_interleaved_with_good_alarms_leaves_every_good_alarm_answered() {
    let mut site = Site::start(&[("entrance", "vtest.mp4")], FAST_CLIP).await;
    site.let_buffers_fill().await;
    let t = topics();

    let oversized = format!("{{\"alarm_id\":\"big\",\"pad\":\"{}\"}}", "x".repeat(100_000)).into_bytes();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("entrance", b"{\"alarm_id\": ".to_vec()),
        ("entrance", oversized),
        ("nowhere", b"{}".to_vec()),
        ("entrance", b"{\"alarm_id\": 7}".to_vec()),
        ("entrance", vec![0xff, 0xfe, 0x00]),
        ("entrance", b"\"just a string\"".to_vec()),
        // Ids that become topics: mosquitto closes the connection on a topic with a control
        // character, and one over 65,535 bytes cannot be sent; either used to stop all delivery.
        ("entrance", b"{\"alarm_id\": \"evil\\u0001id\"}".to_vec()),
        (
            "entrance",
            format!("{{\"alarm_id\":\"{}\"}}", "l".repeat(60_000)).into_bytes(),
        ),
    ];
    let good: Vec<String> = (0..bad.len()).map(|i| format!("good-{i}")).collect();
    for (id, (camera, payload)) in good.iter().zip(&bad) {
        site.probe
            .publish(&t.alarm(camera), payload.clone())
            .await
            .expect("publish bad");
        site.raise("entrance", id).await;
    }
    // A repeated alarm_id is answered once.
    site.raise("entrance", &good[0]).await;

    let seen = collect_verdicts(&mut site.probe, &good, Duration::from_secs(40), Duration::from_secs(2)).await;
    for id in &good {
        let docs = seen
            .get(id)
            .unwrap_or_else(|| panic!("good alarm {id} unanswered; log:\n{}", site.service.log()));
        assert_eq!(docs.len(), 1, "{id}: {docs:?}");
        assert_eq!(docs[0].verdict, VerdictKind::Verified, "{docs:?}");
    }
    let mut reports = Vec::new();
    let expected_reports = bad.len() + 1;
    let errors = t.errors();
    wait_for(
        site.service.about("an error report per bad input and the duplicate"),
        Duration::from_secs(20),
        async || {
            while let Some(m) = site.probe.next(|m| m.topic == errors, Duration::ZERO).await {
                reports.push(String::from_utf8_lossy(&m.payload).into_owned());
            }
            (reports.len() >= expected_reports).then_some(())
        },
    )
    .await;
    // No marker follows a report that should not exist: a bounded look for any extra one.
    while let Some(m) = site.probe.next(|m| m.topic == errors, QUIET_WINDOW).await {
        reports.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(
        reports.len(),
        expected_reports,
        "one report per bad input and the duplicate: {reports:#?}"
    );
    for expected in [
        "not JSON",
        "over the limit",
        "unknown camera",
        "field `alarm_id`",
        "expected a JSON object",
        "the control character U+0001",
        "at most 128 bytes, got 60000 bytes",
        "duplicate alarm_id",
    ] {
        assert!(
            reports.iter().any(|r| r.contains(expected)),
            "no report saying {expected:?}: {reports:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_alarm_in_flight_publishes_offline_and_exits_0() {
    let mut site = Site::start(&[("entrance", "vtest.mp4")], "").await;
    assert!(wait_status(&mut site.probe, "online", Duration::from_secs(5)).await);
    site.let_buffers_fill().await;

    site.raise("entrance", "in-flight").await;
    // Received, and not answered yet: its verdict waits for the post-alarm video (4 s).
    let store = Store::open(&site.dir.path().join("alarm-verifier.db")).expect("open the service's store");
    wait_until(
        site.service.about("the alarm in flight recorded"),
        Duration::from_secs(5),
        || store.knows_alarm("in-flight").unwrap_or(false),
    )
    .await;
    let status = site.service.terminate(Duration::from_secs(30));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "log:\n{}", site.service.log());
    let verdict = site.verdict("in-flight", Duration::from_secs(5)).await;
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");
    assert!(
        wait_status(&mut site.probe, "offline", Duration::from_secs(5)).await,
        "no offline status"
    );
}
