//! The `collector-bridge` binary: flags over env over the TOML file, validation before start,
//! and a clean exit on SIGTERM.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dlog_testkit::{free_port, unique_name, wait_for_port, Kafka};

const BIN: &str = env!("CARGO_BIN_EXE_collector-bridge");

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("collector-bridge did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_env_beat_file_and_sigterm_stops_cleanly() {
    let kafka = Kafka::start().unwrap();
    let topic = unique_name("file_trace_logs");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bridge.toml");
    std::fs::write(
        &file,
        format!(
            "kafka_brokers = \"127.0.0.1:1\"\ntrace_logs_topic = \"{topic}\"\ncreate_topics = true\ntopic_partitions = 1\n"
        ),
    )
    .unwrap();
    let (env_grpc, flag_grpc, http, admin) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let mut child = Command::new(BIN)
        .args(["--config", file.to_str().unwrap()])
        .args(["--otlp-grpc", &format!("127.0.0.1:{flag_grpc}")])
        .args(["--otlp-http", &format!("127.0.0.1:{http}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        // env beats the file's unreachable broker; the flag beats env's gRPC address.
        .env("DLOG_BRIDGE_KAFKA_BROKERS", &kafka.brokers)
        .env("DLOG_BRIDGE_OTLP_GRPC", format!("127.0.0.1:{env_grpc}"))
        .env("DLOG_BRIDGE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for_port(([127, 0, 0, 1], admin).into(), Duration::from_secs(30)).unwrap();
    let health = reqwest::get(format!("http://127.0.0.1:{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
        format!("http://127.0.0.1:{flag_grpc}"),
    )
    .await
    .unwrap();
    let t = trace_id(1);
    client
        .export(traces(
            resource("svc", "svc-1"),
            vec![span(t, 1, "via the binary")],
        ))
        .await
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", env_grpc))
            .await
            .is_err(),
        "the env address was used although a flag overrode it"
    );
    let records = read_until(&kafka.brokers, &topic, |rs| !rs.is_empty()).await;
    assert_eq!(records[0].key_str().unwrap(), hex::encode(t));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_exit(&mut child, Duration::from_secs(30));
    assert!(exit.success(), "exit after SIGTERM: {exit}");
}

#[test]
fn invalid_settings_fail_before_start_naming_the_key() {
    let output = Command::new(BIN)
        .args(["--max-message-bytes", "5", "--otlp-grpc", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_message_bytes"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "otlp_grcp = \"127.0.0.1:4317\"\n").unwrap();
    let output = Command::new(BIN)
        .args(["--config", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("otlp_grcp") && stderr.contains("bad.toml"),
        "{stderr}"
    );
}
