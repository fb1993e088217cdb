//! The HTTP server against a hostile web, with the real service (broker, RTSP camera, model) and
//! real clients: reqwest sending what a browser sends (same-origin forms pass, cross-site posts
//! with the Basic credentials get 403), raw sockets for foreign `Host` headers, half-sent and
//! drip-fed requests and a full connection table, and headless Chromium submitting a cross-site
//! form from a page of its own.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use alarm_verifier::tools::demo::free_port;
use base64::Engine;
use common::*;

const TOKEN: &str = "web-s3cret-5150";
/// `[http] header_timeout_s` in this test.
const HEADER_TIMEOUT: Duration = Duration::from_millis(1500);
/// `[http] request_timeout_s` in this test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_CONNECTIONS: usize = 6;
/// An alarm id with what a path or a query would otherwise take apart.
const ODD_ID: &str = "door 1?x=50%&y";

fn basic() -> String {
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("operator:{TOKEN}"));
    format!("Basic {pair}")
}

struct Web {
    client: reqwest::Client,
    base: String,
    port: u16,
}

impl Web {
    /// POSTs `body` with the Basic credentials and the given extra headers.
    async fn post(&self, path: &str, headers: &[(&str, &str)], content_type: &str, body: &str) -> (u16, String) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("Authorization", basic())
            .header("Content-Type", content_type)
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("POST");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header("Authorization", basic())
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// The headers a browser sends with a form posted from this server's own page.
    fn own_origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Sends `bytes` on a fresh connection and returns the reply, read until the server closes.
fn raw_exchange(port: u16, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until the server closes the connection; the time that took, or None if it did not
/// within 10 s.
fn time_to_close(stream: &mut TcpStream, since: Instant) -> Option<Duration> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(since.elapsed()),
        }
    }
}

