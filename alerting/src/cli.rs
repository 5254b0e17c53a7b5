//! Command-line flags and `DLOG_ALERTER_*` environment variables, layered over the TOML file.
//!
//! Precedence: flags > env > `--config` file > defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::config::{AlerterConfig, ConfigError};

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

    /// Kafka bootstrap brokers [default: 127.0.0.1:9092].
    #[arg(
        long,
        env = "DLOG_ALERTER_KAFKA_BROKERS",
        value_name = "HOST:PORT[,..]"
    )]
    pub kafka_brokers: Option<String>,

    /// Consumer group [default: dlog-alerter].
    #[arg(long, env = "DLOG_ALERTER_GROUP_ID", value_name = "GROUP")]
    pub group_id: Option<String>,

    /// Admin listen address for /metrics and /healthz [default: 127.0.0.1:8890].
    #[arg(long, env = "DLOG_ALERTER_ADMIN", value_name = "ADDR:PORT")]
    pub admin: Option<SocketAddr>,

    /// Directory of the state file [default: dlog-alerter-state].
    #[arg(long, env = "DLOG_ALERTER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Topic for spans [default: trace_logs].
    #[arg(long, env = "DLOG_ALERTER_TRACE_LOGS_TOPIC", value_name = "TOPIC")]
    pub trace_logs_topic: Option<String>,

    /// Topic for log records [default: service_logs].
    #[arg(long, env = "DLOG_ALERTER_SERVICE_LOGS_TOPIC", value_name = "TOPIC")]
    pub service_logs_topic: Option<String>,

    /// Topic for registration and heartbeat events [default: heartbeat_logs].
    #[arg(long, env = "DLOG_ALERTER_HEARTBEAT_LOGS_TOPIC", value_name = "TOPIC")]
    pub heartbeat_logs_topic: Option<String>,

    /// Create missing topics at start [default: false].
    #[arg(long, env = "DLOG_ALERTER_CREATE_TOPICS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub create_topics: Option<bool>,

    /// Topic for alert events [default: alerts].
    #[arg(long, env = "DLOG_ALERTER_ALERTS_TOPIC", value_name = "TOPIC")]
    pub alerts_topic: Option<String>,

    /// Write alert events to Kafka [default: true].
    #[arg(long, env = "DLOG_ALERTER_KAFKA_OUTPUT", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub kafka_output: Option<bool>,

    /// POST alerts as JSON to this http:// URL (enables the webhook output).
    #[arg(long, env = "DLOG_ALERTER_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,

    /// Upsert alerts into the embedded store in this directory (enables the store output).
    #[arg(
        long,
        env = "DLOG_ALERTER_STORE_DIR",
        value_name = "DIR",
        conflicts_with = "store_elasticsearch_url"
    )]
    pub store_dir: Option<PathBuf>,

    /// Upsert alerts into Elasticsearch at this URL (enables the store output).
    #[arg(long, env = "DLOG_ALERTER_STORE_ELASTICSEARCH_URL", value_name = "URL")]
    pub store_elasticsearch_url: Option<String>,

    /// Print alerts on stdout [default: true].
    #[arg(long, env = "DLOG_ALERTER_TERMINAL", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub terminal: Option<bool>,

    /// Single-partition topic holding the group's lease [default: alerter_lease].
    #[arg(long, env = "DLOG_ALERTER_LEASE_TOPIC", value_name = "TOPIC")]
    pub lease_topic: Option<String>,

    /// How long to wait for the lease before refusing to start, ms [default: 45000].
    #[arg(long, env = "DLOG_ALERTER_LEASE_WAIT_MS", value_name = "MS")]
    pub lease_wait_ms: Option<u64>,

    /// Session timeout of the lease group, ms [default: 6000].
    #[arg(long, env = "DLOG_ALERTER_LEASE_SESSION_TIMEOUT_MS", value_name = "MS")]
    pub lease_session_timeout_ms: Option<u32>,

    /// Extra librdkafka consumer property (repeatable), e.g. -X security.protocol=ssl.
    #[arg(short = 'X', long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_property: Vec<(String, String)>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

impl Args {
    /// The configuration these flags describe: the file (or defaults), overridden by every
    /// flag or env variable that was given, then validated (rules file included).
    pub fn load(self) -> Result<AlerterConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => AlerterConfig::from_file(path)?,
            None => AlerterConfig::default(),
        };
        macro_rules! overlay {
            ($($field:ident),*) => {$(
                if let Some(value) = self.$field {
                    config.$field = value;
                }
            )*};
        }
        macro_rules! overlay_input {
            ($($field:ident),*) => {$(
                if let Some(value) = self.$field {
                    config.input.$field = value;
                }
            )*};
        }
        overlay_input!(kafka_brokers, group_id, create_topics);
        overlay!(
            admin,
            state_dir,
            trace_logs_topic,
            service_logs_topic,
            heartbeat_logs_topic,
            lease_topic,
            lease_wait_ms,
            lease_session_timeout_ms
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
        ])
        .load()
        .unwrap();
        assert_eq!(config.input.kafka_brokers, "flag:9092");
        assert_eq!(config.input.group_id, "file-group");
        assert_eq!(config.outputs.kafka.topic, "file-alerts");
        assert!(config.outputs.webhook.enabled && config.outputs.store.enabled);
        assert!(!config.outputs.terminal.enabled);
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
