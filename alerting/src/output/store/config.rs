//! `[outputs.store]`.

use dlog_core::config::ConfigError;
use dlog_storage::StoreConfig;
use serde::{Deserialize, Serialize};

use crate::alert::Severity;
use crate::config::Filter;

/// Default `queue` (best effort only).
pub const DEFAULT_QUEUE: usize = 10_000;

/// Default `silence_refresh_ms`.
pub const DEFAULT_SILENCE_REFRESH_MS: u64 = 5_000;

/// `[outputs.store]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreOutputConfig {
    /// Upsert alerts into the store. Default false.
    pub enabled: bool,
    /// Offsets wait until the store accepted the alerts. Default true.
    pub required: bool,
    /// The store (`[outputs.store.backend]`: `data_dir`, or `elasticsearch_url`, ...).
    pub backend: StoreConfig,
    /// Alerts below this severity are not sent here. Default info.
    pub min_severity: Severity,
    /// Also send updates of firing alerts (more occurrences, grouped into an incident), not
    /// only when they fire and resolve. Default true.
    pub updates: bool,
    /// Alerts queued while the store is slow, when not `required`; beyond it they are
    /// dropped and counted. Default 10000.
    pub queue: usize,
    /// How often silences and acknowledgements are reread from this store (the terminal,
    /// Kafka and webhook outputs honour them). Default 5000.
    pub silence_refresh_ms: u64,
}

impl Default for StoreOutputConfig {
    fn default() -> Self {
        StoreOutputConfig {
            enabled: false,
            required: true,
            backend: StoreConfig::default(),
            min_severity: Severity::Info,
            updates: true,
            queue: DEFAULT_QUEUE,
            silence_refresh_ms: DEFAULT_SILENCE_REFRESH_MS,
        }
    }
}

impl StoreOutputConfig {
    /// Which alerts this output gets.
    pub fn filter(&self) -> Filter {
        Filter {
            min_severity: self.min_severity,
            updates: self.updates,
        }
    }

    /// Checks the settings; `key` is the section's dotted name.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.queue == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.queue"),
                "must be at least 1",
            ));
        }
        self.backend
            .validate()
            .map_err(|e| ConfigError::invalid(format!("{key}.backend"), e.to_string()))
    }
}
