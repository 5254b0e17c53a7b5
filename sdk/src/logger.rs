//! [`DistributedLogger`]: the convenience API users of the old system know.
//!
//! Records go straight to the OpenTelemetry Logs API (not through `tracing` macros), so that
//! field names can be chosen at run time and `service.call` records carry an `event_name`.
//! Like `tracing` events, they carry the trace and span id of the `tracing` span that is
//! current where they are emitted.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dlog_core::names;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry::Key;
use opentelemetry_sdk::logs::SdkLogger;
use tracing::Level;

use crate::export::DIAGNOSTICS_TARGET;
use crate::lifecycle::{Lifecycle, ShutdownReport};

/// A value for an extra field: strings, integers, floats and booleans.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldValue(AnyValue);

impl FieldValue {
    /// The OpenTelemetry value.
    pub fn into_any_value(self) -> AnyValue {
        self.0
    }
}

macro_rules! field_value_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$t> for FieldValue {
            fn from($v: $t) -> Self {
                FieldValue($e)
            }
        })*
    };
}

field_value_from! {
    &str => |v| AnyValue::from(v.to_string()),
    String => |v| AnyValue::from(v),
    &String => |v| AnyValue::from(v.clone()),
    bool => |v| AnyValue::Boolean(v),
    i32 => |v| AnyValue::Int(i64::from(v)),
    i64 => |v| AnyValue::Int(v),
    u32 => |v| AnyValue::Int(i64::from(v)),
    // OTLP integers are signed 64-bit; larger values saturate.
    u64 => |v| AnyValue::Int(i64::try_from(v).unwrap_or(i64::MAX)),
    usize => |v| AnyValue::Int(i64::try_from(v).unwrap_or(i64::MAX)),
    f64 => |v| AnyValue::Double(v),
    f32 => |v| AnyValue::Double(f64::from(v)),
    AnyValue => |v| v,
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            AnyValue::Int(i) => write!(f, "{i}"),
            AnyValue::Double(d) => write!(f, "{d}"),
            AnyValue::String(s) => write!(f, "{:?}", s.as_str()),
            AnyValue::Boolean(b) => write!(f, "{b}"),
            other => write!(f, "{other:?}"),
        }
    }
}

type Fields = Vec<(Key, FieldValue)>;

/// Application logging with the fields the rest of dlog understands. Cheap to clone; every
/// clone emits through the same pipeline. Obtain it from
/// [`Telemetry::logger`](crate::Telemetry::logger) or [`TelemetryBuilder::init`](crate::TelemetryBuilder::init).
///
/// | call | level | attributes |
/// |---|---|---|
/// | `info(msg)` | INFO | extra fields |
/// | `warn(msg, response_time_ms, threshold_limit_ms)` | WARN | `response_time_ms`, `threshold_limit_ms` (ints) |
/// | `error(msg, code, message, dependent)` | ERROR | `error.code`, `error.message`, `dependent_service` (when given) |
/// | `log_service_call(target, success, duration)` | INFO / WARN | event `service.call`: `call.source`, `call.target`, `call.success`, `call.status`, `call.duration_ms` |
///
/// [`shutdown`](Self::shutdown) shuts the whole pipeline down, as the guard does.
#[derive(Clone)]
pub struct DistributedLogger {
    inner: Arc<Inner>,
}

struct Inner {
    logger: SdkLogger,
    service_name: String,
    /// Mirror records to the stderr layer, so a person watching the service sees them.
    stderr: bool,
    /// The pipeline's shutdown, shared with the `Telemetry` that owns it (no cycle: it holds
    /// no logger).
    lifecycle: Arc<Lifecycle>,
}

impl fmt::Debug for DistributedLogger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedLogger")
            .field("service_name", &self.inner.service_name)
            .finish_non_exhaustive()
    }
}

impl DistributedLogger {
    pub(crate) fn new(
        logger: SdkLogger,
        service_name: String,
        stderr: bool,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        DistributedLogger {
            inner: Arc::new(Inner {
                logger,
                service_name,
                stderr,
                lifecycle,
            }),
        }
    }

