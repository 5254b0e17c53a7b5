//! The collector bridge: OTLP in, Kafka out, and a "yes" only for what Kafka acknowledged.
//!
//! It receives OTLP over gRPC (`TraceService`, `LogsService`) and HTTP (`/v1/traces`,
//! `/v1/logs`, protobuf or JSON, gzip accepted), routes spans to `trace_logs`, log records to
//! `service_logs` and registration/heartbeat events to `heartbeat_logs`, writes one record
//! per trace (or per key for logs) per request, split so that no record exceeds
//! `max_message_bytes`, and answers the sender only once Kafka acknowledged every record
//! (`acks=all`, idempotent producer). When Kafka does not acknowledge within
//! `produce_timeout_ms` the answer is gRPC `UNAVAILABLE` / HTTP 503 with a retry hint, so
//! senders retry instead of losing data.
//!
//! The output sits behind the [`Sink`] trait: [`KafkaSink`] in production, [`ChannelSink`]
//! to hand batches in-process to the stages (all-in-one mode) under the same rule.
//!
//! ```no_run
//! use collector_bridge::{Bridge, Config};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config {
//!     kafka_brokers: "127.0.0.1:9092".into(),
//!     otlp_grpc: "127.0.0.1:0".parse()?, // port 0: pick a free port
//!     otlp_http: "127.0.0.1:0".parse()?,
//!     admin: "127.0.0.1:0".parse()?,
//!     ..Config::default()
//! };
//! let bridge = Bridge::builder(config).start().await?;
//! println!("OTLP/gRPC on {}, OTLP/HTTP on {}", bridge.grpc_addr(), bridge.http_addr());
//! // ... export to it ...
//! bridge.shutdown().await?; // stop accepting, finish in-flight requests, flush Kafka
//! # Ok(())
//! # }
//! ```

mod body;
pub mod cli;
pub mod config;
mod grpc;
mod http;
mod ingest;
mod json_size;
mod listen;
mod metrics;
pub mod redact;
pub mod route;
mod signal;
pub mod sink;
mod wire;

/// Entry points for the fuzz targets under `fuzz/`: not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    use dlog_core::encoding::Signal;

    use crate::wire::{self, Parsed};

    /// One span or log record as the protobuf validator sliced it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Item {
        /// `trace_id` (empty when absent).
        pub trace_id: Vec<u8>,
        /// `span_id` (empty when absent).
        pub span_id: Vec<u8>,
        /// A registration or heartbeat event (logs only).
        pub heartbeat: bool,
    }

    /// The protobuf validator's verdict on a request.
    #[derive(Debug)]
    pub enum Verdict {
        /// Valid and sliced: items per scope entry per resource entry, and the messages
        /// counted for the decoded-size bound.
        Slices {
            /// Resource entries, each a list of scope entries, each a list of items.
            resources: Vec<Vec<Vec<Item>>>,
            /// Messages in the request.
            messages: usize,
        },
        /// Valid only as prost merges it; the router decodes it with prost.
        NeedsFullDecode {
            /// Messages in the request.
            messages: usize,
        },
        /// Refused, with the reason.
        Invalid(String),
    }

    /// Runs the validator on an `ExportLogsServiceRequest` (`logs`) or an
    /// `ExportTraceServiceRequest`.
    pub fn parse(bytes: &[u8], logs: bool) -> Verdict {
        let signal = if logs { Signal::Logs } else { Signal::Traces };
        match wire::parse_with(bytes, signal, None) {
            Ok(Parsed::Slices {
                resources,
                messages,
                ..
            }) => Verdict::Slices {
                resources: resources
                    .iter()
                    .map(|r| {
                        r.scopes
                            .iter()
                            .map(|s| {
                                s.items
                                    .iter()
                                    .map(|i| Item {
                                        trace_id: i.trace_id.to_vec(),
                                        span_id: i.span_id.to_vec(),
                                        heartbeat: i.heartbeat,
                                    })
                                    .collect()
                            })
                            .collect()
                    })
                    .collect(),
                messages,
            },
            Ok(Parsed::NeedsFullDecode { messages }) => Verdict::NeedsFullDecode { messages },
            Err(e) => Verdict::Invalid(e.to_string()),
        }
    }

    /// The item count read from the framing alone, as the receivers count before validating.
    pub fn count_items(bytes: &[u8]) -> Option<usize> {
        wire::count_items(bytes)
    }

    /// The bound of a prost-decoded request's memory that the router reserves.
    pub fn decoded_size(len: usize, messages: usize) -> usize {
        crate::route::decoded_size(len, messages)
    }

    /// The bound of a JSON-decoded request's memory that the HTTP receiver reserves, or
    /// `None` when it refuses the body before decoding (nested too deep).
    pub fn json_decoded_size(body: &[u8]) -> Option<usize> {
        crate::json_size::json_decoded_size(body).ok()
    }

    /// Decodes an OTLP/JSON trace request body as the HTTP receiver does.
    pub fn json_traces(body: &[u8]) -> Result<ExportTraceServiceRequest, String> {
        crate::http::decode_json_message(body, "ExportTraceServiceRequest")
    }

    /// Decodes an OTLP/JSON logs request body as the HTTP receiver does.
    pub fn json_logs(body: &[u8]) -> Result<ExportLogsServiceRequest, String> {
        crate::http::decode_json_message(body, "ExportLogsServiceRequest")
    }
}

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dlog_core::admin::Serving;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use config::{Config, ConfigError};
pub use route::{InvalidRequest, Routed, Router};
pub use sink::{ChannelSink, KafkaSink, LocalLogSink, OutRecord, Sink, SinkError, Subscriber};

