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

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use dlog_core::encoding::Signal;
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::body::{self, Collected, InflateError, BLOCKING_THRESHOLD};
use crate::ingest::{Ingest, IngestError, Ticket};
use crate::json_size::json_decoded_size;
use crate::metrics::Transport;
use crate::signal::{Logs, OtlpSignal, Traces};
use crate::sink::Sink;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

struct HttpState<S> {
    ingest: Arc<Ingest<S>>,
    max_request_bytes: usize,
    /// How long a body may take to arrive, from the request's arrival.
    body_timeout: Duration,
}

pub(crate) fn router<S: Sink>(
    ingest: Arc<Ingest<S>>,
    max_request_bytes: usize,
    body_timeout: Duration,
) -> axum::Router {
    let state = Arc::new(HttpState {
        ingest,
        max_request_bytes,
        body_timeout,
    });
    // The handlers read the body themselves, reserving memory for it as it arrives and
    // enforcing `max_request_bytes` before and after decompression.
    axum::Router::new()
        .route(Traces::HTTP_PATH, post(export::<S, Traces>))
        .route(Logs::HTTP_PATH, post(export::<S, Logs>))
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

    /// A body that did not arrive in time.
    fn body_timeout(timeout: Duration) -> Self {
        Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within request_body_timeout_ms ({} ms)",
                timeout.as_millis()
            ),
        )
    }

    /// gRPC code for the `google.rpc.Status` body.
    fn grpc_code(&self) -> i32 {
        match self.status {
            StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument as i32,
            StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::ResourceExhausted as i32,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => tonic::Code::InvalidArgument as i32,
            StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable as i32,
            StatusCode::REQUEST_TIMEOUT => tonic::Code::DeadlineExceeded as i32,
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
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
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

/// Whether the body is gzip-compressed (`Content-Encoding: gzip`); other codings are 415.
fn gzip_encoded(headers: &HeaderMap) -> Result<bool, Failure> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        Ok(false)
    } else if encoding.eq_ignore_ascii_case("gzip") {
        Ok(true)
    } else {
        Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding `{encoding}`: use gzip or none"),
        ))
    }
}

fn too_large(what: &str, limit: usize) -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request {what} more than max_request_bytes ({limit})"),
    )
}

/// Reads the body, never beyond `limit` bytes nor past `deadline`, reserving each chunk on
/// `ticket` as it arrives. A `Content-Length` over the limit is refused at once, but a
/// declared length is never reserved ahead of the bytes: a sender that declares 16 MiB and
/// sends nothing holds nothing.
async fn read_body(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    ticket: &mut Ticket,
    deadline: Instant,
) -> Result<Bytes, Failure> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|d| d > limit as u64) {
        return Err(too_large("body has", limit));
    }
    let expected = declared.and_then(|d| usize::try_from(d).ok());
    let mut collected = Collected::default();
    let read = async {
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.map_err(|e| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if collected.len() + data.len() > limit {
                return Err(too_large("body has", limit));
            }
            collected.push(data, expected, ticket).await.map_err(busy)?;
        }
        Ok(())
    };
    let started = Instant::now();
    let result = tokio::time::timeout_at(deadline, read).await;
    match result {
        Ok(Ok(())) => Ok(collected.finish()),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(Failure::body_timeout(
            deadline.saturating_duration_since(started),
        )),
    }
}

/// Inflates a gzip body under the request's reservation (see [`body::inflate`]).
async fn inflate(body: Bytes, limit: usize, ticket: &mut Ticket) -> Result<Bytes, Failure> {
    body::inflate(body, limit, ticket)
        .await
        .map_err(|e| match e {
            InflateError::Busy(e) => busy(e),
            InflateError::TooLarge => too_large("inflates to", limit),
            InflateError::Invalid(m) => Failure::new(StatusCode::BAD_REQUEST, m),
            InflateError::Internal(m) => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, m),
        })
}

fn decode_json_now<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("body is not an OTLP/JSON {what}: {e}"),
        )
    })
}

/// [`decode_json_now`] with the message of its failure (for the fuzz targets).
pub(crate) fn decode_json_message<T: DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, String> {
    decode_json_now(body, what).map_err(|f| f.message)
}

/// Decodes an OTLP/JSON body, on the blocking pool when it is large.
async fn decode_json<T: DeserializeOwned + Send + 'static>(
    body: Bytes,
    what: &'static str,
) -> Result<T, Failure> {
    if body.len() <= BLOCKING_THRESHOLD {
        return decode_json_now(&body, what);
    }
    tokio::task::spawn_blocking(move || decode_json_now(&body, what))
        .await
        .map_err(|e| {
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("decoding the body failed: {e}"),
            )
        })?
}

