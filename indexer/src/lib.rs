//! The indexing stage: records from `trace_logs`, `service_logs` and `heartbeat_logs` in,
//! documents in the store out, offsets committed only once the store acknowledged every
//! document derived from them.
//!
//! One batch at a time:
//! 1. take up to `batch_max_records` records from the [`Source`];
//! 2. decode each by its encoding header into documents; a record that does not decode is
//!    a poison record and goes to the dead-letter topic with the reason and its coordinates;
//! 3. write the documents; documents the store rejects for good are dead-lettered with their
//!    record, documents it could not take now (429, 5xx, timeout, store down) are written
//!    again with exponential backoff while consumption is paused, until they are acked or
//!    the stage is shut down (then nothing is committed and the batch is replayed on restart);
//! 4. acknowledge the batch ([`Source::ack`]: the Kafka source commits the offsets).
//!
//! The loop around these steps (batches, pausing while polling on, backoff, acks) is the
//! stage runtime's [`Driver`]; this crate supplies the steps. [`Indexer::builder`] starts the
//! stage with its admin endpoints ([`admin`], [`metrics`]) and its retention loop
//! ([`retention`]); [`run`] is what the `dlog-indexer` binary runs, and [`cli`] its commands
//! (including the store queries `dlog` shares).

pub mod admin;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod retention;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dlog_core::encoding::{decode_logs, decode_traces, Signal, TopicSignals};
use dlog_core::kafka::{DeadLetterError, DeadLetters, KafkaSource};
use dlog_core::model::{logs_from_request, spans_from_request, LogItem};
use dlog_core::names;
use dlog_core::source::{ChannelSource, Mark, RawRecord, Source, SourceError};
use dlog_core::stage::{BatchHandler, Driver, DriverOptions, Input, ReadRetry, StageTask, Stopped};
use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

pub use config::{ConfigError, IndexerConfig};
pub use metrics::Metrics;

use dlog_storage::store::{Document, Store, WriteOutcome};

/// Where records that cannot be stored go.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Stores `record` with `reason` durably; the stage acknowledges the record only after
    /// this returned `Ok`.
    async fn send(&self, record: &RawRecord, reason: &str) -> Result<(), DeadLetterError>;
}

#[async_trait]
impl DeadLetterSink for DeadLetters {
    async fn send(&self, record: &RawRecord, reason: &str) -> Result<(), DeadLetterError> {
        DeadLetters::send(self, record, reason).await
    }
}

/// A dead-letter sink for in-process mode without Kafka: logs each record at error level
/// with its reason and coordinates (and the stage counts it).
#[derive(Debug, Default, Clone)]
pub struct LogDeadLetters;

#[async_trait]
impl DeadLetterSink for LogDeadLetters {
    async fn send(&self, record: &RawRecord, reason: &str) -> Result<(), DeadLetterError> {
        tracing::error!(
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            bytes = record.payload.len(),
            reason,
            "dead letter"
        );
        Ok(())
    }
}

/// Consumer lag of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Records between the consumer's position and the high watermark.
    pub lag: i64,
}

/// Reads the lag of every assigned partition. It may block (broker round trips), so the
/// stage runs it on a blocking thread of its own, never in the indexing loop.
pub type LagReader = Arc<dyn Fn() -> Vec<PartitionLag> + Send + Sync>;

/// A source that can say how far behind it is (Kafka); others report nothing.
pub trait ReportsLag {
    /// A reader of the lag per assigned partition, where the source can tell it.
    fn lag_reader(&self) -> Option<LagReader> {
        None
    }
}

impl ReportsLag for ChannelSource {}

