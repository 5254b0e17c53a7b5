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
        url.full = %redact_url(&url),
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

/// What replaces a secret in `url.full`.
pub const REDACTED: &str = "REDACTED";

/// Query parameters whose values are secrets, compared case-insensitively with `-` read as
/// `_`, against the whole key or its last `.`-separated segment: the keys the OpenTelemetry
/// semantic conventions name for `url.full` (signed-URL signatures), AWS SigV4 presigned-URL
/// credentials, and the attribute names dlog redacts.
const SECRET_QUERY_KEYS: &[&str] = &[
    // OpenTelemetry semantic conventions, `url.full`.
    "awsaccesskeyid",
    "signature",
    "sig",
    "x_goog_signature",
    // AWS SigV4 presigned URLs.
    "x_amz_signature",
    "x_amz_credential",
    "x_amz_security_token",
    // dlog's redaction list.
    "authorization",
    "proxy_authorization",
    "cookie",
    "set_cookie",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "private_key",
];

/// `url` as `url.full` records it (OpenTelemetry semantic conventions): a username and a
/// password become `REDACTED:REDACTED`, and so does the value of every query parameter whose
/// key names a secret (`sig`, `X-Goog-Signature`, `AWSAccessKeyId`, `Signature`,
/// `access_token`, `api-key`, `password`, …). Everything else is kept as sent.
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    if !url.username().is_empty() {
        let _ = url.set_username(REDACTED);
    }
    if url.password().is_some() {
        let _ = url.set_password(Some(REDACTED));
    }
    let redacted_query = url.query().and_then(|query| {
        let mut changed = false;
        let redacted = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) if !value.is_empty() && is_secret_key(key) => {
                    changed = true;
                    format!("{key}={REDACTED}")
                }
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&");
        changed.then_some(redacted)
    });
    if let Some(query) = redacted_query {
        url.set_query(Some(&query));
    }
    url.to_string()
}

/// Whether a raw (percent-encoded) query key names a secret.
fn is_secret_key(raw: &str) -> bool {
    let key: String = percent_decode_lossy(raw)
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let last = key.rsplit('.').next().unwrap_or(&key);
    SECRET_QUERY_KEYS
        .iter()
        .any(|secret| *secret == key || *secret == last)
}

/// Decodes `%XX` and `+` (form encoding) in a query key; invalid escapes stay as they are.
fn percent_decode_lossy(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted(url: &str) -> String {
        redact_url(&reqwest::Url::parse(url).unwrap())
    }

    #[test]
    fn url_full_carries_no_userinfo() {
        assert_eq!(
            redacted("https://alice:s3cret@example.test:8443/a?b=c"),
            "https://REDACTED:REDACTED@example.test:8443/a?b=c"
        );
        assert_eq!(
            redacted("http://token@127.0.0.1/x"),
            "http://REDACTED@127.0.0.1/x"
        );
        assert_eq!(redacted("http://127.0.0.1:80/x"), "http://127.0.0.1/x");
    }

    #[test]
    fn url_full_redacts_secret_query_values_only() {
        assert_eq!(
            redacted(
                "https://s.test/o?X-Goog-Signature=abc&sig=x%2By&AWSAccessKeyId=AK&Signature=s\
                 &page=2&q=token&user.password=pw&API-KEY=k&apikey=k2&access_token=t&sort=asc"
            ),
            "https://s.test/o?X-Goog-Signature=REDACTED&sig=REDACTED&AWSAccessKeyId=REDACTED\
             &Signature=REDACTED&page=2&q=token&user.password=REDACTED&API-KEY=REDACTED\
             &apikey=REDACTED&access_token=REDACTED&sort=asc"
        );
        // Encoded keys are read decoded; keys that merely contain a word are kept.
        assert_eq!(
            redacted("http://h.test/?%61ccess_token=t&tokens=3&token_count=5&x-amz-signature=z"),
            "http://h.test/?%61ccess_token=REDACTED&tokens=3&token_count=5&x-amz-signature=REDACTED"
        );
        // Nothing secret: the URL is unchanged, fragment and odd pairs included.
        assert_eq!(
            redacted("http://h.test/p?a&b=&c=1#frag"),
            "http://h.test/p?a&b=&c=1#frag"
        );
    }
}
