//! [`TelemetryBuilder`]: every setting, its default, and where environment variables fill in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::logs::LogExporter;
use opentelemetry_sdk::trace::SpanExporter;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::Targets;

use crate::error::BuildError;
use crate::export::{BoundedLogProcessor, BoundedSpanProcessor, QueueConfig};
use crate::logger::DistributedLogger;
use crate::names;
use crate::settings::{Header, LevelFilter, LogWorkerFactory, Settings, SpanWorkerFactory};
use crate::telemetry::{InstallError, Telemetry, TelemetryGuard};

/// Environment variable: the OTLP/gRPC endpoint, when [`TelemetryBuilder::with_endpoint`] is not called.
pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Environment variable: the service name, when the builder is given an empty name.
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// Environment variable: `key=value,...` resource attributes (values percent-encoded).
pub const ENV_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// Environment variable: the filter directives, when [`TelemetryBuilder::with_env_filter`] is not called.
pub const ENV_LOG_FILTER: &str = "RUST_LOG";
/// Environment variable: `key=value,...` headers sent with every export (values
/// percent-encoded), e.g. `authorization=Bearer%20token`. Read by the OTLP exporter, and checked
/// by `build()`.
pub const ENV_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// Environment variable: headers for span exports only (replaces `OTEL_EXPORTER_OTLP_HEADERS`).
pub const ENV_OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// Environment variable: headers for log exports only (replaces `OTEL_EXPORTER_OTLP_HEADERS`).
pub const ENV_OTLP_LOGS_HEADERS: &str = "OTEL_EXPORTER_OTLP_LOGS_HEADERS";
/// Environment variable: path of a PEM file of the CA certificate(s) that an `https://`
/// collector's certificate must chain to, when [`TelemetryBuilder::with_ca_certificate_file`]
/// is not called. Without either, the system's trusted roots are used.
pub const ENV_OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
/// Environment variable: span exports in flight at once, when
/// [`TelemetryBuilder::with_max_concurrent_exports`] is not called (the name the OpenTelemetry
/// Rust SDK uses).
pub const ENV_BSP_MAX_CONCURRENT_EXPORTS: &str = "OTEL_BSP_MAX_CONCURRENT_EXPORTS";
/// Environment variable: log exports in flight at once, when
/// [`TelemetryBuilder::with_max_concurrent_exports`] is not called.
pub const ENV_BLRP_MAX_CONCURRENT_EXPORTS: &str = "OTEL_BLRP_MAX_CONCURRENT_EXPORTS";

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Default capacity of each of the span and log queues.
pub const DEFAULT_QUEUE_CAPACITY: usize = 2048;
/// Default largest batch per export call.
pub const DEFAULT_MAX_EXPORT_BATCH: usize = 512;
/// Default number of export calls in flight at once, per signal.
pub const DEFAULT_MAX_CONCURRENT_EXPORTS: usize = 4;
/// Largest accepted number of export calls in flight at once, per signal.
pub const MAX_CONCURRENT_EXPORTS_LIMIT: usize = 64;
/// Default longest wait of a record in the queue before it is exported.
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Default time budget of one export call, retries included.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline of [`Telemetry::shutdown`](crate::Telemetry::shutdown).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default filter directives when neither the builder nor `RUST_LOG` gives any.
pub const DEFAULT_ENV_FILTER: &str = "info";
/// Shortest heartbeat interval accepted (shorter would flood the pipeline).
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// Builds a [`Telemetry`]: the service's identity, where it exports, and how it behaves when
/// the collector is slow or gone. See the crate docs for an example.
///
/// Precedence for every setting: an explicit builder call, then the environment variable,
/// then the default.
#[must_use = "a builder does nothing until build() or init()"]
pub struct TelemetryBuilder {
    service_name: String,
    version: Option<String>,
    instance_id: Option<String>,
    dependencies: Option<Vec<String>>,
    endpoint: Option<String>,
    headers: Vec<(String, String)>,
    ca_certificate_file: Option<std::path::PathBuf>,
    heartbeat_interval: Duration,
    stderr: bool,
    env_filter: Option<String>,
    queue_capacity: usize,
    max_export_batch: usize,
    max_concurrent_exports: Option<usize>,
    export_interval: Duration,
    export_timeout: Duration,
    shutdown_timeout: Duration,
    gzip: bool,
    tracked_inactivity: bool,
    resource_attributes: Vec<KeyValue>,
    span_exporter: Option<SpanWorkerFactory>,
    log_exporter: Option<LogWorkerFactory>,
}

