//! What differs between traces and logs, in one place: the request, item and response types,
//! the service paths, how an item is keyed and described, redaction and encoding. The
//! receivers ([`crate::grpc`], [`crate::http`]), the ingest path and the router are written
//! once over [`OtlpSignal`], and monomorphised for [`Traces`] and [`Logs`]: nothing on the
//! per-record path goes through a vtable.

use dlog_core::encoding::{self, hex_id, is_empty_id, EncodeError, Encoding, Signal};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ingest::Accepted;
use crate::redact::Redactor;
use crate::route::{classify_log, classify_span, Classified, Dest};
use crate::wire::RawItem;

/// A resource entry of an owned request: resource, schema URL, and its scope entries (scope,
/// schema URL, items).
pub(crate) type OwnedEntry<T> = (
    Option<Resource>,
    String,
    Vec<(Option<InstrumentationScope>, String, Vec<T>)>,
);

/// One OTLP signal as the bridge receives and routes it.
pub(crate) trait OtlpSignal: Send + Sync + Sized + 'static {
    /// The signal, as headers, metric labels and the stages name it.
    const SIGNAL: Signal;
    /// What one item is called in rejection reasons.
    const NOUN: &'static str;
    /// The gRPC service name.
    const GRPC_SERVICE: &'static str;
    /// The gRPC path of the service's `Export` method.
    const GRPC_EXPORT_PATH: &'static str;
    /// The OTLP/HTTP path.
    const HTTP_PATH: &'static str;

    /// `Export*ServiceRequest`.
    type Request: Message + Default + Clone + DeserializeOwned + Send + Sync + 'static;
    /// `Resource*`: one resource entry of the request.
    type ResourceEntry;
    /// `Scope*`: one scope entry of a resource entry.
    type ScopeEntry;
    /// A span or a log record.
    type Item: Message + Default + Clone + Serialize + Send + Sync + 'static;
    /// `Export*ServiceResponse`.
    type Response: Message + Default + Serialize + PartialEq + Send + 'static;

    /// The request's resource entries.
    fn resource_entries(request: &Self::Request) -> &[Self::ResourceEntry];
    /// A resource entry's resource, schema URL and scope entries.
    fn resource_parts(
        entry: &Self::ResourceEntry,
    ) -> (Option<&Resource>, &str, &[Self::ScopeEntry]);
    /// A scope entry's scope, schema URL and items.
    fn scope_parts(
        entry: &Self::ScopeEntry,
    ) -> (Option<&InstrumentationScope>, &str, &[Self::Item]);
    /// A request made of `entries`.
    fn assemble(entries: Vec<OwnedEntry<Self::Item>>) -> Self::Request;

    /// Where a decoded item goes and what it is keyed by, or why it is rejected.
    fn classify(item: &Self::Item) -> Result<(Dest, Classified), String>;
    /// The same for an item read in place.
    fn classify_raw(
        item: &RawItem<'_>,
        describe: impl FnOnce() -> String,
    ) -> Result<(Dest, Classified), String>;
    /// The item as a rejection reason names it.
    fn describe(item: &Self::Item) -> String;

    /// Whether anything in the request would be redacted.
    fn redact_matches(redactor: &Redactor, request: &Self::Request) -> bool;
    /// Redacts a whole request in place.
    fn redact(redactor: &Redactor, request: &mut Self::Request);
    /// Redacts one item in place.
    fn redact_item(redactor: &Redactor, item: &mut Self::Item);

    /// Serializes a request as a record value.
    fn encode(encoding: Encoding, request: &Self::Request) -> Result<Vec<u8>, EncodeError>;
    /// The answer to the sender, a partial success when items were rejected.
    fn response(accepted: &Accepted) -> Self::Response;

    /// Spans or log records in a decoded request.
    fn item_count(request: &Self::Request) -> usize {
        Self::resource_entries(request)
            .iter()
            .flat_map(|entry| Self::resource_parts(entry).2)
            .map(|entry| Self::scope_parts(entry).2.len())
            .sum()
    }
}

/// Spans: `TraceService`, `/v1/traces`, routed to the trace topic.
pub(crate) struct Traces;

/// Log records: `LogsService`, `/v1/logs`, routed to the service-logs topic, registrations
/// and heartbeats to the heartbeat topic.
pub(crate) struct Logs;

impl OtlpSignal for Traces {
    const SIGNAL: Signal = Signal::Traces;
    const NOUN: &'static str = "span";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const GRPC_EXPORT_PATH: &'static str =
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const HTTP_PATH: &'static str = "/v1/traces";

    type Request = ExportTraceServiceRequest;
    type ResourceEntry = ResourceSpans;
    type ScopeEntry = ScopeSpans;
    type Item = Span;
    type Response = ExportTraceServiceResponse;

    fn resource_entries(request: &Self::Request) -> &[ResourceSpans] {
        &request.resource_spans
    }

    fn resource_parts(entry: &ResourceSpans) -> (Option<&Resource>, &str, &[ScopeSpans]) {
        (
            entry.resource.as_ref(),
            &entry.schema_url,
            &entry.scope_spans,
        )
    }

    fn scope_parts(entry: &ScopeSpans) -> (Option<&InstrumentationScope>, &str, &[Span]) {
        (entry.scope.as_ref(), &entry.schema_url, &entry.spans)
    }

