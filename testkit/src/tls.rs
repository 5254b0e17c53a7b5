//! TLS for system tests: certificates made on the spot ([`Pki`]), and a TLS-terminating TCP
//! proxy ([`TlsProxy`]) that puts a plain server (osmem, a webhook receiver) behind
//! `https://`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// A test CA, a server certificate it issued for `127.0.0.1` and `localhost`, and a client
/// certificate it issued (for mTLS).
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server certificate, PEM.
    pub cert_pem: String,
    /// The server certificate's private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The client certificate, PEM.
    pub client_cert_pem: String,
    /// The client certificate's private key, PEM (PKCS#8).
    pub client_key_pem: String,
}

impl Pki {
    /// A fresh CA named after `name`, and the certificates it issued (the server's for
    /// `127.0.0.1` and `localhost`).
    pub fn issue(name: &str) -> Result<Pki> {
        Self::issue_for(name, &["127.0.0.1", "localhost"])
    }

    /// [`Pki::issue`] with a server certificate for `hosts` (names or IP addresses).
    pub fn issue_for(name: &str, hosts: &[&str]) -> Result<Pki> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let server_params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &issuer)?;
        let client_params = CertificateParams::new(vec![format!("{name}-client.example")])?;
        let client_key = KeyPair::generate()?;
        let client_cert = client_params.signed_by(&client_key, &issuer)?;
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            cert_pem: server_cert.pem(),
            key_pem: server_key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    /// Writes the PEM files into `dir` (`ca.pem`, `server.pem`, `server.key`, `client.pem`,
    /// `client.key`) and returns their paths.
    pub fn write(&self, dir: &Path) -> Result<PkiFiles> {
        let put = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
            Ok(path)
        };
        Ok(PkiFiles {
            ca: put("ca.pem", &self.ca_pem)?,
            cert: put("server.pem", &self.cert_pem)?,
            key: put("server.key", &self.key_pem)?,
            client_cert: put("client.pem", &self.client_cert_pem)?,
            client_key: put("client.key", &self.client_key_pem)?,
        })
    }
}

/// Where [`Pki::write`] put the files.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The client certificate.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// A TLS server configuration (ring provider) serving `pki`'s server certificate; with
/// `require_client_cert`, clients must present a certificate `pki`'s CA issued.
pub fn server_config(pki: &Pki, require_client_cert: bool) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = vec![CertificateDer::from_pem_slice(pki.cert_pem.as_bytes())?];
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes())?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes())?)?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How long the proxy waits after a failed `accept` before the next one.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// A TLS-terminating TCP proxy on a free loopback port, in front of a plain server. It runs
/// on its own thread (so sync and async tests alike can use it) until dropped.
pub struct TlsProxy {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The proxy's address.
    pub addr: SocketAddr,
    handshakes: Arc<AtomicU64>,
    failed_handshakes: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsProxy {
    /// Serves `pki`'s server certificate and forwards each connection, once its handshake
    /// finished, to `upstream` (an `http://HOST:PORT` URL or `HOST:PORT`).
    pub fn start(upstream: &str, pki: &Pki) -> Result<TlsProxy> {
        Self::start_with(upstream, server_config(pki, false)?)
    }

    /// [`TlsProxy::start`] with a TLS configuration of the caller's (for example one that
    /// requires client certificates, see [`server_config`]).
    pub fn start_with(upstream: &str, config: Arc<rustls::ServerConfig>) -> Result<TlsProxy> {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let handshakes = Arc::new(AtomicU64::new(0));
        let failed_handshakes = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let (ok, failed) = (handshakes.clone(), failed_handshakes.clone());
        let thread = std::thread::Builder::new()
            .name("tls-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime for the TLS proxy");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    let accept = async {
                        loop {
                            let Ok((client, _)) = listener.accept().await else {
                                // Out of file descriptors, say: pause rather than spin, as
                                // dlog's own listeners do.
                                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                                continue;
                            };
                            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                            let (ok, failed) = (ok.clone(), failed.clone());
                            tokio::spawn(async move {
                                let mut tls = match acceptor.accept(client).await {
                                    Ok(tls) => tls,
                                    Err(_) => {
                                        failed.fetch_add(1, Ordering::SeqCst);
                                        return;
                                    }
                                };
                                ok.fetch_add(1, Ordering::SeqCst);
                                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                                    return;
                                };
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                            });
                        }
                    };
                    tokio::select! {
                        () = accept => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(TlsProxy {
            url: format!("https://{addr}"),
            addr,
            handshakes,
            failed_handshakes,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// TLS handshakes that completed so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed so far (the client refused the certificate, or spoke
    /// plain text).
    pub fn failed_handshakes(&self) -> u64 {
        self.failed_handshakes.load(Ordering::SeqCst)
    }

    /// Waits until at least one handshake failed, at most `within` (the proxy sees a failure
    /// a moment after the client gave up); returns whether one did. It blocks the calling
    /// thread: the proxy runs on its own.
    pub fn saw_failed_handshake(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while self.failed_handshakes() == 0 {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
