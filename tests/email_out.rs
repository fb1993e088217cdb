//! Verdicts by e-mail (`[email_out]`): a real mosquitto broker, RTSP cameras served in-process,
//! the real model, the service binary, and aiosmtpd (an independent SMTP server, from the test
//! venv that scripts/setup.sh makes) receiving the mails. The mails are read back with the
//! mail-parser crate.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alarm_verifier::analysis::verdict::VerdictKind;
use common::*;
use mail_parser::{MessageParser, MimeHeaders};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// aiosmtpd on `port`, writing what it takes into `dir`.
struct MailSink {
    child: Child,
}

impl MailSink {
    fn start(port: u16, dir: &Path) -> Self {
        let mut child = Command::new(root().join("third_party/test-venv/bin/python"))
            .arg(root().join("tests/tools/smtp_sink.py"))
            .arg(port.to_string())
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd (run scripts/setup.sh for the test venv)");
        let stdout = child.stdout.take().expect("stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "READY" {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(20)).expect("aiosmtpd ready");
        Self { child }
    }
}

impl Drop for MailSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mail in `dir` whose body names `alarm_id`, once it is there.
async fn wait_mail(dir: &Path, alarm_id: &str, timeout: Duration, service: &Service) -> Vec<u8> {
    let needle = format!("alarm_id: {alarm_id}\r\n");
    wait_for(
        service.about(&format!("a mail for {alarm_id} in {}", dir.display())),
        timeout,
        async || {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| Some(e.ok()?.path()))
                .collect();
            files.sort();
            files.into_iter().find_map(|f| {
                let raw = std::fs::read(&f).ok()?;
                let message = MessageParser::default().parse(&raw)?;
                message.body_text(0).filter(|b| b.contains(&needle))?;
                Some(raw)
            })
        },
    )
    .await
}

fn mails_for(dir: &Path, alarm_id: &str) -> usize {
    let needle = format!("alarm_id: {alarm_id}\r\n");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .filter(|raw| {
                    MessageParser::default()
                        .parse(raw)
                        .and_then(|m| m.body_text(0).map(|b| b.contains(&needle)))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_are_mailed_with_the_evidence_and_wait_for_a_server_that_is_down() {
    let smtp_port = free_port();
    let mail_dir = tempfile::tempdir().expect("mail dir");
    let sink = MailSink::start(smtp_port, mail_dir.path());
    let extra = format!(
        "[email_out]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
         from = \"Alarm verifier <verifier@site.example>\"\nto = [\"arc@monitoring.example\", \"ops@monitoring.example\"]\n\
         subject = \"{{verdict}} {{camera}} {{alarm_id}}\"\n\
         [http]\nlisten = \"\"\npublic_url = \"https://box.example\"\n"
    );
    let mut site = Site::start(&[("yard", "vtest.mp4"), ("trees", "tree.mp4")], &extra).await;
    site.let_buffers_fill().await;

    site.raise("yard", "mail-1").await;
    let verdict = site.verdict("mail-1", Duration::from_secs(30)).await;
    assert_eq!(verdict.verdict, VerdictKind::Verified, "{verdict:?}");
    let raw = wait_mail(mail_dir.path(), "mail-1", Duration::from_secs(20), &site.service).await;
    let mail = MessageParser::default().parse(&raw).expect("a mail");
    assert_eq!(mail.subject(), Some("verified yard mail-1"));
    let to: Vec<String> = mail
        .to()
        .map(|a| a.iter().filter_map(|x| x.address().map(str::to_owned)).collect())
        .unwrap_or_default();
    assert_eq!(to, ["arc@monitoring.example", "ops@monitoring.example"]);
    let body = mail.body_text(0).expect("text body").into_owned();
    for line in [
        "verdict: verified",
        "camera: yard",
        "record_id: mail-1",
        "link: https://box.example/api/alarms/mail-1",
        "evidence: evidence.jpg (attached)",
    ] {
        assert!(body.lines().any(|l| l == line), "{line:?} not in:\n{body}");
    }
    let reason = body
        .lines()
        .find_map(|l| l.strip_prefix("reason: "))
        .expect("reason line");
    assert_eq!(reason, verdict.reason);
    let jpeg = mail.attachment(0).expect("the evidence attached");
    assert_eq!(jpeg.attachment_name(), Some("evidence.jpg"));
    let image = image::load_from_memory_with_format(jpeg.contents(), image::ImageFormat::Jpeg).expect("a JPEG");
    assert!(image.width() >= 320, "{}x{}", image.width(), image.height());

    // The mail server away: the verdict waits in the queue and is mailed once it is back, once.
    drop(sink);
    site.raise("trees", "mail-2").await;
    let verdict = site.verdict("mail-2", Duration::from_secs(30)).await;
    assert_eq!(verdict.verdict, VerdictKind::FalseAlarm, "{verdict:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mails_for(mail_dir.path(), "mail-2"), 0);
    let _sink = MailSink::start(smtp_port, mail_dir.path());
    let back = Instant::now();
    let raw = wait_mail(mail_dir.path(), "mail-2", Duration::from_secs(90), &site.service).await;
    eprintln!(
        "mail server back: the waiting verdict mail arrived {:?} later",
        back.elapsed()
    );
    let mail = MessageParser::default().parse(&raw).expect("a mail");
    assert!(mail.body_text(0).is_some_and(|b| b.contains("verdict: false_alarm")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mails_for(mail_dir.path(), "mail-2"), 1, "mailed more than once");
    assert_eq!(mails_for(mail_dir.path(), "mail-1"), 1, "mailed more than once");
}
