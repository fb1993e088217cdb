//! Alarms from devices, with real clients: HTTP webhooks (reqwest, and raw garbage on the port)
//! and NVR alarm e-mails (Python's smtplib), through the real service to verdicts over MQTT.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use alarm_verifier::analysis::verdict::VerdictKind;
use alarm_verifier::tools::demo::free_port;
use common::*;

const TOKEN: &str = "webhook-s3cret-0042";

fn http_extra(port: u16) -> String {
    format!("[http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n")
}

async fn post(client: &reqwest::Client, url: &str, auth: Option<&str>, body: Vec<u8>) -> (u16, serde_json::Value) {
    let mut request = client.post(url).body(body);
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Sends raw bytes to a port and returns what comes back before the server closes or goes quiet.
fn raw_exchange(port: u16, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn error_report(site: &mut Site, wanted: &str) -> serde_json::Value {
    let t = topics();
    let msg = site
        .probe
        .next(
            |m| m.topic == t.errors() && String::from_utf8_lossy(&m.payload).contains(wanted),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "no report containing {wanted:?} on errors; log:\n{}",
                site.service.log()
            )
        });
    serde_json::from_slice(&msg.payload).expect("error report is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_webhook_alarms_are_verified_and_need_the_token() {
    let port = free_port().expect("port");
    let mut site = Site::start(&[("entrance", "vtest.mp4")], &http_extra(port)).await;
    site.let_buffers_fill().await;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let alarm_url = format!("{base}/api/alarms/entrance");

    // /healthz is open; everything else needs the token.
    let health = client.get(format!("{base}/healthz")).send().await.expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let (status, _) = post(&client, &alarm_url, None, b"{}".to_vec()).await;
    assert_eq!(status, 401);
    let (status, body) = post(&client, &alarm_url, Some("Bearer wrong-token"), b"{}".to_vec()).await;
    assert_eq!(status, 401, "{body}");
    let unauthorised = client
        .get(format!("{base}/api/alarms/entrance"))
        .send()
        .await
        .expect("get");
    assert_eq!(unauthorised.status().as_u16(), 401);
    assert!(
        unauthorised.headers().get("www-authenticate").is_some(),
        "a browser needs the Basic challenge"
    );

    // A good alarm: 202 once recorded, then a verdict over MQTT.
    let sent = Instant::now();
    let (status, body) = post(
        &client,
        &alarm_url,
        Some(&format!("Bearer {TOKEN}")),
        br#"{"alarm_id":"http-1","source":"vms"}"#.to_vec(),
    )
    .await;
    assert_eq!((status, body["alarm_id"].as_str()), (202, Some("http-1")), "{body}");
    let verdict = site.verdict("http-1", Duration::from_secs(30)).await;
    let elapsed = sent.elapsed();
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");
    assert_eq!(verdict.camera, "entrance");
    println!("HTTP alarm to verdict: {} ms", elapsed.as_millis());

    // The token as the password of HTTP Basic, and an empty body: an alarm now, with an id made here.
    let basic = client
        .post(&alarm_url)
        .basic_auth("technician", Some(TOKEN))
        .send()
        .await
        .expect("basic");
    assert_eq!(basic.status().as_u16(), 202);
    let body: serde_json::Value = serde_json::from_str(&basic.text().await.unwrap_or_default()).expect("json");
    let generated = body["alarm_id"].as_str().expect("alarm_id").to_owned();
    assert_eq!(generated.len(), 36, "{generated}");
    let verdict = site.verdict(&generated, Duration::from_secs(30)).await;
    assert_eq!(verdict.camera, "entrance");

    // Errors: duplicate, unknown camera, malformed, too large; each also reported on errors.
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = post(&client, &alarm_url, Some(&auth), br#"{"alarm_id":"http-1"}"#.to_vec()).await;
    assert_eq!(status, 409, "{body}");
    error_report(&mut site, "duplicate alarm_id").await;
    let (status, body) = post(&client, &format!("{base}/api/alarms/nowhere"), Some(&auth), Vec::new()).await;
    assert_eq!(status, 404, "{body}");
    let report = error_report(&mut site, "unknown camera").await;
    assert_eq!(report["topic"], "POST /api/alarms/nowhere");
    let (status, body) = post(&client, &alarm_url, Some(&auth), b"{\"time\": 12".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&client, &alarm_url, Some(&auth), br#"{"time": "yesterday"}"#.to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap_or_default().contains("field `time`"),
        "{body}"
    );
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(200_000)).into_bytes();
    let (status, body) = post(&client, &alarm_url, Some(&auth), huge).await;
    assert_eq!(status, 413, "{body}");

    // Garbage on the port gets an HTTP error, and the server keeps answering.
    let reply = raw_exchange(port, b"\x16\x03\x01\x02\x00garbage not http\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    let health = client.get(format!("{base}/healthz")).send().await.expect("healthz");
    assert_eq!(health.status().as_u16(), 200);

    let log = site.service.log();
    assert!(!log.contains(TOKEN), "the token leaked into the log");
}

/// An NVR-style alarm mail, sent with Python's smtplib; prints the server's replies as JSON.
const SEND_MAIL: &str = r#"
import json, smtplib, sys
from email.message import EmailMessage
a = json.loads(sys.argv[1])
msg = EmailMessage()
msg["From"] = a["from"]
msg["To"] = ", ".join(a["to"])
msg["Subject"] = a["subject"]
msg.set_content(a["body"])
if a.get("jpeg"):
    with open(a["jpeg"], "rb") as f:
        msg.add_attachment(f.read(), maintype="image", subtype="jpeg", filename="ch02_20261121.jpg")
s = smtplib.SMTP("127.0.0.1", a["port"], timeout=20)
s.ehlo("nvr.site.local")
out = {}
if a.get("login"):
    try:
        code, text = s.login(a["login"][0], a["login"][1])
        out["login"] = [code, text.decode()]
    except smtplib.SMTPAuthenticationError as e:
        out["login"] = [e.smtp_code, e.smtp_error.decode()]
        print(json.dumps(out)); sys.exit(0)
code, text = s.mail(a["from"])
out["mail"] = [code, text.decode()]
out["rcpt"] = [[c, t.decode()] for c, t in (s.rcpt(r) for r in a["to"])]
if code == 250:
    try:
        code, text = s.data(msg.as_bytes())
        out["data"] = [code, text.decode()]
    except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused) as e:
        out["data"] = [e.smtp_code, e.smtp_error.decode()]
s.quit()
print(json.dumps(out))
"#;

fn send_mail(port: u16, args: serde_json::Value) -> serde_json::Value {
    let mut args = args;
    args["port"] = port.into();
    let output = Command::new("python3")
        .args(["-c", SEND_MAIL, &args.to_string()])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("smtplib failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)))
}

fn write_jpeg(path: &Path) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 90]));
    img.save(path).expect("jpeg");
    std::fs::read(path).expect("read jpeg")
}

