//! `dlog-indexer`: run the indexing stage (default), or query the store (`trace`, `traces`,
//! `logs`, `services`, `deps`, `status`).

use anyhow::Context;
use clap::Parser;
use dlog_storage::cli::{open_for_queries, query, Args, Command};
use tracing_subscriber::EnvFilter;

/// Used when neither `DLOG_INDEXER_LOG` nor `RUST_LOG` is set.
const DEFAULT_LOG_FILTER: &str =
    "info,rdkafka=warn,hyper=warn,hyper_util=warn,reqwest=warn,axum=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = std::env::var("DLOG_INDEXER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_LOG_FILTER.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(&filter)
                .with_context(|| format!("invalid log filter `{filter}`"))?,
        )
        .with_writer(std::io::stderr)
        .init();

    let args = Args::parse();
    let config = args.load().context("invalid configuration")?;
    match &args.command {
        None | Some(Command::Run(_)) => dlog_storage::run(config, shutdown_signal())
            .await
            .context("indexing stage failed"),
        Some(command) => {
            let store = open_for_queries(&config)
                .await
                .context("cannot open the store")?;
            let out = query(store.as_ref(), command)
                .await
                .context("query failed")?;
            print!("{out}");
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed right away (not on first poll),
/// so a signal that arrives while the stage is still starting is not lost and still leads to a
/// graceful stop. If a handler cannot be installed, that signal is simply not awaited.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGTERM"))
            .ok();
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| tracing::warn!(error = %e, "cannot listen for Ctrl-C"))
            .ok();
        async move {
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = term => {}
                () = int => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
