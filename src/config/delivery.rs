//! `[verdict]`, `[evidence]` and `[store]`: answering every alarm in time, the evidence image, and
//! the durable record.

use std::path::PathBuf;

use serde::Deserialize;

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