/// The bridge could not start, or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not bind.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener (`otlp_grpc`, `otlp_http`, `admin`).
        what: &'static str,
        /// The address from the configuration.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The topics could not be created (`create_topics`).
    #[error("kafka: {0}")]
    Topics(#[from] dlog_core::kafka::TopicError),
    /// Topics refuse records of `max_message_bytes`.
    #[error("kafka: {}", topics.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    TopicLimits {
        /// Each topic, with its limit and the remedy.
        topics: Vec<sink::TopicTooSmall>,
    },
    /// The Kafka producer could not be made (an invalid `[kafka]` property).
    #[error("kafka: {0}")]
    Producer(#[source] SinkError),
    /// A server stopped with an error while running.
    #[error("the {what} server failed: {message}")]
    Server {
        /// Which server.
        what: &'static str,
        /// What it reported.
        message: String,
    },
    /// The graceful shutdown did not complete in time.
    #[error("shutdown incomplete: {0}")]
    Shutdown(String),
}

type FlushFn =
    Box<dyn FnOnce(Duration) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>> + Send>;

/// A started bridge. Dropping it stops the listeners without waiting; call
/// [`RunningBridge::shutdown`] for a graceful stop.
pub struct RunningBridge {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    /// Cancelled (also when dropped) to stop the receivers.
    stop_receivers: DropGuard,
    /// Cancelled (also when dropped) to stop the admin listener.
    stop_admin: DropGuard,
    receivers: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
    admin: JoinHandle<Result<(), String>>,
    admin_state: Arc<Serving>,
    failures: mpsc::UnboundedReceiver<BridgeError>,
    flush: FlushFn,
    in_flight: Box<dyn Fn() -> i64 + Send + Sync>,
    shutdown_timeout: Duration,
}

/// How long a shutdown waits for idle client connections to close once no request is in
/// flight.
const IDLE_CONNECTION_GRACE: Duration = Duration::from_secs(1);

impl RunningBridge {
    /// Where OTLP/gRPC is served.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where OTLP/HTTP is served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where `/metrics` and `/healthz` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Resolves when a server fails while running (for supervisors such as [`run`]).
    pub async fn failed(&mut self) -> BridgeError {
        match self.failures.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }

    /// Graceful stop: `/healthz` turns 503, the receivers stop accepting connections and
    /// finish the requests in flight (each still answered only after Kafka acknowledged or
    /// its produce timeout passed), then the producer is flushed, all within
    /// `shutdown_timeout_ms`.
    pub async fn shutdown(self) -> Result<(), BridgeError> {
        let deadline = Instant::now() + self.shutdown_timeout;
        self.admin_state.stop_serving();
        self.stop_receivers.disarm().cancel();
        let mut problems = Vec::new();
        // Receivers finish once their connections close. A client that ignores the HTTP/2
        // GOAWAY would hold that up to the deadline, so once no request is in flight for a
        // grace period, the remaining (idle) connections are closed.
        let mut idle_since: Option<Instant> = None;
        loop {
            if self.receivers.iter().all(|(_, task)| task.is_finished()) {
                break;
            }
            let now = Instant::now();
            let in_flight = (self.in_flight)();
            if now >= deadline {
                if in_flight > 0 {
                    problems.push(format!(
                        "{in_flight} requests still in flight at the shutdown deadline"
                    ));
                }
                break;
            }
            if in_flight == 0 {
                let since = *idle_since.get_or_insert(now);
                if now.duration_since(since) >= IDLE_CONNECTION_GRACE {
                    tracing::debug!("closing idle client connections");
                    break;
                }
            } else {
                idle_since = None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (what, task) in self.receivers {
            if !task.is_finished() {
                task.abort();
                continue;
            }
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(format!("{what}: {e}")),
                Err(e) => problems.push(format!("{what} task: {e}")),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = (self.flush)(left).await {
            problems.push(format!("flush: {e}"));
        }
        self.stop_admin.disarm().cancel();
        let mut admin = self.admin;
        if tokio::time::timeout(Duration::from_secs(1), &mut admin)
            .await
            .is_err()
        {
            admin.abort();
        }
        tracing::info!("collector bridge stopped");
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BridgeError::Shutdown(problems.join("; ")))
        }
    }
}

/// The collector bridge, started through [`Bridge::builder`].
#[derive(Debug)]
pub struct Bridge;

impl Bridge {
    /// A builder of the bridge `config` describes. Without [`BridgeBuilder::with_sink`] it
    /// produces to Kafka (a [`KafkaSink`]).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), collector_bridge::BridgeError> {
    /// use collector_bridge::{Bridge, ChannelSink, Config};
    ///
    /// let bridge = Bridge::builder(Config::default())
    ///     .with_sink(ChannelSink::new(Vec::new()))
    ///     .start()
    ///     .await?;
    /// bridge.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(config: Config) -> BridgeBuilder<ProduceToKafka> {
        BridgeBuilder {
            config,
            sink: ProduceToKafka,
        }
    }
}

/// The default next hop of a [`BridgeBuilder`]: a [`KafkaSink`] on the configured brokers.
#[derive(Debug, Clone, Copy)]
pub struct ProduceToKafka;

/// Sets up a bridge; see [`Bridge::builder`].
pub struct BridgeBuilder<S> {
    config: Config,
    sink: S,
}

impl<S> BridgeBuilder<S> {
    /// Delivers to `sink` instead of Kafka (the local log, an in-process channel).
    pub fn with_sink<T: Sink>(self, sink: T) -> BridgeBuilder<T> {
        BridgeBuilder {
            config: self.config,
            sink,
        }
    }
}

impl BridgeBuilder<ProduceToKafka> {
    /// Validates the config, creates the topics when `create_topics` is set, checks that the
    /// topics accept records of `max_message_bytes` (when the broker reports their
    /// `max.message.bytes`; this waits up to 5 s for an answer), and starts the bridge with a
    /// [`KafkaSink`]. Returns once every listener is bound; an unreachable broker does not
    /// fail the start, it makes requests answer `UNAVAILABLE` until it is back.
    pub async fn start(self) -> Result<RunningBridge, BridgeError> {
        let config = self.config;
        config.validate()?;
        if config.create_topics {
            let settings = dlog_core::kafka::TopicSettings {
                brokers: &config.kafka_brokers,
                properties: &config.kafka,
                partitions: config.topic_partitions,
                replication: config.topic_replication,
            };
            dlog_core::kafka::ensure_topics(&settings, &config.topics()).await?;
        }
        // A topic that refuses records of max_message_bytes would fail every large request
        // for good: refuse to start instead, naming the topic and both values.
        sink::check_topic_limits(&config, sink::TOPIC_CHECK_TIMEOUT)
            .await
            .map_err(|topics| BridgeError::TopicLimits { topics })?;
        let sink = KafkaSink::new(&config.kafka_sink()).map_err(BridgeError::Producer)?;
        BridgeBuilder { config, sink }.start().await
    }
}

