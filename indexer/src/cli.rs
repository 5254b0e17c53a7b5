//! Command-line flags and `DLOG_INDEXER_*` environment variables, layered over the TOML file,
//! and the query subcommands (`trace`, `traces`, `logs`, `services`, `deps`, `status`).
//!
//! Precedence: flags > env > `--config` file > defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};

use crate::{ConfigError, IndexerConfig};
use dlog_core::cli::{parse_property, with_default};
use dlog_core::overlay;
use dlog_core::terminal::escape_control as esc;
use dlog_storage::store::{
    now_unix_nano, LogQuery, StatusQuery, Store, StoreError, TimeRange, TraceQuery,
};
use dlog_storage::tree::{format_duration, format_time, render_trace, TreeOptions};

/// Kafka → store indexing stage, and queries over the store.
#[derive(Debug, Clone, Parser)]
#[command(name = "dlog-indexer", version, about)]
pub struct Args {
    /// TOML config file; flags and env override what it sets.
    #[arg(long, env = "DLOG_INDEXER_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Where the store is.
    #[command(flatten)]
    pub store: StoreArgs,

    /// Settings of the stage: accepted before or after `run`, and read from the environment
    /// also when no subcommand is given (which runs the stage).
    #[command(flatten)]
    pub run: RunArgs,

