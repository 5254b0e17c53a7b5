//! Bounded span and log processors that count what they drop.
//!
//! The stock `BatchSpanProcessor`/`BatchLogProcessor` drop silently once their queue is full,
//! lose a batch whose export failed, and wait for each answer before sending the next batch,
//! so a collector that answers slowly caps a service at one batch per answer. These
//! processors keep the same cheap hot path (one `try_send` into a bounded channel plus one
//! atomic add) and add what the SDK promises:
//!
//! * several exports are in flight at once (`max_concurrent_exports`), each taking what is
//!   queued up to the largest batch, so throughput grows with the collector's answer time
//!   instead of being capped by it;
//! * every record that does not reach the collector is counted, by reason (queue full,
//!   export failed, still queued at shutdown), and readable through [`Stats`](crate::Stats);
//! * a failed export backs off (doubling, capped) before the next attempt, so an unreachable
//!   collector costs the application nothing but the drops, and export resumes on its own
//!   once the collector is back;
//! * liveness records (heartbeats and registrations) travel in a small lane of their own that
//!   is exported first, so application logs filling the queue never drop or hold them back;
//! * flush and shutdown honour a deadline and say what they could not deliver.
//!
//! Each processor owns one worker thread with its own single-threaded Tokio runtime, in which
//! the exporter is built and driven. The application therefore needs no runtime of its own
//! for telemetry, and a `#[tokio::test]` ending does not strand the exporter.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use opentelemetry::logs::LogRecord as _;
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc as control_mpsc;

use crate::error::BuildError;
use crate::names;

/// Instrumentation scope of the SDK's own spans and records.
pub(crate) const SCOPE: &str = "distributed_logger";

/// Target of the SDK's own diagnostics. It is kept out of the OTLP layers (see
/// [`crate::filter`]), so a warning about failed exports never becomes an export itself.
pub(crate) const DIAGNOSTICS_TARGET: &str = "distributed_logger::stderr";

/// First pause after a failed export; it doubles per consecutive failure.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// Longest pause between export attempts while the collector stays unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bound of the control channel (export wake-ups, flushes, shutdown). At most one wake-up is
/// outstanding at a time, so this only limits concurrent flush callers.
const CONTROL_CAPACITY: usize = 64;
/// Deadline of `force_flush` called through the OpenTelemetry providers (which take none);
/// `Telemetry::flush` takes its own.
const PROVIDER_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Records the liveness lane of the log queue holds (heartbeats and registrations). At the
/// default 10 s heartbeat interval this covers more than ten minutes of collector outage.
pub(crate) const LIVENESS_CAPACITY: usize = 64;

/// Settings of one signal's queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueConfig {
    /// Records each queue holds before it drops.
    pub capacity: usize,
    /// Largest number of records per export call.
    pub max_batch: usize,
    /// Longest time a record waits in the queue before it is exported.
    pub interval: Duration,
    /// Longest time one export call (with the exporter's own retries) may take.
    pub export_timeout: Duration,
    /// Export calls that may be in flight at once.
    pub max_concurrent_exports: usize,
}

/// Counters of one signal. Only `queued` and `dropped` are touched on the application's path.
///
/// A record leaving the queue is first added to its outcome (`exported`, `failed`, `dropped`)
/// and only then subtracted from `queued` (a Release read-modify-write). A reader that loads
/// `queued` first (Acquire) and the outcomes after it therefore sees every record in motion
/// at least once: while records move, the sum may count one twice but never misses one, and
/// the outcomes alone never exceed the records pushed. Once nothing moves (after shutdown)
/// the four add up exactly.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Records in the queue or in a batch being exported.
    pub queued: AtomicUsize,
    /// Records the collector accepted.
    pub exported: AtomicU64,
    /// Records refused because the queue was full (or the processor had shut down).
    pub dropped: AtomicU64,
    /// Records that were handed to the exporter, but whose export failed or timed out.
    pub failed: AtomicU64,
    /// Export calls that failed or timed out.
    pub failed_exports: AtomicU64,
    /// Records in exports in flight (part of `queued`), so that the application's side can
    /// tell a full batch waiting from one being exported.
    pub in_flight: AtomicUsize,
}

/// How the SDK tells a person that telemetry is being lost: once, not per record.
#[derive(Debug)]
pub(crate) struct Diagnostics {
    endpoint: String,
    /// Set once the one warning was given.
    warned: AtomicBool,
    /// The service's own subscriber, when it has a stderr layer: the warning then appears where
    /// the service's other logs do. Weak, so the workers never keep the subscriber alive.
    dispatch: OnceLock<tracing::dispatcher::WeakDispatch>,
}