impl ReportsLag for KafkaSource {
    fn lag_reader(&self) -> Option<LagReader> {
        let consumer = self.shared_consumer();
        Some(Arc::new(move || {
            let Ok(position) = consumer.position() else {
                return Vec::new();
            };
            let mut out = Vec::new();
            for elem in position.elements() {
                let rdkafka::Offset::Offset(pos) = elem.offset() else {
                    continue;
                };
                // Blocks this (lag) thread for at most the timeout per partition.
                if let Ok((_, high)) = consumer.fetch_watermarks(
                    elem.topic(),
                    elem.partition(),
                    Duration::from_millis(500),
                ) {
                    out.push(PartitionLag {
                        topic: elem.topic().to_string(),
                        partition: elem.partition(),
                        lag: (high - pos).max(0),
                    });
                }
            }
            out
        }))
    }
}

/// Reads lag every `interval` on a blocking thread and publishes it, until `shutdown`.
/// A slow read delays only the next read, never consumption.
async fn report_lag(
    reader: LagReader,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let read = Arc::clone(&reader);
        let lags = tokio::select! {
            _ = shutdown.cancelled() => return,
            lags = tokio::task::spawn_blocking(move || read()) => lags,
        };
        match lags {
            Ok(lags) => {
                for l in lags {
                    metrics
                        .lag
                        .get_or_create(&metrics::PartitionLabel {
                            topic: l.topic,
                            partition: l.partition.to_string(),
                        })
                        .set(l.lag);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the consumer lag failed"),
        }
    }
}

/// Which topic carries which signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Spans.
    pub trace_logs: String,
    /// Log records.
    pub service_logs: String,
    /// Registration and heartbeat events.
    pub heartbeat_logs: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            trace_logs: names::TRACE_LOGS_TOPIC.to_string(),
            service_logs: names::SERVICE_LOGS_TOPIC.to_string(),
            heartbeat_logs: names::HEARTBEAT_LOGS_TOPIC.to_string(),
        }
    }
}

/// How the pipeline batches and retries.
#[derive(Debug, Clone)]
struct PipelineOptions {
    /// Topic roles.
    pub topics: Topics,
    /// Most records per batch.
    pub batch_max_records: usize,
    /// How long a batch waits to fill up.
    pub batch_linger: Duration,
    /// First retry wait; doubles per attempt.
    pub retry_initial: Duration,
    /// Longest retry wait.
    pub retry_max: Duration,
    /// How often lag is read (zero disables it).
    pub lag_interval: Duration,
}

impl PipelineOptions {
    /// What the batch driver needs of these: a failed read is retried after `retry_initial`,
    /// and a failed poll of the paused input only at the next poll step.
    fn driver(&self) -> DriverOptions {
        DriverOptions {
            batch_max_records: self.batch_max_records,
            batch_linger: self.batch_linger,
            retry_initial: self.retry_initial,
            retry_max: self.retry_max,
            read_retry: ReadRetry::Fixed,
            log_paused_poll_errors: false,
        }
    }

    /// The options an [`IndexerConfig`] asks for.
    fn from_config(config: &IndexerConfig) -> Self {
        PipelineOptions {
            topics: Topics {
                trace_logs: config.trace_logs_topic.clone(),
                service_logs: config.service_logs_topic.clone(),
                heartbeat_logs: config.heartbeat_logs_topic.clone(),
            },
            batch_max_records: config.batch_max_records,
            batch_linger: config.batch_linger(),
            retry_initial: Duration::from_millis(config.retry_initial_ms),
            retry_max: Duration::from_millis(config.retry_max_ms),
            lag_interval: Duration::from_millis(config.lag_interval_ms),
        }
    }
}

