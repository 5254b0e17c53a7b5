//! Hostile input cannot make the bridge allocate beyond what it reserved: while adversarial
//! requests arrive over both transports, the process's peak RSS stays under
//! `max_in_flight_bytes` plus 256 MiB, and a good request still gets through afterwards.
//!
//! The bridge runs in this test process (in-process sink, a stage that acknowledges
//! everything), so the process's `VmHWM` is the bridge's peak; this file holds one test so
//! that nothing else shares the process. The request bodies are built one kind at a time and
//! are small next to the bound.

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use collector_bridge::{start_with_sink, ChannelSink, Config, RunningBridge, Subscriber};
use common::*;
use dlog_core::names;
use dlog_core::source::{ChannelSource, Mark, RawRecord, Source};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::mpsc;

const MIB: usize = 1024 * 1024;
const BUDGET: usize = 32 * MIB;
/// What the process may use beyond the in-flight budget: runtime, buffers, the test's own
/// request bodies.
const SLACK: usize = 256 * MIB;

fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

async fn start_bridge() -> (RunningBridge, mpsc::UnboundedReceiver<RawRecord>) {
    let (sender, mut source) = ChannelSource::new(64);
    let sink = ChannelSink::new(vec![Subscriber {
        name: "storage".into(),
        topics: vec![
            names::TRACE_LOGS_TOPIC.into(),
            names::SERVICE_LOGS_TOPIC.into(),
            names::HEARTBEAT_LOGS_TOPIC.into(),
        ],
        sender,
    }]);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(records) = source.next_batch(100, Duration::from_secs(3600)).await {
            if source.ack(&Mark::latest(&records)).await.is_err() {
                break;
            }
            for r in records {
                let _ = tx.send(r);
            }
        }
    });
    let config = Config {
        otlp_grpc: "127.0.0.1:0".parse().unwrap(),
        otlp_http: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        max_in_flight_bytes: BUDGET,
        produce_timeout_ms: 5_000,
        ..Config::default()
    };
    (start_with_sink(config, sink).await.unwrap(), rx)
}

/// Protobuf framing: a length-delimited field.
fn field(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag << 3 | 2];
    let mut n = content.len() as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(content);
    out
}

/// One resource of `blob` bytes shared by `traces` one-span traces: each trace's record
/// carries its own copy of the resource.
fn shared_resource(blob: usize, traces: u32) -> Vec<u8> {
    let mut resource = Resource {
        attributes: vec![string_kv("blob", &"x".repeat(blob))],
        ..Default::default()
    };
    resource
        .attributes
        .push(string_kv(names::SERVICE_NAME, "amplifier"));
    let spans = (1..=traces)
        .map(|n| {
            let mut trace = [0u8; 16];
            trace[..4].copy_from_slice(&n.to_be_bytes());
            Span {
                trace_id: trace.to_vec(),
                span_id: vec![1; 8],
                ..Default::default()
            }
        })
        .collect();
    traces_request(resource, spans).encode_to_vec()
}

fn traces_request(resource: Resource, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut request = traces(resource, spans);
    request.resource_spans[0].scope_spans[0].scope = None;
    request
}

/// `n` empty spans: two bytes each on the wire.
fn empty_spans(n: usize) -> Vec<u8> {
    let scope_entry = [0x12u8, 0x00].repeat(n);
    field(1, &field(2, &scope_entry))
}

/// A resource entry whose `resource` field is repeated `n` times, each adding an empty
/// attribute (protobuf merges them into one resource), and one span.
fn repeated_resource(n: usize) -> Vec<u8> {
    let mut entry = [0x0au8, 0x02, 0x0a, 0x00].repeat(n);
    let span = Span {
        trace_id: vec![7; 16],
        span_id: vec![7; 8],
        ..Default::default()
    };
    entry.extend(field(2, &field(2, &span.encode_to_vec())));
    field(1, &entry)
}

