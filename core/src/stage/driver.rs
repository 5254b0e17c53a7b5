//! The batch driver: the one consume → handle → ack loop every consuming stage runs.
//!
//! A stage implements [`BatchHandler`]: it is handed a batch and answers with the [`Mark`]s
//! to acknowledge (none when it has nothing durable to acknowledge yet). When its next hop
//! refuses (the store is down, the disk is full, a required output is away), it logs why (at
//! its own level, with its own fields), calls [`Input::retry`] with its [`Backoff`]'s next
//! delay, and tries again once that returns. The driver does the rest, the same way for
//! every stage:
//!
//! * takes batches from the [`Source`] (up to `batch_max_records`, waiting up to
//!   `batch_linger`), records it handed out while paused first, in order;
//! * while the stage retries, pauses the source again at every poll step (so that a
//!   partition assigned meanwhile is paused too) but keeps polling it (librdkafka drops a
//!   consumer that does not poll within `max.poll.interval.ms`, paused or not) into a stash
//!   bounded by `batch_max_records`. A source whose pausing holds records back (Kafka) is
//!   polled even once the stash is full; one that ignores pausing (an in-process channel)
//!   is then left to push back on its sender;
//! * resumes the source once the stage got through, and acknowledges the marks the stage
//!   returned, telling it how that went ([`BatchHandler::acked`]);
//! * retries a failed read ([`ReadRetry`]), ends when an in-process input closes, and stops
//!   when the [`CancellationToken`] is cancelled: a retry in progress returns [`Stopped`] and
//!   the stage returns without marks, so nothing it did not finish is acknowledged.
//!
//! ```
//! use std::time::Duration;
//! use dlog_core::source::{ChannelSource, InProcessBatch, Mark, RawRecord, Source};
//! use dlog_core::stage::{BatchHandler, Driver, DriverOptions, Input};
//! use tokio_util::sync::CancellationToken;
//!
//! /// Counts records; acknowledges every batch.
//! struct Count(usize);
//!
//! impl<S: Source> BatchHandler<S> for Count {
//!     type Error = std::convert::Infallible;
//!     async fn handle(&mut self, batch: Vec<RawRecord>, _: &mut Input<S>) -> Result<Vec<Mark>, Self::Error> {
//!         self.0 += batch.len();
//!         Ok(Mark::latest(&batch))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (tx, source) = ChannelSource::new(4);
//! let (ack, acked) = tokio::sync::oneshot::channel();
//! let record = RawRecord { topic: "trace_logs".into(), partition: 0, offset: 0, key: None,
//!     payload: vec![], headers: vec![], timestamp_ms: None };
//! tx.send(InProcessBatch { records: vec![record], ack }).await.unwrap();
//! drop(tx); // the input closes once the batch is taken: the driver then ends
//! let mut count = Count(0);
//! Driver::new(source, DriverOptions::default(), CancellationToken::new())
//!     .run(&mut count)
//!     .await
//!     .unwrap();
//! acked.await.unwrap(); // the sender's acknowledgement completed
//! assert_eq!(count.0, 1);
//! # }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Backoff;
use crate::source::{Mark, RawRecord, Source, SourceError};

/// Longest wait between two polls of a paused input: far below any consumer's
/// `max.poll.interval.ms`, and short enough to notice a stop quickly.
pub const PAUSED_POLL_STEP: Duration = Duration::from_millis(250);

/// How the driver waits after a failed read of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadRetry {
    /// `retry_initial` doubling (with jitter) to `retry_max`, logged with the wait.
    #[default]
    Backoff,
    /// `retry_initial` every time.
    Fixed,
}

/// How the driver batches and waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverOptions {
    /// Most records per batch, and most records stashed while paused.
    pub batch_max_records: usize,
    /// How long a batch waits to fill up.
    pub batch_linger: Duration,
    /// First wait after a failed read (and of [`Input::backoff`]); doubles per attempt.
    pub retry_initial: Duration,
    /// Longest of those waits.
    pub retry_max: Duration,
    /// How a failed read is retried.
    pub read_retry: ReadRetry,
    /// Whether a failed poll of the paused input is logged (otherwise it is only retried at
    /// the next poll step).
    pub log_paused_poll_errors: bool,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            batch_max_records: 1000,
            batch_linger: Duration::from_millis(100),
            retry_initial: Duration::from_millis(super::DEFAULT_RETRY_INITIAL_MS),
            retry_max: Duration::from_millis(super::DEFAULT_RETRY_MAX_MS),
            read_retry: ReadRetry::Backoff,
            log_paused_poll_errors: true,
        }
    }
}

