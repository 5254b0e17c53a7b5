//! Kafka plumbing shared by the stages: the consumer [`KafkaSource`], the [`DeadLetters`]
//! producer and topic creation.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::names;
use crate::source::{Mark, RawRecord, Source, SourceError};

/// How a stage reaches Kafka and which group it consumes in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Bootstrap brokers, `HOST:PORT[,HOST:PORT..]`.
    pub brokers: String,
    /// Consumer group id.
    pub group_id: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Group session timeout in ms. A join takes about half of it on some brokers.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u32,
    /// Extra librdkafka properties, passed through as they are.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

fn default_session_timeout_ms() -> u32 {
    6000
}

impl ConsumerSettings {
    /// Settings with defaults for everything but brokers, group and topics.
    pub fn new(
        brokers: impl Into<String>,
        group_id: impl Into<String>,
        topics: Vec<String>,
    ) -> Self {
        ConsumerSettings {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topics,
            session_timeout_ms: default_session_timeout_ms(),
            extra: BTreeMap::new(),
        }
    }
}

/// The Kafka [`Source`]: a consumer-group member that never auto-commits. Offsets move only
/// through [`Source::ack`].
pub struct KafkaSource {
    // Shared so that the synchronous commit can run on a blocking thread.
    consumer: std::sync::Arc<StreamConsumer>,
    /// Records librdkafka had already fetched when the input was paused, taken from its
    /// queue then (see [`Source::pause`]) and handed out first.
    drained: std::collections::VecDeque<RawRecord>,
}

/// Most records [`Source::pause`] takes from librdkafka's queue at once (librdkafka's own
/// prefetch bound, `queued.min.messages`, defaults to 100,000).
const MAX_DRAINED_AT_PAUSE: usize = 100_000;

impl KafkaSource {
    /// Joins the group and subscribes to the topics.
    pub fn new(settings: &ConsumerSettings) -> Result<Self, SourceError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                settings.session_timeout_ms.to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (settings.session_timeout_ms / 3).max(100).to_string(),
            );
        for (k, v) in &settings.extra {
            config.set(k, v);
        }
        let consumer: StreamConsumer = config.create().map_err(kafka_err)?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(kafka_err)?;
        Ok(KafkaSource {
            consumer: std::sync::Arc::new(consumer),
            drained: std::collections::VecDeque::new(),
        })
    }

    /// The underlying consumer, for lag metrics.
    pub fn consumer(&self) -> &StreamConsumer {
        &self.consumer
    }

    /// The underlying consumer, shared, for readers that run on other threads (lag metrics)
    /// so that they never hold up consumption.
    pub fn shared_consumer(&self) -> std::sync::Arc<StreamConsumer> {
        std::sync::Arc::clone(&self.consumer)
    }
}

fn kafka_err(e: rdkafka::error::KafkaError) -> SourceError {
    SourceError::Kafka(e.to_string())
}

/// Copies a consumed Kafka message into a [`RawRecord`].
pub fn raw_record<M: Message>(message: &M) -> RawRecord {
    let headers = message
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    RawRecord {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
        timestamp_ms: message.timestamp().to_millis(),
    }
}

