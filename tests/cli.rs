//! The command line: verify-clip on real footage with the real model, and check-config.

mod common;

use std::process::Command;

use alarm_verifier::analysis::verdict::{VerdictDocument, VerdictKind};
use alarm_verifier::tools::demo::footage;
use common::root;

fn verify_clip(file: &std::path::Path, alarm_at: &str, evidence: Option<&std::path::Path>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alarm-verifier"));
    cmd.current_dir(root())
        .arg("verify-clip")
        .arg(file)
        .arg("--alarm-at")
        .arg(alarm_at);
    if let Some(e) = evidence {
        cmd.arg("--evidence").arg(e);
    }
    cmd.output().expect("run verify-clip")
}

fn verdict_of(out: &std::process::Output) -> VerdictDocument {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not a verdict ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn verify_clip_with_people_is_verified_and_writes_evidence() {
    let dir = tempfile::tempdir().expect("temp dir");
    let evidence = dir.path().join("evidence.jpg");
    let out = verify_clip(&footage("vtest.mp4"), "10", Some(&evidence));
    let doc = verdict_of(&out);
    assert_eq!(doc.verdict, VerdictKind::Verified, "{doc:?}");
    assert!(doc.reason.starts_with("person in"), "{}", doc.reason);
    // Verified as soon as the policy's rules are met (min_frames = 2), not after the whole window.
    assert!(
        (2..=6).contains(&doc.frames_analyzed),
        "analysis should stop once verified: {} frames",
        doc.frames_analyzed
    );
    assert_eq!(doc.inferences, doc.frames_analyzed);
    let image = image::open(&evidence).expect("evidence JPEG decodes");
    assert_eq!((image.width(), image.height()), (768, 576));
}

#[test]
fn verify_clip_of_a_tree_in_wind_is_a_false_alarm() {
    let doc = verdict_of(&verify_clip(&footage("tree.mp4"), "10", None));
    assert_eq!(doc.verdict, VerdictKind::FalseAlarm, "{doc:?}");
    assert!(doc.detections.is_empty());
    assert!(doc.frames_analyzed > 5, "{}", doc.frames_analyzed);
}

#[test]
fn verify_clip_on_a_missing_or_broken_file_fails_naming_it() {
    let out = verify_clip(std::path::Path::new("/nonexistent/clip.mp4"), "1", None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/clip.mp4") && err.contains("no such file"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let junk = dir.path().join("junk.mp4");
    std::fs::write(&junk, b"this is not a video").expect("write");
    let out = verify_clip(&junk, "1", None);
    assert!(
        !out.status.success(),
        "a broken file must fail, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.mp4"), "{err}");

    // An alarm time past the end of the clip: no frames to judge, an error rather than a verdict.
    let out = verify_clip(&footage("tree.mp4"), "500", None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tree.mp4") && err.contains("no video frames"), "{err}");
}

#[test]
fn verify_clip_on_a_still_image_analyses_its_one_frame() {
    // A JPEG has no frame rate; GStreamer's videorate used to abort the whole process on it.
    let out = verify_clip(&root().join("testdata/sources/zidane.jpg"), "0", None);
    let doc = verdict_of(&out);
    assert_eq!(doc.frames_analyzed, 1, "{doc:?}");
    // One frame cannot meet min_frames = 2: the people are seen, and the reason says why not.
    assert_eq!(doc.verdict, VerdictKind::FalseAlarm, "{doc:?}");
    assert!(
        doc.reason.contains("person in 1 of 1 frames (fewer than 2)"),
        "{}",
        doc.reason
    );
}

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let run = |path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
            .arg("check-config")
            .arg(path)
            .output()
            .expect("run check-config")
    };
    let example = root().join("config/example.toml");
    let out = run(&example);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&example)
        .expect("example")
        .replace("port = 1883", "port = \"1883\"");
    std::fs::write(&bad, text).expect("write");
    let out = run(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("port"), "{err}");

    // An empty token would let an empty Basic password in: refused, naming the key.
    let empty_token = dir.path().join("empty-token.toml");
    let text = std::fs::read_to_string(&example)
        .expect("example")
        .replace("token_env = \"\"", "token_env = \"AV_TEST_EMPTY_TOKEN\"");
    std::fs::write(&empty_token, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
        .arg("check-config")
        .arg(&empty_token)
        .env("AV_TEST_EMPTY_TOKEN", "")
        .output()
        .expect("run check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an empty token passed: {err}");
    assert!(
        err.contains("http.token_env") && err.contains("not an empty value"),
        "{err}"
    );
}

