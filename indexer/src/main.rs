//! `dlog-indexer`: run the indexing stage (default), or query the store (`trace`, `traces`,
//! `logs`, `services`, `deps`, `status`).

use anyhow::Context;
use clap::Parser;
use dlog_core::process::{init_logging, shutdown_token};
use dlog_core::terminal::write_stdout;
use dlog_indexer::cli::{open_for_queries, query, Args, Command};

/// Used when neither `DLOG_INDEXER_LOG` nor `RUST_LOG` is set.
const DEFAULT_LOG_FILTER: &str =
    "info,rdkafka=warn,hyper=warn,hyper_util=warn,reqwest=warn,axum=warn";

/// mimalloc instead of the system allocator: the embedded store's write path allocates per
/// record and attribute, and glibc's malloc and free took about a third of its time
/// (`BENCHMARKS.md`, the store at scale).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging(&["DLOG_INDEXER_LOG", "RUST_LOG"], DEFAULT_LOG_FILTER)?;

    let args = Args::parse();
    let config = args.load().context("invalid configuration")?;
    match &args.command {
        None | Some(Command::Run) => dlog_indexer::run(config, shutdown_token())
            .await
            .context("indexing stage failed"),
        Some(Command::Migrate) if config.store.elasticsearch_url.is_some() => {
            let store = dlog_storage::elastic::ElasticStore::connect(&config.store)
                .await
                .context("cannot connect to Elasticsearch")?;
            let days = store.days_without_summaries().await?;
            write_stdout(|out| writeln!(out, "days to backfill: {}", days.join(", ")))?;
            let spans = store
                .backfill_summaries()
                .await
                .context("backfill failed (safe to run again)")?;
            write_stdout(|out| {
                writeln!(
                    out,
                    "trace summaries and call edges written for {spans} spans"
                )
            })?;
            Ok(())
        }
        Some(command) => {
            let store = open_for_queries(&config)
                .await
                .context("cannot open the store")?;
            let out = query(store.as_ref(), command)
                .await
                .context("query failed")?;
            write_stdout(|stdout| stdout.write_all(out.as_bytes()))
                .context("cannot write to standard output")
        }
    }
}
