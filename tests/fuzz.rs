//! The fuzzing campaign (issue #21): every door hostile input comes through, driven with
//! proptest-generated input. Each target checks that nothing panics and that whatever is accepted
//! obeys the one id rule, so every MQTT topic built from it is one a broker takes.
//!
//! CI runs 2,000 cases per target (a few seconds each, in release). A long campaign sets
//! `PROPTEST_CASES`, e.g. `PROPTEST_CASES=200000 cargo test --release --test fuzz`. A failing case
//! proptest finds is written to `tests/fuzz.proptest-regressions` and replayed first on every run;
//! the cases found so far are also the explicit tests at the end of this file.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use alarm_verifier::analysis::verdict::VerdictDocument;
use alarm_verifier::config::Config;
use alarm_verifier::delivery::publish::ErrorReport;
use alarm_verifier::intake::onvif::fuzz::read_reply;
use alarm_verifier::intake::smtp::Server;
use alarm_verifier::intake::{Accepted, AlarmSink, Arrival, EventLink, Refused, alarm};
use alarm_verifier::mqtt::Topics;
use alarm_verifier::support::ids::{MAX_ID_BYTES, check_id};
use base64::Engine;
use chrono::{TimeDelta, Utc};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const EXAMPLE_CONFIG: &str = include_str!("../config/example.toml");

/// Cases per target: `PROPTEST_CASES` when set (a long campaign), else CI's count.
fn cases(ci: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = ci;
    }
    config.max_shrink_iters = 4096;
    config
}

// ---------------------------------------------------------------------------------------------
// The properties

/// A topic a broker publishes to: MQTT 3.1.1 §4.7 and mosquitto's own check (no NUL, no control
/// character, no wildcard, at most 65,535 bytes of UTF-8).
fn assert_publishable(topic: &str) {
    assert!(!topic.is_empty(), "empty topic");
    assert!(topic.len() <= 65_535, "topic of {} bytes", topic.len());
    assert!(!topic.contains(['+', '#']), "wildcard in topic {topic:?}");
    assert!(
        !topic.chars().any(char::is_control),
        "control character in topic {topic:?}"
    );
    assert!(!topic.starts_with('$'), "topic {topic:?} is in the broker's $ space");
}

/// What the one id rule promises of an accepted id.
fn assert_id_rule(id: &str) {
    assert!(!id.trim().is_empty(), "blank id {id:?}");
    assert!(id.len() <= MAX_ID_BYTES, "id of {} bytes", id.len());
    assert!(!id.contains(['/', '+', '#']), "topic character in id {id:?}");
    for c in id.chars() {
        let code = c as u32;
        assert!(!c.is_control(), "control character U+{code:04X} in id {id:?}");
        assert!(
            !((0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE),
            "non-character U+{code:04X} in id {id:?}"
        );
        assert!(!matches!(code, 0x2028 | 0x2029), "line separator in id {id:?}");
    }
}

/// Every topic the service publishes about an alarm, a camera or a box with these ids.
fn assert_topics(topics: &Topics, camera: &str, alarm_id: &str) {
    let record_id = format!("{alarm_id}~{}", u32::MAX);
    for topic in [
        topics.alarm(camera),
        topics.verdict(camera),
        topics.camera_state(camera),
        topics.evidence(alarm_id),
        topics.evidence(&record_id),
        topics.feedback(alarm_id),
        topics.feedback(&record_id),
        topics.errors(),
        topics.status(),
        topics.box_roster(camera),
        topics.box_in_flight(camera),
        topics.box_taken(camera),
    ] {
        assert_publishable(&topic);
    }
    assert_eq!(topics.camera_of_alarm(&topics.alarm(camera)), Some(camera));
    assert_eq!(topics.alarm_of_feedback(&topics.feedback(alarm_id)), Some(alarm_id));
}

/// The verdict document and an error report about it are JSON that reads back the same ids.
fn assert_documents(alarm: &alarm::Alarm, payload: &[u8]) {
    let doc = VerdictDocument::unverifiable(
        alarm,
        "site",
        "model",
        alarm_verifier::analysis::verdict::Cause::NoVideo,
        "fuzz",
    );
    let json: serde_json::Value = serde_json::from_str(&doc.to_json()).expect("verdict JSON");
    assert_eq!(json["alarm_id"], alarm.alarm_id.as_str());
    assert_eq!(json["camera"], alarm.camera.as_str());
    let topic = format!("alarm-verifier/alarms/{}", alarm.camera);
    let report = ErrorReport::new(&topic, "fuzz", payload).about(&alarm.alarm_id, &alarm.record_id);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("error report JSON");
    assert_eq!(json["alarm_id"], alarm.alarm_id.as_str());
}

// ---------------------------------------------------------------------------------------------
// Generators

/// Characters a hostile sender would try: topic separators, controls, non-characters, line
/// separators, multi-byte letters, and plain ones.
fn nasty_char() -> BoxedStrategy<char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        2 => prop::char::range(' ', '~'),
        1 => prop::sample::select(vec![
            '/', '+', '#', '\0', '\n', '\r', '\t', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}',
            '\u{200b}', '\u{2028}', '\u{2029}', '\u{feff}', '\u{fdd0}', '\u{fdef}', '\u{fffe}',
            '\u{ffff}', '\u{1fffe}', '\u{10ffff}', 'ü', 'ß', '字', '🚨', '$', '~', '"', '\\', '%',
        ]),
        1 => any::<char>(),
    ]
    .boxed()
}

