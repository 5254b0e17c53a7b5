//! dlog in one process: what a laptop runs with one command.
//!
//! The collector bridge receives OTLP as usual, but instead of Kafka its sink hands each batch
//! in-process to the indexing stage (into the embedded store) and to the alerting stage, and
//! answers the sender only once both stages acknowledged the batch: the same "yes only after
//! the next hop said yes" rule as with Kafka. Nothing but a data directory is needed: the
//! embedded store, the alerting state and the dead letters (records that cannot be stored,
//! with their reason; see [`dead_letters`]) all live in it.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), dlog::AllInOneError> {
//! let running = dlog::start(dlog::Config::default()).await?;
//! println!("OTLP/gRPC on {}", running.grpc_addr());
//! running.shutdown().await?;
//! # Ok(()) }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use collector_bridge::{ChannelSink, RunningBridge, Subscriber};
use dlog_alerting::{AlerterConfig, SystemClock};
use dlog_core::names;
use dlog_core::source::ChannelSource;
use dlog_storage::stage::{run_pipeline, Metrics, PipelineOptions};
use dlog_storage::{open_store, Store, StoreConfig};
use tokio::task::JoinHandle;

pub mod dead_letters;
use dead_letters::FileDeadLetters;
use tokio_util::sync::CancellationToken;

/// Default data directory (the embedded store and the alerter's state live under it).
pub const DEFAULT_DATA_DIR: &str = "./dlog-data";

/// Batches each stage may hold in flight before the bridge's senders wait (back-pressure).
const STAGE_QUEUE_BATCHES: usize = 64;

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
    /// Alert rules file (TOML); the built-in defaults when absent.
    pub rules_file: Option<PathBuf>,
    /// POST alerts as JSON to this URL as well.
    pub webhook_url: Option<String>,
}

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
            rules_file: None,
            webhook_url: None,
        }
    }
}

/// The all-in-one process could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AllInOneError {
    /// The embedded store could not be opened.
    #[error("cannot open the embedded store in {dir}: {source}")]
    Store {
        /// The store directory.
        dir: PathBuf,
        /// Why.
        source: dlog_storage::StoreError,
    },
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
    store: Arc<dyn Store>,
    stop_indexer: CancellationToken,
    stop_alerter: CancellationToken,
    indexer: JoinHandle<Result<(), String>>,
    alerter: JoinHandle<Result<(), String>>,
    indexer_admin: JoinHandle<()>,
    indexer_admin_addr: SocketAddr,
}

/// Opens the store, starts both stages on in-process channels, then the bridge in front of
/// them. Returns once every listener is bound.
pub async fn start(config: Config) -> Result<AllInOne, AllInOneError> {
    let store_dir = config.data_dir.join("store");
    let store = open_store(&StoreConfig::embedded(&store_dir))
        .await
        .map_err(|source| AllInOneError::Store {
            dir: store_dir.clone(),
            source,
        })?;
    let topics: Vec<String> = [
        names::TRACE_LOGS_TOPIC,
        names::SERVICE_LOGS_TOPIC,
        names::HEARTBEAT_LOGS_TOPIC,
    ]
    .map(String::from)
    .to_vec();

    let (indexer_tx, indexer_source) = ChannelSource::new(STAGE_QUEUE_BATCHES);
    let stop_indexer = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let (indexer_admin_addr, indexer_admin) = dlog_storage::stage::admin::serve(
        config.indexer_admin,
        Arc::clone(&metrics),
        stop_indexer.clone(),
    )
    .await
    .map_err(|source| AllInOneError::IndexerAdmin {
        addr: config.indexer_admin,
        source,
    })?;
    let indexer = tokio::spawn({
        let store = Arc::clone(&store);
        let data_dir = config.data_dir.clone();
        let stop = stop_indexer.clone();
        async move {
            run_pipeline(
                indexer_source,
                store,
                Arc::new(FileDeadLetters::new(&data_dir)),
                PipelineOptions::default(),
                metrics,
                stop,
            )
            .await
            .map_err(|e| e.to_string())
        }
    });

    let (alerter_tx, alerter_source) = ChannelSource::new(STAGE_QUEUE_BATCHES);
    let mut alerter_config = AlerterConfig {
        admin: config.alerter_admin,
        rules_file: config.rules_file.clone(),
        state_dir: config.data_dir.join("alerter"),
        // In-process offsets restart with the process: there is nothing to replay.
        skip_replayed_offsets: false,
        ..AlerterConfig::default()
    };
    alerter_config.outputs.kafka.enabled = false;
    alerter_config.outputs.store.enabled = true;
    alerter_config.outputs.store.backend = StoreConfig::embedded(&store_dir);
    if let Some(url) = &config.webhook_url {
        alerter_config.outputs.webhook.enabled = true;
        alerter_config.outputs.webhook.url = url.clone();
    }
    let stop_alerter = CancellationToken::new();
    let alerter = tokio::spawn({
        let stop = stop_alerter.clone();
        async move {
            dlog_alerting::run_with(
                alerter_config,
                alerter_source,
                Arc::new(SystemClock),
                stop.cancelled_owned(),
            )
            .await
            .map_err(|e| e.to_string())
        }
    });

    let bridge_config = collector_bridge::Config {
        otlp_grpc: config.otlp_grpc,
        otlp_http: config.otlp_http,
        admin: config.bridge_admin,
        ..collector_bridge::Config::default()
    };
    let sink = ChannelSink::new(vec![
        Subscriber {
            name: "indexing".to_string(),
            topics: topics.clone(),
            sender: indexer_tx,
        },
        Subscriber {
            name: "alerting".to_string(),
            topics,
            sender: alerter_tx,
        },
    ]);
    let bridge = match collector_bridge::start_with_sink(bridge_config, sink).await {
        Ok(bridge) => bridge,
        Err(e) => {
            stop_indexer.cancel();
            stop_alerter.cancel();
            return Err(e.into());
        }
    };
    tracing::info!(
        otlp_grpc = %bridge.grpc_addr(),
        otlp_http = %bridge.http_addr(),
        data_dir = %config.data_dir.display(),
        "dlog all-in-one is up"
    );
    Ok(AllInOne {
        bridge,
        store,
        stop_indexer,
        stop_alerter,
        indexer,
        alerter,
        indexer_admin,
        indexer_admin_addr,
    })
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
        self.indexer_admin_addr
    }

    /// The embedded store, for queries.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Stops the bridge first (no new requests; in-flight ones finish, which needs the stages),
    /// then the stages.
    pub async fn shutdown(self) -> Result<(), AllInOneError> {
        let bridge = self.bridge.shutdown().await;
        self.stop_indexer.cancel();
        self.stop_alerter.cancel();
        let indexer = join("indexing", self.indexer).await;
        let alerter = join("alerting", self.alerter).await;
        let _ = self.indexer_admin.await;
        bridge?;
        indexer?;
        alerter
    }
}

async fn join(
    stage: &'static str,
    task: JoinHandle<Result<(), String>>,
) -> Result<(), AllInOneError> {
    match task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(AllInOneError::Stage { stage, message }),
        Err(e) => Err(AllInOneError::Stage {
            stage,
            message: e.to_string(),
        }),
    }
}
