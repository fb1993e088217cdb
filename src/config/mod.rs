//! Site configuration: TOML read into typed structs, then checked as a whole.
//!
//! Every key has a default (documented in the README) except the camera list itself.
//! Unknown keys are errors, so a typo never silently falls back to a default.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: key `{key}`: {expected}")]
    Invalid {
        path: String,
        key: String,
        expected: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the site, copied into every verdict.
    #[serde(default = "default_site")]
    pub site: String,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub detector: DetectorConfig,
    #[serde(default)]
    pub clip: ClipConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub verdict: VerdictConfig,
    #[serde(default)]
    pub evidence: EvidenceConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default, rename = "camera")]
    pub cameras: Vec<CameraConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub topic_prefix: String,
    /// MQTT client id; empty means `alarm-verifier-{site}`.
    pub client_id: String,
    pub keep_alive_s: u64,
    pub username: String,
    /// The password itself; prefer `password_env` so it stays out of the file.
    pub password: Secret,
    /// Name of an environment variable holding the password.
    pub password_env: String,
    /// CA certificate (PEM) of the broker; setting it turns TLS on.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that authenticate clients by certificate.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// A password: deserialised like a string, never shown by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl MqttConfig {
    /// The password from `password_env` or `password`, if any.
    pub fn resolve_password(&self) -> Result<Option<String>, ConfigError> {
        if !self.password_env.is_empty() {
            return std::env::var(&self.password_env).map(Some).map_err(|_| ConfigError::Invalid {
                path: "environment".into(),
                key: "mqtt.password_env".into(),
                expected: format!("expected the environment variable {} to hold the MQTT password", self.password_env),
            });
        }
        Ok((!self.password.is_empty()).then(|| self.password.expose().to_owned()))
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            topic_prefix: "alarm-verifier".into(),
            client_id: String::new(),
            keep_alive_s: 10,
            username: String::new(),
            password: Secret::default(),
            password_env: String::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    pub model: PathBuf,
    /// The ONNX Runtime shared library, loaded at start-up.
    pub onnxruntime: PathBuf,
    /// Intra-op threads for inference; one leaves a core for GStreamer's decoding.
    pub threads: usize,
    pub provider: Provider,
    pub optimization: Optimization,
    /// How the model's outputs are laid out.
    pub layout: Layout,
    /// Side of the square model input; unset: the model's own size, or the layout's default.
    pub input_size: Option<u32>,
    /// Unset: the layout's default (BGR for YOLOX, RGB otherwise).
    pub channel_order: Option<ChannelOrder>,
    /// Each input value is `(pixel * scale - mean) / std`; unset: the layout's defaults.
    pub scale: Option<f32>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    /// Unset: the layout's default.
    pub resize: Option<ResizeMode>,
    /// Class names, one per line, in the model's class order; unset: COCO.
    pub labels: Option<PathBuf>,
    /// Detections below this score are discarded before NMS.
    pub score_threshold: f32,
    pub nms_iou: f32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            model: "models/yolox_nano.onnx".into(),
            onnxruntime: "third_party/onnxruntime/libonnxruntime.so.1.31.1".into(),
            threads: 1,
            provider: Provider::Cpu,
            optimization: Optimization::All,
            layout: Layout::Yolox,
            input_size: None,
            channel_order: None,
            scale: None,
            mean: None,
            std: None,
            resize: None,
            labels: None,
            score_threshold: 0.25,
            nms_iou: 0.45,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
    Tensorrt,
    Openvino,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimization {
    Disable,
    Basic,
    Extended,
    All,
}

/// Model output layouts (DESIGN.md, "Detector").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// YOLOX: raw grid output `[1, N, 5 + classes]`, strides 8/16/32.
    Yolox,
    /// Ultralytics YOLO: v5 `[1, N, 5 + classes]` or v8/v11 `[1, 4 + classes, N]`, boxes decoded.
    Yolo,
    /// NMS inside the graph: boxes, scores, classes and count outputs (TensorFlow Object Detection API).
    Ssd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Keep the aspect ratio, image at the top left, padded with grey 114 (YOLOX).
    Letterbox,
    /// Keep the aspect ratio, image centred, padded with grey 114 (Ultralytics).
    LetterboxCenter,
    /// Scale each axis to the input size (SSD).
    Stretch,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClipConfig {
    /// Seconds of video analysed before the alarm time.
    pub pre_s: f64,
    /// Seconds of video analysed after the alarm time.
    pub post_s: f64,
    /// Frames per second sampled from the clip for detection.
    pub analysis_fps: f64,
    /// Seconds of encoded video each camera keeps in memory.
    pub buffer_s: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            pre_s: 2.0,
            post_s: 4.0,
            analysis_fps: 3.0,
            buffer_s: 10.0,
        }
    }
}

