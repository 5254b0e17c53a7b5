//! The alerting stage's settings: a serde struct read from TOML, overlaid with env and flags by
//! the binary, and validated before anything connects. The rules live in their own file
//! ([`crate::rules`]), named by `rules_file`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use dlog_core::names;
use dlog_core::stage::StageDefaults;
use serde::{Deserialize, Serialize};

use crate::alert::Severity;
use crate::rules::{RulesConfig, RulesError};

pub use crate::output::kafka::config::KafkaOutputConfig;
pub use crate::output::store::config::StoreOutputConfig;
pub use crate::output::terminal::config::{ColorMode, TerminalConfig};
pub use crate::output::webhook::config::WebhookConfig;

/// Default `kafka_brokers`, the one every stage shares.
pub const DEFAULT_KAFKA_BROKERS: &str = dlog_core::stage::DEFAULT_KAFKA_BROKERS;
/// Default `group_id`.
pub const DEFAULT_GROUP_ID: &str = "dlog-alerter";
/// Default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "dlog-alerter-state";
/// Default `topic_partitions`, the one every stage shares.
pub const DEFAULT_TOPIC_PARTITIONS: i32 = dlog_core::stage::DEFAULT_TOPIC_PARTITIONS;
/// Default `session_timeout_ms`, the one every stage shares.
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = dlog_core::stage::DEFAULT_SESSION_TIMEOUT_MS;
/// Default `batch_max_records`.
pub const DEFAULT_BATCH_MAX_RECORDS: usize = 500;
/// Default `batch_linger_ms`.
pub const DEFAULT_BATCH_LINGER_MS: u64 = 100;
/// Default `tick_interval_ms`: heartbeat silence and windows are judged once a second.
pub const DEFAULT_TICK_INTERVAL_MS: u64 = 1_000;
/// Default `checkpoint_interval_ms`.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1_000;
/// Default `retry_initial_ms`, the one every stage shares.
pub const DEFAULT_RETRY_INITIAL_MS: u64 = dlog_core::stage::DEFAULT_RETRY_INITIAL_MS;
/// Default `retry_max_ms`, the one every stage shares.
pub const DEFAULT_RETRY_MAX_MS: u64 = dlog_core::stage::DEFAULT_RETRY_MAX_MS;
/// Default `shutdown_timeout_ms`.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// Default `lease_topic`.
pub const DEFAULT_LEASE_TOPIC: &str = "alerter_lease";
/// Default `lease_session_timeout_ms`.
pub const DEFAULT_LEASE_SESSION_TIMEOUT_MS: u32 = 6_000;
/// Default `lease_wait_ms`: long enough for a holder that died to leave its group (one
/// session timeout at the default), for a join again and the rebalance that follows.
pub const DEFAULT_LEASE_WAIT_MS: u64 = 45_000;
/// Default `state_topic`.
pub const DEFAULT_STATE_TOPIC: &str = "alerter_state";

pub use dlog_core::stage::ConsumerConfig;

/// The alerter's consumer defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlerterStage;

impl StageDefaults for AlerterStage {
    const GROUP_ID: &'static str = DEFAULT_GROUP_ID;
    const COMMITTED_AFTER: &'static str = "the alerts were emitted";
}

