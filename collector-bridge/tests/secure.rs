//! Private by default: bearer-token auth on the OTLP receivers and `/metrics` (one shared
//! layer), and TLS / mTLS (rustls) on every listener, checked with real clients (reqwest over
//! rustls, tonic).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use collector_bridge::{start_with_sink, ChannelSink, Config, RunningBridge, Subscriber};
use common::*;
use dlog_core::names;
use dlog_core::source::{ChannelSource, Mark, RawRecord, Source};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::sync::mpsc;
use tonic::Code;

const TOKEN: &str = "t0k3n-for-tests";

fn config(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config {
        otlp_grpc: "127.0.0.1:0".parse().unwrap(),
        otlp_http: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        produce_timeout_ms: 5_000,
        ..Config::default()
    };
    tweak(&mut config);
    config
}

/// A bridge over the in-process sink, with a stage that acknowledges every record and hands
/// it to the test.
async fn start(config: Config) -> (RunningBridge, mpsc::UnboundedReceiver<RawRecord>) {
    let (sender, mut source) = ChannelSource::new(8);
    let sink = ChannelSink::new(vec![Subscriber {
        name: "storage".into(),
        topics: vec![
            names::TRACE_LOGS_TOPIC.into(),
            names::SERVICE_LOGS_TOPIC.into(),
            names::HEARTBEAT_LOGS_TOPIC.into(),
        ],
        sender,
    }]);
    let bridge = start_with_sink(config, sink).await.unwrap();
    let (records_tx, records_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(batch) = source.next_batch(100, Duration::from_secs(3600)).await {
            if source.ack(&Mark::latest(&batch)).await.is_err() {
                return;
            }
            for record in batch {
                if records_tx.send(record).is_err() {
                    return;
                }
            }
        }
    });
    (bridge, records_rx)
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn protobuf_traces(trace: u8, name: &str) -> Vec<u8> {
    traces(
        resource("svc", "svc-1"),
        vec![span(trace_id(trace), 1, name)],
    )
    .encode_to_vec()
}

