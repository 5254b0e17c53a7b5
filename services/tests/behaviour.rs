//! The demo services behave as documented, as a user sees it over HTTP: service-b fails with
//! its three database error codes at its rate; service-c overloaded answers 503
//! `OVERLOAD_ERROR` at its rate and recovers when its load is set low through `/chaos`;
//! `/chaos` refuses a bad change naming the field; service-a fails when a dependency fails.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a service on a free port (OTLP to a closed port: the SDK drops and counts, the
/// service is not affected) and waits for its `/health`.
async fn start(exe: &str, args: &[String]) -> (Service, String) {
    let port = free_port();
    let child = Command::new(exe)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--endpoint", &format!("http://127.0.0.1:{}", free_port())])
        .args(args)
        .env("DEMO_LATENCY_SCALE", "0.01")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/health")).await.is_err() {
        assert!(Instant::now() < deadline, "{exe} never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (Service(child), base)
}

/// (status, `error` field) of `n` requests to `/work`.
async fn work(base: &str, n: usize) -> Vec<(u16, Option<String>)> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = client.get(format!("{base}/work")).send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        out.push((status, body["error"].as_str().map(str::to_string)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_b_fails_a_fifth_of_its_queries_with_database_errors() {
    let (_b, base) = start(env!("CARGO_BIN_EXE_service-b"), &[]).await;
    let answers = work(&base, 300).await;
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for (status, error) in &answers {
        match error {
            Some(code) => {
                assert_eq!(*status, 500, "{code}");
                *codes.entry(code.clone()).or_default() += 1;
            }
            None => assert_eq!(*status, 200),
        }
    }
    let failed: usize = codes.values().sum();
    // 20% of 300: 60 expected; 30..=95 holds with overwhelming probability.
    assert!(
        (30..=95).contains(&failed),
        "{failed} of 300 failed: {codes:?}"
    );
    let names: Vec<&str> = codes.keys().map(String::as_str).collect();
    assert_eq!(names, ["DB_CONN_ERROR", "DB_CONSTRAINT", "DB_TIMEOUT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_c_overloaded_rejects_some_requests_and_recovers_when_its_load_falls() {
    let args = ["--load", "95", "--load-baseline", "95", "--load-step", "0"].map(String::from);
    let (_c, base) = start(env!("CARGO_BIN_EXE_service-c"), &args).await;
    let answers = work(&base, 300).await;
    let rejected = answers
        .iter()
        .filter(|(status, error)| *status == 503 && error.as_deref() == Some("OVERLOAD_ERROR"))
        .count();
    assert!((30..=95).contains(&rejected), "{rejected} of 300 rejected");
    assert!(answers
        .iter()
        .all(|(status, _)| *status == 200 || *status == 503));

    let client = reqwest::Client::new();
    let changed: serde_json::Value = client
        .post(format!("{base}/chaos"))
        .body(r#"{"load": 10, "load_baseline": 10}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(changed["load"], 10.0);
    assert_eq!(
        changed["overload_error_rate"], 0.2,
        "other fields unchanged"
    );
    assert!(work(&base, 50).await.iter().all(|(s, _)| *s == 200));

    let refused = client
        .post(format!("{base}/chaos"))
        .body(r#"{"overload_error_rate": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("overload_error_rate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_a_fails_when_a_dependency_fails() {
    let (_b, b) = start(env!("CARGO_BIN_EXE_service-b"), &["--error-rate=1".into()]).await;
    // C's load held at its baseline, so that it is never overloaded here.
    let (_c, c) = start(env!("CARGO_BIN_EXE_service-c"), &["--load-step=0".into()]).await;
    let args = [format!("--service-b={b}"), format!("--service-c={c}")];
    let (_a, a) = start(env!("CARGO_BIN_EXE_service-a"), &args).await;
    for (status, error) in work(&a, 5).await {
        assert_eq!((status, error.as_deref()), (502, Some("DEPENDENCY_FAILED")));
    }
    let client = reqwest::Client::new();
    client
        .post(format!("{b}/chaos"))
        .body(r#"{"error_rate": 0, "slow_rate": 0}"#)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    for (status, _) in work(&a, 5).await {
        assert_eq!(status, 200);
    }
}
