//! Command-line flags and `DLOG_BRIDGE_*` environment variables, layered over the TOML file.
//!
//! Precedence: flags > env > `--config` file > defaults. clap resolves flag over env; a
//! setting given by neither keeps the file's (or the default) value.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use dlog_core::cli::{parse_property, with_default};
use dlog_core::encoding::Encoding;
use dlog_core::{names, overlay};

use crate::config::{
    Config, ConfigError, DEFAULT_KAFKA_BROKERS, DEFAULT_PRODUCE_TIMEOUT_MS,
    DEFAULT_TOPIC_PARTITIONS, DEFAULT_TOPIC_REPLICATION,
};

/// OTLP (gRPC and HTTP) in, Kafka out: answers senders only after Kafka acknowledged.
#[derive(Debug, Clone, Parser)]
#[command(name = "collector-bridge", version, about)]
pub struct Args {
    /// TOML config file; flags and env override what it sets.
    #[arg(long, env = "DLOG_BRIDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[arg(long, env = "DLOG_BRIDGE_KAFKA_BROKERS", value_name = "HOST:PORT[,..]", help = with_default("Kafka bootstrap brokers", DEFAULT_KAFKA_BROKERS))]
    pub kafka_brokers: Option<String>,

    #[arg(long, env = "DLOG_BRIDGE_OTLP_GRPC", value_name = "ADDR:PORT", help = with_default("OTLP/gRPC listen address", Config::default().otlp_grpc))]
    pub otlp_grpc: Option<SocketAddr>,

    #[arg(long, env = "DLOG_BRIDGE_OTLP_HTTP", value_name = "ADDR:PORT", help = with_default("OTLP/HTTP listen address", Config::default().otlp_http))]
    pub otlp_http: Option<SocketAddr>,

    #[arg(long, env = "DLOG_BRIDGE_ADMIN", value_name = "ADDR:PORT", help = with_default("Admin listen address for /metrics and /healthz", Config::default().admin))]
    pub admin: Option<SocketAddr>,

    #[arg(long, env = "DLOG_BRIDGE_TRACE_LOGS_TOPIC", value_name = "TOPIC", help = with_default("Topic for spans", names::TRACE_LOGS_TOPIC))]
    pub trace_logs_topic: Option<String>,

    #[arg(long, env = "DLOG_BRIDGE_SERVICE_LOGS_TOPIC", value_name = "TOPIC", help = with_default("Topic for log records", names::SERVICE_LOGS_TOPIC))]
    pub service_logs_topic: Option<String>,

    #[arg(long, env = "DLOG_BRIDGE_HEARTBEAT_LOGS_TOPIC", value_name = "TOPIC", help = with_default("Topic for registration and heartbeat events", names::HEARTBEAT_LOGS_TOPIC))]
    pub heartbeat_logs_topic: Option<String>,

    #[arg(long, env = "DLOG_BRIDGE_ENCODING", value_name = "ENCODING", help = with_default("Record value encoding: otlp_proto or otlp_json", Encoding::default()))]
    pub encoding: Option<Encoding>,

    #[arg(long, env = "DLOG_BRIDGE_MAX_MESSAGE_BYTES", value_name = "BYTES", help = with_default("Largest Kafka record (value + key + headers) in bytes", names::DEFAULT_MAX_MESSAGE_BYTES))]
    pub max_message_bytes: Option<usize>,

    #[arg(
        long,
        env = "DLOG_BRIDGE_CREATE_TOPICS",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true", help = with_default("Create missing topics at start", Config::default().create_topics))]
    pub create_topics: Option<bool>,

    #[arg(long, env = "DLOG_BRIDGE_TOPIC_PARTITIONS", value_name = "N", help = with_default("Partitions of topics created with --create-topics", DEFAULT_TOPIC_PARTITIONS))]
    pub topic_partitions: Option<i32>,

    #[arg(long, env = "DLOG_BRIDGE_TOPIC_REPLICATION", value_name = "N", help = with_default("Replication factor of topics created with --create-topics (production: 3)", DEFAULT_TOPIC_REPLICATION))]
    pub topic_replication: Option<i32>,

    #[arg(long, env = "DLOG_BRIDGE_PRODUCE_TIMEOUT_MS", value_name = "MS", help = with_default("How long a request waits for Kafka before UNAVAILABLE/503, in ms", DEFAULT_PRODUCE_TIMEOUT_MS))]
    pub produce_timeout_ms: Option<u64>,

    /// A bearer token OTLP requests and /metrics must carry [default: none, no auth].
    #[arg(
        long,
        env = "DLOG_BRIDGE_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<String>,

