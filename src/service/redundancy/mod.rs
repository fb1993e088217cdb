//! Redundancy on the broker, in one room: the roster of boxes and the watch over every alarm topic
//! ([`peers`]), the alarms in flight announced for a survivor ([`in_flight`]), the shared alarm
//! subscription of an `mqtt.share_group` (MQTT v5), leaving the group at shutdown, and, after a
//! restart, telling which unanswered alarms a survivor took over.
//!
//! A box without a share group still keeps a roster and the watch, so that an alarm for a camera
//! that no box serves is reported once.

pub mod in_flight;
pub mod peers;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::alarm;
use crate::config::MqttConfig;
use crate::intake::alarm::Alarm;
use crate::intake::{self, AlarmSink};
use crate::mqtt::{self, Connection, LinkEvent, MqttError, Session, Topics};
use crate::store::{Store, Unanswered};
use in_flight::InFlightBoard;
use peers::{BoxStatus, Peers};

/// At shutdown in a share group, alarms the broker handed over just before the unsubscribe are
/// taken this long, so that none is left unacknowledged on a session about to end.
const SHARE_DRAIN: Duration = Duration::from_millis(300);
/// After a restart in a share group, how long the box waits to hear which of its unanswered alarms
/// a survivor took over, before answering the rest itself.
const TAKEN_WAIT: Duration = Duration::from_secs(5);

/// This box among the others on the broker.
pub(in crate::service) struct Redundancy {
    pub(in crate::service) peers: Arc<Peers>,
    /// In a share group: this box's alarms in flight, announced for a survivor.
    board: Option<Arc<InFlightBoard>>,
    group: Option<String>,
    box_id: String,
    topics: Topics,
    cameras: Vec<String>,
}

/// The connections redundancy runs on, until shutdown.
pub(in crate::service) struct Links {
    /// The clean "watch" session: rosters, every alarm topic, and (in a group) the verdicts. Its
    /// events go to the watch over the other boxes once it starts.
    watch: Connection,
    watch_started: bool,
    /// In a share group, the shared alarm subscriptions (MQTT v5, clean session).
    share: Option<mqtt::ConnectionV5>,
}

/// The tasks redundancy keeps running.
pub(in crate::service) struct Tasks {
    peers: JoinHandle<()>,
    board: Option<JoinHandle<()>>,
}

impl Redundancy {
    /// Connects the watch session (with this box's roster as its birth and Last Will) and, in a
    /// share group, the shared alarm subscriptions.
    pub(in crate::service) fn connect(
        config: &MqttConfig,
        topics: &Topics,
        box_id: &str,
        group: Option<String>,
        cameras: &[String],
    ) -> Result<(Self, Links), MqttError> {
        let watch_options = mqtt::options(config, &format!("{box_id}-watch"))?;
        let share_options = match &group {
            Some(_) => Some(mqtt::options_v5(config, &format!("{box_id}-alarms"))?),
            None => None,
        };
        let peers = Arc::new(Peers::new(
            box_id.to_owned(),
            group.clone(),
            cameras.to_vec(),
            topics.clone(),
            Duration::from_secs_f64(config.keep_alive_s.max(5) as f64 * 1.5 + 2.0),
        ));
        let mut watch_subscriptions = vec![topics.alarms_filter(), topics.boxes_filter()];
        if group.is_some() {
            watch_subscriptions.push(topics.verdicts_filter());
        }
        let watch = mqtt::connect(
            watch_options,
            Session {
                birth: Some((topics.box_roster(box_id), peers.roster(BoxStatus::Online))),
                will: Some((topics.box_roster(box_id), peers.roster(BoxStatus::Offline))),
                ..Session::new(watch_subscriptions)
            },
        );
        let share = group.as_ref().zip(share_options).map(|(group, options)| {
            mqtt::connect_v5(
                options,
                Session {
                    manual_acks: true,
                    ..Session::new(cameras.iter().map(|c| topics.shared_alarm(group, c)).collect())
                },
            )
        });
        let board = share.as_ref().map(|share| {
            Arc::new(InFlightBoard::new(
                share.client.clone(),
                topics.box_in_flight(box_id),
                peers.instance().to_owned(),
            ))
        });
        tracing::info!(box_id = %box_id, share_group = ?group, "MQTT identity");
        let redundancy = Self {
            peers,
            board,
            group,
            box_id: box_id.to_owned(),
            topics: topics.clone(),
            cameras: cameras.to_vec(),
        };
        Ok((
            redundancy,
            Links {
                watch,
                watch_started: false,
                share,
            },
        ))
    }

