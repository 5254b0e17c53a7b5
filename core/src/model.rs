//! The flattened span, log and heartbeat model that stages share, decoded from OTLP.
//!
//! Every stage that reads Kafka turns export requests into these records with
//! [`spans_from_request`] and [`logs_from_request`], so storage and alerting agree on what a
//! span's service is, which log is a heartbeat, and what a document's id is.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, Span};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::encoding::{hex_id, is_empty_id};
use crate::names;

/// Attribute map: OTLP key to a JSON value (strings, numbers, bools, arrays, maps; bytes as hex).
pub type Attributes = BTreeMap<String, Value>;

/// What a record says about the service that emitted it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// `service.name`, or `unknown_service` when absent.
    pub name: String,
    /// `service.version`.
    pub version: Option<String>,
    /// `service.instance.id`.
    pub instance_id: Option<String>,
    /// `service.dependencies`: the services this one declares it calls.
    pub dependencies: Vec<String>,
    /// Every other resource attribute.
    pub attributes: Attributes,
}

impl ServiceInfo {
    /// Reads the service fields from an OTLP resource.
    pub fn from_resource(resource: Option<&Resource>) -> Self {
        let mut info = ServiceInfo {
            name: "unknown_service".to_string(),
            ..Default::default()
        };
        let Some(resource) = resource else {
            return info;
        };
        for kv in &resource.attributes {
            match kv.key.as_str() {
                names::SERVICE_NAME => {
                    if let Some(s) = string_value(kv.value.as_ref()) {
                        info.name = s;
                    }
                }
                names::SERVICE_VERSION => info.version = string_value(kv.value.as_ref()),
                names::SERVICE_INSTANCE_ID => info.instance_id = string_value(kv.value.as_ref()),
                names::SERVICE_DEPENDENCIES => info.dependencies = string_list(kv.value.as_ref()),
                _ => {
                    info.attributes
                        .insert(kv.key.clone(), any_to_json(kv.value.as_ref()));
                }
            }
        }
        info
    }

    /// The instance key: `service.instance.id`, or the service name when there is none.
    pub fn instance_key(&self) -> &str {
        self.instance_id.as_deref().unwrap_or(&self.name)
    }
}

/// The instance key of a resource without building a full [`ServiceInfo`].
pub fn resource_instance_key(resource: Option<&Resource>) -> String {
    let mut name = None;
    if let Some(resource) = resource {
        for kv in &resource.attributes {
            if kv.key == names::SERVICE_INSTANCE_ID {
                if let Some(id) = string_value(kv.value.as_ref()) {
                    return id;
                }
            } else if kv.key == names::SERVICE_NAME {
                name = string_value(kv.value.as_ref());
            }
        }
    }
    name.unwrap_or_else(|| "unknown_service".to_string())
}

/// OTLP span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// Unspecified.
    #[default]
    Unspecified,
    /// Internal operation.
    Internal,
    /// Server side of a request.
    Server,
    /// Client side of a request.
    Client,
    /// Producer of a message.
    Producer,
    /// Consumer of a message.
    Consumer,
}

impl SpanKind {
    fn from_otlp(kind: i32) -> Self {
        match span::SpanKind::try_from(kind).unwrap_or(span::SpanKind::Unspecified) {
            span::SpanKind::Unspecified => SpanKind::Unspecified,
            span::SpanKind::Internal => SpanKind::Internal,
            span::SpanKind::Server => SpanKind::Server,
            span::SpanKind::Client => SpanKind::Client,
            span::SpanKind::Producer => SpanKind::Producer,
            span::SpanKind::Consumer => SpanKind::Consumer,
        }
    }

    /// Lowercase name, as Jaeger's `span.kind` tag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "unspecified",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }
}

/// OTLP span status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StatusCode {
    /// Not set.
    #[default]
    Unset,
    /// Explicitly OK.
    Ok,
    /// Failed.
    Error,
}

/// An event recorded on a span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    /// Event name.
    pub name: String,
    /// Time, ns since the Unix epoch.
    pub time_unix_nano: u64,
    /// Event attributes.
    pub attributes: Attributes,
}

/// A link from a span to another span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanLink {
    /// Linked trace id (hex).
    pub trace_id: String,
    /// Linked span id (hex).
    pub span_id: String,
}

