//! Shared fixtures for the bridge's system tests: a tansu broker per test, fresh topics, a
//! bridge on port 0, OTLP payload builders, and a reader that knows when a topic is complete.
#![allow(dead_code)]

use std::time::Duration;

use collector_bridge::{start, Config, RunningBridge};
use dlog_core::encoding::{decode_logs, decode_traces};
use dlog_core::names;
use dlog_core::source::RawRecord;
use dlog_testkit::{read_topic, unique_name, Kafka};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// Trace id of the sentinel sent after a test's data (never used by test data).
pub const SENTINEL_TRACE: [u8; 16] = [0xff; 16];
/// Instance of the sentinel's resource.
pub const SENTINEL_INSTANCE: &str = "sentinel-instance";

/// A broker, three fresh single-partition topics and a bridge on port 0.
///
/// Single partitions make "exactly these records" checkable without waiting: the sentinel
/// request is sent after the test's requests were acknowledged, so everything they produced
/// sits before the sentinel in the one partition.
pub struct Env {
    pub kafka: Kafka,
    pub config: Config,
    pub bridge: Option<RunningBridge>,
}

impl Env {
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Env {
        let kafka = Kafka::start().expect("start tansu");
        let mut config = Config {
            kafka_brokers: kafka.brokers.clone(),
            otlp_grpc: "127.0.0.1:0".parse().unwrap(),
            otlp_http: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            trace_logs_topic: unique_name("trace_logs"),
            service_logs_topic: unique_name("service_logs"),
            heartbeat_logs_topic: unique_name("heartbeat_logs"),
            create_topics: true,
            topic_partitions: 1,
            produce_timeout_ms: 5_000,
            ..Config::default()
        };
        tweak(&mut config);
        let bridge = start(config.clone()).await.expect("start bridge");
        Env {
            kafka,
            config,
            bridge: Some(bridge),
        }
    }

    pub fn bridge(&self) -> &RunningBridge {
        self.bridge.as_ref().expect("bridge running")
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.bridge().grpc_addr())
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.bridge().http_addr())
    }

    pub async fn trace_client(&self) -> TraceServiceClient<tonic::transport::Channel> {
        TraceServiceClient::connect(self.grpc_url())
            .await
            .expect("connect gRPC")
    }

    pub async fn logs_client(&self) -> LogsServiceClient<tonic::transport::Channel> {
        LogsServiceClient::connect(self.grpc_url())
            .await
            .expect("connect gRPC")
    }

    /// Sends one span and one log of the sentinel trace, and a sentinel heartbeat.
    pub async fn send_sentinels(&self) {
        self.trace_client()
            .await
            .export(traces(
                resource("sentinel", SENTINEL_INSTANCE),
                vec![span(SENTINEL_TRACE, 1, "sentinel")],
            ))
            .await
            .expect("sentinel spans");
        self.logs_client()
            .await
            .export(logs(
                resource("sentinel", SENTINEL_INSTANCE),
                vec![
                    log("sentinel", Some((SENTINEL_TRACE, 1)), ""),
                    log("sentinel", None, names::HEARTBEAT_EVENT),
                ],
            ))
            .await
            .expect("sentinel logs");
    }

    /// Every record of `topic` before the sentinel (call after [`Env::send_sentinels`]).
    pub async fn records_before_sentinel(&self, topic: &str) -> Vec<RawRecord> {
        let sentinel_key = if topic == self.config.heartbeat_logs_topic {
            SENTINEL_INSTANCE.to_string()
        } else {
            hex::encode(SENTINEL_TRACE)
        };
        let mut records = read_until(&self.kafka.brokers, topic, move |rs| {
            rs.iter()
                .any(|r| r.key_str().as_deref() == Some(sentinel_key.as_str()))
        })
        .await;
        let at = records
            .iter()
            .position(|r| {
                r.key_str().as_deref() == Some(SENTINEL_INSTANCE)
                    || r.key_str().as_deref() == Some(hex::encode(SENTINEL_TRACE).as_str())
            })
            .expect("sentinel read");
        records.truncate(at);
        records
    }
}

/// Reads `topic` until `done` holds (or 30 s pass, then returns what it has).
pub async fn read_until(
    brokers: &str,
    topic: &str,
    done: impl FnMut(&[RawRecord]) -> bool + Send + 'static,
) -> Vec<RawRecord> {
    let brokers = brokers.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        read_topic(&brokers, &topic, Duration::from_secs(30), done).expect("read topic")
    })
    .await
    .expect("reader task")
}

pub fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

pub fn resource(service: &str, instance: &str) -> Resource {
    Resource {
        attributes: vec![
            string_kv(names::SERVICE_NAME, service),
            string_kv(names::SERVICE_VERSION, "1.2.3"),
            string_kv(names::SERVICE_INSTANCE_ID, instance),
        ],
        ..Default::default()
    }
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "bridge-test".into(),
        version: "0.1".into(),
        ..Default::default()
    }
}

pub fn trace_id(n: u8) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = 0xab;
    id[15] = n;
    id
}

pub fn span(trace: [u8; 16], id: u8, name: &str) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: vec![0x10, 0, 0, 0, 0, 0, 0, id],
        name: name.into(),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(id),
        end_time_unix_nano: 1_700_000_000_500_000_000 + u64::from(id),
        attributes: vec![string_kv("http.route", "/orders/{id}")],
        ..Default::default()
    }
}

/// One resource, one scope, these spans.
pub fn traces(resource: Resource, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn log(body: &str, context: Option<([u8; 16], u8)>, event: &str) -> LogRecord {
    LogRecord {
        time_unix_nano: 1_700_000_000_000_000_001,
        observed_time_unix_nano: 1_700_000_000_000_000_002,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body.into())),
        }),
        attributes: vec![string_kv("order.id", "o-17")],
        trace_id: context.map(|(t, _)| t.to_vec()).unwrap_or_default(),
        span_id: context
            .map(|(_, s)| vec![0x10, 0, 0, 0, 0, 0, 0, s])
            .unwrap_or_default(),
        event_name: event.into(),
        ..Default::default()
    }
}

/// One resource, one scope, these log records.
pub fn logs(resource: Resource, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The record's value as a trace request, checking the contract headers on the way.
pub fn decode_trace_record(record: &RawRecord) -> ExportTraceServiceRequest {
    assert_eq!(record.header(names::SIGNAL_HEADER), Some(&b"traces"[..]));
    let encoding = record.encoding().expect("encoding header");
    decode_traces(encoding, &record.payload).expect("trace record decodes")
}

/// The record's value as a logs request, checking the contract headers on the way.
pub fn decode_logs_record(record: &RawRecord) -> ExportLogsServiceRequest {
    assert_eq!(record.header(names::SIGNAL_HEADER), Some(&b"logs"[..]));
    let encoding = record.encoding().expect("encoding header");
    decode_logs(encoding, &record.payload).expect("logs record decodes")
}

pub fn span_names(request: &ExportTraceServiceRequest) -> Vec<String> {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .map(|s| s.name.clone())
        .collect()
}

/// The admin port's `/metrics` text.
pub async fn metrics_text(bridge: &RunningBridge) -> String {
    reqwest::get(format!("http://{}/metrics", bridge.admin_addr()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// The value of `series` in a `/metrics` text. A series that is not there fails the test:
/// reading it as 0 would let "equals 0" pass after a rename.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no series `{series}` in /metrics:\n{text}"))
}
