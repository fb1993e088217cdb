//! The other boxes on the broker, and the alarms that no box of this site would answer otherwise.
//!
//! Every box keeps a retained roster on `{prefix}/boxes/{box}` (its cameras, its share group and
//! `online`; its Last Will says `offline`), and a box in a share group keeps the alarms it has
//! accepted and not yet answered on `{prefix}/boxes/{box}/in_flight`. This module watches those,
//! every alarm topic and (in a share group) every verdict, on a clean session of its own, and:
//! - reports an alarm for a camera that no box serves on `errors`, once: the online box with the
//!   lowest id reports it;
//! - when a box of its share group goes away (its Last Will, or a new instance of it), takes over
//!   what that box had accepted and not answered, plus the alarms of the last moments that the
//!   broker may have handed it without anyone answering, and hands them to the sink as alarms of
//!   its own (`source` `takeover:{box}`). The lowest online box of the group does it, and says so
//!   on `{prefix}/boxes/{dead box}/taken`, which the dead box reads when it returns.
//!
//! No consensus: two survivors racing, or a box that was only cut off, can answer an alarm twice,
//! and consumers de-duplicate by alarm id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::intake::alarm::Alarm;
use crate::intake::{AlarmSink, Arrival, Refused};
use crate::mqtt::{BoxTopic, Inbound, LinkEvent, Topics};
use crate::support::ids::check_id;
use crate::support::lock;

/// After a box's Last Will, what it sent just before it died is given this long to reach us.
const TAKEOVER_GRACE: Duration = Duration::from_millis(800);
/// Verdicts seen are remembered this long, to skip alarms a dead box had already answered.
const VERDICT_MEMORY: Duration = Duration::from_secs(600);

/// A box's roster, retained on `{prefix}/boxes/{box}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Roster {
    #[serde(rename = "box")]
    pub box_id: String,
    pub status: BoxStatus,
    /// Changes with every start, so that a quick restart is seen as the end of the one before.
    pub instance: String,
    pub cameras: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_group: Option<String>,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BoxStatus {
    Online,
    Offline,
}

/// The alarms a box has accepted and not yet answered, retained on `{prefix}/boxes/{box}/in_flight`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InFlight {
    pub instance: String,
    pub alarms: Vec<InFlightAlarm>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InFlightAlarm {
    pub alarm_id: String,
    pub camera: String,
    pub time: DateTime<Utc>,
    pub received: DateTime<Utc>,
    pub source: String,
}

impl InFlightAlarm {
    pub fn of(alarm: &Alarm) -> Self {
        Self {
            alarm_id: alarm.alarm_id.clone(),
            camera: alarm.camera.clone(),
            time: alarm.time,
            received: alarm.received,
            source: alarm.source.clone(),
        }
    }
}

/// What another box took over from a box that went away, retained on `{prefix}/boxes/{box}/taken`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Taken {
    pub by: String,
    /// The instance of the box that went away.
    pub instance: String,
    pub alarms: Vec<String>,
    pub time: DateTime<Utc>,
}

/// An alarm on one of this box's cameras, seen on the watch connection.
struct Seen {
    at: Instant,
    alarm_id: String,
    camera: String,
    time: DateTime<Utc>,
}

#[derive(Default)]
struct State {
    rosters: HashMap<String, Roster>,
    in_flight: HashMap<String, InFlight>,
    taken: HashMap<String, Taken>,
    seen: VecDeque<Seen>,
    verdicts: HashMap<String, Instant>,
}

/// This box among the others.
pub struct Peers {
    me: String,
    instance: String,
    group: Option<String>,
    cameras: Vec<String>,
    topics: Topics,
    /// How far back an alarm seen on a camera of the group may have been handed to a box that
    /// died without acknowledging it: the broker notices a dead box within 1.5 keep-alives.
    horizon: Duration,
    state: Mutex<State>,
    changed: Notify,
}

