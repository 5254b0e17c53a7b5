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
//!   carries no credentials, as the OpenTelemetry conventions ask: userinfo reads
//!   `REDACTED:REDACTED` and the values of signed-URL, token, password and other secret
//!   query parameters `REDACTED` (see [`redact_url`]).
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
use std::sync::OnceLock;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use dlog_core::names;
use dlog_core::redact::SecretNames;
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

/// Query parameters whose values `url.full` never carries, matched case-sensitively against
/// the decoded key, as the OpenTelemetry semantic conventions ask: their list (`AWSAccessKeyId`,
/// `Signature`, `sig`, `X-Goog-Signature`), plus the credentials of AWS SigV4 presigned URLs
/// and the OAuth 2.0 bearer token sent as a query parameter (RFC 6750, section 2.3). The
/// conventions' list is a floor ("sensitive content ... SHOULD be scrubbed when
/// instrumentations can identify it"): [`redact_url`] also applies dlog's secret-name rule.
pub const SENSITIVE_QUERY_PARAMETERS: &[&str] = &[
    // OpenTelemetry semantic conventions, `url.full`.
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    // AWS SigV4 presigned URLs.
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    // OAuth 2.0 bearer token in the query.
    "access_token",
];

/// Secret names for query keys beyond [`dlog_core::redact::SENSITIVE_KEYS`]: `pwd` is a
/// common spelling of a password parameter in URLs.
const EXTRA_SECRET_QUERY_NAMES: &[&str] = &["pwd"];

/// dlog's secret-name rule ([`dlog_core::redact::SecretNames`], the one the collector bridge
/// applies to attribute keys) with [`EXTRA_SECRET_QUERY_NAMES`].
fn secret_names() -> &'static SecretNames {
    static NAMES: OnceLock<SecretNames> = OnceLock::new();
    NAMES.get_or_init(|| SecretNames::new(EXTRA_SECRET_QUERY_NAMES.iter().copied()))
}

/// `url` as `url.full` records it, following the OpenTelemetry semantic conventions: any
/// userinfo (a username, a password or both) becomes `REDACTED:REDACTED`, and the value of
/// a query parameter becomes `REDACTED`, its key kept as sent (`?color=blue&sig=REDACTED`),
/// when its decoded key is
///
/// * one of [`SENSITIVE_QUERY_PARAMETERS`], compared case-sensitively (the conventions), or
/// * a secret by dlog's secret-name rule ([`dlog_core::redact`], the rule the collector
///   bridge applies to attribute keys; plus `pwd`): its last `.` segment, case-insensitively
///   and with `-` as `_`, ends with a secret's name as a whole word, so `api_key`,
///   `x-api-key`, `clientSecret`, `user_password`, `password`, `token` and `pwd` are
///   redacted while `token_count`, `tokens` and `monkey` are kept (and `next_page_token` is
///   redacted: the rule errs on the side of hiding).
///
/// Keys are compared decoded (`%73ig` is `sig`); a repeated key is redacted every time. The
/// path, the other parameters and the fragment are kept as sent.
pub fn redact_url(url: &reqwest::Url) -> String {
    redact_url_by(url, |key| {
        SENSITIVE_QUERY_PARAMETERS.contains(&key) || secret_names().matches(key.as_bytes())
    })
}

/// [`redact_url`] with exactly the query keys in `sensitive` redacted (compared
/// case-sensitively, decoded): a full override of both [`SENSITIVE_QUERY_PARAMETERS`] and
/// the secret-name rule, as the conventions' `sensitive_query_parameters` setting is.
/// Userinfo is always redacted.
pub fn redact_url_with(url: &reqwest::Url, sensitive: &[&str]) -> String {
    redact_url_by(url, |key| sensitive.contains(&key))
}

