//! HTTP webhooks: `POST /api/alarms/{camera}` with the same JSON body as an MQTT alarm (every field
//! optional; an empty body is an alarm now), for NVRs and VMSs that call a URL.
//!
//! 202 with `{"alarm_id": ...}` once the alarm is recorded; 404 unknown camera, 400 malformed body,
//! 409 duplicate `alarm_id`, 413 too large, 429 too many alarms dated ahead, 503 while shutting
//! down or when the store cannot record it (with `Retry-After`: send it again). Each refusal is
//! also reported on `{prefix}/errors`. Before any of that, the server itself answers 401 without
//! the token and 403 for a foreign `Host` or a cross-site browser request (see `ops::guard`);
//! those are not reported, since no device sent them.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;

use super::alarm::{self, AlarmError, MAX_PAYLOAD_BYTES};
use super::{AlarmSink, Arrival, Refused};
use crate::ops::http::error;

/// Seconds a sender is asked to wait before sending again an alarm the store could not record.
pub const UNSTORED_RETRY_AFTER_S: u32 = 5;

/// The webhook routes, for the service's HTTP server.
pub fn routes(sink: Arc<dyn AlarmSink>) -> axum::Router {
    Router::new()
        .route("/api/alarms/{id}", post(post_alarm))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD_BYTES))
        .with_state(sink)
}

async fn post_alarm(
    State(sink): State<Arc<dyn AlarmSink>>,
    Path(camera): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let origin = format!("POST /api/alarms/{camera}");
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("body over the limit of {MAX_PAYLOAD_BYTES} bytes")
            } else {
                format!("cannot read the body: {}", rejection.body_text())
            };
            sink.report(&origin, &message, b"");
            return error(status, message);
        }
    };
    let alarm = match alarm::parse("http", &camera, &body, |c| sink.knows_camera(c), Utc::now()) {
        Ok(alarm) => alarm,
        Err(e) => {
            sink.report(&origin, &e.to_string(), &body);
            return error(status_of(&e), e.to_string());
        }
    };
    let arrival = Arrival {
        alarm,
        origin,
        raw: body.to_vec(),
        snapshot: None,
    };
    match sink.accept(arrival) {
        Ok(accepted) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "alarm_id": accepted.alarm_id })),
        )
            .into_response(),
        Err(refused @ Refused::Duplicate(_)) => error(StatusCode::CONFLICT, refused.to_string()),
        Err(refused @ Refused::ShuttingDown) => error(StatusCode::SERVICE_UNAVAILABLE, refused.to_string()),
        Err(refused @ Refused::Invalid { .. }) => error(StatusCode::BAD_REQUEST, refused.to_string()),
        Err(refused @ Refused::TooManyAhead { .. }) => error(StatusCode::TOO_MANY_REQUESTS, refused.to_string()),
        Err(refused @ Refused::Unstored(_)) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, refused.to_string());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(UNSTORED_RETRY_AFTER_S));
            response
        }
    }
}

fn status_of(e: &AlarmError) -> StatusCode {
    match e {
        AlarmError::UnknownCamera(_) => StatusCode::NOT_FOUND,
        AlarmError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        AlarmError::NotJson(_) | AlarmError::Field { .. } => StatusCode::BAD_REQUEST,
    }
}
