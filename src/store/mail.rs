//! The e-mail queue: each verdict's mail, composed and stored before it is sent and kept until the
//! mail server has taken it. A mail the server refuses for good is parked with the reason.

use chrono::Utc;
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};
use crate::analysis::verdict::rfc3339;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mail_out (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL,
    recipients TEXT NOT NULL,
    message BLOB NOT NULL,
    created TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    sent TEXT,
    parked TEXT
);
";

/// A mail waiting to be taken by the server: the whole message as it goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMail {
    pub id: i64,
    pub record_id: String,
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
    pub attempts: u32,
}

impl Store {
    /// Makes the queue's table, once per start.
    pub fn mail_prepare(&self) -> Result<(), StoreError> {
        self.conn().execute_batch(SCHEMA)?;
        Ok(())
    }

    pub fn mail_enqueue(&self, record_id: &str, recipients: &[String], message: &[u8]) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO mail_out (record_id, recipients, message, created) VALUES (?1, ?2, ?3, ?4)",
            params![
                record_id,
                serde_json::to_string(recipients).unwrap_or_else(|_| "[]".into()),
                message,
                rfc3339(Utc::now())
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// The oldest mail neither sent nor parked.
    pub fn mail_next(&self) -> Result<Option<QueuedMail>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT id, record_id, recipients, message, attempts FROM mail_out
                 WHERE sent IS NULL AND parked IS NULL ORDER BY id LIMIT 1",
                [],
                |r| {
                    Ok(QueuedMail {
                        id: r.get(0)?,
                        record_id: r.get(1)?,
                        recipients: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
                        message: r.get(3)?,
                        attempts: r.get(4)?,
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    /// Records the outcome of an attempt: sent, parked with why, or only tried.
    pub fn mail_attempted(&self, id: i64, sent: bool, parked: Option<&str>) -> Result<(), StoreError> {
        let now = rfc3339(Utc::now());
        self.conn().execute(
            "UPDATE mail_out SET attempts = attempts + 1,
                 sent = CASE WHEN ?2 THEN ?4 ELSE sent END,
                 parked = COALESCE(?3, parked)
             WHERE id = ?1",
            params![id, sent, parked, now],
        )?;
        Ok(())
    }

    /// Mails not yet taken by the server (parked ones excluded).
    pub fn mail_pending(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM mail_out WHERE sent IS NULL AND parked IS NULL",
            [],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mails_wait_in_order_until_sent_or_parked() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("store");
        store.mail_prepare().expect("table");
        let to = vec!["arc@example.com".to_owned()];
        let a = store.mail_enqueue("r1", &to, b"Subject: a\r\n\r\nx").expect("a");
        let b = store.mail_enqueue("r2", &to, b"Subject: b\r\n\r\ny").expect("b");
        let first = store.mail_next().expect("next").expect("one");
        assert_eq!((first.id, first.recipients.clone(), first.attempts), (a, to, 0));
        store.mail_attempted(a, false, None).expect("tried");
        assert_eq!(
            store.mail_next().expect("next").map(|m| (m.id, m.attempts)),
            Some((a, 1))
        );
        store.mail_attempted(a, true, None).expect("sent");
        store
            .mail_attempted(b, false, Some("550 no such user"))
            .expect("parked");
        assert_eq!(store.mail_next().expect("next"), None);
        assert_eq!(store.mail_pending().expect("count"), 0);
    }
}