/// Redacts userinfo and the values of the query parameters whose decoded key `sensitive`
/// accepts.
fn redact_url_by(url: &reqwest::Url, sensitive: impl Fn(&str) -> bool) -> String {
    let mut url = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        // Only URLs that cannot carry credentials refuse these; they have none to hide.
        let _ = url.set_username(REDACTED);
        let _ = url.set_password(Some(REDACTED));
    }
    let redacted_query = url.query().and_then(|query| {
        let mut changed = false;
        let redacted = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if sensitive(&percent_decode_lossy(key)) => {
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
    fn url_full_replaces_any_userinfo_with_redacted_redacted() {
        for (url, expected) in [
            (
                "https://alice:s3cret@example.test:8443/a?b=c",
                "https://REDACTED:REDACTED@example.test:8443/a?b=c",
            ),
            // A username alone is often the secret itself (a token).
            (
                "http://tok3n@127.0.0.1/x",
                "http://REDACTED:REDACTED@127.0.0.1/x",
            ),
            ("http://:pw@h.test/", "http://REDACTED:REDACTED@h.test/"),
            // `@` in the password: the userinfo runs to the last `@`.
            (
                "http://bob:p@ss@w0rd@h.test/p",
                "http://REDACTED:REDACTED@h.test/p",
            ),
            (
                "http://bob:p%40ss@[2001:db8::1]:8080/p?q=1#top",
                "http://REDACTED:REDACTED@[2001:db8::1]:8080/p?q=1#top",
            ),
            ("http://127.0.0.1:80/x", "http://127.0.0.1/x"),
            ("http://[::1]:9000/x#f", "http://[::1]:9000/x#f"),
        ] {
            let got = redacted(url);
            assert_eq!(got, expected, "{url}");
            for secret in [
                "alice", "s3cret", "tok3n", "pw@", "bob", "ss@w0rd", "p%40ss",
            ] {
                assert!(!got.contains(secret), "{secret} leaked from {url}: {got}");
            }
        }
    }

    #[test]
    fn url_full_redacts_the_conventions_query_keys_case_sensitively() {
        assert_eq!(
            redacted(
                "https://s.test/o?X-Goog-Signature=abc&sig=x%2By&AWSAccessKeyId=AK&Signature=s\
                 &page=2&q=sig&X-Amz-Signature=z&X-Amz-Credential=AK%2F2026&X-Amz-Security-Token=t\
                 &access_token=t2&sort=asc"
            ),
            "https://s.test/o?X-Goog-Signature=REDACTED&sig=REDACTED&AWSAccessKeyId=REDACTED\
             &Signature=REDACTED&page=2&q=sig&X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED\
             &X-Amz-Security-Token=REDACTED&access_token=REDACTED&sort=asc"
        );
        // The conventions' keys match case-sensitively and on the whole key: other
        // spellings and longer keys are not the listed parameters (nor secret names).
        let kept = "http://h.test/?SIG=1&signature=2&x-goog-signature=3&sig2=4&my.sig=5\
                    &token_count=6";
        assert_eq!(redacted(kept), kept);
    }

    /// `?api_key=…`, `?password=…` and `?client_secret=…` reached `url.full` (and so Kafka and
    /// the store) once only the conventions' four keys were redacted: the bridge redacts
    /// attribute keys, not secrets inside a `url.full` value.
    #[test]
    fn regression_url_full_redacts_dlog_secret_names_on_top_of_the_conventions() {
        assert_eq!(
            redacted(
                "https://api.test/v1?api_key=K1&page=2&password=P1&x-api-key=K2&clientSecret=C1\
                 &user_password=P2&token=T1&refresh_token=T2&API-KEY=K3&apikey=K4&pwd=P3\
                 &db.passwd=P4&%61pi_key=K5&authorization=A1&sig=S1&cookie=C2"
            ),
            "https://api.test/v1?api_key=REDACTED&page=2&password=REDACTED&x-api-key=REDACTED\
             &clientSecret=REDACTED&user_password=REDACTED&token=REDACTED\
             &refresh_token=REDACTED&API-KEY=REDACTED&apikey=REDACTED&pwd=REDACTED\
             &db.passwd=REDACTED&%61pi_key=REDACTED&authorization=REDACTED&sig=REDACTED\
             &cookie=REDACTED"
        );
        // Whole words only: names that merely contain a secret's name are kept.
        let kept = "http://h.test/?token_count=1&tokens=2&monkey=3&password.length=4\
                    &keyboard=5&passwordless=6&api_key_id=7&q=password";
        assert_eq!(redacted(kept), kept);
    }

    #[test]
    fn url_full_reads_keys_decoded_and_redacts_every_repetition() {
        // `%73ig` and `X%2DGoog-Signature` are what the server reads as `sig` and
        // `X-Goog-Signature`; the key is kept as sent.
        assert_eq!(
            redacted("http://h.test/a?%73ig=1&X%2DGoog-Signature=2&sig=3&sig=4&n=5&sig=&sig"),
            "http://h.test/a?%73ig=REDACTED&X%2DGoog-Signature=REDACTED&sig=REDACTED\
             &sig=REDACTED&n=5&sig=REDACTED&sig"
        );
        // A value holding `=` is replaced whole; an invalid escape elsewhere is kept.
        assert_eq!(
            redacted("http://h.test/?Signature=a=b==&x=%ZZ"),
            "http://h.test/?Signature=REDACTED&x=%ZZ"
        );
        // The fragment is kept; a `sig=` inside it is not a query parameter.
        assert_eq!(
            redacted("http://h.test/p?sig=v#sig=frag"),
            "http://h.test/p?sig=REDACTED#sig=frag"
        );
    }

    #[test]
    fn url_full_without_query_or_secrets_is_unchanged() {
        for url in [
            "http://h.test/p",
            "http://h.test/p?",
            "http://h.test/p?a&b=&c=1#frag",
            "https://[2001:db8::2]/x?y=%20z",
        ] {
            assert_eq!(redacted(url), url);
        }
    }

    #[test]
    fn the_sensitive_list_can_be_replaced_whole() {
        let url =
            reqwest::Url::parse("http://u:p@h.test/?sig=1&session=2&api_key=3&Token=4").unwrap();
        assert_eq!(
            redact_url_with(&url, &["session", "Token"]),
            "http://REDACTED:REDACTED@h.test/?sig=1&session=REDACTED&api_key=3&Token=REDACTED"
        );
    }
}
