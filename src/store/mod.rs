//! The durable record: every alarm, every verdict and every report on `errors`, in one SQLite
//! file (WAL).
//!
//! Alarms are recorded before they are acknowledged to the broker, verdicts and error reports
//! before they are published; each is marked delivered only when the broker has acknowledged it
//! (PUBACK). So a crash, a restart or a broker outage loses nothing: what is not marked is sent again.
//!
//! An alarm's record is keyed by its `record_id`: the sender's `alarm_id`, or `{alarm_id}~{n}` when
//! the id was used before for another alarm (devices restart their counters). The same id, camera
//! and time (within [`DUPLICATE_WINDOW`]) is the same alarm sent again: a duplicate.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::analysis::verdict::{VerdictDocument, rfc3339};
use crate::intake::alarm::Alarm;
use crate::support::lock;

pub mod arc;
pub mod mail;
pub mod parked;
pub mod records;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: cannot open the store (key store.path): {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: stored verdict for {alarm_id} is not a v1 document: {reason}")]
    Corrupt { alarm_id: String, reason: String },
}

/// Alarm times of one id and camera this close are one alarm sent twice (a broker's redelivery, a
/// device's retry); further apart, the id was used again for a new alarm. An alarm without a
/// `time` is stamped on arrival, so a resend without one must come within this to count as the same.
pub const DUPLICATE_WINDOW: TimeDelta = TimeDelta::seconds(60);

/// At most this many error reports are kept; past it the oldest go, delivered or not, so that a
/// sender repeating bad input through a long broker outage cannot fill the disk.
pub const MAX_ERROR_REPORTS: i64 = 10_000;

/// What became of an alarm handed to [`Store::record_alarm`].
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// A new alarm, recorded under `record_id`. `reuses` is the latest earlier alarm with the
    /// same `alarm_id`, when the sender used the id before.
    New {
        record_id: String,
        reuses: Option<EarlierAlarm>,
    },
    /// The same alarm as one already recorded: same id, camera and time within [`DUPLICATE_WINDOW`].
    Duplicate(EarlierAlarm),
}

/// An alarm already recorded under the same `alarm_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlierAlarm {
    pub record_id: String,
    pub camera: String,
    pub time: DateTime<Utc>,
}

/// A message waiting for the broker's acknowledgement, oldest first across both kinds.
#[derive(Debug, Clone)]
pub enum OutboxItem {
    Verdict(Box<PendingVerdict>),
    Error(PendingError),
}

/// A verdict waiting for the broker's acknowledgement.
#[derive(Debug, Clone)]
pub struct PendingVerdict {
    pub record_id: String,
    pub doc: VerdictDocument,
    pub evidence: Option<Vec<u8>>,
    /// When the alarm was received, for `latency_ms` at the time of publishing.
    pub received: DateTime<Utc>,
    pub attempts: u32,
}

/// A report for `{prefix}/errors` waiting for the broker's acknowledgement: the JSON as published.
#[derive(Debug, Clone)]
pub struct PendingError {
    pub id: i64,
    pub document: String,
    pub attempts: u32,
}

