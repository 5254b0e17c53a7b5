//! The production sink: an idempotent, acks=all rdkafka `FutureProducer`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use super::{OutRecord, Sink, SinkError};
use crate::config::Config;

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

/// The librdkafka producer properties the bridge runs with, before `config.kafka` overrides.
///
/// * `acks=all` and `enable.idempotence=true`: a record is acknowledged only once every
///   in-sync replica has it, and the producer's own retries never duplicate or reorder.
/// * `message.timeout.ms = produce_timeout_ms`: librdkafka gives up on a record about when
///   the request that carried it is answered UNAVAILABLE, so records of failed requests do
///   not pile up in the queue while senders retry them.
/// * `linger.ms`: records of concurrent requests share produce requests.
/// * `message.max.bytes` leaves room for Kafka's record framing above `max_message_bytes`.
/// * `queue.buffering.max.kbytes` bounds the producer's copy of in-flight records to about
///   `max_in_flight_bytes`, instead of librdkafka's default of 1 GiB.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    let message_max_bytes = config.max_message_bytes.saturating_add(64 * 1024);
    let queue_kbytes = (config.max_in_flight_bytes / 1024).max(1024) + message_max_bytes / 1024;
    client
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", config.produce_timeout_ms.to_string())
        .set("linger.ms", config.linger_ms.to_string())
        .set("message.max.bytes", message_max_bytes.to_string())
        .set("batch.size", message_max_bytes.min(1_000_000).to_string())
        .set("queue.buffering.max.kbytes", queue_kbytes.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("client.id", "dlog-collector-bridge");
    for (key, value) in &config.kafka {
        client.set(key, value);
    }
    client
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
    /// A sink with the bridge's producer settings (see [`producer_config`]). It does not
    /// connect yet: an unreachable broker shows up as `UNAVAILABLE` answers, not as a start
    /// failure.
    pub fn new(config: &Config) -> Result<KafkaSink, SinkError> {
        KafkaSink::from_client_config(&producer_config(config))
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
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::InvalidTopic,
        ) => SinkError::Rejected(text),
        _ => SinkError::Unavailable(text),
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
        let client = producer_config(&config);
        assert_eq!(client.get("linger.ms"), Some("20"));
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("message.timeout.ms"), Some("10000"));
    }
}