/// One span, flattened with its service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// Trace id, lowercase hex (32 chars).
    pub trace_id: String,
    /// Span id, lowercase hex (16 chars).
    pub span_id: String,
    /// Parent span id, lowercase hex; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// Operation name.
    pub name: String,
    /// Span kind.
    pub kind: SpanKind,
    /// Start, ns since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, ns since the Unix epoch.
    pub end_unix_nano: u64,
    /// Status code.
    pub status: StatusCode,
    /// Status message (set with errors).
    pub status_message: String,
    /// The emitting service.
    pub service: ServiceInfo,
    /// Instrumentation scope name.
    pub scope: String,
    /// Span attributes.
    pub attributes: Attributes,
    /// Span events.
    pub events: Vec<SpanEvent>,
    /// Span links.
    pub links: Vec<SpanLink>,
}

impl SpanRecord {
    /// Deterministic document id: trace id + span id.
    pub fn doc_id(&self) -> String {
        format!("{}{}", self.trace_id, self.span_id)
    }

    /// Duration in nanoseconds (0 when the end precedes the start).
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    /// True when the span's status is an error.
    pub fn is_error(&self) -> bool {
        self.status == StatusCode::Error
    }

    /// The callee a client span names (`peer.service`), if any.
    pub fn peer_service(&self) -> Option<&str> {
        self.attributes
            .get(names::PEER_SERVICE)
            .and_then(Value::as_str)
    }
}

/// A log record, flattened with its service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Time of the event, ns since the Unix epoch (observed time when the event time is unset).
    pub time_unix_nano: u64,
    /// OTLP severity number (0 when unset).
    pub severity_number: i32,
    /// Normalized level: TRACE, DEBUG, INFO, WARN, ERROR or FATAL.
    pub level: String,
    /// The body as text (non-string bodies as JSON).
    pub body: String,
    /// Trace id (hex) when the record carries trace context.
    pub trace_id: Option<String>,
    /// Span id (hex) when the record carries trace context.
    pub span_id: Option<String>,
    /// LogRecord `event_name`, when the record is an event.
    pub event_name: Option<String>,
    /// The emitting service.
    pub service: ServiceInfo,
    /// Record attributes.
    pub attributes: Attributes,
}

impl LogEntry {
    /// Deterministic document id: a stable 128-bit hash of the record's identity (service
    /// instance, time, severity, body, trace context, event name and attributes).
    pub fn doc_id(&self) -> String {
        let mut identity = Vec::with_capacity(256);
        for part in [
            self.service.name.as_str(),
            self.service.instance_id.as_deref().unwrap_or(""),
            &self.time_unix_nano.to_string(),
            &self.severity_number.to_string(),
            &self.body,
            self.trace_id.as_deref().unwrap_or(""),
            self.span_id.as_deref().unwrap_or(""),
            self.event_name.as_deref().unwrap_or(""),
        ] {
            identity.extend_from_slice(part.as_bytes());
            identity.push(0x1f);
        }
        // BTreeMap iteration is ordered, so the serialization is stable.
        if let Ok(attrs) = serde_json::to_vec(&self.attributes) {
            identity.extend_from_slice(&attrs);
        }
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&identity))
    }

    /// A string attribute.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    /// A numeric attribute (ints, doubles, or numeric strings).
    pub fn attr_f64(&self, key: &str) -> Option<f64> {
        match self.attributes.get(key)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A boolean attribute (bools, or the strings `true`/`false`).
    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        match self.attributes.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// True when this is a `log_service_call` record.
    pub fn is_service_call(&self) -> bool {
        self.event_name.as_deref() == Some(names::SERVICE_CALL_EVENT)
    }
}

/// Registration or heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatKind {
    /// `service.registration`: UP at start, DOWN at shutdown.
    Registration,
    /// `service.heartbeat`: periodic liveness.
    Heartbeat,
}

/// UP or DOWN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceStatus {
    /// Running.
    #[serde(rename = "UP")]
    Up,
    /// Shut down cleanly.
    #[serde(rename = "DOWN")]
    Down,
}

impl ServiceStatus {
    /// `UP` or `DOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Up => names::STATUS_UP,
            ServiceStatus::Down => names::STATUS_DOWN,
        }
    }
}

/// A registration or heartbeat event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Which event this is.
    pub kind: HeartbeatKind,
    /// UP or DOWN.
    pub status: ServiceStatus,
    /// Time, ns since the Unix epoch.
    pub time_unix_nano: u64,
    /// The heartbeat interval the service announced, in ms.
    pub interval_ms: Option<u64>,
    /// The emitting service, with its declared dependencies.
    pub service: ServiceInfo,
}

