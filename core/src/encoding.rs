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

/// The OTLP signal a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `ExportTraceServiceRequest`.
    Traces,
    /// `ExportLogsServiceRequest`.
    Logs,
}

impl Signal {
    /// The value written to the signal header.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
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
        Encoding::OtlpJson => serde_json::to_vec(request)?,
    })
}

/// Serializes a logs export request.
pub fn encode_logs(
    encoding: Encoding,
    request: &ExportLogsServiceRequest,
) -> Result<Vec<u8>, EncodeError> {
    Ok(match encoding {
        Encoding::OtlpProto => request.encode_to_vec(),
        Encoding::OtlpJson => serde_json::to_vec(request)?,
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
        Encoding::OtlpJson => serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
            signal: "trace",
            source,
        }),
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
        Encoding::OtlpJson => serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
            signal: "logs",
            source,
        }),
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

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        assert!(decode_traces(Encoding::OtlpProto, b"\xff\xff\xff").is_err());
        assert!(decode_logs(Encoding::OtlpJson, b"{not json").is_err());
    }
}
