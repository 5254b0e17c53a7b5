//! The admin listener every stage serves: Prometheus `/metrics` and `/healthz`.
//!
//! A component says what its metrics are and whether it is healthy through [`AdminSource`];
//! [`serve`] binds the port and answers until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

/// OpenMetrics text, which `prometheus_client` writes and Prometheus scrapes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints report for one component.
pub trait AdminSource: Send + Sync + 'static {
    /// The metrics registry to encode on `/metrics`.
    fn registry(&self) -> &Registry;

    /// `Ok` for 200 on `/healthz`; `Err(reason)` for 503 with the reason as the body
    /// (shutting down, store unavailable, ...).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// The body of a 200 on `/healthz`, without the newline: `ok`, unless the component has
    /// more to say (an alerter standing by for failover says `standby`).
    fn healthy_as(&self) -> String {
        "ok".to_string()
    }
}

/// The common case: a registry, healthy until a graceful shutdown begins (so that load
/// balancers stop sending while in-flight work finishes).
pub struct Serving {
    registry: Registry,
    serving: AtomicBool,
}

impl Serving {
    /// Healthy, with `registry` on `/metrics`.
    pub fn new(registry: Registry) -> Self {
        Serving {
            registry,
            serving: AtomicBool::new(true),
        }
    }

    /// From now on `/healthz` answers 503 "shutting down".
    pub fn stop_serving(&self) {
        self.serving.store(false, Ordering::Relaxed);
    }
}

impl AdminSource for Serving {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn health(&self) -> Result<(), String> {
        if self.serving.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("shutting down".to_string())
        }
    }
}

/// The `/metrics` and `/healthz` routes over `source`.
pub fn router(source: Arc<dyn AdminSource>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(source)
}

/// [`router`] with `/metrics` behind `auth`. `/healthz` stays open, so that load balancers
/// and orchestrators probe without a secret; it tells nothing but "ok" or why not.
#[cfg(feature = "listen")]
pub fn router_with_auth(
    source: Arc<dyn AdminSource>,
    auth: crate::listen::BearerAuth,
) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route_layer(auth)
        .route("/healthz", get(healthz))
        .with_state(source)
}

/// Binds `addr` and serves [`router`] until `shutdown` completes. Returns the bound address
/// (port 0 picks one) and the server task.
pub async fn serve(
    addr: SocketAddr,
    source: Arc<dyn AdminSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(source);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, address = %bound, "admin server failed");
        }
    });
    Ok((bound, task))
}

async fn metrics(State(source): State<Arc<dyn AdminSource>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, source.registry()) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthz(State(source): State<Arc<dyn AdminSource>>) -> Response {
    match source.health() {
        Ok(()) => (StatusCode::OK, format!("{}\n", source.healthy_as())).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}
