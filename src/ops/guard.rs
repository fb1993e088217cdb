//! Which requests the HTTP server takes at all, before the token is looked at: the `Host` allow-list
//! (a page on an attacker's name that resolves to this box, DNS rebinding, must not read records,
//! evidence or clips) and the cross-site check on every state-changing method (a page elsewhere
//! must not post alarms or feedback with the browser's remembered Basic credentials).
//!
//! - Host: IP literals and `localhost` are always admitted: rebinding needs a name the attacker
//!   controls, and no attacker controls those. Names are admitted from `http.hosts`, or, when it is
//!   empty, the machine's own host name (and `<name>.local` for a dotless one, as mDNS gives it).
//! - Cross-site: for POST, PUT, PATCH and DELETE, `Sec-Fetch-Site: cross-site` or `same-site` (a
//!   sibling subdomain or another port: not this origin either) and an `Origin` whose host and port
//!   differ from the request's `Host` (or `Origin: null`) are refused. The scheme is not compared,
//!   since a TLS proxy in front makes the browser's origin `https` while this server speaks plain
//!   HTTP; the port defaults by the origin's scheme on both sides. A request with neither header (an
//!   NVR, curl, a script) is not a browser acting for someone, and passes.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::http::error;

/// The host names the server answers to, besides IP literals and `localhost`.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// Lowercase names, each with the one port it is limited to, if any.
    names: Vec<(String, Option<u16>)>,
    /// `*` in `http.hosts`: every name (for a proxy that checks names itself).
    any: bool,
}

impl AllowedHosts {
    /// From `http.hosts`; empty means the machine's own names.
    pub fn new(configured: &[String]) -> Self {
        let entries = if configured.is_empty() {
            machine_names()
        } else {
            configured.to_vec()
        };
        let any = entries.iter().any(|e| e.trim() == "*");
        let names = entries.iter().filter_map(|e| split_authority(e.trim())).collect();
        Self { names, any }
    }

    /// Whether a request whose `Host` is `value` is for this server.
    pub fn admits(&self, value: &str) -> bool {
        let Some((host, port)) = split_authority(value) else {
            return false;
        };
        if is_ip_literal(&host) || host == "localhost" || self.any {
            return true;
        }
        self.names
            .iter()
            .any(|(name, only)| *name == host && only.is_none_or(|p| Some(p) == port))
    }

    /// The names admitted, for the log at start.
    pub fn describe(&self) -> String {
        if self.any {
            return "any".into();
        }
        let mut names: Vec<String> = vec!["IP addresses".into(), "localhost".into()];
        names.extend(self.names.iter().map(|(n, p)| match p {
            Some(p) => format!("{n}:{p}"),
            None => n.clone(),
        }));
        names.join(", ")
    }
}

/// The machine's host name from the kernel (or /etc/hostname), and `<name>.local` for a dotless
/// one.
fn machine_names() -> Vec<String> {
    let name = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .find(|s| !s.is_empty());
    let Some(name) = name else { return Vec::new() };
    if name.contains('.') {
        vec![name]
    } else {
        vec![format!("{name}.local"), name]
    }
}

/// A `Host` value's host (lowercase, without a trailing dot; an IPv6 address keeps its brackets)
/// and port, or None when it is not an authority.
fn split_authority(value: &str) -> Option<(String, Option<u16>)> {
    if value.is_empty() || value.contains('@') {
        return None;
    }
    let authority = Authority::from_str(value).ok()?;
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some((host, authority.port_u16()))
}

fn is_ip_literal(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return Ipv6Addr::from_str(inner).is_ok();
    }
    Ipv4Addr::from_str(host).is_ok()
}

/// The host a request names: its `Host` header, or the authority of an absolute-form target.
fn requested_host(request: &Request) -> Option<String> {
    if let Some(host) = request.headers().get(header::HOST) {
        return host.to_str().ok().map(str::to_owned);
    }
    request.uri().authority().map(|a| a.as_str().to_owned())
}

/// Middleware: 403 for a request naming a host the server does not answer to.
pub async fn require_known_host(State(hosts): State<Arc<AllowedHosts>>, request: Request, next: Next) -> Response {
    match requested_host(&request) {
        Some(host) if hosts.admits(&host) => next.run(request).await,
        Some(host) => {
            tracing::debug!(host = %host.escape_debug(), "HTTP request for a foreign host refused");
            error(
                StatusCode::FORBIDDEN,
                format!(
                    "host {host:?} is not one this server answers to (it admits {}); add the name to http.hosts",
                    hosts.describe()
                ),
            )
        }
        None => error(StatusCode::FORBIDDEN, "a Host header is required"),
    }
}

