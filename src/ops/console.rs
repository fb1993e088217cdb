//! The console at `/`: one server-rendered page (maud, no JavaScript) for the technician and the
//! operator: every camera with its state and a snapshot, the recent alarms with their verdicts,
//! evidence and clips, feedback buttons and a test alarm per camera. Readable on a phone.

use axum::Form;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::http::error;
use super::{CameraInfo, Components, Ops};
use crate::ingest::health::{LinkState, StreamHealth};
use crate::intake::alarm::Alarm;
use crate::intake::feedback::{self, FeedbackRefused};
use crate::intake::{Arrival, EventLinkState};
use crate::store::records::{AlarmFilter, AlarmSummary, Feedback, Outcome};

/// Alarms shown on the page.
const RECENT: u32 = 50;

use crate::support::ids::path_segment as segment;

pub fn routes(ops: Ops) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/console/test/{camera}", post(test_alarm))
        .route("/console/feedback/{alarm_id}", post(feedback))
        .with_state(ops)
}

async fn test_alarm(State(ops): State<Ops>, Path(camera): Path<String>) -> Response {
    if !ops.sink.knows_camera(&camera) {
        return error(StatusCode::NOT_FOUND, format!("unknown camera {camera:?}"));
    }
    let alarm = Alarm::new(
        format!("test-{}", uuid::Uuid::new_v4().simple()),
        &camera,
        Utc::now(),
        "http:console".into(),
    );
    let arrival = Arrival {
        origin: format!("console test alarm on {camera}"),
        raw: br#"{"source":"console"}"#.to_vec(),
        snapshot: None,
        alarm,
    };
    match ops.sink.accept(arrival) {
        Ok(_) => Redirect::to("/#alarms").into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Deserialize)]
struct FeedbackForm {
    outcome: Outcome,
}

async fn feedback(State(ops): State<Ops>, Path(alarm_id): Path<String>, Form(form): Form<FeedbackForm>) -> Response {
    let feedback = Feedback {
        outcome: form.outcome,
        operator: "console".into(),
        note: String::new(),
        time: String::new(),
    };
    match crate::support::off_runtime(|| feedback::record(&ops.store, &alarm_id, feedback)) {
        Ok(_) => Redirect::to("/#alarms").into_response(),
        Err(e @ FeedbackRefused::UnknownAlarm(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn page(State(ops): State<Ops>) -> Response {
    let store = ops.store.clone();
    let filter = AlarmFilter {
        limit: Some(RECENT),
        ..Default::default()
    };
    let alarms = match tokio::task::spawn_blocking(move || store.list_alarms(&filter)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let markup = render(&ops.site_name, &ops.site.components(), &ops.site.cameras(), &alarms);
    ([(header::CACHE_CONTROL, "no-store")], Html(markup.into_string())).into_response()
}

fn render(site: &str, components: &Components, cameras: &[CameraInfo], alarms: &[AlarmSummary]) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content="30";
                title { "alarm-verifier · " (site) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "alarm-verifier" span.site { (site) } }
                    (status_bar(components))
                }
                main {
                    section #cameras {
                        h2 { "Cameras " span.count { (components.cameras_online) "/" (components.cameras) " online" } }
                        div.cameras { @for c in cameras { (camera_card(c)) } }
                    }
                    section #alarms {
                        h2 { "Recent alarms " span.count { "last " (alarms.len()) } }
                        @let causes = unverifiable_by_cause(alarms);
                        @if !causes.is_empty() {
                            p.causes { "Unverifiable: " @for (i, (cause, n)) in causes.iter().enumerate() { @if i > 0 { ", " } span.cause { (cause.replace('_', " ")) } " " (n) } }
                        }
                        @if alarms.is_empty() { p.empty { "No alarms yet. Use a camera's “Test alarm” to try one." } }
                        div.alarms { @for a in alarms { (alarm_row(a)) } }
                        p.links { a href="/api/alarms?format=csv&limit=10000" { "Export CSV" } " · " a href="/metrics" { "Metrics" } " · " a href="/healthz" { "Health" } }
                    }
                }
            }
        }
    }
}

