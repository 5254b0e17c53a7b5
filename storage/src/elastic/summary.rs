//! Trace-summary and dependency documents, maintained by the indexer as spans arrive.
//!
//! One summary document per trace holds what trace search reads (start, duration, root
//! service and operation, span and error counts, services and operations), so that
//! `find_traces` is one query over one document per trace, filtered by the trace's own
//! duration and sorted by its start.
//!
//! Elasticsearch's scripted upserts would let the server merge a span into its trace, but
//! not every server of the API runs scripts (osmem does not). The indexer merges instead:
//! it reads the summary (realtime `_mget`), adds the batch's spans and writes it back with
//! `if_seq_no`/`if_primary_term` (or `create` for a new trace), and on a conflict reads and
//! merges again. The summary keeps each span's contribution keyed by span id (`spans`,
//! stored but not indexed), so a replayed span changes nothing and counts stay exact.
//!
//! The same contributions (service, parent span, error) give the trace's caller → callee
//! edges, whatever order parents and children arrive in: each time a summary changes, the
//! trace's edges are recomputed from it and written as dependency documents with
//! deterministic ids, which a single aggregation sums.

use std::collections::{BTreeMap, BTreeSet};

use hashlink::LruCache;

use dlog_core::model::SpanRecord;
use serde::{Deserialize, Serialize};

use crate::store::TraceSummary;

/// Most span contributions a summary keeps. Spans past it still move the trace's start,
/// end, services and counts, but a replay of them counts again, and their call edges are
/// not recorded.
pub const MAX_SUMMARY_SPANS: usize = 10_000;
/// Most distinct services, operations and service/operation pairs a summary lists.
pub const MAX_SUMMARY_NAMES: usize = 1_000;
/// Separates service and operation in `service_operations`.
pub const PAIR_SEPARATOR: char = '\u{1f}';

/// One span's contribution to its trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanBrief {
    /// Start, ns since the Unix epoch.
    #[serde(rename = "s")]
    pub start: u64,
    /// Service.
    #[serde(rename = "v")]
    pub service: String,
    /// Parent span id.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The span's status is an error.
    #[serde(rename = "x", default, skip_serializing_if = "is_false")]
    pub error: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The span a summary names as the trace's root: the earliest span without a parent, or the
/// earliest span while no parentless one is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootCandidate {
    /// Span id.
    pub span_id: String,
    /// Start, ns.
    pub start: u64,
    /// True when the span has no parent.
    pub parentless: bool,
    /// Service.
    pub service: String,
    /// Operation.
    pub operation: String,
}

impl RootCandidate {
    fn key(&self) -> (bool, u64, &str) {
        (!self.parentless, self.start, &self.span_id)
    }
}

/// The summary document of a trace (`dlog-trace-summaries-*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SummaryDoc {
    /// Trace id, lowercase hex.
    pub trace_id: String,
    /// Earliest span start, ns.
    pub start_ns: u64,
    /// Latest span end, ns.
    pub end_ns: u64,
    /// `end_ns - start_ns`.
    pub duration_ns: u64,
    /// Service of the root span.
    pub root_service: String,
    /// Operation of the root span.
    pub root_operation: String,
    /// Spans in the trace.
    pub span_count: u64,
    /// Spans whose status is an error.
    pub error_count: u64,
    /// Services, sorted.
    pub services: Vec<String>,
    /// Operations, sorted.
    pub operations: Vec<String>,
    /// `service<US>operation` pairs, sorted, so that a query for both matches one span's.
    pub service_operations: Vec<String>,
    /// The root candidate.
    #[serde(default)]
    pub root: Option<RootCandidate>,
    /// Contributions by span id.
    #[serde(default)]
    pub spans: BTreeMap<String, SpanBrief>,
    /// Spans counted past [`MAX_SUMMARY_SPANS`].
    #[serde(default)]
    pub overflow_spans: u64,
    /// Error spans counted past [`MAX_SUMMARY_SPANS`].
    #[serde(default)]
    pub overflow_errors: u64,
}

fn insert_sorted(list: &mut Vec<String>, value: &str) {
    if let Err(at) = list.binary_search_by(|v| v.as_str().cmp(value)) {
        if list.len() < MAX_SUMMARY_NAMES {
            list.insert(at, value.to_string());
        }
    }
}

impl SummaryDoc {
    /// An empty summary of a trace.
    pub fn new(trace_id: &str) -> Self {
        SummaryDoc {
            trace_id: trace_id.to_string(),
            start_ns: u64::MAX,
            ..Default::default()
        }
    }

