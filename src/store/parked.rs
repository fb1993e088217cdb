//! Parked outbox messages: a verdict or error report that the broker refused each time it was
//! published (it closed the connection right after it) is set aside with the reason, so that one
//! poison message cannot hold up every later one. It stays in the store, is counted in `/metrics`,
//! `/healthz` and the console, and goes out again when an operator asks (`POST /api/outbox/retry`).

use chrono::Utc;
use rusqlite::params;
use serde::Serialize;

use super::{OutboxItem, Store, StoreError};
use crate::analysis::verdict::rfc3339;

/// A parked message, as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parked {
    /// `verdict` or `error_report`.
    pub kind: &'static str,
    /// The verdict's record id, or the error report's number.
    pub key: String,
    pub reason: String,
    pub parked: String,
}

/// Which parked messages to send again.
#[derive(Debug, Clone, PartialEq)]
pub enum Retry {
    Verdict(String),
    ErrorReport(i64),
    All,
}

impl Store {
    /// Sets `item` aside: delivery goes on with the next one.
    pub fn park(&self, item: &OutboxItem, reason: &str) -> Result<(), StoreError> {
        let now = rfc3339(Utc::now());
        let conn = self.conn();
        match item {
            OutboxItem::Verdict(v) => conn.execute(
                "UPDATE verdicts SET parked = ?2, parked_time = ?3 WHERE alarm_id = ?1",
                params![v.record_id, reason, now],
            )?,
            OutboxItem::Error(e) => conn.execute(
                "UPDATE error_reports SET parked = ?2, parked_time = ?3 WHERE id = ?1",
                params![e.id, reason, now],
            )?,
        };
        Ok(())
    }

    /// Parked messages, oldest first.
    pub fn parked(&self) -> Result<Vec<Parked>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT 'verdict', alarm_id, parked, parked_time FROM verdicts
                 WHERE parked IS NOT NULL AND delivered IS NULL
             UNION ALL
             SELECT 'error_report', CAST(id AS TEXT), parked, parked_time FROM error_reports
                 WHERE parked IS NOT NULL AND delivered IS NULL
             ORDER BY 4",
        )?;
        let rows = stmt.query_map([], |r| {
            let kind: String = r.get(0)?;
            Ok(Parked {
                kind: if kind == "verdict" { "verdict" } else { "error_report" },
                key: r.get(1)?,
                reason: r.get(2)?,
                parked: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many messages are parked.
    pub fn parked_count(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT (SELECT COUNT(*) FROM verdicts WHERE parked IS NOT NULL AND delivered IS NULL)
                  + (SELECT COUNT(*) FROM error_reports WHERE parked IS NOT NULL AND delivered IS NULL)",
            [],
            |r| r.get(0),
        )?)
    }

    /// Puts parked messages back in the outbox, with their attempts counted afresh; returns how
    /// many went back.
    pub fn unpark(&self, which: &Retry) -> Result<usize, StoreError> {
        let conn = self.conn();
        const VERDICTS: &str = "UPDATE verdicts SET parked = NULL, parked_time = NULL, attempts = 0
                                WHERE parked IS NOT NULL AND delivered IS NULL";
        const REPORTS: &str = "UPDATE error_reports SET parked = NULL, parked_time = NULL, attempts = 0
                               WHERE parked IS NOT NULL AND delivered IS NULL";
        Ok(match which {
            Retry::Verdict(record_id) => conn.execute(&format!("{VERDICTS} AND alarm_id = ?1"), params![record_id])?,
            Retry::ErrorReport(id) => conn.execute(&format!("{REPORTS} AND id = ?1"), params![id])?,
            Retry::All => conn.execute(VERDICTS, [])? + conn.execute(REPORTS, [])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::verdict::VerdictDocument;
    use crate::intake::alarm::Alarm;

    fn verdict(store: &Store, id: &str) {
        let alarm = Alarm::new(id.into(), "gate", Utc::now(), "test".into());
        store.record_alarm(&alarm, b"{}", None).expect("alarm");
        let doc = VerdictDocument::unverifiable(
            &alarm,
            "site",
            "model",
            crate::analysis::verdict::Cause::NoVideo,
            "test",
        );
        store.record_verdict(&doc, None).expect("verdict");
    }

    fn next_key(store: &Store) -> Option<String> {
        match store.next_undelivered().expect("next") {
            Some(OutboxItem::Verdict(v)) => Some(v.record_id),
            Some(OutboxItem::Error(e)) => Some(format!("report {}", e.id)),
            None => None,
        }
    }

    #[test]
    fn a_parked_verdict_lets_the_next_go_and_comes_back_when_retried() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        verdict(&store, "poison");
        verdict(&store, "good");
        let Some(first) = store.next_undelivered().expect("next") else {
            panic!("nothing pending")
        };
        store.park(&first, "refused by the broker").expect("park");
        assert_eq!(next_key(&store).as_deref(), Some("good"));
        assert_eq!(store.parked_count().expect("count"), 1);
        assert_eq!(store.undelivered_count().expect("pending"), 1);
        let parked = store.parked().expect("list");
        assert_eq!((parked[0].kind, parked[0].key.as_str()), ("verdict", "poison"));
        assert_eq!(parked[0].reason, "refused by the broker");

        assert_eq!(store.unpark(&Retry::Verdict("other".into())).expect("retry"), 0);
        assert_eq!(store.unpark(&Retry::Verdict("poison".into())).expect("retry"), 1);
        assert_eq!(store.parked_count().expect("count"), 0);
        assert_eq!(next_key(&store).as_deref(), Some("poison"));
    }

    #[test]
    fn parked_error_reports_are_listed_and_retried_with_the_rest() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        store.record_error(r#"{"error":"x"}"#).expect("report");
        let Some(item) = store.next_undelivered().expect("next") else {
            panic!("nothing pending")
        };
        store.park(&item, "too large").expect("park");
        assert_eq!(next_key(&store), None);
        assert_eq!(store.parked().expect("list")[0].kind, "error_report");
        assert_eq!(store.unpark(&Retry::All).expect("retry"), 1);
        assert!(next_key(&store).is_some());
    }
}
