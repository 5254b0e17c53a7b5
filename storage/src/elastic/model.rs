//! Documents as they sit in Elasticsearch: Jaeger's span model, the flat log schema, the
//! heartbeat and registry documents, and their conversion to and from dlog's model.
//!
//! Jaeger's span model carries what Jaeger's UI and query service read (`traceID`, `spanID`,
//! `operationName`, `references`, `startTime`/`duration` in µs, `tags`, `logs`,
//! `process.serviceName` and `process.tags`). What it cannot carry exactly (nanosecond times,
//! typed arrays and maps, the OTLP span kind and status as such, attributes beyond the
//! indexing cap) is kept in a `dlog` object that is stored but not indexed, so that
//! [`span_from_doc`] gives back exactly the span that was written. Jaeger ignores that field.

use std::collections::BTreeMap;

use dlog_core::model::{
    Attributes, Heartbeat, LogEntry, ServiceInfo, SpanEvent, SpanKind, SpanLink, SpanRecord,
    StatusCode,
};
use dlog_core::names;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::RegistryEntry;

/// One Jaeger key/value (`tags`, `process.tags`, `logs.fields`). Values are strings, typed by
/// `type` (`string`, `bool`, `int64`, `float64`, `binary`), as Jaeger writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    /// Key.
    pub key: String,
    /// Jaeger value type.
    #[serde(rename = "type", default = "string_type")]
    pub ty: String,
    /// Value as text.
    pub value: Value,
}

fn string_type() -> String {
    "string".to_string()
}

/// A Jaeger span reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// `CHILD_OF` or `FOLLOWS_FROM`.
    #[serde(rename = "refType")]
    pub ref_type: String,
    /// Referenced trace.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Referenced span.
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// A Jaeger span log (an OTLP span event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JaegerLog {
    /// Time, µs since the Unix epoch.
    pub timestamp: u64,
    /// Fields; the event name is the `event` field.
    pub fields: Vec<KeyValue>,
}

/// Jaeger's process: the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    /// `service.name`.
    #[serde(rename = "serviceName")]
    pub service_name: String,
    /// The other resource attributes.
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

/// What the Jaeger model cannot carry exactly; stored, not indexed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SpanExtras {
    /// Start, ns.
    #[serde(rename = "startNs")]
    pub start_ns: u64,
    /// End, ns.
    #[serde(rename = "endNs")]
    pub end_ns: u64,
    /// OTLP span kind.
    pub kind: SpanKind,
    /// OTLP status code.
    pub status: StatusCode,
    /// OTLP status message.
    #[serde(rename = "statusMessage", default)]
    pub status_message: String,
    /// Instrumentation scope.
    #[serde(default)]
    pub scope: String,
    /// How many leading `tags` are span attributes (the rest are derived: kind, status, scope).
    #[serde(rename = "attrTags")]
    pub attr_tags: usize,
    /// Keys of span attributes whose tag holds JSON text (arrays, maps, null).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json: Vec<String>,
    /// Attributes beyond `max_indexed_attributes`: kept, not indexed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overflow: Attributes,
    /// Per event: exact time and keys of JSON-valued attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventExtras>,
    /// Keys of process tags holding JSON text.
    #[serde(rename = "processJson", default, skip_serializing_if = "Vec::is_empty")]
    pub process_json: Vec<String>,
    /// True when the span's status is an error (read by the dependency scan).
    #[serde(default)]
    pub error: bool,
}

/// Exact data of one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct EventExtras {
    /// Time, ns.
    pub ns: u64,
    /// Keys of attributes holding JSON text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json: Vec<String>,
}

