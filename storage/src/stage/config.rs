//! The indexing stage's settings: a serde struct read from TOML, overlaid with env and flags
//! by the binary, and validated before anything connects.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use dlog_core::names;
use serde::{Deserialize, Serialize};

use crate::config::StoreConfig;

/// Default `kafka_brokers`.
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
/// Default `group_id`.
pub const DEFAULT_GROUP_ID: &str = "dlog-indexer";
/// Default `batch_max_records`.
pub const DEFAULT_BATCH_MAX_RECORDS: usize = 500;
/// Default `batch_linger_ms`.
pub const DEFAULT_BATCH_LINGER_MS: u64 = 100;
/// Default `retry_initial_ms`, the one every stage shares.
pub const DEFAULT_RETRY_INITIAL_MS: u64 = dlog_core::stage::DEFAULT_RETRY_INITIAL_MS;
/// Default `retry_max_ms`, the one every stage shares.
pub const DEFAULT_RETRY_MAX_MS: u64 = dlog_core::stage::DEFAULT_RETRY_MAX_MS;
/// Default `lag_interval_ms`.
pub const DEFAULT_LAG_INTERVAL_MS: u64 = 15_000;
/// Default `session_timeout_ms`.
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = 10_000;
/// Default `topic_partitions`.
pub const DEFAULT_TOPIC_PARTITIONS: i32 = 3;

/// librdkafka properties the stage sets itself, with why a user may not override them.
const RESERVED_CONSUMER_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `kafka_brokers` instead"),
    ("group.id", "set `group_id` instead"),
    (
        "enable.auto.commit",
        "offsets are committed only after the store acknowledged every document derived from them",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed only after the store acknowledged every document derived from them",
    ),
];

/// Everything the indexing stage needs to run. Every field has a default, so a TOML file
/// names only what it changes; unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexerConfig {
    /// Kafka bootstrap brokers, `HOST:PORT[,HOST:PORT..]`.
    pub kafka_brokers: String,
    /// Consumer group. Instances with the same group share the partitions.
    pub group_id: String,
    /// Topic of spans.
    pub trace_logs_topic: String,
    /// Topic of log records.
    pub service_logs_topic: String,
    /// Topic of registration and heartbeat events.
    pub heartbeat_logs_topic: String,
    /// Topic that receives undecodable records and documents the store rejected for good.
    pub dead_letters_topic: String,
    /// Create missing topics (the three inputs and `dead_letters_topic`) at start.
    pub create_topics: bool,
    /// Partitions of topics created with `create_topics`.
    pub topic_partitions: i32,
    /// Consumer-group session timeout, ms.
    pub session_timeout_ms: u32,
    /// Extra librdkafka consumer properties, passed through (e.g. `security.protocol`).
    pub consumer: BTreeMap<String, String>,
    /// Admin listen address serving `/metrics` (Prometheus) and `/healthz`. Port 0 picks one.
    pub admin: SocketAddr,
    /// Most records taken from Kafka per batch (one store write and one commit per batch).
    pub batch_max_records: usize,
    /// How long a batch waits to fill up, ms.
    pub batch_linger_ms: u64,
    /// First wait before retrying a failed store write, ms; doubles per attempt.
    pub retry_initial_ms: u64,
    /// Longest wait between store write retries, ms.
    pub retry_max_ms: u64,
    /// How often consumer lag is read from the broker, ms (0 disables it).
    pub lag_interval_ms: u64,
    /// The store: embedded directory or Elasticsearch (`[store]` table in TOML).
    pub store: StoreConfig,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            kafka_brokers: DEFAULT_KAFKA_BROKERS.to_string(),
            group_id: DEFAULT_GROUP_ID.to_string(),
            trace_logs_topic: names::TRACE_LOGS_TOPIC.to_string(),
            service_logs_topic: names::SERVICE_LOGS_TOPIC.to_string(),
            heartbeat_logs_topic: names::HEARTBEAT_LOGS_TOPIC.to_string(),
            dead_letters_topic: names::DEAD_LETTERS_TOPIC.to_string(),
            create_topics: false,
            topic_partitions: DEFAULT_TOPIC_PARTITIONS,
            session_timeout_ms: DEFAULT_SESSION_TIMEOUT_MS,
            consumer: BTreeMap::new(),
            admin: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), names::INDEXER_ADMIN_PORT),
            batch_max_records: DEFAULT_BATCH_MAX_RECORDS,
            batch_linger_ms: DEFAULT_BATCH_LINGER_MS,
            retry_initial_ms: DEFAULT_RETRY_INITIAL_MS,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
            lag_interval_ms: DEFAULT_LAG_INTERVAL_MS,
            store: StoreConfig::default(),
        }
    }
}

