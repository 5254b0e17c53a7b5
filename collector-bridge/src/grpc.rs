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

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::Frame;
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

use crate::ingest::{Accepted, Ingest, IngestError, Ticket};
use crate::metrics::{SignalKind, Transport};
use crate::sink::Sink;

/// What differs between the trace and the logs service.
pub(crate) trait Signal: Send + Sync + 'static {
    const SERVICE: &'static str;
    const EXPORT_PATH: &'static str;
    const KIND: SignalKind;
    type Response: Message + Default + Send + 'static;

    fn export<S: Sink>(
        ingest: &Ingest<S>,
        body: Bytes,
        ticket: Ticket,
    ) -> impl std::future::Future<Output = Result<Accepted, IngestError>> + Send;

    fn response(accepted: &Accepted) -> Self::Response;
}

pub(crate) struct Traces;
pub(crate) struct Logs;

impl Signal for Traces {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const EXPORT_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const KIND: SignalKind = SignalKind::Traces;
    type Response = ExportTraceServiceResponse;

    async fn export<S: Sink>(
        ingest: &Ingest<S>,
        body: Bytes,
        ticket: Ticket,
    ) -> Result<Accepted, IngestError> {
        ingest.traces_protobuf(body, ticket, Transport::Grpc).await
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
    const KIND: SignalKind = SignalKind::Logs;
    type Response = ExportLogsServiceResponse;

    async fn export<S: Sink>(
        ingest: &Ingest<S>,
        body: Bytes,
        ticket: Ticket,
    ) -> Result<Accepted, IngestError> {
        ingest.logs_protobuf(body, ticket, Transport::Grpc).await
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
        let ingest = self.ingest.clone();
        let max_request_bytes = self.max_request_bytes;
        Box::pin(async move {
            // In flight from here: a graceful shutdown waits for requests still being read.
            let mut ticket = match ingest.admit(G::KIND, Transport::Grpc) {
                Ok(ticket) => ticket,
                Err(e) => return Ok(status(&ingest, e).into_http()),
            };
            // Reserve the message's size from its frame header before tonic reads it.
            let (request, length) = match peek_frame(request).await {
                Ok(peeked) => peeked,
                Err(status) => return Ok(status.into_http()),
            };
            if let Some(length) = length {
                if length > max_request_bytes {
                    ingest.invalid(G::KIND, Transport::Grpc);
                    return Ok(Status::resource_exhausted(format!(
                        "request of {length} bytes is over max_request_bytes ({max_request_bytes})"
                    ))
                    .into_http());
                }
                if let Err(e) = ticket.reserve(length).await {
                    ingest.refused(G::KIND, Transport::Grpc, &e);
                    return Ok(status(&ingest, e).into_http());
                }
            }
            let method = Export::<S, G> {
                ingest,
                ticket: Some(ticket),
                signal: PhantomData,
            };
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

/// Reads the request body up to its first gRPC frame header (1 byte compression flag, 4
/// bytes big-endian length) and returns the request with a body that replays what was read,
/// and the message length the header announces (`None` when the body ends first: tonic
/// answers that).
async fn peek_frame<B>(
    request: http::Request<B>,
) -> Result<(http::Request<Replay<B>>, Option<usize>), Status>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let (parts, body) = request.into_parts();
    let mut body = Box::pin(body);
    let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut header = [0u8; 5];
    let mut have = 0;
    let mut ended = false;
    while have < header.len() {
        match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => {
                ended = true;
                break;
            }
            Some(Err(e)) => {
                let e: StdError = e.into();
                return Err(Status::cancelled(format!(
                    "cannot read the request body: {e}"
                )));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let data = data.copy_to_bytes(data.remaining());
                    let n = data.len().min(header.len() - have);
                    header[have..have + n].copy_from_slice(&data[..n]);
                    have += n;
                    read.push_back(Frame::data(data));
                }
                Err(frame) => {
                    // Trailers before a whole frame header: nothing more will come.
                    if let Ok(trailers) = frame.into_trailers() {
                        read.push_back(Frame::trailers(trailers));
                    }
                    ended = true;
                    break;
                }
            },
        }
    }
    let length = (have == header.len())
        .then(|| u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize);
    let body = Replay {
        read,
        rest: (!ended).then_some(body),
    };
    Ok((http::Request::from_parts(parts, body), length))
}

/// A request body whose first frames were already read: replays them, then the rest.
pub(crate) struct Replay<B> {
    read: VecDeque<Frame<Bytes>>,
    rest: Option<Pin<Box<B>>>,
}

impl<B> Body for Replay<B>
where
    B: Body,
    B::Error: Into<StdError>,
{
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StdError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(rest.as_mut().poll_frame(cx)) {
            None => {
                this.rest = None;
                Poll::Ready(None)
            }
            Some(Ok(frame)) => Poll::Ready(Some(Ok(
                frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
            ))),
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(|rest| rest.is_end_stream())
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
    /// The request's ticket, handed on to the ingest path.
    ticket: Option<Ticket>,
    signal: PhantomData<fn() -> G>,
}

impl<S: Sink, G: Signal> UnaryService<Bytes> for Export<S, G> {
    type Response = G::Response;
    type Future = BoxFuture<tonic::Response<G::Response>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.ingest.clone();
        let ticket = self.ticket.take();
        Box::pin(async move {
            let body = request.into_inner();
            // A unary service is called once per request; a second call gets a new ticket.
            let ticket = match ticket {
                Some(ticket) => ticket,
                None => ingest
                    .admit(G::KIND, Transport::Grpc)
                    .map_err(|e| status(&ingest, e))?,
            };
            match G::export(&ingest, body, ticket).await {
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
