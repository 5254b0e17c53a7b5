//! The all-in-one mode's next hop is the durable local log: senders are answered once their
//! records are fsynced there, not once the store has them; a stage lagging past the log's
//! bound makes senders back off instead of losing anything; and kill -9 loses nothing that
//! was answered.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dlog_storage::embedded::{count_rows, DB_FILE};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use rand::{Rng, SeedableRng};
use support::*;
use tonic::Code;

/// Holds the embedded store's write lock, as a store that stopped answering would: the
/// indexer's writes wait and fail until it is released.
fn hold_store(data: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(data.join("store").join(DB_FILE)).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

fn hex(id: [u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_answer_waits_for_stages_senders_are_answered_once_durable_while_the_store_is_held(
) {
    let data = tempfile::tempdir().unwrap();
    let running = dlog::start(config(data.path())).await.unwrap();
    let store_dir = data.path().join("store");
    let held = hold_store(data.path());

    // Answered although nothing can be indexed: the log, not the store, is the next hop.
    let mut client = client(running.grpc_addr()).await;
    client.export(request(0, 0, 2, 5)).await.unwrap();
    assert!(running.wal().unwrap().metrics().fsyncs.get() >= 1);
    assert_eq!(
        running.wal().unwrap().metrics().records.get(),
        2,
        "one record per trace"
    );
    assert_eq!(count_rows(&store_dir, "spans").unwrap(), 0);

    held.execute_batch("ROLLBACK").unwrap();
    assert!(running.processed(Duration::from_secs(60)).await);
    let store = running.store();
    for t in 0..2 {
        let spans = store.get_trace(&hex(trace_id(0, 0, t))).await.unwrap();
        assert_eq!(spans.len(), 5, "trace {t}");
    }
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stage_lagging_past_the_bound_gets_senders_back_pressure_and_everything_arrives_after() {
    const MAX_BYTES: u64 = 256 * 1024;
    let data = tempfile::tempdir().unwrap();
    let running = dlog::start(dlog::Config {
        wal_max_bytes: MAX_BYTES,
        ..config(data.path())
    })
    .await
    .unwrap();
    let held = hold_store(data.path());
    let addr = running.grpc_addr();

    // Eight senders send until the log refuses them.
    let answered = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for stream in 0..8u32 {
        let answered = Arc::clone(&answered);
        senders.push(tokio::spawn(async move {
            let mut client = client(addr).await;
            for n in 0..200u32 {
                match client.export(request(stream, n, 10, 10)).await {
                    Ok(_) => answered.lock().unwrap().push((stream, n)),
                    Err(status) => return Some((n, status)),
                }
            }
            None
        }));
    }
    let mut refused = Vec::new();
    for (stream, sender) in senders.into_iter().enumerate() {
        let (n, status) = sender
            .await
            .unwrap()
            .expect("200 requests of 10 kB fit a 256 kB log: the bound never bit");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("local log is full"),
            "{}",
            status.message()
        );
        refused.push((stream as u32, n));
    }
    let wal = running.wal().unwrap().metrics();
    assert!(
        wal.bytes.get() as u64 <= MAX_BYTES,
        "{} bytes",
        wal.bytes.get()
    );
    assert!(wal.refused_full.get() >= 8);
    let metrics = reqwest::get(format!("http://{}/metrics", running.bridge_admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("dlog_wal_refused_full_total"),
        "the bridge's /metrics shows the log"
    );

    // The store comes back; the refused requests are retried, as senders do, until accepted.
    held.execute_batch("ROLLBACK").unwrap();
    let mut client = client(addr).await;
    for (stream, n) in refused {
        let mut accepted = false;
        for _ in 0..600 {
            match client.export(request(stream, n, 10, 10)).await {
                Ok(_) => {
                    accepted = true;
                    break;
                }
                Err(status) if status.code() == Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("{status:?}"),
            }
        }
        assert!(accepted, "request {stream}/{n} never accepted");
        answered.lock().unwrap().push((stream, n));
    }
    assert!(running.processed(Duration::from_secs(120)).await);

    let answered = answered.lock().unwrap().clone();
    let store = running.store();
    for &(stream, n) in &answered {
        for t in 0..10 {
            let spans = store.get_trace(&hex(trace_id(stream, n, t))).await.unwrap();
            assert_eq!(spans.len(), 10, "request {stream}/{n}, trace {t}");
        }
    }
    assert_eq!(
        count_rows(data.path().join("store"), "spans").unwrap(),
        answered.len() as u64 * 100
    );
    assert!(running.wal().unwrap().metrics().removed_segments.get() > 0);
    running.shutdown().await.unwrap();
}

/// A `dlog up` child process on free ports.
struct Dlog {
    child: Child,
    grpc: SocketAddr,
}

impl Dlog {
    fn start(data: &Path, webhook: &str) -> Dlog {
        let mut child = spawn_dlog_up_with(data, "warn", &["--webhook-url", webhook]);
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let grpc = loop {
            let line = lines.next().expect("dlog exited before it was up").unwrap();
            if let Some(rest) = line.strip_prefix("dlog is up: OTLP/gRPC ") {
                let addr = rest.split_whitespace().next().unwrap();
                break addr.parse().unwrap();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Dlog { child, grpc }
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "dlog exited with {exit}");
    }
}

/// What the senders were told was stored: (stream, request) pairs whose spans, and then whose
/// ERROR log, were answered OK.
#[derive(Default)]
struct Answered {
    spans: Vec<(u32, u32)>,
    logs: Vec<(u32, u32)>,
}

/// The ERROR log a sender sends after each span request: one `error_log` alert counts them all.
fn error_log(stream: u32, n: u32) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "loadgen"),
                    kv("service.instance.id", &format!("loadgen-{stream}")),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: dlog_storage::now_unix_nano(),
                    severity_number: 17,
                    severity_text: "ERROR".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(format!(
                            "payment failed {stream}/{n}"
                        ))),
                    }),
                    trace_id: trace_id(stream, n, 0).to_vec(),
                    attributes: vec![
                        kv(dlog_core::names::ERROR_CODE, "E-KILL"),
                        kv(dlog_core::names::ERROR_MESSAGE, "card declined"),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Eight senders send 100-span requests, each followed by one ERROR log, until `stop_after`
/// span requests were answered in this round. A sender stops at its first failure (the
/// process was killed under it).
async fn load(
    addr: SocketAddr,
    round: u32,
    stop_after: usize,
    answered: Arc<Mutex<Answered>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (0..8u32)
        .map(|stream| {
            let answered = Arc::clone(&answered);
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                else {
                    return;
                };
                let mut traces = TraceServiceClient::new(channel.clone());
                let mut logs = LogsServiceClient::new(channel);
                for n in 0.. {
                    let id = round * 100_000 + n;
                    if traces.export(request(stream, id, 10, 10)).await.is_err() {
                        return;
                    }
                    answered.lock().unwrap().spans.push((stream, id));
                    if logs.export(error_log(stream, id)).await.is_err() {
                        return;
                    }
                    answered.lock().unwrap().logs.push((stream, id));
                    if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= stop_after {
                        return;
                    }
                }
            })
        })
        .collect()
}