impl Peers {
    pub fn new(me: String, group: Option<String>, cameras: Vec<String>, topics: Topics, horizon: Duration) -> Self {
        Self {
            me,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            group,
            cameras,
            topics,
            horizon,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// This box's roster message, as its birth (`online`) or its Last Will (`offline`).
    pub fn roster(&self, status: BoxStatus) -> Vec<u8> {
        let roster = Roster {
            box_id: self.me.clone(),
            status,
            instance: self.instance.clone(),
            cameras: self.cameras.clone(),
            share_group: self.group.clone(),
            since: Utc::now(),
        };
        serde_json::to_vec(&roster).unwrap_or_default()
    }

    /// Other boxes online under this prefix.
    pub fn others_online(&self) -> usize {
        let state = lock(&self.state);
        online_boxes(&state, |_| true)
            .iter()
            .filter(|id| **id != self.me)
            .count()
    }

    /// Whether this box's id comes first among `online`: the box that reports an unserved camera,
    /// or takes over a dead member of its group. Every box sees the same retained rosters, so
    /// they agree without an election.
    fn first_among(&self, online: &[&str]) -> bool {
        online.iter().all(|id| self.me.as_str() <= *id)
    }

    /// Of `alarm_ids` (this box's alarms left unanswered by its previous run), those another box
    /// says it took over; waits up to `wait` for the word to come.
    pub async fn taken_from_me(&self, alarm_ids: &[String], wait: Duration) -> HashSet<String> {
        let until = Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            let taken: HashSet<String> = lock(&self.state)
                .taken
                .get(&self.me)
                .map(|t| t.alarms.iter().filter(|id| alarm_ids.contains(id)).cloned().collect())
                .unwrap_or_default();
            if taken.len() == alarm_ids.len() || Instant::now() >= until {
                return taken;
            }
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    /// Takes the watch connection's messages until `stop`.
    pub async fn run(
        self: Arc<Self>,
        sink: Arc<dyn AlarmSink>,
        client: AsyncClient,
        mut events: mpsc::Receiver<LinkEvent>,
        stop: CancellationToken,
    ) {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                event = events.recv() => match event {
                    Some(LinkEvent::Message(msg)) => msg,
                    Some(_) => continue,
                    None => return,
                },
            };
            self.take(&sink, &client, msg);
        }
    }

    fn take(self: &Arc<Self>, sink: &Arc<dyn AlarmSink>, client: &AsyncClient, msg: Inbound) {
        if let Some(camera) = self.topics.camera_of_alarm(&msg.topic) {
            self.alarm_seen(sink.as_ref(), camera, &msg);
        } else if self.topics.camera_of_verdict(&msg.topic).is_some() {
            if let Some(id) = alarm_id_of(&msg.payload) {
                let mut state = lock(&self.state);
                state.verdicts.retain(|_, at| at.elapsed() < VERDICT_MEMORY);
                state.verdicts.insert(id, Instant::now());
            }
        } else if let Some(topic) = self.topics.box_topic(&msg.topic) {
            self.box_message(sink, client, topic, &msg.payload);
        }
    }

    fn alarm_seen(&self, sink: &dyn AlarmSink, camera: &str, msg: &Inbound) {
        if msg.retained {
            return; // an old alarm kept by the broker, not one happening now
        }
        if self.cameras.iter().any(|c| c == camera) {
            if self.group.is_some()
                && let Some(alarm_id) = alarm_id_of(&msg.payload)
            {
                let mut state = lock(&self.state);
                let horizon = self.horizon;
                while state.seen.front().is_some_and(|s| s.at.elapsed() > horizon) {
                    state.seen.pop_front();
                }
                state.seen.push_back(Seen {
                    at: Instant::now(),
                    alarm_id,
                    camera: camera.to_owned(),
                    time: time_of(&msg.payload).unwrap_or_else(Utc::now),
                });
            }
            return;
        }
        let state = lock(&self.state);
        let served = state.rosters.values().any(|r| {
            // A box without a share group has a persistent session: the broker keeps its
            // alarms while it is away. A group member's alarms go to the others.
            r.cameras.iter().any(|c| c == camera) && (r.status == BoxStatus::Online || r.share_group.is_none())
        });
        let online = online_boxes(&state, |_| true);
        if !served && self.first_among(&online) {
            let error = format!(
                "unknown camera {camera:?}: no box online serves it (boxes online: {})",
                online.join(", ")
            );
            drop(state);
            sink.report(&msg.topic, &error, &msg.payload);
        }
    }

    fn box_message(
        self: &Arc<Self>,
        sink: &Arc<dyn AlarmSink>,
        client: &AsyncClient,
        topic: BoxTopic<'_>,
        payload: &[u8],
    ) {
        let mut state = lock(&self.state);
        match topic {
            BoxTopic::Roster(id) => {
                let Ok(roster) = serde_json::from_slice::<Roster>(payload) else {
                    state.rosters.remove(id);
                    return;
                };
                if id == self.me && roster.instance != self.instance && roster.status == BoxStatus::Online {
                    tracing::warn!(
                        box_id = id,
                        "another box uses this box's mqtt.client_id; give each box its own"
                    );
                }
                let before = state.rosters.insert(id.to_owned(), roster.clone());
                if id != self.me && self.same_group(&roster) && went_away(before.as_ref(), &roster) {
                    let ended = before.map_or(roster.instance.clone(), |b| b.instance);
                    // Kept now: a new instance may replace the list before the takeover reads it.
                    let announced = state.in_flight.get(id).filter(|f| f.instance == ended).cloned();
                    let already = state.taken.get(id).is_some_and(|t| t.instance == ended);
                    if !already {
                        tokio::spawn(self.clone().take_over(
                            sink.clone(),
                            client.clone(),
                            id.to_owned(),
                            ended,
                            announced,
                        ));
                    }
                }
            }
            BoxTopic::InFlight(id) => {
                if let Ok(list) = serde_json::from_slice::<InFlight>(payload) {
                    state.in_flight.insert(id.to_owned(), list);
                }
            }
            BoxTopic::Taken(id) => {
                if let Ok(taken) = serde_json::from_slice::<Taken>(payload) {
                    state.taken.insert(id.to_owned(), taken);
                    drop(state);
                    self.changed.notify_waiters();
                }
            }
        }
    }

    fn same_group(&self, roster: &Roster) -> bool {
        self.group.is_some() && roster.share_group == self.group
    }

    /// Answers what `dead` had accepted and not answered, if this box is the one to do it.
    async fn take_over(
        self: Arc<Self>,
        sink: Arc<dyn AlarmSink>,
        client: AsyncClient,
        dead: String,
        instance: String,
        announced: Option<InFlight>,
    ) {
        let since = Instant::now();
        tokio::time::sleep(TAKEOVER_GRACE).await;
        let Some((candidates, answered)) = self.unanswered_of(sink.as_ref(), &dead, &instance, announced) else {
            return;
        };
        let already_answered = answered.len();
        let mut taken = answered;
        for a in candidates {
            // Another box's announcement is input like any other: an id or camera that breaks the
            // rule is reported, never taken over.
            if let Err(e) = check_id(&a.alarm_id).and_then(|()| check_id(&a.camera)) {
                let raw = serde_json::to_vec(&a).unwrap_or_default();
                sink.report(
                    &self.topics.box_in_flight(&dead),
                    &format!("alarm not taken over: {e}"),
                    &raw,
                );
                continue;
            }
            let alarm = Alarm::new(a.alarm_id.clone(), &a.camera, a.time, format!("takeover:{dead}"));
            let raw = serde_json::to_vec(&a).unwrap_or_default();
            let arrival = Arrival {
                alarm,
                origin: self.topics.box_in_flight(&dead),
                raw,
                snapshot: None,
            };
            match sink.accept(arrival) {
                // Not claimed: the dead box recorded it and answers it when it comes back.
                Err(Refused::ShuttingDown | Refused::Unstored(_)) => {}
                _ => taken.push(a.alarm_id),
            }
        }
        tracing::warn!(
            box_id = %dead,
            taken_over = taken.len() - already_answered,
            already_answered,
            after_ms = since.elapsed().as_millis() as u64,
            "a box of the share group went away; its unanswered alarms are taken over"
        );
        let word = Taken {
            by: self.me.clone(),
            instance,
            alarms: taken,
            time: Utc::now(),
        };
        let body = serde_json::to_vec(&word).unwrap_or_default();
        if let Err(e) = client.try_publish(self.topics.box_taken(&dead), QoS::AtLeastOnce, true, body) {
            tracing::warn!(box_id = %dead, error = %e, "cannot say which alarms were taken over");
        }
    }

    /// The alarms of `dead`'s ended instance still to answer, and those already answered; `None`
    /// when another survivor of the group is the one to take over.
    fn unanswered_of(
        &self,
        sink: &dyn AlarmSink,
        dead: &str,
        instance: &str,
        announced: Option<InFlight>,
    ) -> Option<(Vec<InFlightAlarm>, Vec<String>)> {
        let state = lock(&self.state);
        let survivor = self.first_among(&online_boxes(&state, |r| self.same_group(r)));
        // Another survivor (or this box before a restart) has done it already.
        if !survivor || state.taken.get(dead).is_some_and(|t| t.instance == instance) {
            return None;
        }
        let mut alarms = state
            .in_flight
            .get(dead)
            .filter(|f| f.instance == instance)
            .cloned()
            .or(announced)
            .map(|f| f.alarms)
            .unwrap_or_default();
        // Alarms of the last moments with no verdict: the broker may have handed them to the
        // dead box, which did not live to acknowledge or announce them.
        for seen in state.seen.iter().filter(|s| s.at.elapsed() <= self.horizon) {
            if !alarms.iter().any(|a| a.alarm_id == seen.alarm_id) {
                alarms.push(InFlightAlarm {
                    alarm_id: seen.alarm_id.clone(),
                    camera: seen.camera.clone(),
                    time: seen.time,
                    received: Utc::now(),
                    source: "mqtt".into(),
                });
            }
        }
        let (answered, open): (Vec<_>, Vec<_>) = alarms
            .into_iter()
            .filter(|a| self.cameras.contains(&a.camera))
            .partition(|a| state.verdicts.contains_key(&a.alarm_id) || sink.knows_alarm(&a.alarm_id));
        Some((open, answered.into_iter().map(|a| a.alarm_id).collect()))
    }
}

/// The ids of the boxes online whose roster `include` selects.
fn online_boxes(state: &State, include: impl Fn(&Roster) -> bool) -> Vec<&str> {
    state
        .rosters
        .values()
        .filter(|r| r.status == BoxStatus::Online && include(r))
        .map(|r| r.box_id.as_str())
        .collect()
}

/// A box went away: its Last Will came, or it is back as a new instance (a restart too quick for
/// the broker to see its connection end).
fn went_away(before: Option<&Roster>, now: &Roster) -> bool {
    match before {
        Some(b) if b.status == BoxStatus::Online => now.status == BoxStatus::Offline || now.instance != b.instance,
        Some(_) => false,
        // First sight (a retained roster at subscribe): a box of the group that is down.
        None => now.status == BoxStatus::Offline,
    }
}

fn alarm_id_of(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value
        .get("alarm_id")?
        .as_str()
        .filter(|s| check_id(s).is_ok())
        .map(str::to_owned)
}

fn time_of(payload: &[u8]) -> Option<DateTime<Utc>> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    DateTime::parse_from_rfc3339(value.get("time")?.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster(status: BoxStatus, instance: &str) -> Roster {
        Roster {
            box_id: "b".into(),
            status,
            instance: instance.into(),
            cameras: vec!["gate".into()],
            share_group: Some("g".into()),
            since: Utc::now(),
        }
    }

    #[test]
    fn a_box_goes_away_by_its_will_or_a_new_instance() {
        let up = roster(BoxStatus::Online, "1");
        assert!(went_away(Some(&up), &roster(BoxStatus::Offline, "1")));
        assert!(went_away(Some(&up), &roster(BoxStatus::Online, "2")));
        assert!(!went_away(Some(&up), &roster(BoxStatus::Online, "1")));
        assert!(!went_away(
            Some(&roster(BoxStatus::Offline, "1")),
            &roster(BoxStatus::Online, "2")
        ));
        assert!(went_away(None, &roster(BoxStatus::Offline, "1")));
    }

    #[test]
    fn rosters_round_trip_and_box_topics_are_told_apart() {
        let r = roster(BoxStatus::Online, "1");
        let back: Roster = serde_json::from_slice(&serde_json::to_vec(&r).unwrap_or_default()).expect("roster");
        assert_eq!(back, r);
        let t = Topics::new("av");
        assert_eq!(t.box_topic(&t.box_roster("b1")), Some(BoxTopic::Roster("b1")));
        assert_eq!(t.box_topic(&t.box_in_flight("b1")), Some(BoxTopic::InFlight("b1")));
        assert_eq!(t.box_topic(&t.box_taken("b1")), Some(BoxTopic::Taken("b1")));
        assert_eq!(t.box_topic("av/boxes/b1/other"), None);
        assert_eq!(t.shared_alarm("pair", "gate"), "$share/pair/av/alarms/gate");
    }

    #[test]
    fn alarm_ids_and_times_are_read_from_payloads() {
        assert_eq!(alarm_id_of(br#"{"alarm_id":"a1"}"#).as_deref(), Some("a1"));
        assert_eq!(alarm_id_of(br#"{"alarm_id":"  "}"#), None);
        assert_eq!(alarm_id_of(b"not json"), None);
        assert!(time_of(br#"{"time":"2026-11-21T10:00:00Z"}"#).is_some());
        assert!(time_of(br#"{"time":"yesterday"}"#).is_none());
    }
}
