//! Jaeger's query API (`/api/...`), as Jaeger UI and Grafana's Jaeger data source call it, in
//! Jaeger's JSON model: `{"data", "total", "limit", "offset", "errors"}`, spans with
//! `references`, µs times, typed `tags` and a `processes` map.
//!
//! Jaeger's semantics are kept here even where dlog's own UI differs: `start`/`end` are µs and
//! default to the last two days, `minDuration`/`maxDuration` are Go durations (`1.5s`), and
//! a search needs a service.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use dlog_core::model::{Attributes, ServiceInfo, SpanRecord};
use dlog_storage::{TimeRange, TraceQuery};
use serde::Serialize;
use serde_json::{json, Value};

use crate::params::{parse_tags, trace_id, ApiError, Params};
use crate::AppState;

/// Default number of traces a search returns (Jaeger's).
pub const DEFAULT_TRACES: usize = 100;
/// Most traces one search returns.
pub const MAX_TRACES: usize = 1500;
/// Most spans one response carries; a search stops adding traces past it, and a trace larger
/// than it is cut with a warning (dlog's own API pages through any trace).
pub const MAX_SPANS_PER_RESPONSE: usize = 200_000;
/// How far back a search looks when `start` is absent (Jaeger's default lookback).
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(2 * 24 * 3600);

/// Jaeger's response envelope.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize> {
    /// The payload.
    pub data: T,
    /// Items in `data` (Jaeger sets it for services and operations, 0 elsewhere).
    pub total: usize,
    /// Always 0, as Jaeger answers.
    pub limit: usize,
    /// Always 0, as Jaeger answers.
    pub offset: usize,
    /// `null` on success.
    pub errors: Option<Vec<Value>>,
}

fn envelope<T: Serialize>(data: T, total: usize) -> Json<Envelope<T>> {
    Json(Envelope {
        data,
        total,
        limit: 0,
        offset: 0,
        errors: None,
    })
}

/// One typed tag.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyValue {
    /// Key.
    pub key: String,
    /// `string`, `bool`, `int64`, `float64` or `binary`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Value of that type.
    pub value: Value,
}

impl KeyValue {
    fn string(key: &str, value: impl Into<String>) -> Self {
        KeyValue {
            key: key.to_string(),
            kind: "string",
            value: Value::String(value.into()),
        }
    }
}

/// A tag from an attribute: strings, bools, integers and floats keep their type; arrays and
/// maps become their JSON text, as Jaeger's OTLP translator does.
pub fn tag(key: &str, value: &Value) -> KeyValue {
    let (kind, value) = match value {
        Value::String(s) => ("string", Value::String(s.clone())),
        Value::Bool(b) => ("bool", Value::Bool(*b)),
        Value::Number(n) if n.is_i64() || n.is_u64() => ("int64", Value::Number(n.clone())),
        Value::Number(n) => ("float64", Value::Number(n.clone())),
        Value::Null => ("string", Value::String(String::new())),
        other => ("string", Value::String(other.to_string())),
    };
    KeyValue {
        key: key.to_string(),
        kind,
        value,
    }
}

fn tags(attrs: &Attributes) -> Vec<KeyValue> {
    attrs.iter().map(|(k, v)| tag(k, v)).collect()
}

/// Jaeger's process: a service and its resource tags.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Process {
    /// `service.name`.
    #[serde(rename = "serviceName")]
    pub service_name: String,
    /// The other resource attributes.
    pub tags: Vec<KeyValue>,
}

impl Process {
    fn from_service(service: &ServiceInfo) -> Self {
        let mut tags = Vec::new();
        if let Some(v) = &service.version {
            tags.push(KeyValue::string(
                dlog_core::names::SERVICE_VERSION,
                v.clone(),
            ));
        }
        if let Some(v) = &service.instance_id {
            tags.push(KeyValue::string(
                dlog_core::names::SERVICE_INSTANCE_ID,
                v.clone(),
            ));
        }
        if !service.dependencies.is_empty() {
            tags.push(KeyValue::string(
                dlog_core::names::SERVICE_DEPENDENCIES,
                service.dependencies.join(","),
            ));
        }
        tags.extend(tags_sorted(&service.attributes));
        Process {
            service_name: service.name.clone(),
            tags,
        }
    }
}

