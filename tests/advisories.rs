//! The supply-chain check: Cargo.lock against the RustSec advisory database copied into
//! `security/advisory-db/` (see `security/README.md`), offline, with `rustsec`, the library that
//! cargo-audit is built on. Vulnerabilities fail the build, and so do the informational advisories
//! cargo-audit warns of (unmaintained, unsound, notices).

use std::path::Path;

use rustsec::advisory::Informational;
use rustsec::report::{Report, Settings};
use rustsec::{Database, Lockfile};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn database() -> Database {
    Database::open(&root().join("security/advisory-db")).expect("the advisory database in security/advisory-db")
}

fn settings() -> Settings {
    Settings {
        informational_warnings: vec![
            Informational::Unmaintained,
            Informational::Unsound,
            Informational::Notice,
        ],
        ..Default::default()
    }
}

/// What a report found, one line per advisory, for the failure message.
fn findings(report: &Report) -> Vec<String> {
    let mut lines: Vec<String> = report
        .vulnerabilities
        .list
        .iter()
        .map(|v| {
            format!(
                "{} {} {}: {}",
                v.advisory.id, v.package.name, v.package.version, v.advisory.title
            )
        })
        .collect();
    for (kind, warnings) in &report.warnings {
        for w in warnings {
            let id = w.advisory.as_ref().map_or("-".to_owned(), |a| a.id.to_string());
            lines.push(format!("{kind:?} {id} {} {}", w.package.name, w.package.version));
        }
    }
    lines
}

#[test]
fn cargo_lock_has_no_known_vulnerable_or_unmaintained_crate() {
    let db = database();
    let lockfile = Lockfile::load(root().join("Cargo.lock")).expect("Cargo.lock");
    let report = Report::generate(&db, &lockfile, &settings());
    let found = findings(&report);
    assert!(found.is_empty(), "advisories for Cargo.lock:\n{}", found.join("\n"));
    println!(
        "advisories: {} crates checked against {} advisories, none found",
        lockfile.packages.len(),
        db.iter().count()
    );
}

/// The database is real and the check can fail: the versions this project moved away from are
/// reported.
#[test]
fn the_check_reports_the_versions_this_project_moved_away_from() {
    let old = r#"
version = 4

[[package]]
name = "rustls-webpki"
version = "0.102.8"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "rustls-pemfile"
version = "2.2.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
"#;
    let lockfile: Lockfile = old.parse().expect("a lock file");
    let report = Report::generate(&database(), &lockfile, &settings());
    let found = findings(&report).join("\n");
    for id in ["RUSTSEC-2026-0049", "RUSTSEC-2026-0098", "RUSTSEC-2025-0134"] {
        assert!(found.contains(id), "{id} not reported:\n{found}");
    }
}
