//! The Elasticsearch backend, through the official `elasticsearch` client.
//!
//! * Spans go to daily `jaeger-span-YYYY-MM-DD` indices in Jaeger's span model, with one
//!   `jaeger-service-YYYY-MM-DD` document per service and operation, so Jaeger's own query
//!   service can read the cluster.
//! * Logs go to daily `service-logs-YYYY-MM-DD` indices in a flat schema.
//! * Heartbeats go to daily `service-heartbeats-YYYY-MM-DD` indices, and each upserts its
//!   instance's `service-registry` document. The registry write uses external versioning
//!   with the event time as the version, so a replayed older heartbeat never rolls it back.
//! * Each span also updates its trace's `dlog-trace-summaries-YYYY-MM-DD` document and the
//!   trace's `dlog-dependencies-YYYY-MM-DD` call edges (see [`summary`]), so that trace
//!   search and the dependency graph are single queries.
//! * Retention deletes whole daily indices by age and, oldest first, while the indices hold
//!   more than a byte budget (the current day is never deleted for size).
//! * Writes are `_bulk` requests cut by bytes and by count. Each item's result is read:
//!   429/5xx items are retried by the stage, other failures are permanent rejections.

pub mod model;
mod silences;
pub mod summary;
pub mod templates;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use dlog_core::config::ConfigError;
use dlog_core::error_chain;
use dlog_core::model::{LogEntry, SpanRecord};
use elasticsearch::auth::Credentials;
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::Elasticsearch;
use serde::Deserialize;
use serde_json::{json, Value};

use self::model::{
    heartbeat_to_doc, log_from_doc, log_to_doc, span_from_doc, span_to_doc, JaegerSpan, LogDoc,
    RegistryDoc, ServiceDoc,
};
use self::summary::{CachedSummary, DependencyDoc, SummaryCache, SummaryDoc};
use self::templates::IndexNames;
use crate::config::StoreConfig;
use crate::store::{
    effective_limit, sort_spans, AlertDoc, AlertQuery, AlertStore, Backend, DeclaredDependency,
    Dependencies, DependencyEdge, DependencyReader, Document, InstanceStatus, LogOrder, LogQuery,
    LogReader, Operation, PartitionUsage, RegistryEntry, Retention, RetentionPolicy,
    RetentionReport, SpanCursor, SpanWriter, StatusQuery, StatusReader, StoreError, StoreUsage,
    TimeRange, TimeWindow, TraceQuery, TraceReader, TraceSummary, WriteOutcome,
};

/// Page size of scans (`search_after`), below the default `index.max_result_window`.
const PAGE: usize = 10_000;
/// Most distinct service documents remembered as written, before the memory is reset.
const SEEN_SERVICES_CAP: usize = 100_000;
/// Nanoseconds in a day: the partition unit of every daily index.
pub const DAY_NANOS: u64 = 86_400_000_000_000;
/// Most traces an attribute filter collects from spans before their summaries are read.
pub const MAX_ATTRIBUTE_CANDIDATES: usize = 10_000;
/// Read-merge-write rounds of a summary before giving up on it for this write (the stage
/// retries the write).
const SUMMARY_ROUNDS: usize = 5;
/// Documents per `_mget` request.
const MGET_CHUNK: usize = 1_000;
/// Most trace summaries the indexer keeps in memory to skip reading them back.
pub const SUMMARY_CACHE_TRACES: usize = 50_000;
/// Most bytes of serialized summary source those cached summaries add up to. Held parsed,
/// a summary takes about two to three times its serialized size in memory.
pub const SUMMARY_CACHE_BYTES: usize = 32 << 20;
/// Dependency documents are written with external versions `EDGE_VERSION_BASE + calls`, so a
/// write computed from an older summary (fewer calls) never replaces a newer one, whatever
/// order concurrent writers' requests land in. The base keeps them above the internal
/// versions of documents written before edges were versioned.
const EDGE_VERSION_BASE: u64 = 1 << 40;

/// The Elasticsearch store.
pub struct ElasticStore {
    client: Elasticsearch,
    url: String,
    names: IndexNames,
    bulk_max_bytes: usize,
    bulk_max_docs: usize,
    cap: usize,
    /// Hits per search page.
    page: usize,
    /// Where a record's time may choose its daily index.
    window: TimeWindow,
    /// Service documents (index + id) known to be written, so a span write does not repeat
    /// them (as Jaeger's writer caches them).
    seen_services: Mutex<HashSet<String>>,
    /// Summaries this store wrote recently, with their versions.
    summary_cache: Mutex<SummaryCache>,
    /// What the summary writes ran into (see [`SummaryStats`]).
    summary_conflicts: AtomicU64,
    rejected_summaries: AtomicU64,
    rejected_edges: AtomicU64,
}

/// Counts of what this store's summary and call-edge writes ran into since it connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SummaryStats {
    /// Conditional summary writes that lost to another writer, each read, merged and
    /// written again.
    pub conflicts: u64,
    /// Summaries the store refused for good (logged; the spans are stored).
    pub rejected_summaries: u64,
    /// Call-edge documents the store refused for good (logged; the summary stays
    /// authoritative and the next change of the trace writes its edges again).
    pub rejected_edges: u64,
}

/// Summaries read while the spans were written: the traces asked for, and what was found.
type Prefetched = (
    HashSet<String>,
    Result<HashMap<String, CachedSummary>, StoreError>,
);

/// One trace's summary as merged in one round of [`ElasticStore::update_summaries`].
struct Merged<'a> {
    trace: String,
    spans: Vec<&'a SpanRecord>,
    index: String,
    version: Option<(u64, u64)>,
    /// Length of the summary's serialized source.
    bytes: usize,
    doc: SummaryDoc,
    changed: bool,
    summary: Option<ItemResult>,
    edges_failed: Option<String>,
}

/// One bulk item: the action and source lines, and what it belongs to.
struct Item {
    doc: usize,
    lines: Vec<u8>,
    kind: ItemKind,
}

enum ItemKind {
    Plain,
    /// External-versioned registry upsert: a version conflict means a newer entry is there.
    Registry,
    /// External-versioned call edge: a version conflict means an edge with as many or more
    /// calls is there.
    Edge,
    /// A `jaeger-service` document, remembered once written.
    Service(String),
    /// A write conditional on the document's sequence number (or `create`): a conflict
    /// means another writer changed it first.
    Conditional,
}

enum ItemResult {
    /// Stored; `_seq_no` and `_primary_term` when the server gave them.
    Ok(Option<(u64, u64)>),
    /// A conditional write lost to another writer: read, merge and write again.
    Conflict,
    Retry(String),
    Rejected(String),
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    _seq_no: Option<u64>,
    #[serde(default)]
    _primary_term: Option<u64>,
}

fn error_text(error: &Option<Value>) -> String {
    match error {
        Some(e) => {
            let ty = e.get("type").and_then(Value::as_str).unwrap_or("error");
            let reason = e.get("reason").and_then(Value::as_str).unwrap_or("");
            format!("{ty}: {reason}")
        }
        None => "no error detail".to_string(),
    }
}

fn retryable_status(status: u16) -> bool {
    // 404: the index vanished or auto-creation is off; an operator can fix it, so keep the
    // data rather than dead-letter it.
    status == 429 || status >= 500 || status == 404 || status == 408
}

fn push_action(lines: &mut Vec<u8>, action: &Value) {
    // Serializing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *lines, action);
    lines.push(b'\n');
}

fn push_source<T: serde::Serialize>(lines: &mut Vec<u8>, source: &T) -> Result<(), String> {
    serde_json::to_writer(&mut *lines, source).map_err(|e| e.to_string())?;
    lines.push(b'\n');
    Ok(())
}

fn range_clause(field: &str, time: TimeRange, scale: u64) -> Option<Value> {
    let mut range = serde_json::Map::new();
    if let Some(s) = time.start_unix_nano {
        range.insert("gte".into(), json!(s / scale));
    }
    if let Some(e) = time.end_unix_nano {
        range.insert("lte".into(), json!(e / scale));
    }
    (!range.is_empty()).then(|| json!({"range": {field: range}}))
}

