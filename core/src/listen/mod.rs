//! The listener layer every dlog server shares (the bridge's receivers, the admin endpoints,
//! the viewer): connection limits and deadlines, optional TLS ([`tls`]), and optional
//! bearer-token auth ([`auth`], a tower layer for axum routers and tonic servers alike).

pub mod auth;
pub mod tls;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

pub use auth::{BearerAuth, Tokens, TokensError};
pub use tls::{TlsError, TlsFiles};

/// How long to pause accepting after an accept error (for example too many open files).
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at once.
    pub max_connections: usize,
    /// HTTP/1: how long a client may take to send a request's headers; also how long a new
    /// connection may take to send its first bytes and finish its TLS handshake.
    pub header_read_timeout: Duration,
    /// HTTP/2: interval of keepalive pings.
    pub keepalive_interval: Duration,
    /// HTTP/2: how long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// HTTP/2: streams one connection may have open at once.
    pub max_concurrent_streams: u32,
}

/// An accepted connection, in the clear or under TLS.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (handshake done).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    /// The underlying TCP stream.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(stream) => stream,
            Conn::Tls(stream) => stream.get_ref().0,
        }
    }
}

/// `stream` as a [`Conn`]: under TLS when `tls` is given, once the handshake finished within
/// `within`. `None` when the handshake failed or took too long (the connection is dropped).
pub async fn establish(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    within: Duration,
) -> Option<Conn> {
    let Some(acceptor) = tls else {
        return Some(Conn::Plain(stream));
    };
    match tokio::time::timeout(within, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(Conn::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// Serves `app` (HTTP/1 and HTTP/2, under TLS when `tls` is given) on `listener` under
/// `limits` until `stop` resolves, then finishes the open connections' requests (HTTP/2 gets
/// a GOAWAY). `what` names the listener in logs.
pub async fn serve_http(
    what: &'static str,
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    stop: impl Future<Output = ()>,
) -> Result<(), String> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let header_timeout = limits.header_read_timeout;
        let tls = tls.clone();
        tokio::spawn(async move {
            // hyper's header timeout starts once it reads a request; until then it waits for
            // the bytes that tell HTTP/1 from HTTP/2 (or the TLS handshake), without a limit.
            if !request_begins(&stream, header_timeout).await {
                drop(slot);
                return;
            }
            let Some(conn) = establish(stream, tls.as_ref(), header_timeout).await else {
                drop(slot);
                return;
            };
            let connection = builder.serve_connection(TokioIo::new(conn), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, listener = what, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The HTTP/2 connection preface (prior knowledge), which a server must see whole to tell
/// HTTP/2 from HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often a connection that sent part of the HTTP/2 preface is looked at again.
const PREFACE_POLL: Duration = Duration::from_millis(10);

/// Whether `stream` sends, within `within`, enough to tell which HTTP version it speaks: a
/// first byte that cannot start the HTTP/2 preface (a TLS ClientHello among them), or the
/// whole preface. A connection that stays silent (or stops inside the preface) is closed.
async fn request_begins(stream: &TcpStream, within: Duration) -> bool {
    let wait = async {
        let mut buf = [0u8; 24];
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if n >= H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] {
                return true;
            }
            // Part of the preface: peek returns at once while it is all there is.
            tokio::time::sleep(PREFACE_POLL).await;
        }
    };
    tokio::time::timeout(within, wait).await.unwrap_or(false)
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}
