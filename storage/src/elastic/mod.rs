//! The Elasticsearch backend, through the official `elasticsearch` client.
//!
//! * Spans go to daily `jaeger-span-YYYY-MM-DD` indices in Jaeger's span model, with one
//!   `jaeger-service-YYYY-MM-DD` document per service and operation, so Jaeger's own query
//!   service can read the cluster.
//! * Logs go to daily `service-logs-YYYY-MM-DD` indices in a flat schema.
//! * Heartbeats go to daily `service-heartbeats-YYYY-MM-DD` indices, and each upserts its
//!   instance's `service-registry` document. The registry write uses external versioning
//!   with the event time as the version, so a replayed older heartbeat never rolls it back.
//! * Writes are `_bulk` requests cut by bytes and by count. Each item's result is read:
//!   429/5xx items are retried by the stage, other failures are permanent rejections.

pub mod model;
mod silences;
pub mod templates;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
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
use self::templates::IndexNames;
use crate::config::StoreConfig;
use crate::store::{
    effective_limit, sort_spans, AlertDoc, AlertQuery, DeclaredDependency, Dependencies,
    DependencyEdge, Document, InstanceStatus, LogQuery, Operation, RegistryEntry, StatusQuery,
    Store, StoreError, TimeRange, TimeWindow, TraceQuery, TraceSummary, WriteOutcome,
};

/// Page size of scans (`search_after`), below the default `index.max_result_window`.
const PAGE: usize = 10_000;
/// Most spans the dependency scan reads for one query.
pub const MAX_DEPENDENCY_SCAN: usize = 2_000_000;
/// Most distinct service documents remembered as written, before the memory is reset.
const SEEN_SERVICES_CAP: usize = 100_000;

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
    /// A `jaeger-service` document, remembered once written.
    Service(String),
}

