//! What both receivers share: admit a request (a place among `max_concurrent_requests` and a
//! share of `max_in_flight_bytes` reserved before its body is read), route it, publish under
//! the produce deadline, and count everything.
//!
//! Memory stays bounded, whatever senders send and however slow Kafka is, because every byte a
//! request holds is reserved before it exists:
//!
//! * the body as it arrives, and its inflated size as inflating goes;
//! * [`ITEM_OVERHEAD`] per span or log record (counted from the framing alone) for the
//!   routing bookkeeping, before any of it is allocated;
//! * the decoded structs when a request has to be decoded (OTLP/JSON, `otlp_json` output, a
//!   repeated `resource`), bounded from its message or object count before decoding;
//! * the records: routing computes every record's size before making any (a resource shared
//!   by many traces is copied into each trace's record) and [`GROUP_OVERHEAD`] per trace or
//!   key; when that is more than was reserved, the request reserves it and is routed again.
//!
//! A request that cannot get its share within `admission_timeout_ms` is answered
//! `UNAVAILABLE` / 503 and the sender retries later; one that needs more than the whole
//! `max_in_flight_bytes`, or holds more than `max_items_per_request` items or
//! `max_groups_per_request` traces and keys, is refused for good (`RESOURCE_EXHAUSTED` / 413)
//! with a message naming the setting.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dlog_core::encoding::Signal;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::{Metrics, Outcome, Transport};
use crate::route::{RouteError, RouteLimits, Routed, Router};
use crate::signal::OtlpSignal;
use crate::sink::{Sink, SinkError};
use crate::wire;

/// A request whose records are all durable; `rejected` items were left out, for
/// `error_message`'s reasons.
#[derive(Debug, Default)]
pub(crate) struct Accepted {
    pub rejected: u64,
    pub error_message: String,
}

/// Why a request was not accepted.
#[derive(Debug)]
pub(crate) enum IngestError {
    /// Retry later: the sink did not acknowledge in time or is unreachable, or the bridge is
    /// busy.
    Unavailable(String),
    /// Do not retry: the sink refused the records.
    Failed(String),
    /// Do not retry: the request is malformed.
    Invalid(String),
    /// Do not retry: the request needs more than the bridge's limits allow.
    TooLarge(String),
}

impl IngestError {
    /// The reason given to the sender.
    pub fn message(&self) -> &str {
        match self {
            IngestError::Unavailable(m)
            | IngestError::Failed(m)
            | IngestError::Invalid(m)
            | IngestError::TooLarge(m) => m,
        }
    }
}

/// Bookkeeping bytes per span or log record while a request is routed: its slice and view
/// entries, and its place in its group (reserved before parsing, from the item count).
pub(crate) const ITEM_OVERHEAD: usize = 256;

/// How many times a request is routed again after reserving what routing said it needs (each
/// time the need is known better: decoded size first, then the records).
const ROUTE_ATTEMPTS: usize = 4;

/// The limits every request in progress shares.
pub(crate) struct Admission {
    /// One permit per request in progress.
    requests: Semaphore,
    max_requests: usize,
    /// One permit per byte held by requests in progress.
    bytes: Semaphore,
    max_bytes: usize,
    /// How long a request may wait for bytes.
    wait: Duration,
    in_flight_requests: Gauge,
    in_flight_bytes: Gauge,
    /// Time from a request's arrival until its answer was decided, whatever the outcome.
    answer_seconds: Histogram,
}

impl Admission {
    pub fn new(
        max_requests: usize,
        max_bytes: usize,
        wait: Duration,
        in_flight_requests: Gauge,
        in_flight_bytes: Gauge,
        answer_seconds: Histogram,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            answer_seconds,
            requests: Semaphore::new(max_requests),
            max_requests,
            bytes: Semaphore::new(max_bytes),
            max_bytes,
            wait,
            in_flight_requests,
            in_flight_bytes,
        })
    }

    /// A ticket for a new request, or `Unavailable` at once when `max_concurrent_requests`
    /// are in progress: shedding load is what keeps the bridge answering when it is
    /// overwhelmed.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, IngestError> {
        match self.requests.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.in_flight_requests.inc();
                Ok(Ticket {
                    admitted: Instant::now(),
                    admission: self.clone(),
                    held: 0,
                })
            }
            Err(_) => Err(IngestError::Unavailable(format!(
                "the bridge is already handling max_concurrent_requests ({}) requests",
                self.max_requests
            ))),
        }
    }
}