/// Everything the alerting stage needs to run. Every field has a default, so a TOML file
/// names only what it changes; unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlerterConfig {
    /// How the stage reaches Kafka: `kafka_brokers`, `group_id` (the alerter's own, so it
    /// reads every record the indexer reads), `create_topics` (the three inputs and the
    /// alerts topic), `topic_partitions`, `session_timeout_ms` and the `[consumer]`
    /// properties, at the top of the file.
    #[serde(flatten)]
    pub input: ConsumerConfig<AlerterStage>,
    /// Topic of spans.
    pub trace_logs_topic: String,
    /// Topic of log records.
    pub service_logs_topic: String,
    /// Topic of registration and heartbeat events.
    pub heartbeat_logs_topic: String,
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
    /// The rules file (TOML). Unset: every rule with its defaults.
    pub rules_file: Option<PathBuf>,
    /// Directory of the state file (alerts, trackers, windows, undelivered alerts).
    pub state_dir: PathBuf,
    /// Most records taken from the input per batch.
    pub batch_max_records: usize,
    /// How long a batch waits to fill up, ms.
    pub batch_linger_ms: u64,
    /// How often the time-driven rules are evaluated, ms of the stage's clock.
    pub tick_interval_ms: u64,
    /// Longest time evaluated records wait for their state to be saved and their offsets
    /// acknowledged when they raised no alert, ms. Records that raised one are saved and
    /// acknowledged as soon as the alert was delivered.
    pub checkpoint_interval_ms: u64,
    /// Skip records below the offsets recorded in the state file (a replay after a crash),
    /// so they are not evaluated twice. Turn off for in-process sources whose offsets
    /// restart at 0 with the process.
    pub skip_replayed_offsets: bool,
    /// First wait before retrying a failed delivery to a required output, ms; doubles.
    pub retry_initial_ms: u64,
    /// Longest wait between delivery retries, ms.
    pub retry_max_ms: u64,
    /// How long a graceful shutdown waits for best-effort outputs to drain, ms.
    pub shutdown_timeout_ms: u64,
    /// Single-partition topic whose partition is the group's lease: only the alerter the
    /// coordinator assigns it to (in the group `<group_id>.lease`) evaluates; see
    /// [`crate::lease`]. Created at start whatever `create_topics` says.
    pub lease_topic: String,
    /// How long an alerter that joined without the lease waits for it (a holder that died
    /// leaves after its session timeout) before refusing to start, ms.
    pub lease_wait_ms: u64,
    /// Session timeout of the lease group, ms: how long after a holder died its lease moves.
    /// The lease is polled by a thread of its own, so this can be shorter than the data
    /// topics' `session_timeout_ms`; a holder cut off from the coordinator for longer stops.
    pub lease_session_timeout_ms: u32,
    /// Stand by for failover: an alerter that joins while another holds the lease waits for
    /// it as long as it takes (instead of refusing after `lease_wait_ms`), and every alerter
    /// of the group checkpoints its state to `state_topic` as well as to its state file, so
    /// that whichever takes the lease over resumes from the state the last holder left. Set
    /// it on every alerter of the group.
    pub standby: bool,
    /// Topic the state is checkpointed to when `standby` is set (one partition, records keyed
    /// by group, compacted where the broker honours it). Created at start.
    pub state_topic: String,
    /// Where alerts go (`[outputs.terminal]`, `[outputs.kafka]`, `[outputs.webhook]`,
    /// `[outputs.store]`).
    pub outputs: OutputsConfig,
}

impl Default for AlerterConfig {
    fn default() -> Self {
        AlerterConfig {
            input: ConsumerConfig::default(),
            trace_logs_topic: names::TRACE_LOGS_TOPIC.to_string(),
            service_logs_topic: names::SERVICE_LOGS_TOPIC.to_string(),
            heartbeat_logs_topic: names::HEARTBEAT_LOGS_TOPIC.to_string(),
            admin: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), names::ALERTER_ADMIN_PORT),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            auth_token_file: None,
            rules_file: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            batch_max_records: DEFAULT_BATCH_MAX_RECORDS,
            batch_linger_ms: DEFAULT_BATCH_LINGER_MS,
            tick_interval_ms: DEFAULT_TICK_INTERVAL_MS,
            checkpoint_interval_ms: DEFAULT_CHECKPOINT_INTERVAL_MS,
            skip_replayed_offsets: true,
            retry_initial_ms: DEFAULT_RETRY_INITIAL_MS,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            lease_topic: DEFAULT_LEASE_TOPIC.to_string(),
            lease_wait_ms: DEFAULT_LEASE_WAIT_MS,
            lease_session_timeout_ms: DEFAULT_LEASE_SESSION_TIMEOUT_MS,
            standby: false,
            state_topic: DEFAULT_STATE_TOPIC.to_string(),
            outputs: OutputsConfig::default(),
        }
    }
}

/// Every output.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputsConfig {
    /// Readable, coloured lines on stdout.
    pub terminal: TerminalConfig,
    /// `AlertEvent` protobuf records on the alerts topic.
    pub kafka: KafkaOutputConfig,
    /// HTTP POST of JSON.
    pub webhook: WebhookConfig,
    /// Alert documents in the store, for the viewer.
    pub store: StoreOutputConfig,
}

/// When an output gets an alert.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Filter {
    /// Alerts below this severity are not sent to this output.
    pub min_severity: Severity,
    /// Also send updates of firing alerts (more occurrences, grouped into an incident), not
    /// only when they fire and resolve.
    pub updates: bool,
}

