//! `collector-bridge`: parse flags/env/file, set up logging, run until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use collector_bridge::cli::Args;
use dlog_core::process::{init_logging, shutdown_token};

/// Used when neither `RUST_LOG` nor `DLOG_BRIDGE_LOG` is set: our own info, and only
/// warnings from the HTTP/2 and transport crates, which are chatty per connection.
const DEFAULT_LOG_FILTER: &str =
    "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,axum=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging(&["DLOG_BRIDGE_LOG", "RUST_LOG"], DEFAULT_LOG_FILTER)?;

    let config = Args::parse().load().context("invalid configuration")?;
    collector_bridge::run(config, shutdown_token())
        .await
        .context("collector bridge failed")
}
