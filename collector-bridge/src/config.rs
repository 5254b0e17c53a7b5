//! The bridge's settings: a serde struct read from TOML, overlaid with env and flags by the
//! binary, and validated before anything binds or connects.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dlog_core::encoding::Encoding;
use dlog_core::names;
use serde::{Deserialize, Serialize};

/// Default `kafka_brokers`.
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
/// Default `produce_timeout_ms`.
pub const DEFAULT_PRODUCE_TIMEOUT_MS: u64 = 10_000;
/// Default `max_request_bytes` (decompressed), as the OpenTelemetry Collector's HTTP receiver.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Default `max_in_flight_bytes`.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 32 * 1024 * 1024;
/// Default `topic_partitions`.
pub const DEFAULT_TOPIC_PARTITIONS: i32 = 3;
/// Default `topic_replication`: right for a single broker; production clusters should use 3.
pub const DEFAULT_TOPIC_REPLICATION: i32 = 1;
/// Default `retry_after_secs`.
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 2;
/// Default `shutdown_timeout_ms`.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 30_000;
/// Default `linger_ms`. The bridge answers each request once Kafka acknowledged it, so the
/// linger is paid on every answer: 1 ms measured best on every load shape (one SDK stream of
/// 512-span requests: 54k -> 109k spans/s against 5 ms; 8 streams of 100: 95k -> 123k; 128
/// streams: 185k -> 208k; see docs/benchmarks/collector-bridge.md), while records of concurrent
/// requests still share produce requests (batching grows with load as requests queue behind
/// in-flight ones).
pub const DEFAULT_LINGER_MS: u64 = 1;
/// Default `admission_timeout_ms`.
pub const DEFAULT_ADMISSION_TIMEOUT_MS: u64 = 1_000;
/// Default `max_concurrent_requests`.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 256;
/// Default `grpc_max_concurrent_streams`.
pub const DEFAULT_GRPC_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Default `http_header_read_timeout_ms`.
pub const DEFAULT_HTTP_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default `request_body_timeout_ms`.
pub const DEFAULT_REQUEST_BODY_TIMEOUT_MS: u64 = 30_000;
/// Default `grpc_first_frame_timeout_ms`.
pub const DEFAULT_GRPC_FIRST_FRAME_TIMEOUT_MS: u64 = 10_000;
/// Default `http2_keepalive_interval_ms`.
pub const DEFAULT_HTTP2_KEEPALIVE_INTERVAL_MS: u64 = 30_000;
/// Default `http2_keepalive_timeout_ms`.
pub const DEFAULT_HTTP2_KEEPALIVE_TIMEOUT_MS: u64 = 10_000;
/// Default `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default `max_items_per_request`.
pub const DEFAULT_MAX_ITEMS_PER_REQUEST: usize = 65_536;
/// Default `max_groups_per_request`.
pub const DEFAULT_MAX_GROUPS_PER_REQUEST: usize = 16_384;
/// Default `redact_attributes`: private by default.
pub const DEFAULT_REDACT_ATTRIBUTES: bool = true;
/// Default `redact_log_bodies`.
pub const DEFAULT_REDACT_LOG_BODIES: bool = false;