/// Decodes one record into documents, or says why it cannot be decoded.
///
/// The topic decides the signal (`trace_logs` holds traces, the other two logs); a record
/// from another topic is read by its `otlp.signal` header.
pub fn decode_record(record: &RawRecord, topics: &Topics) -> Result<Vec<Document>, String> {
    let topics = TopicSignals {
        trace_logs: &topics.trace_logs,
        service_logs: &topics.service_logs,
        heartbeat_logs: &topics.heartbeat_logs,
    };
    let Some(signal) = topics.signal_of(record) else {
        return Err(format!(
            "record from topic `{}` has no `{}` header saying traces or logs",
            record.topic,
            names::SIGNAL_HEADER
        ));
    };
    let encoding = record.encoding().map_err(|e| e.to_string())?;
    match signal {
        Signal::Traces => {
            let request = decode_traces(encoding, &record.payload).map_err(|e| e.to_string())?;
            let spans = spans_from_request(&request);
            let mut docs = Vec::with_capacity(spans.len());
            for span in spans {
                if !is_hex_id(&span.trace_id, 32) || !is_hex_id(&span.span_id, 16) {
                    return Err(format!(
                        "span `{}` has an invalid trace id `{}` or span id `{}` (need 16 and 8 non-zero bytes)",
                        span.name, span.trace_id, span.span_id
                    ));
                }
                docs.push(Document::Span(span));
            }
            Ok(docs)
        }
        Signal::Logs => {
            let request = decode_logs(encoding, &record.payload).map_err(|e| e.to_string())?;
            Ok(logs_from_request(&request)
                .into_iter()
                .map(|item| match item {
                    LogItem::Log(l) => Document::Log(l),
                    LogItem::Heartbeat(h) => Document::Heartbeat(h),
                })
                .collect())
        }
    }
}

fn is_hex_id(id: &str, len: usize) -> bool {
    id.len() == len && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0')
}

/// The stage failed for good.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The stage's task panicked or was aborted.
    #[error("stage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The indexer's batch logic, run by the stage runtime's [`Driver`]: decode, write, dead-letter,
/// then hand back the batch's marks.
struct Indexing {
    store: Arc<dyn Store>,
    dead_letters: Arc<dyn DeadLetterSink>,
    topics: Topics,
    metrics: Arc<Metrics>,
}

/// Most bytes of a dead-letter reason (several rejected documents can add up), the limit
/// the Kafka dead-letter producer enforces too.
const MAX_REASON_CHARS: usize = dlog_core::kafka::MAX_DLQ_REASON_BYTES - 3;

impl<S: Source> BatchHandler<S> for Indexing {
    type Error = StageError;

    async fn handle(
        &mut self,
        batch: Vec<RawRecord>,
        input: &mut Input<S>,
    ) -> Result<Vec<Mark>, StageError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        match self.process(&batch, input).await {
            Ok(()) => Ok(Mark::latest(&batch)),
            // Told to stop before the store took everything: nothing is acknowledged, and the
            // batch is replayed on restart.
            Err(Stopped) => Ok(Vec::new()),
        }
    }

    fn acked(&mut self, _marks: Vec<Mark>, result: Result<(), SourceError>) {
        if let Err(e) = result {
            // Not fatal: the documents are durable; a replay after a restart or rebalance
            // overwrites them.
            self.metrics.commit_failures.inc();
            tracing::warn!(error = %e, "acknowledging the batch failed; it will be replayed");
        } else {
            self.metrics.commits.inc();
        }
    }
}

impl dlog_core::stage::InputEvents for Metrics {
    fn paused(&self, paused: bool) {
        self.paused.set(i64::from(paused));
    }
}

