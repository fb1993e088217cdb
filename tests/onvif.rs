//! ONVIF camera events: the intake's `watch()` against the ONVIF camera double (tests/common/
//! onvif_camera.rs), with an in-test sink collecting alarms and link states; then the whole
//! service (mosquitto, RTSP footage, the model, the binary) with a camera whose motion events raise
//! alarms.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use alarm_verifier::config::{OnvifConfig, Secret};
use alarm_verifier::intake::{Accepted, AlarmSink, Arrival, EventLink, EventLinkState, Refused};
use common::onvif_camera::{CameraOptions, Misbehaviour, OnvifCamera};
use tokio_util::sync::CancellationToken;

const CAMERA: &str = "gate";

/// Alarms and link states, as the service would receive them.
#[derive(Default)]
struct Collector {
    arrivals: Mutex<Vec<Arrival>>,
    links: Mutex<Vec<EventLink>>,
}

impl AlarmSink for Collector {
    fn knows_camera(&self, camera: &str) -> bool {
        camera == CAMERA
    }

    fn accept(&self, arrival: Arrival) -> Result<Accepted, Refused> {
        let alarm_id = arrival.alarm.alarm_id.clone();
        self.arrivals.lock().expect("lock").push(arrival);
        Ok(Accepted {
            alarm_id,
            joined: false,
        })
    }

    fn report(&self, _origin: &str, _error: &str, _payload: &[u8]) {}

    fn event_link(&self, camera: &str, link: EventLink) {
        assert_eq!(camera, CAMERA);
        self.links.lock().expect("lock").push(link);
    }
}

impl Collector {
    fn alarms(&self) -> usize {
        self.arrivals.lock().expect("lock").len()
    }

    fn links(&self) -> Vec<EventLink> {
        self.links.lock().expect("lock").clone()
    }

    fn last_link(&self) -> Option<EventLink> {
        self.links().last().cloned()
    }

    /// Link states reported after the first `skip`.
    fn links_since(&self, skip: usize) -> Vec<EventLink> {
        self.links().into_iter().skip(skip).collect()
    }
}

/// `watch()` running in a task, with its own sink.
struct Watch {
    sink: Arc<Collector>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(camera: &OnvifCamera, password: &str, topics: &[&str]) -> Self {
        Self::start_with(onvif_config(camera, password, topics), password)
    }

    fn start_with(config: OnvifConfig, password: &str) -> Self {
        let sink = Arc::new(Collector::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(alarm_verifier::intake::onvif::watch(
            CAMERA.into(),
            config,
            Some(Secret::new(password)),
            Arc::clone(&sink) as Arc<dyn AlarmSink>,
            stop.clone(),
        ));
        Self { sink, stop, task }
    }

    /// Cancels `stop`; the task must end promptly (Unsubscribe is bounded to 2 s) and not panic.
    async fn stop(self) {
        self.stop.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(3), self.task).await;
        let joined = ended.expect("watch() should end within 3 s of stop");
        joined.expect("watch() should not panic");
    }

    async fn until_link(&self, state: EventLinkState, after: usize, what: &str) -> EventLink {
        let sink = Arc::clone(&self.sink);
        until(what, Duration::from_secs(20), || {
            sink.links_since(after).into_iter().find(|l| l.state == state)
        })
        .await
    }
}

fn onvif_config(camera: &OnvifCamera, password: &str, topics: &[&str]) -> OnvifConfig {
    let topics: Vec<String> = topics.iter().map(|t| format!("\"{t}\"")).collect();
    let toml = format!(
        "url = \"{}\"\nusername = \"admin\"\npassword = \"{password}\"\ntopics = [{}]\n",
        camera.url(),
        topics.join(", ")
    );
    toml::from_str(&toml).expect("onvif config")
}

/// Polls `check` until it gives a value (see [`common::wait_for`]); the failure shows the log.
async fn until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    common::wait_for(WithLogTail(what), timeout, async || check()).await
}

/// What a wait is for, followed by this binary's log as it is when the wait fails.
struct WithLogTail<'a>(&'a str);