/// OTLP/JSON whose array at `path` holds `n` empty objects.
fn empty_objects(prefix: &str, suffix: &str, n: usize) -> Vec<u8> {
    let mut body = prefix.as_bytes().to_vec();
    body.extend_from_slice(&b"{},".repeat(n));
    body.extend_from_slice(b"{}");
    body.extend_from_slice(suffix.as_bytes());
    body
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// Posts to OTLP/HTTP; returns the status (refusals are expected).
async fn post(
    client: &reqwest::Client,
    bridge: &RunningBridge,
    content_type: &str,
    gzip: bool,
    body: Vec<u8>,
) -> u16 {
    let mut request = client
        .post(format!("http://{}/v1/traces", bridge.http_addr()))
        .header("content-type", content_type)
        .timeout(Duration::from_secs(60));
    if gzip {
        request = request.header("content-encoding", "gzip");
    }
    request.body(body).send().await.unwrap().status().as_u16()
}

/// Sends one OTLP/gRPC Export with a hand-made message frame (so that the compressed flag and
/// bytes are exactly the test's); returns the grpc-status.
async fn grpc_export(
    channel: &tonic::transport::Channel,
    message: Bytes,
    compressed: bool,
) -> String {
    let mut frame = vec![u8::from(compressed)];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let mut request = http::Request::builder()
        .method("POST")
        .uri("http://bridge/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if compressed {
        request = request.header("grpc-encoding", "gzip");
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(frame),
        )))
        .unwrap();
    let mut channel = channel.clone();
    std::future::poll_fn(|cx| {
        <tonic::transport::Channel as tower::Service<http::Request<tonic::body::Body>>>::poll_ready(
            &mut channel,
            cx,
        )
    })
    .await
    .unwrap();
    let response = tower::Service::call(&mut channel, request).await.unwrap();
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().unwrap().to_string();
    }
    let collected = response.into_body().collect().await.unwrap();
    collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|s| s.to_str().unwrap().to_string())
        .unwrap_or_else(|| "none".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_unbounded_memory_peak_rss_stays_within_the_budget_under_hostile_requests() {
    let (bridge, mut records) = start_bridge().await;
    let http = reqwest::Client::new();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", bridge.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut statuses = Vec::new();

    // One 256 KiB resource shared by 3000 one-span traces: 750 MiB of records from a body
    // under 1 MiB.
    let body = Bytes::from(shared_resource(256 * 1024, 3000));
    let (a, b) = tokio::join!(
        post(
            &http,
            &bridge,
            "application/x-protobuf",
            false,
            body.to_vec()
        ),
        grpc_export(&channel, body.clone(), false),
    );
    statuses.push(("shared resource, HTTP", a.to_string()));
    statuses.push(("shared resource, gRPC", b));
    drop(body);

    // 4 million empty spans in 8 MiB.
    let body = Bytes::from(empty_spans(4_000_000));
    let (a, b) = tokio::join!(
        post(
            &http,
            &bridge,
            "application/x-protobuf",
            false,
            body.to_vec()
        ),
        grpc_export(&channel, body.clone(), false),
    );
    statuses.push(("empty spans, HTTP", a.to_string()));
    statuses.push(("empty spans, gRPC", b));
    drop(body);

    // A resource field repeated a million times, three requests at once.
    let body = Bytes::from(repeated_resource(1_000_000));
    let (a, b, c) = tokio::join!(
        post(
            &http,
            &bridge,
            "application/x-protobuf",
            false,
            body.to_vec()
        ),
        grpc_export(&channel, body.clone(), false),
        grpc_export(&channel, body.clone(), false),
    );
    statuses.push(("repeated resource, HTTP", a.to_string()));
    statuses.push(("repeated resource, gRPC", b));
    statuses.push(("repeated resource, gRPC", c));
    drop(body);

    // `{}`-filled OTLP/JSON: empty resource entries, and empty spans.
    let resources = empty_objects(r#"{"resourceSpans":["#, "]}", 2_500_000);
    let spans = empty_objects(
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":["#,
        "]}]}]}",
        2_500_000,
    );
    let (a, b) = tokio::join!(
        post(&http, &bridge, "application/json", false, resources),
        post(&http, &bridge, "application/json", false, spans),
    );
    statuses.push(("{} resources, JSON", a.to_string()));
    statuses.push(("{} spans, JSON", b.to_string()));

    // Gzip bombs: 15 MiB of zeros in about 15 KiB, eight at once over HTTP, then over gRPC.
    let bomb = Bytes::from(gzip(&vec![0u8; 15 * MIB]));
    let http_bombs = (0..8).map(|_| {
        post(
            &http,
            &bridge,
            "application/x-protobuf",
            true,
            bomb.to_vec(),
        )
    });
    for s in futures::future::join_all(http_bombs).await {
        statuses.push(("gzip bomb, HTTP", s.to_string()));
    }
    let grpc_bombs = (0..8).map(|_| grpc_export(&channel, bomb.clone(), true));
    for s in futures::future::join_all(grpc_bombs).await {
        statuses.push(("gzip bomb, gRPC", s));
    }

    let peak = peak_rss();
    assert!(
        peak < BUDGET + SLACK,
        "peak RSS {} MiB, over max_in_flight_bytes + 256 MiB ({} MiB); answers: {statuses:?}",
        peak / MIB,
        (BUDGET + SLACK) / MIB
    );
    eprintln!("peak RSS {} MiB; answers: {statuses:?}", peak / MIB);

    // None of them was accepted as it is (the bodies are refused, or rejected item by item).
    for (what, status) in &statuses {
        assert!(status != "0" && status != "200", "{what}: {status}");
    }

    // The bridge is still serving: a good request gets through and its record arrives.
    let t = trace_id(9);
    let good = traces(
        resource("svc", "svc-1"),
        vec![span(t, 1, "after the storm")],
    );
    let status = post(
        &http,
        &bridge,
        "application/x-protobuf",
        false,
        good.encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let record = loop {
        let record = records.recv().await.unwrap();
        if record.key_str().as_deref() == Some(hex::encode(t).as_str()) {
            break record;
        }
    };
    assert_eq!(decode_trace_record(&record), good);

    bridge.shutdown().await.unwrap();
}