/// What a stage exports about its input (its metrics): no-ops by default.
pub trait InputEvents: Send + Sync {
    /// The input was paused (`true`) or resumed (`false`).
    fn paused(&self, _paused: bool) {}
    /// Pausing or resuming the input failed (the driver logs it and tries again later). Told
    /// at most once per hold-up for each.
    fn input_error(&self, _error: &SourceError) {}
}

/// Exports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoInputEvents;

impl InputEvents for NoInputEvents {}

/// The stage was told to stop while it waited to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// One consuming stage's batch logic, driven by [`Driver::run`].
///
/// Every method returns the marks to acknowledge: the last record per partition whose
/// output is durable. Returning none acknowledges nothing (yet).
pub trait BatchHandler<S: Source>: Send {
    /// A failure that ends the stage.
    type Error: Send;

    /// Runs once before the first batch (for work a previous run left undone).
    fn start(
        &mut self,
        input: &mut Input<S>,
    ) -> impl Future<Output = Result<Vec<Mark>, Self::Error>> + Send {
        let _ = input;
        async { Ok(Vec::new()) }
    }

    /// Handles one batch; called with an empty batch when nothing arrived within the linger
    /// (for time-driven work). While the next hop refuses, call [`Input::retry`]; when it
    /// returns [`Stopped`], return without marks.
    fn handle(
        &mut self,
        batch: Vec<RawRecord>,
        input: &mut Input<S>,
    ) -> impl Future<Output = Result<Vec<Mark>, Self::Error>> + Send;

    /// How acknowledging `marks` went (the source committed them, or failed to). Called
    /// only for a non-empty set of marks.
    fn acked(&mut self, marks: Vec<Mark>, result: Result<(), SourceError>) {
        let _ = (marks, result);
    }

    /// Runs once when the stage stops (told to, or its in-process input closed).
    fn finish(
        &mut self,
        input: &mut Input<S>,
    ) -> impl Future<Output = Result<Vec<Mark>, Self::Error>> + Send {
        let _ = input;
        async { Ok(Vec::new()) }
    }
}

/// The stage's view of its input while it handles a batch: retry with the input paused but
/// still polled, resume, and whether the stage is stopping.
pub struct Input<S> {
    source: S,
    options: DriverOptions,
    shutdown: CancellationToken,
    events: Arc<dyn InputEvents>,
    /// Records handed out while paused, handled before anything new.
    stash: VecDeque<RawRecord>,
    /// Pausing was tried since the source last resumed: it needs resuming (even if pausing
    /// failed, as it may have paused part of the input).
    paused: bool,
    /// [`InputEvents::paused`] was told `true` last.
    shown_paused: bool,
    /// A retry happened since the last [`Input::resume`]: a hold-up is in progress.
    held: bool,
    /// A failure to pause was reported during the current hold-up.
    pause_error_reported: bool,
    /// A failure to resume was reported for the current (or last) hold-up.
    resume_error_reported: bool,
}

