//! The error of building the telemetry pipeline, shared by the builder, the resolved settings
//! and the export workers.

/// A setting was invalid, or a part of the pipeline could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Neither the builder, `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` named the service.
    #[error("no service name: pass one to Telemetry::builder, or set OTEL_SERVICE_NAME")]
    MissingServiceName,
    /// The endpoint is not an `http://host:port` or `https://host:port` URI.
    #[error("OTLP endpoint `{endpoint}` (from {source_name}) is invalid: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Where it came from: `with_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
        source_name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `OTEL_RESOURCE_ATTRIBUTES` holds an entry that is not `key=value`.
    #[error("OTEL_RESOURCE_ATTRIBUTES entry `{entry}` is invalid: {reason}")]
    InvalidResourceAttributes {
        /// The offending entry.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The filter directives do not parse.
    #[error("filter directives `{directives}` (from {source_name}) are invalid: {reason}")]
    InvalidEnvFilter {
        /// The directives as given.
        directives: String,
        /// Where they came from: `with_env_filter` or `RUST_LOG`.
        source_name: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// A numeric setting is out of range.
    #[error("setting `{setting}` is invalid: {reason}")]
    InvalidSetting {
        /// The builder method.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP {signal} exporter for {endpoint}: {reason}")]
    Exporter {
        /// `spans` or `logs`.
        signal: &'static str,
        /// The endpoint.
        endpoint: String,
        /// The exporter's message.
        reason: String,
    },
    /// The export worker's runtime could not be created.
    #[error("cannot create the export worker's Tokio runtime: {0}")]
    Runtime(std::io::Error),
    /// A background thread could not be spawned.
    #[error("cannot spawn a telemetry thread: {0}")]
    Thread(std::io::Error),
    /// An export worker exited while starting.
    #[error("the {0} export worker exited while starting")]
    WorkerDied(&'static str),
}