/// The site's rules for turning detections into a verdict. `[policy]` holds the site-wide
/// defaults; a camera's `[camera.policy]` overrides any of them (see [`PolicyOverride`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Per-frame score a detection needs to count at all.
    pub min_score: f32,
    /// Confirmation: the median of an object's scores over the frames it is in.
    pub threshold: f32,
    /// Analysed frames an object must be in.
    pub min_frames: usize,
    /// Box area as a fraction of the frame.
    pub min_area: f32,
    pub max_area: f32,
    /// Box width / height.
    pub min_ratio: f32,
    pub max_ratio: f32,
    /// A vehicle whose boxes all overlap its first one by this IoU or more has not moved.
    pub stationary_iou: f32,
    /// Target classes (`person`, `vehicle`, or any label of the model) and their own rules.
    /// Classes given here are merged over the defaults (`person`, `vehicle`); `enabled = false`
    /// turns a default off.
    #[serde(deserialize_with = "classes_over_defaults")]
    pub classes: std::collections::BTreeMap<String, ClassRule>,
    /// Where targets count; none means the whole frame.
    #[serde(rename = "zone")]
    pub zones: Vec<Zone>,
    /// Where detections are ignored.
    #[serde(rename = "mask")]
    pub masks: Vec<Zone>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        // Built here, not from default_classes(), which calls this.
        let mut classes = std::collections::BTreeMap::new();
        classes.insert("person".to_owned(), ClassRule::default());
        classes.insert(
            "vehicle".to_owned(),
            ClassRule {
                ignore_stationary: Some(true),
                ..ClassRule::default()
            },
        );
        Self {
            min_score: 0.5,
            // YOLOX-Nano scores real people and vehicles lower than the models Frigate's 0.7 was
            // set for; 0.55 is what the development set supports (README, "Verification policy").
            threshold: 0.55,
            min_frames: 2,
            min_area: 0.0005,
            max_area: 0.9,
            min_ratio: 0.05,
            max_ratio: 20.0,
            stationary_iou: 0.7,
            classes,
            zones: Vec::new(),
            masks: Vec::new(),
        }
    }
}

fn default_classes() -> std::collections::BTreeMap<String, ClassRule> {
    PolicyConfig::default().classes
}

fn classes_over_defaults<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::collections::BTreeMap<String, ClassRule>, D::Error> {
    let given = std::collections::BTreeMap::<String, ClassRule>::deserialize(d)?;
    Ok(merge_classes(&default_classes(), &given))
}

/// `given` over `base`, rule by rule: a class in both keeps `base`'s values where `given` has none.
fn merge_classes(
    base: &std::collections::BTreeMap<String, ClassRule>,
    given: &std::collections::BTreeMap<String, ClassRule>,
) -> std::collections::BTreeMap<String, ClassRule> {
    let mut classes = base.clone();
    for (name, rule) in given {
        let merged = match base.get(name) {
            Some(b) => rule.or(b),
            None => rule.clone(),
        };
        classes.insert(name.clone(), merged);
    }
    classes
}

