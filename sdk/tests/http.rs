//! The HTTP helpers over real HTTP: the axum middleware's SERVER spans and `send_traced`'s
//! CLIENT spans, as the exporter receives them (names, attributes, error status).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use distributed_logger::http::{trace_server, RequestBuilderExt};
use distributed_logger::Telemetry;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::Value;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// Discards logs (the tests look at spans only).
#[derive(Debug)]
struct NoLogs;

impl LogExporter for NoLogs {
    async fn export(&self, _batch: LogBatch<'_>) -> OTelSdkResult {
        Ok(())
    }
}

/// Keeps every exported span.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

/// A service with the middleware, its spans collected, and a current-thread runtime whose
/// tasks (server and client alike) all run with the service's subscriber.
struct Service {
    telemetry: Telemetry,
    spans: Collect,
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
}

impl Service {
    fn start() -> Service {
        let spans = Collect::default();
        let telemetry = Telemetry::builder("http-test")
            .with_span_exporter(spans.clone())
            .with_log_exporter(NoLogs)
            .with_stderr(false)
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let app = Router::new()
            .route("/orders/{id}", get(|| async { "order" }))
            .route(
                "/fail/{code}",
                get(
                    |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                    },
                ),
            )
            .layer(axum::middleware::from_fn(trace_server));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Service {
            telemetry,
            spans,
            runtime,
            addr,
        }
    }

    /// Runs `future` on the service's runtime with its subscriber as the default.
    fn run<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        tracing::dispatcher::with_default(self.telemetry.dispatch(), || {
            self.runtime.block_on(future)
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every span exported so far, after a flush.
    fn spans(&self) -> Vec<SpanData> {
        self.telemetry.flush(Duration::from_secs(5));
        self.spans.0.lock().unwrap().clone()
    }

    /// The one span of `kind` whose `url.path` (server) or `url.full` (client) ends in `path`.
    fn span(&self, kind: SpanKind, path: &str) -> SpanData {
        let key = if kind == SpanKind::Server {
            "url.path"
        } else {
            "url.full"
        };
        let matching: Vec<SpanData> = self
            .spans()
            .into_iter()
            .filter(|s| s.span_kind == kind)
            .filter(|s| attr(s, key).is_some_and(|v| v.as_str().ends_with(path)))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "one {kind:?} span for {path}: {matching:#?}"
        );
        matching.into_iter().next().unwrap()
    }
}

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn is_error(span: &SpanData) -> bool {
    matches!(span.status, Status::Error { .. })
}

/// Regression (issue 7, unbounded names): a request that matched no route named its SERVER
/// span after the raw path, so 404s and scanners created one operation per path. It is now
/// named after the method alone, without `http.route`; the path stays in `url.path`.
#[test]
fn regression_unmatched_path_names_the_server_span_by_method_alone() {
    let service = Service::start();
    let client = reqwest::Client::new();
    for path in [
        "/wp-admin/setup.php",
        "/orders/7/../../etc/passwd",
        "/orders/9",
    ] {
        let status =
            service.run(async { client.get(service.url(path)).send().await.unwrap().status() });
        assert_eq!(
            status == StatusCode::OK,
            path == "/orders/9",
            "{path}: {status}"
        );
    }

    let scanner = service.span(SpanKind::Server, "/wp-admin/setup.php");
    assert_eq!(scanner.name, "GET");
    assert_eq!(attr(&scanner, "http.route"), None);
    assert_eq!(
        attr(&scanner, "http.request.method"),
        Some(Value::from("GET"))
    );
    assert_eq!(
        attr(&scanner, "http.response.status_code"),
        Some(Value::I64(404))
    );
    assert!(!is_error(&scanner), "a 404 is not a server error");

    let matched = service.span(SpanKind::Server, "/orders/9");
    assert_eq!(matched.name, "GET /orders/{id}");
    assert_eq!(
        attr(&matched, "http.route"),
        Some(Value::from("/orders/{id}"))
    );

    let names: std::collections::BTreeSet<String> = service
        .spans()
        .iter()
        .filter(|s| s.span_kind == SpanKind::Server)
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(
        names,
        ["GET", "GET /orders/{id}"].map(String::from).into(),
        "no raw path became a span name"
    );
}

