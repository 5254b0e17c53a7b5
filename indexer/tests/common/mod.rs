#![allow(dead_code)]
//! Helpers shared by the system tests: OTLP fixtures, producing records, waiting on
//! conditions with deadlines, reading committed offsets.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use dlog_core::encoding::{encode_logs, encode_traces, Encoding};
use dlog_core::names;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Waits until `check` returns `Some`, polling every 100 ms, or panics after `within`
/// naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

pub fn resource(service: &str, instance: &str, deps: &[&str]) -> Resource {
    Resource {
        attributes: vec![
            kv(names::SERVICE_NAME, s(service)),
            kv(names::SERVICE_VERSION, s("1.0.0")),
            kv(names::SERVICE_INSTANCE_ID, s(instance)),
            kv(
                names::SERVICE_DEPENDENCIES,
                any_value::Value::ArrayValue(ArrayValue {
                    values: deps
                        .iter()
                        .map(|d| AnyValue { value: Some(s(d)) })
                        .collect(),
                }),
            ),
        ],
        ..Default::default()
    }
}

pub fn otlp_span(
    trace: &[u8; 16],
    id: u64,
    parent: Option<u64>,
    name: &str,
    kind: span::SpanKind,
    start: u64,
    dur_ms: u64,
) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: id.to_be_bytes().to_vec(),
        parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + dur_ms * 1_000_000,
        ..Default::default()
    }
}