impl std::fmt::Debug for TelemetryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryBuilder")
            .field("service_name", &self.service_name)
            .field("version", &self.version)
            .field("instance_id", &self.instance_id)
            .field("dependencies", &self.dependencies)
            .field("endpoint", &self.endpoint)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("stderr", &self.stderr)
            .field("env_filter", &self.env_filter)
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts configuring a service's telemetry. An empty name defers to `OTEL_SERVICE_NAME`
    /// (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn builder(service_name: impl Into<String>) -> TelemetryBuilder {
        TelemetryBuilder::new(service_name.into())
    }
}

impl TelemetryBuilder {
    pub(crate) fn new(service_name: String) -> Self {
        TelemetryBuilder {
            service_name,
            version: None,
            instance_id: None,
            dependencies: None,
            endpoint: None,
            headers: Vec::new(),
            ca_certificate_file: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            stderr: true,
            env_filter: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_export_batch: DEFAULT_MAX_EXPORT_BATCH,
            max_concurrent_exports: None,
            export_interval: DEFAULT_EXPORT_INTERVAL,
            export_timeout: DEFAULT_EXPORT_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            gzip: false,
            tracked_inactivity: false,
            resource_attributes: Vec::new(),
            span_exporter: None,
            log_exporter: None,
        }
    }

    /// `service.version`. Default: `service.version` from `OTEL_RESOURCE_ATTRIBUTES`, else unset.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// `service.instance.id`. Default: from `OTEL_RESOURCE_ATTRIBUTES`, else a random UUID.
    pub fn with_instance_id(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = Some(instance_id.into());
        self
    }

    /// The services this one calls, published as the `service.dependencies` resource attribute
    /// (an OTLP string array). Default: from `OTEL_RESOURCE_ATTRIBUTES` (comma-separated,
    /// percent-encoded: `service.dependencies=a%2Cb`), else none.
    pub fn with_dependencies<I, S>(mut self, dependencies: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.dependencies = Some(dependencies.into_iter().map(Into::into).collect());
        self
    }

