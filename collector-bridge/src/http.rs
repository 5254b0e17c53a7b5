//! The OTLP/HTTP receiver: `POST /v1/traces` and `POST /v1/logs`, binary protobuf or JSON
//! bodies, optionally gzip-compressed, answered as the OTLP specification says:
//!
//! * 200 with an `Export*ServiceResponse` (partial success when items were rejected), in the
//!   request's format;
//! * 400 for a body that does not decode, 413 for one over `max_request_bytes`, 415 for an
//!   unsupported `Content-Type` or `Content-Encoding`;
//! * 503 with `Retry-After` when Kafka did not acknowledge in time, 500 when it refused.
//!
//! Error bodies are a `google.rpc.Status`, protobuf-encoded or JSON like the request.

use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ingest::{Accepted, Ingest, IngestError};
use crate::metrics::{SignalKind, Transport};
use crate::sink::Sink;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

struct HttpState<S> {
    ingest: Arc<Ingest<S>>,
    max_request_bytes: usize,
}

pub(crate) fn router<S: Sink>(ingest: Arc<Ingest<S>>, max_request_bytes: usize) -> axum::Router {
    let state = Arc::new(HttpState {
        ingest,
        max_request_bytes,
    });
    axum::Router::new()
        .route("/v1/traces", post(traces::<S>))
        .route("/v1/logs", post(logs::<S>))
        // A compressed body cannot be larger than what it inflates to, so the same limit
        // applies before and after decompression.
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(state)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => PROTOBUF,
            Format::Json => JSON,
        }
    }
}

/// A failed request: its HTTP status and a message for the `google.rpc.Status` body.
struct Failure {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// gRPC code for the `google.rpc.Status` body.
    fn grpc_code(&self) -> i32 {
        match self.status {
            StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument as i32,
            StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::ResourceExhausted as i32,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => tonic::Code::InvalidArgument as i32,
            StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable as i32,
            _ => tonic::Code::Internal as i32,
        }
    }

    fn into_response(self, format: Format) -> Response {
        let body = match format {
            Format::Protobuf => tonic_types::Status {
                code: self.grpc_code(),
                message: self.message,
                details: Vec::new(),
            }
            .encode_to_vec(),
            Format::Json => serde_json::to_vec(&serde_json::json!({
                "code": self.grpc_code(),
                "message": self.message,
            }))
            .unwrap_or_default(),
        };
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, format.content_type())],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The request's format from its `Content-Type` (parameters such as `charset` ignored).
fn format_of(headers: &HeaderMap) -> Result<Format, Failure> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = value.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case(PROTOBUF) {
        Ok(Format::Protobuf)
    } else if media.eq_ignore_ascii_case(JSON) {
        Ok(Format::Json)
    } else {
        Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Type `{value}`: OTLP/HTTP takes {PROTOBUF} or {JSON}"),
        ))
    }
}

/// The body, inflated when `Content-Encoding: gzip`, never beyond `limit` bytes.
fn inflate(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, Failure> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        return Ok(body);
    }
    if !encoding.eq_ignore_ascii_case("gzip") {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding `{encoding}`: use gzip or none"),
        ));
    }
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let mut decoder = flate2::read::GzDecoder::new(body.as_ref()).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}")))?;
    if out.len() > limit {
        return Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request inflates to more than max_request_bytes ({limit})"),
        ));
    }
    Ok(Bytes::from(out))
}

fn decode_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("body is not an OTLP/JSON {what}: {e}"),
        )
    })
}

