//! The worst night, shortened for CI: many cameras whose RTSP server is gone, and the MQTT broker
//! killed for a minute. The log stays short, memory does not grow, the retained states are right
//! once the broker is back, and SIGTERM with the broker down ends the process within its bound.
//!
//! `AV_SOAK_CAMERAS` (default 50) and `AV_SOAK_OUTAGE_S` (default 60) make it longer for the
//! figures in the README.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use alarm_verifier::tools::demo::{Broker, Probe, free_port};
use common::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The newest retained state of every camera, as the broker hands them to a new subscriber.
async fn retained_states(broker_port: u16, cameras: usize) -> HashMap<String, serde_json::Value> {
    let t = topics();
    let mut probe = Probe::connect(broker_port, &[t.camera_state("+")])
        .await
        .expect("probe");
    let mut states = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while states.len() < cameras && Instant::now() < deadline {
        if let Some(msg) = probe
            .next(|m| m.topic.ends_with("/state"), Duration::from_secs(2))
            .await
        {
            let doc: serde_json::Value = serde_json::from_slice(&msg.payload).expect("state JSON");
            states.insert(doc["camera"].as_str().unwrap_or_default().to_owned(), doc);
        }
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_cameras_and_a_lost_broker_neither_flood_the_log_nor_grow_memory_and_sigterm_ends_it() {
    let cameras = env_or("AV_SOAK_CAMERAS", 50) as usize;
    let outage = Duration::from_secs(env_or("AV_SOAK_OUTAGE_S", 60));
    let dead_port = free_port().expect("port");
    let mut broker = Broker::start().expect("broker");
    let dir = tempfile::tempdir().expect("site dir");
    let urls: Vec<(String, String)> = (0..cameras)
        .map(|i| (format!("cam{i:03}"), format!("rtsp://127.0.0.1:{dead_port}/cam{i:03}")))
        .collect();
    let refs: Vec<(&str, String)> = urls.iter().map(|(id, url)| (id.as_str(), url.clone())).collect();
    let mut service = Service::start(&site_toml(broker.port(), &refs, "", dir.path()), dir.path());
    let pid = service.pid();

    // Every camera is reported offline, with the reason.
    let states = retained_states(broker.port(), cameras).await;
    assert_eq!(states.len(), cameras, "log:\n{}", service.log());
    // A bounded settle before the baseline: start-up's log lines and memory level off, and nothing
    // the service publishes says when that is over.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lines_before = service.log().lines().count();
    let rss_before = rss_kib(pid);

    // The broker is gone for a while; the cameras keep failing meanwhile.
    broker.kill();
    let started = Instant::now();
    let mut rss_max = rss_before;
    while started.elapsed() < outage {
        // The outage's length is the scenario; memory is sampled along it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        rss_max = rss_max.max(rss_kib(pid));
    }
    let log = service.log();
    let outage_lines: Vec<&str> = log.lines().skip(lines_before).collect();
    let per_minute = outage_lines.len() as f64 / outage.as_secs_f64() * 60.0;
    println!(
        "{cameras} dead cameras, broker down {} s: {} log lines ({per_minute:.1}/min); RSS {} KiB before, at most {} KiB during",
        outage.as_secs(),
        outage_lines.len(),
        rss_before,
        rss_max
    );
    // Not a line per camera per attempt: the outage of the broker is logged once per connection.
    assert!(
        outage_lines.len() <= 10,
        "{} lines during the outage:\n{}",
        outage_lines.len(),
        outage_lines.join("\n")
    );
    assert!(
        rss_max <= rss_before + 8 * 1024,
        "RSS grew from {rss_before} to {rss_max} KiB"
    );

    // The broker is back (without its retained messages): exactly the current states return.
    broker.restart().expect("broker back");
    let states = retained_states(broker.port(), cameras).await;
    assert_eq!(states.len(), cameras, "log:\n{}", service.log());
    for (id, doc) in &states {
        assert_eq!(doc["state"], "offline", "{id}: {doc}");
        assert!(doc["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{id}: {doc}");
    }

    // SIGTERM with the broker down again: the process ends within the 10 s bound, with exit 0.
    let lost = |service: &Service| service.log().matches("MQTT connection lost").count();
    let lost_before = lost(&service);
    broker.kill();
    wait_until(
        service.about("the service to notice the broker gone"),
        Duration::from_secs(10),
        || lost(&service) > lost_before,
    )
    .await;
    let asked = Instant::now();
    let status = service.terminate(Duration::from_secs(15));
    let took = asked.elapsed();
    println!("SIGTERM to exit with the broker down: {} ms", took.as_millis());
    let status = status.unwrap_or_else(|| panic!("still running 15 s after SIGTERM; log:\n{}", service.log()));
    assert!(status.success(), "{status:?}; log:\n{}", service.log());
    assert!(took <= Duration::from_millis(11_000), "took {took:?}");
}