/// A target class's own rules; unset values come from the policy.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassRule {
    /// `false` turns off a class inherited from the site defaults.
    pub enabled: Option<bool>,
    pub min_score: Option<f32>,
    pub threshold: Option<f32>,
    pub min_frames: Option<usize>,
    pub min_area: Option<f32>,
    pub max_area: Option<f32>,
    pub min_ratio: Option<f32>,
    pub max_ratio: Option<f32>,
    /// Ignore objects of this class that were already there before the alarm and have not moved
    /// (parked vehicles). On for `vehicle` by default; never allowed for `person`.
    pub ignore_stationary: Option<bool>,
}

impl ClassRule {
    /// `self`, with anything unset taken from `base`.
    fn or(&self, base: &ClassRule) -> ClassRule {
        ClassRule {
            enabled: self.enabled.or(base.enabled),
            min_score: self.min_score.or(base.min_score),
            threshold: self.threshold.or(base.threshold),
            min_frames: self.min_frames.or(base.min_frames),
            min_area: self.min_area.or(base.min_area),
            max_area: self.max_area.or(base.max_area),
            min_ratio: self.min_ratio.or(base.min_ratio),
            max_ratio: self.max_ratio.or(base.max_ratio),
            ignore_stationary: self.ignore_stationary.or(base.ignore_stationary),
        }
    }
}

/// A polygon in normalised frame coordinates (0..1, origin top left).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub name: String,
    pub points: Vec<[f32; 2]>,
}

/// A camera's changes to the site policy: any key of `[policy]`. Classes merge rule by rule;
/// zones and masks, when given, replace the site's.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    pub min_score: Option<f32>,
    pub threshold: Option<f32>,
    pub min_frames: Option<usize>,
    pub min_area: Option<f32>,
    pub max_area: Option<f32>,
    pub min_ratio: Option<f32>,
    pub max_ratio: Option<f32>,
    pub stationary_iou: Option<f32>,
    pub classes: Option<std::collections::BTreeMap<String, ClassRule>>,
    #[serde(rename = "zone")]
    pub zones: Option<Vec<Zone>>,
    #[serde(rename = "mask")]
    pub masks: Option<Vec<Zone>>,
}

impl PolicyConfig {
    /// The site policy with a camera's overrides applied.
    pub fn with_override(&self, o: &PolicyOverride) -> PolicyConfig {
        let classes = match &o.classes {
            Some(given) => merge_classes(&self.classes, given),
            None => self.classes.clone(),
        };
        PolicyConfig {
            min_score: o.min_score.unwrap_or(self.min_score),
            threshold: o.threshold.unwrap_or(self.threshold),
            min_frames: o.min_frames.unwrap_or(self.min_frames),
            min_area: o.min_area.unwrap_or(self.min_area),
            max_area: o.max_area.unwrap_or(self.max_area),
            min_ratio: o.min_ratio.unwrap_or(self.min_ratio),
            max_ratio: o.max_ratio.unwrap_or(self.max_ratio),
            stationary_iou: o.stationary_iou.unwrap_or(self.stationary_iou),
            classes,
            zones: o.zones.clone().unwrap_or_else(|| self.zones.clone()),
            masks: o.masks.clone().unwrap_or_else(|| self.masks.clone()),
        }
    }

