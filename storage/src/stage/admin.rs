//! The admin listener: `/metrics` (Prometheus text format) and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;

async fn metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// 200 while the store takes writes; 503 while the stage is retrying against an unavailable
/// store (consumption paused), so a load balancer or orchestrator can see it.
async fn healthz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.store_up() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "store unavailable: consumption paused, retrying\n",
        )
    }
}

/// Binds `addr` and serves until `shutdown` is cancelled; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics_state: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(metrics_state);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok((bound, task))
}
