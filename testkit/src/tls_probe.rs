//! A TLS listener that stands where a Kafka broker would: it completes (or refuses) TLS
//! handshakes with a certificate its own CA issued, and reads the first Kafka request sent
//! over each connection. It shows that a client's security settings reach the wire (the
//! handshake succeeds only when the client trusts the CA) without a broker that speaks
//! SASL/SSL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// What happened on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The handshake completed; the client's first Kafka request, if it sent one whole.
    Completed(Option<KafkaRequest>),
    /// The handshake failed (the client refused the certificate, or spoke plaintext).
    Failed(String),
}

/// The header of a Kafka request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRequest {
    /// The API key (18 is ApiVersions, 17 SaslHandshake).
    pub api_key: i16,
    /// The client's `client.id`.
    pub client_id: String,
}

/// Kafka's ApiVersions request key, the first request a client sends.
pub const API_VERSIONS: i16 = 18;

/// The probe; it stops listening when dropped.
pub struct TlsProbe {
    addr: SocketAddr,
    ca_pem: String,
    events: Arc<Mutex<Vec<Handshake>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsProbe {
    /// Listens on a free 127.0.0.1 port with a certificate for `127.0.0.1` and `localhost`
    /// from a fresh CA.
    pub async fn start() -> Result<TlsProbe> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dlog TLS probe CA");
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?
            .signed_by(&key, &issuer)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the TLS probe")?;
        let addr = listener.local_addr()?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&events);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let event = match acceptor.accept(stream).await {
                        Ok(mut tls) => Handshake::Completed(
                            tokio::time::timeout(Duration::from_secs(5), read_request(&mut tls))
                                .await
                                .ok()
                                .flatten(),
                        ),
                        Err(e) => Handshake::Failed(e.to_string()),
                    };
                    recorded.lock().unwrap().push(event);
                });
            }
        });
        Ok(TlsProbe {
            addr,
            ca_pem: ca_cert.pem(),
            events,
            task,
        })
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        self.addr.to_string()
    }

    /// Writes the probe's CA certificate (PEM) into `dir`, for `ssl.ca.location`.
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("probe-ca.pem");
        std::fs::write(&path, &self.ca_pem).context("write the probe's CA")?;
        Ok(path)
    }

    /// Every connection so far.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (polling, up to `within`) until some connection satisfies `wanted`, and returns
    /// it; `None` when none did in time.
    pub async fn wait_for(
        &self,
        within: Duration,
        wanted: impl Fn(&Handshake) -> bool,
    ) -> Option<Handshake> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.handshakes().into_iter().find(|h| wanted(h)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a completed handshake followed by a Kafka ApiVersions request.
    pub async fn wait_for_kafka_over_tls(&self, within: Duration) -> Option<KafkaRequest> {
        match self
            .wait_for(
                within,
                |h| matches!(h, Handshake::Completed(Some(r)) if r.api_key == API_VERSIONS),
            )
            .await
        {
            Some(Handshake::Completed(request)) => request,
            _ => None,
        }
    }
}

/// Reads one Kafka request's header: `size i32, api_key i16, api_version i16,
/// correlation_id i32, client_id (i16 length, bytes)`.
async fn read_request(
    tls: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> Option<KafkaRequest> {
    let size = tls.read_i32().await.ok()?;
    if !(10..=1 << 20).contains(&size) {
        return None;
    }
    let mut body = vec![0u8; size as usize];
    tls.read_exact(&mut body).await.ok()?;
    let api_key = i16::from_be_bytes([body[0], body[1]]);
    let len = i16::from_be_bytes([body[8], body[9]]);
    let client_id = match usize::try_from(len) {
        Ok(len) => String::from_utf8_lossy(body.get(10..10 + len)?).into_owned(),
        Err(_) => String::new(),
    };
    Some(KafkaRequest { api_key, client_id })
}
