//! Command-line flags and `DLOG_ALERTER_*` environment variables, layered over the TOML file.
//!
//! Precedence: flags > env > `--config` file > defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use dlog_core::cli::{parse_property, with_default};
use dlog_core::{names, overlay};

use crate::config::{
    AlerterConfig, ConfigError, DEFAULT_GROUP_ID, DEFAULT_KAFKA_BROKERS,
    DEFAULT_LEASE_SESSION_TIMEOUT_MS, DEFAULT_LEASE_TOPIC, DEFAULT_LEASE_WAIT_MS,
    DEFAULT_STATE_DIR, DEFAULT_STATE_TOPIC,
};

/// Rules over spans, logs and heartbeats from Kafka; alerts to the terminal, the `alerts`
/// topic, a webhook and the store.
#[derive(Debug, Clone, Parser)]
#[command(name = "dlog-alerter", version, about)]
pub struct Args {
    /// TOML config file; flags and env override what it sets.
    #[arg(long, env = "DLOG_ALERTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Rules file (TOML) [default: every rule with its defaults].
    #[arg(long, env = "DLOG_ALERTER_RULES", value_name = "FILE")]
    pub rules: Option<PathBuf>,

    #[arg(
        long,
        env = "DLOG_ALERTER_KAFKA_BROKERS",
        value_name = "HOST:PORT[,..]", help = with_default("Kafka bootstrap brokers", DEFAULT_KAFKA_BROKERS))]
    pub kafka_brokers: Option<String>,

    #[arg(long, env = "DLOG_ALERTER_GROUP_ID", value_name = "GROUP", help = with_default("Consumer group", DEFAULT_GROUP_ID))]
    pub group_id: Option<String>,

    #[arg(long, env = "DLOG_ALERTER_ADMIN", value_name = "ADDR:PORT", help = with_default("Admin listen address for /metrics and /healthz", AlerterConfig::default().admin))]
    pub admin: Option<SocketAddr>,

    #[arg(long, env = "DLOG_ALERTER_STATE_DIR", value_name = "DIR", help = with_default("Directory of the state file", DEFAULT_STATE_DIR))]
    pub state_dir: Option<PathBuf>,

    #[arg(long, env = "DLOG_ALERTER_TRACE_LOGS_TOPIC", value_name = "TOPIC", help = with_default("Topic for spans", names::TRACE_LOGS_TOPIC))]
    pub trace_logs_topic: Option<String>,

    #[arg(long, env = "DLOG_ALERTER_SERVICE_LOGS_TOPIC", value_name = "TOPIC", help = with_default("Topic for log records", names::SERVICE_LOGS_TOPIC))]
    pub service_logs_topic: Option<String>,

    #[arg(long, env = "DLOG_ALERTER_HEARTBEAT_LOGS_TOPIC", value_name = "TOPIC", help = with_default("Topic for registration and heartbeat events", names::HEARTBEAT_LOGS_TOPIC))]
    pub heartbeat_logs_topic: Option<String>,

    #[arg(long, env = "DLOG_ALERTER_CREATE_TOPICS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help = with_default("Create missing topics at start", AlerterConfig::default().input.create_topics))]
    pub create_topics: Option<bool>,

    #[arg(long, env = "DLOG_ALERTER_TOPIC_REPLICATION", value_name = "N", help = with_default("Replication factor of the topics it creates: the lease topic, and those of --create-topics (production: 3)", dlog_core::stage::DEFAULT_TOPIC_REPLICATION))]
    pub topic_replication: Option<i32>,

    #[arg(long, env = "DLOG_ALERTER_ALERTS_TOPIC", value_name = "TOPIC", help = with_default("Topic for alert events", names::ALERTS_TOPIC))]
    pub alerts_topic: Option<String>,

    #[arg(long, env = "DLOG_ALERTER_KAFKA_OUTPUT", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help = with_default("Write alert events to Kafka", AlerterConfig::default().outputs.kafka.enabled))]
    pub kafka_output: Option<bool>,

    /// POST alerts as JSON to this http:// or https:// URL (enables the webhook output).
    #[arg(long, env = "DLOG_ALERTER_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,

    /// PEM CA certificates trusted for an https:// webhook, next to the Mozilla roots built
    /// in [default: none].
    #[arg(long, env = "DLOG_ALERTER_WEBHOOK_CA_FILE", value_name = "FILE")]
    pub webhook_ca_file: Option<PathBuf>,

    /// PEM certificate chain of the admin listener; with --tls-key it speaks TLS only
    /// [default: none].
    #[arg(long, env = "DLOG_ALERTER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert [default: none].
    #[arg(long, env = "DLOG_ALERTER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: admin clients must present a certificate they issued (mTLS)
    /// [default: none].
    #[arg(long, env = "DLOG_ALERTER_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// File of bearer tokens (one per line) that admin /metrics requests must carry
    /// [default: none].
    #[arg(long, env = "DLOG_ALERTER_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Upsert alerts into the embedded store in this directory (enables the store output).
    #[arg(
        long,
        env = "DLOG_ALERTER_STORE_DIR",
        value_name = "DIR",
        conflicts_with = "store_elasticsearch_url"
    )]
    pub store_dir: Option<PathBuf>,

    /// Upsert alerts into Elasticsearch at this http:// or https:// URL (enables the store
    /// output).
    #[arg(long, env = "DLOG_ALERTER_STORE_ELASTICSEARCH_URL", value_name = "URL")]
    pub store_elasticsearch_url: Option<String>,

    /// PEM CA certificates trusted for an https:// --store-elasticsearch-url, next to the
    /// Mozilla roots built in [default: none].
    #[arg(long, env = "DLOG_ALERTER_STORE_ELASTICSEARCH_CA", value_name = "FILE")]
    pub store_elasticsearch_ca: Option<PathBuf>,

    #[arg(long, env = "DLOG_ALERTER_TERMINAL", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help = with_default("Print alerts on stdout", AlerterConfig::default().outputs.terminal.enabled))]
    pub terminal: Option<bool>,

    #[arg(long, env = "DLOG_ALERTER_LEASE_TOPIC", value_name = "TOPIC", help = with_default("Single-partition topic holding the group's lease", DEFAULT_LEASE_TOPIC))]
    pub lease_topic: Option<String>,

    #[arg(long, env = "DLOG_ALERTER_LEASE_WAIT_MS", value_name = "MS", help = with_default("How long to wait for the lease before refusing to start, ms", DEFAULT_LEASE_WAIT_MS))]
    pub lease_wait_ms: Option<u64>,

    #[arg(long, env = "DLOG_ALERTER_LEASE_SESSION_TIMEOUT_MS", value_name = "MS", help = with_default("Session timeout of the lease group, ms", DEFAULT_LEASE_SESSION_TIMEOUT_MS))]
    pub lease_session_timeout_ms: Option<u32>,

    #[arg(long, env = "DLOG_ALERTER_STANDBY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help = with_default("Wait for the lease as long as it takes and checkpoint the state to --state-topic, so that a standby takes over with it", AlerterConfig::default().standby))]
    pub standby: Option<bool>,

    #[arg(long, env = "DLOG_ALERTER_STATE_TOPIC", value_name = "TOPIC", help = with_default("Topic the state is checkpointed to with --standby", DEFAULT_STATE_TOPIC))]
    pub state_topic: Option<String>,

    /// Extra librdkafka property (repeatable) for every Kafka client of the stage (consumer,
    /// topic creation, lease, alerts producer on the same brokers), e.g.
    /// -X security.protocol=SASL_SSL.
    #[arg(short = 'X', long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_property: Vec<(String, String)>,
}

