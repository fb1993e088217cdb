//! The subscription session with one camera: find its clock and event service, make a pull
//! point, long-poll it, renew it at half the granted time, let it go on shutdown or failure, and
//! start again with backoff. Notifications of watched topics become alarms on a false→true
//! change; the link state follows every step.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::device::{Device, Service};
use super::messages::{Notification, PropertyOperation, parse_pull, parse_renew, parse_subscription};
use super::soap::{CameraClock, Reply};
use super::topics::Rule;
use super::{OnvifError, Operation};
use crate::config::{OnvifConfig, Secret};
use crate::intake::alarm::Alarm;
use crate::intake::{AlarmSink, Arrival, EventLink, EventLinkState};

/// Asked for on subscribing and renewing; the camera may grant less, and is renewed at half of
/// what it grants.
const REQUESTED_TERMINATION: Duration = Duration::from_secs(60);
/// How long one PullMessages may wait for events at the camera.
const PULL_TIMEOUT: Duration = Duration::from_secs(10);
const MESSAGE_LIMIT: u32 = 100;
/// Added to the pull timeout for the HTTP request's own timeout, so that a camera answering at
/// the end of its wait is not cut off.
const PULL_GRACE: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Shutdown must not wait on a camera that does not answer.
const UNSUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Empty PullMessages replies closer together than this are spaced out (a long poll is longer).
const MIN_PULL_INTERVAL: Duration = Duration::from_secs(1);
/// Renewing more often than this would only load the camera.
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Watches one camera's ONVIF events until `stop` is cancelled; motion raises alarms in `sink`.
pub async fn watch(
    camera: String,
    config: OnvifConfig,
    password: Option<Secret>,
    sink: Arc<dyn AlarmSink>,
    stop: CancellationToken,
) {
    let mut link = LinkReporter::new(camera.clone(), Arc::clone(&sink));
    link.set(
        EventLinkState::Connecting,
        Some(format!("connecting to {}", config.url)),
    );
    let watcher = match Watcher::new(camera, &config, password, sink) {
        Ok(watcher) => watcher,
        Err(e) => {
            link.set(EventLinkState::Failed, Some(e.to_string()));
            stop.cancelled().await;
            return;
        }
    };
    let mut backoff = Backoff::default();
    loop {
        let failure = match watcher.run_once(&mut link, &mut backoff, &stop).await {
            Ok(()) => return,
            Err(failure) => failure,
        };
        let delay = backoff.next_delay();
        tracing::warn!(
            camera = %watcher.camera,
            error = %failure,
            retry_in_s = delay.as_secs(),
            "ONVIF event subscription failed"
        );
        // While retrying the link stays failed with its reason; it shows subscribed again once
        // a subscription exists, so a camera that is down does not flap between states.
        link.set(EventLinkState::Failed, Some(failure.to_string()));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One camera's connection to its event service.
struct Watcher {
    camera: String,
    device: Device,
    rules: Vec<Rule>,
    sink: Arc<dyn AlarmSink>,
}

/// A pull point at the camera.
struct Subscription {
    address: String,
    /// WS-Addressing reference parameters the camera gave with the address, sent back as headers.
    reference_headers: String,
    renew_at: Instant,
    /// The camera's clock as measured when subscribing, for the credentials of every later call.
    clock: CameraClock,
}

impl Watcher {
    fn new(
        camera: String,
        config: &OnvifConfig,
        password: Option<Secret>,
        sink: Arc<dyn AlarmSink>,
    ) -> Result<Self, OnvifError> {
        Ok(Self {
            device: Device::new(camera.clone(), config, password)?,
            camera,
            rules: Rule::all(&config.topics),
            sink,
        })
    }

    /// One subscription, from finding the event service until `stop` (Ok) or a failure.
    async fn run_once(
        &self,
        link: &mut LinkReporter,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Result<(), OnvifError> {
        let mut subscription = None;
        let outcome = tokio::select! {
            result = self.subscribe_and_pull(&mut subscription, link, backoff) => Some(result),
            () = stop.cancelled() => None,
        };
        // Let the pull point go on shutdown, and after a failure too: cameras have few of them,
        // and one left behind on each retry would use them up until they expire.
        if let Some(subscription) = subscription {
            self.unsubscribe(&subscription).await;
        }
        match outcome {
            None => Ok(()),
            Some(Err(failure)) => Err(failure),
            Some(Ok(never)) => match never {},
        }
    }

    async fn subscribe_and_pull(
        &self,
        slot: &mut Option<Subscription>,
        link: &mut LinkReporter,
        backoff: &mut Backoff,
    ) -> Result<Infallible, OnvifError> {
        // On every (re)subscribe: the camera's clock may have been set or drifted meanwhile.
        let clock = self.device.clock().await?;
        let events_url = self.device.service(Service::Events, &clock).await?;
        let subscription = slot.insert(self.create_subscription(&events_url, &clock).await?);
        tracing::info!(
            camera = %self.camera,
            subscription = %subscription.address,
            clock_offset_s = clock.offset.num_seconds(),
            "ONVIF events subscribed"
        );
        link.set(EventLinkState::Subscribed, None);
        // A new pull point sends each property's current value as `Initialized` first.
        let mut events = EventState::default();
        loop {
            let now = Instant::now();
            let Some(timeout) = subscription.pull_timeout(now) else {
                self.renew(subscription).await?;
                continue;
            };
            let pulled = self.pull(subscription, timeout).await?;
            // The whole chain works: the next failure starts its backoff from the beginning.
            backoff.reset();
            if pulled.is_empty() {
                // Some cameras answer at once whatever the Timeout: do not poll them in a busy loop.
                tokio::time::sleep_until(now + MIN_PULL_INTERVAL).await;
            }
            for notification in pulled {
                self.handle(notification, &mut events);
            }
        }
    }

    async fn create_subscription(&self, events_url: &str, clock: &CameraClock) -> Result<Subscription, OnvifError> {
        let op = Operation::CreatePullPointSubscription;
        let body = format!(
            "<tev:CreatePullPointSubscription><tev:InitialTerminationTime>{}</tev:InitialTerminationTime></tev:CreatePullPointSubscription>",
            xml_duration(REQUESTED_TERMINATION)
        );
        let reply = self.device.call(op, events_url, clock, &body).await?;
        let received = Instant::now();
        let created = parse_subscription(&reply.payload)?;
        // Refused before the first call to it: that call would carry the credentials.
        self.device
            .hosts
            .check(op, "the subscription address (wsa:Address)", &created.address)?;
        Ok(Subscription {
            address: created.address,
            reference_headers: created.reference_headers,
            renew_at: received + renew_interval(remaining(created.current, created.termination, clock)),
            clock: *clock,
        })
    }

    async fn renew(&self, subscription: &mut Subscription) -> Result<(), OnvifError> {
        let op = Operation::Renew;
        let body = format!(
            "<wsnt:Renew><wsnt:TerminationTime>{}</wsnt:TerminationTime></wsnt:Renew>",
            xml_duration(REQUESTED_TERMINATION)
        );
        let reply = self.call_subscription(op, subscription, &body, CALL_TIMEOUT).await?;
        let received = Instant::now();
        let renewed = parse_renew(&reply.payload)?;
        let remaining = remaining(renewed.current, Some(renewed.termination), &subscription.clock);
        subscription.renew_at = received + renew_interval(remaining);
        tracing::debug!(camera = %self.camera, granted_s = remaining.as_secs(), "ONVIF subscription renewed");
        Ok(())
    }

    async fn pull(&self, subscription: &mut Subscription, timeout: Duration) -> Result<Vec<Notification>, OnvifError> {
        let op = Operation::PullMessages;
        let body = format!(
            "<tev:PullMessages><tev:Timeout>{}</tev:Timeout><tev:MessageLimit>{MESSAGE_LIMIT}</tev:MessageLimit></tev:PullMessages>",
            xml_duration(timeout)
        );
        let reply = self
            .call_subscription(op, subscription, &body, timeout + PULL_GRACE)
            .await?;
        let received = Instant::now();
        let pulled = parse_pull(&reply.payload, &reply.text)?;
        // A camera may move the termination time on its own (earlier, or later on each pull):
        // renew no later than half of what is left.
        if let Some(termination) = pulled.termination {
            let remaining = remaining(pulled.current, Some(termination), &subscription.clock);
            subscription.renew_at = subscription.renew_at.min(received + remaining / 2);
        }
        for skipped in &pulled.skipped {
            tracing::warn!(camera = %self.camera, error = %skipped, "ONVIF notification skipped");
        }
        Ok(pulled.notifications)
    }

    /// Best effort, bounded: the camera may already be gone.
    async fn unsubscribe(&self, subscription: &Subscription) {
        let op = Operation::Unsubscribe;
        let call = self.call_subscription(op, subscription, "<wsnt:Unsubscribe/>", UNSUBSCRIBE_TIMEOUT);
        match tokio::time::timeout(UNSUBSCRIBE_TIMEOUT, call).await {
            Ok(Ok(_)) => tracing::info!(camera = %self.camera, "ONVIF events unsubscribed"),
            Ok(Err(e)) => tracing::debug!(camera = %self.camera, error = %e, "ONVIF unsubscribe failed"),
            Err(_) => tracing::debug!(camera = %self.camera, "ONVIF unsubscribe timed out"),
        }
    }

    /// Turns one notification into an alarm when it is a false→true change of a watched topic.
    fn handle(&self, notification: Notification, events: &mut EventState) {
        let Some(rule) = self.rules.iter().find(|r| r.topic.matches(&notification.topic)) else {
            tracing::trace!(camera = %self.camera, topic = %notification.topic, "ONVIF event not watched");
            return;
        };
        let topic = notification.topic.to_string();
        let Some(value) = rule.value(&notification) else {
            tracing::debug!(camera = %self.camera, topic = %topic, "ONVIF event without a boolean data item");
            return;
        };
        let key = notification.state_key(&topic);
        if events.observe(key, notification.operation, value) {
            self.raise(&topic, notification);
        } else {
            tracing::debug!(
                camera = %self.camera,
                topic = %topic,
                operation = ?notification.operation,
                value,
                "ONVIF event state"
            );
        }
    }

    fn raise(&self, topic: &str, notification: Notification) {
        // The receive time, not the camera's UtcTime: the video buffer runs on this box's clock.
        let alarm = Alarm::device_event(&self.camera, Utc::now(), format!("onvif:{topic}"));
        let camera_time = notification.utc_time.unwrap_or_default();
        let arrival = Arrival {
            alarm,
            origin: format!("onvif {} {topic}", self.camera),
            raw: notification.raw,
            snapshot: None,
        };
        match self.sink.accept(arrival) {
            Ok(accepted) => tracing::info!(
                camera = %self.camera,
                topic = %topic,
                camera_time = %camera_time,
                alarm_id = %accepted.alarm_id,
                joined = accepted.joined,
                "ONVIF event raised an alarm"
            ),
            Err(refused) => tracing::warn!(
                camera = %self.camera,
                topic = %topic,
                camera_time = %camera_time,
                error = %refused,
                "ONVIF event alarm refused"
            ),
        }
    }

    /// A call on the subscription's own address, with its reference parameters.
    async fn call_subscription(
        &self,
        op: Operation,
        subscription: &Subscription,
        body: &str,
        timeout: Duration,
    ) -> Result<Reply, OnvifError> {
        let (address, clock) = (&subscription.address, &subscription.clock);
        self.device
            .transport
            .call(op, address, clock, &subscription.reference_headers, body, timeout)
            .await
    }
}

/// The time left on a subscription, counted on the camera's clock (its CurrentTime when given).
fn remaining(current: Option<DateTime<Utc>>, termination: Option<DateTime<Utc>>, clock: &CameraClock) -> Duration {
    match termination {
        Some(termination) => (termination - current.unwrap_or_else(|| clock.now()))
            .to_std()
            .unwrap_or(Duration::ZERO),
        // No termination time: the camera granted what was asked.
        None => REQUESTED_TERMINATION,
    }
}

/// Renew at half the granted time: the other half leaves room for a slow or failed attempt.
fn renew_interval(granted: Duration) -> Duration {
    (granted / 2).max(MIN_RENEW_INTERVAL)
}

/// `PT10S`: an xs:duration in whole seconds.
fn xml_duration(duration: Duration) -> String {
    format!("PT{}S", duration.as_secs())
}

impl Subscription {
    /// How long the next PullMessages may wait, ending before the renewal is due; None when the
    /// renewal is due now.
    fn pull_timeout(&self, now: Instant) -> Option<Duration> {
        let until_renew = self.renew_at.saturating_duration_since(now);
        // Whole seconds: the timeout goes out as an xs:duration.
        let timeout = Duration::from_secs(until_renew.min(PULL_TIMEOUT).as_secs());
        (timeout >= Duration::from_secs(1)).then_some(timeout)
    }
}

/// The last known value of each watched property, for telling changes from repeats.
#[derive(Default)]
struct EventState {
    values: HashMap<String, bool>,
}

impl EventState {
    /// Records a message; true when it raises an alarm: a change to true from false or unknown.
    fn observe(&mut self, key: String, operation: PropertyOperation, value: bool) -> bool {
        match operation {
            PropertyOperation::Initialized => {
                self.values.insert(key, value);
                false
            }
            PropertyOperation::Changed => {
                let before = self.values.insert(key, value);
                value && before != Some(true)
            }
            PropertyOperation::Deleted => {
                self.values.remove(&key);
                false
            }
        }
    }
}

/// Reports the link state to the sink when it changes, so that retries do not repeat it.
struct LinkReporter {
    camera: String,
    sink: Arc<dyn AlarmSink>,
    last: Option<(EventLinkState, Option<String>)>,
}

impl LinkReporter {
    fn new(camera: String, sink: Arc<dyn AlarmSink>) -> Self {
        Self {
            camera,
            sink,
            last: None,
        }
    }

    fn set(&mut self, state: EventLinkState, error: Option<String>) {
        let next = (state, error);
        if self.last.as_ref() == Some(&next) {
            return;
        }
        self.sink
            .event_link(&self.camera, EventLink::now(next.0, next.1.clone()));
        self.last = Some(next);
    }
}

/// Exponential backoff between attempts: 1 s doubling to 30 s.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_FIRST }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::super::messages::parse_xml_time;
    use super::super::messages::tests::{PULL_RESPONSE, body_of};
    use super::*;

    #[test]
    fn initialized_sets_the_state_and_only_a_change_to_true_raises() {
        let payload = body_of(PULL_RESPONSE);
        let pulled = parse_pull(&payload, PULL_RESPONSE).expect("pull response");
        let rules = Rule::all(&[]);
        let mut state = EventState::default();
        let mut raised = Vec::new();
        for n in &pulled.notifications {
            let Some(rule) = rules.iter().find(|r| r.topic.matches(&n.topic)) else {
                continue;
            };
            let value = rule.value(n).expect("boolean");
            let topic = n.topic.to_string();
            if state.observe(n.state_key(&topic), n.operation, value) {
                raised.push(topic);
            }
        }
        assert_eq!(raised, ["tns1:RuleEngine/CellMotionDetector/Motion"]);

        let mut state = EventState::default();
        let key = || "k".to_owned();
        assert!(!state.observe(key(), PropertyOperation::Initialized, true));
        assert!(!state.observe(key(), PropertyOperation::Changed, true), "true→true");
        assert!(!state.observe(key(), PropertyOperation::Changed, false));
        assert!(state.observe(key(), PropertyOperation::Changed, true), "false→true");
        assert!(!state.observe(key(), PropertyOperation::Deleted, false));
        assert!(state.observe(key(), PropertyOperation::Changed, true), "unknown→true");
    }

    #[test]
    fn subscriptions_are_renewed_at_half_the_granted_time() {
        // CurrentTime and TerminationTime as a camera gives them on subscribing.
        let granted = remaining(
            parse_xml_time("2008-10-09T13:52:59"),
            parse_xml_time("2008-10-09T13:53:59"),
            &CameraClock::default(),
        );
        assert_eq!(granted, Duration::from_secs(60));
        assert_eq!(renew_interval(granted), Duration::from_secs(30));
        assert_eq!(renew_interval(Duration::ZERO), MIN_RENEW_INTERVAL);
    }

    #[test]
    fn pulls_end_before_the_renewal_is_due() {
        let now = Instant::now();
        let subscription = |renew_in: Duration| Subscription {
            address: String::new(),
            reference_headers: String::new(),
            renew_at: now + renew_in,
            clock: CameraClock::default(),
        };
        assert_eq!(
            subscription(Duration::from_secs(30)).pull_timeout(now),
            Some(PULL_TIMEOUT)
        );
        assert_eq!(
            subscription(Duration::from_millis(4_500)).pull_timeout(now),
            Some(Duration::from_secs(4))
        );
        assert_eq!(subscription(Duration::from_millis(900)).pull_timeout(now), None);
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..7).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), BACKOFF_FIRST);
    }
}
