//! Kafka record values and keys.
//!
//! A record value is an OTLP export request holding one trace's spans, or one key's logs,
//! serialized as protobuf (`otlp_proto`, the format the OpenTelemetry Collector's kafka
//! exporter writes) or as OTLP/JSON (`otlp_json`). The [`ENCODING_HEADER`](crate::names::ENCODING_HEADER)
//! header names the encoding.

use std::fmt;
use std::str::FromStr;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::{Deserialize, Serialize};

/// How a record value is serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Protobuf-serialized OTLP export request (the default).
    #[default]
    OtlpProto,
    /// OTLP/JSON export request.
    OtlpJson,
}

impl Encoding {
    /// The value written to the encoding header.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::OtlpProto => "otlp_proto",
            Encoding::OtlpJson => "otlp_json",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Encoding {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "otlp_proto" => Ok(Encoding::OtlpProto),
            "otlp_json" => Ok(Encoding::OtlpJson),
            other => Err(DecodeError::UnknownEncoding(other.to_string())),
        }
    }
}

/// The OTLP signal a record carries: the one name for it in headers, metric labels, topics
/// and requests, shared by every stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `ExportTraceServiceRequest`.
    Traces = 0,
    /// `ExportLogsServiceRequest` (log records, `service.call` events, registrations and
    /// heartbeats).
    Logs = 1,
}

impl Signal {
    /// Every signal, in [`Signal::index`] order.
    pub const ALL: [Signal; 2] = [Signal::Traces, Signal::Logs];

    /// The value written to the signal header, and the `signal` label of metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
        }
    }

    /// A dense index (0 for traces, 1 for logs), for per-signal arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The OTLP export request message that carries the signal.
    pub fn request_name(self) -> &'static str {
        match self {
            Signal::Traces => "ExportTraceServiceRequest",
            Signal::Logs => "ExportLogsServiceRequest",
        }
    }

    /// The signal a [`SIGNAL_HEADER`](crate::names::SIGNAL_HEADER) value names.
    pub fn from_header(value: &[u8]) -> Option<Signal> {
        match value {
            b"traces" => Some(Signal::Traces),
            b"logs" => Some(Signal::Logs),
            _ => None,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which signal each topic carries: spans on the trace topic, logs on the service-logs and
/// heartbeat topics. A record from any other topic says its signal in the
/// [`SIGNAL_HEADER`](crate::names::SIGNAL_HEADER) header.
#[derive(Debug, Clone, Copy)]
pub struct TopicSignals<'a> {
    /// The topic of spans (`trace_logs`).
    pub trace_logs: &'a str,
    /// The topic of log records (`service_logs`).
    pub service_logs: &'a str,
    /// The topic of registrations and heartbeats (`heartbeat_logs`).
    pub heartbeat_logs: &'a str,
}

impl TopicSignals<'_> {
    /// The signal of a record: by its topic, else by its signal header; `None` when neither
    /// says.
    pub fn signal_of(&self, record: &crate::source::RawRecord) -> Option<Signal> {
        if record.topic == self.trace_logs {
            Some(Signal::Traces)
        } else if record.topic == self.service_logs || record.topic == self.heartbeat_logs {
            Some(Signal::Logs)
        } else {
            record
                .header(crate::names::SIGNAL_HEADER)
                .and_then(Signal::from_header)
        }
    }
}

