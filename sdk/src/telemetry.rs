//! [`Telemetry`]: the running pipeline of one service, its statistics and its shutdown.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::InstrumentationScope;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::transport::{Certificate, ClientTlsConfig};
use tracing::Dispatch;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::announce::Announcer;
use crate::error::BuildError;
use crate::export::SCOPE;
use crate::export::{BoundedLogProcessor, BoundedSpanProcessor, Diagnostics};
use crate::filter::ExcludeExporterCrates;
use crate::lifecycle::{Lifecycle, ShutdownReport, Stats};
use crate::logger::DistributedLogger;
use crate::settings::{Header, LevelFilter, Settings};

/// The subscriber could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Building the telemetry failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Another global `tracing` subscriber was installed first.
    #[error("a global tracing subscriber is already installed; use Telemetry::dispatch() to scope this one instead")]
    AlreadyInstalled,
}

/// One service's running telemetry: the export workers, the heartbeat, the `tracing`
/// subscriber (not yet installed), and the [`DistributedLogger`].
///
/// Dropping it shuts it down (DOWN event, flush within the deadline); call
/// [`shutdown`](Self::shutdown) (or [`DistributedLogger::shutdown`]) to get the
/// [`ShutdownReport`].
pub struct Telemetry {
    service_name: String,
    instance_id: String,
    endpoint: String,
    dispatch: Dispatch,
    logger: DistributedLogger,
    tracked_inactivity: bool,
    lifecycle: Arc<Lifecycle>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("service_name", &self.service_name)
            .field("instance_id", &self.instance_id)
            .field("endpoint", &self.endpoint)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    pub(crate) fn start(settings: Settings) -> Result<Telemetry, BuildError> {
        let diagnostics = Arc::new(Diagnostics::new(settings.endpoint.clone()));
        let span_options = OtlpOptions::new(&settings, settings.span_queue.export_timeout);
        let log_options = OtlpOptions::new(&settings, settings.log_queue.export_timeout);
        let span_processor = match settings.span_exporter {
            Some(spawn) => spawn(&settings.span_queue, Arc::clone(&diagnostics))?,
            None => BoundedSpanProcessor::spawn(
                &settings.span_queue,
                Arc::clone(&diagnostics),
                move || otlp_span_exporter(&span_options),
            )?,
        };
        let log_processor = match settings.log_exporter {
            Some(spawn) => spawn(&settings.log_queue, Arc::clone(&diagnostics))?,
            None => BoundedLogProcessor::spawn(
                &settings.log_queue,
                Arc::clone(&diagnostics),
                move || otlp_log_exporter(&log_options),
            )?,
        };
        let spans = Arc::clone(span_processor.queue());
        let logs = Arc::clone(log_processor.queue());
        let tracer_provider = SdkTracerProvider::builder()
            .with_span_processor(span_processor)
            .with_resource(settings.resource.clone())
            .build();
        let logger_provider = SdkLoggerProvider::builder()
            .with_log_processor(log_processor)
            .with_resource(settings.resource)
            .build();

        let fmt_layer = settings.stderr.then(|| {
            use std::io::IsTerminal;
            // Colours only for a person at a terminal, never into a redirected file.
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                )
        });
        let (targets, env_filter) = match settings.level_filter {
            LevelFilter::Static(targets) => (Some(targets), None),
            LevelFilter::Dynamic(env_filter) => (None, Some(env_filter)),
        };
        let subscriber = tracing_subscriber::registry()
            .with(targets)
            .with(env_filter)
            .with(otlp_layers(
                &tracer_provider,
                &logger_provider,
                settings.tracked_inactivity,
            ))
            .with(fmt_layer);
        let dispatch = Dispatch::new(subscriber);
        if settings.stderr {
            diagnostics.route_to(&dispatch);
        }