impl Heartbeat {
    /// Deterministic document id: service instance + time.
    pub fn doc_id(&self) -> String {
        format!("{}:{}", self.service.instance_key(), self.time_unix_nano)
    }
}

/// One decoded log-side record.
#[derive(Debug, Clone, PartialEq)]
pub enum LogItem {
    /// An ordinary log record (including `service.call` events).
    Log(LogEntry),
    /// A registration or heartbeat event.
    Heartbeat(Heartbeat),
}

/// True when a log record is a registration or heartbeat event (routed to `heartbeat_logs`).
pub fn is_heartbeat_record(record: &LogRecord) -> bool {
    record.event_name == names::REGISTRATION_EVENT || record.event_name == names::HEARTBEAT_EVENT
}

/// Flattens a trace export request into spans.
pub fn spans_from_request(request: &ExportTraceServiceRequest) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let service = ServiceInfo::from_resource(rs.resource.as_ref());
        for ss in &rs.scope_spans {
            let scope = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for span in &ss.spans {
                out.push(span_record(span, &service, &scope));
            }
        }
    }
    out
}

fn span_record(span: &Span, service: &ServiceInfo, scope: &str) -> SpanRecord {
    let (status, status_message) = match &span.status {
        Some(s) => (
            match status::StatusCode::try_from(s.code).unwrap_or(status::StatusCode::Unset) {
                status::StatusCode::Unset => StatusCode::Unset,
                status::StatusCode::Ok => StatusCode::Ok,
                status::StatusCode::Error => StatusCode::Error,
            },
            s.message.clone(),
        ),
        None => (StatusCode::Unset, String::new()),
    };
    SpanRecord {
        trace_id: hex_id(&span.trace_id),
        span_id: hex_id(&span.span_id),
        parent_span_id: (!is_empty_id(&span.parent_span_id)).then(|| hex_id(&span.parent_span_id)),
        name: span.name.clone(),
        kind: SpanKind::from_otlp(span.kind),
        start_unix_nano: span.start_time_unix_nano,
        end_unix_nano: span.end_time_unix_nano,
        status,
        status_message,
        service: service.clone(),
        scope: scope.to_string(),
        attributes: attributes(&span.attributes),
        events: span
            .events
            .iter()
            .map(|e| SpanEvent {
                name: e.name.clone(),
                time_unix_nano: e.time_unix_nano,
                attributes: attributes(&e.attributes),
            })
            .collect(),
        links: span
            .links
            .iter()
            .map(|l| SpanLink {
                trace_id: hex_id(&l.trace_id),
                span_id: hex_id(&l.span_id),
            })
            .collect(),
    }
}

/// Flattens a logs export request into log entries and heartbeats.
pub fn logs_from_request(request: &ExportLogsServiceRequest) -> Vec<LogItem> {
    let mut out = Vec::new();
    for rl in &request.resource_logs {
        let service = ServiceInfo::from_resource(rl.resource.as_ref());
        for sl in &rl.scope_logs {
            for record in &sl.log_records {
                out.push(log_item(record, &service));
            }
        }
    }
    out
}

fn log_item(record: &LogRecord, service: &ServiceInfo) -> LogItem {
    let time = if record.time_unix_nano != 0 {
        record.time_unix_nano
    } else {
        record.observed_time_unix_nano
    };
    let attributes = attributes(&record.attributes);
    if is_heartbeat_record(record) {
        let status = match attributes
            .get(names::SERVICE_STATUS)
            .and_then(Value::as_str)
        {
            Some(s) if s.eq_ignore_ascii_case(names::STATUS_DOWN) => ServiceStatus::Down,
            _ => ServiceStatus::Up,
        };
        let interval_ms = match attributes.get(names::HEARTBEAT_INTERVAL_MS) {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        return LogItem::Heartbeat(Heartbeat {
            kind: if record.event_name == names::REGISTRATION_EVENT {
                HeartbeatKind::Registration
            } else {
                HeartbeatKind::Heartbeat
            },
            status,
            time_unix_nano: time,
            interval_ms,
            service: service.clone(),
        });
    }
    LogItem::Log(LogEntry {
        time_unix_nano: time,
        severity_number: record.severity_number,
        level: level_name(record.severity_number, &record.severity_text),
        body: record
            .body
            .as_ref()
            .map(|b| match &b.value {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                _ => any_to_json(Some(b)).to_string(),
            })
            .unwrap_or_default(),
        trace_id: (!is_empty_id(&record.trace_id)).then(|| hex_id(&record.trace_id)),
        span_id: (!is_empty_id(&record.span_id)).then(|| hex_id(&record.span_id)),
        event_name: (!record.event_name.is_empty()).then(|| record.event_name.clone()),
        service: service.clone(),
        attributes,
    })
}

/// Normalized level name from an OTLP severity number, falling back to the severity text.
pub fn level_name(severity_number: i32, severity_text: &str) -> String {
    match severity_number {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => {
            let text = severity_text.to_ascii_uppercase();
            return match text.as_str() {
                "" => "INFO".to_string(),
                "WARNING" => "WARN".to_string(),
                _ => text,
            };
        }
    }
    .to_string()
}

/// Converts OTLP attributes into a JSON map.
pub fn attributes(kvs: &[KeyValue]) -> Attributes {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any_to_json(kv.value.as_ref())))
        .collect()
}

