//! The production sink: an idempotent, acks=all rdkafka `FutureProducer`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlog_core::kafka::{ProducerConfig, ReservedBy};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use super::{OutRecord, Sink, SinkError};
use crate::config::{Config, ConfigError};

/// Routes librdkafka's own log lines and errors into `tracing`, under the target
/// `collector_bridge::kafka`, so they obey the same filter as the rest of the bridge.
#[derive(Clone, Copy, Default)]
pub struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "collector_bridge::kafka", facility = fac, "{log_message}")
            }
            // librdkafka logs every failed broker connection at LOG_ERR; the requests that
            // fail because of it are answered UNAVAILABLE and counted, so a warning suffices.
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "collector_bridge::kafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "collector_bridge::kafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "collector_bridge::kafka", facility = fac, "{log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Transport errors arrive here and as a log line; only report what the log line
        // does not say.
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!(target: "collector_bridge::kafka", %error, "{reason}")
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                tracing::warn!(target: "collector_bridge::kafka", %error, "{reason}")
            }
            _ => tracing::debug!(target: "collector_bridge::kafka", %error, "{reason}"),
        }
    }
}

/// What the Kafka sink needs of the bridge's settings: the keys `kafka_brokers`,
/// `produce_timeout_ms`, `max_message_bytes`, `max_in_flight_bytes` and `linger_ms`, and the
/// `[kafka]` table of librdkafka properties ([`Config::kafka_sink`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers (`kafka_brokers`).
    pub brokers: String,
    /// How long a record may wait for its acknowledgement (`produce_timeout_ms`).
    pub produce_timeout: Duration,
    /// Largest record, value, key and headers (`max_message_bytes`).
    pub max_message_bytes: usize,
    /// What requests in progress may hold in all (`max_in_flight_bytes`), which also bounds
    /// the producer's queue.
    pub max_in_flight_bytes: usize,
    /// librdkafka `linger.ms` (`linger_ms`).
    pub linger_ms: u64,
    /// Extra librdkafka properties (`[kafka]`).
    pub properties: BTreeMap<String, String>,
}

/// How the bridge's settings replace the producer properties it reserves.
pub(crate) const RESERVED_BY: ReservedBy<'static> = ReservedBy {
    table: "kafka",
    brokers: "kafka_brokers",
    timeout: "produce_timeout_ms",
    message_max_bytes: Some("max_message_bytes"),
    queue: Some("max_in_flight_bytes"),
};

impl Config {
    /// The settings of the Kafka sink.
    pub fn kafka_sink(&self) -> KafkaSinkConfig {
        KafkaSinkConfig {
            brokers: self.kafka_brokers.clone(),
            produce_timeout: self.produce_timeout(),
            max_message_bytes: self.max_message_bytes,
            max_in_flight_bytes: self.max_in_flight_bytes,
            linger_ms: self.linger_ms,
            properties: self.kafka.clone(),
        }
    }
}

