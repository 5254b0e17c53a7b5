//! Bridge throughput: OTLP/gRPC in, Kafka out (acks=all) to a local tansu broker, next to
//!
//! * a raw rdkafka `FutureProducer` with acks=all and idempotence, once per librdkafka setting
//!   of `BENCH_RAW_SETTINGS` (its own best is the ceiling), sending the very
//!   records the bridge writes for the same requests (the ceiling: no OTLP, no decoding);
//! * rotel (`rotel-agent` from the pip `rotel` package), tuned as INFRA.md says
//!   (`--traces-batch-max-size 1000 --kafka-exporter-acks all`), with the same load.
//!
//! Each contender gets a fresh broker and runs as its own process, so that its CPU seconds
//! (`/proc/<pid>/stat`) and peak RSS (`VmHWM`) are its own. The load is bounded (a fixed
//! number of requests) and the run stops by itself. It prints figures and asserts nothing.
//!
//! Run: `cargo bench -p collector-bridge --bench throughput`
//! Knobs (env): `BENCH_REQUESTS` (default 400), `BENCH_CONCURRENCY` (8), `BENCH_SPANS` (512
//! per request), `BENCH_BRIDGE_ARGS` (extra flags for the bridge, e.g. `-X linger.ms=1`),
//! `ROTEL_AGENT` (path to rotel-agent), `BENCH_ONLY` (`raw`, `bridge`, `baseline`, `variant`
//! or `rotel`), `BENCH_BASELINE_BIN` (an older `collector-bridge` binary, measured next to this
//! build with the same load, in ABBA order), `BENCH_VARIANT_CONFIG` (a TOML file: this build measured once
//! more with it).
//!
//! Rates and CPU per span count the spans *delivered*: read back from the topic after the
//! run, not the spans sent.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector_bridge::sink::producer_config;
use collector_bridge::{Config, Router};
use dlog_testkit::{free_port, read_topic, unique_name, wait_for_port, Kafka};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Distinct requests; the load cycles through them.
const POOL: usize = 32;
/// Spans per trace inside a request.
const SPANS_PER_TRACE: usize = 8;
/// Requests sent before measuring, so connections and metadata are warm.
const WARM_UP: usize = 16;

struct Load {
    requests: usize,
    concurrency: usize,
    spans_per_request: usize,
}

impl Load {
    fn from_env() -> Load {
        let get = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        Load {
            requests: get("BENCH_REQUESTS", 400),
            concurrency: get("BENCH_CONCURRENCY", 8),
            spans_per_request: get("BENCH_SPANS", 512),
        }
    }

