//! The OTLP/gRPC listener's connections: at most `max_connections` open at once, each under
//! TLS when configured (handshakes run concurrently, each within the header-read timeout, so
//! a slow client never holds up the next). The HTTP and admin listeners use the shared
//! [`dlog_core::listen::serve_http`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dlog_core::listen::{establish, Conn, ACCEPT_ERROR_PAUSE};
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

pub(crate) use dlog_core::listen::{serve_http, ConnectionLimits};

/// The connections `listener` accepts, at most `max_connections` open at once (the next one
/// is accepted only once an earlier one closed), under TLS when `tls` is given. Accepting
/// stops once the returned stream is dropped.
pub(crate) fn capped_incoming(
    listener: TcpListener,
    max_connections: usize,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
) -> impl Stream<Item = Result<CappedStream, io::Error>> {
    let slots = Arc::new(Semaphore::new(max_connections));
    let (ready_tx, ready_rx) = mpsc::channel::<CappedStream>(1);
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
                () = ready_tx.closed() => return,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an OTLP/gRPC connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
                () = ready_tx.closed() => return,
            };
            let _ = stream.set_nodelay(true);
            let ready_tx = ready_tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                if let Some(conn) = establish(stream, tls.as_ref(), handshake_timeout).await {
                    let _ = ready_tx.send(CappedStream { conn, _slot: slot }).await;
                }
            });
        }
    });
    futures::stream::unfold(ready_rx, |mut ready_rx| async move {
        let conn = ready_rx.recv().await?;
        Some((Ok(conn), ready_rx))
    })
}

/// A connection holding one of its listener's `max_connections` slots until it is dropped.
pub(crate) struct CappedStream {
    conn: Conn,
    _slot: OwnedSemaphorePermit,
}

impl Connected for CappedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.conn.tcp().connect_info()
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }
}
