//! The storage traits, one per role ([`SpanWriter`], [`TraceReader`], [`DependencyReader`],
//! [`LogReader`], [`StatusReader`], [`AlertStore`], [`Retention`]) and [`Store`], their sum:
//! what every backend writes and answers, and the types of its queries.
//!
//! Writes are idempotent: every [`Document`] has a deterministic id (see
//! [`dlog_core::model`]), so a replay overwrites and never duplicates. A write returns one
//! [`WriteOutcome`] per document, so the indexing stage can retry only what is retryable and
//! dead-letter only what the store rejected for good.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use dlog_core::model::{Heartbeat, LogEntry, ServiceStatus, SpanKind, SpanRecord};
use serde::{Deserialize, Serialize};

/// One document derived from a Kafka record.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// A span.
    Span(SpanRecord),
    /// An ordinary log record (including `service.call` events).
    Log(LogEntry),
    /// A registration or heartbeat event; it also updates the service registry.
    Heartbeat(Heartbeat),
}

impl Document {
    /// The deterministic document id (trace + span, log identity hash, instance + time).
    pub fn id(&self) -> String {
        match self {
            Document::Span(s) => s.doc_id(),
            Document::Log(l) => l.doc_id(),
            Document::Heartbeat(h) => h.doc_id(),
        }
    }

    /// `span`, `log` or `heartbeat`, for messages and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Document::Span(_) => "span",
            Document::Log(_) => "log",
            Document::Heartbeat(_) => "heartbeat",
        }
    }
}

/// What happened to one document of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Durable in the store.
    Written,
    /// Not written, for a reason that may pass (overload, timeout, shard unavailable): write
    /// it again later.
    Retry(String),
    /// Not written, and writing it again will not help (mapping conflict, invalid document).
    Rejected(String),
}

/// An alert as kept in the store: one document per alert id, upserted as it fires, repeats
/// and resolves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertDoc {
    /// Stable alert id; upserts with the same id replace the document.
    pub id: String,
    /// The rule that fired.
    pub rule: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// The service the alert is about.
    pub service: String,
    /// The service instance, when the alert is about one.
    pub instance: Option<String>,
    /// One line for humans.
    pub summary: String,
    /// When the condition was first seen, ns since the Unix epoch.
    pub first_seen_unix_nano: u64,
    /// When the condition was last seen, ns since the Unix epoch.
    pub last_seen_unix_nano: u64,
    /// How many times the condition was seen.
    pub occurrences: u64,
    /// Traces that show the problem.
    pub example_trace_ids: Vec<String>,
    /// The service or cause the alerting stage blames, when it found one.
    pub root_cause: Option<String>,
    /// The incident this alert is grouped into.
    pub incident_id: Option<String>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
}

/// Which alerts [`AlertStore::list_alerts`] returns.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    /// Only alerts about this service.
    pub service: Option<String>,
    /// Only alerts in this state (`firing` or `resolved`).
    pub state: Option<String>,
    /// At most this many (0 means the default of 100).
    pub limit: usize,
}

/// Default result size when a query's `limit` is 0.
pub const DEFAULT_LIMIT: usize = 100;

/// `limit`, or [`DEFAULT_LIMIT`] when 0.
pub fn effective_limit(limit: usize) -> usize {
    if limit == 0 {
        DEFAULT_LIMIT
    } else {
        limit
    }
}

/// A time range in ns since the Unix epoch, both ends inclusive; `None` leaves that end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// Earliest time.
    pub start_unix_nano: Option<u64>,
    /// Latest time.
    pub end_unix_nano: Option<u64>,
}

impl TimeRange {
    /// The range `[start, end]`.
    pub fn between(start_unix_nano: u64, end_unix_nano: u64) -> Self {
        TimeRange {
            start_unix_nano: Some(start_unix_nano),
            end_unix_nano: Some(end_unix_nano),
        }
    }

    /// True when `t` lies in the range.
    pub fn contains(&self, t: u64) -> bool {
        self.start_unix_nano.is_none_or(|s| t >= s) && self.end_unix_nano.is_none_or(|e| t <= e)
    }
}