pub use dlog_core::config::ConfigError;

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, reason)
}

impl IndexerConfig {
    /// Reads a TOML file (missing keys take their defaults).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        dlog_core::config::read_toml(path)
    }

    /// Checks every setting, naming the key and the reason of the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka_brokers.trim().is_empty()
            || self.kafka_brokers.split(',').any(|b| {
                !b.trim()
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            })
        {
            return Err(invalid(
                "kafka_brokers",
                format!("`{}` is not a list of HOST:PORT", self.kafka_brokers),
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(invalid("group_id", "must not be empty"));
        }
        let topics = [
            ("trace_logs_topic", &self.trace_logs_topic),
            ("service_logs_topic", &self.service_logs_topic),
            ("heartbeat_logs_topic", &self.heartbeat_logs_topic),
            ("dead_letters_topic", &self.dead_letters_topic),
        ];
        for (i, (key, topic)) in topics.iter().enumerate() {
            if topic.is_empty()
                || !topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(invalid(
                    key,
                    format!("`{topic}` is not a valid Kafka topic name (letters, digits, `.`, `_`, `-`)"),
                ));
            }
            if let Some((other, _)) = topics[..i].iter().find(|(_, t)| t == topic) {
                return Err(invalid(key, format!("`{topic}` is also `{other}`")));
            }
        }
        if self.topic_partitions < 1 {
            return Err(invalid("topic_partitions", "must be at least 1"));
        }
        if self.session_timeout_ms < 1000 {
            return Err(invalid("session_timeout_ms", "must be at least 1000"));
        }
        for (key, why) in RESERVED_CONSUMER_PROPERTIES {
            if self.consumer.contains_key(*key) {
                return Err(invalid(&format!("consumer.{key}"), *why));
            }
        }
        if self.batch_max_records == 0 {
            return Err(invalid("batch_max_records", "must be at least 1"));
        }
        if self.retry_initial_ms == 0 {
            return Err(invalid("retry_initial_ms", "must be at least 1"));
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return Err(invalid(
                "retry_max_ms",
                "must be at least `retry_initial_ms`",
            ));
        }
        self.store.validate().map_err(|e| match e {
            crate::store::StoreError::Config(reason) => invalid("store", reason),
            other => invalid("store", other.to_string()),
        })
    }

    /// The three input topics.
    pub fn input_topics(&self) -> Vec<String> {
        vec![
            self.trace_logs_topic.clone(),
            self.service_logs_topic.clone(),
            self.heartbeat_logs_topic.clone(),
        ]
    }

    /// `batch_linger_ms` as a duration.
    pub fn batch_linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_use_the_named_port() {
        let config = IndexerConfig::default();
        config.validate().unwrap();
        assert_eq!(config.admin.port(), names::INDEXER_ADMIN_PORT);
    }

    #[test]
    fn errors_name_the_key() {
        type Case = (fn(&mut IndexerConfig), &'static str);
        let cases: Vec<Case> = vec![
            (|c| c.kafka_brokers = "nohost".into(), "kafka_brokers"),
            (|c| c.group_id = " ".into(), "group_id"),
            (
                |c| c.dead_letters_topic = "trace_logs".into(),
                "dead_letters_topic",
            ),
            (
                |c| c.service_logs_topic = "bad topic".into(),
                "service_logs_topic",
            ),
            (
                |c| {
                    c.consumer
                        .insert("enable.auto.commit".into(), "true".into());
                },
                "consumer.enable.auto.commit",
            ),
            (|c| c.retry_max_ms = 1, "retry_max_ms"),
            (
                |c| c.store.elasticsearch_url = Some("es:9200".into()),
                "store",
            ),
        ];
        for (mutate, key) in cases {
            let mut config = IndexerConfig::default();
            mutate(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
    }

    #[test]
    fn file_with_unknown_key_is_rejected_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("indexer.toml");
        std::fs::write(&path, "group_id = 'g'\n[store]\ndata_dirr = 'x'\n").unwrap();
        let err = IndexerConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("data_dirr"), "{err}");
        std::fs::write(
            &path,
            "group_id = 'g'\n[store]\nelasticsearch_url = 'http://127.0.0.1:9200'\n",
        )
        .unwrap();
        let config = IndexerConfig::from_file(&path).unwrap();
        assert_eq!(config.group_id, "g");
        assert_eq!(
            config.store.elasticsearch_url.as_deref(),
            Some("http://127.0.0.1:9200")
        );
    }
}