/// A record value could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// OTLP/JSON serialization failed.
    #[error("cannot serialize OTLP/JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A record value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The encoding header names an encoding this version does not know.
    #[error("unknown encoding `{0}` in header `otlp.encoding` (expected otlp_proto or otlp_json)")]
    UnknownEncoding(String),
    /// The value is not a valid protobuf export request.
    #[error("value is not a valid protobuf OTLP {signal} export request: {source}")]
    Proto {
        /// Which request was expected.
        signal: &'static str,
        /// The protobuf error.
        source: prost::DecodeError,
    },
    /// The value is not a valid OTLP/JSON export request.
    #[error("value is not a valid OTLP/JSON {signal} export request: {source}")]
    Json {
        /// Which request was expected.
        signal: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Serializes a trace export request.
pub fn encode_traces(
    encoding: Encoding,
    request: &ExportTraceServiceRequest,
) -> Result<Vec<u8>, EncodeError> {
    Ok(match encoding {
        Encoding::OtlpProto => request.encode_to_vec(),
        Encoding::OtlpJson => non_finite::to_json(request, non_finite::trace_values)?,
    })
}

/// Serializes a logs export request.
pub fn encode_logs(
    encoding: Encoding,
    request: &ExportLogsServiceRequest,
) -> Result<Vec<u8>, EncodeError> {
    Ok(match encoding {
        Encoding::OtlpProto => request.encode_to_vec(),
        Encoding::OtlpJson => non_finite::to_json(request, non_finite::log_values)?,
    })
}

/// Deserializes a trace export request.
pub fn decode_traces(
    encoding: Encoding,
    bytes: &[u8],
) -> Result<ExportTraceServiceRequest, DecodeError> {
    match encoding {
        Encoding::OtlpProto => {
            ExportTraceServiceRequest::decode(bytes).map_err(|source| DecodeError::Proto {
                signal: "trace",
                source,
            })
        }
        Encoding::OtlpJson => {
            non_finite::from_json(bytes, non_finite::trace_values).map_err(|source| {
                DecodeError::Json {
                    signal: "trace",
                    source,
                }
            })
        }
    }
}

/// Deserializes a logs export request.
pub fn decode_logs(
    encoding: Encoding,
    bytes: &[u8],
) -> Result<ExportLogsServiceRequest, DecodeError> {
    match encoding {
        Encoding::OtlpProto => {
            ExportLogsServiceRequest::decode(bytes).map_err(|source| DecodeError::Proto {
                signal: "logs",
                source,
            })
        }
        Encoding::OtlpJson => {
            non_finite::from_json(bytes, non_finite::log_values).map_err(|source| {
                DecodeError::Json {
                    signal: "logs",
                    source,
                }
            })
        }
    }
}

/// Lowercase hex of a trace or span id, the form used for record keys and document ids.
pub fn hex_id(id: &[u8]) -> String {
    hex::encode(id)
}

/// True when an id is absent or all zero (OTLP's "no id").
pub fn is_empty_id(id: &[u8]) -> bool {
    id.iter().all(|b| *b == 0)
}

/// NaN and ±Infinity doubles in OTLP/JSON.
///
/// proto3 JSON writes them as the strings `"NaN"`, `"Infinity"` and `"-Infinity"`, but
/// opentelemetry-proto's serde support writes `null` for them (serde_json's rule for
/// non-finite floats, which then decodes as an empty value) and refuses the strings when
/// decoding. Finite values take the plain serde path; only a request that holds a non-finite
/// double, or JSON that serde refuses, goes through a `serde_json::Value` rewrite here.
mod non_finite {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    const NAN: &str = "NaN";
    const INFINITY: &str = "Infinity";
    const NEG_INFINITY: &str = "-Infinity";

    /// Calls `f` on every `AnyValue` of a request, nested ones included.
    pub(super) type Walk<T> = fn(&mut T, &mut dyn FnMut(&mut AnyValue));

    fn walk_any(value: &mut AnyValue, f: &mut dyn FnMut(&mut AnyValue)) {
        f(value);
        match &mut value.value {
            Some(Value::ArrayValue(array)) => {
                for v in &mut array.values {
                    walk_any(v, f);
                }
            }
            Some(Value::KvlistValue(list)) => walk_attributes(&mut list.values, f),
            _ => {}
        }
    }

    fn walk_attributes(attributes: &mut [KeyValue], f: &mut dyn FnMut(&mut AnyValue)) {
        for kv in attributes {
            if let Some(v) = &mut kv.value {
                walk_any(v, f);
            }
        }
    }

    pub(super) fn trace_values(
        request: &mut ExportTraceServiceRequest,
        f: &mut dyn FnMut(&mut AnyValue),
    ) {
        for rs in &mut request.resource_spans {
            if let Some(resource) = &mut rs.resource {
                walk_attributes(&mut resource.attributes, f);
            }
            for ss in &mut rs.scope_spans {
                if let Some(scope) = &mut ss.scope {
                    walk_attributes(&mut scope.attributes, f);
                }
                for span in &mut ss.spans {
                    walk_attributes(&mut span.attributes, f);
                    for event in &mut span.events {
                        walk_attributes(&mut event.attributes, f);
                    }
                    for link in &mut span.links {
                        walk_attributes(&mut link.attributes, f);
                    }
                }
            }
        }
    }

    pub(super) fn log_values(
        request: &mut ExportLogsServiceRequest,
        f: &mut dyn FnMut(&mut AnyValue),
    ) {
        for rl in &mut request.resource_logs {
            if let Some(resource) = &mut rl.resource {
                walk_attributes(&mut resource.attributes, f);
            }
            for sl in &mut rl.scope_logs {
                if let Some(scope) = &mut sl.scope {
                    walk_attributes(&mut scope.attributes, f);
                }
                for log in &mut sl.log_records {
                    if let Some(body) = &mut log.body {
                        walk_any(body, f);
                    }
                    walk_attributes(&mut log.attributes, f);
                }
            }
        }
    }

    /// Stand-in strings for the three non-finite values, chosen so that no string value
    /// already in the data equals one of them.
    struct Placeholders {
        prefix: String,
    }

    impl Placeholders {
        fn avoiding<'a>(strings: impl Iterator<Item = &'a str> + Clone) -> Self {
            let mut salt = 0u64;
            loop {
                let prefix = format!("\u{0}dlog-non-finite-{salt}:");
                if !strings.clone().any(|s| s.starts_with(&prefix)) {
                    return Placeholders { prefix };
                }
                salt += 1;
            }
        }

        fn for_value(&self, name: &str) -> String {
            format!("{}{name}", self.prefix)
        }

        /// The proto3 JSON name of the value a placeholder stands for.
        fn name_of<'a>(&self, placeholder: &'a str) -> Option<&'a str> {
            placeholder
                .strip_prefix(self.prefix.as_str())
                .filter(|name| [NAN, INFINITY, NEG_INFINITY].contains(name))
        }
    }

    fn json_name(d: f64) -> Option<&'static str> {
        if d.is_nan() {
            Some(NAN)
        } else if d.is_infinite() {
            Some(if d > 0.0 { INFINITY } else { NEG_INFINITY })
        } else {
            None
        }
    }

    pub(super) fn to_json<T: Serialize + Clone>(
        request: &T,
        walk: Walk<T>,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let mut copy = request.clone();
        let mut has_non_finite = false;
        let mut strings = Vec::new();
        walk(&mut copy, &mut |v| match &v.value {
            Some(Value::DoubleValue(d)) if !d.is_finite() => has_non_finite = true,
            Some(Value::StringValue(s)) => strings.push(s.clone()),
            _ => {}
        });
        if !has_non_finite {
            return serde_json::to_vec(request);
        }
        let placeholders = Placeholders::avoiding(strings.iter().map(String::as_str));
        walk(&mut copy, &mut |v| {
            if let Some(Value::DoubleValue(d)) = v.value {
                if let Some(name) = json_name(d) {
                    v.value = Some(Value::StringValue(placeholders.for_value(name)));
                }
            }
        });
        let mut json = serde_json::to_value(&copy)?;
        rewrite(&mut json, &mut |object| {
            let name = match object.get("stringValue") {
                Some(serde_json::Value::String(s)) => placeholders.name_of(s),
                _ => None,
            };
            if let Some(name) = name {
                let name = name.to_string();
                object.clear();
                object.insert("doubleValue".into(), serde_json::Value::String(name));
            }
        });
        serde_json::to_vec(&json)
    }

    pub(super) fn from_json<T: DeserializeOwned>(
        bytes: &[u8],
        walk: Walk<T>,
    ) -> Result<T, serde_json::Error> {
        let plain_error = match serde_json::from_slice(bytes) {
            Ok(request) => return Ok(request),
            Err(e) => e,
        };
        let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            return Err(plain_error);
        };
        let mut strings = Vec::new();
        collect_strings(&json, &mut strings);
        let placeholders = Placeholders::avoiding(strings.iter().copied());
        let mut rewrote = false;
        rewrite(&mut json, &mut |object| {
            let Some(serde_json::Value::String(text)) = object.get("doubleValue") else {
                return;
            };
            let text = text.clone();
            let replacement = match text.as_str() {
                NAN | INFINITY | NEG_INFINITY => {
                    let placeholder = placeholders.for_value(&text);
                    object.remove("doubleValue");
                    ("stringValue", serde_json::Value::String(placeholder))
                }
                // proto3 JSON also allows a finite number written as a string.
                other => match other
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    Some(number) => ("doubleValue", serde_json::Value::Number(number)),
                    None => return,
                },
            };
            object.insert(replacement.0.into(), replacement.1);
            rewrote = true;
        });
        if !rewrote {
            return Err(plain_error);
        }
        let mut request: T = serde_json::from_value(json)?;
        walk(&mut request, &mut |v| {
            let d = match &v.value {
                Some(Value::StringValue(s)) => match placeholders.name_of(s) {
                    Some(NAN) => f64::NAN,
                    Some(INFINITY) => f64::INFINITY,
                    Some(NEG_INFINITY) => f64::NEG_INFINITY,
                    _ => return,
                },
                _ => return,
            };
            v.value = Some(Value::DoubleValue(d));
        });
        Ok(request)
    }

    fn collect_strings<'a>(json: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match json {
            serde_json::Value::String(s) => out.push(s),
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
            serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
            _ => {}
        }
    }

    /// Calls `f` on every object in the tree, parents before children. The tree's depth is
    /// bounded by serde_json's recursion limit when it was parsed, and by prost's when the
    /// request was decoded from protobuf.
    fn rewrite(
        json: &mut serde_json::Value,
        f: &mut dyn FnMut(&mut serde_json::Map<String, serde_json::Value>),
    ) {
        match json {
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, f)),
            serde_json::Value::Object(map) => {
                f(map);
                map.values_mut().for_each(|v| rewrite(v, f));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn one_span() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x01; 8],
                        name: "GET /".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn topics_decide_the_signal_and_other_topics_are_read_by_their_header() {
        let topics = TopicSignals {
            trace_logs: "t",
            service_logs: "s",
            heartbeat_logs: "h",
        };
        let record = |topic: &str, header: Option<&str>| crate::source::RawRecord {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: Vec::new(),
            headers: header
                .map(|v| {
                    vec![(
                        crate::names::SIGNAL_HEADER.to_string(),
                        v.as_bytes().to_vec(),
                    )]
                })
                .unwrap_or_default(),
            timestamp_ms: None,
        };
        // The topic wins over a header saying otherwise.
        assert_eq!(
            topics.signal_of(&record("t", Some("logs"))),
            Some(Signal::Traces)
        );
        assert_eq!(topics.signal_of(&record("s", None)), Some(Signal::Logs));
        assert_eq!(topics.signal_of(&record("h", None)), Some(Signal::Logs));
        assert_eq!(
            topics.signal_of(&record("x", Some("traces"))),
            Some(Signal::Traces)
        );
        assert_eq!(
            topics.signal_of(&record("x", Some("logs"))),
            Some(Signal::Logs)
        );
        assert_eq!(topics.signal_of(&record("x", Some("metrics"))), None);
        assert_eq!(topics.signal_of(&record("x", None)), None);
        for signal in Signal::ALL {
            assert_eq!(
                Signal::from_header(signal.as_str().as_bytes()),
                Some(signal)
            );
            assert_eq!(Signal::ALL[signal.index()], signal);
        }
    }

    #[test]
    fn both_encodings_round_trip() {
        for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
            let bytes = encode_traces(encoding, &one_span()).unwrap();
            assert_eq!(decode_traces(encoding, &bytes).unwrap(), one_span());
        }
    }

    #[test]
    fn json_ids_are_hex_as_otlp_json_requires() {
        let json =
            String::from_utf8(encode_traces(Encoding::OtlpJson, &one_span()).unwrap()).unwrap();
        assert!(
            json.contains("\"traceId\":\"abababababababababababababababab\""),
            "{json}"
        );
    }

    #[test]
    fn unknown_encoding_names_the_header() {
        let err = "avro".parse::<Encoding>().unwrap_err().to_string();
        assert!(
            err.contains("avro") && err.contains("otlp.encoding"),
            "{err}"
        );
    }

    fn span_with_doubles(values: &[f64]) -> ExportTraceServiceRequest {
        use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
        let mut request = one_span();
        let span = &mut request.resource_spans[0].scope_spans[0].spans[0];
        for (i, d) in values.iter().enumerate() {
            span.attributes.push(KeyValue {
                key: format!("d{i}"),
                value: Some(AnyValue {
                    value: Some(Value::DoubleValue(*d)),
                }),
                ..Default::default()
            });
        }
        span.attributes.push(KeyValue {
            key: "nested".into(),
            value: Some(AnyValue {
                value: Some(Value::ArrayValue(
                    opentelemetry_proto::tonic::common::v1::ArrayValue {
                        values: vec![AnyValue {
                            value: Some(Value::DoubleValue(f64::NEG_INFINITY)),
                        }],
                    },
                )),
            }),
            ..Default::default()
        });
        request
    }

    fn doubles(request: &ExportTraceServiceRequest) -> Vec<String> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        span.attributes
            .iter()
            .map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::DoubleValue(d)) => format!("{}={d}", kv.key),
                    Some(Value::ArrayValue(a)) => format!("{}={:?}", kv.key, a.values),
                    other => format!("{}={other:?}", kv.key),
                },
            )
            .collect()
    }

    #[test]
    fn regression_otlp_json_nan_and_infinity_are_proto3_strings_and_round_trip() {
        let request = span_with_doubles(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.5]);
        let bytes = encode_traces(Encoding::OtlpJson, &request).unwrap();
        let json = String::from_utf8(bytes.clone()).unwrap();
        for expected in [
            r#"{"doubleValue":"NaN"}"#,
            r#"{"doubleValue":"Infinity"}"#,
            r#"{"doubleValue":"-Infinity"}"#,
            r#"{"doubleValue":1.5}"#,
        ] {
            assert!(json.contains(expected), "{expected} missing in {json}");
        }
        assert!(!json.contains("\"doubleValue\":null"), "{json}");
        let back = decode_traces(Encoding::OtlpJson, &bytes).unwrap();
        assert_eq!(doubles(&back), doubles(&request));
        assert_eq!(
            doubles(&back),
            vec![
                "d0=NaN",
                "d1=inf",
                "d2=-inf",
                "d3=1.5",
                "nested=[AnyValue { value: Some(DoubleValue(-inf)) }]"
            ]
        );
    }

    #[test]
    fn otlp_json_from_other_producers_accepts_non_finite_and_string_doubles() {
        let json = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{
            "body":{"doubleValue":"-Infinity"},
            "attributes":[{"key":"a","value":{"doubleValue":"2.5"}},
                          {"key":"b","value":{"stringValue":"NaN"}}]}]}]}]}"#;
        let request = decode_logs(Encoding::OtlpJson, json.as_bytes()).unwrap();
        let log = &request.resource_logs[0].scope_logs[0].log_records[0];
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        assert_eq!(
            log.body.as_ref().unwrap().value,
            Some(Value::DoubleValue(f64::NEG_INFINITY))
        );
        assert_eq!(
            log.attributes[0].value.as_ref().unwrap().value,
            Some(Value::DoubleValue(2.5))
        );
        assert_eq!(
            log.attributes[1].value.as_ref().unwrap().value,
            Some(Value::StringValue("NaN".into()))
        );
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        assert!(decode_traces(Encoding::OtlpProto, b"\xff\xff\xff").is_err());
        assert!(decode_logs(Encoding::OtlpJson, b"{not json").is_err());
    }
}
