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
use std::future::poll_fn;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::Frame;
use prost::Message;
use tokio::time::Instant;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::{Body, BoxFuture, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::body::{self, Collected, InflateError};
use crate::ingest::{Ingest, IngestError, Ticket};
use crate::metrics::Transport;
use crate::signal::OtlpSignal;
use crate::sink::Sink;

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
        // No retry hint: the request will never fit, so senders drop it rather than retry.
        IngestError::TooLarge(reason) => Status::resource_exhausted(reason),
    }
}

/// How much and how slowly a gRPC request may arrive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrpcLimits {
    /// Largest message, after decompression.
    pub max_request_bytes: usize,
    /// From the request's arrival to its gRPC frame header.
    pub first_frame_timeout: Duration,
    /// From the request's arrival to the end of its message.
    pub body_timeout: Duration,
}

/// One OTLP export service (traces or logs) over the shared ingest path.
pub(crate) struct OtlpService<S, G> {
    ingest: Arc<Ingest<S>>,
    limits: GrpcLimits,
    signal: PhantomData<fn() -> G>,
}

impl<S, G> OtlpService<S, G> {
    pub fn new(ingest: Arc<Ingest<S>>, limits: GrpcLimits) -> Self {
        OtlpService {
            ingest,
            limits,
            signal: PhantomData,
        }
    }
}

impl<S, G> Clone for OtlpService<S, G> {
    fn clone(&self) -> Self {
        OtlpService {
            ingest: self.ingest.clone(),
            limits: self.limits,
            signal: PhantomData,
        }
    }
}

impl<S, G: OtlpSignal> NamedService for OtlpService<S, G> {
    const NAME: &'static str = G::GRPC_SERVICE;
}

