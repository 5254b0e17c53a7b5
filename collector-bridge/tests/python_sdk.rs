//! Interoperability: the official OpenTelemetry Python SDK (a client nobody here wrote)
//! exports to the bridge over gRPC and over HTTP/protobuf, and its data arrives in Kafka.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dlog_core::names;

const CHILDREN: usize = 5;

/// Runs the script (killed after 60 s) and returns the trace id it printed.
async fn python_export(mode: &str, endpoint: &str) -> String {
    python_export_with(mode, endpoint, &[]).await
}

/// [`python_export`] with extra environment variables for the SDK.
async fn python_export_with(mode: &str, endpoint: &str, env: &[(&str, &str)]) -> String {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let script: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "py",
        "otel_sdk_export.py",
    ]
    .iter()
    .collect();
    let args = [mode.to_string(), endpoint.to_string(), CHILDREN.to_string()];
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .arg(&script)
            .args(&args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs (the OpenTelemetry Python SDK is pip-installed by .ci/run)");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait for python").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("python exporter output")
    })
    .await
    .expect("python task");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success(),
        "python exporter failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.len(), 32, "trace id expected, got {stdout:?}");
    stdout
}

async fn check_arrival(env: &Env, mode: &str, trace: &str) {
    let want = trace.to_string();
    let records = read_until(
        &env.kafka.brokers,
        &env.config.trace_logs_topic,
        move |rs| {
            let spans: usize = rs
                .iter()
                .filter(|r| r.key_str().as_deref() == Some(want.as_str()))
                .map(|r| span_names(&decode_trace_record(r)).len())
                .sum();
            spans > CHILDREN // the children and the root
        },
    )
    .await;
    let mut names: Vec<String> = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.key_str().as_deref() == Some(trace))
    {
        let request = decode_trace_record(r);
        let resource = request.resource_spans[0].resource.clone().unwrap();
        assert!(resource.attributes.contains(&string_kv(
            names::SERVICE_NAME,
            &format!("py-interop-{mode}")
        )));
        for rs in &request.resource_spans {
            for s in rs.scope_spans.iter().flat_map(|ss| ss.spans.iter()) {
                assert_eq!(hex::encode(&s.trace_id), trace);
                names.push(s.name.clone());
            }
        }
    }
    names.sort();
    let mut expected: Vec<String> = (0..CHILDREN).map(|i| format!("child-{i}")).collect();
    expected.push("root".into());
    expected.sort();
    assert_eq!(names, expected);

    // Logs inside the spans carry the trace and are keyed by it; the heartbeat is keyed by
    // the instance on its own topic.
    let want = trace.to_string();
    let logs = read_until(
        &env.kafka.brokers,
        &env.config.service_logs_topic,
        move |rs| {
            rs.iter()
                .filter(|r| r.key_str().as_deref() == Some(want.as_str()))
                .map(|r| {
                    decode_logs_record(r).resource_logs[0].scope_logs[0]
                        .log_records
                        .len()
                })
                .sum::<usize>()
                >= CHILDREN
        },
    )
    .await;
    let in_trace: usize = logs
        .iter()
        .filter(|r| r.key_str().as_deref() == Some(trace))
        .map(|r| {
            decode_logs_record(r).resource_logs[0].scope_logs[0]
                .log_records
                .len()
        })
        .sum();
    assert_eq!(in_trace, CHILDREN);
    let instance = format!("py-interop-{mode}-1");
    let wanted = instance.clone();
    let beats = read_until(
        &env.kafka.brokers,
        &env.config.heartbeat_logs_topic,
        move |rs| {
            rs.iter()
                .any(|r| r.key_str().as_deref() == Some(wanted.as_str()))
        },
    )
    .await;
    let beat = beats
        .iter()
        .find(|r| r.key_str().as_deref() == Some(instance.as_str()))
        .expect("heartbeat record");
    let request = decode_logs_record(beat);
    assert_eq!(
        request.resource_logs[0].scope_logs[0].log_records[0].event_name,
        names::HEARTBEAT_EVENT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_grpc_export_arrives_in_kafka() {
    let env = Env::start(|_| {}).await;
    let trace = python_export("grpc", &env.grpc_url()).await;
    check_arrival(&env, "grpc", &trace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_http_protobuf_export_arrives_in_kafka() {
    let env = Env::start(|_| {}).await;
    let trace = python_export("http", &format!("http://{}", env.bridge().http_addr())).await;
    check_arrival(&env, "http", &trace).await;
}

/// The SDK sends the bridge's token through the standard `OTEL_EXPORTER_OTLP_HEADERS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_with_the_token_in_otel_exporter_otlp_headers_arrives_in_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "py-s3cret\n").unwrap();
    let env = Env::start(|c| c.auth_token_file = Some(tokens)).await;
    let headers = [(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "authorization=Bearer%20py-s3cret",
    )];
    let trace = python_export_with("grpc", &env.grpc_url(), &headers).await;
    check_arrival(&env, "grpc", &trace).await;
    let trace = python_export_with(
        "http",
        &format!("http://{}", env.bridge().http_addr()),
        &headers,
    )
    .await;
    check_arrival(&env, "http", &trace).await;
}

/// The `rotel-agent` binary inside the pip-installed `rotel` package (`ROTEL_AGENT` wins).
fn rotel_agent() -> PathBuf {
    if let Ok(path) = std::env::var("ROTEL_AGENT") {
        return PathBuf::from(path);
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import rotel,os;print(os.path.dirname(rotel.__file__))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "rotel is not pip-installed (scripts/install-test-deps.sh installs it)"
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("rotel-agent")
}

/// A collector in front of the bridge, as on the pipeline machine of a two-machine setup:
/// the Python SDK exports to an OTLP collector (rotel, standing in for otelcol, which cannot be
/// installed here), whose `otlp` exporter forwards to the bridge. Spans, logs and heartbeats
/// must arrive with the same keys, topics and content as when sent straight to the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_through_a_collector_in_front_of_the_bridge_arrives_in_kafka() {
    let env = Env::start(|_| {}).await;
    let grpc_port = dlog_testkit::free_port().unwrap();
    let http_port = dlog_testkit::free_port().unwrap();
    let mut collector = Command::new(rotel_agent())
        .args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{grpc_port}"),
            "--otlp-http-endpoint",
            &format!("127.0.0.1:{http_port}"),
            "--exporter",
            "otlp",
            "--otlp-exporter-endpoint",
            &env.grpc_url(),
            "--pid-file",
            &std::env::temp_dir()
                .join(dlog_testkit::unique_name("rotel"))
                .to_string_lossy(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rotel-agent");
    dlog_testkit::wait_for_port(([127, 0, 0, 1], grpc_port).into(), Duration::from_secs(20))
        .expect("rotel listens");
    let trace = python_export("grpc", &format!("http://127.0.0.1:{grpc_port}")).await;
    check_arrival(&env, "grpc", &trace).await;
    let _ = collector.kill();
    let _ = collector.wait();
}