/// Which traces [`TraceReader::find_traces`] returns.
///
/// `service`, `operation` and `attributes` select traces with at least one span matching all
/// three together. `min_duration`, `max_duration` and `time` apply to the **trace**: its
/// duration (earliest start to latest end) and its start.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    /// A span's service.
    pub service: Option<String>,
    /// A span's operation name.
    pub operation: Option<String>,
    /// Attributes that must all match on one span (values compared as text). A key matches
    /// the span's own attributes, its resource's, or one of its events'.
    pub attributes: BTreeMap<String, String>,
    /// The trace lasted at least this long.
    pub min_duration: Option<Duration>,
    /// The trace lasted at most this long.
    pub max_duration: Option<Duration>,
    /// The trace started in this range.
    pub time: TimeRange,
    /// At most this many traces (0 means [`DEFAULT_LIMIT`]).
    pub limit: usize,
}

/// One trace found by [`TraceReader::find_traces`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSummary {
    /// Trace id, lowercase hex.
    pub trace_id: String,
    /// Earliest span start, ns since the Unix epoch.
    pub start_unix_nano: u64,
    /// From the earliest start to the latest end, ns.
    pub duration_nanos: u64,
    /// Service of the root span (the earliest span without a parent), or of the earliest span.
    pub root_service: String,
    /// Operation of that span.
    pub root_operation: String,
    /// Spans in the trace.
    pub span_count: usize,
    /// Spans whose status is an error.
    pub error_count: usize,
    /// Services in the trace, sorted.
    pub services: Vec<String>,
}

impl TraceSummary {
    /// Summarizes a trace's spans; `None` when there are none.
    pub fn from_spans(spans: &[SpanRecord]) -> Option<TraceSummary> {
        let first = spans.first()?;
        let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
        let end = spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(start);
        let root = spans
            .iter()
            .filter(|s| s.parent_span_id.is_none())
            .min_by_key(|s| s.start_unix_nano)
            .or_else(|| spans.iter().min_by_key(|s| s.start_unix_nano))
            .unwrap_or(first);
        let mut services: Vec<String> = spans.iter().map(|s| s.service.name.clone()).collect();
        services.sort();
        services.dedup();
        Some(TraceSummary {
            trace_id: first.trace_id.clone(),
            start_unix_nano: start,
            duration_nanos: end.saturating_sub(start),
            root_service: root.service.name.clone(),
            root_operation: root.name.clone(),
            span_count: spans.len(),
            error_count: spans.iter().filter(|s| s.is_error()).count(),
            services,
        })
    }
}

/// Which logs [`LogReader::search_logs`] returns, and in which order ([`LogQuery::order`]).
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Text the message must contain (a case-insensitive substring in the embedded store,
    /// every word in Elasticsearch).
    pub text: Option<String>,
    /// The emitting service.
    pub service: Option<String>,
    /// Normalized level (`INFO`, `WARN`, `ERROR`, ...).
    pub level: Option<String>,
    /// The trace the record belongs to.
    pub trace_id: Option<String>,
    /// The span the record was emitted in (lowercase hex).
    pub span_id: Option<String>,
    /// The record's time.
    pub time: TimeRange,
    /// At most this many (0 means [`DEFAULT_LIMIT`]).
    pub limit: usize,
    /// Newest first (the default) or oldest first.
    pub order: LogOrder,
    /// Oldest first only: records strictly after this position, so that a reader can go
    /// forward page by page without skipping or repeating a record.
    pub after: Option<LogCursor>,
}

/// The order of [`Store::search_logs`]' answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogOrder {
    /// Newest time first.
    #[default]
    NewestFirst,
    /// Oldest time first, records of one time by document id ([`LogEntry::doc_id`]): a
    /// total order that is the same on every backend, which [`LogCursor`] continues.
    OldestFirst,
}

/// A position in [`LogOrder::OldestFirst`] order: the last record a reader has seen.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogCursor {
    /// The record's time, ns since the Unix epoch.
    pub time_unix_nano: u64,
    /// Its document id ([`LogEntry::doc_id`]).
    pub doc_id: String,
}

impl LogCursor {
    /// The position of a record.
    pub fn of(entry: &LogEntry) -> Self {
        LogCursor {
            time_unix_nano: entry.time_unix_nano,
            doc_id: entry.doc_id(),
        }
    }
}

/// One operation of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Operation {
    /// Operation (span) name.
    pub name: String,
    /// Span kind as Jaeger spells it (`server`, `client`, ..., or `unspecified`).
    pub span_kind: String,
}

impl Operation {
    /// An operation from a span's name and kind.
    pub fn new(name: impl Into<String>, kind: SpanKind) -> Self {
        Operation {
            name: name.into(),
            span_kind: kind.as_str().to_string(),
        }
    }
}