    /// What to do (default: run the stage).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Store flags, shared by the stage and the queries.
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct StoreArgs {
    /// Elasticsearch URL; without it the embedded store is used [default: none].
    #[arg(
        long,
        env = "DLOG_INDEXER_ELASTICSEARCH_URL",
        value_name = "URL",
        global = true
    )]
    pub elasticsearch_url: Option<String>,

    #[arg(long, env = "DLOG_INDEXER_DATA_DIR", value_name = "DIR", global = true, help = with_default("Directory of the embedded store", dlog_storage::config::DEFAULT_DATA_DIR))]
    pub data_dir: Option<PathBuf>,

    /// Prefix of Elasticsearch index names [default: none].
    #[arg(
        long,
        env = "DLOG_INDEXER_INDEX_PREFIX",
        value_name = "PREFIX",
        global = true
    )]
    pub index_prefix: Option<String>,

    /// Elasticsearch basic-auth user.
    #[arg(
        long,
        env = "DLOG_INDEXER_ES_USERNAME",
        value_name = "USER",
        global = true
    )]
    pub es_username: Option<String>,

    /// Elasticsearch basic-auth password.
    #[arg(
        long,
        env = "DLOG_INDEXER_ES_PASSWORD",
        value_name = "PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub es_password: Option<String>,

    /// Elasticsearch API key (base64 `id:key`).
    #[arg(
        long,
        env = "DLOG_INDEXER_ES_API_KEY",
        value_name = "KEY",
        global = true,
        hide_env_values = true
    )]
    pub es_api_key: Option<String>,

    /// PEM CA certificates trusted for an https:// Elasticsearch URL, next to the Mozilla
    /// roots built in [default: none].
    #[arg(
        long,
        env = "DLOG_INDEXER_ELASTICSEARCH_CA",
        value_name = "FILE",
        global = true
    )]
    pub elasticsearch_ca: Option<PathBuf>,

    /// PEM client certificate presented to Elasticsearch over https (mTLS) [default: none].
    #[arg(
        long,
        env = "DLOG_INDEXER_ELASTICSEARCH_CLIENT_CERT",
        value_name = "FILE",
        global = true
    )]
    pub elasticsearch_client_cert: Option<PathBuf>,

    /// PEM private key of --elasticsearch-client-cert [default: none].
    #[arg(
        long,
        env = "DLOG_INDEXER_ELASTICSEARCH_CLIENT_KEY",
        value_name = "FILE",
        global = true
    )]
    pub elasticsearch_client_key: Option<PathBuf>,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the indexing stage (the default).
    Run,
    /// Print a trace as a tree with a waterfall, its logs under their spans.
    Trace {
        /// Trace id (32 hex characters).
        trace_id: String,
        /// Waterfall bar width in characters.
        #[arg(long, default_value_t = 40)]
        width: usize,
        /// Leave the logs out.
        #[arg(long)]
        no_logs: bool,
    },
    /// Find traces, newest first.
    Traces {
        /// Service of a span.
        #[arg(long)]
        service: Option<String>,
        /// Operation of a span.
        #[arg(long)]
        operation: Option<String>,
        /// Span attribute KEY=VALUE (repeatable).
        #[arg(long = "attr", value_parser = parse_property)]
        attributes: Vec<(String, String)>,
        /// Span lasted at least this long (`250ms`, `2s`).
        #[arg(long, value_parser = parse_duration)]
        min_duration: Option<Duration>,
        /// Span lasted at most this long.
        #[arg(long, value_parser = parse_duration)]
        max_duration: Option<Duration>,
        /// Only spans that started within this long before now (`15m`, `2h`, `7d`).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// Most traces.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Search logs, newest first.
    Logs {
        /// Text in the message.
        #[arg(long)]
        text: Option<String>,
        /// Emitting service.
        #[arg(long)]
        service: Option<String>,
        /// Level (INFO, WARN, ERROR, ...).
        #[arg(long)]
        level: Option<String>,
        /// Trace id.
        #[arg(long)]
        trace_id: Option<String>,
        /// Only logs within this long before now.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// Most records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// List services and their operations.
    Services,
    /// Observed and declared dependencies.
    Deps {
        /// Only calls within this long before now.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
    },
    /// Elasticsearch: write the trace summaries and call edges of spans stored by an
    /// earlier version (days whose span index has no summary index). Safe to repeat.
    Migrate,
    /// UP / DOWN / SILENT per service instance, with the last heartbeat.
    Status {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Silent after this long without a heartbeat (default: 3 announced intervals).
        #[arg(long, value_parser = parse_duration)]
        silent_after: Option<Duration>,
    },
}

/// Flags of the stage itself. Global, so that `dlog-indexer --admin ADDR`, `dlog-indexer run
/// --admin ADDR` and `DLOG_INDEXER_ADMIN` with no subcommand all reach the stage; the query
/// subcommands ignore them.
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct RunArgs {
    #[arg(
        long,
        global = true,
        env = "DLOG_INDEXER_KAFKA_BROKERS",
        value_name = "HOST:PORT[,..]", help = with_default("Kafka bootstrap brokers", crate::config::DEFAULT_KAFKA_BROKERS))]
    pub kafka_brokers: Option<String>,
    #[arg(long, global = true, env = "DLOG_INDEXER_GROUP_ID", value_name = "GROUP", help = with_default("Consumer group", crate::config::DEFAULT_GROUP_ID))]
    pub group_id: Option<String>,
    #[arg(long, global = true, env = "DLOG_INDEXER_ADMIN", value_name = "ADDR:PORT", help = with_default("Admin listen address for /metrics and /healthz", IndexerConfig::default().admin))]
    pub admin: Option<SocketAddr>,
    #[arg(long, global = true, env = "DLOG_INDEXER_TRACE_LOGS_TOPIC", value_name = "TOPIC", help = with_default("Topic of spans", dlog_core::names::TRACE_LOGS_TOPIC))]
    pub trace_logs_topic: Option<String>,
    #[arg(long, global = true, env = "DLOG_INDEXER_SERVICE_LOGS_TOPIC", value_name = "TOPIC", help = with_default("Topic of log records", dlog_core::names::SERVICE_LOGS_TOPIC))]
    pub service_logs_topic: Option<String>,
    #[arg(long, global = true, env = "DLOG_INDEXER_HEARTBEAT_LOGS_TOPIC", value_name = "TOPIC", help = with_default("Topic of registration and heartbeat events", dlog_core::names::HEARTBEAT_LOGS_TOPIC))]
    pub heartbeat_logs_topic: Option<String>,
    #[arg(long, global = true, env = "DLOG_INDEXER_DEAD_LETTERS_TOPIC", value_name = "TOPIC", help = with_default("Dead-letter topic", dlog_core::names::DEAD_LETTERS_TOPIC))]
    pub dead_letters_topic: Option<String>,
    #[arg(long, global = true, env = "DLOG_INDEXER_CREATE_TOPICS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help = with_default("Create missing topics at start", IndexerConfig::default().input.create_topics))]
    pub create_topics: Option<bool>,
    #[arg(long, global = true, env = "DLOG_INDEXER_TOPIC_PARTITIONS", value_name = "N", help = with_default("Partitions of topics created with --create-topics", crate::config::DEFAULT_TOPIC_PARTITIONS))]
    pub topic_partitions: Option<i32>,
    #[arg(long, global = true, env = "DLOG_INDEXER_TOPIC_REPLICATION", value_name = "N", help = with_default("Replication factor of topics created with --create-topics (production: 3)", dlog_core::stage::DEFAULT_TOPIC_REPLICATION))]
    pub topic_replication: Option<i32>,
    #[arg(long, global = true, env = "DLOG_INDEXER_BATCH_MAX_RECORDS", value_name = "N", help = with_default("Most records per batch", crate::config::DEFAULT_BATCH_MAX_RECORDS))]
    pub batch_max_records: Option<usize>,
    #[arg(long, global = true, env = "DLOG_INDEXER_SESSION_TIMEOUT_MS", value_name = "MS", help = with_default("Consumer-group session timeout in ms", crate::config::DEFAULT_SESSION_TIMEOUT_MS))]
    pub session_timeout_ms: Option<u32>,
    /// Drop a day of data once all of it is older than this (`7d`, `36h`; `0` keeps data
    /// forever) [default: 7d].
    #[arg(long, global = true, env = "DLOG_INDEXER_RETENTION_MAX_AGE", value_name = "DURATION", value_parser = parse_duration)]
    pub retention_max_age: Option<Duration>,
    /// Drop the oldest days while the store holds more than this (`500GiB`, `80%` of the
    /// embedded store's disk, `none`); never the current day [default: none].
    #[arg(
        long,
        global = true,
        env = "DLOG_INDEXER_RETENTION_MAX_BYTES",
        value_name = "SIZE"
    )]
    pub retention_max_bytes: Option<crate::retention::ByteBudget>,
    /// How often retention runs [default: 5m].
    #[arg(long, global = true, env = "DLOG_INDEXER_RETENTION_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub retention_interval: Option<Duration>,
    /// PEM certificate chain of the admin listener; with --tls-key it speaks TLS only
    /// [default: none].
    #[arg(
        long,
        global = true,
        env = "DLOG_INDEXER_TLS_CERT",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [default: none].
    #[arg(long, global = true, env = "DLOG_INDEXER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: admin clients must present a certificate they issued (mTLS)
    /// [default: none].
    #[arg(
        long,
        global = true,
        env = "DLOG_INDEXER_TLS_CLIENT_CA",
        value_name = "FILE"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// File of bearer tokens (one per line) that admin /metrics requests must carry
    /// [default: none].
    #[arg(
        long,
        global = true,
        env = "DLOG_INDEXER_AUTH_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub auth_token_file: Option<PathBuf>,
    /// Extra librdkafka property (repeatable) for every Kafka client of the stage (consumer,
    /// topic creation, dead letters), e.g. -X security.protocol=SASL_SSL.
    #[arg(short = 'X', long = "consumer-property", global = true, value_name = "KEY=VALUE", value_parser = parse_property)]
    pub consumer_property: Vec<(String, String)>,
}

