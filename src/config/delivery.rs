//! `[verdict]`, `[evidence]` and `[store]`: answering every alarm in time, the evidence image, and
//! the durable record.

use std::path::PathBuf;

use serde::Deserialize;

use super::paths::Install;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerdictConfig {
    /// Every alarm gets a verdict within this many seconds of arriving, `unverifiable` if need be.
    pub deadline_s: f64,
    /// Alarms waiting for a verifier; beyond this an alarm is answered `unverifiable` (overloaded) at once.
    pub queue: usize,
    /// Alarms analysed at once, each on one core; unset: the number of cores.
    pub workers: Option<usize>,
}

impl VerdictConfig {
    /// The analysis workers to run: the configured number, or one per core.
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }
}

impl Default for VerdictConfig {
    fn default() -> Self {
        Self {
            deadline_s: 15.0,
            queue: 64,
            workers: None,
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
    /// The SQLite file holding the alarm log and the verdict outbox; default: `/var/lib/alarm-verifier/`
    /// when installed, the checkout's `data/` otherwise (`paths::Install`).
    pub path: PathBuf,
    /// Delivered verdicts and their alarms are deleted after this many days.
    pub retention_days: f64,
    /// Alarm clips together may take this many megabytes; the oldest go first. 0: no clips.
    pub max_clips_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: Install::current().store(),
            retention_days: 30.0,
            max_clips_mb: 2048,
        }
    }
}