fn encode<T: Message + Serialize + Default + PartialEq>(format: Format, response: &T) -> Response {
    let body = match format {
        Format::Protobuf => response.encode_to_vec(),
        // A full success is `{}`, not `{"partialSuccess":null}`, as proto3 JSON writes it.
        Format::Json if *response == T::default() => b"{}".to_vec(),
        // Serializing OTLP responses cannot fail.
        Format::Json => serde_json::to_vec(response).unwrap_or_default(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

fn failure<S>(ingest: &Ingest<S>, error: IngestError) -> Failure {
    match error {
        IngestError::Unavailable(reason) => Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: reason,
            retry_after: Some(ingest.retry_after.as_secs().max(1)),
        },
        IngestError::Failed(reason) => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, reason),
        IngestError::Invalid(reason) => Failure::new(StatusCode::BAD_REQUEST, reason),
    }
}

fn partial(accepted: &Accepted) -> Option<(i64, String)> {
    (accepted.rejected > 0 || !accepted.error_message.is_empty()).then(|| {
        (
            i64::try_from(accepted.rejected).unwrap_or(i64::MAX),
            accepted.error_message.clone(),
        )
    })
}

async fn traces<S: Sink>(
    State(state): State<Arc<HttpState<S>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let format = match format_of(&headers) {
        Ok(f) => f,
        Err(f) => {
            state.ingest.invalid(SignalKind::Traces, Transport::Http);
            return f.into_response(Format::Protobuf);
        }
    };
    let body = match inflate(&headers, body, state.max_request_bytes) {
        Ok(body) => body,
        Err(f) => {
            state.ingest.invalid(SignalKind::Traces, Transport::Http);
            return f.into_response(format);
        }
    };
    let result = match format {
        Format::Protobuf => state.ingest.traces_protobuf(&body, Transport::Http).await,
        Format::Json => {
            match decode_json::<ExportTraceServiceRequest>(&body, "ExportTraceServiceRequest") {
                Ok(request) => state.ingest.traces(&request, Transport::Http).await,
                Err(f) => {
                    state.ingest.invalid(SignalKind::Traces, Transport::Http);
                    return f.into_response(format);
                }
            }
        }
    };
    match result {
        Ok(accepted) => encode(
            format,
            &ExportTraceServiceResponse {
                partial_success: partial(&accepted).map(|(rejected_spans, error_message)| {
                    ExportTracePartialSuccess {
                        rejected_spans,
                        error_message,
                    }
                }),
            },
        ),
        Err(e) => failure(&state.ingest, e).into_response(format),
    }
}

async fn logs<S: Sink>(
    State(state): State<Arc<HttpState<S>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let format = match format_of(&headers) {
        Ok(f) => f,
        Err(f) => {
            state.ingest.invalid(SignalKind::Logs, Transport::Http);
            return f.into_response(Format::Protobuf);
        }
    };
    let body = match inflate(&headers, body, state.max_request_bytes) {
        Ok(body) => body,
        Err(f) => {
            state.ingest.invalid(SignalKind::Logs, Transport::Http);
            return f.into_response(format);
        }
    };
    let result = match format {
        Format::Protobuf => state.ingest.logs_protobuf(&body, Transport::Http).await,
        Format::Json => {
            match decode_json::<ExportLogsServiceRequest>(&body, "ExportLogsServiceRequest") {
                Ok(request) => state.ingest.logs(&request, Transport::Http).await,
                Err(f) => {
                    state.ingest.invalid(SignalKind::Logs, Transport::Http);
                    return f.into_response(format);
                }
            }
        }
    };
    match result {
        Ok(accepted) => encode(
            format,
            &ExportLogsServiceResponse {
                partial_success: partial(&accepted).map(|(rejected_log_records, error_message)| {
                    ExportLogsPartialSuccess {
                        rejected_log_records,
                        error_message,
                    }
                }),
            },
        ),
        Err(e) => failure(&state.ingest, e).into_response(format),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn content_types_with_parameters_are_recognised() {
        let h = headers(&[(header::CONTENT_TYPE, "application/json; charset=utf-8")]);
        assert_eq!(format_of(&h).ok(), Some(Format::Json));
        let h = headers(&[(header::CONTENT_TYPE, "application/x-protobuf")]);
        assert_eq!(format_of(&h).ok(), Some(Format::Protobuf));
        let f = format_of(&headers(&[(header::CONTENT_TYPE, "text/plain")]))
            .err()
            .unwrap();
        assert_eq!(f.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(format_of(&HeaderMap::new()).is_err());
    }

    #[test]
    fn gzip_is_inflated_within_the_limit() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&[7u8; 10_000]).unwrap();
        let body = Bytes::from(gz.finish().unwrap());
        let h = headers(&[(header::CONTENT_ENCODING, "gzip")]);
        assert_eq!(
            inflate(&h, body.clone(), 10_000).ok().unwrap().len(),
            10_000
        );
        let f = inflate(&h, body, 9_999).err().unwrap();
        assert_eq!(f.status, StatusCode::PAYLOAD_TOO_LARGE);
        let f = inflate(&h, Bytes::from_static(b"not gzip"), 100)
            .err()
            .unwrap();
        assert_eq!(f.status, StatusCode::BAD_REQUEST);
        let br = headers(&[(header::CONTENT_ENCODING, "br")]);
        let f = inflate(&br, Bytes::new(), 100).err().unwrap();
        assert_eq!(f.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
