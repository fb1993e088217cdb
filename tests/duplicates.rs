//! Duplicates and reused ids, and error reports kept through a broker outage, with the real broker,
//! the real RTSP server, the model and the service binary.
//!
//! The same alarm sent twice is answered once; an id the sender uses again for a new alarm (a
//! device that restarted its counter) is answered again, under a record of its own, and the reuse
//! is reported on `errors`. Reports on `errors` are stored like verdicts, so one made while the
//! broker is away arrives after it returns.

mod common;

use std::time::Duration;

use alarm_verifier::analysis::verdict::{VerdictDocument, VerdictKind, rfc3339};
use alarm_verifier::store::Store;
use alarm_verifier::tools::demo::{Probe, free_port};
use chrono::{DateTime, TimeDelta, Utc};
use common::*;

/// A short clip keeps verification quick.
const FAST_CLIP: &str = "[clip]\npre_s = 1.0\npost_s = 1.0\nanalysis_fps = 2.0\n";
/// How long to keep listening after the expected messages, for any that should not come.
const LINGER: Duration = Duration::from_secs(4);

fn alarm_at(alarm_id: &str, time: DateTime<Utc>) -> Vec<u8> {
    serde_json::json!({"alarm_id": alarm_id, "time": rfc3339(time), "source": "test"})
        .to_string()
        .into_bytes()
}

/// Raises alarm `alarm_id` at `time` on the entrance camera over MQTT.
async fn raise_at(site: &Site, alarm_id: &str, time: DateTime<Utc>) {
    site.probe
        .publish(&topics().alarm("entrance"), alarm_at(alarm_id, time))
        .await
        .expect("publish alarm");
}

/// Every message on `errors` until none has come for `quiet`.
async fn error_reports(probe: &mut Probe, quiet: Duration) -> Vec<serde_json::Value> {
    let topic = topics().errors();
    let mut reports = Vec::new();
    while let Some(m) = probe.next(|m| m.topic == topic, quiet).await {
        reports.push(serde_json::from_slice(&m.payload).expect("an error report is JSON"));
    }
    reports
}

