//! The [`Alarm`] every intake produces, and the JSON alarm body shared by MQTT and HTTP.
//!
//! Every body field is optional (DESIGN.md): a missing `alarm_id` is generated and a missing
//! `time` means now. Anything else wrong is an [`AlarmError`] that names the field.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use crate::support::ids::check_id;

/// Larger payloads are rejected before parsing; real alarm messages are a few hundred bytes.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Alarm times further than this from the box's clock are rejected: no video exists for them.
pub const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::hours(1);

#[derive(Debug, Clone)]
pub struct Alarm {
    /// The sender's id (or one generated here when it sent none).
    pub alarm_id: String,
    /// The key of this alarm's record: its `alarm_id`, or `{alarm_id}~{n}` when the store already
    /// holds another alarm with that id (a device that restarted its counter). Set when recorded.
    pub record_id: String,
    pub camera: String,
    /// When the alarm happened, as the sender says.
    pub time: DateTime<Utc>,
    /// Which intake heard it, and from whom: `mqtt`, `http`, `smtp:<sender>`, `onvif:<topic>`
    /// (with the body's own `source` after a colon for MQTT and HTTP, e.g. `mqtt:nvr`).
    pub source: String,
    /// When this service received it; latency is measured from here.
    pub received: DateTime<Utc>,
    pub received_at: tokio::time::Instant,
    /// A device event (camera motion, NVR e-mail) with an id of our making: further events of its
    /// camera join it while it is verified. Alarms with the sender's own `alarm_id` never join.
    pub joinable: bool,
}

impl Alarm {
    /// An alarm received now, with the sender's id.
    pub fn new(alarm_id: String, camera: &str, time: DateTime<Utc>, source: String) -> Self {
        Self {
            record_id: alarm_id.clone(),
            alarm_id,
            camera: camera.to_owned(),
            time,
            source,
            received: Utc::now(),
            received_at: tokio::time::Instant::now(),
            joinable: false,
        }
    }

    /// A device event on `camera` received now, that later events of the camera may join.
    pub fn device_event(camera: &str, time: DateTime<Utc>, source: String) -> Self {
        Self {
            joinable: true,
            ..Self::new(uuid::Uuid::new_v4().to_string(), camera, time, source)
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AlarmError {
    #[error("unknown camera {0:?}")]
    UnknownCamera(String),
    #[error("payload of {0} bytes is over the limit of {MAX_PAYLOAD_BYTES} bytes")]
    TooLarge(usize),
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("field `{field}`: {message}")]
    Field { field: String, message: String },
}

#[derive(Deserialize)]
struct Payload {
    alarm_id: Option<String>,
    time: Option<String>,
    source: Option<String>,
    // Other fields (zone, panel input, ...) are allowed and ignored.
}

/// Parses one alarm body for `camera` that arrived over `intake` (`mqtt` or `http`), checking the
/// camera with `is_known`.
pub fn parse(
    intake: &str,
    camera: &str,
    payload: &[u8],
    is_known: impl Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> Result<Alarm, AlarmError> {
    if !is_known(camera) {
        return Err(AlarmError::UnknownCamera(camera.to_owned()));
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(AlarmError::TooLarge(payload.len()));
    }
    let payload = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        payload
    };
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| AlarmError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(AlarmError::NotJson(format!(
            "expected a JSON object, got {}",
            json_kind(&value)
        )));
    }
    let parsed: Payload = serde_path_to_error::deserialize(value).map_err(|e| AlarmError::Field {
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })?;
    let alarm_id = match parsed.alarm_id {
        Some(id) => {
            check_id(&id).map_err(|e| AlarmError::Field {
                field: "alarm_id".into(),
                message: e.to_string(),
            })?;
            id
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    let time = match parsed.time {
        None => now,
        Some(text) => parse_time(&text, now)?,
    };
    let source = match parsed.source {
        Some(s) if !s.is_empty() => format!("{intake}:{s}"),
        _ => intake.to_owned(),
    };
    Ok(Alarm {
        received: now,
        ..Alarm::new(alarm_id, camera, time, source)
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, AlarmError> {
    let time = DateTime::parse_from_rfc3339(text)
        .map_err(|e| AlarmError::Field {
            field: "time".into(),
            message: format!("expected an RFC 3339 time such as 2026-11-21T10:15:00Z, got {text:?} ({e})"),
        })?
        .with_timezone(&Utc);
    if (time - now).abs() > MAX_CLOCK_SKEW {
        return Err(AlarmError::Field {
            field: "time".into(),
            message: format!(
                "{text} is more than {} minutes from this box's clock ({}); no video is kept for it",
                MAX_CLOCK_SKEW.num_minutes(),
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        });
    }
    Ok(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(c: &str) -> bool {
        c == "gate"
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn full_payload() {
        let a = parse(
            "mqtt",
            "gate",
            br#"{"alarm_id":"a1","time":"2026-11-21T09:59:58Z","source":"nvr","zone":3}"#,
            known,
            now(),
        );
        let a = a.expect("valid");
        assert_eq!(a.alarm_id, "a1");
        assert_eq!(a.time, now() - TimeDelta::seconds(2));
        assert_eq!(a.source, "mqtt:nvr");
        assert!(!a.joinable);
    }

    #[test]
    fn empty_payload_means_now_with_generated_id() {
        let a = parse("mqtt", "gate", b"", known, now()).expect("valid");
        assert_eq!(a.time, now());
        assert_eq!(a.alarm_id.len(), 36);
        let b = parse("mqtt", "gate", b"{}", known, now()).expect("valid");
        assert_ne!(a.alarm_id, b.alarm_id);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            parse("mqtt", "yard", b"{}", known, now()).unwrap_err(),
            AlarmError::UnknownCamera("yard".into())
        );
        assert!(matches!(
            parse("mqtt", "gate", b"{not json", known, now()),
            Err(AlarmError::NotJson(_))
        ));
        assert!(matches!(
            parse("mqtt", "gate", b"[1,2]", known, now()),
            Err(AlarmError::NotJson(_))
        ));
        let e = parse("mqtt", "gate", br#"{"time": 12}"#, known, now()).unwrap_err();
        assert!(matches!(&e, AlarmError::Field { field, .. } if field == "time"), "{e}");
        let e = parse("mqtt", "gate", br#"{"time": "yesterday"}"#, known, now()).unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
        let e = parse("mqtt", "gate", br#"{"time": "2020-01-01T00:00:00Z"}"#, known, now()).unwrap_err();
        assert!(e.to_string().contains("from this box's clock"), "{e}");
        let e = parse("mqtt", "gate", br#"{"alarm_id": "a/b"}"#, known, now()).unwrap_err();
        assert!(
            matches!(&e, AlarmError::Field { field, .. } if field == "alarm_id"),
            "{e}"
        );
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            parse("mqtt", "gate", &big, known, now()).unwrap_err(),
            AlarmError::TooLarge(MAX_PAYLOAD_BYTES + 1)
        );
    }
}
