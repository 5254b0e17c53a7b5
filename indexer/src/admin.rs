//! The admin listener: `/metrics` (Prometheus) and `/healthz`, served by
//! [`dlog_core::admin`].

use std::net::SocketAddr;
use std::sync::Arc;

use dlog_core::admin::{AdminError, AdminSecurity, AdminSource};
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

/// Binds `addr` and serves until `shutdown` is cancelled (under TLS and with `/metrics`
/// behind bearer tokens when `security` says so); returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    security: &AdminSecurity,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), AdminError> {
    let refused = metrics.admin_unauthenticated.clone();
    dlog_core::admin::serve_secure(addr, metrics, security, refused, shutdown.cancelled_owned())
        .await
}