    /// Adds a span; false when the summary already holds it (a replay).
    pub fn merge(&mut self, span: &SpanRecord) -> bool {
        if self.spans.contains_key(&span.span_id) {
            return false;
        }
        let error = span.is_error();
        if self.spans.len() < MAX_SUMMARY_SPANS {
            self.spans.insert(
                span.span_id.clone(),
                SpanBrief {
                    start: span.start_unix_nano,
                    service: span.service.name.clone(),
                    parent: span.parent_span_id.clone(),
                    error,
                },
            );
        } else {
            self.overflow_spans += 1;
            self.overflow_errors += u64::from(error);
        }
        self.start_ns = self.start_ns.min(span.start_unix_nano);
        self.end_ns = self
            .end_ns
            .max(span.end_unix_nano)
            .max(span.start_unix_nano);
        self.duration_ns = self.end_ns.saturating_sub(self.start_ns);
        insert_sorted(&mut self.services, &span.service.name);
        insert_sorted(&mut self.operations, &span.name);
        insert_sorted(
            &mut self.service_operations,
            &format!("{}{PAIR_SEPARATOR}{}", span.service.name, span.name),
        );
        let candidate = RootCandidate {
            span_id: span.span_id.clone(),
            start: span.start_unix_nano,
            parentless: span.parent_span_id.is_none(),
            service: span.service.name.clone(),
            operation: span.name.clone(),
        };
        if self.root.as_ref().is_none_or(|r| candidate.key() < r.key()) {
            self.root_service = candidate.service.clone();
            self.root_operation = candidate.operation.clone();
            self.root = Some(candidate);
        }
        self.span_count = self.spans.len() as u64 + self.overflow_spans;
        self.error_count =
            self.spans.values().filter(|s| s.error).count() as u64 + self.overflow_errors;
        true
    }

    /// The trace's caller → callee edges between different services, by the UTC day of the
    /// child spans: `(caller, callee, day) -> (calls, errors, earliest child start)`.
    pub fn edges(&self) -> BTreeMap<(String, String, u64), (u64, u64, u64)> {
        let mut out: BTreeMap<(String, String, u64), (u64, u64, u64)> = BTreeMap::new();
        for child in self.spans.values() {
            let Some(parent) = child.parent.as_ref().and_then(|p| self.spans.get(p)) else {
                continue;
            };
            if parent.service == child.service {
                continue;
            }
            let day = child.start / crate::elastic::DAY_NANOS;
            let e = out
                .entry((parent.service.clone(), child.service.clone(), day))
                .or_insert((0, 0, u64::MAX));
            e.0 += 1;
            e.1 += u64::from(child.error);
            e.2 = e.2.min(child.start);
        }
        out
    }

    /// The summary as [`crate::Store::find_traces`] returns it.
    pub fn to_summary(&self) -> TraceSummary {
        let services: BTreeSet<&String> = self.services.iter().collect();
        TraceSummary {
            trace_id: self.trace_id.clone(),
            start_unix_nano: if self.start_ns == u64::MAX {
                0
            } else {
                self.start_ns
            },
            duration_nanos: self.duration_ns,
            root_service: self.root_service.clone(),
            root_operation: self.root_operation.clone(),
            span_count: self.span_count as usize,
            error_count: self.error_count as usize,
            services: services.into_iter().cloned().collect(),
        }
    }
}

/// A dependency document (`dlog-dependencies-*`): the calls of one trace from `caller` to
/// `callee` whose child spans started on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyDoc {
    /// Trace id.
    pub trace_id: String,
    /// Service of the parent spans.
    pub caller: String,
    /// Service of the child spans.
    pub callee: String,
    /// Child spans.
    pub calls: u64,
    /// Of those, errors.
    pub errors: u64,
    /// Earliest child start, ns; the range filter of `dependencies` applies to it.
    pub start_ns: u64,
}

/// A summary as last written (or read) by this indexer, with the version its next write is
/// conditional on.
#[derive(Debug, Clone)]
pub struct CachedSummary {
    /// The daily summary index that holds it.
    pub index: String,
    /// `_seq_no` of the stored document.
    pub seq_no: u64,
    /// `_primary_term` of the stored document.
    pub primary_term: u64,
    /// Length of the stored document's JSON source, bytes: what the cache is bounded by.
    pub bytes: usize,
    /// The stored document.
    pub doc: SummaryDoc,
}

/// Recently written summaries, least recently used evicted first, bounded by traces and by the
/// bytes of their serialized sources (a summary of [`MAX_SUMMARY_SPANS`] spans is about 1 MB).
///
/// Kafka keys spans by trace id, so in steady state one indexer writes all of a trace's
/// summaries and its next write can skip the read. An entry is only a guess at the stored
/// version: every write is still conditional on `_seq_no`/`_primary_term`, and a conflict (a
/// second writer, a rebalance) drops the entry and reads the stored document again.
pub struct SummaryCache {
    map: LruCache<String, CachedSummary>,
    bytes: usize,
    max_traces: usize,
    max_bytes: usize,
}

impl SummaryCache {
    /// A cache of at most `max_traces` summaries whose serialized sources add up to at most
    /// `max_bytes` (0 traces disables it).
    pub fn new(max_traces: usize, max_bytes: usize) -> Self {
        SummaryCache {
            map: LruCache::new_unbounded(),
            bytes: 0,
            max_traces,
            max_bytes,
        }
    }

    /// True when the trace's summary is cached.
    pub fn contains(&self, trace: &str) -> bool {
        self.map.contains_key(trace)
    }

