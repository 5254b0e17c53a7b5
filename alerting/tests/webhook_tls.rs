//! The webhook output over `https://` (an HTTPS receiver with a certificate made for the test):
//! trusting the CA in `ca_file`, the alert arrives; a receiver whose certificate that CA did
//! not sign gets nothing, and the failure is counted as a dropped alert, with the stage
//! running on (the error's text, naming the endpoint and the TLS reason, is checked by the
//! webhook module's own tests). The alerter's admin listener speaks
//! TLS with `/metrics` behind a bearer token.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Json;
use common::*;
use dlog_alerting::{Alerter, ManualClock};
use dlog_core::source::{ChannelSource, InProcessBatch, RawRecord};
use dlog_testkit::tls::{Pki, TlsProxy};
use serde_json::Value;

const TOKEN: &str = "alerter-admin-token";

type Received = Arc<Mutex<Vec<Value>>>;

/// A plain HTTP receiver of alerts on loopback: its URL and what it received.
async fn receiver() -> (String, Received, tokio::task::JoinHandle<()>) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/alerts",
            post(
                |State(got): State<Received>, Json(body): Json<Value>| async move {
                    got.lock().unwrap().push(body);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(received.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, received, server)
}

fn error_record(trace: [u8; 16]) -> RawRecord {
    let request = logs(
        resource("svc-a", "a-1", &[]),
        vec![error_log("checkout failed", "E500", "boom", trace, T0)],
    );
    RawRecord {
        topic: dlog_core::names::SERVICE_LOGS_TOPIC.into(),
        partition: 0,
        offset: 0,
        key: Some(dlog_core::encoding::hex_id(&trace).into_bytes()),
        payload: dlog_core::encoding::encode_logs(
            dlog_core::encoding::Encoding::OtlpProto,
            &request,
        )
        .unwrap(),
        headers: vec![(
            dlog_core::names::ENCODING_HEADER.into(),
            b"otlp_proto".to_vec(),
        )],
        timestamp_ms: None,
    }
}

/// Sends one error log through the stage and waits for its acknowledgement.
async fn send_and_wait_ack(tx: &tokio::sync::mpsc::Sender<InProcessBatch>, trace: [u8; 16]) {
    let (ack, acked) = tokio::sync::oneshot::channel();
    tx.send(InProcessBatch {
        records: vec![error_record(trace)],
        ack,
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .expect("acknowledged in time")
        .unwrap();
}

fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// The value of `name` (a full series name, labels included) on the admin `/metrics`.
async fn metric(client: &reqwest::Client, admin: SocketAddr, name: &str) -> Option<f64> {
    let text = client
        .get(format!("https://{admin}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_an_https_webhook_trusting_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let hook_pki = Pki::issue("webhook").unwrap();
    let hook_dir = dir.path().join("hook");
    std::fs::create_dir_all(&hook_dir).unwrap();
    let hook_files = hook_pki.write(&hook_dir).unwrap();
    let (plain_url, received, server) = receiver().await;
    let proxy = TlsProxy::start(&plain_url, &hook_pki).unwrap();

    let admin_pki = Pki::issue("alerter-admin").unwrap();
    let admin_dir = dir.path().join("admin");
    std::fs::create_dir_all(&admin_dir).unwrap();
    let admin_files = admin_pki.write(&admin_dir).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();

    let state_dir = tempfile::tempdir().unwrap();
    let mut config = webhook_only_config(state_dir.path(), format!("{}/alerts", proxy.url));
    config.outputs.webhook.ca_file = Some(hook_files.ca.clone());
    config.admin = "127.0.0.1:0".parse().unwrap();
    config.tls_cert = Some(admin_files.cert.clone());
    config.tls_key = Some(admin_files.key.clone());
    config.auth_token_file = Some(tokens);
    let (tx, source) = ChannelSource::new(4);
    let stage = Alerter::builder(config)
        .with_source(source)
        .with_clock(Arc::new(ManualClock::new(T0)))
        .start()
        .await
        .unwrap();
    let admin = stage.admin_addr().expect("bound before start returned");

    // The webhook is required: the record is acknowledged only once the receiver took it.
    send_and_wait_ack(&tx, [0x3a; 16]).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["event"], "fired");
    assert_eq!(got[0]["rule"], "error_log");
    assert_eq!(got[0]["labels"]["error_code"], "E500");
    assert!(proxy.handshakes() > 0, "the alert did not travel over TLS");

    // The admin listener speaks TLS; /metrics needs the token, /healthz does not.
    let client = https_client(&admin_pki.ca_pem);
    let health = client
        .get(format!("https://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let refused = client
        .get(format!("https://{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        metric(
            &client,
            admin,
            "dlog_alerter_output_sent_total{output=\"webhook\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(&client, admin, "dlog_alerter_admin_unauthenticated_total").await,
        Some(1.0)
    );

    drop(tx);
    stage.shutdown().await.unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_webhook_certificate_is_a_counted_delivery_failure_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Pki::issue("trusted").unwrap();
    let trusted_files = trusted.write(dir.path()).unwrap();
    let impostor = Pki::issue("impostor").unwrap();
    let (plain_url, received, server) = receiver().await;
    let proxy = TlsProxy::start(&plain_url, &impostor).unwrap();
    let url = format!("{}/alerts/T0K3N", proxy.url);

    // Through the stage, best effort: the record is acknowledged, the alert counted as
    // dropped for the webhook, and the stage runs on.
    let admin_pki = Pki::issue("alerter-admin").unwrap();
    let admin_dir = dir.path().join("admin");
    std::fs::create_dir_all(&admin_dir).unwrap();
    let admin_files = admin_pki.write(&admin_dir).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let mut config = webhook_only_config(state_dir.path(), url);
    config.outputs.webhook.required = false;
    config.outputs.webhook.ca_file = Some(trusted_files.ca.clone());
    config.admin = "127.0.0.1:0".parse().unwrap();
    config.tls_cert = Some(admin_files.cert.clone());
    config.tls_key = Some(admin_files.key.clone());
    config.auth_token_file = Some(tokens);
    let (tx, source) = ChannelSource::new(4);
    let mut stage = Alerter::builder(config)
        .with_source(source)
        .with_clock(Arc::new(ManualClock::new(T0)))
        .start()
        .await
        .unwrap();
    let admin = stage.admin_addr().expect("bound before start returned");
    send_and_wait_ack(&tx, [0x4a; 16]).await;
    let client = https_client(&admin_pki.ca_pem);
    let dropped = "dlog_alerter_output_dropped_total{output=\"webhook\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&client, admin, dropped).await != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the refused delivery was never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(received.lock().unwrap().is_empty());
    assert!(proxy.saw_failed_handshake(Duration::from_secs(5)));
    assert!(
        tokio::time::timeout(Duration::ZERO, stage.stopped())
            .await
            .is_err(),
        "the stage stopped"
    );

    drop(tx);
    stage.shutdown().await.unwrap();
    server.abort();
}
