//! Counting what happened to the records, and shutting the pipeline down once, from whichever
//! handle asks first.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};

use crate::announce::Announcer;
use crate::export::{Counters, LogItem, Queue};

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

/// What shutting down needs, shared by the [`Telemetry`](crate::Telemetry) and every [`DistributedLogger`](crate::DistributedLogger) clone,
/// so that either can shut the pipeline down and both get the same report.
///
/// It holds no logger and no subscriber, so sharing it makes no reference cycle. Dropping the
/// `Telemetry` (the guard) still shuts the pipeline down even while loggers live on: the
/// shutdown is triggered by the owner's drop, not by the last reference going away. Loggers
/// that outlive it only keep the stopped providers and the report.
pub(crate) struct Lifecycle {
    pub tracer_provider: SdkTracerProvider,
    pub logger_provider: SdkLoggerProvider,
    pub spans: Arc<Queue<SpanData>>,
    pub logs: Arc<Queue<LogItem>>,
    pub announcer: Mutex<Option<Announcer>>,
    pub shutdown_timeout: Duration,
    pub report: Mutex<Option<ShutdownReport>>,
}

impl Lifecycle {
    pub(crate) fn stats(&self) -> Stats {
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
