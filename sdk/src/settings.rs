//! The settings the builder resolves and [`Telemetry::start`](crate::Telemetry) works from.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::Targets;

use crate::error::BuildError;
use crate::export::{BoundedLogProcessor, BoundedSpanProcessor, Diagnostics, QueueConfig};

pub(crate) type SpanWorkerFactory = Box<
    dyn FnOnce(&QueueConfig, Arc<Diagnostics>) -> Result<BoundedSpanProcessor, BuildError> + Send,
>;
pub(crate) type LogWorkerFactory = Box<
    dyn FnOnce(&QueueConfig, Arc<Diagnostics>) -> Result<BoundedLogProcessor, BuildError> + Send,
>;

/// The resolved settings [`Telemetry::start`] works from.
pub(crate) struct Settings {
    pub service_name: String,
    pub instance_id: String,
    pub dependencies: Vec<String>,
    pub endpoint: String,
    pub headers: Arc<[Header]>,
    /// PEM of the CA certificate(s) an `https://` collector must chain to.
    pub ca_certificate: Option<Vec<u8>>,
    pub heartbeat_interval: Duration,
    pub stderr: bool,
    pub level_filter: LevelFilter,
    pub span_queue: QueueConfig,
    pub log_queue: QueueConfig,
    pub shutdown_timeout: Duration,
    pub gzip: bool,
    pub tracked_inactivity: bool,
    pub resource: Resource,
    pub span_exporter: Option<SpanWorkerFactory>,
    pub log_exporter: Option<LogWorkerFactory>,
}

/// One export header, validated.
pub(crate) type Header = (
    tonic::metadata::AsciiMetadataKey,
    tonic::metadata::AsciiMetadataValue,
);

/// The `EnvFilter`-syntax directives, in the cheapest filter that can evaluate them.
#[allow(clippy::large_enum_variant)] // Built once per service, moved once.
pub(crate) enum LevelFilter {
    /// Only `target=level` directives.
    Static(Targets),
    /// Directives that match on spans or fields.
    Dynamic(tracing_subscriber::EnvFilter),
}
