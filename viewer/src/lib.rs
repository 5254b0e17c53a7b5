//! The dlog viewer: the web UI and the Jaeger-compatible query API, over the [`Store`] trait
//! only, so it reads the embedded store and Elasticsearch alike.
//!
//! - Jaeger's query API under `/api/` (what Jaeger UI and Grafana's Jaeger data source call),
//!   see [`jaeger`];
//! - dlog's own API under `/api/v1/` (log search and live tail, trace windows, alerts,
//!   status, declared versus observed dependencies), see [`api`];
//! - the UI pages `/search`, `/trace/{traceID}`, `/dependencies`, `/logs`, `/alerts`, whose
//!   files are compiled in ([`assets`]).
//!
//! ```no_run
//! # async fn example(store: std::sync::Arc<dyn dlog_storage::Store>) -> Result<(), dlog_viewer::ViewerError> {
//! let viewer = dlog_viewer::start(dlog_viewer::ViewerConfig::default(), store).await?;
//! println!("open http://{}/search", viewer.addr());
//! viewer.shutdown().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod assets;
pub mod auth;
pub mod jaeger;
pub mod params;
pub mod silences;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{delete, get, post};
use axum::Router;
use dlog_core::listen::{self, ConnectionLimits};
use dlog_storage::Store;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The Content-Security-Policy of every response: scripts, styles and data from this origin
/// only; no inline script, no plugins, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Default poll interval of a live tail.
pub const DEFAULT_TAIL_POLL: Duration = Duration::from_millis(500);
/// Default grace of a live tail: each poll re-reads the records stamped this long before the
/// clock, so a record stored up to this late (a batch of another service, an Elasticsearch
/// refresh) still reaches the tail.
pub const DEFAULT_TAIL_GRACE: Duration = Duration::from_secs(2);
/// Default number of live tails open at once.
pub const DEFAULT_MAX_TAILS: usize = 32;
/// Default bound on the JSON of one Jaeger API answer holding traces, bytes (64 MiB).
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Smallest byte bound the binaries accept for a Jaeger answer (64 KiB).
pub const MIN_MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How the routes behave.
#[derive(Debug, Clone)]
pub struct ViewerOptions {
    /// How often a live tail asks the store for new records.
    pub tail_poll: Duration,
    /// How late a record may be stored (after the wall clock passed its time) and still reach
    /// a live tail: every poll re-reads this trailing window, skipping what it already sent.
    pub tail_grace: Duration,
    /// Live tails open at once; more are answered 503.
    pub max_tails: usize,
    /// Bytes of span and process JSON one Jaeger answer (`/api/traces`,
    /// `/api/traces/{id}`) may carry: a trace past it is cut with a warning, and later
    /// traces of a search are left out.
    pub max_answer_bytes: usize,
}

