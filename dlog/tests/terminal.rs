//! What senders write reaches an operator's terminal through `dlog logs`, `dlog alerts` and
//! `dlog trace`; escape sequences in it must print as visible text and do nothing.

mod support;

use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use support::*;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn dlog(data: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dlog"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_terminal_escapes_log_bodies_and_alerts_print_escaped() {
    let data = tempfile::tempdir().unwrap();
    let running = dlog::start(dlog::Config {
        data_dir: data.path().to_path_buf(),
        otlp_grpc: loopback_port_zero(),
        otlp_http: loopback_port_zero(),
        bridge_admin: loopback_port_zero(),
        indexer_admin: loopback_port_zero(),
        alerter_admin: loopback_port_zero(),
        ..dlog::Config::default()
    })
    .await
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let body = "clear\x1b[2J osc\x1b]8;;http://evil\x07link\x1b]8;;\x07 cr\rover";
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "svc\x1b[31mred"),
                    kv("service.instance.id", "svc-1"),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: now,
                    severity_number: 17,
                    severity_text: "ERROR".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(body.into())),
                    }),
                    attributes: vec![kv("error.code", "E\x1b[2J")],
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
    running.shutdown().await.unwrap();

    let logs = dlog(data.path(), &["logs"]);
    assert!(
        logs.contains("clear\\x1b[2J osc\\x1b]8;;http://evil\\x07link"),
        "{logs:?}"
    );
    assert!(logs.contains("cr\\rover"), "{logs:?}");
    assert!(logs.contains("svc\\x1b[31mred"), "{logs:?}");
    let alerts = dlog(data.path(), &["alerts"]);
    assert!(alerts.contains("error_log"), "{alerts:?}");
    for out in [&logs, &alerts] {
        assert!(
            !out.chars().any(|c| c == '\x1b' || c == '\r' || c == '\x07'),
            "raw control characters reached the terminal: {out:?}"
        );
    }
}
