//! What both receivers share: route a decoded request, bound what waits for the sink, publish
//! under the produce deadline, and count everything.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::{Metrics, Outcome, SignalKind, Transport};
use crate::route::{Routed, Router};
use crate::sink::{Sink, SinkError};

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
    /// Retry later: the sink did not acknowledge in time or is unreachable.
    Unavailable(String),
    /// Do not retry: the sink refused the records.
    Failed(String),
    /// Do not retry: the request is malformed.
    Invalid(String),
}

pub(crate) struct Ingest<S> {
    sink: S,
    router: Router,
    pub metrics: Metrics,
    produce_timeout: Duration,
    /// One permit per encoded byte waiting for the sink.
    in_flight: Semaphore,
    max_in_flight_bytes: usize,
    /// Told to senders with UNAVAILABLE / 503.
    pub retry_after: Duration,
}

impl<S: Sink> Ingest<S> {
    pub fn new(config: &Config, sink: S, metrics: Metrics) -> Self {
        Ingest {
            sink,
            router: Router::new(config),
            metrics,
            produce_timeout: config.produce_timeout(),
            in_flight: Semaphore::new(config.max_in_flight_bytes),
            max_in_flight_bytes: config.max_in_flight_bytes,
            retry_after: Duration::from_secs(config.retry_after_secs),
        }
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Requests routed and waiting for queue space or the sink.
    pub fn requests_in_flight(&self) -> i64 {
        self.metrics.in_flight_requests.get()
    }

    pub async fn traces(
        &self,
        request: &ExportTraceServiceRequest,
        transport: Transport,
    ) -> Result<Accepted, IngestError> {
        let routed = self.router.traces(request);
        self.deliver(routed, SignalKind::Traces, transport).await
    }

    pub async fn logs(
        &self,
        request: &ExportLogsServiceRequest,
        transport: Transport,
    ) -> Result<Accepted, IngestError> {
        let routed = self.router.logs(request);
        self.deliver(routed, SignalKind::Logs, transport).await
    }

    /// Routes and delivers a protobuf `ExportTraceServiceRequest`, read in place.
    pub async fn traces_protobuf(
        &self,
        bytes: &[u8],
        transport: Transport,
    ) -> Result<Accepted, IngestError> {
        match self.router.traces_protobuf(bytes) {
            Ok(routed) => self.deliver(routed, SignalKind::Traces, transport).await,
            Err(e) => {
                self.invalid(SignalKind::Traces, transport);
                Err(IngestError::Invalid(e.to_string()))
            }
        }
    }

    /// Routes and delivers a protobuf `ExportLogsServiceRequest`, read in place.
    pub async fn logs_protobuf(
        &self,
        bytes: &[u8],
        transport: Transport,
    ) -> Result<Accepted, IngestError> {
        match self.router.logs_protobuf(bytes) {
            Ok(routed) => self.deliver(routed, SignalKind::Logs, transport).await,
            Err(e) => {
                self.invalid(SignalKind::Logs, transport);
                Err(IngestError::Invalid(e.to_string()))
            }
        }
    }

    /// Counts a request that never got as far as routing (malformed).
    pub fn invalid(&self, signal: SignalKind, transport: Transport) {
        self.metrics.request(signal, transport, Outcome::Invalid);
    }

    async fn deliver(
        &self,
        routed: Routed,
        signal: SignalKind,
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

        let mut in_flight = InFlight::new(&self.metrics);
        // Bound what waits for Kafka: a request over the whole budget takes all of it.
        let wanted = routed.bytes.clamp(1, self.max_in_flight_bytes);
        let permits = u32::try_from(wanted).unwrap_or(u32::MAX);
        let _permit =
            match tokio::time::timeout_at(deadline, self.in_flight.acquire_many(permits)).await {
                Ok(Ok(permit)) => permit,
                // The semaphore is never closed; treat it like a full one.
                Ok(Err(_)) | Err(_) => {
                    self.metrics
                        .request(signal, transport, Outcome::Unavailable);
                    return Err(IngestError::Unavailable(format!(
                        "the bridge already has max_in_flight_bytes ({}) waiting for Kafka",
                        self.max_in_flight_bytes
                    )));
                }
            };
        in_flight.add_bytes(i64::from(permits));

        let mut per_topic: Vec<(std::sync::Arc<str>, u64, u64)> = Vec::with_capacity(3);
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
        if let Err(
            IngestError::Unavailable(reason)
            | IngestError::Failed(reason)
            | IngestError::Invalid(reason),
        ) = &result
        {
            tracing::warn!(%reason, "request not acknowledged");
        }
        result
    }
}

/// Keeps the in-flight gauges up while a request waits for queue space or the sink, whether
/// it finishes or its connection drops the future.
struct InFlight<'a> {
    metrics: &'a Metrics,
    bytes: i64,
}

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.in_flight_requests.inc();
        InFlight { metrics, bytes: 0 }
    }

    fn add_bytes(&mut self, bytes: i64) {
        self.metrics.in_flight_bytes.inc_by(bytes);
        self.bytes += bytes;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight_requests.dec();
        self.metrics.in_flight_bytes.dec_by(self.bytes);
    }
}