impl Source for KafkaSource {
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> Result<Vec<RawRecord>, SourceError> {
        if !self.drained.is_empty() {
            // Taken from librdkafka's queue at a pause: they come before anything newer.
            let n = self.drained.len().min(max.max(1));
            return Ok(self.drained.drain(..n).collect());
        }
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + linger;
        while out.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => out.push(raw_record(&message)),
                Ok(Err(e)) => {
                    // Transient consumer errors (broker down, rebalance) are logged and
                    // retried by librdkafka; hand back what we have.
                    tracing::warn!(error = %e, "kafka consumer error");
                    if out.is_empty() {
                        tokio::time::sleep_until(deadline).await;
                    }
                    break;
                }
            }
            if !out.is_empty() && tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        Ok(out)
    }

    async fn ack(&mut self, marks: &[Mark]) -> Result<(), SourceError> {
        // Kafka commits the next offset to read, one past the mark.
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in marks {
            let entry = next
                .entry((m.topic.as_str(), m.partition))
                .or_insert(m.offset + 1);
            *entry = (*entry).max(m.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
                .map_err(kafka_err)?;
        }
        // A synchronous commit waits for the group coordinator (up to the request timeout when
        // it is down): run it off the async workers so the stage's other tasks keep going.
        let consumer = std::sync::Arc::clone(&self.consumer);
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
                .await
                .map_err(|source| SourceError::Task {
                    task: "offset commit",
                    source,
                })?;
        match committed {
            Ok(()) => Ok(()),
            // Partitions were revoked mid-batch: the new owner replays them, which idempotent
            // writes absorb.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                RDKafkaErrorCode::RebalanceInProgress,
            ))
            | Err(rdkafka::error::KafkaError::ConsumerCommit(
                RDKafkaErrorCode::IllegalGeneration,
            )) => {
                tracing::warn!("offset commit lost to a rebalance; records will be replayed");
                Ok(())
            }
            Err(e) => Err(kafka_err(e)),
        }
    }

    /// Takes what librdkafka already fetched out of its queue first (handed out next), so
    /// that the position it fetches from on resume (one past the last record handed out) is
    /// the end of a fetched record batch rather than a point inside one. Pausing drops the
    /// fetched records it holds, and a broker may answer a fetch from inside a record batch
    /// with the batch after it: tansu 0.6 does, which skipped the rest of the batch.
    fn pause(&mut self) -> Result<(), SourceError> {
        use futures::FutureExt;
        while self.drained.len() < MAX_DRAINED_AT_PAUSE {
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => self.drained.push_back(raw_record(&message)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                None => break,
            }
        }
        let assignment = self.consumer.assignment().map_err(kafka_err)?;
        self.consumer.pause(&assignment).map_err(kafka_err)
    }

    fn resume(&mut self) -> Result<(), SourceError> {
        let assignment = self.consumer.assignment().map_err(kafka_err)?;
        self.consumer.resume(&assignment).map_err(kafka_err)
    }

    /// librdkafka fetches nothing for a paused partition (what it had fetched before is
    /// handed out first, see [`Source::pause`]). Pausing covers the current assignment only:
    /// a partition assigned later needs [`Source::pause`] again.
    fn pause_holds_records(&self) -> bool {
        true
    }
}

/// Room above [`names::DEFAULT_MAX_MESSAGE_BYTES`] the dead-letter producer allows for the
/// key, headers (reason, coordinates, the source record's own) and Kafka's record framing.
/// The same headroom the collector bridge gives its own producer, so a record the bridge
/// could write can always be dead-lettered whole.
pub const DLQ_HEADROOM_BYTES: usize = 64 * 1024;
/// Longest dead-letter reason, in bytes; longer reasons are cut (at a character boundary)
/// and end in `...`.
pub const MAX_DLQ_REASON_BYTES: usize = 2000;
/// How much of the payload a dead letter keeps when the topic refused the whole record.
pub const DLQ_TRUNCATED_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most bytes of the source record's own headers copied into a truncated dead letter.
const DLQ_TRUNCATED_HEADER_BYTES: usize = 16 * 1024;

