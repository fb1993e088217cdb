//! A door for `tests/fuzz.rs` only: one camera reply read by every parser the ONVIF session reads
//! replies with, so the fuzzing campaign reaches them without a camera. Not part of the service.

use super::messages::{
    parse_capabilities, parse_pull, parse_renew, parse_services, parse_subscription, parse_system_date_and_time,
};
use super::soap::{Envelope, parse_envelope};
use super::topics::Rule;

/// What the parsers made of one reply.
#[derive(Debug, Default)]
pub struct ReplyReading {
    /// The reply was a SOAP 1.2 envelope with an element in its Body.
    pub body: bool,
    /// The reply was a SOAP fault.
    pub fault: bool,
    /// Addresses the session would call next (event service XAddr, subscription address).
    pub addresses: Vec<String>,
    /// Notifications read from a PullMessagesResponse, and the values of those a rule watches.
    pub notifications: usize,
    pub watched: Vec<(String, bool)>,
}

/// Reads `text` as each operation's reply would be read, watching the default motion topics and
/// `topics`.
pub fn read_reply(text: &str, topics: &[String]) -> ReplyReading {
    let mut reading = ReplyReading::default();
    let payload = match parse_envelope(text) {
        Ok(Envelope::Body(Some(payload))) => payload,
        Ok(Envelope::Fault(fault)) => {
            reading.fault = !format!("{fault:?}").is_empty();
            return reading;
        }
        Ok(Envelope::Body(None)) | Err(_) => return reading,
    };
    reading.body = true;
    let _ = parse_system_date_and_time(&payload);
    reading.addresses.extend(parse_capabilities(&payload).ok());
    reading.addresses.extend(parse_services(&payload).ok());
    if let Ok(created) = parse_subscription(&payload) {
        reading.addresses.push(created.address);
    }
    let _ = parse_renew(&payload);
    if let Ok(pulled) = parse_pull(&payload, text) {
        let rules = Rule::all(topics);
        reading.notifications = pulled.notifications.len();
        for notification in &pulled.notifications {
            let Some(rule) = rules.iter().find(|r| r.topic.matches(&notification.topic)) else {
                continue;
            };
            let topic = notification.topic.to_string();
            if let Some(value) = rule.value(notification) {
                reading.watched.push((notification.state_key(&topic), value));
            }
        }
    }
    reading
}