impl<S, G, B> tower::Service<http::Request<B>> for OtlpService<S, G>
where
    S: Sink,
    G: OtlpSignal,
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
        if request.uri().path() != G::GRPC_EXPORT_PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("OTLP services only have the Export method").into_http())
            });
        }
        let ingest = self.ingest.clone();
        let limits = self.limits;
        Box::pin(async move {
            let arrived = Instant::now();
            // In flight from here: a graceful shutdown waits for requests still being read.
            let mut ticket = match ingest.admit(G::SIGNAL, Transport::Grpc) {
                Ok(ticket) => ticket,
                Err(e) => return Ok(status(&ingest, e).into_http()),
            };
            let (mut parts, body) = request.into_parts();
            let message = match read_message::<S, G, B>(
                &ingest,
                body,
                &parts.headers,
                limits,
                &mut ticket,
                arrived,
            )
            .await
            {
                Ok(message) => message,
                Err(status) => return Ok(status.into_http()),
            };
            // tonic gets an empty message: the real one is read (and inflated) already, under
            // the ticket's reservation, and goes to the export method as it is, so tonic
            // neither buffers a second copy nor inflates anything unreserved.
            parts.headers.remove("grpc-encoding");
            let request = http::Request::from_parts(parts, EmptyMessage { sent: false });
            let method = Export::<S, G> {
                ingest,
                ticket: Some(ticket),
                message: Some(message),
                signal: PhantomData,
            };
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(BodyCodec::<G::Response>(PhantomData))
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(limits.max_request_bytes), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// The gRPC frame header: compression flag and message length.
const FRAME_HEADER: usize = 5;

/// Reads the request's one gRPC message, reserving its bytes on `ticket` as they arrive (the
/// length in the frame header only guides buffer growth), within `first_frame_timeout` for
/// the frame header and `body_timeout` for the whole message, both from `arrived`; inflates
/// it when it is compressed. Refusals are counted, and answered with the status returned.
async fn read_message<S: Sink, G: OtlpSignal, B>(
    ingest: &Ingest<S>,
    body: B,
    headers: &http::HeaderMap,
    limits: GrpcLimits,
    ticket: &mut Ticket,
    arrived: Instant,
) -> Result<Bytes, Status>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let invalid = |status: Status| {
        ingest.invalid(G::SIGNAL, Transport::Grpc);
        status
    };
    let busy = |e: IngestError| {
        ingest.refused(G::SIGNAL, Transport::Grpc, &e);
        status(ingest, e)
    };
    let max = limits.max_request_bytes;
    let too_large = |length: usize| {
        invalid(Status::resource_exhausted(format!(
            "request of {length} bytes is over max_request_bytes ({max})"
        )))
    };
    let mut body = std::pin::pin!(body);
    let mut collected = Collected::default();
    // (compressed, length) once the frame header is in.
    let mut frame: Option<(bool, usize)> = None;
    let header_deadline = arrived + limits.first_frame_timeout.min(limits.body_timeout);
    let body_deadline = arrived + limits.body_timeout;
    loop {
        if let Some((_, length)) = frame {
            if collected.len() >= FRAME_HEADER + length {
                break;
            }
        }
        let (deadline, timeout, setting) = match frame {
            None => (
                header_deadline,
                limits.first_frame_timeout.min(limits.body_timeout),
                "grpc_first_frame_timeout_ms",
            ),
            Some(_) => (
                body_deadline,
                limits.body_timeout,
                "request_body_timeout_ms",
            ),
        };
        let next = tokio::time::timeout_at(deadline, poll_fn(|cx| body.as_mut().poll_frame(cx)));
        let data = match next.await {
            Err(_) => {
                return Err(invalid(Status::deadline_exceeded(format!(
                    "the request message did not arrive within {setting} ({} ms)",
                    timeout.as_millis()
                ))))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let e: StdError = e.into();
                return Err(invalid(Status::cancelled(format!(
                    "cannot read the request body: {e}"
                ))));
            }
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => data.copy_to_bytes(data.remaining()),
                // Trailers: nothing more will come.
                Err(_) => break,
            },
        };
        if collected.len() + data.len() > FRAME_HEADER.saturating_add(max) {
            return Err(too_large(collected.len() + data.len() - FRAME_HEADER));
        }
        let expected = frame.map(|(_, length)| FRAME_HEADER + length);
        collected.push(data, expected, ticket).await.map_err(busy)?;
        if frame.is_none() {
            if let Some(head) = collected.as_slice().get(..FRAME_HEADER) {
                let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                if length > max {
                    return Err(too_large(length));
                }
                frame = Some((head[0] != 0, length));
            }
        }
    }
    let Some((compressed, length)) = frame else {
        return Err(invalid(Status::invalid_argument(
            "the request body ended before a whole gRPC message",
        )));
    };
    let end = FRAME_HEADER + length;
    if collected.len() != end {
        return Err(invalid(Status::invalid_argument(format!(
            "the request body holds {} bytes after the frame header, but its message has {length}: a unary request has exactly one message",
            collected.len() - FRAME_HEADER
        ))));
    }
    let message = collected.finish().slice(FRAME_HEADER..end);
    if !compressed {
        return Ok(message);
    }
    let coding = headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !coding.eq_ignore_ascii_case("gzip") {
        return Err(invalid(Status::unimplemented(format!(
            "compressed message with grpc-encoding `{coding}`: only gzip is accepted"
        ))));
    }
    body::inflate(message, max, ticket)
        .await
        .map_err(|e| match e {
            InflateError::Busy(e) => busy(e),
            InflateError::TooLarge => invalid(Status::resource_exhausted(format!(
                "request inflates to more than max_request_bytes ({max})"
            ))),
            InflateError::Invalid(m) => invalid(Status::invalid_argument(m)),
            InflateError::Internal(m) => Status::internal(m),
        })
}

/// A request body holding one empty, uncompressed gRPC message.
struct EmptyMessage {
    sent: bool,
}

impl Body for EmptyMessage {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.sent {
            return Poll::Ready(None);
        }
        this.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &[0; FRAME_HEADER],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent
    }
}

struct Export<S, G> {
    ingest: Arc<Ingest<S>>,
    /// The request's ticket, handed on to the ingest path.
    ticket: Option<Ticket>,
    /// The request's message, read before tonic was called.
    message: Option<Bytes>,
    signal: PhantomData<fn() -> G>,
}

impl<S: Sink, G: OtlpSignal> UnaryService<Bytes> for Export<S, G> {
    type Response = G::Response;
    type Future = BoxFuture<tonic::Response<G::Response>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.ingest.clone();
        let ticket = self.ticket.take();
        let message = self.message.take();
        Box::pin(async move {
            let body = message.unwrap_or_else(|| request.into_inner());
            // A unary service is called once per request; a second call gets a new ticket.
            let ticket = match ticket {
                Some(ticket) => ticket,
                None => ingest
                    .admit(G::SIGNAL, Transport::Grpc)
                    .map_err(|e| status(&ingest, e))?,
            };
            match ingest.protobuf::<G>(body, ticket, Transport::Grpc).await {
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
