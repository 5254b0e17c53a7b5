//! What the viewer tests share: a store holding known traces, logs, heartbeats and alerts,
//! and a viewer serving it on a free port.
#![allow(dead_code)]

pub mod webdriver;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dlog_core::model::{
    Heartbeat, HeartbeatKind, LogEntry, ServiceInfo, ServiceStatus, SpanEvent, SpanKind, SpanLink,
    SpanRecord, StatusCode,
};
use dlog_storage::{open_store, AlertDoc, Document, Store, StoreConfig};
use dlog_viewer::{RunningViewer, ViewerConfig, ViewerOptions};
use serde_json::{json, Value};

pub const MS: u64 = 1_000_000;

/// The checkout trace: frontend → backend → db (db fails).
pub const CHECKOUT: &str = "0af7651916cd43dd8448eb211c80319c";
/// A short health-check trace.
pub const HEALTH: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// A trace whose names, attributes and logs hold markup.
pub const HOSTILE: &str = "5ce929d0e0e47364bf92f3577b34da6a";

pub const ROOT: &str = "a000000000000001";
pub const CLIENT: &str = "a000000000000002";
pub const CHARGE: &str = "b000000000000003";
pub const QUERY: &str = "c000000000000004";
pub const HEALTH_SPAN: &str = "d000000000000005";
pub const HOSTILE_SPAN: &str = "e000000000000006";

/// Markup that would run script if it were ever inserted as HTML.
pub const IMG_XSS: &str = "<img src=x onerror=\"window.__pwned=(window.__pwned||0)+1\">";
pub const SCRIPT_XSS: &str = "<script>window.__pwned=(window.__pwned||0)+1</script>";

