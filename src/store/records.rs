//! The alarm records as the API, the console and `export-eval` read them: listing with filters,
//! one alarm with its verdict, evidence, clip, joined events and operator feedback; and writing
//! clips and feedback.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params, params_from_iter};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::analysis::verdict::{VerdictDocument, rfc3339};

/// One line of the alarm list.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmSummary {
    pub alarm_id: String,
    pub camera: String,
    pub alarm_time: String,
    pub received: String,
    pub source: Option<String>,
    /// `verified`, `false_alarm`, `unverifiable`, or None while in verification.
    pub verdict: Option<String>,
    /// For `unverifiable`: the verdict document's `cause`.
    pub cause: Option<String>,
    pub reason: Option<String>,
    pub latency_ms: Option<u64>,
    /// When the broker acknowledged the verdict (PUBACK).
    pub delivered: Option<String>,
    pub has_evidence: bool,
    pub has_clip: bool,
    pub feedback: Option<String>,
}

/// One alarm, whole.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmDetail {
    #[serde(flatten)]
    pub summary: AlarmSummary,
    /// The message as received (JSON body, mail summary, ONVIF event), as text.
    pub payload: String,
    pub has_snapshot: bool,
    pub verdict_document: Option<serde_json::Value>,
    pub joined_events: Vec<JoinedEvent>,
    pub feedback: Option<Feedback>,
    pub clip_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JoinedEvent {
    pub received: String,
    pub source: String,
}

/// What an operator found, for `POST /api/alarms/{id}/feedback` and `{prefix}/feedback/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    pub outcome: Outcome,
    #[serde(default)]
    pub operator: String,
    #[serde(default)]
    pub note: String,
    /// Set when stored.
    #[serde(default, skip_deserializing)]
    pub time: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Real,
    False,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Real => "real",
            Self::False => "false",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum FeedbackError {
    #[error("feedback is not JSON: {0}")]
    NotJson(String),
    #[error("field `{field}`: {message}")]
    Field { field: String, message: String },
}

/// Parses feedback JSON; errors name the field.
pub fn parse_feedback(body: &[u8]) -> Result<Feedback, FeedbackError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| FeedbackError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(FeedbackError::NotJson("expected a JSON object".into()));
    }
    let mut feedback: Feedback = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if field == "." {
            first_backticked(&inner).unwrap_or(field)
        } else {
            field
        };
        FeedbackError::Field {
            field,
            message: format!(
                "{inner} (expected {{\"outcome\": \"real\"|\"false\", \"operator\": \"...\", \"note\": \"...\"}})"
            ),
        }
    })?;
    feedback.operator.truncate(200);
    feedback.note.truncate(2000);
    Ok(feedback)
}

/// serde names a missing or unknown field in backticks; that is the field to report.
fn first_backticked(text: &str) -> Option<String> {
    let start = text.find('`')? + 1;
    let end = text[start..].find('`')? + start;
    Some(text[start..end].to_owned())
}

/// Filters of `GET /api/alarms`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmFilter {
    pub camera: Option<String>,
    pub verdict: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    pub format: Option<String>,
    /// Only alarms with operator feedback.
    pub feedback: Option<bool>,
}

/// Per camera: alarms with feedback, and where the operators disagreed with the verdict.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Agreement {
    pub camera: String,
    pub with_feedback: u64,
    /// Our `verified` that operators called false.
    pub verified_but_false: u64,
    /// Our `false_alarm` that operators called real: the number that matters most.
    pub cleared_but_real: u64,
}

/// A stored clip: its file, size and the wall time of its first frame.
#[derive(Debug, Clone)]
pub struct StoredClip {
    pub path: PathBuf,
    pub bytes: u64,
    pub start: DateTime<Utc>,
}

pub const MAX_LIST: u32 = 10_000;