    fn total_spans(&self) -> usize {
        self.requests * self.spans_per_request
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

/// A request like an SDK's batch: one resource, one scope, `spans` spans in traces of 8,
/// each span with the attributes an HTTP server span carries (~300 bytes encoded).
fn request(pool_index: usize, spans: usize) -> ExportTraceServiceRequest {
    let spans = (0..spans)
        .map(|n| {
            let trace = n / SPANS_PER_TRACE;
            let mut trace_id = [0u8; 16];
            trace_id[0] = 0xbe;
            trace_id[1] = pool_index as u8;
            trace_id[2..6].copy_from_slice(&(trace as u32).to_be_bytes());
            let mut span_id = [0u8; 8];
            span_id[..4].copy_from_slice(&(n as u32).to_be_bytes());
            span_id[7] = 1;
            let parent = if n % SPANS_PER_TRACE == 0 {
                Vec::new()
            } else {
                let mut p = span_id;
                p[..4].copy_from_slice(&((n - n % SPANS_PER_TRACE) as u32).to_be_bytes());
                p.to_vec()
            };
            let start = 1_700_000_000_000_000_000u64 + (n as u64) * 1_000_000;
            Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: parent,
                name: format!("GET /api/orders/{{id}}/items/{}", n % 7),
                kind: 2,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 3_500_000,
                attributes: vec![
                    kv("http.request.method", s("GET")),
                    kv("http.route", s("/api/orders/{id}/items")),
                    kv("url.path", s("/api/orders/81723/items")),
                    kv("http.response.status_code", any_value::Value::IntValue(200)),
                    kv("server.address", s("orders.internal")),
                    kv("client.address", s("10.0.3.17")),
                    kv("user_agent.original", s("reqwest/0.12")),
                    kv("thread.name", s("tokio-runtime-worker")),
                ],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("orders")),
                    kv("service.version", s("1.4.2")),
                    kv("service.instance.id", s("orders-7f9c4b-2")),
                    kv("host.name", s("vm1")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tracing-opentelemetry".into(),
                    version: "0.34.0".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn pool(spans: usize) -> Vec<ExportTraceServiceRequest> {
    (0..POOL).map(|i| request(i, spans)).collect()
}

/// CPU seconds (user + system, all threads) and peak RSS in KiB of a live process.
fn usage(pid: u32) -> (f64, u64) {
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    ((utime + stime) / ticks, hwm)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

struct Figures {
    name: String,
    secs: f64,
    spans: usize,
    delivered: usize,
    cpu_secs: f64,
    hwm_kib: u64,
    note: String,
    /// Answer latency of the measured requests (contenders driven over OTLP).
    answer_p50_ms: Option<f64>,
    answer_p99_ms: Option<f64>,
}

impl Figures {
    /// Spans found in Kafka after the run, per second: what was delivered, not what was sent
    /// (a contender that answers before Kafka acknowledged may lose some).
    fn spans_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.delivered as f64 / self.secs
        } else {
            0.0
        }
    }

    /// CPU microseconds per delivered span.
    fn cpu_us_per_span(&self) -> f64 {
        if self.delivered > 0 {
            self.cpu_secs * 1e6 / self.delivered as f64
        } else {
            f64::NAN
        }
    }
}

/// Sends pre-encoded requests over OTLP/gRPC with `concurrency` requests in flight over two
/// connections, and returns when every one was answered. Panics on a non-success answer.
/// Sends `count` requests over `concurrency` streams; returns each request's answer latency.
async fn drive(
    endpoint: &str,
    encoded: &[Vec<u8>],
    count: usize,
    concurrency: usize,
) -> Vec<Duration> {
    let mut channels = Vec::new();
    for _ in 0..2 {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect OTLP/gRPC");
        channels.push(channel);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let encoded = Arc::new(encoded.to_vec());
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let channel = channels[c % channels.len()].clone();
        let next = next.clone();
        let encoded = encoded.clone();
        tasks.push(tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                grpc.ready().await.expect("ready");
                let sent = Instant::now();
                let response: Result<tonic::Response<ExportTraceServiceResponse>, _> = grpc
                    .unary(
                        tonic::Request::new(encoded[i % encoded.len()].clone()),
                        http::uri::PathAndQuery::from_static(
                            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                        ),
                        raw::Raw,
                    )
                    .await;
                let response = response.expect("export answered success");
                latencies.push(sent.elapsed());
                assert!(
                    response.get_ref().partial_success.is_none(),
                    "partial success: {:?}",
                    response.get_ref()
                );
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("load task"));
    }
    latencies
}

/// The `p` quantile of `latencies` in ms.
fn quantile_ms(latencies: &mut [Duration], p: f64) -> Option<f64> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let i = ((latencies.len() - 1) as f64 * p).round() as usize;
    Some(latencies[i].as_secs_f64() * 1000.0)
}

mod raw {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::Message;

    /// Sends already-encoded request bytes, so the load generator does not re-encode.
    #[derive(Clone)]
    pub struct Raw;
    pub struct Enc;
    pub struct Dec;
    impl tonic::codec::Encoder for Enc {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(
            &mut self,
            item: Vec<u8>,
            dst: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }
    impl tonic::codec::Decoder for Dec {
        type Item = ExportTraceServiceResponse;
        type Error = tonic::Status;
        fn decode(
            &mut self,
            src: &mut tonic::codec::DecodeBuf<'_>,
        ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
            ExportTraceServiceResponse::decode(src)
                .map(Some)
                .map_err(|e| tonic::Status::internal(e.to_string()))
        }
    }
    impl tonic::codec::Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = ExportTraceServiceResponse;
        type Encoder = Enc;
        type Decoder = Dec;
        fn encoder(&mut self) -> Enc {
            Enc
        }
        fn decoder(&mut self) -> Dec {
            Dec
        }
    }
}

/// Spans in `topic` (decoding every record), and the latest record timestamp in ms.
fn delivered(brokers: &str, topic: &str, expected: usize) -> (usize, i64) {
    let mut spans = 0usize;
    let mut seen = 0usize;
    let mut last_ts = 0i64;
    let records = read_topic(brokers, topic, Duration::from_secs(120), |rs| {
        for r in &rs[seen..] {
            if let Ok(req) = ExportTraceServiceRequest::decode(r.payload.as_slice()) {
                spans += req
                    .resource_spans
                    .iter()
                    .flat_map(|rs| rs.scope_spans.iter())
                    .map(|ss| ss.spans.len())
                    .sum::<usize>();
            }
            last_ts = last_ts.max(r.timestamp_ms.unwrap_or(0));
        }
        seen = rs.len();
        spans >= expected
    })
    .expect("read topic");
    drop(records);
    (spans, last_ts)
}

/// An OTLP receiver under test.
struct Target<'a> {
    name: &'static str,
    kafka: &'a Kafka,
    topic: &'a str,
    endpoint: String,
    pid: u32,
    /// True when a success answer means the spans are in Kafka (the bridge); rotel answers
    /// first and writes later.
    answers_after_ack: bool,
}

fn measure(
    target: &Target<'_>,
    load: &Load,
    encoded: &[Vec<u8>],
    runtime: &tokio::runtime::Runtime,
) -> Figures {
    let Target {
        name,
        kafka,
        topic,
        ref endpoint,
        pid,
        answers_after_ack,
    } = *target;
    let _ = runtime.block_on(drive(endpoint, encoded, WARM_UP, load.concurrency));
    let warm_spans = WARM_UP * load.spans_per_request;
    // rotel answers before Kafka acknowledges: let the warm-up land before the clock starts.
    let _ = delivered(&kafka.brokers, topic, warm_spans);
    let (cpu0, _) = usage(pid);
    let wall0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let started = Instant::now();
    let mut latencies = runtime.block_on(drive(endpoint, encoded, load.requests, load.concurrency));
    let answered = started.elapsed().as_secs_f64();
    let (delivered_spans, last_ts) =
        delivered(&kafka.brokers, topic, warm_spans + load.total_spans());
    let (cpu1, hwm) = usage(pid);
    let delivered_spans = delivered_spans.saturating_sub(warm_spans);
    let (secs, note) = if answers_after_ack {
        (answered, String::new())
    } else {
        // Time until the last record was written, from the broker-side record timestamps.
        let until_durable = ((last_ts - wall0) as f64 / 1000.0).max(answered);
        (
            until_durable,
            format!(
                "answered all requests in {answered:.2} s (before Kafka acked); last record written after {until_durable:.2} s"
            ),
        )
    };
    Figures {
        name: name.to_string(),
        secs,
        spans: load.total_spans(),
        delivered: delivered_spans,
        cpu_secs: cpu1 - cpu0,
        hwm_kib: hwm,
        note,
        answer_p50_ms: quantile_ms(&mut latencies, 0.5),
        answer_p99_ms: quantile_ms(&mut latencies, 0.99),
    }
}

fn create_topic(kafka: &Kafka, runtime: &tokio::runtime::Runtime, topic: &str) {
    runtime
        .block_on(kafka.create_topics(&[topic], 3))
        .expect("create topic");
}

fn bench_bridge(
    name: &'static str,
    binary: &std::path::Path,
    config: Option<&std::path::Path>,
    load: &Load,
    encoded: &[Vec<u8>],
    runtime: &tokio::runtime::Runtime,
) -> Figures {
    let kafka = Kafka::start().expect("start tansu");
    let topic = unique_name("bench_bridge");
    create_topic(&kafka, runtime, &topic);
    let (grpc, http, admin) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let mut command = Command::new(binary);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = KillOnDrop(
        command
            .args(["--kafka-brokers", &kafka.brokers])
            .args(["--otlp-grpc", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http", &format!("127.0.0.1:{http}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--trace-logs-topic", &topic])
            // Extra flags for the bridge under test, e.g. `-X linger.ms=1` to compare
            // producer settings in one run.
            .args(
                std::env::var("BENCH_BRIDGE_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env("DLOG_BRIDGE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn collector-bridge"),
    );
    wait_for_port(([127, 0, 0, 1], grpc).into(), Duration::from_secs(20)).expect("bridge up");
    let target = Target {
        name,
        kafka: &kafka,
        topic: &topic,
        endpoint: format!("http://127.0.0.1:{grpc}"),
        pid: child.0.id(),
        answers_after_ack: true,
    };
    let f = measure(&target, load, encoded, runtime);
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = child.0.wait();
    f
}

fn rotel_agent() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ROTEL_AGENT") {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import rotel,os;print(os.path.dirname(rotel.__file__))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("rotel-agent");
    path.is_file().then_some(path)
}

fn bench_rotel(
    load: &Load,
    encoded: &[Vec<u8>],
    runtime: &tokio::runtime::Runtime,
) -> Option<Figures> {
    let Some(agent) = rotel_agent() else {
        eprintln!(
            "rotel-agent not found (pip install rotel==0.0.1a15, or set ROTEL_AGENT); skipping"
        );
        return None;
    };
    let kafka = Kafka::start().expect("start tansu");
    let topic = unique_name("bench_rotel");
    let logs_topic = unique_name("bench_rotel_logs");
    let metrics_topic = unique_name("bench_rotel_metrics");
    create_topic(&kafka, runtime, &topic);
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let mut child = KillOnDrop(
        Command::new(agent)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--exporter", "kafka"])
            .args(["--kafka-exporter-brokers", &kafka.brokers])
            .args(["--kafka-exporter-traces-topic", &topic])
            .args(["--kafka-exporter-logs-topic", &logs_topic])
            .args(["--kafka-exporter-metrics-topic", &metrics_topic])
            .args(["--kafka-exporter-format", "protobuf"])
            .args(["--traces-batch-max-size", "1000"])
            .args(["--kafka-exporter-acks", "all"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rotel-agent"),
    );
    wait_for_port(([127, 0, 0, 1], grpc).into(), Duration::from_secs(20)).expect("rotel up");
    let target = Target {
        name: "rotel (tuned)",
        kafka: &kafka,
        topic: &topic,
        endpoint: format!("http://127.0.0.1:{grpc}"),
        pid: child.0.id(),
        answers_after_ack: false,
    };
    let f = measure(&target, load, encoded, runtime);
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = child.0.wait();
    Some(f)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// librdkafka settings the raw producer is measured with, one run each: its own best is the
/// ceiling the bridge is compared to. `BENCH_RAW_SETTINGS` replaces the list: runs separated
/// by `;`, properties within a run by `,` (e.g. `linger.ms=5;linger.ms=20,batch.size=1000000`).
const RAW_SETTINGS: &str = "linger.ms=0;linger.ms=1;linger.ms=5;linger.ms=20,batch.size=1000000";

fn bench_raw(load: &Load, runtime: &tokio::runtime::Runtime, settings: &str) -> Figures {
    let kafka = Kafka::start().expect("start tansu");
    let topic = unique_name("bench_raw");
    create_topic(&kafka, runtime, &topic);
    let output = Command::new(std::env::current_exe().expect("bench binary path"))
        .args(["raw-producer", &kafka.brokers, &topic])
        .env("BENCH_REQUESTS", load.requests.to_string())
        .env("BENCH_CONCURRENCY", load.concurrency.to_string())
        .env("BENCH_SPANS", load.spans_per_request.to_string())
        .env("BENCH_RAW_PROPS", settings)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run raw producer");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("raw producer printed no result: {text}"));
    let mut secs = 0.0;
    let mut cpu = 0.0;
    let mut hwm = 0;
    let mut p50 = None;
    let mut p99 = None;
    for part in line.split_whitespace() {
        match part.split_once('=') {
            Some(("secs", v)) => secs = v.parse().unwrap_or(0.0),
            Some(("cpu", v)) => cpu = v.parse().unwrap_or(0.0),
            Some(("hwm", v)) => hwm = v.parse().unwrap_or(0),
            Some(("p50", v)) => p50 = v.parse().ok(),
            Some(("p99", v)) => p99 = v.parse().ok(),
            _ => {}
        }
    }
    let warm_spans = WARM_UP * load.spans_per_request;
    let (spans, _) = delivered(&kafka.brokers, &topic, warm_spans + load.total_spans());
    Figures {
        name: format!("raw rdkafka producer ({settings})"),
        secs,
        spans: load.total_spans(),
        delivered: spans.saturating_sub(warm_spans),
        cpu_secs: cpu,
        hwm_kib: hwm,
        note: "same records the bridge writes, pre-encoded, acks=all + idempotence; latency is one request's records from enqueue to the last ack".into(),
        answer_p50_ms: p50,
        answer_p99_ms: p99,
    }
}

/// The raw-producer child: produce the bridge's records for the same requests with the
/// bridge's producer settings, `concurrency` requests' worth in flight, and report.
fn raw_producer(brokers: &str, topic: &str) {
    let load = Load::from_env();
    let config = Config {
        kafka_brokers: brokers.to_string(),
        trace_logs_topic: topic.to_string(),
        ..Config::default()
    };
    let router = Router::new(&config);
    // The bridge's records for every request of the pool: same keys, values and headers.
    let batches: Vec<Vec<collector_bridge::OutRecord>> = pool(load.spans_per_request)
        .iter()
        .map(|r| router.traces(r).records)
        .collect();
    let mut client_config = producer_config(&config);
    for property in std::env::var("BENCH_RAW_PROPS")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((key, value)) = property.split_once('=') {
            client_config.set(key.trim(), value.trim());
        }
    }
    let producer: FutureProducer = client_config.create().expect("producer");
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let batches = Arc::new(batches);
    let run = |count: usize| {
        let next = Arc::new(AtomicUsize::new(0));
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..load.concurrency {
                let producer = producer.clone();
                let batches = batches.clone();
                let next = next.clone();
                let latencies = latencies.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            break;
                        }
                        let sent = Instant::now();
                        let batch = &batches[i % batches.len()];
                        let mut deliveries = Vec::with_capacity(batch.len());
                        for record in batch {
                            let [(k1, v1), (k2, v2)] = record.headers();
                            let headers = OwnedHeaders::new_with_capacity(2)
                                .insert(Header {
                                    key: k1,
                                    value: Some(v1),
                                })
                                .insert(Header {
                                    key: k2,
                                    value: Some(v2),
                                });
                            let fr = FutureRecord::to(&record.topic)
                                .key(record.key.as_bytes())
                                .payload(record.value.as_slice())
                                .headers(headers);
                            deliveries.push(
                                producer
                                    .send_result(fr)
                                    .map_err(|(e, _)| e)
                                    .expect("enqueue"),
                            );
                        }
                        for d in deliveries {
                            d.await
                                .expect("delivery")
                                .map_err(|(e, _)| e)
                                .expect("acked");
                        }
                        latencies.lock().expect("latencies").push(sent.elapsed());
                    }
                }));
            }
            for t in tasks {
                t.await.expect("producer task");
            }
        });
    };
    run(WARM_UP);
    latencies.lock().expect("latencies").clear();
    let pid = std::process::id();
    let (cpu0, _) = usage(pid);
    let started = Instant::now();
    run(load.requests);
    let secs = started.elapsed().as_secs_f64();
    let (cpu1, hwm) = usage(pid);
    let mut latencies = latencies.lock().expect("latencies").clone();
    println!(
        "RESULT secs={secs} cpu={} hwm={hwm} p50={} p99={}",
        cpu1 - cpu0,
        quantile_ms(&mut latencies, 0.5).unwrap_or(f64::NAN),
        quantile_ms(&mut latencies, 0.99).unwrap_or(f64::NAN)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("raw-producer") {
        raw_producer(&args[2], &args[3]);
        return;
    }
    let load = Load::from_env();
    let encoded: Vec<Vec<u8>> = pool(load.spans_per_request)
        .iter()
        .map(Message::encode_to_vec)
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "load: {} requests x {} spans ({} spans in traces of {SPANS_PER_TRACE}, {} bytes per request), {} in flight, after {WARM_UP} warm-up requests",
        load.requests,
        load.spans_per_request,
        load.total_spans(),
        encoded[0].len(),
        load.concurrency
    );
    // BENCH_ONLY=raw|bridge|rotel runs one contender (for profiling).
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let mut results = Vec::new();
    if wanted("raw") {
        let settings = std::env::var("BENCH_RAW_SETTINGS").unwrap_or_else(|_| RAW_SETTINGS.into());
        for run in settings.split(';').filter(|r| !r.trim().is_empty()) {
            results.push(bench_raw(&load, &runtime, run.trim()));
        }
    }
    // BENCH_BASELINE_BIN=path/to/an/older/collector-bridge runs that build too, with the same
    // load, so that two builds' CPU per span sit side by side in one table. The two are
    // measured in ABBA order (this, baseline, baseline, this): whichever runs first on a
    // fresh broker has an edge, and a fixed order is enough to fake a gap of 10 % or more.
    let this_build = std::path::Path::new(env!("CARGO_BIN_EXE_collector-bridge"));
    let baseline =
        std::env::var_os("BENCH_BASELINE_BIN").filter(|_| wanted("bridge") || wanted("baseline"));
    let mut order: Vec<(&str, &std::path::Path)> = Vec::new();
    match &baseline {
        Some(baseline) => {
            let baseline = std::path::Path::new(baseline);
            if wanted("bridge") {
                order.push(("collector-bridge", this_build));
            }
            order.push(("collector-bridge (baseline build)", baseline));
            order.push(("collector-bridge (baseline build)", baseline));
            if wanted("bridge") {
                order.push(("collector-bridge", this_build));
            }
        }
        None if wanted("bridge") => order.push(("collector-bridge", this_build)),
        None => {}
    }
    for (name, bin) in order {
        results.push(bench_bridge(name, bin, None, &load, &encoded, &runtime));
    }
    // BENCH_VARIANT_CONFIG=file.toml runs this build once more with that config file (for
    // example `redact_attributes = false`, to see what a setting costs).
    if let Some(variant) = std::env::var_os("BENCH_VARIANT_CONFIG") {
        if wanted("bridge") || wanted("variant") {
            results.push(bench_bridge(
                "collector-bridge (BENCH_VARIANT_CONFIG)",
                std::path::Path::new(env!("CARGO_BIN_EXE_collector-bridge")),
                Some(std::path::Path::new(&variant)),
                &load,
                &encoded,
                &runtime,
            ));
        }
    }
    if wanted("rotel") {
        results.extend(bench_rotel(&load, &encoded, &runtime));
    }