impl Indexing {
    async fn process<S: Source>(
        &mut self,
        batch: &[RawRecord],
        input: &mut Input<S>,
    ) -> Result<(), Stopped> {
        let mut docs = Vec::new();
        let mut owners = Vec::new();
        let mut reasons: BTreeMap<usize, (&'static str, Vec<String>)> = BTreeMap::new();
        for (i, record) in batch.iter().enumerate() {
            self.metrics
                .consumed
                .get_or_create(&metrics::TopicLabel {
                    topic: record.topic.clone(),
                })
                .inc();
            match decode_record(record, &self.topics) {
                Ok(decoded) => {
                    owners.extend(std::iter::repeat_n(i, decoded.len()));
                    docs.extend(decoded);
                }
                Err(reason) => {
                    tracing::warn!(topic = %record.topic, partition = record.partition,
                        offset = record.offset, %reason, "poison record");
                    reasons.insert(i, ("decode", vec![format!("undecodable record: {reason}")]));
                }
            }
        }
        for (owner, reason) in self.write_all(docs, owners, input).await? {
            reasons
                .entry(owner)
                .or_insert(("rejected", Vec::new()))
                .1
                .push(reason);
        }
        for (i, (kind, why)) in reasons {
            let mut reason = why.join("; ");
            if reason.len() > MAX_REASON_CHARS {
                let cut = (0..=MAX_REASON_CHARS)
                    .rev()
                    .find(|c| reason.is_char_boundary(*c))
                    .unwrap_or(0);
                reason.truncate(cut);
                reason.push_str("...");
            }
            self.dead_letter(&batch[i], &reason, input).await?;
            self.metrics
                .dead_lettered
                .get_or_create(&metrics::ReasonLabel { reason: kind })
                .inc();
        }
        Ok(())
    }

    /// Writes until every document is acked or rejected; returns the rejected ones with their
    /// owner record and reason.
    async fn write_all<S: Source>(
        &mut self,
        mut docs: Vec<Document>,
        mut owners: Vec<usize>,
        input: &mut Input<S>,
    ) -> Result<Vec<(usize, String)>, Stopped> {
        let mut rejected = Vec::new();
        let mut backoff = input.backoff();
        while !docs.is_empty() {
            let started = Instant::now();
            let result = self.store.write(&docs).await;
            self.metrics
                .write_seconds
                .observe(started.elapsed().as_secs_f64());
            let mut retry_docs = Vec::new();
            let mut retry_owners = Vec::new();
            let mut last_error = String::new();
            match result {
                Ok(outcomes) if outcomes.len() == docs.len() => {
                    for ((doc, owner), outcome) in docs.into_iter().zip(owners).zip(outcomes) {
                        match outcome {
                            WriteOutcome::Written => {
                                self.metrics
                                    .written
                                    .get_or_create(&metrics::KindLabel { kind: doc.kind() })
                                    .inc();
                            }
                            WriteOutcome::Rejected(reason) => {
                                rejected.push((
                                    owner,
                                    format!(
                                        "{} {} rejected by the store: {reason}",
                                        doc.kind(),
                                        doc.id()
                                    ),
                                ));
                            }
                            WriteOutcome::Retry(reason) => {
                                last_error = reason;
                                retry_docs.push(doc);
                                retry_owners.push(owner);
                            }
                        }
                    }
                }
                Ok(outcomes) => {
                    last_error = format!(
                        "the store answered {} outcomes for {} documents",
                        outcomes.len(),
                        docs.len()
                    );
                    self.metrics.write_failures.inc();
                    retry_docs = docs;
                    retry_owners = owners;
                }
                Err(e) => {
                    if !e.is_retryable() {
                        tracing::error!(error = %e, "the store refused the write; retrying until it accepts (fix the store or its settings)");
                    }
                    last_error = e.to_string();
                    self.metrics.write_failures.inc();
                    retry_docs = docs;
                    retry_owners = owners;
                }
            }
            docs = retry_docs;
            owners = retry_owners;
            if docs.is_empty() {
                break;
            }
            // Down before the retries are counted: whoever sees a retry sees the store down.
            self.metrics.store_up.set(0);
            for doc in &docs {
                self.metrics
                    .retried
                    .get_or_create(&metrics::KindLabel { kind: doc.kind() })
                    .inc();
            }
            let delay = backoff.next_delay();
            let attempt = backoff.attempt();
            if attempt == 1 || attempt.is_power_of_two() {
                tracing::warn!(attempt, documents = docs.len(), error = %last_error,
                    "store did not take the batch; pausing consumption and retrying");
            }
            input.retry(delay).await?;
        }
        if backoff.attempt() > 0 {
            tracing::info!(
                attempts = backoff.attempt(),
                "store accepted the batch again; resuming"
            );
        }
        self.metrics.store_up.set(1);
        input.resume();
        Ok(rejected)
    }

    /// Writes one dead letter, retrying until it lands or the stage shuts down (meanwhile the
    /// input is paused but still polled, so the consumer is not evicted from its group).
    async fn dead_letter<S: Source>(
        &mut self,
        record: &RawRecord,
        reason: &str,
        input: &mut Input<S>,
    ) -> Result<(), Stopped> {
        let mut backoff = input.backoff();
        loop {
            match self.dead_letters.send(record, reason).await {
                Ok(()) => {
                    if backoff.attempt() > 0 {
                        tracing::info!(
                            attempts = backoff.attempt(),
                            "dead letter written; resuming"
                        );
                        input.resume();
                    }
                    return Ok(());
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    let attempt = backoff.attempt();
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(error = %e, attempt, "writing a dead letter failed; pausing consumption and retrying");
                    }
                    input.retry(delay).await?;
                }
            }
        }
    }
}