/// An observed call edge: spans of `callee` whose parent span belongs to `caller`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DependencyEdge {
    /// Service of the parent span.
    pub caller: String,
    /// Service of the child span.
    pub callee: String,
    /// Child spans crossing from caller to callee.
    pub calls: u64,
    /// Of those, the ones whose status is an error.
    pub errors: u64,
}

/// A dependency a service declares (`service.dependencies`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeclaredDependency {
    /// The declaring service.
    pub service: String,
    /// The service it says it calls.
    pub depends_on: String,
}

/// What [`DependencyReader::dependencies`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependencies {
    /// Edges seen in spans of the range, sorted by caller then callee.
    pub observed: Vec<DependencyEdge>,
    /// Declared dependencies of every known instance, sorted and deduplicated.
    pub declared: Vec<DeclaredDependency>,
}

/// Liveness of a service instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Liveness {
    /// Reported UP and heard from recently.
    Up,
    /// Said DOWN at shutdown.
    Down,
    /// Reported UP, but no heartbeat within the silence window.
    Silent,
}

impl Liveness {
    /// `UP`, `DOWN` or `SILENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Up => "UP",
            Liveness::Down => "DOWN",
            Liveness::Silent => "SILENT",
        }
    }
}

/// Default number of heartbeat intervals without news after which an UP instance is silent.
pub const DEFAULT_SILENT_INTERVALS: u64 = 3;
/// Heartbeat interval assumed when an instance did not announce one (the SDK's default).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Which instances [`StatusReader::service_status`] reports, and when they count as silent.
#[derive(Debug, Clone, Default)]
pub struct StatusQuery {
    /// Only instances of this service.
    pub service: Option<String>,
    /// "Now", ns since the Unix epoch (the current time when `None`).
    pub now_unix_nano: Option<u64>,
    /// An UP instance not heard from for this long is silent. When `None`:
    /// [`DEFAULT_SILENT_INTERVALS`] times its announced heartbeat interval.
    pub silent_after: Option<Duration>,
}

/// The latest registry entry of one service instance, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryEntry {
    /// Service name.
    pub service: String,
    /// Instance key (`service.instance.id`, or the service name).
    pub instance_id: String,
    /// `service.version`.
    pub version: Option<String>,
    /// What the latest registration or heartbeat said.
    pub reported: ServiceStatus,
    /// Time of the latest registration or heartbeat, ns since the Unix epoch.
    pub last_heartbeat_unix_nano: u64,
    /// Announced heartbeat interval, ms.
    pub interval_ms: Option<u64>,
    /// Declared dependencies.
    pub dependencies: Vec<String>,
}

impl RegistryEntry {
    /// The registry entry a heartbeat or registration event implies, received at
    /// `now_unix_nano`.
    ///
    /// The entry's time orders registry updates (a replayed older heartbeat never rolls the
    /// entry back), so it is clamped to `now`: a sender's clock in the future must not pin
    /// the entry against every later, real heartbeat. The heartbeat document itself keeps
    /// the time it was sent with.
    pub fn from_heartbeat(hb: &Heartbeat, now_unix_nano: u64) -> Self {
        RegistryEntry {
            service: hb.service.name.clone(),
            instance_id: hb.service.instance_key().to_string(),
            version: hb.service.version.clone(),
            reported: hb.status,
            last_heartbeat_unix_nano: hb.time_unix_nano.min(now_unix_nano),
            interval_ms: hb.interval_ms,
            dependencies: hb.service.dependencies.clone(),
        }
    }
}

/// One instance's status, as [`StatusReader::service_status`] reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// UP, DOWN or SILENT.
    pub status: Liveness,
    /// The registry entry the status was derived from.
    pub entry: RegistryEntry,
}

impl InstanceStatus {
    /// Derives liveness from a registry entry, as of `now`.
    pub fn derive(
        entry: RegistryEntry,
        now_unix_nano: u64,
        silent_after: Option<Duration>,
    ) -> Self {
        let window = silent_after.unwrap_or_else(|| {
            entry
                .interval_ms
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL)
                * DEFAULT_SILENT_INTERVALS as u32
        });
        let status = match entry.reported {
            ServiceStatus::Down => Liveness::Down,
            ServiceStatus::Up => {
                let age = now_unix_nano.saturating_sub(entry.last_heartbeat_unix_nano);
                if u128::from(age) > window.as_nanos() {
                    Liveness::Silent
                } else {
                    Liveness::Up
                }
            }
        };
        InstanceStatus { status, entry }
    }
}