    /// Shuts this service's telemetry down: stops the heartbeat, emits the DOWN registration,
    /// flushes traces and logs within the shutdown deadline (`with_shutdown_timeout`, 5 s by
    /// default), and reports what could not be delivered.
    ///
    /// This is the same shutdown as [`Telemetry::shutdown`](crate::Telemetry::shutdown) and
    /// [`TelemetryGuard::shutdown`](crate::TelemetryGuard::shutdown), and the guard's drop:
    /// whichever runs first does the work, and every later call, from any clone of the logger
    /// or the guard, returns the same report at once. Records emitted afterwards are dropped
    /// and counted.
    pub fn shutdown(&self) -> ShutdownReport {
        self.inner.lifecycle.shutdown()
    }

    /// The service this logger speaks for (`call.source` of service calls).
    pub fn service_name(&self) -> &str {
        &self.inner.service_name
    }

    /// An INFO record.
    pub fn info(&self, message: impl Into<String>) {
        self.emit(Level::INFO, message.into(), None, Vec::new());
    }

    /// An INFO record with extra fields.
    pub fn info_with<I, K, V>(&self, message: impl Into<String>, fields: I)
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<Key>,
        V: Into<FieldValue>,
    {
        self.emit(Level::INFO, message.into(), None, collect(fields));
    }

    /// A WARN record about a slow response: `response_time_ms` against `threshold_limit_ms`.
    pub fn warn(&self, message: impl Into<String>, response_time_ms: u64, threshold_limit_ms: u64) {
        self.warn_with(
            message,
            response_time_ms,
            threshold_limit_ms,
            std::iter::empty::<(Key, FieldValue)>(),
        );
    }

    /// [`warn`](Self::warn) with extra fields.
    pub fn warn_with<I, K, V>(
        &self,
        message: impl Into<String>,
        response_time_ms: u64,
        threshold_limit_ms: u64,
        fields: I,
    ) where
        I: IntoIterator<Item = (K, V)>,
        K: Into<Key>,
        V: Into<FieldValue>,
    {
        let mut all = vec![
            (
                Key::from_static_str(names::RESPONSE_TIME_MS),
                FieldValue::from(response_time_ms),
            ),
            (
                Key::from_static_str(names::THRESHOLD_LIMIT_MS),
                FieldValue::from(threshold_limit_ms),
            ),
        ];
        all.extend(collect(fields));
        self.emit(Level::WARN, message.into(), None, all);
    }

    /// An ERROR record with an application error code and message, and the service the error
    /// is attributed to, if any.
    pub fn error(
        &self,
        message: impl Into<String>,
        error_code: impl Into<String>,
        error_message: impl Into<String>,
        dependent_service: Option<&str>,
    ) {
        self.error_with(
            message,
            error_code,
            error_message,
            dependent_service,
            std::iter::empty::<(Key, FieldValue)>(),
        );
    }

    /// [`error`](Self::error) with extra fields.
    pub fn error_with<I, K, V>(
        &self,
        message: impl Into<String>,
        error_code: impl Into<String>,
        error_message: impl Into<String>,
        dependent_service: Option<&str>,
        fields: I,
    ) where
        I: IntoIterator<Item = (K, V)>,
        K: Into<Key>,
        V: Into<FieldValue>,
    {
        let mut all = vec![
            (
                Key::from_static_str(names::ERROR_CODE),
                FieldValue::from(error_code.into()),
            ),
            (
                Key::from_static_str(names::ERROR_MESSAGE),
                FieldValue::from(error_message.into()),
            ),
        ];
        if let Some(dependent) = dependent_service {
            all.push((
                Key::from_static_str(names::DEPENDENT_SERVICE),
                FieldValue::from(dependent),
            ));
        }
        all.extend(collect(fields));
        self.emit(Level::ERROR, message.into(), None, all);
    }