/// Runs the pipeline over any [`Source`] until `shutdown` is cancelled or the source closes
/// (what [`Indexer::builder`] starts; the lag reader runs beside it).
async fn run_pipeline<S: Source + ReportsLag>(
    source: S,
    store: Arc<dyn Store>,
    dead_letters: Arc<dyn DeadLetterSink>,
    options: PipelineOptions,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), StageError> {
    // Lag is read beside the loop: its broker round trips must not delay consumption.
    let lag_stop = shutdown.child_token();
    let _stop_lag_on_return = lag_stop.clone().drop_guard();
    if let Some(reader) = source.lag_reader() {
        if !options.lag_interval.is_zero() {
            tokio::spawn(report_lag(
                reader,
                options.lag_interval,
                Arc::clone(&metrics),
                lag_stop,
            ));
        }
    }
    let mut indexing = Indexing {
        store,
        dead_letters,
        topics: options.topics.clone(),
        metrics: Arc::clone(&metrics),
    };
    Driver::new(source, options.driver(), shutdown)
        .with_events(metrics)
        .run(&mut indexing)
        .await?;
    tracing::info!("indexing stage stopped");
    Ok(())
}

/// The stage could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] dlog_storage::store::StoreError),
    /// The consumer could not be set up.
    #[error("kafka at {brokers}: {source}")]
    Kafka {
        /// The brokers.
        brokers: String,
        /// What failed.
        source: SourceError,
    },
    /// The topics could not be created.
    #[error(transparent)]
    Topics(#[from] dlog_core::kafka::TopicError),
    /// The dead-letter producer could not be made.
    #[error(transparent)]
    DeadLetters(#[from] DeadLetterError),
    /// The admin address could not be bound.
    #[error("cannot listen on admin address {addr}: {source}")]
    Admin {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running indexing stage.
pub struct RunningIndexer {
    admin_addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    pipeline: StageTask<StageError>,
    admin: tokio::task::JoinHandle<()>,
    retention: tokio::task::JoinHandle<()>,
}

impl RunningIndexer {
    /// Where `/metrics` and `/healthz` are served.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin_addr
    }

    /// The stage's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The store the stage writes to.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Stops consuming, finishes the batch in hand when the store takes it (otherwise leaves
    /// it uncommitted for the next run), and waits for the stage to stop.
    pub async fn shutdown(self) -> Result<(), StageError> {
        self.pipeline.token().cancel();
        self.wait().await
    }

    /// Resolves when the stage has stopped: on its own (its in-process input closed, or it
    /// failed) or after a shutdown; while it runs, never. Cancel-safe, for `select!`.
    pub async fn stopped(&mut self) -> Result<(), StageError> {
        self.pipeline.stopped().await
    }

    /// Waits until the stage stops by itself or through [`RunningIndexer::shutdown`], then
    /// for its admin listener and retention loop. Dropping the handle instead stops the
    /// stage where it is, as a crash would.
    pub async fn wait(mut self) -> Result<(), StageError> {
        let result = self.pipeline.stopped().await;
        self.pipeline.token().cancel();
        let _ = (&mut self.admin).await;
        let _ = (&mut self.retention).await;
        result
    }
}

/// The indexing stage, started through [`Indexer::builder`].
#[derive(Debug)]
pub struct Indexer;

impl Indexer {
    /// A builder of the stage `config` describes. Without [`IndexerBuilder::with_source`] it
    /// joins its Kafka consumer group (creating the topics when `create_topics` is set);
    /// without [`IndexerBuilder::with_dead_letters`] it dead-letters to the Kafka
    /// `dead_letters_topic`; without [`IndexerBuilder::with_store`] it opens `config.store`.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use dlog_core::source::ChannelSource;
    /// use dlog_indexer::{Indexer, IndexerConfig, LogDeadLetters};
    ///
    /// let (_sender, source) = ChannelSource::new(16);
    /// let indexer = Indexer::builder(IndexerConfig::default())
    ///     .with_source(source)
    ///     .with_dead_letters(std::sync::Arc::new(LogDeadLetters))
    ///     .start()
    ///     .await?;
    /// indexer.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(config: IndexerConfig) -> IndexerBuilder<JoinKafka> {
        IndexerBuilder {
            config,
            source: JoinKafka,
            store: None,
            dead_letters: None,
            retained: Vec::new(),
            shutdown: CancellationToken::new(),
        }
    }
}

/// The default input of an [`IndexerBuilder`]: the Kafka consumer group of its config.
#[derive(Debug, Clone, Copy)]
pub struct JoinKafka;

/// Sets up an indexing stage; see [`Indexer::builder`].
pub struct IndexerBuilder<S> {
    config: IndexerConfig,
    source: S,
    store: Option<Arc<dyn Store>>,
    dead_letters: Option<Arc<dyn DeadLetterSink>>,
    retained: Vec<Arc<dyn retention::Retained>>,
    shutdown: CancellationToken,
}

impl<S> IndexerBuilder<S> {
    /// Reads `source` instead of joining Kafka (the local log, an in-process channel).
    pub fn with_source<T: Source + ReportsLag + 'static>(self, source: T) -> IndexerBuilder<T> {
        IndexerBuilder {
            config: self.config,
            source,
            store: self.store,
            dead_letters: self.dead_letters,
            retained: self.retained,
            shutdown: self.shutdown,
        }
    }

    /// Writes to `store` (one the process shares) instead of opening `config.store`.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Where records that cannot be stored go, instead of the Kafka dead-letter topic.
    pub fn with_dead_letters(mut self, dead_letters: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// Something besides the store that the retention policy also applies to (dead-letter
    /// files).
    pub fn with_retained(mut self, retained: Arc<dyn retention::Retained>) -> Self {
        self.retained.push(retained);
        self
    }

    /// Stops the stage when `shutdown` is cancelled, as [`RunningIndexer::shutdown`] does.
    pub fn with_shutdown(mut self, shutdown: &CancellationToken) -> Self {
        self.shutdown = shutdown.child_token();
        self
    }
}

/// A validated configuration's retention policy and open store.
struct Opened {
    policy: dlog_storage::store::RetentionPolicy,
    store: Arc<dyn Store>,
}

impl<S> IndexerBuilder<S> {
    /// Checks the configuration and opens the store (installing Elasticsearch templates)
    /// unless one was given: before any consumer joins the group.
    async fn open(&mut self) -> Result<Opened, StartError> {
        self.config.validate()?;
        let policy = self
            .config
            .retention
            .policy(&self.config.store.data_dir)
            .map_err(|reason| ConfigError::invalid("retention", reason))?;
        let store = match self.store.take() {
            Some(store) => store,
            None => dlog_storage::open_store(&self.config.store).await?,
        };
        Ok(Opened { policy, store })
    }
}

impl IndexerBuilder<JoinKafka> {
    /// Starts the stage on its Kafka consumer group: opens the store first, then creates
    /// the topics when asked and joins the group; see [`IndexerBuilder::start`].
    pub async fn start(mut self) -> Result<RunningIndexer, StartError> {
        let opened = self.open().await?;
        let config = &self.config;
        let kafka_err = |source| StartError::Kafka {
            brokers: config.input.kafka_brokers.clone(),
            source,
        };
        if config.input.create_topics {
            let mut topics: Vec<&str> = vec![
                &config.trace_logs_topic,
                &config.service_logs_topic,
                &config.heartbeat_logs_topic,
            ];
            if self.dead_letters.is_none() {
                topics.push(&config.dead_letters_topic);
            }
            topics.dedup();
            dlog_core::kafka::ensure_topics(&config.input.topic_settings(None), &topics).await?;
        }
        let source =
            KafkaSource::new(&config.input.settings(config.input_topics())).map_err(kafka_err)?;
        self.with_source(source).launch(opened).await
    }
}

impl<S: Source + ReportsLag + 'static> IndexerBuilder<S> {
    /// Starts the stage: opens the store (installing Elasticsearch templates) unless one was
    /// given, serves the admin endpoints, runs retention and the batch loop.
    pub async fn start(mut self) -> Result<RunningIndexer, StartError> {
        let opened = self.open().await?;
        self.launch(opened).await
    }

    /// Sets up the dead letters, the admin listener and retention, and spawns the batch loop.
    async fn launch(self, opened: Opened) -> Result<RunningIndexer, StartError> {
        let Opened { policy, store } = opened;
        let config = self.config;
        let dead_letters = match self.dead_letters {
            Some(dead_letters) => dead_letters,
            None => Arc::new(DeadLetters::new(
                &config.input.kafka_brokers,
                &config.input.consumer,
                &config.dead_letters_topic,
                "dlog-indexer",
            )?),
        };
        let metrics = Arc::new(Metrics::new());
        let shutdown = self.shutdown;
        let (admin_addr, admin) = admin::serve(
            config.admin,
            Arc::clone(&metrics),
            &config.admin_security(),
            shutdown.clone(),
        )
        .await
        .map_err(|e| match e {
            dlog_core::admin::AdminError::Bind { addr, source } => {
                StartError::Admin { addr, source }
            }
            dlog_core::admin::AdminError::Setting { key, reason } => {
                StartError::Config(ConfigError::invalid(key, reason))
            }
        })?;
        tracing::info!(%admin_addr, backend = store.backend(), brokers = %config.input.kafka_brokers,
            group = %config.input.group_id, "indexing stage started");
        tracing::info!(max_age = ?policy.max_age, max_bytes = ?policy.max_bytes,
            interval = ?config.retention.interval(), "retention");
        let retention = tokio::spawn(retention::run_retention(
            Arc::clone(&store),
            self.retained,
            policy,
            config.retention.interval(),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
        let pipeline = run_pipeline(
            self.source,
            Arc::clone(&store),
            dead_letters,
            PipelineOptions::from_config(&config),
            Arc::clone(&metrics),
            shutdown.clone(),
        );
        Ok(RunningIndexer {
            admin_addr,
            metrics,
            store,
            pipeline: StageTask::spawn(shutdown, pipeline),
            admin,
            retention,
        })
    }
}

/// Runs the stage until `shutdown` is cancelled (SIGTERM, Ctrl-C), then stops gracefully.
pub async fn run(config: IndexerConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let mut running = Indexer::builder(config)
        .with_shutdown(&shutdown)
        .start()
        .await?;
    tokio::select! {
        _ = shutdown.cancelled() => tracing::info!("shutting down"),
        stopped = running.stopped() => stopped?,
    }
    Ok(running.shutdown().await?)
}

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The stage did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The stage stopped with an error.
    #[error(transparent)]
    Stage(#[from] StageError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_must_have_the_right_length_and_not_be_zero() {
        assert!(is_hex_id("0af7651916cd43dd8448eb211c80319c", 32));
        assert!(!is_hex_id("00000000000000000000000000000000", 32));
        assert!(!is_hex_id("", 16));
        assert!(!is_hex_id("zz", 2));
    }
}
