//! `dlog up` with `--tls-cert`/`--tls-key` and `--auth-token-file`: the admin listeners of the
//! bridge, the indexer and the alerter all speak TLS only, answer `/healthz` without a token
//! and `/metrics` only with one.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use dlog_testkit::tls::Pki;

const TOKEN: &str = "scraper-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_listener_speaks_tls_and_asks_metrics_for_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::issue("dlog").unwrap();
    let pem = dir.path().join("pem");
    std::fs::create_dir_all(&pem).unwrap();
    let files = pki.write(&pem).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let alerter_admin: SocketAddr = ([127, 0, 0, 1], dlog_testkit::free_port().unwrap()).into();
    let running = dlog::start(dlog::Config {
        tls_cert: Some(files.cert.clone()),
        tls_key: Some(files.key.clone()),
        auth_token_file: Some(tokens),
        alerter_admin,
        ..support::config(&dir.path().join("data"))
    })
    .await
    .unwrap();

    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    for (stage, admin, metric) in [
        (
            "bridge",
            running.bridge_admin_addr(),
            "# TYPE dlog_bridge_requests counter",
        ),
        (
            "indexer",
            running.indexer_admin_addr(),
            "dlog_indexer_commits_total",
        ),
        ("alerter", alerter_admin, "dlog_alerter_decode_errors_total"),
    ] {
        let health = client
            .get(format!("https://{admin}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "{stage} /healthz");
        let refused = client
            .get(format!("https://{admin}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{stage} /metrics without a token");
        let metrics = client
            .get(format!("https://{admin}/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(metrics.status(), 200, "{stage} /metrics with the token");
        let text = metrics.text().await.unwrap();
        assert!(text.contains(metric), "{stage}: {text}");
        let plain = reqwest::Client::new()
            .get(format!("http://{admin}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert!(
            !plain.is_ok_and(|r| r.status().is_success()),
            "{stage} answered plain http"
        );
    }
    running.shutdown().await.unwrap();
}