/// Ids of every length around the limits: short, near 128 bytes, and far over.
fn nasty_id() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(nasty_char(), 0..40).prop_map(String::from_iter),
        2 => prop::collection::vec(nasty_char(), 100..140).prop_map(String::from_iter),
        1 => (0usize..70_000, nasty_char()).prop_map(|(n, c)| format!("{}{c}", "x".repeat(n))),
    ]
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn alarm_time() -> impl Strategy<Value = String> {
    prop_oneof![
        (-7_200i64..7_200).prop_map(|s| (Utc::now() + TimeDelta::seconds(s)).to_rfc3339()),
        Just("2026-11-21T10:15:00Z".to_owned()),
        Just("9999-12-31T23:59:59+14:00".to_owned()),
        Just("0000-01-01T00:00:00-23:59".to_owned()),
        "[0-9T:+Z.-]{0,30}",
        prop::collection::vec(nasty_char(), 0..30).prop_map(String::from_iter),
    ]
}

/// JSON alarm bodies: well-formed ones with hostile fields, broken ones, and raw bytes.
fn alarm_body() -> impl Strategy<Value = Vec<u8>> {
    let field = |name: &'static str, value: BoxedStrategy<String>| {
        prop::option::of(value).prop_map(move |v| v.map(|v| format!("\"{name}\":{v}")))
    };
    let any_json = prop_oneof![
        Just("null".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("true".to_owned()),
    ];
    let structured = (
        field(
            "alarm_id",
            prop_oneof![4 => nasty_id().prop_map(|s| json_string(&s)), 1 => any_json.clone()].boxed(),
        ),
        field(
            "time",
            prop_oneof![4 => alarm_time().prop_map(|s| json_string(&s)), 1 => any_json.clone()].boxed(),
        ),
        field("source", nasty_id().prop_map(|s| json_string(&s)).boxed()),
        field("zone", any_json.boxed()),
        any::<bool>(),
    )
        .prop_map(|(a, t, s, z, duplicate)| {
            let mut fields: Vec<String> = [a.clone(), t, s, z].into_iter().flatten().collect();
            if duplicate && let Some(a) = a {
                // A repeated key: serde refuses it, and must not panic doing so.
                fields.push(a);
            }
            format!("{{{}}}", fields.join(",")).into_bytes()
        });
    prop_oneof![
        6 => structured,
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => (1usize..5_000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        1 => (1usize..400).prop_map(|depth| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)).into_bytes()),
        1 => prop::collection::vec(prop::sample::select(b" \t\r\n{}[]\":,\\0aeflnrstu".to_vec()), 0..200),
    ]
}

