//! Issue 2, test 1: two instrumented services talk over real HTTP and export to the real
//! collector bridge, which writes to a real (tansu) Kafka broker. The test reads the three
//! topics back and checks what a user would: one trace across both services with the right
//! parent/child link, logs stamped with the right ids and exact fields, registration and
//! heartbeats, and record keys.
//!
//! The two services share this process, so each gets its own `Telemetry` (providers,
//! resource, subscriber) and its own Tokio runtime whose threads run with that service's
//! subscriber as their default. Nothing is installed globally.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use distributed_logger::http::{trace_server, RequestBuilderExt};
use distributed_logger::{names, DistributedLogger, Telemetry};
use dlog_core::encoding::{decode_logs, decode_traces, Encoding};
use dlog_core::model::{
    logs_from_request, spans_from_request, Heartbeat, HeartbeatKind, LogEntry, LogItem,
    ServiceStatus, SpanKind, SpanRecord,
};
use dlog_core::source::RawRecord;
use dlog_testkit::{read_topic, unique_name, Kafka};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::json;
use tracing::instrument;

const HEARTBEAT: Duration = Duration::from_millis(200);
const READ_WITHIN: Duration = Duration::from_secs(30);

thread_local! {
    static SERVICE_DISPATCH: RefCell<Option<tracing::dispatcher::DefaultGuard>> = const { RefCell::new(None) };
}

/// A runtime whose threads all run with `dispatch` as their default subscriber.
fn service_runtime(name: &str, dispatch: tracing::Dispatch) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .on_thread_start(move || {
            let guard = tracing::dispatcher::set_default(&dispatch);
            SERVICE_DISPATCH.with(|slot| *slot.borrow_mut() = Some(guard));
        })
        .on_thread_stop(|| {
            SERVICE_DISPATCH.with(|slot| slot.borrow_mut().take());
        })
        .build()
        .unwrap()
}

/// Starts `app` on 127.0.0.1:0 inside `runtime`.
fn serve(runtime: &tokio::runtime::Runtime, app: Router) -> SocketAddr {
    let listener = runtime
        .block_on(async { tokio::net::TcpListener::bind("127.0.0.1:0").await })
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await });
    addr
}

// ---- service Y: inventory ----

#[derive(Clone)]
struct Inventory {
    logger: DistributedLogger,
}

async fn reserve_handler(State(state): State<Inventory>, Path(order): Path<u64>) -> String {
    reserve(&state, order).await
}

#[instrument(skip(state))]
async fn reserve(state: &Inventory, order: u64) -> String {
    tracing::info!(order, "reserving stock");
    state
        .logger
        .warn_with("stock lookup slow", 250, 200, [("warehouse", "north")]);
    format!("reserved {order}")
}

// ---- service X: checkout, calls Y ----

#[derive(Clone)]
struct Checkout {
    logger: DistributedLogger,
    client: reqwest::Client,
    inventory_url: String,
    inventory_name: String,
}

async fn checkout_handler(State(state): State<Checkout>, Path(order): Path<u64>) -> String {
    place_order(&state, order).await
}

#[instrument(skip(state))]
async fn place_order(state: &Checkout, order: u64) -> String {
    tracing::info!(order, "placing order");
    let answer = call_inventory(state, order).await;
    state.logger.error(
        "payment declined",
        "PAY-402",
        "card expired",
        Some(state.inventory_name.as_str()),
    );
    answer
}

#[instrument(skip(state))]
async fn call_inventory(state: &Checkout, order: u64) -> String {
    let started = std::time::Instant::now();
    let result = state
        .client
        .get(format!("{}/reserve/{order}", state.inventory_url))
        .send_traced(&state.inventory_name)
        .await;
    let ok = matches!(&result, Ok(r) if r.status().is_success());
    state
        .logger
        .log_service_call(&state.inventory_name, ok, started.elapsed());
    match result {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(e) => format!("inventory failed: {e}"),
    }
}

