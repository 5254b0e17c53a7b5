//! The demo as a user runs it, under sustained load: services A -> B, A -> C export to `dlog up`
//! while requests arrive at a steady rate, and, from the SDKs' own shutdown reports, nothing
//! was dropped; every span the services report as exported is in the store.
//!
//! This is the promise that failed at 300 requests/s when every answer waited for the stages'
//! checkpoint: the services' queues filled and dropped most spans.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dlog_storage::embedded::count_rows;

/// Requests per second through service A, and for how long. `DEMO_LOAD_RATE` and
/// `DEMO_LOAD_SECONDS` raise them for a measurement run (in release: `cargo test --release -p
/// dlog-services --test demo_load`); the suite's defaults fit a loaded 2-core debug build.
fn rate() -> u64 {
    env_or("DEMO_LOAD_RATE", 50)
}

fn seconds() -> u64 {
    env_or("DEMO_LOAD_SECONDS", 10)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Service {
    child: Child,
    report: mpsc::Receiver<String>,
}

fn service(name: &str, exe: &str, port: u16, endpoint: &str, others: &[(&str, u16)]) -> Service {
    let mut command = Command::new(exe);
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--endpoint", endpoint])
        .args(["--heartbeat-secs", "1"])
        // The demo's latencies (B's 100-1400 ms queries, C's load) at 1/100, and no injected
        // failures: this test is about every exported record arriving, at a rate a debug
        // build on two cores sustains.
        .env("DEMO_LATENCY_SCALE", "0.01")
        .env("DEMO_ERROR_RATE", "0")
        .env("DEMO_OVERLOAD_ERROR_RATE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (flag, port) in others {
        command.args([*flag, &format!("http://127.0.0.1:{port}")]);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let (tx, report) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("exported ") {
                let _ = tx.send(line);
            }
        }
    });
    Service { child, report }
}

fn wait_healthy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ =
                stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "service on {port} never became healthy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (exported spans, exported logs, undelivered spans, undelivered logs) from a report line:
/// "exported S spans and L logs in ..; not delivered: N spans (..), M logs (..)".
fn parse_report(line: &str) -> (u64, u64, u64, u64) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |i: usize| words[i].parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
    let nd = words.iter().position(|w| *w == "delivered:").unwrap();
    let logs_at = words[nd..]
        .iter()
        .position(|w| w.ends_with("unsent),"))
        .map(|i| nd + i + 1)
        .unwrap_or_else(|| panic!("{line}"));
    (number(1), number(4), number(nd + 1), number(logs_at))
}

#[test]
fn parse_report_reads_the_sdk_shutdown_line() {
    let line = "exported 120 spans and 45 logs in 12ms; not delivered: 3 spans (1 dropped, 2 failed, 0 unsent), 4 logs (4 dropped, 0 failed, 0 unsent)";
    assert_eq!(parse_report(line), (120, 45, 3, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_services_at_a_sustained_rate_drop_nothing_and_every_exported_span_is_stored() {
    let data = tempfile::tempdir().unwrap();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let running = dlog::start(dlog::Config {
        data_dir: data.path().to_path_buf(),
        otlp_grpc: any,
        otlp_http: any,
        bridge_admin: any,
        indexer_admin: any,
        alerter_admin: any,
        viewer: any,
        ..dlog::Config::default()
    })
    .await
    .unwrap();
    let endpoint = format!("http://{}", running.grpc_addr());
    let (a, b, c) = (free_port(), free_port(), free_port());
    let services = vec![
        service(
            "service-c",
            env!("CARGO_BIN_EXE_service-c"),
            c,
            &endpoint,
            &[],
        ),
        service(
            "service-b",
            env!("CARGO_BIN_EXE_service-b"),
            b,
            &endpoint,
            &[],
        ),
        service(
            "service-a",
            env!("CARGO_BIN_EXE_service-a"),
            a,
            &endpoint,
            &[("--service-b", b), ("--service-c", c)],
        ),
    ];
    for port in [a, b, c] {
        tokio::task::spawn_blocking(move || wait_healthy(port))
            .await
            .unwrap();
    }

    // Open loop: requests leave on schedule whatever earlier ones are doing.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (rate, seconds) = (rate(), seconds());
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut requests = Vec::new();
    for _ in 0..rate * seconds {
        ticker.tick().await;
        let client = client.clone();
        requests.push(tokio::spawn(async move {
            client
                .get(format!("http://127.0.0.1:{a}/work"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }));
    }
    let mut ok = 0;
    for request in requests {
        ok += u64::from(request.await.unwrap());
    }
    assert_eq!(ok, rate * seconds, "every request through A succeeds");

    let (mut spans, mut logs) = (0, 0);
    for mut service in services {
        let status = Command::new("kill")
            .args(["-TERM", &service.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let line = tokio::task::spawn_blocking(move || {
            let line = service
                .report
                .recv_timeout(Duration::from_secs(60))
                .expect("the service printed its telemetry report");
            assert!(service.child.wait().unwrap().success());
            line
        })
        .await
        .unwrap();
        println!("{line}");
        let (s, l, lost_spans, lost_logs) = parse_report(&line);
        assert_eq!((lost_spans, lost_logs), (0, 0), "{line}");
        spans += s;
        logs += l;
    }
    // 3 server spans, 2 client spans and the handlers' spans per request at least.
    assert!(spans >= rate * seconds * 6, "{spans} spans");
    println!("{} requests at {rate}/s: the services exported {spans} spans and {logs} logs, none dropped", rate * seconds);

    assert!(running.processed(Duration::from_secs(120)).await);
    let store = data.path().join("store");
    assert_eq!(count_rows(&store, "spans").unwrap(), spans);
    let stored_logs =
        count_rows(&store, "logs").unwrap() + count_rows(&store, "heartbeats").unwrap();
    assert_eq!(stored_logs, logs, "log records and heartbeat events");
    running.shutdown().await.unwrap();
}