pub fn traces(resource: Resource, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn logs(resource: Resource, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn log_record(
    trace: &[u8; 16],
    span: u64,
    time: u64,
    severity: i32,
    body: &str,
    attrs: Vec<KeyValue>,
) -> LogRecord {
    LogRecord {
        time_unix_nano: time,
        severity_number: severity,
        body: Some(AnyValue {
            value: Some(s(body)),
        }),
        trace_id: trace.to_vec(),
        span_id: span.to_be_bytes().to_vec(),
        attributes: attrs,
        ..Default::default()
    }
}

pub fn registration(time: u64) -> LogRecord {
    LogRecord {
        time_unix_nano: time,
        event_name: names::REGISTRATION_EVENT.into(),
        attributes: vec![
            kv(names::SERVICE_STATUS, s("UP")),
            kv(
                names::HEARTBEAT_INTERVAL_MS,
                any_value::Value::IntValue(1000),
            ),
        ],
        ..Default::default()
    }
}

/// One request across two services, as the services would export it: frontend's server
/// span `GET /checkout` → its client span `POST /charge` → backend's server span
/// `POST /charge` → backend's `db.query` (an error), with one log per service span and a
/// registration per service.
pub struct TwoServiceRequest {
    pub trace_id: [u8; 16],
    pub frontend_spans: ExportTraceServiceRequest,
    pub backend_spans: ExportTraceServiceRequest,
    pub frontend_logs: ExportLogsServiceRequest,
    pub backend_logs: ExportLogsServiceRequest,
}

pub const ROOT: u64 = 0x1000_0000_0000_0001;
pub const CLIENT: u64 = 0x1000_0000_0000_0002;
pub const SERVER: u64 = 0x2000_0000_0000_0003;
pub const QUERY: u64 = 0x2000_0000_0000_0004;

pub fn two_service_request(start: u64) -> TwoServiceRequest {
    let trace_id: [u8; 16] = *uuid::Uuid::new_v4().as_bytes();
    let ms = 1_000_000;
    let fe = resource("frontend", "frontend-1", &["backend"]);
    let be = resource("backend", "backend-1", &["postgres"]);
    let mut query = otlp_span(
        &trace_id,
        QUERY,
        Some(SERVER),
        "db.query",
        span::SpanKind::Internal,
        start + 20 * ms,
        30,
    );
    query.status = Some(Status {
        code: status::StatusCode::Error as i32,
        message: "deadlock detected".into(),
    });
    let mut root = otlp_span(
        &trace_id,
        ROOT,
        None,
        "GET /checkout",
        span::SpanKind::Server,
        start,
        100,
    );
    root.attributes = vec![
        kv("http.request.method", s("GET")),
        kv("http.response.status_code", any_value::Value::IntValue(500)),
    ];
    let mut client = otlp_span(
        &trace_id,
        CLIENT,
        Some(ROOT),
        "POST /charge",
        span::SpanKind::Client,
        start + 10 * ms,
        80,
    );
    client.attributes = vec![kv(names::PEER_SERVICE, s("backend"))];
    TwoServiceRequest {
        trace_id,
        frontend_spans: traces(fe.clone(), vec![root, client]),
        backend_spans: traces(
            be.clone(),
            vec![
                otlp_span(
                    &trace_id,
                    SERVER,
                    Some(CLIENT),
                    "POST /charge",
                    span::SpanKind::Server,
                    start + 12 * ms,
                    70,
                ),
                query,
            ],
        ),
        frontend_logs: logs(
            fe,
            vec![
                registration(start - 1000 * ms),
                log_record(
                    &trace_id,
                    ROOT,
                    start + ms,
                    9,
                    "checkout started",
                    vec![kv("cart.id", s("c-42"))],
                ),
            ],
        ),
        backend_logs: logs(
            be,
            vec![
                registration(start - 1000 * ms),
                log_record(
                    &trace_id,
                    SERVER,
                    start + 15 * ms,
                    13,
                    "charge slow",
                    vec![
                        kv(names::RESPONSE_TIME_MS, any_value::Value::DoubleValue(70.0)),
                        kv(names::THRESHOLD_LIMIT_MS, any_value::Value::IntValue(50)),
                    ],
                ),
                log_record(
                    &trace_id,
                    QUERY,
                    start + 45 * ms,
                    17,
                    "db deadlock",
                    vec![
                        kv(names::ERROR_CODE, s("DB_DEADLOCK")),
                        kv(names::ERROR_MESSAGE, s("deadlock detected")),
                    ],
                ),
            ],
        ),
    }
}

pub fn hex_id(id: u64) -> String {
    format!("{id:016x}")
}

/// An acks=all producer.
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// Produces one record and returns its (partition, offset).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) -> (i32, i64) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload).headers(h),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    (delivery.partition, delivery.offset)
}

/// Produces a trace request as the bridge would (key = trace id, encoding and signal headers).
pub async fn produce_traces(
    producer: &FutureProducer,
    topic: &str,
    request: &ExportTraceServiceRequest,
) -> (i32, i64) {
    let key = hex::encode(&request.resource_spans[0].scope_spans[0].spans[0].trace_id);
    let bytes = encode_traces(Encoding::OtlpProto, request).unwrap();
    produce(
        producer,
        topic,
        &key,
        &bytes,
        &[
            (names::ENCODING_HEADER, "otlp_proto"),
            (names::SIGNAL_HEADER, "traces"),
        ],
    )
    .await
}

/// Produces a logs request keyed by `key`.
pub async fn produce_logs(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    request: &ExportLogsServiceRequest,
) -> (i32, i64) {
    let bytes = encode_logs(Encoding::OtlpJson, request).unwrap();
    produce(
        producer,
        topic,
        key,
        &bytes,
        &[
            (names::ENCODING_HEADER, "otlp_json"),
            (names::SIGNAL_HEADER, "logs"),
        ],
    )
    .await
}

/// The offsets the group has committed, per (topic, partition); absent when none.
pub fn committed(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<(String, i32), i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let tpl = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

/// Span documents in the store's span indices of `prefix`.
pub async fn stored_spans(elastic: &dlog_testkit::Elastic, prefix: &str) -> Option<u64> {
    let url = format!("{}/{prefix}-jaeger-span-*/_count", elastic.url);
    let body: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
    body["count"].as_u64()
}

/// Spans in one span-topic record.
pub fn spans_in(record: &dlog_core::source::RawRecord) -> u64 {
    let request = dlog_core::encoding::decode_traces(Encoding::OtlpProto, &record.payload)
        .expect("a span record");
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum()
}