/// The alert rules count error spans, so the middleware's error marking is a promise: a SERVER
/// span is an error for a 5xx answer only; a CLIENT span for a 4xx, a 5xx or a transport
/// error, with `error.type` saying which.
#[test]
fn server_and_client_spans_mark_errors_as_the_alert_rules_expect() {
    let service = Service::start();
    let client = reqwest::Client::new();
    // A port nothing listens on: the connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    service.run(async {
        for path in [
            "/orders/1",
            "/fail/400",
            "/fail/404",
            "/fail/500",
            "/fail/503",
        ] {
            client
                .get(service.url(path))
                .send_traced("self")
                .await
                .unwrap();
        }
        let refused = client
            .get(format!("http://{closed}/refused"))
            .send_traced("nobody")
            .await;
        assert!(refused.is_err());
    });

    for (path, status, server_error, client_error) in [
        ("/orders/1", 200, false, None),
        ("/fail/400", 400, false, Some("400")),
        ("/fail/404", 404, false, Some("404")),
        ("/fail/500", 500, true, Some("500")),
        ("/fail/503", 503, true, Some("503")),
    ] {
        let server = service.span(SpanKind::Server, path);
        assert_eq!(
            attr(&server, "http.response.status_code"),
            Some(Value::I64(status)),
            "{path}"
        );
        assert_eq!(is_error(&server), server_error, "server span of {path}");

        let client = service.span(SpanKind::Client, path);
        assert_eq!(
            attr(&client, "http.response.status_code"),
            Some(Value::I64(status)),
            "{path}"
        );
        assert_eq!(
            is_error(&client),
            client_error.is_some(),
            "client span of {path}"
        );
        assert_eq!(
            attr(&client, "error.type"),
            client_error.map(Value::from),
            "{path}"
        );
        assert_eq!(attr(&client, "peer.service"), Some(Value::from("self")));
        assert_eq!(
            server.parent_span_id,
            client.span_context.span_id(),
            "{path}: the server span continues the client's trace"
        );
    }

    let refused = service.span(SpanKind::Client, "/refused");
    assert!(is_error(&refused), "a transport error marks the span");
    assert_eq!(attr(&refused, "error.type"), Some(Value::from("connect")));
    assert_eq!(attr(&refused, "http.response.status_code"), None);
    assert_eq!(attr(&refused, "peer.service"), Some(Value::from("nobody")));
}

/// Regression (issue 7, redaction): `url.full` of a CLIENT span carried the URL as sent,
/// credentials and signed-URL secrets included. Regression too: with only the conventions'
/// keys redacted, `api_key`, `x-api-key` and `password` values reached `url.full`.
#[test]
fn regression_client_url_full_has_no_credentials_or_query_secrets() {
    let service = Service::start();
    let client = reqwest::Client::new();
    let url = format!(
        "http://alice:hunter2@{}/orders/5?sig=VAL1&X-Goog-Signature=VAL2&AWSAccessKeyId=VAL3\
         &Signature=VAL4&access_token=VAL5&X-Amz-Security-Token=VAL6&api_key=VAL7\
         &x-api-key=VAL8&password=VAL9&token_count=3&page=2",
        service.addr
    );
    let status =
        service.run(async { client.get(&url).send_traced("self").await.unwrap().status() });
    assert_eq!(status, StatusCode::OK);

    // reqwest moves the userinfo into an Authorization header before the span sees the URL
    // (a userinfo that reaches `url.full` reads REDACTED:REDACTED; see the unit tests).
    let span = service.span(SpanKind::Client, "&page=2");
    let full = attr(&span, "url.full").unwrap().as_str().into_owned();
    assert_eq!(
        full,
        format!(
            "http://{}/orders/5?sig=REDACTED&X-Goog-Signature=REDACTED\
             &AWSAccessKeyId=REDACTED&Signature=REDACTED&access_token=REDACTED\
             &X-Amz-Security-Token=REDACTED&api_key=REDACTED&x-api-key=REDACTED\
             &password=REDACTED&token_count=3&page=2",
            service.addr
        )
    );
    for secret in ["alice", "hunter2", "VAL"] {
        assert!(!full.contains(secret), "{secret} leaked: {full}");
    }
}