/// `clip.decoder`: "auto" works on this machine (software decoding, no hardware here); an element
/// that is not installed is named in a clear error, by check-config and at the service's start.
#[test]
fn the_decoder_choice_is_checked_and_a_missing_element_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = |decoder: &str, detect_url: &str| {
        let path = dir.path().join(format!("{}.toml", decoder.replace(['"', ' '], "_")));
        let text = format!(
            "[clip]\ndecoder = \"{decoder}\"\n[store]\npath = \"{}\"\n[[camera]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:1/x\"\n{detect_url}",
            dir.path().join("store.db").display()
        );
        std::fs::write(&path, text).expect("write config");
        path
    };
    let check = |path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
            .arg("check-config")
            .arg(path)
            .output()
            .expect("run check-config")
    };
    for decoder in ["auto", "software", "avdec_h264"] {
        let out = check(&config(decoder, ""));
        assert!(
            out.status.success(),
            "{decoder}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("avdec_h264"), "{decoder}");
    }
    let missing = config("nvh264dec_missing", "");
    let out = check(&missing);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("clip.decoder") && err.contains("nvh264dec_missing"),
        "{err}"
    );
    let not_a_decoder = check(&config("videoconvert", ""));
    assert!(String::from_utf8_lossy(&not_a_decoder.stderr).contains("expected a video decoder"));

    let run = Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
        .args(["run", "--config"])
        .arg(&missing)
        .output()
        .expect("run the service");
    assert!(!run.status.success(), "the service started with a missing decoder");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("clip.decoder") && err.contains("nvh264dec_missing"),
        "{err}"
    );

    let out = check(&config("auto", "detect_url = \"http://10.0.0.5/sub\"\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("camera[0].detect_url") && err.contains("rtsp://"), "{err}");
}

/// Far people on wide views (development set `far_*`): found in regions of the full-resolution
/// frame, while their empty twins and a far animal stay false alarms.
#[test]
fn far_people_on_wide_views_are_verified_in_regions_and_their_empty_twins_are_not() {
    let devset = root().join("testdata/devset");
    let dir = tempfile::tempdir().expect("temp dir");
    for clip in ["far_day_1080p", "far_night_1080p", "far_dusk_1440p", "far_pair_1440p"] {
        let evidence = dir.path().join(format!("{clip}.jpg"));
        let doc = verdict_of(&verify_clip(&devset.join(format!("{clip}.mp4")), "5", Some(&evidence)));
        assert_eq!(doc.verdict, VerdictKind::Verified, "{clip}: {doc:?}");
        assert!(doc.reason.starts_with("person in"), "{clip}: {}", doc.reason);
        assert!(
            doc.inferences > doc.frames_analyzed,
            "{clip}: no region was detected in ({} inferences, {} frames)",
            doc.inferences,
            doc.frames_analyzed
        );
        assert!(evidence.is_file(), "{clip}: no evidence image");
    }
    for clip in ["far_day_1080p_empty", "far_night_1080p_empty", "far_cat_night_1080p"] {
        let doc = verdict_of(&verify_clip(&devset.join(format!("{clip}.mp4")), "5", None));
        assert_eq!(doc.verdict, VerdictKind::FalseAlarm, "{clip}: {doc:?}");
    }
}

/// SMTP on the network needs AUTH, and a username needs a password that is not empty:
/// check-config names the key, as it does for HTTP's token.
#[test]
fn check_config_refuses_an_open_or_passwordless_smtp_server() {
    let example = std::fs::read_to_string(root().join("config/example.toml")).expect("example");
    let dir = tempfile::tempdir().expect("temp dir");
    let check = |name: &str, smtp: &str, env: &[(&str, &str)]| {
        // The example's [smtp] table with its keys in `smtp` instead of the example's own.
        let replaced = ["listen", "username", "password_env", "password", "max_session_s"];
        let mut section = String::new();
        let mut lines = Vec::new();
        for line in example.lines() {
            if line.starts_with('[') {
                section = line.split_whitespace().next().unwrap_or_default().to_owned();
            }
            let key = line.split('=').next().unwrap_or_default().trim();
            if section == "[smtp]" && replaced.contains(&key) {
                continue;
            }
            lines.push(line.to_owned());
            if line.starts_with("[smtp]") {
                lines.push(smtp.to_owned());
            }
        }
        let text = lines.join("\n");
        assert!(text.contains(smtp), "no [smtp] table in the example");
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_alarm-verifier"))
            .arg("check-config")
            .arg(&path)
            .envs(env.iter().copied())
            .output()
            .expect("run check-config");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = check("open", "listen = \"0.0.0.0:2525\"", &[]);
    assert!(
        !ok && err.contains("smtp.username") && err.contains("0.0.0.0:2525"),
        "{err}"
    );
    let (ok, err) = check("no-password", "listen = \"127.0.0.1:2525\"\nusername = \"nvr\"", &[]);
    assert!(!ok && err.contains("`smtp.password`"), "{err}");
    let (ok, err) = check(
        "empty-password",
        "listen = \"0.0.0.0:2525\"\nusername = \"nvr\"\npassword_env = \"AV_TEST_SMTP_PASSWORD\"",
        &[("AV_TEST_SMTP_PASSWORD", "")],
    );
    assert!(
        !ok && err.contains("smtp.password_env") && err.contains("not an empty value"),
        "{err}"
    );
    let (ok, err) = check("long-session", "listen = \"127.0.0.1:2525\"\nmax_session_s = -1", &[]);
    assert!(!ok && err.contains("smtp.max_session_s"), "{err}");
    let (ok, err) = check(
        "good",
        "listen = \"0.0.0.0:2525\"\nusername = \"nvr\"\npassword_env = \"AV_TEST_SMTP_PASSWORD\"",
        &[("AV_TEST_SMTP_PASSWORD", "Mail-Pass-1")],
    );
    assert!(ok, "{err}");
}

/// `[camera.policy.night]` applies to an IR camera's grey frames and not to colour ones: a night
/// threshold no detection reaches turns a far person at night into a false alarm, while the same
/// camera's colour clip of a person stays verified.
#[test]
fn night_rules_change_a_verdict_on_grey_frames_only() {
    let devset = root().join("testdata/devset");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("night.toml");
    std::fs::write(
        &config,
        format!(
            "[detector]\nmodel = \"{}\"\nonnxruntime = \"{}\"\n[store]\npath = \"{}\"\n\
             [[camera]]\nid = \"yard\"\nurl = \"rtsp://127.0.0.1:1/x\"\n[camera.policy.night]\nthreshold = 0.99\n",
            root().join("models/yolox_nano.onnx").display(),
            root()
                .join("third_party/onnxruntime/libonnxruntime.so.1.31.1")
                .display(),
            dir.path().join("store.db").display()
        ),
    )
    .expect("write config");
    let judge = |clip: &str, camera: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_alarm-verifier"));
        cmd.current_dir(root())
            .arg("verify-clip")
            .arg(devset.join(clip))
            .args(["--alarm-at", "5", "--config"])
            .arg(&config);
        if let Some(camera) = camera {
            cmd.args(["--camera", camera]);
        }
        verdict_of(&cmd.output().expect("run verify-clip"))
    };
    let grey_by_day_rules = judge("far_night_1080p.mp4", None);
    assert_eq!(
        grey_by_day_rules.verdict,
        VerdictKind::Verified,
        "{grey_by_day_rules:?}"
    );
    assert!(grey_by_day_rules.night, "an IR clip is night: {grey_by_day_rules:?}");
    let grey = judge("far_night_1080p.mp4", Some("yard"));
    assert_eq!(grey.verdict, VerdictKind::FalseAlarm, "night threshold 0.99: {grey:?}");
    assert!(grey.night);
    let colour = judge("intruder_left.mp4", Some("yard"));
    assert_eq!(colour.verdict, VerdictKind::Verified, "{colour:?}");
    assert!(!colour.night, "{colour:?}");
}