/// The producer settings every Kafka writer shares (the bridge's sink, the alerter's Kafka
/// output, the dead-letter writer), and the properties their delivery promise rests on.
///
/// [`ProducerConfig::client_config`] sets the writer's `tuning` first, then the user's
/// `properties` (which may override tuning), then the reserved properties last, so that no
/// entry can loosen them:
///
/// * `acks=all` and `enable.idempotence=true`: a record is acknowledged only once every
///   in-sync replica has it, and the producer's own retries never duplicate or reorder.
/// * `bootstrap.servers` from `brokers`, `message.timeout.ms` from `message_timeout`, and,
///   when set, `message.max.bytes` and `queue.buffering.max.kbytes`: each has a setting of
///   its own in the writer's configuration.
///
/// The aliases `request.required.acks` and `delivery.timeout.ms` are removed so they cannot
/// compete. [`ProducerConfig::check_properties`] refuses all of these in a user's table with
/// the setting to use instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// Bootstrap brokers, `HOST:PORT[,HOST:PORT..]`.
    pub brokers: String,
    /// How long librdkafka may try to deliver one record (`message.timeout.ms`).
    pub message_timeout: Duration,
    /// Largest produce request (`message.max.bytes`); `None` keeps librdkafka's default.
    pub message_max_bytes: Option<usize>,
    /// Bound of the producer's queue in KiB (`queue.buffering.max.kbytes`); `None` keeps
    /// librdkafka's default.
    pub queue_max_kbytes: Option<usize>,
    /// The writer's own tuning (`linger.ms`, `client.id`, ...), which `properties` may
    /// override.
    pub tuning: BTreeMap<String, String>,
    /// The user's librdkafka properties, passed through (checked with
    /// [`ProducerConfig::check_properties`]).
    pub properties: BTreeMap<String, String>,
}

/// Where a writer's own settings replace the reserved producer properties, named as its
/// configuration file spells them, for the reasons [`ProducerConfig::check_properties`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedBy<'a> {
    /// The key of the user's property table (`kafka`, `outputs.kafka.producer`).
    pub table: &'a str,
    /// The setting of the brokers (`kafka_brokers`, `outputs.kafka.brokers`).
    pub brokers: &'a str,
    /// The setting of the delivery deadline (`produce_timeout_ms`, `outputs.kafka.timeout_ms`).
    pub timeout: &'a str,
    /// The setting that bounds the record size, when the writer has one.
    pub message_max_bytes: Option<&'a str>,
    /// The setting that bounds the producer's queue, when the writer has one.
    pub queue: Option<&'a str>,
}

const ACKS_REASON: &str =
    "a record counts as written only once every in-sync replica has it, so the producer always runs with acks=all";
const IDEMPOTENCE_REASON: &str =
    "the producer is always idempotent, so that its own retries never duplicate or reorder records";

impl ProducerConfig {
    /// A producer for `brokers` whose records may take `message_timeout` to be acknowledged,
    /// with no tuning, bounds or user properties.
    pub fn new(brokers: impl Into<String>, message_timeout: Duration) -> ProducerConfig {
        ProducerConfig {
            brokers: brokers.into(),
            message_timeout,
            message_max_bytes: None,
            queue_max_kbytes: None,
            tuning: BTreeMap::new(),
            properties: BTreeMap::new(),
        }
    }