/// Everything the collector bridge needs to run.
///
/// Every field has a default (see [`Config::default`]), so a TOML file names only what it
/// changes. Unknown keys are an error, so a misspelt setting never silently does nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka bootstrap brokers, `HOST:PORT[,HOST:PORT..]`.
    pub kafka_brokers: String,
    /// OTLP/gRPC listen address (TraceService and LogsService). Port 0 picks a free port.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP listen address (`/v1/traces`, `/v1/logs`). Port 0 picks a free port.
    pub otlp_http: SocketAddr,
    /// Admin listen address serving `/metrics` (Prometheus) and `/healthz`.
    pub admin: SocketAddr,
    /// Topic for spans: one record per trace per request, keyed by the trace id.
    pub trace_logs_topic: String,
    /// Topic for log records, keyed by trace id, or by service instance without trace context.
    pub service_logs_topic: String,
    /// Topic for registration and heartbeat events, keyed by service instance.
    pub heartbeat_logs_topic: String,
    /// Record value encoding: `otlp_proto` or `otlp_json`.
    pub encoding: Encoding,
    /// Largest record (value + key + headers) written to Kafka, in bytes. Larger requests are
    /// split; a single span or log record that cannot fit is rejected in the partial-success
    /// response.
    pub max_message_bytes: usize,
    /// Create missing topics at start (with `topic_partitions` partitions).
    pub create_topics: bool,
    /// Partitions of topics created with `create_topics`.
    pub topic_partitions: i32,
    /// Replication factor of topics created with `create_topics`.
    pub topic_replication: i32,
    /// How long a request waits for Kafka (queue space and acknowledgement) before it is
    /// answered with gRPC `UNAVAILABLE` / HTTP 503. Also librdkafka's `message.timeout.ms`.
    pub produce_timeout_ms: u64,
    /// Largest OTLP request accepted, after decompression, in bytes (gRPC and HTTP).
    pub max_request_bytes: usize,
    /// Bytes that all requests in progress may hold at once, summed over them: each request's
    /// body as it arrives, its inflated size when it is compressed, its decoded form when it
    /// has to be decoded, the bookkeeping of routing it, and the records routed from it until
    /// Kafka acknowledged them (the producer's queue is bounded to about the same). A request
    /// that cannot get its share within `admission_timeout_ms` is answered `UNAVAILABLE` /
    /// 503, which bounds the bridge's memory when Kafka is slow.
    pub max_in_flight_bytes: usize,
    /// How long a request may wait for its share of `max_in_flight_bytes` before it is answered
    /// `UNAVAILABLE` / 503 (at most `produce_timeout_ms`). Short, so that a slow Kafka turns
    /// into retries at the senders, not into requests piling up here.
    pub admission_timeout_ms: u64,
    /// OTLP requests (gRPC and HTTP together) handled at once; one more is answered
    /// `UNAVAILABLE` / 503 at once (load shedding), before its body is read.
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams (concurrent requests) one OTLP connection may open (gRPC, and HTTP/2 on
    /// the HTTP port).
    pub grpc_max_concurrent_streams: u32,
    /// Spans or log records one request may hold; more is refused (`RESOURCE_EXHAUSTED` / 413)
    /// before anything is allocated for them.
    pub max_items_per_request: usize,
    /// Distinct trace ids and log keys (records before splitting) one request may make; more
    /// is refused (`RESOURCE_EXHAUSTED` / 413).
    pub max_groups_per_request: usize,
    /// Open connections each OTLP listener (gRPC, HTTP) serves at once; further connections
    /// wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// How long an HTTP/1 client may take to send a request's headers, and a new connection
    /// on the HTTP port its first bytes (the whole preface for HTTP/2), before the connection
    /// is closed.
    pub http_header_read_timeout_ms: u64,
    /// How long a request's body (HTTP) or message (gRPC) may take to arrive, counted from the
    /// request's arrival; later it is answered 408 (closing the connection) /
    /// `DEADLINE_EXCEEDED`, and what it held is given back.
    pub request_body_timeout_ms: u64,
    /// How long a gRPC request may take to send its message's frame header, counted from its
    /// arrival (at most `request_body_timeout_ms`).
    pub grpc_first_frame_timeout_ms: u64,
    /// Interval of HTTP/2 keepalive pings on OTLP connections (gRPC, and HTTP/2 on the HTTP
    /// port).
    pub http2_keepalive_interval_ms: u64,
    /// How long an HTTP/2 keepalive ping may go unanswered before the connection is closed.
    pub http2_keepalive_timeout_ms: u64,
    /// The retry hint, in seconds, sent with `UNAVAILABLE` (gRPC `RetryInfo`) and 503
    /// (`Retry-After`).
    pub retry_after_secs: u64,
    /// How long a graceful shutdown waits for in-flight requests and the producer flush.
    pub shutdown_timeout_ms: u64,
    /// librdkafka `linger.ms`: how long the producer gathers records into one produce request.
    pub linger_ms: u64,
    /// Extra librdkafka producer properties, passed through as they are (for example
    /// `compression.type`, `security.protocol`). They override the bridge's own tuning but may
    /// not change what the bridge's guarantees rest on: `acks`, `enable.idempotence`,
    /// `bootstrap.servers`, `message.timeout.ms`, `delivery.timeout.ms`,
    /// `queue.buffering.max.kbytes` and `message.max.bytes` (each has its own setting).
    pub kafka: BTreeMap<String, String>,
    /// Replace attribute values whose key names a secret with `[REDACTED]` (resource, scope,
    /// span, span event, span link and log attributes, nested values included). A key names a
    /// secret when its last dot-separated segment, case-insensitive and with `-` read as `_`,
    /// is one of `collector_bridge::redact::SENSITIVE_KEYS` or of `redact_extra_keys`, or
    /// ends with one as a whole word (after `_`, `-` or a camelCase capital).
    pub redact_attributes: bool,
    /// More names to redact, next to the built-in ones (for example `ssn`), matched the same
    /// way.
    pub redact_extra_keys: Vec<String>,
    /// Redact inside log bodies too (keys of kvlist bodies), with the same rule.
    pub redact_log_bodies: bool,
    /// A bearer token that OTLP requests (gRPC and HTTP) and the admin `/metrics` must carry
    /// (`authorization: Bearer <token>`); others get `UNAUTHENTICATED` / 401. Prefer
    /// `auth_token_file`, which keeps the secret out of the settings file. Unset (and no
    /// file): no auth.
    pub auth_token: Option<String>,
    /// A file of accepted bearer tokens, one per line (blank lines and `#` comments skipped),
    /// next to `auth_token`. Several tokens allow rotation without a gap.
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain (leaf first) served on the OTLP gRPC/HTTP and admin listeners;
    /// with `tls_key`, they speak TLS only. Unset: plaintext.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: when set, every client must present a certificate they issued
    /// (mTLS). Needs `tls_cert`.
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Config {
            kafka_brokers: DEFAULT_KAFKA_BROKERS.to_string(),
            otlp_grpc: SocketAddr::new(loopback, names::OTLP_GRPC_PORT),
            otlp_http: SocketAddr::new(loopback, names::OTLP_HTTP_PORT),
            admin: SocketAddr::new(loopback, names::BRIDGE_ADMIN_PORT),
            trace_logs_topic: names::TRACE_LOGS_TOPIC.to_string(),
            service_logs_topic: names::SERVICE_LOGS_TOPIC.to_string(),
            heartbeat_logs_topic: names::HEARTBEAT_LOGS_TOPIC.to_string(),
            encoding: Encoding::OtlpProto,
            max_message_bytes: names::DEFAULT_MAX_MESSAGE_BYTES,
            create_topics: false,
            topic_partitions: DEFAULT_TOPIC_PARTITIONS,
            topic_replication: DEFAULT_TOPIC_REPLICATION,
            produce_timeout_ms: DEFAULT_PRODUCE_TIMEOUT_MS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            admission_timeout_ms: DEFAULT_ADMISSION_TIMEOUT_MS,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            grpc_max_concurrent_streams: DEFAULT_GRPC_MAX_CONCURRENT_STREAMS,
            max_items_per_request: DEFAULT_MAX_ITEMS_PER_REQUEST,
            max_groups_per_request: DEFAULT_MAX_GROUPS_PER_REQUEST,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            http_header_read_timeout_ms: DEFAULT_HTTP_HEADER_READ_TIMEOUT_MS,
            request_body_timeout_ms: DEFAULT_REQUEST_BODY_TIMEOUT_MS,
            grpc_first_frame_timeout_ms: DEFAULT_GRPC_FIRST_FRAME_TIMEOUT_MS,
            http2_keepalive_interval_ms: DEFAULT_HTTP2_KEEPALIVE_INTERVAL_MS,
            http2_keepalive_timeout_ms: DEFAULT_HTTP2_KEEPALIVE_TIMEOUT_MS,
            retry_after_secs: DEFAULT_RETRY_AFTER_SECS,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            linger_ms: DEFAULT_LINGER_MS,
            kafka: BTreeMap::new(),
            redact_attributes: DEFAULT_REDACT_ATTRIBUTES,
            redact_extra_keys: Vec::new(),
            redact_log_bodies: DEFAULT_REDACT_LOG_BODIES,
            auth_token: None,
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

pub use dlog_core::config::ConfigError;

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, reason)
}