enum ItemResult {
    Ok,
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

fn micros_ceil(d: Duration) -> u64 {
    (d.as_nanos() as u64).div_ceil(1000)
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

impl ElasticStore {
    /// Connects to `config.elasticsearch_url` and installs the index templates (unless
    /// `install_templates` is off).
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let url_text = config
            .elasticsearch_url
            .clone()
            .ok_or_else(|| StoreError::Config("`elasticsearch_url` is not set".into()))?;
        let url = Url::parse(&url_text)
            .map_err(|e| StoreError::Config(format!("`elasticsearch_url` `{url_text}`: {e}")))?;
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .disable_proxy();
        if let Some(key) = &config.api_key {
            builder = builder.auth(Credentials::EncodedApiKey(key.clone()));
        } else if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.auth(Credentials::Basic(user.clone(), password.clone()));
        }
        let transport = builder
            .build()
            .map_err(|e| StoreError::Config(format!("`elasticsearch_url` `{url_text}`: {e}")))?;
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
        };
        if config.install_templates {
            store
                .install_templates(config.shards, config.replicas)
                .await?;
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
        let path = format!("/{}", self.names.all());
        self.json(
            Method::Delete,
            &path,
            &[("ignore_unavailable", "true"), ("allow_no_indices", "true")],
            None,
        )
        .await
        .map(|_| ())
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
            .map_err(|e| StoreError::Unavailable(format!("{} {path}: {e}", self.url)))?;
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
        let mut after: Option<Value> = None;
        loop {
            let size = self.page.min(max.saturating_sub(out.len()));
            if size == 0 {
                break;
            }
            // The first page asks for the exact total (up to the page size), so that a result
            // that fits one page takes one request, not a second, empty one.
            let first = after.is_none();
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
                        "errors,items.*.status,items.*.error.type,items.*.error.reason",
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
                        200..=299 => ItemResult::Ok,
                        409 if matches!(item.kind, ItemKind::Registry) => ItemResult::Ok,
                        s if retryable_status(s) => {
                            ItemResult::Retry(format!("HTTP {s} {}", error_text(&r.error)))
                        }
                        s => ItemResult::Rejected(format!("HTTP {s} {}", error_text(&r.error))),
                    }
                })
                .collect()
        })
    }

    async fn spans_of_traces(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<SpanRecord>>, StoreError> {
        let hits = self
            .scan(
                &self.names.span_pattern(),
                json!({"bool": {"filter": [{"terms": {"traceID": ids}}]}}),
                json!([{"traceID": "asc"}, {"startTime": "asc"}, {"spanID": "asc"}]),
                None,
                usize::MAX,
            )
            .await?;
        let mut out: HashMap<String, Vec<SpanRecord>> = HashMap::new();
        for doc in hits {
            let span = span_from_doc(doc);
            out.entry(span.trace_id.clone()).or_default().push(span);
        }
        for spans in out.values_mut() {
            sort_spans(spans);
        }
        Ok(out)
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

#[async_trait]
impl Store for ElasticStore {
    fn backend(&self) -> &'static str {
        "elasticsearch"
    }

    async fn write(&self, docs: &[Document]) -> Result<Vec<WriteOutcome>, StoreError> {
        let (items, failed) = self.items_of(docs);
        let mut results: Vec<Option<ItemResult>> = Vec::with_capacity(items.len());
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
            results.extend(
                self.send_chunk(&items[start..end])
                    .await
                    .into_iter()
                    .map(Some),
            );
            start = end;
        }
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
                Some(ItemResult::Ok) | None => {
                    if let ItemKind::Service(key) = &item.kind {
                        newly_seen.push(key.clone());
                    }
                }
                Some(ItemResult::Retry(m)) => *slot = WriteOutcome::Retry(m),
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

    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>, StoreError> {
        let mut filter = Vec::new();
        if let Some(s) = &query.service {
            filter.push(json!({"term": {"process.serviceName": s}}));
        }
        if let Some(o) = &query.operation {
            filter.push(json!({"term": {"operationName": o}}));
        }
        let mut duration = serde_json::Map::new();
        if let Some(d) = query.min_duration {
            duration.insert("gte".into(), json!(micros_ceil(d)));
        }
        if let Some(d) = query.max_duration {
            duration.insert("lte".into(), json!(d.as_nanos() as u64 / 1000));
        }
        if !duration.is_empty() {
            filter.push(json!({"range": {"duration": duration}}));
        }
        if let Some(r) = range_clause("startTime", query.time, 1000) {
            filter.push(r);
        }
        for (k, v) in &query.attributes {
            filter.push(
                json!({"nested": {"path": "tags", "query": {"bool": {"filter": [
                    {"term": {"tags.key": k}}, {"term": {"tags.value": v}}
                ]}}}}),
            );
        }
        let limit = effective_limit(query.limit);
        let body = json!({
            "size": 0,
            "query": {"bool": {"filter": filter}},
            "aggs": {"traces": {
                "terms": {"field": "traceID", "size": limit, "order": [{"latest": "desc"}, {"_key": "asc"}]},
                "aggs": {"latest": {"max": {"field": "startTime"}}}
            }}
        });
        let response = self.search(&self.names.span_pattern(), &body).await?;
        let ids: Vec<String> = buckets(&response, "/aggregations/traces/buckets")
            .iter()
            .filter_map(|b| b.get("key").and_then(Value::as_str).map(str::to_string))
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let spans = self.spans_of_traces(&ids).await?;
        // Kept in bucket order: traces are picked and ordered by the same key, the latest
        // start among their matching spans (a trace's own start would need every span of
        // every matching trace aggregated first).
        Ok(ids
            .iter()
            .filter_map(|id| spans.get(id).and_then(|s| TraceSummary::from_spans(s)))
            .collect())
    }

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
        if let Some(r) = range_clause("time_unix_nano", query.time, 1) {
            filter.push(r);
        }
        let limit = effective_limit(query.limit);
        let hits = self
            .scan(
                &self.names.logs_pattern(),
                json!({"bool": {"filter": filter}}),
                json!([{"time_unix_nano": "desc"}, {"doc_id": "asc"}]),
                None,
                limit,
            )
            .await?;
        hits.into_iter()
            .map(|d: LogDoc| Ok(log_from_doc(d)))
            .collect()
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

    async fn dependencies(&self, time: TimeRange) -> Result<Dependencies, StoreError> {
        #[derive(Deserialize)]
        struct Slim {
            #[serde(rename = "traceID")]
            trace_id: String,
            #[serde(rename = "spanID")]
            span_id: String,
            #[serde(rename = "parentSpanID", default)]
            parent_span_id: Option<String>,
            process: SlimProcess,
            #[serde(default)]
            dlog: Option<SlimExtras>,
        }
        #[derive(Deserialize)]
        struct SlimProcess {
            #[serde(rename = "serviceName")]
            service_name: String,
        }
        #[derive(Deserialize)]
        struct SlimExtras {
            #[serde(default)]
            error: bool,
        }
        let fields = json!([
            "traceID",
            "spanID",
            "parentSpanID",
            "process.serviceName",
            "dlog.error"
        ]);
        let filter: Vec<Value> = range_clause("startTime", time, 1000).into_iter().collect();
        let hits = self
            .scan(
                &self.names.span_pattern(),
                json!({"bool": {"filter": filter}}),
                json!([{"startTime": "asc"}, {"traceID": "asc"}, {"spanID": "asc"}]),
                Some(fields.clone()),
                MAX_DEPENDENCY_SCAN,
            )
            .await?;
        if hits.len() >= MAX_DEPENDENCY_SCAN {
            tracing::warn!(
                max = MAX_DEPENDENCY_SCAN,
                "dependency scan truncated; narrow the time range"
            );
        }
        let mut service_of: HashMap<(String, String), String> = HashMap::with_capacity(hits.len());
        let mut children = Vec::new();
        for s in hits {
            let s: Slim = s;
            if let Some(parent) = &s.parent_span_id {
                children.push((
                    s.trace_id.clone(),
                    parent.clone(),
                    s.process.service_name.clone(),
                    s.dlog.is_some_and(|d| d.error),
                ));
            }
            service_of.insert((s.trace_id, s.span_id), s.process.service_name);
        }
        // Parents outside the range are looked up by id.
        let missing: Vec<(String, String)> = children
            .iter()
            .map(|(t, p, _, _)| (t.clone(), p.clone()))
            .filter(|k| !service_of.contains_key(k))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for chunk in missing.chunks(1000) {
            let spans: Vec<&str> = chunk.iter().map(|(_, s)| s.as_str()).collect();
            let traces: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
            let found = self
                .scan(
                    &self.names.span_pattern(),
                    json!({"bool": {"filter": [{"terms": {"spanID": spans}}, {"terms": {"traceID": traces}}]}}),
                    json!([{"traceID": "asc"}, {"spanID": "asc"}]),
                    Some(fields.clone()),
                    usize::MAX,
                )
                .await?;
            for s in found {
                let s: Slim = s;
                service_of.insert((s.trace_id, s.span_id), s.process.service_name);
            }
        }
        let mut edges: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for (trace, parent, callee, error) in children {
            if let Some(caller) = service_of.get(&(trace, parent)) {
                if *caller != callee {
                    let e = edges.entry((caller.clone(), callee)).or_default();
                    e.0 += 1;
                    e.1 += u64::from(error);
                }
            }
        }
        let observed = edges
            .into_iter()
            .map(|((caller, callee), (calls, errors))| DependencyEdge {
                caller,
                callee,
                calls,
                errors,
            })
            .collect();
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
