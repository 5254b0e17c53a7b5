//! A minimal OTLP/gRPC receiver for tests that do not need the bridge: it stores every
//! export request it is sent and answers success.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::net::SocketAddr;
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

#[derive(Default, Clone)]
struct Store {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    logs: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Store {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.logs.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on its own runtime thread; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    store: Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts on `addr` (port 0 picks a free port).
    pub fn start(addr: SocketAddr) -> Receiver {
        let listener = std::net::TcpListener::bind(addr).expect("bind receiver");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Store::default();
        let server_store = store.clone();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tonic::transport::Server::builder()
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
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
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
