//! Shared helpers: records in the bridge's record format, a producer, the stage's config,
//! and readers for the alerts topic and the admin metrics.

#![allow(dead_code)]

use dlog_core::stage::ConsumerConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use dlog_alerting::config::ColorMode;
use dlog_alerting::AlerterConfig;
use dlog_core::encoding::{encode_logs, encode_traces, Encoding};
use dlog_core::names;
use dlog_proto::alert::v1::AlertEvent;
use dlog_testkit::{free_port, unique_name, Kafka};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub const T0: u64 = 1_750_000_000_000_000_000;

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
    let mut attributes = vec![
        kv(names::SERVICE_NAME, s(service)),
        kv(names::SERVICE_INSTANCE_ID, s(instance)),
    ];
    if !deps.is_empty() {
        attributes.push(kv(
            names::SERVICE_DEPENDENCIES,
            any_value::Value::ArrayValue(ArrayValue {
                values: deps
                    .iter()
                    .map(|d| AnyValue { value: Some(s(d)) })
                    .collect(),
            }),
        ));
    }
    Resource {
        attributes,
        ..Default::default()
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

/// A registration (or heartbeat) event, as the SDK sends it.
pub fn announce(event: &str, status: &str, interval_ms: i64, at: u64) -> LogRecord {
    LogRecord {
        time_unix_nano: at,
        observed_time_unix_nano: at,
        severity_number: 9,
        severity_text: "INFO".into(),
        event_name: event.into(),
        body: Some(AnyValue {
            value: Some(s(event)),
        }),
        attributes: vec![
            kv(names::SERVICE_STATUS, s(status)),
            kv(
                names::HEARTBEAT_INTERVAL_MS,
                any_value::Value::IntValue(interval_ms),
            ),
        ],
        ..Default::default()
    }
}

/// `DistributedLogger::error(msg, code, message)`.
pub fn error_log(body: &str, code: &str, message: &str, trace_id: [u8; 16], at: u64) -> LogRecord {
    LogRecord {
        time_unix_nano: at,
        severity_number: 17,
        severity_text: "ERROR".into(),
        body: Some(AnyValue {
            value: Some(s(body)),
        }),
        trace_id: trace_id.to_vec(),
        span_id: vec![1; 8],
        attributes: vec![
            kv(names::ERROR_CODE, s(code)),
            kv(names::ERROR_MESSAGE, s(message)),
        ],
        ..Default::default()
    }
}

/// `DistributedLogger::log_service_call(target, success, duration)`.
pub fn service_call(
    source: &str,
    target: &str,
    success: bool,
    trace_id: [u8; 16],
    at: u64,
) -> LogRecord {
    let status = if success { "SUCCESS" } else { "FAILURE" };
    LogRecord {
        time_unix_nano: at,
        severity_number: if success { 9 } else { 13 },
        severity_text: if success { "INFO" } else { "WARN" }.into(),
        event_name: names::SERVICE_CALL_EVENT.into(),
        body: Some(AnyValue {
            value: Some(s(&format!("call {source} -> {target}: {status} in 3.0 ms"))),
        }),
        trace_id: trace_id.to_vec(),
        span_id: vec![2; 8],
        attributes: vec![
            kv(names::CALL_SOURCE, s(source)),
            kv(names::CALL_TARGET, s(target)),
            kv(names::CALL_SUCCESS, any_value::Value::BoolValue(success)),
            kv(names::CALL_STATUS, s(status)),
            kv(names::CALL_DURATION_MS, any_value::Value::DoubleValue(3.0)),
        ],
        ..Default::default()
    }
}

/// One client span of `resource`'s service calling `peer`, failed with `error.type=connect`.
pub fn failed_client_span(
    resource: Resource,
    peer: &str,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    at: u64,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: trace_id.to_vec(),
                    span_id: span_id.to_vec(),
                    name: "GET".into(),
                    kind: span::SpanKind::Client as i32,
                    start_time_unix_nano: at,
                    end_time_unix_nano: at + 2_000_000,
                    attributes: vec![
                        kv(names::PEER_SERVICE, s(peer)),
                        kv("error.type", s("connect")),
                    ],
                    status: Some(Status {
                        code: status::StatusCode::Error as i32,
                        message: String::new(),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Fresh topic names for one test.
pub struct Topics {
    pub traces: String,
    pub logs: String,
    pub heartbeats: String,
    pub alerts: String,
}

impl Topics {
    /// Creates the topics, one partition each, so the alerts topic holds events in the order
    /// they were emitted.
    pub async fn create(kafka: &Kafka) -> Topics {
        let topics = Topics {
            traces: unique_name("trace_logs"),
            logs: unique_name("service_logs"),
            heartbeats: unique_name("heartbeat_logs"),
            alerts: unique_name("alerts"),
        };
        kafka
            .create_topics(
                &[
                    &topics.traces,
                    &topics.logs,
                    &topics.heartbeats,
                    &topics.alerts,
                ],
                1,
            )
            .await
            .unwrap();
        topics
    }
}

/// The stage's config for a test: fresh group, admin on a free port, state in `state_dir`,
/// Kafka output to `topics.alerts`, no terminal colours.
pub fn config(kafka: &Kafka, topics: &Topics, state_dir: &Path) -> AlerterConfig {
    let mut c = AlerterConfig {
        input: ConsumerConfig {
            kafka_brokers: kafka.brokers.clone(),
            group_id: unique_name("alerter"),
            session_timeout_ms: 6_000,
            ..Default::default()
        },
        trace_logs_topic: topics.traces.clone(),
        service_logs_topic: topics.logs.clone(),
        heartbeat_logs_topic: topics.heartbeats.clone(),
        admin: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
        state_dir: state_dir.to_path_buf(),
        batch_linger_ms: 50,
        checkpoint_interval_ms: 100,
        ..Default::default()
    };
    c.outputs.kafka.topic = topics.alerts.clone();
    c.outputs.terminal.color = ColorMode::Never;
    // Keep the test output readable; the terminal format has its own unit tests.
    c.outputs.terminal.enabled = false;
    c
}

/// Produces records the way the bridge does: OTLP protobuf, the encoding header, keyed by
/// trace id (spans, logs with a trace) or service instance (heartbeats).
pub struct Producer {
    producer: FutureProducer,
}

impl Producer {
    pub fn new(kafka: &Kafka) -> Producer {
        Producer::with(kafka, &[])
    }

    /// One record per Kafka batch: a consumer restarted at an offset inside a batch skips the
    /// rest of that batch on tansu 0.6 (docs/sizing.md), which the kill drills must not
    /// mistake for the alerter losing records.
    #[allow(dead_code)]
    pub fn one_per_batch(kafka: &Kafka) -> Producer {
        Producer::with(kafka, &[("batch.num.messages", "1")])
    }

    fn with(kafka: &Kafka, settings: &[(&str, &str)]) -> Producer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &kafka.brokers)
            .set("acks", "all");
        for (k, v) in settings {
            config.set(*k, *v);
        }
        Producer {
            producer: config.create().unwrap(),
        }
    }

    async fn send(&self, topic: &str, key: &str, value: Vec<u8>, signal: &str) {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: names::ENCODING_HEADER,
                value: Some(Encoding::OtlpProto.as_str()),
            })
            .insert(Header {
                key: names::SIGNAL_HEADER,
                value: Some(signal),
            });
        self.producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(&value)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    pub async fn logs(&self, topic: &str, key: &str, request: &ExportLogsServiceRequest) {
        self.send(
            topic,
            key,
            encode_logs(Encoding::OtlpProto, request).unwrap(),
            "logs",
        )
        .await;
    }

    pub async fn traces(&self, topic: &str, key: &str, request: &ExportTraceServiceRequest) {
        self.send(
            topic,
            key,
            encode_traces(Encoding::OtlpProto, request).unwrap(),
            "traces",
        )
        .await;
    }
}

/// Reads the alerts topic until `done` holds (or 40 s pass) and decodes every event.
pub async fn read_alerts(
    kafka: &Kafka,
    topic: &str,
    done: impl Fn(&[AlertEvent]) -> bool + Send + 'static,
) -> Vec<AlertEvent> {
    let brokers = kafka.brokers.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let records =
            dlog_testkit::read_topic(&brokers, &topic, Duration::from_secs(40), |records| {
                let events: Vec<AlertEvent> = records
                    .iter()
                    .map(|r| AlertEvent::decode(r.payload.as_slice()).unwrap())
                    .collect();
                done(&events)
            })
            .unwrap();
        records
            .iter()
            .map(|r| {
                assert_eq!(
                    r.key_str().as_deref().map(str::len),
                    Some(32),
                    "alerts are keyed by id"
                );
                AlertEvent::decode(r.payload.as_slice()).unwrap()
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Waits until the stage's `/metrics` says it evaluated at least `n` records of `topic`.
pub async fn wait_evaluated(admin: SocketAddr, topic: &str, n: u64) {
    let url = format!("http://{admin}/metrics");
    let needle = format!("dlog_alerter_records_total{{topic=\"{topic}\"}} ");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(response) = reqwest::get(&url).await {
            if let Ok(text) = response.text().await {
                let count = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&needle))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                if count >= n {
                    return;
                }
                last = text;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the stage did not evaluate {n} records of {topic} within 40 s; metrics:\n{last}");
}

/// (rule, state) of each event, for compact sequence assertions.
pub fn sequence(events: &[AlertEvent]) -> Vec<(String, &'static str)> {
    events
        .iter()
        .map(|e| {
            let state = match e.state {
                1 => "firing",
                2 => "resolved",
                _ => "unspecified",
            };
            (e.rule.clone(), state)
        })
        .collect()
}

pub fn seq(items: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
    items.iter().map(|(r, s)| (r.to_string(), *s)).collect()
}

/// A webhook receiver for in-process stage tests: 503 for everything while `down`; 422 for
/// alerts whose `labels.error_code` is in `refuse`; otherwise 204 and the body is kept.
#[derive(Default)]
pub struct Hook {
    pub down: std::sync::atomic::AtomicBool,
    pub refuse: std::sync::Mutex<Vec<String>>,
    pub refused: std::sync::atomic::AtomicU64,
    pub accepted: std::sync::Mutex<Vec<serde_json::Value>>,
}

async fn receive(
    axum::extract::State(hook): axum::extract::State<std::sync::Arc<Hook>>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> axum::http::StatusCode {
    use std::sync::atomic::Ordering;
    if hook.down.load(Ordering::SeqCst) {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    let code = body["labels"]["error_code"].as_str().unwrap_or_default();
    if hook.refuse.lock().unwrap().iter().any(|c| c == code) {
        hook.refused.fetch_add(1, Ordering::SeqCst);
        return axum::http::StatusCode::UNPROCESSABLE_ENTITY;
    }
    hook.accepted.lock().unwrap().push(body);
    axum::http::StatusCode::NO_CONTENT
}

/// Serves `hook` on a free loopback port; returns the URL to post alerts to and the server.
pub async fn serve_hook(
    hook: std::sync::Arc<Hook>,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/alerts", axum::routing::post(receive))
        .with_state(hook);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    (url, server)
}

/// A stage config for in-process tests whose only output is a required webhook at `url`,
/// tried once per round, with short retries and no replay skipping.
pub fn webhook_only_config(state_dir: &Path, url: String) -> AlerterConfig {
    let mut config = AlerterConfig {
        admin: "127.0.0.1:0".parse().unwrap(),
        state_dir: state_dir.to_path_buf(),
        batch_linger_ms: 20,
        skip_replayed_offsets: false,
        retry_initial_ms: 20,
        retry_max_ms: 100,
        ..Default::default()
    };
    config.outputs.terminal.enabled = false;
    config.outputs.kafka.enabled = false;
    config.outputs.webhook.enabled = true;
    config.outputs.webhook.required = true;
    config.outputs.webhook.url = url;
    config.outputs.webhook.max_attempts = 1;
    config
}