    /// Checks the policy; errors name the key under `prefix` (`policy` or `camera[i].policy`).
    fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let key = |k: &str| format!("{prefix}.{k}");
        let fraction = |k: &str, v: f32| check_fraction(v).map_err(|e| (key(k), e));
        fraction("min_score", self.min_score)?;
        fraction("threshold", self.threshold)?;
        fraction("min_area", self.min_area)?;
        fraction("max_area", self.max_area)?;
        fraction("stationary_iou", self.stationary_iou)?;
        if self.min_frames == 0 {
            return Err((key("min_frames"), "expected at least 1".into()));
        }
        if !(self.min_ratio >= 0.0 && self.min_ratio <= self.max_ratio) {
            return Err((key("min_ratio"), format!("expected 0 <= min_ratio <= max_ratio, got {} and {}", self.min_ratio, self.max_ratio)));
        }
        if self.min_area > self.max_area {
            return Err((key("min_area"), format!("expected min_area <= max_area, got {} and {}", self.min_area, self.max_area)));
        }
        for (name, rule) in &self.classes {
            let ck = |k: &str| format!("{prefix}.classes.{name}.{k}");
            for (k, v) in [("min_score", rule.min_score), ("threshold", rule.threshold), ("min_area", rule.min_area), ("max_area", rule.max_area)] {
                if let Some(v) = v {
                    check_fraction(v).map_err(|e| (ck(k), e))?;
                }
            }
            if rule.min_frames == Some(0) {
                return Err((ck("min_frames"), "expected at least 1".into()));
            }
            if name == "person" && rule.ignore_stationary == Some(true) {
                return Err((
                    ck("ignore_stationary"),
                    "expected false: a person on a closed site is always reported, moving or not".into(),
                ));
            }
        }
        if !self.classes.values().any(|r| r.enabled != Some(false)) {
            return Err((key("classes"), "expected at least one enabled class, e.g. person".into()));
        }
        let mut names = HashSet::new();
        for (i, zone) in self.zones.iter().enumerate() {
            check_polygon(zone).map_err(|e| (format!("{prefix}.zone[{i}]"), e))?;
            if !names.insert(zone.name.as_str()) {
                return Err((format!("{prefix}.zone[{i}].name"), format!("expected a unique name, {:?} is used twice", zone.name)));
            }
        }
        for (i, mask) in self.masks.iter().enumerate() {
            check_polygon(mask).map_err(|e| (format!("{prefix}.mask[{i}]"), e))?;
        }
        Ok(())
    }
}