/// The smallest `max_message_bytes` accepted: below it hardly any span fits a record.
const MIN_MAX_MESSAGE_BYTES: usize = 1024;

impl Config {
    /// The TLS material of the listeners, when `tls_cert` and `tls_key` are set.
    pub fn tls_files(&self) -> Option<dlog_core::listen::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(dlog_core::listen::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }

    /// Reads a TOML file; keys it leaves out keep their defaults. The result is not yet
    /// validated (flags and env may still change it): call [`Config::validate`].
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        dlog_core::config::read_toml(path.as_ref())
    }

    /// Parses TOML text (see [`Config::from_toml_file`]).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        dlog_core::config::parse_toml(text, Path::new("<string>"))
    }

    /// Checks every setting, returning the first problem with its key and the reason.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka_brokers.trim().is_empty() {
            return Err(invalid("kafka_brokers", "must name at least one HOST:PORT"));
        }
        for broker in self.kafka_brokers.split(',') {
            let broker = broker.trim();
            let port = broker
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            match port {
                Some((host, Ok(port))) if !host.is_empty() && port != 0 => {}
                _ => {
                    return Err(invalid(
                        "kafka_brokers",
                        format!(
                            "`{broker}` is not HOST:PORT (expected for example 127.0.0.1:9092)"
                        ),
                    ))
                }
            }
        }
        for (key, topic) in [
            ("trace_logs_topic", &self.trace_logs_topic),
            ("service_logs_topic", &self.service_logs_topic),
            ("heartbeat_logs_topic", &self.heartbeat_logs_topic),
        ] {
            validate_topic(key, topic)?;
        }
        let listeners = [
            ("otlp_grpc", self.otlp_grpc),
            ("otlp_http", self.otlp_http),
            ("admin", self.admin),
        ];
        for (i, (key, addr)) in listeners.iter().enumerate() {
            for (other_key, other) in &listeners[..i] {
                if addr.port() != 0 && addr == other {
                    return Err(invalid(
                        *key,
                        format!("{addr} is already used by `{other_key}`"),
                    ));
                }
            }
        }
        if self.max_message_bytes < MIN_MAX_MESSAGE_BYTES {
            return Err(invalid(
                "max_message_bytes",
                format!(
                    "{} is below the minimum of {MIN_MAX_MESSAGE_BYTES} bytes",
                    self.max_message_bytes
                ),
            ));
        }
        // librdkafka refuses message.max.bytes above 1e9.
        if self.max_message_bytes > 900_000_000 {
            return Err(invalid(
                "max_message_bytes",
                format!(
                    "{} is above librdkafka's limit of 900000000",
                    self.max_message_bytes
                ),
            ));
        }
        if self.topic_partitions < 1 {
            return Err(invalid("topic_partitions", "must be at least 1"));
        }
        if self.topic_replication < 1 {
            return Err(invalid("topic_replication", "must be at least 1"));
        }
        if self.produce_timeout_ms == 0 {
            return Err(invalid(
                "produce_timeout_ms",
                "must be above 0: it is how long a request may wait for Kafka",
            ));
        }
        if self.linger_ms >= self.produce_timeout_ms {
            return Err(invalid(
                "linger_ms",
                format!(
                    "{} must be below produce_timeout_ms ({})",
                    self.linger_ms, self.produce_timeout_ms
                ),
            ));
        }
        if self.max_request_bytes == 0 {
            return Err(invalid("max_request_bytes", "must be above 0"));
        }
        if self.max_in_flight_bytes < self.max_message_bytes {
            return Err(invalid(
                "max_in_flight_bytes",
                format!(
                    "{} must be at least max_message_bytes ({})",
                    self.max_in_flight_bytes, self.max_message_bytes
                ),
            ));
        }
        // tokio's semaphore counts permits in a usize with a few bits reserved.
        if self.max_in_flight_bytes > (usize::MAX >> 4) {
            return Err(invalid("max_in_flight_bytes", "is too large"));
        }
        if self.max_concurrent_requests == 0 {
            return Err(invalid("max_concurrent_requests", "must be at least 1"));
        }
        if self.max_concurrent_requests > (usize::MAX >> 4) {
            return Err(invalid("max_concurrent_requests", "is too large"));
        }
        if self.grpc_max_concurrent_streams == 0 {
            return Err(invalid("grpc_max_concurrent_streams", "must be at least 1"));
        }
        if self.max_items_per_request == 0 {
            return Err(invalid("max_items_per_request", "must be at least 1"));
        }
        if self.max_groups_per_request == 0 {
            return Err(invalid("max_groups_per_request", "must be at least 1"));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(invalid("tls_key", "must be set with tls_cert")),
            (None, Some(_)) => return Err(invalid("tls_cert", "must be set with tls_key")),
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(invalid(
                "tls_client_ca",
                "needs tls_cert and tls_key (mTLS runs over TLS)",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.max_connections > (usize::MAX >> 4) {
            return Err(invalid("max_connections", "is too large"));
        }
        for (key, value) in [
            (
                "http_header_read_timeout_ms",
                self.http_header_read_timeout_ms,
            ),
            ("request_body_timeout_ms", self.request_body_timeout_ms),
            (
                "grpc_first_frame_timeout_ms",
                self.grpc_first_frame_timeout_ms,
            ),
            (
                "http2_keepalive_interval_ms",
                self.http2_keepalive_interval_ms,
            ),
            (
                "http2_keepalive_timeout_ms",
                self.http2_keepalive_timeout_ms,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be above 0"));
            }
        }
        for key in &self.redact_extra_keys {
            if key.is_empty() || key.contains('.') || key.len() > crate::redact::MAX_KEY_SEGMENT {
                return Err(invalid(
                    "redact_extra_keys",
                    format!(
                        "`{key}` is not a key segment: it must be 1 to {} bytes without `.` (it is compared with the last segment of a key)",
                        crate::redact::MAX_KEY_SEGMENT
                    ),
                ));
            }
        }
        self.validate_kafka_properties()
    }

    /// Checks the `[kafka]` table alone: no reserved key, no empty value.
    pub fn validate_kafka_properties(&self) -> Result<(), ConfigError> {
        dlog_core::kafka::ProducerConfig::check_properties(&self.kafka, &crate::sink::RESERVED_BY)
    }

    /// `produce_timeout_ms` as a duration.
    pub fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.produce_timeout_ms)
    }

    /// `admission_timeout_ms` as a duration, at most `produce_timeout_ms`.
    pub fn admission_timeout(&self) -> Duration {
        Duration::from_millis(self.admission_timeout_ms.min(self.produce_timeout_ms))
    }

    /// `request_body_timeout_ms` as a duration.
    pub fn request_body_timeout(&self) -> Duration {
        Duration::from_millis(self.request_body_timeout_ms)
    }

    /// `http2_keepalive_interval_ms` as a duration.
    pub fn http2_keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.http2_keepalive_interval_ms)
    }

    /// `http2_keepalive_timeout_ms` as a duration.
    pub fn http2_keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.http2_keepalive_timeout_ms)
    }

    /// `shutdown_timeout_ms` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// The three topic names, in the order trace, service, heartbeat.
    pub fn topics(&self) -> [&str; 3] {
        [
            &self.trace_logs_topic,
            &self.service_logs_topic,
            &self.heartbeat_logs_topic,
        ]
    }
}