    /// OTLP/gRPC endpoint, `http://host:port`, or `https://host:port` for TLS (rustls, verified
    /// against [`with_ca_certificate_file`](Self::with_ca_certificate_file) or the system's
    /// roots). Default: `OTEL_EXPORTER_OTLP_ENDPOINT`, else `http://127.0.0.1:4317`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// A header (gRPC metadata) sent with every export, e.g. `("authorization", "Bearer
    /// token")` for a collector that requires a token. May be called several times. Headers from
    /// `OTEL_EXPORTER_OTLP_HEADERS` (or the `_TRACES_`/`_LOGS_` variants) are sent too; for
    /// the same key, this call wins. Default: none.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// A PEM file of the CA certificate(s) that an `https://` collector's certificate must chain
    /// to (instead of the system's roots), read at `build()`. Default:
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`, else the system's trusted roots. Not used with
    /// `http://`.
    pub fn with_ca_certificate_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_certificate_file = Some(path.into());
        self
    }

    /// How often a heartbeat event is sent. Default 10 s; at least 10 ms.
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Whether a human-readable log layer writes to stderr. Default: on.
    pub fn with_stderr(mut self, enabled: bool) -> Self {
        self.stderr = enabled;
        self
    }

    /// `EnvFilter` directives (`info,my_crate=debug`). Default: `RUST_LOG`, else `info`.
    pub fn with_env_filter(mut self, directives: impl Into<String>) -> Self {
        self.env_filter = Some(directives.into());
        self
    }

    /// Capacity of each of the span and log queues; records beyond it are dropped and counted.
    /// Default 2048.
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Largest number of records per export call. Default 512 (capped at the queue capacity).
    pub fn with_max_export_batch(mut self, records: usize) -> Self {
        self.max_export_batch = records;
        self
    }

    /// Export calls each of the span and log queues keeps in flight at once. Default 4
    /// (`OTEL_BSP_MAX_CONCURRENT_EXPORTS` for spans and `OTEL_BLRP_MAX_CONCURRENT_EXPORTS` for
    /// logs when not called); 1 to 64. A collector answering in `t` seconds takes up to
    /// `n × max_export_batch / t` records per second from each queue, and up to
    /// `n × max_export_batch` records per queue are held in flight beside the queue itself.
    pub fn with_max_concurrent_exports(mut self, exports: usize) -> Self {
        self.max_concurrent_exports = Some(exports);
        self
    }

    /// Longest time a record waits in the queue before it is exported. Default 1 s.
    pub fn with_export_interval(mut self, interval: Duration) -> Self {
        self.export_interval = interval;
        self
    }

    /// Time budget of one export call, the exporter's retries included. Default 10 s.
    pub fn with_export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = timeout;
        self
    }

    /// Deadline of shutdown (DOWN event, then flushing spans and logs). Default 5 s.
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Gzip-compress OTLP requests. Default: off (the collector is usually local).
    pub fn with_gzip(mut self, enabled: bool) -> Self {
        self.gzip = enabled;
        self
    }

    /// Record `busy_ns`/`idle_ns` on every span (costs two clock reads per enter/exit).
    /// Default: off.
    pub fn with_tracked_inactivity(mut self, enabled: bool) -> Self {
        self.tracked_inactivity = enabled;
        self
    }

    /// An extra resource attribute (for example `deployment.environment.name`).
    pub fn with_resource_attribute(
        mut self,
        key: impl Into<opentelemetry::Key>,
        value: impl Into<Value>,
    ) -> Self {
        self.resource_attributes.push(KeyValue::new(key, value));
        self
    }

    /// Exports spans through `exporter` instead of OTLP/gRPC (tests, benchmarks, other sinks).
    /// It is still driven by the SDK's bounded processor.
    pub fn with_span_exporter<E: SpanExporter + 'static>(mut self, exporter: E) -> Self {
        self.span_exporter = Some(Box::new(move |config: &QueueConfig, diagnostics| {
            BoundedSpanProcessor::spawn(config, diagnostics, move || Ok(exporter))
        }));
        self
    }

    /// Exports logs through `exporter` instead of OTLP/gRPC (tests, benchmarks, other sinks).
    pub fn with_log_exporter<E: LogExporter + 'static>(mut self, exporter: E) -> Self {
        self.log_exporter = Some(Box::new(move |config: &QueueConfig, diagnostics| {
            BoundedLogProcessor::spawn(config, diagnostics, move || Ok(exporter))
        }));
        self
    }

    /// Validates the settings, starts the export workers and the heartbeat, and returns the
    /// running [`Telemetry`] without installing it as the global subscriber.
    pub fn build(self) -> Result<Telemetry, BuildError> {
        let settings = self.resolve(&Env::from_process())?;
        Telemetry::start(settings)
    }

    /// [`build`](Self::build), then [`Telemetry::install`]: the one call a service makes.
    pub fn init(self) -> Result<(TelemetryGuard, DistributedLogger), InstallError> {
        self.build()?.install()
    }

    fn resolve(self, env: &Env) -> Result<Settings, BuildError> {
        let env_attrs = match &env.resource_attributes {
            Some(raw) => parse_resource_attributes(raw)?,
            None => BTreeMap::new(),
        };
        let service_name = [
            Some(self.service_name.trim().to_string()),
            env.service_name.clone(),
            env_attrs.get(names::SERVICE_NAME).cloned(),
        ]
        .into_iter()
        .flatten()
        .find(|name| !name.is_empty())
        .ok_or(BuildError::MissingServiceName)?;
        let version = self
            .version
            .or_else(|| env_attrs.get(names::SERVICE_VERSION).cloned());
        let instance_id = self
            .instance_id
            .or_else(|| env_attrs.get(names::SERVICE_INSTANCE_ID).cloned())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let dependencies = self.dependencies.unwrap_or_else(|| {
            env_attrs
                .get(names::SERVICE_DEPENDENCIES)
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        });

        let (endpoint, endpoint_source) = match (self.endpoint, &env.otlp_endpoint) {
            (Some(endpoint), _) => (endpoint, "with_endpoint"),
            (None, Some(endpoint)) if !endpoint.trim().is_empty() => {
                (endpoint.trim().to_string(), ENV_OTLP_ENDPOINT)
            }
            (None, _) => (names::DEFAULT_OTLP_ENDPOINT.to_string(), "the default"),
        };
        validate_endpoint(&endpoint, endpoint_source)?;
        let headers = self
            .headers
            .iter()
            .map(|(key, value)| header(key, value, "with_header"))
            .collect::<Result<Vec<_>, _>>()?;
        // The exporter reads these itself and skips entries it cannot use; a token that is
        // silently not sent is worth an error at start.
        for (name, raw) in &env.otlp_headers {
            parse_headers(raw, name)?;
        }
        let ca_certificate = match (self.ca_certificate_file, &env.otlp_certificate) {
            (Some(path), _) => Some(read_ca_certificate(&path, "with_ca_certificate_file")?),
            (None, Some(path)) if !path.trim().is_empty() => Some(read_ca_certificate(
                std::path::Path::new(path.trim()),
                ENV_OTLP_CERTIFICATE,
            )?),
            (None, _) => None,
        };

        let (filter, filter_source) = match (self.env_filter, &env.log_filter) {
            (Some(filter), _) => (filter, "with_env_filter"),
            (None, Some(filter)) if !filter.trim().is_empty() => (filter.clone(), ENV_LOG_FILTER),
            (None, _) => (DEFAULT_ENV_FILTER.to_string(), "the default"),
        };
        let env_filter = tracing_subscriber::EnvFilter::builder()
            .parse(&filter)
            .map_err(|e| BuildError::InvalidEnvFilter {
                directives: filter.clone(),
                source_name: filter_source,
                reason: e.to_string(),
            })?;
        // Directives without span or field matchers (`[..]`, `{..}`) are static: the cheaper
        // `Targets` filter decides them per call site, while `EnvFilter` also takes a lock on
        // every span enter and exit to track span scopes.
        let level_filter = match filter.parse::<Targets>() {
            Ok(targets) if !filter.contains(['[', '{']) => LevelFilter::Static(targets),
            _ => LevelFilter::Dynamic(env_filter),
        };

        if self.heartbeat_interval < MIN_HEARTBEAT_INTERVAL {
            return Err(BuildError::InvalidSetting {
                setting: "with_heartbeat_interval",
                reason: format!(
                    "{:?} is shorter than the minimum {MIN_HEARTBEAT_INTERVAL:?}",
                    self.heartbeat_interval
                ),
            });
        }
        if self.queue_capacity == 0 {
            return Err(BuildError::InvalidSetting {
                setting: "with_queue_capacity",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_export_batch == 0 {
            return Err(BuildError::InvalidSetting {
                setting: "with_max_export_batch",
                reason: "must be at least 1".into(),
            });
        }
        let concurrent = |env_value: &Option<String>, env_name: &'static str| {
            let (value, source) = match (self.max_concurrent_exports, env_value) {
                (Some(value), _) => (value, "with_max_concurrent_exports"),
                (None, Some(raw)) if !raw.trim().is_empty() => (
                    raw.trim()
                        .parse::<usize>()
                        .map_err(|e| BuildError::InvalidSetting {
                            setting: env_name,
                            reason: format!("`{raw}` is not a count: {e}"),
                        })?,
                    env_name,
                ),
                (None, _) => (DEFAULT_MAX_CONCURRENT_EXPORTS, "the default"),
            };
            if !(1..=MAX_CONCURRENT_EXPORTS_LIMIT).contains(&value) {
                return Err(BuildError::InvalidSetting {
                    setting: source,
                    reason: format!("{value} is not between 1 and {MAX_CONCURRENT_EXPORTS_LIMIT}"),
                });
            }
            Ok(value)
        };
        let span_exports = concurrent(
            &env.bsp_max_concurrent_exports,
            ENV_BSP_MAX_CONCURRENT_EXPORTS,
        )?;
        let log_exports = concurrent(
            &env.blrp_max_concurrent_exports,
            ENV_BLRP_MAX_CONCURRENT_EXPORTS,
        )?;
        for (setting, value) in [
            ("with_export_interval", self.export_interval),
            ("with_export_timeout", self.export_timeout),
            ("with_shutdown_timeout", self.shutdown_timeout),
        ] {
            if value.is_zero() {
                return Err(BuildError::InvalidSetting {
                    setting,
                    reason: "must be longer than zero".into(),
                });
            }
        }

        // Resource: SDK identity, then OTEL_RESOURCE_ATTRIBUTES, then explicit settings, so
        // that later entries (the explicit ones) win.
        let mut attributes: Vec<KeyValue> = env_attrs
            .iter()
            .filter(|(key, _)| {
                ![
                    names::SERVICE_NAME,
                    names::SERVICE_VERSION,
                    names::SERVICE_INSTANCE_ID,
                    names::SERVICE_DEPENDENCIES,
                ]
                .contains(&key.as_str())
            })
            .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
            .collect();
        attributes.extend(self.resource_attributes);
        attributes.push(KeyValue::new(names::SERVICE_NAME, service_name.clone()));
        if let Some(version) = &version {
            attributes.push(KeyValue::new(names::SERVICE_VERSION, version.clone()));
        }
        attributes.push(KeyValue::new(
            names::SERVICE_INSTANCE_ID,
            instance_id.clone(),
        ));
        attributes.push(KeyValue::new(
            names::SERVICE_DEPENDENCIES,
            dependency_array(&dependencies),
        ));
        let resource = Resource::builder_empty()
            .with_detector(Box::new(
                opentelemetry_sdk::resource::TelemetryResourceDetector,
            ))
            .with_attributes(attributes)
            .build();

        Ok(Settings {
            service_name,
            instance_id,
            dependencies,
            endpoint,
            headers: Arc::from(headers),
            ca_certificate,
            heartbeat_interval: self.heartbeat_interval,
            stderr: self.stderr,
            level_filter,
            span_queue: QueueConfig {
                capacity: self.queue_capacity,
                max_batch: self.max_export_batch.min(self.queue_capacity),
                interval: self.export_interval,
                export_timeout: self.export_timeout,
                max_concurrent_exports: span_exports,
            },
            log_queue: QueueConfig {
                capacity: self.queue_capacity,
                max_batch: self.max_export_batch.min(self.queue_capacity),
                interval: self.export_interval,
                export_timeout: self.export_timeout,
                max_concurrent_exports: log_exports,
            },
            shutdown_timeout: self.shutdown_timeout,
            gzip: self.gzip,
            tracked_inactivity: self.tracked_inactivity,
            resource,
            span_exporter: self.span_exporter,
            log_exporter: self.log_exporter,
        })
    }
}

/// Validates one header. Errors name the key, never the value (it is usually a secret).
fn header(key: &str, value: &str, source: &'static str) -> Result<Header, BuildError> {
    let invalid = |reason: &str| BuildError::InvalidSetting {
        setting: source,
        reason: format!("header `{}`: {reason}", key.escape_debug()),
    };
    let name = key
        .trim()
        .to_ascii_lowercase()
        .parse::<tonic::metadata::AsciiMetadataKey>()
        .map_err(|_| invalid("not a valid header name"))?;
    if name.as_str().ends_with("-bin") {
        return Err(invalid("binary (-bin) headers are not supported"));
    }
    let value = value
        .trim()
        .parse::<tonic::metadata::AsciiMetadataValue>()
        .map_err(|_| invalid("the value is not a valid header value"))?;
    Ok((name, value))
}

/// Largest CA certificate file read (a bundle of a few hundred certificates fits).
const MAX_CA_CERTIFICATE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads a PEM file of CA certificates, refusing what cannot be one.
fn read_ca_certificate(
    path: &std::path::Path,
    source: &'static str,
) -> Result<Vec<u8>, BuildError> {
    use std::io::Read as _;
    let invalid = |reason: String| BuildError::InvalidSetting {
        setting: source,
        reason: format!("CA certificate file {}: {reason}", path.display()),
    };
    let file = std::fs::File::open(path).map_err(|e| invalid(e.to_string()))?;
    let mut pem = Vec::new();
    file.take(MAX_CA_CERTIFICATE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| invalid(e.to_string()))?;
    if pem.len() as u64 > MAX_CA_CERTIFICATE_BYTES {
        return Err(invalid(format!(
            "larger than {MAX_CA_CERTIFICATE_BYTES} bytes"
        )));
    }
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(pem)
}

/// Parses `key=value,...` with percent-encoded values, as the OTLP exporter reads it.
fn parse_headers(raw: &str, source: &'static str) -> Result<Vec<Header>, BuildError> {
    raw.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let Some((key, value)) = entry.split_once('=') else {
                return Err(BuildError::InvalidSetting {
                    setting: source,
                    reason: format!(
                        "entry `{}` is not key=value",
                        entry.chars().take(40).collect::<String>().escape_debug()
                    ),
                });
            };
            let value = percent_decode(value.trim()).ok_or_else(|| BuildError::InvalidSetting {
                setting: source,
                reason: format!("header `{}`: bad percent-encoding", key.escape_debug()),
            })?;
            header(key, &value, source)
        })
        .collect()
}