fn tags_sorted(attrs: &Attributes) -> Vec<KeyValue> {
    tags(attrs)
}

/// A reference to another span.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reference {
    /// `CHILD_OF` (the parent) or `FOLLOWS_FROM` (a link).
    #[serde(rename = "refType")]
    pub ref_type: &'static str,
    /// Trace id.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Span id.
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// A span log (an OTLP span event).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Log {
    /// µs since the epoch.
    pub timestamp: u64,
    /// `event` (the name) then the event's attributes.
    pub fields: Vec<KeyValue>,
}

/// A span in Jaeger's model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Span {
    /// Trace id.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Span id.
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// Operation (span) name.
    #[serde(rename = "operationName")]
    pub operation_name: String,
    /// Parent (`CHILD_OF`) then links (`FOLLOWS_FROM`).
    pub references: Vec<Reference>,
    /// Start, µs since the epoch.
    #[serde(rename = "startTime")]
    pub start_time: u64,
    /// Duration, µs.
    pub duration: u64,
    /// Attributes, then `span.kind`, `otel.scope.name`, the status and `error=true`.
    pub tags: Vec<KeyValue>,
    /// Events.
    pub logs: Vec<Log>,
    /// Key into the trace's `processes`.
    #[serde(rename = "processID")]
    pub process_id: String,
    /// Always null.
    pub warnings: Option<Vec<String>>,
}

/// A trace in Jaeger's model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Trace {
    /// Trace id.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Spans, in start order.
    pub spans: Vec<Span>,
    /// `p1`, `p2`, ... → process.
    pub processes: BTreeMap<String, Process>,
    /// Set when the trace was cut at [`MAX_SPANS_PER_RESPONSE`].
    pub warnings: Option<Vec<String>>,
}

/// Service name, instance and version: the bucket a resource is looked up in.
type ProcessKey = (String, Option<String>, Option<String>);

/// Bytes an answer's JSON spends on one trace besides its spans and processes.
const TRACE_OVERHEAD_BYTES: usize = 128;

/// Bytes of a value's JSON, counted without building it.
pub(crate) fn json_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A trace in Jaeger's model, built a span at a time within a byte budget; one process per
/// distinct service resource.
pub struct TraceBuilder {
    trace_id: String,
    /// Resources bucketed by name, instance and version, compared in full only within a
    /// bucket: a trace whose every span names another instance costs one lookup per span,
    /// not a scan of every process so far.
    buckets: HashMap<ProcessKey, Vec<(ServiceInfo, String)>>,
    processes: BTreeMap<String, Process>,
    spans: Vec<Span>,
}

impl TraceBuilder {
    /// An empty trace.
    pub fn new(trace_id: &str) -> Self {
        TraceBuilder {
            trace_id: trace_id.to_string(),
            buckets: HashMap::new(),
            processes: BTreeMap::new(),
            spans: Vec::new(),
        }
    }

    /// Spans added so far.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when no span was added.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Adds a span when its JSON (and its process's, when new) fits in `budget` bytes, and
    /// takes them from it; false (nothing added) when it does not fit.
    pub fn push_within(&mut self, s: &SpanRecord, budget: &mut usize) -> bool {
        let key = (
            s.service.name.clone(),
            s.service.instance_id.clone(),
            s.service.version.clone(),
        );
        let known = self
            .buckets
            .get(&key)
            .and_then(|b| b.iter().find(|(svc, _)| svc == &s.service))
            .map(|(_, id)| id.clone());
        let (process_id, new_process) = match known {
            Some(id) => (id, None),
            None => (
                format!("p{}", self.processes.len() + 1),
                Some(Process::from_service(&s.service)),
            ),
        };
        let span = jaeger_span(s, process_id.clone());
        let cost = json_len(&span)
            + 1
            + new_process
                .as_ref()
                .map_or(0, |p| json_len(p) + process_id.len() + 4);
        if cost > *budget {
            return false;
        }
        *budget -= cost;
        if let Some(process) = new_process {
            self.buckets
                .entry(key)
                .or_default()
                .push((s.service.clone(), process_id.clone()));
            self.processes.insert(process_id, process);
        }
        self.spans.push(span);
        true
    }