/// The alerter's configuration could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The settings file could not be read, or a setting is invalid.
    #[error(transparent)]
    Settings(#[from] dlog_core::config::ConfigError),
    /// The rules file is invalid.
    #[error(transparent)]
    Rules(#[from] RulesError),
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    dlog_core::config::ConfigError::invalid(key, reason).into()
}

impl AlerterConfig {
    /// Reads a TOML file (missing keys take their defaults).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(dlog_core::config::read_toml(path)?)
    }

    /// The topics consumed.
    pub fn input_topics(&self) -> Vec<String> {
        vec![
            self.trace_logs_topic.clone(),
            self.service_logs_topic.clone(),
            self.heartbeat_logs_topic.clone(),
        ]
    }

    /// Reads the rules file named by `rules_file`, or the defaults.
    pub fn load_rules(&self) -> Result<RulesConfig, ConfigError> {
        Ok(match &self.rules_file {
            Some(path) => RulesConfig::from_file(path)?,
            None => RulesConfig::default(),
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

    /// Checks every setting, naming the key and the reason of the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.input.validate()?;
        self.admin_security()
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
        for (key, topic) in [
            ("trace_logs_topic", &self.trace_logs_topic),
            ("service_logs_topic", &self.service_logs_topic),
            ("heartbeat_logs_topic", &self.heartbeat_logs_topic),
            ("lease_topic", &self.lease_topic),
            ("state_topic", &self.state_topic),
        ] {
            if topic.trim().is_empty() {
                return Err(invalid(key, "is empty"));
            }
        }
        if self.lease_session_timeout_ms < 1000 {
            return Err(invalid("lease_session_timeout_ms", "must be at least 1000"));
        }
        if self.batch_max_records == 0 {
            return Err(invalid("batch_max_records", "must be at least 1"));
        }
        if self.tick_interval_ms == 0 {
            return Err(invalid("tick_interval_ms", "must be at least 1"));
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err(invalid(
                "retry_max_ms",
                format!(
                    "retry_initial_ms ({}) must be at least 1 and at most retry_max_ms ({})",
                    self.retry_initial_ms, self.retry_max_ms
                ),
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "is empty"));
        }
        let inputs = [
            &self.trace_logs_topic,
            &self.service_logs_topic,
            &self.heartbeat_logs_topic,
        ];
        if inputs.contains(&&self.lease_topic) || self.lease_topic == self.outputs.kafka.topic {
            return Err(invalid(
                "lease_topic",
                format!("`{}` is an input or the alerts topic", self.lease_topic),
            ));
        }
        if inputs.contains(&&self.state_topic)
            || self.state_topic == self.outputs.kafka.topic
            || self.state_topic == self.lease_topic
        {
            return Err(invalid(
                "state_topic",
                format!(
                    "`{}` is an input, the alerts topic or the lease topic",
                    self.state_topic
                ),
            ));
        }
        let o = &self.outputs;
        o.terminal.validate("outputs.terminal")?;
        o.kafka.validate("outputs.kafka", &inputs)?;
        o.webhook.validate("outputs.webhook")?;
        o.store.validate("outputs.store")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = AlerterConfig::default();
        c.validate().unwrap();
        assert_eq!(c.admin.port(), names::ALERTER_ADMIN_PORT);
        assert_eq!(c.outputs.kafka.topic, "alerts");
        assert!(c.outputs.terminal.enabled && c.outputs.kafka.enabled);
        assert!(!c.outputs.webhook.enabled && !c.outputs.store.enabled);
    }

    #[test]
    fn toml_tables_and_unknown_keys() {
        let c: AlerterConfig = toml::from_str(
            "group_id = \"g\"\n[outputs.webhook]\nenabled = true\nurl = \"http://127.0.0.1:9/hook\"\nmin_severity = \"warning\"\n\
             [outputs.store]\nenabled = true\n[outputs.store.backend]\ndata_dir = \"/tmp/x\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.outputs.webhook.min_severity, Severity::Warning);
        assert_eq!(c.outputs.store.backend.data_dir, PathBuf::from("/tmp/x"));
        let err = toml::from_str::<AlerterConfig>("[outputs.webhook]\nurll = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("url"), "{err}");
    }

    #[test]
    fn invalid_settings_name_their_key() {
        let mut c = AlerterConfig::default();
        c.outputs.webhook.enabled = true;
        c.outputs.webhook.url = "ftp://hooks.example/x".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("outputs.webhook.url"));
        c.outputs.webhook.url = "https://hooks.example/x".into();
        c.validate().unwrap();
        c.outputs.webhook.url = "http://hooks.example/x".into();
        c.outputs.webhook.ca_file = Some("ca.pem".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("outputs.webhook.ca_file"));
        let c = AlerterConfig {
            tls_cert: Some("admin.pem".into()),
            ..AlerterConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("tls_key"));
        let mut c = AlerterConfig::default();
        c.outputs.kafka.topic = c.trace_logs_topic.clone();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("outputs.kafka.topic"));
        let mut c = AlerterConfig::default();
        c.state_topic = c.lease_topic.clone();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("state_topic"));
        let mut c = AlerterConfig::default();
        c.input
            .consumer
            .insert("enable.auto.commit".into(), "true".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("consumer.enable.auto.commit"));
    }
}