/// The declared dependencies as an OTLP string array.
pub(crate) fn dependency_array(dependencies: &[String]) -> Value {
    Value::Array(Array::String(
        dependencies
            .iter()
            .cloned()
            .map(StringValue::from)
            .collect(),
    ))
}

/// The environment variables the builder reads, captured once (and injectable in tests).
#[derive(Debug, Default, Clone)]
pub(crate) struct Env {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub resource_attributes: Option<String>,
    pub log_filter: Option<String>,
    /// The header variables that are set, by name.
    pub otlp_headers: Vec<(&'static str, String)>,
    pub otlp_certificate: Option<String>,
    pub bsp_max_concurrent_exports: Option<String>,
    pub blrp_max_concurrent_exports: Option<String>,
}

impl Env {
    fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok();
        Env {
            otlp_endpoint: var(ENV_OTLP_ENDPOINT),
            service_name: var(ENV_SERVICE_NAME).map(|s| s.trim().to_string()),
            resource_attributes: var(ENV_RESOURCE_ATTRIBUTES),
            log_filter: var(ENV_LOG_FILTER),
            otlp_headers: [
                ENV_OTLP_HEADERS,
                ENV_OTLP_TRACES_HEADERS,
                ENV_OTLP_LOGS_HEADERS,
            ]
            .into_iter()
            .filter_map(|name| Some((name, var(name)?)))
            .collect(),
            otlp_certificate: var(ENV_OTLP_CERTIFICATE),
            bsp_max_concurrent_exports: var(ENV_BSP_MAX_CONCURRENT_EXPORTS),
            blrp_max_concurrent_exports: var(ENV_BLRP_MAX_CONCURRENT_EXPORTS),
        }
    }
}