    fn assemble(entries: Vec<OwnedEntry<Span>>) -> Self::Request {
        ExportTraceServiceRequest {
            resource_spans: entries
                .into_iter()
                .map(|(resource, schema_url, scopes)| ResourceSpans {
                    resource,
                    schema_url,
                    scope_spans: scopes
                        .into_iter()
                        .map(|(scope, schema_url, spans)| ScopeSpans {
                            scope,
                            spans,
                            schema_url,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn classify(span: &Span) -> Result<(Dest, Classified), String> {
        classify_span(&span.trace_id, &span.span_id, || Self::describe(span))
    }

    fn classify_raw(
        span: &RawItem<'_>,
        describe: impl FnOnce() -> String,
    ) -> Result<(Dest, Classified), String> {
        classify_span(span.trace_id, span.span_id, describe)
    }

    fn describe(span: &Span) -> String {
        format!(
            "span {}/{} `{}`",
            hex_id(&span.trace_id),
            hex_id(&span.span_id),
            span.name
        )
    }

    fn redact_matches(redactor: &Redactor, request: &Self::Request) -> bool {
        redactor.traces_match(request)
    }

    fn redact(redactor: &Redactor, request: &mut Self::Request) {
        redactor.traces(request);
    }

    fn redact_item(redactor: &Redactor, span: &mut Span) {
        redactor.span(span);
    }

    fn encode(encoding: Encoding, request: &Self::Request) -> Result<Vec<u8>, EncodeError> {
        encoding::encode_traces(encoding, request)
    }

    fn response(accepted: &Accepted) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: partial(accepted).map(|(rejected_spans, error_message)| {
                ExportTracePartialSuccess {
                    rejected_spans,
                    error_message,
                }
            }),
        }
    }
}

impl OtlpSignal for Logs {
    const SIGNAL: Signal = Signal::Logs;
    const NOUN: &'static str = "log record";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const GRPC_EXPORT_PATH: &'static str =
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const HTTP_PATH: &'static str = "/v1/logs";

    type Request = ExportLogsServiceRequest;
    type ResourceEntry = ResourceLogs;
    type ScopeEntry = ScopeLogs;
    type Item = LogRecord;
    type Response = ExportLogsServiceResponse;

    fn resource_entries(request: &Self::Request) -> &[ResourceLogs] {
        &request.resource_logs
    }

    fn resource_parts(entry: &ResourceLogs) -> (Option<&Resource>, &str, &[ScopeLogs]) {
        (
            entry.resource.as_ref(),
            &entry.schema_url,
            &entry.scope_logs,
        )
    }

    fn scope_parts(entry: &ScopeLogs) -> (Option<&InstrumentationScope>, &str, &[LogRecord]) {
        (entry.scope.as_ref(), &entry.schema_url, &entry.log_records)
    }

    fn assemble(entries: Vec<OwnedEntry<LogRecord>>) -> Self::Request {
        ExportLogsServiceRequest {
            resource_logs: entries
                .into_iter()
                .map(|(resource, schema_url, scopes)| ResourceLogs {
                    resource,
                    schema_url,
                    scope_logs: scopes
                        .into_iter()
                        .map(|(scope, schema_url, log_records)| ScopeLogs {
                            scope,
                            log_records,
                            schema_url,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn classify(log: &LogRecord) -> Result<(Dest, Classified), String> {
        Ok(classify_log(
            &log.trace_id,
            dlog_core::model::is_heartbeat_record(log),
        ))
    }

    fn classify_raw(
        log: &RawItem<'_>,
        _describe: impl FnOnce() -> String,
    ) -> Result<(Dest, Classified), String> {
        Ok(classify_log(log.trace_id, log.heartbeat))
    }

    fn describe(log: &LogRecord) -> String {
        let mut text = format!("log record at time_unix_nano {}", log.time_unix_nano);
        if !log.event_name.is_empty() {
            text.push_str(&format!(" (event `{}`)", log.event_name));
        }
        if !is_empty_id(&log.trace_id) {
            text.push_str(&format!(" in trace {}", hex_id(&log.trace_id)));
        }
        text
    }

    fn redact_matches(redactor: &Redactor, request: &Self::Request) -> bool {
        redactor.logs_match(request)
    }

    fn redact(redactor: &Redactor, request: &mut Self::Request) {
        redactor.logs(request);
    }

    fn redact_item(redactor: &Redactor, log: &mut LogRecord) {
        redactor.log(log);
    }

    fn encode(encoding: Encoding, request: &Self::Request) -> Result<Vec<u8>, EncodeError> {
        encoding::encode_logs(encoding, request)
    }

    fn response(accepted: &Accepted) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: partial(accepted).map(|(rejected_log_records, error_message)| {
                ExportLogsPartialSuccess {
                    rejected_log_records,
                    error_message,
                }
            }),
        }
    }
}

/// (rejected items, reason) when anything was rejected or there is a reason to give.
fn partial(accepted: &Accepted) -> Option<(i64, String)> {
    (accepted.rejected > 0 || !accepted.error_message.is_empty()).then(|| {
        (
            i64::try_from(accepted.rejected).unwrap_or(i64::MAX),
            accepted.error_message.clone(),
        )
    })
}
