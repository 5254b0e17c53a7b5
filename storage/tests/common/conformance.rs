//! The storage conformance suite: every write and query of the storage traits, run against
//! each backend (as Jaeger's storage integration tests do).
//!
//! The suite is organised by role. [`run`] runs every role on a complete [`Store`]; each role's
//! part ([`span_writer`], [`trace_reader`], [`trace_search`], [`log_reader`],
//! [`dependency_reader`], [`status_reader`], [`alert_store`]) takes only the role traits it
//! needs ([`retention`] checks every kind of data after a drop, so it takes a whole store), so a new backend that has, say, only `SpanWriter + TraceReader` runs
//! [`trace_roles`] until it grows the rest, and a complete backend that does not pass a role
//! yet names it in its skip list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dlog_core::model::{
    Heartbeat, HeartbeatKind, LogEntry, ServiceInfo, ServiceStatus, SpanEvent, SpanKind, SpanLink,
    SpanRecord, StatusCode,
};
use dlog_storage::{
    AlertDoc, AlertQuery, AlertStore, Backend, DeclaredDependency, DependencyEdge,
    DependencyReader, Document, Liveness, LogCursor, LogOrder, LogQuery, LogReader, Operation,
    RetentionPolicy, SpanCursor, SpanWriter, StatusQuery, StatusReader, Store, TimeRange,
    TraceQuery, TraceReader, WriteOutcome,
};

/// A part of the suite a backend may skip: a whole role, or one check of a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Every check of a role (`"TraceReader"`, `"LogReader"`, `"DependencyReader"`,
    /// `"StatusReader"`, `"AlertStore"`, `"Retention"`).
    Role(&'static str),
    /// One check, by name (`"trace_start_order"`, `"trace_level_duration"`,
    /// `"resource_and_event_attributes"`, `"trace_pages"`).
    Check(&'static str),
}

/// What the Elasticsearch backend does not pass yet: skipped on it (and said so). An entry
/// goes once the backend implements what it checks; the embedded store runs everything.
pub const PENDING_ON_ELASTICSEARCH: &[Skip] = &[];

/// The skip list of a backend: [`PENDING_ON_ELASTICSEARCH`] for Elasticsearch, nothing for
/// the others.
pub fn skip_list(backend: &str) -> &'static [Skip] {
    if backend == "elasticsearch" {
        PENDING_ON_ELASTICSEARCH
    } else {
        &[]
    }
}

/// True (and says so) when `part` (a role, or a check of `role`) is to be skipped on `store`.
fn skipped<S: Backend + ?Sized>(
    store: &S,
    role: &'static str,
    check: Option<&'static str>,
) -> bool {
    let list = skip_list(store.backend());
    let skip =
        list.contains(&Skip::Role(role)) || check.is_some_and(|c| list.contains(&Skip::Check(c)));
    if skip {
        eprintln!(
            "conformance {role}{} is pending on {}: skipped",
            check.map(|c| format!(" check `{c}`")).unwrap_or_default(),
            store.backend()
        );
    }
    skip
}
use serde_json::json;

/// 2025-01-15T10:00:00Z in ns.
pub const T0: u64 = 1_736_935_200_000_000_000;
const MS: u64 = 1_000_000;
const DAY: u64 = 86_400_000 * MS;

pub const TRACE_A: &str = "0af7651916cd43dd8448eb211c80319c";
pub const TRACE_B: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