    /// A record at any level, built field by field:
    /// `logger.event(Level::INFO).message("paid").field("order.id", 42).emit()`.
    pub fn event(&self, level: Level) -> LogEvent<'_> {
        LogEvent {
            logger: self,
            level,
            message: String::new(),
            fields: Vec::new(),
        }
    }

    /// Records one call from this service to `target`: a `service.call` event (INFO when it
    /// succeeded, WARN when not) with `call.source`, `call.target`, `call.success`,
    /// `call.status` (`SUCCESS`/`FAILURE`) and `call.duration_ms` (a float), linked to the
    /// current trace.
    pub fn log_service_call(&self, target: &str, success: bool, duration: Duration) {
        self.log_service_call_with(
            target,
            success,
            duration,
            std::iter::empty::<(Key, FieldValue)>(),
        );
    }

    /// [`log_service_call`](Self::log_service_call) with extra fields.
    pub fn log_service_call_with<I, K, V>(
        &self,
        target: &str,
        success: bool,
        duration: Duration,
        fields: I,
    ) where
        I: IntoIterator<Item = (K, V)>,
        K: Into<Key>,
        V: Into<FieldValue>,
    {
        let duration_ms = duration.as_secs_f64() * 1000.0;
        let status = if success { "SUCCESS" } else { "FAILURE" };
        let mut all = vec![
            (
                Key::from_static_str(names::CALL_SOURCE),
                FieldValue::from(self.service_name()),
            ),
            (
                Key::from_static_str(names::CALL_TARGET),
                FieldValue::from(target),
            ),
            (
                Key::from_static_str(names::CALL_SUCCESS),
                FieldValue::from(success),
            ),
            (
                Key::from_static_str(names::CALL_STATUS),
                FieldValue::from(status),
            ),
            (
                Key::from_static_str(names::CALL_DURATION_MS),
                FieldValue::from(duration_ms),
            ),
        ];
        all.extend(collect(fields));
        let message = format!(
            "call {} -> {target}: {status} in {duration_ms:.1} ms",
            self.service_name()
        );
        let level = if success { Level::INFO } else { Level::WARN };
        self.emit(level, message, Some(names::SERVICE_CALL_EVENT), all);
    }

    fn emit(
        &self,
        level: Level,
        message: String,
        event_name: Option<&'static str>,
        fields: Fields,
    ) {
        if self.inner.stderr {
            mirror(level, &message, &fields);
        }
        let logger = &self.inner.logger;
        let mut record = logger.create_log_record();
        record.set_timestamp(SystemTime::now());
        record.set_severity_number(severity(level));
        record.set_severity_text(level.as_str());
        if let Some(name) = event_name {
            record.set_event_name(name);
        }
        record.set_body(AnyValue::from(message));
        record.add_attributes(fields.into_iter().map(|(k, v)| (k, v.0)));
        logger.emit(record);
    }
}

/// A record being built by [`DistributedLogger::event`]; nothing is sent until [`emit`](Self::emit).
#[must_use = "call emit() to send the record"]
pub struct LogEvent<'a> {
    logger: &'a DistributedLogger,
    level: Level,
    message: String,
    fields: Fields,
}

impl LogEvent<'_> {
    /// The record's body.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Adds an attribute.
    pub fn field(mut self, key: impl Into<Key>, value: impl Into<FieldValue>) -> Self {
        self.fields.push((key.into(), value.into()));
        self
    }

    /// Sends the record.
    pub fn emit(self) {
        self.logger
            .emit(self.level, self.message, None, self.fields);
    }
}

fn collect<I, K, V>(fields: I) -> Fields
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<Key>,
    V: Into<FieldValue>,
{
    fields
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

fn severity(level: Level) -> Severity {
    match level {
        Level::TRACE => Severity::Trace,
        Level::DEBUG => Severity::Debug,
        Level::INFO => Severity::Info,
        Level::WARN => Severity::Warn,
        Level::ERROR => Severity::Error,
    }
}

struct DisplayFields<'a>(&'a Fields);

impl fmt::Display for DisplayFields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={value}", key.as_str())?;
        }
        Ok(())
    }
}

/// Shows the record on the stderr layer. The target is kept out of the OTLP layers, so the
/// record is not exported twice.
fn mirror(level: Level, message: &str, fields: &Fields) {
    let fields = DisplayFields(fields);
    match level {
        Level::ERROR => tracing::error!(target: DIAGNOSTICS_TARGET, %fields, "{message}"),
        Level::WARN => tracing::warn!(target: DIAGNOSTICS_TARGET, %fields, "{message}"),
        Level::INFO => tracing::info!(target: DIAGNOSTICS_TARGET, %fields, "{message}"),
        Level::DEBUG => tracing::debug!(target: DIAGNOSTICS_TARGET, %fields, "{message}"),
        Level::TRACE => tracing::trace!(target: DIAGNOSTICS_TARGET, %fields, "{message}"),
    }
}
