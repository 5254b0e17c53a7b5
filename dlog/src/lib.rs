//! dlog in one process: what a laptop runs with one command.
//!
//! The collector bridge receives OTLP as usual, but instead of Kafka its next hop is a durable
//! local log in the data directory ([`dlog_wal`]): the bridge answers a sender once the
//! request's records are appended and fsynced (one fsync shared by every request waiting for
//! it), the same "yes only after the next hop said yes" rule as with Kafka. The indexing stage
//! (into the embedded store) and the alerting stage read the log behind it, each from its own
//! committed position, exactly as they read Kafka; neither sits on a sender's request path.
//! While a stage lags by more than the log's bound, senders are answered `UNAVAILABLE` / 503.
//! Nothing but a data directory is needed: the log (`wal/`), the embedded store, the alerting
//! state and the dead letters (records that cannot be stored, with their reason; see
//! [`dead_letters`]) all live in it.
//!
//! Either half can be swapped for a real engine, each alone or both together:
//! * with [`Config::kafka_brokers`], the bridge produces to Kafka (its [`collector_bridge::KafkaSink`])
//!   instead of the local log, and the indexing and alerting stages consume the topics in
//!   their consumer groups (`dlog-indexer`, `dlog-alerter`), exactly as the standalone
//!   binaries do; the alerts also go to the `alerts` topic;
//! * with [`Config::elasticsearch_url`], both stages store in Elasticsearch (or an
//!   OpenSearch-API server) instead of the embedded store.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), dlog::AllInOneError> {
//! let running = dlog::start(dlog::Config::default()).await?;
//! println!("OTLP/gRPC on {}", running.grpc_addr());
//! running.shutdown().await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use collector_bridge::{LocalLogSink, RunningBridge};
use dlog_alerting::{Alerter, AlerterConfig, RunningAlerter};
use dlog_core::names;
use dlog_core::source::{Mark, RawRecord, Source, SourceError};
use dlog_indexer::retention::{ByteBudget, RetentionConfig};
use dlog_indexer::{Indexer, IndexerConfig, ReportsLag, RunningIndexer, StartError};
use dlog_storage::{open_store, Store, StoreConfig};
use dlog_wal::{Wal, WalConfig, WalReader};

pub mod dead_letters;
use dead_letters::FileDeadLetters;

/// Default data directory (the embedded store and the alerter's state live under it).
pub const DEFAULT_DATA_DIR: &str = "./dlog-data";

/// The local log's directory under the data directory.
pub const WAL_DIR: &str = "wal";
/// The alerting state's directory under the data directory.
pub const ALERTER_DIR: &str = "alerter";
/// The alerting state's directory under the data directory when the stages read Kafka (its
/// input offsets are Kafka's, not the local log's).
pub const ALERTER_KAFKA_DIR: &str = "alerter-kafka";
/// The indexing stage's reader name in the local log.
pub const INDEXING_READER: &str = "indexing";
/// The alerting stage's reader name in the local log.
pub const ALERTING_READER: &str = "alerting";