/// A span document in Jaeger's Elasticsearch model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JaegerSpan {
    /// Trace id, lowercase hex.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Span id, lowercase hex.
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// Parent span id (Jaeger's deprecated field, still read by its UI).
    #[serde(
        rename = "parentSpanID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_span_id: Option<String>,
    /// Jaeger flags (1 = sampled).
    #[serde(default)]
    pub flags: u32,
    /// Operation name.
    #[serde(rename = "operationName")]
    pub operation_name: String,
    /// Parent (`CHILD_OF`) and links (`FOLLOWS_FROM`).
    #[serde(default)]
    pub references: Vec<Reference>,
    /// Start, µs since the Unix epoch.
    #[serde(rename = "startTime")]
    pub start_time: u64,
    /// Start, ms since the Unix epoch (Jaeger's date field).
    #[serde(rename = "startTimeMillis")]
    pub start_time_millis: u64,
    /// Duration, µs.
    pub duration: u64,
    /// Span attributes and derived tags (`span.kind`, `error`, `otel.status_code`, ...).
    #[serde(default)]
    pub tags: Vec<KeyValue>,
    /// Span events.
    #[serde(default)]
    pub logs: Vec<JaegerLog>,
    /// The service.
    pub process: Process,
    /// Exact data (not indexed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlog: Option<SpanExtras>,
}

/// Jaeger's tag for an attribute value; `true` in the second place when the value had to be
/// written as JSON text.
pub fn to_kv(key: &str, value: &Value) -> (KeyValue, bool) {
    let (ty, text, json) = match value {
        Value::String(s) => ("string", s.clone(), false),
        Value::Bool(b) => ("bool", b.to_string(), false),
        Value::Number(n) if n.is_i64() || n.is_u64() => ("int64", n.to_string(), false),
        Value::Number(n) => ("float64", n.to_string(), false),
        other => ("string", other.to_string(), true),
    };
    (
        KeyValue {
            key: key.to_string(),
            ty: ty.to_string(),
            value: Value::String(text),
        },
        json,
    )
}

/// The attribute value of a Jaeger tag (values may be strings, as Jaeger writes them, or
/// native JSON, as other writers do).
pub fn from_kv(kv: &KeyValue, json: bool) -> Value {
    let text = match &kv.value {
        Value::String(s) => s.clone(),
        other => return other.clone(),
    };
    if json {
        return serde_json::from_str(&text).unwrap_or(Value::String(text));
    }
    match kv.ty.as_str() {
        "bool" => text
            .parse::<bool>()
            .map(Value::Bool)
            .unwrap_or(Value::String(text)),
        "int64" => text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .unwrap_or(Value::String(text)),
        "float64" => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::String(text)),
        _ => Value::String(text),
    }
}

fn tags_of(
    attrs: &Attributes,
    cap: usize,
    json_keys: &mut Vec<String>,
) -> (Vec<KeyValue>, Attributes) {
    let mut tags = Vec::with_capacity(attrs.len().min(cap) + 4);
    let mut overflow = Attributes::new();
    for (i, (k, v)) in attrs.iter().enumerate() {
        if i >= cap {
            overflow.insert(k.clone(), v.clone());
            continue;
        }
        let (kv, json) = to_kv(k, v);
        if json {
            json_keys.push(k.clone());
        }
        tags.push(kv);
    }
    (tags, overflow)
}

fn process_of(service: &ServiceInfo, json_keys: &mut Vec<String>) -> Process {
    let mut tags = Vec::with_capacity(service.attributes.len() + 3);
    if let Some(v) = &service.version {
        tags.push(to_kv(names::SERVICE_VERSION, &Value::String(v.clone())).0);
    }
    if let Some(i) = &service.instance_id {
        tags.push(to_kv(names::SERVICE_INSTANCE_ID, &Value::String(i.clone())).0);
    }
    if !service.dependencies.is_empty() {
        let deps = Value::Array(
            service
                .dependencies
                .iter()
                .cloned()
                .map(Value::String)
                .collect(),
        );
        tags.push(to_kv(names::SERVICE_DEPENDENCIES, &deps).0);
        json_keys.push(names::SERVICE_DEPENDENCIES.to_string());
    }
    for (k, v) in &service.attributes {
        let (kv, json) = to_kv(k, v);
        if json {
            json_keys.push(k.clone());
        }
        tags.push(kv);
    }
    Process {
        service_name: service.name.clone(),
        tags,
    }
}

