//! The API: `/healthz`, `/metrics`, the alarm records (`/api/alarms…`, with CSV export, evidence,
//! clip and feedback) and the cameras (`/api/cameras`, `…/snapshot.jpg`).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::Ops;
use super::http::{HEALTH_PATH, error};
use crate::intake::feedback::{self, FeedbackRefused};
use crate::store::StoreError;
use crate::store::parked::Retry;
use crate::store::records::{AlarmFilter, AlarmSummary, file_safe};
use crate::support::off_runtime;

const MAX_FEEDBACK_BYTES: usize = 16 * 1024;

/// The API's routes.
pub fn routes(ops: Ops) -> Router {
    Router::new()
        .route(HEALTH_PATH, get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/alarms", get(list_alarms))
        .route("/api/alarms/{id}", get(alarm))
        .route("/api/alarms/{id}/evidence.jpg", get(evidence))
        .route("/api/alarms/{id}/snapshot.jpg", get(device_snapshot))
        .route("/api/alarms/{id}/clip.mp4", get(clip))
        .route(
            "/api/alarms/{id}/feedback",
            post(feedback).layer(DefaultBodyLimit::max(MAX_FEEDBACK_BYTES)),
        )
        .route("/api/outbox", get(outbox))
        .route("/api/outbox/retry", post(retry_parked))
        .route("/api/cameras", get(cameras))
        .route("/api/cameras/{camera}/snapshot.jpg", get(camera_snapshot))
        .with_state(ops)
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "API request failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn unknown_alarm(alarm_id: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("unknown alarm {alarm_id:?}"))
}

fn jpeg(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

async fn healthz(State(ops): State<Ops>) -> Response {
    let components = ops.site.components();
    let problems = components.problems();
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if problems.is_empty() { "ok" } else { "unavailable" },
        "problems": problems,
        "mqtt": { "connected": components.mqtt_connected },
        "detector": { "model": components.model },
        "cameras": { "total": components.cameras, "online": components.cameras_online },
        "outbox": {
            "pending": components.outbox_pending,
            "oldest_age_s": components.outbox_oldest_s,
            "parked": components.outbox_parked,
        },
        "queue_depth": components.queue_depth,
        "arc": components.arc,
    });
    (status, axum::Json(body)).into_response()
}

/// The outbox: how many messages wait, and those the broker refused (parked), with why.
async fn outbox(State(ops): State<Ops>) -> Response {
    let store = ops.store.clone();
    let listed =
        tokio::task::spawn_blocking(move || Ok::<_, StoreError>((store.undelivered_count()?, store.parked()?))).await;
    match listed {
        Ok(Ok((pending, parked))) => {
            axum::Json(serde_json::json!({ "pending": pending, "parked": parked })).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// Which parked messages `POST /api/outbox/retry` sends again: `?record_id=` a verdict's record,
/// `?report=` an error report's number, neither for all.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryQuery {
    record_id: Option<String>,
    report: Option<i64>,
}

async fn retry_parked(State(ops): State<Ops>, query: Result<Query<RetryQuery>, QueryRejection>) -> Response {
    let which = match query {
        Ok(Query(RetryQuery {
            record_id: Some(id),
            report: None,
        })) => Retry::Verdict(id),
        Ok(Query(RetryQuery {
            record_id: None,
            report: Some(n),
        })) => Retry::ErrorReport(n),
        Ok(Query(RetryQuery {
            record_id: None,
            report: None,
        })) => Retry::All,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "expected record_id or report, not both"),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{} (expected record_id=RECORD or report=NUMBER)", e.body_text()),
            );
        }
    };
    let store = ops.store.clone();
    match tokio::task::spawn_blocking(move || store.unpark(&which)).await {
        Ok(Ok(retried)) => {
            tracing::info!(retried, "parked outbox messages sent again at an operator's request");
            axum::Json(serde_json::json!({ "retried": retried })).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let agreement = match off_runtime(|| ops.store.agreement()) {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    let text = ops.metrics.render(&ops.site.components(), &agreement);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn list_alarms(State(ops): State<Ops>, filter: Result<Query<AlarmFilter>, QueryRejection>) -> Response {
    let Query(filter) = match filter {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} (expected camera, verdict, since and until as RFC 3339 times, limit, format=csv)",
                    e.body_text()
                ),
            );
        }
    };
    let csv = match filter.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("field `format`: expected json or csv, got {other:?}"),
            );
        }
    };
    let store = ops.store.clone();
    let listed = tokio::task::spawn_blocking(move || store.list_alarms(&filter)).await;
    let alarms = match listed {
        Ok(Ok(alarms)) => alarms,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    if csv {
        return (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"alarms.csv\""),
            ],
            to_csv(&alarms),
        )
            .into_response();
    }
    axum::Json(serde_json::json!({ "alarms": alarms })).into_response()
}

/// RFC 4180 CSV: every field quoted, quotes doubled, formulas defused.
fn to_csv(alarms: &[AlarmSummary]) -> String {
    let mut out = String::from(
        "alarm_id,camera,alarm_time,received,source,verdict,cause,reason,latency_ms,delivered,feedback\r\n",
    );
    for a in alarms {
        let latency = a.latency_ms.map(|l| l.to_string()).unwrap_or_default();
        let fields = [
            a.alarm_id.as_str(),
            &a.camera,
            &a.alarm_time,
            &a.received,
            a.source.as_deref().unwrap_or_default(),
            a.verdict.as_deref().unwrap_or_default(),
            a.cause.as_deref().unwrap_or_default(),
            a.reason.as_deref().unwrap_or_default(),
            &latency,
            a.delivered.as_deref().unwrap_or_default(),
            a.feedback.as_deref().unwrap_or_default(),
        ];
        let quoted: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&quoted.join(","));
        out.push_str("\r\n");
    }
    out
}

