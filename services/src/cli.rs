//! The shared `main` of the demo binaries.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use distributed_logger::Telemetry;

use crate::{Chaos, ServiceSpec};

/// Flags common to services A, B and C.
#[derive(Debug, Parser)]
pub struct ServiceArgs {
    /// Address to listen on (default: the service's demo port on 127.0.0.1).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// OTLP/gRPC endpoint (default: OTEL_EXPORTER_OTLP_ENDPOINT, else http://127.0.0.1:4317).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Base URL of service B (for A).
    #[arg(long, default_value = "http://127.0.0.1:5001")]
    pub service_b: String,
    /// Base URL of service C (for A and B).
    #[arg(long, default_value = "http://127.0.0.1:5002")]
    pub service_c: String,
    /// Response time above which a WARN is logged, in ms.
    #[arg(long, default_value_t = 500)]
    pub threshold_ms: u64,
    /// Share of requests that fail with 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Share of requests delayed by --slow-ms.
    #[arg(long, default_value_t = 0.0)]
    pub slow_rate: f64,
    /// Delay of a slow request, in ms.
    #[arg(long, default_value_t = 800)]
    pub slow_ms: u64,
    /// Heartbeat interval in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub heartbeat_secs: f64,
}

/// Which demo service a binary is.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// service-a: calls B and C.
    A,
    /// service-b: calls C.
    B,
    /// service-c: calls nothing.
    C,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::A => "service-a",
            Role::B => "service-b",
            Role::C => "service-c",
        }
    }

    fn port(self) -> u16 {
        let ports = distributed_logger::names::DEMO_SERVICE_PORTS;
        match self {
            Role::A => ports[0],
            Role::B => ports[1],
            Role::C => ports[2],
        }
    }
}

/// Parses flags, sets up telemetry, serves until Ctrl-C/SIGTERM, then shuts telemetry down
/// (DOWN registration, flush) and prints what could not be delivered.
pub async fn service_main(role: Role) -> anyhow::Result<()> {
    let args = ServiceArgs::parse();
    let downstream: Vec<(String, String)> = match role {
        Role::A => vec![
            ("service-b".to_string(), args.service_b.clone()),
            ("service-c".to_string(), args.service_c.clone()),
        ],
        Role::B => vec![("service-c".to_string(), args.service_c.clone())],
        Role::C => vec![],
    };
    let mut builder = Telemetry::builder(role.name())
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_dependencies(downstream.iter().map(|(name, _)| name.clone()))
        .with_heartbeat_interval(Duration::from_secs_f64(args.heartbeat_secs))
        .with_stderr(true);
    if let Some(endpoint) = &args.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let (guard, logger) = builder.init().context("set up telemetry")?;
    let spec = ServiceSpec {
        name: role.name().to_string(),
        listen: args
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], role.port()))),
        downstream,
        threshold_ms: args.threshold_ms,
        chaos: Chaos {
            error_rate: args.error_rate,
            slow_rate: args.slow_rate,
            slow_ms: args.slow_ms,
            down: false,
        },
    };
    let served = crate::serve(spec, logger, shutdown_signal()).await;
    let report = tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .context("telemetry shutdown")?;
    eprintln!("{report}");
    served.context("serve")
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
