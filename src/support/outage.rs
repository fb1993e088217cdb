//! Logging of an outage (a camera stream, the MQTT broker) for people: the change of state once,
//! then a reminder at a low rate while it lasts.

use std::time::{Duration, Instant};

/// How long a stream or connection may stay down before its log line is repeated as a reminder.
pub const LOG_REMINDER: Duration = Duration::from_secs(300);

/// Logging of an outage for people: the change of state once, a reminder at a low rate while it
/// lasts (with the number of failed attempts), and each attempt only at debug level.
#[derive(Debug, Default)]
pub struct OutageLog {
    down_since: Option<Instant>,
    last_reminder: Option<Instant>,
    attempts: u64,
}

/// What to log about a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum OutageNote {
    /// It just went down.
    Down,
    /// Still down; time for a reminder.
    StillDown { attempts: u64, down_for_s: u64 },
    /// Still down; nothing to say above debug level.
    Quiet,
}

impl OutageLog {
    pub fn failed(&mut self) -> OutageNote {
        let now = Instant::now();
        self.attempts += 1;
        let Some(since) = self.down_since else {
            self.down_since = Some(now);
            self.last_reminder = Some(now);
            return OutageNote::Down;
        };
        if self
            .last_reminder
            .is_some_and(|r| now.duration_since(r) >= LOG_REMINDER)
        {
            self.last_reminder = Some(now);
            return OutageNote::StillDown {
                attempts: self.attempts,
                down_for_s: now.duration_since(since).as_secs(),
            };
        }
        OutageNote::Quiet
    }

    /// It is back; returns how long it was down and after how many failed attempts, if it was.
    pub fn recovered(&mut self) -> Option<(u64, u64)> {
        let since = self.down_since.take()?;
        let attempts = std::mem::take(&mut self.attempts);
        self.last_reminder = None;
        Some((since.elapsed().as_secs(), attempts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_once_then_quietly_until_it_recovers() {
        let mut log = OutageLog::default();
        assert_eq!(log.failed(), OutageNote::Down);
        for _ in 0..100 {
            assert_eq!(log.failed(), OutageNote::Quiet);
        }
        assert_eq!(log.recovered().map(|(_, attempts)| attempts), Some(101));
        assert_eq!(log.recovered(), None);
        assert_eq!(log.failed(), OutageNote::Down, "a new outage is news again");
    }
}