/// An alarm recorded but never answered: the service stopped while verifying it.
#[derive(Debug, Clone)]
pub struct Unanswered {
    /// The id as the sender sent it.
    pub alarm_id: String,
    pub record_id: String,
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
CREATE TABLE IF NOT EXISTS error_reports (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    document   TEXT NOT NULL,
    created    TEXT NOT NULL,
    delivered  TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS verdicts_undelivered ON verdicts (created) WHERE delivered IS NULL;
CREATE INDEX IF NOT EXISTS error_reports_undelivered ON error_reports (id) WHERE delivered IS NULL;
CREATE INDEX IF NOT EXISTS alarms_received ON alarms (received);
";

/// `alarms.alarm_id` is the record key; `sent_alarm_id` the id as sent. Stores made before ids could
/// be reused have only the key, which was the id as sent.
const SENT_ID_MIGRATION: &str = "
CREATE INDEX IF NOT EXISTS alarms_sent_id ON alarms (sent_alarm_id);
UPDATE alarms SET sent_alarm_id = alarm_id WHERE sent_alarm_id IS NULL;
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
            ("sent_alarm_id", "TEXT"),
        ] {
            add_column_if_missing(&conn, "alarms", column, kind).map_err(open_err)?;
        }
        conn.execute_batch(SENT_ID_MIGRATION).map_err(open_err)?;
        for table in ["verdicts", "error_reports"] {
            add_column_if_missing(&conn, table, "parked", "TEXT").map_err(open_err)?;
            add_column_if_missing(&conn, table, "parked_time", "TEXT").map_err(open_err)?;
        }
        let clips_dir = path.parent().unwrap_or(Path::new(".")).join("clips");
        Ok(Self {
            conn: Mutex::new(conn),
            clips_dir,
        })
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        lock(&self.conn)
    }

    /// Records an alarm with the message as received and the device's own picture, if any, under a
    /// record key of its own; or finds it is a duplicate of one already recorded, and records nothing.
    pub fn record_alarm(&self, alarm: &Alarm, payload: &[u8], snapshot: Option<&[u8]>) -> Result<Recorded, StoreError> {
        let mut conn = self.conn();
        // One transaction: the look-up and the insert see the same table.
        let tx = conn.transaction()?;
        let earlier = earlier_alarms(&tx, &alarm.alarm_id)?;
        if let Some(same) = earlier.iter().find(|e| is_same_alarm(e, alarm)) {
            return Ok(Recorded::Duplicate(same.clone()));
        }
        let record_id = free_record_id(&tx, &alarm.alarm_id, earlier.len())?;
        tx.execute(
            "INSERT INTO alarms (alarm_id, sent_alarm_id, camera, alarm_time, received, source, payload, snapshot)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                record_id,
                alarm.alarm_id,
                alarm.camera,
                rfc3339(alarm.time),
                rfc3339(alarm.received),
                alarm.source,
                payload,
                snapshot
            ],
        )?;
        tx.commit()?;
        Ok(Recorded::New {
            record_id,
            reuses: earlier.into_iter().next(),
        })
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

    /// Stores a verdict for delivery, under its `record_id`. A second verdict for the same record is
    /// ignored.
    pub fn record_verdict(&self, doc: &VerdictDocument, evidence: Option<&[u8]>) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO verdicts (alarm_id, camera, verdict, document, evidence, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                doc.record_id,
                doc.camera,
                doc.verdict.as_str(),
                doc.to_json(),
                evidence,
                rfc3339(Utc::now())
            ],
        )?;
        Ok(())
    }

    /// Stores a report for `{prefix}/errors` (its JSON) for delivery; past [`MAX_ERROR_REPORTS`]
    /// the oldest reports are dropped. Returns how many undelivered ones were dropped.
    pub fn record_error(&self, document: &str) -> Result<usize, StoreError> {
        self.record_error_within(document, MAX_ERROR_REPORTS)
    }

    fn record_error_within(&self, document: &str, max: i64) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        // One transaction, so one commit (synchronous=FULL) for the report and the bound.
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO error_reports (document, created) VALUES (?1, ?2)",
            params![document, rfc3339(Utc::now())],
        )?;
        let newest = tx.last_insert_rowid();
        let dropped = tx.execute(
            "DELETE FROM error_reports WHERE id <= ?1 AND delivered IS NULL",
            params![newest - max],
        )?;
        tx.execute("DELETE FROM error_reports WHERE id <= ?1", params![newest - max])?;
        tx.commit()?;
        Ok(dropped)
    }

    /// The oldest message not yet acknowledged by the broker: a verdict or an error report, in the
    /// order they were stored.
    pub fn next_undelivered(&self) -> Result<Option<OutboxItem>, StoreError> {
        let verdict = self.oldest_pending_verdict()?;
        let error = self.oldest_pending_error()?;
        Ok(match (verdict, error) {
            (Some((v_created, _)), Some((e_created, e))) if e_created < v_created => Some(OutboxItem::Error(e)),
            (Some((_, v)), _) => Some(OutboxItem::Verdict(Box::new(v))),
            (None, Some((_, e))) => Some(OutboxItem::Error(e)),
            (None, None) => None,
        })
    }

    /// The oldest undelivered verdict, with when it was stored.
    fn oldest_pending_verdict(&self) -> Result<Option<(String, PendingVerdict)>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT v.alarm_id, v.document, v.evidence, a.received, v.attempts, v.created
                 FROM verdicts v LEFT JOIN alarms a ON a.alarm_id = v.alarm_id
                 WHERE v.delivered IS NULL AND v.parked IS NULL ORDER BY v.created, v.rowid LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<Vec<u8>>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, u32>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((record_id, document, evidence, received, attempts, created)) = row else {
            return Ok(None);
        };
        let mut doc: VerdictDocument = serde_json::from_str(&document).map_err(|e| StoreError::Corrupt {
            alarm_id: record_id.clone(),
            reason: e.to_string(),
        })?;
        // Stored before documents carried it: the key was the id as sent.
        if doc.record_id.is_empty() {
            doc.record_id = record_id.clone();
        }
        let received = received
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
        let verdict = PendingVerdict {
            record_id,
            doc,
            evidence,
            received,
            attempts,
        };
        Ok(Some((created, verdict)))
    }

    /// The oldest undelivered error report, with when it was stored.
    fn oldest_pending_error(&self) -> Result<Option<(String, PendingError)>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, document, attempts, created FROM error_reports
                 WHERE delivered IS NULL AND parked IS NULL ORDER BY id LIMIT 1",
                [],
                |r| {
                    let error = PendingError {
                        id: r.get(0)?,
                        document: r.get(1)?,
                        attempts: r.get(2)?,
                    };
                    Ok((r.get(3)?, error))
                },
            )
            .optional()?)
    }

    pub fn count_attempt(&self, item: &OutboxItem) -> Result<(), StoreError> {
        let (sql, key) = match item {
            OutboxItem::Verdict(v) => (
                "UPDATE verdicts SET attempts = attempts + 1 WHERE alarm_id = ?1",
                rusqlite::types::Value::Text(v.record_id.clone()),
            ),
            OutboxItem::Error(e) => (
                "UPDATE error_reports SET attempts = attempts + 1 WHERE id = ?1",
                rusqlite::types::Value::Integer(e.id),
            ),
        };
        self.conn().execute(sql, params![key])?;
        Ok(())
    }

    /// Marks a message delivered: the broker has acknowledged it.
    pub fn mark_sent(&self, item: &OutboxItem) -> Result<(), StoreError> {
        match item {
            OutboxItem::Verdict(v) => self.mark_delivered(&v.record_id),
            OutboxItem::Error(e) => {
                self.conn().execute(
                    "UPDATE error_reports SET delivered = ?2 WHERE id = ?1 AND delivered IS NULL",
                    params![e.id, rfc3339(Utc::now())],
                )?;
                Ok(())
            }
        }
    }

    /// Marks the verdict of record `record_id` delivered.
    pub fn mark_delivered(&self, record_id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE verdicts SET delivered = ?2 WHERE alarm_id = ?1 AND delivered IS NULL",
            params![record_id, rfc3339(Utc::now())],
        )?;
        Ok(())
    }

    /// Error reports not yet acknowledged by the broker.
    pub fn undelivered_errors(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM error_reports WHERE delivered IS NULL AND parked IS NULL",
            [],
            |r| r.get(0),
        )?)
    }

    /// Verdicts not yet acknowledged by the broker.
    pub fn undelivered_count(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM verdicts WHERE delivered IS NULL AND parked IS NULL",
            [],
            |r| r.get(0),
        )?)
    }

    /// Alarms that were recorded but have no verdict: the service stopped while verifying them.
    pub fn unanswered(&self) -> Result<Vec<Unanswered>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT a.alarm_id, a.sent_alarm_id, a.camera, a.alarm_time, a.received FROM alarms a
             LEFT JOIN verdicts v ON v.alarm_id = a.alarm_id WHERE v.alarm_id IS NULL ORDER BY a.received",
        )?;
        let parse = |t: String| parse_time(&t).unwrap_or_else(Utc::now);
        let rows = stmt.query_map([], |r| {
            let record_id: String = r.get(0)?;
            Ok(Unanswered {
                alarm_id: r.get::<_, Option<String>>(1)?.unwrap_or_else(|| record_id.clone()),
                record_id,
                camera: r.get(2)?,
                time: parse(r.get(3)?),
                received: parse(r.get(4)?),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Whether an alarm with this id as sent is recorded (whatever its record key after a reuse).
    pub fn knows_alarm(&self, alarm_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM alarms WHERE sent_alarm_id = ?1",
                params![alarm_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Of these alarms (record keys), those whose verdict the broker has acknowledged.
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
    /// clips and feedback, and delivered error reports as old. Undelivered messages are kept
    /// whatever their age.
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
        conn.execute(
            "DELETE FROM error_reports WHERE delivered IS NOT NULL AND created < ?1",
            params![cutoff],
        )?;
        Ok(verdicts)
    }
}

/// The alarms recorded with the id `alarm_id` as sent, the latest first.
fn earlier_alarms(conn: &Connection, alarm_id: &str) -> Result<Vec<EarlierAlarm>, rusqlite::Error> {
    let mut stmt = conn.prepare(
        "SELECT alarm_id, camera, alarm_time FROM alarms WHERE sent_alarm_id = ?1 ORDER BY received DESC, rowid DESC",
    )?;
    let rows = stmt.query_map(params![alarm_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
    })?;
    let mut earlier = Vec::new();
    for row in rows {
        let (record_id, camera, time) = row?;
        // A time that does not parse cannot match; the record still counts as a use of the id.
        let time = parse_time(&time).unwrap_or(DateTime::<Utc>::MIN_UTC);
        earlier.push(EarlierAlarm {
            record_id,
            camera,
            time,
        });
    }
    Ok(earlier)
}

/// The same alarm sent again: same camera, and alarm times within [`DUPLICATE_WINDOW`] (compared
/// in milliseconds, as times are stored).
fn is_same_alarm(earlier: &EarlierAlarm, alarm: &Alarm) -> bool {
    earlier.camera == alarm.camera && (earlier.time - alarm.time.trunc_subsecs(3)).abs() <= DUPLICATE_WINDOW
}

/// The key for a new record of `alarm_id`, which `uses` records already have: the id itself when
/// free, else `{alarm_id}~{n}` from n = uses + 1, the first one free (a sender's own id may look
/// like one of these).
fn free_record_id(conn: &Connection, alarm_id: &str, uses: usize) -> Result<String, rusqlite::Error> {
    let mut stmt = conn.prepare("SELECT 1 FROM alarms WHERE alarm_id = ?1")?;
    if uses == 0 && !stmt.exists(params![alarm_id])? {
        return Ok(alarm_id.to_owned());
    }
    let mut n = uses.max(1) + 1;
    loop {
        let key = format!("{alarm_id}~{n}");
        if !stmt.exists(params![key])? {
            return Ok(key);
        }
        n += 1;
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
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
        VerdictDocument::unverifiable(
            &alarm(id),
            "site",
            "model",
            crate::analysis::verdict::Cause::NoVideo,
            "test",
        )
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
        assert!(matches!(
            store.record_alarm(&alarm("m1"), b"{}", Some(b"jpeg")).expect("insert"),
            Recorded::New { reuses: None, .. }
        ));
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

    fn alarm_at(id: &str, camera: &str, time: DateTime<Utc>) -> Alarm {
        Alarm::new(id.into(), camera, time, "mqtt".into())
    }

    fn record(store: &Store, alarm: &Alarm) -> Recorded {
        store.record_alarm(alarm, b"{}", None).expect("record")
    }

    fn key_of(recorded: &Recorded) -> &str {
        match recorded {
            Recorded::New { record_id, .. } => record_id,
            Recorded::Duplicate(earlier) => panic!("a duplicate of {earlier:?}"),
        }
    }

    fn verdict_id(item: Option<OutboxItem>) -> Option<String> {
        match item {
            Some(OutboxItem::Verdict(v)) => Some(v.record_id),
            Some(OutboxItem::Error(e)) => Some(format!("error {}", e.document)),
            None => None,
        }
    }

    #[test]
    fn the_same_alarm_within_the_window_is_a_duplicate() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let t = Utc::now();
        assert_eq!(key_of(&record(&store, &alarm_at("a1", "gate", t))), "a1");
        // Sent again, and again without a time (stamped on arrival, seconds later).
        for later in [
            TimeDelta::zero(),
            TimeDelta::seconds(5),
            DUPLICATE_WINDOW,
            -DUPLICATE_WINDOW,
        ] {
            let again = record(&store, &alarm_at("a1", "gate", t + later));
            assert_eq!(
                again,
                Recorded::Duplicate(EarlierAlarm {
                    record_id: "a1".into(),
                    camera: "gate".into(),
                    time: parse_time(&rfc3339(t)).expect("time"),
                }),
                "{later}"
            );
        }
        assert_eq!(
            store.unanswered().expect("unanswered").len(),
            1,
            "duplicates are not recorded"
        );
    }

    #[test]
    fn a_reused_id_is_a_new_alarm_with_a_record_key_of_its_own() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let t = Utc::now();
        assert_eq!(key_of(&record(&store, &alarm_at("7", "gate", t))), "7");
        // Just past the window: the device's counter came round again.
        let later = t + DUPLICATE_WINDOW + TimeDelta::milliseconds(1);
        let second = record(&store, &alarm_at("7", "gate", later));
        let Recorded::New { record_id: key, reuses } = &second else {
            panic!("{second:?}")
        };
        assert_eq!(key, "7~2");
        let reuses = reuses.as_ref().expect("the earlier alarm");
        assert_eq!((reuses.record_id.as_str(), reuses.camera.as_str()), ("7", "gate"));
        // Within the window of the second one: its duplicate, not the first one's.
        let again = record(&store, &alarm_at("7", "gate", later + TimeDelta::seconds(2)));
        assert!(
            matches!(&again, Recorded::Duplicate(e) if e.record_id == "7~2"),
            "{again:?}"
        );
        // The same id and time on another camera is another alarm.
        let yard = record(&store, &alarm_at("7", "yard", t));
        assert_eq!(key_of(&yard), "7~3");
        // A sender whose own id looks like a record key still gets a key of its own.
        assert_eq!(key_of(&record(&store, &alarm_at("7~2", "gate", t))), "7~2~2");
        let mut keys: Vec<(String, String)> = store
            .unanswered()
            .expect("unanswered")
            .into_iter()
            .map(|u| (u.alarm_id, u.record_id))
            .collect();
        keys.sort();
        let expected = [("7", "7"), ("7", "7~2"), ("7", "7~3"), ("7~2", "7~2~2")];
        assert_eq!(keys, expected.map(|(a, r)| (a.to_owned(), r.to_owned())));
        // The verdict of the reused id is kept and delivered under its own key.
        let mut doc = doc("7");
        doc.record_id = "7~2".into();
        store.record_verdict(&doc, None).expect("verdict");
        let item = store.next_undelivered().expect("next");
        assert_eq!(verdict_id(item).as_deref(), Some("7~2"));
    }

    #[test]
    fn stores_made_before_reused_ids_keep_deduplicating() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.db");
        let t = Utc::now();
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(SCHEMA).expect("schema");
            conn.execute(
                "INSERT INTO alarms (alarm_id, camera, alarm_time, received) VALUES ('old', 'gate', ?1, ?1)",
                params![rfc3339(t)],
            )
            .expect("old alarm");
            // A verdict stored before documents had a record_id.
            let mut json: serde_json::Value = serde_json::from_str(&doc("old").to_json()).expect("json");
            json.as_object_mut().map(|o| o.remove("record_id"));
            conn.execute(
                "INSERT INTO verdicts (alarm_id, camera, verdict, document, created) VALUES ('old', 'gate', 'unverifiable', ?1, ?2)",
                params![json.to_string(), rfc3339(t)],
            )
            .expect("old verdict");
        }
        let store = Store::open(&path).expect("reopen");
        assert!(matches!(
            record(&store, &alarm_at("old", "gate", t)),
            Recorded::Duplicate(_)
        ));
        let later = t + TimeDelta::minutes(5);
        assert_eq!(key_of(&record(&store, &alarm_at("old", "gate", later))), "old~2");
        let Some(OutboxItem::Verdict(v)) = store.next_undelivered().expect("next") else {
            panic!("the old verdict is pending")
        };
        assert_eq!((v.record_id.as_str(), v.doc.record_id.as_str()), ("old", "old"));
    }

    #[test]
    fn error_reports_survive_reopening_and_go_in_order_with_verdicts() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.db");
        {
            let store = Store::open(&path).expect("open");
            store.record_error(r#"{"error":"first"}"#).expect("error");
            std::thread::sleep(std::time::Duration::from_millis(5));
            store.record_alarm(&alarm("a1"), b"{}", None).expect("alarm");
            store.record_verdict(&doc("a1"), None).expect("verdict");
            std::thread::sleep(std::time::Duration::from_millis(5));
            store.record_error(r#"{"error":"second"}"#).expect("error");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.undelivered_errors().expect("count"), 2);
        let mut order = Vec::new();
        while let Some(item) = store.next_undelivered().expect("next") {
            store.count_attempt(&item).expect("attempt");
            store.mark_sent(&item).expect("mark");
            order.push(verdict_id(Some(item)).unwrap_or_default());
        }
        assert_eq!(
            order,
            [r#"error {"error":"first"}"#, "a1", r#"error {"error":"second"}"#]
        );
        assert_eq!(store.undelivered_errors().expect("count"), 0);
        // Delivered reports go with the purge; undelivered ones stay.
        store.record_error(r#"{"error":"pending"}"#).expect("error");
        store.purge(TimeDelta::seconds(-60)).expect("purge");
        let left: i64 = store
            .conn()
            .query_row("SELECT COUNT(*) FROM error_reports", [], |r| r.get(0))
            .expect("count");
        assert_eq!((left, store.undelivered_errors().expect("count")), (1, 1));
    }

    #[test]
    fn error_reports_are_bounded_oldest_first() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let mut dropped = 0;
        for i in 0..8 {
            if i == 1 {
                // The first is delivered: when it goes with the bound, nothing is lost or counted.
                let item = store.next_undelivered().expect("next").expect("item");
                store.mark_sent(&item).expect("mark");
            }
            dropped += store.record_error_within(&format!("{{\"n\":{i}}}"), 5).expect("error");
        }
        assert_eq!(dropped, 2);
        assert_eq!(store.undelivered_errors().expect("count"), 5);
        let Some(OutboxItem::Error(oldest)) = store.next_undelivered().expect("next") else {
            panic!("an error report is pending")
        };
        assert_eq!(oldest.document, r#"{"n":3}"#);
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
        let Some(OutboxItem::Verdict(first)) = store.next_undelivered().expect("query") else {
            panic!("a verdict is pending")
        };
        assert_eq!(first.record_id, "a1");
        assert_eq!(first.evidence.as_deref(), Some(b"jpeg".as_slice()));
        store.mark_delivered("a1").expect("mark");
        assert_eq!(
            verdict_id(store.next_undelivered().expect("query")).as_deref(),
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
            verdict_id(store.next_undelivered().expect("q")).as_deref(),
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
        let feedback = crate::store::records::parse_feedback(br#"{"outcome":"real"}"#).expect("feedback");
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