    /// The librdkafka configuration: tuning, then the user's properties, then the reserved
    /// properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        for (key, value) in self.tuning.iter().chain(&self.properties) {
            client.set(key, value);
        }
        client
            .set("bootstrap.servers", &self.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().max(1).to_string(),
            );
        if let Some(bytes) = self.message_max_bytes {
            client.set("message.max.bytes", bytes.to_string());
        }
        if let Some(kbytes) = self.queue_max_kbytes {
            client.set("queue.buffering.max.kbytes", kbytes.to_string());
        }
        // Aliases of the keys above would otherwise compete with them.
        client.remove("request.required.acks");
        client.remove("delivery.timeout.ms");
        client
    }

    /// Checks a user's property table: no reserved property (the error names the setting to
    /// use instead, or why it is fixed) and no empty value. Keys in errors are spelt
    /// `<table>.<property>`.
    pub fn check_properties(
        properties: &BTreeMap<String, String>,
        by: &ReservedBy<'_>,
    ) -> Result<(), crate::config::ConfigError> {
        for (key, value) in properties {
            if let Some(why) = Self::reserved(key, by) {
                return Err(crate::config::ConfigError::invalid(
                    format!("{}.{key}", by.table),
                    format!("cannot be set: {why}"),
                ));
            }
            if value.is_empty() {
                return Err(crate::config::ConfigError::invalid(
                    format!("{}.{key}", by.table),
                    "has an empty value",
                ));
            }
        }
        Ok(())
    }

    /// Why `key` may not be set by a user of `by`, if it is reserved.
    fn reserved(key: &str, by: &ReservedBy<'_>) -> Option<String> {
        let instead = |setting: &str| format!("set `{setting}` instead");
        match key {
            "acks" | "request.required.acks" => Some(ACKS_REASON.to_string()),
            "enable.idempotence" => Some(IDEMPOTENCE_REASON.to_string()),
            "bootstrap.servers" => Some(instead(by.brokers)),
            "message.timeout.ms" | "delivery.timeout.ms" => Some(format!(
                "{}: records must not outlive the deadline of their delivery",
                instead(by.timeout)
            )),
            "message.max.bytes" => by.message_max_bytes.map(|setting| {
                format!(
                    "{}: the producer's limit is derived from it",
                    instead(setting)
                )
            }),
            "queue.buffering.max.kbytes" => by.queue.map(|setting| {
                format!(
                    "{}: it bounds the producer's queue with the writer's memory",
                    instead(setting)
                )
            }),
            _ => None,
        }
    }
}

/// How long the dead-letter producer may try to deliver one dead letter.
const DLQ_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Producer for the `dead_letters` topic.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    stage: String,
}

impl DeadLetters {
    /// An idempotent, acks=all producer for `topic`, naming `stage` in every dead letter,
    /// with the stage's librdkafka `properties` (security and the like; the delivery
    /// properties [`ProducerConfig`] reserves are still set by it).
    ///
    /// Its `message.max.bytes` is [`names::DEFAULT_MAX_MESSAGE_BYTES`] plus
    /// [`DLQ_HEADROOM_BYTES`], so a record of the bridge's largest size still fits with the
    /// dead-letter headers.
    pub fn new(
        brokers: &str,
        properties: &BTreeMap<String, String>,
        topic: &str,
        stage: &str,
    ) -> Result<Self, DeadLetterError> {
        let mut config = ProducerConfig::new(brokers, DLQ_MESSAGE_TIMEOUT);
        config.properties = properties.clone();
        config.message_max_bytes = Some(names::DEFAULT_MAX_MESSAGE_BYTES + DLQ_HEADROOM_BYTES);
        let producer: FutureProducer =
            config
                .client_config()
                .create()
                .map_err(|source| DeadLetterError::Producer {
                    brokers: brokers.to_string(),
                    source,
                })?;
        Ok(DeadLetters {
            producer,
            topic: topic.to_string(),
            stage: stage.to_string(),
        })
    }

    /// Writes `record` to the dead-letter topic with its reason (cut to
    /// [`MAX_DLQ_REASON_BYTES`]) and source coordinates, and waits for the broker's
    /// acknowledgement.
    ///
    /// When the record is refused for good (too large for the producer or the topic, not
    /// authorised, invalid), it is sent once more with the payload cut to
    /// [`DLQ_TRUNCATED_PAYLOAD_BYTES`] and a [`names::DLQ_TRUNCATED_HEADER`] holding the
    /// original length, so the reason and coordinates still land. An error from that second
    /// attempt, or any transient error, is returned for the caller to retry.
    pub async fn send(&self, record: &RawRecord, reason: &str) -> Result<(), DeadLetterError> {
        let reason = cap_reason(reason);
        match self.produce(record, &reason, None).await {
            Ok(()) => Ok(()),
            Err(e) if is_permanent_produce_error(&e) => {
                tracing::warn!(error = %e, topic = %record.topic, partition = record.partition,
                    offset = record.offset, bytes = record.payload.len(),
                    "the dead-letter topic refused the record; sending it truncated");
                self.produce(record, &reason, Some(DLQ_TRUNCATED_PAYLOAD_BYTES))
                    .await
                    .map_err(|truncated| DeadLetterError::Refused {
                        topic: self.topic.clone(),
                        whole: Box::new(e),
                        truncated: Box::new(truncated),
                    })
            }
            Err(source) => Err(DeadLetterError::Send {
                topic: self.topic.clone(),
                source,
            }),
        }
    }

