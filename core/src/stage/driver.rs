//! The batch driver: the one consume → handle → ack loop every consuming stage runs.
//!
//! A stage implements [`BatchHandler`]: it is handed a batch and answers with the [`Mark`]s
//! to acknowledge (none when it has nothing durable to acknowledge yet). When its next hop
//! refuses (the store is down, the disk is full, a required output is away), it calls
//! [`Input::retry`] with a [`Backoff`] and a reason, and tries again once that returns. The
//! driver does the rest, the same way for every stage:
//!
//! * takes batches from the [`Source`] (up to `batch_max_records`, waiting up to
//!   `batch_linger`), records it handed out while paused first, in order;
//! * while the stage retries, pauses the source but keeps polling it (librdkafka drops a
//!   consumer that does not poll within `max.poll.interval.ms`, paused or not) into a stash
//!   bounded by `batch_max_records` (an input that ignores pausing, such as an in-process
//!   channel, is then left to push back on its sender);
//! * resumes the source once the stage got through, and acknowledges the marks the stage
//!   returned, telling it how that went ([`BatchHandler::acked`]);
//! * retries a failed read with backoff, ends when an in-process input closes, and stops
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
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Backoff;
use crate::source::{Mark, RawRecord, Source, SourceError};

/// Longest wait between two polls of a paused input: far below any consumer's
/// `max.poll.interval.ms`, and short enough to notice a stop quickly.
pub const PAUSED_POLL_STEP: Duration = Duration::from_millis(250);

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
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            batch_max_records: 1000,
            batch_linger: Duration::from_millis(100),
            retry_initial: Duration::from_millis(super::DEFAULT_RETRY_INITIAL_MS),
            retry_max: Duration::from_millis(super::DEFAULT_RETRY_MAX_MS),
        }
    }
}

/// What a stage exports about its input (its metrics): no-ops by default.
pub trait InputEvents: Send + Sync {
    /// The input was paused (`true`) or resumed (`false`).
    fn paused(&self, _paused: bool) {}
    /// Pausing or resuming the input failed (the driver logs it and tries again later).
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

    /// How acknowledging `marks` went (the source committed them, or failed to).
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
    /// The source is paused.
    paused: bool,
    /// A retry happened since the last [`Input::resume`] (even if pausing failed).
    held: bool,
}

impl<S: Source> Input<S> {
    /// The source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// True once the stage was told to stop.
    pub fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// A fresh backoff with the configured waits.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.options.retry_initial, self.options.retry_max)
    }

    /// Records handed out while paused and not yet handled.
    pub fn stashed(&self) -> usize {
        self.stash.len()
    }

    /// Waits `backoff`'s next delay before the stage tries again, with the input paused but
    /// still polled (what it hands out is stashed for later, in order). Logs `reason` at the
    /// first attempt and every power of two. [`Stopped`] when told to stop meanwhile.
    pub async fn retry(
        &mut self,
        backoff: &mut Backoff,
        reason: impl Display,
    ) -> Result<(), Stopped> {
        self.held = true;
        if self.stopping() {
            return Err(Stopped);
        }
        let wait = backoff.next_delay();
        let attempt = backoff.attempt();
        if attempt == 1 || attempt.is_power_of_two() {
            tracing::warn!(attempt, retry_in = ?wait, "{reason}; input paused, retrying");
        }
        self.pause();
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
                    self.events.paused(false);
                }
                Err(e) => {
                    self.events.input_error(&e);
                    tracing::warn!(error = %e, "resuming the input failed; will try again");
                }
            }
        }
        std::mem::take(&mut self.held)
    }

    fn pause(&mut self) {
        if self.paused {
            return;
        }
        match self.source.pause() {
            Ok(()) => {
                self.paused = true;
                self.events.paused(true);
            }
            // Not fatal: an unpaused input is only polled into the bounded stash.
            Err(e) => {
                self.events.input_error(&e);
                tracing::warn!(error = %e, "pausing the input failed");
            }
        }
    }

    /// Waits `wait` (or until stopped), polling the input all along into the stash.
    async fn wait_polling(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        let stop = self.shutdown.clone();
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline || self.stopping() {
                return;
            }
            let step = (deadline - now).min(PAUSED_POLL_STEP);
            let room = self
                .options
                .batch_max_records
                .saturating_sub(self.stash.len());
            if room == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            let polled = tokio::select! {
                polled = self.source.next_batch(room, step) => polled,
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
                    if !matches!(e, SourceError::Closed) {
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
                held: false,
            },
        }
    }

    /// Where pausing, resuming and their failures are reported.
    pub fn with_events(mut self, events: Arc<dyn InputEvents>) -> Self {
        self.input.events = events;
        self
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.input.source
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
                            let wait = input_backoff.next_delay();
                            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "reading the input failed; retrying");
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
                if input.retry(&mut backoff, "next hop away").await.is_err() {
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
}