/// Middleware: 403 for a state-changing request that a browser sent from another origin.
pub async fn refuse_cross_site(request: Request, next: Next) -> Response {
    if is_safe(request.method()) {
        return next.run(request).await;
    }
    match cross_site(request.headers(), requested_host(&request).as_deref()) {
        None => next.run(request).await,
        Some(why) => {
            tracing::debug!(path = %request.uri().path(), why = %why, "cross-site request refused");
            error(
                StatusCode::FORBIDDEN,
                format!(
                    "cross-site request refused: {why}; state-changing requests must come from this server's own pages, or carry no Origin (webhooks, scripts)"
                ),
            )
        }
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// Why a request's browser headers show it comes from another origin, if they do.
fn cross_site(headers: &HeaderMap, host: Option<&str>) -> Option<String> {
    let fetch_site = headers.get("sec-fetch-site").map(|v| v.to_str().unwrap_or_default());
    if let Some(site @ ("cross-site" | "same-site")) = fetch_site {
        return Some(format!("Sec-Fetch-Site is {site}"));
    }
    let origin = headers.get(header::ORIGIN)?;
    let Ok(origin) = origin.to_str() else {
        return Some("the Origin header is not text".into());
    };
    if origin_matches_host(origin, host) {
        None
    } else {
        Some(format!(
            "Origin {:?} is not this server ({:?})",
            origin.escape_debug().to_string(),
            host.unwrap_or_default().escape_debug().to_string()
        ))
    }
}

/// Whether `origin` (scheme://host[:port]) names the host and port the request was sent to.
fn origin_matches_host(origin: &str, host: Option<&str>) -> bool {
    let (Ok(url), Some(host)) = (url::Url::parse(origin), host) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https") {
        return false;
    }
    let (Some(origin_host), Some(origin_port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    let Some((host, port)) = split_authority(host) else {
        return false;
    };
    let default_port = if url.scheme() == "https" { 443 } else { 80 };
    origin_host.trim_end_matches('.').eq_ignore_ascii_case(&host) && origin_port == port.unwrap_or(default_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn browser(origin: Option<&str>, fetch_site: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("origin"));
        }
        if let Some(s) = fetch_site {
            h.insert("sec-fetch-site", HeaderValue::from_str(s).expect("site"));
        }
        h
    }

    #[test]
    fn same_origin_and_headerless_requests_pass() {
        let host = Some("127.0.0.1:8080");
        assert_eq!(cross_site(&browser(None, None), host), None);
        assert_eq!(
            cross_site(&browser(Some("http://127.0.0.1:8080"), Some("same-origin")), host),
            None
        );
        assert_eq!(cross_site(&browser(None, Some("none")), host), None);
        // Behind a TLS proxy that passes Host through.
        assert_eq!(
            cross_site(&browser(Some("https://Alarms.Example"), None), Some("alarms.example")),
            None
        );
        assert_eq!(
            cross_site(&browser(Some("http://[::1]:8080"), None), Some("[::1]:8080")),
            None
        );
    }

    #[test]
    fn other_origins_are_refused() {
        let host = Some("127.0.0.1:8080");
        for (origin, site) in [
            (Some("http://evil.example"), None),
            (Some("http://127.0.0.1:8081"), None),
            (Some("http://127.0.0.1"), None),
            (Some("null"), None),
            (Some("file://"), None),
            (Some("http://127.0.0.1:8080.evil.example"), None),
            (None, Some("cross-site")),
            (None, Some("same-site")),
            (Some("http://127.0.0.1:8080"), Some("cross-site")),
        ] {
            assert!(
                cross_site(&browser(origin, site), host).is_some(),
                "{origin:?} {site:?} passed"
            );
        }
        assert!(cross_site(&browser(Some("http://127.0.0.1:8080"), None), None).is_some());
    }

    #[test]
    fn hosts_admit_addresses_localhost_and_listed_names_only() {
        let hosts = AllowedHosts::new(&["alarms.site.example".into(), "gw:8443".into()]);
        for ok in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "[fe80::1]",
            "localhost:8080",
            "LOCALHOST",
            "alarms.site.example",
            "Alarms.Site.Example.:8080",
            "gw:8443",
        ] {
            assert!(hosts.admits(ok), "{ok} refused");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "gw:8080",
            "gw",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "user@127.0.0.1",
            "",
            "[not-v6]",
            "alarms.site.example.evil",
        ] {
            assert!(!hosts.admits(bad), "{bad} admitted");
        }
        assert!(AllowedHosts::new(&["*".into()]).admits("anything.example"));
    }

    #[test]
    fn the_default_admits_the_machine_name() {
        let hosts = AllowedHosts::new(&[]);
        if let Some(name) = machine_names().first() {
            assert!(hosts.admits(name), "{name} refused");
            assert!(hosts.admits(&format!("{name}:8080")));
        }
        assert!(!hosts.admits("evil.example"));
    }
}