/// What one request in progress holds: its place among the concurrent requests (counted in
/// `dlog_bridge_in_flight_requests` from the moment the request arrives, so a graceful
/// shutdown waits for requests still being read), and the bytes reserved for it. Dropping
/// it, however the request ends, gives both back.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    held: usize,
    admitted: Instant,
}

impl Ticket {
    /// Bytes reserved now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Makes the reservation at least `total` bytes, waiting at most `admission_timeout_ms`
    /// for what is missing. More than the whole budget is refused at once (`TooLarge`).
    pub async fn reserve(&mut self, total: usize) -> Result<(), IngestError> {
        let admission = &self.admission;
        if total > admission.max_bytes || total > u32::MAX as usize {
            return Err(IngestError::TooLarge(format!(
                "the request needs {total} bytes to be read and routed (its body, decoded form, bookkeeping and records), more than max_in_flight_bytes ({}); send smaller batches or raise max_in_flight_bytes",
                admission.max_bytes
            )));
        }
        let target = total.max(self.held);
        // `target` is at most u32::MAX.
        let more = u32::try_from(target - self.held).unwrap_or(u32::MAX);
        if more == 0 {
            return Ok(());
        }
        let permit = match admission.bytes.try_acquire_many(more) {
            Ok(permit) => permit,
            Err(_) => {
                match tokio::time::timeout(admission.wait, admission.bytes.acquire_many(more))
                    .await
                {
                    Ok(Ok(permit)) => permit,
                    // The semaphore is never closed; treat it like a full one.
                    Ok(Err(_)) | Err(_) => {
                        return Err(IngestError::Unavailable(format!(
                            "the bridge already holds max_in_flight_bytes ({}) for requests in progress (waited {} ms for {more} more bytes)",
                            admission.max_bytes,
                            admission.wait.as_millis()
                        )))
                    }
                }
            }
        };
        permit.forget();
        self.held += more as usize;
        admission.in_flight_bytes.inc_by(i64::from(more));
        Ok(())
    }

    /// Makes the reservation at least `total` bytes if that is possible without waiting.
    pub fn try_reserve(&mut self, total: usize) -> bool {
        if total <= self.held {
            return true;
        }
        let admission = &self.admission;
        if total > admission.max_bytes || total > u32::MAX as usize {
            return false;
        }
        // `total` is at most u32::MAX.
        let more = u32::try_from(total - self.held).unwrap_or(u32::MAX);
        match admission.bytes.try_acquire_many(more) {
            Ok(permit) => {
                permit.forget();
                self.held += more as usize;
                admission.in_flight_bytes.inc_by(i64::from(more));
                true
            }
            Err(_) => false,
        }
    }