/// A 503 for a request that could not get its share of the bridge's limits, or a 413 for one
/// that needs more than all of it.
fn busy(error: IngestError) -> Failure {
    match error {
        IngestError::TooLarge(reason) => Failure::new(StatusCode::PAYLOAD_TOO_LARGE, reason),
        IngestError::Unavailable(r) | IngestError::Failed(r) | IngestError::Invalid(r) => Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: r,
            retry_after: None,
        },
    }
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
        IngestError::TooLarge(reason) => Failure::new(StatusCode::PAYLOAD_TOO_LARGE, reason),
    }
}

/// Counts a failure answered before the request reached the sink, and gives a 503 its retry
/// hint.
fn refuse<S: Sink>(ingest: &Ingest<S>, signal: Signal, mut failure: Failure) -> Failure {
    match failure.status {
        StatusCode::SERVICE_UNAVAILABLE => {
            failure.retry_after = Some(ingest.retry_after.as_secs().max(1));
            ingest.refused(
                signal,
                Transport::Http,
                &IngestError::Unavailable(failure.message.clone()),
            );
        }
        StatusCode::INTERNAL_SERVER_ERROR => ingest.refused(
            signal,
            Transport::Http,
            &IngestError::Failed(failure.message.clone()),
        ),
        _ => ingest.invalid(signal, Transport::Http),
    }
    failure
}

/// Everything before routing: the format, a ticket (the request counts as in flight from
/// here), the body read and inflated under the ticket's reservation. On failure, the
/// response to send.
async fn prepare<S: Sink>(
    state: &HttpState<S>,
    headers: &HeaderMap,
    body: Body,
    signal: Signal,
) -> Result<(Format, Bytes, Ticket), Response> {
    let ingest = &state.ingest;
    let format = format_of(headers)
        .map_err(|f| refuse(ingest, signal, f).into_response(Format::Protobuf))?;
    let fail = |f: Failure| refuse(ingest, signal, f).into_response(format);
    let gzip = gzip_encoded(headers).map_err(fail)?;
    let deadline = Instant::now() + state.body_timeout;
    let mut ticket = match ingest.admit(signal, Transport::Http) {
        Ok(ticket) => ticket,
        // Counted by `admit`.
        Err(e) => return Err(failure(ingest, e).into_response(format)),
    };
    let body = read_body(
        headers,
        body,
        state.max_request_bytes,
        &mut ticket,
        deadline,
    )
    .await
    .map_err(fail)?;
    let body = if gzip {
        inflate(body, state.max_request_bytes, &mut ticket)
            .await
            .map_err(fail)?
    } else {
        body
    };
    Ok((format, body, ticket))
}

/// Decodes an OTLP/JSON body under a reservation for the decoded request next to it.
async fn json_request<S: Sink, T: DeserializeOwned + Send + 'static>(
    state: &HttpState<S>,
    body: Bytes,
    ticket: &mut Ticket,
    signal: Signal,
    format: Format,
    what: &'static str,
) -> Result<T, Response> {
    let fail = |f: Failure| refuse(&state.ingest, signal, f).into_response(format);
    // The body and its decoded form, bounded before decoding (a body nested too deep to
    // bound is refused).
    let decoded =
        json_decoded_size(&body).map_err(|e| fail(Failure::new(StatusCode::BAD_REQUEST, e.0)))?;
    ticket
        .reserve(body.len().saturating_add(decoded))
        .await
        .map_err(|e| fail(busy(e)))?;
    decode_json::<T>(body, what).await.map_err(fail)
}