fn service_of(process: &Process, json_keys: &[String]) -> ServiceInfo {
    let mut info = ServiceInfo {
        name: process.service_name.clone(),
        ..Default::default()
    };
    for kv in &process.tags {
        let json = json_keys.iter().any(|k| k == &kv.key);
        match kv.key.as_str() {
            names::SERVICE_VERSION => {
                info.version = from_kv(kv, false).as_str().map(str::to_string)
            }
            names::SERVICE_INSTANCE_ID => {
                info.instance_id = from_kv(kv, false).as_str().map(str::to_string)
            }
            names::SERVICE_DEPENDENCIES => {
                info.dependencies = match from_kv(kv, true) {
                    Value::Array(a) => a
                        .into_iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                    Value::String(s) => s
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                    _ => Vec::new(),
                }
            }
            _ => {
                info.attributes.insert(kv.key.clone(), from_kv(kv, json));
            }
        }
    }
    info
}

/// The Jaeger document of a span, indexing at most `cap` attributes.
pub fn span_to_doc(span: &SpanRecord, cap: usize) -> JaegerSpan {
    let mut extras = SpanExtras {
        start_ns: span.start_unix_nano,
        end_ns: span.end_unix_nano,
        kind: span.kind,
        status: span.status,
        status_message: span.status_message.clone(),
        scope: span.scope.clone(),
        error: span.is_error(),
        ..Default::default()
    };
    let (mut tags, overflow) = tags_of(&span.attributes, cap, &mut extras.json);
    extras.overflow = overflow;
    extras.attr_tags = tags.len();
    // Derived tags, as Jaeger's own OTLP translator writes them, so Jaeger's UI shows kind,
    // errors and status.
    let s = |k: &str, v: &str| KeyValue {
        key: k.to_string(),
        ty: "string".to_string(),
        value: Value::String(v.to_string()),
    };
    if span.kind != SpanKind::Unspecified {
        tags.push(s("span.kind", span.kind.as_str()));
    }
    match span.status {
        StatusCode::Error => {
            tags.push(KeyValue {
                key: "error".into(),
                ty: "bool".into(),
                value: Value::String("true".into()),
            });
            tags.push(s("otel.status_code", "ERROR"));
        }
        StatusCode::Ok => tags.push(s("otel.status_code", "OK")),
        StatusCode::Unset => {}
    }
    if !span.status_message.is_empty() {
        tags.push(s("otel.status_description", &span.status_message));
    }
    if !span.scope.is_empty() {
        tags.push(s("otel.scope.name", &span.scope));
    }
    let mut references = Vec::with_capacity(span.links.len() + 1);
    if let Some(parent) = &span.parent_span_id {
        references.push(Reference {
            ref_type: "CHILD_OF".into(),
            trace_id: span.trace_id.clone(),
            span_id: parent.clone(),
        });
    }
    for link in &span.links {
        references.push(Reference {
            ref_type: "FOLLOWS_FROM".into(),
            trace_id: link.trace_id.clone(),
            span_id: link.span_id.clone(),
        });
    }
    let mut logs = Vec::with_capacity(span.events.len());
    for event in &span.events {
        let mut ex = EventExtras {
            ns: event.time_unix_nano,
            json: Vec::new(),
        };
        let mut fields = vec![s("event", &event.name)];
        for (k, v) in &event.attributes {
            let (kv, json) = to_kv(k, v);
            if json {
                ex.json.push(k.clone());
            }
            fields.push(kv);
        }
        logs.push(JaegerLog {
            timestamp: event.time_unix_nano / 1000,
            fields,
        });
        extras.events.push(ex);
    }
    if extras.events.iter().all(|e| e.json.is_empty()) {
        // Times are exact to the µs in `logs` unless they carry ns; keep extras only if needed.
        if span.events.iter().all(|e| e.time_unix_nano % 1000 == 0) {
            extras.events.clear();
        }
    }
    let process = process_of(&span.service, &mut extras.process_json);
    JaegerSpan {
        trace_id: span.trace_id.clone(),
        span_id: span.span_id.clone(),
        parent_span_id: span.parent_span_id.clone(),
        flags: 1,
        operation_name: span.name.clone(),
        references,
        start_time: span.start_unix_nano / 1000,
        start_time_millis: span.start_unix_nano / 1_000_000,
        duration: span.duration_nanos() / 1000,
        tags,
        logs,
        process,
        dlog: Some(extras),
    }
}