impl KafkaSinkConfig {
    /// Refuses `[kafka]` entries that would change what the bridge's guarantees rest on, and
    /// empty values, naming the key (`kafka.acks`) and the setting to use instead.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ProducerConfig::check_properties(&self.properties, &RESERVED_BY)
    }

    /// The producer the bridge runs with ([`ProducerConfig`] sets what delivery rests on).
    ///
    /// Tuning the bridge derives (`linger.ms`, `batch.size`, `topic.metadata.propagation.max.ms`,
    /// ...) comes first and `[kafka]` may override it. Then, beyond acks=all and idempotence:
    ///
    /// * `message.timeout.ms = produce_timeout_ms`: librdkafka gives up on a record about when
    ///   the request that carried it is answered UNAVAILABLE, so records of failed requests do
    ///   not pile up in the queue while senders retry them.
    /// * `message.max.bytes` leaves room for Kafka's record framing above `max_message_bytes`.
    /// * `queue.buffering.max.kbytes` bounds the producer's copy of in-flight records to about
    ///   `max_in_flight_bytes`, instead of librdkafka's default of 1 GiB.
    /// * `topic.metadata.propagation.max.ms` (half the produce timeout, at most librdkafka's
    ///   default of 30 s): a record for a topic that does not exist fails with "unknown topic",
    ///   which the bridge reports naming the topic, instead of timing out without a reason.
    pub fn producer(&self) -> ProducerConfig {
        let message_max_bytes = self.max_message_bytes.saturating_add(64 * 1024);
        let queue_kbytes = (self.max_in_flight_bytes / 1024).max(1024) + message_max_bytes / 1024;
        let propagation_ms = (self.produce_timeout.as_millis() / 2).clamp(1, 30_000);
        let mut producer = ProducerConfig::new(self.brokers.clone(), self.produce_timeout);
        producer.message_max_bytes = Some(message_max_bytes);
        producer.queue_max_kbytes = Some(queue_kbytes);
        producer.properties = self.properties.clone();
        producer.tuning = BTreeMap::from([
            ("linger.ms".to_string(), self.linger_ms.to_string()),
            (
                "batch.size".to_string(),
                message_max_bytes.min(1_000_000).to_string(),
            ),
            (
                "queue.buffering.max.messages".to_string(),
                "1000000".to_string(),
            ),
            (
                "topic.metadata.propagation.max.ms".to_string(),
                propagation_ms.to_string(),
            ),
            ("client.id".to_string(), "dlog-collector-bridge".to_string()),
        ]);
        producer
    }
}

/// The librdkafka producer properties the bridge runs with (see
/// [`KafkaSinkConfig::producer`]).
pub fn producer_config(config: &Config) -> ClientConfig {
    config.kafka_sink().producer().client_config()
}

/// Writes records to Kafka and resolves once the broker acknowledged all of them.
///
/// An idempotent producer can hit a fatal error (for example `ProducerFenced` when the broker
/// refuses the epoch bump that follows records timing out in flight), after which librdkafka
/// refuses every record for good. The sink then replaces the producer with a fresh one, so a
/// broker outage costs the requests during the outage and not the bridge's life.
#[derive(Clone)]
pub struct KafkaSink {
    client: ClientConfig,
    producer: Arc<Mutex<Arc<FutureProducer<TracingContext>>>>,
}

impl KafkaSink {
    /// A sink with the bridge's producer settings (see [`KafkaSinkConfig::producer`]). It
    /// does not connect yet: an unreachable broker shows up as `UNAVAILABLE` answers, not as
    /// a start failure.
    ///
    /// `[kafka]` is checked as [`Config::validate`] does, so a sink built without going
    /// through [`crate::start`] cannot loosen `acks` or idempotence either.
    pub fn new(config: &KafkaSinkConfig) -> Result<KafkaSink, SinkError> {
        config
            .validate()
            .map_err(|e| SinkError::Rejected(e.to_string()))?;
        KafkaSink::from_client_config(&config.producer().client_config())
    }

    /// A sink over a producer built from `client` as it is (benchmarks, special setups).
    pub fn from_client_config(client: &ClientConfig) -> Result<KafkaSink, SinkError> {
        let producer = create(client)?;
        Ok(KafkaSink {
            client: client.clone(),
            producer: Arc::new(Mutex::new(Arc::new(producer))),
        })
    }

