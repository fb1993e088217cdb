//! `export-eval`: the site's own history as an evaluation set. The clips of alarms that operators
//! gave feedback on are copied to a folder with a `labels.tsv` (the operator's outcome as the
//! expected verdict), so that `eval` measures accuracy on this site's cameras.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

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
        let name = format!("{}.mp4", file_safe(&alarm.alarm_id));
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
