//! `dlog-alerter`: parse flags/env/file, set up logging, run until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use dlog_alerting::cli::Args;
use dlog_core::process::{init_logging, shutdown_token};

/// Used when neither `RUST_LOG` nor `DLOG_ALERTER_LOG` is set.
const DEFAULT_LOG_FILTER: &str =
    "info,rdkafka=warn,hyper=warn,hyper_util=warn,reqwest=warn,axum=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr so that stdout carries only the alerts themselves.
    init_logging(&["DLOG_ALERTER_LOG", "RUST_LOG"], DEFAULT_LOG_FILTER)?;

    let config = Args::parse().load().context("invalid configuration")?;
    dlog_alerting::run(config, shutdown_token())
        .await
        .context("alerter failed")
}