// ---------------------------------------------------------------------------------------------
// Target 1: the JSON alarm body (MQTT and HTTP)

proptest! {
    #![proptest_config(cases(2_000))]

    #[test]
    fn alarm_body_parser(camera in prop_oneof![3 => Just("gate".to_owned()), 1 => nasty_id()], body in alarm_body()) {
        let known = |c: &str| c == "gate";
        let now = Utc::now();
        if let Ok(alarm) = alarm::parse("mqtt", &camera, &body, known, now) {
            assert_id_rule(&alarm.alarm_id);
            assert_id_rule(&alarm.camera);
            prop_assert!((alarm.time - now).abs() <= alarm::MAX_CLOCK_SKEW);
            assert_topics(&Topics::new("alarm-verifier"), &alarm.camera, &alarm.alarm_id);
            assert_documents(&alarm, &body);
        }
    }

    /// MQTT: the camera comes from the topic the alarm arrived on.
    #[test]
    fn mqtt_alarm_topic(topic in prop::collection::vec(nasty_char(), 0..60).prop_map(String::from_iter)) {
        let topics = Topics::new("alarm-verifier");
        for topic in [topic.clone(), format!("alarm-verifier/alarms/{topic}")] {
            if let Some(camera) = topics.camera_of_alarm(&topic) {
                prop_assert!(!camera.contains('/'));
                if let Ok(alarm) = alarm::parse("mqtt", camera, b"{}", |c| check_id(c).is_ok(), Utc::now()) {
                    assert_id_rule(&alarm.camera);
                    assert_topics(&topics, &alarm.camera, &alarm.alarm_id);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Target 2: the verdict and topic builders

proptest! {
    #![proptest_config(cases(2_000))]

    #[test]
    fn id_rule_and_topic_builders(id in nasty_id(), camera in nasty_id(), payload in prop::collection::vec(any::<u8>(), 0..256)) {
        let accepted = check_id(&id).is_ok();
        if accepted {
            assert_id_rule(&id);
        }
        if accepted && check_id(&camera).is_ok() {
            assert_topics(&Topics::new("alarm-verifier"), &camera, &id);
            let alarm = alarm::Alarm::new(id.clone(), &camera, Utc::now(), "mqtt".into());
            assert_documents(&alarm, &payload);
        }
        // Whatever was refused, the error report about it is still JSON.
        let report = ErrorReport::new("alarm-verifier/alarms/x", &id, &payload);
        prop_assert!(serde_json::from_str::<serde_json::Value>(&report.to_json()).is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// Target 3: config loading (TOML text -> Config and its checks)

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A config of the example's shape with hostile names, or the example with one line mangled.
fn config_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        4 => nasty_id().prop_map(|s| toml_string(&s)),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
        1 => Just("nan".to_owned()),
        1 => Just("-inf".to_owned()),
        1 => Just("[]".to_owned()),
        1 => Just("{}".to_owned()),
        1 => Just("true".to_owned()),
    ];
    let structured = (
        nasty_id(),
        nasty_id(),
        nasty_id(),
        prop::collection::vec((nasty_id(), prop::option::of(nasty_id())), 0..3),
        0u32..70_000,
    )
        .prop_map(|(site, prefix, group, cameras, port)| {
            let mut text = format!(
                "site = {}\n[mqtt]\nport = {port}\ntopic_prefix = {}\nshare_group = {}\n",
                toml_string(&site),
                toml_string(&prefix),
                toml_string(&group)
            );
            for (id, email_match) in cameras {
                text += &format!(
                    "[[camera]]\nid = {}\nurl = \"rtsp://127.0.0.1:8554/x\"\n",
                    toml_string(&id)
                );
                if let Some(m) = email_match {
                    text += &format!("email_match = {}\n", toml_string(&m));
                }
            }
            text
        });
    let lines: Vec<&'static str> = EXAMPLE_CONFIG.lines().collect();
    let n = lines.len();
    let mangled = (0..n, value, prop::collection::vec(nasty_char(), 0..20)).prop_map(move |(i, value, noise)| {
        let mut out = lines.clone().into_iter().map(str::to_owned).collect::<Vec<_>>();
        let line = &mut out[i];
        match line.split_once('=') {
            Some((key, _)) => *line = format!("{key}= {value}"),
            None => line.extend(noise),
        }
        out.join("\n")
    });
    prop_oneof![3 => structured, 3 => mangled, 1 => ".{0,200}"]
}

proptest! {
    #![proptest_config(cases(2_000))]

    #[test]
    fn config_loading(text in config_text()) {
        if let Ok(config) = Config::parse(&text, "fuzz.toml") {
            assert_id_rule(&config.site);
            let topics = Topics::new(&config.mqtt.topic_prefix);
            let box_id = config.mqtt.box_id(&config.site);
            assert_publishable(&topics.box_roster(&box_id));
            if !config.mqtt.share_group.is_empty() {
                assert_id_rule(&config.mqtt.share_group);
            }
            for camera in &config.cameras {
                assert_id_rule(&camera.id);
                assert_topics(&topics, &camera.id, "a1");
            }
            assert_topics(&topics, "gate", "a1");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Target 4: the ONVIF reply parsers

const SOAP_NS: &str = r#"xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://www.w3.org/2005/08/addressing" xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2" xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tev="http://www.onvif.org/ver10/events/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:tns1="http://www.onvif.org/ver10/topics""#;

fn xml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(nasty_char(), 0..30).prop_map(String::from_iter),
        1 => Just("&amp;&lt;&#0;&#x110000;&#xD800;&unknown;&#9999999999;".to_owned()),
        1 => Just("<![CDATA[ ]]> <!-- c --> <?pi x?>".to_owned()),
        1 => Just("http://192.0.2.1/onvif/events".to_owned()),
        1 => Just("true".to_owned()),
        1 => Just("2026-11-21T10:15:00Z".to_owned()),
    ]
}

/// Replies of each operation with hostile text in their fields, and broken XML.
fn onvif_reply() -> impl Strategy<Value = String> {
    let element = |a: String, b: String, c: String| {
        vec![
            format!(
                "<tds:GetCapabilitiesResponse><tds:Capabilities><tt:Events><tt:XAddr>{a}</tt:XAddr></tt:Events></tds:Capabilities></tds:GetCapabilitiesResponse>"
            ),
            format!(
                "<tds:GetServicesResponse><tds:Service><tds:Namespace>http://www.onvif.org/ver10/events/wsdl</tds:Namespace><tds:XAddr>{a}</tds:XAddr></tds:Service></tds:GetServicesResponse>"
            ),
            format!(
                "<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference><wsa:Address>{a}</wsa:Address><wsa:ReferenceParameters><x:Id xmlns:x=\"urn:{b}\" a=\"{b}\">{c}</x:Id></wsa:ReferenceParameters></tev:SubscriptionReference><wsnt:CurrentTime>{b}</wsnt:CurrentTime><wsnt:TerminationTime>{c}</wsnt:TerminationTime></tev:CreatePullPointSubscriptionResponse>"
            ),
            format!(
                "<wsnt:RenewResponse><wsnt:TerminationTime>{a}</wsnt:TerminationTime><wsnt:CurrentTime>{b}</wsnt:CurrentTime></wsnt:RenewResponse>"
            ),
            format!(
                "<tev:PullMessagesResponse><tev:CurrentTime>{c}</tev:CurrentTime><wsnt:NotificationMessage><wsnt:Topic Dialect=\"http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet\">tns1:RuleEngine/CellMotionDetector/{a}</wsnt:Topic><wsnt:Message><tt:Message UtcTime=\"{b}\" PropertyOperation=\"{c}\"><tt:Source><tt:SimpleItem Name=\"{a}\" Value=\"{b}\"/></tt:Source><tt:Data><tt:SimpleItem Name=\"IsMotion\" Value=\"{c}\"/></tt:Data></tt:Message></wsnt:Message></wsnt:NotificationMessage></tev:PullMessagesResponse>"
            ),
            format!(
                "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:UTCDateTime><tt:Date><tt:Year>{a}</tt:Year><tt:Month>{b}</tt:Month><tt:Day>1</tt:Day></tt:Date><tt:Time><tt:Hour>{c}</tt:Hour><tt:Minute>0</tt:Minute><tt:Second>0</tt:Second></tt:Time></tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
            ),
            format!(
                "<env:Fault><env:Code><env:Value>{a}</env:Value><env:Subcode><env:Value>ter:{b}</env:Value></env:Subcode></env:Code><env:Reason><env:Text>{c}</env:Text></env:Reason></env:Fault>"
            ),
        ]
    };
    let well_formed = (0usize..7, xml_text(), xml_text(), xml_text())
        .prop_map(move |(i, a, b, c)| {
            let escape = |s: &str| quick_xml::escape::escape(s).into_owned();
            let (a, b, c) = if i % 2 == 0 {
                (escape(&a), escape(&b), escape(&c))
            } else {
                (a, b, c)
            };
            let body = element(a, b, c).swap_remove(i);
            format!(
                "<?xml version=\"1.0\"?><env:Envelope {SOAP_NS}><env:Header/><env:Body>{body}</env:Body></env:Envelope>"
            )
        })
        .boxed();
    let cut = (
        well_formed.clone(),
        any::<prop::sample::Index>(),
        prop::collection::vec(nasty_char(), 0..10),
    )
        .prop_map(|(text, at, noise)| {
            let mut at = at.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            format!("{}{}{}", &text[..at], String::from_iter(noise), &text[at..])
        });
    prop_oneof![
        4 => well_formed,
        3 => cut,
        1 => (1usize..3_000).prop_map(|depth| format!("<env:Envelope {SOAP_NS}><env:Body>{}", "<a>".repeat(depth))),
        1 => ".{0,300}",
    ]
}

proptest! {
    #![proptest_config(cases(2_000))]

    #[test]
    fn onvif_reply_parsers(text in onvif_reply(), topic in prop::option::of(nasty_id())) {
        let topics: Vec<String> = topic.into_iter().collect();
        let reading = read_reply(&text, &topics);
        for address in &reading.addresses {
            let url = url::Url::parse(address).expect("address was checked to be a URL");
            prop_assert!(matches!(url.scheme(), "http" | "https"));
        }
        prop_assert!(reading.watched.len() <= reading.notifications);
    }
}

// ---------------------------------------------------------------------------------------------
// Target 5: whole SMTP sessions against the real server (mailin + mail-parser as wired)

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics anywhere in the process: a session task's panic never reaches the test thread.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

#[derive(Default)]
struct Recorder {
    arrivals: Mutex<Vec<(String, String)>>,
    reports: AtomicUsize,
}

impl AlarmSink for Recorder {
    fn knows_camera(&self, camera: &str) -> bool {
        matches!(camera, "gate" | "yard")
    }
    fn accept(&self, arrival: Arrival) -> Result<Accepted, Refused> {
        let alarm = arrival.alarm;
        if let Ok(mut arrivals) = self.arrivals.lock() {
            arrivals.push((alarm.alarm_id.clone(), alarm.camera.clone()));
        }
        Ok(Accepted {
            alarm_id: alarm.alarm_id,
            joined: false,
        })
    }
    fn report(&self, _origin: &str, _error: &str, _payload: &[u8]) {
        self.reports.fetch_add(1, Ordering::SeqCst);
    }
    fn event_link(&self, _camera: &str, _link: EventLink) {}
}

struct SmtpUnderTest {
    runtime: tokio::runtime::Runtime,
    address: SocketAddr,
    sink: Arc<Recorder>,
    _stop: CancellationToken,
}

const SMTP_CONFIG: &str = r#"
[smtp]
listen = "127.0.0.1:0"
max_message_bytes = 4096

[[camera]]
id = "gate"
url = "rtsp://127.0.0.1:8554/gate"
email_match = "Motion at gate"

[[camera]]
id = "yard"
url = "rtsp://127.0.0.1:8554/yard"
"#;

/// One SMTP server for the whole target, as the service starts it.
fn smtp() -> &'static SmtpUnderTest {
    static SERVER: OnceLock<SmtpUnderTest> = OnceLock::new();
    SERVER.get_or_init(|| {
        let config = Config::parse(SMTP_CONFIG, "smtp.toml").expect("SMTP test config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let sink = Arc::new(Recorder::default());
        let stop = CancellationToken::new();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = Server::new(&config.smtp, None, &config.cameras, sink.clone());
        runtime.spawn(server.serve(listener, stop.clone()));
        SmtpUnderTest {
            runtime,
            address,
            sink,
            _stop: stop,
        }
    })
}

/// Sends `input` as one client, closes its side, and returns all the server said.
fn converse(input: &[u8]) -> Vec<u8> {
    let server = smtp();
    server.runtime.block_on(async {
        let mut stream = tokio::net::TcpStream::connect(server.address).await.expect("connect");
        let (mut reader, mut writer) = stream.split();
        let read = async {
            let mut replies = Vec::new();
            let _ = reader.read_to_end(&mut replies).await;
            replies
        };
        let write = async {
            let _ = writer.write_all(input).await;
            let _ = writer.shutdown().await;
        };
        let (replies, ()) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(read, write) })
            .await
            .expect("the SMTP server closes a session whose client has finished");
        replies
    })
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("gate@site.example".to_owned()),
        Just("YARD@site.example".to_owned()),
        Just("nvr@site.example".to_owned()),
        Just("@relay.example:gate@site".to_owned()),
        Just("gate%other@site".to_owned()),
        Just("".to_owned()),
        (nasty_id(), nasty_id()).prop_map(|(l, d)| format!("{l}@{d}")),
    ]
}

/// A mail: headers, a text body, maybe a JPEG attachment, with hostile text throughout.
fn mail() -> impl Strategy<Value = String> {
    let text = prop::collection::vec(nasty_char(), 0..80)
        .prop_map(String::from_iter)
        .boxed();
    (
        prop_oneof![Just("Motion at gate".to_owned()), text.clone()],
        text.clone(),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
        prop::sample::select(vec!["base64", "quoted-printable", "8bit", "x-unknown"]),
        text,
    )
        .prop_map(|(subject, body, jpeg, encoding, boundary)| {
            let boundary = boundary.replace(['\r', '\n'], "");
            let mut mail = format!("From: nvr@site\r\nSubject: {subject}\r\n");
            match jpeg {
                None => mail += &format!("Content-Transfer-Encoding: {encoding}\r\n\r\n{body}\r\n"),
                Some(jpeg) => {
                    let jpeg = base64::engine::general_purpose::STANDARD.encode(jpeg);
                    mail += &format!(
                        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
                         --{boundary}\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n{body}\r\n\
                         --{boundary}\r\nContent-Type: image/jpeg; name=\"a.jpg\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{jpeg}\r\n\
                         --{boundary}--\r\n"
                    );
                }
            }
            // Dot-stuffing as a client must do it; a hostile client may not, which the raw lines try.
            mail.replace("\r\n.", "\r\n..") + ".\r\n"
        })
}

/// One command line or a whole mail; hostile clients send anything.
fn smtp_input() -> impl Strategy<Value = Vec<u8>> {
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    prop_oneof![
        2 => prop::sample::select(vec!["EHLO nvr", "HELO nvr", "DATA", "RSET", "NOOP", "QUIT", "VRFY gate", "STARTTLS", "AUTH LOGIN", "HELP", "EXPN x", "ehlo", "MAIL", "RCPT"])
            .prop_map(|c| format!("{c}\r\n").into_bytes()),
        2 => address().prop_map(|a| format!("MAIL FROM:<{a}>\r\n").into_bytes()),
        3 => address().prop_map(|a| format!("RCPT TO:<{a}>\r\n").into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(move |b| format!("AUTH PLAIN {}\r\n", b64(b)).into_bytes()),
        3 => mail().prop_map(String::into_bytes),
        1 => prop::collection::vec(nasty_char(), 0..120).prop_map(|c| {
            let mut line = String::from_iter(c);
            line.push_str("\r\n");
            line.into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

fn smtp_session() -> impl Strategy<Value = Vec<u8>> {
    let opening = prop::sample::select(vec![
        "",
        "EHLO nvr\r\n",
        "EHLO nvr\r\nMAIL FROM:<nvr@site>\r\nRCPT TO:<gate@site>\r\nDATA\r\n",
        "HELO nvr\r\nMAIL FROM:<nvr@site>\r\nRCPT TO:<nvr@site>\r\nDATA\r\n",
    ]);
    (opening, prop::collection::vec(smtp_input(), 0..12), any::<bool>()).prop_map(|(opening, inputs, bare_lf)| {
        let mut session = opening.as_bytes().to_vec();
        for input in inputs {
            session.extend(input);
        }
        if bare_lf {
            // Some mailers end lines with a bare LF.
            session.retain(|b| *b != b'\r');
        }
        session
    })
}

/// Every reply line is `ddd text` or `ddd-text`, and the session opened with 220.
fn assert_smtp_replies(replies: &[u8]) {
    let text = String::from_utf8_lossy(replies);
    assert!(text.starts_with("220"), "no greeting: {text:?}");
    for line in text.split_terminator("\r\n") {
        let bytes = line.as_bytes();
        assert!(
            bytes.len() >= 3
                && bytes[..3].iter().all(u8::is_ascii_digit)
                && matches!(bytes.get(3), None | Some(b' ' | b'-')),
            "malformed reply line {line:?}"
        );
    }
}

proptest! {
    #![proptest_config(cases(2_000))]

    #[test]
    fn smtp_sessions(session in smtp_session()) {
        count_panics();
        let replies = converse(&session);
        assert_smtp_replies(&replies);
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a session panicked");
        let arrivals = std::mem::take(&mut *smtp().sink.arrivals.lock().expect("arrivals"));
        for (alarm_id, camera) in arrivals {
            assert_id_rule(&alarm_id);
            assert_id_rule(&camera);
            assert_topics(&Topics::new("alarm-verifier"), &camera, &alarm_id);
        }
    }
}

/// After the campaign's sessions (whichever ran first), a plain NVR mail is still taken.
#[test]
fn smtp_server_still_takes_a_good_mail() {
    count_panics();
    let replies = converse(
        b"EHLO nvr\r\nMAIL FROM:<nvr@site>\r\nRCPT TO:<gate@site>\r\nDATA\r\nSubject: alarm\r\n\r\nmotion\r\n.\r\nQUIT\r\n",
    );
    let text = String::from_utf8_lossy(&replies);
    assert!(text.contains("250 2.0.0 alarm accepted (gate: "), "{text}");
    assert!(text.contains("221"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Cases the campaign found, kept as regression tests

/// A topic prefix with a control character, a wildcard or over 65,535 bytes made every topic of the
/// service one the broker refuses; the config check now refuses it.
#[test]
fn config_refuses_a_prefix_no_broker_takes() {
    for prefix in ["a\u{1}b", "a\0", "site/\n", "a/+/b", "x#", "$SYS/x", "a//b", " /a"] {
        let text = format!("[mqtt]\ntopic_prefix = {}\n", toml_string(prefix));
        assert!(
            Config::parse(&text, "fuzz.toml").is_err(),
            "prefix {prefix:?} was accepted"
        );
    }
    let long = vec!["x".repeat(MAX_ID_BYTES); 600].join("/");
    let text = format!("[mqtt]\ntopic_prefix = {}\n", toml_string(&long));
    assert!(
        Config::parse(&text, "fuzz.toml").is_err(),
        "a prefix of {} bytes was accepted",
        long.len()
    );
    for prefix in ["alarm-verifier", "site-1/alarm verifier", "a/b/c"] {
        let text = format!("[mqtt]\ntopic_prefix = {}\n", toml_string(prefix));
        assert!(
            Config::parse(&text, "fuzz.toml").is_ok(),
            "prefix {prefix:?} was refused"
        );
    }
}