/// The next record the stage received, which must be the span `name` of `trace`.
async fn expect_span(records: &mut mpsc::UnboundedReceiver<RawRecord>, trace: u8, name: &str) {
    let record = tokio::time::timeout(Duration::from_secs(10), records.recv())
        .await
        .expect("a record within 10 s")
        .expect("stage running");
    assert_eq!(record.key_str().unwrap(), hex::encode(trace_id(trace)));
    assert_eq!(span_names(&decode_trace_record(&record)), vec![name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refuses_missing_or_wrong_tokens_with_401_and_unauthenticated_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(
        dir.path(),
        "tokens",
        &format!("# current and previous\n{TOKEN}\nold-token\n"),
    );
    let (bridge, mut records) = start(config(|c| c.auth_token_file = Some(tokens))).await;
    let http = reqwest::Client::new();
    let traces_url = format!("http://{}/v1/traces", bridge.http_addr());
    let post = |auth: Option<&str>| {
        let mut request = http
            .post(&traces_url)
            .header("content-type", "application/x-protobuf")
            .body(protobuf_traces(1, "over-http"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };

    // HTTP: no token, a wrong one, another scheme: 401; nothing reaches the stage.
    for auth in [None, Some("Bearer wrong"), Some(&*format!("Basic {TOKEN}"))] {
        let answer = post(auth).await.unwrap();
        assert_eq!(answer.status(), 401, "{auth:?}");
        assert_eq!(answer.headers()["www-authenticate"], "Bearer");
    }
    let answer = post(Some(&format!("Bearer {TOKEN}"))).await.unwrap();
    assert_eq!(answer.status(), 200);
    expect_span(&mut records, 1, "over-http").await;
    // Either token of the file is accepted.
    assert_eq!(post(Some("Bearer old-token")).await.unwrap().status(), 200);
    expect_span(&mut records, 1, "over-http").await;

    // gRPC: UNAUTHENTICATED without the token, OK with it.
    let mut client = TraceServiceClient::connect(format!("http://{}", bridge.grpc_addr()))
        .await
        .unwrap();
    let request = traces(
        resource("svc", "svc-1"),
        vec![span(trace_id(2), 1, "over-grpc")],
    );
    let refused = client.export(request.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let mut with_token = tonic::Request::new(request);
    with_token
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    client.export(with_token).await.unwrap();
    expect_span(&mut records, 2, "over-grpc").await;

    // Admin: /healthz stays open for probes, /metrics needs the token.
    let admin = |path: &str| format!("http://{}{path}", bridge.admin_addr());
    assert_eq!(
        http.get(admin("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        http.get(admin("/metrics")).send().await.unwrap().status(),
        401
    );
    let metrics = http
        .get(admin("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    let count = |listener: &str| {
        metric(
            &text,
            &format!("dlog_bridge_unauthenticated_total{{listener=\"{listener}\"}}"),
        )
    };
    assert_eq!(count("otlp_http"), 3.0);
    assert_eq!(count("otlp_grpc"), 1.0);
    assert_eq!(count("admin"), 1.0);
    bridge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_settings_requests_need_no_token() {
    let (bridge, mut records) = start(config(|_| {})).await;
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", bridge.http_addr()))
        .header("content-type", "application/x-protobuf")
        .body(protobuf_traces(3, "open"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    expect_span(&mut records, 3, "open").await;
    bridge.shutdown().await.unwrap();
}

/// A CA, a server certificate it issued for 127.0.0.1, and a client certificate it issued.
struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    client_identity_pem: String,
}

fn issue_pki(name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let client_params = CertificateParams::new(vec!["sender.example".to_string()]).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_identity_pem: format!("{}{}", client_cert.pem(), client_key.serialize_pem()),
    }
}

fn tls_settings(dir: &Path, pki: &Pki, config: &mut Config) {
    config.tls_cert = Some(write(dir, "server.pem", &pki.server_cert_pem));
    config.tls_key = Some(write(dir, "server.key", &pki.server_key_pem));
}

fn https_client(ca_pem: &str, identity: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap());
    if let Some(identity) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_delivers_https_requests_from_a_client_trusting_the_ca_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let pki = issue_pki("server");
    let tokens = write(dir.path(), "tokens", TOKEN);
    let (bridge, mut records) = start(config(|c| {
        tls_settings(dir.path(), &pki, c);
        c.auth_token_file = Some(tokens);
    }))
    .await;
    let client = https_client(&pki.ca_pem, None);
    let answer = client
        .post(format!(
            "https://127.0.0.1:{}/v1/traces",
            bridge.http_addr().port()
        ))
        .header("content-type", "application/x-protobuf")
        .bearer_auth(TOKEN)
        .body(protobuf_traces(4, "over-https"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    expect_span(&mut records, 4, "over-https").await;

    // The admin listener speaks TLS too.
    let metrics = client
        .get(format!(
            "https://127.0.0.1:{}/metrics",
            bridge.admin_addr().port()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);

    // Plaintext to a TLS port gets no answer (the handshake fails); a client that does not
    // trust the CA refuses the server.
    let plaintext = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", bridge.http_addr()))
        .header("content-type", "application/x-protobuf")
        .bearer_auth(TOKEN)
        .body(protobuf_traces(5, "in-the-clear"))
        .send()
        .await;
    assert!(plaintext.is_err(), "{plaintext:?}");
    let other = issue_pki("other");
    let untrusting = https_client(&other.ca_pem, None)
        .get(format!(
            "https://127.0.0.1:{}/healthz",
            bridge.http_addr().port()
        ))
        .send()
        .await;
    assert!(untrusting.is_err(), "{untrusting:?}");
    // The gRPC port refuses plaintext too.
    let grpc = TraceServiceClient::connect(format!("http://{}", bridge.grpc_addr())).await;
    if let Ok(mut grpc) = grpc {
        let answer = grpc
            .export(traces(
                resource("svc", "svc-1"),
                vec![span(trace_id(6), 1, "grpc-in-the-clear")],
            ))
            .await;
        assert!(answer.is_err(), "{answer:?}");
    }
    assert!(
        records.try_recv().is_err(),
        "nothing sent in the clear arrived"
    );
    bridge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_client_without_a_certificate_and_admits_one_the_ca_issued() {
    let dir = tempfile::tempdir().unwrap();
    let pki = issue_pki("mtls");
    let (bridge, mut records) = start(config(|c| {
        tls_settings(dir.path(), &pki, c);
        c.tls_client_ca = Some(write(dir.path(), "clients.pem", &pki.ca_pem));
    }))
    .await;
    let url = format!("https://127.0.0.1:{}/v1/traces", bridge.http_addr().port());
    let send = |client: reqwest::Client, trace: u8| {
        client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(protobuf_traces(trace, "mtls"))
            .send()
    };
    let anonymous = send(https_client(&pki.ca_pem, None), 7).await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    let stranger = issue_pki("stranger");
    let foreign = send(
        https_client(&pki.ca_pem, Some(&stranger.client_identity_pem)),
        8,
    )
    .await;
    assert!(foreign.is_err(), "{foreign:?}");
    let admitted = send(https_client(&pki.ca_pem, Some(&pki.client_identity_pem)), 9)
        .await
        .unwrap();
    assert_eq!(admitted.status(), 200);
    expect_span(&mut records, 9, "mtls").await;
    bridge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_are_checked_before_anything_binds() {
    let dir = tempfile::tempdir().unwrap();
    let only_cert = config(|c| c.tls_cert = Some(dir.path().join("server.pem")));
    let err = start_with_sink(only_cert, ChannelSink::new(Vec::new()))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tls_key"), "{err}");
    let missing = config(|c| {
        c.tls_cert = Some(dir.path().join("absent.pem"));
        c.tls_key = Some(dir.path().join("absent.key"));
    });
    let (sender, _source) = ChannelSource::new(1);
    let sink = ChannelSink::new(vec![Subscriber {
        name: "storage".into(),
        topics: vec![
            names::TRACE_LOGS_TOPIC.into(),
            names::SERVICE_LOGS_TOPIC.into(),
            names::HEARTBEAT_LOGS_TOPIC.into(),
        ],
        sender,
    }]);
    let err = start_with_sink(missing, sink)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("tls_cert") && err.contains("absent.pem"),
        "{err}"
    );
}