    /// Gives back what is reserved above `total` bytes.
    pub fn release_to(&mut self, total: usize) {
        if total < self.held {
            let less = self.held - total;
            self.admission.bytes.add_permits(less);
            self.admission.in_flight_bytes.dec_by(less as i64);
            self.held = total;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission
            .answer_seconds
            .observe(self.admitted.elapsed().as_secs_f64());
        self.release_to(0);
        self.admission.requests.add_permits(1);
        self.admission.in_flight_requests.dec();
    }
}

pub(crate) struct Ingest<S> {
    sink: S,
    router: Router,
    pub metrics: Metrics,
    produce_timeout: Duration,
    admission: Arc<Admission>,
    /// `max_items_per_request`.
    max_items: usize,
    /// `max_groups_per_request`.
    max_groups: usize,
    /// Told to senders with UNAVAILABLE / 503.
    pub retry_after: Duration,
}

impl<S: Sink> Ingest<S> {
    pub fn new(config: &Config, sink: S, metrics: Metrics) -> Self {
        let admission = Admission::new(
            config.max_concurrent_requests,
            config.max_in_flight_bytes,
            config.admission_timeout(),
            metrics.in_flight_requests.clone(),
            metrics.in_flight_bytes.clone(),
            metrics.answer_latency.clone(),
        );
        Ingest {
            sink,
            router: Router::new(config),
            metrics,
            produce_timeout: config.produce_timeout(),
            admission,
            max_items: config.max_items_per_request,
            max_groups: config.max_groups_per_request,
            retry_after: Duration::from_secs(config.retry_after_secs),
        }
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Requests in progress: from their arrival until they are answered.
    pub fn requests_in_flight(&self) -> i64 {
        self.metrics.in_flight_requests.get()
    }

    /// Admits a request at its arrival (see [`Admission::admit`]); a refusal is counted.
    pub fn admit(&self, signal: Signal, transport: Transport) -> Result<Ticket, IngestError> {
        self.admission
            .admit()
            .inspect_err(|e| self.refused(signal, transport, e))
    }

    /// Counts a request answered with `error` before it reached the sink.
    pub fn refused(&self, signal: Signal, transport: Transport, error: &IngestError) {
        let outcome = match error {
            IngestError::Unavailable(_) => Outcome::Unavailable,
            IngestError::Failed(_) => Outcome::Failed,
            IngestError::Invalid(_) | IngestError::TooLarge(_) => Outcome::Invalid,
        };
        self.metrics.request(signal, transport, outcome);
        // Debug only: under overload every shed request would log, which costs what the
        // shedding saves; `dlog_bridge_requests_total{outcome="unavailable"}` counts them.
        match error {
            IngestError::Unavailable(reason) | IngestError::TooLarge(reason) => {
                tracing::debug!(%reason, "request refused");
            }
            IngestError::Failed(_) | IngestError::Invalid(_) => {}
        }
    }

    /// Counts a request that never got as far as routing (malformed).
    pub fn invalid(&self, signal: Signal, transport: Transport) {
        self.metrics.request(signal, transport, Outcome::Invalid);
    }

    /// Routes and delivers a decoded request (OTLP/JSON input). `ticket` holds the request's
    /// body and decoded form already.
    pub async fn decoded<G: OtlpSignal>(
        &self,
        mut request: G::Request,
        mut ticket: Ticket,
        transport: Transport,
    ) -> Result<Accepted, IngestError> {
        self.router.redact::<G>(&mut request);
        let items = G::item_count(&request);
        let routed = self
            .route_decoded(&mut ticket, items, |limits| {
                self.router.route_decoded::<G>(&request, limits)
            })
            .await;
        // The records are all that is left to hold while Kafka is waited for.
        drop(request);
        self.finish(routed, ticket, G::SIGNAL, transport).await
    }

    /// Routes a decoded request of `items` items under reservations.
    async fn route_decoded(
        &self,
        ticket: &mut Ticket,
        items: usize,
        route: impl Fn(RouteLimits<'_>) -> Result<Routed, RouteError>,
    ) -> Result<Routed, IngestError> {
        self.check_items(items)?;
        // What is held covers the body and the decoded request already.
        let held = ticket.held();
        let base = held.saturating_add(items.saturating_mul(ITEM_OVERHEAD));
        self.route_within(ticket, base, held, route).await
    }

    /// Delivers what was routed, or counts and returns why nothing was.
    async fn finish(
        &self,
        routed: Result<Routed, IngestError>,
        ticket: Ticket,
        signal: Signal,
        transport: Transport,
    ) -> Result<Accepted, IngestError> {
        match routed {
            Ok(routed) => self.deliver(routed, ticket, signal, transport).await,
            Err(e) => {
                self.refused(signal, transport, &e);
                Err(e)
            }
        }
    }

    /// Refuses a request with more items than `max_items_per_request`.
    fn check_items(&self, items: usize) -> Result<(), IngestError> {
        if items > self.max_items {
            return Err(IngestError::TooLarge(format!(
                "the request holds {items} spans or log records, more than max_items_per_request ({}); send smaller batches",
                self.max_items
            )));
        }
        Ok(())
    }

    /// Routes under reservations: `base` bytes (body and bookkeeping) plus what routing says
    /// it needs beyond them, starting from a guess of `guess` bytes. Reserving what routing
    /// needs before it makes anything is what bounds a request's memory by its reservation.
    async fn route_within(
        &self,
        ticket: &mut Ticket,
        base: usize,
        guess: usize,
        route: impl Fn(RouteLimits<'_>) -> Result<Routed, RouteError>,
    ) -> Result<Routed, IngestError> {
        let mut allowance = guess;
        for _ in 0..ROUTE_ATTEMPTS {
            // A first guess beyond the budget is lowered to what the budget leaves: routing
            // then says whether the request fits at all.
            let room = self.admission.max_bytes.saturating_sub(base);
            if base > self.admission.max_bytes {
                ticket.reserve(base).await?;
            }
            let limited = allowance.min(room);
            ticket.reserve(base.saturating_add(limited)).await?;
            // Records larger than guessed are reserved on the spot when the budget has room,
            // so that the request is not parsed and routed a second time.
            let mut grow = |needed: usize| ticket.try_reserve(base.saturating_add(needed));
            let limits = RouteLimits {
                max_groups: self.max_groups,
                allowance: limited,
                grow: Some(&mut grow),
            };
            match route(limits) {
                Ok(routed) => return Ok(routed),
                Err(RouteError::NeedsBytes { needed }) if needed > limited => {
                    if needed > room {
                        // Refused with the total, naming the setting.
                        ticket.reserve(base.saturating_add(needed)).await?;
                    }
                    allowance = needed;
                }
                Err(e @ RouteError::TooManyGroups { .. }) => {
                    return Err(IngestError::TooLarge(e.to_string()))
                }
                Err(RouteError::Invalid(e)) => return Err(IngestError::Invalid(e.to_string())),
                Err(e @ RouteError::NeedsBytes { .. }) => {
                    return Err(IngestError::Failed(format!(
                        "routing asked for less than it was given: {e}"
                    )))
                }
            }
        }
        Err(IngestError::Failed(format!(
            "routing still needed more bytes after {ROUTE_ATTEMPTS} reservations"
        )))
    }

    /// Routes and delivers a protobuf export request, read in place.
    pub async fn protobuf<G: OtlpSignal>(
        &self,
        body: Bytes,
        mut ticket: Ticket,
        transport: Transport,
    ) -> Result<Accepted, IngestError> {
        // Broken framing counts as no items: validation refuses it before anything is made.
        let items = wire::count_items(&body).unwrap_or(0);
        let routed = match self.check_items(items) {
            Ok(()) => {
                let base = body
                    .len()
                    .saturating_add(items.saturating_mul(ITEM_OVERHEAD));
                // First guess: records about as large as the request.
                self.route_within(&mut ticket, base, body.len(), |limits| {
                    self.router.protobuf_within::<G>(&body, limits)
                })
                .await
            }
            Err(e) => Err(e),
        };
        drop(body);
        self.finish(routed, ticket, G::SIGNAL, transport).await
    }

    async fn deliver(
        &self,
        routed: Routed,
        mut ticket: Ticket,
        signal: Signal,
        transport: Transport,
    ) -> Result<Accepted, IngestError> {
        let deadline = Instant::now() + self.produce_timeout;
        self.metrics.received(signal, transport, routed.received);
        if routed.rejected > 0 {
            self.metrics.rejected(signal, routed.rejected);
            tracing::debug!(rejected = routed.rejected, reason = %routed.error_message, "partial success");
        }
        let accepted = Accepted {
            rejected: routed.rejected,
            error_message: routed.error_message,
        };
        let success = if accepted.rejected > 0 {
            Outcome::Partial
        } else {
            Outcome::Success
        };
        if routed.records.is_empty() {
            self.metrics.request(signal, transport, success);
            return Ok(accepted);
        }

        // From here on the request holds its records until Kafka acknowledged them.
        if routed.bytes > ticket.held() {
            if let Err(e) = ticket.reserve(routed.bytes).await {
                self.refused(signal, transport, &e);
                return Err(e);
            }
        } else {
            ticket.release_to(routed.bytes.max(1));
        }

        let mut per_topic: Vec<(Arc<str>, u64, u64)> = Vec::with_capacity(3);
        for record in &routed.records {
            match per_topic.iter_mut().find(|(t, _, _)| *t == record.topic) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 += record.size() as u64;
                }
                None => per_topic.push((record.topic.clone(), 1, record.size() as u64)),
            }
        }

        let started = Instant::now();
        let result = tokio::time::timeout_at(deadline, self.sink.publish(routed.records)).await;
        let result = match result {
            Ok(Ok(())) => {
                self.metrics
                    .produce_latency
                    .observe(started.elapsed().as_secs_f64());
                for (topic, records, bytes) in &per_topic {
                    if let Some(c) = self.metrics.topic(topic) {
                        c.produced_records.inc_by(*records);
                        c.produced_bytes.inc_by(*bytes);
                    }
                }
                self.metrics.request(signal, transport, success);
                return Ok(accepted);
            }
            Ok(Err(SinkError::Unavailable(reason))) => {
                self.metrics
                    .request(signal, transport, Outcome::Unavailable);
                Err(IngestError::Unavailable(reason))
            }
            Ok(Err(SinkError::Rejected(reason))) => {
                self.metrics.request(signal, transport, Outcome::Failed);
                Err(IngestError::Failed(reason))
            }
            Err(_) => {
                self.metrics
                    .request(signal, transport, Outcome::Unavailable);
                Err(IngestError::Unavailable(format!(
                    "Kafka did not acknowledge every record within produce_timeout_ms ({} ms)",
                    self.produce_timeout.as_millis()
                )))
            }
        };
        for (topic, records, _) in &per_topic {
            if let Some(c) = self.metrics.topic(topic) {
                c.failed_records.inc_by(*records);
            }
        }
        if let Err(e) = &result {
            tracing::warn!(reason = %e.message(), "request not acknowledged");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(requests: usize, bytes: usize) -> Arc<Admission> {
        Admission::new(
            requests,
            bytes,
            Duration::from_millis(50),
            Gauge::default(),
            Gauge::default(),
            Histogram::new([1.0]),
        )
    }

    #[tokio::test]
    async fn regression_unbounded_memory_requests_beyond_the_limits_are_refused_not_queued() {
        let admission = admission(2, 1000);
        let mut a = admission.admit().unwrap();
        let b = admission.admit().unwrap();
        // A third concurrent request is shed at once.
        assert!(
            matches!(admission.admit(), Err(IngestError::Unavailable(m)) if m.contains("max_concurrent_requests"))
        );
        assert_eq!(admission.in_flight_requests.get(), 2);

        a.reserve(700).await.unwrap();
        assert_eq!((a.held(), admission.in_flight_bytes.get()), (700, 700));
        drop(b);
        let mut c = admission.admit().unwrap();
        // Only 300 bytes are left: waiting for 400 ends in Unavailable within the bound.
        let err = c.reserve(400).await.unwrap_err();
        assert!(matches!(err, IngestError::Unavailable(m) if m.contains("max_in_flight_bytes")));
        assert_eq!(c.held(), 0);
        // Growing is incremental, shrinking gives back, dropping gives back everything.
        a.release_to(100);
        c.reserve(400).await.unwrap();
        c.reserve(900).await.unwrap();
        assert_eq!(admission.in_flight_bytes.get(), 1000);
        // More than the whole budget is refused at once, for good.
        drop(a);
        let err = c.reserve(5000).await.unwrap_err();
        assert!(matches!(err, IngestError::TooLarge(m) if m.contains("max_in_flight_bytes")));
        assert_eq!(c.held(), 900);
        drop(c);
        assert_eq!(admission.in_flight_bytes.get(), 0);
        assert_eq!(admission.in_flight_requests.get(), 0);
        assert_eq!(admission.bytes.available_permits(), 1000);
        assert_eq!(admission.requests.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_bytes_released_meanwhile() {
        let admission = admission(4, 1000);
        let mut a = admission.admit().unwrap();
        a.reserve(1000).await.unwrap();
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move {
                let mut b = admission.admit().unwrap();
                b.reserve(500).await.map(|()| b.held())
            }
        });
        tokio::task::yield_now().await;
        a.release_to(400);
        assert_eq!(waiter.await.unwrap().unwrap(), 500);
    }
}