fn check_polygon(zone: &Zone) -> Result<(), String> {
    if zone.points.len() < 3 {
        return Err(format!("{:?}: expected a polygon of at least 3 points, got {}", zone.name, zone.points.len()));
    }
    if let Some(p) = zone.points.iter().find(|p| !p.iter().all(|v| (0.0..=1.0).contains(v))) {
        return Err(format!("{:?}: expected points in normalised coordinates 0..1, got {p:?}", zone.name));
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerdictConfig {
    /// Every alarm gets a verdict within this many seconds of arriving, `unverifiable` if need be.
    pub deadline_s: f64,
    /// Alarms waiting for a verifier; beyond this an alarm is answered `unverifiable` (overloaded) at once.
    pub queue: usize,
    /// Alarms verified at the same time.
    pub workers: usize,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        Self {
            deadline_s: 15.0,
            queue: 64,
            workers: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    /// Longest side of the evidence JPEG, in pixels; larger frames are scaled down.
    pub max_size: u32,
    /// JPEG quality, 1 to 100.
    pub quality: u8,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            max_size: 1280,
            quality: 85,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite file holding the alarm log and the verdict outbox.
    pub path: PathBuf,
    /// Delivered verdicts and their alarms are deleted after this many days.
    pub retention_days: f64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: "data/alarm-verifier.db".into(),
            retention_days: 30.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub id: String,
    pub url: String,
    /// RTSP lower transport: `tcp` (default, survives lossy links) or `udp`.
    #[serde(default)]
    pub transport: RtspTransport,
    /// Seconds without video after which the stream is restarted.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout_s: f64,
    /// This camera's changes to the site policy.
    #[serde(default)]
    pub policy: PolicyOverride,
}

fn default_stall_timeout() -> f64 {
    10.0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    #[default]
    Tcp,
    Udp,
}

fn default_site() -> String {
    "site".into()
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// The defaults, with no cameras: what `verify-clip` uses without `--config`.
    pub fn offline_default() -> Self {
        Self {
            site: default_site(),
            mqtt: MqttConfig::default(),
            detector: DetectorConfig::default(),
            clip: ClipConfig::default(),
            policy: PolicyConfig::default(),
            verdict: VerdictConfig::default(),
            evidence: EvidenceConfig::default(),
            store: StoreConfig::default(),
            cameras: Vec::new(),
        }
    }

    pub fn camera(&self, id: &str) -> Option<&CameraConfig> {
        self.cameras.iter().find(|c| c.id == id)
    }

    /// The policy that applies to `camera`: the site's, with the camera's overrides.
    pub fn camera_policy(&self, camera: &CameraConfig) -> PolicyConfig {
        self.policy.with_override(&camera.policy)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, expected: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key: key.to_owned(),
            expected,
        };
        check_topic_level(&self.site).map_err(|e| invalid("site", e))?;
        if self.mqtt.host.trim().is_empty() {
            return Err(invalid("mqtt.host", "expected a host name or address".into()));
        }
        if self.mqtt.port == 0 {
            return Err(invalid("mqtt.port", "expected a port from 1 to 65535".into()));
        }
        let prefix = &self.mqtt.topic_prefix;
        if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.starts_with('/') || prefix.ends_with('/') {
            return Err(invalid(
                "mqtt.topic_prefix",
                format!("expected a topic prefix without wildcards or leading/trailing '/', got {prefix:?}"),
            ));
        }
        if self.detector.threads == 0 {
            return Err(invalid("detector.threads", "expected at least 1".into()));
        }
        if let Some(size) = self.detector.input_size
            && !(16..=4096).contains(&size)
        {
            return Err(invalid("detector.input_size", format!("expected 16 to 4096 pixels, got {size}")));
        }
        if self.detector.scale.is_some_and(|s| !s.is_finite() || s == 0.0) {
            return Err(invalid("detector.scale", "expected a finite, non-zero number".into()));
        }
        if self.detector.std.is_some_and(|s| s.iter().any(|v| !v.is_finite() || *v == 0.0)) {
            return Err(invalid("detector.std", "expected three finite, non-zero numbers".into()));
        }
        check_fraction(self.detector.score_threshold).map_err(|e| invalid("detector.score_threshold", e))?;
        check_fraction(self.detector.nms_iou).map_err(|e| invalid("detector.nms_iou", e))?;
        self.policy.validate("policy").map_err(|(k, e)| invalid(&k, e))?;
        check_positive(self.clip.pre_s, true).map_err(|e| invalid("clip.pre_s", e))?;
        check_positive(self.clip.post_s, true).map_err(|e| invalid("clip.post_s", e))?;
        check_positive(self.clip.analysis_fps, false).map_err(|e| invalid("clip.analysis_fps", e))?;
        check_positive(self.clip.buffer_s, false).map_err(|e| invalid("clip.buffer_s", e))?;
        if self.clip.buffer_s < self.clip.pre_s {
            return Err(invalid(
                "clip.buffer_s",
                format!(
                    "expected at least clip.pre_s ({} s) so the pre-alarm video is still buffered, got {}",
                    self.clip.pre_s, self.clip.buffer_s
                ),
            ));
        }
        check_positive(self.verdict.deadline_s, false).map_err(|e| invalid("verdict.deadline_s", e))?;
        if self.verdict.queue == 0 {
            return Err(invalid("verdict.queue", "expected at least 1".into()));
        }
        if self.verdict.workers == 0 {
            return Err(invalid("verdict.workers", "expected at least 1".into()));
        }
        if !(1..=100).contains(&self.evidence.quality) {
            return Err(invalid("evidence.quality", format!("expected 1 to 100, got {}", self.evidence.quality)));
        }
        check_positive(self.store.retention_days, false).map_err(|e| invalid("store.retention_days", e))?;
        if self.mqtt.client_cert.is_some() != self.mqtt.client_key.is_some() {
            return Err(invalid(
                "mqtt.client_cert",
                "expected mqtt.client_cert and mqtt.client_key together".into(),
            ));
        }
        if self.mqtt.client_cert.is_some() && self.mqtt.ca_file.is_none() {
            return Err(invalid("mqtt.ca_file", "expected a CA file: client certificates need TLS".into()));
        }
        if !self.mqtt.password.is_empty() && !self.mqtt.password_env.is_empty() {
            return Err(invalid("mqtt.password", "expected either mqtt.password or mqtt.password_env, not both".into()));
        }
        if self.evidence.max_size < 64 {
            return Err(invalid("evidence.max_size", format!("expected at least 64, got {}", self.evidence.max_size)));
        }
        let mut seen = HashSet::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            check_topic_level(&camera.id).map_err(|e| invalid(&format!("camera[{i}].id"), e))?;
            if !seen.insert(camera.id.as_str()) {
                return Err(invalid(
                    &format!("camera[{i}].id"),
                    format!("expected a unique camera id, {:?} is used twice", camera.id),
                ));
            }
            check_rtsp_url(&camera.url).map_err(|e| invalid(&format!("camera[{i}].url"), e))?;
            check_positive(camera.stall_timeout_s, false).map_err(|e| invalid(&format!("camera[{i}].stall_timeout_s"), e))?;
            self.camera_policy(camera)
                .validate(&format!("camera[{i}].policy"))
                .map_err(|(k, e)| invalid(&k, e))?;
        }
        Ok(())
    }
}

/// Camera ids and the site name become MQTT topic levels.
fn check_topic_level(value: &str) -> Result<(), String> {
    if value.is_empty() || value.contains(['/', '+', '#']) || value.chars().any(char::is_control) {
        return Err(format!(
            "expected a non-empty name usable as an MQTT topic level (no '/', '+', '#'), got {value:?}"
        ));
    }
    Ok(())
}

fn check_rtsp_url(value: &str) -> Result<(), String> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "rtsp" | "rtsps" | "rtspt") && u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        Ok(u) => Err(format!(
            "expected an rtsp:// URL with a host, got scheme {:?} in {}",
            u.scheme(),
            redact_url(value)
        )),
        Err(e) => Err(format!("expected an rtsp:// URL, got {} ({e})", redact_url(value))),
    }
}

