//! HTTP server and client spans, with W3C trace context propagation.
//!
//! * [`trace_server`]: an axum middleware (`axum::middleware::from_fn(trace_server)`) that
//!   continues the caller's trace from `traceparent` and wraps the request in a SERVER span
//!   named `METHOD /route`, with `http.route`, the method and the response status. A request
//!   that matched no route (a 404, a scanner) is named after its method alone, so that raw
//!   paths never become operation names.
//! * [`send_traced`] / [`RequestBuilderExt::send_traced`]: sends a reqwest request inside a
//!   CLIENT span whose `peer.service` is the called service, with that span's context
//!   injected as `traceparent`, so the callee's server span becomes its child. Its `url.full`
//!   carries no credentials: userinfo and the values of secret query parameters read
//!   `REDACTED` (see [`redact_url`]).
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use distributed_logger::http::{trace_server, RequestBuilderExt};
//!
//! # async fn example() -> Result<(), reqwest::Error> {
//! let app: Router = Router::new()
//!     .route("/orders/{id}", get(|| async { "ok" }))
//!     .layer(axum::middleware::from_fn(trace_server));
//!
//! let client = reqwest::Client::new();
//! let response = client
//!     .get("http://127.0.0.1:5001/stock")
//!     .send_traced("inventory")
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use dlog_core::names;
use tracing::field::Empty;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::propagation::{extract_http, inject_http, set_remote_parent};

/// Axum middleware: one SERVER span per request, child of the caller's span when the request
/// carries `traceparent`. Add it with `Router::layer(axum::middleware::from_fn(trace_server))`
/// so that `http.route` is the matched route (`/orders/{id}`) rather than the raw path.
///
/// The span is named `METHOD /route`. A request that matched no route is named after its
/// method alone and has no `http.route` (OpenTelemetry HTTP semantic conventions): the raw
/// path stays in `url.path`, but never becomes an operation name, so 404s and scanners cannot
/// create unbounded sets of names. A 5xx answer marks the span as an error.
pub async fn trace_server(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let span_name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        "http.server",
        otel.name = %span_name,
        otel.kind = "server",
        http.request.method = %method,
        http.route = route.as_deref(),
        url.path = %path,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    set_remote_parent(&span, extract_http(request.headers()));
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    // i64: tracing-opentelemetry records unsigned integers as strings.
    span.record("http.response.status_code", i64::from(status.as_u16()));
    // Server spans mark only 5xx as errors (OpenTelemetry HTTP semantic conventions).
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// Sends `request` inside a CLIENT span with `peer.service = peer_service`, injecting the
/// span's context as `traceparent`. A transport error or a 4xx/5xx status marks the span as
/// an error; the result is returned unchanged.
pub async fn send_traced(
    peer_service: &str,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let (client, request) = request.build_split();
    let mut request = request?;
    let method = request.method().clone();
    let url = request.url().clone();
    let span = tracing::info_span!(
        "http.client",
        otel.name = %method,
        otel.kind = "client",
        { names::PEER_SERVICE } = peer_service,
        http.request.method = %method,
        url.full = %url,
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default().map(i64::from),
        http.response.status_code = Empty,
        otel.status_code = Empty,
        error.type = Empty,
    );
    inject_http(&span.context(), request.headers_mut());
    let result = client.execute(request).instrument(span.clone()).await;
    match &result {
        Ok(response) => {
            let status = response.status();
            span.record("http.response.status_code", i64::from(status.as_u16()));
            if status.is_client_error() || status.is_server_error() {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", status.as_str());
            }
        }
        Err(error) => {
            span.record("otel.status_code", "ERROR");
            span.record(
                "error.type",
                if error.is_timeout() {
                    "timeout"
                } else if error.is_connect() {
                    "connect"
                } else {
                    "request"
                },
            );
        }
    }
    result
}

/// `send_traced` as a method on `reqwest::RequestBuilder`.
pub trait RequestBuilderExt {
    /// See [`send_traced`].
    fn send_traced(
        self,
        peer_service: &str,
    ) -> impl Future<Output = Result<reqwest::Response, reqwest::Error>> + Send;
}

impl RequestBuilderExt for reqwest::RequestBuilder {
    fn send_traced(
        self,
        peer_service: &str,
    ) -> impl Future<Output = Result<reqwest::Response, reqwest::Error>> + Send {
        send_traced(peer_service, self)
    }
}
