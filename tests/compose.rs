//! docker/compose.yaml (no Docker engine here, so read as YAML): the bundled broker takes no
//! anonymous client, is published on the host's loopback unless the user says otherwise, and the
//! service gets the password the broker was given.

use std::process::Command;

fn compose() -> serde_json::Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            concat!(env!("CARGO_MANIFEST_DIR"), "/docker/compose.yaml"),
        ])
        .output()
        .expect("python3 (with python3-yaml, from scripts/setup.sh)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

#[test]
fn bundled_broker_needs_a_password_and_stays_on_loopback() {
    let compose = compose();
    let broker = &compose["services"]["mosquitto"];
    let ports = broker["ports"].as_array().expect("ports");
    for port in ports {
        let port = port.as_str().expect("short port syntax");
        assert!(
            port.starts_with("${MQTT_PUBLISH_ADDRESS:-127.0.0.1}:") || port.starts_with("127.0.0.1:"),
            "broker published beyond the host by default: {port}"
        );
    }
    let password = broker["environment"]["MQTT_PASSWORD"].as_str().expect("MQTT_PASSWORD");
    assert!(
        password.starts_with("${MQTT_PASSWORD:?"),
        "compose must refuse to start without a password: {password}"
    );
    let command = broker["command"].to_string();
    assert!(
        command.contains("mosquitto_passwd -c -b /mosquitto/data/passwd"),
        "{command}"
    );
    assert!(!command.contains("no-auth"), "{command}");
    let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/mosquitto.conf")).expect("conf");
    assert!(conf.lines().any(|l| l.trim() == "allow_anonymous false"), "{conf}");
    assert!(
        conf.lines().any(|l| l.trim() == "password_file /mosquitto/data/passwd"),
        "{conf}"
    );
    let mounts = broker["volumes"].to_string();
    assert!(
        mounts.contains("./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro"),
        "{mounts}"
    );

    let service = &compose["services"]["alarm-verifier"];
    assert_eq!(
        service["environment"]["MQTT_PASSWORD"], *password,
        "the service and the broker share one password"
    );
}
