//! TLS on both sides of the indexing stage: it stores spans in Elasticsearch (osmem, or
//! `ELASTICSEARCH_URL` when it is plain http) reached through `https://` (a TLS-terminating
//! proxy with a certificate made for the test), trusting the CA given by `elasticsearch_ca`;
//! a server whose certificate that CA did not sign, or that was made for another host, fails
//! the start with an error naming the URL and the TLS reason. Its admin listener speaks TLS
//! with `/metrics` behind a bearer token.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use dlog_core::encoding::{encode_traces, Encoding};
use dlog_core::kafka::DeadLetterError;
use dlog_core::names;
use dlog_core::source::{ChannelSource, InProcessBatch, RawRecord};
use dlog_indexer::{DeadLetterSink, Indexer, IndexerConfig};
use dlog_storage::elastic::ElasticStore;
use dlog_storage::{StoreConfig, TraceQuery, TraceReader};
use dlog_testkit::tls::{Pki, TlsProxy};

const TOKEN: &str = "admin-secret-token";

#[derive(Default)]
struct Collected(Mutex<Vec<String>>);

#[async_trait]
impl DeadLetterSink for Collected {
    async fn send(&self, _record: &RawRecord, reason: &str) -> Result<(), DeadLetterError> {
        self.0.lock().unwrap().push(reason.to_string());
        Ok(())
    }
}

fn record(offset: i64, payload: Vec<u8>) -> RawRecord {
    RawRecord {
        topic: names::TRACE_LOGS_TOPIC.into(),
        partition: 0,
        offset,
        key: None,
        payload,
        headers: vec![(names::ENCODING_HEADER.into(), b"otlp_proto".to_vec())],
        timestamp_ms: None,
    }
}

/// The plain-http Elasticsearch the proxies forward to. An https `ELASTICSEARCH_URL` fails
/// the test rather than pass it unrun: there would be nothing to put TLS in front of.
fn plain_elastic() -> dlog_testkit::Elastic {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    assert!(
        !elastic.url.starts_with("https://"),
        "ELASTICSEARCH_URL is https: these tests put their own TLS in front of a plain-http \
         server; unset it (osmem is used) or give a plain-http one"
    );
    elastic
}

/// A plain TCP relay to `upstream` (`http://HOST:PORT`) that keeps every byte clients sent
/// through it, to read the requests' headers after TLS was taken off. Returns its
/// `http://` URL and the bytes.
async fn recording_relay(upstream: &str) -> (String, Arc<Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (record, upstream) = (Arc::clone(&record), upstream.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let requests = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_write.shutdown().await;
                };
                let answers = tokio::io::copy(&mut server_read, &mut client_write);
                let _ = tokio::join!(requests, answers);
            });
        }
    });
    (url, seen)
}

/// The `Authorization` values of the requests `bytes` holds.
fn authorization_headers(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split("\r\n")
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        })
        .collect()
}

fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_elasticsearch_over_https_and_the_admin_listener_speaks_tls() {
    let elastic = plain_elastic();
    let dir = tempfile::tempdir().unwrap();
    let es_pki = Pki::issue("elasticsearch").unwrap();
    let es_files = es_pki.write(&dir.path().join("es").tap_mkdir()).unwrap();
    let proxy = TlsProxy::start(&elastic.url, &es_pki).unwrap();
    let admin_pki = Pki::issue("admin").unwrap();
    let admin_files = admin_pki
        .write(&dir.path().join("admin").tap_mkdir())
        .unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# admin scrapers\n{TOKEN}\n")).unwrap();

    let prefix = dlog_testkit::unique_name("tls");
    let mut store = StoreConfig::elasticsearch(&proxy.url).with_index_prefix(&prefix);
    store.elasticsearch_ca = Some(es_files.ca.clone());
    let config = IndexerConfig {
        retry_initial_ms: 10,
        retry_max_ms: 50,
        batch_linger_ms: 10,
        admin: "127.0.0.1:0".parse().unwrap(),
        tls_cert: Some(admin_files.cert.clone()),
        tls_key: Some(admin_files.key.clone()),
        auth_token_file: Some(tokens),
        store,
        ..Default::default()
    };
    let dead = Arc::new(Collected::default());
    let (tx, source) = ChannelSource::new(4);
    let running = Indexer::builder(config)
        .with_source(source)
        .with_dead_letters(Arc::clone(&dead) as Arc<dyn DeadLetterSink>)
        .start()
        .await
        .unwrap();
    let admin_addr = running.admin_addr();

    let request = two_service_request(dlog_storage::store::now_unix_nano());
    let trace_id = hex::encode(request.trace_id);
    let sent: usize = [&request.frontend_spans, &request.backend_spans]
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let (ack, acked) = tokio::sync::oneshot::channel();
    tx.send(InProcessBatch {
        records: vec![
            record(
                0,
                encode_traces(Encoding::OtlpProto, &request.frontend_spans).unwrap(),
            ),
            record(
                1,
                encode_traces(Encoding::OtlpProto, &request.backend_spans).unwrap(),
            ),
        ],
        ack,
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .expect("acknowledged in time")
        .unwrap();
    assert!(dead.0.lock().unwrap().is_empty(), "{:?}", dead.0.lock());
    assert!(proxy.handshakes() > 0, "the stage never went through TLS");

    // The documents are in the server behind the proxy: read them back over plain http.
    let mut direct = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(&prefix);
    direct.install_templates = false;
    let direct = ElasticStore::connect(&direct).await.unwrap();
    let spans = direct.get_trace(&trace_id).await.unwrap();
    assert_eq!(spans.len(), sent, "{spans:#?}");
    let found = direct
        .find_traces(&TraceQuery {
            service: Some("backend".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        found.iter().any(|t| t.trace_id == trace_id),
        "trace search over the summaries written through https: {found:#?}"
    );

    // The admin listener speaks TLS only; /healthz is open, /metrics needs the token.
    let admin = https_client(&admin_pki.ca_pem);
    let base = format!("https://127.0.0.1:{}", admin_addr.port());
    let health = admin.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let refused = admin.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let metrics = admin
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    let refused_count = text.lines().find_map(|l| {
        l.strip_prefix("dlog_indexer_admin_unauthenticated_total ")?
            .trim()
            .parse::<f64>()
            .ok()
    });
    assert_eq!(refused_count, Some(1.0), "{text}");
    assert!(
        text.contains("dlog_indexer_records_consumed_total"),
        "{text}"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", admin_addr.port()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        !plain.is_ok_and(|r| r.status().is_success()),
        "plain http answered"
    );

    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap()
        .unwrap();
}

/// Starts the indexer against `proxy` trusting `ca`, and returns its start error.
async fn start_error(proxy: &TlsProxy, ca: &std::path::Path) -> String {
    let mut store = StoreConfig::elasticsearch(&proxy.url)
        .with_index_prefix(dlog_testkit::unique_name("tls-refused"));
    store.elasticsearch_ca = Some(ca.to_path_buf());
    let config = IndexerConfig {
        admin: "127.0.0.1:0".parse().unwrap(),
        store,
        ..Default::default()
    };
    let (_tx, source) = ChannelSource::new(1);
    let started = tokio::time::timeout(
        Duration::from_secs(20),
        Indexer::builder(config)
            .with_source(source)
            .with_dead_letters(Arc::new(Collected::default()) as Arc<dyn DeadLetterSink>)
            .start(),
    )
    .await
    .expect("the start neither failed nor succeeded: it hung");
    match started {
        Ok(_) => panic!("started against a server it must not trust"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_or_misnamed_elasticsearch_certificate_fails_the_start_naming_url_and_reason()
{
    let elastic = plain_elastic();
    let dir = tempfile::tempdir().unwrap();
    let trusted = Pki::issue("trusted").unwrap();
    let trusted_files = trusted.write(dir.path()).unwrap();

    // Signed by a CA nobody configured.
    let impostor = Pki::issue("impostor").unwrap();
    let proxy = TlsProxy::start(&elastic.url, &impostor).unwrap();
    let error = start_error(&proxy, &trusted_files.ca).await;
    assert!(error.contains(&proxy.url), "names the URL: {error}");
    assert!(
        error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
        "names the TLS reason: {error}"
    );
    assert!(proxy.saw_failed_handshake(Duration::from_secs(5)));

    // Signed by the configured CA, but for another host.
    let misnamed = Pki::issue_for("misnamed", &["search.example"]).unwrap();
    let misnamed_files = misnamed
        .write(&dir.path().join("misnamed").tap_mkdir())
        .unwrap();
    let proxy = TlsProxy::start(&elastic.url, &misnamed).unwrap();
    let error = start_error(&proxy, &misnamed_files.ca).await;
    assert!(error.contains(&proxy.url), "names the URL: {error}");
    assert!(
        error.contains("invalid peer certificate") && error.contains("not valid for name"),
        "names the TLS reason: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_opens_an_elasticsearch_that_requires_one() {
    let elastic = plain_elastic();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::issue("mtls").unwrap();
    let files = pki.write(dir.path()).unwrap();
    // TLS off at the proxy, then a relay that keeps the requests, then the server.
    let (relay, requests) = recording_relay(&elastic.url).await;
    let proxy = TlsProxy::start_with(
        &relay,
        dlog_testkit::tls::server_config(&pki, true).unwrap(),
    )
    .unwrap();
    let prefix = dlog_testkit::unique_name("mtls");
    let mut config = StoreConfig::elasticsearch(&proxy.url).with_index_prefix(&prefix);
    config.elasticsearch_ca = Some(files.ca.clone());

    // Without a client certificate the server ends the handshake: the error says so.
    let refused = match ElasticStore::connect(&config).await {
        Ok(_) => panic!("connected without the client certificate the server requires"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains(&proxy.url), "names the URL: {refused}");
    assert!(
        refused.contains("CertificateRequired"),
        "names the reason: {refused}"
    );

    // With it (basic auth set as well, which a client certificate must not displace),
    // templates install, and spans written through the proxy are in the server.
    config.elasticsearch_client_cert = Some(files.client_cert.clone());
    config.elasticsearch_client_key = Some(files.client_key.clone());
    config.username = Some("indexer".into());
    config.password = Some("secret".into());
    requests.lock().unwrap().clear();
    let store = ElasticStore::connect(&config).await.unwrap();
    assert!(
        !requests.lock().unwrap().is_empty(),
        "no request reached the server"
    );
    let sent = authorization_headers(&requests.lock().unwrap());
    // base64("indexer:secret")
    assert!(
        !sent.is_empty() && sent.iter().all(|v| v == "Basic aW5kZXhlcjpzZWNyZXQ="),
        "basic auth on every request: {sent:?}"
    );
    let request = two_service_request(dlog_storage::store::now_unix_nano());
    let trace_id = hex::encode(request.trace_id);
    let docs: Vec<dlog_storage::Document> =
        dlog_core::model::spans_from_request(&request.frontend_spans)
            .into_iter()
            .map(dlog_storage::Document::Span)
            .collect();
    assert!(!docs.is_empty());
    use dlog_storage::SpanWriter as _;
    let outcomes = store.write(&docs).await.unwrap();
    assert!(outcomes
        .iter()
        .all(|o| *o == dlog_storage::WriteOutcome::Written));
    let mut direct = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(&prefix);
    direct.install_templates = false;
    let direct = ElasticStore::connect(&direct).await.unwrap();
    assert_eq!(direct.get_trace(&trace_id).await.unwrap().len(), docs.len());
    let after_write = authorization_headers(&requests.lock().unwrap());
    assert!(
        after_write.len() > sent.len()
            && after_write
                .iter()
                .all(|v| v == "Basic aW5kZXhlcjpzZWNyZXQ="),
        "basic auth on the write as well: {after_write:?}"
    );

    // An API key instead travels as `ApiKey …` next to the client certificate.
    config.username = None;
    config.password = None;
    config.api_key = Some("aWQ6a2V5".into());
    config.install_templates = false;
    requests.lock().unwrap().clear();
    let store = ElasticStore::connect(&config).await.unwrap();
    assert!(!store.get_trace(&trace_id).await.unwrap().is_empty());
    let sent = authorization_headers(&requests.lock().unwrap());
    assert!(
        !sent.is_empty() && sent.iter().all(|v| v == "ApiKey aWQ6a2V5"),
        "the API key on every request: {sent:?}"
    );
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
