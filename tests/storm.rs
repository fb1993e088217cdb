//! `bench-storm`: a tiny storm runs end to end (broker, RTSP server process, service, alarms,
//! verdicts, report), and options that cannot work are refused before anything starts.

use std::process::{Command, Output};

fn bench_storm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
        .arg("bench-storm")
        .args(args)
        .output()
        .expect("run bench-storm")
}

#[test]
fn a_small_storm_is_answered_and_reported() {
    let extra = "[verdict]\\nworkers = 1";
    let out = bench_storm(&["--cameras", "2", "--alarms", "2", "--within", "1", "--extra", extra]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "2 (1 people, 1 empty)",
        "detect streams (640x360): yes",
        "2 of 2 received",
        "core-s per alarm",
        "peak RSS",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing from:\n{stdout}");
    }
}

#[test]
fn more_alarms_than_cameras_is_refused() {
    let out = bench_storm(&["--cameras", "3", "--alarms", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--alarms") && stderr.contains("distinct cameras"),
        "{stderr}"
    );
}