    async fn produce(
        &self,
        record: &RawRecord,
        reason: &str,
        truncate_to: Option<usize>,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let original_len = record.payload.len().to_string();
        let mut payload: &[u8] = &record.payload;
        let mut headers = OwnedHeaders::new();
        let mut copied = 0usize;
        for (k, v) in &record.headers {
            if truncate_to.is_some() {
                // The record's own headers may be what made it too large.
                copied += k.len() + v.len();
                if copied > DLQ_TRUNCATED_HEADER_BYTES {
                    break;
                }
            }
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        for (k, v) in [
            (names::DLQ_REASON_HEADER, reason),
            (names::DLQ_TOPIC_HEADER, record.topic.as_str()),
            (names::DLQ_PARTITION_HEADER, partition.as_str()),
            (names::DLQ_OFFSET_HEADER, offset.as_str()),
            (names::DLQ_STAGE_HEADER, self.stage.as_str()),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        if let Some(limit) = truncate_to {
            payload = &payload[..payload.len().min(limit)];
            headers = headers.insert(Header {
                key: names::DLQ_TRUNCATED_HEADER,
                value: Some(original_len.as_bytes()),
            });
        }
        let mut future_record = FutureRecord::to(&self.topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = &record.key {
            if truncate_to.is_none() || key.len() <= DLQ_TRUNCATED_HEADER_BYTES {
                future_record = future_record.key(key);
            }
        }
        self.producer
            .send(future_record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// `reason` cut to [`MAX_DLQ_REASON_BYTES`] at a character boundary, ending in `...` when cut.
fn cap_reason(reason: &str) -> std::borrow::Cow<'_, str> {
    if reason.len() <= MAX_DLQ_REASON_BYTES {
        return std::borrow::Cow::Borrowed(reason);
    }
    let keep = MAX_DLQ_REASON_BYTES - 3;
    let cut = (0..=keep)
        .rev()
        .find(|c| reason.is_char_boundary(*c))
        .unwrap_or(0);
    std::borrow::Cow::Owned(format!("{}...", &reason[..cut]))
}

/// Errors that sending the same record again will not fix.
fn is_permanent_produce_error(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

/// How dlog creates the topics it needs: the admin client's connection (brokers and the
/// stage's librdkafka properties, so that `security.protocol`, `sasl.*` and `ssl.*` reach it
/// as they reach the stage's other clients) and the shape of each new topic.
#[derive(Debug, Clone, Copy)]
pub struct TopicSettings<'a> {
    /// Bootstrap brokers, `HOST:PORT[,HOST:PORT..]`.
    pub brokers: &'a str,
    /// The stage's librdkafka properties (security and the like).
    pub properties: &'a BTreeMap<String, String>,
    /// Partitions of each new topic.
    pub partitions: i32,
    /// Replication factor of each new topic: 1 suits a single broker, production clusters
    /// should use 3.
    pub replication: i32,
}

impl TopicSettings<'_> {
    /// The admin client's librdkafka configuration.
    pub fn admin_config(&self) -> ClientConfig {
        client_config(self.brokers, self.properties)
    }

    /// The CreateTopics request's topics.
    pub fn new_topics<'t>(&self, topics: &[&'t str]) -> Vec<NewTopic<'t>> {
        topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
            })
            .collect()
    }
}

