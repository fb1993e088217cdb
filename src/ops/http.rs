//! The service's one HTTP server: the token check in front of every path but `/healthz`, a JSON
//! 404, the JSON error body every route answers with, and the routes given to it (the alarm
//! webhooks of `intake::http`, the API and the console).
//!
//! The token is accepted as `Authorization: Bearer <token>` or as the password of HTTP Basic (any
//! user name), so that both a webhook and a browser can present it. It is compared in constant
//! time and never logged.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;

/// The one path open without the token: for load balancers and watchdogs.
pub const HEALTH_PATH: &str = "/healthz";

/// A JSON error body, as every API error is sent: `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Serves `routes` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, token: Option<Secret>, routes: Router, stop: CancellationToken) {
    let app = app(token, routes);
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// The whole application: routes, the fallback and the token check.
pub fn app(token: Option<Secret>, routes: Router) -> Router {
    routes
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::new(token), require_token))
}

async fn not_found(request: Request) -> Response {
    error(StatusCode::NOT_FOUND, format!("no such path: {}", request.uri().path()))
}

async fn require_token(State(token): State<Arc<Option<Secret>>>, request: Request, next: Next) -> Response {
    let Some(token) = token.as_ref() else {
        return next.run(request).await;
    };
    if request.uri().path() == HEALTH_PATH || presented_token(request.headers()).is_some_and(|t| token.matches(&t)) {
        return next.run(request).await;
    }
    tracing::debug!(path = %request.uri().path(), "HTTP request without a valid token");
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "a valid token is required: Authorization: Bearer <token>, or the token as the HTTP Basic password",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"alarm-verifier\", charset=\"UTF-8\""),
    );
    response
}

/// The token a request presents: a Bearer token, or the password of HTTP Basic.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text.split_once(':').map(|(_, password)| password.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        h
    }

    #[test]
    fn bearer_and_basic_present_the_token() {
        assert_eq!(presented_token(&headers("Bearer s3cret")).as_deref(), Some("s3cret"));
        // "tech:s3cret"
        assert_eq!(
            presented_token(&headers("Basic dGVjaDpzM2NyZXQ=")).as_deref(),
            Some("s3cret")
        );
        assert_eq!(presented_token(&headers("Basic !!!")), None);
        assert_eq!(presented_token(&headers("Digest x")), None);
        assert_eq!(presented_token(&HeaderMap::new()), None);
    }
}
