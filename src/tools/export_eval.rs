//! `export-eval`: the site's own history as an evaluation set. The clips of alarms that operators
//! gave feedback on are copied to a folder with a `labels.tsv` (the operator's outcome as the
//! expected verdict), so that `eval` measures accuracy on this site's cameras.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sha1::{Digest, Sha1};

use crate::store::records::{AlarmFilter, file_safe};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// What was exported.
#[derive(Debug, Default)]
pub struct Exported {
    pub clips: usize,
    /// Alarms with feedback but no clip (made before clips were kept, or purged by the disk bound).
    pub without_clip: usize,
}

/// Writes the clips of alarms with feedback received since `since` into `out`, with `labels.tsv`.
pub fn export(store: &Store, since: Option<DateTime<Utc>>, out: &Path) -> Result<Exported, ExportError> {
    let write_err = |path: &Path, e: std::io::Error| ExportError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(|e| write_err(out, e))?;
    let filter = AlarmFilter {
        since,
        feedback: Some(true),
        limit: Some(crate::store::records::MAX_LIST),
        ..Default::default()
    };
    let mut labels = String::from("# clip\texpected (operator feedback)\talarm_at_s\tnote\n");
    let mut exported = Exported::default();
    let mut names = ClipNames::default();
    for alarm in store.list_alarms(&filter)? {
        let (Some(clip), Some(detail)) = (store.clip(&alarm.alarm_id)?, store.alarm_detail(&alarm.alarm_id)?) else {
            exported.without_clip += 1;
            continue;
        };
        let Some(feedback) = detail.feedback else { continue };
        let Ok(alarm_time) = DateTime::parse_from_rfc3339(&alarm.alarm_time) else {
            continue;
        };
        let alarm_at = (alarm_time.with_timezone(&Utc) - clip.start).as_seconds_f64().max(0.0);
        let name = names.next(&alarm.alarm_id);
        let target = out.join(&name);
        std::fs::copy(&clip.path, &target).map_err(|e| write_err(&target, e))?;
        let expected = match feedback.outcome {
            crate::store::records::Outcome::Real => "verified",
            crate::store::records::Outcome::False => "false_alarm",
        };
        let note = format!(
            "{} {}: said {}, operator {} {}",
            alarm.camera,
            alarm.alarm_id,
            alarm.verdict.as_deref().unwrap_or("nothing"),
            feedback.operator,
            feedback.note
        );
        let _ = writeln!(
            labels,
            "{name}\t{expected}\t{alarm_at:.2}\t{}",
            note.replace(['\t', '\n'], " ")
        );
        exported.clips += 1;
    }
    let path = out.join("labels.tsv");
    std::fs::write(&path, labels).map_err(|e| write_err(&path, e))?;
    Ok(exported)
}

/// Unique clip file names for alarm ids: ids that `file_safe` leaves alone keep their name; one
/// that it changed gets a short hash of the original (so `a~2` and `a_2` stay apart, run after
/// run), and any name still taken (case-insensitively, for case-blind file systems) a counter.
#[derive(Default)]
struct ClipNames {
    taken: HashSet<String>,
}

impl ClipNames {
    fn next(&mut self, alarm_id: &str) -> String {
        let safe = file_safe(alarm_id);
        let stem = if safe == alarm_id {
            safe
        } else {
            format!("{safe}-{}", short_hash(alarm_id))
        };
        let mut name = format!("{stem}.mp4");
        let mut n = 2;
        while !self.taken.insert(name.to_lowercase()) {
            name = format!("{stem}~{n}.mp4");
            n += 1;
        }
        name
    }
}

/// The first 8 hex digits of the id's SHA-1.
fn short_hash(text: &str) -> String {
    Sha1::digest(text.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_names_are_unique_and_stable() {
        let mut names = ClipNames::default();
        let ids = ["a_2", "a~2", "a 2", "A_2", "con-e1", "a_2-x", "a~2"];
        let given: Vec<String> = ids.iter().map(|id| names.next(id)).collect();
        let distinct: HashSet<String> = given.iter().map(|n| n.to_lowercase()).collect();
        assert_eq!(distinct.len(), ids.len(), "{given:?}");
        assert_eq!(given[0], "a_2.mp4");
        assert_eq!(given[4], "con-e1.mp4");
        assert!(given[1].starts_with("a_2-") && given[1] != given[2], "{given:?}");
        // The same id twice (not possible in the store, but the names must still differ).
        assert_ne!(given[1], given[6]);
        // Stable from run to run, so a re-export names the same alarm the same way.
        assert_eq!(ClipNames::default().next("a~2"), given[1]);
        for name in &given {
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || "-_~.".contains(c)),
                "{name}"
            );
        }
    }
}
