//! `dlog up` ingest: OTLP/gRPC in, answered once durable in the local log, indexed into the
//! embedded store and evaluated by the alerter behind it.
//!
//! For each load shape it prints the spans/s answered, the answer latency p50/p99, and how
//! long after the last answer the stages had caught up (indexed spans/s over the whole run),
//! plus the local log's fsyncs (group commit: appends per fsync). Then freshness: at a fixed
//! offered rate, the time from a request's answer until its trace is returned by a
//! `find_traces` search (by a probe attribute), p50/p99, through `dlog up` and through
//! collector-bridge → Kafka (tansu) → indexer → Elasticsearch API (osmem), each pipeline in
//! this process. It prints figures and asserts nothing.
//!
//! Shapes (as real senders send):
//! * `sdk-1x512`: one SDK: one stream of 512-span requests (64 traces of 8), one at a time;
//! * `collector-8x100`: a collector: 8 streams of 100-span requests (10 traces of 10);
//! * `small-64x10`: many small requests: 64 streams of 10-span requests;
//! * `large-4x8192`: large batches: 4 streams of 8192-span requests.
//!
//! Run: `cargo bench -p dlog --bench ingest`. Knobs (env): `BENCH_SECS` (seconds per shape,
//! default 10), `BENCH_ONLY` (one shape name, `freshness` or `freshness-kafka-es`),
//! `BENCH_FRESHNESS_RATE` (spans/s, default 10000). `ELASTICSEARCH_URL` points the Kafka +
//! Elasticsearch run at a real cluster instead of osmem.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dlog_storage::TraceQuery;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

struct Shape {
    name: &'static str,
    streams: usize,
    traces: usize,
    spans_per_trace: usize,
}

