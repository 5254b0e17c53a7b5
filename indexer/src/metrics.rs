//! The stage's Prometheus metrics, served on the admin port's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TopicLabel {
    pub topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PartitionLabel {
    pub topic: String,
    pub partition: String,
}

/// Counters and gauges of one stage.
pub struct Metrics {
    pub(super) registry: Registry,
    pub(crate) store_bytes_used: Gauge,
    pub(crate) store_oldest_seconds: Gauge,
    pub(crate) store_unindexed_attributes: Gauge,
    pub(crate) store_unindexed_resources: Gauge,
    pub(crate) store_unindexed_names: Gauge,
    pub(crate) partitions_dropped: Counter,
    pub(crate) files_dropped: Counter,
    pub(crate) retention_errors: Counter,
    pub(crate) consumed: Family<TopicLabel, Counter>,
    pub(crate) written: Family<KindLabel, Counter>,
    pub(crate) retried: Family<KindLabel, Counter>,
    pub(crate) write_failures: Counter,
    pub(crate) dead_lettered: Family<ReasonLabel, Counter>,
    pub(crate) commits: Counter,
    pub(crate) commit_failures: Counter,
    pub(crate) lag: Family<PartitionLabel, Gauge>,
    pub(crate) store_up: Gauge,
    pub(crate) paused: Gauge,
    pub(crate) write_seconds: Histogram,
    pub(crate) admin_unauthenticated: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `dlog_indexer` prefix.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("dlog_indexer");
        let consumed = Family::<TopicLabel, Counter>::default();
        let written = Family::<KindLabel, Counter>::default();
        let retried = Family::<KindLabel, Counter>::default();
        let write_failures = Counter::default();
        let dead_lettered = Family::<ReasonLabel, Counter>::default();
        let commits = Counter::default();
        let commit_failures = Counter::default();
        let lag = Family::<PartitionLabel, Gauge>::default();
        let store_up = Gauge::default();
        let paused = Gauge::default();
        let write_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "records_consumed",
            "Records read from the input topics",
            consumed.clone(),
        );
        registry.register(
            "documents_written",
            "Documents the store acknowledged",
            written.clone(),
        );
        registry.register(
            "documents_retried",
            "Documents written again after a retryable failure (429, 5xx, timeout, store down)",
            retried.clone(),
        );
        registry.register(
            "write_failures",
            "Store write attempts that failed as a whole (store unreachable or refusing)",
            write_failures.clone(),
        );
        registry.register(
            "dead_lettered",
            "Records sent to the dead-letter topic, by reason (decode, rejected)",
            dead_lettered.clone(),
        );
        registry.register(
            "commits",
            "Offset commits (acknowledgements) of processed batches",
            commits.clone(),
        );
        registry.register(
            "commit_failures",
            "Offset commits that failed (the records will be replayed)",
            commit_failures.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records behind the partition's high watermark, as the broker reports it",
            lag.clone(),
        );
        registry.register(
            "store_up",
            "1 while the store accepts writes, 0 while the stage is retrying",
            store_up.clone(),
        );
        registry.register(
            "paused",
            "1 while consumption is paused because the store is unavailable",
            paused.clone(),
        );
        registry.register(
            "write_duration_seconds",
            "Time to write one batch to the store",
            write_seconds.clone(),
        );
        let admin_unauthenticated = Counter::default();
        registry.register(
            "admin_unauthenticated",
            "Admin /metrics requests refused for a missing or wrong bearer token",
            admin_unauthenticated.clone(),
        );
        store_up.set(1);
        let store_registry = root.sub_registry_with_prefix("dlog_store");
        let store_bytes_used = Gauge::default();
        let store_oldest_seconds = Gauge::default();
        let store_unindexed_attributes = Gauge::default();
        let store_unindexed_resources = Gauge::default();
        let store_unindexed_names = Gauge::default();
        let partitions_dropped = Counter::default();
        let files_dropped = Counter::default();
        let retention_errors = Counter::default();
        store_registry.register(
            "bytes_used",
            "Bytes the store holds on disk, indexes included, as of the last retention pass",
            store_bytes_used.clone(),
        );
        store_registry.register(
            "oldest_timestamp_seconds",
            "Start of the oldest day the store keeps, s since the Unix epoch (0 when empty)",
            store_oldest_seconds.clone(),
        );
        store_registry.register(
            "unindexed_attributes",
            "Attributes stored but not indexed for search because the attribute dictionary was \
             full (embedded store, since it was created), as of the last retention pass",
            store_unindexed_attributes.clone(),
        );
        store_registry.register(
            "unindexed_resources",
            "Records stored with a resource the resources table had no room for, found by \
             their service's name only (embedded store, since it was created), as of the last \
             retention pass",
            store_unindexed_resources.clone(),
        );
        store_registry.register(
            "unindexed_names",
            "Records stored with a service, operation, scope or level name the dictionary had \
             no room for, indexed under \"(names full)\" (embedded store, since it was created), \
             as of the last retention pass",
            store_unindexed_names.clone(),
        );
        store_registry.register(
            "partitions_dropped",
            "Days of data (partitions, daily indices) dropped by retention",
            partitions_dropped.clone(),
        );
        store_registry.register(
            "files_dropped",
            "Day files besides the store (dead letters) dropped by retention",
            files_dropped.clone(),
        );
        store_registry.register(
            "retention_errors",
            "Retention passes that failed or that the store refused (ingest goes on)",
            retention_errors.clone(),
        );
        Metrics {
            registry: root,
            store_bytes_used,
            store_oldest_seconds,
            store_unindexed_attributes,
            store_unindexed_resources,
            store_unindexed_names,
            partitions_dropped,
            files_dropped,
            retention_errors,
            consumed,
            written,
            retried,
            write_failures,
            dead_lettered,
            commits,
            commit_failures,
            lag,
            store_up,
            paused,
            write_seconds,
            admin_unauthenticated,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Days dropped by retention so far.
    pub fn partitions_dropped(&self) -> u64 {
        self.partitions_dropped.get()
    }

    /// Retention passes that failed so far.
    pub fn retention_errors(&self) -> u64 {
        self.retention_errors.get()
    }

    /// Bytes the store held at the last retention pass.
    pub fn store_bytes_used(&self) -> i64 {
        self.store_bytes_used.get()
    }

    /// Documents of `kind` written so far.
    pub fn written(&self, kind: &'static str) -> u64 {
        self.written.get_or_create(&KindLabel { kind }).get()
    }

    /// Records dead-lettered so far for `reason` (`decode` or `rejected`).
    pub fn dead_lettered(&self, reason: &'static str) -> u64 {
        self.dead_lettered
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// Documents of `kind` written again after a retryable failure, so far.
    pub fn retried(&self, kind: &'static str) -> u64 {
        self.retried.get_or_create(&KindLabel { kind }).get()
    }

    /// Store write attempts that failed as a whole, so far.
    pub fn write_failures(&self) -> u64 {
        self.write_failures.get()
    }

    /// Offset commits so far.
    pub fn commits(&self) -> u64 {
        self.commits.get()
    }

    /// The last consumer lag read for `topic`/`partition` (0 until one was read).
    pub fn lag(&self, topic: &str, partition: i32) -> i64 {
        self.lag
            .get_or_create(&PartitionLabel {
                topic: topic.to_string(),
                partition: partition.to_string(),
            })
            .get()
    }

    /// True while the store is reachable.
    pub fn store_up(&self) -> bool {
        self.store_up.get() == 1
    }
}