/// Hides the password of a camera URL, for logs, errors and state messages.
pub fn redact_url(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        // Not a URL: hide whatever sits between "://" and "@", where credentials would be.
        Err(_) => match (value.find("://"), value.rfind('@')) {
            (Some(s), Some(at)) if at > s + 3 => format!("{}***{}", &value[..s + 3], &value[at..]),
            _ => value.to_owned(),
        },
    }
}

fn check_fraction(v: f32) -> Result<(), String> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("expected a number from 0 to 1, got {v}"))
    }
}

fn check_positive(v: f64, zero_ok: bool) -> Result<(), String> {
    if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) {
        Ok(())
    } else if zero_ok {
        Err(format!("expected a number of seconds, 0 or more, got {v}"))
    } else {
        Err(format!("expected a number greater than 0, got {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[mqtt]
host = "127.0.0.1"
port = 1883
topic_prefix = "alarm-verifier"
[detector]
model = "models/yolox_nano.onnx"
[[camera]]
id = "gate"
url = "rtsp://user:pass@10.0.0.5:554/stream1"
"#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = Config::parse(MINIMAL, "site.toml").expect("valid config");
        assert_eq!(c.cameras.len(), 1);
        assert_eq!(c.cameras[0].id, "gate");
        assert_eq!(c.cameras[0].transport, RtspTransport::Tcp);
        assert_eq!(c.clip.buffer_s, 10.0);
        assert_eq!(c.detector.threads, 1);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("port = 1883", "port = 1883\nprot = 1");
        let err = Config::parse(&text, "site.toml").unwrap_err().to_string();
        assert!(err.contains("site.toml") && err.contains("prot"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_expectation() {
        let text = MINIMAL.replace("port = 1883", "port = \"x\"");
        let err = Config::parse(&text, "site.toml").unwrap_err().to_string();
        assert!(err.contains("port") && err.contains("u16"), "{err}");
    }

    #[test]
    fn bad_camera_url_is_named_and_redacted() {
        let text = MINIMAL.replace("rtsp://user:pass@10.0.0.5:554/stream1", "http://user:secret@cam/x");
        let err = Config::parse(&text, "site.toml").unwrap_err().to_string();
        assert!(err.contains("camera[0].url") && err.contains("rtsp://"), "{err}");
        assert!(!err.contains("secret"), "password leaked: {err}");
    }

    #[test]
    fn duplicate_camera_id_is_rejected() {
        let text = format!("{MINIMAL}\n[[camera]]\nid = \"gate\"\nurl = \"rtsp://10.0.0.6/s\"\n");
        let err = Config::parse(&text, "site.toml").unwrap_err().to_string();
        assert!(err.contains("camera[1].id") && err.contains("twice"), "{err}");
    }

    #[test]
    fn camera_policy_overrides_the_site_rule_by_rule() {
        // The camera tables follow MINIMAL's [[camera]], so they belong to that camera.
        let text = format!(
            "[policy]\nthreshold = 0.7\n[policy.classes.person]\nmin_score = 0.4\n{MINIMAL}\n[camera.policy]\nmin_frames = 3\n\
             [camera.policy.classes.person]\nthreshold = 0.8\n[camera.policy.classes.vehicle]\nenabled = false\n\
             [[camera.policy.zone]]\nname = \"yard\"\npoints = [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]\n"
        );
        let c = Config::parse(&text, "site.toml").expect("valid");
        let p = c.camera_policy(&c.cameras[0]);
        assert_eq!(p.threshold, 0.7);
        assert_eq!(p.min_frames, 3);
        let person = &p.classes["person"];
        assert_eq!((person.min_score, person.threshold), (Some(0.4), Some(0.8)));
        assert_eq!(p.classes["vehicle"].enabled, Some(false));
        assert_eq!(p.classes["vehicle"].ignore_stationary, Some(true));
        assert_eq!(p.zones.len(), 1);
        assert!(c.policy.zones.is_empty());
    }

    #[test]
    fn policy_errors_name_the_key() {
        let cases = [
            ("[policy.classes.person]\nignore_stationary = true\n", "policy.classes.person.ignore_stationary"),
            ("[[policy.zone]]\nname = \"a\"\npoints = [[0, 0], [1, 0]]\n", "policy.zone[0]"),
            ("[[policy.zone]]\nname = \"a\"\npoints = [[0, 0], [2, 0], [1, 1]]\n", "policy.zone[0]"),
            ("[policy]\nthreshold = 1.5\n", "policy.threshold"),
        ];
        for (snippet, key) in cases {
            let err = Config::parse(snippet, "site.toml").unwrap_err().to_string();
            assert!(err.contains(key), "{snippet}: {err}");
        }
    }

    #[test]
    fn mqtt_password_never_shows_in_debug() {
        let text = MINIMAL.replace("port = 1883", "port = 1883\nusername = \"u\"\npassword = \"hunter2\"");
        let c = Config::parse(&text, "site.toml").expect("valid");
        assert_eq!(c.mqtt.resolve_password().expect("password").as_deref(), Some("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn missing_password_env_names_the_variable() {
        let text = MINIMAL.replace("port = 1883", "port = 1883\npassword_env = \"AV_TEST_UNSET_PASSWORD\"");
        let c = Config::parse(&text, "site.toml").expect("valid");
        let err = c.mqtt.resolve_password().unwrap_err().to_string();
        assert!(err.contains("mqtt.password_env") && err.contains("AV_TEST_UNSET_PASSWORD"), "{err}");
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(redact_url("rtsp://u:p@h:554/s"), "rtsp://u:***@h:554/s");
        assert_eq!(redact_url("rtsp://h/s"), "rtsp://h/s");
        assert!(!redact_url("rtsp://u:p w@[bad/s").contains("p w"));
    }
}