async fn export<S: Sink, G: OtlpSignal>(
    State(state): State<Arc<HttpState<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let signal = G::SIGNAL;
    let (format, body, mut ticket) = match prepare(&state, &headers, body, signal).await {
        Ok(prepared) => prepared,
        Err(response) => return response,
    };
    let result = match format {
        Format::Protobuf => {
            state
                .ingest
                .protobuf::<G>(body, ticket, Transport::Http)
                .await
        }
        Format::Json => {
            let request = match json_request::<S, G::Request>(
                &state,
                body,
                &mut ticket,
                signal,
                format,
                signal.request_name(),
            )
            .await
            {
                Ok(request) => request,
                Err(response) => return response,
            };
            state
                .ingest
                .decoded::<G>(request, ticket, Transport::Http)
                .await
        }
    };
    match result {
        Ok(accepted) => encode(format, &G::response(&accepted)),
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

    fn admission(bytes: usize) -> Arc<crate::ingest::Admission> {
        crate::ingest::Admission::new(
            4,
            bytes,
            std::time::Duration::from_millis(20),
            Default::default(),
            Default::default(),
            prometheus_client::metrics::histogram::Histogram::new([1.0]),
        )
    }

    fn ticket(bytes: usize) -> Ticket {
        admission(bytes).admit().unwrap()
    }

    /// A ticket of an admission whose budget of `bytes` is all held by another request but
    /// `free` bytes.
    async fn busy_ticket(bytes: usize, free: usize) -> (Ticket, Ticket) {
        let admission = admission(bytes);
        let mut other = admission.admit().unwrap();
        other.reserve(bytes - free).await.ok().unwrap();
        (admission.admit().unwrap(), other)
    }

    fn gzip(data: &[u8]) -> Bytes {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).unwrap();
        Bytes::from(gz.finish().unwrap())
    }

    #[tokio::test]
    async fn gzip_is_inflated_within_the_limit() {
        let body = gzip(&[7u8; 10_000]);
        let mut t = ticket(1 << 20);
        assert_eq!(
            inflate(body.clone(), 10_000, &mut t)
                .await
                .ok()
                .unwrap()
                .len(),
            10_000
        );
        // What the ticket holds afterwards is the inflated body, nothing more.
        assert_eq!(t.held(), 10_000);
        let f = inflate(body, 9_999, &mut ticket(1 << 20))
            .await
            .err()
            .unwrap();
        assert_eq!(f.status, StatusCode::PAYLOAD_TOO_LARGE);
        let f = inflate(Bytes::from_static(b"not gzip"), 100, &mut ticket(1 << 20))
            .await
            .err()
            .unwrap();
        assert_eq!(f.status, StatusCode::BAD_REQUEST);
        let br = headers(&[(header::CONTENT_ENCODING, "br")]);
        let f = gzip_encoded(&br).err().unwrap();
        assert_eq!(f.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            gzip_encoded(&headers(&[(header::CONTENT_ENCODING, "gzip")])).ok(),
            Some(true)
        );
        assert_eq!(gzip_encoded(&HeaderMap::new()).ok(), Some(false));
    }

    #[tokio::test]
    async fn regression_unbounded_memory_inflate_reserves_before_it_inflates() {
        // 2 MiB of zeros compress to a few KiB; 1 MiB of the budget is free: the inflate must
        // be refused for the budget (503), not run to 2 MiB first.
        let body = gzip(&vec![0u8; 2 << 20]);
        let (mut t, _other) = busy_ticket(8 << 20, 1 << 20).await;
        let f = inflate(body.clone(), 4 << 20, &mut t).await.err().unwrap();
        assert_eq!(f.status, StatusCode::SERVICE_UNAVAILABLE, "{}", f.message);
        assert!(t.held() <= 1 << 20);
        // A size trailer that is not the first member's (two members: only the first is
        // read) only makes the reservation grow in steps.
        let two_members = [body.to_vec(), gzip(b"sixteen bytes!!!").to_vec()].concat();
        let mut t = ticket(8 << 20);
        let out = inflate(Bytes::from(two_members), 4 << 20, &mut t)
            .await
            .ok()
            .unwrap();
        assert_eq!((out.len(), t.held()), (2 << 20, 2 << 20));
        let mut t = ticket(8 << 20);
        assert_eq!(
            inflate(body, 4 << 20, &mut t).await.ok().unwrap().len(),
            2 << 20
        );
        assert_eq!(t.held(), 2 << 20);
    }

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    #[tokio::test]
    async fn regression_slow_clients_body_is_reserved_as_it_arrives_not_from_content_length() {
        let h = headers(&[(header::CONTENT_LENGTH, "5000")]);
        // Over max_request_bytes: refused without reading.
        let f = read_body(
            &h,
            Body::from(vec![1u8; 5000]),
            4000,
            &mut ticket(1 << 20),
            later(),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(f.status, StatusCode::PAYLOAD_TOO_LARGE);
        // Over the free budget: 503 when the bytes arrive, and nothing held.
        let (mut t, _other) = busy_ticket(1 << 20, 4000).await;
        let f = read_body(&h, Body::from(vec![1u8; 5000]), 1 << 20, &mut t, later())
            .await
            .err()
            .unwrap();
        assert_eq!(f.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(t.held(), 0);
        let mut t = ticket(1 << 20);
        let body = read_body(&h, Body::from(vec![1u8; 5000]), 1 << 20, &mut t, later())
            .await
            .ok()
            .unwrap();
        assert_eq!((body.len(), t.held()), (5000, 5000));
        // A declared 16 MiB holds only what arrived.
        let declared = headers(&[(header::CONTENT_LENGTH, "16777216")]);
        let mut t = ticket(32 << 20);
        let body = read_body(
            &declared,
            Body::from(vec![1u8; 300]),
            16 << 20,
            &mut t,
            later(),
        )
        .await
        .ok()
        .unwrap();
        assert_eq!((body.len(), t.held()), (300, 300));
        // A body that does not arrive in time is a 408 that closes the connection.
        let hanging =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let mut t = ticket(32 << 20);
        let deadline = Instant::now() + std::time::Duration::from_millis(50);
        let f = read_body(&declared, hanging, 16 << 20, &mut t, deadline)
            .await
            .err()
            .unwrap();
        assert_eq!(f.status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(t.held(), 0);
        let response = f.into_response(Format::Protobuf);
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }
}