pub fn service(name: &str, instance: &str, deps: &[&str]) -> ServiceInfo {
    ServiceInfo {
        name: name.into(),
        version: Some("1.2.3".into()),
        instance_id: Some(instance.into()),
        dependencies: deps.iter().map(|d| d.to_string()).collect(),
        attributes: BTreeMap::from([("host.name".to_string(), json!("vm1"))]),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn span(
    trace: &str,
    id: &str,
    parent: Option<&str>,
    svc: &ServiceInfo,
    name: &str,
    kind: SpanKind,
    start: u64,
    dur_ms: u64,
) -> SpanRecord {
    SpanRecord {
        trace_id: trace.into(),
        span_id: id.into(),
        parent_span_id: parent.map(str::to_string),
        name: name.into(),
        kind,
        start_unix_nano: start,
        end_unix_nano: start + dur_ms * MS,
        status: StatusCode::Unset,
        status_message: String::new(),
        service: svc.clone(),
        scope: "dlog-test".into(),
        attributes: BTreeMap::new(),
        events: vec![],
        links: vec![],
    }
}

pub fn log(
    svc: &ServiceInfo,
    time: u64,
    level: &str,
    body: &str,
    trace: Option<(&str, &str)>,
    attrs: &[(&str, serde_json::Value)],
) -> LogEntry {
    let severity_number = match level {
        "INFO" => 9,
        "WARN" => 13,
        "ERROR" => 17,
        _ => 5,
    };
    LogEntry {
        time_unix_nano: time,
        severity_number,
        level: level.into(),
        body: body.into(),
        trace_id: trace.map(|t| t.0.to_string()),
        span_id: trace.map(|t| t.1.to_string()),
        event_name: None,
        service: svc.clone(),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

pub fn heartbeat(
    svc: &ServiceInfo,
    kind: HeartbeatKind,
    status: ServiceStatus,
    time: u64,
) -> Heartbeat {
    Heartbeat {
        kind,
        status,
        time_unix_nano: time,
        interval_ms: Some(1000),
        service: svc.clone(),
    }
}

/// Trace A: frontend GET /checkout → (client) → backend POST /charge → db query (error),
/// all on day 0. Trace B: frontend GET /health alone, on day 1.
pub fn fixture_spans() -> Vec<SpanRecord> {
    let fe = service("frontend", "fe-1", &["backend"]);
    let be = service("backend", "be-1", &["db"]);
    let mut root = span(
        TRACE_A,
        "a000000000000001",
        None,
        &fe,
        "GET /checkout",
        SpanKind::Server,
        T0,
        120,
    );
    root.attributes = BTreeMap::from([
        ("http.method".to_string(), json!("GET")),
        ("http.status_code".to_string(), json!(200)),
        ("retry.ratio".to_string(), json!(0.25)),
        ("cache.hit".to_string(), json!(true)),
        ("tags.list".to_string(), json!(["a", "b"])),
    ]);
    root.events = vec![SpanEvent {
        name: "cart loaded".into(),
        time_unix_nano: T0 + 5 * MS + 123,
        attributes: BTreeMap::from([("items".to_string(), json!(3))]),
    }];
    let client = span(
        TRACE_A,
        "a000000000000002",
        Some("a000000000000001"),
        &fe,
        "charge",
        SpanKind::Client,
        T0 + 10 * MS,
        100,
    );
    let mut server = span(
        TRACE_A,
        "b000000000000003",
        Some("a000000000000002"),
        &be,
        "POST /charge",
        SpanKind::Server,
        T0 + 12 * MS + 7,
        95,
    );
    server.attributes = BTreeMap::from([("http.method".to_string(), json!("POST"))]);
    server.links = vec![SpanLink {
        trace_id: TRACE_B.into(),
        span_id: "c000000000000001".into(),
    }];
    let mut query = span(
        TRACE_A,
        "b000000000000004",
        Some("b000000000000003"),
        &be,
        "db query",
        SpanKind::Internal,
        T0 + 20 * MS,
        60,
    );
    query.status = StatusCode::Error;
    query.status_message = "deadlock detected".into();
    let health = span(
        TRACE_B,
        "c000000000000001",
        None,
        &fe,
        "GET /health",
        SpanKind::Server,
        T0 + DAY,
        2,
    );
    vec![root, client, server, query, health]
}

pub fn fixture_logs() -> Vec<LogEntry> {
    let fe = service("frontend", "fe-1", &["backend"]);
    let be = service("backend", "be-1", &["db"]);
    vec![
        log(
            &fe,
            T0 + MS,
            "INFO",
            "checkout started for cart 42",
            Some((TRACE_A, "a000000000000001")),
            &[("user.id", json!("u-7"))],
        ),
        log(
            &be,
            T0 + 30 * MS,
            "WARN",
            "charge slow",
            Some((TRACE_A, "b000000000000003")),
            &[
                ("response_time_ms", json!(95.5)),
                ("threshold_limit_ms", json!(50)),
            ],
        ),
        log(
            &be,
            T0 + 80 * MS,
            "ERROR",
            "charge failed: deadlock",
            Some((TRACE_A, "b000000000000004")),
            &[
                ("error.code", json!("DB_DEADLOCK")),
                ("error.message", json!("deadlock detected")),
                ("dependent_service", json!("db")),
            ],
        ),
        log(
            &fe,
            T0 + DAY + MS,
            "INFO",
            "health ok",
            Some((TRACE_B, "c000000000000001")),
            &[],
        ),
        log(
            &fe,
            T0 + 2 * DAY,
            "INFO",
            "cache warmed without a trace",
            None,
            &[],
        ),
    ]
}

pub fn fixture_heartbeats() -> Vec<Heartbeat> {
    let fe = service("frontend", "fe-1", &["backend"]);
    let fe2 = service("frontend", "fe-2", &["backend"]);
    let be = service("backend", "be-1", &["db"]);
    vec![
        heartbeat(&fe, HeartbeatKind::Registration, ServiceStatus::Up, T0),
        heartbeat(
            &fe,
            HeartbeatKind::Heartbeat,
            ServiceStatus::Up,
            T0 + 1000 * MS,
        ),
        heartbeat(&fe2, HeartbeatKind::Registration, ServiceStatus::Up, T0),
        heartbeat(
            &fe2,
            HeartbeatKind::Registration,
            ServiceStatus::Down,
            T0 + 2000 * MS,
        ),
        heartbeat(&be, HeartbeatKind::Registration, ServiceStatus::Up, T0),
        heartbeat(
            &be,
            HeartbeatKind::Heartbeat,
            ServiceStatus::Up,
            T0 + 5000 * MS,
        ),
        // Replayed out of order: must not roll be-1's registry entry back.
        heartbeat(
            &be,
            HeartbeatKind::Heartbeat,
            ServiceStatus::Up,
            T0 + 4000 * MS,
        ),
    ]
}

pub fn alert(id: &str, service: &str, state: &str, last_seen: u64) -> AlertDoc {
    AlertDoc {
        id: id.into(),
        rule: "error_rate".into(),
        severity: "critical".into(),
        state: state.into(),
        service: service.into(),
        instance: Some(format!("{service}-1")),
        summary: format!("{service} errors"),
        first_seen_unix_nano: T0,
        last_seen_unix_nano: last_seen,
        occurrences: 3,
        example_trace_ids: vec![TRACE_A.into()],
        root_cause: Some("db".into()),
        incident_id: Some("inc-1".into()),
        labels: BTreeMap::from([("team".to_string(), "payments".to_string())]),
    }
}

fn all_docs() -> Vec<Document> {
    fixture_spans()
        .into_iter()
        .map(Document::Span)
        .chain(fixture_logs().into_iter().map(Document::Log))
        .chain(fixture_heartbeats().into_iter().map(Document::Heartbeat))
        .collect()
}

fn trace_ids(found: &[dlog_storage::TraceSummary]) -> Vec<&str> {
    found.iter().map(|t| t.trace_id.as_str()).collect()
}

fn bodies(logs: &[LogEntry]) -> Vec<&str> {
    logs.iter().map(|l| l.body.as_str()).collect()
}

/// Runs every role against `store`, which must be empty, except what its skip list names.
pub async fn run(store: Arc<dyn Store>) {
    let store: &dyn Store = &*store;
    span_writer(store).await;
    if !skipped(store, "TraceReader", None) {
        trace_reader(store).await;
    }
    if !skipped(store, "LogReader", None) {
        log_reader(store).await;
    }
    if !skipped(store, "DependencyReader", None) {
        dependency_reader(store).await;
    } else {
        write_cross_service_error(store).await;
    }
    if !skipped(store, "StatusReader", None) {
        status_reader(store).await;
    }
    if !skipped(store, "AlertStore", None) {
        alert_store(store).await;
    }
    if !skipped(store, "TraceReader", None) {
        trace_search(store).await;
    }
    if !skipped(store, "LogReader", None) {
        log_search(store).await;
    }
}

/// The part of the suite a backend with only [`SpanWriter`] and [`TraceReader`] runs: the
/// fixture written (twice), traces read back and searched. `store` must be empty.
pub async fn trace_roles<S: SpanWriter + TraceReader + ?Sized>(store: &S) {
    span_writer(store).await;
    trace_reader(store).await;
    write_cross_service_error(store).await;
    trace_search(store).await;
}

/// SpanWriter: the fixture's spans, logs and heartbeats written twice; the replay must
/// overwrite, never duplicate. The other roles read what this wrote.
pub async fn span_writer<S: SpanWriter + ?Sized>(store: &S) {
    let docs = all_docs();
    for _ in 0..2 {
        let outcomes = store.write(&docs).await.expect("write");
        assert_eq!(
            outcomes,
            vec![WriteOutcome::Written; docs.len()],
            "{}",
            store.backend()
        );
    }
    store.refresh().await.expect("refresh");
}

/// TraceReader over the fixture: `get_trace`, every filter of `find_traces`, `services` and
/// `operations`.
pub async fn trace_reader<S: TraceReader + ?Sized>(store: &S) {
    // get_trace: every span, exactly as written, sorted by start.
    let expected_a: Vec<SpanRecord> = fixture_spans()
        .into_iter()
        .filter(|s| s.trace_id == TRACE_A)
        .collect();
    assert_eq!(store.get_trace(TRACE_A).await.unwrap(), expected_a);
    assert_eq!(
        store
            .get_trace(&TRACE_A.to_uppercase())
            .await
            .unwrap()
            .len(),
        4
    );
    assert!(store
        .get_trace("ffffffffffffffffffffffffffffffff")
        .await
        .unwrap()
        .is_empty());

    // find_traces.
    let all = store.find_traces(&TraceQuery::default()).await.unwrap();
    assert_eq!(trace_ids(&all), vec![TRACE_B, TRACE_A], "newest first");
    let a = &all[1];
    assert_eq!((a.span_count, a.error_count), (4, 1));
    assert_eq!(
        (a.root_service.as_str(), a.root_operation.as_str()),
        ("frontend", "GET /checkout")
    );
    assert_eq!(a.duration_nanos, 120 * MS);
    assert_eq!(
        a.services,
        vec!["backend".to_string(), "frontend".to_string()]
    );
    let q = |f: &dyn Fn(&mut TraceQuery)| {
        let mut q = TraceQuery::default();
        f(&mut q);
        q
    };
    let cases: Vec<(TraceQuery, Vec<&str>)> = vec![
        (q(&|q| q.service = Some("backend".into())), vec![TRACE_A]),
        (
            q(&|q| q.service = Some("frontend".into())),
            vec![TRACE_B, TRACE_A],
        ),
        (
            q(&|q| q.operation = Some("GET /health".into())),
            vec![TRACE_B],
        ),
        (
            q(&|q| q.attributes = BTreeMap::from([("http.method".into(), "POST".into())])),
            vec![TRACE_A],
        ),
        (
            q(&|q| q.attributes = BTreeMap::from([("http.status_code".into(), "200".into())])),
            vec![TRACE_A],
        ),
        (
            q(&|q| q.attributes = BTreeMap::from([("cache.hit".into(), "true".into())])),
            vec![TRACE_A],
        ),
        (
            q(&|q| q.attributes = BTreeMap::from([("http.method".into(), "PUT".into())])),
            vec![],
        ),
        (
            q(&|q| q.min_duration = Some(Duration::from_millis(100))),
            vec![TRACE_A],
        ),
        (
            q(&|q| q.max_duration = Some(Duration::from_millis(10))),
            vec![TRACE_B],
        ),
        (
            q(&|q| q.time = TimeRange::between(T0 + DAY - 1, T0 + 2 * DAY)),
            vec![TRACE_B],
        ),
        (
            q(&|q| {
                q.time = TimeRange {
                    start_unix_nano: None,
                    end_unix_nano: Some(T0 + 15 * MS),
                }
            }),
            vec![TRACE_A],
        ),
        (q(&|q| q.limit = 1), vec![TRACE_B]),
        (
            q(&|q| {
                q.service = Some("backend".into());
                q.operation = Some("GET /health".into());
            }),
            vec![],
        ),
    ];
    for (query, expected) in cases {
        let found = store.find_traces(&query).await.unwrap();
        assert_eq!(
            trace_ids(&found),
            expected,
            "{} find_traces {query:?}",
            store.backend()
        );
    }

    // services and operations.
    assert_eq!(
        store.services().await.unwrap(),
        vec!["backend".to_string(), "frontend".to_string()]
    );
    assert_eq!(
        store.operations("backend").await.unwrap(),
        vec![
            Operation::new("POST /charge", SpanKind::Server),
            Operation::new("db query", SpanKind::Internal)
        ]
    );
    assert_eq!(
        store.operations("frontend").await.unwrap(),
        vec![
            Operation::new("GET /checkout", SpanKind::Server),
            Operation::new("GET /health", SpanKind::Server),
            Operation::new("charge", SpanKind::Client),
        ]
    );
    assert!(store.operations("nobody").await.unwrap().is_empty());
}

/// LogReader over the fixture: every filter of `search_logs`, newest first.
pub async fn log_reader<S: LogReader + ?Sized>(store: &S) {
    // search_logs.
    let all_logs = store.search_logs(&LogQuery::default()).await.unwrap();
    let mut expected_logs = fixture_logs();
    expected_logs.reverse();
    assert_eq!(
        all_logs, expected_logs,
        "every log exactly once, newest first"
    );
    let lq = |f: &dyn Fn(&mut LogQuery)| {
        let mut q = LogQuery::default();
        f(&mut q);
        q
    };
    let cases: Vec<(LogQuery, Vec<&str>)> = vec![
        (
            lq(&|q| q.trace_id = Some(TRACE_A.into())),
            vec![
                "charge failed: deadlock",
                "charge slow",
                "checkout started for cart 42",
            ],
        ),
        (
            lq(&|q| q.service = Some("backend".into())),
            vec!["charge failed: deadlock", "charge slow"],
        ),
        (lq(&|q| q.level = Some("warn".into())), vec!["charge slow"]),
        (
            lq(&|q| q.text = Some("deadlock".into())),
            vec!["charge failed: deadlock"],
        ),
        (
            lq(&|q| q.text = Some("Checkout".into())),
            vec!["checkout started for cart 42"],
        ),
        (
            lq(&|q| q.time = TimeRange::between(T0 + DAY, T0 + 3 * DAY)),
            vec!["cache warmed without a trace", "health ok"],
        ),
        (
            lq(&|q| {
                q.service = Some("frontend".into());
                q.limit = 2;
            }),
            vec!["cache warmed without a trace", "health ok"],
        ),
        (
            lq(&|q| q.trace_id = Some("ffffffffffffffffffffffffffffffff".into())),
            vec![],
        ),
    ];
    for (query, expected) in cases {
        let found = store.search_logs(&query).await.unwrap();
        assert_eq!(
            bodies(&found),
            expected,
            "{} search_logs {query:?}",
            store.backend()
        );
    }
}

/// DependencyReader over the fixture: observed edges by time and declared ones; then an
/// error crossing services is written and counted on its edge.
pub async fn dependency_reader<S: SpanWriter + DependencyReader + ?Sized>(store: &S) {
    // dependencies: one observed frontend → backend call (the client span's child), declared
    // ones from the registry.
    let deps = store
        .dependencies(TimeRange::between(T0, T0 + DAY))
        .await
        .unwrap();
    assert_eq!(
        deps.observed,
        vec![DependencyEdge {
            caller: "frontend".into(),
            callee: "backend".into(),
            calls: 1,
            errors: 0
        }]
    );
    assert_eq!(
        deps.declared,
        vec![
            DeclaredDependency {
                service: "backend".into(),
                depends_on: "db".into()
            },
            DeclaredDependency {
                service: "frontend".into(),
                depends_on: "backend".into()
            },
        ]
    );
    let later = store
        .dependencies(TimeRange::between(T0 + DAY, T0 + 2 * DAY))
        .await
        .unwrap();
    assert!(later.observed.is_empty());

    // An error crossing services is counted on the edge.
    write_cross_service_error(store).await;
    let deps = store.dependencies(TimeRange::default()).await.unwrap();
    assert_eq!(
        deps.observed,
        vec![DependencyEdge {
            caller: "frontend".into(),
            callee: "backend".into(),
            calls: 2,
            errors: 1
        }]
    );
}

/// The second batch of the fixture: trace C, frontend calling backend three days later, the
/// backend's span failing. The dependency part writes it between its checks; the trace search
/// part expects it written.
pub async fn write_cross_service_error<S: SpanWriter + ?Sized>(store: &S) {
    let fe = service("frontend", "fe-1", &["backend"]);
    let be = service("backend", "be-1", &["db"]);
    let c = "5bf92f3577b34da6a3ce929d0e0e4736";
    let mut failed = span(
        c,
        "d000000000000002",
        Some("d000000000000001"),
        &be,
        "POST /charge",
        SpanKind::Server,
        T0 + 3 * DAY + MS,
        5,
    );
    failed.status = StatusCode::Error;
    let extra = vec![
        Document::Span(span(
            c,
            "d000000000000001",
            None,
            &fe,
            "charge",
            SpanKind::Client,
            T0 + 3 * DAY,
            10,
        )),
        Document::Span(failed),
    ];
    store.write(&extra).await.unwrap();
    store.refresh().await.unwrap();
}

/// StatusReader over the fixture's heartbeats: UP, DOWN and SILENT, an out-of-order replayed
/// heartbeat, a service filter and an explicit silence window.
pub async fn status_reader<S: StatusReader + ?Sized>(store: &S) {
    // service_status.
    let status = store
        .service_status(&StatusQuery {
            now_unix_nano: Some(T0 + 5500 * MS),
            ..Default::default()
        })
        .await
        .unwrap();
    let seen: Vec<(&str, &str, Liveness, u64)> = status
        .iter()
        .map(|s| {
            (
                s.entry.service.as_str(),
                s.entry.instance_id.as_str(),
                s.status,
                s.entry.last_heartbeat_unix_nano,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("backend", "be-1", Liveness::Up, T0 + 5000 * MS),
            ("frontend", "fe-1", Liveness::Silent, T0 + 1000 * MS),
            ("frontend", "fe-2", Liveness::Down, T0 + 2000 * MS),
        ]
    );
    assert_eq!(status[0].entry.dependencies, vec!["db".to_string()]);
    assert_eq!(status[0].entry.version.as_deref(), Some("1.2.3"));
    let only_fe = store
        .service_status(&StatusQuery {
            service: Some("frontend".into()),
            now_unix_nano: Some(T0 + 1500 * MS),
            silent_after: Some(Duration::from_secs(60)),
        })
        .await
        .unwrap();
    assert_eq!(
        only_fe.iter().map(|s| s.status).collect::<Vec<_>>(),
        vec![Liveness::Up, Liveness::Down]
    );
}

/// AlertStore: alerts upserted by id, listed newest `last_seen` first, filtered. (Needs the
/// writer's `refresh` too: Elasticsearch shows upserts once refreshed.)
pub async fn alert_store<S: SpanWriter + AlertStore + ?Sized>(store: &S) {
    // Alerts: upserted by id, newest last_seen first.
    store
        .upsert_alerts(&[
            alert("al-1", "backend", "firing", T0 + 10),
            alert("al-2", "frontend", "firing", T0 + 20),
        ])
        .await
        .unwrap();
    let mut resolved = alert("al-1", "backend", "resolved", T0 + 30);
    resolved.occurrences = 5;
    store.upsert_alerts(&[resolved.clone()]).await.unwrap();
    store.upsert_alerts(&[resolved.clone()]).await.unwrap();
    store.refresh().await.unwrap();
    let alerts = store.list_alerts(&AlertQuery::default()).await.unwrap();
    assert_eq!(
        alerts,
        vec![
            resolved.clone(),
            alert("al-2", "frontend", "firing", T0 + 20)
        ]
    );
    let firing = store
        .list_alerts(&AlertQuery {
            state: Some("firing".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        firing.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        vec!["al-2"]
    );
    let backend = store
        .list_alerts(&AlertQuery {
            service: Some("backend".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(backend, vec![resolved]);
}

/// The store filters a trace's records by span: the limit applies to the span's own records,
/// however many the rest of the trace has.
async fn logs_by_span<S: SpanWriter + LogReader + ?Sized>(store: &S) {
    let trace = "5aa0000000000000000000000000a001".to_string();
    let busy = service("busy", "busy-1", &[]);
    let base = T0 + 3 * DAY;
    let mut docs = Vec::new();
    // 300 records in the span of interest's siblings, then 12 in it, then 300 more.
    for i in 0..612u64 {
        let span = if (300..312).contains(&i) {
            "f000000000000001"
        } else {
            "f000000000000002"
        };
        docs.push(Document::Log(log(
            &busy,
            base + i * MS,
            "INFO",
            &format!("busy record {i}"),
            Some((&trace, span)),
            &[],
        )));
    }
    write_all(store, docs).await;
    let b = store.backend();
    let of_span = |span: &str, limit| LogQuery {
        trace_id: Some(trace.clone()),
        span_id: Some(span.to_string()),
        limit,
        ..Default::default()
    };
    let bodies = |logs: Vec<LogEntry>| logs.into_iter().map(|l| l.body).collect::<Vec<_>>();
    let five = store
        .search_logs(&of_span("f000000000000001", 5))
        .await
        .unwrap();
    assert_eq!(
        bodies(five),
        (307..312)
            .rev()
            .map(|i| format!("busy record {i}"))
            .collect::<Vec<_>>(),
        "{b}: the newest five of the span's records"
    );
    let all = store
        .search_logs(&of_span("f000000000000001", 100))
        .await
        .unwrap();
    assert_eq!(all.len(), 12, "{b}");
    assert!(all
        .iter()
        .all(|l| l.span_id.as_deref() == Some("f000000000000001")));
    // A span alone (without its trace) filters too; an unknown span finds nothing.
    let alone = store
        .search_logs(&LogQuery {
            span_id: Some("f000000000000001".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alone.len(), 12, "{b}");
    let none = store
        .search_logs(&of_span("f0000000000000ff", 100))
        .await
        .unwrap();
    assert!(none.is_empty(), "{b}");
}

/// Oldest first, by time then document id, continued by a cursor: paging through gives every
/// record once, in order, also when a page ends inside a run of records sharing one time and
/// when the records span two days.
async fn logs_oldest_first_page_by_page<S: SpanWriter + LogReader + ?Sized>(store: &S) {
    let svc = service("forward", "fw-1", &[]);
    let base = T0 + 5 * DAY - 10 * MS;
    let mut written = Vec::new();
    for i in 0..60u64 {
        // Three records per time; the times cross midnight.
        written.push(log(
            &svc,
            base + (i / 3) * MS,
            "INFO",
            &format!("forward record {i}"),
            None,
            &[],
        ));
    }
    // Written newest first, so that the store's insertion order is no help.
    write_all(
        store,
        written.iter().rev().cloned().map(Document::Log).collect(),
    )
    .await;
    let b = store.backend();
    let mut expected = written.clone();
    expected.sort_by_key(LogCursor::of);
    let query = LogQuery {
        service: Some("forward".into()),
        order: LogOrder::OldestFirst,
        limit: 7,
        ..Default::default()
    };
    let mut got = Vec::new();
    let mut after = None;
    for _ in 0..20 {
        let page = store
            .search_logs(&LogQuery {
                after: after.clone(),
                ..query.clone()
            })
            .await
            .unwrap();
        assert!(page.len() <= 7, "{b}");
        let Some(last) = page.last() else { break };
        after = Some(LogCursor::of(last));
        got.extend(page);
    }
    assert_eq!(got, expected, "{b}: every record once, oldest first");
    // The same with text (the embedded store probes its text index row by row).
    let mut got = Vec::new();
    let mut after = None;
    for _ in 0..20 {
        let page = store
            .search_logs(&LogQuery {
                text: Some("forward".into()),
                after: after.clone(),
                ..query.clone()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(LogCursor::of(last));
        got.extend(page);
    }
    assert_eq!(
        got, expected,
        "{b}: with text, every record once, oldest first"
    );
    // The time range still applies; the first page starts at its start.
    let ranged = store
        .search_logs(&LogQuery {
            time: TimeRange::between(base + 5 * MS, base + 6 * MS),
            limit: 100,
            ..query.clone()
        })
        .await
        .unwrap();
    assert_eq!(ranged, expected[15..21].to_vec(), "{b}");
    // Newest first remains the default.
    let newest = store
        .search_logs(&LogQuery {
            limit: 1,
            ..query.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        newest[0].time_unix_nano, base,
        "{b}: oldest first was asked"
    );
    let newest = store
        .search_logs(&LogQuery {
            service: Some("forward".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(newest[0].time_unix_nano, base + 19 * MS, "{b}");
}

/// LogReader's searches on records of their own (after the rest of the suite): a trace's
/// records filtered by span, and reading oldest first page by page.
pub async fn log_search<S: SpanWriter + LogReader + ?Sized>(store: &S) {
    logs_by_span(store).await;
    logs_oldest_first_page_by_page(store).await;
}

/// TraceReader's trace search on traces of its own (after the fixture and
/// [`write_cross_service_error`]): ordered by trace start, duration of the whole trace,
/// attributes on resources and events, pages of a trace.
pub async fn trace_search<S: SpanWriter + TraceReader + ?Sized>(store: &S) {
    find_traces_orders_by_trace_start(store).await;
    find_traces_applies_duration_to_the_trace(store).await;
    attributes_match_resource_and_event_attributes(store).await;
    get_trace_page_reads_a_window(store).await;
}

async fn write_all<S: SpanWriter + ?Sized>(store: &S, docs: Vec<Document>) {
    let outcomes = store.write(&docs).await.expect("write");
    assert_eq!(
        outcomes,
        vec![WriteOutcome::Written; docs.len()],
        "{}",
        store.backend()
    );
    store.refresh().await.expect("refresh");
}

async fn traces_of<S: TraceReader + ?Sized>(store: &S, f: &dyn Fn(&mut TraceQuery)) -> Vec<String> {
    let mut q = TraceQuery::default();
    f(&mut q);
    store
        .find_traces(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.trace_id)
        .collect()
}

/// Trace C starts first but has the latest span; trace D starts later with one short span.
/// Traces come newest trace start first, whichever of their spans matched.
async fn find_traces_orders_by_trace_start<S: SpanWriter + TraceReader + ?Sized>(store: &S) {
    if skipped(store, "TraceReader", Some("trace_start_order")) {
        return;
    }
    const TRACE_C: &str = "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c";
    const TRACE_D: &str = "0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d";
    let svc = service("ordering", "or-1", &[]);
    let at = T0 + 10 * DAY;
    let sec = 1000 * MS;
    let spans = vec![
        span(
            TRACE_C,
            "c100000000000001",
            None,
            &svc,
            "job",
            SpanKind::Server,
            at,
            60_000,
        ),
        span(
            TRACE_C,
            "c100000000000002",
            Some("c100000000000001"),
            &svc,
            "late step",
            SpanKind::Internal,
            at + 50 * sec,
            100,
        ),
        span(
            TRACE_D,
            "d100000000000001",
            None,
            &svc,
            "job",
            SpanKind::Server,
            at + 10 * sec,
            1000,
        ),
    ];
    write_all(store, spans.into_iter().map(Document::Span).collect()).await;
    let by_service = |limit| {
        move |q: &mut TraceQuery| {
            q.service = Some("ordering".into());
            q.limit = limit;
        }
    };
    let b = store.backend();
    assert_eq!(
        traces_of(store, &by_service(0)).await,
        vec![TRACE_D, TRACE_C],
        "{b}"
    );
    assert_eq!(traces_of(store, &by_service(1)).await, vec![TRACE_D], "{b}");
    assert_eq!(
        traces_of(store, &|q| q.operation = Some("late step".into())).await,
        vec![TRACE_C],
        "{b}"
    );
    let found = store
        .find_traces(&TraceQuery {
            service: Some("ordering".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found[1].start_unix_nano, at, "{b}");
    assert_eq!(found[1].duration_nanos, 60_000 * MS, "{b}");
    assert_eq!(found[1].span_count, 2, "{b}");
}

/// Trace E has two 10 ms spans 200 ms apart: the trace lasts 200 ms though no span does.
async fn find_traces_applies_duration_to_the_trace<S: SpanWriter + TraceReader + ?Sized>(
    store: &S,
) {
    if skipped(store, "TraceReader", Some("trace_level_duration")) {
        return;
    }
    const TRACE_E: &str = "0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e";
    const TRACE_F: &str = "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f";
    let svc = service("durations", "du-1", &[]);
    let at = T0 + 11 * DAY;
    write_all(
        store,
        vec![
            span(
                TRACE_E,
                "e100000000000001",
                None,
                &svc,
                "start",
                SpanKind::Server,
                at,
                10,
            ),
            span(
                TRACE_E,
                "e100000000000002",
                Some("e100000000000001"),
                &svc,
                "finish",
                SpanKind::Internal,
                at + 190 * MS,
                10,
            ),
            span(
                TRACE_F,
                "f100000000000001",
                None,
                &svc,
                "quick",
                SpanKind::Server,
                at + DAY / 2,
                5,
            ),
        ]
        .into_iter()
        .map(Document::Span)
        .collect(),
    )
    .await;
    let b = store.backend();
    let within = |min: Option<u64>, max: Option<u64>| {
        move |q: &mut TraceQuery| {
            q.service = Some("durations".into());
            q.min_duration = min.map(Duration::from_millis);
            q.max_duration = max.map(Duration::from_millis);
        }
    };
    assert_eq!(
        traces_of(store, &within(Some(150), None)).await,
        vec![TRACE_E],
        "{b}"
    );
    assert_eq!(
        traces_of(store, &within(Some(150), Some(250))).await,
        vec![TRACE_E],
        "{b}"
    );
    assert_eq!(
        traces_of(store, &within(None, Some(50))).await,
        vec![TRACE_F],
        "{b}"
    );
    assert!(
        traces_of(store, &within(Some(201), None)).await.is_empty(),
        "{b}"
    );
    // An operation whose span is short selects the trace, and the trace's duration decides.
    assert_eq!(
        traces_of(store, &|q| {
            q.operation = Some("finish".into());
            q.min_duration = Some(Duration::from_millis(200));
        })
        .await,
        vec![TRACE_E],
        "{b}"
    );
    // The time range applies to the trace start: E's late span alone is not in range.
    assert!(
        traces_of(store, &|q| {
            q.service = Some("durations".into());
            q.time = TimeRange::between(at + 100 * MS, at + 300 * MS);
        })
        .await
        .is_empty(),
        "{b}"
    );
    let e = store
        .find_traces(&TraceQuery {
            operation: Some("start".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(e[0].duration_nanos, 200 * MS, "{b}");
}

/// Attribute filters match a span's own attributes, its resource's and its events', all on
/// one span together with the service and operation.
async fn attributes_match_resource_and_event_attributes<S: SpanWriter + TraceReader + ?Sized>(
    store: &S,
) {
    if skipped(store, "TraceReader", Some("resource_and_event_attributes")) {
        return;
    }
    let b = store.backend();
    let attrs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // The root span's event says items=3.
    assert_eq!(
        traces_of(store, &|q| q.attributes = attrs(&[("items", "3")])).await,
        vec![TRACE_A],
        "{b}"
    );
    assert_eq!(
        traces_of(store, &|q| {
            q.attributes = attrs(&[("items", "3"), ("http.method", "GET")]);
            q.service = Some("frontend".into());
        })
        .await,
        vec![TRACE_A],
        "{b}"
    );
    // ... but on a frontend span, not a backend one.
    assert!(
        traces_of(store, &|q| {
            q.attributes = attrs(&[("items", "3")]);
            q.service = Some("backend".into());
        })
        .await
        .is_empty(),
        "{b}"
    );
    // Span and event attributes must hold on the same span: POST is on the backend's span.
    assert!(
        traces_of(store, &|q| q.attributes =
            attrs(&[("items", "3"), ("http.method", "POST")]))
        .await
        .is_empty(),
        "{b}"
    );
    // Resource attributes: the backend instance's host, and its service.instance.id.
    assert_eq!(
        traces_of(store, &|q| {
            q.attributes = attrs(&[("host.name", "vm1"), ("http.method", "POST")]);
        })
        .await,
        vec![TRACE_A],
        "{b}"
    );
    assert_eq!(
        traces_of(store, &|q| q.attributes =
            attrs(&[("service.instance.id", "be-1")]))
        .await,
        vec!["5bf92f3577b34da6a3ce929d0e0e4736", TRACE_A],
        "{b}"
    );
    assert!(
        traces_of(store, &|q| q.attributes = attrs(&[("host.name", "vm2")]))
            .await
            .is_empty(),
        "{b}"
    );
}

/// A trace read a page at a time, after a (start, span id) cursor.
async fn get_trace_page_reads_a_window<S: SpanWriter + TraceReader + ?Sized>(store: &S) {
    if skipped(store, "TraceReader", Some("trace_pages")) {
        return;
    }
    let b = store.backend();
    let all = store.get_trace(TRACE_A).await.unwrap();
    assert_eq!(all.len(), 4);
    let first = store.get_trace_page(TRACE_A, None, 3).await.unwrap();
    assert_eq!(first, all[..3].to_vec(), "{b}");
    let cursor = |s: &SpanRecord| SpanCursor {
        start_unix_nano: s.start_unix_nano,
        span_id: s.span_id.clone(),
    };
    let rest = store
        .get_trace_page(&TRACE_A.to_uppercase(), Some(&cursor(&first[2])), 3)
        .await
        .unwrap();
    assert_eq!(rest, all[3..].to_vec(), "{b}");
    let one = store
        .get_trace_page(TRACE_A, Some(&cursor(&all[0])), 1)
        .await
        .unwrap();
    assert_eq!(one, vec![all[1].clone()], "{b}");
    assert!(
        store
            .get_trace_page(TRACE_A, Some(&cursor(&all[3])), 10)
            .await
            .unwrap()
            .is_empty(),
        "{b}"
    );
    assert!(
        store
            .get_trace_page("ffffffffffffffffffffffffffffffff", None, 10)
            .await
            .unwrap()
            .is_empty(),
        "{b}"
    );
    // Spans sharing a start are ordered by span id, and the cursor keeps to that order.
    const TRACE_G: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
    let svc = service("paging", "pg-1", &[]);
    let at = T0 + 12 * DAY;
    let spans: Vec<SpanRecord> = (0..7u64)
        .map(|i| {
            span(
                TRACE_G,
                &format!("{:016x}", 0x70 - i),
                None,
                &svc,
                "tick",
                SpanKind::Internal,
                at + (i / 3) * MS,
                1,
            )
        })
        .collect();
    write_all(store, spans.into_iter().map(Document::Span).collect()).await;
    let whole = store.get_trace(TRACE_G).await.unwrap();
    let mut paged = Vec::new();
    let mut after: Option<SpanCursor> = None;
    loop {
        let page = store
            .get_trace_page(TRACE_G, after.as_ref(), 2)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2, "{b}");
        after = Some(cursor(page.last().unwrap()));
        paged.extend(page);
    }
    assert_eq!(paged, whole, "{b}");
    assert_eq!(whole.len(), 7);
}

/// `YYYY-MM-DD` of a day since the Unix epoch.
pub fn day_name(day: u64) -> String {
    let z = day as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Retention by age and by size, on an empty store: a trace, a log and a heartbeat on each
/// of the last four days, an old alert and a new one. Retention bounds every kind of data,
/// so this part checks each role's reads after a drop and needs a complete [`Store`].
pub async fn retention(store: Arc<dyn Store>) {
    if skipped(&*store, "Retention", None) {
        return;
    }
    let b = store.backend();
    let now = dlog_storage::now_unix_nano();
    let today = now / DAY;
    let svc = |k: u64| service("keeper", &format!("keep-{k}"), &[]);
    let trace = |k: u64| format!("{:032x}", 0x7e7e_0000 + k);
    let mut docs = Vec::new();
    for k in 0..4u64 {
        let t = now - k * DAY;
        docs.push(Document::Span(span(
            &trace(k),
            "00000000000000a1",
            None,
            &svc(k),
            "keep",
            SpanKind::Server,
            t,
            5,
        )));
        docs.push(Document::Log(log(
            &svc(k),
            t,
            "INFO",
            &format!("kept for day minus {k}"),
            None,
            &[],
        )));
        docs.push(Document::Heartbeat(heartbeat(
            &svc(k),
            HeartbeatKind::Heartbeat,
            ServiceStatus::Up,
            t,
        )));
    }
    write_all(&*store, docs).await;
    store
        .upsert_alerts(&[
            alert("old", "keeper", "resolved", now - 3 * DAY),
            alert("new", "keeper", "firing", now),
        ])
        .await
        .unwrap();
    store.refresh().await.unwrap();

    let usage = store.usage().await.unwrap();
    let names: Vec<String> = usage.partitions.iter().map(|p| p.name.clone()).collect();
    let expected: Vec<String> = (0..4).rev().map(|k| day_name(today - k)).collect();
    assert_eq!(names, expected, "{b}: one partition per day, oldest first");
    assert_eq!(usage.oldest_unix_nano, Some((today - 3) * DAY), "{b}");
    assert!(
        usage.partitions.iter().all(|p| p.bytes > 0),
        "{b}: {usage:?}"
    );
    assert!(
        usage.bytes_used >= usage.partitions.iter().map(|p| p.bytes).sum::<u64>(),
        "{b}"
    );

    // By age: every day older than the start of the day before yesterday goes.
    let keep_from = (today - 2) * DAY;
    let report = store
        .apply_retention(
            &RetentionPolicy {
                max_age: Some(Duration::from_nanos(now - keep_from)),
                max_bytes: None,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(report.dropped, vec![day_name(today - 3)], "{b}");
    assert_eq!(report.usage.partitions.len(), 3, "{b}");
    store.refresh().await.unwrap();
    assert!(store.get_trace(&trace(3)).await.unwrap().is_empty(), "{b}");
    assert_eq!(store.get_trace(&trace(2)).await.unwrap().len(), 1, "{b}");
    let kept = |q: LogQuery| {
        let store = Arc::clone(&store);
        async move {
            store
                .search_logs(&q)
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.body)
                .collect::<Vec<_>>()
        }
    };
    let all = LogQuery {
        service: Some("keeper".into()),
        ..Default::default()
    };
    assert_eq!(
        kept(all.clone()).await,
        vec![
            "kept for day minus 0",
            "kept for day minus 1",
            "kept for day minus 2"
        ],
        "{b}"
    );
    let traces = store
        .find_traces(&TraceQuery {
            service: Some("keeper".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        traces
            .iter()
            .map(|t| t.trace_id.clone())
            .collect::<Vec<_>>(),
        vec![trace(0), trace(1), trace(2)],
        "{b}"
    );
    // Alerts and registry entries last seen before the cutoff go with the data.
    let alerts = store.list_alerts(&AlertQuery::default()).await.unwrap();
    assert_eq!(
        alerts.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        vec!["new"],
        "{b}"
    );
    let status = store
        .service_status(&StatusQuery {
            service: Some("keeper".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        status
            .iter()
            .map(|s| s.entry.instance_id.as_str())
            .collect::<Vec<_>>(),
        vec!["keep-0", "keep-1", "keep-2"],
        "{b}"
    );

    // By size: one byte under the current use drops the oldest day only.
    let before = store.usage().await.unwrap();
    let report = store
        .apply_retention(
            &RetentionPolicy {
                max_age: None,
                max_bytes: Some(before.bytes_used - 1),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(report.dropped, vec![day_name(today - 2)], "{b}");
    assert!(report.usage.bytes_used < before.bytes_used, "{b}");
    // A budget nothing fits in drops every day but today's.
    let report = store
        .apply_retention(
            &RetentionPolicy {
                max_age: None,
                max_bytes: Some(1),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(report.dropped, vec![day_name(today - 1)], "{b}");
    assert_eq!(
        report
            .usage
            .partitions
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>(),
        vec![day_name(today)],
        "{b}: today's partition stays whatever its size"
    );
    store.refresh().await.unwrap();
    assert_eq!(kept(all).await, vec!["kept for day minus 0"], "{b}");
    assert_eq!(store.get_trace(&trace(0)).await.unwrap().len(), 1, "{b}");
    // Writing goes on into today's partition.
    write_all(
        &*store,
        vec![Document::Span(span(
            &trace(9),
            "00000000000000a2",
            None,
            &svc(0),
            "keep",
            SpanKind::Server,
            now,
            5,
        ))],
    )
    .await;
    assert_eq!(store.get_trace(&trace(9)).await.unwrap().len(), 1, "{b}");
}