/// Parses `500ms`, `2s`, `15m`, `3h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 250ms, 2s, 15m, 3h, 7d"))?;
    let secs = match unit {
        "ns" => value / 1e9,
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit `{unit}` (ns, us, ms, s, m, h, d)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

impl Args {
    /// The configuration these flags describe: the file (or defaults), overridden by every
    /// flag or env variable that was given, then validated.
    pub fn load(&self) -> Result<IndexerConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => IndexerConfig::from_file(path)?,
            None => IndexerConfig::default(),
        };
        let s = self.store.clone();
        if let Some(v) = s.elasticsearch_url {
            config.store.elasticsearch_url = Some(v);
        }
        if let Some(v) = s.data_dir {
            config.store.data_dir = v;
        }
        if let Some(v) = s.index_prefix {
            config.store.index_prefix = v;
        }
        if let Some(v) = s.es_username {
            config.store.username = Some(v);
        }
        if let Some(v) = s.es_password {
            config.store.password = Some(v);
        }
        if let Some(v) = s.es_api_key {
            config.store.api_key = Some(v);
        }
        overlay!(s => config.store, Some: elasticsearch_ca, elasticsearch_client_cert, elasticsearch_client_key);
        if matches!(self.command, None | Some(Command::Run)) {
            let run = self.run.clone();
            overlay!(
                run => config.input,
                kafka_brokers,
                group_id,
                create_topics,
                topic_partitions,
                topic_replication,
                session_timeout_ms
            );
            overlay!(
                run => config,
                admin,
                trace_logs_topic,
                service_logs_topic,
                heartbeat_logs_topic,
                dead_letters_topic,
                batch_max_records
            );
            overlay!(run => config, Some: tls_cert, tls_key, tls_client_ca, auth_token_file);
            config.input.consumer.extend(run.consumer_property);
            if let Some(age) = run.retention_max_age {
                config.retention.max_age_secs = age.as_secs();
            }
            if let Some(budget) = run.retention_max_bytes {
                config.retention.max_bytes = budget;
            }
            if let Some(interval) = run.retention_interval {
                config.retention.interval_secs = interval.as_secs().max(1);
            }
        }
        config.validate()?;
        Ok(config)
    }
}

