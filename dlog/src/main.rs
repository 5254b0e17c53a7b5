//! `dlog`: run everything in one process on embedded defaults (`dlog` or `dlog up`), or query
//! the embedded store (`dlog trace <id>`, `dlog traces`, `dlog logs`, `dlog services`,
//! `dlog deps`, `dlog status`, `dlog alerts`), or serve only the viewer (`dlog viewer`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dlog_core::process::{init_logging, shutdown_signal};
use dlog_core::terminal::{escape_control as esc, write_stdout};
use dlog_indexer::cli::{query, Command as QueryCommand};
use dlog_storage::{open_store, AlertQuery};

const DEFAULT_LOG_FILTER: &str = "info,rdkafka=warn,hyper=warn,hyper_util=warn,h2=warn,tonic=warn,tower=warn,axum=warn,reqwest=warn";

#[derive(Debug, Parser)]
#[command(
    name = "dlog",
    version,
    about = "dlog: OTLP in, searchable traces and logs, alerts; all in one process"
)]
struct Args {
    /// Data directory: the embedded store and the alerting state.
    #[arg(long, env = "DLOG_DATA_DIR", default_value = dlog::DEFAULT_DATA_DIR, global = true)]
    data_dir: PathBuf,
    /// Elasticsearch (or OpenSearch-API) base URL, http://HOST:PORT or https://HOST:PORT:
    /// `up` stores there, and the queries read there, instead of the embedded store
    /// [default: none, embedded].
    #[arg(long, env = "DLOG_ELASTICSEARCH", global = true)]
    elasticsearch: Option<String>,
    /// PEM CA certificates trusted for an https:// --elasticsearch, next to the Mozilla roots
    /// built in [default: none].
    #[arg(long, env = "DLOG_ELASTICSEARCH_CA", global = true)]
    elasticsearch_ca: Option<PathBuf>,
    /// Prefix of the Elasticsearch index names [default: none].
    #[arg(long, env = "DLOG_ELASTICSEARCH_INDEX_PREFIX", global = true)]
    elasticsearch_index_prefix: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once per process: the size of `Up` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge, the indexing and alerting stages, the embedded store and the viewer
    /// (the default).
    Up(UpArgs),
    /// List alerts, newest first.
    Alerts {
        /// Only this service's alerts.
        #[arg(long)]
        service: Option<String>,
        /// Only `firing` or `resolved` alerts.
        #[arg(long)]
        state: Option<String>,
        /// Most alerts.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Serve only the viewer (web UI and Jaeger query API) over the store: the embedded
    /// store in --data-dir, or Elasticsearch with --elasticsearch (the distributed
    /// deployment's `dlog-viewer.service`).
    Viewer(ViewerArgs),
    /// List the records that could not be stored, with their reasons (oldest first).
    DeadLetters,
    #[command(flatten)]
    Query(QueryCommand),
}

#[derive(Debug, Default, clap::Args)]
struct UpArgs {
    /// Kafka bootstrap brokers, HOST:PORT[,..]: the bridge produces there and the stages
    /// consume in their groups, instead of the local log [default: none, local log].
    #[arg(long, env = "DLOG_KAFKA")]
    kafka: Option<String>,
    /// librdkafka property for every Kafka client with --kafka (repeatable), e.g.
    /// -X security.protocol=SASL_SSL; it overrides --kafka-properties-file. Not for secrets:
    /// `ps` shows a command line [default: none].
    #[arg(short = 'X', long = "kafka-property", value_name = "KEY=VALUE", value_parser = dlog_core::cli::parse_property)]
    kafka_property: Vec<(String, String)>,
    /// File of librdkafka properties for every Kafka client with --kafka, one KEY=VALUE a
    /// line (`#` comments): the place for sasl.password and other secrets [default: none].
    #[arg(long, env = "DLOG_KAFKA_PROPERTIES_FILE", value_name = "FILE")]
    kafka_properties_file: Option<PathBuf>,
    /// Replication factor of the topics created with --kafka, at least 1; production
    /// clusters should use 3 [default: 1].
    #[arg(long, env = "DLOG_TOPIC_REPLICATION", value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    topic_replication: Option<i32>,
    /// OTLP/gRPC listen address.
    #[arg(long, env = "DLOG_OTLP_GRPC")]
    otlp_grpc: Option<SocketAddr>,
    /// OTLP/HTTP listen address.
    #[arg(long, env = "DLOG_OTLP_HTTP")]
    otlp_http: Option<SocketAddr>,
    /// Alert rules file (TOML, see config/alerting/rules.toml).
    #[arg(long, env = "DLOG_RULES")]
    rules: Option<PathBuf>,
    /// Also POST alerts as JSON to this http:// or https:// URL.
    #[arg(long, env = "DLOG_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// PEM CA certificates trusted for an https:// --webhook-url, next to the Mozilla roots
    /// built in [default: none].
    #[arg(
        long,
        env = "DLOG_WEBHOOK_CA_FILE",
        value_name = "FILE",
        requires = "webhook_url"
    )]
    webhook_ca_file: Option<PathBuf>,
    /// File of bearer tokens (one per line) OTLP senders and the /metrics of the bridge,
    /// indexer and alerter must present [default: none, no auth].
    #[arg(long, env = "DLOG_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// File of the viewer's own bearer tokens, so that senders' tokens do not open the
    /// viewer (reading everything, silencing alerts) [default: --auth-token-file].
    #[arg(long, env = "DLOG_VIEWER_TOKEN_FILE")]
    viewer_token_file: Option<PathBuf>,
    /// PEM certificate chain: OTLP, the viewer and every admin port speak TLS
    /// [default: none].
    #[arg(long, env = "DLOG_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [default: none].
    #[arg(long, env = "DLOG_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Bridge admin address (`/metrics`, `/healthz`) [default: 127.0.0.1:8888].
    #[arg(long, env = "DLOG_BRIDGE_ADMIN")]
    bridge_admin: Option<SocketAddr>,
    /// Indexer admin address [default: 127.0.0.1:8889].
    #[arg(long, env = "DLOG_INDEXER_ADMIN")]
    indexer_admin: Option<SocketAddr>,
    /// Alerter admin address [default: 127.0.0.1:8890].
    #[arg(long, env = "DLOG_ALERTER_ADMIN")]
    alerter_admin: Option<SocketAddr>,
    /// Viewer address: the web UI and the Jaeger query API; it takes --auth-token-file and
    /// --tls-cert too [default: 127.0.0.1:16686].
    #[arg(long, env = "DLOG_VIEWER")]
    viewer: Option<SocketAddr>,
    /// Bytes of span JSON one Jaeger API answer may carry: a trace past it is cut with a
    /// warning (at least 65536) [default: 67108864].
    #[arg(long, env = "DLOG_VIEWER_MAX_ANSWER_BYTES")]
    viewer_max_answer_bytes: Option<usize>,
    /// How late a record may be stored and still reach the viewer's live tail, ms
    /// [default: 2000].
    #[arg(long, env = "DLOG_VIEWER_TAIL_GRACE_MS", value_name = "MS")]
    viewer_tail_grace_ms: Option<u64>,
    /// Bytes the local log may hold before senders get back-pressure (503 / UNAVAILABLE)
    /// [default: 1073741824].
    #[arg(long, env = "DLOG_WAL_MAX_BYTES")]
    wal_max_bytes: Option<u64>,
    /// Drop a day of stored data and dead letters once all of it is older than this (`7d`,
    /// `36h`; `0` keeps everything) [default: 7d].
    #[arg(long, env = "DLOG_RETENTION_MAX_AGE", value_parser = dlog_indexer::cli::parse_duration)]
    retention_max_age: Option<std::time::Duration>,
    /// Drop the oldest days while the store holds more than this (`20GiB`, `50%` of the data
    /// directory's disk, `none`); never the current day [default: 50%].
    #[arg(long, env = "DLOG_RETENTION_MAX_BYTES")]
    retention_max_bytes: Option<dlog_indexer::retention::ByteBudget>,
}

