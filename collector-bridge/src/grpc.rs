//! The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export` and
//! `opentelemetry.proto.collector.logs.v1.LogsService/Export`.
//!
//! The services are tonic services like the ones `opentelemetry-proto` generates
//! (`*_service_server`), with one difference: their codec hands over the request body as
//! bytes instead of decoding it into structs, so the bridge can read it in place
//! ([`crate::wire`]), which more than halves its CPU per span. The response messages are
//! `opentelemetry-proto`'s. A body that is not a valid export request is answered
//! `INVALID_ARGUMENT` (tonic's own decoder would say `INTERNAL`, which OTLP reserves for
//! server faults).

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::{Body, BoxFuture, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::ingest::{Accepted, Ingest, IngestError};
use crate::metrics::Transport;
use crate::sink::Sink;

/// What differs between the trace and the logs service.
pub(crate) trait Signal: Send + Sync + 'static {
    const SERVICE: &'static str;
    const EXPORT_PATH: &'static str;
    type Response: Message + Default + Send + 'static;

    fn export<S: Sink>(
        ingest: &Ingest<S>,
        body: &[u8],
    ) -> impl std::future::Future<Output = Result<Accepted, IngestError>> + Send;

    fn response(accepted: &Accepted) -> Self::Response;
}

pub(crate) struct Traces;
pub(crate) struct Logs;

impl Signal for Traces {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const EXPORT_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    type Response = ExportTraceServiceResponse;

    async fn export<S: Sink>(ingest: &Ingest<S>, body: &[u8]) -> Result<Accepted, IngestError> {
        ingest.traces_protobuf(body, Transport::Grpc).await
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

impl Signal for Logs {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const EXPORT_PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    type Response = ExportLogsServiceResponse;

    async fn export<S: Sink>(ingest: &Ingest<S>, body: &[u8]) -> Result<Accepted, IngestError> {
        ingest.logs_protobuf(body, Transport::Grpc).await
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

fn partial(accepted: &Accepted) -> Option<(i64, String)> {
    (accepted.rejected > 0 || !accepted.error_message.is_empty()).then(|| {
        (
            i64::try_from(accepted.rejected).unwrap_or(i64::MAX),
            accepted.error_message.clone(),
        )
    })
}

/// `UNAVAILABLE` carries a `RetryInfo` detail, which OTLP exporters honour as the back-off.
fn status<S>(ingest: &Ingest<S>, error: IngestError) -> Status {
    match error {
        IngestError::Unavailable(reason) => Status::with_error_details(
            Code::Unavailable,
            reason,
            ErrorDetails::with_retry_info(Some(ingest.retry_after)),
        ),
        IngestError::Failed(reason) => Status::internal(reason),
        IngestError::Invalid(reason) => Status::invalid_argument(reason),
    }
}

/// One OTLP export service (traces or logs) over the shared ingest path.
pub(crate) struct OtlpService<S, G> {
    ingest: Arc<Ingest<S>>,
    max_request_bytes: usize,
    signal: PhantomData<fn() -> G>,
}

impl<S, G> OtlpService<S, G> {
    pub fn new(ingest: Arc<Ingest<S>>, max_request_bytes: usize) -> Self {
        OtlpService {
            ingest,
            max_request_bytes,
            signal: PhantomData,
        }
    }
}

impl<S, G> Clone for OtlpService<S, G> {
    fn clone(&self) -> Self {
        OtlpService {
            ingest: self.ingest.clone(),
            max_request_bytes: self.max_request_bytes,
            signal: PhantomData,
        }
    }
}

impl<S, G: Signal> NamedService for OtlpService<S, G> {
    const NAME: &'static str = G::SERVICE;
}

impl<S, G, B> tower::Service<http::Request<B>> for OtlpService<S, G>
where
    S: Sink,
    G: Signal,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != G::EXPORT_PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("OTLP services only have the Export method").into_http())
            });
        }
        let method = Export::<S, G> {
            ingest: self.ingest.clone(),
            signal: PhantomData,
        };
        let max_request_bytes = self.max_request_bytes;
        Box::pin(async move {
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(BodyCodec::<G::Response>(PhantomData))
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(max_request_bytes), None);
            let mut response = grpc.unary(method, request).await;
            too_large_is_resource_exhausted(&mut response);
            Ok(response)
        })
    }
}

/// tonic refuses a message over `max_request_bytes` with `OUT_OF_RANGE`, which OTLP senders
/// retry forever; the OTLP answer for data too large to ever accept is `RESOURCE_EXHAUSTED`
/// without a retry hint (what the Go collector sends), so senders drop it. The status of such
/// an early refusal sits in the response headers.
fn too_large_is_resource_exhausted(response: &mut http::Response<tonic::body::Body>) {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers.get("grpc-message").is_some_and(|m| {
            let m = m.as_bytes();
            m.starts_with(b"Error, decoded message length too large")
                || m.starts_with(b"Error,%20decoded%20message%20length%20too%20large")
        });
    if too_large {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
}

struct Export<S, G> {
    ingest: Arc<Ingest<S>>,
    signal: PhantomData<fn() -> G>,
}

impl<S: Sink, G: Signal> UnaryService<Bytes> for Export<S, G> {
    type Response = G::Response;
    type Future = BoxFuture<tonic::Response<G::Response>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.ingest.clone();
        Box::pin(async move {
            let body = request.into_inner();
            match G::export(&ingest, &body).await {
                Ok(accepted) => Ok(tonic::Response::new(G::response(&accepted))),
                Err(e) => Err(status(&ingest, e)),
            }
        })
    }
}

/// Decodes nothing: the request message arrives as the bytes of its body. Responses are
/// encoded with prost.
struct BodyCodec<R>(PhantomData<fn() -> R>);

impl<R: Message + Send + 'static> Codec for BodyCodec<R> {
    type Encode = R;
    type Decode = Bytes;
    type Encoder = ProstEncoder<R>;
    type Decoder = BodyDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        BodyDecoder
    }
}

struct ProstEncoder<R>(PhantomData<fn() -> R>);

impl<R: Message> Encoder for ProstEncoder<R> {
    type Item = R;
    type Error = Status;

    fn encode(&mut self, item: R, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

struct BodyDecoder;

impl Decoder for BodyDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // Hands over the frame's buffer without copying it.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
