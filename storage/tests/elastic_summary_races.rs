//! Trace summaries and call edges written by the Elasticsearch indexer stay exact when a
//! trace's spans arrive over many batches and out of order, when batches are replayed, and
//! when a second writer changes the summaries behind the first one's cache, racing it.
//!
//! Runs against osmem, or the cluster named by `ELASTICSEARCH_URL` (under its own index
//! prefix, deleted at the end).

use std::collections::BTreeMap;

use dlog_core::model::{ServiceInfo, SpanKind, SpanRecord, StatusCode};
use dlog_storage::elastic::ElasticStore;
use dlog_storage::prelude::*;
use dlog_storage::{
    DependencyEdge, Document, StoreConfig, TimeRange, TraceQuery, TraceSummary, WriteOutcome,
};

const MS: u64 = 1_000_000;
const DAY: u64 = 86_400_000 * MS;
const SERVICES: [&str; 4] = ["gateway", "orders", "payments", "ledger"];

/// Trace `n`: `count` spans in a tree (span k's parent is span (k-1)/3), services by depth
/// and position, every 7th span an error, starts spread over a second from `t0`.
fn trace(n: u64, count: u64, t0: u64) -> Vec<SpanRecord> {
    let trace_id = format!("{:032x}", 0xabc0_0000 + n);
    (0..count)
        .map(|k| SpanRecord {
            trace_id: trace_id.clone(),
            span_id: format!("{:08x}{k:08x}", n),
            parent_span_id: (k > 0).then(|| format!("{:08x}{:08x}", n, (k - 1) / 3)),
            name: format!("op-{}", k % 5),
            kind: SpanKind::Server,
            start_unix_nano: t0 + k * 13 * MS,
            end_unix_nano: t0 + k * 13 * MS + (k % 11 + 1) * 7 * MS,
            status: if k % 7 == 3 {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            status_message: String::new(),
            service: ServiceInfo {
                name: SERVICES[((k as usize) % 3 + (k as usize).min(1)) % 4].into(),
                ..Default::default()
            },
            scope: String::new(),
            attributes: BTreeMap::new(),
            events: vec![],
            links: vec![],
        })
        .collect()
}

/// The call edges of these spans, as `Store::dependencies` should report them.
fn expected_edges(spans: &[SpanRecord]) -> Vec<DependencyEdge> {
    let by_id: BTreeMap<(&str, &str), &SpanRecord> = spans
        .iter()
        .map(|s| ((s.trace_id.as_str(), s.span_id.as_str()), s))
        .collect();
    let mut edges: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for child in spans {
        let Some(parent) = child
            .parent_span_id
            .as_deref()
            .and_then(|p| by_id.get(&(child.trace_id.as_str(), p)))
        else {
            continue;
        };
        if parent.service.name == child.service.name {
            continue;
        }
        let e = edges
            .entry((parent.service.name.clone(), child.service.name.clone()))
            .or_default();
        e.0 += 1;
        e.1 += u64::from(child.is_error());
    }
    edges
        .into_iter()
        .map(|((caller, callee), (calls, errors))| DependencyEdge {
            caller,
            callee,
            calls,
            errors,
        })
        .collect()
}

async fn write(store: &ElasticStore, spans: &[SpanRecord]) {
    let docs: Vec<Document> = spans.iter().cloned().map(Document::Span).collect();
    let outcomes = store.write(&docs).await.unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Written; docs.len()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_stay_exact_over_many_batches_replays_and_a_racing_writer() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let prefix = dlog_testkit::unique_name("es-race");
    let config = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(prefix);
    // Two indexers writing the same cluster, each with its own summary cache.
    let a = ElasticStore::connect(&config).await.unwrap();
    let b = ElasticStore::connect(&config).await.unwrap();
    let now = dlog_storage::now_unix_nano();
    // Within today, an hour back, so that every span and edge falls on one day.
    let t0 = (now / DAY * DAY + 3_600_000 * MS).min(now - 10_000 * MS);

    // Three traces of 60, 25 and 9 spans; each batch holds a slice of every trace, in an
    // order that puts children before their parents.
    let traces: Vec<Vec<SpanRecord>> = vec![trace(1, 60, t0), trace(2, 25, t0), trace(3, 9, t0)];
    let mut batches: Vec<Vec<SpanRecord>> = vec![Vec::new(); 10];
    for spans in &traces {
        for (k, s) in spans.iter().enumerate().rev() {
            batches[(k * 7 + 3) % 10].push(s.clone());
        }
    }
    batches.reverse();

    // Writer A takes the first batches and caches the summaries it wrote.
    for batch in &batches[0..3] {
        write(&a, batch).await;
    }
    // Writer B changes them behind A's back: A's cached versions are now stale.
    write(&b, &batches[3]).await;
    write(&a, &batches[4]).await;
    // Replays through both writers, including one B wrote and one A wrote.
    write(&a, &batches[3]).await;
    write(&b, &batches[1]).await;
    // Both writers at once, on the same traces, twice: one of each pair loses every race and
    // must read and merge again.
    tokio::join!(write(&a, &batches[5]), write(&b, &batches[6]));
    tokio::join!(write(&b, &batches[7]), write(&a, &batches[8]));
    // A last batch, and a racing replay of it.
    tokio::join!(write(&a, &batches[9]), write(&b, &batches[9]));
    write(&a, &batches[6]).await;
    a.refresh().await.unwrap();

    let all: Vec<SpanRecord> = traces.concat();
    for store in [&a, &b] {
        let mut found = store.find_traces(&TraceQuery::default()).await.unwrap();
        found.sort_by(|x, y| x.trace_id.cmp(&y.trace_id));
        let expected: Vec<TraceSummary> = traces
            .iter()
            .map(|t| TraceSummary::from_spans(t).unwrap())
            .collect();
        assert_eq!(
            found, expected,
            "span and error counts, duration, root, services"
        );
        let deps = store
            .dependencies(TimeRange::between(t0, t0 + DAY))
            .await
            .unwrap();
        assert_eq!(
            deps.observed,
            expected_edges(&all),
            "each call counted once"
        );
    }
    let first = &traces[0];
    assert_eq!(
        a.get_trace(&first[0].trace_id).await.unwrap().len(),
        first.len()
    );
    a.delete_indices().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_with_a_stale_cached_summary_reads_it_again_and_counts_each_call_once() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let prefix = dlog_testkit::unique_name("es-stale");
    let config = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(prefix);
    let a = ElasticStore::connect(&config).await.unwrap();
    let b = ElasticStore::connect(&config).await.unwrap();
    let now = dlog_storage::now_unix_nano();
    let t0 = (now / DAY * DAY + 3_600_000 * MS).min(now - 10_000 * MS);
    // A gateway root calling orders four times; the third call fails.
    let mut spans = trace(9, 5, t0);
    for (k, s) in spans.iter_mut().enumerate() {
        s.parent_span_id = (k > 0).then(|| format!("{:08x}{:08x}", 9, 0));
        s.service.name = if k == 0 { "gateway" } else { "orders" }.into();
        s.status = if k == 3 {
            StatusCode::Error
        } else {
            StatusCode::Unset
        };
    }
    // A writes the root and one call (1 call cached); B adds two calls behind A's back
    // (3 calls stored); A adds the fourth from its stale summary (2 calls): its conditional
    // write loses, and it must read B's summary and merge into it.
    write(&a, &spans[0..2]).await;
    write(&b, &spans[2..4]).await;
    let before = a.summary_stats().conflicts;
    write(&a, &spans[4..5]).await;
    assert!(
        a.summary_stats().conflicts > before,
        "A's write from its stale cached summary lost and was merged again"
    );
    a.refresh().await.unwrap();
    let deps = b
        .dependencies(TimeRange::between(t0, t0 + DAY))
        .await
        .unwrap();
    assert_eq!(
        deps.observed,
        vec![DependencyEdge {
            caller: "gateway".into(),
            callee: "orders".into(),
            calls: 4,
            errors: 1
        }]
    );
    let found = b.find_traces(&TraceQuery::default()).await.unwrap();
    assert_eq!(found, vec![TraceSummary::from_spans(&spans).unwrap()]);
    assert_eq!(found[0].span_count, 5);
    assert_eq!(found[0].error_count, 1);
    // Replays through either writer change nothing.
    write(&a, &spans).await;
    write(&b, &spans[1..3]).await;
    a.refresh().await.unwrap();
    assert_eq!(b.find_traces(&TraceQuery::default()).await.unwrap(), found);
    assert_eq!(
        a.dependencies(TimeRange::between(t0, t0 + DAY))
            .await
            .unwrap()
            .observed,
        deps.observed
    );
    a.delete_indices().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_edge_the_store_refuses_does_not_hold_back_the_spans() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let prefix = dlog_testkit::unique_name("es-edge-refused");
    let config = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(prefix);
    let store = ElasticStore::connect(&config).await.unwrap();
    let now = dlog_storage::now_unix_nano();
    let t0 = (now / DAY * DAY + 3_600_000 * MS).min(now - 10_000 * MS);
    // Today's dependency index, made by hand with a mapping no call edge fits: every edge
    // written to it is refused for good (a mapping error, 400).
    let deps_index = store.names().dependencies(t0);
    let http = reqwest::Client::new();
    let made = http
        .put(format!(
            "{}/{deps_index}",
            elastic.url.trim_end_matches('/')
        ))
        .json(&serde_json::json!({"mappings": {"properties": {"caller": {"type": "long"}}}}))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success(), "{}", made.text().await.unwrap());

    let spans = trace(21, 9, t0);
    let docs: Vec<Document> = spans.iter().cloned().map(Document::Span).collect();
    let outcomes = store.write(&docs).await.unwrap();
    assert_eq!(
        outcomes,
        vec![WriteOutcome::Written; docs.len()],
        "the spans are acknowledged, not retried forever"
    );
    assert!(store.summary_stats().rejected_edges > 0);
    store.refresh().await.unwrap();
    assert_eq!(
        store.find_traces(&TraceQuery::default()).await.unwrap(),
        vec![TraceSummary::from_spans(&spans).unwrap()],
        "the summary is stored"
    );
    assert_eq!(store.get_trace(&spans[0].trace_id).await.unwrap().len(), 9);
    store.delete_indices().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_deleted_behind_the_cache_is_written_again_from_what_is_stored() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let prefix = dlog_testkit::unique_name("es-deleted");
    let config = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(prefix);
    let a = ElasticStore::connect(&config).await.unwrap();
    let b = ElasticStore::connect(&config).await.unwrap();
    let now = dlog_storage::now_unix_nano();
    let t0 = (now / DAY * DAY + 3_600_000 * MS).min(now - 10_000 * MS);
    let spans = trace(31, 6, t0);
    write(&a, &spans[0..3]).await;
    // Another process deletes everything (retention, an operator): A's cache still holds the
    // summary of three spans.
    b.delete_indices().await.unwrap();
    let before = a.summary_stats().conflicts;
    write(&a, &spans[3..6]).await;
    assert!(
        a.summary_stats().conflicts > before,
        "the write conditional on the deleted summary failed and was read again"
    );
    a.refresh().await.unwrap();
    let found = a.find_traces(&TraceQuery::default()).await.unwrap();
    assert_eq!(
        found,
        vec![TraceSummary::from_spans(&spans[3..6]).unwrap()],
        "the summary counts the spans that are stored, not the deleted ones"
    );
    a.delete_indices().await.unwrap();
}