/// A file name made of an alarm id's safe characters (for downloads and exported clips; stored
/// clips are named by UUID).
pub fn file_safe(alarm_id: &str) -> String {
    alarm_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

const SUMMARY_COLUMNS: &str = "a.alarm_id, a.camera, a.alarm_time, a.received, a.source, v.verdict, v.document,
     v.delivered, v.evidence IS NOT NULL, a.clip_file IS NOT NULL, f.outcome";
const SUMMARY_FROM: &str = "FROM alarms a LEFT JOIN verdicts v ON v.alarm_id = a.alarm_id
     LEFT JOIN feedback f ON f.alarm_id = a.alarm_id";

fn summary_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlarmSummary> {
    let document: Option<String> = r.get(6)?;
    let doc = document.and_then(|d| serde_json::from_str::<VerdictDocument>(&d).ok());
    Ok(AlarmSummary {
        alarm_id: r.get(0)?,
        camera: r.get(1)?,
        alarm_time: r.get(2)?,
        received: r.get(3)?,
        source: r.get(4)?,
        verdict: r.get(5)?,
        cause: doc.as_ref().and_then(|d| d.cause).map(|c| c.as_str().to_owned()),
        reason: doc.as_ref().map(|d| d.reason.clone()),
        latency_ms: doc.as_ref().map(|d| d.latency_ms),
        delivered: r.get(7)?,
        has_evidence: r.get::<_, Option<bool>>(8)?.unwrap_or(false),
        has_clip: r.get(9)?,
        feedback: r.get(10)?,
    })
}

impl Store {
    /// Alarms, newest first, filtered.
    pub fn list_alarms(&self, filter: &AlarmFilter) -> Result<Vec<AlarmSummary>, StoreError> {
        let mut clauses = Vec::new();
        let mut args: Vec<String> = Vec::new();
        if let Some(camera) = &filter.camera {
            args.push(camera.clone());
            clauses.push(format!("a.camera = ?{}", args.len()));
        }
        if let Some(verdict) = &filter.verdict {
            args.push(verdict.clone());
            clauses.push(format!("v.verdict = ?{}", args.len()));
        }
        if let Some(since) = filter.since {
            args.push(rfc3339(since));
            clauses.push(format!("a.received >= ?{}", args.len()));
        }
        if let Some(until) = filter.until {
            args.push(rfc3339(until));
            clauses.push(format!("a.received <= ?{}", args.len()));
        }
        if filter.feedback == Some(true) {
            clauses.push("f.outcome IS NOT NULL".into());
        }
        let filter_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let limit = filter.limit.unwrap_or(100).min(MAX_LIST);
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} {SUMMARY_FROM} {filter_sql} ORDER BY a.received DESC, a.rowid DESC LIMIT {limit}"
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args.iter()), summary_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// One alarm with everything kept about it, or None when unknown.
    pub fn alarm_detail(&self, alarm_id: &str) -> Result<Option<AlarmDetail>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!(
                    "SELECT {SUMMARY_COLUMNS}, a.payload, a.snapshot IS NOT NULL, v.document, a.clip_bytes,
                     f.operator, f.note, f.time {SUMMARY_FROM} WHERE a.alarm_id = ?1"
                ),
                params![alarm_id],
                |r| {
                    let summary = summary_from_row(r)?;
                    let payload: Option<Vec<u8>> = r.get(11)?;
                    let document: Option<String> = r.get(13)?;
                    let feedback = match summary.feedback.as_deref() {
                        Some(outcome) => Some(Feedback {
                            outcome: if outcome == "real" {
                                Outcome::Real
                            } else {
                                Outcome::False
                            },
                            operator: r.get(15)?,
                            note: r.get(16)?,
                            time: r.get(17)?,
                        }),
                        None => None,
                    };
                    Ok(AlarmDetail {
                        payload: String::from_utf8_lossy(&payload.unwrap_or_default()).into_owned(),
                        has_snapshot: r.get(12)?,
                        verdict_document: document.and_then(|d| serde_json::from_str(&d).ok()),
                        joined_events: Vec::new(),
                        feedback,
                        clip_bytes: r.get(14)?,
                        summary,
                    })
                },
            )
            .optional()?;
        drop(conn);
        let Some(mut detail) = row else { return Ok(None) };
        detail.joined_events = self
            .joined_events(alarm_id)?
            .into_iter()
            .map(|(received, source)| JoinedEvent { received, source })
            .collect();
        Ok(Some(detail))
    }

    pub fn evidence(&self, alarm_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT evidence FROM verdicts WHERE alarm_id = ?1",
                params![alarm_id],
                |r| r.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()?
            .flatten())
    }

    /// The alarm's clip, if one was kept and its file is still there.
    pub fn clip(&self, alarm_id: &str) -> Result<Option<StoredClip>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT clip_file, clip_bytes, clip_start FROM alarms WHERE alarm_id = ?1 AND clip_file IS NOT NULL",
                params![alarm_id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)),
            )
            .optional()?;
        Ok(row.and_then(|(file, bytes, start)| {
            let path = self.clips_dir().join(file);
            let start = DateTime::parse_from_rfc3339(&start).ok()?.with_timezone(&Utc);
            path.is_file().then_some(StoredClip {
                path,
                bytes: bytes.max(0) as u64,
                start,
            })
        }))
    }

    /// Records the clip file (already in `clips_dir`) of an alarm.
    pub fn record_clip(&self, alarm_id: &str, file: &str, bytes: u64, start: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE alarms SET clip_file = ?2, clip_bytes = ?3, clip_start = ?4 WHERE alarm_id = ?1",
            params![alarm_id, file, bytes as i64, rfc3339(start)],
        )?;
        Ok(())
    }

    /// Deletes the oldest clips until all of them together take at most `max_bytes`; returns how
    /// many were deleted.
    pub fn bound_clips(&self, max_bytes: u64) -> Result<usize, StoreError> {
        let conn = self.conn();
        let total: i64 = conn.query_row(
            "SELECT COALESCE(SUM(clip_bytes), 0) FROM alarms WHERE clip_file IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        let mut excess = total - max_bytes as i64;
        if excess <= 0 {
            return Ok(0);
        }
        let oldest: Vec<(String, String, i64)> = conn
            .prepare(
                "SELECT alarm_id, clip_file, clip_bytes FROM alarms WHERE clip_file IS NOT NULL ORDER BY received",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let mut deleted = 0;
        for (alarm_id, file, bytes) in oldest {
            if excess <= 0 {
                break;
            }
            let _ = std::fs::remove_file(self.clips_dir().join(&file));
            conn.execute(
                "UPDATE alarms SET clip_file = NULL, clip_bytes = NULL WHERE alarm_id = ?1",
                params![alarm_id],
            )?;
            excess -= bytes;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Stores (or replaces) an operator's feedback; false when the alarm is unknown.
    pub fn record_feedback(&self, alarm_id: &str, feedback: &Feedback) -> Result<bool, StoreError> {
        let conn = self.conn();
        let known: bool = conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM alarms WHERE alarm_id = ?1)",
            params![alarm_id],
            |r| r.get(0),
        )?;
        if !known {
            return Ok(false);
        }
        conn.execute(
            "INSERT OR REPLACE INTO feedback (alarm_id, outcome, operator, note, time) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                alarm_id,
                feedback.outcome.as_str(),
                feedback.operator,
                feedback.note,
                rfc3339(Utc::now())
            ],
        )?;
        Ok(true)
    }

    /// Per camera, how the verdicts compare with the operators' feedback.
    pub fn agreement(&self) -> Result<Vec<Agreement>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT a.camera, COUNT(*),
                    SUM(v.verdict = 'verified' AND f.outcome = 'false'),
                    SUM(v.verdict = 'false_alarm' AND f.outcome = 'real')
             FROM feedback f JOIN alarms a ON a.alarm_id = f.alarm_id
             LEFT JOIN verdicts v ON v.alarm_id = f.alarm_id GROUP BY a.camera ORDER BY a.camera",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Agreement {
                camera: r.get(0)?,
                with_feedback: r.get::<_, i64>(1)?.max(0) as u64,
                verified_but_false: r.get::<_, Option<i64>>(2)?.unwrap_or(0).max(0) as u64,
                cleared_but_real: r.get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The age of the oldest verdict not yet acknowledged by the broker.
    pub fn oldest_undelivered(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let created: Option<String> = self.conn().query_row(
            "SELECT MIN(created) FROM verdicts WHERE delivered IS NULL AND parked IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(created
            .and_then(|c| DateTime::parse_from_rfc3339(&c).ok())
            .map(|c| c.with_timezone(&Utc)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_errors_name_the_field() {
        let ok = parse_feedback(br#"{"outcome":"real","operator":"ann","note":"intruder at gate"}"#).expect("valid");
        assert_eq!(ok.outcome, Outcome::Real);
        let cases: [(&[u8], &str); 4] = [
            (br#"{"outcome":"maybe"}"#, "outcome"),
            (br#"{"operator":"ann"}"#, "outcome"),
            (br#"{"outcome":"real","colour":"red"}"#, "colour"),
            (br#"{"outcome":"real","note":7}"#, "note"),
        ];
        for (body, field) in cases {
            match parse_feedback(body) {
                Err(FeedbackError::Field { field: f, .. }) => assert_eq!(f, field, "{}", String::from_utf8_lossy(body)),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
        assert!(matches!(parse_feedback(b"[1]"), Err(FeedbackError::NotJson(_))));
        assert!(matches!(parse_feedback(b"{"), Err(FeedbackError::NotJson(_))));
    }
}
