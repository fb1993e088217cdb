//! The ARC queue: one DC-09 event per verdict for the alarm receiving centre, stored before it is
//! sent and kept until the ARC ACKs it, with the sequence number it keeps across retries. A DUH
//! parks it with the reason.

use chrono::Utc;
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};
use crate::analysis::verdict::rfc3339;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS arc_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL,
    account TEXT NOT NULL,
    data TEXT NOT NULL,
    xdata TEXT NOT NULL,
    created TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered TEXT,
    parked TEXT
);
";

/// An event waiting for the ARC's ACK.
#[derive(Debug, Clone, PartialEq)]
pub struct ArcEvent {
    pub id: i64,
    pub record_id: String,
    pub account: String,
    /// `NBV003` or `1139 00 003`.
    pub data: String,
    /// The extended data blocks, without brackets.
    pub xdata: Vec<String>,
    pub attempts: u32,
}

impl ArcEvent {
    /// The DC-09 sequence, 0001 to 9999, the same on every retry.
    pub fn seq(&self) -> String {
        format!("{:04}", self.id.rem_euclid(9999) + 1)
    }
}

impl Store {
    /// Makes the queue's table, once per start.
    pub fn arc_prepare(&self) -> Result<(), StoreError> {
        self.conn().execute_batch(SCHEMA)?;
        Ok(())
    }

    /// Stores an event for the ARC.
    pub fn arc_enqueue(&self, record_id: &str, account: &str, data: &str, xdata: &[String]) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO arc_events (record_id, account, data, xdata, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                record_id,
                account,
                data,
                serde_json::to_string(xdata).unwrap_or_else(|_| "[]".into()),
                rfc3339(Utc::now())
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// The oldest event neither ACKed nor parked.
    pub fn arc_next(&self) -> Result<Option<ArcEvent>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT id, record_id, account, data, xdata, attempts FROM arc_events
                 WHERE delivered IS NULL AND parked IS NULL ORDER BY id LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, u32>(5)?,
                    ))
                },
            )
            .optional()?;
        Ok(row.map(|(id, record_id, account, data, xdata, attempts)| ArcEvent {
            id,
            record_id,
            account,
            data,
            xdata: serde_json::from_str(&xdata).unwrap_or_default(),
            attempts,
        }))
    }

    pub fn arc_attempted(&self, id: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE arc_events SET attempts = attempts + 1 WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    pub fn arc_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE arc_events SET delivered = ?2 WHERE id = ?1",
            params![id, rfc3339(Utc::now())],
        )?;
        Ok(())
    }

    pub fn arc_park(&self, id: i64, reason: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("UPDATE arc_events SET parked = ?2 WHERE id = ?1", params![id, reason])?;
        Ok(())
    }

    /// Events waiting for the ARC's ACK.
    pub fn arc_pending(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM arc_events WHERE delivered IS NULL AND parked IS NULL",
            [],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_wait_in_order_until_acked_or_parked() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("store");
        store.arc_prepare().expect("table");
        let x = vec!["Vhttp://a".to_owned()];
        let a = store.arc_enqueue("r1", "4711", "NBV003", &x).expect("a");
        let b = store.arc_enqueue("r2", "4711", "NBG003", &[]).expect("b");
        let first = store.arc_next().expect("next").expect("one");
        assert_eq!(
            (first.id, first.xdata.clone(), first.seq()),
            (a, x, format!("{:04}", a + 1))
        );
        store.arc_attempted(a).expect("attempt");
        assert_eq!(store.arc_next().expect("next").map(|e| e.attempts), Some(1));
        store.arc_delivered(a).expect("acked");
        store.arc_park(b, "DUH").expect("parked");
        assert_eq!(store.arc_next().expect("next"), None);
        assert_eq!(store.arc_pending().expect("count"), 0);
    }
}
