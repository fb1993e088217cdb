//! `GET /metrics`: Prometheus metrics (`alarm_verifier_*`, with the prometheus-client crate).
//! Counters are counted as things happen; gauges are read from the service at each scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Components;
use crate::store::records::Agreement;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    camera: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    camera: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DisagreementLabels {
    camera: String,
    kind: String,
}

pub struct Metrics {
    registry: Registry,
    verdicts: Family<VerdictLabels, Counter>,
    unverifiable: Family<CauseLabels, Counter>,
    alarms: Family<SourceLabels, Counter>,
    verification: Histogram,
    queue_depth: Gauge,
    cameras: Gauge,
    cameras_online: Gauge,
    mqtt_connected: Gauge,
    outbox_pending: Gauge,
    outbox_parked: Gauge,
    outbox_oldest: Gauge<f64, AtomicU64>,
    arc_up: Gauge,
    arc_pending: Gauge,
    inferences: Counter,
    inference_seconds: Counter<f64, AtomicU64>,
    disagreements: Family<DisagreementLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("alarm_verifier");
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register("verdicts", "Verdicts sent, by camera and verdict", verdicts.clone());
        let unverifiable = Family::<CauseLabels, Counter>::default();
        registry.register(
            "unverifiable",
            "Unverifiable verdicts, by camera and cause (camera_offline, stream_broken, overloaded, no_video, view_blocked, view_blinded, view_defocused, interrupted)",
            unverifiable.clone(),
        );
        let alarms = Family::<SourceLabels, Counter>::default();
        registry.register(
            "alarms",
            "Alarms accepted, by intake (mqtt, http, smtp, onvif)",
            alarms.clone(),
        );
        let verification = Histogram::new([0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 30.0]);
        registry.register(
            "verification_duration_seconds",
            "From receiving an alarm to its verdict",
            verification.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let queue_depth = gauge(&mut registry, "queue_depth", "Alarms in verification now");
        let cameras = gauge(&mut registry, "cameras", "Cameras configured");
        let cameras_online = gauge(&mut registry, "cameras_online", "Cameras whose main stream is online");
        let mqtt_connected = gauge(&mut registry, "mqtt_connected", "1 while connected to the broker");
        let outbox_pending = gauge(
            &mut registry,
            "outbox_pending",
            "Verdicts stored and not yet acknowledged by the broker",
        );
        let outbox_parked = gauge(
            &mut registry,
            "outbox_parked",
            "Verdicts and error reports the broker refused, set aside until retried (POST /api/outbox/retry)",
        );
        let outbox_oldest = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest verdict not yet acknowledged by the broker (0 when none)",
            outbox_oldest.clone(),
        );
        let arc_up = gauge(
            &mut registry,
            "arc_up",
            "1 while the alarm receiving centre answers over DC-09 (0 also when [dc09.arc] is not set)",
        );
        let arc_pending = gauge(
            &mut registry,
            "arc_pending",
            "Verdicts stored for the alarm receiving centre and not yet acknowledged by it",
        );
        let inferences = Counter::default();
        registry.register("detector_inferences", "Detector runs", inferences.clone());
        let inference_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "detector_inference_seconds",
            "Time spent in detector runs (divide by detector_inferences_total for the mean)",
            inference_seconds.clone(),
        );
        let disagreements = Family::<DisagreementLabels, Gauge>::default();
        registry.register(
            "feedback_disagreements",
            "Verdicts the operators disagreed with: kind verified_but_false, or cleared_but_real (the one that matters most)",
            disagreements.clone(),
        );
        Self {
            registry,
            verdicts,
            unverifiable,
            alarms,
            verification,
            queue_depth,
            cameras,
            cameras_online,
            mqtt_connected,
            outbox_pending,
            outbox_parked,
            outbox_oldest,
            arc_up,
            arc_pending,
            inferences,
            inference_seconds,
            disagreements,
        }
    }

    /// Counts a verdict sent; `cause` for an unverifiable one.
    pub fn verdict(&self, camera: &str, verdict: &str, cause: Option<&str>, seconds: f64) {
        self.verdicts
            .get_or_create(&VerdictLabels {
                camera: camera.to_owned(),
                verdict: verdict.to_owned(),
            })
            .inc();
        if let Some(cause) = cause {
            self.unverifiable
                .get_or_create(&CauseLabels {
                    camera: camera.to_owned(),
                    cause: cause.to_owned(),
                })
                .inc();
        }
        self.verification.observe(seconds);
    }

    /// An alarm accepted from `source` (`mqtt`, `http:vms`, `smtp:nvr@…`): counted by its intake.
    pub fn alarm(&self, source: &str) {
        let intake = source.split(':').next().unwrap_or(source);
        self.alarms
            .get_or_create(&SourceLabels {
                source: intake.to_owned(),
            })
            .inc();
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, now: &Components, agreement: &[Agreement]) -> String {
        self.queue_depth.set(now.queue_depth as i64);
        self.cameras.set(now.cameras as i64);
        self.cameras_online.set(now.cameras_online as i64);
        self.mqtt_connected.set(i64::from(now.mqtt_connected));
        self.outbox_pending.set(now.outbox_pending as i64);
        self.outbox_parked.set(now.outbox_parked as i64);
        self.outbox_oldest.set(now.outbox_oldest_s.unwrap_or(0.0));
        self.arc_up.set(i64::from(now.arc.as_ref().is_some_and(|a| a.up)));
        self.arc_pending.set(now.arc.as_ref().map_or(0, |a| a.pending as i64));
        let (count, seconds) = now.inference_totals;
        self.inferences.inc_by(count.saturating_sub(self.inferences.get()));
        self.inference_seconds
            .inc_by((seconds - self.inference_seconds.get()).max(0.0));
        for a in agreement {
            for (kind, value) in [
                ("verified_but_false", a.verified_but_false),
                ("cleared_but_real", a.cleared_but_real),
            ] {
                self.disagreements
                    .get_or_create(&DisagreementLabels {
                        camera: a.camera.clone(),
                        kind: kind.to_owned(),
                    })
                    .set(value as i64);
            }
        }
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
