//! Connection-level limits of the OTLP listeners: at most `max_connections` open
//! connections per listener (one more waits in the kernel's backlog until one closes), an
//! HTTP/1 header-read timeout, and HTTP/2 keepalive pings that close connections whose peer
//! stopped answering.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long to pause accepting after an accept error (for example too many open files).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Open connections at once.
    pub max_connections: usize,
    /// HTTP/1: how long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// HTTP/2: interval of keepalive pings.
    pub keepalive_interval: Duration,
    /// HTTP/2: how long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// HTTP/2: streams one connection may have open at once.
    pub max_concurrent_streams: u32,
}

/// Serves `app` (HTTP/1 and HTTP/2 without TLS) on `listener` under `limits` until `stop`
/// resolves, then finishes the open connections' requests (HTTP/2 gets a GOAWAY).
pub(crate) async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
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
                    tracing::warn!(error = %e, "accepting an OTLP/HTTP connection failed");
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
        tokio::spawn(async move {
            // hyper's header timeout starts once it reads a request; until then it waits for
            // the bytes that tell HTTP/1 from HTTP/2, without a limit.
            if !request_begins(&stream, header_timeout).await {
                drop(slot);
                return;
            }
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "OTLP/HTTP connection ended with an error");
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
/// first byte that cannot start the HTTP/2 preface, or the whole preface. A connection that
/// stays silent (or stops inside the preface) is closed.
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

/// The connections `listener` accepts, at most `max_connections` open at once: the next one
/// is accepted only once an earlier one closed.
pub(crate) fn capped_incoming(
    listener: TcpListener,
    max_connections: usize,
) -> impl Stream<Item = Result<CappedStream, io::Error>> {
    let slots = Arc::new(Semaphore::new(max_connections));
    futures::stream::unfold((listener, slots), |(listener, slots)| async move {
        let slot = slots.clone().acquire_owned().await.ok()?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let capped = CappedStream {
                        stream,
                        _slot: slot,
                    };
                    return Some((Ok(capped), (listener, slots)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an OTLP/gRPC connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    })
}

/// A connection holding one of its listener's `max_connections` slots until it is dropped.
pub(crate) struct CappedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for CappedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