impl std::fmt::Display for WithLogTail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; log:\n{}", self.0, log_tail())
    }
}

/// Everything the library logs in this test binary, to check that no password shows.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("alarm_verifier=trace"))
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

fn log_text() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn log_tail() -> String {
    let log = log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Gives the watcher time to handle what the camera delivered, before checking that it raised
/// nothing: the watcher reports no "handled" marker to wait on, so this is a bounded quiet wait.
async fn settle() {
    tokio::time::sleep(common::QUIET_WINDOW).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn motion_raises_one_alarm_per_rising_edge_while_renewing_and_unsubscribes_on_stop() {
    capture_logs();
    let camera = OnvifCamera::start(CameraOptions::default()).await;
    let password = CameraOptions::default().password;
    let watch = Watch::start(&camera, &password, &[]);
    watch.until_link(EventLinkState::Subscribed, 0, "subscribed").await;
    let links = watch.sink.links();
    assert_eq!(links[0].state, EventLinkState::Connecting, "{links:?}");
    assert_eq!(camera.counters().subscriptions, 1);

    // The Initialized message (IsMotion false) sets the state without an alarm.
    until("the Initialized message", Duration::from_secs(5), || {
        (camera.counters().delivered >= 1).then_some(())
    })
    .await;
    settle().await;
    assert_eq!(watch.sink.alarms(), 0);

    camera.emit_motion(true);
    until("the first alarm", Duration::from_secs(5), || {
        (watch.sink.alarms() == 1).then_some(())
    })
    .await;
    {
        let arrivals = watch.sink.arrivals.lock().expect("lock");
        let arrival = &arrivals[0];
        assert_eq!(arrival.alarm.camera, CAMERA);
        assert_eq!(arrival.alarm.source, "onvif:tns1:RuleEngine/CellMotionDetector/Motion");
        assert_eq!(arrival.origin, "onvif gate tns1:RuleEngine/CellMotionDetector/Motion");
        assert!(arrival.alarm.joinable);
        // The receive time on this box's clock, not the camera's (an hour ahead).
        assert!((arrival.alarm.time - chrono::Utc::now()).abs() < chrono::TimeDelta::seconds(5));
        let raw = String::from_utf8_lossy(&arrival.raw);
        assert!(raw.starts_with("<wsnt:NotificationMessage"), "{raw}");
        assert!(raw.contains(r#"Name="IsMotion" Value="true""#), "{raw}");
        assert!(raw.ends_with("</wsnt:NotificationMessage>"), "{raw}");
    }

    // true → true is no change.
    let delivered = camera.counters().delivered;
    camera.emit_motion(true);
    until("the repeated motion event", Duration::from_secs(5), || {
        (camera.counters().delivered > delivered).then_some(())
    })
    .await;
    settle().await;
    assert_eq!(watch.sink.alarms(), 1, "true→true must not raise a second alarm");

    camera.emit_motion(false);
    camera.emit_motion(true);
    until("the second alarm", Duration::from_secs(5), || {
        (watch.sink.alarms() == 2).then_some(())
    })
    .await;

    // The camera grants 6 s: renewed at about 3 s, the subscription outlives its first term.
    until("two renewals", Duration::from_secs(15), || {
        (camera.counters().renews >= 2).then_some(())
    })
    .await;
    camera.emit_motion(false);
    camera.emit_motion(true);
    until(
        "an alarm after the first termination time",
        Duration::from_secs(5),
        || (watch.sink.alarms() == 3).then_some(()),
    )
    .await;
    let counters = camera.counters();
    assert_eq!(counters.subscriptions, 1, "one subscription throughout: {counters:?}");
    assert_eq!(counters.refused, 0, "{:?}", camera.last_refusal());
    let states: Vec<EventLinkState> = watch.sink.links().iter().map(|l| l.state).collect();
    assert_eq!(states, [EventLinkState::Connecting, EventLinkState::Subscribed]);

    watch.stop().await;
    assert_eq!(camera.counters().unsubscribes, 1, "Unsubscribe on stop");
    assert!(!log_text().contains(&password), "the password is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_naming_not_authorized_and_never_shows_a_password() {
    capture_logs();
    let camera = OnvifCamera::start(CameraOptions::default()).await;
    let wrong = "Wrong-Secret-4711";
    let watch = Watch::start(&camera, wrong, &[]);
    let failed = watch.until_link(EventLinkState::Failed, 0, "failed").await;
    let error = failed.error.clone().unwrap_or_default();
    assert!(error.contains("ter:NotAuthorized"), "{error}");
    assert!(error.contains("camera.onvif.username and password"), "{error}");
    assert_eq!(camera.counters().subscriptions, 0);
    assert!(camera.counters().refused >= 1);

    // It goes on trying (backoff 1 s, 2 s) without repeating the same failure.
    until("a retry", Duration::from_secs(10), || {
        (camera.counters().refused >= 3).then_some(())
    })
    .await;
    let links = watch.sink.links();
    let failures = links.iter().filter(|l| l.state == EventLinkState::Failed).count();
    assert_eq!(failures, 1, "the same failure reported again: {links:?}");
    let config = onvif_config(&camera, wrong, &[]);
    let shown = format!("{links:?} {config:?} {}", log_text());
    assert!(!shown.contains(wrong), "the password shows: {shown}");
    assert!(!shown.contains(&CameraOptions::default().password));
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_goes_away_and_comes_back_is_subscribed_again() {
    capture_logs();
    let mut camera = OnvifCamera::start(CameraOptions::default()).await;
    let watch = Watch::start(&camera, &CameraOptions::default().password, &[]);
    watch.until_link(EventLinkState::Subscribed, 0, "subscribed").await;
    camera.emit_motion(true);
    until("the first alarm", Duration::from_secs(5), || {
        (watch.sink.alarms() == 1).then_some(())
    })
    .await;

    camera.stop().await;
    let failed = watch.until_link(EventLinkState::Failed, 0, "failed").await;
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains(&format!("127.0.0.1:{}", camera.port())),
        "the error names the address: {error}"
    );
    let seen = watch.sink.links().len();
    let unreachable = until(
        "the retry to report the camera unreachable",
        Duration::from_secs(10),
        || {
            let error = watch.sink.last_link().and_then(|l| l.error)?;
            error.contains("cannot reach").then_some(error)
        },
    )
    .await;
    assert!(
        unreachable.contains("cannot reach") && unreachable.contains("connection refused"),
        "{unreachable}"
    );

    camera.restart().await;
    watch
        .until_link(EventLinkState::Subscribed, seen, "subscribed again")
        .await;
    assert_eq!(camera.counters().subscriptions, 2);
    camera.emit_motion(false);
    camera.emit_motion(true);
    until("an alarm after the comeback", Duration::from_secs(5), || {
        (watch.sink.alarms() == 2).then_some(())
    })
    .await;
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_subscription_is_made_again() {
    capture_logs();
    let camera = OnvifCamera::start(CameraOptions::default()).await;
    let watch = Watch::start(&camera, &CameraOptions::default().password, &[]);
    watch.until_link(EventLinkState::Subscribed, 0, "subscribed").await;
    camera.expire_subscriptions();
    let failed = watch.until_link(EventLinkState::Failed, 0, "failed").await;
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("ResourceUnknownFault") && error.contains("expired"),
        "{error}"
    );
    let seen = watch.sink.links().len();
    watch
        .until_link(EventLinkState::Subscribed, seen, "subscribed again")
        .await;
    assert_eq!(camera.counters().subscriptions, 2);
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_services_finds_the_event_service_when_get_capabilities_is_not_supported() {
    capture_logs();
    let camera = OnvifCamera::start(CameraOptions::default()).await;
    camera.without_get_capabilities();
    let watch = Watch::start(&camera, &CameraOptions::default().password, &[]);
    watch.until_link(EventLinkState::Subscribed, 0, "subscribed").await;
    let counters = camera.counters();
    assert!(
        counters.get_capabilities >= 1 && counters.get_services >= 1,
        "{counters:?}"
    );
    camera.emit_motion(true);
    until("an alarm", Duration::from_secs(5), || {
        (watch.sink.alarms() == 1).then_some(())
    })
    .await;
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_replies_fail_clearly_and_the_link_recovers() {
    capture_logs();
    let camera = OnvifCamera::start(CameraOptions::default()).await;
    let password = CameraOptions::default().password;
    let cases = [
        (
            "PullMessages",
            Misbehaviour::Garbage,
            "PullMessages: the camera's reply is not valid XML",
        ),
        ("PullMessages", Misbehaviour::Truncated, "(truncated)"),
        (
            "CreatePullPointSubscription",
            Misbehaviour::Huge,
            "CreatePullPointSubscription: the camera's reply is larger than 1048576 bytes",
        ),
        (
            "*",
            Misbehaviour::HtmlError,
            "GetSystemDateAndTime: the camera answered HTTP 500 Internal Server Error: <html>",
        ),
    ];
    for (operation, how, expected) in cases {
        camera.misbehave(operation, Some(how));
        let watch = Watch::start(&camera, &password, &[]);
        let failed = watch
            .until_link(EventLinkState::Failed, 0, &format!("{how:?} to fail"))
            .await;
        let error = failed.error.unwrap_or_default();
        assert!(error.contains(expected), "{how:?}: expected {expected:?} in {error:?}");
        let seen = watch.sink.links().len();
        camera.misbehave(operation, None);
        watch
            .until_link(EventLinkState::Subscribed, seen, &format!("recovery after {how:?}"))
            .await;
        watch.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_topics_raise_alarms_too() {
    capture_logs();
    let camera = OnvifCamera::start(CameraOptions::default()).await;
    // The double's motion topic named as a technician might, under another prefix: compared by
    // path, the built-in rule and this one are the same topic, and one change raises one alarm.
    let watch = Watch::start(
        &camera,
        &CameraOptions::default().password,
        &["acme:RuleEngine/CellMotionDetector/Motion"],
    );
    watch.until_link(EventLinkState::Subscribed, 0, "subscribed").await;
    camera.emit_motion(true);
    until("an alarm", Duration::from_secs(5), || {
        (watch.sink.alarms() == 1).then_some(())
    })
    .await;
    settle().await;
    assert_eq!(watch.sink.alarms(), 1);
    watch.stop().await;
}

/// The double's clock check is what makes the tests above prove the client's clock correction:
/// a `Created` from our own clock (an hour behind the camera's) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_double_refuses_credentials_created_off_its_clock() {
    use base64::Engine as _;
    use sha1::Digest as _;
    let camera = OnvifCamera::start(CameraOptions::default()).await;
    let options = CameraOptions::default();
    let client = reqwest::Client::new();
    let call = |created: chrono::DateTime<chrono::Utc>| {
        let nonce = uuid::Uuid::new_v4().into_bytes();
        let created = created.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let mut sha1 = sha1::Sha1::new();
        sha1.update(nonce);
        sha1.update(created.as_bytes());
        sha1.update(options.password.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = format!(
            r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://www.w3.org/2005/08/addressing"
  xmlns:tds="http://www.onvif.org/ver10/device/wsdl"
  xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
  xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd">
<s:Header><wsa:Action>http://www.onvif.org/ver10/device/wsdl/GetCapabilities</wsa:Action>
<wsse:Security><wsse:UsernameToken><wsse:Username>{}</wsse:Username>
<wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest">{}</wsse:Password>
<wsse:Nonce>{}</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security></s:Header>
<s:Body><tds:GetCapabilities><tds:Category>Events</tds:Category></tds:GetCapabilities></s:Body></s:Envelope>"#,
            options.username,
            b64.encode(sha1.finalize()),
            b64.encode(nonce),
        );
        client
            .post(camera.url())
            .header("content-type", "application/soap+xml; charset=utf-8")
            .body(body)
            .send()
    };
    let ours = call(chrono::Utc::now()).await.expect("reply");
    assert_eq!(ours.status(), 400);
    assert!(ours.text().await.expect("body").contains("ter:NotAuthorized"));
    assert!(
        camera
            .last_refusal()
            .is_some_and(|why| why.contains("off the camera's clock")),
        "{:?}",
        camera.last_refusal()
    );
    let cameras = call(chrono::Utc::now() + options.clock_skew).await.expect("reply");
    assert_eq!(cameras.status(), 200);
    assert!(is_capabilities_reply(&cameras.text().await.expect("body")));
}

fn is_capabilities_reply(reply: &str) -> bool {
    reply.contains("GetCapabilitiesResponse") && reply.contains("/onvif/events")
}

// ---------------------------------------------------------------------------------------------
// The whole service

/// The `[camera.onvif]` table for a camera watched through `camera`.
fn onvif_table(camera: &OnvifCamera, password: &str) -> String {
    format!(
        "[camera.onvif]\nurl = \"{}\"\nusername = \"admin\"\npassword = \"{password}\"\n",
        camera.url()
    )
}

/// Waits for `camera`'s retained state message whose `onvif` part satisfies `wanted`.
async fn onvif_state(
    site: &mut common::Site,
    camera: &str,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, String) {
    let topic = common::topics().camera_state(camera);
    let matches =
        |payload: &[u8]| serde_json::from_slice::<serde_json::Value>(payload).is_ok_and(|v| wanted(&v["onvif"]));
    let msg = site
        .probe
        .next(|m| m.topic == topic && matches(&m.payload), Duration::from_secs(40))
        .await
        .unwrap_or_else(|| panic!("{camera}'s ONVIF link never {what}; log:\n{}", site.service.log()));
    let text = String::from_utf8_lossy(&msg.payload).into_owned();
    (serde_json::from_str(&text).expect("state JSON"), text)
}

fn since(link: &serde_json::Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = link["since"].as_str()?;
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.to_utc())
}

/// Waits for the next verdict on `camera`.
async fn verdict_on(site: &mut common::Site, camera: &str) -> alarm_verifier::analysis::verdict::VerdictDocument {
    let verdicts = format!("{}/verdicts/", common::PREFIX);
    let wanted = format!("\"camera\":\"{camera}\"");
    let msg = site
        .probe
        .next(
            |m| m.topic.starts_with(&verdicts) && String::from_utf8_lossy(&m.payload).contains(&wanted),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|| panic!("no verdict for {camera}; log:\n{}", site.service.log()));
    serde_json::from_slice(&msg.payload).expect("v1 verdict")
}

/// The service logged `alarm_id` as an alarm it created from an ONVIF event.
fn created_from_onvif(site: &common::Site, alarm_id: &str) -> bool {
    common::without_colours(&site.service.log()).lines().any(|line| {
        line.contains("alarm received")
            && line.contains(&format!("alarm_id={alarm_id}"))
            && line.contains("source=onvif:tns1:RuleEngine/CellMotionDetector/Motion")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_motion_gets_a_verdict_and_a_camera_that_vanishes_is_subscribed_again() {
    let mut double = OnvifCamera::start(CameraOptions::default()).await;
    let table = onvif_table(&double, &CameraOptions::default().password);
    let mut site =
        common::Site::start_configured(&[("entrance", "vtest.mp4", None)], "", &[("entrance", &table)]).await;
    onvif_state(&mut site, "entrance", "subscribed", |o| o["state"] == "subscribed").await;
    site.let_buffers_fill().await;

    let emitted = std::time::Instant::now();
    double.emit_motion(true);
    let verdict = verdict_on(&mut site, "entrance").await;
    let event_to_verdict = emitted.elapsed();
    println!(
        "ONVIF event → verdict: {} ms (verdict latency_ms {}, {:?})",
        event_to_verdict.as_millis(),
        verdict.latency_ms,
        verdict.verdict
    );
    assert_eq!(
        verdict.verdict,
        alarm_verifier::analysis::verdict::VerdictKind::Verified,
        "{verdict:?}"
    );
    assert!(
        created_from_onvif(&site, &verdict.alarm_id),
        "the verdict's alarm {} is not one the service created from the event; log:\n{}",
        verdict.alarm_id,
        site.service.log()
    );
    assert!(event_to_verdict < Duration::from_secs(15), "{event_to_verdict:?}");

    // The camera goes away: the state says so, with the address; it comes back: subscribed again.
    double.stop().await;
    let (state, text) = onvif_state(&mut site, "entrance", "failed", |o| o["state"] == "failed").await;
    assert!(text.contains(&format!("127.0.0.1:{}", double.port())), "{text}");
    assert_eq!(state["state"], "online", "the video goes on: {text}");
    // State messages repeat the link with every stream change: the one wanted is newer.
    let failed_since = since(&state["onvif"]);
    double.restart().await;
    onvif_state(&mut site, "entrance", "subscribed again", |o| {
        o["state"] == "subscribed" && since(o) > failed_since
    })
    .await;
    assert_eq!(double.counters().subscriptions, 2);
    double.emit_motion(false);
    double.emit_motion(true);
    let again = verdict_on(&mut site, "entrance").await;
    assert_ne!(again.alarm_id, verdict.alarm_id);
    assert!(created_from_onvif(&site, &again.alarm_id), "{again:?}");

    // Shutdown lets the pull point go.
    let status = site.service.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        site.service.log()
    );
    assert_eq!(double.counters().unsubscribes, 1, "log:\n{}", site.service.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_onvif_password_shows_in_the_camera_state_and_other_alarms_are_answered() {
    let double = OnvifCamera::start(CameraOptions::default()).await;
    let wrong = "Wrong-Onvif-Pass-0815";
    let table = onvif_table(&double, wrong);
    let mut site =
        common::Site::start_configured(&[("entrance", "vtest.mp4", None)], "", &[("entrance", &table)]).await;
    let (state, text) = onvif_state(&mut site, "entrance", "failed", |o| o["state"] == "failed").await;
    let reason = state["onvif"]["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("ter:NotAuthorized") && reason.contains("camera.onvif.username and password"),
        "{text}"
    );
    assert!(!text.contains(wrong), "the password is in the state: {text}");

    site.let_buffers_fill().await;
    site.raise("entrance", "while-onvif-fails").await;
    let verdict = site.verdict("while-onvif-fails", Duration::from_secs(30)).await;
    assert_eq!(
        verdict.verdict,
        alarm_verifier::analysis::verdict::VerdictKind::Verified,
        "{verdict:?}"
    );
    assert!(!site.service.log().contains(wrong), "the password is in the log");
}

/// `[camera.onvif]` naming the camera by `host` (another name for the double's 127.0.0.1).
fn onvif_config_on(camera: &OnvifCamera, host: &str, allow_other_hosts: bool) -> OnvifConfig {
    let toml = format!(
        "url = \"{}\"\nusername = \"admin\"\npassword = \"{}\"\nallow_other_hosts = {allow_other_hosts}\n",
        camera.url_on(host),
        CameraOptions::default().password
    );
    toml::from_str(&toml).expect("onvif config")
}

/// Addresses the camera gives on another host than the configured one are refused before any
/// call goes there, and the link says which address and which rule; `allow_other_hosts` lets
/// them through. The double is configured as `localhost` and names `127.0.0.1`: the same
/// machine, so that with the key set the whole chain works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_addresses_on_another_host_are_refused_unless_allowed() {
    capture_logs();
    let password = CameraOptions::default().password;

    // The event service (XAddr of GetCapabilities) on another host: no subscription is asked for.
    let camera = OnvifCamera::start(CameraOptions::default()).await;
    let watch = Watch::start_with(onvif_config_on(&camera, "localhost", false), &password);
    let failed = watch.until_link(EventLinkState::Failed, 0, "the XAddr refused").await;
    let error = failed.error.unwrap_or_default();
    let xaddr = format!("http://127.0.0.1:{}/onvif/events", camera.port());
    assert!(
        error.contains("GetCapabilities: refused the event service address (tt:XAddr)")
            && error.contains(&xaddr)
            && error.contains("(localhost)")
            && error.contains("camera.onvif.allow_other_hosts = true"),
        "{error}"
    );
    settle().await;
    assert_eq!(
        camera.counters().subscriptions,
        0,
        "a subscription was asked for at {xaddr}"
    );
    assert_eq!(
        camera.counters().get_services,
        0,
        "GetServices asked after a refused address"
    );
    watch.stop().await;

    // The event service on the configured host, the subscription address on another: nothing
    // is pulled from it.
    let camera = OnvifCamera::start(CameraOptions {
        events_host: "localhost".into(),
        ..CameraOptions::default()
    })
    .await;
    let watch = Watch::start_with(onvif_config_on(&camera, "localhost", false), &password);
    let failed = watch
        .until_link(EventLinkState::Failed, 0, "the subscription address refused")
        .await;
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("CreatePullPointSubscription: refused the subscription address (wsa:Address) http://127.0.0.1:")
            && error.contains("allow_other_hosts"),
        "{error}"
    );
    settle().await;
    assert!(camera.counters().subscriptions >= 1);
    let counters = camera.counters();
    assert_eq!((counters.pulls, counters.renews), (0, 0), "{counters:?}");
    watch.stop().await;

    // Allowed: subscribed on the other name, and motion raises its alarm.
    let watch = Watch::start_with(onvif_config_on(&camera, "localhost", true), &password);
    watch
        .until_link(EventLinkState::Subscribed, 0, "subscribed when allowed")
        .await;
    camera.emit_motion(true);
    until("an alarm", Duration::from_secs(5), || {
        (watch.sink.alarms() == 1).then_some(())
    })
    .await;
    watch.stop().await;
}

/// A camera that answers 307 to elsewhere: the request (its WS-Security header with it) is not
/// sent there; the link names the redirect; once the camera answers again, the link recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_the_credentials_stay_with_the_camera() {
    capture_logs();
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let elsewhere_port = elsewhere.local_addr().expect("address").port();
    let visits = Arc::new(Mutex::new(Vec::<u8>::new()));
    let seen = Arc::clone(&visits);
    let listener = tokio::spawn(async move {
        while let Ok((mut stream, _)) = elsewhere.accept().await {
            use tokio::io::AsyncReadExt as _;
            let mut buf = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            seen.lock()
                .expect("lock")
                .extend_from_slice(format!("connection: {n} bytes\n").as_bytes());
            seen.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    let camera = OnvifCamera::start(CameraOptions::default()).await;
    let password = CameraOptions::default().password;
    camera.misbehave("GetCapabilities", Some(Misbehaviour::RedirectTo(elsewhere_port)));
    let watch = Watch::start(&camera, &password, &[]);
    let failed = watch
        .until_link(EventLinkState::Failed, 0, "the redirect refused")
        .await;
    let error = failed.error.unwrap_or_default();
    let location = format!("http://127.0.0.1:{elsewhere_port}/onvif/device_service");
    assert!(
        error.contains("GetCapabilities: the camera answered HTTP 307 Temporary Redirect")
            && error.contains(&location)
            && error.contains("redirects are not followed"),
        "{error}"
    );
    // A retry (after the 1 s backoff) is redirected too, and goes nowhere either.
    until("a second redirected GetCapabilities", Duration::from_secs(10), || {
        (camera.counters().get_capabilities >= 2).then_some(())
    })
    .await;
    settle().await;
    let visits_text = String::from_utf8_lossy(&visits.lock().expect("lock")).into_owned();
    assert!(visits_text.is_empty(), "the redirect was followed: {visits_text}");
    assert_eq!(camera.counters().get_services, 0, "GetServices asked after a redirect");
    let seen = watch.sink.links().len();
    camera.misbehave("GetCapabilities", None);
    watch
        .until_link(EventLinkState::Subscribed, seen, "recovery after the redirect")
        .await;
    watch.stop().await;
    listener.abort();
}
