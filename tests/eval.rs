//! `eval` on the labelled development set that scripts/setup.sh builds: every real intrusion
//! verified, and at least 95% of the false alarms cleared.

mod common;

use std::process::Command;

use common::root;

#[test]
fn eval_on_the_development_set_has_full_recall_and_filters_false_alarms() {
    let devset = root().join("testdata/devset");
    assert!(
        devset.join("labels.tsv").is_file(),
        "no development set in {}; run scripts/setup.sh",
        devset.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
        .current_dir(root())
        .arg("eval")
        .arg(&devset)
        .output()
        .expect("run eval");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "eval failed (recall below 100%?):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("recall on real intrusions"))
        .expect("summary line");
    let percent = |label: &str| -> f64 {
        let after = summary.split(label).nth(1).expect(label);
        let inside = after
            .split('(')
            .nth(1)
            .and_then(|s| s.split('%').next())
            .expect("a percentage");
        inside.parse().expect("a number")
    };
    assert_eq!(percent("recall on real intrusions:"), 100.0, "{summary}");
    assert!(percent("false alarms filtered:") >= 95.0, "{summary}");
    // Covered, torch-blinded and sprayed views: never dismissed as false alarms.
    let lost = summary
        .split("lost views not dismissed: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .expect("lost views count");
    let (kept, total) = lost.split_once('/').expect("n/m");
    assert!(total.parse::<usize>().expect("a number") >= 3, "{summary}");
    assert_eq!(kept, total, "{summary}");
    let clips = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && (l.contains("| yes |") || l.contains("| NO |")))
        .count();
    assert!(clips >= 20, "only {clips} clips evaluated");
}

#[test]
fn eval_fails_when_a_real_intrusion_is_missed() {
    // The tree in wind, labelled as an intrusion: recall 0 of 1, so eval must exit non-zero.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("labels.tsv"),
        format!(
            "{}\tverified\t5\tmislabelled on purpose\n",
            root().join("testdata/tree.mp4").display()
        ),
    )
    .expect("write labels");
    let out = Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
        .current_dir(root())
        .arg("eval")
        .arg(dir.path())
        .output()
        .expect("run eval");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("recall on real intrusions: 0/1"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("recall is below 100%"));
}