#[derive(Debug, Default, clap::Args)]
struct ViewerArgs {
    /// Listen address of the web UI and the Jaeger query API [default: 127.0.0.1:16686].
    #[arg(long, env = "DLOG_VIEWER")]
    viewer: Option<SocketAddr>,
    /// File of bearer tokens (one per line): API clients send `Authorization: Bearer`,
    /// browsers sign in on /login [default: none, open].
    #[arg(long, env = "DLOG_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS only [default: none].
    #[arg(long, env = "DLOG_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [default: none].
    #[arg(long, env = "DLOG_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Bytes of span JSON one Jaeger API answer may carry: a trace past it is cut with a
    /// warning (at least 65536) [default: 67108864].
    #[arg(long, env = "DLOG_VIEWER_MAX_ANSWER_BYTES")]
    viewer_max_answer_bytes: Option<usize>,
    /// How late a record may be stored and still reach the viewer's live tail, ms
    /// [default: 2000].
    #[arg(long, env = "DLOG_VIEWER_TAIL_GRACE_MS", value_name = "MS")]
    viewer_tail_grace_ms: Option<u64>,
}

/// mimalloc instead of the system allocator: the embedded store's write path allocates per
/// record and attribute, and glibc's malloc and free took about a third of its time
/// (`BENCHMARKS.md`, the store at scale).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging(&["DLOG_LOG", "RUST_LOG"], DEFAULT_LOG_FILTER)?;
    let mut args = Args::parse();
    let command = args.command.take();
    let store_config = dlog::Config {
        data_dir: args.data_dir.clone(),
        elasticsearch_url: args.elasticsearch.clone(),
        elasticsearch_index_prefix: args.elasticsearch_index_prefix.clone().unwrap_or_default(),
        elasticsearch_ca: args.elasticsearch_ca.clone(),
        ..dlog::Config::default()
    }
    .store_config();
    match command {
        None => up(&args, UpArgs::default()).await,
        Some(Command::Up(up_args)) => up(&args, up_args).await,
        Some(Command::Viewer(viewer_args)) => viewer(store_config, viewer_args).await,
        Some(Command::Alerts {
            service,
            state,
            limit,
        }) => {
            let store = open_store(&store_config)
                .await
                .context("cannot open the store")?;
            let alerts = store
                .list_alerts(&AlertQuery {
                    service,
                    state,
                    limit,
                })
                .await
                .context("query failed")?;
            write_stdout(|out| {
                for a in alerts {
                    let root = a
                        .root_cause
                        .map(|r| format!(" (root cause: {r})"))
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{:<8} {:<9} {:<16} {:<20} x{:<4} {}{}",
                        esc(&a.state),
                        esc(&a.severity),
                        esc(&a.service),
                        esc(&a.rule),
                        a.occurrences,
                        esc(&a.summary),
                        esc(&root)
                    )?;
                }
                Ok(())
            })
            .context("cannot write to standard output")?;
            Ok(())
        }
        Some(Command::DeadLetters) => {
            let all = dlog::dead_letters::FileDeadLetters::read_all(&args.data_dir)
                .context("cannot read the dead letters")?;
            for skipped in &all.skipped {
                eprintln!(
                    "warning: skipped line {} of {}: not a whole dead letter ({})",
                    skipped.line,
                    esc(&skipped.file.display().to_string()),
                    esc(&skipped.reason)
                );
            }
            let letters = all.letters;
            write_stdout(|out| {
                for l in &letters {
                    writeln!(
                        out,
                        "{} {}[{}]@{} key={} {} bytes: {}",
                        l.time_unix_nano,
                        esc(&l.topic),
                        l.partition,
                        l.offset,
                        esc(l.key.as_deref().unwrap_or("-")),
                        l.payload_hex.len() / 2,
                        esc(&l.reason)
                    )?;
                }
                Ok(())
            })
            .context("cannot write to standard output")?;
            eprintln!("{} dead letters", letters.len());
            Ok(())
        }
        Some(Command::Query(QueryCommand::Run)) => {
            anyhow::bail!("`run` belongs to dlog-indexer; use `dlog up` to run everything here")
        }
        Some(Command::Query(command)) => {
            let store = open_store(&store_config)
                .await
                .context("cannot open the store")?;
            let text = query(store.as_ref(), &command)
                .await
                .context("query failed")?;
            write_stdout(|out| out.write_all(text.as_bytes()))
                .context("cannot write to standard output")
        }
    }
}

