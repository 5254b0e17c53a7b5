//! `dlog-viewer`: the web UI and the Jaeger-compatible query API over Elasticsearch (the
//! distributed deployment) or the embedded store, on 127.0.0.1:16686 by default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dlog_core::process::{init_logging, shutdown_signal};
use dlog_storage::{open_store, StoreConfig};
use dlog_viewer::{ViewerConfig, ViewerOptions};

const DEFAULT_LOG_FILTER: &str = "info,hyper=warn,hyper_util=warn,reqwest=warn,axum=warn";

/// The dlog viewer: web UI and Jaeger query API.
#[derive(Debug, Parser)]
#[command(name = "dlog-viewer", version, about)]
struct Args {
    /// Listen address [default: 127.0.0.1:16686].
    #[arg(long, env = "DLOG_VIEWER_LISTEN", value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Elasticsearch URL; without it the embedded store in --data-dir is read.
    #[arg(long, env = "DLOG_VIEWER_ELASTICSEARCH_URL", value_name = "URL")]
    elasticsearch_url: Option<String>,
    /// Prefix of Elasticsearch index names, as the indexer was given [default: none].
    #[arg(long, env = "DLOG_VIEWER_INDEX_PREFIX", value_name = "PREFIX")]
    index_prefix: Option<String>,
    /// Elasticsearch basic-auth user.
    #[arg(long, env = "DLOG_VIEWER_ES_USERNAME", value_name = "USER")]
    es_username: Option<String>,
    /// Elasticsearch basic-auth password.
    #[arg(
        long,
        env = "DLOG_VIEWER_ES_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    es_password: Option<String>,
    /// Elasticsearch API key (base64 `id:key`).
    #[arg(
        long,
        env = "DLOG_VIEWER_ES_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    es_api_key: Option<String>,
    /// PEM CA certificates trusted for an https:// Elasticsearch URL, next to the Mozilla
    /// roots built in [default: none].
    #[arg(long, env = "DLOG_VIEWER_ELASTICSEARCH_CA", value_name = "FILE")]
    elasticsearch_ca: Option<PathBuf>,
    /// PEM client certificate presented to Elasticsearch over https (mTLS) [default: none].
    #[arg(
        long,
        env = "DLOG_VIEWER_ELASTICSEARCH_CLIENT_CERT",
        value_name = "FILE"
    )]
    elasticsearch_client_cert: Option<PathBuf>,
    /// PEM private key of --elasticsearch-client-cert [default: none].
    #[arg(
        long,
        env = "DLOG_VIEWER_ELASTICSEARCH_CLIENT_KEY",
        value_name = "FILE"
    )]
    elasticsearch_client_key: Option<PathBuf>,
    /// Directory of the embedded store [default: dlog-data/store].
    #[arg(long, env = "DLOG_VIEWER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// File of bearer tokens (one per line), the receivers' format: API clients send
    /// `Authorization: Bearer`, browsers sign in on /login [default: none, open].
    #[arg(long, env = "DLOG_VIEWER_AUTH_TOKEN_FILE", value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS only [default: none].
    #[arg(long, env = "DLOG_VIEWER_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [default: none].
    #[arg(long, env = "DLOG_VIEWER_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// How often a live tail polls the store, ms [default: 500].
    #[arg(long, env = "DLOG_VIEWER_TAIL_POLL_MS", value_name = "MS")]
    tail_poll_ms: Option<u64>,
    /// How late a record may be stored and still reach a live tail, ms [default: 2000].
    #[arg(long, env = "DLOG_VIEWER_TAIL_GRACE_MS", value_name = "MS")]
    tail_grace_ms: Option<u64>,
    /// Bytes of span JSON one Jaeger API answer may carry: a trace past it is cut with a
    /// warning (at least 65536) [default: 67108864].
    #[arg(long, env = "DLOG_VIEWER_MAX_ANSWER_BYTES", value_name = "BYTES")]
    max_answer_bytes: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging(&["DLOG_VIEWER_LOG", "RUST_LOG"], DEFAULT_LOG_FILTER)?;
    let args = Args::parse();
    let mut store_config = match &args.elasticsearch_url {
        Some(url) => StoreConfig::elasticsearch(url.clone()),
        None => StoreConfig::embedded(
            args.data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("dlog-data/store")),
        ),
    };
    if let Some(prefix) = &args.index_prefix {
        store_config.index_prefix = prefix.clone();
    }
    store_config.username = args.es_username.clone();
    store_config.password = args.es_password.clone();
    store_config.api_key = args.es_api_key.clone();
    store_config.elasticsearch_ca = args.elasticsearch_ca.clone();
    store_config.elasticsearch_client_cert = args.elasticsearch_client_cert.clone();
    store_config.elasticsearch_client_key = args.elasticsearch_client_key.clone();
    // The viewer only reads: the indexer owns the templates.
    store_config.install_templates = false;
    store_config.validate().context("invalid store settings")?;
    let store = open_store(&store_config)
        .await
        .context("cannot open the store")?;
    let mut config = ViewerConfig {
        auth_token_file: args.auth_token_file,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        options: ViewerOptions {
            tail_poll: Duration::from_millis(args.tail_poll_ms.unwrap_or(500).max(50)),
            tail_grace: args
                .tail_grace_ms
                .map_or(dlog_viewer::DEFAULT_TAIL_GRACE, Duration::from_millis),
            max_answer_bytes: args
                .max_answer_bytes
                .unwrap_or(dlog_viewer::DEFAULT_MAX_ANSWER_BYTES)
                .max(dlog_viewer::MIN_MAX_ANSWER_BYTES),
            ..ViewerOptions::default()
        },
        ..ViewerConfig::default()
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let viewer = dlog_viewer::start(config, store)
        .await
        .context("cannot start the viewer")?;
    eprintln!(
        "dlog viewer ({} store): {scheme}://{}/search. Ctrl-C stops.",
        if args.elasticsearch_url.is_some() {
            "elasticsearch"
        } else {
            "embedded"
        },
        viewer.addr()
    );
    shutdown_signal().await;
    viewer.shutdown().await;
    Ok(())
}