/// The window around the receive time that a sender's record time is clamped to when it
/// chooses a time partition (an Elasticsearch daily index), so that a sender cannot create
/// thousands of partitions with timestamps from 1970 or 2200. Documents keep their original
/// time; only the partition is chosen from the clamped one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// How far before the receive time a record's time may be, ns.
    pub max_age_nanos: u64,
    /// How far after the receive time a record's time may be, ns.
    pub max_ahead_nanos: u64,
}

impl TimeWindow {
    /// `time_unix_nano` moved into `[now - max_age, now + max_ahead]`.
    pub fn clamp(&self, time_unix_nano: u64, now_unix_nano: u64) -> u64 {
        let earliest = now_unix_nano.saturating_sub(self.max_age_nanos);
        let latest = now_unix_nano.saturating_add(self.max_ahead_nanos);
        time_unix_nano.clamp(earliest, latest.max(earliest))
    }
}

/// Current time, ns since the Unix epoch.
pub fn now_unix_nano() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// How much a store keeps: partitions go when either bound bites, oldest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Drop a partition (a day) once all of it is older than this.
    pub max_age: Option<Duration>,
    /// Drop the oldest partitions while the store holds more than this many bytes. The
    /// partition of the current day is never dropped for size alone.
    pub max_bytes: Option<u64>,
}

/// One time partition of a store: a day of data (an embedded partition file set, or the
/// daily Elasticsearch indices of that day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionUsage {
    /// The partition's name, e.g. `2026-11-30`.
    pub name: String,
    /// Start of the partition's day, ns since the Unix epoch (UTC).
    pub day_start_unix_nano: u64,
    /// Bytes it holds on disk, indexes included.
    pub bytes: u64,
}

/// What a store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreUsage {
    /// Bytes used on disk, every partition and shared table included.
    pub bytes_used: u64,
    /// Start of the oldest partition kept, ns since the Unix epoch; `None` when empty.
    pub oldest_unix_nano: Option<u64>,
    /// The partitions, oldest first.
    pub partitions: Vec<PartitionUsage>,
    /// Attributes stored with their span or log but not indexed for search, because their key
    /// was new while the attribute dictionary was full (the embedded store's
    /// `max_dictionary_entries`); kept across restarts.
    #[serde(default)]
    pub unindexed_attributes: u64,
    /// Records stored with a resource the store did not index (the embedded store's
    /// `max_resources`): found by their service's name, not by their other resource
    /// attributes.
    #[serde(default)]
    pub unindexed_resources: u64,
    /// Records stored with a service, operation, scope or level name the store did not
    /// index (the embedded store's `max_names`): found under the name `(names full)`, not
    /// by their own.
    #[serde(default)]
    pub unindexed_names: u64,
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    /// Names of the partitions dropped, oldest first.
    pub dropped: Vec<String>,
    /// What the store holds afterwards.
    pub usage: StoreUsage,
}

