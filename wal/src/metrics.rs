//! What the local log counts, for `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of per-reader series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReaderLabel {
    /// The reader's name (`indexing`, `alerting`).
    pub reader: String,
}

/// The local log's metrics. Cheap to clone: every series is shared.
#[derive(Debug, Clone)]
pub struct WalMetrics {
    /// fsyncs that completed; each covers every append written before it.
    pub fsyncs: Counter,
    /// Appends made durable.
    pub appends: Counter,
    /// Records made durable.
    pub records: Counter,
    /// Bytes of records made durable.
    pub appended_bytes: Counter,
    /// Appends refused because the log was full.
    pub refused_full: Counter,
    /// Appends failed by a write or fsync error.
    pub failed: Counter,
    /// Seconds each fsync took.
    pub fsync_seconds: Histogram,
    /// Appends each fsync covered.
    pub appends_per_fsync: Histogram,
    /// Bytes of segments on disk.
    pub bytes: Gauge,
    /// Segments on disk.
    pub segments: Gauge,
    /// Segments removed because every reader had passed them.
    pub removed_segments: Counter,
    /// Bytes cut from a torn or damaged tail at open.
    pub recovered_cut_bytes: Counter,
    /// Records each reader has yet to acknowledge.
    pub reader_lag: Family<ReaderLabel, Gauge>,
}

impl Default for WalMetrics {
    fn default() -> Self {
        WalMetrics {
            fsyncs: Counter::default(),
            appends: Counter::default(),
            records: Counter::default(),
            appended_bytes: Counter::default(),
            refused_full: Counter::default(),
            failed: Counter::default(),
            fsync_seconds: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            appends_per_fsync: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            bytes: Gauge::default(),
            segments: Gauge::default(),
            removed_segments: Counter::default(),
            recovered_cut_bytes: Counter::default(),
            reader_lag: Family::default(),
        }
    }
}

impl WalMetrics {
    /// Registers every series under `dlog_wal_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("dlog_wal");
        r.register(
            "fsyncs",
            "fsyncs completed; each covers every append written before it",
            self.fsyncs.clone(),
        );
        r.register("appends", "appends made durable", self.appends.clone());
        r.register("records", "records made durable", self.records.clone());
        r.register(
            "appended_bytes",
            "bytes of records made durable",
            self.appended_bytes.clone(),
        );
        r.register(
            "refused_full",
            "appends refused because the log held max_bytes",
            self.refused_full.clone(),
        );
        r.register(
            "failed",
            "appends failed by a write or fsync error",
            self.failed.clone(),
        );
        r.register(
            "fsync_seconds",
            "time each fsync took",
            self.fsync_seconds.clone(),
        );
        r.register(
            "appends_per_fsync",
            "appends each fsync covered (group commit)",
            self.appends_per_fsync.clone(),
        );
        r.register("bytes", "bytes of segments on disk", self.bytes.clone());
        r.register("segments", "segments on disk", self.segments.clone());
        r.register(
            "removed_segments",
            "segments removed once every reader had passed them",
            self.removed_segments.clone(),
        );
        r.register(
            "recovered_cut_bytes",
            "bytes cut from a torn or damaged tail when the log was opened",
            self.recovered_cut_bytes.clone(),
        );
        r.register(
            "reader_lag_records",
            "records each reader has yet to acknowledge",
            self.reader_lag.clone(),
        );
    }
}