// ---- reading Kafka back ----

/// Key of the end markers `read_to_end` writes.
const END_KEY: &[u8] = b"dlog-test-end-of-topic";

/// Every record of `topic` written before this call, read to a known end: a marker is
/// produced to each partition after the writers are done (both services shut down with
/// complete reports, so the bridge had every record acknowledged), and the topic is read
/// until each partition's marker arrives. Exact counts over the result therefore see any
/// duplicate. (Watermarks are no end: tansu misreports them.) The markers are left out.
fn read_to_end(brokers: &str, topic: &str) -> Vec<RawRecord> {
    let marker = unique_name("end").into_bytes();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    assert!(!partitions.is_empty(), "{topic} has partitions");
    for partition in &partitions {
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(*partition)
                    .key(END_KEY)
                    .payload(&marker),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let is_marker = |r: &RawRecord| r.key.as_deref() == Some(END_KEY) && r.payload == marker;
    let records = read_topic(brokers, topic, READ_WITHIN, |records| {
        partitions
            .iter()
            .all(|p| records.iter().any(|r| r.partition == *p && is_marker(r)))
    })
    .unwrap();
    for partition in &partitions {
        assert!(
            records
                .iter()
                .any(|r| r.partition == *partition && is_marker(r)),
            "{topic}: partition {partition} was not read to its end within {READ_WITHIN:?}"
        );
    }
    records
        .into_iter()
        .filter(|r| r.key.as_deref() != Some(END_KEY))
        .collect()
}

fn encoding(record: &RawRecord) -> Encoding {
    record
        .headers
        .iter()
        .find(|(k, _)| k == names::ENCODING_HEADER)
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or_default()
}

fn key(record: &RawRecord) -> String {
    String::from_utf8(record.key.clone().unwrap_or_default()).unwrap()
}

fn decode_spans(records: &[RawRecord]) -> Vec<(String, SpanRecord)> {
    records
        .iter()
        .flat_map(|r| {
            let request = decode_traces(encoding(r), &r.payload).unwrap();
            spans_from_request(&request)
                .into_iter()
                .map(move |s| (key(r), s))
        })
        .collect()
}

fn decode_log_items(records: &[RawRecord]) -> Vec<(String, LogItem)> {
    records
        .iter()
        .flat_map(|r| {
            let request = decode_logs(encoding(r), &r.payload).unwrap();
            logs_from_request(&request)
                .into_iter()
                .map(move |l| (key(r), l))
        })
        .collect()
}

fn log_entries(records: &[RawRecord]) -> Vec<(String, LogEntry)> {
    decode_log_items(records)
        .into_iter()
        .filter_map(|(k, item)| match item {
            LogItem::Log(entry) => Some((k, entry)),
            LogItem::Heartbeat(_) => None,
        })
        .collect()
}

fn heartbeats(records: &[RawRecord]) -> Vec<(String, Heartbeat)> {
    decode_log_items(records)
        .into_iter()
        .filter_map(|(k, item)| match item {
            LogItem::Heartbeat(hb) => Some((k, hb)),
            LogItem::Log(_) => None,
        })
        .collect()
}

fn count_heartbeats(records: &[RawRecord], instance: &str) -> usize {
    heartbeats(records)
        .iter()
        .filter(|(_, hb)| {
            hb.service.instance_key() == instance && hb.kind == HeartbeatKind::Heartbeat
        })
        .count()
}

#[test]
fn two_services_one_trace_through_the_bridge_into_kafka() {
    let kafka = Kafka::start().unwrap();
    let trace_topic = unique_name("trace_logs");
    let logs_topic = unique_name("service_logs");
    let heartbeat_topic = unique_name("heartbeat_logs");

    // The bridge runs on a runtime of its own (no service subscriber on its threads).
    let infra = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bridge = infra
        .block_on(collector_bridge::start(collector_bridge::Config {
            kafka_brokers: kafka.brokers.clone(),
            otlp_grpc: "127.0.0.1:0".parse().unwrap(),
            otlp_http: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            trace_logs_topic: trace_topic.clone(),
            service_logs_topic: logs_topic.clone(),
            heartbeat_logs_topic: heartbeat_topic.clone(),
            create_topics: true,
            topic_partitions: 3,
            ..collector_bridge::Config::default()
        }))
        .unwrap();
    let endpoint = format!("http://{}", bridge.grpc_addr());

    let y_name = unique_name("inventory");
    let x_name = unique_name("checkout");
    let y_instance = format!("{y_name}-1");
    let x_instance = format!("{x_name}-1");
    let telemetry = |name: &str, instance: &str, deps: Vec<String>| {
        Telemetry::builder(name)
            .with_version("0.1.0")
            .with_instance_id(instance)
            .with_dependencies(deps)
            .with_endpoint(endpoint.clone())
            .with_heartbeat_interval(HEARTBEAT)
            .with_export_interval(Duration::from_millis(200))
            .with_stderr(false)
            .build()
            .unwrap()
    };
    let y = telemetry(&y_name, &y_instance, vec![]);
    let x = telemetry(&x_name, &x_instance, vec![y_name.clone()]);

    let y_runtime = service_runtime("svc-y", y.dispatch().clone());
    let y_addr = serve(
        &y_runtime,
        Router::new()
            .route("/reserve/{order}", get(reserve_handler))
            .layer(axum::middleware::from_fn(trace_server))
            .with_state(Inventory { logger: y.logger() }),
    );
    let x_runtime = service_runtime("svc-x", x.dispatch().clone());
    let x_addr = serve(
        &x_runtime,
        Router::new()
            .route("/checkout/{order}", get(checkout_handler))
            .layer(axum::middleware::from_fn(trace_server))
            .with_state(Checkout {
                logger: x.logger(),
                client: reqwest::Client::new(),
                inventory_url: format!("http://{y_addr}"),
                inventory_name: y_name.clone(),
            }),
    );

    // A plain client (no telemetry) calls X, which calls Y.
    let body = infra
        .block_on(async {
            reqwest::get(format!("http://{x_addr}/checkout/42"))
                .await?
                .text()
                .await
        })
        .unwrap();
    assert_eq!(body, "reserved 42");

    // Heartbeats flow while both services run.
    read_topic(&kafka.brokers, &heartbeat_topic, READ_WITHIN, |records| {
        count_heartbeats(records, &x_instance) >= 3 && count_heartbeats(records, &y_instance) >= 3
    })
    .unwrap();

    let x_report = x.shutdown();
    let y_report = y.shutdown();
    assert!(x_report.is_complete(), "x: {x_report}");
    assert!(y_report.is_complete(), "y: {y_report}");
    drop(x_runtime);
    drop(y_runtime);

    // ---- spans: one trace, right links, keyed by trace id ----
    let spans = decode_spans(&read_to_end(&kafka.brokers, &trace_topic));
    let named = |service: &str, name: &str| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.service.name == service && s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no span `{name}` of {service} in {:#?}",
                    spans
                        .iter()
                        .map(|(_, s)| (&s.service.name, &s.name))
                        .collect::<Vec<_>>()
                )
            })
    };
    let x_server = named(&x_name, "GET /checkout/{order}");
    let x_place = named(&x_name, "place_order");
    let x_call = named(&x_name, "call_inventory");
    let x_client = named(&x_name, "GET");
    let y_server = named(&y_name, "GET /reserve/{order}");
    let y_reserve = named(&y_name, "reserve");
    let trace_id = x_server.trace_id.clone();
    assert_eq!(spans.len(), 6, "exactly the request's spans: {spans:#?}");
    for (record_key, span) in &spans {
        assert_eq!(
            span.trace_id, trace_id,
            "every span shares the trace: {span:#?}"
        );
        assert_eq!(
            record_key, &span.trace_id,
            "trace_logs records are keyed by trace id"
        );
    }
    assert_eq!(x_server.kind, SpanKind::Server);
    assert_eq!(
        x_server.parent_span_id, None,
        "the plain client sent no traceparent"
    );
    assert_eq!(
        x_place.parent_span_id.as_deref(),
        Some(x_server.span_id.as_str())
    );
    assert_eq!(
        x_call.parent_span_id.as_deref(),
        Some(x_place.span_id.as_str())
    );
    assert_eq!(x_client.kind, SpanKind::Client);
    assert_eq!(
        x_client.parent_span_id.as_deref(),
        Some(x_call.span_id.as_str())
    );
    assert_eq!(x_client.peer_service(), Some(y_name.as_str()));
    assert_eq!(y_server.kind, SpanKind::Server);
    assert_eq!(
        y_server.parent_span_id.as_deref(),
        Some(x_client.span_id.as_str()),
        "Y's server span is a child of X's client span"
    );
    assert_eq!(
        y_server.attributes.get("http.route"),
        Some(&json!("/reserve/{order}"))
    );
    assert_eq!(
        y_server.attributes.get("http.response.status_code"),
        Some(&json!(200))
    );
    assert_eq!(
        y_reserve.parent_span_id.as_deref(),
        Some(y_server.span_id.as_str())
    );
    assert_eq!(x_server.service.dependencies, vec![y_name.clone()]);
    assert_eq!(
        x_server.service.instance_id.as_deref(),
        Some(x_instance.as_str())
    );

    // ---- logs: right ids, exact fields, keyed by trace id ----
    let expected_bodies = [
        "placing order",
        "payment declined",
        "reserving stock",
        "stock lookup slow",
    ];
    let logs = log_entries(&read_to_end(&kafka.brokers, &logs_topic));
    for expected in expected_bodies {
        assert_eq!(
            logs.iter().filter(|(_, e)| e.body == expected).count(),
            1,
            "`{expected}` arrived exactly once: {logs:#?}"
        );
    }
    assert_eq!(
        logs.iter().filter(|(_, e)| e.is_service_call()).count(),
        1,
        "one service.call record: {logs:#?}"
    );
    assert_eq!(
        logs.len(),
        expected_bodies.len() + 1,
        "exactly the request's logs: {logs:#?}"
    );
    let body = |b: &str| {
        logs.iter()
            .map(|(_, e)| e)
            .find(|e| e.body == b)
            .unwrap_or_else(|| panic!("no log `{b}` in {logs:#?}"))
    };
    for (record_key, entry) in &logs {
        assert_eq!(
            entry.trace_id.as_deref(),
            Some(trace_id.as_str()),
            "{entry:#?}"
        );
        assert_eq!(
            record_key, &trace_id,
            "service_logs records with a trace are keyed by it"
        );
    }
    let placing = body("placing order");
    assert_eq!(placing.service.name, x_name);
    assert_eq!(placing.span_id.as_deref(), Some(x_place.span_id.as_str()));
    assert_eq!(placing.attributes.get("order"), Some(&json!(42)));

    let declined = body("payment declined");
    assert_eq!(declined.level, "ERROR");
    assert_eq!(declined.span_id.as_deref(), Some(x_place.span_id.as_str()));
    assert_eq!(
        declined.attributes.get(names::ERROR_CODE),
        Some(&json!("PAY-402"))
    );
    assert_eq!(
        declined.attributes.get(names::ERROR_MESSAGE),
        Some(&json!("card expired"))
    );
    assert_eq!(
        declined.attributes.get(names::DEPENDENT_SERVICE),
        Some(&json!(y_name))
    );

    let reserving = body("reserving stock");
    assert_eq!(reserving.service.name, y_name);
    assert_eq!(
        reserving.span_id.as_deref(),
        Some(y_reserve.span_id.as_str())
    );

    let slow = body("stock lookup slow");
    assert_eq!(slow.level, "WARN");
    assert_eq!(slow.service.name, y_name);
    assert_eq!(slow.span_id.as_deref(), Some(y_reserve.span_id.as_str()));
    assert_eq!(
        slow.attributes.get(names::RESPONSE_TIME_MS),
        Some(&json!(250))
    );
    assert_eq!(
        slow.attributes.get(names::THRESHOLD_LIMIT_MS),
        Some(&json!(200))
    );
    assert_eq!(slow.attributes.get("warehouse"), Some(&json!("north")));

    let call = logs
        .iter()
        .map(|(_, e)| e)
        .find(|e| e.is_service_call())
        .unwrap();
    assert_eq!(call.event_name.as_deref(), Some(names::SERVICE_CALL_EVENT));
    assert_eq!(call.span_id.as_deref(), Some(x_call.span_id.as_str()));
    assert_eq!(call.attr_str(names::CALL_SOURCE), Some(x_name.as_str()));
    assert_eq!(call.attr_str(names::CALL_TARGET), Some(y_name.as_str()));
    assert_eq!(call.attr_bool(names::CALL_SUCCESS), Some(true));
    assert_eq!(call.attr_str(names::CALL_STATUS), Some("SUCCESS"));
    let duration_ms = call.attr_f64(names::CALL_DURATION_MS).unwrap();
    let client_ms = x_client.duration_nanos() as f64 / 1e6;
    assert!(
        duration_ms >= client_ms,
        "the call took at least the client span: {duration_ms} < {client_ms}"
    );

    // ---- registration and heartbeats: keyed by instance, UP first, DOWN last ----
    let all = heartbeats(&read_to_end(&kafka.brokers, &heartbeat_topic));
    for instance in [&x_instance, &y_instance] {
        let mut mine: Vec<&Heartbeat> = all
            .iter()
            .filter(|(k, hb)| {
                let ours = hb.service.instance_key() == instance.as_str();
                if ours {
                    assert_eq!(k, instance, "heartbeat_logs records are keyed by instance");
                }
                ours
            })
            .map(|(_, hb)| hb)
            .collect();
        mine.sort_by_key(|hb| hb.time_unix_nano);
        assert!(mine.iter().all(|hb| hb.interval_ms == Some(200)));
        // Ordering and counting, not timing: UP once and first, DOWN once and last, at least
        // the three heartbeats waited for above in between, and no record twice.
        let kinds: Vec<(HeartbeatKind, ServiceStatus)> =
            mine.iter().map(|hb| (hb.kind, hb.status)).collect();
        let registration = |status| (HeartbeatKind::Registration, status);
        assert_eq!(
            kinds.first(),
            Some(&registration(ServiceStatus::Up)),
            "{instance}: {kinds:?}"
        );
        assert_eq!(
            kinds.last(),
            Some(&registration(ServiceStatus::Down)),
            "{instance}: {kinds:?}"
        );
        let beats = kinds.len() - 2;
        assert!(
            kinds[1..kinds.len() - 1]
                .iter()
                .all(|kind| *kind == (HeartbeatKind::Heartbeat, ServiceStatus::Up)),
            "{instance}: only heartbeats between UP and DOWN: {kinds:?}"
        );
        assert!(beats >= 3, "{instance}: {beats} heartbeats");
        let distinct: BTreeSet<u64> = mine.iter().map(|hb| hb.time_unix_nano).collect();
        assert_eq!(
            distinct.len(),
            mine.len(),
            "{instance}: no heartbeat record arrived twice"
        );
    }
    let deps: BTreeMap<&str, BTreeSet<String>> = all
        .iter()
        .map(|(_, hb)| {
            (
                hb.service.instance_key(),
                hb.service.dependencies.iter().cloned().collect(),
            )
        })
        .collect();
    assert_eq!(deps[x_instance.as_str()], BTreeSet::from([y_name.clone()]));
    assert!(deps[y_instance.as_str()].is_empty());

    infra.block_on(bridge.shutdown()).unwrap();
}