impl Args {
    /// The configuration these flags describe: the file (or defaults), overridden by every
    /// flag or env variable that was given, then validated (rules file included).
    pub fn load(self) -> Result<AlerterConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => AlerterConfig::from_file(path)?,
            None => AlerterConfig::default(),
        };
        overlay!(self => config.input, kafka_brokers, group_id, create_topics, topic_replication);
        overlay!(
            self => config,
            admin,
            state_dir,
            trace_logs_topic,
            service_logs_topic,
            heartbeat_logs_topic,
            lease_topic,
            lease_wait_ms,
            lease_session_timeout_ms,
            standby,
            state_topic
        );
        if let Some(rules) = self.rules {
            config.rules_file = Some(rules);
        }
        if let Some(topic) = self.alerts_topic {
            config.outputs.kafka.topic = topic;
        }
        if let Some(enabled) = self.kafka_output {
            config.outputs.kafka.enabled = enabled;
        }
        overlay!(self => config, Some: tls_cert, tls_key, tls_client_ca, auth_token_file);
        if let Some(ca) = self.webhook_ca_file {
            config.outputs.webhook.ca_file = Some(ca);
        }
        if let Some(url) = self.webhook_url {
            config.outputs.webhook.enabled = true;
            config.outputs.webhook.url = url;
        }
        if let Some(dir) = self.store_dir {
            config.outputs.store.enabled = true;
            config.outputs.store.backend.data_dir = dir;
            config.outputs.store.backend.elasticsearch_url = None;
        }
        if let Some(url) = self.store_elasticsearch_url {
            config.outputs.store.enabled = true;
            config.outputs.store.backend.elasticsearch_url = Some(url);
        }
        if let Some(ca) = self.store_elasticsearch_ca {
            if !config.outputs.store.enabled {
                return Err(dlog_core::config::ConfigError::invalid(
                    "outputs.store.backend.elasticsearch_ca",
                    "is set but the store output is not enabled (--store-elasticsearch-url)",
                )
                .into());
            }
            config.outputs.store.backend.elasticsearch_ca = Some(ca);
        }
        if let Some(enabled) = self.terminal {
            config.outputs.terminal.enabled = enabled;
        }
        config.input.consumer.extend(self.kafka_property);
        config.validate()?;
        // Rules are checked before anything connects, too.
        config.load_rules()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("dlog-alerter").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerter.toml");
        std::fs::write(&path, "kafka_brokers = \"file:9092\"\ngroup_id = \"file-group\"\n[outputs.kafka]\ntopic = \"file-alerts\"\n").unwrap();
        let config = args(&[
            "--config",
            path.to_str().unwrap(),
            "--kafka-brokers",
            "flag:9092",
            "--webhook-url",
            "http://127.0.0.1:9000/hook",
            "--store-dir",
            "/tmp/store",
            "--terminal",
            "false",
            "--topic-replication",
            "3",
            "-X",
            "security.protocol=SASL_SSL",
        ])
        .load()
        .unwrap();
        assert_eq!(config.input.topic_replication, 3);
        assert_eq!(config.input.consumer["security.protocol"], "SASL_SSL");
        assert_eq!(config.input.kafka_brokers, "flag:9092");
        assert_eq!(config.input.group_id, "file-group");
        assert_eq!(config.outputs.kafka.topic, "file-alerts");
        assert!(config.outputs.webhook.enabled && config.outputs.store.enabled);
        assert!(!config.outputs.terminal.enabled);
    }

    #[test]
    fn standby_and_state_topic_from_flags_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerter.toml");
        std::fs::write(&path, "state_topic = \"team_state\"\n").unwrap();
        let config = args(&["--config", path.to_str().unwrap(), "--standby"])
            .load()
            .unwrap();
        assert!(config.standby);
        assert_eq!(config.state_topic, "team_state");
        let config = args(&["--standby", "false"]).load().unwrap();
        assert!(!config.standby);
        assert_eq!(config.state_topic, DEFAULT_STATE_TOPIC);
    }

    #[test]
    fn tls_settings_come_from_flags() {
        let config = args(&[
            "--webhook-url",
            "https://hooks.internal/alerts",
            "--webhook-ca-file",
            "/etc/dlog/hooks-ca.pem",
            "--tls-cert",
            "/etc/dlog/admin.pem",
            "--tls-key",
            "/etc/dlog/admin.key",
            "--auth-token-file",
            "/etc/dlog/tokens",
        ])
        .load()
        .unwrap();
        assert_eq!(config.outputs.webhook.url, "https://hooks.internal/alerts");
        assert_eq!(
            config.outputs.webhook.ca_file,
            Some(PathBuf::from("/etc/dlog/hooks-ca.pem"))
        );
        let admin = config.admin_security();
        assert_eq!(admin.tls_cert, Some(PathBuf::from("/etc/dlog/admin.pem")));
        assert_eq!(admin.tls_key, Some(PathBuf::from("/etc/dlog/admin.key")));
        assert_eq!(
            admin.auth_token_file,
            Some(PathBuf::from("/etc/dlog/tokens"))
        );
    }

    #[test]
    fn the_store_output_takes_a_ca_for_an_https_elasticsearch() {
        let config = args(&[
            "--store-elasticsearch-url",
            "https://es.internal:9200",
            "--store-elasticsearch-ca",
            "/etc/dlog/es-ca.pem",
        ])
        .load()
        .unwrap();
        let backend = &config.outputs.store.backend;
        assert!(config.outputs.store.enabled);
        assert_eq!(
            backend.elasticsearch_url.as_deref(),
            Some("https://es.internal:9200")
        );
        assert_eq!(
            backend.elasticsearch_ca,
            Some(PathBuf::from("/etc/dlog/es-ca.pem"))
        );
        // Without the store output, or with its embedded store, the CA would be unused.
        for list in [
            &["--store-elasticsearch-ca", "/etc/dlog/es-ca.pem"][..],
            &[
                "--store-dir",
                "/tmp/store",
                "--store-elasticsearch-ca",
                "/etc/dlog/es-ca.pem",
            ][..],
        ] {
            let err = args(list).load().unwrap_err().to_string();
            assert!(err.contains("elasticsearch_ca"), "{list:?}: {err}");
        }
    }

    #[test]
    fn a_bad_rules_file_is_reported_before_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "[heartbeat]\ndown_after_intervals = 1\n").unwrap();
        let err = args(&["--rules", path.to_str().unwrap()])
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rules.toml") && err.contains("heartbeat.down_after_intervals"),
            "{err}"
        );
    }
}