/// A query subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// There is no embedded store where it was looked for.
    #[error("no embedded store in {0} (set --data-dir, or --elasticsearch-url for Elasticsearch)")]
    NoStore(String),
}

/// Opens the configured store for reading (no template installation, no new directory).
pub async fn open_for_queries(config: &IndexerConfig) -> Result<Arc<dyn Store>, QueryError> {
    let mut store = config.store.clone();
    store.install_templates = false;
    if store.elasticsearch_url.is_none()
        && !store
            .data_dir
            .join(dlog_storage::embedded::DB_FILE)
            .exists()
    {
        return Err(QueryError::NoStore(store.data_dir.display().to_string()));
    }
    Ok(dlog_storage::open_store(&store).await?)
}

fn since(d: Option<Duration>) -> TimeRange {
    match d {
        Some(d) => {
            let now = now_unix_nano();
            TimeRange::between(now.saturating_sub(d.as_nanos() as u64), now)
        }
        None => TimeRange::default(),
    }
}

/// Runs a query subcommand and returns what to print.
pub async fn query(store: &dyn Store, command: &Command) -> Result<String, QueryError> {
    use std::fmt::Write as _;
    let mut out = String::new();
    match command {
        Command::Run => {}
        Command::Migrate => match store.backend() {
            "elasticsearch" => {}
            other => {
                let _ = writeln!(out, "the {other} store needs no migration");
            }
        },
        Command::Trace {
            trace_id,
            width,
            no_logs,
        } => {
            let spans = store.get_trace(trace_id).await?;
            let logs = if *no_logs || spans.is_empty() {
                Vec::new()
            } else {
                store
                    .search_logs(&LogQuery {
                        trace_id: Some(trace_id.clone()),
                        limit: 10_000,
                        ..Default::default()
                    })
                    .await?
            };
            out = render_trace(
                &spans,
                &logs,
                &TreeOptions {
                    bar_width: *width,
                    show_logs: !no_logs,
                    ..Default::default()
                },
            );
        }
        Command::Traces {
            service,
            operation,
            attributes,
            min_duration,
            max_duration,
            since: s,
            limit,
        } => {
            let found = store
                .find_traces(&TraceQuery {
                    service: service.clone(),
                    operation: operation.clone(),
                    attributes: attributes.iter().cloned().collect(),
                    min_duration: *min_duration,
                    max_duration: *max_duration,
                    time: since(*s),
                    limit: *limit,
                })
                .await?;
            for t in found {
                let _ = writeln!(
                    out,
                    "{}  {}  {:>10}  {:>4} spans  {:>3} errors  {}: {}  [{}]",
                    esc(&t.trace_id),
                    format_time(t.start_unix_nano),
                    format_duration(t.duration_nanos),
                    t.span_count,
                    t.error_count,
                    esc(&t.root_service),
                    esc(&t.root_operation),
                    esc(&t.services.join(", "))
                );
            }
        }
        Command::Logs {
            text,
            service,
            level,
            trace_id,
            since: s,
            limit,
        } => {
            let logs = store
                .search_logs(&LogQuery {
                    text: text.clone(),
                    service: service.clone(),
                    level: level.clone(),
                    trace_id: trace_id.clone(),
                    time: since(*s),
                    limit: *limit,
                    ..Default::default()
                })
                .await?;
            for l in logs {
                let _ = writeln!(
                    out,
                    "{} {:<5} {} {}{}",
                    format_time(l.time_unix_nano),
                    esc(&l.level),
                    esc(&l.service.name),
                    esc(&l.body),
                    l.trace_id
                        .map(|t| format!("  trace={}", esc(&t)))
                        .unwrap_or_default()
                );
            }
        }
        Command::Services => {
            for service in store.services().await? {
                let _ = writeln!(out, "{}", esc(&service));
                for op in store.operations(&service).await? {
                    let _ = writeln!(out, "  {} ({})", esc(&op.name), esc(&op.span_kind));
                }
            }
        }
        Command::Deps { since: s } => {
            let deps = store.dependencies(since(*s)).await?;
            let _ = writeln!(out, "observed calls (caller -> callee: calls, errors):");
            for e in deps.observed {
                let _ = writeln!(
                    out,
                    "  {} -> {}: {} calls, {} errors",
                    esc(&e.caller),
                    esc(&e.callee),
                    e.calls,
                    e.errors
                );
            }
            let _ = writeln!(out, "declared dependencies:");
            for d in deps.declared {
                let _ = writeln!(out, "  {} -> {}", esc(&d.service), esc(&d.depends_on));
            }
        }
        Command::Status {
            service,
            silent_after,
        } => {
            let now = now_unix_nano();
            for s in store
                .service_status(&StatusQuery {
                    service: service.clone(),
                    now_unix_nano: Some(now),
                    silent_after: *silent_after,
                })
                .await?
            {
                let _ = writeln!(
                    out,
                    "{:<6} {} {}  last heartbeat {} ({} ago)",
                    s.status.as_str(),
                    esc(&s.entry.service),
                    esc(&s.entry.instance_id),
                    format_time(s.entry.last_heartbeat_unix_nano),
                    format_duration(now.saturating_sub(s.entry.last_heartbeat_unix_nano))
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parsing reads the process environment: tests that set variables hold this while they
    /// do, every parse takes it.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn args(list: &[&str]) -> Args {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        Args::try_parse_from(std::iter::once("dlog-indexer").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn stage_settings_apply_with_no_subcommand_from_env_and_on_either_side_of_run() {
        let vars = [
            ("DLOG_INDEXER_TLS_CERT", "/etc/dlog/admin.pem"),
            ("DLOG_INDEXER_TLS_KEY", "/etc/dlog/admin.key"),
            ("DLOG_INDEXER_TLS_CLIENT_CA", "/etc/dlog/clients.pem"),
            ("DLOG_INDEXER_AUTH_TOKEN_FILE", "/etc/dlog/tokens"),
            ("DLOG_INDEXER_KAFKA_BROKERS", "env-broker:9092"),
            ("DLOG_INDEXER_ADMIN", "127.0.0.1:18889"),
        ];
        // `dlog-indexer` as the systemd unit of an older release starts it: no subcommand,
        // everything from /etc/default/dlog-indexer.
        let from_env = {
            let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in vars {
                std::env::set_var(k, v);
            }
            let parsed = Args::try_parse_from(["dlog-indexer"]);
            for (k, _) in vars {
                std::env::remove_var(k);
            }
            parsed.unwrap()
        };
        assert!(from_env.command.is_none());
        let config = from_env.load().unwrap();
        let admin = config.admin_security();
        assert_eq!(admin.tls_cert, Some(PathBuf::from("/etc/dlog/admin.pem")));
        assert_eq!(admin.tls_key, Some(PathBuf::from("/etc/dlog/admin.key")));
        assert_eq!(
            admin.tls_client_ca,
            Some(PathBuf::from("/etc/dlog/clients.pem"))
        );
        assert_eq!(
            admin.auth_token_file,
            Some(PathBuf::from("/etc/dlog/tokens"))
        );
        assert_eq!(admin.scheme(), "https");
        assert_eq!(config.input.kafka_brokers, "env-broker:9092");
        assert_eq!(config.admin, "127.0.0.1:18889".parse().unwrap());

        // Flags before `run`, after it, and with no subcommand all reach the stage.
        for list in [
            &["--admin", "127.0.0.1:18890", "--kafka-brokers", "a:9092"][..],
            &[
                "--admin",
                "127.0.0.1:18890",
                "run",
                "--kafka-brokers",
                "a:9092",
            ][..],
            &[
                "run",
                "--admin",
                "127.0.0.1:18890",
                "--kafka-brokers",
                "a:9092",
            ][..],
        ] {
            let config = args(list).load().unwrap();
            assert_eq!(config.admin, "127.0.0.1:18890".parse().unwrap(), "{list:?}");
            assert_eq!(config.input.kafka_brokers, "a:9092", "{list:?}");
        }
        // A query leaves the stage's settings alone.
        let config = args(&["--admin", "127.0.0.1:18890", "services"])
            .load()
            .unwrap();
        assert_eq!(config.admin, IndexerConfig::default().admin);
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("indexer.toml");
        std::fs::write(&path, "group_id = \"from-file\"\nkafka_brokers = \"file:9092\"\n[store]\ndata_dir = \"/var/dlog\"\n").unwrap();
        let config = args(&[
            "--config",
            path.to_str().unwrap(),
            "--index-prefix",
            "p1",
            "run",
            "--kafka-brokers",
            "flag:9092",
            "--create-topics",
            "--topic-replication",
            "3",
            "-X",
            "fetch.max.bytes=1000000",
        ])
        .load()
        .unwrap();
        assert_eq!(config.input.topic_replication, 3);
        assert_eq!(config.input.group_id, "from-file");
        assert_eq!(config.input.kafka_brokers, "flag:9092");
        assert!(config.input.create_topics);
        assert_eq!(config.store.data_dir, PathBuf::from("/var/dlog"));
        assert_eq!(config.store.index_prefix, "p1");
        assert_eq!(config.input.consumer["fetch.max.bytes"], "1000000");
    }

    #[test]
    fn tls_settings_come_from_the_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("indexer.toml");
        std::fs::write(
            &path,
            "tls_cert = \"/etc/dlog/admin.pem\"\ntls_key = \"/etc/dlog/admin.key\"\n\
             [store]\nelasticsearch_url = \"https://es.internal:9200\"\n\
             elasticsearch_ca = \"/etc/dlog/es-ca.pem\"\n",
        )
        .unwrap();
        let config = args(&[
            "--config",
            path.to_str().unwrap(),
            "--elasticsearch-client-cert",
            "/etc/dlog/client.pem",
            "--elasticsearch-client-key",
            "/etc/dlog/client.key",
            "run",
            "--auth-token-file",
            "/etc/dlog/tokens",
            "--tls-client-ca",
            "/etc/dlog/clients.pem",
        ])
        .load()
        .unwrap();
        let store = &config.store;
        assert_eq!(
            store.elasticsearch_url.as_deref(),
            Some("https://es.internal:9200")
        );
        assert_eq!(
            store.elasticsearch_ca,
            Some(PathBuf::from("/etc/dlog/es-ca.pem"))
        );
        assert_eq!(
            store.elasticsearch_client_cert,
            Some(PathBuf::from("/etc/dlog/client.pem"))
        );
        assert_eq!(
            store.elasticsearch_client_key,
            Some(PathBuf::from("/etc/dlog/client.key"))
        );
        let admin = config.admin_security();
        assert_eq!(admin.tls_cert, Some(PathBuf::from("/etc/dlog/admin.pem")));
        assert_eq!(admin.tls_key, Some(PathBuf::from("/etc/dlog/admin.key")));
        assert_eq!(
            admin.tls_client_ca,
            Some(PathBuf::from("/etc/dlog/clients.pem"))
        );
        assert_eq!(
            admin.auth_token_file,
            Some(PathBuf::from("/etc/dlog/tokens"))
        );
        assert_eq!(admin.scheme(), "https");
        // A key without its certificate names the missing one.
        let err = args(&["run", "--tls-key", "/etc/dlog/admin.key"])
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_cert"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = args(&["run", "--kafka-brokers", "nope"])
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka_brokers"), "{err}");
        let err = args(&["--elasticsearch-url", "es:9200", "services"])
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("elasticsearch_url"), "{err}");
        let err = args(&["run", "-X", "enable.auto.commit=true"])
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("consumer.enable.auto.commit"), "{err}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn trace_subcommand_parses() {
        let a = args(&[
            "--data-dir",
            "/tmp/x",
            "trace",
            "0af7651916cd43dd8448eb211c80319c",
            "--width",
            "20",
        ]);
        assert!(matches!(a.command, Some(Command::Trace { width: 20, .. })));
    }
}
