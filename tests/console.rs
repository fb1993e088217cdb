//! The API, metrics, health and console against the running service with real parts (broker, RTSP
//! cameras, model), with real clients: reqwest, GStreamer's MP4 demuxer, headless Chromium, and
//! the `export-eval` and `eval` commands.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use alarm_verifier::analysis::verdict::VerdictKind;
use alarm_verifier::tools::demo::free_port;
use common::*;

const TOKEN: &str = "console-t0ken-7781";

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
    }

    async fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.get(path).await;
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    async fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .body(body.to_owned())
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }
}

/// Video frames in an MP4 file: the sample count of its one track's sample-size box (`stsz`),
/// after checking that GStreamer's qtdemux takes the file.
fn mp4_frames(path: &std::path::Path) -> usize {
    let out = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", path.display()))
        .args(["!", "qtdemux", "!", "fakesink"])
        .output()
        .expect("gst-launch-1.0");
    assert!(
        out.status.success(),
        "qtdemux failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(path).expect("clip");
    let at = bytes.windows(4).position(|w| w == b"stsz").expect("an stsz box");
    let count = &bytes[at + 12..at + 16];
    u32::from_be_bytes([count[0], count[1], count[2], count[3]]) as usize
}

/// `name{labels} value` lines of a Prometheus text exposition.
fn metric_values(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_api_metrics_health_and_console_on_a_running_site() {
    let port = free_port().expect("port");
    let extra = format!("[http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n");
    let mut site = Site::start_configured(
        &[("entrance", "vtest.mp4", None), ("garden", "tree.mp4", None)],
        &extra,
        &[(
            "garden",
            "[[camera.policy.zone]]\nname = \"lawn\"\npoints = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]",
        )],
    )
    .await;
    site.let_buffers_fill().await;
    let api = Api {
        client: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };

    // Three alarms, three verdicts.
    for (camera, id) in [("entrance", "con-e1"), ("garden", "con-g1"), ("entrance", "con-e2")] {
        site.raise(camera, id).await;
        // Apart in time, as an operator would see them: the list's order is by alarm time.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut sent = HashMap::new();
    for id in ["con-e1", "con-g1", "con-e2"] {
        let v = site.verdict(id, Duration::from_secs(30)).await;
        sent.insert(id, v);
    }
    assert_eq!(sent["con-e1"].verdict, VerdictKind::Verified);
    assert_eq!(sent["con-g1"].verdict, VerdictKind::FalseAlarm);

    // Listing and filters, newest first.
    let (status, list) = api.json("/api/alarms").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["alarms"]
        .as_array()
        .expect("alarms")
        .iter()
        .filter_map(|a| a["alarm_id"].as_str())
        .collect();
    assert_eq!(ids, ["con-e2", "con-g1", "con-e1"]);
    let (_, garden) = api.json("/api/alarms?camera=garden").await;
    assert_eq!(garden["alarms"].as_array().map(Vec::len), Some(1));
    assert_eq!(garden["alarms"][0]["verdict"], "false_alarm");
    let (_, verified) = api.json("/api/alarms?verdict=verified&limit=1").await;
    assert_eq!(verified["alarms"][0]["alarm_id"], "con-e2");
    let (_, future) = api.json("/api/alarms?since=2099-01-01T00:00:00Z").await;
    assert_eq!(future["alarms"].as_array().map(Vec::len), Some(0));
    let (status, bad) = api.json("/api/alarms?since=yesterday").await;
    assert_eq!(status, 400, "{bad}");
    let (status, csv) = api.get("/api/alarms?format=csv").await;
    let csv = String::from_utf8_lossy(&csv).into_owned();
    assert_eq!(status, 200);
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(
        csv.starts_with("alarm_id,camera,") && csv.contains("\"con-g1\",\"garden\""),
        "{csv}"
    );

    // One record, its evidence and its clip.
    let (status, record) = api.json("/api/alarms/con-e1").await;
    assert_eq!(status, 200);
    assert_eq!(record["verdict_document"]["verdict"], "verified");
    assert_eq!(record["source"], "mqtt:test");
    assert!(record["delivered"].is_string(), "{record}");
    let (status, jpeg) = api.get("/api/alarms/con-e1/evidence.jpg").await;
    assert_eq!(status, 200);
    assert!(image::load_from_memory(&jpeg).is_ok(), "evidence is not an image");
    for path in [
        "/api/alarms/nope",
        "/api/alarms/..%2F..%2Fetc%2Fpasswd",
        "/api/alarms/..%2F..%2Fetc%2Fpasswd/clip.mp4",
        "/api/alarms/nope/evidence.jpg",
    ] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
    }
    // The clip is made once the window's video is in (4 s after the alarm).
    let clip = wait_for(site.service.about("the clip"), Duration::from_secs(10), async || {
        let (status, body) = api.get("/api/alarms/con-e1/clip.mp4").await;
        (status == 200 && !body.is_empty()).then_some(body)
    })
    .await;
    let clip_path = site.dir.path().join("e1.mp4");
    std::fs::write(&clip_path, &clip).expect("write clip");
    let frames = mp4_frames(&clip_path);
    let (_, cameras) = api.json("/api/cameras").await;
    let entrance = cameras["cameras"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["camera"] == "entrance"))
        .cloned()
        .expect("entrance in /api/cameras");
    let fps = entrance["fps"].as_f64().expect("fps");
    // The window is 2 s before and 4 s after the alarm, from the keyframe before it (1 s GOP).
    let (low, high) = ((6.0 * fps * 0.85) as usize, (7.2 * fps * 1.1) as usize);
    assert!(
        (low..=high).contains(&frames),
        "{frames} frames at {fps} fps, {} bytes",
        clip.len()
    );
    println!(
        "clip: {} bytes, {frames} frames; evidence {} bytes",
        clip.len(),
        jpeg.len()
    );

    // The camera list and a snapshot of the newest keyframe.
    assert_eq!(entrance["state"], "online");
    let garden_cam = cameras["cameras"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["camera"] == "garden"))
        .cloned()
        .expect("garden");
    assert_eq!(garden_cam["zones"][0], "lawn");
    let (status, snap) = api.get("/api/cameras/garden/snapshot.jpg").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&snap));
    let snap = image::load_from_memory(&snap).expect("snapshot decodes");
    assert!(snap.width() >= 320, "{}", snap.width());
    let (status, _) = api.get("/api/cameras/nowhere/snapshot.jpg").await;
    assert_eq!(status, 404);

    // Feedback over HTTP and MQTT; bad feedback names the field.
    let (status, body) = api
        .post("/api/alarms/con-e1/feedback", r#"{"outcome":"real","operator":"ann"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .post(
            "/api/alarms/con-e2/feedback",
            r#"{"outcome":"false","operator":"ann","note":"a reflection"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    site.probe
        .publish(
            &format!("{PREFIX}/feedback/con-g1"),
            br#"{"outcome":"false","operator":"bob"}"#.to_vec(),
        )
        .await
        .expect("publish feedback");
    let (status, body) = api.post("/api/alarms/con-e1/feedback", r#"{"outcome":"maybe"}"#).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap_or_default().contains("`outcome`"),
        "{body}"
    );
    let (status, _) = api.post("/api/alarms/nope/feedback", r#"{"outcome":"real"}"#).await;
    assert_eq!(status, 404);
    let mqtt_feedback = wait_for("feedback over MQTT stored", Duration::from_secs(4), async || {
        let (_, record) = api.json("/api/alarms/con-g1").await;
        record["feedback"].is_object().then(|| record["feedback"].clone())
    })
    .await;
    assert_eq!(mqtt_feedback["outcome"], "false", "feedback over MQTT not stored");
    assert_eq!(mqtt_feedback["operator"], "bob");

    // Metrics match what was sent.
    let (status, text) = api.get("/metrics").await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&text).into_owned();
    let m = metric_values(&text);
    assert_eq!(
        m.get("alarm_verifier_verdicts_total{camera=\"entrance\",verdict=\"verified\"}"),
        Some(&2.0),
        "{text}"
    );
    assert_eq!(
        m.get("alarm_verifier_verdicts_total{camera=\"garden\",verdict=\"false_alarm\"}"),
        Some(&1.0)
    );
    assert_eq!(m.get("alarm_verifier_alarms_total{source=\"mqtt\"}"), Some(&3.0));
    assert_eq!(m.get("alarm_verifier_verification_duration_seconds_count"), Some(&3.0));
    assert_eq!(m.get("alarm_verifier_cameras_online"), Some(&2.0));
    assert_eq!(
        m.get("alarm_verifier_feedback_disagreements{camera=\"entrance\",kind=\"verified_but_false\"}"),
        Some(&1.0)
    );
    assert!(
        m.get("alarm_verifier_detector_inferences_total")
            .is_some_and(|n| *n > 0.0)
    );

    // The token guards every path but /healthz; the token never shows in the log.
    for path in [
        "/",
        "/metrics",
        "/api/alarms",
        "/api/alarms/con-e1/clip.mp4",
        "/api/cameras",
    ] {
        let r = api.client.get(format!("{}{path}", api.base)).send().await.expect("GET");
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let r = api
            .client
            .get(format!("{}{path}", api.base))
            .bearer_auth("wrong")
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }

    // The console in a real browser: the token as the Basic password in the URL.
    let url = format!("http://operator:{TOKEN}@127.0.0.1:{port}/");
    let dom = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", &url])
        .output()
        .expect("chromium");
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for wanted in [
        "entrance",
        "garden",
        "VERIFIED",
        "FALSE ALARM",
        "Test alarm",
        "Operator: real",
    ] {
        assert!(dom.contains(wanted), "console lacks {wanted:?}:\n{dom}");
    }
    let shot = site.dir.path().join("console.png");
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=1280,900", &url])
        .output()
        .expect("chromium");
    let png =
        std::fs::read(&shot).unwrap_or_else(|_| panic!("no screenshot: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());
    if let Ok(keep) = std::env::var("AV_CONSOLE_SCREENSHOT") {
        let _ = std::fs::copy(&shot, keep);
    }

    // A real form submission: Chromium clicks the console's "Test alarm" button, sending its own
    // Origin and Sec-Fetch-Site, which the cross-site check lets through to a new alarm.
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("operator:{TOKEN}"))
    );
    let clicked = Command::new("python3")
        .arg(root().join("tests/tools/console_form.py"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(&auth)
        .arg("form[action=\"/console/test/entrance\"] button")
        .output()
        .expect("python3");
    let clicked: serde_json::Value = serde_json::from_slice(&clicked.stdout)
        .unwrap_or_else(|_| panic!("console_form.py: {}", String::from_utf8_lossy(&clicked.stderr)));
    let posted = clicked["responses"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r[0] == "POST"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(posted[2], 303, "the form post was not taken: {clicked}");
    assert!(
        clicked["text"].as_str().unwrap_or_default().contains("Recent alarms"),
        "{clicked}"
    );
    let (_, tests) = api.json("/api/alarms?camera=entrance").await;
    assert!(
        tests["alarms"].as_array().is_some_and(|a| a
            .iter()
            .any(|a| a["alarm_id"].as_str().is_some_and(|id| id.starts_with("test-")))),
        "no test alarm from the browser's form: {tests}"
    );

    // export-eval, then eval on the site's own history.
    let config = site.dir.path().join("site.toml");
    let out_dir = site.dir.path().join("history");
    let export = Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
        .args(["export-eval", "--config"])
        .arg(&config)
        .arg(&out_dir)
        .output()
        .expect("export-eval");
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let labels = std::fs::read_to_string(out_dir.join("labels.tsv")).expect("labels");
    assert_eq!(labels.lines().filter(|l| !l.starts_with('#')).count(), 3, "{labels}");
    assert!(labels.contains("con-e2.mp4\tfalse_alarm"), "{labels}");
    let eval = Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
        .current_dir(root())
        .arg("eval")
        .arg(&out_dir)
        .output()
        .expect("eval");
    let report = String::from_utf8_lossy(&eval.stdout).into_owned();
    assert!(
        eval.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    assert!(
        report.contains("con-e1.mp4") && report.contains("con-g1.mp4"),
        "{report}"
    );

    // /healthz: open, and 503 while the broker is down.
    let health = |client: reqwest::Client, base: String| async move {
        let r = client.get(format!("{base}/healthz")).send().await.expect("healthz");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    };
    let (status, body) = health(api.client.clone(), api.base.clone()).await;
    assert_eq!(status, 200, "{body}");
    site.broker.kill();
    let down = wait_for("/healthz to answer 503", Duration::from_secs(10), async || {
        let reply = health(api.client.clone(), api.base.clone()).await;
        (reply.0 == 503).then_some(reply)
    })
    .await;
    assert!(down.1.contains("MQTT"), "{}", down.1);
    site.broker.restart().expect("broker back");
    wait_for("/healthz to answer 200 again", Duration::from_secs(15), async || {
        let reply = health(api.client.clone(), api.base.clone()).await;
        (reply.0 == 200).then_some(())
    })
    .await;
    assert!(!site.service.log().contains(TOKEN), "the token leaked into the log");
}