/// The span a Jaeger document holds. Documents written by Jaeger itself (without the `dlog`
/// object) are read from their tags, to the µs.
pub fn span_from_doc(doc: JaegerSpan) -> SpanRecord {
    let parent = doc.parent_span_id.clone().or_else(|| {
        doc.references
            .iter()
            .find(|r| r.ref_type == "CHILD_OF" && r.trace_id == doc.trace_id)
            .map(|r| r.span_id.clone())
    });
    let links = doc
        .references
        .iter()
        .filter(|r| r.ref_type != "CHILD_OF" || r.trace_id != doc.trace_id)
        .map(|r| SpanLink {
            trace_id: r.trace_id.clone(),
            span_id: r.span_id.clone(),
        })
        .collect();
    let extras = doc.dlog.clone();
    let (attributes, kind, status, status_message, scope, start, end) = match &extras {
        Some(ex) => {
            let mut attrs = Attributes::new();
            for kv in doc.tags.iter().take(ex.attr_tags) {
                let json = ex.json.iter().any(|k| k == &kv.key);
                attrs.insert(kv.key.clone(), from_kv(kv, json));
            }
            attrs.extend(ex.overflow.clone());
            (
                attrs,
                ex.kind,
                ex.status,
                ex.status_message.clone(),
                ex.scope.clone(),
                ex.start_ns,
                ex.end_ns,
            )
        }
        None => {
            let mut attrs = Attributes::new();
            let mut kind = SpanKind::Unspecified;
            let mut status = StatusCode::Unset;
            let mut message = String::new();
            let mut scope = String::new();
            for kv in &doc.tags {
                let text = || from_kv(kv, false).as_str().unwrap_or_default().to_string();
                match kv.key.as_str() {
                    "span.kind" => {
                        kind = serde_json::from_value(Value::String(text())).unwrap_or_default()
                    }
                    "otel.status_code" if text() == "ERROR" => status = StatusCode::Error,
                    "otel.status_code" if text() == "OK" => status = StatusCode::Ok,
                    "error" => status = StatusCode::Error,
                    "otel.status_description" => message = text(),
                    "otel.scope.name" | "otel.library.name" => scope = text(),
                    _ => {
                        attrs.insert(kv.key.clone(), from_kv(kv, false));
                    }
                }
            }
            let start = doc.start_time * 1000;
            (
                attrs,
                kind,
                status,
                message,
                scope,
                start,
                start + doc.duration * 1000,
            )
        }
    };
    let event_extras = extras
        .as_ref()
        .map(|e| e.events.clone())
        .unwrap_or_default();
    let events = doc
        .logs
        .iter()
        .enumerate()
        .map(|(i, log)| {
            let ex = event_extras.get(i);
            let mut name = String::new();
            let mut attributes = Attributes::new();
            for (j, kv) in log.fields.iter().enumerate() {
                if j == 0 && kv.key == "event" {
                    name = from_kv(kv, false).as_str().unwrap_or_default().to_string();
                    continue;
                }
                let json = ex.is_some_and(|e| e.json.iter().any(|k| k == &kv.key));
                attributes.insert(kv.key.clone(), from_kv(kv, json));
            }
            SpanEvent {
                name,
                time_unix_nano: ex.map(|e| e.ns).unwrap_or(log.timestamp * 1000),
                attributes,
            }
        })
        .collect();
    let process_json = extras
        .as_ref()
        .map(|e| e.process_json.clone())
        .unwrap_or_default();
    SpanRecord {
        trace_id: doc.trace_id,
        span_id: doc.span_id,
        parent_span_id: parent,
        name: doc.operation_name,
        kind,
        start_unix_nano: start,
        end_unix_nano: end,
        status,
        status_message,
        service: service_of(&doc.process, &process_json),
        scope,
        attributes,
        events,
        links,
    }
}

