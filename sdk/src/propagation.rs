//! W3C Trace Context (`traceparent`, `tracestate`) across process boundaries.
//!
//! Inject the current span's context into outgoing HTTP headers or gRPC metadata, and extract
//! the caller's context from incoming ones, so that a call from service X to service Y lands
//! in one trace with Y's server span a child of X's client span. The axum middleware and the
//! reqwest helper in [`crate::http`] use these; call them directly for other transports.
//!
//! ```
//! use distributed_logger::propagation::{extract_http, inject_http};
//! use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
//!
//! let remote = SpanContext::new(
//!     TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
//!     SpanId::from(0xb7ad6b7169203331_u64),
//!     TraceFlags::SAMPLED,
//!     true,
//!     TraceState::default(),
//! );
//! let cx = opentelemetry::Context::new().with_remote_span_context(remote.clone());
//! let mut headers = http::HeaderMap::new();
//! inject_http(&cx, &mut headers);
//! assert_eq!(
//!     headers["traceparent"],
//!     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
//! );
//! assert_eq!(extract_http(&headers).span().span_context(), &remote);
//! ```

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Writes `cx`'s span context into `headers` as `traceparent` (and `tracestate`).
pub fn inject_http(cx: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// Reads the caller's span context from `headers`. Without a valid `traceparent` the
/// returned context has no span.
pub fn extract_http(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `cx`'s span context into gRPC metadata.
pub fn inject_metadata(cx: &Context, metadata: &mut MetadataMap) {
    TraceContextPropagator::new().inject_context(cx, &mut MetadataInjector(metadata));
}

/// Reads the caller's span context from gRPC metadata.
pub fn extract_metadata(metadata: &MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// The OpenTelemetry context of the current `tracing` span.
pub fn current_context() -> Context {
    tracing::Span::current().context()
}

/// Injects the current `tracing` span's context into `headers`.
pub fn inject_current_http(headers: &mut HeaderMap) {
    inject_http(&current_context(), headers);
}

/// Injects the current `tracing` span's context into gRPC metadata.
pub fn inject_current_metadata(metadata: &mut MetadataMap) {
    inject_metadata(&current_context(), metadata);
}

/// Makes `span` a child of the remote caller in `cx`, when `cx` carries a valid span context.
/// Returns whether it did.
pub fn set_remote_parent(span: &tracing::Span, cx: Context) -> bool {
    if !cx.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(cx).is_ok()
}

/// A tonic client interceptor that injects the current span's context into every request:
/// `MyClient::with_interceptor(channel, distributed_logger::propagation::inject_interceptor)`.
#[allow(clippy::result_large_err)] // tonic's interceptor signature.
pub fn inject_interceptor(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    inject_current_metadata(request.metadata_mut());
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn remote() -> SpanContext {
        SpanContext::new(
            TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736_u128),
            SpanId::from(0x00f067aa0ba902b7_u64),
            TraceFlags::SAMPLED,
            true,
            "vendor=value".parse::<TraceState>().unwrap(),
        )
    }

    #[test]
    fn metadata_round_trip_carries_traceparent_and_tracestate() {
        let cx = Context::new().with_remote_span_context(remote());
        let mut metadata = MetadataMap::new();
        inject_metadata(&cx, &mut metadata);
        assert_eq!(
            metadata.get("traceparent").unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(metadata.get("tracestate").unwrap(), "vendor=value");
        assert_eq!(extract_metadata(&metadata).span().span_context(), &remote());
    }

    #[test]
    fn garbage_traceparent_extracts_to_no_span() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-zz-yy-01"));
        assert!(!extract_http(&headers).span().span_context().is_valid());
        assert!(!extract_http(&HeaderMap::new())
            .span()
            .span_context()
            .is_valid());
    }
}
