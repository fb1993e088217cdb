//! Which RTSP lower transport a stream uses, and why: `transport = "auto"` tries RTP over TCP
//! first, falls back to UDP when the camera refuses TCP (`461 Unsupported Transport`, a SETUP
//! refused) or sends no video over it, and keeps what worked until the service restarts, as
//! ffmpeg's, VLC's and GStreamer's clients do. Explicit `tcp` and `udp` are used as they are.

use std::time::Duration;

use crate::config::RtspTransport;

/// How long `auto` waits for the first picture over TCP before it tries UDP.
pub const FIRST_VIDEO_OVER_TCP: Duration = Duration::from_secs(5);

/// The transport of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lower {
    Tcp,
    Udp,
}

impl Lower {
    pub fn name(self) -> &'static str {
        match self {
            Lower::Tcp => "tcp",
            Lower::Udp => "udp",
        }
    }
}

/// A stream's transport decision across its sessions.
#[derive(Debug, Clone)]
pub struct TransportChoice {
    configured: RtspTransport,
    /// What worked (delivered video), kept until restart.
    settled: Option<Lower>,
    /// What the next session tries while nothing has worked yet.
    next: Lower,
    /// Why TCP was given up, as the state shows it: `tcp refused: 461`.
    tcp_refused: Option<String>,
}

impl TransportChoice {
    pub fn new(configured: RtspTransport) -> Self {
        Self {
            configured,
            settled: None,
            next: match configured {
                RtspTransport::Udp => Lower::Udp,
                RtspTransport::Auto | RtspTransport::Tcp => Lower::Tcp,
            },
            tcp_refused: None,
        }
    }

    /// The transport of the next session.
    pub fn next(&self) -> Lower {
        self.settled.unwrap_or(self.next)
    }

    /// Whether the next session should give up on TCP if no picture comes within
    /// [`FIRST_VIDEO_OVER_TCP`]: only while `auto` has not seen TCP work.
    pub fn probing_tcp(&self) -> bool {
        self.configured == RtspTransport::Auto && self.settled.is_none() && self.next == Lower::Tcp
    }

    /// A session over `lower` delivered video.
    pub fn worked(&mut self, lower: Lower) {
        if self.configured == RtspTransport::Auto && self.settled.is_none() {
            self.settled = Some(lower);
            if lower == Lower::Tcp {
                self.tcp_refused = None;
            }
        }
    }

    /// A session over `lower` ended before delivering video; `tcp_refusal` says why TCP itself
    /// is the problem, when it is. Under `auto`, a refused TCP is followed by UDP, and a UDP that
    /// fails too by TCP again (the camera may have been down, not choosy).
    pub fn failed(&mut self, lower: Lower, tcp_refusal: Option<String>) {
        if self.configured != RtspTransport::Auto || self.settled.is_some() {
            return;
        }
        match (lower, tcp_refusal) {
            (Lower::Tcp, Some(why)) => {
                self.tcp_refused = Some(why);
                self.next = Lower::Udp;
            }
            (Lower::Udp, _) => self.next = Lower::Tcp,
            (Lower::Tcp, None) => {}
        }
    }

    /// The transport in use and why, for the camera's state and the console: `tcp`,
    /// `udp (tcp refused: 461 Unsupported Transport)`, `udp (configured)`.
    pub fn describe(&self) -> String {
        let lower = self.next();
        match (self.configured, lower, &self.tcp_refused) {
            (RtspTransport::Auto, Lower::Udp, Some(why)) => format!("udp ({why})"),
            (RtspTransport::Auto, lower, _) => lower.name().to_owned(),
            (_, lower, _) => format!("{} (configured)", lower.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_udp_when_tcp_is_refused_and_keeps_what_worked() {
        let mut choice = TransportChoice::new(RtspTransport::Auto);
        assert_eq!(choice.next(), Lower::Tcp);
        assert!(choice.probing_tcp());
        choice.failed(Lower::Tcp, Some("tcp refused: 461 Unsupported Transport".into()));
        assert_eq!(choice.next(), Lower::Udp);
        assert!(!choice.probing_tcp());
        choice.worked(Lower::Udp);
        assert_eq!(choice.describe(), "udp (tcp refused: 461 Unsupported Transport)");
        // Settled: a later outage does not switch it back and forth.
        choice.failed(Lower::Udp, None);
        assert_eq!(choice.next(), Lower::Udp);
    }

    #[test]
    fn auto_tries_tcp_again_when_udp_fails_too_and_a_camera_that_is_down_keeps_tcp() {
        let mut choice = TransportChoice::new(RtspTransport::Auto);
        choice.failed(Lower::Tcp, None); // unreachable: not a transport problem
        assert_eq!(choice.next(), Lower::Tcp);
        choice.failed(Lower::Tcp, Some("no video over tcp within 5 s".into()));
        choice.failed(Lower::Udp, None);
        assert_eq!(choice.next(), Lower::Tcp);
        choice.worked(Lower::Tcp);
        assert_eq!(choice.describe(), "tcp");
        assert!(!choice.probing_tcp());
    }

    #[test]
    fn explicit_transports_never_change() {
        let mut tcp = TransportChoice::new(RtspTransport::Tcp);
        assert!(!tcp.probing_tcp());
        tcp.failed(Lower::Tcp, Some("tcp refused: 461".into()));
        assert_eq!(tcp.next(), Lower::Tcp);
        assert_eq!(tcp.describe(), "tcp (configured)");
        let mut udp = TransportChoice::new(RtspTransport::Udp);
        udp.failed(Lower::Udp, None);
        assert_eq!(udp.next(), Lower::Udp);
        assert_eq!(udp.describe(), "udp (configured)");
    }
}