impl<S: Source> Input<S> {
    /// True once the stage was told to stop.
    pub fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// A fresh backoff with the configured waits.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.options.retry_initial, self.options.retry_max)
    }

    /// Waits `wait` (a [`Backoff`]'s next delay) before the stage tries again, with the input
    /// paused but still polled (what it hands out is stashed for later, in order). The stage
    /// logs why before calling this. [`Stopped`] when told to stop meanwhile.
    pub async fn retry(&mut self, wait: Duration) -> Result<(), Stopped> {
        if !std::mem::replace(&mut self.held, true) {
            // A new hold-up: its failures to pause or resume are news.
            self.pause_error_reported = false;
            self.resume_error_reported = false;
        }
        if self.stopping() {
            return Err(Stopped);
        }
        self.wait_polling(wait).await;
        if self.stopping() {
            return Err(Stopped);
        }
        Ok(())
    }

    /// Resumes the input after a retry went through. True when the stage had been held up
    /// since the last call (its input stalled meanwhile).
    pub fn resume(&mut self) -> bool {
        if self.paused {
            match self.source.resume() {
                Ok(()) => {
                    self.paused = false;
                    if std::mem::take(&mut self.shown_paused) {
                        self.events.paused(false);
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut self.resume_error_reported, true) {
                        self.events.input_error(&e);
                        tracing::warn!(error = %e, "resuming the input failed; will try again");
                    }
                }
            }
        }
        std::mem::take(&mut self.held)
    }

    /// Pauses the source, again when already paused: a partition assigned since the last
    /// call (a rebalance during the hold-up) is paused too.
    fn pause(&mut self) {
        self.paused = true;
        match self.source.pause() {
            Ok(()) => {
                if !std::mem::replace(&mut self.shown_paused, true) {
                    self.events.paused(true);
                }
            }
            // Not fatal: an unpaused input is only polled into the bounded stash.
            Err(e) => {
                if !std::mem::replace(&mut self.pause_error_reported, true) {
                    self.events.input_error(&e);
                    tracing::warn!(error = %e, "pausing the input failed");
                }
            }
        }
    }

    /// Waits `wait` (or until stopped), pausing the input and polling it all along into the
    /// stash.
    async fn wait_polling(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        let stop = self.shutdown.clone();
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline || self.stopping() {
                return;
            }
            self.pause();
            let step = (deadline - now).min(PAUSED_POLL_STEP);
            let room = self
                .options
                .batch_max_records
                .saturating_sub(self.stash.len());
            // A source that ignores pausing is left alone once the stash is full, so that it
            // pushes back on its sender; one that holds records back while paused must still
            // be polled (a Kafka consumer that stops polling is evicted), and hands out little
            // or nothing.
            let max = if self.source.pause_holds_records() {
                room.max(1)
            } else {
                room
            };
            if max == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            let polled = tokio::select! {
                polled = self.source.next_batch(max, step) => polled,
                _ = stop.cancelled() => return,
            };
            match polled {
                Ok(records) => {
                    if !records.is_empty() {
                        tracing::debug!(
                            records = records.len(),
                            "paused input handed out records; kept for after the outage"
                        );
                    }
                    self.stash.extend(records);
                }
                Err(e) => {
                    // A closed in-process input ends the stage through the main loop; here,
                    // only do not spin on it.
                    if self.options.log_paused_poll_errors && !matches!(e, SourceError::Closed) {
                        tracing::warn!(error = %e, "polling the paused input failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(step) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Runs a [`BatchHandler`] over a [`Source`]: see the [module docs](self).
pub struct Driver<S> {
    input: Input<S>,
}

impl<S: Source> Driver<S> {
    /// A driver reading `source` until `shutdown` is cancelled.
    pub fn new(source: S, options: DriverOptions, shutdown: CancellationToken) -> Self {
        Driver {
            input: Input {
                source,
                options,
                shutdown,
                events: Arc::new(NoInputEvents),
                stash: VecDeque::new(),
                paused: false,
                shown_paused: false,
                held: false,
                pause_error_reported: false,
                resume_error_reported: false,
            },
        }
    }

    /// Where pausing, resuming and their failures are reported.
    pub fn with_events(mut self, events: Arc<dyn InputEvents>) -> Self {
        self.input.events = events;
        self
    }

    /// Runs until told to stop or the input closes; fails only when the handler does.
    pub async fn run<H: BatchHandler<S>>(mut self, handler: &mut H) -> Result<(), H::Error> {
        let input = &mut self.input;
        let marks = handler.start(input).await?;
        settle(input, handler, marks).await;
        let mut input_backoff = input.backoff();
        let stop = input.shutdown.clone();
        while !input.stopping() {
            let batch = if !input.stash.is_empty() {
                // What the paused input handed out comes first, in order.
                let n = input.stash.len().min(input.options.batch_max_records);
                input.stash.drain(..n).collect()
            } else {
                let (max, linger) = (input.options.batch_max_records, input.options.batch_linger);
                tokio::select! {
                    batch = input.source.next_batch(max, linger) => match batch {
                        Ok(batch) => {
                            input_backoff.reset();
                            batch
                        }
                        // An in-process input whose sender went away: everything it sent
                        // was handed out.
                        Err(SourceError::Closed) => break,
                        // A broker or disk hiccup: nothing was taken, so try again after a
                        // while rather than stop.
                        Err(e) => {
                            let wait = match input.options.read_retry {
                                ReadRetry::Backoff => {
                                    let wait = input_backoff.next_delay();
                                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "reading the input failed; retrying");
                                    wait
                                }
                                ReadRetry::Fixed => {
                                    tracing::warn!(error = %e, "reading the input failed; retrying");
                                    input.options.retry_initial
                                }
                            };
                            tokio::select! {
                                () = tokio::time::sleep(wait) => continue,
                                () = stop.cancelled() => break,
                            }
                        }
                    },
                    _ = stop.cancelled() => break,
                }
            };
            let marks = handler.handle(batch, input).await?;
            settle(input, handler, marks).await;
        }
        let marks = handler.finish(input).await?;
        settle(input, handler, marks).await;
        Ok(())
    }
}

/// Resumes the input if the handler left it paused, then acknowledges `marks`.
async fn settle<S: Source, H: BatchHandler<S>>(
    input: &mut Input<S>,
    handler: &mut H,
    marks: Vec<Mark>,
) {
    if input.paused && !input.stopping() {
        input.resume();
    }
    if marks.is_empty() {
        return;
    }
    let result = input.source.ack(&marks).await;
    handler.acked(marks, result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{ChannelSource, InProcessBatch};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn record(offset: i64) -> RawRecord {
        RawRecord {
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            payload: vec![],
            headers: vec![],
            timestamp_ms: None,
        }
    }

    /// A source that hands out one record per poll, paused or not, and records what it was
    /// asked to do.
    struct Probe {
        next: i64,
        end: i64,
        paused: Arc<AtomicBool>,
        polls_while_paused: Arc<AtomicUsize>,
        acked: Arc<std::sync::Mutex<Vec<i64>>>,
    }

    impl Source for Probe {
        async fn next_batch(
            &mut self,
            _max: usize,
            linger: Duration,
        ) -> Result<Vec<RawRecord>, SourceError> {
            if self.paused.load(Ordering::SeqCst) {
                self.polls_while_paused.fetch_add(1, Ordering::SeqCst);
            }
            if self.next >= self.end {
                tokio::time::sleep(linger).await;
                return Err(SourceError::Closed);
            }
            self.next += 1;
            Ok(vec![record(self.next - 1)])
        }

        async fn ack(&mut self, marks: &[Mark]) -> Result<(), SourceError> {
            self.acked
                .lock()
                .unwrap()
                .extend(marks.iter().map(|m| m.offset));
            Ok(())
        }

        fn pause(&mut self) -> Result<(), SourceError> {
            self.paused.store(true, Ordering::SeqCst);
            Ok(())
        }

        fn resume(&mut self) -> Result<(), SourceError> {
            self.paused.store(false, Ordering::SeqCst);
            Ok(())
        }
    }

    /// Refuses the first batch `refusals` times, then takes everything, in order.
    struct Flaky {
        refusals: usize,
        seen: Vec<i64>,
        held_reported: bool,
    }

    impl<S: Source> BatchHandler<S> for Flaky {
        type Error = std::convert::Infallible;

        async fn handle(
            &mut self,
            batch: Vec<RawRecord>,
            input: &mut Input<S>,
        ) -> Result<Vec<Mark>, Self::Error> {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let mut backoff = input.backoff();
            while self.refusals > 0 {
                self.refusals -= 1;
                if input.retry(backoff.next_delay()).await.is_err() {
                    return Ok(Vec::new());
                }
            }
            if input.resume() {
                self.held_reported = true;
            }
            self.seen.extend(batch.iter().map(|r| r.offset));
            Ok(Mark::latest(&batch))
        }
    }

    #[tokio::test]
    async fn records_polled_while_paused_are_handled_next_in_order_and_all_acked() {
        let paused = Arc::new(AtomicBool::new(false));
        let polls_while_paused = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let source = Probe {
            next: 0,
            end: 5,
            paused: paused.clone(),
            polls_while_paused: polls_while_paused.clone(),
            acked: acked.clone(),
        };
        let options = DriverOptions {
            batch_max_records: 10,
            batch_linger: Duration::from_millis(5),
            retry_initial: Duration::from_millis(30),
            retry_max: Duration::from_millis(30),
            ..DriverOptions::default()
        };
        let mut handler = Flaky {
            refusals: 2,
            seen: Vec::new(),
            held_reported: false,
        };
        Driver::new(source, options, CancellationToken::new())
            .run(&mut handler)
            .await
            .unwrap();
        assert_eq!(handler.seen, vec![0, 1, 2, 3, 4]);
        assert!(handler.held_reported);
        assert!(polls_while_paused.load(Ordering::SeqCst) > 0);
        assert!(!paused.load(Ordering::SeqCst));
        assert_eq!(*acked.lock().unwrap().last().unwrap(), 4);
    }

    #[tokio::test]
    async fn a_stop_during_a_retry_acknowledges_nothing() {
        let (tx, source) = ChannelSource::new(4);
        let (ack, mut acked) = tokio::sync::oneshot::channel();
        tx.send(InProcessBatch {
            records: vec![record(0)],
            ack,
        })
        .await
        .unwrap();
        let stop = CancellationToken::new();
        let mut handler = Flaky {
            refusals: usize::MAX,
            seen: Vec::new(),
            held_reported: false,
        };
        let options = DriverOptions {
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(10),
            ..DriverOptions::default()
        };
        let run = Driver::new(source, options, stop.clone()).run(&mut handler);
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.cancel();
        };
        let (result, ()) = tokio::join!(run, stopper);
        result.unwrap();
        assert!(handler.seen.is_empty());
        assert!(acked.try_recv().is_err(), "nothing handled, nothing acked");
    }

    /// A Kafka-like source: partitions hand out records unless paused; `pause` pauses the
    /// current assignment only; partition 1 is assigned once the source has been paused.
    struct Rebalancing {
        assigned: Vec<i32>,
        paused: std::collections::BTreeSet<i32>,
        next: [i64; 2],
        pauses: usize,
        polls_while_held: Arc<AtomicUsize>,
        partition_1_paused: Arc<AtomicBool>,
        fail_pause: bool,
        fail_resume: bool,
    }

    impl Rebalancing {
        fn new(polls_while_held: Arc<AtomicUsize>, partition_1_paused: Arc<AtomicBool>) -> Self {
            Rebalancing {
                assigned: vec![0],
                paused: Default::default(),
                next: [0, 0],
                pauses: 0,
                polls_while_held,
                partition_1_paused,
                fail_pause: false,
                fail_resume: false,
            }
        }
    }

    impl Source for Rebalancing {
        async fn next_batch(
            &mut self,
            max: usize,
            linger: Duration,
        ) -> Result<Vec<RawRecord>, SourceError> {
            if !self.paused.is_empty() || self.pauses > 0 {
                self.polls_while_held.fetch_add(1, Ordering::SeqCst);
            }
            let mut out = Vec::new();
            for &p in &self.assigned {
                while !self.paused.contains(&p) && out.len() < max {
                    let mut r = record(self.next[p as usize]);
                    r.partition = p;
                    self.next[p as usize] += 1;
                    out.push(r);
                }
            }
            if out.is_empty() {
                tokio::time::sleep(linger).await;
            }
            Ok(out)
        }

        async fn ack(&mut self, _marks: &[Mark]) -> Result<(), SourceError> {
            Ok(())
        }

        fn pause(&mut self) -> Result<(), SourceError> {
            self.pauses += 1;
            if self.fail_pause {
                return Err(SourceError::Kafka("pause refused".into()));
            }
            self.paused.extend(self.assigned.iter().copied());
            self.partition_1_paused
                .store(self.paused.contains(&1), Ordering::SeqCst);
            // A rebalance during the hold-up hands this consumer a new partition.
            if !self.assigned.contains(&1) {
                self.assigned.push(1);
            }
            Ok(())
        }

        fn resume(&mut self) -> Result<(), SourceError> {
            if self.fail_resume {
                return Err(SourceError::Kafka("resume refused".into()));
            }
            self.paused.clear();
            Ok(())
        }

        fn pause_holds_records(&self) -> bool {
            true
        }
    }

    /// Holds the first non-empty batch up for `hold`, then takes everything.
    struct HoldOnce {
        hold: Duration,
        held: bool,
        handled: usize,
    }

    impl<S: Source> BatchHandler<S> for HoldOnce {
        type Error = std::convert::Infallible;

        async fn handle(
            &mut self,
            batch: Vec<RawRecord>,
            input: &mut Input<S>,
        ) -> Result<Vec<Mark>, Self::Error> {
            if !batch.is_empty() && !self.held {
                self.held = true;
                if input.retry(self.hold).await.is_err() {
                    return Ok(Vec::new());
                }
                input.resume();
            }
            self.handled += 1;
            Ok(Mark::latest(&batch))
        }
    }

    #[tokio::test]
    async fn a_partition_assigned_while_paused_is_paused_and_a_full_stash_keeps_polling() {
        let polls = Arc::new(AtomicUsize::new(0));
        let partition_1_paused = Arc::new(AtomicBool::new(false));
        let source = Rebalancing::new(polls.clone(), partition_1_paused.clone());
        let options = DriverOptions {
            batch_max_records: 4,
            batch_linger: Duration::from_millis(5),
            ..DriverOptions::default()
        };
        let mut handler = HoldOnce {
            hold: Duration::from_millis(1200),
            held: false,
            handled: 0,
        };
        let mut driver = Driver::new(source, options, CancellationToken::new());
        // One batch of partition 0, held up.
        let input = &mut driver.input;
        let batch = input.source.next_batch(4, Duration::ZERO).await.unwrap();
        let _ = handler.handle(batch, input).await;
        // The partition assigned during the hold-up was paused at the next poll step: it
        // filled the stash once, and nothing more came...
        assert!(partition_1_paused.load(Ordering::SeqCst));
        assert_eq!(input.stash.len(), 4, "partition 1 filled the stash");
        // ...and the input was polled all along (every step of the 1.2 s), although the stash
        // was full after the first one.
        assert!(
            polls.load(Ordering::SeqCst) >= 4,
            "polled {} times while held",
            polls.load(Ordering::SeqCst)
        );
    }

    /// Counts input errors.
    #[derive(Default)]
    struct Errors(AtomicUsize);

    impl InputEvents for Errors {
        fn input_error(&self, _error: &SourceError) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_failing_pause_counts_once_per_hold_up_and_a_failing_resume_once() {
        // Pausing fails at every one of the hold-up's poll steps: one error.
        let errors = Arc::new(Errors::default());
        let mut source = Rebalancing::new(Default::default(), Default::default());
        source.fail_pause = true;
        let options = DriverOptions {
            batch_max_records: 4,
            batch_linger: Duration::from_millis(5),
            ..DriverOptions::default()
        };
        let mut driver = Driver::new(source, options.clone(), CancellationToken::new())
            .with_events(errors.clone());
        let input = &mut driver.input;
        for _ in 0..3 {
            input.retry(Duration::from_millis(600)).await.unwrap();
        }
        assert!(
            input.source.pauses >= 6,
            "paused {} times",
            input.source.pauses
        );
        assert_eq!(errors.0.load(Ordering::SeqCst), 1);
        // A second hold-up is news again.
        input.resume();
        input.retry(Duration::from_millis(10)).await.unwrap();
        assert_eq!(errors.0.load(Ordering::SeqCst), 2);

        // Resuming fails after the hold-up, and again at every later batch: one error.
        let errors = Arc::new(Errors::default());
        let mut source = Rebalancing::new(Default::default(), Default::default());
        source.fail_resume = true;
        let stop = CancellationToken::new();
        let mut handler = HoldOnce {
            hold: Duration::from_millis(10),
            held: false,
            handled: 0,
        };
        let driver = Driver::new(source, options, stop.clone()).with_events(errors.clone());
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.cancel();
        };
        let (result, ()) = tokio::join!(driver.run(&mut handler), stopper);
        result.unwrap();
        assert!(handler.handled > 3, "handled {} batches", handler.handled);
        assert_eq!(errors.0.load(Ordering::SeqCst), 1);
    }
}