impl Diagnostics {
    pub(crate) fn new(endpoint: String) -> Self {
        Diagnostics {
            endpoint,
            warned: AtomicBool::new(false),
            dispatch: OnceLock::new(),
        }
    }

    /// Routes diagnostics through `dispatch` (its stderr layer) instead of plain stderr.
    pub(crate) fn route_to(&self, dispatch: &tracing::Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    /// Gives the single warning about lost telemetry, if it was not given yet.
    fn warn_once(&self, message: impl FnOnce(&str) -> String) {
        if self.warned.swap(true, Ordering::Relaxed) {
            return;
        }
        self.emit(tracing::Level::WARN, &message(&self.endpoint));
    }

    fn info(&self, message: &str) {
        self.emit(tracing::Level::INFO, message);
    }

    fn emit(&self, level: tracing::Level, message: &str) {
        match self.dispatch.get().and_then(|weak| weak.upgrade()) {
            Some(dispatch) => tracing::dispatcher::with_default(&dispatch, || {
                if level == tracing::Level::WARN {
                    tracing::warn!(target: DIAGNOSTICS_TARGET, "{message}");
                } else {
                    tracing::info!(target: DIAGNOSTICS_TARGET, "{message}");
                }
            }),
            None => eprintln!("{level} distributed_logger: {message}"),
        }
    }
}

enum Control {
    /// A full batch is waiting.
    Export,
    /// Export everything queued now, once, within the deadline.
    Flush {
        deadline: Instant,
        reply: SyncSender<OTelSdkResult>,
    },
    /// Export everything queued within the deadline, then stop.
    Shutdown {
        deadline: Instant,
        reply: SyncSender<()>,
    },
    SetResource(Resource),
}

/// The exporter side of a queue: spans and logs differ only in how a batch is handed over.
trait BatchExport: 'static {
    type Item: Send + 'static;
    /// Exports `batch`. Several calls may be in flight at once.
    fn export(&self, batch: Vec<Self::Item>) -> impl Future<Output = OTelSdkResult> + '_;
    fn shutdown(&self, timeout: Duration);
    fn set_resource(&mut self, resource: &Resource);
}

struct Spans<E>(E);