fn status_bar(c: &Components) -> Markup {
    let outbox_ok = c.outbox_pending == 0;
    html! {
        ul.status {
            li class=(if c.mqtt_connected { "ok" } else { "bad" }) { "MQTT " (if c.mqtt_connected { "connected" } else { "DISCONNECTED" }) }
            li class=(if c.cameras_online == c.cameras { "ok" } else { "warn" }) { "Cameras " (c.cameras_online) "/" (c.cameras) }
            li class=(if outbox_ok { "ok" } else { "warn" }) { "Outbox " (c.outbox_pending) @if let Some(age) = c.outbox_oldest_s { " (oldest " (format!("{age:.0}")) " s)" } }
            @if c.outbox_parked > 0 {
                li.bad title="The broker refused these messages; send them again with POST /api/outbox/retry" { "Parked " (c.outbox_parked) }
            }
            @if let Some(arc) = &c.arc {
                li class=(if arc.up { "ok" } else if arc.pending > 0 { "bad" } else { "warn" }) title=(arc.error.as_deref().unwrap_or(&arc.target)) {
                    "ARC " (if arc.up { "up" } else { "DOWN" }) @if arc.pending > 0 { " (" (arc.pending) " waiting)" }
                }
            }
            li.ok { "In verification " (c.queue_depth) }
            li.ok { "Model " (c.model) }
        }
    }
}

fn stream_line(label: &str, s: &StreamHealth) -> Markup {
    html! {
        div.stream {
            span class=(if s.state == LinkState::Online { "badge online" } else { "badge offline" }) {
                (label) " " (if s.state == LinkState::Online { "online" } else { "offline" })
            }
            " "
            (s.resolution.as_deref().unwrap_or("?"))
            @if let Some(fps) = s.fps { " · " (format!("{fps:.0}")) " fps" }
            @if let Some(codec) = &s.codec { " · " (codec) }
            @if let Some(transport) = &s.transport { " · " (transport) }
            @if let Some(found) = &s.found { div.found { (s.url) " · " (found) } }
            @if s.state == LinkState::Offline && let Some(e) = &s.last_error { div.error { (e) } }
        }
    }
}

fn camera_card(c: &CameraInfo) -> Markup {
    let id = &c.health.camera;
    let path = segment(id);
    html! {
        article.camera {
            a href=(format!("/api/cameras/{path}/snapshot.jpg")) {
                img loading="lazy" alt=(format!("snapshot of {id}")) src=(format!("/api/cameras/{path}/snapshot.jpg"));
            }
            div.body {
                h3 { (id) }
                (stream_line("main", &c.health.main))
                @if let Some(d) = &c.health.detect { (stream_line("detect", d)) }
                @if let Some(o) = &c.onvif {
                    div.stream {
                        span class=(match o.state { EventLinkState::Subscribed => "badge online", EventLinkState::Connecting => "badge warn", EventLinkState::Failed => "badge offline" }) {
                            "ONVIF " (match o.state { EventLinkState::Subscribed => "subscribed", EventLinkState::Connecting => "connecting", EventLinkState::Failed => "failed" })
                        }
                        @if let Some(e) = &o.error { div.error { (e) } }
                    }
                }
                @if !c.zones.is_empty() { div.zones { "Zones: " (c.zones.join(", ")) } }
                form method="post" action=(format!("/console/test/{path}")) { button.test type="submit" { "Test alarm" } }
            }
        }
    }
}