impl<S: Sink> BridgeBuilder<S> {
    /// Starts the bridge over the sink. `create_topics` and `kafka_brokers` are not used
    /// here. Every configured topic must be one the sink can deliver ([`Sink::check_topic`]):
    /// a [`ChannelSink`] needs a subscriber for each of the three, or the start fails naming
    /// the setting.
    pub async fn start(self) -> Result<RunningBridge, BridgeError> {
        serve(self.config, self.sink).await
    }
}

/// Starts the bridge with a [`KafkaSink`]: `Bridge::builder(config).start()`.
pub async fn start(config: Config) -> Result<RunningBridge, BridgeError> {
    Bridge::builder(config).start().await
}

/// Starts the bridge over any [`Sink`]: `Bridge::builder(config).with_sink(sink).start()`.
pub async fn start_with_sink<S: Sink>(
    config: Config,
    sink: S,
) -> Result<RunningBridge, BridgeError> {
    Bridge::builder(config).with_sink(sink).start().await
}

async fn serve<S: Sink>(config: Config, sink: S) -> Result<RunningBridge, BridgeError> {
    config.validate()?;
    for (key, topic) in [
        ("trace_logs_topic", &config.trace_logs_topic),
        ("service_logs_topic", &config.service_logs_topic),
        ("heartbeat_logs_topic", &config.heartbeat_logs_topic),
    ] {
        sink.check_topic(topic)
            .map_err(|reason| ConfigError::Invalid {
                key: key.to_string(),
                reason,
            })?;
    }
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| BridgeError::Bind { what, addr, source })
    };
    let grpc_listener = bind("otlp_grpc", config.otlp_grpc).await?;
    let http_listener = bind("otlp_http", config.otlp_http).await?;
    let admin_listener = bind("admin", config.admin).await?;
    let local = |what: &'static str, addr: SocketAddr, l: &TcpListener| {
        l.local_addr()
            .map_err(|source| BridgeError::Bind { what, addr, source })
    };
    let grpc_addr = local("otlp_grpc", config.otlp_grpc, &grpc_listener)?;
    let http_addr = local("otlp_http", config.otlp_http, &http_listener)?;
    let admin_addr = local("admin", config.admin, &admin_listener)?;

    let tokens = dlog_core::listen::Tokens::load(
        config.auth_token.as_deref(),
        config.auth_token_file.as_deref(),
    )
    .map_err(|e| ConfigError::Invalid {
        key: if config.auth_token_file.is_some() {
            "auth_token_file"
        } else {
            "auth_token"
        }
        .to_string(),
        reason: e.to_string(),
    })?;
    let tls = |alpn: &[&[u8]]| {
        config
            .tls_files()
            .map(|files| dlog_core::listen::tls::acceptor(&files, alpn))
            .transpose()
            .map_err(|e| ConfigError::Invalid {
                key: "tls_cert".to_string(),
                reason: e.to_string(),
            })
    };
    let grpc_tls = tls(dlog_core::listen::tls::ALPN_H2)?;
    let http_tls = tls(dlog_core::listen::tls::ALPN_H2_AND_HTTP1)?;

    let mut registry = Registry::default();
    let unauthenticated = Family::<[(&'static str, &'static str); 1], Counter>::default();
    registry.register(
        "dlog_bridge_unauthenticated",
        "Requests refused for a missing or wrong bearer token, by listener",
        unauthenticated.clone(),
    );
    let auth = |listener: &'static str| {
        dlog_core::listen::BearerAuth::new(
            tokens.clone(),
            unauthenticated
                .get_or_create(&[("listener", listener)])
                .clone(),
        )
    };
    let metrics = metrics::Metrics::new(&mut registry, &config);
    sink.register_metrics(&mut registry);
    let delivers_to = sink.describe();
    let ingest = Arc::new(ingest::Ingest::new(&config, sink, metrics));
    let admin_state = Arc::new(Serving::new(registry));

    let stop_receivers = CancellationToken::new();
    let stop_admin = CancellationToken::new();
    let (fail_tx, failures) = mpsc::unbounded_channel();

    let grpc_limits = grpc::GrpcLimits {
        max_request_bytes: config.max_request_bytes,
        first_frame_timeout: Duration::from_millis(config.grpc_first_frame_timeout_ms),
        body_timeout: config.request_body_timeout(),
    };
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(config.grpc_max_concurrent_streams))
        .http2_keepalive_interval(Some(config.http2_keepalive_interval()))
        .http2_keepalive_timeout(Some(config.http2_keepalive_timeout()))
        .layer(auth("otlp_grpc"))
        .add_service(grpc::OtlpService::<S, signal::Traces>::new(
            ingest.clone(),
            grpc_limits,
        ))
        .add_service(grpc::OtlpService::<S, signal::Logs>::new(
            ingest.clone(),
            grpc_limits,
        ))
        .serve_with_incoming_shutdown(
            listen::capped_incoming(
                grpc_listener,
                config.max_connections,
                grpc_tls,
                Duration::from_millis(config.http_header_read_timeout_ms),
            ),
            stop_receivers.clone().cancelled_owned(),
        );
    let grpc_task = spawn_server("otlp_grpc", fail_tx.clone(), async move {
        grpc.await.map_err(|e| e.to_string())
    });

    let http_app = http::router(
        ingest.clone(),
        config.max_request_bytes,
        config.request_body_timeout(),
    )
    .layer(auth("otlp_http"));
    let http_limits = listen::ConnectionLimits {
        max_connections: config.max_connections,
        header_read_timeout: Duration::from_millis(config.http_header_read_timeout_ms),
        keepalive_interval: config.http2_keepalive_interval(),
        keepalive_timeout: config.http2_keepalive_timeout(),
        max_concurrent_streams: config.grpc_max_concurrent_streams,
    };
    let http_task = spawn_server(
        "otlp_http",
        fail_tx.clone(),
        listen::serve_http(
            "otlp_http",
            http_listener,
            http_app,
            http_limits,
            http_tls.clone(),
            stop_receivers.clone().cancelled_owned(),
        ),
    );

    let admin_app = dlog_core::admin::router_with_auth(admin_state.clone(), auth("admin"));
    let admin_task = spawn_server(
        "admin",
        fail_tx,
        listen::serve_http(
            "admin",
            admin_listener,
            admin_app,
            http_limits,
            http_tls,
            stop_admin.clone().cancelled_owned(),
        ),
    );

    let flush: FlushFn = {
        let ingest = ingest.clone();
        Box::new(move |timeout| Box::pin(async move { ingest.sink().flush(timeout).await }))
    };

    tracing::info!(
        otlp_grpc = %grpc_addr,
        otlp_http = %http_addr,
        admin = %admin_addr,
        delivers_to = %delivers_to,
        encoding = %config.encoding,
        "collector bridge listening"
    );
    Ok(RunningBridge {
        grpc_addr,
        http_addr,
        admin_addr,
        stop_receivers: stop_receivers.drop_guard(),
        stop_admin: stop_admin.drop_guard(),
        receivers: vec![("otlp_grpc", grpc_task), ("otlp_http", http_task)],
        admin: admin_task,
        admin_state,
        failures,
        flush,
        in_flight: {
            let ingest = ingest.clone();
            Box::new(move || ingest.requests_in_flight())
        },
        shutdown_timeout: config.shutdown_timeout(),
    })
}

/// Runs the bridge until `shutdown` is cancelled (or a server fails), then stops gracefully.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), BridgeError> {
    let mut bridge = Bridge::builder(config).start().await?;
    tokio::select! {
        () = shutdown.cancelled() => {
            tracing::info!("shutting down: finishing in-flight requests and flushing Kafka");
            bridge.shutdown().await
        }
        error = bridge.failed() => {
            let _ = bridge.shutdown().await;
            Err(error)
        }
    }
}

fn spawn_server(
    what: &'static str,
    failures: mpsc::UnboundedSender<BridgeError>,
    server: impl Future<Output = Result<(), String>> + Send + 'static,
) -> JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let result = server.await;
        if let Err(message) = &result {
            tracing::error!(server = what, %message, "server failed");
            let _ = failures.send(BridgeError::Server {
                what,
                message: message.clone(),
            });
        }
        result
    })
}
