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

/// TLS and bearer-token settings of an admin listener: a stage's `tls_cert`, `tls_key`,
/// `tls_client_ca` and `auth_token_file` keys.
#[cfg(feature = "listen")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminSecurity {
    /// PEM certificate chain (leaf first); with `tls_key`, the listener speaks TLS only.
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificates: every client must present a certificate they issued (mTLS).
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// File of accepted bearer tokens for `/metrics` (one per line); `/healthz` stays open.
    pub auth_token_file: Option<std::path::PathBuf>,
}

/// The admin listener could not start.
#[cfg(feature = "listen")]
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error("cannot listen on admin address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS or token setting is wrong: its key and why.
    #[error("{key}: {reason}")]
    Setting {
        /// The settings key (`tls_cert`, `tls_key`, `tls_client_ca`, `auth_token_file`).
        key: &'static str,
        /// Why.
        reason: String,
    },
}

#[cfg(feature = "listen")]
impl AdminSecurity {
    /// Checks that the settings fit together (without reading the files): the key of the
    /// first problem and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(("tls_key", "must be set with tls_cert".into())),
            (None, Some(_)) => return Err(("tls_cert", "must be set with tls_key".into())),
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(("tls_client_ca", "needs tls_cert and tls_key".into()));
        }
        Ok(())
    }

    /// The listener's TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::listen::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::listen::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_files().is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Connection limits of an admin listener: a handful of scrapers and probes.
#[cfg(feature = "listen")]
pub const ADMIN_LIMITS: crate::listen::ConnectionLimits = crate::listen::ConnectionLimits {
    max_connections: 64,
    header_read_timeout: std::time::Duration::from_secs(10),
    keepalive_interval: std::time::Duration::from_secs(30),
    keepalive_timeout: std::time::Duration::from_secs(10),
    max_concurrent_streams: 16,
};

/// [`serve`] through the shared listener layer ([`crate::listen`]): under TLS when
/// `security` names a certificate (HTTP/2 and HTTP/1.1 by ALPN), with `/metrics` behind the
/// bearer tokens of `auth_token_file` when set (refusals counted in `refused`), and under
/// [`ADMIN_LIMITS`]. The files are read here, so a bad one fails the start, naming its key.
#[cfg(feature = "listen")]
pub async fn serve_secure(
    addr: SocketAddr,
    source: Arc<dyn AdminSource>,
    security: &AdminSecurity,
    refused: prometheus_client::metrics::counter::Counter,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), AdminError> {
    use crate::listen;

    security
        .check()
        .map_err(|(key, reason)| AdminError::Setting { key, reason })?;
    let tls = security
        .tls_files()
        .map(|files| listen::tls::acceptor(&files, listen::tls::ALPN_H2_AND_HTTP1))
        .transpose()
        .map_err(|e| AdminError::Setting {
            key: match e {
                listen::TlsError::ClientCa { .. } => "tls_client_ca",
                listen::TlsError::File {
                    what: "client CA", ..
                } => "tls_client_ca",
                listen::TlsError::File {
                    what: "private key",
                    ..
                } => "tls_key",
                _ => "tls_cert",
            },
            reason: e.to_string(),
        })?;
    let tokens = listen::Tokens::load(None, security.auth_token_file.as_deref()).map_err(|e| {
        AdminError::Setting {
            key: "auth_token_file",
            reason: e.to_string(),
        }
    })?;
    let app = router_with_auth(source, listen::BearerAuth::new(tokens, refused));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    let task = tokio::spawn(async move {
        if let Err(e) =
            listen::serve_http("admin", listener, app, ADMIN_LIMITS, tls, shutdown).await
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
