//! `distributed_logger`: what a service links to send its traces, logs and liveness to dlog.
//!
//! One builder call sets a service up. It installs a `tracing` subscriber in which
//! `#[instrument]` spans become OTLP spans (`tracing-opentelemetry`) and `tracing` events
//! become OTLP log records (`opentelemetry-appender-tracing`) carrying the active trace and
//! span ids, plus an `EnvFilter` and an optional human-readable stderr layer. Everything is
//! exported over OTLP/gRPC to the collector bridge (or any OpenTelemetry collector).
//!
//! On top of that:
//! * [`DistributedLogger`]: `info`, `warn` (response time against a threshold), `error`
//!   (code, message, dependent service), extra fields on any, `log_service_call`, and
//!   `shutdown()`, which flushes traces and logs within a deadline and returns a
//!   [`ShutdownReport`] of what could not be delivered (the guard does the same on drop);
//! * registration (UP at start, DOWN at shutdown) and a heartbeat every interval, as OTLP log
//!   events `service.registration` / `service.heartbeat` ([`dlog_core::names`]);
//! * W3C trace context for HTTP headers and gRPC metadata ([`propagation`]), an axum
//!   middleware and a reqwest helper ([`http`]);
//! * bounded queues that never block the application: with the collector gone, records are
//!   dropped once a queue is full, counted in [`Telemetry::stats`], announced by one warning,
//!   and export resumes by itself when the collector returns.
//!
//! The resource carries `service.name`, `service.version`, `service.instance.id` (a UUID unless
//! configured) and `service.dependencies`, the declared dependencies as an OTLP string array.
//!
//! ```no_run
//! use std::time::Duration;
//! use distributed_logger::Telemetry;
//!
//! #[tracing::instrument(skip(logger))]
//! fn checkout(logger: &distributed_logger::DistributedLogger, order: u64) {
//!     tracing::info!(order, "checking out");
//!     logger.warn("payment slow", 850, 500);
//!     logger.error("payment failed", "PAY-502", "gateway timeout", Some("payments"));
//!     logger.log_service_call("payments", false, Duration::from_millis(850));
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (_guard, logger) = Telemetry::builder("checkout")
//!         .with_version(env!("CARGO_PKG_VERSION"))
//!         .with_dependencies(["payments", "inventory"])
//!         .with_endpoint("http://127.0.0.1:4317")
//!         .with_heartbeat_interval(Duration::from_secs(10))
//!         .init()?;
//!     checkout(&logger, 42);
//!     // DOWN event, then traces and logs flushed within the shutdown deadline. The same as
//!     // `guard.shutdown()` or dropping the guard; whichever comes first does it, and later
//!     // calls return the same report.
//!     let report = logger.shutdown();
//!     if !report.is_complete() {
//!         eprintln!("telemetry not fully delivered: {report}");
//!     }
//!     Ok(())
//! }
//! ```
//!
//! To run two services in one process (tests), skip `install` and give each its own
//! subscriber with [`Telemetry::dispatch`] and `tracing::dispatcher::set_default` per thread.

pub mod filter;
pub mod http;
pub mod propagation;

mod announce;
mod builder;
mod error;
mod export;
mod lifecycle;
mod logger;
mod settings;
mod telemetry;

pub use builder::{
    TelemetryBuilder, DEFAULT_ENV_FILTER, DEFAULT_EXPORT_INTERVAL, DEFAULT_EXPORT_TIMEOUT,
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MAX_CONCURRENT_EXPORTS, DEFAULT_MAX_EXPORT_BATCH,
    DEFAULT_QUEUE_CAPACITY, DEFAULT_SHUTDOWN_TIMEOUT, ENV_BLRP_MAX_CONCURRENT_EXPORTS,
    ENV_BSP_MAX_CONCURRENT_EXPORTS, ENV_LOG_FILTER, ENV_OTLP_CERTIFICATE, ENV_OTLP_ENDPOINT,
    ENV_OTLP_HEADERS, ENV_OTLP_LOGS_HEADERS, ENV_OTLP_TRACES_HEADERS, ENV_RESOURCE_ATTRIBUTES,
    ENV_SERVICE_NAME, MAX_CONCURRENT_EXPORTS_LIMIT, MIN_HEARTBEAT_INTERVAL,
};
pub use error::BuildError;
pub use lifecycle::{ShutdownReport, Stats};
pub use logger::{DistributedLogger, FieldValue, LogEvent};
pub use telemetry::{InstallError, Telemetry, TelemetryGuard};

/// The record contract's names (attributes, events, topics), re-exported from `dlog-core`.
pub use dlog_core::names;
/// Re-exported so that users name levels without a direct `tracing` dependency.
pub use tracing::Level;