/// One quoted CSV field. Ids and sources come from devices, and a spreadsheet runs a field that
/// starts with `= + - @` (or a tab or CR before one) as a formula, so such a field gets a leading
/// `'` (OWASP's CSV-injection advice).
fn csv_field(value: &str) -> String {
    let defuse = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let value = value.replace('"', "\"\"");
    if defuse {
        format!("\"'{value}\"")
    } else {
        format!("\"{value}\"")
    }
}

async fn alarm(State(ops): State<Ops>, Path(alarm_id): Path<String>) -> Response {
    match off_runtime(|| ops.store.alarm_detail(&alarm_id)) {
        Ok(Some(detail)) => axum::Json(detail).into_response(),
        Ok(None) => unknown_alarm(&alarm_id),
        Err(e) => internal(e),
    }
}

async fn evidence(State(ops): State<Ops>, Path(alarm_id): Path<String>) -> Response {
    stored_jpeg(
        off_runtime(|| ops.store.evidence(&alarm_id)),
        "evidence image",
        &alarm_id,
    )
}

async fn device_snapshot(State(ops): State<Ops>, Path(alarm_id): Path<String>) -> Response {
    stored_jpeg(
        off_runtime(|| ops.store.alarm_snapshot(&alarm_id)),
        "device picture",
        &alarm_id,
    )
}

/// A JPEG kept with an alarm's record, or 404 naming what is missing.
fn stored_jpeg(found: Result<Option<Vec<u8>>, StoreError>, what: &str, alarm_id: &str) -> Response {
    match found {
        Ok(Some(bytes)) => jpeg(bytes),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no {what} for alarm {alarm_id:?}")),
        Err(e) => internal(e),
    }
}

async fn clip(State(ops): State<Ops>, Path(alarm_id): Path<String>) -> Response {
    let clip = match off_runtime(|| ops.store.clip(&alarm_id)) {
        Ok(Some(clip)) => clip,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no clip for alarm {alarm_id:?}")),
        Err(e) => return internal(e),
    };
    match tokio::fs::read(&clip.path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "video/mp4".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("inline; filename=\"{}.mp4\"", file_safe(&alarm_id)),
                ),
            ],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => internal(format!("{}: {e}", clip.path.display())),
    }
}

async fn feedback(
    State(ops): State<Ops>,
    Path(alarm_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return error(e.status(), e.body_text()),
    };
    match off_runtime(|| feedback::take(&ops.store, &alarm_id, &body)) {
        Ok(feedback) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "alarm_id": alarm_id, "outcome": feedback.outcome })),
        )
            .into_response(),
        Err(FeedbackRefused::Invalid(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(FeedbackRefused::UnknownAlarm(_)) => unknown_alarm(&alarm_id),
        Err(FeedbackRefused::Store(e)) => internal(e),
    }
}

async fn cameras(State(ops): State<Ops>) -> Response {
    axum::Json(serde_json::json!({ "cameras": ops.site.cameras() })).into_response()
}

async fn camera_snapshot(State(ops): State<Ops>, Path(camera): Path<String>) -> Response {
    if !ops.sink.knows_camera(&camera) {
        return error(StatusCode::NOT_FOUND, format!("unknown camera {camera:?}"));
    }
    let site = ops.site.clone();
    match tokio::task::spawn_blocking(move || site.snapshot(&camera)).await {
        Ok(Ok(bytes)) => jpeg(bytes),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_that_a_spreadsheet_would_run_are_defused() {
        for (raw, field) in [
            ("=HYPERLINK(\"http://evil\")", "\"'=HYPERLINK(\"\"http://evil\"\")\""),
            ("+1", "\"'+1\""),
            ("-2+3", "\"'-2+3\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("\t=1", "\"'\t=1\""),
            ("\r=1", "\"'\r=1\""),
            ("cam-1", "\"cam-1\""),
            ("a=b", "\"a=b\""),
            ("", "\"\""),
        ] {
            assert_eq!(csv_field(raw), field, "{raw:?}");
        }
    }

    #[test]
    fn a_hostile_alarm_id_is_one_defused_field_of_its_row() {
        let alarm = AlarmSummary {
            alarm_id: "=cmd|' /C calc'!A0".into(),
            camera: "entrance".into(),
            alarm_time: "2026-12-06T00:00:00Z".into(),
            received: "2026-12-06T00:00:00Z".into(),
            source: Some("@evil".into()),
            verdict: Some("verified".into()),
            cause: None,
            reason: None,
            latency_ms: Some(1200),
            delivered: None,
            has_evidence: false,
            has_clip: false,
            feedback: None,
        };
        let csv = to_csv(&[alarm]);
        let row = csv.lines().nth(1).expect("a row");
        assert!(row.starts_with("\"'=cmd|' /C calc'!A0\",\"entrance\","), "{row}");
        assert!(row.contains(",\"'@evil\","), "{row}");
        assert!(row.contains(",\"1200\","), "{row}");
    }
}
