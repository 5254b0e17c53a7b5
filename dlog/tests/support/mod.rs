//! OTLP requests with known ids, and a client that reports which were answered OK.
#![allow(dead_code)]

use std::net::SocketAddr;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

pub fn loopback_port_zero() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The all-in-one settings with every listener on a free loopback port, data in `data`.
pub fn config(data: &std::path::Path) -> dlog::Config {
    dlog::Config {
        data_dir: data.to_path_buf(),
        otlp_grpc: loopback_port_zero(),
        otlp_http: loopback_port_zero(),
        bridge_admin: loopback_port_zero(),
        indexer_admin: loopback_port_zero(),
        alerter_admin: loopback_port_zero(),
        viewer: loopback_port_zero(),
        ..dlog::Config::default()
    }
}

/// `dlog up` as a child process on free loopback ports, data in `data`, logging at
/// `log_level` to a piped stderr (the caller reads it).
pub fn spawn_dlog_up(data: &std::path::Path, log_level: &str) -> std::process::Child {
    spawn_dlog_up_with(data, log_level, &[])
}

/// [`spawn_dlog_up`] with more `dlog up` flags.
pub fn spawn_dlog_up_with(
    data: &std::path::Path,
    log_level: &str,
    extra: &[&str],
) -> std::process::Child {
    use std::process::{Command, Stdio};
    let any = "127.0.0.1:0";
    Command::new(env!("CARGO_BIN_EXE_dlog"))
        .arg("--data-dir")
        .arg(data)
        .args(["up", "--otlp-grpc", any, "--otlp-http", any])
        .args(["--bridge-admin", any, "--indexer-admin", any])
        .args(["--alerter-admin", any, "--viewer", any])
        .args(extra)
        .env("DLOG_LOG", log_level)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dlog up")
}

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// The trace id of request `n`'s trace `t`: distinct for every (stream, request, trace).
pub fn trace_id(stream: u32, request: u32, trace: u32) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = 0xd1;
    id[4..8].copy_from_slice(&stream.to_be_bytes());
    id[8..12].copy_from_slice(&request.to_be_bytes());
    id[12..16].copy_from_slice(&trace.to_be_bytes());
    id
}

/// A request of `traces` traces of `spans` spans each, with 3 attributes per span.
pub fn request(stream: u32, request: u32, traces: u32, spans: u32) -> ExportTraceServiceRequest {
    let mut out = Vec::new();
    for t in 0..traces {
        let trace = trace_id(stream, request, t);
        for s in 0..spans {
            let mut span_id = [0u8; 8];
            span_id[4..].copy_from_slice(&(s + 1).to_be_bytes());
            out.push(Span {
                trace_id: trace.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: if s == 0 {
                    Vec::new()
                } else {
                    let mut parent = [0u8; 8];
                    parent[7] = 1;
                    parent.to_vec()
                },
                name: format!("op-{}", s % 4),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(s) * 1000,
                end_time_unix_nano: 1_700_000_000_000_500_000 + u64::from(s) * 1000,
                attributes: vec![
                    kv("http.request.method", "GET"),
                    kv("http.route", "/orders/{id}"),
                    kv("stream", &stream.to_string()),
                ],
                ..Default::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "loadgen"),
                    kv("service.instance.id", &format!("loadgen-{stream}")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "dlog-test".into(),
                    ..Default::default()
                }),
                spans: out,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub async fn client(addr: SocketAddr) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the OTLP/gRPC receiver")
}
