//! `[outputs.kafka]`.

use std::collections::BTreeMap;

use dlog_core::config::ConfigError;
use dlog_core::kafka::{ProducerConfig, ReservedBy};
use dlog_core::names;
use serde::{Deserialize, Serialize};

use crate::alert::Severity;
use crate::config::Filter;

/// Default `timeout_ms`: how long librdkafka may try to deliver one alert.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default `queue` (best effort only).
pub const DEFAULT_QUEUE: usize = 10_000;

/// `[outputs.kafka]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaOutputConfig {
    /// Write alerts to Kafka. Default true.
    pub enabled: bool,
    /// The topic. Default `alerts`.
    pub topic: String,
    /// Brokers; unset: `kafka_brokers`, and then the producer also gets the stage's
    /// `[consumer]` properties (security and the like), under its own `producer` table.
    pub brokers: Option<String>,
    /// Offsets are acknowledged only after Kafka acknowledged the alerts (acks=all). Default
    /// true.
    pub required: bool,
    /// How long one delivery may take before it is retried, ms. Default 30000.
    pub timeout_ms: u64,
    /// Extra librdkafka producer properties, passed through. What delivery rests on is the
    /// output's own: `acks`, `enable.idempotence`, `bootstrap.servers` (set `brokers`) and
    /// `message.timeout.ms` / `delivery.timeout.ms` (set `timeout_ms`) are refused.
    pub producer: BTreeMap<String, String>,
    /// Alerts below this severity are not sent here. Default info.
    pub min_severity: Severity,
    /// Also send updates of firing alerts (more occurrences, grouped into an incident), not
    /// only when they fire and resolve. Default false.
    pub updates: bool,
    /// Alerts queued while Kafka is slow, when not `required`; beyond it they are dropped
    /// and counted. Default 10000.
    pub queue: usize,
}

impl Default for KafkaOutputConfig {
    fn default() -> Self {
        KafkaOutputConfig {
            enabled: true,
            topic: names::ALERTS_TOPIC.to_string(),
            brokers: None,
            required: true,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            producer: BTreeMap::new(),
            min_severity: Severity::Info,
            updates: false,
            queue: DEFAULT_QUEUE,
        }
    }
}

impl KafkaOutputConfig {
    /// Which alerts this output gets.
    pub fn filter(&self) -> Filter {
        Filter {
            min_severity: self.min_severity,
            updates: self.updates,
        }
    }

    /// Checks the settings; `key` is the section's dotted name, `inputs` the topics the
    /// stage reads (alerts must not go back into them).
    pub fn validate(&self, key: &str, inputs: &[&String]) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let bad = |k: &str, reason: String| ConfigError::invalid(format!("{key}.{k}"), reason);
        if self.topic.trim().is_empty() {
            return Err(bad("topic", "is empty".into()));
        }
        if inputs.contains(&&self.topic) {
            return Err(bad(
                "topic",
                format!("`{}` is one of the input topics", self.topic),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(bad("timeout_ms", "must be at least 1".into()));
        }
        if self.queue == 0 {
            return Err(bad("queue", "must be at least 1".into()));
        }
        let (table, brokers, timeout) = (
            format!("{key}.producer"),
            format!("{key}.brokers"),
            format!("{key}.timeout_ms"),
        );
        ProducerConfig::check_properties(
            &self.producer,
            &ReservedBy {
                table: &table,
                brokers: &brokers,
                timeout: &timeout,
                message_max_bytes: None,
                queue: None,
            },
        )?;
        Ok(())
    }
}