    /// Takes the trace's summary out of the cache; the writer puts it back once its write
    /// succeeded, so two concurrent writes of one trace never both trust the same entry.
    pub fn take(&mut self, trace: &str) -> Option<CachedSummary> {
        let entry = self.map.remove(trace)?;
        self.bytes -= entry.bytes;
        Some(entry)
    }

    /// Remembers a stored summary, unless a newer version of it is cached already.
    pub fn put(&mut self, entry: CachedSummary) {
        if self.max_traces == 0 || entry.bytes > self.max_bytes {
            return;
        }
        if let Some(old) = self.map.get(&entry.doc.trace_id) {
            if old.index == entry.index
                && (old.primary_term, old.seq_no) > (entry.primary_term, entry.seq_no)
            {
                return;
            }
        }
        self.take(&entry.doc.trace_id);
        self.bytes += entry.bytes;
        self.map.insert(entry.doc.trace_id.clone(), entry);
        while self.map.len() > self.max_traces || self.bytes > self.max_bytes {
            match self.map.remove_lru() {
                Some((_, old)) => self.bytes -= old.bytes,
                None => break,
            }
        }
    }

    /// Empties the cache.
    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// Bytes of the cached summaries' serialized sources.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Cached summaries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlog_core::model::{ServiceInfo, SpanKind, StatusCode};

    fn span(id: &str, parent: Option<&str>, svc: &str, start: u64, error: bool) -> SpanRecord {
        SpanRecord {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            name: format!("op-{id}"),
            kind: SpanKind::Server,
            start_unix_nano: start,
            end_unix_nano: start + 10,
            status: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            status_message: String::new(),
            service: ServiceInfo {
                name: svc.into(),
                ..Default::default()
            },
            scope: String::new(),
            attributes: Default::default(),
            events: vec![],
            links: vec![],
        }
    }

    #[test]
    fn merge_in_any_order_and_replays_give_the_same_summary() {
        let spans = [
            span("a", None, "fe", 100, false),
            span("b", Some("a"), "be", 105, true),
            span("c", Some("b"), "db", 107, false),
        ];
        let mut forward = SummaryDoc::new("t");
        for s in &spans {
            assert!(forward.merge(s));
        }
        let mut backward = SummaryDoc::new("t");
        for s in spans.iter().rev() {
            backward.merge(s);
        }
        for s in &spans {
            assert!(!backward.merge(s), "a replay changes nothing");
        }
        assert_eq!(forward, backward);
        let expected = TraceSummary::from_spans(&spans).unwrap();
        assert_eq!(forward.to_summary(), expected);
        let edges: Vec<_> = forward.edges().into_iter().collect();
        assert_eq!(
            edges,
            vec![
                (("be".into(), "db".into(), 0), (1, 0, 107)),
                (("fe".into(), "be".into(), 0), (1, 1, 105)),
            ]
        );
    }

    #[test]
    fn the_cache_is_bounded_by_traces_and_bytes_and_keeps_the_newest_version() {
        let entry = |trace: &str, spans: usize, seq_no: u64| {
            let mut doc = SummaryDoc::new(trace);
            for i in 0..spans {
                doc.merge(&span(&format!("{trace}-{i}"), None, "fe", i as u64, false));
            }
            CachedSummary {
                index: "i".into(),
                seq_no,
                primary_term: 1,
                // Sizes in units of 100 bytes, as if each span took 100.
                bytes: spans * 100,
                doc,
            }
        };
        let mut cache = SummaryCache::new(2, 1_000);
        cache.put(entry("a", 4, 1));
        cache.put(entry("b", 4, 2));
        cache.put(entry("c", 1, 3));
        assert!(
            !cache.contains("a"),
            "over the trace bound, the oldest goes"
        );
        assert_eq!(cache.len(), 2);
        cache.put(entry("d", 8, 4));
        assert!(
            !cache.contains("b") && cache.contains("c") && cache.contains("d"),
            "over the byte bound, the oldest go until it fits"
        );
        cache.put(entry("big", 11, 5));
        assert!(
            !cache.contains("big"),
            "one summary over the byte bound is not cached"
        );
        cache.put(entry("d", 2, 3));
        assert_eq!(
            cache.take("d").unwrap().seq_no,
            4,
            "an older version does not win"
        );
        assert!(cache.take("d").is_none(), "taken entries are gone");
        assert_eq!(cache.take("c").unwrap().doc.spans.len(), 1);
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
        cache.put(entry("e", 3, 6));
        cache.clear();
        assert!(cache.is_empty() && cache.bytes() == 0);
    }

    #[test]
    fn the_root_is_the_earliest_parentless_span_once_it_arrives() {
        let mut doc = SummaryDoc::new("t");
        doc.merge(&span("b", Some("a"), "be", 50, false));
        assert_eq!(doc.root_service, "be");
        doc.merge(&span("a", None, "fe", 60, false));
        assert_eq!(doc.root_service, "fe");
        assert_eq!(doc.start_ns, 50);
        assert_eq!(doc.duration_ns, 20);
    }
}