    /// The producer in use now.
    pub fn producer(&self) -> Arc<FutureProducer<TracingContext>> {
        match self.producer.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces `failed` with a fresh producer if it is stuck (a fatal error, or a producer
    /// id/epoch the broker no longer accepts) and nobody replaced it yet.
    fn replace_if_stuck(
        &self,
        failed: &Arc<FutureProducer<TracingContext>>,
        code: Option<RDKafkaErrorCode>,
    ) {
        let (code, reason) = match (failed.client().fatal_error(), code) {
            (Some(fatal), _) => fatal,
            (None, Some(code)) if producer_state_lost(code) => (
                code,
                "the broker no longer accepts this producer's id and epoch".to_string(),
            ),
            _ => return,
        };
        let mut current = match self.producer.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match create(&self.client) {
            Ok(fresh) => {
                tracing::warn!(%code, %reason, "Kafka producer is stuck; replaced it with a new producer");
                *current = Arc::new(fresh);
            }
            Err(e) => {
                tracing::error!(%code, %reason, error = %e, "Kafka producer is stuck and cannot be replaced")
            }
        }
    }
}

fn create(client: &ClientConfig) -> Result<FutureProducer<TracingContext>, SinkError> {
    client
        .create_with_context(TracingContext)
        .map_err(|e| SinkError::Rejected(format!("cannot create the Kafka producer: {e}")))
}

fn sink_error(topic: &str, error: KafkaError) -> SinkError {
    let text = format!("Kafka did not acknowledge a record for topic `{topic}`: {error}");
    let code = error.rdkafka_error_code();
    if let Some(remedy) = code.and_then(operator_remedy) {
        // Retrying cannot help until someone acts, but once they do it will: the sender
        // must keep the data (UNAVAILABLE), and the operator must be told what to do.
        tracing::error!(topic, %error, "Kafka refuses records for topic `{topic}`: {remedy}");
        return SinkError::Unavailable(format!("{text} ({remedy})"));
    }
    match code {
        Some(
            RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic,
        ) => SinkError::Rejected(text),
        _ => SinkError::Unavailable(text),
    }
}

/// What an operator must do about a Kafka error that refuses every record until they do, or
/// `None` when the error is not of that kind.
fn operator_remedy(code: RDKafkaErrorCode) -> Option<&'static str> {
    match code {
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => Some(
            "the topic does not exist: create it or set create_topics (--create-topics)",
        ),
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => Some(
            "the bridge's principal may not write to the topic: grant it WRITE (and IDEMPOTENT_WRITE on the cluster) or fix the credentials in the [kafka] settings",
        ),
        RDKafkaErrorCode::MessageSizeTooLarge => Some(
            "a record is larger than the topic accepts: raise the topic's max.message.bytes (or the broker's message.max.bytes) or lower max_message_bytes",
        ),
        _ => None,
    }
}

/// Errors after which an idempotent producer's id or epoch is no longer accepted, so every
/// later record would fail the same way until a new producer gets a new id.
fn producer_state_lost(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::InvalidProducerIdMapping
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::Fatal
    )
}

/// Kafka's framing around a lone record, on top of what `max_message_bytes` counts (value,
/// key and headers): the record batch header (61 bytes) and the record's own varints.
const RECORD_BATCH_OVERHEAD: usize = 128;

