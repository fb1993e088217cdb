//! The alarms this box has accepted and not yet answered, announced on the broker for the other
//! boxes of its share group (retained on `{prefix}/boxes/{box}/in_flight`): if this box dies, a
//! survivor answers them.
//!
//! An alarm is announced before it is acknowledged to the broker, on the same connection, so the
//! broker has the announcement whenever it has the acknowledgement. It is withdrawn once its verdict
//! is delivered (the broker's PUBACK), not when it is made: a verdict still in this box's outbox
//! when it dies is answered by the survivor too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;

use super::peers::{InFlight, InFlightAlarm};
use crate::intake::alarm::Alarm;
use crate::store::Store;
use crate::support::lock;

/// How often delivered verdicts are looked for, to withdraw their alarms.
const PRUNE_EVERY: Duration = Duration::from_millis(500);

pub struct InFlightBoard {
    client: AsyncClient,
    topic: String,
    instance: String,
    /// By record key (the store's key of the verdict).
    alarms: Mutex<BTreeMap<String, InFlightAlarm>>,
}

impl InFlightBoard {
    pub fn new(client: AsyncClient, topic: String, instance: String) -> Self {
        Self {
            client,
            topic,
            instance,
            alarms: Mutex::new(BTreeMap::new()),
        }
    }

    /// Announces an alarm just recorded; call before acknowledging it.
    pub fn accepted(&self, alarm: &Alarm) {
        let mut alarms = lock(&self.alarms);
        // Keyed by record: a reused id is a second alarm, delivered on its own.
        alarms.insert(alarm.record_id.clone(), InFlightAlarm::of(alarm));
        self.announce(&alarms);
    }

    /// Withdraws the alarms whose verdicts the broker has acknowledged.
    pub fn withdraw_delivered(&self, store: &Store) {
        let ids: Vec<String> = lock(&self.alarms).keys().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let delivered = match crate::support::off_runtime(|| store.delivered_of(&ids)) {
            Ok(d) if !d.is_empty() => d,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which verdicts are delivered");
                return;
            }
        };
        let mut alarms = lock(&self.alarms);
        for id in &delivered {
            alarms.remove(id);
        }
        self.announce(&alarms);
    }

    /// Publishes the whole list, retained, so that the newest list is what a survivor reads. Never
    /// waits: with the broker away there is nobody to tell, and the next change sends it again.
    fn announce(&self, alarms: &BTreeMap<String, InFlightAlarm>) {
        let list = InFlight {
            instance: self.instance.clone(),
            alarms: alarms.values().cloned().collect(),
        };
        let body = serde_json::to_vec(&list).unwrap_or_default();
        if let Err(e) = self
            .client
            .try_publish(self.topic.clone(), QoS::AtLeastOnce, true, body)
        {
            tracing::warn!(error = %e, in_flight = alarms.len(), "cannot announce the alarms in flight");
        }
    }
}

/// Withdraws delivered alarms from the board until the task is dropped.
pub async fn withdraw_delivered_periodically(board: Arc<InFlightBoard>, store: Arc<Store>) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        board.withdraw_delivered(&store);
    }
}
