//! The install: builds the real Debian package with `scripts/package.sh`, unpacks it into a
//! scratch root, checks where its files are, runs the unpacked binary's `check-config` and
//! `verify-clip` from another folder (so only the installed layout can be found), and checks the
//! systemd unit with `systemd-analyze verify`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alarm_verifier::analysis::verdict::{VerdictDocument, VerdictKind};
use alarm_verifier::config::Config;
use common::root;

const UNIT: &str = "lib/systemd/system/alarm-verifier.service";
const LIB: &str = "usr/lib/alarm-verifier";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// scripts/package.sh with the binary this test run built; returns the .deb.
fn build_package(out_dir: &Path) -> PathBuf {
    let out = run(Command::new("bash")
        .arg(root().join("scripts/package.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_alarm-verifier"))
        .arg("--out")
        .arg(out_dir));
    let deb = PathBuf::from(stdout(&out).trim());
    let arch = stdout(&run(Command::new("dpkg").arg("--print-architecture")));
    let name = format!("alarm-verifier_{}_{}.deb", env!("CARGO_PKG_VERSION"), arch.trim());
    assert_eq!(deb, out_dir.join(name));
    assert!(deb.is_file(), "{} was not written", deb.display());
    deb
}

fn field(deb: &Path, name: &str) -> String {
    stdout(&run(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name)))
        .trim()
        .to_owned()
}

/// The package's metadata: name, version, conffile, maintainer scripts, and dependencies that
/// exist (every one is installed on a machine scripts/setup.sh prepared).
fn check_control(deb: &Path, scratch: &Path) {
    assert_eq!(field(deb, "Package"), "alarm-verifier");
    assert_eq!(field(deb, "Version"), env!("CARGO_PKG_VERSION"));
    let control = scratch.join("DEBIAN");
    run(Command::new("dpkg-deb").arg("--control").arg(deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/alarm-verifier/site.toml");
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    let depends = field(deb, "Depends");
    for dep in depends.split(',') {
        let name = dep.split_whitespace().next().expect("a package name");
        let status = stdout(&run(Command::new("dpkg-query")
            .args(["--show", "--showformat=${Status}"])
            .arg(name)));
        assert_eq!(status, "install ok installed", "Depends: {name}");
    }
    assert!(depends.contains("gstreamer1.0-libav") && depends.contains("gstreamer1.0-plugins-good"));
}

/// The files of the layout the README documents, the library and model byte for byte the ones
/// setup.sh installed.
fn check_layout(root_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let binary = root_dir.join("usr/bin/alarm-verifier");
    let mode = std::fs::metadata(&binary)
        .expect("usr/bin/alarm-verifier")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the binary is not executable: {mode:o}");
    let same = |installed: &str, original: &str| {
        let a = std::fs::read(root_dir.join(installed)).unwrap_or_else(|e| panic!("{installed}: {e}"));
        let b = std::fs::read(root().join(original)).unwrap_or_else(|e| panic!("{original}: {e}"));
        assert!(a == b, "{installed} differs from {original}");
    };
    same(
        &format!("{LIB}/libonnxruntime.so.1.31.1"),
        "third_party/onnxruntime/libonnxruntime.so.1.31.1",
    );
    same(&format!("{LIB}/models/yolox_nano.onnx"), "models/yolox_nano.onnx");
    same("etc/alarm-verifier/site.toml", "config/example.toml");
    same(UNIT, "packaging/alarm-verifier.service");
    for doc in ["README.md", "copyright"] {
        assert!(
            root_dir.join("usr/share/doc/alarm-verifier").join(doc).is_file(),
            "{doc}"
        );
    }
    assert!(root_dir.join("var/lib/alarm-verifier").is_dir());
}

/// check-config and verify-clip of the unpacked binary, run from an unrelated folder.
fn check_commands(root_dir: &Path, elsewhere: &Path) {
    let binary = root_dir.join("usr/bin/alarm-verifier");
    let config = root_dir.join("etc/alarm-verifier/site.toml");
    let store_dir = root_dir.join("var/lib/alarm-verifier");
    let out = run(Command::new(&binary)
        .current_dir(elsewhere)
        .arg("check-config")
        .arg(&config));
    let report = stdout(&out);
    for expected in [
        root_dir.join(LIB).join("models/yolox_nano.onnx"),
        root_dir.join(LIB).join("libonnxruntime.so.1.31.1"),
        store_dir.join("alarm-verifier.db"),
    ] {
        assert!(
            report.contains(&expected.display().to_string()),
            "{expected:?} not in: {report}"
        );
    }
    let evidence = elsewhere.join("evidence.jpg");
    let verify = |config: Option<&Path>| {
        let mut cmd = Command::new(&binary);
        cmd.current_dir(elsewhere)
            .arg("verify-clip")
            .arg(root().join("testdata/vtest.mp4"))
            .args(["--alarm-at", "10", "--evidence"])
            .arg(&evidence);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let doc: VerdictDocument = serde_json::from_slice(&run(&mut cmd).stdout).expect("a verdict document");
        assert_eq!(doc.verdict, VerdictKind::Verified, "{doc:?}");
        assert!(evidence.is_file());
    };
    verify(None);
    verify(Some(&config));
    // Neither command creates the store; the service does, as its user.
    let left: Vec<_> = std::fs::read_dir(&store_dir).expect("store folder").collect();
    assert!(left.is_empty(), "the store folder is not empty: {left:?}");
    // The library really is the scratch root's: without it, the error names it and the key.
    let ort = root_dir.join(LIB).join("libonnxruntime.so.1.31.1");
    std::fs::remove_file(&ort).expect("remove the library");
    let out = Command::new(&binary)
        .current_dir(elsewhere)
        .arg("verify-clip")
        .arg(root().join("testdata/vtest.mp4"))
        .args(["--alarm-at", "10"])
        .output()
        .expect("run verify-clip");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&ort.display().to_string()) && err.contains("detector.onnxruntime"),
        "{err}"
    );
    let out = Command::new(&binary)
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("detector.onnxruntime"), "{err}");
}