/// A librdkafka configuration for `brokers` carrying `properties` (a stage's pass-through
/// table: security and the like). `bootstrap.servers` is set last, so the table cannot
/// change it.
pub fn client_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in properties {
        client.set(key, value);
    }
    client.set("bootstrap.servers", brokers);
    client
}

/// Creates the topics that do not exist yet, as `settings` describe them. Existing topics
/// are left as they are.
pub async fn ensure_topics(
    settings: &TopicSettings<'_>,
    topics: &[&str],
) -> Result<(), TopicError> {
    let brokers = settings.brokers;
    let admin_error = |source, last_error: Option<String>| TopicError::Admin {
        brokers: brokers.to_string(),
        source,
        last_error: LastError(last_error.map(String::into_boxed_str)),
    };
    let config = settings.admin_config();
    let probe_config = config.clone();
    // The check stops when this call is dropped (a start abandoned).
    let cancel = CancelOnDrop::default();
    let cancelled = std::sync::Arc::clone(&cancel.0);
    tokio::task::spawn_blocking(move || check_brokers(&probe_config, &cancelled))
        .await
        .unwrap_or_else(|e| Err((rdkafka::error::KafkaError::Canceled, Some(e.to_string()))))
        .map_err(|(e, last)| admin_error(e, last))?;
    drop(cancel);
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| admin_error(e, None))?;
    let new_topics = settings.new_topics(topics);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| admin_error(e, None))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(TopicError::Create {
                    topic,
                    brokers: brokers.to_string(),
                    code,
                })
            }
        }
    }
    Ok(())
}