/// How long the start waits for the broker to describe the topics' configurations.
pub(crate) const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks at start that every topic accepts records of `max_message_bytes`, so that an
/// oversized limit fails the start with a reason instead of every large request failing.
///
/// Only a definite answer fails: a broker that is unreachable, slow, does not implement
/// DescribeConfigs, or does not report `max.message.bytes` (tansu answers with no entries)
/// is logged and skipped, as is a topic that does not exist yet (logged as an error with the
/// remedy; its records are answered UNAVAILABLE until it exists).
pub(crate) async fn check_topic_limits(
    config: &Config,
    within: Duration,
) -> Result<(), Vec<TopicTooSmall>> {
    let mut client = ClientConfig::new();
    // The user's table carries security settings the admin connection needs too.
    for (key, value) in &config.kafka {
        client.set(key, value);
    }
    client.set("bootstrap.servers", &config.kafka_brokers);
    let admin: AdminClient<TracingContext> = match client.create_with_context(TracingContext) {
        Ok(admin) => admin,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the topics' max.message.bytes: no admin client");
            return Ok(());
        }
    };
    let topics = config.topics();
    let mut unique: Vec<&str> = Vec::with_capacity(3);
    for topic in topics {
        if !unique.contains(&topic) {
            unique.push(topic);
        }
    }
    let specifiers: Vec<ResourceSpecifier<'_>> =
        unique.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let options = AdminOptions::new().request_timeout(Some(within));
    let results = match tokio::time::timeout(within, admin.describe_configs(&specifiers, &options))
        .await
    {
        Ok(Ok(results)) => results,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot check the topics' max.message.bytes; skipped");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(
                    "the broker did not describe the topics' configurations within {within:?}; max.message.bytes not checked"
                );
            return Ok(());
        }
    };
    let mut problems = Vec::new();
    for (topic, result) in unique.iter().zip(results) {
        match result {
            Ok(resource) => {
                let limit = resource
                    .get("max.message.bytes")
                    .and_then(|entry| entry.value.as_deref());
                if let Some(problem) = topic_limit_problem(topic, config.max_message_bytes, limit) {
                    problems.push(problem);
                }
            }
            Err(code) => match operator_remedy(code) {
                Some(remedy) if code != RDKafkaErrorCode::MessageSizeTooLarge => {
                    tracing::error!(topic, %code, "topic `{topic}` cannot be used: {remedy}")
                }
                _ => {
                    tracing::warn!(topic, %code, "cannot check max.message.bytes of topic `{topic}`; skipped")
                }
            },
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Why `topic`, whose `max.message.bytes` is `limit` as the broker reported it, cannot take
/// records of `max_message_bytes`; `None` when it can or the limit is unknown.
fn topic_limit_problem(
    topic: &str,
    max_message_bytes: usize,
    limit: Option<&str>,
) -> Option<TopicTooSmall> {
    let limit: usize = limit?.trim().parse().ok()?;
    let needed = max_message_bytes.saturating_add(RECORD_BATCH_OVERHEAD);
    (limit < needed).then(|| TopicTooSmall {
        topic: topic.to_string(),
        limit,
        max_message_bytes,
        needed,
        fits: limit.saturating_sub(RECORD_BATCH_OVERHEAD),
    })
}

/// A topic whose `max.message.bytes` is below what records of `max_message_bytes` need.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic `{topic}` accepts record batches of at most {limit} bytes (max.message.bytes), but max_message_bytes is {max_message_bytes}, which needs {needed} with Kafka's framing: lower max_message_bytes to {fits} or less, or raise the topic's max.message.bytes")]
pub struct TopicTooSmall {
    /// The topic.
    pub topic: String,
    /// Its `max.message.bytes`, as the broker reported it.
    pub limit: usize,
    /// The bridge's `max_message_bytes`.
    pub max_message_bytes: usize,
    /// What a record of `max_message_bytes` needs with Kafka's framing.
    pub needed: usize,
    /// The largest `max_message_bytes` the topic takes.
    pub fits: usize,
}

/// How long to wait before offering a record to a full producer queue again.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

impl Sink for KafkaSink {
    async fn publish(&self, batch: Vec<OutRecord>) -> Result<(), SinkError> {
        let producer = self.producer();
        publish_with(&producer, batch)
            .await
            .map_err(|(error, code)| {
                self.replace_if_stuck(&producer, code);
                error
            })
    }

    fn describe(&self) -> String {
        format!(
            "Kafka brokers {}",
            self.client.get("bootstrap.servers").unwrap_or("(unset)")
        )
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| SinkError::Unavailable(format!("producer flush task failed: {e}")))?
            .map_err(|e| {
                SinkError::Unavailable(format!(
                    "records still unacknowledged by Kafka after {timeout:?}: {e}"
                ))
            })
    }
}

async fn publish_with(
    producer: &FutureProducer<TracingContext>,
    batch: Vec<OutRecord>,
) -> Result<(), (SinkError, Option<RDKafkaErrorCode>)> {
    let fail = |topic: &str, error: KafkaError| {
        let code = error.rdkafka_error_code();
        (sink_error(topic, error), code)
    };
    let mut deliveries = Vec::with_capacity(batch.len());
    for record in &batch {
        let [(k1, v1), (k2, v2)] = record.headers();
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: k1,
                value: Some(v1),
            })
            .insert(Header {
                key: k2,
                value: Some(v2),
            });
        let mut future_record = FutureRecord::to(&record.topic)
            .key(record.key.as_bytes())
            .payload(record.value.as_slice())
            .headers(headers);
        loop {
            match producer.send_result(future_record) {
                Ok(delivery) => {
                    deliveries.push((delivery, record.topic.clone()));
                    break;
                }
                // The caller's deadline bounds this wait: it drops the future.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    future_record = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((error, _)) => return Err(fail(&record.topic, error)),
            }
        }
    }
    // librdkafka holds its own copy of every value now.
    drop(batch);
    for (delivery, topic) in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(fail(&topic, error)),
            Err(_) => {
                return Err((
                    SinkError::Unavailable(
                        "the Kafka producer was closed before it acknowledged".to_string(),
                    ),
                    None,
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_properties_override_tuning_but_delivery_guarantees_stay() {
        let mut config = Config::default();
        config.kafka.insert("linger.ms".into(), "20".into());
        // Entries that try to loosen what the guarantees rest on (refused by validation,
        // but producer_config must not honour them even unvalidated).
        for (key, value) in [
            ("acks", "1"),
            ("request.required.acks", "0"),
            ("enable.idempotence", "false"),
            ("message.timeout.ms", "600000"),
            ("delivery.timeout.ms", "600000"),
            ("queue.buffering.max.kbytes", "1048576"),
            ("message.max.bytes", "100000000"),
            ("bootstrap.servers", "elsewhere:9092"),
        ] {
            config.kafka.insert(key.into(), value.into());
        }
        let client = producer_config(&config);
        assert_eq!(client.get("linger.ms"), Some("20"));
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("request.required.acks"), None);
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("message.timeout.ms"), Some("10000"));
        assert_eq!(client.get("delivery.timeout.ms"), None);
        assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(client.get("message.max.bytes"), Some("1065536"));
        assert_eq!(client.get("queue.buffering.max.kbytes"), Some("33808"));
    }

    #[test]
    fn regression_topic_max_message_bytes_below_max_message_bytes_is_a_start_error() {
        let problem = topic_limit_problem("spans", 1_000_000, Some("500000"))
            .unwrap()
            .to_string();
        assert!(
            problem.contains("`spans`") && problem.contains("max_message_bytes"),
            "{problem}"
        );
        // Kafka's default (1048588) fits the default limit; unknown limits are skipped.
        assert_eq!(topic_limit_problem("t", 1_000_000, Some("1048588")), None);
        assert!(topic_limit_problem("t", 1_000_000, Some("1000000")).is_some());
        assert_eq!(topic_limit_problem("t", 1_000_000, None), None);
        assert_eq!(topic_limit_problem("t", 1_000_000, Some("n/a")), None);
    }

    #[test]
    fn regression_kafka_sink_new_refuses_reserved_properties() {
        let mut config = Config::default();
        config.kafka.insert("acks".into(), "1".into());
        let err = KafkaSink::new(&config.kafka_sink())
            .err()
            .expect("acks=1 accepted");
        assert!(err.to_string().contains("kafka.acks"), "{err}");
        let mut config = Config::default();
        config.kafka.insert("message.timeout.ms".into(), "1".into());
        assert!(KafkaSink::new(&config.kafka_sink()).is_err());
    }

    #[test]
    fn regression_operator_fixable_kafka_errors_are_unavailable_naming_topic_and_remedy() {
        for (code, remedy) in [
            (RDKafkaErrorCode::UnknownTopicOrPartition, "create_topics"),
            (RDKafkaErrorCode::UnknownTopic, "create_topics"),
            (RDKafkaErrorCode::TopicAuthorizationFailed, "WRITE"),
            (RDKafkaErrorCode::MessageSizeTooLarge, "max.message.bytes"),
        ] {
            match sink_error("spans_x", KafkaError::MessageProduction(code)) {
                SinkError::Unavailable(m) => {
                    assert!(
                        m.contains("`spans_x`") && m.contains(remedy),
                        "{code:?}: {m}"
                    )
                }
                other => panic!("{code:?} gave {other:?}"),
            }
        }
        assert!(matches!(
            sink_error(
                "t",
                KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord)
            ),
            SinkError::Rejected(_)
        ));
        assert!(matches!(
            sink_error(
                "t",
                KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut)
            ),
            SinkError::Unavailable(_)
        ));
    }
}
