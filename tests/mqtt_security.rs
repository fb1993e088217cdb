//! MQTT over TLS with a password: the service connects with a CA file and a password from the
//! environment, and the password appears nowhere in its output.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use alarm_verifier::analysis::verdict::VerdictKind;
use alarm_verifier::config::MqttConfig;
use alarm_verifier::tools::demo::{Broker, Probe, RtspCameraServer, footage};
use common::*;

const PASSWORD: &str = "correct-horse-battery";

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate it signs for 127.0.0.1.
fn make_certificates(dir: &Path) {
    let ssl = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("write ext");
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    // mosquitto started as root reads its files as the `mosquitto` user.
    run(Command::new("chmod").arg("-R").arg("a+rX").arg(dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_works_over_tls_with_a_password_from_the_environment() {
    let certs = tempfile::tempdir().expect("dir");
    run(Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(certs.path().join("passwd"))
        .args(["verifier", PASSWORD]));
    make_certificates(certs.path());
    let d = certs.path().display();
    let broker = Broker::start_with(&format!(
        "cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\nallow_anonymous false\npassword_file {d}/passwd"
    ))
    .expect("TLS broker");

    let vtest = footage("vtest.mp4");
    let server = RtspCameraServer::start(&[("entrance", vtest.as_path())]).expect("rtsp");
    let t = topics();
    let probe_config = MqttConfig {
        port: broker.port(),
        username: "verifier".into(),
        password: serde_json::from_str(&format!("\"{PASSWORD}\"")).expect("secret"),
        ca_file: Some(certs.path().join("ca.crt")),
        ..Default::default()
    };
    let mut probe = Probe::connect_with(&probe_config, &[t.verdict("+"), t.camera_state("+"), t.status()])
        .await
        .expect("probe over TLS");

    let site = tempfile::tempdir().expect("site");
    let security = format!(
        "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\ntopic_prefix = \"{PREFIX}\"\nusername = \"verifier\"\n\
         password_env = \"AV_TEST_MQTT_PASSWORD\"\nca_file = \"{d}/ca.crt\"\n",
        broker.port()
    );
    let config = site_toml(broker.port(), &[("entrance", server.url("entrance"))], "", site.path()).replace(
        &format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\ntopic_prefix = \"{PREFIX}\"\n",
            broker.port()
        ),
        &security,
    );
    assert!(config.contains("ca_file"), "{config}");
    let service = Service::start_with_env(&config, site.path(), &[("AV_TEST_MQTT_PASSWORD", PASSWORD)]);

    let topic = t.status();
    let online = probe
        .next(|m| m.topic == topic && m.payload == b"online", Duration::from_secs(30))
        .await;
    assert!(
        online.is_some(),
        "service did not connect over TLS; log:\n{}",
        service.log()
    );
    wait_camera_online(&mut probe, "entrance", &service).await;
    let mut states = Probe::connect_with(&probe_config, &[t.camera_state("+")])
        .await
        .expect("state probe over TLS");
    wait_pre_alarm_buffered(&mut states, &config, &service).await;
    probe
        .publish(&t.alarm("entrance"), alarm_json("over-tls"))
        .await
        .expect("publish");
    let verdict = wait_verdict(&mut probe, "over-tls", Duration::from_secs(30), &service).await;
    assert_eq!(verdict.verdict, VerdictKind::Verified);
    assert!(!service.log().contains(PASSWORD), "password in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_retried_and_never_logged() {
    let certs = tempfile::tempdir().expect("dir");
    run(Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(certs.path().join("passwd"))
        .args(["verifier", PASSWORD]));
    run(Command::new("chmod").arg("-R").arg("a+rX").arg(certs.path()));
    let broker = Broker::start_with(&format!(
        "allow_anonymous false\npassword_file {}/passwd",
        certs.path().display()
    ))
    .expect("broker");
    let site = tempfile::tempdir().expect("site");
    let wrong = "wrong-password-xyz";
    let config = site_toml(broker.port(), &[], "", site.path()).replace(
        "topic_prefix",
        &format!("username = \"verifier\"\npassword = \"{wrong}\"\ntopic_prefix"),
    );
    let service = Service::start(&config, site.path());
    wait_until(
        service.about("the refused connection reported"),
        Duration::from_secs(20),
        || service.log().contains("MQTT connection lost"),
    )
    .await;
    let log = service.log();
    assert!(
        log.contains("MQTT connection lost"),
        "no connection error reported:\n{log}"
    );
    assert!(!log.contains(wrong), "password in the log:\n{log}");
}
