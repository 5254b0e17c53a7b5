//! The storage conformance suite: every write and query of the `Store` trait, run against
//! each backend (as Jaeger's storage integration tests do).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dlog_core::model::{
    Heartbeat, HeartbeatKind, LogEntry, ServiceInfo, ServiceStatus, SpanEvent, SpanKind, SpanLink,
    SpanRecord, StatusCode,
};
use dlog_storage::{
    AlertDoc, AlertQuery, DeclaredDependency, DependencyEdge, Document, Liveness, LogQuery,
    Operation, StatusQuery, Store, TimeRange, TraceQuery, WriteOutcome,
};
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

/// Runs every write and query against `store`, which must be empty.
pub async fn run(store: Arc<dyn Store>) {
    let docs = all_docs();
    // Written twice: the replay must overwrite, never duplicate.
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

    find_traces_orders_by_trace_start(&store).await;
}

/// Trace C starts first but has the latest matching span; trace D starts later with only
/// early spans. Whichever span matched, a trace is reported with its own start, and traces
/// whose matching spans are their roots come newest start first.
async fn find_traces_orders_by_trace_start(store: &Arc<dyn Store>) {
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
    let docs: Vec<Document> = spans.into_iter().map(Document::Span).collect();
    let outcomes = store.write(&docs).await.expect("write");
    assert_eq!(outcomes, vec![WriteOutcome::Written; docs.len()]);
    store.refresh().await.expect("refresh");
    let by_service = |limit| TraceQuery {
        service: Some("ordering".into()),
        limit,
        ..Default::default()
    };
    let found = store.find_traces(&by_service(0)).await.unwrap();
    let mut both = trace_ids(&found);
    both.sort();
    assert_eq!(both, vec![TRACE_C, TRACE_D], "{}", store.backend());
    let c = found.iter().find(|t| t.trace_id == TRACE_C).unwrap();
    assert_eq!((c.start_unix_nano, c.duration_nanos), (at, 60_000 * MS));
    let found = store.find_traces(&by_service(1)).await.unwrap();
    assert_eq!(found.len(), 1, "{}", store.backend());
    // The late step matches only C; C's start (not the step's) is what is reported.
    let late = store
        .find_traces(&TraceQuery {
            operation: Some("late step".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(trace_ids(&late), vec![TRACE_C], "{}", store.backend());
    assert_eq!(late[0].start_unix_nano, at);
    // Only the roots match: C's root started first, so D is newer.
    let roots = store
        .find_traces(&TraceQuery {
            operation: Some("job".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        trace_ids(&roots),
        vec![TRACE_D, TRACE_C],
        "{}",
        store.backend()
    );
}