pub fn service(name: &str, deps: &[&str]) -> ServiceInfo {
    ServiceInfo {
        name: name.into(),
        version: Some("1.4.2".into()),
        instance_id: Some(format!("{name}-1")),
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
        scope: "shop".into(),
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
    at: Option<(&str, &str)>,
) -> LogEntry {
    LogEntry {
        time_unix_nano: time,
        severity_number: match level {
            "ERROR" => 17,
            "WARN" => 13,
            _ => 9,
        },
        level: level.into(),
        body: body.into(),
        trace_id: at.map(|a| a.0.to_string()),
        span_id: at.map(|a| a.1.to_string()),
        event_name: None,
        service: svc.clone(),
        attributes: BTreeMap::new(),
    }
}

/// What [`seed`] wrote.
pub struct Seeded {
    /// Start of the checkout trace, ns.
    pub checkout_start: u64,
}

/// The spans of the fixture traces, starting `base` ns.
pub fn spans(base: u64) -> Vec<SpanRecord> {
    let frontend = service("frontend", &["backend", "cache"]);
    let backend = service("backend", &[]);
    let db = service("db", &[]);
    let mut root = span(
        CHECKOUT,
        ROOT,
        None,
        &frontend,
        "GET /checkout",
        SpanKind::Server,
        base,
        400,
    );
    root.attributes.insert("http.method".into(), json!("GET"));
    root.attributes
        .insert("http.status_code".into(), json!(500));
    let mut client = span(
        CHECKOUT,
        CLIENT,
        Some(ROOT),
        &frontend,
        "POST /charge",
        SpanKind::Client,
        base + 20 * MS,
        300,
    );
    client
        .attributes
        .insert("peer.service".into(), json!("backend"));
    let mut charge = span(
        CHECKOUT,
        CHARGE,
        Some(CLIENT),
        &backend,
        "charge card",
        SpanKind::Server,
        base + 40 * MS,
        200,
    );
    charge.attributes.insert("user.id".into(), json!("u-42"));
    charge.attributes.insert("retry".into(), json!(true));
    charge.attributes.insert("amount".into(), json!(12.5));
    charge
        .attributes
        .insert("long.value".into(), json!("x".repeat(500)));
    charge.events.push(SpanEvent {
        name: "card authorised".into(),
        time_unix_nano: base + 60 * MS,
        attributes: BTreeMap::from([("auth.code".to_string(), json!("A1"))]),
    });
    let mut query = span(
        CHECKOUT,
        QUERY,
        Some(CHARGE),
        &db,
        "INSERT payments",
        SpanKind::Server,
        base + 100 * MS,
        100,
    );
    query.status = StatusCode::Error;
    query.status_message = "deadlock detected".into();
    query.links.push(SpanLink {
        trace_id: HEALTH.into(),
        span_id: HEALTH_SPAN.into(),
    });
    let health = span(
        HEALTH,
        HEALTH_SPAN,
        None,
        &frontend,
        "GET /health",
        SpanKind::Server,
        base - 60_000 * MS,
        5,
    );
    let hostile_svc = service("edge", &[]);
    let mut hostile = span(
        HOSTILE,
        HOSTILE_SPAN,
        None,
        &hostile_svc,
        IMG_XSS,
        SpanKind::Server,
        base - 120_000 * MS,
        10,
    );
    hostile.attributes.insert("note".into(), json!(SCRIPT_XSS));
    hostile
        .attributes
        .insert("<b onmouseover=alert(1)>key</b>".into(), json!(IMG_XSS));
    vec![root, client, charge, query, health, hostile]
}

pub fn logs(base: u64) -> Vec<LogEntry> {
    let backend = service("backend", &[]);
    let db = service("db", &[]);
    let edge = service("edge", &[]);
    vec![
        log(
            &backend,
            base + 50 * MS,
            "INFO",
            "charging card for u-42",
            Some((CHECKOUT, CHARGE)),
        ),
        log(
            &db,
            base + 150 * MS,
            "ERROR",
            "deadlock detected on payments",
            Some((CHECKOUT, QUERY)),
        ),
        log(
            &backend,
            base - 30_000 * MS,
            "INFO",
            "backend warmed up",
            None,
        ),
        log(
            &edge,
            base - 110_000 * MS,
            "WARN",
            IMG_XSS,
            Some((HOSTILE, HOSTILE_SPAN)),
        ),
        log(
            &edge,
            base - 109_000 * MS,
            "WARN",
            SCRIPT_XSS,
            Some((HOSTILE, HOSTILE_SPAN)),
        ),
    ]
}

pub fn alert(base: u64) -> AlertDoc {
    AlertDoc {
        id: "alert-db-errors".into(),
        rule: "error_rate".into(),
        severity: "critical".into(),
        state: "firing".into(),
        service: "db".into(),
        instance: Some("db-1".into()),
        summary: "db: 100% of spans failed in the last minute".into(),
        first_seen_unix_nano: base,
        last_seen_unix_nano: base + 200 * MS,
        occurrences: 3,
        example_trace_ids: vec![CHECKOUT.into()],
        root_cause: Some("db".into()),
        incident_id: Some("incident-1".into()),
        labels: BTreeMap::new(),
    }
}

/// Writes the fixture traces, logs, heartbeats (every service UP) and one firing alert,
/// with the checkout trace starting a minute ago.
pub async fn seed(store: &dyn Store) -> Seeded {
    let now = dlog_storage::now_unix_nano();
    let base = now - 60_000 * MS;
    let mut docs: Vec<Document> = spans(base).into_iter().map(Document::Span).collect();
    docs.extend(logs(base).into_iter().map(Document::Log));
    for (name, deps) in [
        ("frontend", vec!["backend", "cache"]),
        ("backend", vec![]),
        ("db", vec![]),
    ] {
        docs.push(Document::Heartbeat(Heartbeat {
            kind: HeartbeatKind::Heartbeat,
            status: ServiceStatus::Up,
            time_unix_nano: now,
            interval_ms: Some(60_000),
            service: service(name, &deps),
        }));
    }
    let outcomes = store.write(&docs).await.expect("write fixtures");
    assert!(
        outcomes
            .iter()
            .all(|o| *o == dlog_storage::WriteOutcome::Written),
        "{outcomes:?}"
    );
    store
        .upsert_alerts(&[alert(base)])
        .await
        .expect("write alert");
    store.refresh().await.expect("refresh");
    Seeded {
        checkout_start: base,
    }
}

/// The embedded store in a fresh directory.
pub async fn embedded() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    (store, dir)
}

/// Elasticsearch (osmem, or `ELASTICSEARCH_URL`) with a fresh index prefix.
pub async fn elastic() -> (Arc<dyn Store>, dlog_testkit::Elastic) {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let config = StoreConfig::elasticsearch(&elastic.url)
        .with_index_prefix(dlog_testkit::unique_name("viewer"));
    let store = open_store(&config).await.unwrap();
    (store, elastic)
}

/// A viewer over `store` on a free port, polling fast for live tails.
pub async fn viewer(store: Arc<dyn Store>, config: ViewerConfig) -> (RunningViewer, String) {
    let config = ViewerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        options: ViewerOptions {
            tail_poll: Duration::from_millis(100),
            ..config.options.clone()
        },
        ..config
    };
    let viewer = dlog_viewer::start(config, store).await.unwrap();
    let base = format!("http://{}", viewer.addr());
    (viewer, base)
}

/// GET `url`, returning the status and the JSON body.
pub async fn get(url: &str) -> (u16, Value) {
    let res = reqwest::get(url).await.unwrap();
    let status = res.status().as_u16();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Polls `check` until it returns `Some`, failing after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