fn status_line(reply: &str) -> &str {
    reply.lines().next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_foreign_hosts_and_slow_clients_are_refused() {
    let port = free_port().expect("port");
    let extra = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\nheader_timeout_s = {}\nrequest_timeout_s = {}\nmax_connections = {MAX_CONNECTIONS}\n",
        HEADER_TIMEOUT.as_secs_f64(),
        REQUEST_TIMEOUT.as_secs_f64()
    );
    let mut site = Site::start(&[("entrance", "vtest.mp4")], &extra).await;
    let web = Web {
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        base: format!("http://127.0.0.1:{port}"),
        port,
    };
    let own = web.own_origin();
    let json = "application/json";
    let form = "application/x-www-form-urlencoded";

    // A webhook without browser headers (an NVR, curl) is taken.
    let (status, body) = web
        .post("/api/alarms/entrance", &[], json, r#"{"alarm_id":"web-1"}"#)
        .await;
    assert_eq!(status, 202, "{body}");
    // So is a same-origin post, as the browser sends it, with an id that needs encoding in links.
    let same_origin = [("Origin", own.as_str()), ("Sec-Fetch-Site", "same-origin")];
    let (status, body) = web
        .post(
            "/api/alarms/entrance",
            &same_origin,
            json,
            &serde_json::json!({ "alarm_id": ODD_ID }).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    site.verdict(ODD_ID, Duration::from_secs(30)).await;

    // Cross-site posts carry the operator's Basic credentials, as a browser would, and get 403 on
    // every state-changing route, whatever the method.
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    let cross_site: [&[(&str, &str)]; 7] = [
        &[("Origin", "http://evil.example")],
        &[("Origin", "http://evil.example"), ("Sec-Fetch-Site", "cross-site")],
        &[("Sec-Fetch-Site", "cross-site")],
        &[("Sec-Fetch-Site", "same-site")],
        &[("Origin", "null")],
        &[("Origin", other_port.as_str())],
        &[("Origin", "http://127.0.0.1.evil.example")],
    ];
    let routes = [
        ("/api/alarms/entrance", json, r#"{"alarm_id":"forged-1"}"#),
        (
            "/api/alarms/web-1/feedback",
            json,
            r#"{"outcome":"false","operator":"evil"}"#,
        ),
        ("/console/feedback/web-1", form, "outcome=false"),
        ("/console/test/entrance", form, ""),
    ];
    let mut refused = 0;
    for (path, content_type, body) in routes {
        for headers in cross_site {
            let (status, reply) = web.post(path, headers, content_type, body).await;
            assert_eq!(status, 403, "{path} {headers:?}: {reply}");
            let reply: serde_json::Value = serde_json::from_str(&reply).expect("a JSON error body");
            assert!(
                reply["error"].as_str().unwrap_or_default().contains("cross-site"),
                "{reply}"
            );
            refused += 1;
        }
    }
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE, reqwest::Method::PATCH] {
        let response = web
            .client
            .request(method.clone(), format!("{}/api/alarms/web-1", web.base))
            .header("Authorization", basic())
            .header("Origin", "http://evil.example")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 403, "{method}");
        refused += 1;
    }
    let (status, _) = web.get("/api/alarms/forged-1").await;
    assert_eq!(status, 404, "a cross-site alarm was recorded");
    let (_, record) = web.get("/api/alarms/web-1").await;
    let record: serde_json::Value = serde_json::from_str(&record).expect("record");
    assert!(record["feedback"].is_null(), "cross-site feedback was stored: {record}");
    let (_, list) = web.get("/api/alarms").await;
    let list: serde_json::Value = serde_json::from_str(&list).expect("list");
    assert_eq!(
        list["alarms"].as_array().map(Vec::len),
        Some(2),
        "a cross-site test alarm was raised: {list}"
    );
    println!("cross-site requests refused: {refused}");

    // The console's own form, as the browser posts it from the page, still works; its link for an
    // id with a space, '?', '%' and '&' resolves to that alarm.
    let (status, page) = web.get("/").await;
    assert_eq!(status, 200);
    let encoded = "door%201%3Fx%3D50%25%26y";
    let record_href = format!("href=\"/api/alarms/{encoded}\"");
    assert!(page.contains(&record_href), "no {record_href} in the console");
    let action = format!("action=\"/console/feedback/{encoded}\"");
    assert!(page.contains(&action), "no {action} in the console");
    let (status, record) = web.get(&format!("/api/alarms/{encoded}")).await;
    assert_eq!(status, 200, "{record}");
    let record: serde_json::Value = serde_json::from_str(&record).expect("record");
    assert_eq!(record["alarm_id"], ODD_ID);
    let (status, body) = web
        .post(
            &format!("/console/feedback/{encoded}"),
            &same_origin,
            form,
            "outcome=real",
        )
        .await;
    assert_eq!(status, 303, "{body}");
    let (_, record) = web.get(&format!("/api/alarms/{encoded}")).await;
    let record: serde_json::Value = serde_json::from_str(&record).expect("record");
    assert_eq!(record["feedback"]["outcome"], "real", "{record}");
    let (status, body) = web.post("/console/test/entrance", &same_origin, form, "").await;
    assert_eq!(status, 303, "{body}");

    // A real browser: a page elsewhere (here a file) submits a form to the webhook. Chromium sends
    // its own Origin and Sec-Fetch-Site, and the server's answer is what the browser shows.
    let evil = site.dir.path().join("evil.html");
    std::fs::write(
        &evil,
        format!(
            "<html><body><form id=f method=post enctype=text/plain action=\"http://127.0.0.1:{port}/api/alarms/entrance\">\
             <input name='{{\"alarm_id\":\"browser-forged\",\"x\":\"' value='\"}}'></form>\
             <script>document.getElementById('f').submit()</script></body></html>"
        ),
    )
    .expect("evil page");
    let dom = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", evil.display()))
        .output()
        .expect("chromium");
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains("cross-site request refused"), "Chromium showed:\n{dom}");
    let (status, _) = web.get("/api/alarms/browser-forged").await;
    assert_eq!(status, 404, "the browser's cross-site alarm was recorded");

    // A foreign Host (DNS rebinding) is refused on every path, reads included; addresses,
    // localhost and the machine's name are not.
    let mut foreign = 0;
    for host in [
        "evil.example:8080",
        "evil.example",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
    ] {
        for (method, path) in [
            ("GET", "/api/alarms"),
            ("GET", "/api/alarms/web-1/evidence.jpg"),
            ("GET", "/"),
            ("GET", "/healthz"),
            ("POST", "/api/alarms/entrance"),
        ] {
            let reply = raw_exchange(
                port,
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            );
            assert!(
                status_line(&reply).starts_with("HTTP/1.1 403"),
                "{method} {path} for {host}: {reply}"
            );
            assert!(reply.contains("http.hosts"), "{reply}");
            foreign += 1;
        }
    }
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut admitted = vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ];
    if !machine.trim().is_empty() {
        admitted.push(format!("{}:{port}", machine.trim()));
    }
    for host in admitted {
        let reply = raw_exchange(
            port,
            format!(
                "GET /api/alarms HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert!(status_line(&reply).starts_with("HTTP/1.1 200"), "{host}: {reply}");
    }
    println!("foreign hosts refused: {foreign}");

    // Slow clients: half a request line, headers drip-fed, an idle kept-alive connection, and a
    // body that never comes.
    let mut half = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    half.write_all(b"GET /api/al").expect("write");
    let closed = time_to_close(&mut half, Instant::now()).expect("a half-sent request is held open");
    assert!(
        closed >= HEADER_TIMEOUT.mul_f64(0.8) && closed < Duration::from_secs(5),
        "half a request line closed after {closed:?}"
    );
    println!("half-sent request closed after {closed:?}");
    let mut drip = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let started = Instant::now();
    let mut dripped = 0;
    for byte in format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ").bytes() {
        if drip.write_all(&[byte]).is_err() {
            break;
        }
        dripped += 1;
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let closed = time_to_close(&mut drip, started).expect("drip-fed headers held open");
    assert!(
        closed < Duration::from_secs(5),
        "drip-fed headers closed after {closed:?}"
    );
    assert!(dripped < 50, "the server took {dripped} drip-fed bytes");
    let mut idle = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .expect("write");
    let closed = time_to_close(&mut idle, Instant::now()).expect("an idle connection is held open");
    assert!(
        closed < Duration::from_secs(5),
        "idle keep-alive closed after {closed:?}"
    );
    let mut slow_body = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let started = Instant::now();
    slow_body
        .write_all(
            format!("POST /api/alarms/entrance HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{")
                .as_bytes(),
        )
        .expect("write");
    slow_body
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reply = [0u8; 512];
    let n = slow_body.read(&mut reply).unwrap_or(0);
    let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
    assert!(status_line(&reply).starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        started.elapsed() >= REQUEST_TIMEOUT.mul_f64(0.8) && started.elapsed() < REQUEST_TIMEOUT * 2,
        "408 after {:?}",
        started.elapsed()
    );

    // A full connection table: further clients wait for a free slot (the idle ones are closed by
    // the header timeout), and are then served.
    tokio::time::sleep(HEADER_TIMEOUT * 2).await;
    let hogs: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let reply = raw_exchange(
        port,
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let waited = started.elapsed();
    assert!(status_line(&reply).starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        waited >= HEADER_TIMEOUT.mul_f64(0.5) && waited < Duration::from_secs(5),
        "the client over the cap was answered after {waited:?}"
    );
    drop(hogs);
    println!("client over the connection cap answered after {waited:?}");

    // The service is still whole: an alarm after all that gets its verdict.
    let (status, body) = web
        .post("/api/alarms/entrance", &[], json, r#"{"alarm_id":"web-after"}"#)
        .await;
    assert_eq!(status, 202, "{body}");
    site.verdict("web-after", Duration::from_secs(30)).await;
    assert!(!site.service.log().contains(TOKEN), "the token leaked into the log");
}