/// Regression: call edges went in the same `_bulk` request as the merged summary they came
/// from, so a summary the store refused (or that lost a race) still left its edges, counting
/// calls no stored summary held, until the trace's next change. Edges are now written only
/// from summaries the store accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_edges_follow_only_summaries_the_store_accepted() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let prefix = dlog_testkit::unique_name("es-edge-after-summary");
    let config = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(prefix);
    let store = ElasticStore::connect(&config).await.unwrap();
    let now = dlog_storage::now_unix_nano();
    let t0 = (now / DAY * DAY + 3_600_000 * MS).min(now - 10_000 * MS);
    // Today's summary index, made by hand with a mapping no summary fits: every summary
    // written to it is refused for good (a mapping error, 400).
    let summaries_index = store.names().summaries(t0);
    let http = reqwest::Client::new();
    let index_url = format!("{}/{summaries_index}", elastic.url.trim_end_matches('/'));
    let made = http
        .put(&index_url)
        .json(&serde_json::json!({"mappings": {"properties": {"root_service": {"type": "long"}}}}))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success(), "{}", made.text().await.unwrap());

    let spans = trace(31, 9, t0);
    assert!(!expected_edges(&spans).is_empty());
    write(&store, &spans).await;
    assert!(store.summary_stats().rejected_summaries > 0);
    store.refresh().await.unwrap();
    let day = TimeRange::between(t0 - DAY, t0 + DAY);
    assert_eq!(
        store.dependencies(day).await.unwrap().observed,
        vec![],
        "no edge without its stored summary"
    );

    // Once the summary can be stored, the same spans again (a replay) store it and its edges.
    let deleted = http.delete(&index_url).send().await.unwrap();
    assert!(deleted.status().is_success());
    write(&store, &spans).await;
    store.refresh().await.unwrap();
    assert_eq!(
        store.find_traces(&TraceQuery::default()).await.unwrap(),
        vec![TraceSummary::from_spans(&spans).unwrap()]
    );
    assert_eq!(
        store.dependencies(day).await.unwrap().observed,
        expected_edges(&spans)
    );
    store.delete_indices().await.unwrap();
}