fn buckets<'a>(response: &'a Value, path: &str) -> &'a [Value] {
    response
        .pointer(path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Where a trace's summary comes from in one round of [`ElasticStore::update_summaries`]:
/// `Some(base)` (the cached entry `hit`, else the summary read while the spans were written,
/// `None` inside when there was none) or `None` when it must be read now. The prefetched
/// read serves one round at most: after a conflict it is stale, and the next round reads.
fn base_of(
    trace: &str,
    hit: Option<CachedSummary>,
    covered: &mut HashSet<String>,
    prefetched: &mut HashMap<String, CachedSummary>,
) -> Option<Option<CachedSummary>> {
    let read = covered.remove(trace).then(|| prefetched.remove(trace));
    match hit {
        Some(entry) => Some(Some(entry)),
        None => read,
    }
}

/// The credentials and TLS material of `config` on `builder`: the CA trusted next to the
/// Mozilla roots, the client certificate (mTLS), and basic auth or an API key. With a client
/// certificate, which takes the client's one credentials slot, basic auth or the API key
/// travel as an `Authorization` header instead.
fn tls_settings(
    mut builder: TransportBuilder,
    config: &StoreConfig,
) -> Result<TransportBuilder, StoreError> {
    use elasticsearch::auth::ClientCertificate;
    use elasticsearch::cert::{Certificate, CertificateValidation};
    use elasticsearch::http::headers::AUTHORIZATION;

    let invalid = |key: &str, reason: String| StoreError::Config(ConfigError::invalid(key, reason));
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| invalid(key, format!("{}: {e}", path.display())))
    };
    if let Some(path) = &config.elasticsearch_ca {
        let pem = read("elasticsearch_ca", path)?;
        let roots = Certificate::from_pem(&pem)
            .map_err(|e| invalid("elasticsearch_ca", format!("{}: {e}", path.display())))?;
        builder = builder.cert_validation(CertificateValidation::Full(roots));
    }
    let mut header = None;
    if let (Some(cert), Some(key)) = (
        &config.elasticsearch_client_cert,
        &config.elasticsearch_client_key,
    ) {
        let mut pem = read("elasticsearch_client_cert", cert)?;
        pem.push(b'\n');
        pem.extend(read("elasticsearch_client_key", key)?);
        builder = builder.auth(Credentials::Certificate(ClientCertificate::Pem(pem)));
        if let Some(api_key) = &config.api_key {
            header = Some(("api_key", format!("ApiKey {api_key}")));
        } else if let (Some(user), Some(password)) = (&config.username, &config.password) {
            use base64::Engine as _;
            let pair =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            header = Some(("username", format!("Basic {pair}")));
        }
    } else if let Some(key) = &config.api_key {
        builder = builder.auth(Credentials::EncodedApiKey(key.clone()));
    } else if let (Some(user), Some(password)) = (&config.username, &config.password) {
        builder = builder.auth(Credentials::Basic(user.clone(), password.clone()));
    }
    if let Some((key, value)) = header {
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            invalid(
                key,
                "holds characters an HTTP header cannot carry".to_string(),
            )
        })?;
        value.set_sensitive(true);
        builder = builder.header(AUTHORIZATION, value);
    }
    Ok(builder)
}

impl ElasticStore {
    /// Connects to `config.elasticsearch_url` and installs the index templates (unless
    /// `install_templates` is off).
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let url_text = config.elasticsearch_url.clone().ok_or_else(|| {
            StoreError::Config(ConfigError::invalid("elasticsearch_url", "is not set"))
        })?;
        let url = Url::parse(&url_text).map_err(|e| {
            StoreError::Config(ConfigError::invalid(
                "elasticsearch_url",
                format!("`{url_text}`: {e}"),
            ))
        })?;
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .disable_proxy();
        builder = tls_settings(builder, config)?;
        let transport = builder.build().map_err(|e| {
            let key = if config.elasticsearch_client_cert.is_some() {
                "elasticsearch_client_cert"
            } else if config.elasticsearch_ca.is_some() {
                "elasticsearch_ca"
            } else {
                "elasticsearch_url"
            };
            StoreError::Config(ConfigError::invalid(
                key,
                format!("`{url_text}`: cannot build the client: {}", error_chain(&e)),
            ))
        })?;
        let store = ElasticStore {
            client: Elasticsearch::new(transport),
            url: url_text,
            names: IndexNames::new(&config.index_prefix),
            bulk_max_bytes: config.bulk_max_bytes,
            bulk_max_docs: config.bulk_max_docs,
            cap: config.max_indexed_attributes,
            page: PAGE,
            window: config.partition_window(),
            seen_services: Mutex::new(HashSet::new()),
            summary_cache: Mutex::new(SummaryCache::new(SUMMARY_CACHE_TRACES, SUMMARY_CACHE_BYTES)),
            summary_conflicts: AtomicU64::new(0),
            rejected_summaries: AtomicU64::new(0),
            rejected_edges: AtomicU64::new(0),
        };
        if config.install_templates {
            store
                .install_templates(config.shards, config.replicas)
                .await?;
            // Read-only openers (the query commands) skip this; the indexer says it once.
            match store.days_without_summaries().await {
                Ok(days) if !days.is_empty() => tracing::warn!(
                    ?days,
                    "span indices without trace summaries (written by an earlier version): \
                     trace search and dependencies miss their spans until \
                     `dlog-indexer migrate` has run"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot list indices for the summary check"),
            }
        }
        Ok(store)
    }

    /// Sets the hits per search page (default 10,000, Elasticsearch's default
    /// `index.max_result_window`). Small pages exercise `search_after` paging in tests.
    pub fn with_page_size(mut self, page: usize) -> Self {
        self.page = page.max(1);
        self
    }

    /// The index names this store uses.
    pub fn names(&self) -> &IndexNames {
        &self.names
    }

    /// Installs (or replaces) the composable index templates.
    pub async fn install_templates(&self, shards: u32, replicas: u32) -> Result<(), StoreError> {
        for (name, body) in templates::templates(&self.names, shards, replicas) {
            self.json(
                Method::Put,
                &format!("/_index_template/{name}"),
                &[],
                Some(&body),
            )
            .await
            .map_err(|e| match e {
                StoreError::Refused(m) => {
                    StoreError::Refused(format!("installing index template `{name}`: {m}"))
                }
                other => other,
            })?;
        }
        Ok(())
    }

    /// Deletes every index this store wrote (tests against a shared cluster clean up with it).
    pub async fn delete_indices(&self) -> Result<(), StoreError> {
        self.forget_summaries();
        let path = format!("/{}", self.names.all());
        let result = self
            .json(
                Method::Delete,
                &path,
                &[("ignore_unavailable", "true"), ("allow_no_indices", "true")],
                None,
            )
            .await
            .map(|_| ());
        self.forget_summaries();
        result
    }

    /// Empties the cache of written summaries: indices are being deleted, and a cached
    /// summary must not stand in for one that is gone. Called before a delete and again
    /// after it, since a write that ran meanwhile may have cached a summary the delete then
    /// removed.
    fn forget_summaries(&self) {
        let mut cache = self.summary_cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.clear();
    }

    /// What this store's summary and call-edge writes ran into since it connected.
    pub fn summary_stats(&self) -> SummaryStats {
        SummaryStats {
            conflicts: self.summary_conflicts.load(Ordering::Relaxed),
            rejected_summaries: self.rejected_summaries.load(Ordering::Relaxed),
            rejected_edges: self.rejected_edges.load(Ordering::Relaxed),
        }
    }

    /// Bytes of serialized source the summary cache holds.
    pub fn summary_cache_bytes(&self) -> usize {
        let cache = self.summary_cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.bytes()
    }