async fn viewer(
    mut store_config: dlog_storage::StoreConfig,
    args: ViewerArgs,
) -> anyhow::Result<()> {
    // The viewer writes no spans or logs: the indexer owns the templates.
    store_config.install_templates = false;
    let elastic = store_config.elasticsearch_url.is_some();
    let store = open_store(&store_config)
        .await
        .context("cannot open the store")?;
    let mut config = dlog_viewer::ViewerConfig {
        auth_token_file: args.auth_token_file,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        ..dlog_viewer::ViewerConfig::default()
    };
    if let Some(addr) = args.viewer {
        config.listen = addr;
    }
    if let Some(bytes) = args.viewer_max_answer_bytes {
        config.options.max_answer_bytes = bytes.max(dlog_viewer::MIN_MAX_ANSWER_BYTES);
    }
    if let Some(ms) = args.viewer_tail_grace_ms {
        config.options.tail_grace = std::time::Duration::from_millis(ms);
    }
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let running = dlog_viewer::start(config, store)
        .await
        .context("cannot start the viewer")?;
    eprintln!(
        "dlog viewer ({} store): {scheme}://{}/search. Ctrl-C stops.",
        if elastic { "elasticsearch" } else { "embedded" },
        running.addr()
    );
    shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}

/// The librdkafka properties of `dlog up`: the file's, then the `-X` flags over them.
fn kafka_properties(
    file: Option<&std::path::Path>,
    flags: Vec<(String, String)>,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut properties = std::collections::BTreeMap::new();
    if let Some(file) = file {
        properties.extend(
            dlog_core::cli::read_properties_file(file)
                .map_err(|e| anyhow::anyhow!("--kafka-properties-file: {e}"))?,
        );
    }
    properties.extend(flags);
    Ok(properties)
}

