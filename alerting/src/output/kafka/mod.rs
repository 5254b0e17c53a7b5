//! Alerts on a Kafka topic: one `dlog.alert.v1.AlertEvent` (protobuf) per transition, keyed
//! by alert id so an alert's events stay in order on one partition, produced with acks=all
//! and idempotence.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use dlog_core::kafka::ProducerConfig;
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub mod config;

use std::sync::Arc;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::{AlertSink, Delivery, Output, SinkError};
use crate::alert::Transition;
use config::KafkaOutputConfig;

/// The Kafka output `config` describes, if enabled. When it names no brokers it produces to
/// the stage's, `default_brokers`, with the stage's `default_properties` (security and the
/// like) overridden by its own `producer` table.
pub fn build(
    config: &KafkaOutputConfig,
    default_brokers: &str,
    default_properties: &BTreeMap<String, String>,
) -> Result<Option<Output>, SinkError> {
    if !config.enabled {
        return Ok(None);
    }
    let sink = KafkaSink::new(
        config.brokers.as_deref().unwrap_or(default_brokers),
        &config.topic,
        Duration::from_millis(config.timeout_ms),
        &producer_properties(config, default_properties),
    )?;
    Ok(Some(Output {
        sink: Arc::new(sink),
        filter: config.filter(),
        required: config.required,
        queue: config.queue,
    }))
}

/// The properties the output's producer gets: its own `producer` table, over the stage's
/// properties when it produces to the stage's brokers.
pub fn producer_properties(
    config: &KafkaOutputConfig,
    default_properties: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut properties = match config.brokers {
        Some(_) => BTreeMap::new(),
        None => default_properties.clone(),
    };
    properties.extend(config.producer.clone());
    properties
}

/// Record header naming the value's message type.
pub const MESSAGE_TYPE_HEADER: &str = "dlog.message.type";
/// Value of [`MESSAGE_TYPE_HEADER`].
pub const ALERT_EVENT_TYPE: &str = "dlog.alert.v1.AlertEvent";

/// Produces alert events.
pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl KafkaSink {
    /// An idempotent, acks=all producer for `topic` on `brokers` (see [`ProducerConfig`]),
    /// with the user's `extra` properties.
    pub fn new(
        brokers: &str,
        topic: &str,
        timeout: Duration,
        extra: &BTreeMap<String, String>,
    ) -> Result<Self, SinkError> {
        let mut config = ProducerConfig::new(brokers, timeout);
        config.properties = extra.clone();
        let producer: FutureProducer = config.client_config().create().map_err(|e| {
            SinkError::new(
                "kafka",
                format!("cannot create producer for {brokers}: {e}"),
            )
        })?;
        Ok(KafkaSink {
            producer,
            topic: topic.to_string(),
            timeout,
        })
    }
}

/// Whether Kafka refused a record for good: sending the same bytes again cannot succeed.
fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

#[async_trait]
impl AlertSink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn send(&self, transitions: &[Transition]) -> Result<(), SinkError> {
        let results = self.send_each(transitions).await;
        let failed: Vec<&String> = results
            .iter()
            .filter_map(|d| match d {
                Delivery::Delivered => None,
                Delivery::Rejected(e) | Delivery::Retry(e) => Some(e),
            })
            .collect();
        match failed.first() {
            None => Ok(()),
            Some(first) => Err(SinkError::new(
                "kafka",
                format!(
                    "{} of {} alerts not delivered: {first}",
                    failed.len(),
                    transitions.len()
                ),
            )),
        }
    }

    /// Enqueues every event, then waits for each acknowledgement. An event Kafka refuses
    /// for good (too large, invalid) is rejected on its own; the others are delivered or
    /// retried, so one bad event never wedges the output.
    async fn send_each(&self, transitions: &[Transition]) -> Vec<Delivery> {
        let encoded: Vec<(String, Vec<u8>)> = transitions
            .iter()
            .map(|t| (t.alert.id.clone(), t.alert.to_event().encode_to_vec()))
            .collect();
        let mut deliveries = Vec::with_capacity(encoded.len());
        for (key, value) in &encoded {
            let headers = OwnedHeaders::new().insert(Header {
                key: MESSAGE_TYPE_HEADER,
                value: Some(ALERT_EVENT_TYPE),
            });
            let record = FutureRecord::to(&self.topic)
                .key(key)
                .payload(value)
                .headers(headers);
            deliveries.push(self.producer.send(record, self.timeout));
        }
        futures::future::join_all(deliveries)
            .await
            .into_iter()
            .map(|result| match result {
                Ok(_) => Delivery::Delivered,
                Err((e, _)) => {
                    let message = format!("topic `{}` did not take an alert: {e}", self.topic);
                    if is_permanent(&e) {
                        Delivery::Rejected(message)
                    } else {
                        Delivery::Retry(message)
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, Severity, TransitionKind};

    fn transition(summary: String) -> Transition {
        Transition {
            kind: TransitionKind::Fired,
            alert: Alert::firing(
                "error_log",
                format!("svc|{}", summary.len()),
                Severity::Critical,
                "svc",
                summary,
                1,
            ),
        }
    }

    /// Regression: every failure was "retry", so one event over the broker's size limit
    /// wedged the Kafka output, and the stage with it, for good.
    #[tokio::test]
    async fn regression_kafka_rejects_an_oversized_event_alone() {
        // Nothing listens on port 9 of loopback: small events wait for a broker (retry),
        // the oversized one is refused by the client itself.
        let mut extra = BTreeMap::new();
        extra.insert("message.max.bytes".to_string(), "2000".to_string());
        let sink =
            KafkaSink::new("127.0.0.1:9", "alerts", Duration::from_millis(300), &extra).unwrap();
        let results = sink
            .send_each(&[
                transition("small".into()),
                transition("x".repeat(10_000)),
                transition("small too".into()),
            ])
            .await;
        assert!(matches!(results[0], Delivery::Retry(_)), "{results:?}");
        assert!(
            matches!(&results[1], Delivery::Rejected(e) if e.contains("too large")),
            "{results:?}"
        );
        assert!(matches!(results[2], Delivery::Retry(_)), "{results:?}");
    }
}
