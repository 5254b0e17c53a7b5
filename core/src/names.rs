//! Named constants: topics, ports, headers, and the attribute and event names of the record
//! contract. Everything that more than one crate spells lives here, once.

/// Default topic for spans (one record per trace per OTLP request).
pub const TRACE_LOGS_TOPIC: &str = "trace_logs";
/// Default topic for log records.
pub const SERVICE_LOGS_TOPIC: &str = "service_logs";
/// Default topic for registration (UP/DOWN) and heartbeat events.
pub const HEARTBEAT_LOGS_TOPIC: &str = "heartbeat_logs";
/// Default topic for alert events (`dlog.alert.v1.AlertEvent`).
pub const ALERTS_TOPIC: &str = "alerts";
/// Default topic for records a stage could not process.
pub const DEAD_LETTERS_TOPIC: &str = "dead_letters";

/// Default OTLP/gRPC port.
pub const OTLP_GRPC_PORT: u16 = 4317;
/// Default OTLP/HTTP port.
pub const OTLP_HTTP_PORT: u16 = 4318;
/// Default admin (metrics, health) port of the collector bridge.
pub const BRIDGE_ADMIN_PORT: u16 = 8888;
/// Default admin port of the indexing stage.
pub const INDEXER_ADMIN_PORT: u16 = 8889;
/// Default admin port of the alerting stage.
pub const ALERTER_ADMIN_PORT: u16 = 8890;
/// Default viewer port (where Jaeger's UI lives, by habit).
pub const VIEWER_PORT: u16 = 16686;
/// Default ports of the demo services A, B and C.
pub const DEMO_SERVICE_PORTS: [u16; 3] = [5000, 5001, 5002];

/// Default OTLP/gRPC endpoint the SDK exports to.
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://127.0.0.1:4317";
/// Default largest Kafka record value, in bytes (Kafka's own `message.max.bytes` default).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Kafka record header naming the value encoding (`otlp_proto` or `otlp_json`).
pub const ENCODING_HEADER: &str = "otlp.encoding";
/// Kafka record header naming the OTLP signal (`traces` or `logs`).
pub const SIGNAL_HEADER: &str = "otlp.signal";

/// Dead-letter header: why the record could not be processed.
pub const DLQ_REASON_HEADER: &str = "dlq.reason";
/// Dead-letter header: the topic the record came from.
pub const DLQ_TOPIC_HEADER: &str = "dlq.source.topic";
/// Dead-letter header: the partition the record came from.
pub const DLQ_PARTITION_HEADER: &str = "dlq.source.partition";
/// Dead-letter header: the offset the record came from.
pub const DLQ_OFFSET_HEADER: &str = "dlq.source.offset";
/// Dead-letter header: the stage that gave up on the record.
pub const DLQ_STAGE_HEADER: &str = "dlq.stage";
/// Dead-letter header, present only when the topic refused the whole record: the payload
/// was cut short and this holds the original payload length in bytes.
pub const DLQ_TRUNCATED_HEADER: &str = "dlq.truncated";

/// Resource attribute: the service name (OpenTelemetry semantic convention).
pub const SERVICE_NAME: &str = "service.name";
/// Resource attribute: the service version (OpenTelemetry semantic convention).
pub const SERVICE_VERSION: &str = "service.version";
/// Resource attribute: the service instance id (OpenTelemetry semantic convention).
pub const SERVICE_INSTANCE_ID: &str = "service.instance.id";
/// Resource attribute: the services this one declares it depends on, as an OTLP string array.
pub const SERVICE_DEPENDENCIES: &str = "service.dependencies";

/// LogRecord `event_name` of the registration event (UP at start, DOWN at shutdown).
pub const REGISTRATION_EVENT: &str = "service.registration";
/// LogRecord `event_name` of the periodic heartbeat event.
pub const HEARTBEAT_EVENT: &str = "service.heartbeat";
/// LogRecord `event_name` of a call from this service to another (`log_service_call`).
pub const SERVICE_CALL_EVENT: &str = "service.call";

/// Attribute on registration and heartbeat events: `UP` or `DOWN`.
pub const SERVICE_STATUS: &str = "service.status";
/// Attribute on heartbeat and registration events: the heartbeat interval in milliseconds.
pub const HEARTBEAT_INTERVAL_MS: &str = "heartbeat.interval_ms";
/// Status value of a running service.
pub const STATUS_UP: &str = "UP";
/// Status value of a service that shut down cleanly.
pub const STATUS_DOWN: &str = "DOWN";

/// Log attribute: the application error code (`DistributedLogger::error`).
pub const ERROR_CODE: &str = "error.code";
/// Log attribute: the application error message (`DistributedLogger::error`).
pub const ERROR_MESSAGE: &str = "error.message";
/// Log attribute: the service an error is attributed to (`DistributedLogger::error`).
pub const DEPENDENT_SERVICE: &str = "dependent_service";
/// Log attribute: measured response time in milliseconds (`DistributedLogger::warn`).
pub const RESPONSE_TIME_MS: &str = "response_time_ms";
/// Log attribute: the response-time limit in milliseconds (`DistributedLogger::warn`).
pub const THRESHOLD_LIMIT_MS: &str = "threshold_limit_ms";

/// Service-call attribute: the calling service.
pub const CALL_SOURCE: &str = "call.source";
/// Service-call attribute: the called service.
pub const CALL_TARGET: &str = "call.target";
/// Service-call attribute: `true` when the call succeeded.
pub const CALL_SUCCESS: &str = "call.success";
/// Service-call attribute: `SUCCESS` or `FAILURE`.
pub const CALL_STATUS: &str = "call.status";
/// Service-call attribute: the call's duration in milliseconds.
pub const CALL_DURATION_MS: &str = "call.duration_ms";

/// Span attribute naming the service a client span calls (OpenTelemetry `peer.service`).
pub const PEER_SERVICE: &str = "peer.service";
