//! The bridge's Prometheus metrics, served on the admin port's `/metrics`.
//!
//! Label sets are few and fixed (signal × transport × outcome, and the three topics), so the
//! counters are resolved once at start and the hot path only increments atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use dlog_core::encoding::Signal;

use crate::config::Config;

/// Which OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Grpc = 0,
    Http = 1,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Everything is in Kafka.
    Success = 0,
    /// Some items were rejected, the rest is in Kafka.
    Partial = 1,
    /// Malformed request (INVALID_ARGUMENT / 400 / 415).
    Invalid = 2,
    /// Kafka did not acknowledge in time (UNAVAILABLE / 503).
    Unavailable = 3,
    /// Kafka refused the records for good (INTERNAL / 500).
    Failed = 4,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Success, "success"),
    (Outcome::Partial, "partial"),
    (Outcome::Invalid, "invalid"),
    (Outcome::Unavailable, "unavailable"),
    (Outcome::Failed, "failed"),
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabels {
    signal: &'static str,
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    signal: &'static str,
    transport: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    signal: &'static str,
}

/// Counters for one topic.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopicCounters {
    pub produced_records: Counter,
    pub produced_bytes: Counter,
    pub failed_records: Counter,
}

/// Every metric, resolved to its label sets.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// [signal][transport]
    received: [[Counter; 2]; 2],
    /// [signal][transport][outcome]
    requests: [[[Counter; 5]; 2]; 2],
    /// [signal]
    rejected: [Counter; 2],
    /// Keyed by topic name.
    topics: Vec<(String, TopicCounters)>,
    pub in_flight_requests: Gauge,
    pub in_flight_bytes: Gauge,
    pub produce_latency: Histogram,
    /// Time from a request's arrival until its answer was decided, whatever the outcome.
    pub answer_latency: Histogram,
}

impl Metrics {
    /// Registers every metric under `dlog_bridge_*`.
    pub fn new(registry: &mut Registry, config: &Config) -> Metrics {
        let received_family = Family::<ItemLabels, Counter>::default();
        let requests_family = Family::<RequestLabels, Counter>::default();
        let rejected_family = Family::<SignalLabels, Counter>::default();
        let produced_family = Family::<TopicLabels, Counter>::default();
        let produced_bytes_family = Family::<TopicLabels, Counter>::default();
        let failed_family = Family::<TopicLabels, Counter>::default();
        let in_flight_requests = Gauge::default();
        let in_flight_bytes = Gauge::default();
        // 1 ms .. ~16 s: an acks=all round trip on a healthy cluster is a few ms; the top
        // buckets catch requests that ran into the produce timeout.
        let produce_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
        );
        // 0.25 ms .. ~8 s: what a sender waits for each answer, which bounds the throughput
        // of an SDK that exports one batch at a time.
        let answer_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.00025, 2.0, 16),
        );

        let signals = Signal::ALL;
        let transports = [Transport::Grpc, Transport::Http];
        let received = signals.map(|s| {
            transports.map(|t| {
                received_family
                    .get_or_create(&ItemLabels {
                        signal: s.as_str(),
                        transport: t.label(),
                    })
                    .clone()
            })
        });
        let requests = signals.map(|s| {
            transports.map(|t| {
                OUTCOMES.map(|(_, outcome)| {
                    requests_family
                        .get_or_create(&RequestLabels {
                            signal: s.as_str(),
                            transport: t.label(),
                            outcome,
                        })
                        .clone()
                })
            })
        });
        let rejected = signals.map(|s| {
            rejected_family
                .get_or_create(&SignalLabels { signal: s.as_str() })
                .clone()
        });
        let mut topics: Vec<(String, TopicCounters)> = Vec::new();
        for topic in config.topics() {
            if topics.iter().any(|(t, _)| t == topic) {
                continue;
            }
            let labels = TopicLabels {
                topic: topic.to_string(),
            };
            topics.push((
                topic.to_string(),
                TopicCounters {
                    produced_records: produced_family.get_or_create(&labels).clone(),
                    produced_bytes: produced_bytes_family.get_or_create(&labels).clone(),
                    failed_records: failed_family.get_or_create(&labels).clone(),
                },
            ));
        }

        registry.register(
            "dlog_bridge_received_items",
            "Spans and log records received over OTLP",
            received_family,
        );
        registry.register(
            "dlog_bridge_requests",
            "OTLP export requests answered, by outcome",
            requests_family,
        );
        registry.register(
            "dlog_bridge_rejected_items",
            "Spans and log records rejected in partial-success responses (too large for one record, no valid trace or span id)",
            rejected_family,
        );
        registry.register(
            "dlog_bridge_produced_records",
            "Kafka records acknowledged by the broker",
            produced_family,
        );
        registry.register(
            "dlog_bridge_produced_bytes",
            "Bytes (value, key and headers) of Kafka records acknowledged by the broker",
            produced_bytes_family,
        );
        registry.register(
            "dlog_bridge_failed_records",
            "Kafka records of requests answered UNAVAILABLE or INTERNAL (not acknowledged in time, or refused)",
            failed_family,
        );
        registry.register(
            "dlog_bridge_in_flight_requests",
            "OTLP requests in progress: being read, decoded or waiting for Kafka",
            in_flight_requests.clone(),
        );
        registry.register(
            "dlog_bridge_in_flight_bytes",
            "Bytes reserved by requests in progress (bodies, inflated bodies, records waiting for Kafka), bounded by max_in_flight_bytes",
            in_flight_bytes.clone(),
        );
        registry.register(
            "dlog_bridge_answer_latency_seconds",
            "Time from an OTLP request's arrival until its answer was decided (any outcome): the latency senders see",
            answer_latency.clone(),
        );
        registry.register(
            "dlog_bridge_produce_latency_seconds",
            "Time from handing a request's records to the producer until Kafka acknowledged all of them",
            produce_latency.clone(),
        );
        Metrics {
            received,
            requests,
            rejected,
            topics,
            in_flight_requests,
            in_flight_bytes,
            produce_latency,
            answer_latency,
        }
    }

    pub fn received(&self, signal: Signal, transport: Transport, n: u64) {
        self.received[signal.index()][transport as usize].inc_by(n);
    }

    pub fn request(&self, signal: Signal, transport: Transport, outcome: Outcome) {
        self.requests[signal.index()][transport as usize][outcome as usize].inc();
    }

    pub fn rejected(&self, signal: Signal, n: u64) {
        self.rejected[signal.index()].inc_by(n);
    }

    pub fn topic(&self, topic: &str) -> Option<&TopicCounters> {
        self.topics.iter().find(|(t, _)| t == topic).map(|(_, c)| c)
    }
}
