//! The Elasticsearch backend's search model and retention: trace-summary documents kept as
//! spans arrive (replays and late parents included), trace-level search semantics, paged
//! trace reads, index-time dependency edges, and retention by age and by size.
//!
//! Runs against osmem, or the cluster named by `ELASTICSEARCH_URL` (each test under its own
//! index prefix, deleted at the end).

mod common;

use dlog_storage::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

use dlog_core::model::{
    Heartbeat, HeartbeatKind, LogEntry, ServiceInfo, ServiceStatus, SpanEvent, SpanKind,
    SpanRecord, StatusCode,
};
use dlog_storage::elastic::ElasticStore;
use dlog_storage::{
    AlertDoc, AlertQuery, DependencyEdge, Document, LogQuery, RetentionPolicy, SpanCursor,
    StatusQuery, StoreConfig, TimeRange, TraceQuery, WriteOutcome,
};
use serde_json::json;

const MS: u64 = 1_000_000;
const DAY: u64 = 86_400_000 * MS;

struct Fixture {
    // Held for the test's duration: dropping it stops osmem.
    elastic: dlog_testkit::Elastic,
    prefix: String,
    store: ElasticStore,
}

impl Fixture {
    async fn start(name: &str) -> Fixture {
        let elastic = dlog_testkit::Elastic::start().unwrap();
        let prefix = dlog_testkit::unique_name(name);
        let mut config = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(prefix.clone());
        // Tests write days back from now; every day keeps its own index.
        config.partition_max_age_secs = 60 * 24 * 3600;
        let store = ElasticStore::connect(&config).await.unwrap();
        Fixture {
            elastic,
            prefix,
            store,
        }
    }

    async fn write(&self, docs: &[Document]) {
        let outcomes = self.store.write(docs).await.unwrap();
        assert_eq!(outcomes, vec![WriteOutcome::Written; docs.len()]);
        self.store.refresh().await.unwrap();
    }

    async fn cleanup(self) {
        self.store.delete_indices().await.unwrap();
    }
}