    /// The trace, with these warnings.
    pub fn finish(self, warnings: Option<Vec<String>>) -> Trace {
        Trace {
            trace_id: self.trace_id,
            spans: self.spans,
            processes: self.processes,
            warnings,
        }
    }
}

fn jaeger_span(s: &SpanRecord, process_id: String) -> Span {
    let mut references = Vec::with_capacity(1 + s.links.len());
    if let Some(parent) = &s.parent_span_id {
        references.push(Reference {
            ref_type: "CHILD_OF",
            trace_id: s.trace_id.clone(),
            span_id: parent.clone(),
        });
    }
    for link in &s.links {
        references.push(Reference {
            ref_type: "FOLLOWS_FROM",
            trace_id: link.trace_id.clone(),
            span_id: link.span_id.clone(),
        });
    }
    let mut span_tags = tags(&s.attributes);
    if s.kind != dlog_core::model::SpanKind::Unspecified {
        span_tags.push(KeyValue::string("span.kind", s.kind.as_str()));
    }
    if !s.scope.is_empty() {
        span_tags.push(KeyValue::string("otel.scope.name", s.scope.clone()));
    }
    match s.status {
        dlog_core::model::StatusCode::Error => {
            span_tags.push(KeyValue::string("otel.status_code", "ERROR"));
            if !s.status_message.is_empty() {
                span_tags.push(KeyValue::string(
                    "otel.status_description",
                    s.status_message.clone(),
                ));
            }
            span_tags.push(KeyValue {
                key: "error".into(),
                kind: "bool",
                value: Value::Bool(true),
            });
        }
        dlog_core::model::StatusCode::Ok => {
            span_tags.push(KeyValue::string("otel.status_code", "OK"));
        }
        dlog_core::model::StatusCode::Unset => {}
    }
    let logs = s
        .events
        .iter()
        .map(|e| {
            let mut fields = vec![KeyValue::string("event", e.name.clone())];
            fields.extend(tags(&e.attributes));
            Log {
                timestamp: e.time_unix_nano / 1000,
                fields,
            }
        })
        .collect();
    Span {
        trace_id: s.trace_id.clone(),
        span_id: s.span_id.clone(),
        operation_name: s.name.clone(),
        references,
        start_time: s.start_unix_nano / 1000,
        duration: s.duration_nanos() / 1000,
        tags: span_tags,
        logs,
        process_id,
        warnings: None,
    }
}

/// A trace's spans in Jaeger's model, without a byte bound.
pub fn to_jaeger(trace_id: &str, spans: &[SpanRecord], warnings: Option<Vec<String>>) -> Trace {
    let mut trace = TraceBuilder::new(trace_id);
    let mut unbounded = usize::MAX;
    for s in spans {
        trace.push_within(s, &mut unbounded);
    }
    trace.finish(warnings)
}

/// What [`read_trace`] found.
pub enum ReadTrace {
    /// The trace has no span.
    NotFound,
    /// Not even its first span fits in the byte budget left.
    TooLarge,
    /// The trace, cut (with a warning saying so) when it had more spans than allowed or its
    /// answer would have passed the byte budget.
    Found(Trace),
}

/// Spans a read asks the store for next: as many as the `budget` bytes left would hold at the
/// mean size of the `spans` read so far (`spent` bytes), a few to start with, and at most
/// `cap`; so that spans with huge attributes do not pile up in memory far past the bound
/// before it is checked, while ordinary spans are read in full pages.
pub(crate) fn page_within(budget: usize, spent: usize, spans: usize, cap: usize) -> usize {
    /// The first page, before any span's size is known.
    const FIRST: usize = 64;
    let n = match spent.checked_div(spans) {
        Some(mean) if mean > 0 => budget / mean + 1,
        _ => FIRST,
    };
    n.clamp(1, cap.max(1))
}