/// Kafka's own rules for topic names, so a bad name fails at start and not on the first record.
fn validate_topic(key: &str, topic: &str) -> Result<(), ConfigError> {
    if topic.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if topic.len() > 249 {
        return Err(invalid(key, "is longer than Kafka's 249 characters"));
    }
    if topic == "." || topic == ".." {
        return Err(invalid(key, "`.` and `..` are not valid Kafka topic names"));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            key,
            format!("`{topic}` contains `{c}`; Kafka topic names allow only ASCII letters, digits, `.`, `_` and `-`"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = Config::default();
        assert_eq!(c.kafka_brokers, "127.0.0.1:9092");
        assert_eq!(c.otlp_grpc.to_string(), "127.0.0.1:4317");
        assert_eq!(c.otlp_http.to_string(), "127.0.0.1:4318");
        assert_eq!(c.admin.to_string(), "127.0.0.1:8888");
        assert_eq!(c.topics(), ["trace_logs", "service_logs", "heartbeat_logs"]);
        assert_eq!(c.encoding, Encoding::OtlpProto);
        assert_eq!(c.max_message_bytes, 1_000_000);
        assert_eq!(c.max_in_flight_bytes, 32 * 1024 * 1024);
        assert_eq!(c.admission_timeout_ms, 1_000);
        assert_eq!(c.max_concurrent_requests, 256);
        assert_eq!(c.grpc_max_concurrent_streams, 128);
        c.validate().unwrap();
    }

    #[test]
    fn toml_file_overrides_only_what_it_names() {
        let c = Config::from_toml_str(
            r#"
            kafka_brokers = "10.0.0.5:9092,10.0.0.6:9092"
            otlp_grpc = "0.0.0.0:4317"
            encoding = "otlp_json"
            [kafka]
            "compression.type" = "gzip"
            "#,
        )
        .unwrap();
        assert_eq!(c.kafka_brokers, "10.0.0.5:9092,10.0.0.6:9092");
        assert_eq!(c.otlp_grpc.to_string(), "0.0.0.0:4317");
        assert_eq!(c.encoding, Encoding::OtlpJson);
        assert_eq!(c.kafka["compression.type"], "gzip");
        assert_eq!(c.otlp_http, Config::default().otlp_http);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("kafka_broker = \"x:1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka_broker"), "{err}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        std::fs::write(&path, "max_message_bytes = \"big\"").unwrap();
        let err = Config::from_toml_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("bridge.toml") && err.contains("max_message_bytes"),
            "{err}"
        );
    }

    #[test]
    fn validation_names_key_and_reason() {
        type Change = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|c| c.kafka_brokers = "nohost".into()),
                "kafka_brokers",
            ),
            (
                Box::new(|c| c.trace_logs_topic = "bad topic".into()),
                "trace_logs_topic",
            ),
            (Box::new(|c| c.max_message_bytes = 10), "max_message_bytes"),
            (Box::new(|c| c.topic_partitions = 0), "topic_partitions"),
            (Box::new(|c| c.produce_timeout_ms = 0), "produce_timeout_ms"),
            (Box::new(|c| c.otlp_http = c.otlp_grpc), "otlp_http"),
            (
                Box::new(|c| c.max_concurrent_requests = 0),
                "max_concurrent_requests",
            ),
            (
                Box::new(|c| c.grpc_max_concurrent_streams = 0),
                "grpc_max_concurrent_streams",
            ),
            (
                Box::new(|c| {
                    c.kafka.insert("message.timeout.ms".into(), "1".into());
                }),
                "kafka.message.timeout.ms",
            ),
            (
                Box::new(|c| {
                    c.kafka
                        .insert("queue.buffering.max.kbytes".into(), "1".into());
                }),
                "kafka.queue.buffering.max.kbytes",
            ),
            (
                Box::new(|c| {
                    c.kafka.insert("acks".into(), "1".into());
                }),
                "kafka.acks",
            ),
            (
                Box::new(|c| {
                    c.kafka.insert("enable.idempotence".into(), "false".into());
                }),
                "kafka.enable.idempotence",
            ),
        ];
        for (change, key) in cases {
            let mut c = Config::default();
            change(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
    }
}
