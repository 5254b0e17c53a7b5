//! A minimal OTLP/gRPC receiver for tests that do not need the bridge: it stores every
//! export request it is sent and answers success, optionally after a delay (a slow collector)
//! or only once resumed (a stalled one), and counts the requests it holds at once.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dlog_core::model::{logs_from_request, spans_from_request, LogItem, SpanRecord};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

#[derive(Clone)]
struct Store {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    logs: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    /// Headers of every request, in arrival order.
    metadata: Arc<Mutex<Vec<tonic::metadata::MetadataMap>>>,
    /// How long each answer is held back.
    delay: Duration,
    /// False while the receiver is paused: requests wait until it is true again.
    running: tokio::sync::watch::Receiver<bool>,
    traces_held: Arc<Held>,
    logs_held: Arc<Held>,
}

/// Requests of one signal held at once: now and at most.
#[derive(Default)]
struct Held {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Store {
    /// Counts the request as held, waits for the receiver to run and for the delay, then
    /// records it.
    async fn hold(
        &self,
        held: &Held,
        metadata: tonic::metadata::MetadataMap,
        record: impl FnOnce(),
    ) {
        let now = held.now.fetch_add(1, Ordering::SeqCst) + 1;
        held.max.fetch_max(now, Ordering::SeqCst);
        let mut running = self.running.clone();
        let _ = running.wait_for(|running| *running).await;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.metadata.lock().unwrap().push(metadata);
        record();
        held.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        self.hold(&self.traces_held, metadata, || {
            self.traces.lock().unwrap().push(request)
        })
        .await;
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Store {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        self.hold(&self.logs_held, metadata, || {
            self.logs.lock().unwrap().push(request)
        })
        .await;
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on its own runtime thread; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    store: Store,
    running: tokio::sync::watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts on `addr` (port 0 picks a free port).
    pub fn start(addr: SocketAddr) -> Receiver {
        Receiver::start_slow(addr, Duration::ZERO)
    }

    /// Starts on `addr`, answering every request only after `delay`.
    pub fn start_slow(addr: SocketAddr, delay: Duration) -> Receiver {
        Receiver::start_with(addr, delay, None)
    }

    /// Starts on `addr`, serving TLS with this PEM certificate chain and key.
    pub fn start_tls(addr: SocketAddr, cert_pem: &str, key_pem: &str) -> Receiver {
        let identity = tonic::transport::Identity::from_pem(cert_pem, key_pem);
        Receiver::start_with(addr, Duration::ZERO, Some(identity))
    }

    fn start_with(
        addr: SocketAddr,
        delay: Duration,
        tls: Option<tonic::transport::Identity>,
    ) -> Receiver {
        let listener = std::net::TcpListener::bind(addr).expect("bind receiver");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (running, running_rx) = tokio::sync::watch::channel(true);
        let store = Store {
            traces: Arc::default(),
            logs: Arc::default(),
            metadata: Arc::default(),
            delay,
            running: running_rx,
            traces_held: Arc::default(),
            logs_held: Arc::default(),
        };
        let server_store = store.clone();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let mut server = tonic::transport::Server::builder();
                if let Some(identity) = tls {
                    server = server
                        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                        .unwrap();
                }
                server
                    .add_service(TraceServiceServer::new(server_store.clone()))
                    .add_service(LogsServiceServer::new(server_store))
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        async {
                            let _ = stop_rx.await;
                        },
                    )
                    .await
                    .unwrap();
            });
        });
        Receiver {
            addr,
            store,
            running,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Holds every request (new and waiting ones) until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.running.send_replace(false);
    }

    /// Answers the held requests and the ones to come.
    pub fn resume(&self) {
        self.running.send_replace(true);
    }

    /// Requests of both signals held right now (arrived, not answered).
    pub fn requests_held(&self) -> usize {
        self.store.traces_held.now.load(Ordering::SeqCst)
            + self.store.logs_held.now.load(Ordering::SeqCst)
    }

    /// The most span export requests held at once so far.
    pub fn max_span_requests_held(&self) -> usize {
        self.store.traces_held.max.load(Ordering::SeqCst)
    }

    /// The most log export requests held at once so far.
    pub fn max_log_requests_held(&self) -> usize {
        self.store.logs_held.max.load(Ordering::SeqCst)
    }

    /// Headers of every request answered so far.
    pub fn metadata(&self) -> Vec<tonic::metadata::MetadataMap> {
        self.store.metadata.lock().unwrap().clone()
    }

    /// Spans received so far (counted without decoding them).
    pub fn span_count(&self) -> usize {
        self.store
            .traces
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }

    pub fn trace_requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.store.traces.lock().unwrap().clone()
    }

    pub fn log_requests(&self) -> Vec<ExportLogsServiceRequest> {
        self.store.logs.lock().unwrap().clone()
    }

    pub fn spans(&self) -> Vec<SpanRecord> {
        self.trace_requests()
            .iter()
            .flat_map(spans_from_request)
            .collect()
    }

    pub fn logs(&self) -> Vec<LogItem> {
        self.log_requests()
            .iter()
            .flat_map(logs_from_request)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Polls `condition` until it holds, failing the test after `within`.
pub fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
