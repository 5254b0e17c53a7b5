//! `[outputs.terminal]`.

use serde::{Deserialize, Serialize};

use crate::alert::Severity;
use crate::config::Filter;

/// Default `queue`: alerts waiting for the terminal; a burst beyond it is dropped and
/// counted rather than held in memory.
pub const DEFAULT_QUEUE: usize = 10_000;

/// Whether to colour terminal output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    /// When stdout is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `[outputs.terminal]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TerminalConfig {
    /// Print alerts. Default true.
    pub enabled: bool,
    /// `auto`, `always` or `never`. Default auto.
    pub color: ColorMode,
    /// Alerts below this severity are not sent here. Default info.
    pub min_severity: Severity,
    /// Also send updates of firing alerts (more occurrences, grouped into an incident), not
    /// only when they fire and resolve. Default false.
    pub updates: bool,
    /// Alerts queued for the terminal while it is slow; beyond it they are dropped and
    /// counted. Default 10000.
    pub queue: usize,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        TerminalConfig {
            enabled: true,
            color: ColorMode::Auto,
            min_severity: Severity::Info,
            updates: false,
            queue: DEFAULT_QUEUE,
        }
    }
}

impl TerminalConfig {
    /// Which alerts this output gets.
    pub fn filter(&self) -> Filter {
        Filter {
            min_severity: self.min_severity,
            updates: self.updates,
        }
    }

    /// Checks the settings; `key` is the section's dotted name.
    pub fn validate(&self, key: &str) -> Result<(), dlog_core::config::ConfigError> {
        if self.enabled && self.queue == 0 {
            return Err(dlog_core::config::ConfigError::invalid(
                format!("{key}.queue"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