/// A `jaeger-service-*` document: one per service and operation per day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDoc {
    /// Service.
    #[serde(rename = "serviceName")]
    pub service_name: String,
    /// Operation.
    #[serde(rename = "operationName")]
    pub operation_name: String,
    /// Span kind (Jaeger ≥ 1.30 reads it).
    #[serde(rename = "spanKind", default)]
    pub span_kind: String,
}

/// One indexed key/value of a log's attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// Attribute key.
    pub key: String,
    /// Value as text (JSON text for arrays and maps).
    pub value: String,
}

/// `service.*` fields of log and heartbeat documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceFields {
    /// `service.name`.
    pub name: String,
    /// `service.version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `service.instance.id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceField>,
}

/// `service.instance.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceField {
    /// `service.instance.id`.
    pub id: String,
}

/// A single-field object such as `trace.id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdField {
    /// The id.
    pub id: String,
}

/// `event.name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventField {
    /// The event name.
    pub name: String,
}

/// `error.code` and `error.message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ErrorFields {
    /// `error.code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `error.message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The resource as logged (declared dependencies and other attributes); stored, not indexed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResourceFields {
    /// `service.dependencies`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    /// Other resource attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: Attributes,
}

/// A `service-logs-*` document: the flat log schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogDoc {
    /// Event time, ms since the Unix epoch.
    #[serde(rename = "@timestamp")]
    pub timestamp: u64,
    /// Event time, ns (exact; sorted on).
    pub time_unix_nano: u64,
    /// The document id (a tie-breaker for sorting: `_id` is not sortable everywhere).
    pub doc_id: String,
    /// The service.
    pub service: ServiceFields,
    /// Normalized level.
    pub level: String,
    /// OTLP severity number.
    pub severity_number: i32,
    /// The body.
    pub message: String,
    /// Trace context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<IdField>,
    /// Span context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<IdField>,
    /// LogRecord event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventField>,
    /// `error.code` / `error.message` attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorFields>,
    /// `response_time_ms` attribute, when numeric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_time_ms: Option<f64>,
    /// `threshold_limit_ms` attribute, when numeric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_limit_ms: Option<f64>,
    /// `dependent_service` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependent_service: Option<String>,
    /// The other attributes as indexed key/value pairs, at most `max_indexed_attributes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Label>,
    /// Every attribute, exactly (stored, not indexed).
    #[serde(default)]
    pub attributes: Attributes,
    /// The resource (stored, not indexed).
    #[serde(default)]
    pub resource: ResourceFields,
}

fn service_fields(s: &ServiceInfo) -> ServiceFields {
    ServiceFields {
        name: s.name.clone(),
        version: s.version.clone(),
        instance: s.instance_id.clone().map(|id| InstanceField { id }),
    }
}