fn validate_endpoint(endpoint: &str, source_name: &'static str) -> Result<(), BuildError> {
    let invalid = |reason: String| BuildError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        source_name,
        reason,
    };
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(invalid(
                "expected http://host:port or https://host:port".into(),
            ))
        }
    }
    if uri.authority().is_none() {
        return Err(invalid("no host:port".into()));
    }
    Ok(())
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES`: comma-separated `key=value`, values percent-decoded.
pub(crate) fn parse_resource_attributes(raw: &str) -> Result<BTreeMap<String, String>, BuildError> {
    let mut out = BTreeMap::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let invalid = |reason| BuildError::InvalidResourceAttributes {
            entry: entry.to_string(),
            reason,
        };
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| invalid("expected key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(invalid("empty key"));
        }
        let value = percent_decode(value.trim()).ok_or_else(|| invalid("bad percent-encoding"))?;
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(builder: TelemetryBuilder, env: Env) -> Result<Settings, BuildError> {
        builder.resolve(&env)
    }

    fn attr(settings: &Settings, key: &str) -> Option<Value> {
        settings
            .resource
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn explicit_settings_win_over_env_and_env_over_defaults() {
        let env = Env {
            otlp_endpoint: Some("http://10.0.0.1:4317".into()),
            service_name: Some("from-env".into()),
            resource_attributes: Some(
                "service.version=9.9,service.instance.id=env-1,service.dependencies=a%2Cb,team=core".into(),
            ),
            log_filter: Some("debug".into()),
            ..Env::default()
        };
        let s = resolve(TelemetryBuilder::new("".into()), env.clone()).unwrap();
        assert_eq!(s.service_name, "from-env");
        assert_eq!(s.endpoint, "http://10.0.0.1:4317");
        assert_eq!(s.instance_id, "env-1");
        assert_eq!(s.dependencies, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(attr(&s, "service.version"), Some(Value::from("9.9")));
        assert_eq!(attr(&s, "team"), Some(Value::from("core")));

        let s = resolve(
            TelemetryBuilder::new("explicit".into())
                .with_version("1.0")
                .with_instance_id("i-1")
                .with_dependencies(["c"])
                .with_endpoint("http://127.0.0.1:9999"),
            env,
        )
        .unwrap();
        assert_eq!(s.service_name, "explicit");
        assert_eq!(s.endpoint, "http://127.0.0.1:9999");
        assert_eq!(s.instance_id, "i-1");
        assert_eq!(attr(&s, names::SERVICE_NAME), Some(Value::from("explicit")));
        assert_eq!(attr(&s, names::SERVICE_VERSION), Some(Value::from("1.0")));
        assert_eq!(
            attr(&s, names::SERVICE_DEPENDENCIES),
            Some(Value::Array(Array::String(vec![StringValue::from("c")])))
        );
    }

    #[test]
    fn defaults_apply_without_env() {
        let s = resolve(TelemetryBuilder::new("svc".into()), Env::default()).unwrap();
        assert_eq!(s.endpoint, names::DEFAULT_OTLP_ENDPOINT);
        assert_eq!(s.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
        assert!(
            uuid::Uuid::parse_str(&s.instance_id).is_ok(),
            "{}",
            s.instance_id
        );
        assert_eq!(
            attr(&s, names::SERVICE_DEPENDENCIES),
            Some(dependency_array(&[]))
        );
        assert_eq!(attr(&s, names::SERVICE_VERSION), None);
    }

    #[test]
    fn errors_name_the_setting_and_the_source() {
        let err = resolve(TelemetryBuilder::new("".into()), Env::default())
            .err()
            .unwrap();
        assert!(matches!(err, BuildError::MissingServiceName));

        let env = Env {
            otlp_endpoint: Some("localhost:4317".into()),
            ..Env::default()
        };
        let err = resolve(TelemetryBuilder::new("s".into()), env)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && err.contains("localhost:4317"),
            "{err}"
        );

        let err = resolve(
            TelemetryBuilder::new("s".into()).with_env_filter("=="),
            Env::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("with_env_filter"), "{err}");

        let env = Env {
            resource_attributes: Some("novalue".into()),
            ..Env::default()
        };
        let err = resolve(TelemetryBuilder::new("s".into()), env)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("novalue"), "{err}");

        let err = resolve(
            TelemetryBuilder::new("s".into()).with_heartbeat_interval(Duration::ZERO),
            Env::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("with_heartbeat_interval"), "{err}");
    }

    #[test]
    fn concurrent_exports_per_signal_from_builder_env_or_default() {
        let s = resolve(TelemetryBuilder::new("s".into()), Env::default()).unwrap();
        assert_eq!(
            s.span_queue.max_concurrent_exports,
            DEFAULT_MAX_CONCURRENT_EXPORTS
        );
        assert_eq!(
            s.log_queue.max_concurrent_exports,
            DEFAULT_MAX_CONCURRENT_EXPORTS
        );
        let env = Env {
            bsp_max_concurrent_exports: Some("7".into()),
            blrp_max_concurrent_exports: Some(" 2 ".into()),
            ..Env::default()
        };
        let s = resolve(TelemetryBuilder::new("s".into()), env.clone()).unwrap();
        assert_eq!(s.span_queue.max_concurrent_exports, 7);
        assert_eq!(s.log_queue.max_concurrent_exports, 2);
        let s = resolve(
            TelemetryBuilder::new("s".into()).with_max_concurrent_exports(3),
            env,
        )
        .unwrap();
        assert_eq!(s.span_queue.max_concurrent_exports, 3);
        assert_eq!(s.log_queue.max_concurrent_exports, 3);

        let err =
            |builder: TelemetryBuilder, env: Env| resolve(builder, env).err().unwrap().to_string();
        let message = err(
            TelemetryBuilder::new("s".into()).with_max_concurrent_exports(0),
            Env::default(),
        );
        assert!(message.contains("with_max_concurrent_exports"), "{message}");
        let message = err(
            TelemetryBuilder::new("s".into()),
            Env {
                blrp_max_concurrent_exports: Some("many".into()),
                ..Env::default()
            },
        );
        assert!(
            message.contains(ENV_BLRP_MAX_CONCURRENT_EXPORTS) && message.contains("many"),
            "{message}"
        );
        let message = err(
            TelemetryBuilder::new("s".into()),
            Env {
                bsp_max_concurrent_exports: Some("65".into()),
                ..Env::default()
            },
        );
        assert!(
            message.contains(ENV_BSP_MAX_CONCURRENT_EXPORTS) && message.contains("65"),
            "{message}"
        );
    }

    #[test]
    fn headers_are_validated_without_printing_their_values() {
        let s = resolve(
            TelemetryBuilder::new("s".into()).with_header("Authorization", "Bearer abc"),
            Env::default(),
        )
        .unwrap();
        assert_eq!(s.headers.len(), 1);
        assert_eq!(s.headers[0].0.as_str(), "authorization");
        assert_eq!(s.headers[0].1.to_str().unwrap(), "Bearer abc");

        let err = resolve(
            TelemetryBuilder::new("s".into()).with_header("bad key", "secret-value"),
            Env::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("with_header") && err.contains("bad key"),
            "{err}"
        );
        let err = resolve(
            TelemetryBuilder::new("s".into()).with_header("x-token", "line\nbreak-secret"),
            Env::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("x-token") && !err.contains("secret"), "{err}");

        let env = |raw: &str| Env {
            otlp_headers: vec![(ENV_OTLP_HEADERS, raw.to_string())],
            ..Env::default()
        };
        assert!(resolve(
            TelemetryBuilder::new("s".into()),
            env("authorization=Bearer%20abc, x-tenant=t1")
        )
        .is_ok());
        let err = resolve(TelemetryBuilder::new("s".into()), env("authorization"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(ENV_OTLP_HEADERS), "{err}");
        let err = resolve(
            TelemetryBuilder::new("s".into()),
            env("authorization=Bearer%0Asecret"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("authorization") && !err.contains("secret"),
            "{err}"
        );
    }

    #[test]
    fn https_endpoints_and_ca_certificates() {
        let s = resolve(
            TelemetryBuilder::new("s".into()).with_endpoint("https://collector.test:4317"),
            Env::default(),
        )
        .unwrap();
        assert_eq!(s.ca_certificate, None);

        let dir = std::env::temp_dir().join(format!("dlog-sdk-ca-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let bad = dir.join("key.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let env = |path: &std::path::Path| Env {
            otlp_certificate: Some(path.display().to_string()),
            ..Env::default()
        };

        let s = resolve(TelemetryBuilder::new("s".into()), env(&good)).unwrap();
        assert!(s.ca_certificate.is_some());
        // The builder wins over the environment.
        let err = resolve(
            TelemetryBuilder::new("s".into()).with_ca_certificate_file(&bad),
            env(&good),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("with_ca_certificate_file") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = resolve(
            TelemetryBuilder::new("s".into()),
            env(&dir.join("missing.pem")),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains(ENV_OTLP_CERTIFICATE) && err.contains("missing.pem"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn static_directives_use_the_cheaper_filter() {
        let filter = |directives: &str| {
            resolve(
                TelemetryBuilder::new("s".into()).with_env_filter(directives),
                Env::default(),
            )
            .unwrap()
            .level_filter
        };
        assert!(matches!(filter("info"), LevelFilter::Static(_)));
        assert!(matches!(
            filter("warn,my_crate::db=trace"),
            LevelFilter::Static(_)
        ));
        assert!(matches!(
            filter("info,[checkout]=debug"),
            LevelFilter::Dynamic(_)
        ));
        assert!(matches!(
            filter("info,[{order=42}]=trace"),
            LevelFilter::Dynamic(_)
        ));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb%20c").as_deref(), Some("a,b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
    }
}