/// Reads a trace a page at a time into Jaeger's model, with at most `max_spans` spans and
/// `budget` bytes of JSON (taken from both; the bytes include the trace's own fields and the
/// warning it may carry).
pub async fn read_trace(
    state: &AppState,
    trace_id: &str,
    max_spans: &mut usize,
    budget: &mut usize,
) -> Result<ReadTrace, ApiError> {
    const PAGE: usize = 2_000;
    let max_bytes = state.options.max_answer_bytes;
    let mut trace = TraceBuilder::new(trace_id);
    let mut cursor = None;
    // Room for the trace's fields and the longer of its two warnings, given back unused.
    let reserve = TRACE_OVERHEAD_BYTES
        + json_len(&[bytes_warning(max_bytes, *max_spans)])
            .max(json_len(&[spans_warning(MAX_SPANS_PER_RESPONSE)]));
    let Some(left) = budget.checked_sub(reserve) else {
        return Ok(ReadTrace::TooLarge);
    };
    let start = left;
    *budget = left;
    let warning = loop {
        let spent = start - *budget;
        let want = page_within(*budget, spent, trace.len(), PAGE).min(*max_spans - trace.len() + 1);
        let page = state
            .store
            .get_trace_page(trace_id, cursor.as_ref(), want)
            .await?;
        let done = page.len() < want;
        let mut stop = None;
        for span in &page {
            if trace.len() == *max_spans {
                stop = Some(spans_warning(MAX_SPANS_PER_RESPONSE));
                break;
            }
            if !trace.push_within(span, budget) {
                if trace.is_empty() {
                    *budget += reserve;
                    return Ok(ReadTrace::TooLarge);
                }
                stop = Some(bytes_warning(max_bytes, trace.len()));
                break;
            }
        }
        if stop.is_some() {
            break stop;
        }
        if done {
            break None;
        }
        cursor = page.last().map(|s| dlog_storage::SpanCursor {
            start_unix_nano: s.start_unix_nano,
            span_id: s.span_id.clone(),
        });
    };
    if trace.is_empty() {
        *budget += reserve;
        return Ok(ReadTrace::NotFound);
    }
    let warnings = warning.map(|w| vec![w]);
    // The part of the reserve the trace does not use goes back.
    *budget += reserve - TRACE_OVERHEAD_BYTES - warnings.as_ref().map_or(0, json_len);
    *max_spans -= trace.len();
    Ok(ReadTrace::Found(trace.finish(warnings)))
}

fn spans_warning(max: usize) -> String {
    format!(
        "the trace has more than {max} spans; only the first {max} are shown (dlog's /api/v1/traces/{{id}}/spans pages through all of them)"
    )
}

fn bytes_warning(max_bytes: usize, shown: usize) -> String {
    format!(
        "the trace's answer would pass {max_bytes} bytes (max-answer-bytes); only its first {shown} spans are shown (dlog's /api/v1/traces/{{id}}/spans pages through all of them)"
    )
}

/// Bytes an answer's envelope (`data`, `total`, `limit`, `offset`, `errors` and the traces'
/// separators) takes besides the traces and error entries.
const ENVELOPE_OVERHEAD_BYTES: usize = 128;

/// Bytes kept aside in a search's answer for the entry that counts the errors left out.
const ERRORS_OVERHEAD_BYTES: usize = 256;

/// A search's `errors`, each counted against the answer's bytes; those past it are only
/// counted, in one last entry.
#[derive(Default)]
struct Errors {
    entries: Vec<Value>,
    omitted: usize,
}

impl Errors {
    fn push(&mut self, entry: Value, budget: &mut usize) {
        let cost = json_len(&entry) + 1;
        if cost <= *budget {
            *budget -= cost;
            self.entries.push(entry);
        } else {
            self.omitted += 1;
        }
    }

    fn finish(mut self, max_bytes: usize) -> Vec<Value> {
        if self.omitted > 0 {
            self.entries.push(json!({
                "code": 413,
                "msg": format!(
                    "{} more traces asked for are left out: the answer reached {max_bytes} bytes (max-answer-bytes)",
                    self.omitted
                ),
            }));
        }
        self.entries
    }
}

