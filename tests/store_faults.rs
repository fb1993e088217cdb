//! A store that cannot be written, with the real broker, the real RTSP server and the service
//! binary: alarms are acknowledged only once stored (HTTP 503 with Retry-After, MQTT no ack, SMTP
//! 451), and none is lost once the store is writable again. Also the bound on alarms dated ahead.
//!
//! The store is made unwritable the way it fails in the field without root's powers to ignore file
//! modes: another connection holds SQLite's write lock (`BEGIN EXCLUSIVE`), so the service's
//! commits fail with "database is locked".

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use alarm_verifier::store::Store;
use alarm_verifier::tools::demo::free_port;
use common::*;

const FAST_CLIP: &str = "[clip]\npre_s = 1.0\npost_s = 1.0\nanalysis_fps = 2.0\n";

fn http_extra(port: u16) -> String {
    format!("{FAST_CLIP}[http]\nlisten = \"127.0.0.1:{port}\"\n")
}

/// An NVR's alarm mail to `{camera}@…`, sent with Python's smtplib; prints the reply to the
/// message's end as `code text`.
const SEND_MAIL: &str = r#"
import smtplib, sys
port, camera = int(sys.argv[1]), sys.argv[2]
s = smtplib.SMTP("127.0.0.1", port, timeout=20)
s.ehlo("nvr.site.local")
body = "From: nvr@site.local\r\nTo: %s@verifier.local\r\nSubject: Motion alarm\r\n\r\nMotion\r\n" % camera
s.mail("nvr@site.local")
s.rcpt("%s@verifier.local" % camera)
try:
    code, text = s.data(body.encode())
except smtplib.SMTPDataError as e:
    code, text = e.smtp_code, e.smtp_error
print(code, text.decode())
s.quit()
"#;

fn send_mail(port: u16, camera: &str) -> String {
    let output = Command::new("python3")
        .args(["-c", SEND_MAIL, &port.to_string(), camera])
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Holds SQLite's write lock on the service's store until dropped (rolled back).
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(db: &Path) -> Self {
        let conn = rusqlite::Connection::open(db).expect("open the service's store");
        conn.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
        conn.execute_batch("BEGIN EXCLUSIVE").expect("take the write lock");
        Self(conn)
    }

    fn release(self) {
        self.0.execute_batch("ROLLBACK").expect("release the write lock");
    }
}

async fn post_alarm(port: u16, camera: &str, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/alarms/{camera}"))
        .body(body)
        .send()
        .await
        .expect("HTTP request")
}

/// The next report on `errors` that mentions `wanted`, as text.
async fn error_report(site: &mut Site, wanted: &str) -> String {
    let t = topics();
    let msg = site
        .probe
        .next(
            |m| m.topic == t.errors() && String::from_utf8_lossy(&m.payload).contains(wanted),
            Duration::from_secs(15),
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "no report mentioning {wanted:?} on errors; log:\n{}",
                site.service.log()
            )
        });
    String::from_utf8_lossy(&msg.payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_gets_503_and_no_ack_and_loses_no_alarm_once_writable() {
    let port = free_port().expect("free port");
    let smtp = free_port().expect("free port");
    let extra = format!("{}[smtp]\nlisten = \"127.0.0.1:{smtp}\"\n", http_extra(port));
    let mut site = Site::start(&[("entrance", "vtest.mp4")], &extra).await;
    site.let_buffers_fill().await;
    let db = site.dir.path().join("alarm-verifier.db");
    let store = Store::open(&db).expect("open the service's store");

    // The store locked: HTTP is told to come back, MQTT is left unacknowledged.
    let lock = WriteLock::take(&db);
    let locked = Instant::now();
    let refused = post_alarm(port, "entrance", r#"{"alarm_id":"locked-http"}"#.into()).await;
    assert_eq!(refused.status().as_u16(), 503, "log:\n{}", site.service.log());
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| s > 0), "Retry-After: {retry_after:?}");
    let body = refused.text().await.unwrap_or_default();
    assert!(body.contains("could not be stored"), "{body}");
    let report = error_report(&mut site, "locked-http").await;
    assert!(report.contains("not acknowledged"), "{report}");

    let mail = send_mail(smtp, "entrance");
    assert!(mail.starts_with("451 "), "a mail is refused for now: {mail}");

    site.raise("entrance", "locked-mqtt").await;
    let report = error_report(&mut site, "locked-mqtt").await;
    assert!(report.contains("could not be stored"), "{report}");
    // Its retries meet the same lock for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!store.knows_alarm("locked-mqtt").unwrap_or(true));
    assert!(!store.knows_alarm("locked-http").unwrap_or(true));
    let held_s = locked.elapsed().as_secs_f64();

    // Writable again: the MQTT alarm is stored and answered without being sent again; the HTTP
    // sender does as told and sends again.
    lock.release();
    let released = Instant::now();
    let resent = post_alarm(port, "entrance", r#"{"alarm_id":"locked-http"}"#.into()).await;
    assert_eq!(resent.status().as_u16(), 202);
    let mail = send_mail(smtp, "entrance");
    assert!(mail.starts_with("250 "), "the mail sent again is taken: {mail}");
    site.verdict("locked-http", Duration::from_secs(30)).await;
    let verdict = site.verdict("locked-mqtt", Duration::from_secs(30)).await;
    assert_eq!(verdict.alarm_id, "locked-mqtt");
    assert!(store.knows_alarm("locked-mqtt").unwrap_or(false));
    println!(
        "store locked {held_s:.1} s: HTTP 503 (Retry-After {retry_after:?}), MQTT unacknowledged; \
         MQTT alarm answered {:.1} s after the lock was released",
        released.elapsed().as_secs_f64()
    );

    // No ack means the broker still holds it: an alarm refused while locked, and then the service
    // killed before any retry could store it, comes back to the next run.
    let lock = WriteLock::take(&db);
    site.raise("entrance", "locked-at-crash").await;
    error_report(&mut site, "locked-at-crash").await;
    site.service.kill();
    lock.release();
    assert!(!store.knows_alarm("locked-at-crash").unwrap_or(true));
    site.service = Service::start(&site.config, site.dir.path());
    let verdict = site.verdict("locked-at-crash", Duration::from_secs(60)).await;
    assert_eq!(verdict.alarm_id, "locked-at-crash");
    assert!(store.knows_alarm("locked-at-crash").unwrap_or(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_dated_ahead_are_bounded_and_the_rest_are_refused_and_reported() {
    let port = free_port().expect("free port");
    let mut site = Site::start(&[("entrance", "vtest.mp4")], &http_extra(port)).await;
    let ahead = (chrono::Utc::now() + chrono::TimeDelta::minutes(30)).to_rfc3339();
    let mut statuses = Vec::new();
    for i in 0..65 {
        let body = format!(r#"{{"alarm_id":"ahead-{i:02}","time":"{ahead}"}}"#);
        statuses.push(post_alarm(port, "entrance", body).await.status().as_u16());
    }
    assert!(
        statuses[..64].iter().all(|s| *s == 202),
        "the first 64 wait: {statuses:?}; log:\n{}",
        site.service.log()
    );
    assert_eq!(statuses[64], 429, "the 65th is refused");
    let report = error_report(&mut site, "ahead-64").await;
    assert!(report.contains("ahead of this box's clock"), "{report}");

    // An alarm dated now is not held up by them.
    site.let_buffers_fill().await;
    let now = post_alarm(port, "entrance", r#"{"alarm_id":"dated-now"}"#.into()).await;
    assert_eq!(now.status().as_u16(), 202);
    site.verdict("dated-now", Duration::from_secs(30)).await;
}
