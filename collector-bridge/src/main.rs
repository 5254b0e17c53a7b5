//! `collector-bridge`: parse flags/env/file, set up logging, run until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use collector_bridge::cli::Args;
use tracing_subscriber::EnvFilter;

/// Used when neither `RUST_LOG` nor `DLOG_BRIDGE_LOG` is set: our own info, and only
/// warnings from the HTTP/2 and transport crates, which are chatty per connection.
const DEFAULT_LOG_FILTER: &str =
    "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,axum=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = std::env::var("DLOG_BRIDGE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_LOG_FILTER.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(&filter)
                .with_context(|| format!("invalid log filter `{filter}`"))?,
        )
        .with_writer(std::io::stderr)
        .init();

    let config = Args::parse().load().context("invalid configuration")?;
    collector_bridge::run(config, shutdown_signal())
        .await
        .context("collector bridge failed")
}

/// Resolves on Ctrl-C or SIGTERM. If a handler cannot be installed, that signal is simply
/// not awaited: the other one, or SIGKILL, still stops the process.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