/// Jaeger's error entry for a trace left out because the answer had no room left for it.
fn left_out_error(trace_id: &str, max_bytes: usize) -> Value {
    json!({
        "code": 413,
        "msg": format!(
            "trace {trace_id}: left out, the answer reached {max_bytes} bytes (max-answer-bytes); ask for it alone"
        ),
        "traceID": trace_id,
    })
}

/// Jaeger's error entry for a trace not even one span of which fits in an answer.
fn too_large_error(trace_id: &str, max_bytes: usize) -> Value {
    json!({
        "code": 413,
        "msg": too_large_message(trace_id, max_bytes),
        "traceID": trace_id,
    })
}

fn too_large_message(trace_id: &str, max_bytes: usize) -> String {
    format!(
        "trace {trace_id}: its first span alone passes the answer bound of {max_bytes} bytes (max-answer-bytes)"
    )
}

/// `GET /api/services`
pub async fn services(
    State(state): State<AppState>,
) -> Result<Json<Envelope<Vec<String>>>, ApiError> {
    let services = state.store.services().await?;
    let n = services.len();
    Ok(envelope(services, n))
}

/// `GET /api/services/{service}/operations`
pub async fn service_operations(
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Result<Json<Envelope<Vec<String>>>, ApiError> {
    check_len("service", &service)?;
    let mut names: Vec<String> = state
        .store
        .operations(&service)
        .await?
        .into_iter()
        .map(|o| o.name)
        .collect();
    names.sort();
    names.dedup();
    let n = names.len();
    Ok(envelope(names, n))
}

fn check_len(name: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > crate::params::MAX_PARAM_BYTES {
        return Err(ApiError::bad_param(name, "too long"));
    }
    Ok(())
}

/// `GET /api/operations?service=&spanKind=`
pub async fn operations(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Envelope<Vec<Value>>>, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let service = params
        .get("service")
        .ok_or_else(|| ApiError::bad_request("parameter 'service' is required"))?;
    let kind = params.get("spanKind");
    if let Some(kind) = kind {
        const KINDS: [&str; 6] = [
            "unspecified",
            "internal",
            "server",
            "client",
            "producer",
            "consumer",
        ];
        if !KINDS.contains(&kind) {
            return Err(ApiError::bad_param(
                "spanKind",
                format!("unsupported span kind: '{kind}'"),
            ));
        }
    }
    let ops: Vec<Value> = state
        .store
        .operations(service)
        .await?
        .into_iter()
        .filter(|o| kind.is_none_or(|k| o.span_kind == k))
        .map(|o| json!({"name": o.name, "spanKind": o.span_kind}))
        .collect();
    let n = ops.len();
    Ok(envelope(ops, n))
}

/// The time range of a search: `start`/`end` in µs; `start` defaults to `end` minus
/// `lookback` (a duration such as `1h`; Jaeger UI's `custom` means none) or two days.
pub fn search_range(params: &Params) -> Result<TimeRange, ApiError> {
    let now = dlog_storage::now_unix_nano();
    let end = params.micros_as_nanos("end")?.unwrap_or(now);
    // As Jaeger's own query service: an explicit `start` wins, and `lookback` (which Jaeger UI
    // sends next to it, e.g. `2d`) is then not even parsed.
    let start = match params.micros_as_nanos("start")? {
        Some(start) => start,
        None => {
            let lookback = match params.get("lookback") {
                None | Some("custom") => DEFAULT_LOOKBACK,
                Some(_) => params
                    .duration("lookback", Duration::from_millis(1))?
                    .unwrap_or(DEFAULT_LOOKBACK),
            };
            end.saturating_sub(lookback.as_nanos().min(u64::MAX as u128) as u64)
        }
    };
    if start > end {
        return Err(ApiError::bad_param("start", "'start' is after 'end'"));
    }
    Ok(TimeRange::between(start, end))
}

/// `GET /api/traces?service=&operation=&tags=&minDuration=&maxDuration=&start=&end=&limit=`,
/// or `GET /api/traces?traceID=..&traceID=..`.
pub async fn search(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Envelope<Vec<Trace>>>, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let ids: Vec<String> = params
        .all("traceID")
        .map(trace_id)
        .collect::<Result<_, _>>()?;
    let max_bytes = state.options.max_answer_bytes;
    let mut spans_left = MAX_SPANS_PER_RESPONSE;
    // Room for the entry that sums up the errors past the bound, so `errors` stays within it.
    let mut bytes_left = max_bytes.saturating_sub(ENVELOPE_OVERHEAD_BYTES + ERRORS_OVERHEAD_BYTES);
    let mut traces = Vec::new();
    let mut errors = Errors::default();
    if !ids.is_empty() {
        if ids.len() > MAX_TRACES {
            return Err(ApiError::bad_param(
                "traceID",
                format!("more than {MAX_TRACES} ids"),
            ));
        }
        // Every trace asked for is in the answer, or named in `errors` with the reason.
        let mut full = false;
        for id in ids {
            if full {
                errors.push(left_out_error(&id, max_bytes), &mut bytes_left);
                continue;
            }
            match read_trace(&state, &id, &mut spans_left, &mut bytes_left).await? {
                ReadTrace::NotFound => {}
                ReadTrace::Found(trace) => {
                    full = trace.warnings.is_some() || spans_left == 0;
                    traces.push(trace);
                }
                ReadTrace::TooLarge if traces.is_empty() => {
                    errors.push(too_large_error(&id, max_bytes), &mut bytes_left);
                }
                ReadTrace::TooLarge => {
                    errors.push(left_out_error(&id, max_bytes), &mut bytes_left);
                }
            }
        }
    } else {
        let query = trace_query(&params)?;
        if query.service.is_none() {
            return Err(ApiError::bad_request("parameter 'service' is required"));
        }
        // Traces are added while both budgets last; one that passes either is cut with a
        // warning and the rest are left out (a search's answer is its first traces). One
        // whose first span alone passes the byte bound is named in `errors`.
        let found = state.store.find_traces(&query).await?;
        for summary in found {
            if spans_left == 0 {
                break;
            }
            let id = summary.trace_id;
            match read_trace(&state, &id, &mut spans_left, &mut bytes_left).await? {
                ReadTrace::NotFound => {}
                ReadTrace::Found(trace) => {
                    let cut = trace.warnings.is_some();
                    traces.push(trace);
                    if cut {
                        break;
                    }
                }
                ReadTrace::TooLarge if traces.is_empty() => {
                    errors.push(too_large_error(&id, max_bytes), &mut bytes_left);
                }
                ReadTrace::TooLarge => break,
            }
        }
    }
    let errors = errors.finish(max_bytes);
    let mut answer = envelope(traces, 0);
    if !errors.is_empty() {
        answer.0.errors = Some(errors);
    }
    Ok(answer)
}

/// The [`TraceQuery`] of a search's parameters (Jaeger's names; dlog's UI uses the same).
pub fn trace_query(params: &Params) -> Result<TraceQuery, ApiError> {
    let min = params.duration("minDuration", Duration::from_millis(1))?;
    let max = params.duration("maxDuration", Duration::from_millis(1))?;
    if let (Some(min), Some(max)) = (min, max) {
        if max < min {
            return Err(ApiError::bad_param(
                "maxDuration",
                "'maxDuration' should be greater than 'minDuration'",
            ));
        }
    }
    Ok(TraceQuery {
        service: params.string("service"),
        operation: params.string("operation"),
        attributes: parse_tags(params)?,
        min_duration: min,
        max_duration: max,
        time: search_range(params)?,
        limit: params.limit("limit", DEFAULT_TRACES, MAX_TRACES)?,
    })
}

/// `GET /api/traces/{traceID}`
pub async fn get_trace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Envelope<Vec<Trace>>>, ApiError> {
    let id = trace_id(&id)?;
    let max_bytes = state.options.max_answer_bytes;
    let (mut spans_left, mut bytes_left) = (
        MAX_SPANS_PER_RESPONSE,
        max_bytes.saturating_sub(ENVELOPE_OVERHEAD_BYTES),
    );
    let found = read_trace(&state, &id, &mut spans_left, &mut bytes_left).await?;
    match found {
        ReadTrace::NotFound => Err(ApiError::not_found("trace not found")),
        ReadTrace::TooLarge => Err(ApiError {
            status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            message: too_large_message(&id, max_bytes),
        }),
        ReadTrace::Found(trace) => Ok(envelope(vec![trace], 0)),
    }
}

/// `GET /api/dependencies?endTs=&lookback=` (ms, as Jaeger takes them; lookback defaults to
/// one day).
pub async fn dependencies(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Envelope<Vec<Value>>>, ApiError> {
    let params = Params::parse(raw.as_deref())?;
    let end_ms = params
        .u64("endTs")?
        .unwrap_or(dlog_storage::now_unix_nano() / 1_000_000);
    let lookback_ms = params.u64("lookback")?.unwrap_or(24 * 3600 * 1000);
    let end = end_ms.saturating_mul(1_000_000);
    let start = end.saturating_sub(lookback_ms.saturating_mul(1_000_000));
    let deps = state
        .store
        .dependencies(TimeRange::between(start, end))
        .await?;
    let service = params.get("service");
    let links: Vec<Value> = deps
        .observed
        .iter()
        .filter(|e| service.is_none_or(|s| e.caller == s || e.callee == s))
        .map(|e| json!({"parent": e.caller, "child": e.callee, "callCount": e.calls}))
        .collect();
    Ok(envelope(links, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlog_core::model::ServiceInfo;

    fn span(n: u64, service: ServiceInfo) -> SpanRecord {
        SpanRecord {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: format!("{n:016x}"),
            parent_span_id: None,
            name: "op".into(),
            kind: Default::default(),
            start_unix_nano: n,
            end_unix_nano: n + 1,
            status: Default::default(),
            status_message: String::new(),
            service,
            scope: String::new(),
            attributes: Default::default(),
            events: Vec::new(),
            links: Vec::new(),
        }
    }

    fn svc(instance: &str, zone: &str) -> ServiceInfo {
        let mut attributes = dlog_core::model::Attributes::new();
        attributes.insert("cloud.zone".into(), serde_json::json!(zone));
        ServiceInfo {
            name: "checkout".into(),
            instance_id: Some(instance.into()),
            attributes,
            ..Default::default()
        }
    }

    #[test]
    fn pages_hold_what_the_bytes_left_would_at_the_mean_span_size() {
        // Nothing read yet: a few spans.
        assert_eq!(page_within(1 << 20, 0, 0, 2_000), 64);
        // 10 spans of 20 KB read, 256 KB left: 13 more, not a page of 2,000.
        assert_eq!(page_within(256_000, 200_000, 10, 2_000), 13);
        // Small spans: a full page.
        assert_eq!(page_within(64 << 20, 5_000, 10, 2_000), 2_000);
        // No room: still one, to find out.
        assert_eq!(page_within(0, 5_000, 10, 2_000), 1);
    }

    #[test]
    fn one_process_per_distinct_resource_whatever_their_number() {
        // The same resource thrice, and one differing only in an attribute: two processes.
        let spans = vec![
            span(1, svc("a", "z1")),
            span(2, svc("a", "z1")),
            span(3, svc("a", "z2")),
            span(4, svc("a", "z1")),
        ];
        let trace = to_jaeger("0af7651916cd43dd8448eb211c80319c", &spans, None);
        let ids: Vec<&str> = trace.spans.iter().map(|s| s.process_id.as_str()).collect();
        assert_eq!(ids, ["p1", "p1", "p2", "p1"]);
        assert_eq!(trace.processes.len(), 2);
        // 20,000 instances, each seen twice: 20,000 processes, each span on its own.
        let spans: Vec<SpanRecord> = (0..40_000u64)
            .map(|n| span(n, svc(&format!("i-{}", n % 20_000), "z1")))
            .collect();
        let trace = to_jaeger("0af7651916cd43dd8448eb211c80319c", &spans, None);
        assert_eq!(trace.processes.len(), 20_000);
        assert_eq!(trace.spans[0].process_id, trace.spans[20_000].process_id);
        assert_ne!(trace.spans[0].process_id, trace.spans[1].process_id);
    }
}
