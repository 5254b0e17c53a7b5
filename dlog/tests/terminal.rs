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
    let running = dlog::start(config(data.path())).await.unwrap();
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

/// `dlog up 2> file` used to fill the file with colour codes: logs carry ANSI colours only
/// when written to a terminal.
#[test]
fn regression_ansi_in_files_logs_to_a_pipe_carry_no_colour_codes() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let mut child = spawn_dlog_up(data.path(), "info");
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let up = line.starts_with("dlog is up:");
        seen.push(line);
        if up {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = seen.join("\n");
    assert!(text.contains("INFO"), "no log line was written: {text}");
    assert!(
        text.contains("local log"),
        "the start-up line names the local log, not Kafka: {text}"
    );
    assert!(!text.contains('\x1b'), "colour codes in a pipe: {text:?}");
}

/// `dlog dead-letters | head -1` used to panic ("failed printing to stdout: Broken pipe")
/// and exit 101 once `head` had gone: a reader that leaves early ends the output quietly.
#[test]
fn regression_broken_pipe_cli_output_into_a_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader, Write};
    let data = tempfile::tempdir().unwrap();
    // Far more than a pipe holds (64 KiB on Linux), so that the CLI is still writing when
    // the reader goes.
    let mut file = std::fs::File::create(data.path().join("dead_letters.jsonl")).unwrap();
    for offset in 0..20_000i64 {
        let letter = dlog::dead_letters::DeadLetter {
            time_unix_nano: 1_700_000_000_000_000_000,
            reason: "not a valid OTLP record".into(),
            topic: "trace_logs".into(),
            partition: 0,
            offset,
            key: Some("k".into()),
            headers: vec![],
            payload_hex: "00".repeat(64),
        };
        serde_json::to_writer(&mut file, &letter).unwrap();
        file.write_all(b"\n").unwrap();
    }
    drop(file);
    let mut child = Command::new(env!("CARGO_BIN_EXE_dlog"))
        .arg("--data-dir")
        .arg(data.path())
        .arg("dead-letters")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone (dropped above) after one line, as `head -1` would be.
    assert!(first.contains("trace_logs[0]@0"), "{first:?}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("20000 dead letters"), "{stderr}");
}