impl<E: SpanExporter + 'static> BatchExport for Spans<E> {
    type Item = SpanData;

    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + '_ {
        self.0.export(batch)
    }

    fn shutdown(&self, timeout: Duration) {
        let _ = self.0.shutdown_with_timeout(timeout);
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// A log record and its scope, boxed so the channel moves one pointer per record.
pub(crate) type LogItem = Box<(SdkLogRecord, InstrumentationScope)>;

struct Logs<E>(E);

impl<E: LogExporter + 'static> BatchExport for Logs<E> {
    type Item = LogItem;

    async fn export(&self, batch: Vec<LogItem>) -> OTelSdkResult {
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            batch.iter().map(|item| (&item.0, &item.1)).collect();
        self.0.export(LogBatch::new(&refs)).await
    }

    fn shutdown(&self, timeout: Duration) {
        let _ = self.0.shutdown_with_timeout(timeout);
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// The application-facing half of a queue: cheap, never blocks.
pub(crate) struct Queue<T> {
    signal: &'static str,
    items: SyncSender<T>,
    /// The liveness lane (logs only): records exported ahead of `items`, with room of their
    /// own, so that a burst filling `items` neither drops nor delays them.
    priority: Option<SyncSender<T>>,
    control: control_mpsc::Sender<Control>,
    counters: Arc<Counters>,
    /// True while a wake-up for a full batch is outstanding, so that at most one is sent.
    wake_sent: Arc<AtomicBool>,
    max_batch: usize,
    shut_down: AtomicBool,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("signal", &self.signal)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Queue<T> {
    /// Starts the worker thread, builds the exporter inside its runtime, and returns once the
    /// exporter is ready (or failed to build). `priority_capacity` sizes the liveness lane
    /// (0: none).
    fn spawn<E, F>(
        signal: &'static str,
        config: &QueueConfig,
        priority_capacity: usize,
        diagnostics: Arc<Diagnostics>,
        make_exporter: F,
    ) -> Result<Arc<Self>, BuildError>
    where
        E: BatchExport<Item = T>,
        F: FnOnce() -> Result<E, BuildError> + Send + 'static,
    {
        let (items, item_rx) = mpsc::sync_channel(config.capacity);
        let (priority, priority_rx) = if priority_capacity > 0 {
            let (tx, rx) = mpsc::sync_channel(priority_capacity);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let (control, control_rx) = control_mpsc::channel(CONTROL_CAPACITY);
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), BuildError>>(1);
        let counters = Arc::new(Counters::default());
        let wake_sent = Arc::new(AtomicBool::new(false));
        let worker_counters = Arc::clone(&counters);
        let worker_wake = Arc::clone(&wake_sent);
        let worker_config = QueueConfig {
            max_concurrent_exports: config.max_concurrent_exports.max(1),
            max_batch: config.max_batch.max(1),
            ..config.clone()
        };
        let handle = thread::Builder::new()
            .name(format!("dlog-{signal}-export"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(BuildError::Runtime(e)));
                        return;
                    }
                };
                // The tonic exporter spawns its connection tasks at build time, so it must be
                // built inside the runtime that later drives it.
                let exporter = {
                    let _entered = runtime.enter();
                    make_exporter()
                };
                let exporter = match exporter {
                    Ok(exporter) => exporter,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                // Whatever the exporter's own crates log while exporting must not be exported
                // again. Every task of this runtime runs on this thread, inside this scope.
                let _suppressed = Context::enter_telemetry_suppressed_scope();
                let worker = Worker {
                    signal,
                    items: item_rx,
                    priority: priority_rx,
                    control: control_rx,
                    exporter: Rc::new(exporter),
                    config: worker_config,
                    counters: worker_counters,
                    wake_sent: worker_wake,
                    diagnostics,
                    in_flight: FuturesUnordered::new(),
                    in_flight_records: 0,
                    backoff: None,
                    next_delay: INITIAL_BACKOFF,
                    failing: false,
                    last_drain: Instant::now(),
                };
                runtime.block_on(worker.run());
            })
            .map_err(BuildError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let _ = handle.join();
                return Err(BuildError::WorkerDied(signal));
            }
        }
        Ok(Arc::new(Queue {
            signal,
            items,
            priority,
            control,
            counters,
            wake_sent,
            max_batch: config.max_batch.max(1),
            shut_down: AtomicBool::new(false),
            worker: Mutex::new(Some(handle)),
        }))
    }

    /// Hands a record to the worker, or counts it as dropped. Never blocks.
    #[inline]
    fn push(&self, item: T) {
        // Counted before the send so the worker, which subtracts what it takes, never sees
        // a record it has not been told about.
        let before = self.counters.queued.fetch_add(1, Ordering::AcqRel);
        match self.items.try_send(item) {
            Ok(()) => {
                // A wake-up only for a full batch waiting, not for records already in flight:
                // the worker would find nothing to do and re-arm at once.
                if before + 1 >= self.max_batch
                    && !self.wake_sent.load(Ordering::Relaxed)
                    && (before + 1).saturating_sub(self.counters.in_flight.load(Ordering::Relaxed))
                        >= self.max_batch
                    && !self.wake_sent.swap(true, Ordering::Relaxed)
                    && self.control.try_send(Control::Export).is_err()
                {
                    self.wake_sent.store(false, Ordering::Relaxed);
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.refuse(),
        }
    }

    /// Hands a liveness record to the worker through its own lane (the main queue when there
    /// is none), or counts it as dropped. Never blocks.
    fn push_priority(&self, item: T) {
        let Some(priority) = &self.priority else {
            self.push(item);
            return;
        };
        self.counters.queued.fetch_add(1, Ordering::AcqRel);
        if priority.try_send(item).is_err() {
            self.refuse();
        }
    }

    /// Counts a record that was counted as queued but could not be queued.
    fn refuse(&self) {
        // Outcome first, then `queued` (Release): a reader that loads `queued` first
        // (Acquire) never sees the record in neither count. See `Counters`.
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        self.counters.queued.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Exports what is queued now, waiting at most until `deadline`.
    pub(crate) fn flush(&self, deadline: Instant) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let (reply, reply_rx) = mpsc::sync_channel(1);
        self.send_control(Control::Flush { deadline, reply }, deadline)?;
        match reply_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                Err(OTelSdkError::Timeout(remaining_or_zero(deadline)))
            }
            Err(RecvTimeoutError::Disconnected) => Err(OTelSdkError::AlreadyShutdown),
        }
    }

    /// Exports what is queued within the deadline, waiting for the exports in flight, and
    /// stops the worker. Idempotent. Returns `false` when the worker did not finish before
    /// the deadline.
    pub(crate) fn shutdown(&self, deadline: Instant) -> bool {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return true;
        }
        let (reply, reply_rx) = mpsc::sync_channel(1);
        if self
            .send_control(Control::Shutdown { deadline, reply }, deadline)
            .is_err()
        {
            return false;
        }
        // A little grace past the deadline: the worker abandons its exports at the deadline
        // and then needs a moment to count what is left.
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(200);
        match reply_rx.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(handle) = self.worker.lock().ok().and_then(|mut w| w.take()) {
                    let _ = handle.join();
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }

    fn send_control(&self, mut message: Control, deadline: Instant) -> OTelSdkResult {
        loop {
            match self.control.try_send(message) {
                Ok(()) => return Ok(()),
                Err(control_mpsc::error::TrySendError::Closed(_)) => {
                    return Err(OTelSdkError::AlreadyShutdown)
                }
                Err(control_mpsc::error::TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return Err(OTelSdkError::Timeout(Duration::ZERO));
                    }
                    message = back;
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    fn set_resource(&self, resource: &Resource) {
        let _ = self
            .control
            .try_send(Control::SetResource(resource.clone()));
    }
}

fn remaining_or_zero(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// One export in flight: it resolves to the number of records it carried and its outcome.
type InFlight = Pin<Box<dyn Future<Output = (usize, OTelSdkResult)>>>;

struct Worker<E: BatchExport> {
    signal: &'static str,
    items: Receiver<E::Item>,
    priority: Option<Receiver<E::Item>>,
    control: control_mpsc::Receiver<Control>,
    /// Shared by the exports in flight; `Rc`, since every one of them runs on this thread.
    exporter: Rc<E>,
    config: QueueConfig,
    counters: Arc<Counters>,
    wake_sent: Arc<AtomicBool>,
    diagnostics: Arc<Diagnostics>,
    in_flight: FuturesUnordered<InFlight>,
    /// Records carried by `in_flight`.
    in_flight_records: usize,
    /// While set, no export is started before this instant (flush and shutdown excepted).
    backoff: Option<Instant>,
    /// The pause to apply after the next failure.
    next_delay: Duration,
    /// True between a failed export and the next successful one.
    failing: bool,
    /// When the queue was last found empty: a record waits at most `interval` past it.
    last_drain: Instant,
}

impl<E: BatchExport> Worker<E> {
    async fn run(mut self) {
        loop {
            self.start_due_exports();
            let wake_at = self.next_wake().map(tokio::time::Instant::from_std);
            let timer = async move {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                message = self.control.recv() => match message {
                    // A full batch is waiting: the next round starts it if a slot is free.
                    Some(Control::Export) => {}
                    Some(Control::Flush { deadline, reply }) => {
                        let waiting = self.waiting();
                        let ok = self.drain(deadline, Some(waiting)).await;
                        let _ = reply.send(if ok {
                            Ok(())
                        } else {
                            Err(OTelSdkError::InternalFailure(format!(
                                "not every {} record could be exported before the deadline",
                                self.signal
                            )))
                        });
                    }
                    Some(Control::Shutdown { deadline, reply }) => {
                        self.drain(deadline, None).await;
                        self.stop(deadline);
                        let _ = reply.send(());
                        return;
                    }
                    Some(Control::SetResource(resource)) => {
                        // The exporter is changed only while no export holds it.
                        while let Some(done) = self.in_flight.next().await {
                            self.settle(done);
                        }
                        if let Some(exporter) = Rc::get_mut(&mut self.exporter) {
                            exporter.set_resource(&resource);
                        }
                    }
                    None => {
                        // Every handle is gone without a shutdown: export what is there,
                        // briefly.
                        let deadline =
                            Instant::now() + self.config.export_timeout.min(MAX_BACKOFF);
                        self.drain(deadline, None).await;
                        self.stop(deadline);
                        return;
                    }
                },
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.settle(done);
                }
                () = timer => {}
            }
        }
    }

    /// When the loop must look again without being woken: the end of a backoff, or the
    /// moment the oldest waiting record has waited `interval`. None while every slot is busy
    /// (a finishing export wakes the loop).
    fn next_wake(&self) -> Option<Instant> {
        if let Some(backoff) = self.backoff {
            return Some(backoff);
        }
        if self.in_flight.len() >= self.slots() {
            return None;
        }
        Some(self.last_drain + self.config.interval)
    }

    /// Exports that may be in flight now: all slots while the collector answers, one while
    /// it fails, so that an outage costs one batch per attempt rather than one per slot.
    fn slots(&self) -> usize {
        if self.failing {
            1
        } else {
            self.config.max_concurrent_exports
        }
    }

    /// Records queued but not yet handed to an export (an estimate: pushes in progress are
    /// already counted).
    fn waiting(&self) -> usize {
        self.counters
            .queued
            .load(Ordering::Acquire)
            .saturating_sub(self.in_flight_records)
    }

    /// Starts exports while slots are free and a batch is due: a full batch at once, or what
    /// is queued once the oldest record has waited `interval`. A backlog therefore goes out
    /// in batches sized by what is queued, as fast as the collector answers.
    fn start_due_exports(&mut self) {
        let now = Instant::now();
        if let Some(backoff) = self.backoff {
            if now < backoff {
                return;
            }
            self.backoff = None;
        }
        let due = now >= self.last_drain + self.config.interval;
        while self.in_flight.len() < self.slots() {
            let waiting = self.waiting();
            if !due && waiting < self.config.max_batch {
                // Ready for the next wake-up.
                self.wake_sent.store(false, Ordering::Relaxed);
                return;
            }
            if self.start_export(self.config.max_batch) == 0 {
                self.last_drain = now;
                self.wake_sent.store(false, Ordering::Relaxed);
                return;
            }
        }
        // Every slot is busy: a finishing export brings the loop back here, so wake-ups are
        // not needed until then (the flag stays set).
    }

    /// Takes up to `limit` records, liveness lane first, and starts exporting them. Returns
    /// how many it took.
    fn start_export(&mut self, limit: usize) -> usize {
        let mut batch = Vec::with_capacity(limit.min(self.waiting().max(1)));
        if let Some(priority) = &self.priority {
            while batch.len() < limit {
                match priority.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        while batch.len() < limit {
            match self.items.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let count = batch.len();
        if count == 0 {
            return 0;
        }
        self.in_flight_records += count;
        self.counters
            .in_flight
            .store(self.in_flight_records, Ordering::Relaxed);
        let exporter = Rc::clone(&self.exporter);
        let timeout = self.config.export_timeout;
        self.in_flight.push(Box::pin(async move {
            let result = match tokio::time::timeout(timeout, exporter.export(batch)).await {
                Ok(result) => result,
                Err(_) => Err(OTelSdkError::Timeout(timeout)),
            };
            (count, result)
        }));
        count
    }

    /// Exports queued records, using every slot and ignoring the backoff, and waits for the
    /// exports in flight, until nothing is left or `deadline` passes. With a `budget`, starts
    /// at most that many records (what was queued when a flush was asked for), so that a
    /// steady stream cannot hold a flush until its deadline. Returns true when everything
    /// went out without a failure.
    async fn drain(&mut self, deadline: Instant, mut budget: Option<usize>) -> bool {
        let mut all_ok = true;
        let deadline_at = tokio::time::Instant::from_std(deadline);
        loop {
            while self.in_flight.len() < self.slots() {
                let limit = match budget {
                    Some(0) => break,
                    Some(left) => left.min(self.config.max_batch),
                    None => self.config.max_batch,
                };
                let took = self.start_export(limit);
                if took == 0 {
                    break;
                }
                if let Some(left) = budget.as_mut() {
                    *left = left.saturating_sub(took);
                }
            }
            if self.in_flight.is_empty() {
                self.last_drain = Instant::now();
                self.wake_sent.store(false, Ordering::Relaxed);
                return all_ok;
            }
            tokio::select! {
                Some(done) = self.in_flight.next() => all_ok &= self.settle(done),
                () = tokio::time::sleep_until(deadline_at) => return false,
            }
        }
    }

    /// Counts the outcome of a finished export and adjusts the backoff. Returns true on
    /// success.
    fn settle(&mut self, (count, result): (usize, OTelSdkResult)) -> bool {
        self.in_flight_records = self.in_flight_records.saturating_sub(count);
        self.counters
            .in_flight
            .store(self.in_flight_records, Ordering::Relaxed);
        // Counted by outcome first and only then out of `queued`, so that a live reader
        // never misses these records (see `Counters`).
        match result {
            Ok(()) => {
                self.counters
                    .exported
                    .fetch_add(count as u64, Ordering::Relaxed);
                self.counters.queued.fetch_sub(count, Ordering::AcqRel);
                self.backoff = None;
                self.next_delay = INITIAL_BACKOFF;
                if self.failing {
                    self.failing = false;
                    self.diagnostics.info(&format!(
                        "{} export to {} recovered",
                        self.signal, self.diagnostics.endpoint
                    ));
                }
                true
            }
            Err(error) => {
                self.counters
                    .failed
                    .fetch_add(count as u64, Ordering::Relaxed);
                self.counters.failed_exports.fetch_add(1, Ordering::Relaxed);
                self.counters.queued.fetch_sub(count, Ordering::AcqRel);
                self.failing = true;
                let signal = self.signal;
                let capacity = self.config.capacity;
                self.diagnostics.warn_once(|endpoint| {
                    format!(
                        "cannot export {signal} to {endpoint}: {error}. Telemetry is being lost: \
                         exports are retried with backoff, and records are dropped once a queue \
                         of {capacity} is full. Counts are in Telemetry::stats(); this warning \
                         is shown once."
                    )
                });
                // Exports in flight together fail together: one backoff step for all of them.
                let now = Instant::now();
                if self.backoff.is_none_or(|until| until <= now) {
                    self.backoff = Some(now + self.next_delay);
                    self.next_delay = (self.next_delay * 2).min(MAX_BACKOFF);
                }
                false
            }
        }
    }

    /// At shutdown: exports still in flight are abandoned and count as failed (they were
    /// handed to the exporter); records still queued will never be exported and stay counted
    /// in `queued`, which the shutdown report lists as not delivered.
    fn stop(&mut self, deadline: Instant) {
        let abandoned = self.in_flight.len();
        self.in_flight.clear();
        if abandoned > 0 {
            let count = self.in_flight_records;
            self.in_flight_records = 0;
            self.counters.in_flight.store(0, Ordering::Relaxed);
            self.counters
                .failed
                .fetch_add(count as u64, Ordering::Relaxed);
            self.counters
                .failed_exports
                .fetch_add(abandoned as u64, Ordering::Relaxed);
            self.counters.queued.fetch_sub(count, Ordering::AcqRel);
        }
        if let Some(priority) = &self.priority {
            while priority.try_recv().is_ok() {}
        }
        while self.items.try_recv().is_ok() {}
        self.exporter
            .shutdown(remaining_or_zero(deadline).max(Duration::from_millis(10)));
    }
}

/// A span processor with a bounded queue, counted drops, and backoff on failed exports.
#[derive(Debug, Clone)]
pub(crate) struct BoundedSpanProcessor {
    queue: Arc<Queue<SpanData>>,
}

impl BoundedSpanProcessor {
    pub(crate) fn spawn<E, F>(
        config: &QueueConfig,
        diagnostics: Arc<Diagnostics>,
        make_exporter: F,
    ) -> Result<Self, BuildError>
    where
        E: SpanExporter + 'static,
        F: FnOnce() -> Result<E, BuildError> + Send + 'static,
    {
        let queue = Queue::spawn("spans", config, 0, diagnostics, move || {
            make_exporter().map(Spans)
        })?;
        Ok(BoundedSpanProcessor { queue })
    }

    pub(crate) fn queue(&self) -> &Arc<Queue<SpanData>> {
        &self.queue
    }
}

impl SpanProcessor for BoundedSpanProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    #[inline]
    fn on_end(&self, span: SpanData) {
        // Recorded but unsampled spans are not for export.
        if span.span_context.is_sampled() {
            self.queue.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.queue.flush(Instant::now() + PROVIDER_FLUSH_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.queue.shutdown(Instant::now() + timeout) {
            Ok(())
        } else {
            Err(OTelSdkError::Timeout(timeout))
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.queue.set_resource(resource);
    }
}

/// A log processor with a bounded queue, counted drops, and backoff on failed exports.
#[derive(Debug, Clone)]
pub(crate) struct BoundedLogProcessor {
    queue: Arc<Queue<LogItem>>,
    /// An empty record, swapped in for the one handed over so that the record's attributes
    /// and body move to the worker instead of being deep-copied (the stock processor clones).
    /// This processor is the last (and only) one, so nobody reads the record after it.
    blank: SdkLogRecord,
}

impl BoundedLogProcessor {
    pub(crate) fn spawn<E, F>(
        config: &QueueConfig,
        diagnostics: Arc<Diagnostics>,
        make_exporter: F,
    ) -> Result<Self, BuildError>
    where
        E: LogExporter + 'static,
        F: FnOnce() -> Result<E, BuildError> + Send + 'static,
    {
        let queue = Queue::spawn("logs", config, LIVENESS_CAPACITY, diagnostics, move || {
            make_exporter().map(Logs)
        })?;
        Ok(BoundedLogProcessor {
            queue,
            blank: blank_record(),
        })
    }

    pub(crate) fn queue(&self) -> &Arc<Queue<LogItem>> {
        &self.queue
    }
}

/// An empty `SdkLogRecord`. Its constructor is crate-private in the SDK; a logger of a provider
/// without processors hands one out through the public `Logger` API.
fn blank_record() -> SdkLogRecord {
    use opentelemetry::logs::{Logger as _, LoggerProvider as _};
    let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder().build();
    let record = provider.logger("").create_log_record();
    let _ = provider.shutdown();
    record
}

impl LogProcessor for BoundedLogProcessor {
    #[inline]
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        let mut record = std::mem::replace(record, self.blank.clone());
        // The tracing appender names every event after its call site ("event src/x.rs:12");
        // that is not an event name in the OpenTelemetry sense, and event names are what the
        // pipeline routes on, so it is cleared. Explicit `name:`s are kept.
        if record
            .event_name()
            .is_some_and(|name| name.starts_with("event ") && name.contains(".rs:"))
        {
            record.set_event_name("");
        }
        let liveness = scope.name() == SCOPE
            && record.event_name().is_some_and(|name| {
                name == names::HEARTBEAT_EVENT || name == names::REGISTRATION_EVENT
            });
        let item = Box::new((record, scope.clone()));
        if liveness {
            self.queue.push_priority(item);
        } else {
            self.queue.push(item);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.queue.flush(Instant::now() + PROVIDER_FLUSH_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.queue.shutdown(Instant::now() + timeout) {
            Ok(())
        } else {
            Err(OTelSdkError::Timeout(timeout))
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.queue.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use std::sync::atomic::AtomicBool;

    /// Collects exported spans; fails while `down` is set.
    #[derive(Debug, Clone, Default)]
    struct Collect {
        spans: Arc<Mutex<Vec<SpanData>>>,
        down: Arc<AtomicBool>,
    }

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if self.down.load(Ordering::SeqCst) {
                return Err(OTelSdkError::InternalFailure("collector down".into()));
            }
            self.spans.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn span(n: u64) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(u128::from(n) + 1),
                SpanId::from(n + 1),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "s".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("t").build(),
        }
    }

    fn config(capacity: usize) -> QueueConfig {
        QueueConfig {
            capacity,
            max_batch: 8,
            interval: Duration::from_millis(50),
            export_timeout: Duration::from_secs(1),
            max_concurrent_exports: 4,
        }
    }

    fn wait_until(mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "condition not met within 10 s");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn exports_everything_while_the_collector_is_up() {
        let exporter = Collect::default();
        let sink = exporter.clone();
        let diagnostics = Arc::new(Diagnostics::new("test".into()));
        let processor =
            BoundedSpanProcessor::spawn(&config(64), diagnostics, move || Ok(sink)).unwrap();
        for n in 0..40 {
            processor.on_end(span(n));
        }
        wait_until(|| exporter.spans.lock().unwrap().len() == 40);
        let counters = processor.queue().counters();
        assert_eq!(counters.exported.load(Ordering::Relaxed), 40);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
        assert!(processor
            .queue()
            .shutdown(Instant::now() + Duration::from_secs(1)));
        assert_eq!(counters.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn counts_drops_when_full_and_resumes_after_an_outage() {
        let exporter = Collect::default();
        exporter.down.store(true, Ordering::SeqCst);
        let sink = exporter.clone();
        let diagnostics = Arc::new(Diagnostics::new("test".into()));
        let processor =
            BoundedSpanProcessor::spawn(&config(64), diagnostics, move || Ok(sink)).unwrap();
        for n in 0..1000 {
            processor.on_end(span(n));
        }
        let counters = processor.queue().counters();
        wait_until(|| counters.failed_exports.load(Ordering::Relaxed) >= 1);
        let dropped = counters.dropped.load(Ordering::Relaxed);
        // At most the queue and one batch per export slot were taken.
        assert!(dropped >= 1000 - 64 - 4 * 8, "dropped {dropped}");
        exporter.down.store(false, Ordering::SeqCst);
        // What was queued during the outage goes out after the backoff...
        wait_until(|| counters.exported.load(Ordering::Relaxed) > 0);
        wait_until(|| counters.queued.load(Ordering::Relaxed) == 0);
        // ...and so does what comes after.
        for n in 0..5 {
            processor.on_end(span(10_000 + n));
        }
        wait_until(|| {
            exporter
                .spans
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.span_context.span_id() == SpanId::from(10_005))
        });
        let failed = counters.failed.load(Ordering::Relaxed);
        let exported = counters.exported.load(Ordering::Relaxed);
        assert!(processor
            .queue()
            .shutdown(Instant::now() + Duration::from_secs(1)));
        let queued = counters.queued.load(Ordering::Relaxed) as u64;
        assert_eq!(
            exported + failed + counters.dropped.load(Ordering::Relaxed) + queued,
            1005,
            "every span is accounted for exactly once"
        );
    }

    /// Regression: the worker lowered `queued` before raising `exported`, so a reader could
    /// see a batch in neither count. Live reads must never miss a record (and the outcomes
    /// alone never exceed what was pushed).
    #[test]
    fn live_stats_never_miss_a_record_in_motion() {
        #[derive(Debug)]
        struct Discard;
        impl SpanExporter for Discard {
            async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
                Ok(())
            }
        }
        let diagnostics = Arc::new(Diagnostics::new("test".into()));
        let cfg = QueueConfig {
            capacity: 64,
            // One record per export: as many moves from `queued` to `exported` as possible.
            max_batch: 1,
            interval: Duration::from_millis(1),
            export_timeout: Duration::from_secs(1),
            max_concurrent_exports: 4,
        };
        let processor = BoundedSpanProcessor::spawn(&cfg, diagnostics, || Ok(Discard)).unwrap();
        // Spans whose push has begun (an upper bound) and has returned (a lower bound).
        let started = Arc::new(AtomicU64::new(0));
        let pushed = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let no_logs = Counters::default();
        let total = 200_000_u64;
        thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut reads = 0_u64;
                while !done.load(Ordering::Acquire) || reads < 1_000 {
                    let before = pushed.load(Ordering::Acquire);
                    let stats =
                        crate::lifecycle::Stats::read(processor.queue().counters(), &no_logs);
                    let after = started.load(Ordering::Acquire);
                    let outcomes = stats.exported_spans + stats.dropped_spans + stats.failed_spans;
                    assert!(
                        outcomes + stats.queued_spans >= before,
                        "a record in neither count: {before} pushed, {stats:?}"
                    );
                    assert!(
                        outcomes <= after,
                        "more outcomes than records: {after} pushes begun, {stats:?}"
                    );
                    reads += 1;
                }
                reads
            });
            for n in 0..total {
                started.fetch_add(1, Ordering::Release);
                processor.on_end(span(n));
                pushed.fetch_add(1, Ordering::Release);
                if n % 64 == 0 {
                    // Let the worker take some, so both the drop and the export path run.
                    thread::yield_now();
                }
            }
            done.store(true, Ordering::Release);
            reader.join().unwrap();
        });
        assert!(processor
            .queue()
            .shutdown(Instant::now() + Duration::from_secs(5)));
        let stats = crate::lifecycle::Stats::read(processor.queue().counters(), &no_logs);
        assert!(
            stats.exported_spans > 0 && stats.dropped_spans > 0,
            "{stats:?}"
        );
        assert_eq!(
            stats.exported_spans + stats.dropped_spans + stats.failed_spans + stats.queued_spans,
            total,
            "exact once nothing moves: {stats:?}"
        );
    }

    #[test]
    fn an_outage_gives_one_warning_not_a_flood() {
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Clone, Default)]
        struct CountWarnings(Arc<AtomicU64>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountWarnings {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let meta = event.metadata();
                if meta.target() == DIAGNOSTICS_TARGET && *meta.level() == tracing::Level::WARN {
                    self.0.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let warnings = CountWarnings::default();
        let dispatch =
            tracing::Dispatch::new(tracing_subscriber::registry().with(warnings.clone()));
        let diagnostics = Arc::new(Diagnostics::new("test".into()));
        diagnostics.route_to(&dispatch);

        let exporter = Collect::default();
        exporter.down.store(true, Ordering::SeqCst);
        let sink = exporter.clone();
        let mut cfg = config(16);
        cfg.interval = Duration::from_millis(5);
        let processor = BoundedSpanProcessor::spawn(&cfg, diagnostics, move || Ok(sink)).unwrap();
        let counters = processor.queue().counters();
        // Several failed exports and thousands of drops...
        for round in 0..4_u64 {
            for n in 0..1000 {
                processor.on_end(span(round * 1000 + n));
            }
            let failed = counters.failed_exports.load(Ordering::Relaxed);
            wait_until(|| counters.failed_exports.load(Ordering::Relaxed) > failed);
        }
        assert!(counters.dropped.load(Ordering::Relaxed) > 3000);
        // ...and one warning.
        assert_eq!(warnings.0.load(Ordering::Relaxed), 1);
        processor
            .queue()
            .shutdown(Instant::now() + Duration::from_millis(100));
    }

    #[test]
    fn shutdown_respects_its_deadline_when_the_exporter_hangs() {
        #[derive(Debug)]
        struct Hang;
        impl SpanExporter for Hang {
            async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
        let diagnostics = Arc::new(Diagnostics::new("test".into()));
        let mut cfg = config(64);
        cfg.export_timeout = Duration::from_secs(60);
        let processor = BoundedSpanProcessor::spawn(&cfg, diagnostics, || Ok(Hang)).unwrap();
        for n in 0..20 {
            processor.on_end(span(n));
        }
        let started = Instant::now();
        processor
            .queue()
            .shutdown(Instant::now() + Duration::from_millis(300));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "shutdown must not hang"
        );
        let counters = processor.queue().counters();
        let unaccounted = counters.queued.load(Ordering::Relaxed) as u64
            + counters.failed.load(Ordering::Relaxed);
        assert_eq!(unaccounted, 20);
    }
}