/// Promoted attributes: they get typed fields of their own, so they are not labels.
const PROMOTED: &[&str] = &[
    names::ERROR_CODE,
    names::ERROR_MESSAGE,
    names::RESPONSE_TIME_MS,
    names::THRESHOLD_LIMIT_MS,
    names::DEPENDENT_SERVICE,
];

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn number_of(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

/// The flat document of a log record, indexing at most `cap` attributes as labels.
pub fn log_to_doc(log: &LogEntry, cap: usize) -> LogDoc {
    let error = ErrorFields {
        code: log.attributes.get(names::ERROR_CODE).map(text_of),
        message: log.attributes.get(names::ERROR_MESSAGE).map(text_of),
    };
    LogDoc {
        timestamp: log.time_unix_nano / 1_000_000,
        time_unix_nano: log.time_unix_nano,
        doc_id: log.doc_id(),
        service: service_fields(&log.service),
        level: log.level.clone(),
        severity_number: log.severity_number,
        message: log.body.clone(),
        trace: log.trace_id.clone().map(|id| IdField { id }),
        span: log.span_id.clone().map(|id| IdField { id }),
        event: log.event_name.clone().map(|name| EventField { name }),
        error: (error.code.is_some() || error.message.is_some()).then_some(error),
        response_time_ms: number_of(log.attributes.get(names::RESPONSE_TIME_MS)),
        threshold_limit_ms: number_of(log.attributes.get(names::THRESHOLD_LIMIT_MS)),
        dependent_service: log.attributes.get(names::DEPENDENT_SERVICE).map(text_of),
        labels: log
            .attributes
            .iter()
            .filter(|(k, _)| !PROMOTED.contains(&k.as_str()))
            .take(cap)
            .map(|(k, v)| Label {
                key: k.clone(),
                value: text_of(v),
            })
            .collect(),
        attributes: log.attributes.clone(),
        resource: ResourceFields {
            dependencies: log.service.dependencies.clone(),
            attributes: log.service.attributes.clone(),
        },
    }
}

/// The log record a flat document holds.
pub fn log_from_doc(doc: LogDoc) -> LogEntry {
    LogEntry {
        time_unix_nano: doc.time_unix_nano,
        severity_number: doc.severity_number,
        level: doc.level,
        body: doc.message,
        trace_id: doc.trace.map(|t| t.id),
        span_id: doc.span.map(|s| s.id),
        event_name: doc.event.map(|e| e.name),
        service: ServiceInfo {
            name: doc.service.name,
            version: doc.service.version,
            instance_id: doc.service.instance.map(|i| i.id),
            dependencies: doc.resource.dependencies,
            attributes: doc.resource.attributes,
        },
        attributes: doc.attributes,
    }
}

/// A `service-heartbeats-*` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatDoc {
    /// Time, ms since the Unix epoch.
    #[serde(rename = "@timestamp")]
    pub timestamp: u64,
    /// Time, ns.
    pub time_unix_nano: u64,
    /// `registration` or `heartbeat`.
    pub kind: String,
    /// `UP` or `DOWN`.
    pub status: String,
    /// The service.
    pub service: ServiceFields,
    /// Announced heartbeat interval, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Declared dependencies.
    #[serde(default)]
    pub dependencies: Vec<String>,
}

/// The heartbeat document of a registration or heartbeat event.
pub fn heartbeat_to_doc(hb: &Heartbeat) -> HeartbeatDoc {
    HeartbeatDoc {
        timestamp: hb.time_unix_nano / 1_000_000,
        time_unix_nano: hb.time_unix_nano,
        kind: match hb.kind {
            dlog_core::model::HeartbeatKind::Registration => "registration".into(),
            dlog_core::model::HeartbeatKind::Heartbeat => "heartbeat".into(),
        },
        status: hb.status.as_str().into(),
        service: service_fields(&hb.service),
        interval_ms: hb.interval_ms,
        dependencies: hb.service.dependencies.clone(),
    }
}

/// A `service-registry` document: the latest state of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryDoc {
    /// Time of the latest event, ms (for dashboards).
    #[serde(rename = "@timestamp")]
    pub timestamp: u64,
    /// The entry.
    #[serde(flatten)]
    pub entry: RegistryEntry,
}