/// The unit's promises (README), and `systemd-analyze verify` on it with ExecStart pointing at the
/// unpacked binary (the host has no /usr/bin/alarm-verifier). verify only warns about unknown keys
/// or bad values, so any output fails the test.
fn check_unit(root_dir: &Path, scratch: &Path) {
    let unit = std::fs::read_to_string(root_dir.join(UNIT)).expect("unit");
    for line in [
        "ExecStart=/usr/bin/alarm-verifier run --config /etc/alarm-verifier/site.toml",
        "Restart=always",
        "User=alarm-verifier",
        "StateDirectory=alarm-verifier",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/alarm-verifier",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "Wants=network-online.target",
        "After=network-online.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
    let stop_timeout: f64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(stop_timeout > Config::offline_default().shutdown_timeout_s);

    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("note: systemd-analyze not found; the unit's syntax is not verified");
        return;
    };
    let binary = root_dir.join("usr/bin/alarm-verifier");
    let dir = scratch.join("unit");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let copy = dir.join("alarm-verifier.service");
    let text = unit.replace("/usr/bin/alarm-verifier", &binary.display().to_string());
    std::fs::write(&copy, text).expect("write the unit");
    let out = run(Command::new(analyze).arg("verify").arg(&copy));
    let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn the_package_unpacks_into_a_layout_that_runs_from_any_folder() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let deb = build_package(&scratch.path().join("out"));
    check_control(&deb, scratch.path());
    let root_dir = scratch.path().join("root");
    run(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&root_dir));
    check_layout(&root_dir);
    check_unit(&root_dir, scratch.path());
    let elsewhere = tempfile::tempdir().expect("temp dir");
    check_commands(&root_dir, elsewhere.path());
}