/// How long [`check_brokers`] tries before it gives up on brokers that do not answer.
const BROKER_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one metadata request of [`check_brokers`] may take (every topic's metadata: a
/// large cluster's answer takes a while).
const BROKER_CHECK_REQUEST: Duration = Duration::from_secs(5);

/// Sets its flag when dropped.
#[derive(Default)]
struct CancelOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Connects to the brokers as every client of the stage will (TLS, SASL) and reads their
/// metadata. A refused SASL authentication ends the check at once and a failed TLS handshake
/// at its timeout, with librdkafka's reason: librdkafka retries both, and an admin request
/// would only time out, a minute later, saying nothing of why. Blocking.
fn check_brokers(
    config: &ClientConfig,
    cancelled: &std::sync::atomic::AtomicBool,
) -> Result<(), (rdkafka::error::KafkaError, Option<String>)> {
    use rdkafka::producer::{BaseProducer, Producer as _};
    let probe: BaseProducer<ProbeContext> = config
        .create_with_context(ProbeContext::default())
        .map_err(|e| (e, None))?;
    let deadline = std::time::Instant::now() + BROKER_CHECK_TIMEOUT;
    loop {
        let wait = deadline
            .saturating_duration_since(std::time::Instant::now())
            .min(BROKER_CHECK_REQUEST)
            .max(Duration::from_millis(100));
        let result = probe.client().fetch_metadata(None, wait);
        // Serves the log and error events, where connection failures are reported.
        probe.poll(Duration::from_millis(50));
        let context = probe.context();
        match result {
            Ok(_) => return Ok(()),
            Err(_) if context.refused() => {
                return Err((
                    rdkafka::error::KafkaError::Global(RDKafkaErrorCode::Authentication),
                    context.last_error(),
                ))
            }
            Err(e)
                if std::time::Instant::now() >= deadline
                    || cancelled.load(std::sync::atomic::Ordering::SeqCst) =>
            {
                return Err((e, context.last_error()))
            }
            Err(_) => {}
        }
    }
}

/// The context of [`check_brokers`]'s client: librdkafka's log lines and errors are logged as
/// by default, and the last failure kept.
#[derive(Default)]
struct ProbeContext {
    last_error: std::sync::Mutex<Option<String>>,
    /// Why the brokers refused the client's authentication, when they did (kept over the
    /// errors that follow, such as "all brokers are down").
    refusal: std::sync::Mutex<Option<String>>,
    refused: std::sync::atomic::AtomicBool,
}

impl ProbeContext {
    fn last_error(&self) -> Option<String> {
        let refusal = self
            .refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        refusal.or_else(|| {
            self.last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    fn refused(&self) -> bool {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn keep(&self, reason: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
    }
}

impl rdkafka::ClientContext for ProbeContext {
    // librdkafka reports a broker connection's failure (`FAIL`: a refused SASL
    // authentication, a failed TLS handshake) as a log line.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        DefaultClientContext.log(level, fac, log_message);
        use rdkafka::config::RDKafkaLogLevel as L;
        let error = matches!(level, L::Emerg | L::Alert | L::Critical | L::Error);
        if error || (matches!(level, L::Warning) && fac == "FAIL") {
            self.keep(log_message);
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // librdkafka turns a broker's refusal and a failed SCRAM proof into this code; a
        // connection lost during the exchange is reported otherwise, and retried.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
            self.refused
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        DefaultClientContext.error(error, reason);
        self.keep(reason);
    }
}

impl rdkafka::producer::ProducerContext for ProbeContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// The last error the brokers gave a client, if any, for an error message.
#[derive(Debug)]
pub struct LastError(pub Option<Box<str>>);

impl std::fmt::Display for LastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(reason) => write!(f, " (last error from the brokers: {reason})"),
            None => Ok(()),
        }
    }
}

/// Topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The admin client could not be made or the brokers did not answer.
    #[error("cannot create topics on brokers {brokers}: {source}{last_error}")]
    Admin {
        /// The brokers.
        brokers: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
        /// What librdkafka last reported about the brokers (why they did not answer).
        last_error: LastError,
    },
    /// The brokers refused to create a topic.
    #[error("cannot create topic `{topic}` on brokers {brokers}: {code}")]
    Create {
        /// The topic.
        topic: String,
        /// The brokers.
        brokers: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
}

/// A dead letter could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The dead-letter producer could not be made (an invalid property).
    #[error("cannot create the dead-letter producer for brokers {brokers}: {source}")]
    Producer {
        /// The brokers.
        brokers: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// The dead-letter topic did not take the record (unreachable, timed out): worth
    /// retrying.
    #[error("cannot write a dead letter to topic `{topic}`: {source}")]
    Send {
        /// The dead-letter topic.
        topic: String,
        /// The producer's error.
        source: rdkafka::error::KafkaError,
    },
    /// The dead-letter topic refused the record whole, and again with its payload truncated.
    #[error(
        "dead letter refused by topic `{topic}` ({whole}), and again when truncated: {truncated}"
    )]
    Refused {
        /// The dead-letter topic.
        topic: String,
        /// Why the whole record was refused.
        whole: Box<rdkafka::error::KafkaError>,
        /// Why the truncated record was refused.
        truncated: Box<rdkafka::error::KafkaError>,
    },
    /// A dead letter could not be serialized.
    #[error("cannot encode a dead letter: {0}")]
    Encode(#[source] serde_json::Error),
    /// The task writing dead letters panicked or was cancelled.
    #[error("the dead-letter writer task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A dead-letter file could not be written (the all-in-one mode).
    #[error("cannot write dead letter file {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const BY: ReservedBy<'static> = ReservedBy {
        table: "outputs.kafka.producer",
        brokers: "outputs.kafka.brokers",
        timeout: "outputs.kafka.timeout_ms",
        message_max_bytes: None,
        queue: None,
    };

    #[test]
    fn user_properties_override_tuning_but_never_what_delivery_rests_on() {
        let mut producer = ProducerConfig::new("k:9092", Duration::from_secs(7));
        producer.message_max_bytes = Some(2_000_000);
        producer.tuning.insert("linger.ms".into(), "5".into());
        for (key, value) in [
            ("linger.ms", "20"),
            ("compression.type", "lz4"),
            ("acks", "1"),
            ("request.required.acks", "0"),
            ("enable.idempotence", "false"),
            ("message.timeout.ms", "600000"),
            ("delivery.timeout.ms", "600000"),
            ("message.max.bytes", "10"),
            ("bootstrap.servers", "elsewhere:9092"),
        ] {
            producer.properties.insert(key.into(), value.into());
        }
        let client = producer.client_config();
        for (key, expected) in [
            ("linger.ms", Some("20")),
            ("compression.type", Some("lz4")),
            ("acks", Some("all")),
            ("request.required.acks", None),
            ("enable.idempotence", Some("true")),
            ("message.timeout.ms", Some("7000")),
            ("delivery.timeout.ms", None),
            ("message.max.bytes", Some("2000000")),
            ("bootstrap.servers", Some("k:9092")),
            // Unset bounds keep librdkafka's defaults.
            ("queue.buffering.max.kbytes", None),
        ] {
            assert_eq!(client.get(key), expected, "{key}");
        }
    }

    #[test]
    fn reserved_properties_are_refused_naming_the_setting_to_use() {
        let check = |key: &str, value: &str| {
            ProducerConfig::check_properties(&BTreeMap::from([(key.into(), value.into())]), &BY)
                .map_err(|e| e.to_string())
        };
        let err = check("bootstrap.servers", "x:1").unwrap_err();
        assert!(
            err.contains("`outputs.kafka.producer.bootstrap.servers`")
                && err.contains("`outputs.kafka.brokers`"),
            "{err}"
        );
        let err = check("delivery.timeout.ms", "1").unwrap_err();
        assert!(err.contains("`outputs.kafka.timeout_ms`"), "{err}");
        for key in ["acks", "request.required.acks", "enable.idempotence"] {
            let err = check(key, "1").unwrap_err();
            assert!(
                err.contains(&format!("`outputs.kafka.producer.{key}`")),
                "{err}"
            );
        }
        assert!(check("compression.type", "")
            .unwrap_err()
            .contains("empty value"));
        // A writer without a setting of its own for a bound leaves the property to the user.
        check("queue.buffering.max.kbytes", "1024").unwrap();
        check("message.max.bytes", "2000000").unwrap();
        check("compression.type", "zstd").unwrap();
    }

    #[test]
    fn created_topics_carry_the_settings_and_the_admin_client_the_properties() {
        let properties = BTreeMap::from([
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ("bootstrap.servers".to_string(), "elsewhere:1".to_string()),
        ]);
        let settings = TopicSettings {
            brokers: "k:9092",
            properties: &properties,
            partitions: 6,
            replication: 3,
        };
        let topics = settings.new_topics(&["trace_logs", "alerter_lease"]);
        assert_eq!(topics.len(), 2);
        for (topic, name) in topics.iter().zip(["trace_logs", "alerter_lease"]) {
            assert_eq!(topic.name, name);
            assert_eq!(topic.num_partitions, 6);
            assert!(
                matches!(topic.replication, TopicReplication::Fixed(3)),
                "{:?}",
                topic.replication
            );
        }
        let admin = settings.admin_config();
        assert_eq!(admin.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(admin.get("bootstrap.servers"), Some("k:9092"));
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        assert_eq!(cap_reason("short"), "short");
        let long = "é".repeat(MAX_DLQ_REASON_BYTES);
        let capped = cap_reason(&long);
        assert!(capped.len() <= MAX_DLQ_REASON_BYTES, "{}", capped.len());
        assert!(capped.ends_with("..."));
        assert!(capped.len() > MAX_DLQ_REASON_BYTES - 8);
    }

    #[test]
    fn size_and_authorisation_errors_are_permanent() {
        use rdkafka::error::KafkaError;
        assert!(is_permanent_produce_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(is_permanent_produce_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(!is_permanent_produce_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
    }
}