fn alarm_id_of(reply: &serde_json::Value) -> String {
    let text = reply["data"][1].as_str().unwrap_or_default();
    text.rsplit(": ")
        .next()
        .map(|s| s.trim_end_matches(')').to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvr_alarm_mails_become_alarms_on_the_camera_they_name() {
    let smtp = free_port().expect("port");
    let extra = format!(
        "[smtp]\nlisten = \"127.0.0.1:{smtp}\"\nusername = \"nvr\"\npassword = \"mail-pass\"\nmax_message_bytes = 200000\n"
    );
    let mut site = Site::start_configured(
        &[("entrance", "vtest.mp4", None), ("garden", "tree.mp4", None)],
        &extra,
        &[
            ("entrance", "email_match = \"Camera 02\""),
            ("garden", "email_match = \"Camera 12\""),
        ],
    )
    .await;
    site.let_buffers_fill().await;
    let jpeg = write_jpeg(&site.dir.path().join("snapshot.jpg"));
    let login = serde_json::json!(["nvr", "mail-pass"]);

    // Hikvision-style: the camera named in the subject, the snapshot attached.
    let sent = Instant::now();
    let reply = send_mail(
        smtp,
        serde_json::json!({
            "from": "nvr@site.local", "to": ["alarms@verifier.local"], "login": login,
            "subject": "Motion Detection Alarm: Camera 02 (Entrance)",
            "body": "Alarm Event: Motion Detection\nAlarm Input Channel No.: 2\nAlarm Device Name: NVR-01",
            "jpeg": site.dir.path().join("snapshot.jpg"),
        }),
    );
    assert_eq!(reply["data"][0], 250, "{reply}");
    let entrance_id = alarm_id_of(&reply);
    let verdict = site.verdict(&entrance_id, Duration::from_secs(30)).await;
    println!("mail to verdict: {} ms", sent.elapsed().as_millis());
    assert_eq!(verdict.camera, "entrance", "{reply}");
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");

    // A camera that keeps firing while its alarm is verified: the second mail (named by its
    // recipient) joins the first alarm.
    let first = send_mail(
        smtp,
        serde_json::json!({"from": "nvr@site.local", "to": ["x@verifier.local"], "login": login,
            "subject": "Motion Detection Alarm: Camera 12", "body": "Channel 12"}),
    );
    let second = send_mail(
        smtp,
        serde_json::json!({"from": "nvr@site.local", "to": ["garden@verifier.local"], "login": login,
            "subject": "Motion", "body": "again"}),
    );
    let garden_id = alarm_id_of(&first);
    assert_eq!(alarm_id_of(&second), garden_id, "{first} {second}");
    let verdict = site.verdict(&garden_id, Duration::from_secs(30)).await;
    assert_eq!(
        (verdict.camera.as_str(), verdict.verdict),
        ("garden", VerdictKind::FalseAlarm)
    );

    // A mail that names no camera: 550, and reported on errors.
    let unmatched = send_mail(
        smtp,
        serde_json::json!({"from": "nvr@site.local", "to": ["alarms@verifier.local"], "login": login,
            "subject": "Disk full", "body": "HDD error"}),
    );
    assert_eq!(unmatched["data"][0], 550, "{unmatched}");
    let report = error_report(&mut site, "no camera matches").await;
    assert_eq!(report["topic"], "smtp from <nvr@site.local>");

    // Over the size limit: 552. A wrong password: 535. Relaying: refused.
    std::fs::write(site.dir.path().join("big.jpg"), vec![0xFFu8; 300_000]).expect("big");
    let big = send_mail(
        smtp,
        serde_json::json!({"from": "nvr@site.local", "to": ["entrance@verifier.local"], "login": login,
            "subject": "Camera 02", "body": "big", "jpeg": site.dir.path().join("big.jpg")}),
    );
    assert_eq!(big["data"][0], 552, "{big}");
    let wrong = send_mail(
        smtp,
        serde_json::json!({"from": "nvr@site.local", "to": ["entrance@verifier.local"],
            "login": ["nvr", "guess"], "subject": "Camera 02", "body": ""}),
    );
    assert_eq!(wrong["login"][0], 535, "{wrong}");
    let relay = send_mail(
        smtp,
        serde_json::json!({"from": "spam@x.example", "to": ["victim%elsewhere.example@verifier.local"],
            "login": login, "subject": "Camera 02", "body": ""}),
    );
    assert_eq!(relay["rcpt"][0][0], 550, "{relay}");

    // Commands out of order and junk: clear SMTP errors, then the server still takes mail.
    let junk = raw_exchange(
        smtp,
        b"DATA\r\nMAIL FROM:<a@b>\r\n\x00\x01\x02 junk\r\nEHLO x\r\nMAIL FROM:<a@b>\r\nQUIT\r\n",
    );
    let codes: Vec<&str> = junk.lines().map(|l| &l[..l.len().min(3)]).collect();
    assert_eq!(codes.first(), Some(&"220"), "{junk}");
    assert!(codes.contains(&"503") && codes.contains(&"500"), "{junk}");
    assert_eq!(codes.last(), Some(&"221"), "{junk}");

    // The NVR's picture is kept with the alarm's record, and the joined mail is listed.
    let db = rusqlite::Connection::open(site.dir.path().join("alarm-verifier.db")).expect("store");
    let (source, snapshot): (String, Option<Vec<u8>>) = db
        .query_row(
            "SELECT source, snapshot FROM alarms WHERE alarm_id = ?1",
            [&entrance_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("alarm recorded");
    assert_eq!(source, "smtp:nvr@site.local");
    assert_eq!(snapshot.as_deref(), Some(jpeg.as_slice()));
    let joined: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM joined_events WHERE alarm_id = ?1",
            [&garden_id],
            |r| r.get(0),
        )
        .expect("joined");
    assert_eq!(joined, 1);
    assert!(
        !site.service.log().contains("mail-pass"),
        "the password leaked into the log"
    );
}

/// One session kept alive with NOOPs until the server answers something else; prints the codes,
/// when the first other one came (seconds from the greeting) and whether the server then closed.
const HOLD_SESSION: &str = r#"
import json, smtplib, sys, time
a = json.loads(sys.argv[1])
s = smtplib.SMTP("127.0.0.1", a["port"], timeout=20)
start = time.monotonic()
s.ehlo("nvr.site.local")
s.login(a["login"][0], a["login"][1])
out = {"codes": []}
while time.monotonic() - start < a["for_s"]:
    code, text = s.noop()
    out["codes"].append(code)
    if code != 250:
        out["at_s"] = time.monotonic() - start
        out["text"] = text.decode()
        break
    time.sleep(0.2)
try:
    s.noop()
    out["closed"] = False
except smtplib.SMTPServerDisconnected:
    out["closed"] = True
print(json.dumps(out))
"#;

fn run_python(script: &str, args: &serde_json::Value) -> serde_json::Value {
    let output = Command::new("python3")
        .args(["-c", script, &args.to_string()])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("python failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)))
}

/// The SMTP limits over a real socket: the 101st recipient of a mail gets 452 and the mail still
/// goes to the first 100; a session past smtp.max_session_s gets 421 and is closed; a good
/// alarm mail after both gets its verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_limits_hold_and_a_good_alarm_mail_still_gets_its_verdict() {
    let smtp = free_port().expect("port");
    let extra = format!(
        "[smtp]\nlisten = \"127.0.0.1:{smtp}\"\nusername = \"nvr\"\npassword = \"mail-pass\"\nmax_session_s = 3\n"
    );
    let mut site = Site::start_configured(
        &[("entrance", "vtest.mp4", None)],
        &extra,
        &[("entrance", "email_match = \"Camera 02\"")],
    )
    .await;
    let login = serde_json::json!(["nvr", "mail-pass"]);

    // 101 recipients, the camera first: 100 taken, the 101st refused, the mail delivered.
    let mut to = vec!["entrance@verifier.local".to_owned()];
    to.extend((1..=100).map(|i| format!("copy{i}@verifier.local")));
    let many = send_mail(
        smtp,
        serde_json::json!({"from": "nvr@site.local", "to": to, "login": login,
            "subject": "Motion Detection Alarm", "body": "many recipients"}),
    );
    let rcpt = many["rcpt"].as_array().expect("rcpt replies");
    assert_eq!(rcpt.len(), 101, "{many}");
    assert!(rcpt[..100].iter().all(|r| r[0] == 250), "{many}");
    assert_eq!(rcpt[100][0], 452, "{many}");
    assert!(
        rcpt[100][1].as_str().is_some_and(|t| t.contains("too many recipients")),
        "{many}"
    );
    assert_eq!(many["data"][0], 250, "{many}");

    // A session kept busy past max_session_s (3 s): 421, then the server closes it.
    let held = run_python(
        HOLD_SESSION,
        &serde_json::json!({"port": smtp, "login": login, "for_s": 15}),
    );
    assert_eq!(
        held["codes"].as_array().and_then(|c| c.last()),
        Some(&421.into()),
        "{held}"
    );
    let at = held["at_s"].as_f64().unwrap_or_default();
    assert!((2.5..6.0).contains(&at), "421 after {at} s: {held}");
    assert!(
        held["text"].as_str().is_some_and(|t| t.contains("smtp.max_session_s")),
        "{held}"
    );
    assert_eq!(held["closed"], true, "{held}");

    // After both, a good alarm mail is taken and verified.
    site.let_buffers_fill().await;
    let good = send_mail(
        smtp,
        serde_json::json!({"from": "nvr@site.local", "to": ["alarms@verifier.local"], "login": login,
            "subject": "Motion Detection Alarm: Camera 02", "body": "Alarm Event: Motion Detection"}),
    );
    assert_eq!(good["data"][0], 250, "{good}");
    let verdict = site.verdict(&alarm_id_of(&good), Duration::from_secs(30)).await;
    assert_eq!(verdict.camera, "entrance");
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");
}

/// Logs in with AUTH PLAIN (smtplib) and AUTH LOGIN (by hand); prints the reply codes.
const LOGINS: &str = r#"
import base64, json, smtplib, sys
a = json.loads(sys.argv[1])
user, password = a["login"]
b64 = lambda t: base64.b64encode(t.encode()).decode()
out = {}
s = smtplib.SMTP("127.0.0.1", a["port"], timeout=20)
s.ehlo("nvr.site.local")
out["plain"] = s.login(user, password)[0]
s.quit()
s = smtplib.SMTP("127.0.0.1", a["port"], timeout=20)
s.ehlo("nvr.site.local")
out["login"] = [s.docmd("AUTH LOGIN")[0], s.docmd(b64(user))[0], s.docmd(b64(password))[0]]
s.quit()
print(json.dumps(out))
"#;

/// With RUST_LOG=trace, neither the SMTP password nor its base64 forms (AUTH PLAIN's and AUTH
/// LOGIN's) show in the service's log: mailin traces every line it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_smtp_secret_shows_in_the_log_at_trace_level() {
    use base64::Engine as _;
    const PASSWORD: &str = "Mail-Pass-7731";
    let broker = alarm_verifier::tools::demo::Broker::start().expect("broker");
    let smtp = free_port().expect("port");
    let dir = tempfile::tempdir().expect("site dir");
    let extra = format!(
        "[smtp]\nlisten = \"127.0.0.1:{smtp}\"\nusername = \"nvr\"\npassword_env = \"AV_TEST_SMTP_PASSWORD\"\n"
    );
    // A camera that is not there: the logins are what this test is about.
    let config = site_toml(
        broker.port(),
        &[("gate", "rtsp://127.0.0.1:9/none".into())],
        &extra,
        dir.path(),
    );
    let service = Service::start_with_env(
        &config,
        dir.path(),
        &[("RUST_LOG", "trace"), ("AV_TEST_SMTP_PASSWORD", PASSWORD)],
    );
    wait_until(service.about("the SMTP port"), Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", smtp)).is_ok()
    })
    .await;
    let replies = run_python(LOGINS, &serde_json::json!({"port": smtp, "login": ["nvr", PASSWORD]}));
    assert_eq!(replies["plain"], 235, "{replies}");
    assert_eq!(replies["login"], serde_json::json!([334, 334, 235]), "{replies}");
    drop(service);

    let log = std::fs::read_to_string(dir.path().join("service.log")).expect("log");
    assert!(
        log.contains("SMTP session opened"),
        "not logging at trace level:\n{log}"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in [
        PASSWORD.to_owned(),
        b64.encode(format!("\0nvr\0{PASSWORD}")),
        b64.encode(PASSWORD),
    ] {
        assert!(!log.contains(&secret), "{secret:?} is in the log");
    }
}
