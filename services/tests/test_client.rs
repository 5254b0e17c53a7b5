//! The test client: at a rate it is open-loop (a slow server does not slow the sends, and
//! latency counts from the scheduled time, queueing included); against the real demo services
//! it prints a table per service and endpoint whose counts follow the mix, and trace links
//! of the slowest and failed requests whose traces are in the store; a target that is down
//! is named before anything is sent, and the exit code says the run could not happen.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use dlog_services::client::{run_load, Endpoint, LoadPlan, Pace};

/// A server that takes `service_ms` per request, one request at a time, and notes when each
/// request arrived.
async fn slow_server(service_ms: u64) -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let serial = Arc::new(tokio::sync::Mutex::new(()));
    let app = axum::Router::new().route(
        "/work",
        get({
            let arrivals = Arc::clone(&arrivals);
            move || {
                let (arrivals, serial) = (Arc::clone(&arrivals), Arc::clone(&serial));
                async move {
                    arrivals.lock().unwrap().push(Instant::now());
                    let _one_at_a_time = serial.lock().await;
                    tokio::time::sleep(Duration::from_millis(service_ms)).await;
                    "done"
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, arrivals)
}

fn plan(addr: SocketAddr, rate: f64, requests: u64, max_in_flight: usize) -> LoadPlan {
    LoadPlan {
        endpoints: vec![Endpoint::parse(&format!("slow=http://{addr}/work")).unwrap()],
        pace: Pace::Rate(rate),
        requests: Some(requests),
        duration: None,
        max_in_flight,
        timeout: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_rate_a_slow_server_does_not_slow_the_sends_and_latency_counts_the_queue() {
    // 40 requests at 40/s: due over ~1 s; the server answers one per 100 ms, so answering
    // them all takes ~4 s. A closed-loop client would have sent only ~10 in the first second.
    let (addr, arrivals) = slow_server(100).await;
    let started = Instant::now();
    let report = run_load(&plan(addr, 40.0, 40, 1000), |_| {}).await;
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 40);
    assert_eq!((report.requests, report.failures), (40, 0));
    let last_arrival = arrivals.iter().max().unwrap().duration_since(started);
    let all_answered = report.elapsed;
    println!(
        "last request arrived after {last_arrival:?}; the last answer came after {all_answered:?}"
    );
    assert!(
        all_answered >= Duration::from_millis(3900),
        "the server serialises 40 x 100 ms: {all_answered:?}"
    );
    assert!(
        last_arrival * 2 < all_answered,
        "the requests went out on schedule ({last_arrival:?}), not paced by the answers ({all_answered:?})"
    );
    // The last answers waited ~3 s in the server's queue: the latency says so.
    let rows = report.rows();
    assert!(rows[0].p99_ms > 2500.0, "p99 {} ms", rows[0].p99_ms);
    assert!(rows[0].p50_ms > 1000.0, "p50 {} ms", rows[0].p50_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_an_in_flight_slot_counts_in_the_latency() {
    // One request at a time, 100 ms each, 20 due at 40/s: each waits for the one before, so
    // the last is answered ~2 s after it was due, although each took 100 ms once sent.
    let (addr, _) = slow_server(100).await;
    let report = run_load(&plan(addr, 40.0, 20, 1), |_| {}).await;
    assert_eq!(report.requests, 20);
    let last_due = Duration::from_millis(19 * 25);
    let last_sent = report.last_sent;
    assert!(
        last_sent > last_due + Duration::from_millis(1000),
        "the limit held requests back: the last left at {last_sent:?}, due at {last_due:?}"
    );
    let slowest = report.slowest()[0].latency;
    assert!(
        slowest > Duration::from_millis(1400),
        "latency counts from the scheduled time: {slowest:?}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Services(Vec<Child>);

impl Drop for Services {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn service(exe: &str, port: u16, endpoint: &str, args: &[String]) -> Child {
    Command::new(exe)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--endpoint", endpoint])
        .args(args)
        // The demo's own behaviour (B fails 20%, C's load), at 1/20 of its latencies.
        .env("DEMO_LATENCY_SCALE", "0.05")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(port: u16) {
    dlog_testkit::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(30)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_against_the_demo_services_follows_the_mix_and_links_stored_traces() {
    let data = tempfile::tempdir().unwrap();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let running = dlog::start(dlog::Config {
        data_dir: data.path().to_path_buf(),
        otlp_grpc: any,
        otlp_http: any,
        bridge_admin: any,
        indexer_admin: any,
        alerter_admin: any,
        ..dlog::Config::default()
    })
    .await
    .unwrap();
    let endpoint = format!("http://{}", running.grpc_addr());
    let (a, b, c) = (free_port(), free_port(), free_port());
    let _services = Services(vec![
        service(env!("CARGO_BIN_EXE_service-c"), c, &endpoint, &[]),
        service(env!("CARGO_BIN_EXE_service-b"), b, &endpoint, &[]),
        service(
            env!("CARGO_BIN_EXE_service-a"),
            a,
            &endpoint,
            &[
                format!("--service-b=http://127.0.0.1:{b}"),
                format!("--service-c=http://127.0.0.1:{c}"),
            ],
        ),
    ]);
    for port in [a, b, c] {
        tokio::task::spawn_blocking(move || wait_for(port))
            .await
            .unwrap();
    }

    let viewer = "http://127.0.0.1:16686";
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_test-client"))
            .arg(format!("--target=service-a=http://127.0.0.1:{a}/work*8"))
            .arg(format!("--target=service-b=http://127.0.0.1:{b}/work*1"))
            .arg(format!("--target=service-c=http://127.0.0.1:{c}/work*1"))
            .args(["--rate", "50", "--requests", "100"])
            .args(["--endpoint", &endpoint, "--viewer", viewer])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    println!("{stdout}\n{stderr}");
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("3 targets healthy"), "{stderr}");

    let lines: Vec<&str> = stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["service", "endpoint", "requests", "success", "p50", "p95", "p99", "max"]
    );
    let row = |service: &str| -> Vec<String> {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(service))
            .unwrap_or_else(|| panic!("no row for {service}:\n{stdout}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    for (service, requests) in [
        ("service-a", "80"),
        ("service-b", "10"),
        ("service-c", "10"),
    ] {
        let r = row(service);
        assert_eq!((r[1].as_str(), r[2].as_str()), ("/work", requests), "{r:?}");
        let success: f64 = r[3].trim_end_matches('%').parse().unwrap();
        assert!((0.0..=100.0).contains(&success));
        // p50 <= p95 <= p99, each "N ms".
        let p: Vec<f64> = [4, 6, 8].iter().map(|i| r[*i].parse().unwrap()).collect();
        assert!(p[0] <= p[1] && p[1] <= p[2], "{r:?}");
    }
    assert_eq!(row("all")[1], "100");

    // service-b fails 20% of its queries by default: some requests failed, and are listed.
    let links: Vec<&str> = stdout
        .split_whitespace()
        .filter(|w| w.starts_with("http://127.0.0.1:16686/trace/"))
        .collect();
    assert!(stdout.contains("slowest requests:"), "{stdout}");
    assert!(stdout.contains("failed requests ("), "{stdout}");
    assert!(links.len() >= 6, "{links:?}");
    // Each link names a trace the store holds: the client's span and the services' spans.
    assert!(running.processed(Duration::from_secs(60)).await);
    let store = running.store();
    let slowest = links[0].rsplit('/').next().unwrap();
    assert_eq!(slowest.len(), 32);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = store.get_trace(slowest).await.unwrap();
        if spans.iter().any(|s| s.service.name == "test-client")
            && spans.iter().any(|s| s.service.name == "service-a")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trace {slowest} not stored: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(running.processed(Duration::from_secs(10)).await);
    }
    running.shutdown().await.unwrap();
}

#[test]
fn a_target_that_is_down_is_named_and_nothing_is_sent() {
    let closed = free_port();
    let output = Command::new(env!("CARGO_BIN_EXE_test-client"))
        .arg(format!("--target=service-x=http://127.0.0.1:{closed}/work"))
        .args(["--no-telemetry", "--requests", "5"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("service-x is down"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_concurrency_exactly_that_many_requests_are_outstanding() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/work",
        get({
            let (now, most) = (Arc::clone(&now), Arc::clone(&most));
            move || {
                let (now, most) = (Arc::clone(&now), Arc::clone(&most));
                async move {
                    let at = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(at, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    "done"
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let report = run_load(
        &LoadPlan {
            pace: Pace::Concurrency(4),
            ..plan(addr, 1.0, 40, 1000)
        },
        |_| {},
    )
    .await;
    assert_eq!((report.requests, report.failures), (40, 0));
    assert_eq!(most.load(Ordering::SeqCst), 4, "never more than 4 at once");
}