/// Where a page of a trace's spans starts: after this (start, span id) in
/// [`TraceReader::get_trace`] order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanCursor {
    /// Start of the last span of the previous page, ns since the Unix epoch.
    pub start_unix_nano: u64,
    /// Span id of the last span of the previous page, lowercase hex.
    pub span_id: String,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or is overloaded (connection refused, timeout, 429, 5xx).
    /// Trying again later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request, and repeating it will not help (bad credentials,
    /// malformed query, ...).
    #[error("store refused the request: {0}")]
    Refused(String),
    /// The query was invalid before it reached the store.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The store's configuration is invalid: the key and the reason.
    #[error("invalid storage configuration: {0}")]
    Config(#[source] dlog_core::config::ConfigError),
    /// The embedded store failed.
    #[error("embedded store at {path}: {message}")]
    Embedded {
        /// The store's directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A stored document could not be read back.
    #[error("stored document {id} cannot be read: {message}")]
    Corrupt {
        /// Document id.
        id: String,
        /// What went wrong.
        message: String,
    },
}

impl StoreError {
    /// True when the operation may succeed if repeated later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// What every role of a backend shares: its name, for messages and metrics.
pub trait Backend: Send + Sync {
    /// `elasticsearch` or `embedded`.
    fn backend(&self) -> &'static str;
}

/// Writes what the indexing stage derives from records: spans, logs and heartbeats (the
/// role of Jaeger's `SpanWriter`; here one writer takes every document kind, so that one
/// batch is one bulk write).
#[async_trait]
pub trait SpanWriter: Backend {
    /// Writes documents idempotently and returns one outcome per document, in order. An `Err`
    /// means nothing is known to be written (retry all when it is retryable).
    async fn write(&self, docs: &[Document]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// Makes every acknowledged write visible to queries (Elasticsearch refresh; a no-op for
    /// the embedded store, where commits are visible at once).
    async fn refresh(&self) -> Result<(), StoreError>;
}

/// Reads traces: one trace, a page of it, trace search, and the services and operations
/// that search offers (Jaeger's `TraceReader`).
#[async_trait]
pub trait TraceReader: Backend {
    /// Every span of a trace, sorted by start time then span id; empty when unknown.
    async fn get_trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError>;

    /// Up to `limit` spans of a trace in [`TraceReader::get_trace`] order, starting after
    /// `after` (from the first span when `None`). Backends read only that page, so that a
    /// viewer can open a trace of 100,000 spans a window at a time.
    async fn get_trace_page(
        &self,
        trace_id: &str,
        after: Option<&SpanCursor>,
        limit: usize,
    ) -> Result<Vec<SpanRecord>, StoreError> {
        // Fallback for backends without a paged read; both shipped backends override it.
        let spans = self.get_trace(trace_id).await?;
        let skip = match after {
            None => 0,
            Some(c) => spans
                .iter()
                .take_while(|s| {
                    (s.start_unix_nano, s.span_id.as_str())
                        <= (c.start_unix_nano, c.span_id.as_str())
                })
                .count(),
        };
        Ok(spans.into_iter().skip(skip).take(limit).collect())
    }

    /// Traces matching the query (see [`TraceQuery`]), newest trace start first, then by
    /// trace id.
    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>, StoreError>;

    /// Names of the services that sent spans, sorted.
    async fn services(&self) -> Result<Vec<String>, StoreError>;

    /// Operations of a service, sorted.
    async fn operations(&self, service: &str) -> Result<Vec<Operation>, StoreError>;
}

/// Reads the service graph (Jaeger's `DependencyReader`).
#[async_trait]
pub trait DependencyReader: Backend {
    /// Observed caller → callee edges in the time range (by child span start), next to the
    /// declared dependencies.
    async fn dependencies(&self, time: TimeRange) -> Result<Dependencies, StoreError>;
}

/// Searches log records.
#[async_trait]
pub trait LogReader: Backend {
    /// Log records matching the query, in the query's order (newest first by default).
    async fn search_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError>;
}

/// Reads the service registry that heartbeats keep.
#[async_trait]
pub trait StatusReader: Backend {
    /// UP / DOWN / SILENT per service instance with the last heartbeat, sorted by service
    /// then instance.
    async fn service_status(&self, query: &StatusQuery) -> Result<Vec<InstanceStatus>, StoreError>;
}

/// Keeps alerts, silences and acknowledgements: what the alerting stage writes and the
/// viewer shows and edits.
#[async_trait]
pub trait AlertStore: Backend {
    /// Inserts or replaces alerts by id.
    async fn upsert_alerts(&self, alerts: &[AlertDoc]) -> Result<(), StoreError>;

    /// Alerts matching the query, newest `last_seen_unix_nano` first.
    async fn list_alerts(&self, query: &AlertQuery) -> Result<Vec<AlertDoc>, StoreError>;

    /// Inserts or replaces a silence by id (see [`crate::silence`]).
    async fn put_silence(&self, silence: &crate::silence::Silence) -> Result<(), StoreError> {
        let _ = silence;
        Err(StoreError::Refused(format!(
            "the {} store keeps no silences",
            self.backend()
        )))
    }

    /// Deletes a silence (expires it at once); true when it existed.
    async fn delete_silence(&self, id: &str) -> Result<bool, StoreError> {
        let _ = id;
        Err(StoreError::Refused(format!(
            "the {} store keeps no silences",
            self.backend()
        )))
    }

    /// Every silence kept, active and recently expired, latest end first.
    async fn list_silences(&self) -> Result<Vec<crate::silence::Silence>, StoreError> {
        Err(StoreError::Refused(format!(
            "the {} store keeps no silences",
            self.backend()
        )))
    }

    /// Inserts or replaces the acknowledgement of an alert.
    async fn ack_alert(&self, ack: &crate::silence::AlertAck) -> Result<(), StoreError> {
        let _ = ack;
        Err(StoreError::Refused(format!(
            "the {} store keeps no acknowledgements",
            self.backend()
        )))
    }

    /// Every acknowledgement kept, newest first.
    async fn list_acks(&self) -> Result<Vec<crate::silence::AlertAck>, StoreError> {
        Err(StoreError::Refused(format!(
            "the {} store keeps no acknowledgements",
            self.backend()
        )))
    }
}

/// Bounds the store by age and bytes, and reports what it holds.
#[async_trait]
pub trait Retention: Backend {
    /// Bytes used, the oldest data kept and the partitions.
    async fn usage(&self) -> Result<StoreUsage, StoreError> {
        Err(StoreError::Refused(format!(
            "the {} store does not report its usage",
            self.backend()
        )))
    }

    /// Drops whole partitions past the policy's age, then the oldest ones while the store
    /// holds more than its byte budget. Spans, logs, heartbeats and alerts all follow it.
    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_unix_nano: u64,
    ) -> Result<RetentionReport, StoreError> {
        let _ = (policy, now_unix_nano);
        Err(StoreError::Refused(format!(
            "the {} store has no retention",
            self.backend()
        )))
    }
}

/// A complete storage backend (Elasticsearch or the embedded SQLite store): every role.
///
/// Implemented for every type that has all the roles, so a backend implements the role
/// traits and never `Store` itself. Object-safe, so stages hold an `Arc<dyn Store>` chosen at
/// start by [`crate::open_store`]; a consumer that needs one role takes that role's trait
/// (an `Arc<dyn Store>` coerces to `Arc<dyn TraceReader>` and the others).
pub trait Store:
    SpanWriter + TraceReader + DependencyReader + LogReader + StatusReader + AlertStore + Retention
{
}

impl<T> Store for T where
    T: SpanWriter
        + TraceReader
        + DependencyReader
        + LogReader
        + StatusReader
        + AlertStore
        + Retention
        + ?Sized
{
}

/// Sorts a trace's spans the way [`TraceReader::get_trace`] promises.
pub fn sort_spans(spans: &mut [SpanRecord]) {
    spans.sort_by(|a, b| {
        a.start_unix_nano
            .cmp(&b.start_unix_nano)
            .then_with(|| a.span_id.cmp(&b.span_id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlog_core::model::{HeartbeatKind, ServiceInfo};

    fn entry(reported: ServiceStatus, last: u64, interval_ms: Option<u64>) -> RegistryEntry {
        RegistryEntry::from_heartbeat(
            &Heartbeat {
                kind: HeartbeatKind::Heartbeat,
                status: reported,
                time_unix_nano: last,
                interval_ms,
                service: ServiceInfo {
                    name: "svc".into(),
                    ..Default::default()
                },
            },
            u64::MAX,
        )
    }

    #[test]
    fn time_window_clamps_to_the_days_around_now() {
        let day = 86_400_000_000_000u64;
        let window = TimeWindow {
            max_age_nanos: 7 * day,
            max_ahead_nanos: day / 24,
        };
        let now = 20_000 * day;
        assert_eq!(window.clamp(0, now), now - 7 * day);
        assert_eq!(window.clamp(u64::MAX, now), now + day / 24);
        assert_eq!(window.clamp(now - day, now), now - day);
        // Near the ends of the clock nothing overflows.
        assert_eq!(window.clamp(5, 3), 5);
        assert_eq!(window.clamp(0, u64::MAX), u64::MAX - 7 * day);
    }

    #[test]
    fn liveness_follows_reported_status_and_heartbeat_age() {
        let s = 1_000_000_000u64;
        let up = |now| {
            InstanceStatus::derive(entry(ServiceStatus::Up, 10 * s, Some(1000)), now, None).status
        };
        assert_eq!(up(12 * s), Liveness::Up);
        assert_eq!(up(13 * s), Liveness::Up);
        assert_eq!(up(13 * s + 1), Liveness::Silent);
        let down = InstanceStatus::derive(entry(ServiceStatus::Down, 10 * s, None), 99 * s, None);
        assert_eq!(down.status, Liveness::Down);
        let explicit = InstanceStatus::derive(
            entry(ServiceStatus::Up, 10 * s, None),
            15 * s,
            Some(Duration::from_secs(2)),
        );
        assert_eq!(explicit.status, Liveness::Silent);
        assert_eq!(explicit.entry.instance_id, "svc");
    }

    #[test]
    fn time_range_is_inclusive_and_open_ended() {
        assert!(TimeRange::between(5, 10).contains(5));
        assert!(TimeRange::between(5, 10).contains(10));
        assert!(!TimeRange::between(5, 10).contains(11));
        assert!(TimeRange::default().contains(0));
    }
}