    /// Sends one request; transport failures are `Unavailable`. Returns status and body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        ndjson: bool,
    ) -> Result<(u16, bytes::Bytes), StoreError> {
        let mut headers = HeaderMap::new();
        if ndjson {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
        }
        let response = self
            .client
            .send(method, path, headers, Some(query), body, None)
            .await
            .map_err(|e| {
                // The reason of a connection or TLS failure (unknown issuer, name mismatch) is
                // in the error's sources.
                StoreError::Unavailable(format!("{} {path}: {}", self.url, error_chain(&e)))
            })?;
        let status = response.status_code().as_u16();
        let bytes = response.bytes().await.map_err(|e| {
            StoreError::Unavailable(format!("{} {path}: reading the answer: {e}", self.url))
        })?;
        Ok((status, bytes))
    }

    /// A JSON request whose non-2xx answers are errors (429/5xx retryable).
    async fn json(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, StoreError> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let (status, bytes) = self.call(method, path, query, body, false).await?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.chars().take(1000).collect();
            let message = format!("{} {path}: HTTP {status}: {text}", self.url);
            return Err(if retryable_status(status) && status != 404 {
                StoreError::Unavailable(message)
            } else {
                StoreError::Refused(message)
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Unavailable(format!("{} {path}: answer is not JSON: {e}", self.url))
        })
    }

    async fn search(&self, index: &str, body: &Value) -> Result<Value, StoreError> {
        self.json(
            Method::Post,
            &format!("/{index}/_search"),
            &[("ignore_unavailable", "true"), ("allow_no_indices", "true")],
            Some(body),
        )
        .await
    }

    /// Reads the `_source` of every hit of `query` sorted by `sort` (which must end in a
    /// unique field), page by page with `search_after`, up to `max` hits. Pages are parsed
    /// straight into `T`, and `filter_path` trims the answer to sources and sort values.
    async fn scan<T: serde::de::DeserializeOwned>(
        &self,
        index: &str,
        query: Value,
        sort: Value,
        source: Option<Value>,
        max: usize,
    ) -> Result<Vec<T>, StoreError> {
        self.scan_from(index, query, sort, source, max, None).await
    }

    /// [`Self::scan`], starting after the sort values `start_after`.
    async fn scan_from<T: serde::de::DeserializeOwned>(
        &self,
        index: &str,
        query: Value,
        sort: Value,
        source: Option<Value>,
        max: usize,
        start_after: Option<Value>,
    ) -> Result<Vec<T>, StoreError> {
        #[derive(Deserialize)]
        struct Page<T> {
            #[serde(default = "no_hits")]
            hits: Hits<T>,
        }
        #[derive(Deserialize)]
        struct Hits<T> {
            #[serde(default = "Vec::new")]
            hits: Vec<Hit<T>>,
            #[serde(default)]
            total: Option<Total>,
        }
        #[derive(Deserialize)]
        struct Total {
            value: u64,
        }
        #[derive(Deserialize)]
        struct Hit<T> {
            #[serde(rename = "_source")]
            source: T,
            #[serde(default)]
            sort: Option<Value>,
        }
        fn no_hits<T>() -> Hits<T> {
            Hits {
                hits: Vec::new(),
                total: None,
            }
        }
        let path = format!("/{index}/_search");
        let mut out = Vec::new();
        let mut after: Option<Value> = start_after;
        let mut first = true;
        loop {
            let size = self.page.min(max.saturating_sub(out.len()));
            if size == 0 {
                break;
            }
            let mut body = json!({"size": size, "query": query, "sort": sort,
                "track_total_hits": if first { json!(size + 1) } else { json!(false) }});
            if let Some(s) = &source {
                body["_source"] = s.clone();
            }
            if let Some(a) = &after {
                body["search_after"] = a.clone();
            }
            let (status, bytes) = self
                .call(
                    Method::Post,
                    &path,
                    &[
                        ("ignore_unavailable", "true"),
                        ("allow_no_indices", "true"),
                        (
                            "filter_path",
                            "hits.hits._source,hits.hits.sort,hits.total.value",
                        ),
                    ],
                    Some(serde_json::to_vec(&body).unwrap_or_default()),
                    false,
                )
                .await?;
            if !(200..300).contains(&status) {
                let text: String = String::from_utf8_lossy(&bytes).chars().take(1000).collect();
                let message = format!("{} {path}: HTTP {status}: {text}", self.url);
                return Err(if retryable_status(status) && status != 404 {
                    StoreError::Unavailable(message)
                } else {
                    StoreError::Refused(message)
                });
            }
            let page: Page<T> =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    id: format!("a hit of {path}"),
                    message: e.to_string(),
                })?;
            let n = page.hits.hits.len();
            let total = page.hits.total.map(|t| t.value);
            after = None;
            for hit in page.hits.hits {
                after = hit.sort;
                out.push(hit.source);
            }
            if n < size || after.is_none() || (first && total.is_some_and(|t| t <= n as u64)) {
                break;
            }
            first = false;
        }
        Ok(out)
    }

    fn items_of(&self, docs: &[Document]) -> (Vec<Item>, Vec<Option<String>>) {
        let mut items = Vec::with_capacity(docs.len() + docs.len() / 4);
        let mut failed = vec![None; docs.len()];
        // Held for this synchronous loop only; a poisoned lock just means writing service
        // documents again, which is harmless.
        let empty = HashSet::new();
        let guard = self.seen_services.lock();
        let seen = match &guard {
            Ok(g) => &**g,
            Err(_) => &empty,
        };
        let mut batch_services = HashSet::new();
        // Senders' clocks choose the daily index only within the window around now, so that
        // timestamps from 1970 or 2200 cannot create an index per day; documents keep them.
        let now = crate::store::now_unix_nano();
        let day_of = |time: u64| self.window.clamp(time, now);
        for (i, doc) in docs.iter().enumerate() {
            let mut lines = Vec::with_capacity(1024);
            let result = match doc {
                Document::Span(span) => {
                    let index = self.names.span(day_of(span.start_unix_nano));
                    push_action(
                        &mut lines,
                        &json!({"index": {"_index": index, "_id": span.doc_id()}}),
                    );
                    let r = push_source(&mut lines, &span_to_doc(span, self.cap));
                    let service_index = self.names.service(day_of(span.start_unix_nano));
                    let kind = span.kind.as_str();
                    let id = format!(
                        "{:016x}",
                        xxhash_rust::xxh3::xxh3_64(
                            format!("{}\u{1f}{}\u{1f}{kind}", span.service.name, span.name)
                                .as_bytes()
                        )
                    );
                    let key = format!("{service_index}/{id}");
                    if r.is_ok() && !seen.contains(&key) && batch_services.insert(key.clone()) {
                        let mut service_lines = Vec::with_capacity(160);
                        push_action(
                            &mut service_lines,
                            &json!({"index": {"_index": service_index, "_id": id}}),
                        );
                        let service_doc = ServiceDoc {
                            service_name: span.service.name.clone(),
                            operation_name: span.name.clone(),
                            span_kind: kind.to_string(),
                        };
                        if push_source(&mut service_lines, &service_doc).is_ok() {
                            items.push(Item {
                                doc: i,
                                lines: service_lines,
                                kind: ItemKind::Service(key),
                            });
                        }
                    }
                    r
                }
                Document::Log(log) => {
                    let index = self.names.logs(day_of(log.time_unix_nano));
                    push_action(
                        &mut lines,
                        &json!({"index": {"_index": index, "_id": log.doc_id()}}),
                    );
                    push_source(&mut lines, &log_to_doc(log, self.cap))
                }
                Document::Heartbeat(hb) => {
                    let index = self.names.heartbeats(day_of(hb.time_unix_nano));
                    push_action(
                        &mut lines,
                        &json!({"index": {"_index": index, "_id": hb.doc_id()}}),
                    );
                    let r = push_source(&mut lines, &heartbeat_to_doc(hb));
                    let entry = RegistryEntry::from_heartbeat(hb, now);
                    let mut reg = Vec::with_capacity(512);
                    push_action(
                        &mut reg,
                        &json!({"index": {
                            "_index": self.names.registry(),
                            "_id": format!("{}/{}", entry.service, entry.instance_id),
                            "version": entry.last_heartbeat_unix_nano.min(i64::MAX as u64),
                            "version_type": "external"
                        }}),
                    );
                    let registry = RegistryDoc {
                        timestamp: entry.last_heartbeat_unix_nano / 1_000_000,
                        entry,
                    };
                    if r.is_ok() && push_source(&mut reg, &registry).is_ok() {
                        items.push(Item {
                            doc: i,
                            lines: reg,
                            kind: ItemKind::Registry,
                        });
                    }
                    r
                }
            };
            match result {
                Ok(()) => items.push(Item {
                    doc: i,
                    lines,
                    kind: ItemKind::Plain,
                }),
                Err(e) => {
                    failed[i] = Some(format!(
                        "{} {} cannot be serialized: {e}",
                        doc.kind(),
                        doc.id()
                    ))
                }
            }
        }
        drop(guard);
        (items, failed)
    }

    /// Sends items as one `_bulk` request; a whole-request 400/413 is bisected so that one bad
    /// document cannot sink the rest.
    fn send_chunk<'a>(
        &'a self,
        items: &'a [Item],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<ItemResult>> + Send + 'a>> {
        Box::pin(async move {
            let mut body = Vec::with_capacity(items.iter().map(|i| i.lines.len()).sum());
            for item in items {
                body.extend_from_slice(&item.lines);
            }
            let all =
                |make: &dyn Fn() -> ItemResult| items.iter().map(|_| make()).collect::<Vec<_>>();
            let (status, bytes) = match self
                .call(
                    Method::Post,
                    "/_bulk",
                    &[(
                        "filter_path",
                        "errors,items.*.status,items.*.error.type,items.*.error.reason,\
                         items.*._seq_no,items.*._primary_term",
                    )],
                    Some(body),
                    true,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    let m = e.to_string();
                    return all(&|| ItemResult::Retry(m.clone()));
                }
            };
            if status == 400 || status == 413 {
                if items.len() > 1 {
                    let (a, b) = items.split_at(items.len() / 2);
                    let mut out = self.send_chunk(a).await;
                    out.extend(self.send_chunk(b).await);
                    return out;
                }
                let text: String = String::from_utf8_lossy(&bytes).chars().take(500).collect();
                return vec![ItemResult::Rejected(format!("HTTP {status}: {text}"))];
            }
            if !(200..300).contains(&status) {
                let text: String = String::from_utf8_lossy(&bytes).chars().take(500).collect();
                let m = format!("{} /_bulk: HTTP {status}: {text}", self.url);
                return all(&|| ItemResult::Retry(m.clone()));
            }
            let parsed: BulkResponse = match serde_json::from_slice(&bytes) {
                Ok(p) => p,
                Err(e) => {
                    let m = format!("{} /_bulk: unreadable answer: {e}", self.url);
                    return all(&|| ItemResult::Retry(m.clone()));
                }
            };
            if parsed.items.len() != items.len() {
                let m = format!(
                    "{} /_bulk answered {} items for {}",
                    self.url,
                    parsed.items.len(),
                    items.len()
                );
                return all(&|| ItemResult::Retry(m.clone()));
            }
            parsed
                .items
                .into_iter()
                .zip(items)
                .map(|(result, item)| {
                    let Some(r) = result.into_values().next() else {
                        return ItemResult::Retry("empty bulk item".into());
                    };
                    match r.status {
                        200..=299 => ItemResult::Ok(r._seq_no.zip(r._primary_term)),
                        409 if matches!(item.kind, ItemKind::Registry | ItemKind::Edge) => {
                            ItemResult::Ok(None)
                        }
                        409 if matches!(item.kind, ItemKind::Conditional) => ItemResult::Conflict,
                        s if retryable_status(s) => {
                            ItemResult::Retry(format!("HTTP {s} {}", error_text(&r.error)))
                        }
                        s => ItemResult::Rejected(format!("HTTP {s} {}", error_text(&r.error))),
                    }
                })
                .collect()
        })
    }

    /// Sends items as `_bulk` requests cut by count and bytes; one result per item.
    async fn bulk(&self, items: &[Item]) -> Vec<ItemResult> {
        let mut results = Vec::with_capacity(items.len());
        let mut start = 0;
        while start < items.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < items.len()
                && end - start < self.bulk_max_docs
                && (end == start || bytes + items[end].lines.len() <= self.bulk_max_bytes)
            {
                bytes += items[end].lines.len();
                end += 1;
            }
            results.extend(self.send_chunk(&items[start..end]).await);
            start = end;
        }
        results
    }

    /// The stored summaries of `traces`, looked up (realtime) in the summary indices of the
    /// days around their spans, with their versions, by trace id. When a
    /// trace has summaries in two of those indices (two writers racing across midnight), the
    /// earliest is the one merged into; `find_traces` reports a trace once.
    async fn read_summaries(
        &self,
        traces: &BTreeMap<String, Vec<&SpanRecord>>,
        window: TimeWindow,
    ) -> Result<HashMap<String, CachedSummary>, StoreError> {
        let now = crate::store::now_unix_nano();
        let mut wanted = Vec::new();
        for (trace, spans) in traces {
            let mut days = BTreeSet::new();
            for s in spans {
                let day = window.clamp(s.start_unix_nano, now) / DAY_NANOS;
                days.extend([day.saturating_sub(1), day, day + 1]);
            }
            for day in days {
                wanted.push(json!({"_index": self.names.summaries(day * DAY_NANOS), "_id": trace}));
            }
        }
        let mut found: HashMap<String, CachedSummary> = HashMap::new();
        for chunk in wanted.chunks(MGET_CHUNK) {
            let response = self
                .json(Method::Post, "/_mget", &[], Some(&json!({"docs": chunk})))
                .await?;
            for doc in buckets(&response, "/docs") {
                if doc.get("found").and_then(Value::as_bool) != Some(true) {
                    continue;
                }
                let (Some(index), Some(seq), Some(term), Some(source)) = (
                    doc.get("_index").and_then(Value::as_str),
                    doc.get("_seq_no").and_then(Value::as_u64),
                    doc.get("_primary_term").and_then(Value::as_u64),
                    doc.get("_source"),
                ) else {
                    continue;
                };
                let bytes = serde_json::to_vec(source).map_or(0, |v| v.len());
                let summary: SummaryDoc =
                    serde_json::from_value(source.clone()).map_err(|e| StoreError::Corrupt {
                        id: format!("{index}/{}", doc.get("_id").unwrap_or(&Value::Null)),
                        message: e.to_string(),
                    })?;
                let trace = summary.trace_id.clone();
                match found.get(&trace) {
                    Some(existing) if existing.index.as_str() <= index => {}
                    _ => {
                        found.insert(
                            trace,
                            CachedSummary {
                                index: index.to_string(),
                                seq_no: seq,
                                primary_term: term,
                                bytes,
                                doc: summary,
                            },
                        );
                    }
                }
            }
        }
        Ok(found)
    }

    /// Merges spans into their traces' summaries and writes the call edges that changed: per
    /// round, one `_bulk` request of summaries, then one of the edges of the summaries the
    /// store accepted. Returns the traces that could not be updated, with the reason
    /// (retryable).
    ///
    /// A trace's stored summary comes from the cache of summaries this store wrote, else from
    /// `prefetched` (read while the spans were written), else from a read now. Every summary
    /// write is conditional on the version it was merged into; a conflict drops the cached
    /// entry and the next round reads the stored summary and merges again.
    ///
    /// `window` chooses the daily indices, as in writes; the backfill of spans already in a
    /// daily index keeps them in that index's day. `cached` false reads every summary (the
    /// backfill, whose summaries may have been deleted behind the cache).
    async fn update_summaries(
        &self,
        spans: &[&SpanRecord],
        window: TimeWindow,
        prefetched: Option<Prefetched>,
        cached: bool,
    ) -> HashMap<String, String> {
        let mut pending: BTreeMap<String, Vec<&SpanRecord>> = BTreeMap::new();
        for s in spans {
            pending.entry(s.trace_id.clone()).or_default().push(s);
        }
        let (mut covered, mut prefetched) = match prefetched {
            Some((covered, Ok(found))) => (covered, found),
            _ => (HashSet::new(), HashMap::new()),
        };
        let mut failed = HashMap::new();
        let now = crate::store::now_unix_nano();
        for _ in 0..SUMMARY_ROUNDS {
            if pending.is_empty() {
                break;
            }
            // The stored summary each trace merges into: `None` when there is none yet.
            let mut bases: HashMap<String, Option<CachedSummary>> = HashMap::new();
            let mut unread: BTreeMap<String, Vec<&SpanRecord>> = BTreeMap::new();
            {
                let mut cache = self.summary_cache.lock().unwrap_or_else(|p| p.into_inner());
                for (trace, spans) in &pending {
                    let hit = cache.take(trace).filter(|_| cached);
                    match base_of(trace, hit, &mut covered, &mut prefetched) {
                        Some(base) => {
                            bases.insert(trace.clone(), base);
                        }
                        None => {
                            unread.insert(trace.clone(), spans.clone());
                        }
                    }
                }
            }
            if !unread.is_empty() {
                match self.read_summaries(&unread, window).await {
                    Ok(mut stored) => {
                        for trace in unread.into_keys() {
                            let base = stored.remove(&trace);
                            bases.insert(trace, base);
                        }
                    }
                    Err(e) => {
                        let m = e.to_string();
                        failed.extend(pending.into_keys().map(|t| (t, m.clone())));
                        return failed;
                    }
                }
            }
            let mut items = Vec::new();
            // The call edges of each merged summary, written once its summary is stored.
            let mut edge_items = Vec::new();
            // Per trace: its spans, the merged summary, where it goes, the version it is
            // conditional on, and whether it changed.
            let mut merged: Vec<Merged> = Vec::new();
            for (trace, spans) in std::mem::take(&mut pending) {
                let base = bases.remove(&trace).flatten();
                let (index, version, mut bytes, mut doc) = match base {
                    Some(c) => (c.index, Some((c.seq_no, c.primary_term)), c.bytes, c.doc),
                    None => {
                        let first = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
                        let index = self.names.summaries(window.clamp(first, now));
                        (index, None, 0, SummaryDoc::new(&trace))
                    }
                };
                let before = doc.edges();
                let mut changed = false;
                for s in &spans {
                    changed |= doc.merge(s);
                }
                let slot = merged.len();
                if changed {
                    let action = match version {
                        Some((seq, term)) => json!({"index": {"_index": index, "_id": trace,
                            "if_seq_no": seq, "if_primary_term": term}}),
                        None => json!({"create": {"_index": index, "_id": trace}}),
                    };
                    let mut lines = Vec::with_capacity(512);
                    push_action(&mut lines, &action);
                    let action_len = lines.len();
                    if let Err(e) = push_source(&mut lines, &doc) {
                        failed.insert(trace, e);
                        continue;
                    }
                    bytes = lines.len() - action_len;
                    items.push(Item {
                        doc: slot,
                        lines,
                        kind: ItemKind::Conditional,
                    });
                }
                // A changed summary writes the edges whose counts changed; a replay (the
                // summary already holds every span) writes them all again, in case an earlier
                // attempt stored the summary but not them. Versioned by their call counts, a
                // write from a summary that loses a race never replaces a newer edge.
                for (key, value) in doc.edges() {
                    if changed && before.get(&key) == Some(&value) {
                        continue;
                    }
                    if let Some(lines) = self.edge_lines(&trace, key, value, window, now) {
                        edge_items.push(Item {
                            doc: slot,
                            lines,
                            kind: ItemKind::Edge,
                        });
                    }
                }
                merged.push(Merged {
                    trace,
                    spans,
                    index,
                    version,
                    bytes,
                    doc,
                    changed,
                    summary: None,
                    edges_failed: None,
                });
            }
            for (item, result) in items.iter().zip(self.bulk(&items).await) {
                merged[item.doc].summary = Some(result);
            }
            // Edges only from summaries the store accepted (or that did not change: a replay
            // writes them again from the stored summary): an edge of a merged summary that was
            // refused or lost a race would count calls no stored summary holds, and stay so
            // until the trace changes again (its version, the call count, keeps an older
            // summary's edge from replacing it).
            edge_items.retain(|item| {
                let m = &merged[item.doc];
                !m.changed || matches!(m.summary, Some(ItemResult::Ok(_)))
            });
            for (item, result) in edge_items.iter().zip(self.bulk(&edge_items).await) {
                let m = &mut merged[item.doc];
                match (&item.kind, result) {
                    (ItemKind::Conditional, r) => m.summary = Some(r),
                    (_, ItemResult::Ok(_)) => {}
                    (_, ItemResult::Rejected(e)) => {
                        // A refused edge (a mapping conflict, a blocked index) would be refused
                        // again: retrying the batch would stall the partition for good. The
                        // summary stays right, and the next change of the trace writes its
                        // edges again.
                        self.rejected_edges.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(trace = %m.trace, error = %e, "call edge rejected");
                    }
                    (_, ItemResult::Retry(e)) => m.edges_failed = Some(format!("call edges: {e}")),
                    (_, ItemResult::Conflict) => {
                        m.edges_failed = Some("call edges: conflict".into())
                    }
                }
            }
            let mut cache = self.summary_cache.lock().unwrap_or_else(|p| p.into_inner());
            for m in merged {
                let stored = match (m.changed, m.summary) {
                    (false, _) => m.version,
                    (true, Some(ItemResult::Ok(version))) => version,
                    (true, Some(ItemResult::Conflict)) => {
                        // Another writer changed it first (or deleted it): read, merge and
                        // write again (this round's edges of it are rewritten from the merged
                        // summary). Its cache entry, taken for this write, stays out.
                        self.summary_conflicts.fetch_add(1, Ordering::Relaxed);
                        pending.insert(m.trace, m.spans);
                        continue;
                    }
                    (true, Some(ItemResult::Retry(e))) => {
                        failed.insert(m.trace, e);
                        continue;
                    }
                    (true, Some(ItemResult::Rejected(e))) => {
                        // The spans are stored; a summary the store refuses for good would
                        // be refused again, so it is logged rather than retried forever.
                        self.rejected_summaries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(trace = %m.trace, error = %e, "trace summary rejected");
                        continue;
                    }
                    (true, None) => continue,
                };
                if let Some(e) = m.edges_failed {
                    failed.insert(m.trace.clone(), e);
                }
                if let Some((seq_no, primary_term)) = stored {
                    cache.put(CachedSummary {
                        index: m.index,
                        seq_no,
                        primary_term,
                        bytes: m.bytes,
                        doc: m.doc,
                    });
                }
            }
        }
        for trace in pending.into_keys() {
            failed.insert(
                trace,
                "summary kept changing under concurrent writers".into(),
            );
        }
        failed
    }

    /// The bulk lines of one call edge of a trace (see [`EDGE_VERSION_BASE`]).
    fn edge_lines(
        &self,
        trace: &str,
        (caller, callee, day): (String, String, u64),
        (calls, errors, start): (u64, u64, u64),
        window: TimeWindow,
        now: u64,
    ) -> Option<Vec<u8>> {
        let id = format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(
                format!("{trace}\u{1f}{caller}\u{1f}{callee}\u{1f}{day}").as_bytes()
            )
        );
        let index = self.names.dependencies(window.clamp(day * DAY_NANOS, now));
        let mut lines = Vec::with_capacity(256);
        push_action(
            &mut lines,
            &json!({"index": {"_index": index, "_id": id,
                "version": EDGE_VERSION_BASE + calls, "version_type": "external_gte"}}),
        );
        let dep = DependencyDoc {
            trace_id: trace.to_string(),
            caller,
            callee,
            calls,
            errors,
            start_ns: start,
        };
        push_source(&mut lines, &dep).ok()?;
        Some(lines)
    }

    /// Days whose span index has no trace-summary index: spans stored by an earlier version
    /// of dlog (or by Jaeger itself), which `find_traces` and `dependencies` do not see until
    /// [`Self::backfill_summaries`] has run.
    pub async fn days_without_summaries(&self) -> Result<Vec<String>, StoreError> {
        let indices = self.indices().await?;
        let names: HashSet<&str> = indices.iter().map(|(n, _)| n.as_str()).collect();
        let mut days: Vec<String> = indices
            .iter()
            .filter_map(|(name, _)| {
                let day = self.day_of_index(name)?;
                let start = u64::try_from(day).ok()? * DAY_NANOS;
                (*name == self.names.span(start)
                    && !names.contains(self.names.summaries(start).as_str()))
                .then(|| model::date_of_days(day))
            })
            .collect();
        days.sort();
        Ok(days)
    }

    /// Writes the trace summaries and call edges of every day listed by
    /// [`Self::days_without_summaries`], reading its spans page by page in trace order.
    /// Idempotent: stopped half-way, it is run again. Returns the spans read.
    pub async fn backfill_summaries(&self) -> Result<u64, StoreError> {
        const BACKFILL_PAGE: usize = 5_000;
        // Spans already sit in their day's index: summaries go to the same day.
        let unclamped = TimeWindow {
            max_age_nanos: u64::MAX,
            max_ahead_nanos: u64::MAX,
        };
        let mut total = 0u64;
        for day in self.days_without_summaries().await? {
            let Some(days) = model::days_of_date(&day) else {
                continue;
            };
            let index = self.names.span(days as u64 * DAY_NANOS);
            let mut after: Option<Value> = None;
            loop {
                let page: Vec<JaegerSpan> = self
                    .scan_from(
                        &index,
                        json!({"match_all": {}}),
                        json!([{"traceID": "asc"}, {"spanID": "asc"}]),
                        None,
                        BACKFILL_PAGE,
                        after.take(),
                    )
                    .await?;
                let Some(last) = page.last() else {
                    break;
                };
                after = Some(json!([last.trace_id, last.span_id]));
                let n = page.len();
                let spans: Vec<SpanRecord> = page.into_iter().map(span_from_doc).collect();
                let refs: Vec<&SpanRecord> = spans.iter().collect();
                let failed = self.update_summaries(&refs, unclamped, None, false).await;
                if let Some((trace, message)) = failed.into_iter().next() {
                    return Err(StoreError::Unavailable(format!(
                        "backfilling {index}: summary of trace {trace}: {message}"
                    )));
                }
                total += n as u64;
                tracing::info!(index = %index, spans = total, "backfilled trace summaries");
                if n < BACKFILL_PAGE {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Trace ids with a span matching the query's service, operation and every attribute
    /// (on the span, its resource or one of its events), newest matching span first.
    async fn traces_with_attributes(&self, query: &TraceQuery) -> Result<Vec<String>, StoreError> {
        let kv = |path: &str, k: &str, v: &str| {
            json!({"nested": {"path": path, "query": {"bool": {"filter": [
                {"term": {format!("{path}.key"): k}}, {"term": {format!("{path}.value"): v}}
            ]}}}})
        };
        let mut filter = Vec::new();
        if let Some(s) = &query.service {
            filter.push(json!({"term": {"process.serviceName": s}}));
        }
        if let Some(o) = &query.operation {
            filter.push(json!({"term": {"operationName": o}}));
        }
        // A matching span starts no earlier than its trace.
        if let Some(start) = query.time.start_unix_nano {
            filter.push(json!({"range": {"startTime": {"gte": start / 1000}}}));
        }
        for (k, v) in &query.attributes {
            filter.push(json!({"bool": {"should": [
                kv("tags", k, v),
                kv("process.tags", k, v),
                {"nested": {"path": "logs", "query": kv("logs.fields", k, v)}}
            ], "minimum_should_match": 1}}));
        }
        let body = json!({
            "size": 0,
            "query": {"bool": {"filter": filter}},
            "aggs": {"traces": {
                "terms": {"field": "traceID", "size": MAX_ATTRIBUTE_CANDIDATES,
                    "order": [{"latest": "desc"}, {"_key": "asc"}]},
                "aggs": {"latest": {"max": {"field": "startTime"}}}
            }}
        });
        let response = self.search(&self.names.span_pattern(), &body).await?;
        Ok(buckets(&response, "/aggregations/traces/buckets")
            .iter()
            .filter_map(|b| b.get("key").and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    /// Every index this store owns with its size in bytes, from `_cat/indices`.
    async fn indices(&self) -> Result<Vec<(String, u64)>, StoreError> {
        #[derive(Deserialize)]
        struct Row {
            index: String,
            #[serde(rename = "store.size", default)]
            size: Option<String>,
        }
        // Wildcards only: a missing concrete name would fail the listing.
        let mut patterns = self.names.daily_patterns();
        patterns.push(format!("{}*", self.names.registry()));
        patterns.push(format!("{}*", self.names.alerts()));
        let path = format!("/_cat/indices/{}", patterns.join(","));
        let (status, bytes) = self
            .call(
                Method::Get,
                &path,
                &[("format", "json"), ("bytes", "b")],
                None,
                false,
            )
            .await?;
        if !(200..300).contains(&status) {
            let text: String = String::from_utf8_lossy(&bytes).chars().take(1000).collect();
            let message = format!("{} {path}: HTTP {status}: {text}", self.url);
            return Err(if retryable_status(status) && status != 404 {
                StoreError::Unavailable(message)
            } else {
                StoreError::Refused(message)
            });
        }
        let rows: Vec<Row> = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Unavailable(format!("{} {path}: unreadable answer: {e}", self.url))
        })?;
        let owned = |name: &str| {
            name == self.names.registry()
                || name == self.names.alerts()
                || self.day_of_index(name).is_some()
        };
        Ok(rows
            .into_iter()
            .filter(|r| owned(&r.index))
            .map(|r| {
                let size = r.size.and_then(|s| s.parse().ok()).unwrap_or(0);
                (r.index, size)
            })
            .collect())
    }

    /// The day (since the Unix epoch) of one of this store's daily indices.
    fn day_of_index(&self, name: &str) -> Option<i64> {
        let head = self.names.span_pattern();
        let head = head.trim_end_matches("jaeger-span-*");
        let rest = name.strip_prefix(head)?;
        let (family, date) = rest.split_at(rest.len().checked_sub(10)?);
        let known = [
            "jaeger-span-",
            "jaeger-service-",
            "service-logs-",
            "service-heartbeats-",
            "dlog-trace-summaries-",
            "dlog-dependencies-",
        ];
        known
            .contains(&family)
            .then(|| model::days_of_date(date))
            .flatten()
    }

    fn usage_of(&self, indices: &[(String, u64)]) -> StoreUsage {
        let mut days: BTreeMap<i64, u64> = BTreeMap::new();
        let mut bytes_used = 0;
        for (name, size) in indices {
            bytes_used += size;
            if let Some(day) = self.day_of_index(name) {
                *days.entry(day).or_default() += size;
            }
        }
        let partitions: Vec<PartitionUsage> = days
            .into_iter()
            .filter(|(day, _)| *day >= 0)
            .map(|(day, bytes)| PartitionUsage {
                name: model::date_of_days(day),
                day_start_unix_nano: day as u64 * DAY_NANOS,
                bytes,
            })
            .collect();
        StoreUsage {
            bytes_used,
            oldest_unix_nano: partitions.first().map(|p| p.day_start_unix_nano),
            partitions,
            ..Default::default()
        }
    }

    /// Deletes the named indices (explicit names: clusters refuse wildcard deletes by default).
    async fn delete_named(&self, names: &[String]) -> Result<(), StoreError> {
        self.forget_summaries();
        // Keep the URL short on clusters with many indices per day.
        let mut result = Ok(());
        for chunk in names.chunks(20) {
            if let Err(e) = self
                .json(
                    Method::Delete,
                    &format!("/{}", chunk.join(",")),
                    &[("ignore_unavailable", "true")],
                    None,
                )
                .await
            {
                result = Err(e);
                break;
            }
        }
        // Again after the delete: a write that ran meanwhile may have cached a deleted summary.
        self.forget_summaries();
        result
    }

    /// Deletes alerts last seen, and registry entries last heard from, before `cutoff`.
    async fn delete_older(&self, cutoff_unix_nano: u64) -> Result<(), StoreError> {
        for (index, field) in [
            (self.names.alerts(), "last_seen_unix_nano"),
            (self.names.registry(), "last_heartbeat_unix_nano"),
        ] {
            self.json(
                Method::Post,
                &format!("/{index}/_delete_by_query"),
                &[
                    ("ignore_unavailable", "true"),
                    ("allow_no_indices", "true"),
                    ("conflicts", "proceed"),
                    ("refresh", "true"),
                ],
                Some(&json!({"query": {"range": {field: {"lt": cutoff_unix_nano}}}})),
            )
            .await?;
        }
        Ok(())
    }

    async fn registry(&self, service: Option<&str>) -> Result<Vec<RegistryEntry>, StoreError> {
        let mut filter = Vec::new();
        if let Some(s) = service {
            filter.push(json!({"term": {"service": s}}));
        }
        let hits = self
            .scan(
                &self.names.registry(),
                json!({"bool": {"filter": filter}}),
                json!([{"service": "asc"}, {"instance_id": "asc"}]),
                None,
                usize::MAX,
            )
            .await?;
        Ok(hits.into_iter().map(|d: RegistryDoc| d.entry).collect())
    }
}

impl Backend for ElasticStore {
    fn backend(&self) -> &'static str {
        "elasticsearch"
    }
}

#[async_trait]
impl SpanWriter for ElasticStore {
    async fn write(&self, docs: &[Document]) -> Result<Vec<WriteOutcome>, StoreError> {
        let (items, failed) = self.items_of(docs);
        // The summaries of traces that are not cached are read while the spans are written:
        // the read is only a starting point (the summary write is conditional on it), so it
        // need not wait for the spans. Summaries are written once the spans are stored.
        let mut unread: BTreeMap<String, Vec<&SpanRecord>> = BTreeMap::new();
        {
            let cache = self.summary_cache.lock().unwrap_or_else(|p| p.into_inner());
            for (doc, failed) in docs.iter().zip(&failed) {
                if let (Document::Span(s), None) = (doc, failed) {
                    if !cache.contains(&s.trace_id) {
                        unread.entry(s.trace_id.clone()).or_default().push(s);
                    }
                }
            }
        }
        let read = async {
            if unread.is_empty() {
                return None;
            }
            let found = self.read_summaries(&unread, self.window).await;
            Some((unread.keys().cloned().collect::<HashSet<_>>(), found))
        };
        let (results, prefetched) = tokio::join!(self.bulk(&items), read);
        let results: Vec<Option<ItemResult>> = results.into_iter().map(Some).collect();
        // Combine item results per document: any retry → retry (the whole document is
        // written again, idempotently); otherwise any rejection → rejected.
        let mut outcomes: Vec<WriteOutcome> = failed
            .into_iter()
            .map(|f| f.map_or(WriteOutcome::Written, WriteOutcome::Rejected))
            .collect();
        let mut newly_seen = Vec::new();
        for (item, result) in items.iter().zip(results) {
            let slot = &mut outcomes[item.doc];
            match result {
                Some(ItemResult::Ok(_)) | None => {
                    if let ItemKind::Service(key) = &item.kind {
                        newly_seen.push(key.clone());
                    }
                }
                Some(ItemResult::Retry(m)) => *slot = WriteOutcome::Retry(m),
                Some(ItemResult::Conflict) => {
                    *slot = WriteOutcome::Retry("conflicting concurrent write".into())
                }
                Some(ItemResult::Rejected(m)) => {
                    if !matches!(slot, WriteOutcome::Retry(_)) {
                        *slot = WriteOutcome::Rejected(m);
                    }
                }
            }
        }
        if let Ok(mut seen) = self.seen_services.lock() {
            if seen.len() > SEEN_SERVICES_CAP {
                seen.clear();
            }
            seen.extend(newly_seen);
        }
        // Summaries and call edges follow the spans that are stored; a span whose summary
        // could not be written is written again with it (both writes are idempotent).
        let written: Vec<&SpanRecord> = docs
            .iter()
            .zip(&outcomes)
            .filter_map(|(d, o)| match (d, o) {
                (Document::Span(s), WriteOutcome::Written) => Some(s),
                _ => None,
            })
            .collect();
        if !written.is_empty() {
            let failed = self
                .update_summaries(&written, self.window, prefetched, true)
                .await;
            if !failed.is_empty() {
                for (doc, outcome) in docs.iter().zip(outcomes.iter_mut()) {
                    if let Document::Span(s) = doc {
                        if let Some(m) = failed.get(&s.trace_id) {
                            *outcome = WriteOutcome::Retry(format!("trace summary: {m}"));
                        }
                    }
                }
            }
        }
        Ok(outcomes)
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        self.json(
            Method::Post,
            &format!("/{}/_refresh", self.names.all()),
            &[("ignore_unavailable", "true"), ("allow_no_indices", "true")],
            None,
        )
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl TraceReader for ElasticStore {
    async fn get_trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError> {
        let id = trace_id.to_ascii_lowercase();
        let hits = self
            .scan(
                &self.names.span_pattern(),
                json!({"bool": {"filter": [{"term": {"traceID": id}}]}}),
                json!([{"startTime": "asc"}, {"spanID": "asc"}]),
                None,
                usize::MAX,
            )
            .await?;
        let mut spans = hits
            .into_iter()
            .map(|d: JaegerSpan| Ok(span_from_doc(d)))
            .collect::<Result<Vec<_>, _>>()?;
        sort_spans(&mut spans);
        Ok(spans)
    }

    async fn get_trace_page(
        &self,
        trace_id: &str,
        after: Option<&SpanCursor>,
        limit: usize,
    ) -> Result<Vec<SpanRecord>, StoreError> {
        let id = trace_id.to_ascii_lowercase();
        // Documents sort by µs start then span id; the cursor's ns start is cut to µs, so
        // pages follow each other exactly (spans in the same µs are ordered by span id).
        let after = after.map(|c| json!([c.start_unix_nano / 1000, c.span_id]));
        let hits = self
            .scan_from(
                &self.names.span_pattern(),
                json!({"bool": {"filter": [{"term": {"traceID": id}}]}}),
                json!([{"startTime": "asc"}, {"spanID": "asc"}]),
                None,
                limit,
                after,
            )
            .await?;
        Ok(hits
            .into_iter()
            .map(|d: JaegerSpan| span_from_doc(d))
            .collect())
    }

    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>, StoreError> {
        let mut filter = Vec::new();
        match (&query.service, &query.operation) {
            (Some(s), Some(o)) => filter.push(json!({"term": {"service_operations":
                format!("{s}{}{o}", summary::PAIR_SEPARATOR)}})),
            (Some(s), None) => filter.push(json!({"term": {"services": s}})),
            (None, Some(o)) => filter.push(json!({"term": {"operations": o}})),
            (None, None) => {}
        }
        let mut duration = serde_json::Map::new();
        if let Some(d) = query.min_duration {
            duration.insert(
                "gte".into(),
                json!(d.as_nanos().min(u64::MAX as u128) as u64),
            );
        }
        if let Some(d) = query.max_duration {
            duration.insert(
                "lte".into(),
                json!(d.as_nanos().min(u64::MAX as u128) as u64),
            );
        }
        if !duration.is_empty() {
            filter.push(json!({"range": {"duration_ns": duration}}));
        }
        if let Some(r) = range_clause("start_ns", query.time, 1) {
            filter.push(r);
        }
        if !query.attributes.is_empty() {
            let ids = self.traces_with_attributes(query).await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            filter.push(json!({"terms": {"trace_id": ids}}));
        }
        let limit = effective_limit(query.limit);
        // The per-span contributions stay on the server.
        let fields = json!([
            "trace_id",
            "start_ns",
            "end_ns",
            "duration_ns",
            "root_service",
            "root_operation",
            "span_count",
            "error_count",
            "services",
            "operations",
            "service_operations",
            "overflow_spans",
            "overflow_errors"
        ]);
        let hits: Vec<SummaryDoc> = self
            .scan(
                &self.names.summaries_pattern(),
                json!({"bool": {"filter": filter}}),
                json!([{"start_ns": "desc"}, {"trace_id": "asc"}]),
                Some(fields),
                limit,
            )
            .await?;
        let mut seen = HashSet::new();
        Ok(hits
            .iter()
            .filter(|h| seen.insert(h.trace_id.clone()))
            .map(SummaryDoc::to_summary)
            .collect())
    }

    async fn services(&self) -> Result<Vec<String>, StoreError> {
        let body = json!({"size": 0, "aggs": {"services": {"terms": {"field": "serviceName", "size": 10000}}}});
        let response = self.search(&self.names.service_pattern(), &body).await?;
        let mut out: Vec<String> = buckets(&response, "/aggregations/services/buckets")
            .iter()
            .filter_map(|b| b.get("key").and_then(Value::as_str).map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    async fn operations(&self, service: &str) -> Result<Vec<Operation>, StoreError> {
        let body = json!({
            "size": 0,
            "query": {"bool": {"filter": [{"term": {"serviceName": service}}]}},
            "aggs": {"ops": {
                "terms": {"field": "operationName", "size": 10000},
                "aggs": {"kinds": {"terms": {"field": "spanKind", "size": 10}}}
            }}
        });
        let response = self.search(&self.names.service_pattern(), &body).await?;
        let mut out = Vec::new();
        for op in buckets(&response, "/aggregations/ops/buckets") {
            let Some(name) = op.get("key").and_then(Value::as_str) else {
                continue;
            };
            for kind in buckets(op, "/kinds/buckets") {
                if let Some(k) = kind.get("key").and_then(Value::as_str) {
                    out.push(Operation {
                        name: name.to_string(),
                        span_kind: k.to_string(),
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[async_trait]
impl DependencyReader for ElasticStore {
    async fn dependencies(&self, time: TimeRange) -> Result<Dependencies, StoreError> {
        let filter: Vec<Value> = range_clause("start_ns", time, 1).into_iter().collect();
        let body = json!({
            "size": 0,
            "query": {"bool": {"filter": filter}},
            "aggs": {"callers": {
                "terms": {"field": "caller", "size": 10_000},
                "aggs": {"callees": {
                    "terms": {"field": "callee", "size": 10_000},
                    "aggs": {"calls": {"sum": {"field": "calls"}}, "errors": {"sum": {"field": "errors"}}}
                }}
            }}
        });
        let response = self
            .search(&self.names.dependencies_pattern(), &body)
            .await?;
        let mut observed = Vec::new();
        for caller in buckets(&response, "/aggregations/callers/buckets") {
            let Some(caller_name) = caller.get("key").and_then(Value::as_str) else {
                continue;
            };
            for callee in buckets(caller, "/callees/buckets") {
                let Some(callee_name) = callee.get("key").and_then(Value::as_str) else {
                    continue;
                };
                let sum = |name: &str| {
                    callee
                        .pointer(&format!("/{name}/value"))
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0) as u64
                };
                observed.push(DependencyEdge {
                    caller: caller_name.to_string(),
                    callee: callee_name.to_string(),
                    calls: sum("calls"),
                    errors: sum("errors"),
                });
            }
        }
        observed.sort();
        let mut declared = Vec::new();
        for entry in self.registry(None).await? {
            for dep in entry.dependencies {
                declared.push(DeclaredDependency {
                    service: entry.service.clone(),
                    depends_on: dep,
                });
            }
        }
        declared.sort();
        declared.dedup();
        Ok(Dependencies { observed, declared })
    }
}

#[async_trait]
impl LogReader for ElasticStore {
    async fn search_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        let mut filter = Vec::new();
        if let Some(t) = query.text.as_deref().filter(|t| !t.is_empty()) {
            filter.push(json!({"match": {"message": {"query": t, "operator": "and"}}}));
        }
        if let Some(s) = &query.service {
            filter.push(json!({"term": {"service.name": s}}));
        }
        if let Some(l) = &query.level {
            filter.push(json!({"term": {"level": l.to_ascii_uppercase()}}));
        }
        if let Some(t) = &query.trace_id {
            filter.push(json!({"term": {"trace.id": t.to_ascii_lowercase()}}));
        }
        if let Some(s) = &query.span_id {
            filter.push(json!({"term": {"span.id": s.to_ascii_lowercase()}}));
        }
        // Reading forward from a position, nothing before its time: the range lets every
        // older daily index skip the search.
        let mut time = query.time;
        if let (LogOrder::OldestFirst, Some(after)) = (query.order, &query.after) {
            time.start_unix_nano = time.start_unix_nano.max(Some(after.time_unix_nano));
        }
        if let Some(r) = range_clause("time_unix_nano", time, 1) {
            filter.push(r);
        }
        let limit = effective_limit(query.limit);
        let (sort, start_after) = match query.order {
            LogOrder::NewestFirst => (json!([{"time_unix_nano": "desc"}, {"doc_id": "asc"}]), None),
            // `doc_id` is the tiebreak every backend shares, so a cursor taken from a record
            // continues exactly after it.
            LogOrder::OldestFirst => (
                json!([{"time_unix_nano": "asc"}, {"doc_id": "asc"}]),
                query
                    .after
                    .as_ref()
                    .map(|c| json!([c.time_unix_nano, c.doc_id])),
            ),
        };
        let hits = self
            .scan_from(
                &self.names.logs_pattern(),
                json!({"bool": {"filter": filter}}),
                sort,
                None,
                limit,
                start_after,
            )
            .await?;
        hits.into_iter()
            .map(|d: LogDoc| Ok(log_from_doc(d)))
            .collect()
    }
}

#[async_trait]
impl StatusReader for ElasticStore {
    async fn service_status(&self, query: &StatusQuery) -> Result<Vec<InstanceStatus>, StoreError> {
        let now = query
            .now_unix_nano
            .unwrap_or_else(crate::store::now_unix_nano);
        Ok(self
            .registry(query.service.as_deref())
            .await?
            .into_iter()
            .map(|e| InstanceStatus::derive(e, now, query.silent_after))
            .collect())
    }
}

#[async_trait]
impl AlertStore for ElasticStore {
    async fn upsert_alerts(&self, alerts: &[AlertDoc]) -> Result<(), StoreError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let mut body = Vec::new();
        for alert in alerts {
            push_action(
                &mut body,
                &json!({"index": {"_index": self.names.alerts(), "_id": alert.id}}),
            );
            push_source(&mut body, alert).map_err(|e| StoreError::Corrupt {
                id: alert.id.clone(),
                message: e,
            })?;
        }
        // Alerts are few and read right after they are written: wait for visibility.
        let (status, bytes) = self
            .call(
                Method::Post,
                "/_bulk",
                &[
                    ("refresh", "wait_for"),
                    (
                        "filter_path",
                        "errors,items.*.status,items.*.error.type,items.*.error.reason",
                    ),
                ],
                Some(body),
                true,
            )
            .await?;
        let text = || {
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(1000)
                .collect::<String>()
        };
        if !(200..300).contains(&status) {
            let m = format!("{} /_bulk (alerts): HTTP {status}: {}", self.url, text());
            return Err(if retryable_status(status) {
                StoreError::Unavailable(m)
            } else {
                StoreError::Refused(m)
            });
        }
        let parsed: BulkResponse = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Unavailable(format!("{} /_bulk (alerts): {e}", self.url)))?;
        for (item, alert) in parsed.items.into_iter().zip(alerts) {
            if let Some(r) = item.into_values().next() {
                if !(200..300).contains(&r.status) {
                    let m = format!(
                        "alert {}: HTTP {} {}",
                        alert.id,
                        r.status,
                        error_text(&r.error)
                    );
                    return Err(if retryable_status(r.status) {
                        StoreError::Unavailable(m)
                    } else {
                        StoreError::Refused(m)
                    });
                }
            }
        }
        Ok(())
    }

    async fn list_alerts(&self, query: &AlertQuery) -> Result<Vec<AlertDoc>, StoreError> {
        let mut filter = Vec::new();
        if let Some(s) = &query.service {
            filter.push(json!({"term": {"service": s}}));
        }
        if let Some(s) = &query.state {
            filter.push(json!({"term": {"state": s}}));
        }
        let hits = self
            .scan(
                &self.names.alerts(),
                json!({"bool": {"filter": filter}}),
                json!([{"last_seen_unix_nano": "desc"}, {"id": "asc"}]),
                None,
                effective_limit(query.limit),
            )
            .await?;
        Ok(hits)
    }

    async fn put_silence(&self, silence: &crate::silence::Silence) -> Result<(), StoreError> {
        self.es_put_silence(silence).await
    }

    async fn delete_silence(&self, id: &str) -> Result<bool, StoreError> {
        self.es_delete_silence(id).await
    }

    async fn list_silences(&self) -> Result<Vec<crate::silence::Silence>, StoreError> {
        self.es_list_silences().await
    }

    async fn ack_alert(&self, ack: &crate::silence::AlertAck) -> Result<(), StoreError> {
        self.es_put_ack(ack).await
    }

    async fn list_acks(&self) -> Result<Vec<crate::silence::AlertAck>, StoreError> {
        self.es_list_acks().await
    }
}

#[async_trait]
impl Retention for ElasticStore {
    async fn usage(&self) -> Result<StoreUsage, StoreError> {
        Ok(self.usage_of(&self.indices().await?))
    }

    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_unix_nano: u64,
    ) -> Result<RetentionReport, StoreError> {
        let mut indices = self.indices().await?;
        let today = (now_unix_nano / DAY_NANOS) as i64;
        let mut dropped_days = BTreeSet::new();
        if let Some(age) = policy.max_age {
            let cutoff = now_unix_nano.saturating_sub(age.as_nanos().min(u64::MAX as u128) as u64);
            // A day goes once all of it is older than the cutoff.
            for (name, _) in &indices {
                if let Some(day) = self.day_of_index(name) {
                    if (day + 1).saturating_mul(DAY_NANOS as i64) <= cutoff as i64 {
                        dropped_days.insert(day);
                    }
                }
            }
            self.delete_older(cutoff).await?;
        }
        // Silences and acks are not in daily indices: those that ended (or were made) longer
        // ago than both 7 days (as in the embedded store) and the retention age go, so that
        // a short retention does not lose the ack of an alert still firing.
        let kept = policy
            .max_age
            .map_or(0, |age| age.as_nanos().min(u64::MAX as u128) as u64)
            .max(crate::silence::EXPIRED_KEPT_NANOS);
        self.es_prune_silences(now_unix_nano.saturating_sub(kept))
            .await?;
        if let Some(budget) = policy.max_bytes {
            let usage = self.usage_of(&indices);
            let mut used = usage.bytes_used;
            for p in &usage.partitions {
                let day = (p.day_start_unix_nano / DAY_NANOS) as i64;
                if dropped_days.contains(&day) {
                    used = used.saturating_sub(p.bytes);
                }
            }
            for p in &usage.partitions {
                let day = (p.day_start_unix_nano / DAY_NANOS) as i64;
                if used <= budget || day >= today {
                    break;
                }
                if dropped_days.insert(day) {
                    used = used.saturating_sub(p.bytes);
                }
            }
        }
        let doomed: Vec<String> = indices
            .iter()
            .filter(|(name, _)| {
                self.day_of_index(name)
                    .is_some_and(|d| dropped_days.contains(&d))
            })
            .map(|(name, _)| name.clone())
            .collect();
        if !doomed.is_empty() {
            self.delete_named(&doomed).await?;
            indices.retain(|(name, _)| !doomed.contains(name));
        }
        Ok(RetentionReport {
            dropped: dropped_days.into_iter().map(model::date_of_days).collect(),
            usage: self.usage_of(&indices),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_no_header_can_carry_is_reported_under_api_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
        std::fs::write(&cert, "certificate").unwrap();
        std::fs::write(&key, "key").unwrap();
        let mut config = StoreConfig::elasticsearch("https://search.example:9200");
        config.elasticsearch_client_cert = Some(cert);
        config.elasticsearch_client_key = Some(key);
        config.api_key = Some("id:key\nX-Injected: 1".into());
        let url = Url::parse("https://search.example:9200").unwrap();
        let builder = TransportBuilder::new(SingleNodeConnectionPool::new(url));
        let err = match tls_settings(builder, &config) {
            Ok(_) => panic!("an API key with a line break became a header"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("`api_key`"), "{err}");
    }

    fn entry(trace: &str, seq_no: u64) -> CachedSummary {
        CachedSummary {
            index: "s".into(),
            seq_no,
            primary_term: 1,
            bytes: 10,
            doc: SummaryDoc::new(trace),
        }
    }

    #[test]
    fn a_prefetched_summary_serves_one_round_only() {
        let mut covered: HashSet<String> = ["t".to_string(), "u".to_string()].into();
        let mut prefetched: HashMap<String, CachedSummary> =
            [("t".to_string(), entry("t", 1))].into();
        // Round 1: the cache has `t`, so the prefetched read is not used, and is dropped.
        let base = base_of("t", Some(entry("t", 7)), &mut covered, &mut prefetched);
        assert_eq!(base.unwrap().unwrap().seq_no, 7);
        // Round 2 (the cached version lost a race): the stale prefetched read is not reused.
        assert!(base_of("t", None, &mut covered, &mut prefetched).is_none());
        // `u` was read and not found: a new trace in round 1, read again in round 2.
        assert!(matches!(
            base_of("u", None, &mut covered, &mut prefetched),
            Some(None)
        ));
        assert!(base_of("u", None, &mut covered, &mut prefetched).is_none());
        assert!(covered.is_empty() && prefetched.is_empty());
    }
}