async fn up(global: &Args, args: UpArgs) -> anyhow::Result<()> {
    let mut config = dlog::Config {
        data_dir: global.data_dir.clone(),
        kafka_brokers: args.kafka,
        kafka_properties: kafka_properties(
            args.kafka_properties_file.as_deref(),
            args.kafka_property,
        )?,
        elasticsearch_url: global.elasticsearch.clone(),
        elasticsearch_index_prefix: global
            .elasticsearch_index_prefix
            .clone()
            .unwrap_or_default(),
        elasticsearch_ca: global.elasticsearch_ca.clone(),
        rules_file: args.rules,
        webhook_url: args.webhook_url,
        webhook_ca_file: args.webhook_ca_file,
        auth_token_file: args.auth_token_file,
        viewer_token_file: args.viewer_token_file,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        ..dlog::Config::default()
    };
    if let Some(replication) = args.topic_replication {
        config.topic_replication = replication;
    }
    if let Some(addr) = args.otlp_grpc {
        config.otlp_grpc = addr;
    }
    if let Some(addr) = args.otlp_http {
        config.otlp_http = addr;
    }
    if let Some(addr) = args.bridge_admin {
        config.bridge_admin = addr;
    }
    if let Some(addr) = args.indexer_admin {
        config.indexer_admin = addr;
    }
    if let Some(addr) = args.alerter_admin {
        config.alerter_admin = addr;
    }
    if let Some(addr) = args.viewer {
        config.viewer = addr;
    }
    if let Some(bytes) = args.viewer_max_answer_bytes {
        config.viewer_max_answer_bytes = bytes.max(dlog_viewer::MIN_MAX_ANSWER_BYTES);
    }
    if let Some(ms) = args.viewer_tail_grace_ms {
        config.viewer_tail_grace = std::time::Duration::from_millis(ms);
    }
    if let Some(bytes) = args.wal_max_bytes {
        config.wal_max_bytes = bytes;
    }
    if let Some(age) = args.retention_max_age {
        config.retention.max_age_secs = age.as_secs();
    }
    if let Some(budget) = args.retention_max_bytes {
        config.retention.max_bytes = budget;
    }
    let config_tls = config.tls_cert.is_some();
    let mut running = dlog::start(config).await.context("cannot start dlog")?;
    let scheme = if config_tls { "https" } else { "http" };
    eprintln!(
        "dlog is up: OTLP/gRPC {} · OTLP/HTTP {} · records to {} · stored in {} · metrics {scheme}://{}/metrics · viewer {scheme}://{}/search. Ctrl-C stops.",
        running.grpc_addr(),
        running.http_addr(),
        esc(running.records_to()),
        esc(running.store_description()),
        running.bridge_admin_addr(),
        running.viewer_addr()
    );
    // A stage that stops on its own leaves the process unable to do its job: exit non-zero
    // with the reason rather than answer senders while nothing is indexed or alerted on.
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        failure = running.stage_failed() => Some(failure),
    };
    if let Some(failure) = failed {
        return Err(anyhow::Error::new(failure).context("dlog stopped because a stage failed"));
    }
    eprintln!("stopping: finishing in-flight requests");
    running.shutdown().await.context("shutdown")?;
    Ok(())
}
