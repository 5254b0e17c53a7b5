//! Demo microservices A, B and C, and a test client that drives load through them.
//!
//! The call graph is `service-a → service-b → service-c` and `service-a → service-c`. Every
//! service is an axum server instrumented with the dlog SDK only through its public API:
//! server spans from [`trace_server`], client spans and `traceparent` from
//! [`RequestBuilderExt::send_traced`], `#[instrument]` handlers, `tracing::info!` events,
//! `DistributedLogger` warnings (slow responses), errors and `log_service_call` records, and
//! registration + heartbeats.
//!
//! Failure injection, per service, from flags or at run time through `POST /chaos`:
//! * `error_rate`: share of requests that fail with 500 and an ERROR record;
//! * `slow_rate` / `slow_ms`: share of requests delayed by `slow_ms`, which then exceed the
//!   service's `threshold_ms` and log a WARN with `response_time_ms`/`threshold_limit_ms`;
//! * `down`: the service answers 503 to everything (its heartbeats continue; stop the process
//!   to make it go silent).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use distributed_logger::http::{trace_server, RequestBuilderExt};
use distributed_logger::DistributedLogger;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

pub mod cli;

/// Failure injection settings of one service.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Chaos {
    /// Share of requests (0..=1) that fail with 500.
    #[serde(default)]
    pub error_rate: f64,
    /// Share of requests (0..=1) delayed by `slow_ms`.
    #[serde(default)]
    pub slow_rate: f64,
    /// Extra delay of a slow request, in ms.
    #[serde(default)]
    pub slow_ms: u64,
    /// When true, every request gets 503.
    #[serde(default)]
    pub down: bool,
}

/// One demo service: its name, what it calls, and its failure injection.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Service name (`service-a`, ...).
    pub name: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Downstream services: (service name, base URL).
    pub downstream: Vec<(String, String)>,
    /// Response time above which the service logs a WARN, in ms.
    pub threshold_ms: u64,
    /// Initial failure injection.
    pub chaos: Chaos,
}

struct AppState {
    spec: ServiceSpec,
    chaos: RwLock<Chaos>,
    client: reqwest::Client,
    logger: DistributedLogger,
}

/// Builds the service's router: `GET /work` (the traced request path), `GET /health`,
/// `GET|POST /chaos`.
pub fn router(spec: ServiceSpec, logger: DistributedLogger) -> Router {
    let state = Arc::new(AppState {
        chaos: RwLock::new(spec.chaos),
        spec,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default(),
        logger,
    });
    Router::new()
        .route("/work", get(work))
        .route("/chaos", get(get_chaos).post(set_chaos))
        .layer(axum::middleware::from_fn(trace_server))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

/// Serves `router` on `spec.listen` until `shutdown` completes.
pub async fn serve(
    spec: ServiceSpec,
    logger: DistributedLogger,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(spec.listen).await?;
    tracing::info!(address = %listener.local_addr()?, service = %spec.name, "listening");
    axum::serve(listener, router(spec, logger))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn get_chaos(State(state): State<Arc<AppState>>) -> Json<Chaos> {
    Json(*state.chaos.read().unwrap_or_else(|e| e.into_inner()))
}

async fn set_chaos(State(state): State<Arc<AppState>>, Json(chaos): Json<Chaos>) -> Json<Chaos> {
    *state.chaos.write().unwrap_or_else(|e| e.into_inner()) = chaos;
    tracing::info!(?chaos, "failure injection changed");
    Json(chaos)
}

#[derive(Debug, Serialize)]
struct WorkReply {
    service: String,
    ok: bool,
    downstream: Vec<String>,
}

#[tracing::instrument(skip(state), fields(service = %state.spec.name))]
async fn work(State(state): State<Arc<AppState>>) -> (StatusCode, Json<WorkReply>) {
    let started = Instant::now();
    let chaos = *state.chaos.read().unwrap_or_else(|e| e.into_inner());
    let name = state.spec.name.clone();
    if chaos.down {
        state.logger.error(
            "service is down for maintenance",
            "SVC-503",
            "failure injection: down",
            None,
        );
        return reply(StatusCode::SERVICE_UNAVAILABLE, name, false, vec![]);
    }
    tracing::info!("handling request");
    if rand::random::<f64>() < chaos.slow_rate {
        tokio::time::sleep(Duration::from_millis(chaos.slow_ms)).await;
    }

    let mut downstream = Vec::new();
    let mut failed_dependency = None;
    for (target, base) in &state.spec.downstream {
        let ok = call(&state, target, base).await;
        downstream.push(format!("{target}:{}", if ok { "ok" } else { "failed" }));
        if !ok && failed_dependency.is_none() {
            failed_dependency = Some(target.clone());
        }
    }

    if let Some(target) = failed_dependency {
        state.logger.error(
            format!("request failed: {target} did not answer"),
            "DEP-502",
            format!("call to {target} failed"),
            Some(target.as_str()),
        );
        return reply(StatusCode::BAD_GATEWAY, name, false, downstream);
    }
    if rand::random::<f64>() < chaos.error_rate {
        state.logger.error(
            "request failed",
            "SVC-500",
            "failure injection: internal error",
            None,
        );
        return reply(StatusCode::INTERNAL_SERVER_ERROR, name, false, downstream);
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if elapsed_ms > state.spec.threshold_ms {
        state
            .logger
            .warn("slow response", elapsed_ms, state.spec.threshold_ms);
    }
    tracing::info!(elapsed_ms, "request done");
    reply(StatusCode::OK, name, true, downstream)
}

#[tracing::instrument(skip(state, base))]
async fn call(state: &AppState, target: &str, base: &str) -> bool {
    let started = Instant::now();
    let result = state
        .client
        .get(format!("{base}/work"))
        .send_traced(target)
        .await;
    let ok = matches!(&result, Ok(r) if r.status().is_success());
    state.logger.log_service_call(target, ok, started.elapsed());
    ok
}

fn reply(
    status: StatusCode,
    service: String,
    ok: bool,
    downstream: Vec<String>,
) -> (StatusCode, Json<WorkReply>) {
    (
        status,
        Json(WorkReply {
            service,
            ok,
            downstream,
        }),
    )
}

/// What `drive` observed.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadSummary {
    /// Requests sent.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Non-2xx answers.
    pub failed: u64,
    /// Transport errors (no answer).
    pub unreachable: u64,
}

/// Sends `requests` requests to `target` (`http://host:port`), at most `rate` per second,
/// each in its own trace started by the client's span.
pub async fn drive(target: &str, requests: u64, rate: f64) -> LoadSummary {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let mut summary = LoadSummary::default();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut ticker = tokio::time::interval(period);
    for i in 0..requests {
        ticker.tick().await;
        let span = tracing::info_span!("client.request", request = i);
        let result = client
            .get(format!("{target}/work"))
            .send_traced("service-a")
            .instrument(span)
            .await;
        summary.sent += 1;
        match result {
            Ok(r) if r.status().is_success() => summary.ok += 1,
            Ok(_) => summary.failed += 1,
            Err(_) => summary.unreachable += 1,
        }
    }
    summary
}
