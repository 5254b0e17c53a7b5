//! The admin listener: `/metrics` (Prometheus) and `/healthz`, served by
//! [`dlog_core::admin`].

use std::net::SocketAddr;
use std::sync::Arc;

use dlog_core::admin::AdminSource;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::Metrics;

impl AdminSource for Metrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    /// 503 while the stage is retrying against an unavailable store (consumption paused), so
    /// a load balancer or orchestrator can see it.
    fn health(&self) -> Result<(), String> {
        if self.store_up() {
            Ok(())
        } else {
            Err("store unavailable: consumption paused, retrying".to_string())
        }
    }
}

/// Binds `addr` and serves until `shutdown` is cancelled; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    dlog_core::admin::serve(addr, metrics, shutdown.cancelled_owned()).await
}