/// The recent alarms' unverifiable verdicts counted by cause, most frequent first.
fn unverifiable_by_cause(alarms: &[AlarmSummary]) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for cause in alarms.iter().filter_map(|a| a.cause.as_deref()) {
        match counts.iter_mut().find(|(c, _)| c == cause) {
            Some((_, n)) => *n += 1,
            None => counts.push((cause.to_owned(), 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

fn alarm_row(a: &AlarmSummary) -> Markup {
    let id = segment(&a.alarm_id);
    let (class, label) = match a.verdict.as_deref() {
        Some("verified") => ("verified", "VERIFIED"),
        Some("false_alarm") => ("false", "FALSE ALARM"),
        Some("unverifiable") => ("unverifiable", "UNVERIFIABLE"),
        _ => ("pending", "VERIFYING"),
    };
    html! {
        article.alarm {
            @if a.has_evidence {
                a.thumb href=(format!("/api/alarms/{id}/evidence.jpg")) {
                    img loading="lazy" alt="evidence" src=(format!("/api/alarms/{id}/evidence.jpg"));
                }
            } @else { div.thumb.none { "no image" } }
            div.body {
                div.head {
                    span class=(format!("verdict {class}")) { (label) }
                    @if let Some(cause) = &a.cause { " " span.cause { (cause.replace('_', " ")) } }
                    " " strong { (a.camera) }
                    " " span.time { (short_time(&a.alarm_time)) }
                }
                div.reason { (a.reason.as_deref().unwrap_or("in verification…")) }
                div.meta {
                    (a.source.as_deref().unwrap_or("?"))
                    @if let Some(ms) = a.latency_ms { " · answered in " (format!("{:.1}", ms as f64 / 1000.0)) " s" }
                    @if a.delivered.is_none() && a.verdict.is_some() { " · " span.warnText { "not yet delivered" } }
                    " · " a href=(format!("/api/alarms/{id}")) { "record" }
                    @if a.has_clip { " · " a href=(format!("/api/alarms/{id}/clip.mp4")) { "clip" } }
                }
                div.feedback {
                    @match a.feedback.as_deref() {
                        Some(outcome) => {
                            @let disagrees = matches!((a.verdict.as_deref(), outcome), (Some("verified"), "false") | (Some("false_alarm"), "real"));
                            span class=(if disagrees { "given disagrees" } else { "given" }) {
                                "Operator: " (if outcome == "real" { "real" } else { "false" })
                                @if disagrees { " (disagrees with the verdict)" }
                            }
                        }
                        None => {
                            form method="post" action=(format!("/console/feedback/{id}")) {
                                button.real name="outcome" value="real" { "Real" }
                                button.falsebtn name="outcome" value="false" { "False" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `2026-11-21 18:47:10 UTC` from a stored RFC 3339 time.
fn short_time(text: &str) -> String {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc).format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| text.to_owned())
}

const STYLE: &str = r#"
:root { color-scheme: dark; --bg:#0f1216; --card:#1a1f26; --line:#2a313b; --text:#e6e9ee; --dim:#9aa4b1;
  --red:#ff5a52; --green:#3ecf72; --amber:#f3b33d; --blue:#5aa9ff; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--text); font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { position:sticky; top:0; z-index:1; background:#0b0e12; border-bottom:1px solid var(--line); padding:10px 16px; display:flex; flex-wrap:wrap; align-items:center; gap:8px 20px; }
h1 { font-size:18px; margin:0; } h1 .site { color:var(--dim); font-weight:400; margin-left:10px; }
h2 { font-size:16px; margin:18px 0 10px; } h2 .count { color:var(--dim); font-weight:400; font-size:14px; }
h3 { margin:0 0 4px; font-size:16px; }
main { padding:0 16px 24px; max-width:1400px; margin:auto; }
ul.status { list-style:none; display:flex; flex-wrap:wrap; gap:6px; margin:0; padding:0; }
ul.status li { padding:3px 10px; border-radius:12px; font-size:13px; background:var(--card); border:1px solid var(--line); }
ul.status li.ok::before, ul.status li.warn::before, ul.status li.bad::before { content:"●"; margin-right:6px; }
ul.status li.ok::before { color:var(--green); } ul.status li.warn::before { color:var(--amber); } ul.status li.bad { color:var(--red); border-color:var(--red); } ul.status li.bad::before { color:var(--red); }
.cameras { display:grid; grid-template-columns:repeat(auto-fill, minmax(280px, 1fr)); gap:12px; }
article.camera { background:var(--card); border:1px solid var(--line); border-radius:8px; overflow:hidden; }
article.camera img { display:block; width:100%; aspect-ratio:16/9; object-fit:cover; background:#000; }
article.camera .body { padding:10px 12px; }
.stream { color:var(--dim); font-size:13px; margin:3px 0; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
.badge.online { background:#153d24; color:var(--green); } .badge.offline { background:#4a1a18; color:var(--red); } .badge.warn { background:#4a3a12; color:var(--amber); }
.error { color:var(--red); font-size:13px; } .zones { color:var(--dim); font-size:13px; }
button { font:inherit; border-radius:6px; border:1px solid var(--line); background:#232a33; color:var(--text); padding:6px 14px; min-height:36px; cursor:pointer; }
button.test { margin-top:8px; border-color:var(--blue); color:var(--blue); }
.alarms { display:flex; flex-direction:column; gap:8px; }
article.alarm { display:flex; gap:12px; background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px; align-items:flex-start; }
article.alarm .thumb img, article.alarm .thumb.none { width:200px; aspect-ratio:16/9; object-fit:cover; border-radius:4px; display:block; background:#000; }
article.alarm .thumb.none { display:flex; align-items:center; justify-content:center; color:var(--dim); font-size:13px; }
article.alarm .body { flex:1; min-width:0; }
.verdict { display:inline-block; padding:2px 10px; border-radius:4px; font-weight:700; font-size:13px; letter-spacing:.03em; }
.verdict.verified { background:var(--red); color:#fff; } .verdict.false { background:#24452f; color:var(--green); }
.verdict.unverifiable { background:var(--amber); color:#000; } .verdict.pending { background:#23384f; color:var(--blue); }
.cause { color:var(--amber); font-size:.85em; text-transform:uppercase; letter-spacing:.03em; } p.causes { margin:.2em 0 .6em; }
.time { color:var(--dim); font-size:13px; } .reason { margin:4px 0; } .meta { color:var(--dim); font-size:13px; }
.meta a, .links a { color:var(--blue); } .warnText { color:var(--amber); }
.feedback { margin-top:6px; } .feedback form { display:flex; gap:8px; }
button.real { border-color:var(--red); color:var(--red); } button.falsebtn { border-color:var(--green); color:var(--green); }
.given { color:var(--dim); font-size:13px; } .given.disagrees { color:var(--amber); font-weight:600; } .empty, .links { color:var(--dim); }
@media (max-width: 640px) {
  article.alarm { flex-direction:column; } article.alarm .thumb img, article.alarm .thumb.none { width:100%; }
  header { padding:8px 10px; } main { padding:0 10px 20px; }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_percent_encode_ids() {
        let alarm = AlarmSummary {
            alarm_id: "door 1?x=50%&y".into(),
            camera: "entrance".into(),
            alarm_time: "2026-12-06T00:00:00Z".into(),
            received: "2026-12-06T00:00:00Z".into(),
            source: None,
            verdict: None,
            cause: None,
            reason: None,
            latency_ms: None,
            delivered: None,
            has_evidence: true,
            has_clip: true,
            feedback: None,
        };
        let html = alarm_row(&alarm).into_string();
        for wanted in [
            "href=\"/api/alarms/door%201%3Fx%3D50%25%26y\"",
            "href=\"/api/alarms/door%201%3Fx%3D50%25%26y/clip.mp4\"",
            "src=\"/api/alarms/door%201%3Fx%3D50%25%26y/evidence.jpg\"",
            "action=\"/console/feedback/door%201%3Fx%3D50%25%26y\"",
        ] {
            assert!(html.contains(wanted), "{wanted} not in {html}");
        }
        assert_eq!(segment("cam-1_a.b~"), "cam-1_a.b~");
        assert_eq!(segment("caméra"), "cam%C3%A9ra");
    }
}