const SHAPES: [Shape; 4] = [
    Shape {
        name: "sdk-1x512",
        streams: 1,
        traces: 64,
        spans_per_trace: 8,
    },
    Shape {
        name: "collector-8x100",
        streams: 8,
        traces: 10,
        spans_per_trace: 10,
    },
    Shape {
        name: "small-64x10",
        streams: 64,
        traces: 1,
        spans_per_trace: 10,
    },
    Shape {
        name: "large-4x8192",
        streams: 4,
        traces: 1024,
        spans_per_trace: 8,
    },
];

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// A request of fresh trace ids (`seq` makes them unique across the run), 3–4 attributes a
/// span, timestamps of now.
fn request(
    seq: u64,
    traces: usize,
    spans_per_trace: usize,
) -> (ExportTraceServiceRequest, Vec<String>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut spans = Vec::with_capacity(traces * spans_per_trace);
    let mut ids = Vec::with_capacity(traces);
    for t in 0..traces as u64 {
        let mut trace = [0u8; 16];
        trace[..8].copy_from_slice(&seq.to_be_bytes());
        trace[8..].copy_from_slice(&(t + 1).to_be_bytes());
        ids.push(trace.iter().map(|b| format!("{b:02x}")).collect());
        for s in 0..spans_per_trace as u64 {
            let mut attributes = vec![
                kv("http.request.method", "GET"),
                kv("http.route", "/api/orders/{id}"),
                kv("http.response.status_code", "200"),
            ];
            if s == 0 {
                attributes.push(kv("user.id", &format!("user-{}", seq % 1000)));
                attributes.push(kv("probe.seq", &seq.to_string()));
            }
            spans.push(Span {
                trace_id: trace.to_vec(),
                span_id: (s + 1).to_be_bytes().to_vec(),
                parent_span_id: if s == 0 {
                    Vec::new()
                } else {
                    1u64.to_be_bytes().to_vec()
                },
                name: format!("operation-{}", s % 6),
                kind: if s == 0 { 2 } else { 3 },
                start_time_unix_nano: now + s * 1_000,
                end_time_unix_nano: now + s * 1_000 + 500_000,
                attributes,
                ..Default::default()
            });
        }
    }
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "bench"),
                    kv("service.version", "1.0.0"),
                    kv("service.instance.id", "bench-1"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "bench".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (request, ids)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn start(data: &std::path::Path) -> dlog::AllInOne {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    dlog::start(dlog::Config {
        data_dir: data.to_path_buf(),
        otlp_grpc: any,
        otlp_http: any,
        bridge_admin: any,
        indexer_admin: any,
        alerter_admin: any,
        viewer: any,
        ..dlog::Config::default()
    })
    .await
    .expect("start dlog")
}

async fn run_shape(shape: &Shape, secs: u64) {
    let data = tempfile::tempdir().expect("temp dir");
    let running = start(data.path()).await;
    let addr = running.grpc_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let fsyncs_before = running.wal().unwrap().metrics().fsyncs.get();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for stream in 0..shape.streams {
        let stop = Arc::clone(&stop);
        let latencies = Arc::clone(&latencies);
        let refused = Arc::clone(&refused);
        let (traces, per) = (shape.traces, shape.spans_per_trace);
        tasks.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(format!("http://{addr}"))
                .await
                .expect("connect")
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            let mut seq = (stream as u64) << 32;
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let (request, _) = request(seq, traces, per);
                let sent = Instant::now();
                match client.export(request).await {
                    Ok(_) => mine.push(sent.elapsed()),
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            latencies.lock().expect("latencies").extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let answered_in = started.elapsed();
    let mut latencies = latencies.lock().expect("latencies").clone();
    latencies.sort_unstable();
    let requests = latencies.len();
    let spans = requests * shape.traces * shape.spans_per_trace;
    let caught_up = running.processed(Duration::from_secs(600)).await;
    let processed_in = started.elapsed();
    let fsyncs = running.wal().unwrap().metrics().fsyncs.get() - fsyncs_before;
    println!(
        "| {:<16} | {:>9.0} | {:>8} | {:>8} | {:>9.0}{} | {:>5} | {:>6.1} | {:>7} |",
        shape.name,
        spans as f64 / answered_in.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        spans as f64 / processed_in.as_secs_f64(),
        if caught_up { "" } else { " (lagging)" },
        ms(processed_in.saturating_sub(answered_in)),
        requests as f64 / fsyncs.max(1) as f64,
        refused.load(Ordering::Relaxed),
    );
    running.shutdown().await.expect("shutdown");
}

/// Offers `rate` spans/s in 100-span requests from 8 streams for `secs` to `addr`, and for
/// every tenth request polls a `find_traces` search by its probe attribute until the trace
/// is returned. Prints answer → searchable p50/p99 for `label`.
async fn freshness(
    label: &str,
    addr: std::net::SocketAddr,
    store: Arc<dyn dlog_storage::Store>,
    rate: u64,
    secs: u64,
) {
    // Warm-up: one request, until it is searchable. A consumer group's first join happens
    // here, not inside the measurement; its time is printed on its own.
    let warm = Instant::now();
    let (warm_request, ids) = request(1 << 62, 1, 10);
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    client
        .export(warm_request)
        .await
        .expect("warm-up request answered");
    while store
        .get_trace(&ids[0])
        .await
        .map(|s| s.is_empty())
        .unwrap_or(true)
    {
        if warm.elapsed() > Duration::from_secs(300) {
            println!("freshness, {label}: the warm-up trace was not stored within 300 s");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "freshness, {label}: first trace searchable {} ms after its answer (start-up, consumer group join)",
        warm.elapsed().as_millis()
    );
    let requests_per_sec = (rate / 100).max(1);
    let interval = Duration::from_secs_f64(8.0 / requests_per_sec as f64);
    let fresh = Arc::new(Mutex::new(Vec::new()));
    let query_times = Arc::new(Mutex::new(Vec::new()));
    let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for stream in 0..8u64 {
        let fresh = Arc::clone(&fresh);
        let query_times = Arc::clone(&query_times);
        let lost = Arc::clone(&lost);
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(format!("http://{addr}"))
                .await
                .expect("connect");
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let end = Instant::now() + Duration::from_secs(secs);
            let mut seq = (stream << 40) | (1 << 60);
            let mut probes = Vec::new();
            while Instant::now() < end {
                ticker.tick().await;
                seq += 1;
                let (request, _) = request(seq, 10, 10);
                if client.export(request).await.is_err() {
                    continue;
                }
                if seq % 10 == 0 {
                    let answered = Instant::now();
                    let store = Arc::clone(&store);
                    let query = TraceQuery {
                        service: Some("bench".into()),
                        attributes: [("probe.seq".to_string(), seq.to_string())].into(),
                        limit: 20,
                        ..TraceQuery::default()
                    };
                    probes.push(tokio::spawn(async move {
                        loop {
                            let asked = Instant::now();
                            let found = store
                                .find_traces(&query)
                                .await
                                .map(|traces| !traces.is_empty())
                                .unwrap_or(false);
                            if found {
                                return Some((answered.elapsed(), asked.elapsed()));
                            }
                            let age = answered.elapsed();
                            if age > Duration::from_secs(30) {
                                return None;
                            }
                            // Polls back off with the probe's age (a 5 % resolution), so that
                            // hundreds of pending probes do not load the store they measure.
                            tokio::time::sleep(
                                (age / 20)
                                    .clamp(Duration::from_millis(2), Duration::from_millis(500)),
                            )
                            .await;
                        }
                    }));
                }
            }
            for probe in probes {
                match probe.await {
                    Ok(Some((d, q))) => {
                        fresh.lock().expect("fresh").push(d);
                        query_times.lock().expect("query times").push(q);
                    }
                    _ => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut fresh = fresh.lock().expect("fresh").clone();
    fresh.sort_unstable();
    let mut query_times = query_times.lock().expect("query times").clone();
    query_times.sort_unstable();
    println!(
        "freshness, {label}, {rate} spans/s offered (8 streams of 100-span requests): answer -> returned by find_traces p50 {} ms, p99 {} ms, max {} ms over {} probes ({} not found within 30 s); the finding search itself took p50 {} ms, p99 {} ms",
        ms(percentile(&fresh, 0.5)),
        ms(percentile(&fresh, 0.99)),
        ms(fresh.last().copied().unwrap_or_default()),
        fresh.len(),
        lost.load(Ordering::Relaxed),
        ms(percentile(&query_times, 0.5)),
        ms(percentile(&query_times, 0.99)),
    );
}

async fn freshness_dlog_up(rate: u64, secs: u64) {
    let data = tempfile::tempdir().expect("temp dir");
    let running = start(data.path()).await;
    freshness(
        "dlog up (local log, embedded store)",
        running.grpc_addr(),
        running.store(),
        rate,
        secs,
    )
    .await;
    running.shutdown().await.expect("shutdown");
}

/// The distributed pipeline in this process: collector-bridge producing to tansu (acks=all),
/// the indexer consuming in its group and writing to the Elasticsearch API (osmem, or
/// `ELASTICSEARCH_URL`).
async fn freshness_kafka_es(rate: u64, secs: u64) {
    let kafka = dlog_testkit::Kafka::start().expect("start tansu");
    let elastic = dlog_testkit::Elastic::start().expect("start the Elasticsearch API server");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let prefix = dlog_testkit::unique_name("fresh");
    let topic = |name: &str| format!("{prefix}_{name}");
    let bridge = collector_bridge::start(collector_bridge::Config {
        kafka_brokers: kafka.brokers.clone(),
        trace_logs_topic: topic("trace_logs"),
        service_logs_topic: topic("service_logs"),
        heartbeat_logs_topic: topic("heartbeat_logs"),
        create_topics: true,
        otlp_grpc: any,
        otlp_http: any,
        admin: any,
        ..collector_bridge::Config::default()
    })
    .await
    .expect("start the bridge");
    let mut indexer_config = dlog_indexer::IndexerConfig {
        trace_logs_topic: topic("trace_logs"),
        service_logs_topic: topic("service_logs"),
        heartbeat_logs_topic: topic("heartbeat_logs"),
        dead_letters_topic: topic("dead_letters"),
        admin: any,
        ..dlog_indexer::IndexerConfig::default()
    };
    indexer_config.input.kafka_brokers = kafka.brokers.clone();
    indexer_config.input.group_id = format!("{prefix}_indexer");
    indexer_config.input.create_topics = true;
    indexer_config.store.elasticsearch_url = Some(elastic.url.clone());
    indexer_config.store.index_prefix = prefix.clone();
    let indexer = dlog_indexer::Indexer::builder(indexer_config)
        .start()
        .await
        .expect("start the indexer");
    freshness(
        "collector-bridge -> Kafka (tansu) -> indexer -> Elasticsearch API (osmem)",
        bridge.grpc_addr(),
        indexer.store(),
        rate,
        secs,
    )
    .await;
    bridge.shutdown().await.expect("bridge shutdown");
    indexer.shutdown().await.expect("indexer shutdown");
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let only = std::env::var("BENCH_ONLY").ok();
    let rate: u64 = std::env::var("BENCH_FRESHNESS_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("dlog up ingest, {secs} s per shape, on {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        println!("| shape            | answered spans/s | p50 ms | p99 ms | indexed spans/s | catch-up ms | appends/fsync | refused |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for shape in &SHAPES {
            if only.as_deref().is_some_and(|o| o != shape.name) {
                continue;
            }
            run_shape(shape, secs).await;
        }
        if only.as_deref().is_none_or(|o| o == "freshness") {
            freshness_dlog_up(rate, secs).await;
        }
        if only.as_deref().is_none_or(|o| o == "freshness-kafka-es") {
            freshness_kafka_es(rate, secs).await;
        }
    });
}
