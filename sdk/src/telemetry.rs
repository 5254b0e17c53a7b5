//! [`Telemetry`]: the running pipeline of one service, its statistics and its shutdown.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::InstrumentationScope;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use tonic::transport::{Certificate, ClientTlsConfig};
use tracing::Dispatch;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::announce::Announcer;
use crate::builder::{BuildError, Header, LevelFilter, Settings, TelemetryBuilder};
use crate::export::{
    BoundedLogProcessor, BoundedSpanProcessor, Counters, Diagnostics, LogItem, Queue,
};
use crate::filter::ExcludeExporterCrates;
use crate::logger::DistributedLogger;

/// Instrumentation scope of the SDK's own spans and records.
pub(crate) const SCOPE: &str = "distributed_logger";

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

/// What happened to the records of both signals so far.
///
/// Every record ends up in exactly one of `exported`, `dropped`, `failed`, or is still `queued`.
/// The counters are read one by one, so while the pipeline runs a record that is moving from
/// `queued` to its outcome may be counted in both (never in neither): live, `exported +
/// dropped + failed` never exceeds the records emitted, and adding `queued` never falls short
/// of them. After shutdown nothing moves and the four add up exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Spans the collector accepted.
    pub exported_spans: u64,
    /// Log records (including events) the collector accepted.
    pub exported_logs: u64,
    /// Spans refused because the queue was full or the pipeline had shut down.
    pub dropped_spans: u64,
    /// Log records refused because the queue was full or the pipeline had shut down.
    pub dropped_logs: u64,
    /// Spans whose export failed (after the exporter's retries) or timed out.
    pub failed_spans: u64,
    /// Log records whose export failed (after the exporter's retries) or timed out.
    pub failed_logs: u64,
    /// Export calls that failed, both signals.
    pub failed_exports: u64,
    /// Spans waiting in the queue or being exported right now.
    pub queued_spans: u64,
    /// Log records waiting in the queue or being exported right now.
    pub queued_logs: u64,
}

impl Stats {
    /// Spans that did not (or not yet) reach the collector.
    pub fn undelivered_spans(&self) -> u64 {
        self.dropped_spans + self.failed_spans + self.queued_spans
    }

    /// Log records that did not (or not yet) reach the collector.
    pub fn undelivered_logs(&self) -> u64 {
        self.dropped_logs + self.failed_logs + self.queued_logs
    }

    pub(crate) fn read(spans: &Counters, logs: &Counters) -> Self {
        // `queued` first (Acquire), outcomes after: the workers raise an outcome before they
        // lower `queued`, so a record in motion is never missing from both (see `Counters`).
        let queued_spans = spans.queued.load(Ordering::Acquire) as u64;
        let queued_logs = logs.queued.load(Ordering::Acquire) as u64;
        Stats {
            exported_spans: spans.exported.load(Ordering::Relaxed),
            exported_logs: logs.exported.load(Ordering::Relaxed),
            dropped_spans: spans.dropped.load(Ordering::Relaxed),
            dropped_logs: logs.dropped.load(Ordering::Relaxed),
            failed_spans: spans.failed.load(Ordering::Relaxed),
            failed_logs: logs.failed.load(Ordering::Relaxed),
            failed_exports: spans.failed_exports.load(Ordering::Relaxed)
                + logs.failed_exports.load(Ordering::Relaxed),
            queued_spans,
            queued_logs,
        }
    }
}

/// What shutdown delivered and what it could not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// The final counts. After shutdown, `queued_*` are records that were never sent.
    pub stats: Stats,
    /// True when the deadline passed before both queues were flushed.
    pub timed_out: bool,
    /// How long shutdown took.
    pub elapsed: Duration,
}

impl ShutdownReport {
    /// Spans that never reached the collector.
    pub fn undelivered_spans(&self) -> u64 {
        self.stats.undelivered_spans()
    }

    /// Log records that never reached the collector.
    pub fn undelivered_logs(&self) -> u64 {
        self.stats.undelivered_logs()
    }

    /// True when everything reached the collector.
    pub fn is_complete(&self) -> bool {
        !self.timed_out && self.undelivered_spans() == 0 && self.undelivered_logs() == 0
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "exported {} spans and {} logs in {:?}; not delivered: {} spans ({} dropped, {} failed, {} unsent), \
             {} logs ({} dropped, {} failed, {} unsent){}",
            s.exported_spans,
            s.exported_logs,
            self.elapsed,
            self.undelivered_spans(),
            s.dropped_spans,
            s.failed_spans,
            s.queued_spans,
            self.undelivered_logs(),
            s.dropped_logs,
            s.failed_logs,
            s.queued_logs,
            if self.timed_out { "; deadline passed" } else { "" }
        )
    }
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

/// What shutting down needs, shared by the [`Telemetry`] and every [`DistributedLogger`] clone,
/// so that either can shut the pipeline down and both get the same report.
///
/// It holds no logger and no subscriber, so sharing it makes no reference cycle. Dropping the
/// `Telemetry` (the guard) still shuts the pipeline down even while loggers live on: the
/// shutdown is triggered by the owner's drop, not by the last reference going away. Loggers
/// that outlive it only keep the stopped providers and the report.
pub(crate) struct Lifecycle {
    tracer_provider: SdkTracerProvider,
    logger_provider: SdkLoggerProvider,
    spans: Arc<Queue<SpanData>>,
    logs: Arc<Queue<LogItem>>,
    announcer: Mutex<Option<Announcer>>,
    shutdown_timeout: Duration,
    report: Mutex<Option<ShutdownReport>>,
}

impl Lifecycle {
    fn stats(&self) -> Stats {
        Stats::read(self.spans.counters(), self.logs.counters())
    }

    /// Emits the DOWN registration, stops the heartbeat, and flushes spans and logs within
    /// the shutdown deadline. Idempotent: later calls (from any handle) return the first
    /// report; concurrent callers wait for it.
    pub(crate) fn shutdown(&self) -> ShutdownReport {
        let mut report = match self.report.lock() {
            Ok(report) => report,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(report) = *report {
            return report;
        }
        let started = Instant::now();
        let deadline = started + self.shutdown_timeout;
        let announcer = match self.announcer.lock() {
            Ok(mut announcer) => announcer.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(announcer) = announcer {
            announcer.stop();
        }
        // Both queues flush in parallel against the same deadline.
        let (spans_done, logs_done) = std::thread::scope(|scope| {
            let spans = scope.spawn(|| self.spans.shutdown(deadline));
            let logs_done = self.logs.shutdown(deadline);
            (spans.join().unwrap_or(false), logs_done)
        });
        // The processors are already stopped; this marks the providers shut down so that
        // later spans and records are dropped (and counted) at once.
        let _ = self.tracer_provider.shutdown();
        let _ = self.logger_provider.shutdown();
        let done = ShutdownReport {
            stats: self.stats(),
            timed_out: !(spans_done && logs_done),
            elapsed: started.elapsed(),
        };
        *report = Some(done);
        done
    }
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
    /// Starts configuring a service's telemetry. An empty name defers to `OTEL_SERVICE_NAME`
    /// (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn builder(service_name: impl Into<String>) -> TelemetryBuilder {
        TelemetryBuilder::new(service_name.into())
    }

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