impl Default for ViewerOptions {
    fn default() -> Self {
        ViewerOptions {
            tail_poll: DEFAULT_TAIL_POLL,
            tail_grace: DEFAULT_TAIL_GRACE,
            max_tails: DEFAULT_MAX_TAILS,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store read from.
    pub store: Arc<dyn Store>,
    /// Route behaviour.
    pub options: ViewerOptions,
    /// Free live-tail slots.
    pub tail_slots: Arc<Semaphore>,
    /// Tokens and sessions.
    pub access: auth::Access,
    /// Cancelled when the viewer stops: live tails end.
    pub closing: CancellationToken,
}

/// The viewer's routes over `store`, behind `access`.
pub fn router(store: Arc<dyn Store>, options: ViewerOptions, access: auth::Access) -> Router {
    router_until(store, options, access, CancellationToken::new())
}

/// [`router`], whose live tails end when `closing` is cancelled.
pub fn router_until(
    store: Arc<dyn Store>,
    options: ViewerOptions,
    access: auth::Access,
    closing: CancellationToken,
) -> Router {
    let state = AppState {
        store,
        tail_slots: Arc::new(Semaphore::new(options.max_tails)),
        options,
        access,
        closing,
    };
    Router::new()
        // Jaeger's query API.
        .route("/api/services", get(jaeger::services))
        .route(
            "/api/services/{service}/operations",
            get(jaeger::service_operations),
        )
        .route("/api/operations", get(jaeger::operations))
        .route("/api/traces", get(jaeger::search))
        .route("/api/traces/{trace_id}", get(jaeger::get_trace))
        .route("/api/dependencies", get(jaeger::dependencies))
        // dlog's own API.
        .route("/api/v1/traces", get(api::find_traces))
        .route("/api/v1/traces/{trace_id}/spans", get(api::trace_spans))
        .route("/api/v1/logs", get(api::search_logs))
        .route("/api/v1/logs/tail", get(api::tail_logs))
        .route("/api/v1/alerts", get(api::alerts))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/dependencies", get(api::dependencies))
        .route(
            "/api/v1/silences",
            get(silences::list).post(silences::create),
        )
        .route("/api/v1/silences/{id}", delete(silences::delete))
        .route("/api/v1/acks", post(silences::ack))
        .route("/api/v1/whoami", get(silences::whoami))
        .route("/api/{*rest}", get(api_not_found))
        // Pages, and the files they load.
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/search") }),
        )
        .route("/search", get(assets::index))
        .route("/trace/{trace_id}", get(assets::index))
        .route("/dependencies", get(assets::index))
        .route("/logs", get(assets::index))
        .route("/alerts", get(assets::index))
        .route("/static/app.js", get(assets::app_js))
        .route("/static/app.css", get(assets::app_css))
        .route("/static/favicon.svg", get(assets::favicon))
        .route("/favicon.ico", get(assets::favicon))
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/logout", post(auth::logout))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(axum::middleware::from_fn(auth::security_headers))
        .with_state(state)
}

async fn api_not_found() -> params::ApiError {
    params::ApiError::not_found("no such API route")
}

/// Settings of the viewer's listener.
#[derive(Debug, Clone)]
pub struct ViewerConfig {
    /// Listen address. Default 127.0.0.1:16686.
    pub listen: SocketAddr,
    /// File of bearer tokens (one per line), the same file the receivers take. None: open.
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain: the viewer speaks HTTPS only. None: plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Open connections at once. Default 256.
    pub max_connections: usize,
    /// Route behaviour.
    pub options: ViewerOptions,
}

impl Default for ViewerConfig {
    fn default() -> Self {
        ViewerConfig {
            listen: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                dlog_core::names::VIEWER_PORT,
            ),
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            max_connections: 256,
            options: ViewerOptions::default(),
        }
    }
}

/// The viewer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// The token file could not be loaded.
    #[error("viewer auth_token_file: {0}")]
    Tokens(#[from] auth::TokenFileError),
    /// The TLS files could not be loaded.
    #[error("viewer tls_cert / tls_key: {0}")]
    Tls(String),
    /// The address could not be bound.
    #[error("cannot listen on viewer address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running viewer.
pub struct RunningViewer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl RunningViewer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes open requests (live tails end) and returns.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Binds and serves the viewer over `store`. Returns once the listener is bound.
pub async fn start(
    config: ViewerConfig,
    store: Arc<dyn Store>,
) -> Result<RunningViewer, ViewerError> {
    let tokens = auth::ViewerTokens::load(config.auth_token_file.as_deref())?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(
            listen::tls::acceptor(
                &listen::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: None,
                },
                listen::tls::ALPN_H2_AND_HTTP1,
            )
            .map_err(|e| ViewerError::Tls(e.to_string()))?,
        ),
        (None, None) => None,
        _ => {
            return Err(ViewerError::Tls(
                "give both tls_cert and tls_key, or neither".into(),
            ))
        }
    };
    let access = auth::Access::new(tokens, tls.is_some());
    let stop = CancellationToken::new();
    let mut app = router_until(store, config.options.clone(), access, stop.clone());
    if config.listen.ip().is_loopback() {
        app = app.layer(axum::middleware::from_fn(auth::loopback_host_only));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ViewerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ViewerError::Bind {
        addr: config.listen,
        source,
    })?;
    let limits = ConnectionLimits {
        max_connections: config.max_connections,
        header_read_timeout: Duration::from_secs(10),
        keepalive_interval: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(20),
        max_concurrent_streams: 100,
    };
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            listen::serve_http("viewer", listener, app, limits, tls, stop.cancelled_owned()).await
        }
    });
    tracing::info!(%addr, "viewer listening");
    Ok(RunningViewer { addr, stop, task })
}