    println!();
    println!(
        "| contender | delivered spans/s | answer p50 ms | answer p99 ms | wall s | spans delivered / sent | CPU s | CPU µs per delivered span | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for f in &results {
        println!(
            "| {} | {:.0} | {} | {} | {:.2} | {}/{} | {:.2} | {:.2} | {:.1} |",
            f.name,
            f.spans_per_sec(),
            ms(f.answer_p50_ms),
            ms(f.answer_p99_ms),
            f.secs,
            f.delivered,
            f.spans,
            f.cpu_secs,
            f.cpu_us_per_span(),
            f.hwm_kib as f64 / 1024.0
        );
    }
    println!(
        "(delivered = spans read back from the topic after the run, decoded record by record; rates and CPU per span count only those)"
    );
    for f in &results {
        if !f.note.is_empty() {
            println!("- {}: {}", f.name, f.note);
        }
    }
    let rate = |name: &str| {
        results
            .iter()
            .filter(|f| f.name.starts_with(name))
            .map(Figures::spans_per_sec)
            .reduce(f64::max)
    };
    let bridge_rate = results
        .iter()
        .find(|f| f.name == "collector-bridge")
        .map(Figures::spans_per_sec);
    if let (Some(bridge), Some(raw)) = (bridge_rate, rate("raw")) {
        let best = results
            .iter()
            .filter(|f| f.name.starts_with("raw"))
            .max_by(|a, b| a.spans_per_sec().total_cmp(&b.spans_per_sec()))
            .map(|f| f.name.as_str())
            .unwrap_or_default();
        println!(
            "bridge / raw producer at its best ({best}): {:.2}x (targets: >= 0.5x at 8 streams, >= 0.9x at 128)",
            bridge / raw
        );
    }
    if let (Some(bridge), Some(rotel)) = (bridge_rate, rate("rotel")) {
        println!("bridge / rotel: {:.2}x (target >= 1x)", bridge / rotel);
    }
    if let Some(b) = results.iter().find(|f| f.name == "collector-bridge") {
        println!(
            "bridge peak RSS: {:.1} MiB (target <= 64 MiB)",
            b.hwm_kib as f64 / 1024.0
        );
    }
}