        let sdk_logger = logger_provider.logger_with_scope(scope());
        let announcer = Announcer::start(
            sdk_logger.clone(),
            settings.service_name.clone(),
            settings.dependencies,
            settings.heartbeat_interval,
        )?;
        let lifecycle = Arc::new(Lifecycle {
            tracer_provider,
            logger_provider,
            spans,
            logs,
            announcer: Mutex::new(Some(announcer)),
            shutdown_timeout: settings.shutdown_timeout,
            report: Mutex::new(None),
        });
        let logger = DistributedLogger::new(
            sdk_logger,
            settings.service_name.clone(),
            settings.stderr,
            Arc::clone(&lifecycle),
        );
        Ok(Telemetry {
            service_name: settings.service_name,
            instance_id: settings.instance_id,
            endpoint: settings.endpoint,
            dispatch,
            logger,
            tracked_inactivity: settings.tracked_inactivity,
            lifecycle,
        })
    }

    /// Installs the subscriber as the global default and returns the guard that shuts the
    /// pipeline down when dropped, plus the logger.
    pub fn install(self) -> Result<(TelemetryGuard, DistributedLogger), InstallError> {
        tracing::dispatcher::set_global_default(self.dispatch.clone())
            .map_err(|_| InstallError::AlreadyInstalled)?;
        // For libraries that propagate through the OpenTelemetry global (this crate's own
        // helpers do not need it).
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let logger = self.logger.clone();
        Ok((TelemetryGuard { telemetry: self }, logger))
    }

    /// The subscriber, for scoped use without installing it globally:
    /// `tracing::dispatcher::with_default(telemetry.dispatch(), || ...)`, or per thread with
    /// `tracing::dispatcher::set_default`. This is how two services can share one process.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// The OTLP span and log layers alone (filtered to keep the exporter's crates out), for
    /// composing with other layers in a subscriber of your own. Each call makes new layers
    /// over the same pipeline.
    pub fn otlp_layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        otlp_layers(
            &self.lifecycle.tracer_provider,
            &self.lifecycle.logger_provider,
            self.tracked_inactivity,
        )
    }

    /// The convenience logger of this service.
    pub fn logger(&self) -> DistributedLogger {
        self.logger.clone()
    }

    /// The service name on the resource.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// The `service.instance.id` on the resource (generated when not configured).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The OTLP endpoint in use.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exported, dropped, failed and queued counts, live.
    pub fn stats(&self) -> Stats {
        self.lifecycle.stats()
    }

    /// Exports what is queued now (without stopping), waiting at most `timeout`. Returns the
    /// stats afterwards.
    pub fn flush(&self, timeout: Duration) -> Stats {
        let deadline = Instant::now() + timeout;
        std::thread::scope(|scope| {
            let spans = scope.spawn(|| self.lifecycle.spans.flush(deadline));
            let _ = self.lifecycle.logs.flush(deadline);
            let _ = spans.join();
        });
        self.stats()
    }

    /// Emits the DOWN registration, stops the heartbeat, and flushes spans and logs within
    /// the shutdown deadline. Idempotent: later calls return the first report, and so does
    /// [`DistributedLogger::shutdown`] on any of this service's loggers.
    pub fn shutdown(&self) -> ShutdownReport {
        self.lifecycle.shutdown()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Keeps the installed pipeline running; dropping it shuts the pipeline down (DOWN event,
/// flush within the deadline). Dereferences to [`Telemetry`] for `stats()` and friends.
#[must_use = "dropping the guard shuts telemetry down at once"]
#[derive(Debug)]
pub struct TelemetryGuard {
    telemetry: Telemetry,
}

impl TelemetryGuard {
    /// Shuts down now and returns what could not be delivered.
    pub fn shutdown(self) -> ShutdownReport {
        self.telemetry.shutdown()
    }
}

impl Deref for TelemetryGuard {
    type Target = Telemetry;

    fn deref(&self) -> &Telemetry {
        &self.telemetry
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

fn otlp_layers<S>(
    tracer_provider: &SdkTracerProvider,
    logger_provider: &SdkLoggerProvider,
    tracked_inactivity: bool,
) -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer_provider.tracer_with_scope(scope()))
        .with_tracked_inactivity(tracked_inactivity);
    let logs = OpenTelemetryTracingBridge::new(logger_provider);
    // One per-layer filter around both layers: every per-layer filter costs a registry
    // lookup on each span callback, so two would cost twice.
    spans.and_then(logs).with_filter(ExcludeExporterCrates)
}

/// How the OTLP exporters of one service connect.
struct OtlpOptions {
    endpoint: String,
    timeout: Duration,
    gzip: bool,
    headers: Arc<[Header]>,
    ca_certificate: Option<Vec<u8>>,
}

impl OtlpOptions {
    fn new(settings: &Settings, timeout: Duration) -> Self {
        OtlpOptions {
            endpoint: settings.endpoint.clone(),
            timeout,
            gzip: settings.gzip,
            headers: Arc::clone(&settings.headers),
            ca_certificate: settings.ca_certificate.clone(),
        }
    }

    /// Applies the settings shared by both signals to an exporter builder.
    fn apply<B: WithExportConfig + WithTonicConfig>(&self, mut builder: B) -> B {
        builder = builder
            .with_endpoint(&self.endpoint)
            .with_timeout(self.timeout);
        if self.gzip {
            builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
        }
        if self.endpoint.starts_with("https:") {
            // rustls: the configured CA alone when given, else the system's trusted roots.
            let tls = match &self.ca_certificate {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            builder = builder.with_tls_config(tls);
        }
        if !self.headers.is_empty() {
            // An interceptor runs after the exporter has added the headers from the
            // environment, so that for the same key the builder's value wins.
            let headers = Arc::clone(&self.headers);
            builder = builder.with_interceptor(move |mut request: tonic::Request<()>| {
                for (key, value) in headers.iter() {
                    request.metadata_mut().insert(key.clone(), value.clone());
                }
                Ok(request)
            });
        }
        builder
    }
}

fn otlp_span_exporter(
    options: &OtlpOptions,
) -> Result<opentelemetry_otlp::SpanExporter, BuildError> {
    options
        .apply(opentelemetry_otlp::SpanExporter::builder().with_tonic())
        .build()
        .map_err(|e| BuildError::Exporter {
            signal: "spans",
            endpoint: options.endpoint.clone(),
            reason: e.to_string(),
        })
}

fn otlp_log_exporter(options: &OtlpOptions) -> Result<opentelemetry_otlp::LogExporter, BuildError> {
    options
        .apply(opentelemetry_otlp::LogExporter::builder().with_tonic())
        .build()
        .map_err(|e| BuildError::Exporter {
            signal: "logs",
            endpoint: options.endpoint.clone(),
            reason: e.to_string(),
        })
}
