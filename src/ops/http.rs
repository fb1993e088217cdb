//! The service's one HTTP server: the connection handling (hyper's header-read timeout, which also
//! bounds a kept-alive connection's wait for its next request; a request timeout; a cap on
//! connections served at once), the `Host` and cross-site checks of [`super::guard`], the token
//! check in front of every path but `/healthz`, a JSON 404, the JSON error body every route
//! answers with, and the routes given to it (the alarm webhooks of `intake::http`, the API and the
//! console).
//!
//! The token is accepted as `Authorization: Bearer <token>` or as the password of HTTP Basic (any
//! user name), so that both a webhook and a browser can present it. It is compared in constant
//! time and never logged.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use super::guard::{self, AllowedHosts};
use crate::config::{HttpConfig, Secret};

/// The one path open without the token: for load balancers and watchdogs.
pub const HEALTH_PATH: &str = "/healthz";

/// A JSON error body, as every API error is sent: `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// What the server admits and how long it waits, from `[http]`.
#[derive(Debug, Clone)]
pub struct ServerRules {
    pub token: Option<Secret>,
    pub hosts: AllowedHosts,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl ServerRules {
    pub fn from_config(config: &HttpConfig, token: Option<Secret>) -> Self {
        Self {
            token,
            hosts: AllowedHosts::new(&config.hosts),
            header_timeout: Duration::from_secs_f64(config.header_timeout_s),
            request_timeout: Duration::from_secs_f64(config.request_timeout_s),
            max_connections: config.max_connections.max(1),
        }
    }
}

/// How long connections still open at shutdown get to finish their request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `routes` on `listener` until `stop` is cancelled. A connection is accepted only while
/// fewer than `max_connections` are open; the rest wait in the kernel's backlog.
pub async fn serve(listener: TcpListener, rules: ServerRules, routes: Router, stop: CancellationToken) {
    tracing::info!(
        hosts = %rules.hosts.describe(),
        header_timeout_s = rules.header_timeout.as_secs_f64(),
        request_timeout_s = rules.request_timeout.as_secs_f64(),
        max_connections = rules.max_connections,
        "HTTP server listening"
    );
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(rules.header_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(rules.max_connections));
    let app = app(&rules, routes);
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = stop.cancelled() => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = http1.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Timeouts and clients that go away end here; neither is the server's fault.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::debug!("HTTP connections still open at shutdown were dropped");
    }
}

/// The whole application: routes, the fallback, the request timeout, and the host, cross-site and
/// token checks (in that order).
pub fn app(rules: &ServerRules, routes: Router) -> Router {
    let request_timeout = rules.request_timeout;
    routes
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::new(rules.token.clone()),
            require_token,
        ))
        .layer(middleware::from_fn(guard::refuse_cross_site))
        .layer(middleware::from_fn_with_state(
            Arc::new(rules.hosts.clone()),
            guard::require_known_host,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |e: tower::BoxError| async move {
                    timed_out(e, request_timeout)
                }))
                .timeout(request_timeout),
        )
}

fn timed_out(e: tower::BoxError, limit: Duration) -> Response {
    if e.is::<tower::timeout::error::Elapsed>() {
        return error(
            StatusCode::REQUEST_TIMEOUT,
            format!("request not done within {} s", limit.as_secs_f64()),
        );
    }
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
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