    /// File of accepted bearer tokens, one per line [default: none].
    #[arg(long, env = "DLOG_BRIDGE_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// PEM certificate chain: serve every listener over TLS [default: none, plaintext].
    #[arg(long, env = "DLOG_BRIDGE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert [default: none].
    #[arg(long, env = "DLOG_BRIDGE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: require client certificates they issued (mTLS) [default: none].
    #[arg(long, env = "DLOG_BRIDGE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Extra librdkafka property (repeatable) for the producer and the admin client, e.g.
    /// -X compression.type=lz4 or -X security.protocol=SASL_SSL.
    #[arg(short = 'X', long = "kafka-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_property: Vec<(String, String)>,
}

impl Args {
    /// The configuration these flags describe: the file (or defaults), overridden by every
    /// flag or env variable that was given, then validated.
    pub fn load(self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        overlay!(
            self => config,
            kafka_brokers,
            otlp_grpc,
            otlp_http,
            admin,
            trace_logs_topic,
            service_logs_topic,
            heartbeat_logs_topic,
            encoding,
            max_message_bytes,
            create_topics,
            topic_partitions,
            topic_replication,
            produce_timeout_ms
        );
        overlay!(
            self => config,
            Some: auth_token,
            auth_token_file,
            tls_cert,
            tls_key,
            tls_client_ca
        );
        config.kafka.extend(self.kafka_property);
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("collector-bridge").chain(list.iter().copied()))
            .unwrap()
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        std::fs::write(
            &path,
            "kafka_brokers = \"file:9092\"\nencoding = \"otlp_json\"\ncreate_topics = true\n",
        )
        .unwrap();
        let config = args(&[
            "--config",
            path.to_str().unwrap(),
            "--kafka-brokers",
            "flag:9092",
            "--otlp-grpc",
            "0.0.0.0:14317",
            "--create-topics",
            "false",
            "-X",
            "compression.type=gzip",
        ])
        .load()
        .unwrap();
        assert_eq!(config.kafka_brokers, "flag:9092");
        assert_eq!(config.encoding, Encoding::OtlpJson);
        assert!(!config.create_topics);
        assert_eq!(config.otlp_grpc.to_string(), "0.0.0.0:14317");
        assert_eq!(config.otlp_http.to_string(), "127.0.0.1:4318");
        assert_eq!(config.kafka["compression.type"], "gzip");
    }

    #[test]
    fn auth_and_tls_flags_reach_the_config() {
        let config = args(&[
            "--auth-token-file",
            "/etc/dlog/tokens",
            "--tls-cert",
            "/etc/dlog/cert.pem",
            "--tls-key",
            "/etc/dlog/key.pem",
            "--tls-client-ca",
            "/etc/dlog/ca.pem",
        ])
        .load()
        .unwrap();
        assert_eq!(
            config.auth_token_file.as_deref(),
            Some(std::path::Path::new("/etc/dlog/tokens"))
        );
        assert_eq!(
            config.tls_files().unwrap().client_ca.as_deref(),
            Some(std::path::Path::new("/etc/dlog/ca.pem"))
        );
        let err = args(&["--tls-cert", "/etc/dlog/cert.pem"])
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_key"), "{err}");
    }

    #[test]
    fn help_shows_the_defaults_the_settings_take() {
        use clap::CommandFactory;
        let help = Args::command().render_help().to_string();
        let defaults = Config::default();
        for shown in [
            defaults.kafka_brokers.clone(),
            defaults.otlp_grpc.to_string(),
            defaults.otlp_http.to_string(),
            defaults.admin.to_string(),
            defaults.trace_logs_topic.clone(),
            defaults.encoding.to_string(),
            defaults.max_message_bytes.to_string(),
            defaults.produce_timeout_ms.to_string(),
        ] {
            assert!(
                help.contains(&format!("[default: {shown}]")),
                "{shown}: {help}"
            );
        }
    }

    #[test]
    fn bare_create_topics_flag_means_true() {
        let config = args(&[
            "--create-topics",
            "--topic-partitions",
            "6",
            "--topic-replication",
            "3",
        ])
        .load()
        .unwrap();
        assert!(config.create_topics);
        assert_eq!(config.topic_partitions, 6);
        assert_eq!(config.topic_replication, 3);
    }

    #[test]
    fn invalid_flag_values_are_reported_with_the_key() {
        let err = args(&["--max-message-bytes", "5"])
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_message_bytes"), "{err}");
        assert!(Args::try_parse_from(["collector-bridge", "--encoding", "avro"]).is_err());
        assert!(Args::try_parse_from(["collector-bridge", "--otlp-grpc", "nope"]).is_err());
    }
}