/// Every verdict for `alarm_id` until none has come for `quiet`.
async fn verdicts_for(probe: &mut Probe, alarm_id: &str, quiet: Duration) -> Vec<VerdictDocument> {
    let prefix = format!("{PREFIX}/verdicts/");
    let wanted = format!("\"alarm_id\":\"{alarm_id}\"");
    let mut docs = Vec::new();
    while let Some(m) = probe
        .next(
            |m| m.topic.starts_with(&prefix) && String::from_utf8_lossy(&m.payload).contains(&wanted),
            quiet,
        )
        .await
    {
        docs.push(serde_json::from_slice(&m.payload).expect("a v1 verdict"));
    }
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_alarm_sent_twice_is_answered_once_and_reported_once() {
    let mut site = Site::start(&[("entrance", "vtest.mp4")], FAST_CLIP).await;
    site.let_buffers_fill().await;
    let t = topics();

    let time = Utc::now() - TimeDelta::seconds(1);
    for _ in 0..2 {
        raise_at(&site, "dup-1", time).await;
    }
    let first = site.verdict("dup-1", Duration::from_secs(30)).await;
    assert_eq!(first.verdict, VerdictKind::Verified, "{first:?}");
    assert_eq!(first.record_id, "dup-1", "an id used once is its own record");
    assert_eq!(first.evidence_topic, Some(t.evidence("dup-1")));
    let more = verdicts_for(&mut site.probe, "dup-1", LINGER).await;
    assert!(more.is_empty(), "a second verdict for the same alarm: {more:?}");

    let reports = error_reports(&mut site.probe, LINGER).await;
    assert_eq!(reports.len(), 1, "one report for the one duplicate: {reports:#?}");
    let report = &reports[0];
    let text = report["error"].as_str().unwrap_or_default();
    assert!(text.starts_with("duplicate alarm_id \"dup-1\""), "{report}");
    assert_eq!(report["alarm_id"], "dup-1", "{report}");
    assert_eq!(report["record_id"], "dup-1", "the record that answered it: {report}");
    assert_eq!(report["topic"], t.alarm("entrance"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_id_with_a_new_time_is_verified_under_a_record_of_its_own_and_reported() {
    let http = free_port().expect("port");
    let extra = format!("{FAST_CLIP}[http]\nlisten = \"127.0.0.1:{http}\"\n");
    let mut site = Site::start(&[("entrance", "vtest.mp4")], &extra).await;
    site.let_buffers_fill().await;
    let t = topics();

    // The device's first alarm 7, minutes ago (its video is gone: it is answered all the same).
    let earlier = Utc::now() - TimeDelta::minutes(3);
    raise_at(&site, "panel-7", earlier).await;
    let first = site.verdict("panel-7", Duration::from_secs(30)).await;
    assert_eq!(first.record_id, "panel-7");
    assert_eq!(first.alarm_time, rfc3339(earlier));

    // The device restarted and counts from 1 again: alarm 7 is a new alarm, now.
    let now = Utc::now() - TimeDelta::seconds(1);
    raise_at(&site, "panel-7", now).await;
    let second = site.verdict("panel-7", Duration::from_secs(30)).await;
    assert_eq!(second.verdict, VerdictKind::Verified, "{second:?}");
    assert_eq!(second.alarm_id, "panel-7", "the sender's id, to correlate");
    assert_eq!(second.record_id, "panel-7~2", "{second:?}");
    assert_eq!(second.alarm_time, rfc3339(now));
    assert_eq!(second.evidence_topic, Some(t.evidence("panel-7~2")));
    let jpeg = site
        .probe
        .next(|m| m.topic == t.evidence("panel-7~2"), Duration::from_secs(5))
        .await;
    assert!(
        jpeg.is_some_and(|m| m.payload.starts_with(&[0xff, 0xd8])),
        "no evidence JPEG"
    );

    let reports = error_reports(&mut site.probe, LINGER).await;
    assert_eq!(reports.len(), 1, "one report for the reuse: {reports:#?}");
    let report = &reports[0];
    let text = report["error"].as_str().unwrap_or_default();
    assert!(text.contains("alarm_id \"panel-7\" reused"), "{report}");
    assert!(
        text.contains(&rfc3339(earlier)) && text.contains(&rfc3339(now)),
        "both times: {report}"
    );
    assert_eq!(report["alarm_id"], "panel-7", "{report}");
    assert_eq!(report["record_id"], "panel-7~2", "{report}");
    let more = verdicts_for(&mut site.probe, "panel-7", Duration::from_secs(1)).await;
    assert!(more.is_empty(), "one verdict each: {more:?}");

    // Each has its own record in the API, under its record_id.
    let client = reqwest::Client::new();
    for (record, time) in [("panel-7", earlier), ("panel-7~2", now)] {
        let text = client
            .get(format!("http://127.0.0.1:{http}/api/alarms/{record}"))
            .send()
            .await
            .expect("GET record")
            .text()
            .await
            .expect("record body");
        let body: serde_json::Value = serde_json::from_str(&text).expect("JSON record");
        assert_eq!(body["alarm_time"], rfc3339(time), "{body}");
        assert_eq!(body["verdict_document"]["record_id"], record, "{body}");
        assert_eq!(body["verdict_document"]["alarm_id"], "panel-7", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reported_while_the_broker_is_down_arrives_after_it_returns() {
    let http = free_port().expect("port");
    let extra = format!("{FAST_CLIP}[http]\nlisten = \"127.0.0.1:{http}\"\n");
    let mut site = Site::start(&[("entrance", "vtest.mp4")], &extra).await;
    let store = Store::open(&site.dir.path().join("alarm-verifier.db")).expect("open the service's store");

    site.broker.kill();
    let bad = br#"{"alarm_id": "while-away", "time": 12}"#.to_vec();
    let reply = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http}/api/alarms/entrance"))
        .body(bad.clone())
        .send()
        .await
        .expect("POST alarm");
    assert_eq!(reply.status().as_u16(), 400);
    // Stored before the broker is back: a restart of the service in between would not lose it.
    assert_eq!(
        store.undelivered_errors().expect("count"),
        1,
        "log:\n{}",
        site.service.log()
    );
    // The broker stays away a while as the scenario: the report must wait for it, not race it.
    tokio::time::sleep(Duration::from_secs(2)).await;

    site.broker.restart().expect("broker restart");
    let restarted = std::time::Instant::now();
    site.probe.sync().await.expect("probe back");
    let errors = topics().errors();
    let report = site
        .probe
        .next(
            |m| m.topic == errors && String::from_utf8_lossy(&m.payload).contains("while-away"),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|| panic!("the report was lost with the broker; log:\n{}", site.service.log()));
    let arrived = restarted.elapsed();
    let report: serde_json::Value = serde_json::from_slice(&report.payload).expect("an error report is JSON");
    assert_eq!(report["topic"], "POST /api/alarms/entrance", "{report}");
    assert_eq!(report["payload"], String::from_utf8_lossy(&bad).as_ref(), "{report}");
    assert!(
        report["error"].as_str().unwrap_or_default().contains("field `time`"),
        "{report}"
    );
    wait_until("the report marked delivered on PUBACK", Duration::from_secs(5), || {
        store.undelivered_errors().is_ok_and(|left| left == 0)
    })
    .await;
    println!(
        "error report made with the broker down arrived {:.1} s after the broker restart",
        arrived.as_secs_f64()
    );
}
