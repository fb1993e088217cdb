//! SIA DC-09 with real parts: a panel written in Python from the standard (not the service's
//! encoder) reports to the service's receiver, and a pysiaalarm receiver stands in for the alarm
//! receiving centre. Needs the test venv that scripts/setup.sh makes (third_party/test-venv).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alarm_verifier::analysis::verdict::VerdictKind;
use chrono::Utc;
use common::*;
use serde_json::{Value, json};

const ACCOUNT: &str = "4711";
/// The panel's 256-bit key, in hex.
const PANEL_KEY: &str = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";
/// pysiaalarm takes 16 ASCII characters as the raw key; the service takes their hex.
const ARC_KEY: &str = "ArcKey0123456789";

fn python() -> std::path::PathBuf {
    root().join("third_party/test-venv/bin/python")
}

fn free_port() -> u16 {
    // TCP and UDP on the same port: pick one that is free for both.
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        let port = tcp.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The pysiaalarm receiver, its JSON lines collected.
struct ArcReceiver {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl ArcReceiver {
    fn start(port: u16, protocol: &str, key: Option<&str>) -> Self {
        let mut cmd = Command::new(python());
        cmd.arg(root().join("tests/tools/sia_arc.py")).args([
            port.to_string(),
            protocol.to_owned(),
            ACCOUNT.to_owned(),
        ]);
        if let Some(key) = key {
            cmd.arg(key);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pysiaalarm receiver (run scripts/setup.sh for the test venv)");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "READY" {
                    let _ = ready_tx.send(());
                } else if let Ok(v) = serde_json::from_str(&line) {
                    collected.lock().expect("lines").push(v);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("pysiaalarm receiver ready");
        Self { child, lines }
    }

    /// Events whose extended data holds `needle`.
    fn events_with(&self, needle: &str) -> Vec<Value> {
        let lines = self.lines.lock().expect("lines");
        lines
            .iter()
            .filter(|v| v["x_data"].as_str().is_some_and(|x| x.contains(needle)))
            .cloned()
            .collect()
    }

    async fn wait_event(&self, needle: &str, timeout: Duration, service: &Service) -> Value {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(event) = self.events_with(needle).into_iter().next() {
                return event;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lines = self.lines.lock().expect("lines").clone();
        panic!(
            "no ARC event with {needle} within {timeout:?}; the ARC got {lines:?}; service log:\n{}",
            service.log()
        )
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ArcReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Sends `messages` from the Python panel over one connection; one answer per message.
fn panel(port: u16, protocol: &str, messages: &[Value]) -> Vec<Value> {
    let mut child = Command::new(python())
        .arg(root().join("tests/tools/dc09_panel.py"))
        .args(["127.0.0.1", &port.to_string(), protocol])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("panel");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for m in messages {
            writeln!(stdin, "{m}").expect("write");
        }
    }
    let out = child.wait_with_output().expect("panel output");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn alarm(seq: &str, zone: &str, stamp: &str) -> Value {
    json!({"seq": seq, "account": ACCOUNT, "data": format!("Nri1/BA{zone}"), "key_hex": PANEL_KEY, "stamp": stamp})
}

/// The panel's timestamp now, and the time part of the alarm id the service makes from it.
fn stamp_now() -> (String, String) {
    let now = Utc::now();
    (
        now.format("_%H:%M:%S,%m-%d-%Y").to_string(),
        now.format("%Y%m%dT%H%M%SZ").to_string(),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_alarms_are_verified_and_the_verdicts_reach_the_arc() {
    let dc09_port = free_port();
    let arc_port = free_port();
    let http_port = free_port();
    let arc_down = Duration::from_secs(
        std::env::var("AV_DC09_ARC_DOWN_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let arc = ArcReceiver::start(arc_port, "tcp", Some(ARC_KEY));
    let extra = format!(
        "[http]\nlisten = \"127.0.0.1:{http_port}\"\n\
         [dc09]\nlisten = \"127.0.0.1:{dc09_port}\"\n\
         [[dc09.panel]]\naccount = \"{ACCOUNT}\"\nkey = \"{PANEL_KEY}\"\n\
         [dc09.arc]\nhost = \"127.0.0.1\"\nport = {arc_port}\nkey = \"{}\"\nretry_s = 1\nack_timeout_s = 3\n",
        hex::encode(ARC_KEY)
    );
    let mut site = Site::start_configured(
        &[("entrance", "vtest.mp4", None), ("garden", "tree.mp4", None)],
        &extra,
        &[
            ("entrance", "[camera.dc09]\naccount = \"4711\"\nzones = [\"3\"]"),
            ("garden", "[camera.dc09]\naccount = \"4711\"\nzones = [\"004\"]"),
        ],
    )
    .await;
    site.let_buffers_fill().await;

    // Two alarms, encrypted, then the first again as a panel repeats it when its ACK is lost.
    let (stamp, id_time) = stamp_now();
    let answers = panel(
        dc09_port,
        "tcp",
        &[
            alarm("0001", "003", &stamp),
            alarm("0002", "004", &stamp),
            alarm("0001", "003", &stamp),
        ],
    );
    assert_eq!(answers.len(), 3, "{answers:?}");
    for a in &answers {
        assert_eq!(a["token"], "*ACK", "{a}\nlog:\n{}", site.service.log());
        assert_eq!(a["seq"], a["sent_seq"], "{a}");
        assert_eq!(a["crc_ok"], true, "{a}");
        assert!(a["decrypted"].as_str().is_some_and(|d| d.contains("]_")), "{a}");
    }
    let entrance_id = format!("dc09-{ACCOUNT}-0001-{id_time}");
    let garden_id = format!("dc09-{ACCOUNT}-0002-{id_time}");
    let entrance = site.verdict(&entrance_id, Duration::from_secs(30)).await;
    let garden = site.verdict(&garden_id, Duration::from_secs(30)).await;
    assert_eq!(entrance.verdict, VerdictKind::Verified, "{entrance:?}");
    assert_eq!(garden.verdict, VerdictKind::FalseAlarm, "{garden:?}");

    // The verdicts at the ARC: BV and BG, each once, with the link to the record.
    let link = |id: &str| format!("Vhttp://127.0.0.1:{http_port}/api/alarms/{id}/clip.mp4");
    let bv = arc
        .wait_event(&link(&entrance_id), Duration::from_secs(20), &site.service)
        .await;
    let bg = arc
        .wait_event(&link(&garden_id), Duration::from_secs(20), &site.service)
        .await;
    assert_eq!(
        (bv["code"].as_str(), bv["account"].as_str()),
        (Some("BV"), Some(ACCOUNT)),
        "{bv}"
    );
    assert_eq!(bg["code"].as_str(), Some("BG"), "{bg}");
    assert_eq!(bv["encrypted"], true);
    assert!(
        bv["x_data"].as_str().is_some_and(|x| x.contains("Iverified: person")),
        "{bv}"
    );
    let alarm_to_arc = Utc::now();

    // Hostile and stale input: no ACK, and the service goes on.
    let (stale_stamp, _) = {
        let t = Utc::now() - chrono::TimeDelta::seconds(120);
        (t.format("_%H:%M:%S,%m-%d-%Y").to_string(), ())
    };
    let refused = panel(
        dc09_port,
        "tcp",
        &[
            json!({"seq": "0003", "account": ACCOUNT, "data": "Nri1/BA003", "key_hex": PANEL_KEY, "bad_crc": true, "wait_s": 2}),
            json!({"seq": "0004", "account": ACCOUNT, "data": "Nri1/BA003", "key_hex": PANEL_KEY, "stamp": stale_stamp}),
            json!({"seq": "0005", "account": "9999", "data": "Nri1/BA003"}),
            json!({"seq": "0006", "account": ACCOUNT, "data": "Nri1/BA003"}),
        ],
    );
    let tokens: Vec<&Value> = refused.iter().map(|a| &a["token"]).collect();
    assert_eq!(
        tokens,
        [&Value::Null, &json!("NAK"), &json!("NAK"), &json!("NAK")],
        "{refused:?}"
    );
    let udp = panel(
        dc09_port,
        "udp",
        &[json!({"seq": "0000", "account": ACCOUNT, "token": "NULL", "key_hex": PANEL_KEY})],
    );
    assert_eq!(udp.first().map(|a| &a["token"]), Some(&json!("*ACK")), "{udp:?}");

    // The retried message was verified once: one verdict for it, and nothing more at the ARC.
    site.probe.pump(Duration::from_secs(2)).await;
    let verdicts = format!("{PREFIX}/verdicts/");
    let again = site
        .probe
        .backlog_take(|m| m.topic.starts_with(&verdicts) && String::from_utf8_lossy(&m.payload).contains(&entrance_id));
    assert!(again.is_none(), "a second verdict for the repeated message");
    assert_eq!(arc.events_with(&link(&entrance_id)).len(), 1);
    assert_eq!(arc.events_with(&link(&garden_id)).len(), 1);

    // The ARC receiver away: verdicts wait in the queue and arrive once it is back, once each.
    arc.stop();
    site.raise("entrance", "while-arc-down-1").await;
    site.raise("garden", "while-arc-down-2").await;
    site.verdict("while-arc-down-1", Duration::from_secs(30)).await;
    site.verdict("while-arc-down-2", Duration::from_secs(30)).await;
    let down_since = Instant::now();
    // The link's state in /healthz (503, naming the ARC) and /metrics while it is away.
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://127.0.0.1:{http_port}{path}"))
                .send()
                .await
                .expect("HTTP");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    let health = wait_for(
        site.service.about("/healthz to show the ARC down"),
        Duration::from_secs(15),
        async || {
            let (status, body) = get("/healthz").await;
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            (status == 503 && v["arc"]["up"] == false && v["arc"]["pending"].as_u64() >= Some(2)).then_some(v)
        },
    )
    .await;
    assert!(
        health["problems"].to_string().contains("alarm receiving centre"),
        "{health}"
    );
    let (_, metrics) = get("/metrics").await;
    assert!(metrics.contains("alarm_verifier_arc_up 0"), "{metrics}");
    tokio::time::sleep(arc_down.saturating_sub(down_since.elapsed())).await;
    let arc = ArcReceiver::start(arc_port, "tcp", Some(ARC_KEY));
    let back = Instant::now();
    let first = arc
        .wait_event(&link("while-arc-down-1"), Duration::from_secs(30), &site.service)
        .await;
    arc.wait_event(&link("while-arc-down-2"), Duration::from_secs(30), &site.service)
        .await;
    let after_return = back.elapsed();
    assert_eq!(first["code"].as_str(), Some("BV"), "{first}");
    wait_for(
        site.service.about("/healthz to show the ARC up again"),
        Duration::from_secs(15),
        async || {
            let (status, body) = get("/healthz").await;
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            (status == 200 && v["arc"]["up"] == true && v["arc"]["pending"] == 0).then_some(())
        },
    )
    .await;
    let (_, metrics) = get("/metrics").await;
    assert!(
        metrics.contains("alarm_verifier_arc_up 1") && metrics.contains("alarm_verifier_arc_pending 0"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(arc.events_with("while-arc-down-1").len(), 1);
    assert_eq!(arc.events_with("while-arc-down-2").len(), 1);

    // Time from a panel's message to its ACK (the alarm stored first), over 20 messages.
    let messages: Vec<Value> = (0..20)
        .map(|i| {
            let (stamp, _) = stamp_now();
            json!({"seq": format!("{:04}", 100 + i), "account": ACCOUNT, "data": "Nri1/BA004", "key_hex": PANEL_KEY, "stamp": stamp})
        })
        .collect();
    let answers = panel(dc09_port, "tcp", &messages);
    assert!(answers.iter().all(|a| a["token"] == "*ACK"), "{answers:?}");
    let mut ms: Vec<f64> = answers.iter().filter_map(|a| a["elapsed_ms"].as_f64()).collect();
    ms.sort_by(f64::total_cmp);
    let (p50, p95) = (percentile(&ms, 0.5), percentile(&ms, 0.95));
    eprintln!(
        "DC-09 panel message to ACK over {} messages: p50 {p50:.1} ms, p95 {p95:.1} ms; \
         alarm to ARC receipt (first pair): {:.1} s; ARC back after {arc_down:?} down: both verdicts in {after_return:?}",
        ms.len(),
        (alarm_to_arc
            - chrono::DateTime::parse_from_rfc3339(&entrance.alarm_time)
                .map(|t| t.to_utc())
                .unwrap_or(alarm_to_arc))
        .num_milliseconds() as f64
            / 1000.0
    );
    assert!(p95 < 1000.0, "p95 {p95} ms");
}

/// The AlarmSink the transmitter reports through, for a transmitter without a service.
struct Reports(Mutex<Vec<String>>);

impl alarm_verifier::intake::AlarmSink for Reports {
    fn knows_camera(&self, _: &str) -> bool {
        true
    }
    fn accept(
        &self,
        _: alarm_verifier::intake::Arrival,
    ) -> Result<alarm_verifier::intake::Accepted, alarm_verifier::intake::Refused> {
        Err(alarm_verifier::intake::Refused::ShuttingDown)
    }
    fn report(&self, _: &str, error: &str, _: &[u8]) {
        self.0.lock().expect("reports").push(error.to_owned());
    }
    fn event_link(&self, _: &str, _: alarm_verifier::intake::EventLink) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_verdicts_reach_the_arc_over_udp() {
    let arc_port = free_port();
    let arc = ArcReceiver::start(arc_port, "udp", None);
    let dir = tempfile::tempdir().expect("dir");
    let text = format!(
        "[store]\npath = \"{}\"\n[http]\npublic_url = \"https://box.example/\"\n\
         [dc09.arc]\nhost = \"127.0.0.1\"\nport = {arc_port}\nprotocol = \"udp\"\nreceiver = \"12\"\n\
         [[camera]]\nid = \"yard\"\nurl = \"rtsp://10.0.0.6/s\"\n[camera.dc09]\naccount = \"{ACCOUNT}\"\nzones = [\"7\"]\n",
        dir.path().join("s.db").display()
    );
    let config = alarm_verifier::config::Config::parse(&text, "site.toml").expect("config");
    let store = Arc::new(alarm_verifier::store::Store::open(&config.store.path).expect("store"));
    let queue = alarm_verifier::delivery::arc::ArcQueue::new(&config, store)
        .expect("arc")
        .expect("configured");
    let alarm = alarm_verifier::intake::alarm::Alarm::new("udp-1".into(), "yard", Utc::now(), "mqtt".into());
    queue.enqueue(&alarm, VerdictKind::Verified, "person in 3 of 3 frames");
    let reports = Arc::new(Reports(Mutex::new(Vec::new())));
    let task = tokio::spawn(queue.clone().deliver(reports.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let event = loop {
        if let Some(e) = arc
            .events_with("Vhttps://box.example/api/alarms/udp-1/clip.mp4")
            .into_iter()
            .next()
        {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no event at the ARC: {:?}",
            arc.lines.lock().expect("lines")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // pysiaalarm hands the event over before it sends its ACK.
    wait_until("the ARC's ACK recorded", Duration::from_secs(10), || {
        queue.pending() == 0
    })
    .await;
    task.abort();
    // pysiaalarm's ADM-CID parser takes one extended data block only, so this is SIA-DCS: BV on
    // the camera's zone 007.
    assert_eq!(event["encrypted"], false, "{event}");
    assert_eq!(event["code"].as_str(), Some("BV"), "{event}");
    assert_eq!(event["message"].as_str(), Some("007"), "{event}");
    assert!(queue.state().up && queue.state().last_ack.is_some());
    assert!(reports.0.lock().expect("reports").is_empty());
}