    pub(in crate::service) fn in_share_group(&self) -> bool {
        self.group.is_some()
    }

    /// Announces an alarm just recorded to the share group; call before acknowledging it.
    pub(in crate::service) fn announce(&self, alarm: &Alarm) {
        if let Some(board) = &self.board {
            board.accepted(alarm);
        }
    }

    /// Whether another box is online on the broker.
    pub(in crate::service) fn others_online(&self) -> bool {
        self.peers.others_online() > 0
    }

    /// Starts the watch over the other boxes and the withdrawal of delivered alarms from the board.
    /// The watch takes the watch session's events; the links keep its client.
    pub(in crate::service) fn start(
        &self,
        links: &mut Links,
        sink: Arc<dyn AlarmSink>,
        store: Arc<Store>,
        stop: CancellationToken,
    ) -> Tasks {
        debug_assert!(!links.watch_started, "the watch over the other boxes starts once");
        links.watch_started = true;
        let (_, no_events) = tokio::sync::mpsc::channel(1);
        let events = std::mem::replace(&mut links.watch.events, no_events);
        let peers = tokio::spawn(self.peers.clone().run(sink, links.watch.client.clone(), events, stop));
        let board = self
            .board
            .clone()
            .map(|board| tokio::spawn(in_flight::withdraw_delivered_periodically(board, store)));
        Tasks { peers, board }
    }

    /// Leaves the share group before the box stops taking alarms: the broker stops handing this
    /// box alarms, and those already on their way are still recorded and acknowledged, since a
    /// clean session's unacknowledged messages end with it.
    pub(in crate::service) async fn leave_share_group(&self, links: &mut Links, sink: &Arc<dyn AlarmSink>) {
        let (Some(share), Some(group)) = (&mut links.share, &self.group) else {
            return;
        };
        for camera in &self.cameras {
            let _ = share.client.try_unsubscribe(self.topics.shared_alarm(group, camera));
        }
        let until = Instant::now() + SHARE_DRAIN;
        while let Ok(Some(event)) = tokio::time::timeout_at(until, share.events.recv()).await {
            if let LinkEvent::Message(msg) = event {
                intake::mqtt::take(sink, &self.topics, msg).await;
            }
        }
    }

    /// Withdraws what is delivered, says `offline` on the roster (a clean disconnect sends no Last
    /// Will; a survivor of the group answers what is still in flight), and closes the links.
    pub(in crate::service) async fn close(&self, links: Links, tasks: Tasks, store: &Store, wait: Duration) {
        if let Some(board) = &self.board {
            board.withdraw_delivered(store);
        }
        let _ = links.watch.client.try_publish(
            self.topics.box_roster(&self.box_id),
            rumqttc::QoS::AtLeastOnce,
            true,
            self.peers.roster(BoxStatus::Offline),
        );
        let _ = links.watch.client.try_disconnect();
        if let Some(share) = &links.share {
            let _ = share.client.try_disconnect();
        }
        let _ = tokio::time::timeout(wait, links.watch.task).await;
        tasks.peers.abort();
        if let Some(task) = tasks.board {
            task.abort();
        }
    }
}

impl Links {
    /// The next event of the shared alarm connection, or never when there is none.
    pub(in crate::service) async fn next_shared(&mut self) -> Option<LinkEvent> {
        match &mut self.share {
            Some(share) => share.events.recv().await,
            None => std::future::pending().await,
        }
    }
}

/// Answers the alarms an earlier run left unanswered. In a share group, a survivor may have
/// answered them while this box was away: it waits a few seconds to hear which, so that the
/// monitoring centre does not get an `unverifiable` after the survivor's real verdict.
pub(in crate::service) fn answer_interrupted(shared: &Arc<Shared>, unanswered: Vec<Unanswered>) {
    if !shared.redundancy.in_share_group() {
        alarm::answer_interrupted_alarms(shared, unanswered, &HashSet::new());
        return;
    }
    if unanswered.is_empty() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let ids: Vec<String> = unanswered.iter().map(|u| u.alarm_id.clone()).collect();
        let taken = shared.redundancy.peers.taken_from_me(&ids, TAKEN_WAIT).await;
        alarm::answer_interrupted_alarms(&shared, unanswered, &taken);
    });
}