/// Settings of the all-in-one process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the embedded store (`store/`) and the alerting state (`alerter/`) live.
    pub data_dir: PathBuf,
    /// OTLP/gRPC listen address. Default 127.0.0.1:4317.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP listen address. Default 127.0.0.1:4318.
    pub otlp_http: SocketAddr,
    /// Bridge admin address (`/metrics`, `/healthz`). Default 127.0.0.1:8888.
    pub bridge_admin: SocketAddr,
    /// Indexer admin address. Default 127.0.0.1:8889.
    pub indexer_admin: SocketAddr,
    /// Alerter admin address. Default 127.0.0.1:8890.
    pub alerter_admin: SocketAddr,
    /// The viewer (web UI and Jaeger query API). Default 127.0.0.1:16686. It takes the same
    /// token file and TLS settings as the bridge.
    pub viewer: SocketAddr,
    /// Bytes of span JSON one of the viewer's Jaeger API answers may carry; a trace past it
    /// is cut with a warning. Default 64 MiB.
    pub viewer_max_answer_bytes: usize,
    /// How late a record may be stored and still reach the viewer's live tail. Default 2 s.
    pub viewer_tail_grace: std::time::Duration,
    /// Alert rules file (TOML); the built-in defaults when absent.
    pub rules_file: Option<PathBuf>,
    /// POST alerts as JSON to this URL as well.
    pub webhook_url: Option<String>,
    /// PEM CA certificates trusted for an `https://` `webhook_url`, next to the Mozilla roots
    /// built in. Default: none.
    pub webhook_ca_file: Option<PathBuf>,
    /// Bytes the local log may hold (records not yet read by every stage). Past it, senders
    /// are answered `UNAVAILABLE` / 503 until the slowest stage catches up. Default 1 GiB.
    pub wal_max_bytes: u64,
    /// File of bearer tokens (one per line) that OTLP requests and the `/metrics` of the
    /// bridge, indexer and alerter must carry. None: no auth.
    pub auth_token_file: Option<PathBuf>,
    /// File of the viewer's own bearer tokens. Senders' tokens sit on every service host:
    /// give people theirs here, so that a service's token cannot read everything or silence
    /// alerts. None: the viewer takes `auth_token_file`.
    pub viewer_token_file: Option<PathBuf>,
    /// PEM certificate chain: the bridge's OTLP listeners, the viewer and the admin listeners
    /// of the bridge, indexer and alerter speak TLS only. None: plaintext.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Kafka bootstrap brokers (`HOST:PORT[,HOST:PORT..]`). Set: the bridge produces to Kafka
    /// and the stages consume it in their groups, instead of the local log. The topics
    /// (`trace_logs`, `service_logs`, `heartbeat_logs`, `alerts`) are created when missing.
    pub kafka_brokers: Option<String>,
    /// librdkafka properties every Kafka client gets with `kafka_brokers` (the bridge's
    /// producer, the stages' consumers, the admin client creating the topics, the alerter's
    /// lease and alerts producer): `security.protocol`, `sasl.*`, `ssl.*` and the like.
    /// Default: none.
    pub kafka_properties: BTreeMap<String, String>,
    /// Replication factor of the topics created on `kafka_brokers`. Default 1 (one broker);
    /// production clusters should use 3.
    pub topic_replication: i32,
    /// Elasticsearch (or OpenSearch-API) base URL, `http://HOST:PORT`. Set: the stages store
    /// there instead of the embedded store.
    pub elasticsearch_url: Option<String>,
    /// Prefix of the Elasticsearch index and template names (`<prefix>-jaeger-span-..`).
    /// Default: none.
    pub elasticsearch_index_prefix: String,
    /// PEM CA certificates trusted for an `https://` `elasticsearch_url`, next to the Mozilla
    /// roots built in. Default: none.
    pub elasticsearch_ca: Option<PathBuf>,
    /// How long the store and the dead letters keep data. Default: 7 days, and at most half
    /// of the disk holding `data_dir`.
    pub retention: RetentionConfig,
}

/// Default retention byte budget of the all-in-one process: half of the data directory's disk.
pub const DEFAULT_RETENTION_DISK_PERCENT: u8 = 50;

impl Default for Config {
    fn default() -> Self {
        let at = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            otlp_grpc: at(names::OTLP_GRPC_PORT),
            otlp_http: at(names::OTLP_HTTP_PORT),
            bridge_admin: at(names::BRIDGE_ADMIN_PORT),
            indexer_admin: at(names::INDEXER_ADMIN_PORT),
            alerter_admin: at(names::ALERTER_ADMIN_PORT),
            viewer: at(names::VIEWER_PORT),
            viewer_max_answer_bytes: dlog_viewer::DEFAULT_MAX_ANSWER_BYTES,
            viewer_tail_grace: dlog_viewer::DEFAULT_TAIL_GRACE,
            rules_file: None,
            webhook_url: None,
            webhook_ca_file: None,
            wal_max_bytes: dlog_wal::DEFAULT_MAX_BYTES,
            auth_token_file: None,
            viewer_token_file: None,
            tls_cert: None,
            tls_key: None,
            kafka_brokers: None,
            kafka_properties: BTreeMap::new(),
            topic_replication: dlog_core::stage::DEFAULT_TOPIC_REPLICATION,
            elasticsearch_url: None,
            elasticsearch_index_prefix: String::new(),
            elasticsearch_ca: None,
            retention: RetentionConfig {
                max_bytes: ByteBudget::DiskPercent(DEFAULT_RETENTION_DISK_PERCENT),
                ..RetentionConfig::default()
            },
        }
    }
}

