//! The durable record: every alarm and every verdict, in one SQLite file (WAL).
//!
//! Alarms are recorded before they are acknowledged to the broker, verdicts before they are
//! published; a verdict is marked delivered only when the broker has acknowledged it (PUBACK).
//! So a crash, a restart or a broker outage loses nothing: what is not marked is sent again.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::analysis::verdict::{VerdictDocument, rfc3339};
use crate::intake::alarm::Alarm;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: cannot open the store (key store.path): {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: stored verdict for {alarm_id} is not a v1 document: {reason}")]
    Corrupt { alarm_id: String, reason: String },
}

/// A verdict waiting for the broker's acknowledgement.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub alarm_id: String,
    pub doc: VerdictDocument,
    pub evidence: Option<Vec<u8>>,
    /// When the alarm was received, for `latency_ms` at the time of publishing.
    pub received: DateTime<Utc>,
    pub attempts: u32,
}

/// An alarm recorded but never answered: the service stopped while verifying it.
#[derive(Debug, Clone)]
pub struct Unanswered {
    pub alarm_id: String,
    pub camera: String,
    pub time: DateTime<Utc>,
    pub received: DateTime<Utc>,
}

pub struct Store {
    conn: Mutex<Connection>,
    /// Where alarm clips are kept: `clips/` beside the database file.
    clips_dir: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alarms (
    alarm_id   TEXT PRIMARY KEY,
    camera     TEXT NOT NULL,
    alarm_time TEXT NOT NULL,
    received   TEXT NOT NULL,
    source     TEXT,
    payload    BLOB
);
CREATE TABLE IF NOT EXISTS verdicts (
    alarm_id   TEXT PRIMARY KEY,
    camera     TEXT NOT NULL,
    verdict    TEXT NOT NULL,
    document   TEXT NOT NULL,
    evidence   BLOB,
    created    TEXT NOT NULL,
    delivered  TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS joined_events (
    alarm_id   TEXT NOT NULL,
    received   TEXT NOT NULL,
    source     TEXT NOT NULL,
    payload    BLOB
);
CREATE INDEX IF NOT EXISTS joined_events_alarm ON joined_events (alarm_id);
CREATE TABLE IF NOT EXISTS feedback (
    alarm_id   TEXT PRIMARY KEY,
    outcome    TEXT NOT NULL,
    operator   TEXT NOT NULL,
    note       TEXT NOT NULL,
    time       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_undelivered ON verdicts (created) WHERE delivered IS NULL;
CREATE INDEX IF NOT EXISTS alarms_received ON alarms (received);
";

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                open_err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!("cannot create {}: {e}", dir.display())),
                ))
            })?;
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        // synchronous=FULL: each commit is on disk before it returns. With NORMAL, a WAL commit can
        // roll back after a power loss, and an alarm the broker has already forgotten (it was
        // acknowledged after the commit) would vanish with it. It costs 0.3 ms per alarm here.
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        for (column, kind) in [
            ("snapshot", "BLOB"),
            ("clip_file", "TEXT"),
            ("clip_bytes", "INTEGER"),
            ("clip_start", "TEXT"),
        ] {
            add_column_if_missing(&conn, "alarms", column, kind).map_err(open_err)?;
        }
        let clips_dir = path.parent().unwrap_or(Path::new(".")).join("clips");
        Ok(Self {
            conn: Mutex::new(conn),
            clips_dir,
        })
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an alarm with the message as received and the device's own picture, if any; false
    /// when its `alarm_id` is already known (a duplicate).
    pub fn record_alarm(&self, alarm: &Alarm, payload: &[u8], snapshot: Option<&[u8]>) -> Result<bool, StoreError> {
        let inserted = self.conn().execute(
            "INSERT OR IGNORE INTO alarms (alarm_id, camera, alarm_time, received, source, payload, snapshot)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                alarm.alarm_id,
                alarm.camera,
                rfc3339(alarm.time),
                rfc3339(alarm.received),
                alarm.source,
                payload,
                snapshot
            ],
        )?;
        Ok(inserted == 1)
    }

    /// Records a device event that joined alarm `into` instead of raising an alarm of its own.
    pub fn record_joined_event(&self, into: &str, event: &Alarm, payload: &[u8]) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO joined_events (alarm_id, received, source, payload) VALUES (?1, ?2, ?3, ?4)",
            params![into, rfc3339(event.received), event.source, payload],
        )?;
        Ok(())
    }

    /// The events that joined an alarm, oldest first: when each was received, and its source.
    pub fn joined_events(&self, alarm_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT received, source FROM joined_events WHERE alarm_id = ?1 ORDER BY rowid")?;
        let rows = stmt.query_map(params![alarm_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The device's own picture kept with an alarm (an NVR mail's JPEG).
    pub fn alarm_snapshot(&self, alarm_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT snapshot FROM alarms WHERE alarm_id = ?1",
                params![alarm_id],
                |r| r.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Stores a verdict for delivery. A second verdict for the same alarm is ignored.
    pub fn record_verdict(&self, doc: &VerdictDocument, evidence: Option<&[u8]>) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO verdicts (alarm_id, camera, verdict, document, evidence, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                doc.alarm_id,
                doc.camera,
                doc.verdict.as_str(),
                doc.to_json(),
                evidence,
                rfc3339(Utc::now())
            ],
        )?;
        Ok(())
    }

    /// The oldest verdict not yet acknowledged by the broker.
    pub fn next_undelivered(&self) -> Result<Option<OutboxItem>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT v.alarm_id, v.document, v.evidence, a.received, v.attempts
                 FROM verdicts v LEFT JOIN alarms a ON a.alarm_id = v.alarm_id
                 WHERE v.delivered IS NULL ORDER BY v.created, v.rowid LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<Vec<u8>>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, u32>(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((alarm_id, document, evidence, received, attempts)) = row else {
            return Ok(None);
        };
        let doc: VerdictDocument = serde_json::from_str(&document).map_err(|e| StoreError::Corrupt {
            alarm_id: alarm_id.clone(),
            reason: e.to_string(),
        })?;
        let received = received
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
        Ok(Some(OutboxItem {
            alarm_id,
            doc,
            evidence,
            received,
            attempts,
        }))
    }

    pub fn count_attempt(&self, alarm_id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE verdicts SET attempts = attempts + 1 WHERE alarm_id = ?1",
            params![alarm_id],
        )?;
        Ok(())
    }

    pub fn mark_delivered(&self, alarm_id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE verdicts SET delivered = ?2 WHERE alarm_id = ?1 AND delivered IS NULL",
            params![alarm_id, rfc3339(Utc::now())],
        )?;
        Ok(())
    }

    pub fn undelivered_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT COUNT(*) FROM verdicts WHERE delivered IS NULL", [], |r| {
                r.get(0)
            })?)
    }

    /// Alarms that were recorded but have no verdict: the service stopped while verifying them.
    pub fn unanswered(&self) -> Result<Vec<Unanswered>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT a.alarm_id, a.camera, a.alarm_time, a.received FROM alarms a
             LEFT JOIN verdicts v ON v.alarm_id = a.alarm_id WHERE v.alarm_id IS NULL ORDER BY a.received",
        )?;
        let parse = |t: String| DateTime::parse_from_rfc3339(&t).map_or_else(|_| Utc::now(), |t| t.with_timezone(&Utc));
        let rows = stmt.query_map([], |r| {
            Ok(Unanswered {
                alarm_id: r.get(0)?,
                camera: r.get(1)?,
                time: parse(r.get(2)?),
                received: parse(r.get(3)?),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Whether an alarm with this id is recorded (whatever its record key after a reuse).
    pub fn knows_alarm(&self, alarm_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM alarms WHERE alarm_id = ?1",
                params![alarm_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Of these alarms, those whose verdict the broker has acknowledged.
    pub fn delivered_of(&self, alarm_ids: &[String]) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT 1 FROM verdicts WHERE alarm_id = ?1 AND delivered IS NOT NULL")?;
        let mut delivered = Vec::new();
        for id in alarm_ids {
            if stmt.exists(params![id])? {
                delivered.push(id.clone());
            }
        }
        Ok(delivered)
    }

    pub fn clips_dir(&self) -> &Path {
        &self.clips_dir
    }

    /// Deletes delivered verdicts and their alarms received before `now - retention`, with their
    /// clips and feedback. Undelivered verdicts are kept whatever their age.
    pub fn purge(&self, retention: TimeDelta) -> Result<usize, StoreError> {
        let cutoff = rfc3339(Utc::now() - retention);
        let conn = self.conn();
        let clips: Vec<String> = conn
            .prepare(
                "SELECT a.clip_file FROM alarms a JOIN verdicts v ON v.alarm_id = a.alarm_id
                 WHERE v.delivered IS NOT NULL AND v.created < ?1 AND a.clip_file IS NOT NULL",
            )?
            .query_map(params![cutoff], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for file in clips {
            let _ = std::fs::remove_file(self.clips_dir.join(file));
        }
        let verdicts = conn.execute(
            "DELETE FROM verdicts WHERE delivered IS NOT NULL AND created < ?1",
            params![cutoff],
        )?;
        conn.execute(
            "DELETE FROM alarms WHERE received < ?1 AND alarm_id NOT IN (SELECT alarm_id FROM verdicts)",
            params![cutoff],
        )?;
        conn.execute(
            "DELETE FROM joined_events WHERE alarm_id NOT IN (SELECT alarm_id FROM alarms)",
            [],
        )?;
        conn.execute(
            "DELETE FROM feedback WHERE alarm_id NOT IN (SELECT alarm_id FROM alarms)",
            [],
        )?;
        Ok(verdicts)
    }
}

/// Stores made by an earlier version lack newer columns; they are added in place.
fn add_column_if_missing(conn: &Connection, table: &str, column: &str, kind: &str) -> Result<(), rusqlite::Error> {
    let mut stmt = conn.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?;
    if !stmt.exists(params![column])? {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(id: &str) -> Alarm {
        Alarm::new(id.into(), "gate", Utc::now(), "mqtt".into())
    }

    fn doc(id: &str) -> VerdictDocument {
        VerdictDocument::unverifiable(&alarm(id), "site", "model", "test")
    }

    #[test]
    fn device_pictures_and_joined_events_are_kept_and_old_stores_gain_the_column() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.db");
        {
            // A store as an earlier version made it: no snapshot column.
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE alarms (alarm_id TEXT PRIMARY KEY, camera TEXT NOT NULL, alarm_time TEXT NOT NULL,
                 received TEXT NOT NULL, source TEXT, payload BLOB);",
            )
            .expect("old schema");
        }
        let store = Store::open(&path).expect("reopen");
        assert!(store.record_alarm(&alarm("m1"), b"{}", Some(b"jpeg")).expect("insert"));
        assert_eq!(
            store.alarm_snapshot("m1").expect("read").as_deref(),
            Some(b"jpeg".as_slice())
        );
        let mut later = alarm("m2");
        later.source = "onvif:tns1:VideoSource/MotionAlarm".into();
        store.record_joined_event("m1", &later, b"<event/>").expect("join");
        let events = store.joined_events("m1").expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].1, "onvif:tns1:VideoSource/MotionAlarm");
        drop(store);
        assert!(Store::open(&path).is_ok(), "opening twice adds the column once");
    }

    #[test]
    fn commits_are_durable_across_a_power_loss() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let conn = store.conn();
        let mode: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).expect("pragma");
        let journal: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("pragma");
        // 2 = FULL: the commit that precedes an alarm's acknowledgement is on disk.
        assert_eq!((mode, journal.as_str()), (2, "wal"));
    }

    #[test]
    fn alarms_are_deduplicated_by_id() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        assert!(store.record_alarm(&alarm("a1"), b"{}", None).expect("insert"));
        assert!(!store.record_alarm(&alarm("a1"), b"{}", None).expect("insert"));
    }

    #[test]
    fn outbox_survives_reopening_and_delivers_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("nested/s.db");
        {
            let store = Store::open(&path).expect("open");
            for id in ["a1", "a2"] {
                store.record_alarm(&alarm(id), b"{}", None).expect("alarm");
                store.record_verdict(&doc(id), Some(b"jpeg")).expect("verdict");
            }
            store.record_alarm(&alarm("a3"), b"{}", None).expect("alarm");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.undelivered_count().expect("count"), 2);
        let first = store.next_undelivered().expect("query").expect("item");
        assert_eq!(first.alarm_id, "a1");
        assert_eq!(first.evidence.as_deref(), Some(b"jpeg".as_slice()));
        store.mark_delivered("a1").expect("mark");
        assert_eq!(
            store.next_undelivered().expect("query").map(|i| i.alarm_id).as_deref(),
            Some("a2")
        );
        let unanswered: Vec<String> = store
            .unanswered()
            .expect("query")
            .into_iter()
            .map(|u| u.alarm_id)
            .collect();
        assert_eq!(unanswered, vec!["a3".to_owned()]);
    }

    #[test]
    fn purge_keeps_undelivered_verdicts() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        for id in ["old-delivered", "old-pending"] {
            store.record_alarm(&alarm(id), b"{}", None).expect("alarm");
            store.record_verdict(&doc(id), None).expect("verdict");
        }
        store.mark_delivered("old-delivered").expect("mark");
        // Everything is older than a negative retention.
        assert_eq!(store.purge(TimeDelta::seconds(-60)).expect("purge"), 1);
        assert_eq!(store.undelivered_count().expect("count"), 1);
        assert_eq!(
            store.next_undelivered().expect("q").map(|i| i.alarm_id).as_deref(),
            Some("old-pending")
        );
    }

    #[test]
    fn purged_records_take_their_clips_and_feedback_with_them_and_clips_are_bounded() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        std::fs::create_dir_all(store.clips_dir()).expect("clips dir");
        for (id, bytes) in [("a1", 300), ("a2", 300), ("a3", 300)] {
            store.record_alarm(&alarm(id), b"{}", None).expect("alarm");
            store.record_verdict(&doc(id), Some(b"jpeg")).expect("verdict");
            std::fs::write(store.clips_dir().join(format!("{id}.mp4")), vec![0u8; bytes]).expect("clip");
            store
                .record_clip(id, &format!("{id}.mp4"), bytes as u64, Utc::now())
                .expect("record clip");
        }
        // Over a 700-byte bound the oldest clip goes, and its record stays.
        assert_eq!(store.bound_clips(700).expect("bound"), 1);
        assert!(store.clip("a1").expect("clip").is_none());
        assert!(!store.clips_dir().join("a1.mp4").exists());
        assert!(store.alarm_detail("a1").expect("detail").is_some());
        let feedback = crate::delivery::records::parse_feedback(br#"{"outcome":"real"}"#).expect("feedback");
        assert!(store.record_feedback("a2", &feedback).expect("feedback"));
        assert!(!store.record_feedback("nope", &feedback).expect("unknown"));
        for id in ["a1", "a2", "a3"] {
            store.mark_delivered(id).expect("mark");
        }
        assert_eq!(store.purge(TimeDelta::seconds(-60)).expect("purge"), 3);
        assert!(store.alarm_detail("a2").expect("detail").is_none());
        assert!(!store.clips_dir().join("a2.mp4").exists() && !store.clips_dir().join("a3.mp4").exists());
        assert!(
            store.agreement().expect("agreement").is_empty(),
            "feedback purged with its alarm"
        );
    }
}