/// Days since the Unix epoch to a `YYYY-MM-DD` date (proleptic Gregorian, UTC).
pub fn date_of_days(days: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since the Unix epoch of a `YYYY-MM-DD` date; `None` when it is not one.
pub fn days_of_date(date: &str) -> Option<i64> {
    let b = date.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = date.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // Reject dates such as 2026-02-31, which do not print back the same.
    (date_of_days(days) == date).then_some(days)
}

/// The UTC date of a time in ns since the Unix epoch.
pub fn date_of_nanos(ns: u64) -> String {
    date_of_days((ns / 86_400_000_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> SpanRecord {
        SpanRecord {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            parent_span_id: Some("00f067aa0ba902b7".into()),
            name: "GET /".into(),
            kind: SpanKind::Server,
            start_unix_nano: 1_736_935_200_000_000_123,
            end_unix_nano: 1_736_935_200_050_000_456,
            status: StatusCode::Error,
            status_message: "boom".into(),
            service: ServiceInfo {
                name: "svc".into(),
                version: Some("1".into()),
                instance_id: Some("i-1".into()),
                dependencies: vec!["db".into()],
                attributes: BTreeMap::from([("host.arch".to_string(), json!(["x", 1]))]),
            },
            scope: "lib".into(),
            attributes: BTreeMap::from([
                ("a".to_string(), json!("s")),
                ("b".to_string(), json!(7)),
                ("c".to_string(), json!(1.0)),
                ("d".to_string(), json!(false)),
                ("e".to_string(), json!({"k": [1, 2]})),
                ("error".to_string(), json!("user attribute named error")),
            ]),
            events: vec![SpanEvent {
                name: "ev".into(),
                time_unix_nano: 1_736_935_200_010_000_001,
                attributes: BTreeMap::from([("x".to_string(), json!([1]))]),
            }],
            links: vec![SpanLink {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: "00f067aa0ba902b8".into(),
            }],
        }
    }

    #[test]
    fn span_round_trips_exactly_through_the_jaeger_model() {
        let span = sample();
        let doc = span_to_doc(&span, 64);
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["startTime"], json!(1_736_935_200_000_000u64));
        assert_eq!(json["startTimeMillis"], json!(1_736_935_200_000u64));
        assert_eq!(json["duration"], json!(50_000));
        assert_eq!(json["process"]["serviceName"], json!("svc"));
        assert_eq!(
            json["references"][0],
            json!({"refType": "CHILD_OF", "traceID": span.trace_id, "spanID": "00f067aa0ba902b7"})
        );
        assert!(doc
            .tags
            .iter()
            .any(|t| t.key == "span.kind" && t.value == json!("server")));
        assert!(doc
            .tags
            .iter()
            .any(|t| t.key == "b" && t.ty == "int64" && t.value == json!("7")));
        let back: JaegerSpan = serde_json::from_value(json).unwrap();
        assert_eq!(span_from_doc(back), span);
    }

    #[test]
    fn attributes_past_the_cap_are_kept_but_not_indexed() {
        let span = sample();
        let doc = span_to_doc(&span, 2);
        assert_eq!(doc.dlog.as_ref().unwrap().attr_tags, 2);
        assert_eq!(doc.dlog.as_ref().unwrap().overflow.len(), 4);
        assert_eq!(span_from_doc(doc), span);
    }

    #[test]
    fn jaeger_written_spans_are_read_from_tags() {
        let mut doc = span_to_doc(&sample(), 64);
        doc.dlog = None;
        let span = span_from_doc(doc);
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.status, StatusCode::Error);
        assert_eq!(span.start_unix_nano, 1_736_935_200_000_000_000);
        assert_eq!(span.attributes["b"], json!(7));
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date_of_days(0), "1970-01-01");
        assert_eq!(date_of_nanos(1_736_935_200_000_000_000), "2025-01-15");
        assert_eq!(date_of_days(11_016), "2000-02-29");
        assert_eq!(date_of_nanos(1_709_251_199_999_999_999), "2024-02-29");
        for days in [0, 11_016, 19_737, 20_422, -1] {
            assert_eq!(days_of_date(&date_of_days(days)), Some(days));
        }
        assert_eq!(days_of_date("2026-02-31"), None);
        assert_eq!(days_of_date("registry"), None);
        assert_eq!(days_of_date("2026-1-011"), None);
    }

    #[test]
    fn non_numeric_response_time_stays_an_attribute_only() {
        let log = LogEntry {
            time_unix_nano: 1,
            severity_number: 13,
            level: "WARN".into(),
            body: "slow".into(),
            trace_id: None,
            span_id: None,
            event_name: None,
            service: ServiceInfo::default(),
            attributes: BTreeMap::from([
                (names::RESPONSE_TIME_MS.to_string(), json!("slow")),
                (names::THRESHOLD_LIMIT_MS.to_string(), json!("250")),
            ]),
        };
        let doc = log_to_doc(&log, 8);
        assert_eq!(doc.response_time_ms, None);
        assert_eq!(doc.threshold_limit_ms, Some(250.0));
        assert!(doc.labels.is_empty());
        assert_eq!(log_from_doc(doc), log);
    }
}
