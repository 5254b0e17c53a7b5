//! Drives load through the demo: `GET /work` on service A, each request its own trace.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use distributed_logger::Telemetry;

#[derive(Debug, Parser)]
struct Args {
    /// Base URL of service A.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    target: String,
    /// Number of requests to send.
    #[arg(long, default_value_t = 100)]
    requests: u64,
    /// Requests per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// OTLP/gRPC endpoint (default: OTEL_EXPORTER_OTLP_ENDPOINT, else http://127.0.0.1:4317).
    #[arg(long)]
    endpoint: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = Telemetry::builder("test-client")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_dependencies(["service-a"])
        .with_heartbeat_interval(Duration::from_secs(10));
    if let Some(endpoint) = &args.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let (guard, _logger) = builder.init().context("set up telemetry")?;
    let summary = dlog_services::drive(&args.target, args.requests, args.rate).await;
    println!(
        "sent {} requests: {} ok, {} failed, {} unreachable",
        summary.sent, summary.ok, summary.failed, summary.unreachable
    );
    let report = tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .context("telemetry shutdown")?;
    eprintln!("{report}");
    Ok(())
}
