//! The indexing stage's settings: a serde struct read from TOML, overlaid with env and flags
//! by the binary, and validated before anything connects.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dlog_core::names;
use dlog_core::stage::StageDefaults;
use serde::{Deserialize, Serialize};

use super::retention::RetentionConfig;
use dlog_storage::StoreConfig;

/// Default `kafka_brokers`, the one every stage shares.
pub const DEFAULT_KAFKA_BROKERS: &str = dlog_core::stage::DEFAULT_KAFKA_BROKERS;
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
/// Default `session_timeout_ms`, the one every stage shares.
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = dlog_core::stage::DEFAULT_SESSION_TIMEOUT_MS;
/// Default `topic_partitions`, the one every stage shares.
pub const DEFAULT_TOPIC_PARTITIONS: i32 = dlog_core::stage::DEFAULT_TOPIC_PARTITIONS;

pub use dlog_core::stage::ConsumerConfig;

/// The indexer's consumer defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexerStage;

impl StageDefaults for IndexerStage {
    const GROUP_ID: &'static str = DEFAULT_GROUP_ID;
    const COMMITTED_AFTER: &'static str = "the store acknowledged every document derived from them";
}

/// Everything the indexing stage needs to run. Every field has a default, so a TOML file
/// names only what it changes; unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexerConfig {
    /// How the stage reaches Kafka: `kafka_brokers`, `group_id`, `create_topics` (the three
    /// inputs and `dead_letters_topic`), `topic_partitions`, `session_timeout_ms` and the
    /// `[consumer]` properties, at the top of the file.
    #[serde(flatten)]
    pub input: ConsumerConfig<IndexerStage>,
    /// Topic of spans.
    pub trace_logs_topic: String,
    /// Topic of log records.
    pub service_logs_topic: String,
    /// Topic of registration and heartbeat events.
    pub heartbeat_logs_topic: String,
    /// Topic that receives undecodable records and documents the store rejected for good.
    pub dead_letters_topic: String,
    /// Admin listen address serving `/metrics` (Prometheus) and `/healthz`. Port 0 picks one.
    pub admin: SocketAddr,
    /// PEM certificate chain (leaf first) of the admin listener; with `tls_key` it speaks TLS
    /// only. Default: none (plain HTTP).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: admin clients must present a certificate they issued (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// File of bearer tokens (one per line) that admin `/metrics` requests must carry;
    /// `/healthz` stays open. Default: none (no auth).
    pub auth_token_file: Option<PathBuf>,
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
    /// How long data is kept (`[retention]` table): by age, by size, and how often it runs.
    pub retention: RetentionConfig,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            input: ConsumerConfig::default(),
            trace_logs_topic: names::TRACE_LOGS_TOPIC.to_string(),
            service_logs_topic: names::SERVICE_LOGS_TOPIC.to_string(),
            heartbeat_logs_topic: names::HEARTBEAT_LOGS_TOPIC.to_string(),
            dead_letters_topic: names::DEAD_LETTERS_TOPIC.to_string(),
            admin: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), names::INDEXER_ADMIN_PORT),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            auth_token_file: None,
            batch_max_records: DEFAULT_BATCH_MAX_RECORDS,
            batch_linger_ms: DEFAULT_BATCH_LINGER_MS,
            retry_initial_ms: DEFAULT_RETRY_INITIAL_MS,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
            lag_interval_ms: DEFAULT_LAG_INTERVAL_MS,
            store: StoreConfig::default(),
            retention: RetentionConfig::default(),
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
        self.input.validate()?;
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
        self.admin_security()
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
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
        let embedded = self
            .store
            .elasticsearch_url
            .is_none()
            .then_some(self.store.data_dir.as_path());
        self.retention
            .validate(embedded)
            .map_err(|reason| invalid("retention", reason))?;
        self.store.validate().map_err(|e| match e {
            dlog_storage::store::StoreError::Config(ConfigError::Invalid { key, reason }) => {
                invalid("store", format!("`{key}`: {reason}"))
            }
            other => invalid("store", other.to_string()),
        })
    }

    /// The admin listener's TLS and token settings.
    pub fn admin_security(&self) -> dlog_core::admin::AdminSecurity {
        dlog_core::admin::AdminSecurity {
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_client_ca: self.tls_client_ca.clone(),
            auth_token_file: self.auth_token_file.clone(),
        }
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
            (|c| c.input.kafka_brokers = "nohost".into(), "kafka_brokers"),
            (|c| c.input.group_id = " ".into(), "group_id"),
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
                    c.input
                        .consumer
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
        assert_eq!(config.input.group_id, "g");
        assert_eq!(
            config.store.elasticsearch_url.as_deref(),
            Some("http://127.0.0.1:9200")
        );
    }
}