impl Config {
    /// Where the stages store: Elasticsearch when `elasticsearch_url` is set, otherwise the
    /// embedded store in `<data_dir>/store`.
    pub fn store_config(&self) -> StoreConfig {
        let store = match &self.elasticsearch_url {
            Some(url) => StoreConfig::elasticsearch(url.clone())
                .with_index_prefix(self.elasticsearch_index_prefix.clone()),
            None => StoreConfig::embedded(self.data_dir.join("store")),
        };
        // Passed through either way: without a URL, the store's validation refuses it
        // rather than leave it silently unused.
        StoreConfig {
            elasticsearch_ca: self.elasticsearch_ca.clone(),
            ..store
        }
    }
}

/// The all-in-one process could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AllInOneError {
    /// The store could not be opened.
    #[error("cannot open the store ({store}): {source}")]
    Store {
        /// Which store: the embedded directory or the Elasticsearch URL.
        store: String,
        /// Why.
        source: dlog_storage::StoreError,
    },
    /// The topics could not be created.
    #[error(transparent)]
    Topics(#[from] dlog_core::kafka::TopicError),
    /// The consumers could not be set up.
    #[error("kafka at {brokers}: {source}")]
    Kafka {
        /// The brokers.
        brokers: String,
        /// What failed.
        source: SourceError,
    },
    /// The local log could not be opened.
    #[error(transparent)]
    Wal(#[from] dlog_wal::WalError),
    /// The indexer's admin address could not be bound.
    #[error("cannot listen on indexer admin address {addr}: {source}")]
    IndexerAdmin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The bridge did not start or stop cleanly.
    #[error("collector bridge: {0}")]
    Bridge(#[from] collector_bridge::BridgeError),
    /// The viewer did not start.
    #[error(transparent)]
    Viewer(#[from] dlog_viewer::ViewerError),
    /// A stage failed.
    #[error("{stage} stage: {message}")]
    Stage {
        /// Which stage.
        stage: &'static str,
        /// What happened.
        message: String,
    },
}

/// The running process.
pub struct AllInOne {
    bridge: RunningBridge,
    /// The local log; none when the stages read Kafka.
    wal: Option<Wal>,
    records_to: String,
    store_description: String,
    store: Arc<dyn Store>,
    indexer: RunningIndexer,
    alerter: RunningAlerter,
    viewer: dlog_viewer::RunningViewer,
}

/// Opens the store and the local log (or joins Kafka), starts both stages reading it, then the
/// bridge in front of it. Returns once every listener is bound.
pub async fn start(config: Config) -> Result<AllInOne, AllInOneError> {
    // Every Kafka setting is checked before any client connects or any topic is created.
    if let Some(brokers) = &config.kafka_brokers {
        check_kafka_settings(brokers, &config)?;
    }
    // With Elasticsearch a share of the local disk means nothing: the default budget gives
    // way to none (age only); a byte size given explicitly applies.
    let mut retention_config = config.retention.clone();
    let embedded_dir = config.data_dir.join("store");
    if config.elasticsearch_url.is_some()
        && retention_config.max_bytes == ByteBudget::DiskPercent(DEFAULT_RETENTION_DISK_PERCENT)
    {
        retention_config.max_bytes = ByteBudget::Unbounded;
    }
    retention_config
        .validate(
            config
                .elasticsearch_url
                .is_none()
                .then_some(embedded_dir.as_path()),
        )
        .map_err(|message| AllInOneError::Stage {
            stage: "retention",
            message,
        })?;
    let store_config = config.store_config();
    let store_description = match &store_config.elasticsearch_url {
        Some(url) => format!("Elasticsearch {url}"),
        None => format!("embedded store {}", store_config.data_dir.display()),
    };
    // The input is set up first: with the local log, both readers are registered before the
    // bridge accepts anything, so no segment is removed before both stages have read it; with
    // Kafka, the topics exist before anyone produces or subscribes.
    let input = match &config.kafka_brokers {
        None => Input::Local(Box::new(open_local_log(&config)?)),
        Some(brokers) => Input::Kafka {
            brokers: join_kafka(brokers, &config).await?,
        },
    };
    let store = open_store(&store_config)
        .await
        .map_err(|source| AllInOneError::Store {
            store: store_description.clone(),
            source,
        })?;
    // The indexer writes to the store the viewer reads, dead-letters to files in the data
    // directory, and applies the retention policy to both.
    let dead_letters = Arc::new(FileDeadLetters::new(&config.data_dir));
    let mut indexer_config = IndexerConfig {
        admin: config.indexer_admin,
        tls_cert: config.tls_cert.clone(),
        tls_key: config.tls_key.clone(),
        auth_token_file: config.auth_token_file.clone(),
        store: store_config.clone(),
        retention: retention_config,
        ..IndexerConfig::default()
    };
    if let Input::Kafka { brokers } = &input {
        indexer_config.input.kafka_brokers = brokers.clone();
        indexer_config.input.consumer = config.kafka_properties.clone();
        indexer_config.input.topic_replication = config.topic_replication;
    }
    let indexer = Indexer::builder(indexer_config)
        .with_store(Arc::clone(&store))
        .with_dead_letters(dead_letters.clone())
        .with_retained(dead_letters);
    let indexer_error = |e: StartError| match e {
        StartError::Store(source) => AllInOneError::Store {
            store: store_description.clone(),
            source,
        },
        StartError::Admin { addr, source } => AllInOneError::IndexerAdmin { addr, source },
        StartError::Kafka { brokers, source } => AllInOneError::Kafka { brokers, source },
        other => AllInOneError::Stage {
            stage: "indexing",
            message: other.to_string(),
        },
    };
    let alerter_error = |e: dlog_alerting::AlerterError| AllInOneError::Stage {
        stage: "alerting",
        message: e.to_string(),
    };

    let mut alerter_config = AlerterConfig {
        admin: config.alerter_admin,
        tls_cert: config.tls_cert.clone(),
        tls_key: config.tls_key.clone(),
        auth_token_file: config.auth_token_file.clone(),
        rules_file: config.rules_file.clone(),
        state_dir: config.data_dir.join(match input {
            Input::Local(_) => ALERTER_DIR,
            Input::Kafka { .. } => ALERTER_KAFKA_DIR,
        }),
        // Log offsets are stable across restarts, as Kafka's are: records the saved state
        // already applied are skipped when the input hands them out again.
        skip_replayed_offsets: true,
        ..AlerterConfig::default()
    };
    alerter_config.outputs.kafka.enabled = false;
    alerter_config.outputs.store.enabled = true;
    alerter_config.outputs.store.backend = store_config.clone();
    if let Some(url) = &config.webhook_url {
        alerter_config.outputs.webhook.enabled = true;
        alerter_config.outputs.webhook.url = url.clone();
        alerter_config.outputs.webhook.ca_file = config.webhook_ca_file.clone();
    }
    let bridge_config = collector_bridge::Config {
        otlp_grpc: config.otlp_grpc,
        otlp_http: config.otlp_http,
        admin: config.bridge_admin,
        auth_token_file: config.auth_token_file.clone(),
        tls_cert: config.tls_cert.clone(),
        tls_key: config.tls_key.clone(),
        ..collector_bridge::Config::default()
    };

    let (wal, records_to, indexer, alerter, bridge) = match input {
        Input::Local(local) => {
            let local = *local;
            let records_to = format!("local log {}", local.wal.dir().display());
            let indexer = indexer
                .with_source(local.indexer)
                .start()
                .await
                .map_err(indexer_error)?;
            let alerter = match Alerter::builder(alerter_config)
                .with_source(local.alerter)
                .start()
                .await
            {
                Ok(alerter) => alerter,
                Err(e) => {
                    let _ = indexer.shutdown().await;
                    local.wal.close().await;
                    return Err(alerter_error(e));
                }
            };
            let sink = LocalLogSink::new(local.wal.clone());
            let bridge = collector_bridge::Bridge::builder(bridge_config)
                .with_sink(sink)
                .start()
                .await;
            (Some(local.wal), records_to, indexer, alerter, bridge)
        }
        Input::Kafka { brokers } => {
            let records_to = format!("Kafka brokers {brokers}");
            let indexer = indexer.start().await.map_err(indexer_error)?;
            alerter_config.input.kafka_brokers = brokers.clone();
            alerter_config.input.consumer = config.kafka_properties.clone();
            alerter_config.input.topic_replication = config.topic_replication;
            alerter_config.outputs.kafka.enabled = true;
            // As the standalone alerter: it evaluates only once it holds its group's lease, so
            // a second alerter in the group (another `dlog up --kafka`, or `dlog-alerter`)
            // cannot split the state; this one's stage fails, naming the holder.
            let alerter = match Alerter::builder(alerter_config).start().await {
                Ok(alerter) => alerter,
                Err(e) => {
                    let _ = indexer.shutdown().await;
                    return Err(alerter_error(e));
                }
            };
            let bridge = collector_bridge::Bridge::builder(collector_bridge::Config {
                kafka_brokers: brokers.clone(),
                kafka: config.kafka_properties.clone(),
                create_topics: true,
                topic_replication: config.topic_replication,
                ..bridge_config
            })
            .start()
            .await;
            (None, records_to, indexer, alerter, bridge)
        }
    };
    let bridge = match bridge {
        Ok(bridge) => bridge,
        Err(e) => {
            // The stages' last acknowledgements are saved with the log's close.
            let _ = tokio::join!(indexer.shutdown(), alerter.shutdown());
            if let Some(wal) = wal {
                wal.close().await;
            }
            return Err(e.into());
        }
    };
    let viewer_config = dlog_viewer::ViewerConfig {
        listen: config.viewer,
        auth_token_file: config
            .viewer_token_file
            .clone()
            .or_else(|| config.auth_token_file.clone()),
        tls_cert: config.tls_cert.clone(),
        tls_key: config.tls_key.clone(),
        options: dlog_viewer::ViewerOptions {
            max_answer_bytes: config.viewer_max_answer_bytes,
            tail_grace: config.viewer_tail_grace,
            ..dlog_viewer::ViewerOptions::default()
        },
        ..dlog_viewer::ViewerConfig::default()
    };
    let viewer = match dlog_viewer::start(viewer_config, Arc::clone(&store)).await {
        Ok(viewer) => viewer,
        Err(e) => {
            let _ = bridge.shutdown().await;
            let _ = tokio::join!(indexer.shutdown(), alerter.shutdown());
            if let Some(wal) = wal {
                wal.close().await;
            }
            return Err(e.into());
        }
    };
    tracing::info!(
        otlp_grpc = %bridge.grpc_addr(),
        otlp_http = %bridge.http_addr(),
        records_to = %records_to,
        store = %store_description,
        data_dir = %config.data_dir.display(),
        "dlog all-in-one is up"
    );
    Ok(AllInOne {
        bridge,
        wal,
        records_to,
        store_description,
        store,
        indexer,
        alerter,
        viewer,
    })
}

/// What the stages read.
enum Input {
    Local(Box<LocalInput>),
    /// Kafka; the topics exist.
    Kafka {
        /// The bootstrap brokers.
        brokers: String,
    },
}

struct LocalInput {
    wal: Wal,
    indexer: IndexingSource,
    alerter: WalReader,
}

fn open_local_log(config: &Config) -> Result<LocalInput, AllInOneError> {
    let wal_dir = config.data_dir.join(WAL_DIR);
    if !wal_dir.exists() {
        forget_applied_offsets(&config.data_dir.join(ALERTER_DIR))?;
    }
    let wal = Wal::open(WalConfig {
        max_bytes: config.wal_max_bytes,
        // Eight segments or more under the bound, so that removing passed ones frees room
        // long before the bound bites.
        segment_bytes: (config.wal_max_bytes / 8).clamp(4096, dlog_wal::DEFAULT_SEGMENT_BYTES),
        ..WalConfig::new(wal_dir)
    })?;
    let indexer = IndexingSource(wal.reader(INDEXING_READER)?);
    let alerter = wal.reader(ALERTING_READER)?;
    Ok(LocalInput {
        wal,
        indexer,
        alerter,
    })
}

/// Checks what `dlog up --kafka` hands each piece's Kafka clients, as each piece would when it
/// starts: the replication factor, the brokers and the properties (none of a producer's or a
/// consumer's reserved keys, such as `acks` or `enable.auto.commit`). The pieces start one
/// after another once the topics exist; a setting one of them would refuse must stop the
/// start before anything is created.
fn check_kafka_settings(brokers: &str, config: &Config) -> Result<(), AllInOneError> {
    let invalid = |stage: &'static str| {
        move |e: dlog_core::config::ConfigError| AllInOneError::Stage {
            stage,
            message: e.to_string(),
        }
    };
    if config.topic_replication < 1 {
        return Err(AllInOneError::Stage {
            stage: "kafka",
            message: format!(
                "topic_replication (--topic-replication) must be at least 1, not {}",
                config.topic_replication
            ),
        });
    }
    let mut indexer = IndexerConfig::default().input;
    indexer.kafka_brokers = brokers.to_string();
    indexer.consumer = config.kafka_properties.clone();
    indexer.topic_replication = config.topic_replication;
    indexer.validate().map_err(invalid("indexing"))?;
    let mut alerter = AlerterConfig::default().input;
    alerter.kafka_brokers = brokers.to_string();
    alerter.consumer = config.kafka_properties.clone();
    alerter.topic_replication = config.topic_replication;
    alerter.validate().map_err(invalid("alerting"))?;
    collector_bridge::Config {
        kafka: config.kafka_properties.clone(),
        ..collector_bridge::Config::default()
    }
    .validate_kafka_properties()
    .map_err(|e| AllInOneError::Bridge(e.into()))
}

/// Creates the topics the bridge produces to and the alerter emits to, when missing.
async fn join_kafka(brokers: &str, config: &Config) -> Result<String, AllInOneError> {
    let topics = [
        names::TRACE_LOGS_TOPIC,
        names::SERVICE_LOGS_TOPIC,
        names::HEARTBEAT_LOGS_TOPIC,
        names::ALERTS_TOPIC,
    ];
    let settings = dlog_core::kafka::TopicSettings {
        brokers,
        properties: &config.kafka_properties,
        partitions: collector_bridge::config::DEFAULT_TOPIC_PARTITIONS,
        replication: config.topic_replication,
    };
    dlog_core::kafka::ensure_topics(&settings, &topics).await?;
    Ok(brokers.to_string())
}

impl AllInOne {
    /// Bound OTLP/gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.bridge.grpc_addr()
    }

    /// Bound OTLP/HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.bridge.http_addr()
    }

    /// Bound bridge admin address.
    pub fn bridge_admin_addr(&self) -> SocketAddr {
        self.bridge.admin_addr()
    }

    /// Bound indexer admin address.
    pub fn indexer_admin_addr(&self) -> SocketAddr {
        self.indexer.admin_addr()
    }

    /// Bound viewer address (web UI and Jaeger query API).
    pub fn viewer_addr(&self) -> SocketAddr {
        self.viewer.addr()
    }

    /// The store the stages write to (embedded or Elasticsearch), for queries.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// The local log; none when the stages read Kafka.
    pub fn wal(&self) -> Option<&Wal> {
        self.wal.as_ref()
    }

    /// Where the bridge puts records: `local log DIR` or `Kafka brokers HOST:PORT`.
    pub fn records_to(&self) -> &str {
        &self.records_to
    }

    /// Where the stages store: `embedded store DIR` or `Elasticsearch URL`.
    pub fn store_description(&self) -> &str {
        &self.store_description
    }

    /// Waits until both stages have acknowledged every record the log held when this was
    /// called: everything senders had been answered for is then stored and evaluated (alerts
    /// emitted). Gives up after `timeout`, returning false. The bridge answers once records
    /// are durable in the log, before the stages see them; this is the point where they have.
    /// With Kafka there is no local log to compare against (and a broker's watermarks are not
    /// to be trusted for it): it returns false at once; poll the store instead.
    pub async fn processed(&self, timeout: std::time::Duration) -> bool {
        let Some(wal) = &self.wal else {
            return false;
        };
        let end = wal.end_offset();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let done = [INDEXING_READER, ALERTING_READER]
                .iter()
                .all(|reader| wal.committed(reader).is_some_and(|at| at >= end));
            if done {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Resolves when a stage stops on its own (it failed), or the local log stopped accepting
    /// records (a failed write or fsync): the process cannot do its job any more and should
    /// exit non-zero with the reason. Never resolves while everything runs.
    pub async fn stage_failed(&mut self) -> AllInOneError {
        let wal = self.wal.clone();
        let wal_failed = async move {
            match wal {
                Some(wal) => wal.failed().await,
                None => std::future::pending().await,
            }
        };
        let (stage, outcome) = tokio::select! {
            outcome = self.indexer.stopped() => ("indexing", outcome.map_err(|e| e.to_string())),
            outcome = self.alerter.stopped() => ("alerting", outcome.map_err(|e| e.to_string())),
            reason = wal_failed => ("local log", Err(reason)),
        };
        let message = match outcome {
            Ok(()) => "stopped without being told to".to_string(),
            Err(message) => message,
        };
        AllInOneError::Stage { stage, message }
    }

    /// Stops the bridge first (no new requests; in-flight ones finish once their records are
    /// durable in the log), then the stages, then the log (saving each stage's position).
    pub async fn shutdown(self) -> Result<(), AllInOneError> {
        self.viewer.shutdown().await;
        let bridge = self.bridge.shutdown().await;
        let (indexer, alerter) = tokio::join!(self.indexer.shutdown(), self.alerter.shutdown());
        if let Some(wal) = self.wal {
            wal.close().await;
        }
        bridge?;
        indexer.map_err(|e| AllInOneError::Stage {
            stage: "indexing",
            message: e.to_string(),
        })?;
        alerter.map_err(|e| AllInOneError::Stage {
            stage: "alerting",
            message: e.to_string(),
        })
    }
}

/// A new local log numbers its records from 0. Offsets that an alerting state saved against
/// an earlier input (the in-process channels of the layout before the log) would make the
/// alerter skip that many new records, so they are forgotten; the alerts and their state
/// are kept.
fn forget_applied_offsets(dir: &std::path::Path) -> Result<(), AllInOneError> {
    use dlog_alerting::state::StateFile;
    let stage = |e: dlog_alerting::state::StateError| AllInOneError::Stage {
        stage: "alerting",
        message: e.to_string(),
    };
    if !dir.exists() {
        return Ok(());
    }
    let file = StateFile::open(dir).map_err(stage)?;
    if let Some(mut state) = file.load().map_err(stage)? {
        if !state.applied.is_empty() {
            state.applied.clear();
            file.save(&state).map_err(stage)?;
            tracing::info!(state = %file.path().display(), "new local log: the alerting state's input offsets were reset");
        }
    }
    Ok(())
}

/// The indexer's reader of the local log. Its lag is on the bridge's `/metrics`
/// (`dlog_wal_reader_lag_records`), so it reports none of its own.
struct IndexingSource(WalReader);

impl Source for IndexingSource {
    fn next_batch(
        &mut self,
        max: usize,
        linger: std::time::Duration,
    ) -> impl std::future::Future<Output = Result<Vec<RawRecord>, SourceError>> + Send {
        self.0.next_batch(max, linger)
    }

    fn ack(
        &mut self,
        marks: &[Mark],
    ) -> impl std::future::Future<Output = Result<(), SourceError>> + Send {
        self.0.ack(marks)
    }
}

impl ReportsLag for IndexingSource {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_elasticsearch_ca_without_an_elasticsearch_url_is_refused_not_dropped() {
        let config = Config {
            elasticsearch_ca: Some(PathBuf::from("/etc/dlog/es-ca.pem")),
            ..Config::default()
        };
        let err = config.store_config().validate().unwrap_err().to_string();
        assert!(err.contains("`elasticsearch_ca`"), "{err}");
        let config = Config {
            elasticsearch_url: Some("https://search.example:9200".into()),
            ..config
        };
        let store = config.store_config();
        store.validate().unwrap();
        assert_eq!(
            store.elasticsearch_ca,
            Some(PathBuf::from("/etc/dlog/es-ca.pem"))
        );
    }
}