/// Converts an OTLP value into JSON (bytes as lowercase hex).
pub fn any_to_json(value: Option<&AnyValue>) -> Value {
    match value.and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number)
        }
        Some(any_value::Value::BytesValue(b)) => Value::String(hex::encode(b)),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| any_to_json(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(kvs)) => Value::Object(
            kvs.values
                .iter()
                .map(|kv| (kv.key.clone(), any_to_json(kv.value.as_ref())))
                .collect(),
        ),
        Some(any_value::Value::StringValueStrindex(_)) => Value::Null,
    }
}

fn string_value(value: Option<&AnyValue>) -> Option<String> {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Reads a string list attribute. Accepts an OTLP string array, or a comma-separated string
/// (what `OTEL_RESOURCE_ATTRIBUTES` can express).
fn string_list(value: Option<&AnyValue>) -> Vec<String> {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::ArrayValue(a)) => a
            .values
            .iter()
            .filter_map(|v| string_value(Some(v)))
            .collect(),
        Some(any_value::Value::StringValue(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::ArrayValue;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn resource() -> Resource {
        Resource {
            attributes: vec![
                kv(
                    names::SERVICE_NAME,
                    any_value::Value::StringValue("svc-a".into()),
                ),
                kv(
                    names::SERVICE_INSTANCE_ID,
                    any_value::Value::StringValue("a-1".into()),
                ),
                kv(
                    names::SERVICE_DEPENDENCIES,
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::StringValue("svc-b".into())),
                        }],
                    }),
                ),
            ],
            ..Default::default()
        }
    }

    fn logs(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource()),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn heartbeat_events_become_heartbeats_with_dependencies() {
        let request = logs(vec![LogRecord {
            time_unix_nano: 42,
            event_name: names::REGISTRATION_EVENT.into(),
            attributes: vec![kv(
                names::SERVICE_STATUS,
                any_value::Value::StringValue("DOWN".into()),
            )],
            ..Default::default()
        }]);
        let items = logs_from_request(&request);
        let LogItem::Heartbeat(hb) = &items[0] else {
            panic!("expected a heartbeat, got {items:?}")
        };
        assert_eq!(hb.kind, HeartbeatKind::Registration);
        assert_eq!(hb.status, ServiceStatus::Down);
        assert_eq!(hb.service.dependencies, vec!["svc-b".to_string()]);
        assert_eq!(hb.doc_id(), "a-1:42");
    }

    #[test]
    fn log_doc_id_is_stable_and_distinguishes_records() {
        let record = |body: &str| LogRecord {
            time_unix_nano: 7,
            severity_number: 17,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(body.into())),
            }),
            ..Default::default()
        };
        let first = logs_from_request(&logs(vec![record("boom"), record("boom"), record("bang")]));
        let ids: Vec<String> = first
            .iter()
            .map(|i| match i {
                LogItem::Log(l) => l.doc_id(),
                LogItem::Heartbeat(_) => unreachable!(),
            })
            .collect();
        assert_eq!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
        let LogItem::Log(entry) = &first[0] else {
            unreachable!()
        };
        assert_eq!(entry.level, "ERROR");
    }

    #[test]
    fn levels_follow_severity_numbers() {
        assert_eq!(level_name(9, ""), "INFO");
        assert_eq!(level_name(13, ""), "WARN");
        assert_eq!(level_name(0, "warning"), "WARN");
        assert_eq!(level_name(21, ""), "FATAL");
    }
}
