//! Interoperability: the official OpenTelemetry Python SDK (a client nobody here wrote)
//! exports to the bridge over gRPC and over HTTP/protobuf, and its data arrives in Kafka.

mod common;

use std::path::{Path, PathBuf};
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
    let output = run_python(mode, endpoint, env).await;
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

/// Runs the script (killed after 60 s) with extra environment variables, whatever it exits
/// with.
async fn run_python(mode: &str, endpoint: &str, env: &[(&str, &str)]) -> std::process::Output {
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
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .arg(&script)
            .args(&args)
            // requests lets these replace a session's own CA file (the HTTP exporter's
            // OTEL_EXPORTER_OTLP_CERTIFICATE), so a machine-wide bundle would hide the test's CA.
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE")
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
    .expect("python task")
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

/// A CA and a server certificate it issued for 127.0.0.1, as PEM files in `dir`:
/// (CA, certificate, key).
fn issue_server_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "python interop test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("server.pem", server_cert.pem()),
        write("server.key", server_key.serialize_pem()),
    )
}

/// The bridge's count of refused requests on `listener`, read over https with the token;
/// `None` while the series does not exist yet.
async fn unauthenticated(client: &reqwest::Client, env: &Env, listener: &str) -> Option<f64> {
    let answer = client
        .get(format!(
            "https://127.0.0.1:{}/metrics",
            env.bridge().admin_addr().port()
        ))
        .bearer_auth(TLS_TOKEN)
        .send()
        .await
        .expect("GET /metrics over https");
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.unwrap();
    let series = format!("dlog_bridge_unauthenticated_total{{listener=\"{listener}\"}}");
    text.lines()
        .find_map(|line| line.strip_prefix(series.as_str())?.trim().parse().ok())
}

/// `curl` posting `body` (none: an empty POST) as a protobuf trace request over https,
/// trusting `ca`; the status it got and the HTTP version it spoke.
///
/// A request with a body goes over HTTP/1.1: the bridge answers 401 before reading a body
/// and then ends the HTTP/2 stream with RST_STREAM(NO_ERROR), as RFC 9113 section 8.1 allows,
/// which curl 7.88 (Debian 12) may report as error 92 after printing the 401.
fn curl_status(ca: &Path, url: &str, body: Option<&Path>, token: Option<&str>) -> String {
    let mut curl = Command::new("curl");
    curl.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
    ])
    .args(["--max-time", "20", "--cacert"])
    .arg(ca)
    .args(["-X", "POST", "-H", "content-type: application/x-protobuf"]);
    if let Some(body) = body {
        curl.arg("--http1.1")
            .arg("--data-binary")
            .arg(format!("@{}", body.display()));
    }
    if let Some(token) = token {
        curl.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    let output = curl.arg(url).output().expect("curl runs");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const TLS_TOKEN: &str = "py-tls-s3cret";

/// Security with real clients: the Python SDK exports over TLS (the CA in
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`) with the token in `OTEL_EXPORTER_OTLP_HEADERS`, over gRPC
/// and HTTP, and its data arrives in Kafka; without the token every export is refused and
/// counted; `curl` without a token gets 401, with it 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_tls_with_a_token_arrives_and_without_it_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = issue_server_pki(dir.path());
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TLS_TOKEN}\n")).unwrap();
    let env = Env::start(|c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        c.auth_token_file = Some(tokens);
    })
    .await;
    let grpc = format!("https://127.0.0.1:{}", env.bridge().grpc_addr().port());
    let http = format!("https://127.0.0.1:{}", env.bridge().http_addr().port());
    let ca_env = ca.to_str().unwrap();
    let with_token = [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_env),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20py-tls-s3cret",
        ),
    ];
    let trace = python_export_with("grpc", &grpc, &with_token).await;
    check_arrival(&env, "grpc", &trace).await;
    let trace = python_export_with("http", &http, &with_token).await;
    check_arrival(&env, "http", &trace).await;

    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    for (mode, endpoint, listener) in [("grpc", &grpc, "otlp_grpc"), ("http", &http, "otlp_http")] {
        let before = unauthenticated(&client, &env, listener)
            .await
            .unwrap_or(0.0);
        let without_token = [("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_env)];
        let output = run_python(mode, endpoint, &without_token).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("span export failures="),
            "{mode}: an export without the token must fail: {}\n{stderr}",
            output.status
        );
        // The spans and the log records (with the heartbeat) went in separate requests,
        // each refused.
        let after = unauthenticated(&client, &env, listener)
            .await
            .unwrap_or_else(|| panic!("{listener}: refusals are counted"));
        assert!(after >= before + 2.0, "{listener}: {before} -> {after}");
    }

    // curl: 401 without a token (or with a wrong one), over HTTP/1.1 and HTTP/2, each
    // counted; 200 with it.
    let body = dir.path().join("traces.pb");
    std::fs::write(
        &body,
        prost::Message::encode_to_vec(&traces(
            resource("curl", "curl-1"),
            vec![span(trace_id(9), 1, "from-curl")],
        )),
    )
    .unwrap();
    let url = format!("{http}/v1/traces");
    let before = unauthenticated(&client, &env, "otlp_http").await.unwrap();
    assert_eq!(curl_status(&ca, &url, Some(&body), None), "401 1.1");
    assert_eq!(
        curl_status(&ca, &url, Some(&body), Some("wrong")),
        "401 1.1"
    );
    assert_eq!(curl_status(&ca, &url, None, None), "401 2");
    let after = unauthenticated(&client, &env, "otlp_http").await.unwrap();
    assert_eq!(after, before + 3.0);
    assert_eq!(
        curl_status(&ca, &url, Some(&body), Some(TLS_TOKEN)),
        "200 1.1"
    );
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