/// Every alert event the webhook received, in order: (idempotency key, body).
type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A webhook receiver on a free port that outlives every `dlog up` of the test.
async fn webhook() -> (String, Received) {
    async fn receive(
        axum::extract::State(received): axum::extract::State<Received>,
        headers: axum::http::HeaderMap,
        axum::Json(body): axum::Json<serde_json::Value>,
    ) -> axum::http::StatusCode {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        received.lock().unwrap().push((key, body));
        axum::http::StatusCode::NO_CONTENT
    }
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/alerts", axum::routing::post(receive))
        .with_state(Arc::clone(&received));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_stream_loses_nothing_that_was_answered_and_alerts_count_each_record_once() {
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let answered = Arc::new(Mutex::new(Answered::default()));
    let (webhook_url, received) = webhook().await;

    for round in 0..3u32 {
        let dlog = Dlog::start(data.path(), &webhook_url);
        let started = Instant::now();
        let before = answered.lock().unwrap().spans.len();
        // Kill once a random number of requests were answered, while all eight still send.
        let kill_at = before + rng.random_range(20..120);
        let senders = load(dlog.grpc, round, usize::MAX, Arc::clone(&answered)).await;
        while answered.lock().unwrap().spans.len() < kill_at {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "round {round}: load stalled"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        dlog.kill_9();
        for sender in senders {
            sender.await.unwrap();
        }
        println!(
            "round {round}: killed after {} answered requests",
            answered.lock().unwrap().spans.len() - before
        );
    }

    // A last run: the stages resume from their positions, the load finishes, and the store
    // ends up with every span that was ever answered.
    let dlog = Dlog::start(data.path(), &webhook_url);
    for sender in load(dlog.grpc, 3, 40, Arc::clone(&answered)).await {
        sender.await.unwrap();
    }
    let (answered, answered_logs) = {
        let a = answered.lock().unwrap();
        (a.spans.clone(), a.logs.clone())
    };
    dlog.stop();

    // Started again in-process: once both stages caught up with the log, every answered
    // span is in the store.
    let running = dlog::start(dlog::Config {
        webhook_url: Some(webhook_url.clone()),
        ..config(data.path())
    })
    .await
    .unwrap();
    let resumed = Instant::now();
    assert!(running.processed(Duration::from_secs(120)).await);
    println!(
        "{} answered requests over 3 kills; the stages caught up {:?} after the last start",
        answered.len(),
        resumed.elapsed()
    );
    let sent: BTreeSet<(u32, u32)> = answered.iter().copied().collect();
    assert_eq!(sent.len(), answered.len(), "a request was answered twice");
    let store = running.store();
    for &(stream, n) in &answered {
        for t in 0..10 {
            let spans = store.get_trace(&hex(trace_id(stream, n, t))).await.unwrap();
            assert_eq!(
                spans.len(),
                10,
                "request {stream}/{n} trace {t} was answered"
            );
        }
    }

    // Every answered ERROR log is stored once. The log also holds the ones appended just
    // before a kill whose answer never left; the alerter read the same log, so its alert must
    // count exactly the stored ones: a replayed record counted twice, or a lost one, shows.
    let stored = store
        .search_logs(&dlog_storage::LogQuery {
            service: Some("loadgen".into()),
            level: Some("ERROR".into()),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let stored_bodies: BTreeSet<String> = stored.iter().map(|l| l.body.clone()).collect();
    assert_eq!(
        stored_bodies.len(),
        stored.len(),
        "an ERROR log was stored twice"
    );
    for &(stream, n) in &answered_logs {
        assert!(
            stored_bodies.contains(&format!("payment failed {stream}/{n}")),
            "ERROR log {stream}/{n} was answered but is not stored"
        );
    }
    // The store output takes every event, updates included: its document carries the count.
    // All input is processed, so the count only has to catch up with the last tick.
    let id = dlog_alerting::alert_id("error_log", "loadgen|E-KILL");
    let deadline = Instant::now() + Duration::from_secs(60);
    let counted = loop {
        let counted = store
            .list_alerts(&dlog_storage::AlertQuery {
                service: Some("loadgen".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .find(|a| a.id == id)
            .map(|a| a.occurrences);
        if counted >= Some(stored.len() as u64) || Instant::now() > deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        counted,
        Some(stored.len() as u64),
        "the alert must count each stored ERROR log once (more: a replayed record counted twice; fewer: one lost)"
    );
    running.shutdown().await.unwrap();
    let received = received.lock().unwrap().clone();
    println!(
        "{} ERROR logs answered, {} stored and counted by the alert; {} alert events reached the webhook",
        answered_logs.len(),
        stored.len(),
        received.len()
    );
    // An (id, revision) may arrive twice (a crash between the webhook's answer and the
    // outbox's removal), always the same event; the alert's count never goes backwards.
    let mut by_key: std::collections::BTreeMap<&str, Vec<&serde_json::Value>> = Default::default();
    for (key, body) in &received {
        assert_eq!(
            key,
            &format!("{}-{}", body["id"].as_str().unwrap(), body["revision"]),
            "idempotency key"
        );
        by_key.entry(key).or_default().push(body);
    }
    for (key, bodies) in &by_key {
        assert!(
            bodies.len() <= 2,
            "{key} was delivered {} times",
            bodies.len()
        );
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "{key} was delivered with different contents: {bodies:#?}"
        );
    }
    let mut ours: Vec<(u64, u64)> = by_key
        .values()
        .map(|b| b[0])
        .filter(|b| b["id"] == id.as_str())
        .map(|b| {
            (
                b["revision"].as_u64().unwrap(),
                b["occurrences"].as_u64().unwrap(),
            )
        })
        .collect();
    ours.sort_unstable();
    assert!(
        ours.windows(2).all(|w| w[0].1 <= w[1].1),
        "a later revision counts fewer: {ours:?}"
    );
    // The webhook is a best-effort output in `dlog up` (the store is the required one, checked
    // above): a kill between the checkpoint that fired the alert and the webhook's request
    // loses that event for the webhook, as documented, so it may have seen none; never two
    // firings of the one alert.
    let fired = received
        .iter()
        .filter(|(_, b)| b["id"] == id.as_str() && b["event"] == "fired")
        .map(|(k, _)| k)
        .collect::<BTreeSet<_>>()
        .len();
    assert!(fired <= 1, "the alert fired {fired} times");
}

/// A data directory from before the local log holds an alerting state whose input offsets
/// count the old in-process channel. Against a new log they would make the alerter skip the
/// first records it is given; they must be forgotten, and the alerts kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_upgrade_skips_records_offsets_saved_before_the_local_log_are_forgotten() {
    use dlog_alerting::state::{StageState, StateFile};
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    let data = tempfile::tempdir().unwrap();
    let mut old = StageState::default();
    for topic in ["trace_logs", "service_logs", "heartbeat_logs"] {
        old.applied
            .entry(topic.to_string())
            .or_default()
            .insert(0, 1_000_000);
    }
    StateFile::open(&data.path().join(dlog::ALERTER_DIR))
        .unwrap()
        .save(&old)
        .unwrap();

    let running = dlog::start(config(data.path())).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "upgraded"),
                    kv("service.instance.id", "upgraded-1"),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: now,
                    observed_time_unix_nano: now,
                    severity_number: 17,
                    severity_text: "ERROR".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("payment failed".into())),
                    }),
                    attributes: vec![kv("error.code", "PAY-1"), kv("error.message", "declined")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    LogsServiceClient::connect(format!("http://{}", running.grpc_addr()))
        .await
        .unwrap()
        .export(request)
        .await
        .unwrap();
    assert!(running.processed(Duration::from_secs(60)).await);
    let alerts = running
        .store()
        .list_alerts(&dlog_storage::AlertQuery {
            service: Some("upgraded".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        alerts.iter().any(|a| a.rule == "error_log"),
        "the first record after the upgrade was skipped: {alerts:?}"
    );
    running.shutdown().await.unwrap();
}