fn svc(name: &str) -> ServiceInfo {
    ServiceInfo {
        name: name.into(),
        instance_id: Some(format!("{name}-1")),
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn span(
    trace: &str,
    id: &str,
    parent: Option<&str>,
    service: &ServiceInfo,
    name: &str,
    start: u64,
    duration_ms: u64,
) -> SpanRecord {
    SpanRecord {
        trace_id: trace.into(),
        span_id: id.into(),
        parent_span_id: parent.map(str::to_string),
        name: name.into(),
        kind: SpanKind::Server,
        start_unix_nano: start,
        end_unix_nano: start + duration_ms * MS,
        status: StatusCode::Unset,
        status_message: String::new(),
        service: service.clone(),
        scope: String::new(),
        attributes: BTreeMap::new(),
        events: vec![],
        links: vec![],
    }
}

fn trace_id(n: u64) -> String {
    format!("{n:032x}")
}

fn ids(found: &[dlog_storage::TraceSummary]) -> Vec<String> {
    found.iter().map(|t| t.trace_id.clone()).collect()
}

fn docs(spans: &[SpanRecord]) -> Vec<Document> {
    spans.iter().cloned().map(Document::Span).collect()
}

/// The start of today (UTC) plus an hour, so that tests stay inside one day.
fn today() -> u64 {
    let now = dlog_storage::now_unix_nano();
    let day_start = now / DAY * DAY;
    // Never in the future: the day's first hour belongs to it as much as the rest.
    (day_start + 3_600_000 * MS).min(now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_search_uses_trace_duration_trace_start_and_every_attribute_scope() {
    let f = Fixture::start("es-search").await;
    let fe = svc("frontend");
    let mut be = svc("backend");
    be.attributes
        .insert("deployment.environment".into(), json!("canary"));
    let t0 = today();
    // Trace 1: two 1 ms spans 500 ms apart: a 501 ms trace whose spans are all short.
    let mut child = span(
        &trace_id(1),
        "1000000000000002",
        Some("1000000000000001"),
        &be,
        "charge",
        t0 + 500 * MS,
        1,
    );
    child.events = vec![SpanEvent {
        name: "retry".into(),
        time_unix_nano: t0 + 500 * MS,
        attributes: BTreeMap::from([("retry.reason".to_string(), json!("timeout"))]),
    }];
    let trace1 = vec![
        span(
            &trace_id(1),
            "1000000000000001",
            None,
            &fe,
            "checkout",
            t0,
            1,
        ),
        child,
    ];
    // Trace 2: one 200 ms span, starting after trace 1.
    let trace2 = vec![span(
        &trace_id(2),
        "2000000000000001",
        None,
        &fe,
        "checkout",
        t0 + 10 * MS,
        200,
    )];
    // Trace 3: 5 ms, the newest.
    let mut root3 = span(
        &trace_id(3),
        "3000000000000001",
        None,
        &fe,
        "health",
        t0 + 20 * MS,
        5,
    );
    root3
        .attributes
        .insert("http.route".into(), json!("/health"));
    let trace3 = vec![root3];
    f.write(&docs(&[trace1.clone(), trace2, trace3].concat()))
        .await;

    let find = |q: TraceQuery| {
        let store = &f.store;
        async move { store.find_traces(&q).await.unwrap() }
    };
    // Newest trace start first, with the trace's own duration.
    let all = find(TraceQuery::default()).await;
    assert_eq!(ids(&all), vec![trace_id(3), trace_id(2), trace_id(1)]);
    assert_eq!(all[2].duration_nanos, 501 * MS);
    assert_eq!(
        (all[2].span_count, all[2].root_operation.as_str()),
        (2, "checkout")
    );
    assert_eq!(
        all[2].services,
        vec!["backend".to_string(), "frontend".to_string()]
    );
    // min/max duration apply to the trace, not to any one span.
    let long = find(TraceQuery {
        min_duration: Some(Duration::from_millis(400)),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&long), vec![trace_id(1)]);
    let short = find(TraceQuery {
        max_duration: Some(Duration::from_millis(100)),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&short), vec![trace_id(3)]);
    // A backend span matches, but the trace's start is reported and filtered on.
    let by_backend = find(TraceQuery {
        service: Some("backend".into()),
        time: TimeRange::between(t0, t0 + MS),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&by_backend), vec![trace_id(1)]);
    assert_eq!(by_backend[0].start_unix_nano, t0);
    // Service and operation must match on one span.
    let mixed = find(TraceQuery {
        service: Some("backend".into()),
        operation: Some("checkout".into()),
        ..Default::default()
    })
    .await;
    assert!(mixed.is_empty(), "{mixed:?}");
    // Attributes match the span's own, its resource's and its events'.
    let attr = |k: &str, v: &str| TraceQuery {
        attributes: BTreeMap::from([(k.to_string(), v.to_string())]),
        ..Default::default()
    };
    assert_eq!(
        ids(&find(attr("http.route", "/health")).await),
        vec![trace_id(3)]
    );
    assert_eq!(
        ids(&find(attr("deployment.environment", "canary")).await),
        vec![trace_id(1)]
    );
    assert_eq!(
        ids(&find(attr("retry.reason", "timeout")).await),
        vec![trace_id(1)]
    );
    assert!(find(attr("retry.reason", "refused")).await.is_empty());
    // Both attributes must hold on the same span.
    let mut both = attr("retry.reason", "timeout");
    both.attributes
        .insert("deployment.environment".into(), "canary".into());
    assert_eq!(ids(&find(both.clone()).await), vec![trace_id(1)]);
    both.service = Some("frontend".into());
    assert!(find(both).await.is_empty());
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_and_dependencies_survive_replays_and_late_parents() {
    let f = Fixture::start("es-replay").await;
    let (fe, be, db) = (svc("frontend"), svc("backend"), svc("db"));
    let t0 = today();
    let t = trace_id(7);
    let root = span(&t, "7000000000000001", None, &fe, "checkout", t0, 100);
    let mut call = span(
        &t,
        "7000000000000002",
        Some("7000000000000001"),
        &be,
        "charge",
        t0 + MS,
        50,
    );
    call.status = StatusCode::Error;
    let query = span(
        &t,
        "7000000000000003",
        Some("7000000000000002"),
        &db,
        "select",
        t0 + 2 * MS,
        10,
    );
    // Children arrive first, in separate writes; the root arrives last.
    f.write(&docs(std::slice::from_ref(&query))).await;
    f.write(&docs(&[call.clone()])).await;
    let early = f.store.dependencies(TimeRange::default()).await.unwrap();
    assert_eq!(
        early.observed,
        vec![DependencyEdge {
            caller: "backend".into(),
            callee: "db".into(),
            calls: 1,
            errors: 0
        }]
    );
    f.write(&docs(std::slice::from_ref(&root))).await;
    let expected_edges = vec![
        DependencyEdge {
            caller: "backend".into(),
            callee: "db".into(),
            calls: 1,
            errors: 0,
        },
        DependencyEdge {
            caller: "frontend".into(),
            callee: "backend".into(),
            calls: 1,
            errors: 1,
        },
    ];
    let check = |what: &'static str| {
        let store = &f.store;
        let expected_edges = expected_edges.clone();
        let (root, call, query) = (root.clone(), call.clone(), query.clone());
        async move {
            let found = store.find_traces(&TraceQuery::default()).await.unwrap();
            let expected = dlog_storage::TraceSummary::from_spans(&[root, call, query]).unwrap();
            assert_eq!(found, vec![expected], "{what}");
            let deps = store.dependencies(TimeRange::default()).await.unwrap();
            assert_eq!(deps.observed, expected_edges, "{what}");
        }
    };
    check("after the late root").await;
    // Replaying every span (one batch, then again one by one) changes no count.
    f.write(&docs(&[root.clone(), call.clone(), query.clone()]))
        .await;
    f.write(&docs(&[call.clone()])).await;
    check("after replays").await;
    // The dependency range applies to the child spans' start.
    let later = f
        .store
        .dependencies(TimeRange::between(t0 + DAY, t0 + 2 * DAY))
        .await
        .unwrap();
    assert!(later.observed.is_empty());
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_pages_follow_each_other_without_loading_the_trace() {
    let f = Fixture::start("es-page").await;
    let s = svc("pager");
    let t0 = today();
    let t = trace_id(9);
    // 25 spans, some sharing a start time, written out of order.
    let mut spans: Vec<SpanRecord> = (0..25u64)
        .map(|i| {
            span(
                &t,
                &format!("{:016x}", 1000 - i),
                None,
                &s,
                "step",
                t0 + (i / 2) * MS,
                1,
            )
        })
        .collect();
    spans.reverse();
    f.write(&docs(&spans)).await;
    let whole = f.store.get_trace(&t).await.unwrap();
    assert_eq!(whole.len(), 25);
    let mut paged = Vec::new();
    let mut cursor: Option<SpanCursor> = None;
    loop {
        let page = f
            .store
            .get_trace_page(&t, cursor.as_ref(), 7)
            .await
            .unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        cursor = Some(SpanCursor {
            start_unix_nano: last.start_unix_nano,
            span_id: last.span_id.clone(),
        });
        paged.extend(page);
    }
    assert_eq!(paged, whole);
    f.cleanup().await;
}

fn heartbeat(service: &ServiceInfo, time: u64) -> Heartbeat {
    Heartbeat {
        kind: HeartbeatKind::Heartbeat,
        status: ServiceStatus::Up,
        time_unix_nano: time,
        interval_ms: Some(1000),
        service: service.clone(),
    }
}

fn log(service: &ServiceInfo, time: u64, body: &str) -> LogEntry {
    LogEntry {
        time_unix_nano: time,
        severity_number: 9,
        level: "INFO".into(),
        body: body.into(),
        trace_id: None,
        span_id: None,
        event_name: None,
        service: service.clone(),
        attributes: BTreeMap::new(),
    }
}

fn alert(id: &str, last_seen: u64) -> AlertDoc {
    AlertDoc {
        id: id.into(),
        rule: "error_rate".into(),
        severity: "warning".into(),
        state: "firing".into(),
        service: "svc".into(),
        instance: None,
        summary: "errors".into(),
        first_seen_unix_nano: last_seen,
        last_seen_unix_nano: last_seen,
        occurrences: 1,
        example_trace_ids: vec![],
        root_cause: None,
        incident_id: None,
        labels: BTreeMap::new(),
    }
}

/// One span, one log and one heartbeat on each of `days` days back from today.
fn day_docs(days: &[u64]) -> Vec<Document> {
    let t0 = today();
    let mut out = Vec::new();
    for &d in days {
        let s = svc(&format!("svc-{d}"));
        let at = t0 - d * DAY;
        out.push(Document::Span(span(
            &trace_id(100 + d),
            &format!("{:016x}", 100 + d),
            None,
            &s,
            "work",
            at,
            1,
        )));
        out.push(Document::Log(log(&s, at, &format!("day {d}"))));
        out.push(Document::Heartbeat(heartbeat(&s, at)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_days_by_age_and_by_size_never_today() {
    let f = Fixture::start("es-retain").await;
    f.write(&day_docs(&[0, 3, 10, 12])).await;
    let t0 = today();
    f.store
        .upsert_alerts(&[alert("old", t0 - 12 * DAY), alert("recent", t0 - DAY)])
        .await
        .unwrap();
    let usage = f.store.usage().await.unwrap();
    let day_name = |d: u64| dlog_storage::elastic::model::date_of_nanos(t0 - d * DAY);
    let names: Vec<&str> = usage.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec![day_name(12), day_name(10), day_name(3), day_name(0)]
    );
    assert_eq!(usage.oldest_unix_nano, Some((t0 - 12 * DAY) / DAY * DAY));
    assert!(usage.partitions.iter().all(|p| p.bytes > 0), "{usage:?}");
    assert!(usage.bytes_used >= usage.partitions.iter().map(|p| p.bytes).sum::<u64>());

    // By age: 7 days drops days 10 and 12, with their alerts and registry entries.
    let now = dlog_storage::now_unix_nano();
    let report = f
        .store
        .apply_retention(
            &RetentionPolicy {
                max_age: Some(Duration::from_secs(7 * 86_400)),
                max_bytes: None,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(report.dropped, vec![day_name(12), day_name(10)]);
    f.store.refresh().await.unwrap();
    let logs: Vec<String> = f
        .store
        .search_logs(&LogQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.body)
        .collect();
    assert_eq!(logs, vec!["day 0", "day 3"]);
    let traces = f.store.find_traces(&TraceQuery::default()).await.unwrap();
    assert_eq!(ids(&traces), vec![trace_id(100), trace_id(103)]);
    let alerts: Vec<String> = f
        .store
        .list_alerts(&AlertQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(alerts, vec!["recent"]);
    let mut services: Vec<String> = f
        .store
        .service_status(&StatusQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.entry.service)
        .collect();
    services.sort();
    assert_eq!(services, vec!["svc-0", "svc-3"]);

    // By size: a budget of one byte drops every day but today, oldest first.
    let report = f
        .store
        .apply_retention(
            &RetentionPolicy {
                max_age: None,
                max_bytes: Some(1),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(report.dropped, vec![day_name(3)]);
    assert_eq!(
        report
            .usage
            .partitions
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>(),
        vec![day_name(0)]
    );
    f.store.refresh().await.unwrap();
    let logs = f.store.search_logs(&LogQuery::default()).await.unwrap();
    assert_eq!(logs.len(), 1);
    // Ingest goes on after retention.
    f.write(&day_docs(&[0, 1])).await;
    let usage = f.store.usage().await.unwrap();
    assert_eq!(usage.partitions.len(), 2);
    // A budget that holds everything drops nothing.
    let report = f
        .store
        .apply_retention(
            &RetentionPolicy {
                max_age: None,
                max_bytes: Some(usage.bytes_used),
            },
            now,
        )
        .await
        .unwrap();
    assert!(report.dropped.is_empty());
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_stored_before_summaries_existed_are_backfilled_by_the_migration() {
    let f = Fixture::start("es-migrate").await;
    let (fe, be) = (svc("frontend"), svc("backend"));
    let t0 = today();
    let t = trace_id(42);
    let spans = vec![
        span(&t, "4200000000000001", None, &fe, "checkout", t0, 80),
        span(
            &t,
            "4200000000000002",
            Some("4200000000000001"),
            &be,
            "charge",
            t0 + MS,
            30,
        ),
    ];
    f.write(&docs(&spans)).await;
    // The layout of the previous release: span indices only.
    let http = reqwest::Client::new();
    for family in ["dlog-trace-summaries", "dlog-dependencies"] {
        let url = format!("{}/{}-{family}-*", f.elastic.url, f.prefix);
        assert!(http.delete(url).send().await.unwrap().status().is_success());
    }
    let today_name = dlog_storage::elastic::model::date_of_nanos(t0);
    assert_eq!(
        f.store.days_without_summaries().await.unwrap(),
        vec![today_name]
    );
    assert!(f
        .store
        .find_traces(&TraceQuery::default())
        .await
        .unwrap()
        .is_empty());

    assert_eq!(f.store.backfill_summaries().await.unwrap(), 2);
    f.store.refresh().await.unwrap();
    assert!(f.store.days_without_summaries().await.unwrap().is_empty());
    let found = f.store.find_traces(&TraceQuery::default()).await.unwrap();
    assert_eq!(
        found,
        vec![dlog_storage::TraceSummary::from_spans(&spans).unwrap()]
    );
    let deps = f.store.dependencies(TimeRange::default()).await.unwrap();
    assert_eq!(
        deps.observed,
        vec![DependencyEdge {
            caller: "frontend".into(),
            callee: "backend".into(),
            calls: 1,
            errors: 0
        }]
    );
    // Running it again finds nothing to do.
    assert_eq!(f.store.backfill_summaries().await.unwrap(), 0);
    f.cleanup().await;
}
